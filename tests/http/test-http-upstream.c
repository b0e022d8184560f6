/* SPDX-License-Identifier: MIT */

/* Misses end to end in one process: the HTTP server and the real fetcher (fetcher.c and fill*.c, libcurl multi) on the
 * test's sd-event loop, the upstream fixture (tests/lib/upstream-fixture.h) on 127.0.0.1 in its own
 * threads, real clients (libcurl easy) in threads. Stalls in the fixture, not sleeps, hold a transfer at
 * a known byte. */

#include <glib.h>

#include "http-test.h"
#include "log.h"
#include "test-util.h"
#include "upstream-fixture.h"

#define SIZE (4 * 1024 * 1024 + 5)

typedef struct Fixture {
        TestServer t;
        UpstreamFixture *fx;
        uint8_t *data;
        uint64_t max_size;
        const struct EndCase *end_case;
        const struct ReadCase *read_case;
        char *tmp;
} Fixture;

static void setup_config(Config *c, void *userdata) {
        Fixture *f = userdata;
        free(c->upstream_url);
        c->upstream_url = upstream_fixture_url(f->fx, "/images/{id}");
        if (f->max_size)
                c->max_size = (SizeLimit) { .bytes = f->max_size, .permille = UINT64_MAX };
}

static void fixture_setup(Fixture *f, gconstpointer user) {
        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->data = test_random_data(SIZE, 3);
        f->max_size = GPOINTER_TO_SIZE(user);
        test_server_start(&f->t, setup_config, f, 0);
}

static void fixture_teardown(Fixture *f, gconstpointer user) {
        /* The server first: its streams hold fills of the fetcher. */
        test_server_stop(&f->t);
        upstream_fixture_free(f->fx);
        g_free(f->data);
}

static void add(Fixture *f, const char *id, const UpstreamImageOptions *o) {
        g_autofree char *path = g_strdup_printf("/images/%s", id);
        g_assert_cmpint(upstream_fixture_add_image(f->fx, path, f->data, SIZE, o), ==, 0);
}

static void assert_body(TestClient *c, const void *data, size_t size) {
        g_autofree char *want = test_sha256(data, size);
        g_autofree char *got = test_sha256(c->body->data, c->body->len);
        g_assert_cmpuint(c->body->len, ==, size);
        g_assert_cmpstr(got, ==, want);
}

static bool cached(void *userdata) {
        void **p = userdata;
        return image_cache_is_cached(((TestServer *) p[0])->cache, p[1]);
}

static void wait_cached(TestServer *t, const char *id) {
        void *p[] = { t, (void *) id };
        test_run_until(t, cached, p);
}

static bool stalled(void *userdata) {
        Fixture *f = userdata;
        return upstream_fixture_stalled(f->fx) > 0;
}

static bool idle(void *userdata) {
        Fixture *f = userdata;
        return fetcher_n_active(f->t.fetcher) == 0;
}

static void test_miss_then_hit(Fixture *f, gconstpointer user) {
        UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256 };
        g_autofree char *len = g_strdup_printf("%d", SIZE);
        add(f, "m", &o);

        TestClient *c = test_request(&f->t, "GET", "/images/m", NULL);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, SIZE);
        g_autofree char *cl = test_client_header(c, "Content-Length");
        g_assert_cmpstr(cl, ==, len);
        test_client_free(c);

        wait_cached(&f->t, "m");
        c = test_request(&f->t, "GET", "/v2/images/m/file", NULL);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, SIZE);
        g_autofree char *etag = test_client_header(c, "ETag");
        g_assert_true(g_str_has_prefix(etag, "\"sha256:"));
        test_client_free(c);

        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/m"), ==, 1);
        const TestOps *k = &f->t.ops;
        g_assert_cmpuint(k->misses, ==, 1);
        g_assert_cmpuint(k->hits, ==, 1);
}

static void test_eight_clients(Fixture *f, gconstpointer user) {
        /* The upstream stops after 1 MiB until released, so all eight are surely in before the end. */
        UpstreamImageOptions o = { .stall_after = 1024 * 1024 };
        TestClient *c[8];
        add(f, "m", &o);

        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                c[i] = test_client_new(&f->t, "GET", "/images/m", NULL);
                test_client_start(c[i]);
        }
        test_run_until(&f->t, stalled, f);
        for (size_t i = 0; i < ELEMENTSOF(c); i++)
                test_run_until_received(&f->t, c[i], 1024 * 1024);
        g_assert_cmpuint(f->t.ops.misses, ==, ELEMENTSOF(c));

        upstream_fixture_release(f->fx);
        test_run_until_done(&f->t, c, ELEMENTSOF(c));
        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                g_assert_cmpint(c[i]->result, ==, CURLE_OK);
                g_assert_cmpint(c[i]->status, ==, 200);
                assert_body(c[i], f->data, SIZE);
                test_client_free(c[i]);
        }
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/m"), ==, 1);
        wait_cached(&f->t, "m");
}

