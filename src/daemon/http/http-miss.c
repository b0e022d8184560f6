/* SPDX-License-Identifier: MIT */
/* A miss, from its start to the response: the not-found cache (NotFoundCacheSec=), the HEAD probe of an
 * image nobody fetches, MaxFetchesPerIP=, the fill and the steps of its waits (the fill's headers, a
 * range asked of the origin), and which response the client gets. The body is sent by http-stream.c. */

#include <assert.h>
#include <string.h>

#include "http-internal.h"
#include "log.h"
#include "ttl-cache.h"

/* Counted against the share of the client that learnt it: one client cannot flush the others' answers. */
static void remember_not_found(HttpServer *s, Request *req, const char *id) {
        ttl_cache_put_owned(s->not_found, id, 1, s->config->not_found_cache, http_request_client(req));
}

/* ---- a HEAD of an image nobody fetches --------------------------------------------------------------- */

static void on_probe_answer(const UpstreamAnswer *a, void *userdata) {
        Request *req = userdata;

        req->pending.probe.answer = *a;
        http_request_wake(req);
}

/* Answered from what the upstream says of the image (the Glance record, or a HEAD), without fetching it. */
static enum MHD_Result serve_head_probe(HttpServer *s, Request *req, struct MHD_Connection *c) {
        int r;

        if (!http_request_charge_upstream(req))
                return http_respond_429(c, req->retry_after);
        r = fetcher_query(s->fetcher, req->match.id, /* credentials= */ NULL, on_probe_answer, req,
                          &req->pending.probe.query);
        if (r < 0)
                return http_respond_text(c, MHD_HTTP_BAD_GATEWAY, "Fetching the image from the upstream failed\n");
        http_request_wait(req, REQUEST_WAIT_PROBE);
        return MHD_YES;
}

enum MHD_Result http_miss_on_probe(HttpServer *s, Request *req, RequestPending *p) {
        const UpstreamAnswer *a = &p->probe.answer;
        struct MHD_Connection *c = req->connection;
        struct MHD_Response *resp;

        if (a->status == 404 || a->status == 410 || (a->status >= 200 && a->status < 300 && !a->available)) {
                remember_not_found(s, req, req->match.id);
                return http_respond_text(c, MHD_HTTP_NOT_FOUND, "No such image upstream\n");
        }
        if (a->status < 200 || a->status >= 400)
                return http_respond_text(c, MHD_HTTP_BAD_GATEWAY, "Fetching the image from the upstream failed\n");

        resp = http_response_for_head(a->has_size ? a->size : MHD_SIZE_UNKNOWN);
        if (!resp)
                return MHD_NO;
        http_add_image_headers(resp, NULL, NULL, a->has_size);
        return http_queue_response(c, MHD_HTTP_OK, resp);
}

/* ---- starting or joining a fill -------------------------------------------------------------- */

PeerFill *http_peer_fill_free(PeerFill *pf) {
        HttpServer *s;

        if (!pf)
                return NULL;
        s = pf->server;
        LIST_REMOVE(peer_fills, s->peer_fills, pf);
        peer_counts_add(s->peer_fill_counts, pf->key, -1);
        fill_subscription_free(pf->subscription);
        free(pf);
        return NULL;
}

static void peer_fill_on_finished(Fill *f, void *userdata) {
        http_peer_fill_free(userdata);
}

/* Counts f, just started for the client at key, until it ends. */
static int peer_fill_new(HttpServer *s, const char *key, Fill *f) {
        /* Not a reader: it must not keep a fill too large to keep streaming (FillListener). */
        static const FillListener listener = { .on_finished = peer_fill_on_finished, .requires_kept = true };
        PeerFill *pf;
        int r;

        pf = calloc(1, sizeof(PeerFill));
        if (!pf)
                return -ENOMEM;
        *pf = (PeerFill) { .server = s };
        (void) snprintf(pf->key, sizeof(pf->key), "%s", key);
        LIST_PREPEND(peer_fills, s->peer_fills, pf);
        peer_counts_add(s->peer_fill_counts, key, +1);

        r = fill_subscribe(f, &listener, pf, &pf->subscription);
        if (r < 0) {
                http_peer_fill_free(pf);
                return r;
        }
        return 0;
}

/* Starts (or joins) the fill of a miss. A client may have started at most MaxFetchesPerIP= fills that
 * still run; joining a running one is always fine. -EUSERS when this one would be one too many. */
