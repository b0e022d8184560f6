/* SPDX-License-Identifier: MIT */

/* The fetcher against a real upstream (tests/lib/upstream-fixture.h) over loopback, with real files in a
 * scratch cache directory. Every wait runs the sd-event loop until the awaited state, bounded by a
 * deadline; nothing sleeps. */

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "fetch.h"
#include "log.h"
#include "test-util.h"
#include "test-verify.h"
#include "upstream-fixture.h"

#define WAIT_USEC (30 * USEC_PER_SEC)

typedef struct Env {
        char *dir;
        char *cache_dir;
        sd_event *event;
        ImageCache *cache;
        Config config;
        Fetcher *fetcher;
        UpstreamFixture *fx;
} Env;

static void env_open_cache(Env *e) {
        char *error = NULL;
        int r = image_cache_open(e->cache_dir, DRIVER_SQLITE, &e->cache, &error);
        if (r < 0)
                g_error("image_cache_open(%s): %s", e->cache_dir, error ?: strerror(-r));
}

/* A cache directory, a fixture and a configuration pointing at it. The fetcher is made by env_fetcher(),
 * so a test can change e->config first. */
static void env_setup_in(Env *e, const char *base, UpstreamKind kind, const char *path) {
        *e = (Env) {};
        e->dir = base ? g_strdup(base) : test_tmpdir_new();
        e->cache_dir = g_build_filename(e->dir, "cache", NULL);
        g_assert_cmpint(sd_event_new(&e->event), >=, 0);
        env_open_cache(e);
        g_assert_cmpint(upstream_fixture_new(0, &e->fx), ==, 0);

        g_assert_cmpint(config_init(&e->config), ==, 0);
        e->config.upstream_kind = kind;
        free(e->config.upstream_url);
        e->config.upstream_url = upstream_fixture_url(e->fx, path);
        e->config.max_size = (SizeLimit) { .bytes = 1ULL << 30, .permille = UINT64_MAX };
        e->config.keep_free = (SizeLimit) { .bytes = 0, .permille = UINT64_MAX };
        e->config.connect_timeout = 5 * USEC_PER_SEC;
        e->config.low_speed_timeout = 20 * USEC_PER_SEC;
        e->config.max_parallel_fetches = 4;
}

static void env_setup(Env *e, UpstreamKind kind, const char *path) {
        env_setup_in(e, NULL, kind, path);
}

static Fetcher *env_fetcher(Env *e) {
        if (!e->fetcher)
                g_assert_cmpint(fetcher_new(e->event, e->cache, &e->config, &e->fetcher), ==, 0);
        return e->fetcher;
}

static void env_teardown(Env *e) {
        e->fetcher = fetcher_free(e->fetcher);
        upstream_fixture_free(e->fx);
        e->cache = image_cache_close(e->cache);
        config_done(&e->config);
        e->event = sd_event_unref(e->event);
        test_tmpdir_remove(e->dir);
        g_free(e->dir);
        g_free(e->cache_dir);
}

static void env_run_until(Env *e, bool (*done)(void *), void *userdata, const char *what) {
        usec_t deadline = now_usec(CLOCK_MONOTONIC) + WAIT_USEC;
        while (!done(userdata)) {
                if (now_usec(CLOCK_MONOTONIC) > deadline)
                        g_error("timed out waiting for %s", what);
                g_assert_cmpint(sd_event_run(e->event, 100 * USEC_PER_MSEC), >=, 0);
        }
}

static bool fill_is_final_cb(void *f) {
        return fill_state_is_final(fill_state(f));
}

static void env_wait_final(Env *e, Fill *f) {
        env_run_until(e, fill_is_final_cb, f, "a fill to finish");
}

static Fill *env_fill(Env *e, const char *id, const Checksum *expected) {
        Fill *f = NULL;
        g_assert_cmpint(fetcher_fill(env_fetcher(e), id, expected, &f), ==, 0);
        g_assert_nonnull(f);
        return f;
}

/* Fetches id to its end and returns the fill (a reference). */
static Fill *env_fetch(Env *e, const char *id, const Checksum *expected) {
        Fill *f = env_fill(e, id, expected);
        env_wait_final(e, f);
        return f;
}

static uint8_t *make_data(size_t n, unsigned seed) {
        uint8_t *d = g_malloc(n ? n : 1);
        uint32_t x = seed * 2654435761u + 1;
        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                d[i] = (uint8_t) x;
        }
        return d;
}

static Checksum digest_of(ChecksumAlgo algo, const void *data, size_t n) {
        Hasher *h = NULL;
        Checksum c;
        g_assert_cmpint(hasher_new(algo, &h), ==, 0);
        g_assert_cmpint(hasher_update(h, data, n), ==, 0);
        g_assert_cmpint(hasher_finish(h, &c), ==, 0);
        hasher_free(h);
        return c;
}

static char *path_in(const Env *e, const char *sub, const char *id) {
        return sub ? g_build_filename(e->cache_dir, sub, id, NULL) : g_build_filename(e->cache_dir, id, NULL);
}

static bool exists_in(const Env *e, const char *sub, const char *id) {
        g_autofree char *p = path_in(e, sub, id);
        struct stat st;
        return lstat(p, &st) == 0;
}

static uint64_t size_in(const Env *e, const char *sub, const char *id) {
        g_autofree char *p = path_in(e, sub, id);
        struct stat st;
        g_assert_cmpint(lstat(p, &st), ==, 0);
        return (uint64_t) st.st_size;
}

/* The image is cached, byte for byte, with the checksum recorded. */
static void assert_cached(Env *e, Fill *f, const char *id, const void *data, size_t n, const Checksum *sum) {
        g_assert_cmpstr(fill_state_to_string(fill_state(f)), ==, "done");
        g_assert_cmpint(fill_error(f), ==, 0);
        g_assert_null(fill_error_message(f));
        g_assert_true(fill_kept(f));
        g_assert_cmpuint(fill_bytes_written(f), ==, n);
        g_assert_cmpuint(fill_bytes_total(f), ==, n);

        g_assert_true(image_cache_is_cached(e->cache, id));
        const CacheEntry *ce = image_cache_get(e->cache, id);
        g_assert_cmpuint(ce->size, ==, n);
        g_autofree char *want = checksum_to_string(sum);
        g_assert_cmpstr(ce->checksum, ==, want);

        g_autofree char *p = path_in(e, NULL, id);
        size_t got_n = 0;
        g_autofree char *got = test_read_file(p, &got_n);
        g_assert_cmpuint(got_n, ==, n);
        g_assert_true(memcmp(got, data, n) == 0);
        g_assert_false(exists_in(e, "incomplete", id));
        g_assert_false(image_cache_is_queued(e->cache, id)); /* a cached image leaves the queue */
        g_assert_cmpint(test_verify_image(e->cache, id), ==, 1);
}

