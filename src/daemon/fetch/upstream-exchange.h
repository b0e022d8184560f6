/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "curl-easy.h"
#include "curl-loop.h"

/* One HTTP exchange passed through to the upstream for a client: Glance's API beyond the image data
 * (records, schemas, uploads, deletes…). The client's method, target, headers and body go out as they
 * arrive, and the upstream's status, headers and body come back as they arrive, each direction through a
 * buffer of UPSTREAM_EXCHANGE_BUFFER bytes: a 20 GiB upload or download is held neither in memory nor on
 * disk, and a side that stops reading pauses the other. Only the headers the caller gives are sent:
 * the daemon's own credentials are never added, a pass-through acts with the client's rights only.
 *
 * Everything runs on the loop's thread. on_event is called on any news (headers known, bytes to read,
 * room to write, the end); it must not free the exchange. */

typedef struct UpstreamExchange UpstreamExchange;

#define UPSTREAM_EXCHANGE_BUFFER (256U * 1024U)
/* The upstream's status line and headers, at most: a larger head is a broken upstream (502). */
#define UPSTREAM_EXCHANGE_HEAD_MAX (64U * 1024U)

typedef struct UpstreamExchangeRequest {
        const char *method;          /* as the client sent it */
        const char *target;          /* path and query, as the client sent them (starts with '/') */
        struct curl_slist *headers;  /* taken: the lines to send (wiped when freed, they hold tokens) */
        bool body;                   /* the request has a body, sent with upstream_exchange_write() */
        uint64_t body_size;          /* its length; UINT64_MAX: unknown (chunked) */
} UpstreamExchangeRequest;

/* Made now, sent with upstream_exchange_launch() (once the upstream's address is known). */
int upstream_exchange_new(UpstreamExchangeRequest *r, void (*on_event)(UpstreamExchange *x, void *userdata),
                          void *userdata, UpstreamExchange **ret);
UpstreamExchange *upstream_exchange_free(UpstreamExchange *x);  /* ends the transfer, whatever its state */
/* Sends it to base_url + target on l, made with t (the Fetcher's settings). */
int upstream_exchange_launch(UpstreamExchange *x, CurlLoop *l, const TransportSettings *t, const char *base_url);
/* Ends it before it was sent, with error (the address could not be learnt); on_event is called. */
void upstream_exchange_fail(UpstreamExchange *x, int error);

/* The request's body: copies what fits of n bytes and returns how many; 0 when the buffer is full (the
 * next room comes with on_event). Then, once all was written, the end. */
size_t upstream_exchange_write(UpstreamExchange *x, const void *p, size_t n);
void upstream_exchange_write_end(UpstreamExchange *x);

/* The answer. Headers are known once has_head says so (or it ended); each header is "Name: value". */
bool upstream_exchange_has_head(const UpstreamExchange *x);
long upstream_exchange_status(const UpstreamExchange *x);
size_t upstream_exchange_n_headers(const UpstreamExchange *x);
const char *upstream_exchange_header(const UpstreamExchange *x, size_t i);
/* The body: up to max bytes of what arrived; 0 with nothing there yet (on_event tells of more), or at
 * the end (ended()). */
size_t upstream_exchange_read(UpstreamExchange *x, void *buf, size_t max);
/* Bytes of the body arrived and not read yet. */
size_t upstream_exchange_available(const UpstreamExchange *x);
/* The transfer is over: 0 complete, or a negative errno (-ETIMEDOUT, -EMSGSIZE a head too large, -EPROTO
 * anything else, or what upstream_exchange_fail() was given); the bytes already arrived may still be read. */
bool upstream_exchange_ended(const UpstreamExchange *x, int *ret_error);
