/* SPDX-License-Identifier: MIT */
/* The management side of the HTTP server (http-manage.h): Glance's cache API, /versions and the holders
 * reply, each dispatched to the Manager's operations; no libmicrohttpd here. */

#include <assert.h>
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <strings.h>

#include "http-manage.h"
#include "log.h"

#define JSON_CONTENT_TYPE "application/json"

/* The image API versions /versions advertises. The cache API arrived with 2.14 (Glance Yoga), and
 * python-glanceclient looks for it there before it offers its cache commands. */
#define VERSIONS_CURRENT_MINOR 16

void http_reply_done(HttpReply *r) {
        if (!r)
                return;
        free(r->body);
        r->body = NULL;
}

static int reply_json(HttpReply *ret, unsigned status, json_t *j) {
        char *s = json_dumps(j, JSON_COMPACT);
        if (!s)
                return -ENOMEM;
        *ret = (HttpReply) { .status = status, .body = s, .content_type = JSON_CONTENT_TYPE };
        return 0;
}

int http_manage_holders_reply(const char *id, char *const *holders, HttpReply *ret) {
        json_t *nodes = json_array(), *j = json_pack("{s:s, s:o}", "image_id", id, "cached_nodes", nodes);
        int r;

        if (!j)
                return -ENOMEM;
        for (char *const *h = holders; *h; h++)
                if (json_array_append_new(nodes, json_string(*h)) < 0) {
                        json_decref(j);
                        return -ENOMEM;
                }
        r = reply_json(ret, 200, j);
        json_decref(j);
        return r;
}

static int reply_status(HttpReply *ret, unsigned status) {
        *ret = (HttpReply) { .status = status };
        return 0;
}

static int reply_text(HttpReply *ret, unsigned status, const char *text) {
        char *s = strdup(text);
        if (!s)
                return -ENOMEM;
        *ret = (HttpReply) { .status = status, .body = s, .content_type = "text/plain; charset=utf-8" };
        return 0;
}

static double usec_to_epoch(usec_t t) {
        return (double) t / (double) USEC_PER_SEC;
}

static json_t *cached_images_json(ImageCache *cache) {
        json_auto_t *a = json_array();
        const CacheEntry **entries = NULL;
        size_t n = 0;

        if (!a || image_cache_list(cache, &entries, &n) < 0)
                return NULL;

        for (size_t i = 0; i < n; i++) {
                const CacheEntry *e = entries[i];
                json_t *o = json_pack("{s:s, s:I, s:f, s:f, s:I}",
                                      "image_id", e->id,
                                      "hits", (json_int_t) e->hits,
                                      "last_accessed", usec_to_epoch(e->last_accessed),
                                      "last_modified", usec_to_epoch(e->last_modified),
                                      "size", (json_int_t) e->size);
                if (!o || json_array_append_new(a, o) < 0) {
                        free(entries);
                        return NULL;
                }
        }

        free(entries);
        return TAKE_PTR(a);
}

static json_t *queued_images_json(ImageCache *cache) {
        json_auto_t *a = json_array();
        QueuedImage *q = NULL;
        size_t n = 0;

        if (!a || image_cache_list_queued(cache, &q, &n) < 0)
                return NULL;

        /* image_cache_list_queued() lists oldest first: the order prefetch processes them. */
        for (size_t i = 0; i < n; i++)
                if (json_array_append_new(a, json_string(q[i].id)) < 0) {
                        queued_images_free(q, n);
                        return NULL;
                }

        queued_images_free(q, n);
        return TAKE_PTR(a);
}

/* Deletes the cached copy and the queue entry. 1 when either existed; -EBUSY, leaving both, when the
 * image is pinned. */
static int delete_image(const HttpManageContext *ctx, const char *id) {
        bool found = false;
        int r;

        r = ctx->ops->delete_image(ctx->userdata, id);
        if (r < 0 && r != -ENOENT)
                return r;
        found = r >= 0;

        r = ctx->ops->dequeue_image(ctx->userdata, id);
        if (r < 0)
                return r;
        return found || r > 0;
}