/* Failed with error, a message naming the image and containing needle, nothing cached, queue kept. */
static void assert_failed(Env *e, Fill *f, const char *id, int error, const char *needle) {
        g_assert_cmpstr(fill_state_to_string(fill_state(f)), ==, "failed");
        g_assert_cmpint(fill_error(f), ==, error);
        const char *m = fill_error_message(f);
        g_assert_nonnull(m);
        if (!strstr(m, id) || (needle && !strstr(m, needle)))
                g_error("message '%s' lacks '%s' or '%s'", m, id, strempty(needle));
        g_assert_false(fill_kept(f));
        g_assert_false(image_cache_is_cached(e->cache, id));
        g_assert_false(exists_in(e, NULL, id));
        g_assert_true(image_cache_is_queued(e->cache, id));
}

static void queue(Env *e, const char *id) {
        g_assert_cmpint(image_cache_queue(e->cache, id, NULL), ==, 1);
}

/* ---- good fetches ------------------------------------------------------------------------------- */

typedef struct DigestCase {
        UpstreamDigest digest;
        ChecksumAlgo recorded;
        bool chunked;
} DigestCase;

static void test_good(const void *userdata) {
        const DigestCase *dc = userdata;
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        size_t n = 3 * 1024 * 1024 + 17;
        g_autofree uint8_t *data = make_data(n, 1);
        UpstreamImageOptions o = { .digest = dc->digest, .no_content_length = dc->chunked, .etag = "\"v1\"" };
        g_assert_cmpint(upstream_fixture_add_image(e.fx, "/images/good", data, n, &o), ==, 0);
        queue(&e, "good");

        Fill *f = env_fetch(&e, "good", NULL);
        Checksum sum = digest_of(dc->recorded, data, n);
        assert_cached(&e, f, "good", data, n, &sum);
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/images/good"), ==, 1);

        /* The fill still reads the image after the rename into place. */
        uint8_t tail[17];
        g_assert_cmpint(fill_pread(f, tail, sizeof(tail), n - sizeof(tail)), ==, (ssize_t) sizeof(tail));
        g_assert_true(memcmp(tail, data + n - sizeof(tail), sizeof(tail)) == 0);

        /* Cached now: a second fill is refused. */
        Fill *again = NULL;
        g_assert_cmpint(fetcher_fill(e.fetcher, "good", NULL, &again), ==, -EEXIST);
        g_assert_cmpuint(fetcher_n_active(e.fetcher), ==, 0);
        fill_unref(f);
        env_teardown(&e);
}

static void test_caller_checksum(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        size_t n = 100000;
        g_autofree uint8_t *data = make_data(n, 2);
        /* The response says sha256, the caller md5: the caller's is verified and recorded. */
        UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256 };
        upstream_fixture_add_image(e.fx, "/images/c", data, n, &o);
        queue(&e, "c");
        Checksum md5 = digest_of(CHECKSUM_MD5, data, n);
        Fill *f = env_fetch(&e, "c", &md5);
        assert_cached(&e, f, "c", data, n, &md5);
        fill_unref(f);

        /* A wrong caller checksum fails even though the response's own digest matches. */
        upstream_fixture_add_image(e.fx, "/images/d", data, n, &o);
        queue(&e, "d");
        Checksum wrong = md5;
        wrong.digest[0] ^= 1;
        f = env_fetch(&e, "d", &wrong);
        assert_failed(&e, f, "d", -EBADMSG, "expected md5:");
        g_assert_true(exists_in(&e, "invalid", "d"));
        fill_unref(f);
        env_teardown(&e);
}

static void test_token(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        g_autofree uint8_t *data = make_data(5000, 3);
        upstream_fixture_add_image(e.fx, "/images/t", data, 5000, NULL);
        upstream_fixture_set_token(e.fx, "s3cret");
        queue(&e, "t");

        /* No token: 401. */
        Fill *f = env_fetch(&e, "t", NULL);
        assert_failed(&e, f, "t", -EPROTO, "401");
        g_assert_nonnull(strstr(fill_error_message(f), "TokenFile="));
        fill_unref(f);

        /* With TokenFile= (trailing newline stripped) it goes through. */
        g_autofree char *tf = g_build_filename(e.dir, "token", NULL);
        test_write_file(e.dir, "token", "s3cret\n", 7);
        free(e.config.token_file);
        e.config.token_file = strdup(tf);
        g_assert_cmpint(fetcher_reconfigure(e.fetcher, &e.config), ==, 0);
        f = env_fetch(&e, "t", NULL);
        Checksum sum = digest_of(CHECKSUM_SHA256, data, 5000);
        assert_cached(&e, f, "t", data, 5000, &sum);
        fill_unref(f);

        /* A token file that cannot be a header value is refused, and the old configuration stays. */
        test_write_file(e.dir, "token", "a\nb", 3);
        g_assert_cmpint(fetcher_reconfigure(e.fetcher, &e.config), ==, -EBADMSG);
        env_teardown(&e);
}

