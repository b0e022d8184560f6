/* SPDX-License-Identifier: MIT */

/* Full disk through the daemon: imgcached (private bus, tests/lib/test-bus.h) with its cache directory
 * on a 2 MiB tmpfs, mounted in a private user+mount namespace (the test re-runs itself under
 * `unshare --user --map-root-user --mount`; skipped where such namespaces are not allowed). Two images
 * are cached, then a chunked 3 MiB image (no Content-Length, so nothing is refused up front) runs the
 * filesystem out of space: that fill fails with an Error saying so, its partial is gone (neither
 * incomplete/ nor invalid/ nor <id>), both earlier images still serve byte-exact over HTTP, the daemon
 * keeps answering, and after DeleteImage frees space an image that did not fit before is fetched. The same
 * failure under an HTTP client streaming the miss ends that client's transfer at once, even with an idle
 * keep-alive connection open (which once kept it waiting for the 60 s connection timeout). */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gio/gio.h>

#include "checksum.h"
#include "test-bus.h"
#include "test-util.h"
#include "upstream-fixture.h"
#include "util.h"

#define SMALL1 (600 * 1024)
#define SMALL2 (900 * 1024)
#define MID (900 * 1024)
#define BIG (3 * 1024 * 1024)

typedef struct Env {
        TestBus *bus;
        UpstreamFixture *fx;
        uint16_t http_port;
        TestJobWatch *jobs;
} Env;

