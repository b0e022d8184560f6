/* SPDX-License-Identifier: MIT */
#pragma once

/* The one way the daemon builds a request to the upstream, Keystone or a peer: the settings every such
 * request shares (TransportSettings, owned by the Fetcher and set from the Config in one place), and the
 * one function that makes a curl easy handle with all of them applied. What a handle always gets:
 *
 *   - CAFile= (CURLOPT_CAINFO) and verified peers and host names;
 *   - ConnectTimeoutSec=, bounded by the request's own timeout; LowSpeedTimeoutSec= for a request that
 *     has none (a fill, of any length, ends on a stall instead);
 *   - the protocols http and https (and file for a fill of a local URL=);
 *   - no redirect followed by curl: a token, a peer secret or a password go to the URL asked only (curl
 *     would send a custom header to any host it is redirected to). Whoever follows one (the fill) does
 *     so itself, with a new request; REDIR_PROTOCOLS says http,https should that ever change;
 *   - the user agent imgcached/<version>, no signals, and the CurlTask the CurlLoop completes.
 *
 * Callers set what is their request's own (callbacks, a body, a range) with easy_setopt() and hand the
 * handle to curl_loop_add(). */

#include <curl/curl.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "curl-loop.h"
#include "util.h"

typedef struct TransportSettings {
        char *ca_file;             /* CAFile=: a PEM bundle instead of the system's; NULL: the system's */
        usec_t connect_timeout;    /* ConnectTimeoutSec=; 0 or USEC_INFINITY: curl's own */
        usec_t low_speed_timeout;  /* LowSpeedTimeoutSec=: under a byte a second this long is a stall;
                                    * 0 or USEC_INFINITY: never */
} TransportSettings;

/* Reads the settings out of c into *ret (which the caller clears with transport_settings_done()). */
int transport_settings_from_config(const Config *c, TransportSettings *ret);
void transport_settings_done(TransportSettings *t);

/* What one request adds to the settings. */
typedef struct TransportRequest {
        const char *url;
        CurlTask *task;             /* CURLOPT_PRIVATE: the CurlLoop delivers the completion to it */
        usec_t timeout;             /* the whole exchange, connecting included; 0: none, a stall ends it */
        bool allow_file;            /* file:// as well: URL= may name a local file (a fill's requests) */
        struct curl_slist *headers; /* borrowed, must outlive the handle; NULL: none */
        char *error;                /* CURL_ERROR_SIZE bytes for curl's message; NULL: none */
        curl_write_callback on_header; /* each response header line; NULL: not looked at */
        curl_write_callback on_body;   /* the body; NULL: no_body, or curl's default (stdout) */
        void *userdata;             /* of on_header and on_body */
        bool no_body;               /* a HEAD */
        const char *method;         /* a method other than GET (or HEAD, no_body); NULL: GET */
        curl_read_callback on_upload; /* the request's body, read as curl sends it; NULL: none */
        int64_t upload_size;        /* with on_upload: its length, -1 unknown (sent chunked) */
        bool own_connection;        /* a connection of its own, closed after: see transport_easy_new() */
} TransportRequest;

/* A new easy handle for r with every common option set, not yet on the loop. */
int transport_easy_new(const TransportSettings *t, const TransportRequest *r, CURL **ret);

/* Appends one header line, formatted, to *headers; the formatted copy is wiped (it may hold a secret). */
_printf_(2, 3) int transport_header_addf(struct curl_slist **headers, const char *fmt, ...);
/* Wipes every line (tokens, peer secrets) and frees the list. NULL is fine. */
void transport_headers_free(struct curl_slist *headers);

static inline int transport_errno(CURLcode code) {
        switch (code) {
        case CURLE_OK:
                return 0;
        case CURLE_OUT_OF_MEMORY:
                return -ENOMEM;
        case CURLE_UNKNOWN_OPTION:
        case CURLE_NOT_BUILT_IN:
        case CURLE_UNSUPPORTED_PROTOCOL:
                return -EOPNOTSUPP;
        default:
                return -EINVAL;
        }
}

/* How a finished transfer went, for callers that tell only a timeout (504) from any other failure (502). */
static inline int transport_result_errno(CURLcode code) {
        return code == CURLE_OK ? 0 : code == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EPROTO;
}

/* curl_easy_setopt() as 0 or -errno, for a request's own options. A macro, so that curl's compile-time
 * check of the value's type still sees the option. */
#define easy_setopt(h, opt, val) transport_errno(curl_easy_setopt((h), (opt), (val)))