static void test_slow_reader(Fixture *f, gconstpointer user) {
        TestClient *slow, *fast;
        add(f, "m", NULL);

        slow = test_client_new(&f->t, "GET", "/images/m", NULL);
        slow->pause_after = 1;
        test_client_start(slow);
        test_run_until_paused(&f->t, slow);

        /* The fast client and the fill finish while the slow one reads nothing. */
        fast = test_client_new(&f->t, "GET", "/images/m", NULL);
        test_client_start(fast);
        test_run_until_done(&f->t, &fast, 1);
        g_assert_cmpint(fast->result, ==, CURLE_OK);
        assert_body(fast, f->data, SIZE);
        wait_cached(&f->t, "m");
        g_assert_true(g_atomic_int_get(&slow->paused));
        g_assert_false(g_atomic_int_get(&slow->done));

        test_client_resume(slow);
        test_run_until_done(&f->t, &slow, 1);
        g_assert_cmpint(slow->result, ==, CURLE_OK);
        assert_body(slow, f->data, SIZE);
        test_client_free(slow);
        test_client_free(fast);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/m"), ==, 1);
}

static void test_bad_digest(Fixture *f, gconstpointer user) {
        /* The upstream promises a sha256 and sends one wrong byte: every client is cut off short of the
         * end, and the image is not cached. */
        UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256, .wrong_body = true };
        TestClient *c[3];
        add(f, "m", &o);

        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                c[i] = test_client_new(&f->t, "GET", "/images/m", NULL);
                test_client_start(c[i]);
        }
        test_run_until_done(&f->t, c, ELEMENTSOF(c));
        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                g_assert_cmpint(c[i]->status, ==, 200);
                g_assert_cmpint(c[i]->result, ==, CURLE_PARTIAL_FILE);
                g_assert_cmpuint(c[i]->body->len, <, SIZE);
                test_client_free(c[i]);
        }
        test_run_until(&f->t, idle, f);
        g_assert_false(image_cache_is_cached(f->t.cache, "m"));
}

static void test_upstream_reset(Fixture *f, gconstpointer user) {
        /* The upstream resets the connection mid-body: the clients see an aborted transfer (never a short
         * 200 that looks complete), nothing is cached. */
        UpstreamImageOptions o = { .stall_after = 512 * 1024, .reset_after = 1024 * 1024 };
        TestClient *c[2];
        add(f, "m", &o);

        /* Both clients are mid-body (the upstream holds at 512 KiB) before the reset comes. */
        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                c[i] = test_client_new(&f->t, "GET", "/images/m", NULL);
                test_client_start(c[i]);
        }
        test_run_until(&f->t, stalled, f);
        for (size_t i = 0; i < ELEMENTSOF(c); i++)
                test_run_until_received(&f->t, c[i], 1);
        upstream_fixture_release(f->fx);
        test_run_until_done(&f->t, c, ELEMENTSOF(c));
        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                g_assert_cmpint(c[i]->status, ==, 200);
                g_assert_cmpint(c[i]->result, ==, CURLE_PARTIAL_FILE);
                g_assert_cmpuint(c[i]->body->len, <=, 1024 * 1024);
                test_client_free(c[i]);
        }
        test_run_until(&f->t, idle, f);
        g_assert_false(image_cache_is_cached(f->t.cache, "m"));
}

static void test_upstream_errors(Fixture *f, gconstpointer user) {
        UpstreamImageOptions o404 = { .status = 404 }, o500 = { .status = 500 };
        add(f, "gone", &o404);
        add(f, "broken", &o500);

        TestClient *c = test_request(&f->t, "GET", "/images/gone", NULL);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        c = test_request(&f->t, "GET", "/images/nowhere", NULL);   /* the fixture knows no such path */
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        c = test_request(&f->t, "GET", "/images/broken", NULL);
        g_assert_cmpint(c->status, ==, 502);
        test_client_free(c);
        c = test_request(&f->t, "HEAD", "/images/broken", NULL);
        g_assert_cmpint(c->status, ==, 502);
        test_client_free(c);
}

static void test_range_on_miss(Fixture *f, gconstpointer user) {
        /* The upstream stalls after 2 MiB: a Range inside them is answered in full while the fill waits;
         * one beyond them gets its bytes after the release. */
        UpstreamImageOptions o = { .stall_after = 2 * 1024 * 1024 };
        add(f, "m", &o);

        TestClient *early = test_client_new(&f->t, "GET", "/images/m", "Range: bytes=1000000-1999999", NULL);
        TestClient *late = test_client_new(&f->t, "GET", "/images/m", "Range: bytes=3000000-3000999", NULL);
        test_client_start(early);
        test_client_start(late);
        test_run_until_done(&f->t, &early, 1);
        g_assert_cmpint(early->status, ==, 206);
        g_assert_cmpint(early->result, ==, CURLE_OK);
        assert_body(early, f->data + 1000000, 1000000);
        g_assert_cmpuint(upstream_fixture_stalled(f->fx), ==, 1);
        g_assert_false(g_atomic_int_get(&late->done));

        upstream_fixture_release(f->fx);
        test_run_until_done(&f->t, &late, 1);
        g_assert_cmpint(late->status, ==, 206);
        assert_body(late, f->data + 3000000, 1000);
        g_autofree char *cr = g_strdup_printf("bytes 3000000-3000999/%d", SIZE);
        g_autofree char *got = test_client_header(late, "Content-Range");
        g_assert_cmpstr(got, ==, cr);
        test_client_free(early);
        test_client_free(late);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/m"), ==, 1);
}