static int start_fill(HttpServer *s, Request *req, const char *id, Fill **ret) {
        const char *key = NULL;
        bool counted;
        int r;

        /* A node of the fleet asks on behalf of its clients, which it limits itself. */
        counted = !req->from_peer && !fetcher_find(s->fetcher, id) && (key = http_request_client(req));
        if (counted && peer_counts_get(s->peer_fill_counts, key) >= s->config->max_fills_per_ip) {
                http_count_refusal(s, HTTP_REFUSED_FETCHES_PER_IP, key);
                return -EUSERS;
        }
        if (counted && !http_request_charge_upstream(req))
                return -EBUSY;

        /* Pointed here by a node at its FanOut=: only a running fill may answer, else the asker goes on with
         * its next source. Nobody who did not ask for an image fetches it for others. */
        if (req->peer_join && !fetcher_find(s->fetcher, id))
                return -ESRCH;
        /* A peer's request is never forwarded again: it goes to the origin, or joins the running fill. */
        r = fetcher_fill_full(s->fetcher, id, /* expected= */ NULL, req->from_peer ? FETCH_ORIGIN_ONLY : 0, ret);
        if (r < 0 || !counted || fill_state_is_final(fill_state(*ret)))
                return r;
        r = peer_fill_new(s, key, *ret);
        if (r < 0)
                *ret = fill_unref(*ret);
        return r;
}

/* ---- the response of a miss ---------------------------------------------------------------------- */

static unsigned fill_error_to_status(int error) {
        switch (error) {
        case -ENOENT:
                return MHD_HTTP_NOT_FOUND;
        case -ETIMEDOUT:
                return MHD_HTTP_GATEWAY_TIMEOUT;
        case -ECANCELED:
        case -ENOSPC:
                return MHD_HTTP_SERVICE_UNAVAILABLE;
        default:
                return MHD_HTTP_BAD_GATEWAY;
        }
}

/* What a client is told of a failed fill: the class of failure only. The fill's own message names the
 * upstream (its URL, address, curl's details) and goes to the journal; HTTP clients are untrusted. */
static const char *fill_error_to_client_text(int error) {
        switch (error) {
        case -ENOENT:
                return "No such image upstream";
        case -ETIMEDOUT:
                return "Fetching the image timed out";
        case -ECANCELED:
                return "Fetching the image was cancelled";
        case -ENOSPC:
                return "No space left in the cache";
        case -EBADMSG:
                return "The image from the upstream did not match its checksum or size";
        case -EFBIG:
                return "The image is too large";
        default:
                return "Fetching the image from the upstream failed";
        }
}

static bool range_is_far_ahead(HttpServer *s, Request *req, Fill *f, uint64_t start, uint64_t length);
static bool range_of_waiting_fill(HttpServer *s, Request *req, Fill *f, uint64_t *ret_start, uint64_t *ret_length);
static enum MHD_Result ask_origin_for_range(HttpServer *s, Request *req, Stream *st, uint64_t start, uint64_t length);

/* Answers a miss whose fill has headers (or ended). Consumes st. */
static enum MHD_Result respond_miss(HttpServer *s, Request *req, Stream *st) {
        struct MHD_Connection *c = req->connection;
        FillState state = fill_state(st->fill);
        uint64_t total, start = 0, length = 0;
        HttpRangeResult rr = HTTP_RANGE_NONE;
        struct MHD_Response *resp;
        const char *range;

        if (state == FILL_FAILED || state == FILL_CANCELLED) {
                int error = fill_error(st->fill);

                if (error == -ENOENT)
                        remember_not_found(s, req, fill_image_id(st->fill));
                http_stream_free(st);
                return http_respond_printf(c, fill_error_to_status(error), "%s\n", fill_error_to_client_text(error));
        }

        total = state == FILL_DONE ? fill_bytes_written(st->fill) : fill_bytes_total(st->fill);

        if (req->method == HTTP_METHOD_HEAD) {
                http_stream_free(st);
                resp = http_response_for_head(total == UINT64_MAX ? MHD_SIZE_UNKNOWN : total);
                if (!resp)
                        return MHD_NO;
                http_add_image_headers(resp, NULL, NULL, total != UINT64_MAX);
                return http_queue_response(c, MHD_HTTP_OK, resp);
        }

        /* A Range needs the total length; without it (or with an If-Range we cannot check before the
         * checksum is known) the whole image is sent. */
        range = http_header(c, MHD_HTTP_HEADER_RANGE);
        if (range && total != UINT64_MAX && !http_header(c, MHD_HTTP_HEADER_IF_RANGE))
                rr = http_range_parse(range, total, &start, &length);

