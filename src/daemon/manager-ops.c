/* SPDX-License-Identifier: MIT */
/* The operations on the cache that every front end goes through: the D-Bus methods (manager-dbus.c,
 * after polkit) and the HTTP management API (http-manage.c, after the token check, through the
 * HttpOperations table below). Whatever an operation implies besides the store's own work — the
 * ImageQueued signal, QueuedCount, the retry state of queued images, a PrefetchOnQueue job, the
 * log line — happens here, once, whoever asked. The counters of hits, misses and bytes served have one
 * owner, the Manager (manager_count_*() in manager.c): the Misses property and /metrics read the same
 * numbers. */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "fleet.h"
#include "http.h"
#include "log.h"
#include "manager.h"
#include "parse-util.h"

/* ---- the queue ---------------------------------------------------------------------------------- */

int manager_queue_image(Manager *m, const char *id, const Checksum *expected) {
        _cleanup_(freep) char *shown = NULL;
        int r;

        if (image_cache_is_cached(m->cache, id) || image_cache_is_queued(m->cache, id))
                return 0;
        /* The checksum goes into the marker, so it holds for every fill of the image, after a restart too. */
        r = image_cache_queue(m->cache, id, expected);
        if (r <= 0)
                return r;

        if (expected) {
                shown = checksum_to_string(expected);
                if (!shown)
                        return -ENOMEM;
        }
        log_image(LOG_INFO, NULL, id, "Queued image %s%s%s.", id, shown ? " expecting " : "", strempty(shown));
        if (m->bus)
                (void) sd_bus_emit_signal(m->bus, MANAGER_PATH, MANAGER_INTERFACE, "ImageQueued", "s", id);
        manager_properties_changed(m);
        manager_fetch_queued(m, id); /* PrefetchOnQueue=yes */
        return 1;
}

int manager_dequeue_image(Manager *m, const char *id) {
        int r;

        r = image_cache_dequeue(m->cache, id);
        if (r <= 0)
                return r;
        manager_forget_retry(m, id);
        log_image(LOG_INFO, NULL, id, "Dequeued image %s.", id);
        manager_properties_changed(m);
        return 1;
}

int manager_dequeue_all(Manager *m, unsigned *ret_n) {
        unsigned n = 0;
        int r;

        r = image_cache_dequeue_all(m->cache, &n);
        if (r < 0)
                return r;
        manager_forget_retries(m);
        log_info("Dequeued %u images.", n);
        manager_properties_changed(m);
        if (ret_n)
                *ret_n = n;
        return 0;
}

/* ---- removal and maintenance -------------------------------------------------------------------- */

/* Signals, properties and the log line of each removal come from the store's observer (manager.c), which
 * also ends the pins of an image deleted while pinned. A pin is a promise to its holder that the image
 * stays: only a caller who says so (ignore_pins) breaks it. Checked here, not only by the front ends,
 * because a pin may be taken while polkit decides about the delete. */
int manager_delete_image(Manager *m, const char *id, bool ignore_pins) {
        if (!ignore_pins && image_cache_is_pinned(m->cache, id))
                return -EBUSY;
        return image_cache_delete(m->cache, id);
}

/* Deletes the unpinned images one by one; stops at the first failure like image_cache_delete_all(). */
static int delete_unpinned(Manager *m, unsigned *ret_deleted, unsigned *ret_skipped) {
        _cleanup_(freep) const CacheEntry **entries = NULL;
        size_t n;
        int r;

        r = image_cache_list(m->cache, &entries, &n);
        if (r < 0)
                return r;
        /* Each delete frees only its own entry: the later pointers stay valid. */
        for (size_t i = 0; i < n; i++) {
                if (image_cache_is_pinned(m->cache, entries[i]->id)) {
                        (*ret_skipped)++;
                        continue;
                }
                r = image_cache_delete(m->cache, entries[i]->id);
                if (r < 0)
                        return r;
                (*ret_deleted)++;
        }
        return 0;
}