static void test_chunked_upstream(Fixture *f, gconstpointer user) {
        /* Held at 1 MiB so the answer starts while the length is still unknown. */
        UpstreamImageOptions o = { .no_content_length = true, .stall_after = 1024 * 1024 };
        add(f, "m", &o);

        TestClient *c = test_client_new(&f->t, "GET", "/images/m", "Range: bytes=0-9", NULL);
        test_client_start(c);
        test_run_until(&f->t, stalled, f);
        test_run_until_received(&f->t, c, 1);
        upstream_fixture_release(f->fx);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        g_assert_cmpint(c->status, ==, 200);   /* no length: the whole image */
        assert_body(c, f->data, SIZE);
        g_autofree char *te = test_client_header(c, "Transfer-Encoding");
        g_assert_cmpstr(te, ==, "chunked");
        test_client_free(c);
        wait_cached(&f->t, "m");
}

static void test_too_large(Fixture *f, gconstpointer user) {
        /* MaxSize=1M (this fixture's parameter): the image streams through and is not kept. */
        add(f, "m", NULL);
        TestClient *c = test_request(&f->t, "GET", "/images/m", NULL);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, SIZE);
        test_client_free(c);
        test_run_until(&f->t, idle, f);
        g_assert_false(image_cache_is_cached(f->t.cache, "m"));
}

static void test_head_miss(Fixture *f, gconstpointer user) {
        /* A HEAD of a missing image is answered from the upstream's own HEAD: the length, and no download. */
        g_autofree char *len = g_strdup_printf("%d", SIZE);
        add(f, "m", NULL);
        TestClient *c = test_request(&f->t, "HEAD", "/images/m", NULL);
        g_assert_cmpint(c->status, ==, 200);
        g_autofree char *cl = test_client_header(c, "Content-Length");
        g_assert_cmpstr(cl, ==, len);
        test_client_free(c);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/m"), ==, 1);
        g_assert_cmpuint(upstream_fixture_bytes_sent(f->fx, "/images/m"), ==, 0);
        g_assert_cmpuint(fetcher_n_active(f->t.fetcher), ==, 0);
        g_assert_false(image_cache_is_cached(f->t.cache, "m"));

        /* A GET then fills it as ever. */
        c = test_request(&f->t, "GET", "/images/m", NULL);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, SIZE);
        test_client_free(c);
        wait_cached(&f->t, "m");
}

static void test_unknown_id_asked_once(Fixture *f, gconstpointer user) {
        /* Unknown ids are remembered for NotFoundCacheSec= (30 s by default): asking again and again makes
         * one upstream request. */
        for (int i = 0; i < 5; i++) {
                TestClient *c = test_request(&f->t, i % 2 ? "HEAD" : "GET", "/images/nowhere", NULL);
                g_assert_cmpint(c->status, ==, 404);
                test_client_free(c);
        }
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/nowhere"), ==, 1);
}

/* Files of the image that this process still holds open, after it was deleted. */
static unsigned open_deleted_files(const char *name) {
        g_autoptr(GDir) d = g_dir_open("/proc/self/fd", 0, NULL);
        g_autofree char *suffix = g_strdup_printf("/%s (deleted)", name);
        const char *e;
        unsigned n = 0;

        g_assert_nonnull(d);
        while ((e = g_dir_read_name(d))) {
                g_autofree char *p = g_build_filename("/proc/self/fd", e, NULL);
                g_autofree char *target = g_file_read_link(p, NULL);
                n += target && g_str_has_suffix(target, suffix);
        }
        return n;
}

