/* SPDX-License-Identifier: MIT */

/* The request factory (curl-easy.h): the transport settings, the easy handles built from them, and the
 * header lists they carry. */

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curl-easy.h"
#include "imgcache-config.h"

#define TRANSPORT_USER_AGENT "imgcached/" PROJECT_VERSION

int transport_settings_from_config(const Config *c, TransportSettings *ret) {
        TransportSettings t = {
                .connect_timeout = c->connect_timeout,
                .low_speed_timeout = c->low_speed_timeout,
        };

        if (!isempty(c->ca_file) && !(t.ca_file = strdup(c->ca_file)))
                return -ENOMEM;
        *ret = t;
        return 0;
}

void transport_settings_done(TransportSettings *t) {
        t->ca_file = mfree(t->ca_file);
}

static bool timeout_is_set(usec_t u) {
        return u > 0 && u != USEC_INFINITY;
}

/* Rounded up: a timeout under a millisecond (or a second) is not no timeout. */
static long usec_to_ms(usec_t u) {
        return (long) MIN(u / USEC_PER_MSEC + (u % USEC_PER_MSEC != 0), (usec_t) LONG_MAX);
}

static long usec_to_sec(usec_t u) {
        return (long) MIN(u / USEC_PER_SEC + (u % USEC_PER_SEC != 0), (usec_t) LONG_MAX);
}

static int setup_timeouts(CURL *h, const TransportSettings *t, usec_t timeout) {
        usec_t connect = t->connect_timeout;
        int r;

        if (timeout_is_set(timeout)) {
                r = easy_setopt(h, CURLOPT_TIMEOUT_MS, usec_to_ms(timeout));
                if (r < 0)
                        return r;
                if (!timeout_is_set(connect) || connect > timeout)
                        connect = timeout;
        } else if (timeout_is_set(t->low_speed_timeout)) {
                /* Less than a byte a second for that long counts as a stall. */
                r = easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
                if (r >= 0)
                        r = easy_setopt(h, CURLOPT_LOW_SPEED_TIME, usec_to_sec(t->low_speed_timeout));
                if (r < 0)
                        return r;
        }
        if (timeout_is_set(connect))
                return easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, usec_to_ms(connect));
        return 0;
}

static int setup(CURL *h, const TransportSettings *t, const TransportRequest *q) {
        const char *protocols = q->allow_file ? "http,https,file" : "http,https";
        int r;

        if ((r = easy_setopt(h, CURLOPT_URL, q->url)) < 0 ||
            (r = easy_setopt(h, CURLOPT_PRIVATE, q->task)) < 0 ||
            (r = easy_setopt(h, CURLOPT_NOSIGNAL, 1L)) < 0 ||
            (r = easy_setopt(h, CURLOPT_PROTOCOLS_STR, protocols)) < 0 ||
            (r = easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L)) < 0 ||
            (r = easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https")) < 0 ||
            (r = easy_setopt(h, CURLOPT_USERAGENT, TRANSPORT_USER_AGENT)) < 0 ||
            (r = easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L)) < 0 ||
            (r = easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L)) < 0)
                return r;
        if (t->ca_file && (r = easy_setopt(h, CURLOPT_CAINFO, t->ca_file)) < 0)
                return r;
        if (q->error && (r = easy_setopt(h, CURLOPT_ERRORBUFFER, q->error)) < 0)
                return r;
        if (q->headers && (r = easy_setopt(h, CURLOPT_HTTPHEADER, q->headers)) < 0)
                return r;
        if (q->on_header && ((r = easy_setopt(h, CURLOPT_HEADERFUNCTION, q->on_header)) < 0 ||
                             (r = easy_setopt(h, CURLOPT_HEADERDATA, q->userdata)) < 0))
                return r;
        if (q->on_body && ((r = easy_setopt(h, CURLOPT_WRITEFUNCTION, q->on_body)) < 0 ||
                           (r = easy_setopt(h, CURLOPT_WRITEDATA, q->userdata)) < 0))
                return r;
        /* A transfer of an image gains nothing from a pooled connection, and must neither take nor leave
         * one an upstream spoiled: bytes past a Content-Length (or a response that ended in an error)
         * left in a connection were read by the next request on it as its answer ("Received HTTP/0.9"). */
        if (q->own_connection && ((r = easy_setopt(h, CURLOPT_FRESH_CONNECT, 1L)) < 0 ||
                                  (r = easy_setopt(h, CURLOPT_FORBID_REUSE, 1L)) < 0))
                return r;
        if (q->no_body && (r = easy_setopt(h, CURLOPT_NOBODY, 1L)) < 0)
                return r;
        if (q->method && (r = easy_setopt(h, CURLOPT_CUSTOMREQUEST, q->method)) < 0)
                return r;
        /* UPLOAD makes it a PUT with a body; CUSTOMREQUEST above names the method that is sent. */
        if (q->on_upload && ((r = easy_setopt(h, CURLOPT_UPLOAD, 1L)) < 0 ||
                             (r = easy_setopt(h, CURLOPT_READFUNCTION, q->on_upload)) < 0 ||
                             (r = easy_setopt(h, CURLOPT_READDATA, q->userdata)) < 0 ||
                             (r = easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t) q->upload_size)) < 0 ||
                             /* Fewer, larger reads of the body per turn of the loop than curl's 64 KiB. */
                             (r = easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024L)) < 0))
                return r;
        return setup_timeouts(h, t, q->timeout);
}

int transport_easy_new(const TransportSettings *t, const TransportRequest *r, CURL **ret) {
        CURL *h = curl_easy_init();
        int k;

        if (!h)
                return -ENOMEM;
        k = setup(h, t, r);
        if (k < 0) {
                curl_easy_cleanup(h);
                return k;
        }
        *ret = h;
        return 0;
}

int transport_header_addf(struct curl_slist **headers, const char *fmt, ...) {
        struct curl_slist *l = NULL;
        char *line;
        va_list ap;

        va_start(ap, fmt);
        int n = vasprintf(&line, fmt, ap);
        va_end(ap);
        if (n >= 0) {
                l = curl_slist_append(*headers, line); /* a copy */
                explicit_bzero(line, (size_t) n);
                free(line);
        }
        if (!l)
                return -ENOMEM;
        *headers = l;
        return 0;
}

void transport_headers_free(struct curl_slist *headers) {
        for (struct curl_slist *l = headers; l; l = l->next)
                explicit_bzero(l->data, strlen(l->data));
        curl_slist_free_all(headers);
}