static GVariant *call(Env *e, const char *method, GVariant *params, GError **error) {
        return g_dbus_connection_call_sync(test_bus_connection(e->bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE,
                                           method, params, NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS,
                                           NULL, error);
}

static uint8_t *make_data(size_t n, unsigned seed) {
        uint8_t *d = g_malloc(n);
        for (size_t i = 0; i < n; i++)
                d[i] = (uint8_t) (i * 29 + seed * 13 + (i >> 8));
        return d;
}

/* GET over the daemon's HTTP listener with curl; the body must be byte-exact. */
static void assert_served(Env *e, const char *id, const uint8_t *data, size_t n) {
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/%s", e->http_port, id);
        g_autofree char *out = g_build_filename(test_bus_dir(e->bus), "served", NULL);
        const char *argv[] = { "curl", "-sSf", "--max-time", "10", "-o", out, url, NULL };
        int status = test_bus_run(e->bus, argv, NULL, NULL);
        g_assert_cmpint(status, ==, 0);
        g_autofree char *got = NULL;
        gsize len = 0;
        g_assert_true(g_file_get_contents(out, &got, &len, NULL));
        g_assert_cmpuint(len, ==, n);
        g_assert_true(memcmp(got, data, n) == 0);
        (void) unlink(out);
}

static gboolean exists_in(Env *e, const char *sub, const char *id) {
        g_autofree char *p = sub ? g_build_filename(test_bus_cache_dir(e->bus), sub, id, NULL)
                                 : g_build_filename(test_bus_cache_dir(e->bus), id, NULL);
        return g_file_test(p, G_FILE_TEST_EXISTS);
}

static void full_disk_inner(void) {
        Env e = {};
        g_assert_cmpint(upstream_fixture_new(0, &e.fx), ==, 0);
        g_autofree uint8_t *s1 = make_data(SMALL1, 1), *s2 = make_data(SMALL2, 2), *mid = make_data(MID, 3),
                           *big = make_data(BIG, 4);
        upstream_fixture_add_image(e.fx, "/images/s1", s1, SMALL1, NULL);
        upstream_fixture_add_image(e.fx, "/images/s2", s2, SMALL2, NULL);
        upstream_fixture_add_image(e.fx, "/images/mid", mid, MID, NULL);
        UpstreamImageOptions chunked = { .no_content_length = true, .etag = "\"big\"" };
        upstream_fixture_add_image(e.fx, "/images/big", big, BIG, &chunked);
        upstream_fixture_add_image(e.fx, "/images/big2", big, BIG, &chunked);

        e.bus = test_bus_new();
        g_assert_cmpint(mount("tmpfs", test_bus_cache_dir(e.bus), "tmpfs", 0, "size=2m,mode=0700"), ==, 0);
        e.http_port = test_free_port();
        g_autofree char *url = upstream_fixture_url(e.fx, "/images/{id}");
        g_autofree char *config = g_strdup_printf("[Cache]\nKeepFree=0\nMaxSize=1G\nEnforceMaxSize=no\n"
                                                  "[Upstream]\nURL=%s\n[HTTP]\nListen=127.0.0.1:%u\n"
                                                  "[Daemon]\nExitOnIdleSec=infinity\n", url, e.http_port);
        test_bus_write_config(e.bus, config);
        e.jobs = test_job_watch_new(e.bus);
        if (!test_bus_start_daemon(e.bus, NULL))
                g_error("imgcached did not start:\n%s", test_bus_daemon_stderr(e.bus));

        g_autofree char *r1 = test_job_watch_fetch(e.jobs, "s1", "", NULL);
        g_assert_cmpstr(r1, ==, "done");
        g_autofree char *r2 = test_job_watch_fetch(e.jobs, "s2", "", NULL);
        g_assert_cmpstr(r2, ==, "done");

        g_autofree char *err = NULL;
        g_autofree char *rb = test_job_watch_fetch(e.jobs, "big", "", &err);
        g_assert_cmpstr(rb, ==, "failed");
        g_assert_nonnull(err);
        if (!strstr(err, "No space") && !strstr(err, "space"))
                g_error("the Error of the fill that ran out of space does not say so: \"%s\"", err);
        g_assert_false(exists_in(&e, NULL, "big"));
        g_assert_false(exists_in(&e, "incomplete", "big"));
        g_assert_false(exists_in(&e, "invalid", "big"));

        /* Out of space under a client streaming the miss: curl sees the transfer cut short (18) before
         * its own limit (28), which is under test_bus_run()'s deadline and far under the daemon's 60 s
         * connection timeout. */
        int idle_fd = test_hold_idle_http_connection(e.http_port, TEST_BUS_TIMEOUT_MS);
        g_autofree char *url2 = g_strdup_printf("http://127.0.0.1:%u/images/big2", e.http_port);
        const char *curl_argv[] = { "curl", "-sS", "--max-time", "8", "-o", "/dev/null", url2, NULL };
        g_assert_cmpint(test_bus_run(e.bus, curl_argv, NULL, NULL), ==, 18);
        g_assert_false(exists_in(&e, NULL, "big2"));
        close(idle_fd);

        /* The daemon answers; nothing earlier was lost. */
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) list = call(&e, "ListImages", NULL, &error);
        g_assert_no_error(error);
        g_autoptr(GVariant) arr = g_variant_get_child_value(list, 0);
        g_assert_cmpuint(g_variant_n_children(arr), ==, 2);
        assert_served(&e, "s1", s1, SMALL1);
        assert_served(&e, "s2", s2, SMALL2);

        /* mid does not fit now; after DeleteImage(s2) it does, and comes in whole. */
        struct statvfs sv;
        g_assert_cmpint(statvfs(test_bus_cache_dir(e.bus), &sv), ==, 0);
        g_test_message("free before DeleteImage: %llu bytes", (unsigned long long) sv.f_bavail * sv.f_frsize);
        g_assert_cmpuint((guint64) sv.f_bavail * sv.f_frsize, <, MID);
        g_autoptr(GVariant) del = call(&e, "DeleteImage", g_variant_new("(s)", "s2"), &error);
        g_assert_no_error(error);
        g_autofree char *rm = test_job_watch_fetch(e.jobs, "mid", "", NULL);
        g_assert_cmpstr(rm, ==, "done");
        assert_served(&e, "mid", mid, MID);
        assert_served(&e, "s1", s1, SMALL1);

        test_job_watch_free(e.jobs);
        g_autofree char *cache = g_strdup(test_bus_cache_dir(e.bus));
        g_assert_cmpint(test_bus_stop_daemon(e.bus), ==, 0);
        (void) umount2(cache, MNT_DETACH);
        test_bus_free(e.bus);
        upstream_fixture_free(e.fx);
}

static void test_full_disk(void) {
        gboolean inside;

        if (test_in_mount_namespace("/full-disk/fill-to-enospc", &inside) && inside)
                full_disk_inner();
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/full-disk/fill-to-enospc", test_full_disk);
        return g_test_run();
}