static void test_miss_lets_go(Fixture *f, gconstpointer user) {
        /* Once a miss is served and cached, nothing of the HTTP side keeps the fill (and so its file)
         * alive: deleting the image frees its space at once. */
        add(f, "m", NULL);
        TestClient *c = test_request(&f->t, "GET", "/images/m", NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        wait_cached(&f->t, "m");
        test_run_until(&f->t, idle, f);
        test_run_pending(&f->t);
        g_assert_cmpint(image_cache_delete(f->t.cache, "m"), ==, 0);
        g_assert_cmpuint(open_deleted_files("m"), ==, 0);
}

/* ---- a miss that ends early ends its clients at once -------------------------------------------------- */

/* The clients of these cases give up after a quarter of the server's connection timeout: before the fix
 * for a closed stream, such a client waited for that timeout (of an older, idle connection), so it timed
 * out here instead of seeing the end of its transfer. */
#define END_CLIENT_TIMEOUT_MS ((long) HTTP_CONNECTION_TIMEOUT_SEC * 1000 / 4)

typedef struct EndCase {
        UpstreamImageOptions o;    /* stall_after set: the clients are mid-body when the end comes */
        usec_t low_speed_timeout;  /* >0: LowSpeedTimeoutSec=, the stall ends the fill by itself */
        bool cancel;               /* the fill is cancelled at the stall */
        bool http10;               /* HTTP/1.0 clients: a body of unknown length ends with the connection */
        CURLcode result;           /* what every client sees */
} EndCase;

static void end_setup_config(Config *c, void *userdata) {
        Fixture *f = userdata;
        const EndCase *ec = f->end_case;

        setup_config(c, f);
        if (ec->low_speed_timeout > 0)
                c->low_speed_timeout = ec->low_speed_timeout;
}

static void end_fixture_setup(Fixture *f, gconstpointer user) {
        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->data = test_random_data(SIZE, 3);
        f->end_case = user;
        test_server_start(&f->t, end_setup_config, f, HTTP_CONNECTION_TIMEOUT_SEC);
}

static bool only_connections(void *userdata) {
        void **p = userdata;
        return http_server_counters(p[0])->connections == GPOINTER_TO_UINT(p[1]);
}

static void wait_connections(TestServer *t, unsigned n) {
        void *p[] = { t->server, GUINT_TO_POINTER(n) };
        test_run_until(t, only_connections, p);
}

/* An idle keep-alive client: one request answered, the connection left open. libmicrohttpd 0.9.75 visits
 * its connections in the order of their timeouts, so this one, older than the miss's, is what kept a
 * miss's connection closed by a failure from being cleaned up (and its client from hearing of it). */
static TestClient *hold_idle_connection(TestServer *t) {
        TestClient *idle = test_client_new_raw(t, "GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");

        idle->keep_open = true;
        test_client_start(idle);
        test_run_until_done(t, &idle, 1);
        g_assert_cmpint(idle->status, ==, 200);
        g_assert_cmpuint(http_server_counters(t->server)->connections, ==, 1);
        return idle;
}

static void test_miss_end(Fixture *f, gconstpointer user) {
        const EndCase *ec = user;
        TestClient *keepalive, *c[2];
        uint64_t start;

        g_assert_cmpuint(ec->o.stall_after, >, 0);
        add(f, "m", &ec->o);
        keepalive = hold_idle_connection(&f->t);

        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                c[i] = test_client_new(&f->t, "GET", "/images/m", NULL);
                c[i]->timeout_ms = END_CLIENT_TIMEOUT_MS;
                c[i]->http10 = ec->http10;
                test_client_start(c[i]);
        }
        test_run_until(&f->t, stalled, f);
        for (size_t i = 0; i < ELEMENTSOF(c); i++)
                test_run_until_received(&f->t, c[i], 1);

        start = now_usec(CLOCK_MONOTONIC);
        if (ec->cancel)
                fill_cancel(fetcher_find(f->t.fetcher, "m"));
        else if (ec->low_speed_timeout == 0)
                upstream_fixture_release(f->fx);
        test_run_until_done(&f->t, c, ELEMENTSOF(c));
        g_test_message("clients ended %.3f s after the end of the miss (bound %.0f s)",
                       (double) (now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC,
                       (double) END_CLIENT_TIMEOUT_MS / 1000);

        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                g_assert_cmpint(c[i]->status, ==, 200);
                g_assert_cmpint(c[i]->result, ==, ec->result);
                if (ec->result == CURLE_OK)
                        assert_body(c[i], f->data, SIZE);
                else
                        g_assert_cmpuint(c[i]->body->len, <, SIZE);
                test_client_free(c[i]);
        }

        /* The server let go of the ended connections (not only told their clients), and kept the idle one. */
        wait_connections(&f->t, 1);
        test_run_until(&f->t, idle, f);
        g_assert_cmpint(image_cache_is_cached(f->t.cache, "m"), ==, ec->result == CURLE_OK);
        test_client_free(keepalive);
}

static void test_miss_end_before_headers(Fixture *f, gconstpointer user) {
        /* The upstream fails before any header: the waiting client gets its 502, on a connection that stays
         * open for the next request. */
        UpstreamImageOptions o = { .status = 500 };
        TestClient *keepalive, *c;

        add(f, "m", &o);
        keepalive = hold_idle_connection(&f->t);
        c = test_client_new(&f->t, "GET", "/images/m", NULL);
        c->timeout_ms = END_CLIENT_TIMEOUT_MS;
        test_client_start(c);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        g_assert_cmpint(c->status, ==, 502);
        test_client_free(c);
        wait_connections(&f->t, 1);
        test_client_free(keepalive);
}

static const EndCase end_reset = {
        .o = { .stall_after = 512 * 1024, .reset_after = 1024 * 1024 },
        .result = CURLE_PARTIAL_FILE,
};
static const EndCase end_reset_chunked = {
        .o = { .no_content_length = true, .stall_after = 512 * 1024, .reset_after = 1024 * 1024 },
        .result = CURLE_PARTIAL_FILE,
};
static const EndCase end_bad_digest = {
        .o = { .digest = UPSTREAM_DIGEST_SHA256, .wrong_body = true, .stall_after = 512 * 1024 },
        .result = CURLE_PARTIAL_FILE,
};
static const EndCase end_bad_digest_chunked = {
        .o = { .no_content_length = true, .digest = UPSTREAM_DIGEST_SHA256, .wrong_body = true,
               .stall_after = 512 * 1024 },
        .result = CURLE_PARTIAL_FILE,
};
static const EndCase end_short_body = {
        .o = { .stall_after = 512 * 1024, .close_after = 1024 * 1024 },
        .result = CURLE_PARTIAL_FILE,
};
static const EndCase end_cancel = {
        .o = { .stall_after = 512 * 1024 },
        .cancel = true,
        .result = CURLE_PARTIAL_FILE,
};
static const EndCase end_low_speed = {
        .o = { .stall_after = 512 * 1024 },
        .low_speed_timeout = USEC_PER_SEC,
        .result = CURLE_PARTIAL_FILE,
};
static const EndCase end_http10_chunked = {
        /* Not a failure: without a length and without chunked encoding the body ends with the connection,
         * which the reader now ends itself. (This case passed before that too: the end of such a body
         * always follows a write, when MHD still watches the socket; it checks the body stays whole.) */
        .o = { .no_content_length = true, .stall_after = 512 * 1024 },
        .http10 = true,
        .result = CURLE_OK,
};
static const EndCase end_none = {};

/* ---- what a client is told of a failure ------------------------------------------------------------ */

#define LEAK_USER "imgcache-user"
#define LEAK_SECRET "s3cret-in-url"