/* A rotated token is picked up at the upstream's 401, without a reload; asked again once only. */
static void test_token_rotation(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        g_autofree uint8_t *data = make_data(5000, 4);
        upstream_fixture_add_image(e.fx, "/images/r1", data, 5000, NULL);
        upstream_fixture_add_image(e.fx, "/images/r2", data, 5000, NULL);
        upstream_fixture_add_image(e.fx, "/images/r3", data, 5000, NULL);
        upstream_fixture_set_token(e.fx, "old");
        g_autofree char *tf = g_build_filename(e.dir, "token", NULL);
        test_write_file(e.dir, "token", "old\n", 4);
        e.config.token_file = strdup(tf);
        Checksum sum = digest_of(CHECKSUM_SHA256, data, 5000);

        Fill *f = env_fetch(&e, "r1", NULL);
        assert_cached(&e, f, "r1", data, 5000, &sum);
        fill_unref(f);

        /* Rotated at the upstream and in the file: the 401 re-reads the file and the fill goes on. */
        upstream_fixture_set_token(e.fx, "new");
        test_write_file(e.dir, "token", "new\n", 4);
        f = env_fetch(&e, "r2", NULL);
        assert_cached(&e, f, "r2", data, 5000, &sum);
        fill_unref(f);
        g_assert_cmpuint(upstream_fixture_token_requests(e.fx, "old"), ==, 2); /* r1, and r2's refused try */
        g_assert_cmpuint(upstream_fixture_token_requests(e.fx, "new"), ==, 1);

        /* Rotated at the upstream only: one re-read at most, no second try with the same token. */
        upstream_fixture_set_token(e.fx, "newer");
        queue(&e, "r3");
        f = env_fetch(&e, "r3", NULL);
        assert_failed(&e, f, "r3", -EPROTO, "401");
        g_assert_cmpuint(upstream_fixture_token_requests(e.fx, "new"), ==, 2);
        fill_unref(f);
        env_teardown(&e);
}

static void test_arguments(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        Fill *f = NULL;
        g_assert_cmpint(fetcher_fill(env_fetcher(&e), "../etc", NULL, &f), ==, -EINVAL);
        g_assert_cmpint(fetcher_fill(e.fetcher, ".hidden", NULL, &f), ==, -EINVAL);
        g_assert_null(f);
        g_assert_true(fetcher_has_upstream(e.fetcher));

        free(e.config.upstream_url);
        e.config.upstream_url = NULL;
        g_assert_cmpint(fetcher_reconfigure(e.fetcher, &e.config), ==, 0);
        g_assert_false(fetcher_has_upstream(e.fetcher));
        g_assert_cmpint(fetcher_fill(e.fetcher, "x", NULL, &f), ==, -ENXIO);
        env_teardown(&e);
}

/* ---- failures ----------------------------------------------------------------------------------- */

typedef struct FailCase {
        UpstreamImageOptions opts;
        bool no_such_image;
        int error;
        const char *needle;
        const char *left_in;     /* "invalid", "incomplete" or NULL: where the partial file ends up */
        usec_t low_speed;
} FailCase;

static void test_failure(const void *userdata) {
        const FailCase *fc = userdata;
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        if (fc->low_speed)
                e.config.low_speed_timeout = fc->low_speed;
        size_t n = 1024 * 1024;
        g_autofree uint8_t *data = make_data(n, 4);
        if (!fc->no_such_image)
                g_assert_cmpint(upstream_fixture_add_image(e.fx, "/images/bad", data, n, &fc->opts), ==, 0);
        queue(&e, "bad");

        Fill *f = env_fetch(&e, "bad", NULL);
        assert_failed(&e, f, "bad", fc->error, fc->needle);
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/images/bad"), ==, 1);
        static const char *const where[] = { "incomplete", "invalid" };
        for (size_t i = 0; i < G_N_ELEMENTS(where); i++)
                g_assert_cmpint(exists_in(&e, where[i], "bad"), ==, fc->left_in && streq(fc->left_in, where[i]));
        g_assert_cmpuint(fetcher_n_active(e.fetcher), ==, 0);
        fill_unref(f);
        env_teardown(&e);
}

static const FailCase fail_404 = { .no_such_image = true, .error = -ENOENT, .needle = "404" };
static const FailCase fail_500 = { .opts = { .status = 500 }, .error = -EPROTO, .needle = "500" };
static const FailCase fail_401 = { .opts = { .status = 401 }, .error = -EPROTO, .needle = "401" };
static const FailCase fail_stall = {
        .opts = { .stall_after = 65536, .etag = "\"s\"" }, .error = -ETIMEDOUT, .needle = "timed out",
        .left_in = "incomplete", .low_speed = 1 * USEC_PER_SEC,
};
static const FailCase fail_reset = {
        .opts = { .reset_after = 300000, .etag = "\"r\"" }, .error = -EPROTO, .left_in = "incomplete",
};
static const FailCase fail_truncated = {
        .opts = { .close_after = 300000, .etag = "\"c\"" }, .error = -EPROTO, .needle = "short body", .left_in = "incomplete",
};
static const FailCase fail_wrong_body = {
        .opts = { .wrong_body = true, .digest = UPSTREAM_DIGEST_SHA512 }, .error = -EBADMSG, .needle = "expected sha512:",
        .left_in = "invalid",
};
static const FailCase fail_wrong_body_md5 = {
        .opts = { .wrong_body = true, .digest = UPSTREAM_DIGEST_CONTENT_MD5_BASE64 }, .error = -EBADMSG,
        .needle = "expected md5:", .left_in = "invalid",
};
static const FailCase fail_short_body = {
        .opts = { .short_by = 1000, .digest = UPSTREAM_DIGEST_SHA256 }, .error = -EBADMSG, .needle = "got sha256:",
        .left_in = "invalid",
};
static const FailCase fail_long_body = {
        .opts = { .long_by = 1000, .digest = UPSTREAM_DIGEST_REPR_SHA256, .no_content_length = true },
        .error = -EBADMSG, .needle = "expected sha256:", .left_in = "invalid",
};

/* ---- single flight, parallel limit, cancel ------------------------------------------------------ */

static void test_single_flight(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        size_t n = 2 * 1024 * 1024;
        g_autofree uint8_t *data = make_data(n, 5);
        UpstreamImageOptions o = { .rate = 8 * 1024 * 1024 };
        upstream_fixture_add_image(e.fx, "/images/one", data, n, &o);

        Fill *a = env_fill(&e, "one", NULL);
        Fill *b = env_fill(&e, "one", NULL);
        g_assert_true(a == b);
        g_assert_true(fetcher_find(e.fetcher, "one") == a);
        g_assert_cmpuint(fetcher_n_active(e.fetcher), ==, 1);
        env_wait_final(&e, a);
        Checksum sum = digest_of(CHECKSUM_SHA256, data, n);
        assert_cached(&e, a, "one", data, n, &sum);
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/images/one"), ==, 1);
        g_assert_null(fetcher_find(e.fetcher, "one"));
        fill_unref(a);
        fill_unref(b);
        env_teardown(&e);
}

typedef struct Order {
        GPtrArray *started;
        GPtrArray *finished;
} Order;