json_t *http_manage_versions(const char *href) {
        json_t *versions = json_array();

        if (!versions)
                return NULL;
        for (int minor = VERSIONS_CURRENT_MINOR; minor >= 0; minor--) {
                char id[16];
                snprintf(id, sizeof(id), "v2.%d", minor);
                json_t *v = json_pack("{s:s, s:s, s:[{s:s, s:s}]}",
                                      "id", id,
                                      "status", minor == VERSIONS_CURRENT_MINOR ? "CURRENT" : "SUPPORTED",
                                      "links", "rel", "self", "href", href);
                if (!v || json_array_append_new(versions, v) < 0) {
                        json_decref(versions);
                        return NULL;
                }
        }
        return versions;
}

static int versions_reply(const char *host, HttpReply *ret) {
        char href[300];

        snprintf(href, sizeof(href), "http://%s/v2/", http_host_is_sane(host) ? host : "localhost");
        json_auto_t *versions = http_manage_versions(href);
        if (!versions)
                return -ENOMEM;
        json_auto_t *j = json_pack("{s:O}", "versions", versions);
        if (!j)
                return -ENOMEM;
        /* Glance answers /versions with 300 Multiple Choices on "/", and 200 on /versions. */
        return reply_json(ret, 200, j);
}

static int error_reply(HttpReply *ret, int r, const char *what) {
        char msg[256];

        if (r == -ENOMEM)
                return r;
        snprintf(msg, sizeof(msg), "%s: %s\n", what, strerror(-r));
        return reply_text(ret, 500, msg);
}

/* A pinned image stays (DESIGN.md, "Pins"); who pinned it and why is for the bus (ListPins), not for an
 * HTTP client. */
static int pinned_reply(HttpReply *ret) {
        return reply_text(ret, 409, "Image is in use and cannot be deleted\n");
}