/* Skips pinned images rather than failing: "delete everything" from a timer or a Glance client must not
 * stop at the one image a VM is booting from, nor take it away. The skipped ones are logged. */
int manager_delete_all_images(Manager *m, unsigned *ret_n) {
        unsigned deleted = 0, skipped = 0;
        int r;

        if (m->n_pins == 0)
                r = image_cache_delete_all(m->cache, &deleted); /* one transaction */
        else
                r = delete_unpinned(m, &deleted, &skipped);
        if (r < 0)
                log_warning_errno(r, "Deleted %u %s, then failed: %m", deleted, plural(deleted, "image", "images"));
        else
                log_info("Deleted %u %s, skipped %u pinned.", deleted, plural(deleted, "image", "images"), skipped);
        if (ret_n)
                *ret_n = deleted;
        return r;
}

int manager_max_size(const Manager *m, uint64_t *ret) {
        if (!m->cache)
                return -ENXIO;
        return image_cache_resolve_limit(m->cache, &m->config.max_size, ret);
}

int manager_keep_free(const Manager *m, uint64_t *ret) {
        if (!m->cache)
                return -ENXIO;
        return image_cache_resolve_limit(m->cache, &m->config.keep_free, ret);
}

/* What making room did and could not do, for the journal. */
void manager_log_space(const char *what, const SpaceResult *res, uint64_t max_size, uint64_t keep_free) {
        char freed[FORMAT_SIZE_MAX], max[FORMAT_SIZE_MAX] = "unbounded", keep[FORMAT_SIZE_MAX], size[FORMAT_SIZE_MAX],
                pinned[96] = "", missing[128] = "";

        if (max_size != UINT64_MAX)
                (void) format_size(max, sizeof max, max_size);
        if (res->pinned_over_max > 0)
                (void) snprintf(pinned, sizeof pinned, " Pinned images keep the cache %s above MaxSize.",
                                format_size(size, sizeof size, res->pinned_over_max));
        if (res->keep_free_missing > 0)
                (void) snprintf(missing, sizeof missing, " Free space is %s short of KeepFree, with nothing unpinned left.",
                                format_size(size, sizeof size, res->keep_free_missing));
        log_info("%s %u images, %s (MaxSize %s, KeepFree %s).%s%s", what, res->files,
                 format_size(freed, sizeof freed, res->bytes), max, format_size(keep, sizeof keep, keep_free), pinned,
                 missing);
}

int manager_prune(Manager *m, SpaceResult *ret, bool *ret_limit_failed) {
        uint64_t max_size, keep_free;
        int r;

        *ret_limit_failed = false;
        /* A limit that cannot be resolved is not guessed: a guess of 0 would empty the cache. */
        r = manager_max_size(m, &max_size);
        if (r >= 0)
                r = manager_keep_free(m, &keep_free);
        if (r < 0) {
                *ret_limit_failed = true;
                return log_warning_errno(r, "Cannot prune %s: MaxSize= or KeepFree= cannot be resolved: %m",
                                         m->cache_dir);
        }
        r = image_cache_make_room(m->cache, 0, max_size, keep_free, ret);
        if (r < 0)
                return r;
        manager_log_space("Pruned", ret, max_size, keep_free);
        return 0;
}

int manager_clean(Manager *m, usec_t stall, unsigned *ret_stalled, unsigned *ret_invalid) {
        unsigned stalled = 0, invalid = 0;
        int r;

        r = image_cache_clean(m->cache, stall > 0 ? stall : m->config.stall_time, &stalled, &invalid);
        if (r < 0)
                return r;
        if (stalled + invalid > 0)
                log_info("Cleaned %u stalled and %u invalid files.", stalled, invalid);
        *ret_stalled = stalled;
        *ret_invalid = invalid;
        return 0;
}

/* ---- the same operations for the HTTP server (http.h) ----------------------------------------- */