static void leak_setup_config(Config *c, void *userdata) {
        Fixture *f = userdata;
        free(c->upstream_url);
        c->upstream_url = g_strdup_printf("http://" LEAK_USER ":" LEAK_SECRET "@127.0.0.1:%u/images/{id}",
                                          upstream_fixture_port(f->fx));
}

static void leak_fixture_setup(Fixture *f, gconstpointer user) {
        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->data = test_random_data(SIZE, 3);
        test_server_start(&f->t, leak_setup_config, f, 0);
}

static bool fill_final(void *userdata) {
        return fill_state_is_final(fill_state(userdata));
}

static void assert_names_nothing(Fixture *f, const char *text) {
        g_autofree char *port = g_strdup_printf("%u", upstream_fixture_port(f->fx));
        g_assert_null(strstr(text, LEAK_USER));
        g_assert_null(strstr(text, LEAK_SECRET));
        g_assert_null(strstr(text, "127.0.0.1"));
        g_assert_null(strstr(text, port));
}

static void test_error_names_no_upstream(Fixture *f, gconstpointer user) {
        /* An upstream URL with credentials, and an upstream that answers 500, then 401. (Both fail before
         * any header reaches the client: after that a failure aborts the connection, with no body.) */
        UpstreamImageOptions o500 = { .status = 500 }, o401 = { .status = 401 };
        add(f, "broken", &o500);
        add(f, "refused", &o401);

        TestClient *c = test_request(&f->t, "GET", "/images/broken", NULL);
        g_assert_cmpint(c->status, ==, 502);
        g_test_message("502 body: %.*s", (int) c->body->len, (const char *) c->body->data);
        g_assert_cmpuint(c->body->len, >, 0);
        g_byte_array_append(c->body, (const guint8 *) "", 1);
        assert_names_nothing(f, (const char *) c->body->data);
        test_client_free(c);

        /* The fill's own message (journal, D-Bus Job.Error) names the upstream, without the credentials. */
        _cleanup_(fill_unrefp) Fill *fill = NULL;
        g_assert_cmpint(fetcher_fill(f->t.fetcher, "broken", NULL, &fill), ==, 0);
        test_run_until(&f->t, fill_final, fill);
        const char *msg = fill_error_message(fill);
        g_assert_nonnull(msg);
        g_test_message("fill message: %s", msg);
        g_assert_null(strstr(msg, LEAK_SECRET));
        g_assert_null(strstr(msg, LEAK_USER));
        g_assert_nonnull(strstr(msg, "http://127.0.0.1:"));

        c = test_request(&f->t, "GET", "/images/refused", NULL);
        g_assert_cmpint(c->status, ==, 502);
        g_byte_array_append(c->body, (const guint8 *) "", 1);
        assert_names_nothing(f, (const char *) c->body->data);
        test_client_free(c);
}

/* ---- what one client address may cost the upstream ------------------------------------------------ */

static void budget_setup_config(Config *c, void *userdata) {
        setup_config(c, userdata);
        c->upstream_requests_per_ip = 1;
        c->upstream_burst_per_ip = 5;
}

static void budget_fixture_setup(Fixture *f, gconstpointer user) {
        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->data = test_random_data(SIZE, 3);
        test_server_start(&f->t, budget_setup_config, f, 0);
}

/* One request from source, on a connection of its own, run to completion. */
static TestClient *request_from(Fixture *f, const char *source, const char *method, const char *path,
                                const char *header) {
        g_autofree char *raw = g_strdup_printf("%s %s HTTP/1.1\r\nHost: x\r\n%s%sConnection: close\r\n\r\n", method,
                                               path, header ?: "", header ? "\r\n" : "");
        TestClient *c = test_client_new_raw(&f->t, raw);
        c->raw_bind = source;
        test_client_start(c);
        test_run_until_done(&f->t, &c, 1);
        return c;
}