int http_manage_dispatch(const HttpManageContext *ctx, const HttpRouteMatch *route, HttpMethod method,
                         const char *clear_target, const char *host, HttpReply *ret) {
        json_auto_t *j = NULL;
        unsigned n = 0, m = 0;
        int r;

        assert(ctx);
        assert(route);
        assert(route->status == 0);
        assert(ret);

        switch (route->route) {

        case HTTP_ROUTE_VERSIONS:
                return versions_reply(host, ret);

        case HTTP_ROUTE_CACHE:
                if (method == HTTP_METHOD_GET) {
                        json_t *cached = cached_images_json(ctx->cache), *queued = queued_images_json(ctx->cache);
                        if (!cached || !queued) {
                                json_decref(cached);
                                json_decref(queued);
                                return -ENOMEM;
                        }
                        j = json_pack("{s:o, s:o}", "cached_images", cached, "queued_images", queued);
                        if (!j)
                                return -ENOMEM;
                        return reply_json(ret, 200, j);
                }

                /* DELETE: x-image-cache-clear-target says what to clear; absent, empty or "both" is both. */
                bool cache = true, queue = true;
                if (!isempty(clear_target) && strcasecmp(clear_target, "both") != 0) {
                        if (strcasecmp(clear_target, "cache") == 0)
                                queue = false;
                        else if (strcasecmp(clear_target, "queue") == 0)
                                cache = false;
                        else
                                return reply_text(ret, 400,
                                                  "x-image-cache-clear-target must be 'cache', 'queue' or 'both'\n");
                }
                if (cache && (r = ctx->ops->delete_all_images(ctx->userdata, &n)) < 0)
                        return error_reply(ret, r, "Failed to delete cached images");
                if (queue && (r = ctx->ops->dequeue_all(ctx->userdata, &m)) < 0)
                        return error_reply(ret, r, "Failed to delete queued images");
                return reply_status(ret, 204);

        case HTTP_ROUTE_CACHE_IMAGE:
                if (method == HTTP_METHOD_PUT) {
                        r = ctx->ops->queue_image(ctx->userdata, route->id);
                        if (r < 0)
                                return error_reply(ret, r, "Failed to queue image");
                        return reply_status(ret, 202);
                }
                r = delete_image(ctx, route->id);
                if (r == -EBUSY)
                        return pinned_reply(ret);
                if (r < 0)
                        return error_reply(ret, r, "Failed to delete image");
                if (r == 0)
                        return reply_text(ret, 404, "Image is neither cached nor queued\n");
                return reply_status(ret, 204);

        case HTTP_ROUTE_CACHE_PRUNE: {
                bool limit_failed;
                SpaceResult res;

                r = ctx->ops->prune(ctx->userdata, &res, &limit_failed);
                if (r < 0)
                        return error_reply(ret, r, limit_failed ? "Failed to prune the cache: MaxSize= or KeepFree= is "
                                                                  "a share of a filesystem that cannot be examined"
                                                                : "Failed to prune the cache");
                /* Glance's two fields, then what pins kept and what KeepFree still lacks. */
                j = json_pack("{s:I, s:I, s:I, s:I}", "total_files_pruned", (json_int_t) res.files,
                              "total_bytes_pruned", (json_int_t) res.bytes,
                              "bytes_pinned_over_max_size", (json_int_t) res.pinned_over_max,
                              "bytes_short_of_keep_free", (json_int_t) res.keep_free_missing);
                if (!j)
                        return -ENOMEM;
                return reply_json(ret, 200, j);
        }

        case HTTP_ROUTE_CACHE_CLEAN:
                r = ctx->ops->clean(ctx->userdata, &n, &m);
                if (r < 0)
                        return error_reply(ret, r, "Failed to clean the cache");
                j = json_pack("{s:I, s:I}", "total_stalled_removed", (json_int_t) n,
                              "total_invalid_removed", (json_int_t) m);
                if (!j)
                        return -ENOMEM;
                return reply_json(ret, 200, j);

        case HTTP_ROUTE_CACHED_IMAGES:
                if (method == HTTP_METHOD_GET) {
                        json_t *cached = cached_images_json(ctx->cache);
                        if (!cached)
                                return -ENOMEM;
                        j = json_pack("{s:o}", "cached_images", cached);
                } else {
                        r = ctx->ops->delete_all_images(ctx->userdata, &n);
                        if (r < 0)
                                return error_reply(ret, r, "Failed to delete cached images");
                        j = json_pack("{s:I}", "num_deleted", (json_int_t) n);
                }
                if (!j)
                        return -ENOMEM;
                return reply_json(ret, 200, j);

        case HTTP_ROUTE_CACHED_IMAGE:
                /* Glance's middleware: DELETE /cached_images/<id>, 200 whether or not it was cached. */
                r = ctx->ops->delete_image(ctx->userdata, route->id);
                if (r == -EBUSY)
                        return pinned_reply(ret);
                if (r < 0 && r != -ENOENT)
                        return error_reply(ret, r, "Failed to delete image");
                return reply_status(ret, 200);

        case HTTP_ROUTE_QUEUED_IMAGES:
                if (method == HTTP_METHOD_GET) {
                        json_t *queued = queued_images_json(ctx->cache);
                        if (!queued)
                                return -ENOMEM;
                        j = json_pack("{s:o}", "queued_images", queued);
                } else {
                        r = ctx->ops->dequeue_all(ctx->userdata, &n);
                        if (r < 0)
                                return error_reply(ret, r, "Failed to delete queued images");
                        j = json_pack("{s:I}", "num_deleted", (json_int_t) n);
                }
                if (!j)
                        return -ENOMEM;
                return reply_json(ret, 200, j);

        case HTTP_ROUTE_QUEUED_IMAGE:
                if (method == HTTP_METHOD_PUT)
                        r = ctx->ops->queue_image(ctx->userdata, route->id);
                else
                        r = ctx->ops->dequeue_image(ctx->userdata, route->id);
                if (r < 0)
                        return error_reply(ret, r, method == HTTP_METHOD_PUT ? "Failed to queue image"
                                                                             : "Failed to dequeue image");
                return reply_status(ret, 200);

        default:
                assert(!"not a management route");
                return reply_status(ret, 404);
        }
}