static void on_started(Fetcher *fe, Fill *f, void *userdata) {
        Order *o = userdata;
        g_ptr_array_add(o->started, g_strdup(fill_image_id(f)));
}

static void on_finished(Fetcher *fe, Fill *f, void *userdata) {
        Order *o = userdata;
        g_ptr_array_add(o->finished, g_strdup(fill_image_id(f)));
}

static bool all_final(void *userdata) {
        GPtrArray *fills = userdata;
        for (unsigned i = 0; i < fills->len; i++)
                if (!fill_state_is_final(fill_state(fills->pdata[i])))
                        return false;
        return true;
}

static bool six_finished(void *userdata) {
        return ((Order *) userdata)->finished->len == 6;
}

static void test_parallel_limit(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        e.config.max_parallel_fetches = 2;
        size_t n = 512 * 1024;
        g_autofree uint8_t *data = make_data(n, 6);
        /* Slow enough that every transfer overlaps the others if the fetcher let them. */
        UpstreamImageOptions o = { .rate = 2 * 1024 * 1024 };
        Order order = { g_ptr_array_new_with_free_func(g_free), g_ptr_array_new_with_free_func(g_free) };
        FetcherObserver obs = { .fill_started = on_started, .fill_finished = on_finished, .userdata = &order };
        fetcher_add_observer(env_fetcher(&e), &obs);

        GPtrArray *fills = g_ptr_array_new();
        for (unsigned i = 0; i < 6; i++) {
                char id[16], path[32];
                snprintf(id, sizeof(id), "p%u", i);
                snprintf(path, sizeof(path), "/images/%s", id);
                upstream_fixture_add_image(e.fx, path, data, n, &o);
                Fill *f = env_fill(&e, id, NULL);
                g_assert_cmpstr(fill_state_to_string(fill_state(f)), ==, i < 2 ? "connecting" : "pending");
                g_ptr_array_add(fills, f);
        }
        g_assert_cmpuint(fetcher_n_active(e.fetcher), ==, 6);
        env_run_until(&e, all_final, fills, "six fills");
        env_run_until(&e, six_finished, &order, "six fill_finished notifications");

        g_assert_cmpuint(upstream_fixture_max_active(e.fx), ==, 2);
        g_assert_cmpuint(order.started->len, ==, 6);
        g_assert_cmpuint(order.finished->len, ==, 6);
        for (unsigned i = 0; i < fills->len; i++) {
                Fill *f = fills->pdata[i];
                g_assert_cmpstr(fill_state_to_string(fill_state(f)), ==, "done");
                g_autofree char *path = g_strdup_printf("/images/p%u", i);
                g_assert_cmpuint(upstream_fixture_requests(e.fx, path), ==, 1);
                fill_unref(f);
        }
        /* FIFO: p0/p1 first, then p2… in the order asked; with equal sizes and rates they end in order too,
         * at least pairwise: p4 and p5 cannot end before p0 and p1. */
        for (unsigned i = 0; i < 2; i++)
                g_assert_true(g_str_has_prefix(order.finished->pdata[i], "p0") ||
                              g_str_has_prefix(order.finished->pdata[i], "p1"));
        g_ptr_array_free(fills, TRUE);
        g_ptr_array_free(order.started, TRUE);
        g_ptr_array_free(order.finished, TRUE);
        env_teardown(&e);
}

typedef struct Listen {
        unsigned headers, data, finished;
        Fill *fill;
        bool cancel_on_data;
} Listen;

static void l_headers(Fill *f, void *userdata) {
        ((Listen *) userdata)->headers++;
}

static void l_data(Fill *f, void *userdata) {
        Listen *l = userdata;
        l->data++;
        if (l->cancel_on_data)
                fill_cancel(f);
}

static void l_finished(Fill *f, void *userdata) {
        ((Listen *) userdata)->finished++;
}

static void test_cancel(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        size_t n = 4 * 1024 * 1024;
        g_autofree uint8_t *data = make_data(n, 7);
        UpstreamImageOptions o = { .rate = 4 * 1024 * 1024, .etag = "\"k\"" };
        upstream_fixture_add_image(e.fx, "/images/k", data, n, &o);
        queue(&e, "k");

        Fill *f = env_fill(&e, "k", NULL);
        Listen l = { .cancel_on_data = true };
        FillListener fl = { .on_headers = l_headers, .on_data = l_data, .on_finished = l_finished };
        FillSubscription *s = NULL;
        g_assert_cmpint(fill_subscribe(f, &fl, &l, &s), ==, 0);
        env_wait_final(&e, f);
        /* Listeners run from the loop: let the finish notification arrive. */
        while (l.finished == 0)
                g_assert_cmpint(sd_event_run(e.event, 100 * USEC_PER_MSEC), >=, 0);

        g_assert_cmpstr(fill_state_to_string(fill_state(f)), ==, "cancelled");
        g_assert_cmpint(fill_error(f), ==, -ECANCELED);
        g_assert_cmpuint(l.headers, ==, 1);
        g_assert_cmpuint(l.data, ==, 1);
        g_assert_cmpuint(l.finished, ==, 1);
        g_assert_false(image_cache_is_cached(e.cache, "k"));
        g_assert_true(image_cache_is_queued(e.cache, "k"));
        /* The partial file stays for a resume. */
        g_assert_true(exists_in(&e, "incomplete", "k"));
        g_assert_cmpuint(size_in(&e, "incomplete", "k"), ==, fill_bytes_written(f));
        fill_subscription_free(s);
        fill_unref(f);
        env_teardown(&e);
}

/* ---- resume ------------------------------------------------------------------------------------- */

static void assert_ranges(Env *e, const char *path, unsigned n, const char *second_range, const char *second_if_range) {
        char **ranges = upstream_fixture_ranges(e->fx, path);
        char **if_ranges = upstream_fixture_if_ranges(e->fx, path);
        g_assert_cmpuint(g_strv_length(ranges), ==, n);
        g_assert_cmpstr(ranges[0], ==, "");
        g_assert_cmpstr(ranges[1], ==, second_range);
        g_assert_cmpstr(if_ranges[1], ==, second_if_range);
        upstream_fixture_strv_free(ranges);
        upstream_fixture_strv_free(if_ranges);
}

