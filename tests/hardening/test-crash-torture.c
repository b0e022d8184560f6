/* SPDX-License-Identifier: MIT */

/* Crash torture: kill -9 of imgcached (private bus, tests/lib/test-bus.h) at random moments of fills,
 * of Prune and of DeleteAllImages, each followed by a restart. After every kill and every restart:
 * a file at <cache>/<id> is always the whole, byte-exact image (never a partial); every listed image
 * has its file, byte-exact, with the listed size; every image file is listed (reconcile); GetImage of
 * an image without a file fails. At the end the fills resume and every image verifies (sha256 of the
 * source). The kill moments come from a seeded PRNG: the seed is printed, and taken from
 * $IMGCACHE_TORTURE_SEED when set, so a failure can be replayed. The random delay only chooses when to
 * kill; every wait for the daemon follows a bus signal or a child exit, bounded by a deadline. */

#include <signal.h>
#include <string.h>
#include <sys/wait.h>

#include <gio/gio.h>

#include "checksum.h"
#include "test-bus.h"
#include "upstream-fixture.h"
#include "util.h"

#define N_IMAGES 3
#define IMAGE_SIZE (1536 * 1024)
#define FILL_ROUNDS 20
#define PRUNE_ROUNDS 5
#define DELETE_ROUNDS 5

typedef struct Env {
        TestBus *bus;
        UpstreamFixture *fx;
        GRand *rand;
        uint8_t *data[N_IMAGES];
        char *sum[N_IMAGES];
        char *id[N_IMAGES];
        GHashTable *removed; /* job path → result, since the last daemon start */
        guint sub;
} Env;

static void on_removed(GDBusConnection *c, const char *sender, const char *path, const char *iface,
                       const char *member, GVariant *params, gpointer userdata) {
        Env *e = userdata;
        const char *p, *result;
        guint32 id;
        g_variant_get(params, "(u&o&s)", &id, &p, &result);
        g_hash_table_replace(e->removed, g_strdup(p), g_strdup(result));
}

static char *sha256_of(const void *data, size_t n) {
        Hasher *h = NULL;
        Checksum c;
        g_assert_cmpint(hasher_new(CHECKSUM_SHA256, &h), ==, 0);
        hasher_update(h, data, n);
        hasher_finish(h, &c);
        hasher_free(h);
        return checksum_to_string(&c);
}

