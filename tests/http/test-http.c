/* SPDX-License-Identifier: MIT */

/* The HTTP server in-process: sd-event in the test, the server on 127.0.0.1:0, a store in a temp dir,
 * real HTTP clients (libcurl, or a raw socket for what curl will not send) in threads. Misses go through
 * fake-fetch.c, which the test scripts step by step, so the streaming rules can be checked exactly:
 * when headers go out, which bytes a client may have at each moment, what an abort looks like. */

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <jansson.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include "fake-fetch.h"
#include "http-test.h"
#include "log.h"
#include "test-util.h"

#define IMAGE_SIZE (3 * 1024 * 1024 + 17)

typedef struct Fixture {
        TestServer t;
        uint8_t *data;
        char *sha;
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer user) {
        test_server_start(&f->t, NULL, NULL, 0);
        f->data = test_random_data(IMAGE_SIZE, 42);
        test_server_add_image(&f->t, "img", f->data, IMAGE_SIZE);
}

static void fixture_teardown(Fixture *f, gconstpointer user) {
        test_server_stop(&f->t);
        g_free(f->data);
}

static void assert_body(TestClient *c, const void *data, size_t size) {
        g_autofree char *want = test_sha256(data, size);
        g_autofree char *got = test_sha256(c->body->data, c->body->len);
        g_assert_cmpuint(c->body->len, ==, size);
        g_assert_cmpstr(got, ==, want);
}

static void assert_header(TestClient *c, const char *name, const char *value) {
        g_autofree char *v = test_client_header(c, name);
        if (!streq_ptr(v, value))
                g_error("header %s: '%s', expected '%s'\n%s", name, v ?: "(none)", value ?: "(none)", c->head->str);
}

static char *image_etag(TestServer *t, const char *id) {
        const CacheEntry *e = image_cache_get(t->cache, id);
        g_assert_nonnull(e);
        g_assert_nonnull(e->checksum);
        return g_strdup_printf("\"%s\"", e->checksum);
}

/* ---- hits ---- */

static void test_hit_get(Fixture *f, gconstpointer user) {
        g_autofree char *etag = image_etag(&f->t, "img");
        g_autofree char *len = g_strdup_printf("%d", IMAGE_SIZE);

        TestClient *c = test_request(&f->t, "GET", "/images/img", NULL);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, IMAGE_SIZE);
        assert_header(c, "Content-Length", len);
        assert_header(c, "Accept-Ranges", "bytes");
        assert_header(c, "ETag", etag);
        assert_header(c, "Content-Type", "application/octet-stream");
        g_autofree char *lm = test_client_header(c, "Last-Modified");
        g_assert_nonnull(lm);
        g_assert_true(g_str_has_suffix(lm, " GMT"));
        test_client_free(c);

        /* The Glance path serves the same, and each GET counted a hit, in memory only. */
        c = test_request(&f->t, "GET", "/v2/images/img/file", NULL);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, IMAGE_SIZE);
        test_client_free(c);

        g_assert_cmpuint(image_cache_hit_count(f->t.cache, "img"), ==, 2);
        g_assert_true(image_cache_has_unflushed_hits(f->t.cache));
        const TestOps *k = &f->t.ops;
        g_assert_cmpuint(k->hits, ==, 2);
        g_assert_cmpuint(k->misses, ==, 0);
        g_assert_cmpuint(k->bytes_served, ==, 2 * (uint64_t) IMAGE_SIZE);
        g_assert_cmpuint(http_server_counters(f->t.server)->requests, ==, 2);
}

static void test_hit_head(Fixture *f, gconstpointer user) {
        g_autofree char *len = g_strdup_printf("%d", IMAGE_SIZE);

        TestClient *c = test_request(&f->t, "HEAD", "/images/img", NULL);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        g_assert_cmpint(c->status, ==, 200);
        g_assert_cmpuint(c->body->len, ==, 0);
        assert_header(c, "Content-Length", len);
        assert_header(c, "Accept-Ranges", "bytes");
        test_client_free(c);

        /* A HEAD is no download: no hit. A Range on HEAD is ignored. */
        g_assert_cmpuint(image_cache_hit_count(f->t.cache, "img"), ==, 0);
        c = test_request(&f->t, "HEAD", "/images/img", "Range: bytes=0-9", NULL);
        g_assert_cmpint(c->status, ==, 200);
        assert_header(c, "Content-Length", len);
        test_client_free(c);
}

typedef struct RangeCase {
        const char *range;
        unsigned status;
        uint64_t start, length;  /* for 206 */
} RangeCase;

static void test_hit_ranges(Fixture *f, gconstpointer user) {
        const uint64_t n = IMAGE_SIZE;
        const RangeCase cases[] = {
                { "bytes=0-0", 206, 0, 1 },
                { "bytes=0-4095", 206, 0, 4096 },
                { "bytes=1000-1999", 206, 1000, 1000 },
                { "bytes=1048576-", 206, 1048576, n - 1048576 },
                { "bytes=-17", 206, n - 17, 17 },
                { "bytes=-99999999999", 206, 0, n },
                { "bytes=3145000-99999999999", 206, 3145000, n - 3145000 },
                { "bytes=0-1,5-6", 200, 0, n },            /* several: the whole image */
                { "bytes=x-y", 200, 0, n },                /* invalid: ignored */
                { "lines=1-2", 200, 0, n },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                g_autofree char *h = g_strdup_printf("Range: %s", cases[i].range);
                TestClient *c = test_request(&f->t, "GET", "/images/img", h, NULL);

                g_assert_cmpint(c->result, ==, CURLE_OK);
                if ((unsigned) c->status != cases[i].status)
                        g_error("%s: status %ld, expected %u", cases[i].range, c->status, cases[i].status);
                assert_body(c, f->data + cases[i].start, cases[i].length);
                if (cases[i].status == 206) {
                        g_autofree char *cr = g_strdup_printf("bytes %" G_GUINT64_FORMAT "-%" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT,
                                                              cases[i].start, cases[i].start + cases[i].length - 1, n);
                        assert_header(c, "Content-Range", cr);
                } else
                        assert_header(c, "Content-Range", NULL);
                test_client_free(c);
        }
}

static void test_hit_416(Fixture *f, gconstpointer user) {
        g_autofree char *cr = g_strdup_printf("bytes */%d", IMAGE_SIZE);
        g_autofree char *h = g_strdup_printf("Range: bytes=%d-", IMAGE_SIZE);

        TestClient *c = test_request(&f->t, "GET", "/images/img", h, NULL);
        g_assert_cmpint(c->status, ==, 416);
        assert_header(c, "Content-Range", cr);
        test_client_free(c);

        c = test_request(&f->t, "GET", "/images/img", "Range: bytes=-0", NULL);
        g_assert_cmpint(c->status, ==, 416);
        test_client_free(c);

        /* An empty image: any range is unsatisfiable; the whole (empty) image is a 200. */
        test_server_add_image(&f->t, "empty", "", 0);
        c = test_request(&f->t, "GET", "/images/empty", "Range: bytes=0-", NULL);
        g_assert_cmpint(c->status, ==, 416);
        assert_header(c, "Content-Range", "bytes */0");
        test_client_free(c);
        c = test_request(&f->t, "GET", "/images/empty", NULL);
        g_assert_cmpint(c->status, ==, 200);
        g_assert_cmpuint(c->body->len, ==, 0);
        assert_header(c, "Content-Length", "0");
        test_client_free(c);
}

static void test_hit_conditional(Fixture *f, gconstpointer user) {
        g_autofree char *etag = image_etag(&f->t, "img");
        g_autofree char *inm = g_strdup_printf("If-None-Match: %s", etag);
        g_autofree char *inm_weak = g_strdup_printf("If-None-Match: \"other\", W/%s", etag);
        g_autofree char *if_range = g_strdup_printf("If-Range: %s", etag);
        TestClient *c;

        c = test_request(&f->t, "GET", "/images/img", inm, NULL);
        g_assert_cmpint(c->status, ==, 304);
        g_assert_cmpuint(c->body->len, ==, 0);
        assert_header(c, "ETag", etag);
        test_client_free(c);

        c = test_request(&f->t, "HEAD", "/images/img", inm_weak, NULL);
        g_assert_cmpint(c->status, ==, 304);
        test_client_free(c);

        c = test_request(&f->t, "GET", "/images/img", "If-None-Match: *", NULL);
        g_assert_cmpint(c->status, ==, 304);
        test_client_free(c);

        c = test_request(&f->t, "GET", "/images/img", "If-None-Match: \"sha256:0000\"", NULL);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, IMAGE_SIZE);
        test_client_free(c);

        /* If-Modified-Since: a date at or after Last-Modified is a 304, an earlier one is not; an
         * If-None-Match that does not match overrides it. */
        c = test_request(&f->t, "GET", "/images/img", "If-Modified-Since: Fri, 31 Dec 9999 23:59:59 GMT", NULL);
        g_assert_cmpint(c->status, ==, 304);
        test_client_free(c);
        c = test_request(&f->t, "GET", "/images/img", "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT", NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        c = test_request(&f->t, "GET", "/images/img", "If-Modified-Since: Fri, 31 Dec 9999 23:59:59 GMT",
                         "If-None-Match: \"nope\"", NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);

        /* If-Range: the current ETag or Last-Modified keeps the Range, anything else gets the whole. */
        c = test_request(&f->t, "GET", "/images/img", "Range: bytes=10-19", if_range, NULL);
        g_assert_cmpint(c->status, ==, 206);
        assert_body(c, f->data + 10, 10);
        test_client_free(c);

        c = test_request(&f->t, "GET", "/images/img", "Range: bytes=10-19", "If-Range: \"sha256:0000\"", NULL);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, IMAGE_SIZE);
        test_client_free(c);

        c = test_request(&f->t, "HEAD", "/images/img", NULL);
        g_autofree char *lm = test_client_header(c, "Last-Modified");
        test_client_free(c);
        g_autofree char *if_range_date = g_strdup_printf("If-Range: %s", lm);
        c = test_request(&f->t, "GET", "/images/img", "Range: bytes=10-19", if_range_date, NULL);
        g_assert_cmpint(c->status, ==, 206);
        assert_body(c, f->data + 10, 10);
        test_client_free(c);
        c = test_request(&f->t, "GET", "/images/img", "Range: bytes=10-19", "If-Range: Thu, 01 Jan 1970 00:00:00 GMT", NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);

        /* 304s are no hits; the two 206s, three 200s above are. */
        g_assert_cmpuint(image_cache_hit_count(f->t.cache, "img"), ==, 7);
}