static void test_resume_after_close(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        size_t n = 3 * 1024 * 1024, cut = 1000000;
        g_autofree uint8_t *data = make_data(n, 8);
        UpstreamImageOptions o = { .close_after = cut, .etag = "\"e1\"", .digest = UPSTREAM_DIGEST_SHA512 };
        upstream_fixture_add_image(e.fx, "/images/r", data, n, &o);
        queue(&e, "r");

        Fill *f = env_fetch(&e, "r", NULL);
        assert_failed(&e, f, "r", -EPROTO, NULL);
        g_assert_cmpuint(fill_bytes_written(f), ==, cut);
        g_assert_cmpuint(size_in(&e, "incomplete", "r"), ==, cut);
        fill_unref(f);

        o.close_after = 0;
        upstream_fixture_set_options(e.fx, "/images/r", &o);
        f = env_fetch(&e, "r", NULL);
        Checksum sum = digest_of(CHECKSUM_SHA512, data, n);
        assert_cached(&e, f, "r", data, n, &sum);
        assert_ranges(&e, "/images/r", 2, "bytes=1000000-", "\"e1\"");
        /* Only the rest came over the wire the second time. */
        g_assert_cmpuint(upstream_fixture_bytes_sent(e.fx, "/images/r"), ==, n);
        fill_unref(f);
        env_teardown(&e);
}

static bool stalled_and_written(void *userdata) {
        Env *e = userdata;
        Fill *f = fetcher_find(e->fetcher, "s");
        return upstream_fixture_stalled(e->fx) == 1 && f && fill_bytes_written(f) == 700000;
}

static void test_resume_after_free(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        size_t n = 2 * 1024 * 1024;
        g_autofree uint8_t *data = make_data(n, 9);
        UpstreamImageOptions o = { .stall_after = 700000, .etag = "\"e2\"" };
        upstream_fixture_add_image(e.fx, "/images/s", data, n, &o);

        Fill *f = env_fill(&e, "s", NULL);
        env_run_until(&e, stalled_and_written, &e, "the transfer to stall at 700000 bytes");
        /* The daemon stops mid-transfer: the fill is cancelled, the partial file stays. */
        e.fetcher = fetcher_free(e.fetcher);
        g_assert_cmpstr(fill_state_to_string(fill_state(f)), ==, "cancelled");
        fill_cancel(f); /* harmless on a detached fill */
        fill_unref(f);
        g_assert_cmpuint(size_in(&e, "incomplete", "s"), ==, 700000);

        /* A new daemon on the same directory. */
        e.cache = image_cache_close(e.cache);
        env_open_cache(&e);
        upstream_fixture_release(e.fx);
        o.stall_after = 0;
        upstream_fixture_set_options(e.fx, "/images/s", &o);
        f = env_fetch(&e, "s", NULL);
        Checksum sum = digest_of(CHECKSUM_SHA256, data, n);
        assert_cached(&e, f, "s", data, n, &sum);
        assert_ranges(&e, "/images/s", 2, "bytes=700000-", "\"e2\"");
        fill_unref(f);
        env_teardown(&e);
}

typedef struct ResumeCase {
        UpstreamRange range;
        bool change_etag;
} ResumeCase;

/* The second attempt asks for a Range but must download the whole image: the origin ignores ranges, or
 * the image changed (If-Range differs: an honest origin answers 200, a broken one a 206 of the new
 * image, which the fetcher refuses to splice). */
static void test_resume_full(const void *userdata) {
        const ResumeCase *rc = userdata;
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        size_t n = 2 * 1024 * 1024, cut = 500000;
        g_autofree uint8_t *old = make_data(n, 10);
        g_autofree uint8_t *data = make_data(n, rc->change_etag ? 11 : 10);
        UpstreamImageOptions o = { .close_after = cut, .etag = "\"old\"", .range = rc->range };
        upstream_fixture_add_image(e.fx, "/images/f", old, n, &o);
        Fill *f = env_fetch(&e, "f", NULL);
        g_assert_cmpint(fill_error(f), ==, -EPROTO);
        fill_unref(f);
        g_assert_cmpuint(size_in(&e, "incomplete", "f"), ==, cut);

        o = (UpstreamImageOptions) { .etag = rc->change_etag ? "\"new\"" : "\"old\"", .range = rc->range,
                                     .digest = UPSTREAM_DIGEST_SHA256 };
        upstream_fixture_add_image(e.fx, "/images/f", data, n, &o);
        f = env_fetch(&e, "f", NULL);
        Checksum sum = digest_of(CHECKSUM_SHA256, data, n);
        assert_cached(&e, f, "f", data, n, &sum);
        char **ranges = upstream_fixture_ranges(e.fx, "/images/f");
        g_assert_cmpstr(ranges[1], ==, "bytes=500000-");
        if (rc->range == UPSTREAM_RANGE_IGNORE_IF_RANGE) {
                /* The spliced 206 was refused and the image fetched again without a Range. */
                g_assert_cmpuint(g_strv_length(ranges), ==, 3);
                g_assert_cmpstr(ranges[2], ==, "");
        } else
                g_assert_cmpuint(g_strv_length(ranges), ==, 2);
        upstream_fixture_strv_free(ranges);
        fill_unref(f);
        env_teardown(&e);
}

static const ResumeCase resume_ignored = { .range = UPSTREAM_RANGE_IGNORE };
static const ResumeCase resume_changed = { .range = UPSTREAM_RANGE_HONOUR, .change_etag = true };
static const ResumeCase resume_broken = { .range = UPSTREAM_RANGE_IGNORE_IF_RANGE, .change_etag = true };

static void test_resume_needs_etag(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        size_t n = 1024 * 1024;
        g_autofree uint8_t *data = make_data(n, 12);
        UpstreamImageOptions o = { .close_after = 100000 }; /* no ETag: nothing to validate a resume with */
        upstream_fixture_add_image(e.fx, "/images/w", data, n, &o);
        Fill *f = env_fetch(&e, "w", NULL);
        fill_unref(f);
        upstream_fixture_set_options(e.fx, "/images/w", NULL);
        f = env_fetch(&e, "w", NULL);
        Checksum sum = digest_of(CHECKSUM_SHA256, data, n);
        assert_cached(&e, f, "w", data, n, &sum);
        char **ranges = upstream_fixture_ranges(e.fx, "/images/w");
        g_assert_cmpuint(g_strv_length(ranges), ==, 2);
        g_assert_cmpstr(ranges[1], ==, "");
        upstream_fixture_strv_free(ranges);
        fill_unref(f);
        env_teardown(&e);
}

