/* SPDX-License-Identifier: MIT */

/* KeepFree= beyond admission, through the daemon: imgcached (private bus, tests/lib/test-bus.h) with its
 * cache directory on a 12 MiB tmpfs in a private user+mount namespace (tests/lib/test-util.h), shared
 * with a directory outside the cache. Four 1 MiB images are cached; then a file outside the cache takes
 * the free space below KeepFree=4M:
 *   - Prune (MaxSize is far away) removes least recently used images until KeepFree holds again, and the
 *     KeepFree and FreeSpace properties say what the filesystem says;
 *   - with FreeSpaceCheckSec= set, the running daemon notices a second such file by itself and prunes.
 * And an image the cache cannot keep (10 MiB where 12 less KeepFree= leaves 8) costs the cache nothing:
 * streamed to its reader through memory, nothing evicted, nothing written, its transfer ended when its
 * last reader leaves. */

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>

#include "test-bus.h"
#include "util.h"
#include "test-util.h"
#include "upstream-fixture.h"

#define MIB (1024 * 1024)
#define KEEP_FREE (4 * MIB)

typedef struct Env {
        TestBus *bus;
        UpstreamFixture *fx;
        char *fs;     /* the tmpfs: fs/cache is the cache directory, the rest is "outside the cache" */
        char *url;
} Env;

static GVariant *call(Env *e, const char *method, GVariant *params) {
        g_autoptr(GError) error = NULL;
        GVariant *v = g_dbus_connection_call_sync(test_bus_connection(e->bus), TEST_BUS_NAME, TEST_BUS_PATH,
                                                  TEST_BUS_IFACE, method, params, NULL, G_DBUS_CALL_FLAGS_NONE,
                                                  TEST_BUS_TIMEOUT_MS, NULL, &error);
        g_assert_no_error(error);
        return v;
}

static guint64 get_u64(Env *e, const char *name) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = g_dbus_connection_call_sync(
                        test_bus_connection(e->bus), TEST_BUS_NAME, TEST_BUS_PATH, "org.freedesktop.DBus.Properties",
                        "Get", g_variant_new("(ss)", TEST_BUS_IFACE, name), G_VARIANT_TYPE("(v)"),
                        G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, &error);
        g_assert_no_error(error);
        g_autoptr(GVariant) inner = NULL;
        g_variant_get(v, "(v)", &inner);
        return g_variant_get_uint64(inner);
}

static guint64 free_bytes(Env *e) {
        struct statvfs sv;
        g_assert_cmpint(statvfs(e->fs, &sv), ==, 0);
        return (guint64) sv.f_bavail * sv.f_frsize;
}

/* A bus, and a 12 MiB tmpfs at e->fs whose "cache" directory is bind-mounted as the daemon's cache (in
 * the test's own mount namespace). Returns that directory's path (g_free()). */
static char *env_small_fs(Env *e) {
        e->url = upstream_fixture_url(e->fx, "/images/{id}");
        e->bus = test_bus_new();
        e->fs = g_build_filename(test_bus_dir(e->bus), "fs", NULL);
        g_assert_cmpint(g_mkdir(e->fs, 0700), ==, 0);
        g_assert_cmpint(mount("tmpfs", e->fs, "tmpfs", 0, "size=12m,mode=0700"), ==, 0);
        char *inner = g_build_filename(e->fs, "cache", NULL);
        g_assert_cmpint(g_mkdir(inner, 0700), ==, 0);
        g_assert_cmpint(mount(inner, test_bus_cache_dir(e->bus), NULL, MS_BIND, NULL), ==, 0);
        return inner;
}

static void env_done(Env *e) {
        g_assert_cmpint(test_bus_stop_daemon(e->bus), ==, 0);
        (void) umount2(test_bus_cache_dir(e->bus), MNT_DETACH);
        (void) umount2(e->fs, MNT_DETACH);
        test_bus_free(e->bus);
        upstream_fixture_free(e->fx);
        g_free(e->fs);
        g_free(e->url);
}

/* Fills the filesystem from outside the cache until less than `left` bytes are free. */
static void use_space_outside(Env *e, const char *name, guint64 left) {
        guint64 avail = free_bytes(e);
        g_assert_cmpuint(avail, >, left);
        g_autofree uint8_t *junk = g_malloc0(avail - left);
        test_write_file(e->fs, name, junk, avail - left);
        g_assert_cmpuint(free_bytes(e), <, KEEP_FREE);
}