static void test_upstream_budget(Fixture *f, gconstpointer user) {
        /* Random ids from one address, HEADs (probes) and GETs (fills) alike: past the burst the client
         * gets 429 with Retry-After and the upstream hears nothing of it. */
        usec_t start = now_usec(CLOCK_MONOTONIC);
        unsigned refused = 0, asked = 0;

        for (unsigned i = 0; i < 30; i++) {
                g_autofree char *path = g_strdup_printf("/images/random-%u", i);
                TestClient *c = request_from(f, "127.0.0.2", i % 2 ? "HEAD" : "GET", path, NULL);
                if (c->status == 429) {
                        g_autofree char *retry = test_client_header(c, "Retry-After");
                        g_assert_nonnull(retry);
                        g_assert_cmpint(atoi(retry), >=, 1);
                        refused++;
                } else
                        g_assert_cmpint(c->status, ==, 404);
                test_client_free(c);
                asked += upstream_fixture_requests(f->fx, path);
        }
        double elapsed = (double) (now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC;
        g_test_message("%u of 30 asked of the upstream, %u refused, in %.2f s", asked, refused, elapsed);
        /* The burst, and one a second since. */
        g_assert_cmpuint(asked, <=, 5 + (unsigned) elapsed + 1);
        g_assert_cmpuint(asked + refused, ==, 30);
        g_assert_cmpuint(http_server_counters(f->t.server)->refused[HTTP_REFUSED_UPSTREAM_BUDGET], ==, refused);

        /* Another address has a budget of its own; an answer remembered costs nothing. */
        TestClient *c = request_from(f, "127.0.0.3", "HEAD", "/images/other", NULL);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/other"), ==, 1);
        c = request_from(f, "127.0.0.2", "GET", "/images/random-0", NULL);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/random-0"), ==, 1);
}

static void flood_setup_config(Config *c, void *userdata) {
        setup_config(c, userdata);
        c->upstream_requests_per_ip = 0;  /* no bound: the flood below is the quota's to stop */
}

static void flood_fixture_setup(Fixture *f, gconstpointer user) {
        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->data = test_random_data(SIZE, 3);
        test_server_start(&f->t, flood_setup_config, f, 0);
}

static void test_not_found_not_flushed(Fixture *f, gconstpointer user) {
        /* One address learns that "gone" is not there; another asks for more unknown ids than its share
         * of the not-found cache. "gone" is still believed: the upstream is not asked for it again. */
        TestClient *c = request_from(f, "127.0.0.3", "GET", "/images/gone", NULL);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        for (unsigned i = 0; i < HTTP_NOT_FOUND_CACHE_MAX / 16 + 50; i++) {
                g_autofree char *path = g_strdup_printf("/images/flood-%u", i);
                c = request_from(f, "127.0.0.2", "HEAD", path, NULL);
                g_assert_cmpint(c->status, ==, 404);
                test_client_free(c);
        }
        c = request_from(f, "127.0.0.4", "GET", "/images/gone", NULL);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/gone"), ==, 1);
        /* The flooder's own oldest answers made room for its newest. */
        c = request_from(f, "127.0.0.2", "HEAD", "/images/flood-0", NULL);
        test_client_free(c);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/flood-0"), ==, 2);
}

/* ---- read authorization ---------------------------------------------------------------------------- */

/* A Glance upstream that knows three users: alice owns "private" and shares it with carol; bob is another
 * tenant; "public" is everyone's. The daemon fetches with its own service token. */
#define DAEMON_TOKEN "daemon-service-token"

typedef struct ReadCase {
        ReadAccess mode;
        usec_t allow_ttl;        /* 0: the default */
        const char *read_tokens; /* ReadTokenFile= contents */
        unsigned upstream_burst; /* >0: UpstreamBurstPerIP= this, UpstreamRequestsPerIP=1 */
} ReadCase;

static void read_setup_config(Config *c, void *userdata) {
        Fixture *f = userdata;
        const ReadCase *rc = f->read_case;

        free(c->upstream_url);
        c->upstream_url = upstream_fixture_url(f->fx, "");
        c->upstream_kind = UPSTREAM_GLANCE;
        c->token_file = g_build_filename(f->tmp, "daemon-token", NULL);
        c->read_access = rc->mode;
        if (rc->allow_ttl)
                c->read_access_allow_cache = c->read_access_deny_cache = rc->allow_ttl;
        if (rc->read_tokens)
                c->read_token_file = g_build_filename(f->tmp, "read-tokens", NULL);
        if (rc->upstream_burst) {
                c->upstream_requests_per_ip = 1;
                c->upstream_burst_per_ip = rc->upstream_burst;
        }
}

static void read_fixture_setup(Fixture *f, gconstpointer user) {
        static const char *const owners[] = { "alice", "carol", NULL };
        const ReadCase *rc = user;

        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->data = test_random_data(SIZE, 5);
        f->read_case = rc;
        f->tmp = test_tmpdir_new();
        test_write_file(f->tmp, "daemon-token", DAEMON_TOKEN "\n", strlen(DAEMON_TOKEN) + 1);
        if (rc->read_tokens)
                test_write_file(f->tmp, "read-tokens", rc->read_tokens, strlen(rc->read_tokens));
        g_assert_cmpint(upstream_fixture_set_token(f->fx, DAEMON_TOKEN), ==, 0);
        upstream_fixture_add_user_token(f->fx, "alice");
        upstream_fixture_add_user_token(f->fx, "bob");
        upstream_fixture_add_user_token(f->fx, "carol");
        g_assert_cmpint(upstream_fixture_add_glance_image(f->fx, "public", f->data, SIZE, NULL, NULL), ==, 0);
        UpstreamGlanceOptions priv = { .readers = owners };
        g_assert_cmpint(upstream_fixture_add_glance_image(f->fx, "private", f->data, SIZE, NULL, &priv), ==, 0);
        test_server_start(&f->t, read_setup_config, f, 0);
}

static void read_fixture_teardown(Fixture *f, gconstpointer user) {
        fixture_teardown(f, user);
        test_tmpdir_remove(f->tmp);
        g_free(f->tmp);
}

static TestClient *get_with(Fixture *f, const char *path, const char *header) {
        return test_request(&f->t, "GET", path, header, NULL);
}

static void assert_status(TestClient *c, long status) {
        g_assert_cmpint(c->status, ==, status);
        test_client_free(c);
}

static void test_read_upstream(Fixture *f, gconstpointer user) {
        TestClient *c;

        /* No token: 401, and nobody was asked. */
        c = get_with(f, "/images/private", NULL);
        g_assert_cmpint(c->status, ==, 401);
        g_byte_array_append(c->body, (const guint8 *) "", 1);
        g_assert_null(strstr((const char *) c->body->data, "private"));
        test_client_free(c);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/v2/images/private"), ==, 0);

        /* Another tenant's token: not visible (Glance's 404), and still nothing fetched. */
        assert_status(get_with(f, "/images/private", "X-Auth-Token: bob"), 404);
        g_assert_false(image_cache_is_cached(f->t.cache, "private"));
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, DAEMON_TOKEN), ==, 0);
        /* A token the image service does not know: 401. */
        assert_status(get_with(f, "/images/public", "X-Auth-Token: mallory"), 401);

        /* The owner: byte-exact, the miss filled with the daemon's own token. */
        c = get_with(f, "/images/private", "X-Auth-Token: alice");
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, SIZE);
        test_client_free(c);
        wait_cached(&f->t, "private");
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "alice"), ==, 1);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/v2/images/private/file"), ==, 1);

        /* Within the TTL: a hit asks nobody; the denial is remembered too. */
        c = get_with(f, "/images/private", "X-Auth-Token: alice");
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, SIZE);
        test_client_free(c);
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "alice"), ==, 1);
        assert_status(get_with(f, "/images/private", "X-Auth-Token: bob"), 404);
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "bob"), ==, 1);

        /* A member, with a Bearer token; a HEAD is authorized the same way. */
        assert_status(get_with(f, "/images/private", "Authorization: Bearer carol"), 200);
        c = test_request(&f->t, "HEAD", "/images/private", "X-Auth-Token: bob", NULL);
        assert_status(c, 404);
        c = test_request(&f->t, "HEAD", "/images/public", "X-Auth-Token: bob", NULL);
        assert_status(c, 200);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/v2/images/private/file"), ==, 1);
}