typedef struct Metric {
        const char *name, *type, *help;
        uint64_t value; /* UINT64_MAX: unknown (a filesystem that cannot be examined) or not configured */
} Metric;

static void write_metrics(FILE *f, const Metric *metrics, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (metrics[i].value != UINT64_MAX) {
                        metrics_family(f, metrics[i].name, metrics[i].type, metrics[i].help);
                        metrics_sample(f, metrics[i].name, NULL, NULL, metrics[i].value);
                }
}

static void write_labelled_metrics(FILE *f, const HttpCounters *counters, const HttpMetrics *ext) {
        static const char *const classes[] = { NULL, "1xx", "2xx", "3xx", "4xx", "5xx" };

        metrics_family(f, "imgcache_http_responses_total", "counter", "HTTP responses sent, by status class.");
        for (size_t i = 1; i < ELEMENTSOF(classes); i++)
                metrics_sample(f, "imgcache_http_responses_total", "code", classes[i], counters->responses[i]);

        metrics_family(f, "imgcache_served_bytes_total", "counter",
                       "Image bytes sent to HTTP clients, by where they came from (a hit, or a fill from the "
                       "upstream or a peer).");
        for (ServeSource src = 0; src < _SERVE_SOURCE_MAX; src++)
                metrics_sample(f, "imgcache_served_bytes_total", "source", serve_source_to_string(src),
                               counters->served_bytes[src]);

        metrics_family(f, "imgcache_http_refused_total", "counter",
                       "HTTP requests turned away before they were served, by why: the client address's "
                       "upstream budget (UpstreamRequestsPerIP=), its running fetches (MaxFetchesPerIP=), a "
                       "body nobody takes, its connections (MaxConnectionsPerIP=).");
        for (HttpRefusal r = 0; r < _HTTP_REFUSED_MAX; r++)
                metrics_sample(f, "imgcache_http_refused_total", "reason", http_refusal_to_string(r),
                               counters->refused[r]);

        metrics_family(f, "imgcache_upstream_errors_total", "counter",
                       "Fills that failed by the upstream's (or a peer's) doing, by kind.");
        for (UpstreamErrorKind k = 0; k < _UPSTREAM_ERROR_MAX; k++)
                metrics_sample(f, "imgcache_upstream_errors_total", "kind", upstream_error_kind_to_string(k),
                               ext->upstream_errors ? ext->upstream_errors[k] : 0);

        if (ext->fill_durations)
                metrics_histogram(f, "imgcache_fill_duration_seconds",
                                  "Time from the start of a fill to the image kept, of fills that completed.",
                                  ext->fill_durations);
}