static GVariant *call(Env *e, const char *method, GVariant *params, GError **error) {
        return g_dbus_connection_call_sync(test_bus_connection(e->bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE,
                                           method, params, NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS,
                                           NULL, error);
}

static void start_daemon(Env *e) {
        g_hash_table_remove_all(e->removed);
        if (!test_bus_start_daemon(e->bus, NULL))
                g_error("imgcached did not start; it said:\n%s", test_bus_daemon_stderr(e->bus));
}

static void kill_daemon(Env *e) {
        GPid pid = test_bus_name_owner_pid(e->bus);
        g_assert_cmpint(pid, >, 0);
        g_assert_cmpint(kill(pid, SIGKILL), ==, 0);
        int status = test_bus_stop_daemon(e->bus);
        g_assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

static gboolean on_deadline(gpointer userdata) {
        *(gboolean *) userdata = TRUE;
        return G_SOURCE_REMOVE;
}

/* Runs the main loop for ms milliseconds: only to choose a random kill moment, never to wait for a state. */
static void run_for(guint ms) {
        gboolean expired = FALSE;
        g_timeout_add(ms, on_deadline, &expired);
        while (!expired)
                g_main_context_iteration(NULL, TRUE);
}

static int index_of(Env *e, const char *id) {
        for (int i = 0; i < N_IMAGES; i++)
                if (streq(e->id[i], id))
                        return i;
        return -1;
}

/* With the daemon stopped: a file at <id> is the complete, byte-exact image. Returns a bitmask of the
 * images present. */
static unsigned check_files(Env *e, const char *when) {
        unsigned present = 0;
        for (int i = 0; i < N_IMAGES; i++) {
                g_autofree char *p = g_build_filename(test_bus_cache_dir(e->bus), e->id[i], NULL);
                g_autofree char *contents = NULL;
                gsize n = 0;
                g_autoptr(GError) error = NULL;
                if (!g_file_get_contents(p, &contents, &n, &error)) {
                        g_assert_error(error, G_FILE_ERROR, G_FILE_ERROR_NOENT);
                        continue;
                }
                if (n != IMAGE_SIZE || memcmp(contents, e->data[i], n) != 0)
                        g_error("%s: %s is not the byte-exact image (%zu bytes)", when, p, (size_t) n);
                present |= 1u << i;
        }
        return present;
}

/* With the daemon running (after reconcile): listed == present on disk, listed sizes and checksums right,
 * GetImage fails for what is not there. */
static unsigned check_listing(Env *e, const char *when) {
        unsigned on_disk = check_files(e, when), listed = 0;
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) list = call(e, "ListImages", NULL, &error);
        g_assert_no_error(error);
        g_autoptr(GVariant) arr = g_variant_get_child_value(list, 0);
        for (gsize k = 0; k < g_variant_n_children(arr); k++) {
                const char *rid, *checksum;
                guint64 size;
                g_variant_get_child(arr, k, "(&stttt&s)", &rid, &size, NULL, NULL, NULL, &checksum);
                int i = index_of(e, rid);
                if (i < 0)
                        g_error("%s: unknown image %s listed", when, rid);
                g_assert_cmpuint(size, ==, IMAGE_SIZE);
                if (!isempty(checksum) && !streq(checksum, e->sum[i]))
                        g_error("%s: %s listed with checksum %s, want %s", when, rid, checksum, e->sum[i]);
                listed |= 1u << i;
        }
        if (listed != on_disk)
                g_error("%s: listed images (mask %x) differ from the files (mask %x)", when, listed, on_disk);
        for (int i = 0; i < N_IMAGES; i++) {
                if (on_disk & (1u << i))
                        continue;
                g_autoptr(GError) err2 = NULL;
                g_autoptr(GVariant) v = call(e, "GetImage", g_variant_new("(s)", e->id[i]), &err2);
                g_assert_null(v);
                g_assert_nonnull(err2);
        }
        return listed;
}

/* FetchImage for each image not cached; returns how many jobs were started. */
static guint fetch_missing(Env *e, unsigned cached, GPtrArray *paths) {
        for (int i = 0; i < N_IMAGES; i++) {
                if (cached & (1u << i))
                        continue;
                g_autoptr(GError) error = NULL;
                g_autoptr(GVariant) v = call(e, "FetchImage", g_variant_new("(ss)", e->id[i], e->sum[i]), &error);
                g_assert_no_error(error);
                char *p = NULL;
                g_variant_get(v, "(o)", &p);
                if (paths)
                        g_ptr_array_add(paths, p);
                else
                        g_free(p);
        }
        return paths ? paths->len : 0;
}

static void wait_jobs(Env *e, GPtrArray *paths) {
        gboolean expired = FALSE;
        guint t = g_timeout_add(TEST_BUS_TIMEOUT_MS * 3, on_deadline, &expired);
        for (;;) {
                guint n = 0;
                for (guint k = 0; k < paths->len; k++)
                        n += g_hash_table_contains(e->removed, paths->pdata[k]);
                if (n == paths->len || expired)
                        break;
                g_main_context_iteration(NULL, TRUE);
        }
        if (!expired)
                g_source_remove(t);
        for (guint k = 0; k < paths->len; k++) {
                const char *r = g_hash_table_lookup(e->removed, paths->pdata[k]);
                if (!r)
                        g_error("timed out waiting for %s; daemon said:\n%s", (char *) paths->pdata[k],
                                test_bus_daemon_stderr(e->bus));
                if (!streq(r, "done"))
                        g_error("%s ended %s; daemon said:\n%s", (char *) paths->pdata[k], r, test_bus_daemon_stderr(e->bus));
        }
}

/* Fills everything missing, to the end; every image verifies. */
static void fill_all(Env *e) {
        unsigned cached = check_listing(e, "before fill_all");
        g_autoptr(GPtrArray) paths = g_ptr_array_new_with_free_func(g_free);
        fetch_missing(e, cached, paths);
        wait_jobs(e, paths);
        g_assert_cmpuint(check_listing(e, "after fill_all"), ==, (1u << N_IMAGES) - 1);
        for (int i = 0; i < N_IMAGES; i++) {
                g_autoptr(GError) error = NULL;
                g_autoptr(GVariant) ok = call(e, "Verify", g_variant_new("(s)", e->id[i]), &error);
                g_assert_no_error(error);
                gboolean good = FALSE;
                g_variant_get(ok, "(b)", &good);
                g_assert_true(good);
        }
}

static void env_setup(Env *e, const char *extra) {
        *e = (Env) { .removed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free) };
        const char *s = g_getenv("IMGCACHE_TORTURE_SEED");
        guint32 seed = s ? (guint32) g_ascii_strtoull(s, NULL, 0) : g_random_int();
        g_test_message("seed: IMGCACHE_TORTURE_SEED=%" G_GUINT32_FORMAT, seed);
        e->rand = g_rand_new_with_seed(seed);
        g_assert_cmpint(upstream_fixture_new(0, &e->fx), ==, 0);
        for (int i = 0; i < N_IMAGES; i++) {
                e->id[i] = g_strdup_printf("t%d", i);
                e->data[i] = g_malloc(IMAGE_SIZE);
                for (size_t k = 0; k < IMAGE_SIZE; k++)
                        e->data[i][k] = (uint8_t) (k * 37 + i * 101 + (k >> 10));
                e->sum[i] = sha256_of(e->data[i], IMAGE_SIZE);
                g_autofree char *path = g_strdup_printf("/images/%s", e->id[i]);
                g_autofree char *etag = g_strdup_printf("\"%s\"", e->id[i]);
                /* 0.3–0.75 s per fill, each image at its own pace, so that kills land in every phase of
                 * each fill and rounds end with different subsets cached. */
                UpstreamImageOptions o = { .etag = etag, .rate = (uint64_t) (2 + 2 * i) * 1024 * 1024 };
                g_assert_cmpint(upstream_fixture_add_image(e->fx, path, e->data[i], IMAGE_SIZE, &o), ==, 0);
        }
        e->bus = test_bus_new();
        g_autofree char *url = upstream_fixture_url(e->fx, "/images/{id}");
        g_autofree char *config = g_strdup_printf("[Cache]\nKeepFree=0\n%s\n[Upstream]\nURL=%s\nLowSpeedTimeoutSec=30\n"
                                                  "[Daemon]\nExitOnIdleSec=infinity\n", extra, url);
        test_bus_write_config(e->bus, config);
        e->sub = g_dbus_connection_signal_subscribe(test_bus_connection(e->bus), NULL, TEST_BUS_IFACE, "JobRemoved",
                                                    TEST_BUS_PATH, NULL, G_DBUS_SIGNAL_FLAGS_NONE, on_removed, e, NULL);
        start_daemon(e);
}