static void test_read_budget(Fixture *f, gconstpointer user) {
        /* Every random token would cost the image service one request: from one address, past the burst,
         * the client gets 429 and the service hears nothing. A token already asked about costs nothing. */
        usec_t start = now_usec(CLOCK_MONOTONIC);
        unsigned asked = 0, refused = 0;

        for (unsigned i = 0; i < 30; i++) {
                g_autofree char *token = g_strdup_printf("random-%u", i);
                g_autofree char *header = g_strdup_printf("X-Auth-Token: %s", token);
                TestClient *c = request_from(f, "127.0.0.2", "GET", "/images/public", header);
                g_assert_cmpint(c->status, ==, c->status == 429 ? 429 : 401);
                refused += c->status == 429;
                test_client_free(c);
                asked += upstream_fixture_token_requests(f->fx, token);
        }
        double elapsed = (double) (now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC;
        g_assert_cmpuint(asked, <=, 5 + (unsigned) elapsed + 1);
        g_assert_cmpuint(asked + refused, ==, 30);

        /* The owner, from another address, is served. */
        TestClient *c = request_from(f, "127.0.0.3", "GET", "/images/public", "X-Auth-Token: alice");
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
}

static void test_read_upstream_ttl(Fixture *f, gconstpointer user) {
        /* Verdicts believed for 1 µs: every request asks again, so a revoked token is refused at once. */
        assert_status(get_with(f, "/images/public", "X-Auth-Token: alice"), 200);
        assert_status(get_with(f, "/images/public", "X-Auth-Token: alice"), 200);
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "alice"), ==, 2);
        upstream_fixture_revoke_user_token(f->fx, "alice");
        assert_status(get_with(f, "/images/public", "X-Auth-Token: alice"), 401);
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "alice"), ==, 3);
}

static void test_read_token(Fixture *f, gconstpointer user) {
        assert_status(get_with(f, "/images/public", NULL), 401);
        assert_status(get_with(f, "/images/public", "X-Auth-Token: wrong"), 401);
        assert_status(get_with(f, "/images/public", "X-Auth-Token: read-two"), 200);
        assert_status(get_with(f, "/images/private", "Authorization: Bearer read-one"), 200);
        /* Static tokens are never shown to the upstream. */
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "read-two"), ==, 0);
}

static void test_read_open_needs_loopback(void) {
        /* ReadAccess=open on a listener that is not loopback is refused unless acknowledged. */
        g_autofree char *dir = test_tmpdir_new();
        ImageCache *cache = NULL;
        HttpServer *s = NULL;
        sd_event *e = NULL;
        TestOps ops = {};
        Config c;

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        g_assert_cmpint(image_cache_open(dir, DRIVER_SQLITE, &cache, NULL), ==, 0);
        g_assert_cmpint(config_init(&c), ==, 0);
        ops = (TestOps) { .cache = cache, .config = &c };
        c.read_access = READ_ACCESS_OPEN;
        HttpServerOptions o = { .listen_fd = -EBADF, .listen = "0.0.0.0:0" };
        g_assert_cmpint(http_server_new(e, cache, NULL, &c, &o, &test_http_operations, &ops, &s), ==, -EPERM);
        c.acknowledge_open_read_access = true;
        g_assert_cmpint(http_server_new(e, cache, NULL, &c, &o, &test_http_operations, &ops, &s), ==, 0);
        s = http_server_free(s);
        /* Loopback needs no acknowledgement. */
        c.acknowledge_open_read_access = false;
        o.listen = "127.0.0.1:0";
        g_assert_cmpint(http_server_new(e, cache, NULL, &c, &o, &test_http_operations, &ops, &s), ==, 0);
        s = http_server_free(s);
        config_done(&c);
        image_cache_close(cache);
        sd_event_unref(e);
        test_tmpdir_remove(dir);
}