        /* Too large to keep, and streamed to others already: the bytes before where they are are gone. */
        if (fill_readable_from(st->fill) > (rr == HTTP_RANGE_SATISFIABLE ? start : 0)) {
                http_stream_free(st);
                return http_respond_text_with(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                              "The image is too large to keep and is being streamed to other clients; "
                                              "try again when that is over\n",
                                              MHD_HTTP_HEADER_RETRY_AFTER, "10");
        }

        switch (rr) {
        case HTTP_RANGE_UNSATISFIABLE:
                http_stream_free(st);
                return http_respond_416(c, total);
        case HTTP_RANGE_SATISFIABLE:
                if (range_is_far_ahead(s, req, st->fill, start, length))
                        return ask_origin_for_range(s, req, st, start, length);
                return http_stream_respond(req, st, start, length, total);
        default:
                return http_stream_respond(req, st, UINT64_MAX, total, total);
        }
}

/* Answers a miss at once if its fill has headers, asks the origin for a range the fill cannot answer
 * soon, else waits for the fill's headers. Consumes st. */
static enum MHD_Result respond_miss_when_ready(HttpServer *s, Request *req, Stream *st) {
        uint64_t start, length;

        if (fill_has_headers(st->fill))
                return respond_miss(s, req, st);
        if (range_of_waiting_fill(s, req, st->fill, &start, &length))
                return ask_origin_for_range(s, req, st, start, length);

        /* Wait for the upstream's headers: they decide the status, and the length if any. */
        http_stream_wait(st, REQUEST_WAIT_FILL_HEADERS);
        return MHD_YES;
}

enum MHD_Result http_miss_on_fill_headers(HttpServer *s, Request *req, RequestPending *p) {
        return respond_miss_when_ready(s, req, TAKE_PTR(p->fill.stream));
}

enum MHD_Result http_serve_miss(HttpServer *s, Request *req, struct MHD_Connection *c) {
        _cleanup_(fill_unrefp) Fill *f = NULL;
        Stream *st = NULL;
        int r;

        if (!s->fetcher)
                return http_respond_text(c, MHD_HTTP_NOT_FOUND, "Image not cached, and no upstream to fetch it from\n");
        /* Unknown ids go to the upstream once per NotFoundCacheSec=, however often they are asked for. */
        if (ttl_cache_get(s->not_found, req->match.id, now_usec(CLOCK_MONOTONIC), NULL))
                return http_respond_text(c, MHD_HTTP_NOT_FOUND, "No such image upstream\n");
        if (req->method == HTTP_METHOD_HEAD && fetcher_has_upstream(s->fetcher) && !fetcher_find(s->fetcher, req->match.id))
                return serve_head_probe(s, req, c);

        r = start_fill(s, req, req->match.id, &f);
        if (r == -EBUSY)
                return http_respond_429(c, req->retry_after);
        if (r == -ESRCH)
                return http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "Not fetching this image\n");
        if (r == -ENXIO)
                return http_respond_text(c, MHD_HTTP_NOT_FOUND, "Image not cached, and no upstream to fetch it from\n");
        if (r == -EUSERS) {
                char text[128];
                (void) snprintf(text, sizeof(text), "Too many fetches started from this address (MaxFetchesPerIP=%u)\n",
                                s->config->max_fills_per_ip);
                /* One of them ends sooner or later; a second is as good a guess as any. */
                return http_respond_text_with(c, MHD_HTTP_SERVICE_UNAVAILABLE, text, MHD_HTTP_HEADER_RETRY_AFTER, "1");
        }
        if (r < 0)
                return http_respond_printf(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
                                           "Failed to start fetching the image: %s\n", strerror(-r));

        if (req->method == HTTP_METHOD_GET)
                s->ops->count_miss(s->userdata, req->match.id);

        r = http_stream_new(s, req, f, &st);
        if (r < 0)
                return MHD_NO;
        return respond_miss_when_ready(s, req, st);
}

/* ---- ranges asked of the origin ------------------------------------------------------------------- */

/* The bounds on every range asked of the origin: not for a peer, once per request, at most
 * HTTP_RANGE_AHEAD_MAX long, HTTP_RANGE_AHEAD_PARALLEL at a time. */
static bool range_may_be_asked(HttpServer *s, Request *req, uint64_t length) {
        return !req->from_peer && !req->range_asked && length <= HTTP_RANGE_AHEAD_MAX &&
               s->n_range_queries < HTTP_RANGE_AHEAD_PARALLEL;
}

