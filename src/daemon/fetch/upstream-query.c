/* SPDX-License-Identifier: MIT */
/* Small questions to the upstream about an image (upstream-query.h): its record or a HEAD, a range. */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
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
        char *body;             /* the Glance record, or the bytes of a range */
        size_t body_size;
        size_t body_max;
        bool body_too_large;
        uint64_t range_start, range_length, range_total; /* range_length 0: not a range */
        char *content_range;
        UpstreamQueryDone done;
        void *userdata;

        /* Until it is sent (upstream_query_launch()). */
        char *id;
        usec_t timeout;
        bool has_credentials;   /* its own header; else the sender's default, at launch */
        void (*release)(UpstreamQuery *q, void *userdata);
        void *release_userdata;
};

static size_t on_query_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
        UpstreamQuery *q = userdata;
        size_t n = size * nmemb;
        int r = buf_append(&q->body, &q->body_size, q->body_max, ptr, n);

        q->body_too_large = r == -EFBIG;
        return r < 0 ? 0 : n;  /* 0 aborts the transfer */
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

static size_t on_query_header(char *buffer, size_t size, size_t nitems, void *userdata) {
        UpstreamQuery *q = userdata;
        size_t len = size * nitems, n;
        const char *v;

        if (upstream_header_is(buffer, len, "Content-Range", &v, &n)) {
                free(q->content_range);
                q->content_range = strndup(v, MIN(n, (size_t) 128));
                if (!q->content_range)
                        return 0;
        }
        return len;
}

/* A range is good only as exactly the bytes asked for, of an image of the length the fill has (any length
 * while the fill has none yet). */
static void answer_from_range(UpstreamQuery *q, UpstreamAnswer *a) {
        uint64_t start, end, total;

        if (a->status != 206 || upstream_parse_content_range(q->content_range, &start, &end, &total) < 0 ||
            start != q->range_start || end != q->range_start + q->range_length - 1 ||
            total == UINT64_MAX || (q->range_total != UINT64_MAX && total != q->range_total) ||
            q->body_size != q->range_length) {
                a->error = -EBADMSG;
                return;
        }
        a->available = true;
        a->has_size = true;
        a->size = total;
        a->data = (const uint8_t *) q->body;
        a->data_size = q->body_size;
}

static void on_query_done(CurlTask *t, CURL *easy, CURLcode code) {
        UpstreamQuery *q = container_of(t, UpstreamQuery, task);
        UpstreamAnswer a = {};
        curl_off_t length = -1;

        if (code != CURLE_OK && !(code == CURLE_WRITE_ERROR && q->body_too_large))
                a.error = transport_result_errno(code);
        else if (q->body_too_large)
                a.error = -EBADMSG;
        else {
                (void) curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &a.status);
                if (q->range_length > 0)
                        answer_from_range(q, &a);
                else if (a.status >= 200 && a.status < 300) {
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

static int query_headers(UpstreamQuery *q, const UpstreamQueryOptions *o) {
        int r = 0;

        if (o->credentials)
                r = transport_header_addf(&q->headers, "%s", o->credentials);
        if (r >= 0 && o->range_length > 0)
                r = transport_header_addf(&q->headers, "Range: bytes=%" PRIu64 "-%" PRIu64, o->range_start,
                                          o->range_start + o->range_length - 1);
        if (r >= 0 && o->range_length > 0 && o->if_range)
                r = transport_header_addf(&q->headers, "If-Range: %s", o->if_range);
        return r;
}

static int query_setup(UpstreamQuery *q, const TransportSettings *t, const char *url) {
        bool body = q->kind == UPSTREAM_GLANCE || q->range_length > 0; /* the record, or the range's bytes */
        TransportRequest req = {
                .url = url,
                .task = &q->task,
                .timeout = q->timeout ?: UPSTREAM_QUERY_TIMEOUT_USEC,
                .headers = q->headers,
                .on_header = q->range_length > 0 ? on_query_header : NULL,
                .on_body = body ? on_query_body : NULL,
                .userdata = q,
                .no_body = !body,
        };
        return transport_easy_new(t, &req, &q->curl);
}

int upstream_query_prepare(const UpstreamQueryOptions *o, UpstreamQueryDone done, void *userdata,
                           UpstreamQuery **ret) {
        UpstreamQuery *q;
        int r;

        q = calloc(1, sizeof(UpstreamQuery));
        if (!q)
                return -ENOMEM;
        *q = (UpstreamQuery) {
                .task.on_done = on_query_done,
                .done = done,
                .userdata = userdata,
                .body_max = o->range_length > 0 ? o->range_length : UPSTREAM_RECORD_MAX,
                .range_start = o->range_start,
                .range_length = o->range_length,
                .range_total = o->range_total,
                .id = strdup(o->id),
                .timeout = o->timeout,
                .has_credentials = o->credentials,
        };
        r = q->id ? query_headers(q, o) : -ENOMEM;
        if (r < 0) {
                upstream_query_free(q);
                return r;
        }
        *ret = q;
        return 0;
}

int upstream_query_launch(UpstreamQuery *q, CurlLoop *l, const TransportSettings *t, UpstreamKind kind,
                          const char *url, const char *default_credentials) {
        _cleanup_(freep) char *target = NULL;
        int r;

        assert(!q->curl);
        q->kind = kind;
        r = kind == UPSTREAM_GLANCE && q->range_length == 0 ? upstream_record_url(url, q->id, &target)
                                                            : upstream_image_url(kind, url, q->id, &target);
        if (r >= 0 && !q->has_credentials && default_credentials) {
                r = transport_header_addf(&q->headers, "%s", default_credentials);
                q->has_credentials = r >= 0;
        }
        if (r >= 0)
                r = query_setup(q, t, target);
        if (r >= 0) {
                q->loop = l;
                r = curl_loop_add(l, q->curl);
        }
        if (r < 0)
                curl_loop_discard(q->loop, &q->curl);
        return r;
}

void upstream_query_fail(UpstreamQuery *q, int error) {
        UpstreamAnswer a = { .error = error };

        /* done may free q. */
        q->done(&a, q->userdata);
}

void upstream_query_set_release(UpstreamQuery *q, void (*release)(UpstreamQuery *q, void *userdata),
                                void *userdata) {
        q->release = release;
        q->release_userdata = userdata;
}

UpstreamQuery *upstream_query_free(UpstreamQuery *q) {
        if (!q)
                return NULL;
        if (q->release)
                q->release(q, q->release_userdata);
        curl_loop_discard(q->loop, &q->curl);
        free(q->id);
        transport_headers_free(q->headers); /* may hold a client's token */
        free(q->body);
        free(q->content_range);
        free(q);
        return NULL;
}