static void start(Env *e, const char *check) {
        g_autofree char *config = g_strdup_printf("[Cache]\nKeepFree=4M\nMaxSize=1G\nEnforceMaxSize=no\n"
                                                  "FreeSpaceCheckSec=%s\n[Upstream]\nURL=%s\n"
                                                  "[Daemon]\nExitOnIdleSec=infinity\n", check, e->url);
        test_bus_write_config(e->bus, config);
        if (!test_bus_start_daemon(e->bus, NULL))
                g_error("imgcached did not start:\n%s", test_bus_daemon_stderr(e->bus));
}

static void fetch_all(Env *e, TestJobWatch *jobs) {
        static const char *const ids[] = { "k1", "k2", "k3", "k4" };
        for (size_t i = 0; i < G_N_ELEMENTS(ids); i++) {
                g_autofree char *r = test_job_watch_fetch(jobs, ids[i], "", NULL);
                g_assert_cmpstr(r, ==, "done");
        }
}

static void keep_free_inner(void) {
        Env e = {};
        g_autofree uint8_t *data = test_random_data(MIB, 7);

        g_assert_cmpint(upstream_fixture_new(0, &e.fx), ==, 0);
        for (unsigned i = 1; i <= 4; i++) {
                g_autofree char *path = g_strdup_printf("/images/k%u", i);
                upstream_fixture_add_image(e.fx, path, data, MIB, NULL);
        }
        g_autofree char *inner = env_small_fs(&e);

        /* Prune: free space below KeepFree for a reason that is not the cache. */
        start(&e, "0");
        TestJobWatch *jobs = test_job_watch_new(e.bus);
        fetch_all(&e, jobs);
        g_assert_cmpuint(get_u64(&e, "KeepFree"), ==, KEEP_FREE);
        use_space_outside(&e, "outside-1", KEEP_FREE - 3 * MIB / 2);
        guint64 reported = get_u64(&e, "FreeSpace"), actual = free_bytes(&e);
        g_assert_cmpuint(reported, <=, actual + MIB);
        g_assert_cmpuint(reported + MIB, >=, actual);

        g_autoptr(GVariant) pruned = call(&e, "Prune", NULL);
        guint32 files;
        guint64 bytes;
        g_variant_get(pruned, "(ut)", &files, &bytes);
        g_test_message("Prune: %u images, %" G_GUINT64_FORMAT " bytes; free now %" G_GUINT64_FORMAT, files, bytes,
                       free_bytes(&e));
        g_assert_cmpuint(files, >=, 2);             /* 1.5 MiB short: two images of 1 MiB */
        g_assert_cmpuint(free_bytes(&e), >=, KEEP_FREE);
        g_autoptr(GVariant) left = call(&e, "ListImages", NULL);
        g_autoptr(GVariant) arr = g_variant_get_child_value(left, 0);
        g_assert_cmpuint(g_variant_n_children(arr), ==, 4 - files);
        test_job_watch_free(jobs);
        g_assert_cmpint(test_bus_stop_daemon(e.bus), ==, 0);

        /* The watch: nobody calls Prune, the daemon notices by itself. */
        start(&e, "100ms");
        jobs = test_job_watch_new(e.bus);
        fetch_all(&e, jobs); /* admission keeps KeepFree itself: it may evict to take these back */
        /* Subscribed now: only what the next file outside the cache causes. */
        TestSignalLog *log = test_signal_log_new(e.bus);
        use_space_outside(&e, "outside-2", KEEP_FREE - MIB / 2);
        GVariant *removed = test_signal_log_wait(log, "ImageRemoved", NULL);
        const char *id, *reason;
        g_variant_get(removed, "(&s&s)", &id, &reason);
        g_assert_cmpstr(reason, ==, "pruned");
        g_assert_cmpuint(free_bytes(&e), >=, KEEP_FREE);
        test_signal_log_free(log);
        test_job_watch_free(jobs);

        env_done(&e);
}

