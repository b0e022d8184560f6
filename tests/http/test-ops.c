/* SPDX-License-Identifier: MIT */

#include <errno.h>

#include "test-ops.h"

static void count_hit(void *userdata, const char *id) {
        TestOps *t = userdata;
        (void) image_cache_record_hit(t->cache, id);
        t->hits++;
}

static void count_miss(void *userdata, const char *id) {
        TestOps *t = userdata;
        t->misses++;
}

static void count_bytes_served(void *userdata, uint64_t n) {
        TestOps *t = userdata;
        t->bytes_served += n;
}

static int queue_image(void *userdata, const char *id) {
        TestOps *t = userdata;
        Fill *f = NULL;
        int r;

        r = image_cache_queue(t->cache, id, NULL);
        if (r <= 0 || !t->config->prefetch_on_queue || !t->fetcher || !fetcher_has_upstream(t->fetcher))
                return r;
        if (fetcher_fill(t->fetcher, id, NULL, &f) >= 0)
                fill_unref(f);
        return r;
}

static int dequeue_image(void *userdata, const char *id) {
        TestOps *t = userdata;
        return image_cache_dequeue(t->cache, id);
}

static int dequeue_all(void *userdata, unsigned *ret_n) {
        TestOps *t = userdata;
        return image_cache_dequeue_all(t->cache, ret_n);
}

static int delete_image(void *userdata, const char *id) {
        TestOps *t = userdata;
        return image_cache_delete(t->cache, id);
}

static int delete_all_images(void *userdata, unsigned *ret_n) {
        TestOps *t = userdata;
        return image_cache_delete_all(t->cache, ret_n);
}

static int prune(void *userdata, SpaceResult *ret, bool *ret_limit_failed) {
        TestOps *t = userdata;
        uint64_t max_size, keep_free;
        int r;

        r = image_cache_resolve_limit(t->cache, &t->config->max_size, &max_size);
        if (r >= 0)
                r = image_cache_resolve_limit(t->cache, &t->config->keep_free, &keep_free);
        *ret_limit_failed = r < 0;
        if (r < 0)
                return r;
        return image_cache_make_room(t->cache, 0, max_size, keep_free, ret);
}

static int clean(void *userdata, unsigned *ret_stalled, unsigned *ret_invalid) {
        TestOps *t = userdata;
        return image_cache_clean(t->cache, t->config->stall_time, ret_stalled, ret_invalid);
}

static void metrics(void *userdata, HttpMetrics *ret) {
        TestOps *t = userdata;

        *ret = (HttpMetrics) {
                .hits = t->hits,
                .misses = t->misses,
                .bytes_served = t->bytes_served,
                .transfers_active = t->fetcher ? fetcher_n_active(t->fetcher) : 0,
        };
}

const HttpOperations test_http_operations = {
        .count_hit = count_hit,
        .count_miss = count_miss,
        .count_bytes_served = count_bytes_served,
        .queue_image = queue_image,
        .dequeue_image = dequeue_image,
        .dequeue_all = dequeue_all,
        .delete_image = delete_image,
        .delete_all_images = delete_all_images,
        .prune = prune,
        .clean = clean,
        .metrics = metrics,
};