char *http_metrics_render(const HttpManageContext *ctx, const HttpCounters *counters) {
        HttpMetrics ext = {};
        char *buf = NULL;
        size_t size = 0;

        ctx->ops->metrics(ctx->userdata, &ext);
#define FLEET_ONLY(v) (ext.fleet ? (v) : UINT64_MAX)

        const Metric metrics[] = {
                { "imgcache_http_requests_total", "counter", "HTTP requests answered.", counters->requests },
                { "imgcache_http_connections", "gauge", "Open HTTP connections.", counters->connections },
                { "imgcache_hits_total", "counter", "Images answered from the cache (HTTP GETs and OpenImage).",
                  ext.hits },
                { "imgcache_misses_total", "counter", "Images asked for that were not cached (HTTP GETs and OpenImage).",
                  ext.misses },
                { "imgcache_bytes_served_total", "counter", "Image bytes sent to HTTP clients.", ext.bytes_served },
                { "imgcache_bytes_fetched_total", "counter", "Bytes fetched from the upstream.", ext.bytes_fetched },
                { "imgcache_cache_size_bytes", "gauge", "Bytes of complete images in the cache.", image_cache_size(ctx->cache) },
                { "imgcache_cache_images", "gauge", "Complete images in the cache.", image_cache_count(ctx->cache) },
                { "imgcache_free_bytes", "gauge", "Bytes available on the cache's filesystem.", ext.free_bytes },
                { "imgcache_keep_free_bytes", "gauge", "KeepFree= in bytes: the daemon prunes when free space falls below.",
                  ext.keep_free_bytes },
                { "imgcache_cache_max_size_bytes", "gauge", "MaxSize= in bytes: the daemon prunes above.",
                  ext.max_size_bytes },
                { "imgcache_queue_images", "gauge", "Images queued for prefetching.", ext.queued },
                { "imgcache_pins", "gauge", "Pins held on cached images.", ext.pins },
                { "imgcache_http_ranges_ahead_total", "counter",
                  "Ranges far ahead of a fill answered by asking the upstream for them directly.", counters->ranges_ahead },
                { "imgcache_evictions_total", "counter", "Images pruned or evicted to make room.", ext.evictions },
                { "imgcache_http_pass_requests_total", "counter",
                  "Glance API requests passed through to the upstream (neither hit nor miss).", counters->pass_requests },
                { "imgcache_http_pass_sent_bytes_total", "counter", "Request body bytes passed through to the upstream.",
                  counters->pass_bytes_up },
                { "imgcache_http_pass_received_bytes_total", "counter", "Response body bytes passed through to clients.",
                  counters->pass_bytes_down },
                { "imgcache_upstream_gone_dropped_total", "counter",
                  "Cached images dropped because the upstream deleted or deactivated them.", counters->evictions_upstream },
                { "imgcache_transfers_active", "gauge", "Fills from the upstream not finished yet.",
                  ext.transfers_active },
                { "imgcache_transfers_started_total", "counter", "Fills from the upstream started.", ext.transfers_started },
                { "imgcache_transfers_failed_total", "counter", "Fills from the upstream that failed.", ext.transfers_failed },
                /* The fleet tier's, with a [Fleet] only. */
                { "imgcache_fleet_fetched_from_peers_bytes_total", "counter", "Image bytes fills took from peers of the fleet.",
                  FLEET_ONLY(ext.fleet_bytes_from_peers) },
                { "imgcache_fleet_fetched_from_origin_bytes_total", "counter", "Image bytes fills took from the upstream.",
                  FLEET_ONLY(ext.fleet_bytes_from_origin) },
                { "imgcache_fleet_served_to_peers_bytes_total", "counter", "Image bytes sent to peers of the fleet.",
                  FLEET_ONLY(counters->bytes_to_peers) },
                { "imgcache_fleet_origin_fetches_saved_total", "counter", "Images kept that a peer supplied instead of the upstream.",
                  FLEET_ONLY(ext.fleet_origin_fetches_saved) },
                { "imgcache_fleet_peer_failovers_total", "counter", "Times a fill left a failing peer for the next source.",
                  FLEET_ONLY(ext.fleet_peer_failovers) },
                { "imgcache_fleet_peer_streams_peak", "gauge",
                  "The most peer streams of one image this node served at once (at most FanOut=).",
                  FLEET_ONLY(ext.fleet_peer_streams_peak) },
                { "imgcache_fleet_redirects_given_total", "counter",
                  "Peers pointed at another node receiving the image, as this node served FanOut= of them.",
                  FLEET_ONLY(ext.fleet_redirects_given) },
                { "imgcache_fleet_redirects_followed_total", "counter",
                  "Times a fill was pointed at another node by a peer at its FanOut=, and asked it.",
                  FLEET_ONLY(ext.fleet_redirects_followed) },
                { "imgcache_fleet_fanout_refused_total", "counter",
                  "Peers refused at FanOut=, every receiver being one they were pointed away from.",
                  FLEET_ONLY(ext.fleet_fanout_refused) },
                { "imgcache_fleet_tree_depth", "gauge",
                  "The longest path of peers an image this node filled came through (1: from the owner).",
                  FLEET_ONLY(ext.fleet_tree_depth) },
        };

#undef FLEET_ONLY
        FILE *f = open_memstream(&buf, &size);
        if (!f)
                return NULL;

        write_metrics(f, metrics, ELEMENTSOF(metrics));
        write_labelled_metrics(f, counters, &ext);

        if (ferror(f) || fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}