static void cannot_keep_inner(void) {
        Env e = {};
        g_autofree uint8_t *data = test_random_data(MIB, 7);
        g_autofree uint8_t *big = test_random_data(10 * MIB, 8);
        UpstreamImageOptions slow = { .rate = 2 * MIB, .digest = UPSTREAM_DIGEST_SHA256 };
        UpstreamImageOptions digest = { .digest = UPSTREAM_DIGEST_SHA256 };

        g_assert_cmpint(upstream_fixture_new(0, &e.fx), ==, 0);
        for (unsigned i = 1; i <= 4; i++) {
                g_autofree char *path = g_strdup_printf("/images/k%u", i);
                upstream_fixture_add_image(e.fx, path, data, MIB, NULL);
        }
        upstream_fixture_add_image(e.fx, "/images/big", big, 10 * MIB, &digest);
        upstream_fixture_add_image(e.fx, "/images/slow", big, 10 * MIB, &slow);
        g_autofree char *inner = env_small_fs(&e);

        g_autofree char *config = g_strdup_printf("[Cache]\nKeepFree=4M\nMaxSize=1G\nEnforceMaxSize=no\n"
                                                  "[Upstream]\nURL=%s\n[Daemon]\nExitOnIdleSec=infinity\n", e.url);
        test_bus_write_config(e.bus, config);
        uint16_t port = test_free_port();
        g_autofree char *listen = g_strdup_printf("--listen=127.0.0.1:%u", port);
        const char *args[] = { listen, NULL };
        if (!test_bus_start_daemon(e.bus, args))
                g_error("imgcached did not start:\n%s", test_bus_daemon_stderr(e.bus));
        TestJobWatch *jobs = test_job_watch_new(e.bus);
        fetch_all(&e, jobs);
        guint64 before = free_bytes(&e);

        /* The whole image, byte-exact and verified, to a client; the cache untouched. */
        g_autofree char *out = g_build_filename(test_bus_dir(e.bus), "big.out", NULL);
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/big", port);
        g_autoptr(GError) error = NULL;
        g_autoptr(GSubprocess) p = g_subprocess_new(G_SUBPROCESS_FLAGS_NONE, &error, "curl", "-sSf", "-o", out, url,
                                                    NULL);
        g_assert_no_error(error);
        g_assert_true(g_subprocess_wait_check(p, NULL, NULL));
        g_autofree char *got = NULL;
        gsize n = 0;
        g_assert_true(g_file_get_contents(out, &got, &n, NULL));
        g_assert_cmpuint(n, ==, 10 * MIB);
        g_assert_true(memcmp(got, big, n) == 0);
        g_autoptr(GVariant) listed = call(&e, "ListImages", NULL);
        g_autoptr(GVariant) arr = g_variant_get_child_value(listed, 0);
        g_assert_cmpuint(g_variant_n_children(arr), ==, 4);    /* nothing evicted for it */
        g_assert_cmpuint(free_bytes(&e) + 64 * 1024, >=, before); /* nothing written */
        g_assert_cmpint(test_file_exists(inner, "incomplete/big"), ==, 0);
        g_assert_cmpint(test_file_exists(inner, "big"), ==, 0);

        /* A reader that leaves after a MiB of a slow transfer: the transfer ends with it. */
        g_autofree char *slow_url = g_strdup_printf("http://127.0.0.1:%u/images/slow", port);
        g_autofree char *cmd = g_strdup_printf("curl -sS %s | head -c %u >/dev/null", slow_url, MIB);
        g_autoptr(GSubprocess) q = g_subprocess_new(G_SUBPROCESS_FLAGS_NONE, &error, "sh", "-c", cmd, NULL);
        g_assert_no_error(error);
        g_assert_true(g_subprocess_wait(q, NULL, NULL));
        g_assert_true(test_bus_wait_stderr(e.bus, "its last reader left", TEST_BUS_TIMEOUT_MS));
        g_assert_true(upstream_fixture_wait_idle(e.fx, TEST_BUS_TIMEOUT_MS));
        g_assert_cmpuint(upstream_fixture_bytes_sent(e.fx, "/images/slow"), <, 10 * MIB);
        g_assert_cmpuint(free_bytes(&e) + 64 * 1024, >=, before);

        test_job_watch_free(jobs);
        env_done(&e);
}

static void test_cannot_keep(void) {
        gboolean inside;

        if (test_in_mount_namespace("/keep-free/cannot-keep", &inside) && inside)
                cannot_keep_inner();
}

static void test_keep_free(void) {
        gboolean inside;

        if (test_in_mount_namespace("/keep-free/prune-and-watch", &inside) && inside)
                keep_free_inner();
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/keep-free/prune-and-watch", test_keep_free);
        g_test_add_func("/keep-free/cannot-keep", test_cannot_keep);
        return g_test_run();
}
