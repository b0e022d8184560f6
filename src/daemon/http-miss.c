/* SPDX-License-Identifier: MIT */
/* Starting a miss: the not-found cache (NotFoundCacheSec=), the HEAD probe of an image nobody fetches,
 * MaxFetchesPerIP=, and the hand-over of the fill to its stream (http-stream.c). */

#include <string.h>

#include "http-internal.h"
#include "ttl-cache.h"

void http_server_remember_not_found(HttpServer *s, const char *id) {
        ttl_cache_put(s->not_found, id, 1, s->config->not_found_cache);
}

/* A HEAD of an image that is neither cached nor being fetched: answered from what the upstream says of
 * it (the Glance record, or a HEAD), without fetching it. */
static enum MHD_Result serve_head_probe(HttpServer *s, Request *req, struct MHD_Connection *c) {
        int r;

        r = fetcher_query(s->fetcher, req->match.id, /* credentials= */ NULL, http_request_on_probe_answer, req,
                          &req->probe);
        if (r < 0)
                return http_respond_text(c, MHD_HTTP_BAD_GATEWAY, "Fetching the image from the upstream failed\n");
        http_request_suspend(req);
        return MHD_YES;
}

enum MHD_Result http_respond_probe(HttpServer *s, Request *req, struct MHD_Connection *c) {
        const UpstreamAnswer *a = &req->probe_answer;
        struct MHD_Response *resp;

        if (a->status == 404 || a->status == 410 || (a->status >= 200 && a->status < 300 && !a->available)) {
                http_server_remember_not_found(s, req->match.id);
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
static int http_server_fill(HttpServer *s, Request *req, struct MHD_Connection *c, const char *id, Fill **ret) {
        char key[PEER_KEY_MAX];
        bool counted;
        int r;

        /* A node of the fleet asks on behalf of its clients, which it limits itself. */
        counted = !req->from_peer && !fetcher_find(s->fetcher, id) && peer_key(c, key);
        if (counted && peer_counts_get(s->peer_fill_counts, key) >= s->config->max_fills_per_ip)
                return -EUSERS;

        /* A peer's request is never forwarded again: it goes to the origin, or joins the running fill. */
        r = fetcher_fill_full(s->fetcher, id, /* expected= */ NULL, req->from_peer ? FETCH_ORIGIN_ONLY : 0, ret);
        if (r < 0 || !counted || fill_state_is_final(fill_state(*ret)))
                return r;
        r = peer_fill_new(s, key, *ret);
        if (r < 0)
                *ret = fill_unref(*ret);
        return r;
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

        r = http_server_fill(s, req, c, req->match.id, &f);
        if (r == -ENXIO)
                return http_respond_text(c, MHD_HTTP_NOT_FOUND, "Image not cached, and no upstream to fetch it from\n");
        if (r == -EUSERS)
                return http_respond_printf(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                      "Too many fetches started from this address (MaxFetchesPerIP=%u)\n",
                                      s->config->max_fills_per_ip);
        if (r < 0)
                return http_respond_printf(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "Failed to start fetching the image: %s\n",
                                      strerror(-r));

        if (req->method == HTTP_METHOD_GET)
                s->ops->count_miss(s->userdata, req->match.id);

        r = http_stream_new(s, c, f, &st);
        if (r < 0)
                return MHD_NO;
        st->to_peer = req->from_peer;
        st->request = req;

        return http_respond_miss_when_ready(s, req, c, st);
}