/* ---- errors ---- */

static void assert_status(Fixture *f, const char *method, const char *path, long status, const char *body_part) {
        TestClient *c = test_request(&f->t, method, path, NULL);
        if (c->status != status)
                g_error("%s %s: %ld, expected %ld\n%s", method, path, c->status, status, c->head->str);
        if (body_part) {
                g_byte_array_append(c->body, (const guint8 *) "", 1);
                if (!strstr((const char *) c->body->data, body_part))
                        g_error("%s %s: body '%s' lacks '%s'", method, path, (const char *) c->body->data, body_part);
        }
        test_client_free(c);
}

static void test_errors(Fixture *f, gconstpointer user) {
        assert_status(f, "GET", "/", 404, NULL);
        assert_status(f, "GET", "/nothing", 404, NULL);
        assert_status(f, "GET", "/v2/images/img", 404, NULL);

        assert_status(f, "GET", "/images/.hidden", 400, "must not start with '.'");
        assert_status(f, "GET", "/images/cache.db", 400, "reserved");
        assert_status(f, "GET", "/images/a%2Fb", 400, "only letters");
        assert_status(f, "GET", "/images/%2e%2e", 400, "must not start with '.'");
        assert_status(f, "GET", "/images/", 400, "must not be empty");
        g_autofree char *longid = g_strnfill(129, 'x');
        g_autofree char *longpath = g_strconcat("/images/", longid, NULL);
        assert_status(f, "GET", longpath, 400, "at most 128");

        /* Methods: 405 with Allow. */
        TestClient *c = test_request(&f->t, "POST", "/images/img", NULL);
        g_assert_cmpint(c->status, ==, 405);
        assert_header(c, "Allow", "GET, HEAD");
        test_client_free(c);
        c = test_request(&f->t, "FROBNICATE", "/images/img", NULL);
        g_assert_cmpint(c->status, ==, 405);
        assert_header(c, "Allow", "GET, HEAD");
        test_client_free(c);
        c = test_request(&f->t, "DELETE", "/healthcheck", NULL);
        g_assert_cmpint(c->status, ==, 405);
        test_client_free(c);

        /* Management is off by default: absent, whatever the method. */
        assert_status(f, "GET", "/v2/cache", 404, NULL);
        assert_status(f, "PUT", "/v2/cache/img", 404, NULL);
        assert_status(f, "GET", "/versions", 404, NULL);
}