/* ---- Glance ------------------------------------------------------------------------------------- */

typedef struct GlanceCase {
        UpstreamGlanceOptions g;
        UpstreamImageOptions o;
        int error;
        const char *needle;
        ChecksumAlgo recorded;
} GlanceCase;

static void test_glance(const void *userdata) {
        const GlanceCase *gc = userdata;
        Env e;
        env_setup(&e, UPSTREAM_GLANCE, "");
        size_t n = 1024 * 1024 + 3;
        g_autofree uint8_t *data = make_data(n, 13);
        g_assert_cmpint(upstream_fixture_add_glance_image(e.fx, "gl", data, n, &gc->o, &gc->g), ==, 0);
        queue(&e, "gl");

        Fill *f = env_fetch(&e, "gl", NULL);
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/v2/images/gl"), ==, 1);
        if (gc->error == 0) {
                Checksum sum = digest_of(gc->recorded, data, n);
                assert_cached(&e, f, "gl", data, n, &sum);
                g_assert_cmpuint(upstream_fixture_requests(e.fx, "/v2/images/gl/file"), ==, 1);
        } else {
                assert_failed(&e, f, "gl", gc->error, gc->needle);
                g_assert_cmpuint(upstream_fixture_requests(e.fx, "/v2/images/gl/file"), ==,
                                 gc->error == -ENOENT || gc->error == -EPROTO ? 0 : 1); /* record refused */
        }
        fill_unref(f);
        env_teardown(&e);
}

static const GlanceCase glance_good = { .recorded = CHECKSUM_SHA512 };
static const GlanceCase glance_md5_only = { .g = { .os_hash_algo = "" }, .recorded = CHECKSUM_MD5 };
static const GlanceCase glance_queued = { .g = { .status = "queued" }, .error = -ENOENT, .needle = "'queued'" };
static const GlanceCase glance_missing = { .g = { .record_status = 404 }, .error = -ENOENT, .needle = "404" };
static const GlanceCase glance_mismatch = {
        .g = { .os_hash_value = "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
                                "000000000000000000000000000000000000000000000000" },
        .error = -EBADMSG, .needle = "expected sha512:0000",
};
static const GlanceCase glance_md5_mismatch = {
        .g = { .os_hash_algo = "", .checksum = "0123456789abcdef0123456789abcdef" },
        .error = -EBADMSG, .needle = "expected md5:0123456789abcdef",
};
static const GlanceCase glance_size_mismatch = { .g = { .size = 1000 }, .error = -EBADMSG, .needle = "record says 1000" };
static const GlanceCase glance_long_body = {
        .g = { .os_hash_algo = "", .checksum = "" }, .o = { .long_by = 10, .no_content_length = true },
        .error = -EBADMSG, .needle = "more than the 1048579 bytes",
};
static const GlanceCase glance_short_body = {
        .g = { .os_hash_algo = "", .checksum = "" }, .o = { .short_by = 10, .no_content_length = true },
        .error = -EBADMSG, .needle = "1048569 of the 1048579 bytes",
};
static const GlanceCase glance_garbage = { .g = { .size = -5 }, .error = -EPROTO, .needle = "malformed" };

/* ---- an upstream that spoils its connections ------------------------------------------------------ */

/* Answers every request with a 10-byte image, and writes bytes past an answer's Content-Length on its
 * connection: they arrive with the next request's answer, which a client that reused the connection reads
 * as garbage ("Received HTTP/0.9"). One connection at a time. */
typedef struct Spoiler {
        int fd;
        uint16_t port;
        GThread *thread;
} Spoiler;

