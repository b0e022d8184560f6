/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "upstream-query.h"
#include "upstream.h"

struct UpstreamQuery {
        CurlLoop *loop;
        CURL *curl;
        CurlTask task;
        struct curl_slist *headers;
        UpstreamKind kind;
        char *body;             /* the Glance record */
        size_t body_size;
        bool body_too_large;
        UpstreamQueryDone done;
        void *userdata;
};

static size_t on_query_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
        UpstreamQuery *q = userdata;
        size_t n = size * nmemb;
        char *b;

        if (q->body_size + n > UPSTREAM_RECORD_MAX) {
                q->body_too_large = true;
                return 0;  /* aborts the transfer */
        }
        b = realloc(q->body, q->body_size + n + 1);
        if (!b)
                return 0;
        memcpy(b + q->body_size, ptr, n);
        q->body = b;
        q->body_size += n;
        q->body[q->body_size] = 0;
        return n;
}

/* What a Glance record says: available when well-formed and active, and its size. */
static void answer_from_record(UpstreamQuery *q, UpstreamAnswer *a) {
        UpstreamRecord rec = {};
        const char *why = NULL;
        int r;

        r = upstream_record_parse(q->body ?: "", q->body_size, &rec, &why);
        if (r < 0) {
                a->error = r;
                log_debug("The upstream's record is unusable: %s", strempty(why));
                return;
        }
        a->available = rec.status && strcmp(rec.status, "active") == 0;
        a->has_size = rec.has_size;
        a->size = rec.size;
        upstream_record_done(&rec);
}

static void on_query_done(CurlTask *t, CURL *easy, CURLcode code) {
        UpstreamQuery *q = container_of(t, UpstreamQuery, task);
        UpstreamAnswer a = {};
        curl_off_t length = -1;

        if (code != CURLE_OK && !(code == CURLE_WRITE_ERROR && q->body_too_large))
                a.error = code == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EPROTO;
        else if (q->body_too_large)
                a.error = -EBADMSG;
        else {
                (void) curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &a.status);
                if (a.status >= 200 && a.status < 300) {
                        if (q->kind == UPSTREAM_GLANCE)
                                answer_from_record(q, &a);
                        else {
                                a.available = true;
                                (void) curl_easy_getinfo(easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
                                a.has_size = length >= 0;
                                a.size = a.has_size ? (uint64_t) length : 0;
                        }
                }
        }

        /* done may free q. */
        q->done(&a, q->userdata);
}

#define SETOPT(h, opt, val) if (curl_easy_setopt((h), (opt), (val)) != CURLE_OK) return -ENOMEM

static int query_setup(UpstreamQuery *q, const UpstreamQueryOptions *o, const char *url) {
        CURL *h = q->curl;
        usec_t timeout = o->timeout ?: UPSTREAM_QUERY_TIMEOUT_USEC;

        SETOPT(h, CURLOPT_URL, url);
        SETOPT(h, CURLOPT_NOSIGNAL, 1L);
        SETOPT(h, CURLOPT_PROTOCOLS_STR, "http,https");
        SETOPT(h, CURLOPT_FOLLOWLOCATION, 0L);
        SETOPT(h, CURLOPT_TIMEOUT_MS, (long) (timeout / USEC_PER_MSEC));
        if (o->connect_timeout > 0 && o->connect_timeout != USEC_INFINITY)
                SETOPT(h, CURLOPT_CONNECTTIMEOUT_MS, (long) MIN(o->connect_timeout, timeout) / (long) USEC_PER_MSEC);
        if (o->ca_file)
                SETOPT(h, CURLOPT_CAINFO, o->ca_file);
        if (o->kind == UPSTREAM_GLANCE) {
                SETOPT(h, CURLOPT_WRITEFUNCTION, on_query_body);
                SETOPT(h, CURLOPT_WRITEDATA, q);
        } else
                SETOPT(h, CURLOPT_NOBODY, 1L);
        if (o->credentials) {
                q->headers = curl_slist_append(NULL, o->credentials);
                if (!q->headers)
                        return -ENOMEM;
                SETOPT(h, CURLOPT_HTTPHEADER, q->headers);
        }
        return 0;
}

int upstream_query_start(CurlLoop *l, const UpstreamQueryOptions *o, UpstreamQueryDone done, void *userdata,
                         UpstreamQuery **ret) {
        _cleanup_(freep) char *url = NULL;
        UpstreamQuery *q;
        int r;

        r = o->kind == UPSTREAM_GLANCE ? upstream_record_url(o->url, o->id, &url)
                                       : upstream_image_url(o->kind, o->url, o->id, &url);
        if (r < 0)
                return r;

        q = calloc(1, sizeof(UpstreamQuery));
        if (!q)
                return -ENOMEM;
        *q = (UpstreamQuery) {
                .loop = l,
                .curl = curl_easy_init(),
                .task.on_done = on_query_done,
                .kind = o->kind,
                .done = done,
                .userdata = userdata,
        };
        r = q->curl ? query_setup(q, o, url) : -ENOMEM;
        if (r >= 0)
                r = curl_loop_add(l, q->curl, &q->task);
        if (r < 0) {
                upstream_query_free(q);
                return r;
        }
        *ret = q;
        return 0;
}

/* The header line may hold a client's token: wiped before it is freed. */
static void wipe_headers(struct curl_slist *l) {
        for (; l; l = l->next)
                explicit_bzero(l->data, strlen(l->data));
}

UpstreamQuery *upstream_query_free(UpstreamQuery *q) {
        if (!q)
                return NULL;
        curl_loop_discard(q->loop, &q->curl);
        wipe_headers(q->headers);
        curl_slist_free_all(q->headers);
        free(q->body);
        free(q);
        return NULL;
}