/* A range the fill will not reach soon (HTTP_RANGE_AHEAD_MIN past what it has written), small enough
 * to ask the origin for directly (HTTP_RANGE_AHEAD_MAX), while few such requests run: a client reading
 * an image's footer (qemu-img and a VHD, say) must not wait for the whole download. Peers want whole
 * images and are never answered this way. */
static bool range_is_far_ahead(HttpServer *s, Request *req, Fill *f, uint64_t start, uint64_t length) {
        uint64_t written = fill_bytes_written(f);

        return range_may_be_asked(s, req, length) && !fill_state_is_final(fill_state(f)) && start > written &&
               start - written >= HTTP_RANGE_AHEAD_MIN;
}

/* A fill waiting for a fetch slot (MaxParallelFetches) may wait for other images' downloads, so a range of
 * it is asked of the origin whatever its offset, on the same bounds as a range far ahead. Its length is
 * not known yet: only an explicit first-last range can be asked; a suffix or an open-ended one (which
 * end where the unknown length would) waits for the fill. */
static bool range_of_waiting_fill(HttpServer *s, Request *req, Fill *f, uint64_t *ret_start, uint64_t *ret_length) {
        struct MHD_Connection *c = req->connection;
        uint64_t start, length;

        if (fill_state(f) != FILL_PENDING || req->method != HTTP_METHOD_GET || http_header(c, MHD_HTTP_HEADER_IF_RANGE) ||
            http_range_parse(http_header(c, MHD_HTTP_HEADER_RANGE), UINT64_MAX, &start, &length) != HTTP_RANGE_SATISFIABLE ||
            start + length == UINT64_MAX || !range_may_be_asked(s, req, length))
                return false;
        *ret_start = start;
        *ret_length = length;
        return true;
}

static void on_range_answer(const UpstreamAnswer *a, void *userdata) {
        Request *req = userdata;

        req->pending.range.answer = *a;
        http_request_wake(req);
}

/* Asks the origin for the range, keeping st (and so the fill) to fall back on. The client was authorized
 * for the image before its miss began; the request goes with the daemon's credentials, as the fill. */
static enum MHD_Result ask_origin_for_range(HttpServer *s, Request *req, Stream *st, uint64_t start, uint64_t length) {
        int r;

        req->range_asked = true;
        if (!http_request_charge_upstream(req))
                return respond_miss_when_ready(s, req, st); /* the fill will get there */
        r = fetcher_query_range(s->fetcher, st->fill, start, length, on_range_answer, req, &req->pending.range.query);
        if (r < 0) {
                log_debug_errno(r, "Cannot ask the upstream for a range of %s, waiting for the fill: %m",
                                fill_image_id(st->fill));
                return respond_miss_when_ready(s, req, st);
        }
        s->n_range_queries++;  /* until the pending object is freed (http.c, request_pending_free()) */
        req->pending.range.stream = st;
        req->pending.range.start = start;
        req->pending.range.length = length;
        http_request_wait(req, REQUEST_WAIT_ORIGIN_RANGE);
        return MHD_YES;
}

/* The origin answered the range (or failed: then the fill serves it when it gets there). */
enum MHD_Result http_miss_on_origin_range(HttpServer *s, Request *req, RequestPending *p) {
        Stream *st = TAKE_PTR(p->range.stream);
        const UpstreamAnswer *a = &p->range.answer;
        uint64_t fill_total = fill_bytes_total(st->fill);
        struct MHD_Response *resp;

        /* Asked while the fill had no length, the answer must still agree with the one it has now. */
        if (!a->available || (fill_total != UINT64_MAX && a->size != fill_total)) {
                log_debug("The upstream did not answer the range of %s as asked (HTTP %ld): waiting for the fill",
                          fill_image_id(st->fill), a->status);
                return respond_miss_when_ready(s, req, st);
        }

        resp = MHD_create_response_from_buffer(a->data_size, (void *) a->data, MHD_RESPMEM_MUST_COPY);
        if (resp) {
                http_add_miss_headers(resp, st->fill, a->size);
                http_add_content_range(resp, p->range.start, p->range.length, a->size);
                s->counters.ranges_ahead++;
                /* Counted as served once it all went out, like a hit. */
                req->count_body = true;
                req->source = SERVE_SOURCE_UPSTREAM;
        }
        http_stream_free(st);
        return http_queue_response_sized(req->connection, MHD_HTTP_PARTIAL_CONTENT, resp, a->data_size);
}