static void test_malformed(Fixture *f, gconstpointer user) {
        /* What MHD 0.9.75 answers itself (with MHD_OPTION_STRICT_FOR_CLIENT=1), before our handler. */
        const struct {
                const char *request;
                unsigned status;  /* 0: the connection is closed without an answer */
        } cases[] = {
                { "GET /images/img HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", 400 },
                { "GET /images/img HTTP/1.1\r\n\r\n", 400 },                       /* HTTP/1.1 without Host */
                { "GET /images/img HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400 },
                { "GET /images/img\r\n\r\n", 400 },                                /* HTTP/0.9 */
                { "GET  HTTP/1.1\r\nHost: x\r\n\r\n", 400 },
                { "GET /images/img XTTP/1.1\r\nHost: x\r\n\r\n", 400 },
                { "GET /images/img HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400 },
                { "GET /images/img HTTP/9.9\r\nHost: x\r\n\r\n", 505 },
                /* A first line MHD cannot split, or a bare space inside the target: MHD drops the
                 * connection without a status line. */
                { "GARBAGE\r\n\r\n", 0 },
                { "GET /ima ges/img HTTP/1.1\r\nHost: x\r\n\r\n", 0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                TestClient *c = test_client_new_raw(&f->t, cases[i].request);
                test_client_start(c);
                test_run_until_done(&f->t, &c, 1);
                if ((unsigned) c->status != cases[i].status)
                        g_error("request %zu: status %ld, expected %u:\n%.300s", i, c->status, cases[i].status,
                                c->head->str);
                if (cases[i].status == 0)
                        g_assert_cmpuint(c->head->len, ==, 0);
                test_client_free(c);
        }

        /* A well-formed raw request works, so the ones above failed for their defect. */
        TestClient *c = test_client_new_raw(&f->t, "GET /healthcheck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        test_client_start(c);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
}

static void test_oversized_headers(Fixture *f, gconstpointer user) {
        /* One header larger than a connection may hold: 431 Request Header Fields Too Large. */
        g_autofree char *big = g_strnfill(HTTP_CONNECTION_MEMORY_LIMIT, 'a');
        g_autofree char *req = g_strdup_printf("GET /images/img HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", big);
        TestClient *c = test_client_new_raw(&f->t, req);
        test_client_start(c);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 431);
        test_client_free(c);

        /* An overlong request line: MHD answers 414 URI Too Long. */
        g_free(req);
        req = g_strdup_printf("GET /images/%s HTTP/1.1\r\nHost: x\r\n\r\n", big);
        c = test_client_new_raw(&f->t, req);
        test_client_start(c);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 414);
        test_client_free(c);

        /* A sizeable but reasonable head is fine. */
        g_autofree char *medium = g_strnfill(8000, 'b');
        g_autofree char *h = g_strdup_printf("X-Medium: %s", medium);
        c = test_request(&f->t, "HEAD", "/images/img", h, NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
}

static bool connections_are(void *userdata) {
        void **p = userdata;
        return http_server_n_connections(p[0]) == GPOINTER_TO_UINT(p[1]);
}

static void test_healthcheck_metrics(Fixture *f, gconstpointer user) {
        TestClient *c = test_request(&f->t, "GET", "/healthcheck", NULL);
        g_assert_cmpint(c->status, ==, 200);
        g_assert_cmpmem(c->body->data, c->body->len, "OK\n", 3);
        test_client_free(c);

        c = test_request(&f->t, "GET", "/images/img", NULL);
        test_client_free(c);
        /* The server sees those clients close on a later turn of its loop: only then is /metrics' own
         * connection the one open. */
        test_run_until(&f->t, connections_are, (void *[]) { f->t.server, GUINT_TO_POINTER(0) });

        c = test_request(&f->t, "GET", "/metrics", NULL);
        g_assert_cmpint(c->status, ==, 200);
        assert_header(c, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        g_byte_array_append(c->body, (const guint8 *) "", 1);
        const char *text = (const char *) c->body->data;
        g_autofree char *size = g_strdup_printf("\nimgcache_cache_size_bytes %d\n", IMAGE_SIZE);
        g_autofree char *served = g_strdup_printf("\nimgcache_bytes_served_total %d\n", IMAGE_SIZE);
        g_assert_nonnull(strstr(text, "# TYPE imgcache_hits_total counter\nimgcache_hits_total 1\n"));
        g_assert_nonnull(strstr(text, "\nimgcache_misses_total 0\n"));
        g_assert_nonnull(strstr(text, served));
        g_assert_nonnull(strstr(text, size));
        g_assert_nonnull(strstr(text, "\nimgcache_cache_images 1\n"));
        g_assert_nonnull(strstr(text, "# TYPE imgcache_http_connections gauge\nimgcache_http_connections 1\n"));
        g_assert_nonnull(strstr(text, "\nimgcache_http_requests_total 2\n"));
        g_assert_nonnull(strstr(text, "imgcache_bytes_fetched_total"));
        g_assert_nonnull(strstr(text, "imgcache_evictions_total"));
        g_assert_nonnull(strstr(text, "imgcache_transfers_active 0\n"));
        test_client_free(c);
}

/* ---- limits ---- */

static void limit_setup(Config *c, void *userdata) {
        c->max_connections = 1;
}

static void test_max_connections(void) {
        TestServer t;

        test_server_start(&t, limit_setup, NULL, 0);
        uint16_t port = http_server_port(t.server);

        int a = test_connect_from(NULL, port);
        void *one[] = { t.server, GUINT_TO_POINTER(1) };
        test_run_until(&t, connections_are, one);

        /* A second connection waits in the backlog: MHD stops accepting at MaxConnections=. Whatever is
         * ready gets dispatched, and the count stays at one. */
        int b = test_connect_from(NULL, port);
        test_run_pending(&t);
        test_run_pending(&t);
        g_assert_cmpuint(http_server_n_connections(t.server), ==, 1);

        /* The first goes away: the second is accepted. */
        close(a);
        void *zero_then_one[] = { t.server, GUINT_TO_POINTER(1) };
        test_run_until(&t, connections_are, zero_then_one);
        close(b);
        void *zero[] = { t.server, GUINT_TO_POINTER(0) };
        test_run_until(&t, connections_are, zero);

        test_server_stop(&t);
}

static void send_all(int fd, const char *s);

static void full_table_setup(Config *c, void *userdata) {
        c->max_connections = 8;
        c->max_connections_per_ip = 0;
}

/* The table fills up, one more client waits, then every connection closes at once (an attacker that
 * dies): the closes land in one run of MHD, which drops below its limit only in its cleanup at the end
 * of that run and puts the listening socket back into its epoll set only at the start of the next one.
 * Nothing else may be there to cause that next run: the server must cause it, or never accept again. */
static void test_listener_comes_back(void) {
        TestServer t;
        int fds[8];

        test_server_start(&t, full_table_setup, NULL, 0);
        uint16_t port = http_server_port(t.server);
        for (size_t i = 0; i < ELEMENTSOF(fds); i++) {
                fds[i] = test_connect_from(i % 2 ? "127.0.0.2" : "127.0.0.3", port);
                /* Headers never finished: the connection is held (until HeaderTimeoutSec=). */
                send_all(fds[i], "GET /images/x HTTP/1.1\r\nHost: a\r\n");
        }
        void *full[] = { t.server, GUINT_TO_POINTER(ELEMENTSOF(fds)) };
        test_run_until(&t, connections_are, full);

        int turned_away = test_connect_from("127.0.0.4", port);
        test_run_pending(&t);
        g_assert_cmpuint(http_server_n_connections(t.server), ==, ELEMENTSOF(fds));

        close(turned_away);
        for (size_t i = 0; i < ELEMENTSOF(fds); i++)
                close(fds[i]);
        void *zero[] = { t.server, GUINT_TO_POINTER(0) };
        test_run_until(&t, connections_are, zero);
        test_run_pending(&t);

        TestClient *c = test_request(&t, "GET", "/healthcheck", NULL);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        test_server_stop(&t);
}

static void test_connection_timeout(void) {
        TestServer t;

        test_server_start(&t, NULL, NULL, /* timeout_sec= */ 1);
        int fd = test_connect_from(NULL, http_server_port(t.server));

        void *one[] = { t.server, GUINT_TO_POINTER(1) };
        test_run_until(&t, connections_are, one);
        /* An idle connection is closed by the server after the timeout (the deadline is 20 s). */
        void *zero[] = { t.server, GUINT_TO_POINTER(0) };
        test_run_until(&t, connections_are, zero);
        char buf[16];
        g_assert_cmpint(recv(fd, buf, sizeof(buf), 0), ==, 0);  /* EOF from the server */
        close(fd);

        test_server_stop(&t);
}

/* ---- limits on one client ---- */

static void send_all(int fd, const char *s) {
        g_assert_cmpint(send(fd, s, strlen(s), MSG_NOSIGNAL), ==, (ssize_t) strlen(s));
}

typedef struct Hangup {
        int fd;
        GString *text;  /* what the server sent, kept when not NULL */
        bool seen;
} Hangup;

/* The server closed fd: EOF or reset, without waiting (the loop runs in between). */
static bool server_hung_up(void *userdata) {
        Hangup *h = userdata;
        char buf[4096];
        ssize_t k;

        while ((k = recv(h->fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
                if (h->text)
                        g_string_append_len(h->text, buf, k);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
                h->seen = true;
        return h->seen;
}

static void wait_hangup(TestServer *t, int fd) {
        Hangup h = { fd };
        test_run_until(t, server_hung_up, &h);
}

static void per_ip_setup(Config *c, void *userdata) {
        c->max_connections_per_ip = 2;
}

static void test_connections_per_ip(void) {
        TestServer t;
        int a[2], extra;

        test_server_start(&t, per_ip_setup, NULL, 0);
        uint16_t port = http_server_port(t.server);

        for (size_t i = 0; i < ELEMENTSOF(a); i++)
                a[i] = test_connect_from("127.0.0.2", port);
        void *two[] = { t.server, GUINT_TO_POINTER(2) };
        test_run_until(&t, connections_are, two);

        /* A third from the same address is closed at once; another address is served meanwhile. */
        extra = test_connect_from("127.0.0.2", port);
        wait_hangup(&t, extra);
        close(extra);
        TestClient *c = test_client_new_raw(&t, "GET /healthcheck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c->raw_bind = "127.0.0.3";
        test_client_start(c);
        test_run_until_done(&t, &c, 1);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        g_assert_cmpuint(http_server_n_connections(t.server), ==, 2);

        for (size_t i = 0; i < ELEMENTSOF(a); i++)
                close(a[i]);
        void *zero[] = { t.server, GUINT_TO_POINTER(0) };
        test_run_until(&t, connections_are, zero);
        test_server_stop(&t);
}

static void header_timeout_setup(Config *c, void *userdata) {
        c->header_timeout = USEC_PER_SEC;
}

static void test_header_timeout(void) {
        /* A client that keeps sending header lines is never idle, so only the header deadline (1 s here,
         * against the 60 s idle timeout) ends it; one that finishes its headers in time is served, and its
         * kept-alive connection is then idle, not on a deadline. */
        TestServer t;
        int loris, good;
        uint64_t start;

        test_server_start(&t, header_timeout_setup, NULL, 0);
        uint16_t port = http_server_port(t.server);

        good = test_connect_from("127.0.0.4", port);
        send_all(good, "GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n");
        loris = test_connect_from("127.0.0.5", port);
        send_all(loris, "GET /healthcheck HTTP/1.1\r\nHost: x\r\n");
        start = now_usec(CLOCK_MONOTONIC);

        /* One more header line every 100 ms (the client's pace; the loop runs in between) until the
         * server hangs up. */
        Hangup h = { loris };
        unsigned lines = 0;
        uint64_t next = start;
        while (!server_hung_up(&h)) {
                uint64_t now = now_usec(CLOCK_MONOTONIC);
                g_assert_cmpuint(now - start, <, 20 * USEC_PER_SEC);
                if (now >= next) {
                        g_autofree char *line = g_strdup_printf("X-Loris-%u: 1\r\n", lines++);
                        (void) send(loris, line, strlen(line), MSG_NOSIGNAL);
                        next = now + 100 * USEC_PER_MSEC;
                }
                g_assert_cmpint(sd_event_run(t.event, next > now ? next - now : 0), >=, 0);
        }
        g_test_message("slow client dropped after %.2f s and %u header lines",
                       (double) (now_usec(CLOCK_MONOTONIC) - start) / USEC_PER_SEC, lines);
        g_assert_cmpuint(now_usec(CLOCK_MONOTONIC) - start, >=, USEC_PER_SEC / 2);
        close(loris);

        /* The good client got its answer and is still connected, past the header deadline. */
        void *one[] = { t.server, GUINT_TO_POINTER(1) };
        test_run_until(&t, connections_are, one);
        char buf[512];
        ssize_t k = recv(good, buf, sizeof(buf) - 1, MSG_DONTWAIT);
        g_assert_cmpint(k, >, 0);
        buf[k] = 0;
        g_assert_true(g_str_has_prefix(buf, "HTTP/1.1 200"));
        close(good);
        test_server_stop(&t);
}

static void test_strict_requests(void) {
        static const struct {
                const char *name, *request;
        } cases[] = {
                { "NUL in the path", "GET /images/img0%00.bin HTTP/1.1\r\nHost: x\r\n\r\n" },
                { "newline in the path", "GET /images/img0%0a HTTP/1.1\r\nHost: x\r\n\r\n" },
                { "DEL in the path", "GET /images/img0%7f HTTP/1.1\r\nHost: x\r\n\r\n" },
                { "control byte in the query", "GET /images/img0?x=%01 HTTP/1.1\r\nHost: x\r\n\r\n" },
                { "Content-Length and Transfer-Encoding",
                  "GET /images/img0 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" },
                { "two Content-Lengths",
                  "GET /images/img0 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello" },
                { "the same Content-Length twice",
                  "GET /images/img0 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n" },
        };
        TestServer t;

        test_server_start(&t, NULL, NULL, 0);
        test_server_add_image(&t, "img0", "image zero", 10);

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                /* A second request follows on the same connection: it must never be answered. */
                g_autofree char *two = g_strconcat(cases[i].request, "GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n", NULL);
                TestClient *c = test_client_new_raw(&t, two);
                test_client_start(c);
                test_run_until_done(&t, &c, 1);
                g_test_message("%s: %.*s", cases[i].name, (int) strcspn(c->head->str, "\r"), c->head->str);
                g_assert_cmpint(c->status, ==, 400);
                g_autofree char *conn = test_client_header(c, "Connection");
                g_assert_cmpstr(conn, ==, "close");
                g_assert_null(strstr(c->head->str, "image zero"));
                g_assert_null(strstr(c->head->str, "HTTP/1.1 200"));
                test_client_free(c);
        }

        /* The same target without the control byte is fine. */
        TestClient *c = test_request(&t, "GET", "/images/img0", NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        test_server_stop(&t);
}

/* ---- management ---- */

static void management_setup(Config *c, void *userdata) {
        c->management_api = true;
        if (userdata)
                g_assert_cmpint(free_and_strdup(&c->management_token_file, userdata), ==, 0);
}

typedef struct ManageFixture {
        TestServer t;
        char *token_file;
} ManageFixture;

static void manage_setup(ManageFixture *f, gconstpointer user) {
        char *dir = test_tmpdir_new();
        test_write_file(dir, "token", "s3cret\n", 7);
        f->token_file = g_build_filename(dir, "token", NULL);
        g_free(dir);
        test_server_start(&f->t, management_setup, user ? NULL : f->token_file, 0);
}

static void manage_teardown(ManageFixture *f, gconstpointer user) {
        test_server_stop(&f->t);
        g_autofree char *dir = g_path_get_dirname(f->token_file);
        test_tmpdir_remove(dir);
        g_free(f->token_file);
}

static json_t *body_json(TestClient *c) {
        json_error_t err;
        json_t *j = json_loadb((const char *) c->body->data, c->body->len, 0, &err);
        if (!j)
                g_error("not JSON (%s): %.*s", err.text, (int) c->body->len, (const char *) c->body->data);
        return j;
}

#define TOKEN "X-Auth-Token: s3cret"

static void test_manage_auth(ManageFixture *f, gconstpointer user) {
        TestClient *c;

        c = test_request(&f->t, "GET", "/v2/cache", NULL);
        g_assert_cmpint(c->status, ==, 401);
        assert_header(c, "WWW-Authenticate", "Bearer realm=\"imgcache\"");
        test_client_free(c);

        const char *wrong[] = {
                "X-Auth-Token: s3cre", "X-Auth-Token: s3cret2", "X-Auth-Token: S3CRET",
                "Authorization: Bearer nope", "Authorization: Basic czNjcmV0",
        };
        for (size_t i = 0; i < ELEMENTSOF(wrong); i++) {
                c = test_request(&f->t, "GET", "/v2/cache", wrong[i], NULL);
                g_assert_cmpint(c->status, ==, 401);
                test_client_free(c);
        }
        /* Refused before anything happened. */
        c = test_request(&f->t, "PUT", "/v2/cache/abc", "X-Auth-Token: wrong", NULL);
        g_assert_cmpint(c->status, ==, 401);
        test_client_free(c);
        g_assert_false(image_cache_is_queued(f->t.cache, "abc"));

        c = test_request(&f->t, "GET", "/v2/cache", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        c = test_request(&f->t, "GET", "/v2/cache", "Authorization: Bearer s3cret", NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);

        /* After authentication: 405 and 400 as anywhere. */
        c = test_request(&f->t, "POST", "/v2/cache", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 405);
        assert_header(c, "Allow", "GET, DELETE");
        test_client_free(c);
        c = test_request(&f->t, "PUT", "/v2/cache/.bad", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 400);
        test_client_free(c);
}

static void test_manage_no_token_file(ManageFixture *f, gconstpointer user) {
        /* ManagementAPI=yes without a token file refuses everything, even an empty token. */
        TestClient *c = test_request(&f->t, "GET", "/v2/cache", "X-Auth-Token: ", NULL);
        g_assert_cmpint(c->status, ==, 401);
        test_client_free(c);
        c = test_request(&f->t, "GET", "/v2/cache", "X-Auth-Token: s3cret", NULL);
        g_assert_cmpint(c->status, ==, 401);
        test_client_free(c);
}

static void test_manage_cache_api(ManageFixture *f, gconstpointer user) {
        TestClient *c;
        json_t *j;

        test_server_add_image(&f->t, "one", "hello", 5);
        test_server_add_image(&f->t, "two", "world!", 6);
        /* A hit on "one", so hits show. */
        c = test_request(&f->t, "GET", "/images/one", NULL);
        test_client_free(c);

        /* Queue (PUT → 202); with no real upstream the fake fetcher starts a fill at once
         * (PrefetchOnQueue=yes by default). */
        c = test_request(&f->t, "PUT", "/v2/cache/q1", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 202);
        test_client_free(c);
        g_assert_true(image_cache_is_queued(f->t.cache, "q1"));
        g_assert_nonnull(fake_fetcher_get(f->t.fetcher, "q1"));
        c = test_request(&f->t, "PUT", "/v2/cache/q2", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 202);
        test_client_free(c);

        c = test_request(&f->t, "GET", "/v2/cache", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        assert_header(c, "Content-Type", "application/json");
        j = body_json(c);
        json_t *cached = json_object_get(j, "cached_images"), *queued = json_object_get(j, "queued_images");
        g_assert_cmpuint(json_array_size(cached), ==, 2);
        json_t *e = json_array_get(cached, 0);
        g_assert_cmpstr(json_string_value(json_object_get(e, "image_id")), ==, "one");
        g_assert_cmpint(json_integer_value(json_object_get(e, "hits")), ==, 1);
        g_assert_cmpint(json_integer_value(json_object_get(e, "size")), ==, 5);
        g_assert_true(json_is_real(json_object_get(e, "last_accessed")));
        g_assert_true(json_is_real(json_object_get(e, "last_modified")));
        g_assert_cmpfloat(json_real_value(json_object_get(e, "last_modified")), >, 1.6e9);
        g_assert_cmpuint(json_array_size(queued), ==, 2);
        g_assert_cmpstr(json_string_value(json_array_get(queued, 0)), ==, "q1");
        g_assert_cmpstr(json_string_value(json_array_get(queued, 1)), ==, "q2");
        json_decref(j);
        test_client_free(c);

        /* DELETE one image: cached copy gone, 204; again: 404. A queued one: 204. */
        c = test_request(&f->t, "DELETE", "/v2/cache/one", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 204);
        test_client_free(c);
        g_assert_false(image_cache_is_cached(f->t.cache, "one"));
        c = test_request(&f->t, "DELETE", "/v2/cache/one", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        c = test_request(&f->t, "DELETE", "/v2/cache/q2", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 204);
        test_client_free(c);
        g_assert_false(image_cache_is_queued(f->t.cache, "q2"));

        /* DELETE /v2/cache with the clear target. */
        c = test_request(&f->t, "DELETE", "/v2/cache", TOKEN, "x-image-cache-clear-target: everything", NULL);
        g_assert_cmpint(c->status, ==, 400);
        test_client_free(c);
        g_assert_true(image_cache_is_cached(f->t.cache, "two"));
        g_assert_true(image_cache_is_queued(f->t.cache, "q1"));

        c = test_request(&f->t, "DELETE", "/v2/cache", TOKEN, "x-image-cache-clear-target: queue", NULL);
        g_assert_cmpint(c->status, ==, 204);
        test_client_free(c);
        g_assert_true(image_cache_is_cached(f->t.cache, "two"));
        g_assert_false(image_cache_is_queued(f->t.cache, "q1"));

        g_assert_cmpint(image_cache_queue(f->t.cache, "q3", NULL), ==, 1);
        c = test_request(&f->t, "DELETE", "/v2/cache", TOKEN, "x-image-cache-clear-target: cache", NULL);
        g_assert_cmpint(c->status, ==, 204);
        test_client_free(c);
        g_assert_false(image_cache_is_cached(f->t.cache, "two"));
        g_assert_true(image_cache_is_queued(f->t.cache, "q3"));

        test_server_add_image(&f->t, "three", "!", 1);
        c = test_request(&f->t, "DELETE", "/v2/cache", TOKEN, NULL);  /* absent: both */
        g_assert_cmpint(c->status, ==, 204);
        test_client_free(c);
        g_assert_cmpuint(image_cache_count(f->t.cache), ==, 0);
        g_assert_false(image_cache_is_queued(f->t.cache, "q3"));
}

static void test_manage_prune_clean(ManageFixture *f, gconstpointer user) {
        TestClient *c;
        json_t *j;

        /* MaxSize=10G: nothing to prune. */
        test_server_add_image(&f->t, "a", "aaaa", 4);
        c = test_request(&f->t, "POST", "/v2/cache/prune", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        j = body_json(c);
        g_assert_cmpint(json_integer_value(json_object_get(j, "total_files_pruned")), ==, 0);
        g_assert_cmpint(json_integer_value(json_object_get(j, "total_bytes_pruned")), ==, 0);
        json_decref(j);
        test_client_free(c);

        /* MaxSize=0: everything goes. */
        f->t.config.max_size = (SizeLimit) { .bytes = 0, .permille = UINT64_MAX };
        test_server_add_image(&f->t, "b", "bb", 2);
        c = test_request(&f->t, "POST", "/v2/cache/prune", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        j = body_json(c);
        g_assert_cmpint(json_integer_value(json_object_get(j, "total_files_pruned")), ==, 2);
        g_assert_cmpint(json_integer_value(json_object_get(j, "total_bytes_pruned")), ==, 6);
        json_decref(j);
        test_client_free(c);

        /* Clean: a file in invalid/ is removed. */
        g_autofree char *invalid = g_build_filename(f->t.dir, "invalid", NULL);
        test_write_file(invalid, "junk", "x", 1);
        c = test_request(&f->t, "POST", "/v2/cache/clean", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        j = body_json(c);
        g_assert_cmpint(json_integer_value(json_object_get(j, "total_invalid_removed")), ==, 1);
        json_decref(j);
        test_client_free(c);
        g_assert_false(test_file_exists(invalid, "junk"));
}

static void test_manage_legacy(ManageFixture *f, gconstpointer user) {
        TestClient *c;
        json_t *j;

        test_server_add_image(&f->t, "a", "aaaa", 4);
        test_server_add_image(&f->t, "b", "bb", 2);

        c = test_request(&f->t, "GET", "/v2/cached_images", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        j = body_json(c);
        g_assert_cmpuint(json_array_size(json_object_get(j, "cached_images")), ==, 2);
        g_assert_null(json_object_get(j, "queued_images"));
        json_decref(j);
        test_client_free(c);

        c = test_request(&f->t, "DELETE", "/v2/cached_images/a", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        g_assert_false(image_cache_is_cached(f->t.cache, "a"));

        c = test_request(&f->t, "DELETE", "/v2/cached_images", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        j = body_json(c);
        g_assert_cmpint(json_integer_value(json_object_get(j, "num_deleted")), ==, 1);
        json_decref(j);
        test_client_free(c);

        c = test_request(&f->t, "PUT", "/v2/queued_images/x", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        c = test_request(&f->t, "PUT", "/v2/queued_images/y", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        c = test_request(&f->t, "GET", "/v2/queued_images", TOKEN, NULL);
        j = body_json(c);
        g_assert_cmpuint(json_array_size(json_object_get(j, "queued_images")), ==, 2);
        json_decref(j);
        test_client_free(c);
        c = test_request(&f->t, "DELETE", "/v2/queued_images/x", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        test_client_free(c);
        g_assert_false(image_cache_is_queued(f->t.cache, "x"));
        c = test_request(&f->t, "DELETE", "/v2/queued_images", TOKEN, NULL);
        j = body_json(c);
        g_assert_cmpint(json_integer_value(json_object_get(j, "num_deleted")), ==, 1);
        json_decref(j);
        test_client_free(c);

        c = test_request(&f->t, "GET", "/versions", TOKEN, NULL);
        g_assert_cmpint(c->status, ==, 200);
        j = body_json(c);
        json_t *v = json_array_get(json_object_get(j, "versions"), 0);
        g_assert_cmpstr(json_string_value(json_object_get(v, "id")), ==, "v2.16");
        g_assert_cmpstr(json_string_value(json_object_get(v, "status")), ==, "CURRENT");
        g_autofree char *href = g_strdup_printf("%s/v2/", f->t.base);
        json_t *link = json_array_get(json_object_get(v, "links"), 0);
        g_assert_cmpstr(json_string_value(json_object_get(link, "href")), ==, href);
        /* The cache API's first version is listed. */
        bool v214 = false;
        json_t *it;
        size_t i;
        json_array_foreach(json_object_get(j, "versions"), i, it)
                v214 = v214 || streq(json_string_value(json_object_get(it, "id")), "v2.14");
        g_assert_true(v214);
        json_decref(j);
        test_client_free(c);
}


/* ---- misses, scripted ---- */

#define MISS_SIZE (1024 * 1024 + 3)

typedef struct MissFixture {
        TestServer t;
        uint8_t *data;
} MissFixture;

static void miss_setup(MissFixture *f, gconstpointer user) {
        test_server_start(&f->t, NULL, NULL, 0);
        f->data = test_random_data(MISS_SIZE, 7);
}

static void miss_teardown(MissFixture *f, gconstpointer user) {
        test_server_stop(&f->t);
        g_free(f->data);
}

static bool fill_started(void *userdata) {
        void **p = userdata;
        return fake_fetcher_get(((TestServer *) p[0])->fetcher, p[1]) != NULL;
}

static Fill *wait_fill(TestServer *t, const char *id) {
        void *p[] = { t, (void *) id };
        test_run_until(t, fill_started, p);
        return fake_fetcher_get(t->fetcher, id);
}

typedef struct Subscribers {
        Fill *fill;
        unsigned n;
} Subscribers;

static bool subscribers_are(void *userdata) {
        Subscribers *s = userdata;
        return fake_fill_n_subscribers(s->fill) == s->n;
}

static void wait_subscribers(TestServer *t, Fill *fill, unsigned n) {
        Subscribers s = { fill, n };
        test_run_until(t, subscribers_are, &s);
}

static void write_chunks(Fill *fill, const uint8_t *data, size_t from, size_t to) {
        for (size_t off = from; off < to;) {
                size_t n = MIN((size_t) 65536, to - off);
                fake_fill_write(fill, data + off, n);
                off += n;
        }
}

static void test_miss_stream(MissFixture *f, gconstpointer user) {
        g_autofree char *len = g_strdup_printf("%d", MISS_SIZE);
        TestClient *c = test_client_new(&f->t, "GET", "/images/m", NULL);
        test_client_start(c);

        /* The request starts a fill and waits for its headers. */
        Fill *fill = wait_fill(&f->t, "m");
        wait_subscribers(&f->t, fill, 1);
        g_assert_cmpuint(fake_fetcher_n_started(f->t.fetcher), ==, 1);
        test_run_pending(&f->t);
        g_assert_cmpuint(c->head->len, ==, 0);  /* not a byte of the response yet */

        fake_fill_headers(fill, MISS_SIZE);
        write_chunks(fill, f->data, 0, MISS_SIZE / 2);
        /* The client gets what is on disk while the rest is still coming: it does not wait for the
         * whole download. */
        test_run_until_received(&f->t, c, MISS_SIZE / 2);
        if (g_atomic_int_get(&c->done))
                g_error("client done early: result %d status %ld received %d\n%s", c->result, c->status,
                        g_atomic_int_get(&c->received), c->head->str);

        /* All bytes are on disk but the fill is not DONE: everything but the last byte goes out. */
        write_chunks(fill, f->data, MISS_SIZE / 2, MISS_SIZE);
        test_run_until_received(&f->t, c, MISS_SIZE - 1);
        test_run_pending(&f->t);
        g_assert_cmpint(g_atomic_int_get(&c->received), ==, MISS_SIZE - 1);
        g_assert_false(g_atomic_int_get(&c->done));

        fake_fill_finish(fill, 0, /* keep= */ true);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, MISS_SIZE);
        assert_header(c, "Content-Length", len);
        assert_header(c, "Accept-Ranges", "bytes");
        test_client_free(c);

        const TestOps *k = &f->t.ops;
        g_assert_cmpuint(k->misses, ==, 1);
        g_assert_cmpuint(k->hits, ==, 0);
        g_assert_cmpuint(k->bytes_served, ==, MISS_SIZE);

        /* Now it is a hit, with an ETag, and no new fill. */
        c = test_request(&f->t, "GET", "/images/m", NULL);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, MISS_SIZE);
        g_autofree char *etag = test_client_header(c, "ETag");
        g_assert_nonnull(etag);
        test_client_free(c);
        g_assert_cmpuint(fake_fetcher_n_started(f->t.fetcher), ==, 1);
        g_assert_cmpuint(f->t.ops.hits, ==, 1);
}

static void test_miss_joiners(MissFixture *f, gconstpointer user) {
        TestClient *c[8];

        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                c[i] = test_client_new(&f->t, "GET", i % 2 ? "/images/m" : "/v2/images/m/file", NULL);
                test_client_start(c[i]);
        }

        /* Eight clients, one fill. */
        Fill *fill = wait_fill(&f->t, "m");
        wait_subscribers(&f->t, fill, ELEMENTSOF(c));
        g_assert_cmpuint(fake_fetcher_n_started(f->t.fetcher), ==, 1);

        fake_fill_headers(fill, MISS_SIZE);
        write_chunks(fill, f->data, 0, MISS_SIZE);
        fake_fill_finish(fill, 0, true);
        test_run_until_done(&f->t, c, ELEMENTSOF(c));

        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                g_assert_cmpint(c[i]->result, ==, CURLE_OK);
                g_assert_cmpint(c[i]->status, ==, 200);
                assert_body(c[i], f->data, MISS_SIZE);
                test_client_free(c[i]);
        }
        g_assert_cmpuint(f->t.ops.misses, ==, ELEMENTSOF(c));
}

static void test_miss_slow_reader(MissFixture *f, gconstpointer user) {
        /* Big enough that the slow client's socket buffers fill up long before the end. */
        const size_t size = 24 * 1024 * 1024;
        g_autofree uint8_t *data = test_random_data(size, 9);

        TestClient *slow = test_client_new(&f->t, "GET", "/images/big", NULL);
        slow->pause_after = 1;
        test_client_start(slow);
        Fill *fill = wait_fill(&f->t, "big");
        wait_subscribers(&f->t, fill, 1);
        fake_fill_headers(fill, size);
        write_chunks(fill, data, 0, size);

        /* The slow one took its first bytes and stopped reading. */
        test_run_until_paused(&f->t, slow);

        /* A second client gets everything (but the held-back last byte) while the first sits there. */
        TestClient *fast = test_client_new(&f->t, "GET", "/images/big", NULL);
        test_client_start(fast);
        test_run_until_received(&f->t, fast, size - 1);
        g_assert_true(g_atomic_int_get(&slow->paused));
        g_assert_cmpint(g_atomic_int_get(&slow->received), <, (gint) (size / 2));

        fake_fill_finish(fill, 0, true);
        test_run_until_done(&f->t, &fast, 1);
        assert_body(fast, data, size);
        g_assert_false(g_atomic_int_get(&slow->done));

        /* Released, the slow one gets the same bytes. */
        test_client_resume(slow);
        test_run_until_done(&f->t, &slow, 1);
        g_assert_cmpint(slow->result, ==, CURLE_OK);
        assert_body(slow, data, size);
        test_client_free(slow);
        test_client_free(fast);
}

static void test_miss_bad_digest(MissFixture *f, gconstpointer user) {
        TestClient *c[3];

        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                c[i] = test_client_new(&f->t, "GET", "/images/m", NULL);
                test_client_start(c[i]);
        }
        Fill *fill = wait_fill(&f->t, "m");
        wait_subscribers(&f->t, fill, ELEMENTSOF(c));
        fake_fill_headers(fill, MISS_SIZE);
        write_chunks(fill, f->data, 0, MISS_SIZE);
        for (size_t i = 0; i < ELEMENTSOF(c); i++)
                test_run_until_received(&f->t, c[i], MISS_SIZE - 1);

        /* Verification fails at the end: every client still reading sees an aborted transfer, and none
         * has the last byte. */
        fake_fill_finish(fill, -EBADMSG, false);
        test_run_until_done(&f->t, c, ELEMENTSOF(c));
        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                g_assert_cmpint(c[i]->status, ==, 200);
                g_assert_cmpint(c[i]->result, ==, CURLE_PARTIAL_FILE);
                g_assert_cmpuint(c[i]->body->len, ==, MISS_SIZE - 1);
                test_client_free(c[i]);
        }
        g_assert_false(image_cache_is_cached(f->t.cache, "m"));
}

static void test_miss_chunked(MissFixture *f, gconstpointer user) {
        /* No length from the upstream: chunked, and still the last byte waits for DONE. */
        TestClient *c = test_client_new(&f->t, "GET", "/images/m", NULL);
        test_client_start(c);
        Fill *fill = wait_fill(&f->t, "m");
        wait_subscribers(&f->t, fill, 1);
        fake_fill_headers(fill, UINT64_MAX);
        write_chunks(fill, f->data, 0, MISS_SIZE);
        test_run_until_received(&f->t, c, MISS_SIZE - 1);
        test_run_pending(&f->t);
        g_assert_cmpint(g_atomic_int_get(&c->received), ==, MISS_SIZE - 1);
        fake_fill_finish(fill, 0, true);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        assert_body(c, f->data, MISS_SIZE);
        assert_header(c, "Content-Length", NULL);
        assert_header(c, "Transfer-Encoding", "chunked");
        assert_header(c, "Accept-Ranges", NULL);
        test_client_free(c);

        /* The same failing: the chunked stream is cut without its last chunk, which clients notice. */
        c = test_client_new(&f->t, "GET", "/images/n", NULL);
        test_client_start(c);
        fill = wait_fill(&f->t, "n");
        wait_subscribers(&f->t, fill, 1);
        fake_fill_headers(fill, UINT64_MAX);
        write_chunks(fill, f->data, 0, 1000);
        test_run_until_received(&f->t, c, 999);
        fake_fill_finish(fill, -EPROTO, false);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 200);
        g_assert_cmpint(c->result, !=, CURLE_OK);
        g_assert_cmpuint(c->body->len, ==, 999);
        test_client_free(c);
}

static void test_miss_failures_before_headers(MissFixture *f, gconstpointer user) {
        const struct {
                int error;
                long status;
        } cases[] = {
                { -ENOENT, 404 },
                { -EPROTO, 502 },
                { -EBADMSG, 502 },
                { -ETIMEDOUT, 504 },
                { -ECANCELED, 503 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                g_autofree char *id = g_strdup_printf("f%zu", i);
                g_autofree char *path = g_strdup_printf("/images/%s", id);
                TestClient *c = test_client_new(&f->t, "GET", path, NULL);
                test_client_start(c);
                Fill *fill = wait_fill(&f->t, id);
                wait_subscribers(&f->t, fill, 1);
                fake_fill_finish(fill, cases[i].error, false);
                test_run_until_done(&f->t, &c, 1);
                g_assert_cmpint(c->result, ==, CURLE_OK);
                g_assert_cmpint(c->status, ==, cases[i].status);
                test_client_free(c);
        }

        /* No upstream at all: a plain 404, no fill. */
        TestServer t;
        test_server_start(&t, NULL, NULL, 0);
        free(t.config.upstream_url);
        t.config.upstream_url = NULL;
        fetcher_reconfigure(t.fetcher, &t.config);
        TestClient *c = test_request(&t, "GET", "/images/x", NULL);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        g_assert_cmpuint(fake_fetcher_n_started(t.fetcher), ==, 0);
        test_server_stop(&t);
}

static void test_miss_range(MissFixture *f, gconstpointer user) {
        TestClient *c = test_client_new(&f->t, "GET", "/images/m", "Range: bytes=100000-199999", NULL);
        TestClient *tail = test_client_new(&f->t, "GET", "/images/m", "Range: bytes=-10", NULL);
        test_client_start(c);
        test_client_start(tail);
        Fill *fill = wait_fill(&f->t, "m");
        wait_subscribers(&f->t, fill, 2);
        fake_fill_headers(fill, MISS_SIZE);

        /* Bytes up to the range's end are on disk: the range is answered, long before the fill ends. */
        write_chunks(fill, f->data, 0, 200000);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 206);
        g_assert_cmpint(c->result, ==, CURLE_OK);
        assert_body(c, f->data + 100000, 100000);
        g_autofree char *cr = g_strdup_printf("bytes 100000-199999/%d", MISS_SIZE);
        assert_header(c, "Content-Range", cr);
        g_assert_false(g_atomic_int_get(&tail->done));
        test_client_free(c);

        /* A range past the end: 416 at once. */
        g_autofree char *h = g_strdup_printf("Range: bytes=%d-", MISS_SIZE);
        c = test_request(&f->t, "GET", "/images/m", h, NULL);
        g_assert_cmpint(c->status, ==, 416);
        test_client_free(c);

        /* The range with the last byte waits for DONE, like a whole body. */
        write_chunks(fill, f->data, 200000, MISS_SIZE);
        test_run_until_received(&f->t, tail, 9);
        test_run_pending(&f->t);
        g_assert_false(g_atomic_int_get(&tail->done));
        fake_fill_finish(fill, 0, true);
        test_run_until_done(&f->t, &tail, 1);
        g_assert_cmpint(tail->status, ==, 206);
        assert_body(tail, f->data + MISS_SIZE - 10, 10);
        test_client_free(tail);
        g_assert_cmpuint(fake_fetcher_n_started(f->t.fetcher), ==, 1);

        /* Without a length from the upstream a Range gets the whole image (200). */
        c = test_client_new(&f->t, "GET", "/images/u", "Range: bytes=0-9", NULL);
        test_client_start(c);
        fill = wait_fill(&f->t, "u");
        wait_subscribers(&f->t, fill, 1);
        fake_fill_headers(fill, UINT64_MAX);
        write_chunks(fill, f->data, 0, 5000);
        test_run_until_received(&f->t, c, 4999);
        fake_fill_finish(fill, 0, true);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 200);
        assert_body(c, f->data, 5000);
        test_client_free(c);
}

static bool query_asked(void *userdata) {
        void **p = userdata;
        return fake_fetcher_query(((TestServer *) p[0])->fetcher, p[1]) != NULL;
}

static UpstreamQuery *wait_query(TestServer *t, const char *id) {
        void *p[] = { t, (void *) id };
        test_run_until(t, query_asked, p);
        return fake_fetcher_query(t->fetcher, id);
}

static void test_miss_head(MissFixture *f, gconstpointer user) {
        g_autofree char *len = g_strdup_printf("%d", MISS_SIZE);

        /* A HEAD of an image nobody fetches is answered from what the upstream says of it (asked with the
         * daemon's own credentials): no fill starts. */
        TestClient *c = test_client_new(&f->t, "HEAD", "/images/m", NULL);
        test_client_start(c);
        UpstreamQuery *q = wait_query(&f->t, "m");
        g_assert_null(fake_query_credentials(q));
        test_run_pending(&f->t);
        g_assert_cmpuint(c->head->len, ==, 0);
        fake_query_answer(q, &(UpstreamAnswer) { .status = 200, .available = true, .has_size = true, .size = MISS_SIZE });
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 200);
        assert_header(c, "Content-Length", len);
        assert_header(c, "Accept-Ranges", "bytes");
        test_client_free(c);
        g_assert_cmpuint(fake_fetcher_n_started(f->t.fetcher), ==, 0);
        g_assert_cmpuint(f->t.ops.misses, ==, 0);

        /* While a GET fetches it, a HEAD is answered from the fill's headers, asking nobody. */
        TestClient *get = test_client_new(&f->t, "GET", "/images/m", NULL);
        test_client_start(get);
        Fill *fill = wait_fill(&f->t, "m");
        wait_subscribers(&f->t, fill, 1);
        c = test_client_new(&f->t, "HEAD", "/images/m", NULL);
        test_client_start(c);
        wait_subscribers(&f->t, fill, 2);
        fake_fill_headers(fill, MISS_SIZE);
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 200);
        assert_header(c, "Content-Length", len);
        assert_header(c, "Accept-Ranges", "bytes");
        test_client_free(c);
        g_assert_cmpuint(fake_fetcher_n_queries(f->t.fetcher), ==, 1);
        /* The HEAD went away; the fill goes on (nobody cancelled it). A HEAD is no miss. */
        wait_subscribers(&f->t, fill, 1);
        g_assert_cmpint(fill_state(fill), ==, FILL_RECEIVING);
        g_assert_cmpuint(f->t.ops.misses, ==, 1);  /* the GET's */
        write_chunks(fill, f->data, 0, MISS_SIZE);
        fake_fill_finish(fill, 0, /* keep= */ true);
        test_run_until_done(&f->t, &get, 1);
        g_assert_cmpint(get->status, ==, 200);
        test_client_free(get);

        /* An id the upstream does not have: 404, and remembered (NotFoundCacheSec=): the next HEAD and GET
         * of it ask nobody and start nothing. */
        c = test_client_new(&f->t, "HEAD", "/images/gone", NULL);
        test_client_start(c);
        fake_query_answer(wait_query(&f->t, "gone"), &(UpstreamAnswer) { .status = 404 });
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        c = test_request(&f->t, "HEAD", "/images/gone", NULL);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        c = test_request(&f->t, "GET", "/images/gone", NULL);
        g_assert_cmpint(c->status, ==, 404);
        test_client_free(c);
        g_assert_cmpuint(fake_fetcher_n_queries(f->t.fetcher), ==, 2);
        g_assert_null(fake_fetcher_get(f->t.fetcher, "gone"));

        /* An upstream that cannot answer: 502, nothing remembered. */
        c = test_client_new(&f->t, "HEAD", "/images/flaky", NULL);
        test_client_start(c);
        fake_query_answer(wait_query(&f->t, "flaky"), &(UpstreamAnswer) { .error = -ETIMEDOUT });
        test_run_until_done(&f->t, &c, 1);
        g_assert_cmpint(c->status, ==, 502);
        test_client_free(c);
}

static void test_miss_client_gone(MissFixture *f, gconstpointer user) {
        TestClient *quitter = test_client_new(&f->t, "GET", "/images/m", NULL);
        TestClient *stayer = test_client_new(&f->t, "GET", "/images/m", NULL);
        quitter->abort_after = 4096;
        test_client_start(quitter);
        test_client_start(stayer);
        Fill *fill = wait_fill(&f->t, "m");
        wait_subscribers(&f->t, fill, 2);
        fake_fill_headers(fill, MISS_SIZE);
        write_chunks(fill, f->data, 0, MISS_SIZE / 2);

        /* One client hangs up mid-stream: its stream goes, the fill does not. */
        test_run_until_done(&f->t, &quitter, 1);
        g_assert_cmpint(quitter->result, ==, CURLE_WRITE_ERROR);
        /* A connection suspended while waiting for bytes notices the hang-up when the next bytes wake
         * it; then its stream goes away, while the fill carries on. */
        write_chunks(fill, f->data, MISS_SIZE / 2, MISS_SIZE * 3 / 4);
        wait_subscribers(&f->t, fill, 1);
        g_assert_cmpint(fill_state(fill), ==, FILL_RECEIVING);

        write_chunks(fill, f->data, MISS_SIZE * 3 / 4, MISS_SIZE);
        fake_fill_finish(fill, 0, true);
        test_run_until_done(&f->t, &stayer, 1);
        assert_body(stayer, f->data, MISS_SIZE);
        g_assert_true(image_cache_is_cached(f->t.cache, "m"));
        test_client_free(quitter);
        test_client_free(stayer);
}

static void test_miss_shutdown(MissFixture *f, gconstpointer user) {
        /* The server goes away with one client waiting for headers and one suspended mid-body: both
         * connections are closed, nothing leaks, MHD does not abort over suspended connections. */
        TestClient *waiting = test_client_new(&f->t, "GET", "/images/w", NULL);
        TestClient *reading = test_client_new(&f->t, "GET", "/images/r", NULL);
        test_client_start(waiting);
        test_client_start(reading);
        Fill *w = wait_fill(&f->t, "w");
        Fill *r = wait_fill(&f->t, "r");
        wait_subscribers(&f->t, w, 1);
        wait_subscribers(&f->t, r, 1);
        fake_fill_headers(r, MISS_SIZE);
        write_chunks(r, f->data, 0, 1000);
        test_run_until_received(&f->t, reading, 1000);

        f->t.server = http_server_free(f->t.server);
        g_assert_cmpuint(fake_fill_n_subscribers(w), ==, 0);
        g_assert_cmpuint(fake_fill_n_subscribers(r), ==, 0);

        g_thread_join(waiting->thread);
        g_thread_join(reading->thread);
        waiting->thread = reading->thread = NULL;
        g_assert_cmpint(waiting->result, !=, CURLE_OK);
        g_assert_cmpint(reading->result, !=, CURLE_OK);
        test_client_free(waiting);
        test_client_free(reading);
}

static void fills_per_ip_setup(Config *c, void *userdata) {
        c->max_fills_per_ip = 1;
}

static TestClient *get_from(TestServer *t, const char *source, const char *id) {
        g_autofree char *req = g_strdup_printf("GET /images/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", id);
        TestClient *c = test_client_new_raw(t, req);
        c->raw_bind = source;
        test_client_start(c);
        return c;
}

static void proxy_setup(Config *c, void *userdata) {
        c->max_fills_per_ip = 1;
        c->max_connections_per_ip = 2;
        c->trusted_proxies = g_strdup("127.0.0.5 ::1/128");
}

static TestClient *get_via(TestServer *t, const char *source, const char *id, const char *xff) {
        g_autofree char *req = g_strdup_printf("GET /images/%s HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: %s\r\n"
                                               "Connection: close\r\n\r\n", id, xff);
        TestClient *c = test_client_new_raw(t, req);
        c->raw_bind = source;
        test_client_start(c);
        return c;
}

static void test_trusted_proxy(void) {
        /* Behind a reverse proxy every client arrives from its address. From a trusted one, X-Forwarded-For
         * names the client, and per-address limits apply to that client; from any other address the
         * header proves nothing. The proxy holds more connections than MaxConnectionsPerIP= allows one
         * address; a direct client over it is refused, and that is counted. */
        TestServer t;
        test_server_start(&t, proxy_setup, NULL, 0);
        uint16_t port = http_server_port(t.server);

        /* Two clients behind the proxy start a fill each (MaxFetchesPerIP=1 is per client). The rightmost
         * untrusted address is the client: what stands left of it the client wrote itself. */
        TestClient *a = get_via(&t, "127.0.0.5", "a", "198.51.100.1");
        Fill *fa = wait_fill(&t, "a");
        wait_subscribers(&t, fa, 1);
        TestClient *b = get_via(&t, "127.0.0.5", "b", "203.0.113.9, 198.51.100.2, 127.0.0.5");
        Fill *fb = wait_fill(&t, "b");
        wait_subscribers(&t, fb, 1);
        /* The first client again: its one fill runs. */
        TestClient *refused = get_via(&t, "127.0.0.5", "c", "10.9.9.9, 198.51.100.1");
        test_run_until_done(&t, &refused, 1);
        g_assert_cmpint(refused->status, ==, 503);
        g_assert_null(fake_fetcher_get(t.fetcher, "c"));
        test_client_free(refused);

        /* A client that is not a trusted proxy cannot pose as one: the header is ignored. */
        TestClient *d = get_via(&t, "127.0.0.6", "d", "198.51.100.3");
        Fill *fd = wait_fill(&t, "d");
        wait_subscribers(&t, fd, 1);
        TestClient *spoofed = get_via(&t, "127.0.0.6", "e", "198.51.100.4");
        test_run_until_done(&t, &spoofed, 1);
        g_assert_cmpint(spoofed->status, ==, 503);
        test_client_free(spoofed);

        /* The proxy holds 2 waiting requests and 3 idle connections more: all accepted. 127.0.0.6 has one
         * (d's); one more is fine, the next is closed unanswered and counted. */
        int idle[3];
        for (size_t i = 0; i < ELEMENTSOF(idle); i++)
                idle[i] = test_connect_from("127.0.0.5", port);
        int second = test_connect_from("127.0.0.6", port);
        void *seven[] = { t.server, GUINT_TO_POINTER(7) };
        test_run_until(&t, connections_are, seven);
        int third = test_connect_from("127.0.0.6", port);
        wait_hangup(&t, third);
        close(third);
        g_assert_cmpuint(http_server_counters(t.server)->refused[HTTP_REFUSED_CONNECTIONS_PER_IP], ==, 1);
        g_assert_cmpuint(http_server_counters(t.server)->refused[HTTP_REFUSED_FETCHES_PER_IP], ==, 2);

        for (size_t i = 0; i < ELEMENTSOF(idle); i++)
                close(idle[i]);
        close(second);
        fake_fill_finish(fa, -EIO, false);
        fake_fill_finish(fb, -EIO, false);
        fake_fill_finish(fd, -EIO, false);
        TestClient *rest[] = { a, b, d };
        test_run_until_done(&t, rest, ELEMENTSOF(rest));
        for (size_t i = 0; i < ELEMENTSOF(rest); i++)
                test_client_free(rest[i]);
        test_server_stop(&t);
}

static void test_miss_fills_per_ip(void) {
        /* MaxFetchesPerIP=1: a client address that started a fill still running cannot start another, but
         * may join a running one; other addresses are not affected; when the fill ends, the count drops. */
        TestServer t;
        test_server_start(&t, fills_per_ip_setup, NULL, 0);

        TestClient *a = get_from(&t, "127.0.0.6", "a");
        Fill *fa = wait_fill(&t, "a");
        wait_subscribers(&t, fa, 1);

        TestClient *refused = get_from(&t, "127.0.0.6", "b");
        test_run_until_done(&t, &refused, 1);
        g_assert_cmpint(refused->status, ==, 503);
        g_assert_nonnull(strstr(refused->head->str, "MaxFetchesPerIP=1"));
        g_assert_nonnull(strcasestr(refused->head->str, "Retry-After: 1"));
        g_assert_null(fake_fetcher_get(t.fetcher, "b"));
        test_client_free(refused);

        TestClient *joiner = get_from(&t, "127.0.0.6", "a");
        wait_subscribers(&t, fa, 2);
        TestClient *other = get_from(&t, "127.0.0.7", "b");
        Fill *fb = wait_fill(&t, "b");
        wait_subscribers(&t, fb, 1);

        fake_fill_finish(fa, -EIO, /* keep= */ false);
        TestClient *ended[] = { a, joiner };
        test_run_until_done(&t, ended, ELEMENTSOF(ended));
        g_assert_cmpint(a->status, ==, 502);
        g_assert_cmpint(joiner->status, ==, 502);

        TestClient *again = get_from(&t, "127.0.0.6", "c");
        Fill *fc = wait_fill(&t, "c");
        wait_subscribers(&t, fc, 1);

        fake_fill_finish(fb, -EIO, false);
        fake_fill_finish(fc, -EIO, false);
        TestClient *rest[] = { other, again };
        test_run_until_done(&t, rest, ELEMENTSOF(rest));
        test_client_free(a);
        test_client_free(joiner);
        test_client_free(other);
        test_client_free(again);
        test_server_stop(&t);
}

/* Sends request (headers only, never the body they announce) from its own connection and returns what
 * came back before the server closed it. */
static char *reply_to_headers(TestServer *t, const char *request) {
        Hangup h = { test_connect_from(NULL, http_server_port(t->server)), g_string_new(NULL) };

        send_all(h.fd, request);
        test_run_until(t, server_hung_up, &h);
        close(h.fd);
        return g_string_free(h.text, false);
}

static void test_body_refused_at_headers(ManageFixture *f, gconstpointer user) {
        /* A body nobody takes is refused from the headers: the server does not wait for a byte of it
         * (the test would time out) and closes the connection. */
        g_autofree char *a = reply_to_headers(&f->t, "GET /images/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n");
        g_assert_true(g_str_has_prefix(a, "HTTP/1.1 400 "));
        g_assert_nonnull(strstr(a, "takes no body"));
        g_autofree char *b = reply_to_headers(&f->t, "HEAD /images/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        g_assert_true(g_str_has_prefix(b, "HTTP/1.1 400 "));
        /* An upload without credentials gets its 401 at once; with them, the route still takes none. */
        g_autofree char *c = reply_to_headers(&f->t, "PUT /v2/cache/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n");
        g_assert_true(g_str_has_prefix(c, "HTTP/1.1 401 "));
        g_autofree char *d = reply_to_headers(&f->t, "PUT /v2/cache/x HTTP/1.1\r\nHost: a\r\nX-Auth-Token: s3cret\r\n"
                                                     "Transfer-Encoding: chunked\r\n\r\n");
        g_assert_true(g_str_has_prefix(d, "HTTP/1.1 400 "));
        g_assert_false(image_cache_is_queued(f->t.cache, "x"));
        /* Content-Length: 0 is no body: served, and kept alive. */
        TestClient *ok = test_client_new_raw(&f->t, "GET /healthcheck HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
                                                    "Connection: close\r\n\r\n");
        test_client_start(ok);
        test_run_until_done(&f->t, &ok, 1);
        g_assert_cmpint(ok->status, ==, 200);
        test_client_free(ok);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        log_setup(program_invocation_short_name);
        curl_global_init(CURL_GLOBAL_DEFAULT);

#define ADD(name, fn) g_test_add(name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
        ADD("/http/hit/get", test_hit_get);
        ADD("/http/hit/head", test_hit_head);
        ADD("/http/hit/ranges", test_hit_ranges);
        ADD("/http/hit/416", test_hit_416);
        ADD("/http/hit/conditional", test_hit_conditional);
        ADD("/http/errors", test_errors);
        ADD("/http/malformed", test_malformed);
        ADD("/http/oversized-headers", test_oversized_headers);
        ADD("/http/healthcheck-metrics", test_healthcheck_metrics);
        g_test_add_func("/http/limits/max-connections", test_max_connections);
        g_test_add_func("/http/limits/connection-timeout", test_connection_timeout);
        g_test_add_func("/http/limits/listener-comes-back", test_listener_comes_back);
        g_test_add("/http/limits/body-refused-at-headers", ManageFixture, NULL, manage_setup,
                   test_body_refused_at_headers, manage_teardown);
        g_test_add_func("/http/limits/connections-per-ip", test_connections_per_ip);
        g_test_add_func("/http/limits/header-timeout", test_header_timeout);
        g_test_add_func("/http/limits/strict-requests", test_strict_requests);

#define MANAGE(name, fn, notoken) \
        g_test_add(name, ManageFixture, notoken, manage_setup, fn, manage_teardown)
        MANAGE("/http/manage/auth", test_manage_auth, NULL);
        MANAGE("/http/manage/no-token-file", test_manage_no_token_file, "x");
        MANAGE("/http/manage/cache-api", test_manage_cache_api, NULL);
        MANAGE("/http/manage/prune-clean", test_manage_prune_clean, NULL);
        MANAGE("/http/manage/legacy", test_manage_legacy, NULL);

#define MISS(name, fn) g_test_add(name, MissFixture, NULL, miss_setup, fn, miss_teardown)
        MISS("/http/miss/stream", test_miss_stream);
        g_test_add_func("/http/miss/fills-per-ip", test_miss_fills_per_ip);
        g_test_add_func("/http/limits/trusted-proxy", test_trusted_proxy);
        MISS("/http/miss/joiners", test_miss_joiners);
        MISS("/http/miss/slow-reader", test_miss_slow_reader);
        MISS("/http/miss/bad-digest", test_miss_bad_digest);
        MISS("/http/miss/chunked", test_miss_chunked);
        MISS("/http/miss/failures-before-headers", test_miss_failures_before_headers);
        MISS("/http/miss/range", test_miss_range);
        MISS("/http/miss/head", test_miss_head);
        MISS("/http/miss/client-gone", test_miss_client_gone);
        MISS("/http/miss/shutdown", test_miss_shutdown);

        int r = g_test_run();
        curl_global_cleanup();
        return r;
}