static void http_count_hit(void *userdata, const char *id) {
        Manager *m = userdata;

        /* The HTTP server has the file open already; OpenImage's open counts the hit in the store. */
        (void) image_cache_record_hit(m->cache, id);
        manager_count_hit(m, id);
}

static void http_count_miss(void *userdata, const char *id) {
        manager_count_miss(userdata, id);
}

static void http_count_bytes_served(void *userdata, uint64_t n) {
        manager_count_bytes_served(userdata, n);
}

static int http_queue_image(void *userdata, const char *id) {
        return manager_queue_image(userdata, id, /* expected= */ NULL);
}

static int http_dequeue_image(void *userdata, const char *id) {
        return manager_dequeue_image(userdata, id);
}

static int http_dequeue_all(void *userdata, unsigned *ret_n) {
        return manager_dequeue_all(userdata, ret_n);
}

/* HTTP never breaks a pin: -EBUSY is its 409. */
static int http_delete_image(void *userdata, const char *id) {
        return manager_delete_image(userdata, id, /* ignore_pins= */ false);
}

static int http_delete_all_images(void *userdata, unsigned *ret_n) {
        return manager_delete_all_images(userdata, ret_n);
}

static int http_prune(void *userdata, SpaceResult *ret, bool *ret_limit_failed) {
        return manager_prune(userdata, ret, ret_limit_failed);
}

static int http_clean(void *userdata, unsigned *ret_stalled, unsigned *ret_invalid) {
        return manager_clean(userdata, /* stall= */ 0, ret_stalled, ret_invalid);
}

static void http_metrics(void *userdata, HttpMetrics *ret) {
        Manager *m = userdata;

        *ret = (HttpMetrics) {
                .hits = m->hits,
                .misses = m->misses,
                .bytes_served = m->bytes_served,
                .bytes_fetched = m->bytes_fetched,
                .evictions = m->evictions,
                .transfers_active = m->fetcher ? fetcher_n_active(m->fetcher) : 0,
                .transfers_started = m->fills_started,
                .transfers_failed = m->fills_failed,
                .free_bytes = UINT64_MAX,
                .keep_free_bytes = UINT64_MAX,
                .max_size_bytes = UINT64_MAX,
                .queued = manager_queued_count(m),
                .pins = m->n_pins,
                .fill_durations = &m->fill_durations,
                .upstream_errors = m->upstream_errors,
        };
        if (m->cache)
                (void) image_cache_fs_space(m->cache, NULL, &ret->free_bytes);
        (void) manager_keep_free(m, &ret->keep_free_bytes);
        (void) manager_max_size(m, &ret->max_size_bytes);
        if (m->fleet && m->fetcher) {
                const FleetCounters *fc = fetcher_fleet_counters(m->fetcher);
                ret->fleet = true;
                ret->fleet_bytes_from_peers = fc->bytes_from_peers;
                ret->fleet_bytes_from_origin = fc->bytes_from_origin;
                ret->fleet_origin_fetches_saved = fc->fills_from_peers;
                ret->fleet_peer_failovers = fc->peer_failovers;
                ret->fleet_redirects_followed = fc->redirects_followed;
                ret->fleet_tree_depth = fc->tree_depth;
                const FanoutStats *fs = fleet_fanout_stats(fleet_fanout(m->fleet));
                ret->fleet_redirects_given = fs->redirects_given;
                ret->fleet_fanout_refused = fs->refused;
                ret->fleet_peer_streams_peak = fs->streams_peak;
        }
}

const HttpOperations manager_http_operations = {
        .count_hit = http_count_hit,
        .count_miss = http_count_miss,
        .count_bytes_served = http_count_bytes_served,
        .queue_image = http_queue_image,
        .dequeue_image = http_dequeue_image,
        .dequeue_all = http_dequeue_all,
        .delete_image = http_delete_image,
        .delete_all_images = http_delete_all_images,
        .prune = http_prune,
        .clean = http_clean,
        .metrics = http_metrics,
};