static void test_read_reload(Fixture *f, gconstpointer user) {
        /* A reload changes the rules for the next request, forgets remembered verdicts, and keeps the old
         * rules when the new ones cannot be applied. */
        Config *c = &f->t.config;
        g_autofree char *tokens = g_build_filename(f->tmp, "reload-tokens", NULL);

        assert_status(get_with(f, "/images/public", "X-Auth-Token: alice"), 200);
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "alice"), ==, 1);

        /* ReadAccess=token without a token file: refused, and the upstream rules stay. */
        c->read_access = READ_ACCESS_TOKEN;
        g_assert_cmpint(http_server_reconfigure(f->t.server, c), <, 0);
        assert_status(get_with(f, "/images/public", "X-Auth-Token: alice"), 200);
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "alice"), ==, 1);

        test_write_file(f->tmp, "reload-tokens", "static-one\n", 11);
        g_assert_cmpint(free_and_strdup(&c->read_token_file, tokens), ==, 0);
        g_assert_cmpint(http_server_reconfigure(f->t.server, c), ==, 0);
        assert_status(get_with(f, "/images/public", "X-Auth-Token: alice"), 401);
        assert_status(get_with(f, "/images/public", "X-Auth-Token: static-one"), 200);

        /* Back to upstream: alice's earlier yes is forgotten, so the upstream is asked again. */
        c->read_access = READ_ACCESS_UPSTREAM;
        g_assert_cmpint(http_server_reconfigure(f->t.server, c), ==, 0);
        assert_status(get_with(f, "/images/public", "X-Auth-Token: alice"), 200);
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "alice"), ==, 2);
}

static const ReadCase read_upstream = { .mode = READ_ACCESS_AUTO };  /* Kind=glance: upstream */
static const ReadCase read_upstream_ttl = { .mode = READ_ACCESS_UPSTREAM, .allow_ttl = 1 };
static const ReadCase read_budget = { .mode = READ_ACCESS_UPSTREAM, .upstream_burst = 5 };
static const ReadCase read_token = { .mode = READ_ACCESS_TOKEN, .read_tokens = "# readers\nread-one\nread-two\n" };

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        log_setup(program_invocation_short_name);
        curl_global_init(CURL_GLOBAL_DEFAULT);

#define ADD(name, fn, max) g_test_add(name, Fixture, GSIZE_TO_POINTER(max), fixture_setup, fn, fixture_teardown)
        ADD("/http-upstream/miss-then-hit", test_miss_then_hit, 0);
        ADD("/http-upstream/eight-clients", test_eight_clients, 0);
        ADD("/http-upstream/slow-reader", test_slow_reader, 0);
        ADD("/http-upstream/bad-digest", test_bad_digest, 0);
        ADD("/http-upstream/upstream-reset", test_upstream_reset, 0);
        ADD("/http-upstream/upstream-errors", test_upstream_errors, 0);
        ADD("/http-upstream/range-on-miss", test_range_on_miss, 0);
        ADD("/http-upstream/chunked-upstream", test_chunked_upstream, 0);
        ADD("/http-upstream/too-large", test_too_large, 1024 * 1024);
        ADD("/http-upstream/head-miss", test_head_miss, 0);
        ADD("/http-upstream/unknown-id-asked-once", test_unknown_id_asked_once, 0);
        ADD("/http-upstream/miss-lets-go", test_miss_lets_go, 0);
        g_test_add("/http-upstream/limits/upstream-budget", Fixture, NULL, budget_fixture_setup, test_upstream_budget,
                   fixture_teardown);
        g_test_add("/http-upstream/limits/not-found-not-flushed", Fixture, NULL, flood_fixture_setup,
                   test_not_found_not_flushed, fixture_teardown);

#define ADD_END(name, fn, c) g_test_add(name, Fixture, c, end_fixture_setup, fn, fixture_teardown)
        ADD_END("/http-upstream/end/reset", test_miss_end, &end_reset);
        ADD_END("/http-upstream/end/reset-chunked", test_miss_end, &end_reset_chunked);
        ADD_END("/http-upstream/end/bad-digest", test_miss_end, &end_bad_digest);
        ADD_END("/http-upstream/end/bad-digest-chunked", test_miss_end, &end_bad_digest_chunked);
        ADD_END("/http-upstream/end/short-body", test_miss_end, &end_short_body);
        ADD_END("/http-upstream/end/cancel", test_miss_end, &end_cancel);
        ADD_END("/http-upstream/end/low-speed", test_miss_end, &end_low_speed);
        ADD_END("/http-upstream/end/http10-chunked", test_miss_end, &end_http10_chunked);
        ADD_END("/http-upstream/end/before-headers", test_miss_end_before_headers, &end_none);
        g_test_add("/http-upstream/error-names-no-upstream", Fixture, NULL, leak_fixture_setup,
                   test_error_names_no_upstream, fixture_teardown);
#define ADD_READ(name, fn, c) g_test_add(name, Fixture, c, read_fixture_setup, fn, read_fixture_teardown)
        ADD_READ("/http-upstream/read/upstream", test_read_upstream, &read_upstream);
        ADD_READ("/http-upstream/read/upstream-ttl", test_read_upstream_ttl, &read_upstream_ttl);
        ADD_READ("/http-upstream/read/token", test_read_token, &read_token);
        ADD_READ("/http-upstream/read/budget", test_read_budget, &read_budget);
        ADD_READ("/http-upstream/read/reload", test_read_reload, &read_upstream);
        g_test_add_func("/http-upstream/read/open-needs-loopback", test_read_open_needs_loopback);

        int r = g_test_run();
        curl_global_cleanup();
        return r;
}