static void env_teardown(Env *e) {
        g_dbus_connection_signal_unsubscribe(test_bus_connection(e->bus), e->sub);
        test_bus_free(e->bus);
        upstream_fixture_free(e->fx);
        for (int i = 0; i < N_IMAGES; i++) {
                g_free(e->id[i]);
                g_free(e->data[i]);
                g_free(e->sum[i]);
        }
        g_hash_table_destroy(e->removed);
        g_rand_free(e->rand);
}

static void test_kill_fills(void) {
        Env e;
        env_setup(&e, "MaxSize=1G");
        for (int round = 0; round < FILL_ROUNDS; round++) {
                g_autofree char *when = g_strdup_printf("fill round %d", round);
                unsigned cached = check_listing(&e, when);
                if (cached == (1u << N_IMAGES) - 1) {
                        /* All made it: start over so that every round kills fills. */
                        g_autoptr(GError) error = NULL;
                        g_autoptr(GVariant) v = call(&e, "DeleteAllImages", NULL, &error);
                        g_assert_no_error(error);
                        cached = check_listing(&e, when);
                        g_assert_cmpuint(cached, ==, 0);
                }
                fetch_missing(&e, cached, NULL);
                guint ms = g_rand_int_range(e.rand, 0, 700);
                run_for(ms);
                kill_daemon(&e);
                unsigned after = check_files(&e, when);
                g_test_message("round %d: killed after %u ms, cached before %x, after %x", round, ms, cached, after);
                start_daemon(&e);
        }
        fill_all(&e);
        env_teardown(&e);
}

/* op: "Prune" or "DeleteAllImages"; EnforceMaxSize=no and a MaxSize of one image, so Prune evicts. */
static void torture_op(const char *op, int rounds) {
        Env e;
        g_autofree char *extra = g_strdup_printf("MaxSize=%d\nEnforceMaxSize=no", IMAGE_SIZE + 1024);
        env_setup(&e, extra);
        UpstreamImageOptions fast = { 0 };
        for (int i = 0; i < N_IMAGES; i++) {
                g_autofree char *path = g_strdup_printf("/images/%s", e.id[i]);
                g_autofree char *etag = g_strdup_printf("\"%s\"", e.id[i]);
                fast.etag = etag;
                upstream_fixture_set_options(e.fx, path, &fast);
        }
        for (int round = 0; round < rounds; round++) {
                g_autofree char *when = g_strdup_printf("%s round %d", op, round);
                fill_all(&e);
                g_dbus_connection_call(test_bus_connection(e.bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE, op,
                                       NULL, NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, NULL, NULL);
                guint ms = g_rand_int_range(e.rand, 0, 15);
                run_for(ms);
                kill_daemon(&e);
                unsigned after = check_files(&e, when);
                g_test_message("%s: killed after %u ms, images left %x", when, ms, after);
                start_daemon(&e);
                check_listing(&e, when);
        }
        fill_all(&e);
        env_teardown(&e);
}

static void test_kill_prune(void) {
        torture_op("Prune", PRUNE_ROUNDS);
}

static void test_kill_delete_all(void) {
        torture_op("DeleteAllImages", DELETE_ROUNDS);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/crash-torture/kill-fills", test_kill_fills);
        g_test_add_func("/crash-torture/kill-prune", test_kill_prune);
        g_test_add_func("/crash-torture/kill-delete-all", test_kill_delete_all);
        return g_test_run();
}