static gpointer spoiler_thread(gpointer userdata) {
        static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
        static const char spoil[] = "SPOILED BYTES PAST THE LENGTH\r\n";
        Spoiler *sp = userdata;
        int c;

        while ((c = accept4(sp->fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                char buf[4096];
                unsigned n = 0;

                /* One request per read: curl sends each in one piece, and waits for the answer. */
                while (recv(c, buf, sizeof(buf), 0) > 0) {
                        if (n++ > 0)
                                (void) send(c, spoil, strlen(spoil), MSG_NOSIGNAL);
                        (void) send(c, answer, strlen(answer), MSG_NOSIGNAL);
                }
                close(c);
        }
        return NULL;
}

static void test_spoiled_connection(void) {
        Env e;
        Spoiler sp = {};

        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        sp.fd = test_listen_socket(&sp.port);
        sp.thread = g_thread_new("spoiler", spoiler_thread, &sp);
        free(e.config.upstream_url);
        e.config.upstream_url = g_strdup_printf("http://127.0.0.1:%u/images/{id}", sp.port);

        /* Each fill on a connection of its own: the second is not spoiled by the first's upstream. */
        Fill *a = env_fetch(&e, "a", NULL);
        g_assert_cmpstr(fill_state_to_string(fill_state(a)), ==, "done");
        Fill *b = env_fetch(&e, "b", NULL);
        g_assert_cmpstr(fill_error_message(b) ?: "", ==, "");
        g_assert_cmpstr(fill_state_to_string(fill_state(b)), ==, "done");
        g_assert_cmpuint(image_cache_get(e.cache, "b")->size, ==, 10);
        fill_unref(a);
        fill_unref(b);

        env_teardown(&e);
        (void) shutdown(sp.fd, SHUT_RDWR);
        g_thread_join(sp.thread);
        close(sp.fd);
}

/* ---- size cap, admission ------------------------------------------------------------------------ */

static void test_too_large_refused(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        e.config.max_size = (SizeLimit) { .bytes = 100000, .permille = UINT64_MAX };
        g_autofree uint8_t *data = make_data(200000, 14);
        upstream_fixture_add_image(e.fx, "/images/big", data, 200000, NULL);
        UpstreamImageOptions chunked = { .no_content_length = true };
        upstream_fixture_add_image(e.fx, "/images/big2", data, 200000, &chunked);
        queue(&e, "big");
        queue(&e, "big2");

        /* Known length: refused before a byte is written. A job-like subscriber does not change that. */
        Fill *f = env_fill(&e, "big", NULL);
        Listen l = {};
        FillListener fl = { .on_finished = l_finished, .requires_kept = true };
        FillSubscription *s = NULL;
        g_assert_cmpint(fill_subscribe(f, &fl, &l, &s), ==, 0);
        env_wait_final(&e, f);
        assert_failed(&e, f, "big", -EFBIG, "MaxSize");
        g_assert_cmpuint(fill_bytes_written(f), ==, 0);
        g_assert_false(exists_in(&e, "incomplete", "big"));
        fill_subscription_free(s);
        fill_unref(f);

        /* Unknown length: stops at the cap, the partial file is removed. */
        f = env_fetch(&e, "big2", NULL);
        assert_failed(&e, f, "big2", -EFBIG, "MaxSize");
        g_assert_cmpuint(fill_bytes_written(f), <=, 100000);
        g_assert_false(exists_in(&e, "incomplete", "big2"));
        g_assert_false(exists_in(&e, "invalid", "big2"));
        fill_unref(f);
        env_teardown(&e);
}

static void test_too_large_streamed(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        e.config.max_size = (SizeLimit) { .bytes = 100000, .permille = UINT64_MAX };
        g_autofree uint8_t *data = make_data(300000, 15);
        UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256 };
        upstream_fixture_add_image(e.fx, "/images/huge", data, 300000, &o);

        /* An HTTP client reading along: the image is streamed, verified, and not kept. */
        Fill *f = env_fill(&e, "huge", NULL);
        Listen l = {};
        FillListener fl = { .on_headers = l_headers, .on_data = l_data, .on_finished = l_finished };
        FillSubscription *s = NULL;
        g_assert_cmpint(fill_subscribe(f, &fl, &l, &s), ==, 0);
        env_wait_final(&e, f);
        g_assert_cmpstr(fill_state_to_string(fill_state(f)), ==, "done");
        g_assert_false(fill_kept(f));
        g_assert_false(image_cache_is_cached(e.cache, "huge"));
        g_assert_false(exists_in(&e, NULL, "huge"));
        g_assert_false(exists_in(&e, "incomplete", "huge"));
        g_assert_false(exists_in(&e, "invalid", "huge"));
        g_autofree uint8_t *back = g_malloc(300000);
        g_assert_cmpint(fill_pread(f, back, 300000, 0), ==, 300000);
        g_assert_true(memcmp(back, data, 300000) == 0);
        fill_subscription_free(s);
        fill_unref(f);
        env_teardown(&e);
}

static void test_admission(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC, "/images/{id}");
        e.config.max_size = (SizeLimit) { .bytes = 350000, .permille = UINT64_MAX };
        g_autofree uint8_t *data = make_data(100000, 16);
        const char *ids[] = { "a1", "a2", "a3", "a4" };
        for (size_t i = 0; i < G_N_ELEMENTS(ids); i++) {
                g_autofree char *p = g_strdup_printf("/images/%s", ids[i]);
                upstream_fixture_add_image(e.fx, p, data, 100000, NULL);
        }
        for (size_t i = 0; i < 3; i++)
                fill_unref(env_fetch(&e, ids[i], NULL));
        g_assert_cmpuint(image_cache_size(e.cache), ==, 300000);

        /* a1 is the least recently used but pinned: a2 goes instead. */
        g_assert_cmpint(image_cache_pin(e.cache, "a1"), ==, 0);
        Fill *f = env_fetch(&e, "a4", NULL);
        g_assert_cmpstr(fill_state_to_string(fill_state(f)), ==, "done");
        g_assert_true(image_cache_is_cached(e.cache, "a1"));
        g_assert_false(image_cache_is_cached(e.cache, "a2"));
        g_assert_true(image_cache_is_cached(e.cache, "a3"));
        g_assert_true(image_cache_is_cached(e.cache, "a4"));
        g_assert_cmpuint(image_cache_size(e.cache), <=, 350000);
        fill_unref(f);
        image_cache_unpin(e.cache, "a1");
        env_teardown(&e);
}

/* ---- ENOSPC on a small tmpfs -------------------------------------------------------------------- */

/* A queued image that does not fit fails with ENOSPC and the message, and leaves no file behind. */
static void assert_no_space_left_behind(Env *e, const char *id, const char *message) {
        queue(e, id);
        Fill *f = env_fetch(e, id, NULL);
        assert_failed(e, f, id, -ENOSPC, message);
        g_assert_false(exists_in(e, "incomplete", id));
        g_assert_false(exists_in(e, "invalid", id));
        fill_unref(f);
}

/* Runs in a private user+mount namespace (see test_enospc) with a 2 MiB tmpfs at $IMGCACHE_TEST_TMPFS. */
static void enospc_inner(const char *mnt) {
        g_assert_cmpint(mount("tmpfs", mnt, "tmpfs", 0, "size=2m"), ==, 0);
        g_autofree char *base = g_build_filename(mnt, "t", NULL);
        g_assert_cmpint(mkdir(base, 0700), ==, 0);
        Env e;
        env_setup_in(&e, base, UPSTREAM_GENERIC, "/images/{id}");
        g_autofree uint8_t *small = make_data(300000, 17);
        g_autofree uint8_t *big = make_data(3 * 1024 * 1024, 18);
        upstream_fixture_add_image(e.fx, "/images/small", small, 300000, NULL);
        upstream_fixture_add_image(e.fx, "/images/small2", small, 300000, NULL);
        UpstreamImageOptions chunked = { .no_content_length = true, .etag = "\"b\"" };
        upstream_fixture_add_image(e.fx, "/images/big", big, 3 * 1024 * 1024, &chunked);

        Fill *f = env_fetch(&e, "small", NULL);
        g_assert_cmpstr(fill_state_to_string(fill_state(f)), ==, "done");
        fill_unref(f);

        assert_no_space_left_behind(&e, "big", "No space");

        /* With its size known, an image that cannot fit fails at the start: the writer's reservation
         * (fallocate) says so, where the one above ran out of room 2 MiB in. */
        upstream_fixture_add_image(e.fx, "/images/sized", big, 1900000, NULL);
        assert_no_space_left_behind(&e, "sized", "its 1900000 bytes do not fit");

        /* Nothing else lost, and the fetcher keeps working. */
        g_assert_true(image_cache_is_cached(e.cache, "small"));
        g_assert_cmpint(test_verify_image(e.cache, "small"), ==, 1);
        f = env_fetch(&e, "small2", NULL);
        Checksum sum = digest_of(CHECKSUM_SHA256, small, 300000);
        assert_cached(&e, f, "small2", small, 300000, &sum);
        fill_unref(f);

        env_teardown(&e);
        (void) umount(mnt);
}

static void test_enospc(void) {
        const char *inner = g_getenv("IMGCACHE_TEST_TMPFS");
        if (inner) {
                enospc_inner(inner);
                return;
        }

        g_autofree char *mnt = test_tmpdir_new();
        g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
        const char *argv[] = { "unshare", "--user", "--map-root-user", "--mount", self, "--tap", "-p", "/fetch/enospc", NULL };
        g_autofree char *out = NULL, *err = NULL;
        g_autoptr(GError) error = NULL;
        int status = 0;
        g_auto(GStrv) env = g_environ_setenv(g_get_environ(), "IMGCACHE_TEST_TMPFS", mnt, TRUE);

        /* Can this system give us a private mount namespace at all? */
        const char *probe[] = { "unshare", "--user", "--map-root-user", "--mount", "true", NULL };
        int probe_status = 0;
        if (!g_spawn_sync(NULL, (char **) probe, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL |
                          G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, NULL, NULL, &probe_status, NULL) ||
            !g_spawn_check_wait_status(probe_status, NULL)) {
                test_tmpdir_remove(mnt);
                test_skip_missing("no unprivileged user+mount namespaces here (unshare --user --mount)");
                return;
        }

        g_assert_true(g_spawn_sync(NULL, (char **) argv, env, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err, &status, &error));
        test_tmpdir_remove(mnt);
        if (!g_spawn_check_wait_status(status, NULL))
                g_error("ENOSPC run failed:\n%s\n%s", out, err);
        /* The child ran the test (TAP "ok"), not a skip. */
        g_assert_nonnull(strstr(out, "ok 1 /fetch/enospc"));
        g_assert_null(strstr(out, "# SKIP"));
}

int main(int argc, char *argv[]) {
        log_setup("test-fetch");
        g_test_init(&argc, &argv, NULL);

        static const DigestCase digest_cases[] = {
                { UPSTREAM_DIGEST_NONE, CHECKSUM_SHA256, false },
                { UPSTREAM_DIGEST_CONTENT_MD5_HEX, CHECKSUM_MD5, false },
                { UPSTREAM_DIGEST_CONTENT_MD5_BASE64, CHECKSUM_MD5, false },
                { UPSTREAM_DIGEST_SHA256, CHECKSUM_SHA256, false },
                { UPSTREAM_DIGEST_SHA512, CHECKSUM_SHA512, false },
                { UPSTREAM_DIGEST_REPR_SHA256, CHECKSUM_SHA256, true },
                { UPSTREAM_DIGEST_REPR_SHA512, CHECKSUM_SHA512, true },
        };
        static const char *const digest_names[] = {
                "none", "content-md5-hex", "content-md5-base64", "digest-sha256", "digest-sha512",
                "repr-digest-sha256-chunked", "repr-digest-sha512-chunked",
        };
        for (size_t i = 0; i < G_N_ELEMENTS(digest_cases); i++) {
                g_autofree char *name = g_strdup_printf("/fetch/good/%s", digest_names[i]);
                g_test_add_data_func(name, &digest_cases[i], test_good);
        }
        g_test_add_func("/fetch/good/caller-checksum", test_caller_checksum);
        g_test_add_func("/fetch/good/token", test_token);
        g_test_add_func("/fetch/good/token-rotation", test_token_rotation);
        g_test_add_func("/fetch/arguments", test_arguments);

        g_test_add_data_func("/fetch/fail/404", &fail_404, test_failure);
        g_test_add_data_func("/fetch/fail/500", &fail_500, test_failure);
        g_test_add_data_func("/fetch/fail/401", &fail_401, test_failure);
        g_test_add_data_func("/fetch/fail/stall", &fail_stall, test_failure);
        g_test_add_data_func("/fetch/fail/reset", &fail_reset, test_failure);
        g_test_add_data_func("/fetch/fail/truncated", &fail_truncated, test_failure);
        g_test_add_data_func("/fetch/fail/wrong-body", &fail_wrong_body, test_failure);
        g_test_add_data_func("/fetch/fail/wrong-body-md5", &fail_wrong_body_md5, test_failure);
        g_test_add_data_func("/fetch/fail/short-body", &fail_short_body, test_failure);
        g_test_add_data_func("/fetch/fail/long-body", &fail_long_body, test_failure);

        g_test_add_func("/fetch/single-flight", test_single_flight);
        g_test_add_func("/fetch/parallel-limit", test_parallel_limit);
        g_test_add_func("/fetch/cancel", test_cancel);

        g_test_add_func("/fetch/resume/after-close", test_resume_after_close);
        g_test_add_func("/fetch/resume/after-fetcher-free", test_resume_after_free);
        g_test_add_data_func("/fetch/resume/range-ignored", &resume_ignored, test_resume_full);
        g_test_add_data_func("/fetch/resume/image-changed", &resume_changed, test_resume_full);
        g_test_add_data_func("/fetch/resume/broken-origin", &resume_broken, test_resume_full);
        g_test_add_func("/fetch/resume/needs-etag", test_resume_needs_etag);

        g_test_add_data_func("/fetch/glance/good", &glance_good, test_glance);
        g_test_add_data_func("/fetch/glance/md5-only", &glance_md5_only, test_glance);
        g_test_add_data_func("/fetch/glance/not-active", &glance_queued, test_glance);
        g_test_add_data_func("/fetch/glance/no-record", &glance_missing, test_glance);
        g_test_add_data_func("/fetch/glance/mismatch", &glance_mismatch, test_glance);
        g_test_add_data_func("/fetch/glance/md5-mismatch", &glance_md5_mismatch, test_glance);
        g_test_add_data_func("/fetch/glance/size-mismatch", &glance_size_mismatch, test_glance);
        g_test_add_data_func("/fetch/glance/long-body", &glance_long_body, test_glance);
        g_test_add_data_func("/fetch/glance/short-body", &glance_short_body, test_glance);
        g_test_add_data_func("/fetch/glance/malformed-record", &glance_garbage, test_glance);

        g_test_add_func("/fetch/spoiled-connection", test_spoiled_connection);
        g_test_add_func("/fetch/cap/refused", test_too_large_refused);
        g_test_add_func("/fetch/cap/streamed", test_too_large_streamed);
        g_test_add_func("/fetch/admission", test_admission);
        g_test_add_func("/fetch/enospc", test_enospc);

        return g_test_run();
}
