/* SPDX-License-Identifier: MIT */

/* imgcached's jobs over D-Bus against the upstream fixture: FetchImage → JobNew … JobRemoved("done"),
 * one job per image, Cancel, Prefetch in queue order, PrefetchOnQueue, and a resume after kill -9 of the
 * daemon mid-transfer. The daemon runs on a private session bus (tests/lib/test-bus.h). Every wait
 * iterates the main loop until a signal or state says so, bounded by a deadline; no sleeps. */

#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <gio/gio.h>

#include "checksum.h"
#include "test-bus.h"
#include "upstream-fixture.h"
#include "util.h"

#define JOB_IFACE "org.imgcache.Job"

typedef struct Env {
        TestBus *bus;
        UpstreamFixture *fx;
        GPtrArray *job_new;       /* paths, in order */
        GPtrArray *job_removed;   /* "path result", in order */
        GHashTable *bytes_done;   /* path → last BytesDone seen (guint64*) */
        GHashTable *errors;       /* path → last non-empty Error seen */
        guint subs[3];
} Env;

static void on_signal(GDBusConnection *c, const char *sender, const char *path, const char *iface,
                      const char *member, GVariant *params, gpointer userdata) {
        Env *e = userdata;
        if (streq(member, "JobNew")) {
                const char *p;
                guint32 id;
                g_variant_get(params, "(u&o)", &id, &p);
                g_ptr_array_add(e->job_new, g_strdup(p));
        } else if (streq(member, "JobRemoved")) {
                const char *p, *result;
                guint32 id;
                g_variant_get(params, "(u&o&s)", &id, &p, &result);
                g_ptr_array_add(e->job_removed, g_strdup_printf("%s %s", p, result));
        } else if (streq(member, "PropertiesChanged")) {
                const char *iface_name;
                g_autoptr(GVariant) changed = NULL;
                g_autoptr(GVariant) invalidated = NULL;
                g_variant_get(params, "(&s@a{sv}@as)", &iface_name, &changed, &invalidated);
                guint64 v;
                const char *err;
                if (streq(iface_name, JOB_IFACE) && g_variant_lookup(changed, "Error", "&s", &err) && *err)
                        g_hash_table_replace(e->errors, g_strdup(path), g_strdup(err));
                if (streq(iface_name, JOB_IFACE) && g_variant_lookup(changed, "BytesDone", "t", &v)) {
                        guint64 *p = g_new(guint64, 1);
                        *p = v;
                        g_hash_table_replace(e->bytes_done, g_strdup(path), p);
                }
        }
}

/* extra_config goes into [Cache] (and may open later sections); before_start runs before the daemon
 * starts (NULL: nothing), for a queue left by an earlier one. */
static void env_setup_full(Env *e, const char *extra_config, const char *exit_on_idle,
                           void (*before_start)(Env *e)) {
        *e = (Env) {
                .job_new = g_ptr_array_new_with_free_func(g_free),
                .job_removed = g_ptr_array_new_with_free_func(g_free),
                .bytes_done = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free),
                .errors = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free),
        };
        g_assert_cmpint(upstream_fixture_new(0, &e->fx), ==, 0);
        e->bus = test_bus_new();
        g_autofree char *url = upstream_fixture_url(e->fx, "/images/{id}");
        g_autofree char *config = g_strdup_printf("[Cache]\nKeepFree=0\nMaxSize=1G\n%s\n[Upstream]\nURL=%s\n"
                                                  "LowSpeedTimeoutSec=30\n[Daemon]\nExitOnIdleSec=%s\n",
                                                  strempty(extra_config), url, exit_on_idle);
        test_bus_write_config(e->bus, config);
        if (before_start)
                before_start(e);

        GDBusConnection *c = test_bus_connection(e->bus);
        e->subs[0] = g_dbus_connection_signal_subscribe(c, NULL, TEST_BUS_IFACE, "JobNew", TEST_BUS_PATH, NULL,
                                                        G_DBUS_SIGNAL_FLAGS_NONE, on_signal, e, NULL);
        e->subs[1] = g_dbus_connection_signal_subscribe(c, NULL, TEST_BUS_IFACE, "JobRemoved", TEST_BUS_PATH, NULL,
                                                        G_DBUS_SIGNAL_FLAGS_NONE, on_signal, e, NULL);
        e->subs[2] = g_dbus_connection_signal_subscribe(c, NULL, "org.freedesktop.DBus.Properties",
                                                        "PropertiesChanged", NULL, JOB_IFACE,
                                                        G_DBUS_SIGNAL_FLAGS_NONE, on_signal, e, NULL);
        g_assert_true(test_bus_start_daemon(e->bus, NULL));
}

static void env_setup(Env *e, const char *extra_config) {
        env_setup_full(e, extra_config, "infinity", NULL);
}

static void env_teardown(Env *e) {
        GDBusConnection *c = test_bus_connection(e->bus);
        for (size_t i = 0; i < G_N_ELEMENTS(e->subs); i++)
                g_dbus_connection_signal_unsubscribe(c, e->subs[i]);
        test_bus_free(e->bus);
        upstream_fixture_free(e->fx);
        g_ptr_array_free(e->job_new, TRUE);
        g_ptr_array_free(e->job_removed, TRUE);
        g_hash_table_destroy(e->bytes_done);
        g_hash_table_destroy(e->errors);
}

static gboolean on_deadline(gpointer userdata) {
        *(gboolean *) userdata = TRUE;
        return G_SOURCE_REMOVE;
}

/* Iterates the main loop until done(e, arg) or the deadline. */
static void wait_for(Env *e, gboolean (*done)(Env *, const void *), const void *arg, const char *what) {
        gboolean expired = FALSE;
        guint t = g_timeout_add(TEST_BUS_TIMEOUT_MS * 3, on_deadline, &expired);
        while (!done(e, arg) && !expired)
                g_main_context_iteration(NULL, TRUE);
        if (!expired)
                g_source_remove(t);
        if (!done(e, arg))
                g_error("timed out waiting for %s; daemon said:\n%s", what, test_bus_daemon_stderr(e->bus));
}

static gboolean removed_count(Env *e, const void *n) {
        return e->job_removed->len >= GPOINTER_TO_UINT(n);
}

static gboolean bytes_done_at(Env *e, const void *arg) {
        const guint64 *p = g_hash_table_lookup(e->bytes_done, ((const char *const *) arg)[0]);
        return p && *p == g_ascii_strtoull(((const char *const *) arg)[1], NULL, 10);
}

static gboolean on_tick(gpointer userdata) {
        return G_SOURCE_CONTINUE;
}

static gboolean file_has_size(Env *e, const void *arg) {
        struct stat st;
        const char *const *a = arg;
        return stat(a[0], &st) == 0 && (guint64) st.st_size == g_ascii_strtoull(a[1], NULL, 10);
}

static GVariant *call(Env *e, const char *path, const char *iface, const char *method, GVariant *params,
                      GError **error) {
        return g_dbus_connection_call_sync(test_bus_connection(e->bus), TEST_BUS_NAME, path, iface, method, params,
                                           NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, error);
}

static char *fetch_image(Env *e, const char *id) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(e, TEST_BUS_PATH, TEST_BUS_IFACE, "FetchImage", g_variant_new("(ss)", id, ""), &error);
        g_assert_no_error(error);
        char *path = NULL;
        g_variant_get(v, "(o)", &path);
        g_assert_true(g_str_has_prefix(path, "/org/imgcache/job/"));
        return path;
}

static gsize n_children0(GVariant *v) {
        g_autoptr(GVariant) c = g_variant_get_child_value(v, 0);
        return g_variant_n_children(c);
}

static uint8_t *make_data(size_t n, unsigned seed) {
        uint8_t *d = g_malloc(n);
        for (size_t i = 0; i < n; i++)
                d[i] = (uint8_t) (i * 31 + seed * 7 + (i >> 9));
        return d;
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

/* GetImage → (size, checksum) must match. */
static void assert_cached(Env *e, const char *id, const void *data, size_t n) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(e, TEST_BUS_PATH, TEST_BUS_IFACE, "GetImage", g_variant_new("(s)", id), &error);
        g_assert_no_error(error);
        const char *rid, *checksum;
        guint64 size, hits, la, lm;
        g_variant_get(v, "((&stttt&s))", &rid, &size, &hits, &la, &lm, &checksum);
        g_assert_cmpuint(size, ==, n);
        g_autofree char *want = sha256_of(data, n);
        g_assert_cmpstr(checksum, ==, want);
        g_autoptr(GVariant) ok = call(e, TEST_BUS_PATH, TEST_BUS_IFACE, "Verify", g_variant_new("(s)", id), &error);
        g_assert_no_error(error);
        gboolean good = FALSE;
        g_variant_get(ok, "(b)", &good);
        g_assert_true(good);
}

static void test_fetch_done(void) {
        Env e;
        env_setup(&e, NULL);
        size_t n = 3 * 1024 * 1024;
        g_autofree uint8_t *data = make_data(n, 1);
        /* Paced, so the second call certainly finds the first job running. */
        UpstreamImageOptions o = { .rate = 6 * 1024 * 1024 };
        upstream_fixture_add_image(e.fx, "/images/img", data, n, &o);

        g_autofree char *path = fetch_image(&e, "img");
        g_autofree char *again = fetch_image(&e, "img");
        g_assert_cmpstr(path, ==, again); /* one job per image */

        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) jobs = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "ListJobs", NULL, &error);
        g_assert_no_error(error);
        g_assert_cmpuint(n_children0(jobs), ==, 1);

        wait_for(&e, removed_count, GUINT_TO_POINTER(1), "JobRemoved");
        g_autofree char *want = g_strdup_printf("%s done", path);
        g_assert_cmpstr(e.job_removed->pdata[0], ==, want);
        g_assert_cmpuint(e.job_new->len, ==, 1);
        g_assert_cmpstr(e.job_new->pdata[0], ==, path);
        assert_cached(&e, "img", data, n);
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/images/img"), ==, 1);

        /* The job object is gone. */
        g_autoptr(GVariant) gone = call(&e, path, "org.freedesktop.DBus.Properties", "Get",
                                        g_variant_new("(ss)", JOB_IFACE, "State"), &error);
        g_assert_null(gone);
        g_assert_nonnull(error);
        env_teardown(&e);
}

static void test_fetch_failed(void) {
        Env e;
        env_setup(&e, "PrefetchOnQueue=no");
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) q = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "QueueImage", g_variant_new("(ss)", "nope", ""), &error);
        g_assert_no_error(error);
        g_autofree char *path = fetch_image(&e, "nope"); /* the fixture has no such image: 404 */
        wait_for(&e, removed_count, GUINT_TO_POINTER(1), "JobRemoved");
        g_autofree char *want = g_strdup_printf("%s failed", path);
        g_assert_cmpstr(e.job_removed->pdata[0], ==, want);
        /* The queue marker stays for the next prefetch. */
        g_autoptr(GVariant) queued = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "ListQueued", NULL, &error);
        g_assert_no_error(error);
        g_assert_cmpuint(n_children0(queued), ==, 1);
        env_teardown(&e);
}

static void test_cancel(void) {
        Env e;
        env_setup(&e, NULL);
        size_t n = 1024 * 1024;
        g_autofree uint8_t *data = make_data(n, 2);
        UpstreamImageOptions o = { .stall_after = 100000, .etag = "\"c\"" };
        upstream_fixture_add_image(e.fx, "/images/c", data, n, &o);

        g_autofree char *path = fetch_image(&e, "c");
        const char *arg[] = { path, "100000" };
        wait_for(&e, bytes_done_at, arg, "BytesDone=100000");

        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(&e, path, JOB_IFACE, "Cancel", NULL, &error);
        g_assert_no_error(error);
        wait_for(&e, removed_count, GUINT_TO_POINTER(1), "JobRemoved");
        g_autofree char *want = g_strdup_printf("%s cancelled", path);
        g_assert_cmpstr(e.job_removed->pdata[0], ==, want);
        upstream_fixture_release(e.fx);
        env_teardown(&e);
}

static void test_prefetch_order(void) {
        Env e;
        env_setup(&e, "PrefetchOnQueue=no\n[Upstream]\nMaxParallelFetches=1");
        size_t n = 200000;
        g_autofree uint8_t *data = make_data(n, 3);
        const char *ids[] = { "q3", "q1", "q2" }; /* queue order differs from name order */
        for (size_t i = 0; i < G_N_ELEMENTS(ids); i++) {
                g_autofree char *p = g_strdup_printf("/images/%s", ids[i]);
                upstream_fixture_add_image(e.fx, p, data, n, NULL);
                g_autoptr(GError) error = NULL;
                g_autoptr(GVariant) v = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "QueueImage",
                                             g_variant_new("(ss)", ids[i], ""), &error);
                g_assert_no_error(error);
        }
        g_assert_cmpuint(e.job_new->len, ==, 0); /* PrefetchOnQueue=no */

        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "Prefetch", NULL, &error);
        g_assert_no_error(error);
        g_autoptr(GVariant) paths = g_variant_get_child_value(v, 0);
        g_assert_cmpuint(g_variant_n_children(paths), ==, 3);
        wait_for(&e, removed_count, GUINT_TO_POINTER(3), "three JobRemoved");
        for (size_t i = 0; i < 3; i++) {
                const char *p = NULL;
                g_variant_get_child(paths, i, "&o", &p);
                g_assert_cmpstr(e.job_new->pdata[i], ==, p);
                g_assert_true(g_str_has_suffix(e.job_removed->pdata[i], " done"));
                assert_cached(&e, ids[i], data, n);
        }
        /* One transfer at a time, oldest queued first. (They may end in another order: the next transfer
         * starts while the previous image is being fsynced.) */
        g_assert_cmpuint(upstream_fixture_max_active(e.fx), ==, 1);
        char **log = upstream_fixture_request_log(e.fx);
        g_assert_cmpuint(g_strv_length(log), ==, 3);
        for (size_t i = 0; i < 3; i++) {
                g_autofree char *want = g_strdup_printf("/images/%s", ids[i]);
                g_assert_cmpstr(log[i], ==, want);
        }
        upstream_fixture_strv_free(log);
        g_autoptr(GVariant) queued = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "ListQueued", NULL, &error);
        g_assert_no_error(error);
        g_assert_cmpuint(n_children0(queued), ==, 0);
        env_teardown(&e);
}

static void test_prefetch_on_queue(void) {
        Env e;
        env_setup(&e, "PrefetchOnQueue=yes");
        size_t n = 100000;
        g_autofree uint8_t *data = make_data(n, 4);
        upstream_fixture_add_image(e.fx, "/images/auto", data, n, NULL);
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "QueueImage", g_variant_new("(ss)", "auto", ""), &error);
        g_assert_no_error(error);
        wait_for(&e, removed_count, GUINT_TO_POINTER(1), "JobRemoved");
        g_assert_true(g_str_has_suffix(e.job_removed->pdata[0], " done"));
        assert_cached(&e, "auto", data, n);
        env_teardown(&e);
}

static void test_resume_after_kill(void) {
        Env e;
        env_setup(&e, NULL);
        size_t n = 4 * 1024 * 1024;
        g_autofree uint8_t *data = make_data(n, 5);
        UpstreamImageOptions o = { .stall_after = 1500000, .etag = "\"k9\"" };
        upstream_fixture_add_image(e.fx, "/images/k9", data, n, &o);

        g_autofree char *path = fetch_image(&e, "k9");
        const char *arg[] = { path, "1500000" };
        wait_for(&e, bytes_done_at, arg, "BytesDone=1500000");
        /* Bytes reach the disk in whole chunks, on the daemon's writer thread: a crash loses the ones
         * after the last chunk written. */
        g_autofree char *partial = g_build_filename(test_bus_cache_dir(e.bus), "incomplete", "k9", NULL);
        guint tick = g_timeout_add(10, on_tick, NULL); /* a file growing wakes no main loop */
        wait_for(&e, file_has_size, (const char *const[]) { partial, "1048576" }, "a partial file of one chunk");
        g_source_remove(tick);

        GPid pid = test_bus_name_owner_pid(e.bus);
        g_assert_cmpint(pid, >, 0);
        g_assert_cmpint(kill(pid, SIGKILL), ==, 0);
        int status = test_bus_stop_daemon(e.bus);
        g_assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        upstream_fixture_release(e.fx);

        o.stall_after = 0;
        upstream_fixture_set_options(e.fx, "/images/k9", &o);
        g_assert_true(test_bus_start_daemon(e.bus, NULL));
        g_autofree char *path2 = fetch_image(&e, "k9");
        wait_for(&e, removed_count, GUINT_TO_POINTER(1), "JobRemoved");
        g_autofree char *want = g_strdup_printf("%s done", path2);
        g_assert_cmpstr(e.job_removed->pdata[0], ==, want);
        assert_cached(&e, "k9", data, n);

        char **ranges = upstream_fixture_ranges(e.fx, "/images/k9");
        g_assert_cmpuint(g_strv_length(ranges), ==, 2);
        g_assert_cmpstr(ranges[0], ==, "");
        g_assert_cmpstr(ranges[1], ==, "bytes=1048576-");
        upstream_fixture_strv_free(ranges);
        env_teardown(&e);
}

static guint32 job_id_of(const char *path) {
        return (guint32) g_ascii_strtoull(path + strlen("/org/imgcache/job/"), NULL, 10);
}

/* A restarted daemon goes on with ids above the earlier run's: a client holding an old job path never
 * finds a job of the new run there. */
static void test_job_ids_across_restart(void) {
        Env e;
        env_setup(&e, NULL);
        g_autofree uint8_t *data = make_data(4096, 12);
        const char *ids[] = { "r1", "r2", "r3" };
        for (size_t i = 0; i < ELEMENTSOF(ids); i++) {
                g_autofree char *p = g_strdup_printf("/images/%s", ids[i]);
                upstream_fixture_add_image(e.fx, p, data, 4096, NULL);
        }

        g_autofree char *first = fetch_image(&e, "r1");
        g_autofree char *second = fetch_image(&e, "r2");
        wait_for(&e, removed_count, GUINT_TO_POINTER(2), "two JobRemoved");
        g_assert_cmpstr(first, !=, second);
        g_assert_cmpint(test_bus_stop_daemon(e.bus), ==, 0);

        g_assert_true(test_bus_start_daemon(e.bus, NULL));
        g_autofree char *third = fetch_image(&e, "r3");
        wait_for(&e, removed_count, GUINT_TO_POINTER(3), "JobRemoved after the restart");
        g_assert_cmpstr(third, !=, first);
        g_assert_cmpstr(third, !=, second);
        g_assert_cmpuint(job_id_of(third), >, job_id_of(second));
        g_assert_cmpuint(job_id_of(second), >, job_id_of(first));
        env_teardown(&e);
}

/* ---- the queue across restarts, retries ------------------------------------------------------- */

typedef struct QueuedDetails {
        char *checksum, *last_error;
        guint64 queued_at, next_attempt;
} QueuedDetails;

static void queued_details_done(QueuedDetails *d) {
        g_free(d->checksum);
        g_free(d->last_error);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(QueuedDetails, queued_details_done)

/* The ListQueuedDetails row of id; FALSE when it is not queued. */
static gboolean queued_details(Env *e, const char *id, QueuedDetails *ret) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(e, TEST_BUS_PATH, TEST_BUS_IFACE, "ListQueuedDetails", NULL, &error);
        g_assert_no_error(error);
        g_autoptr(GVariant) a = g_variant_get_child_value(v, 0);
        for (gsize i = 0; i < g_variant_n_children(a); i++) {
                const char *rid, *sum, *err;
                guint64 at, next;
                g_variant_get_child(a, i, "(&st&s&st)", &rid, &at, &sum, &err, &next);
                if (streq(rid, id)) {
                        *ret = (QueuedDetails) { g_strdup(sum), g_strdup(err), at, next };
                        return TRUE;
                }
        }
        return FALSE;
}

static void queue_image(Env *e, const char *id, const char *checksum) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(e, TEST_BUS_PATH, TEST_BUS_IFACE, "QueueImage", g_variant_new("(ss)", id, checksum),
                                     &error);
        g_assert_no_error(error);
        gboolean queued = FALSE;
        g_variant_get(v, "(b)", &queued);
        g_assert_true(queued);
}

static gboolean is_cached(Env *e, const char *id) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(e, TEST_BUS_PATH, TEST_BUS_IFACE, "GetImage", g_variant_new("(s)", id), &error);
        return v != NULL;
}

#define WRONG_SHA256 "sha256:0000000000000000000000000000000000000000000000000000000000000000"

/* The checksum given with QueueImage is in the queue marker: it holds for a prefetch by the next daemon,
 * after this one exited on idle (issue 15, item 1). */
static void test_queued_checksum_survives_idle_exit(void) {
        Env e;
        env_setup_full(&e, "PrefetchOnQueue=no", "1", NULL);
        size_t n = 300000;
        g_autofree uint8_t *data = make_data(n, 6);
        upstream_fixture_add_image(e.fx, "/images/wrong", data, n, NULL);
        test_bus_install_activation(e.bus);

        queue_image(&e, "wrong", WRONG_SHA256);

        /* Idle for a second: it exits. The Prefetch call brings the next one. */
        g_assert_true(test_bus_wait_name(e.bus, FALSE, TEST_BUS_TIMEOUT_MS));
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "Prefetch", NULL, &error);
        g_assert_no_error(error);
        g_autoptr(GVariant) paths = g_variant_get_child_value(v, 0);
        g_assert_cmpuint(g_variant_n_children(paths), ==, 1);
        const char *path = NULL;
        g_variant_get_child(paths, 0, "&o", &path);

        wait_for(&e, removed_count, GUINT_TO_POINTER(1), "JobRemoved");
        g_autofree char *want = g_strdup_printf("%s failed", path);
        g_assert_cmpstr(e.job_removed->pdata[0], ==, want);
        const char *job_error = g_hash_table_lookup(e.errors, path);
        g_assert_nonnull(job_error);
        g_assert_nonnull(strstr(job_error, "failed verification"));
        g_assert_nonnull(strstr(job_error, WRONG_SHA256));
        g_assert_false(is_cached(&e, "wrong"));

        /* The checksum is the marker's content, a line Glance's tools need not read. */
        g_autofree char *marker = g_build_filename(test_bus_cache_dir(e.bus), "queue", "wrong", NULL);
        g_autofree char *content = NULL;
        g_assert_true(g_file_get_contents(marker, &content, NULL, NULL));
        g_assert_cmpstr(content, ==, WRONG_SHA256 "\n");

        /* A mismatch is permanent: reported in the listing, not retried. */
        g_auto(QueuedDetails) d = {};
        g_assert_true(queued_details(&e, "wrong", &d));
        g_assert_cmpstr(d.checksum, ==, WRONG_SHA256);
        g_assert_nonnull(strstr(d.last_error, "failed verification"));
        g_assert_cmpuint(d.next_attempt, ==, 0);
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/images/wrong"), ==, 1);
        env_teardown(&e);
}

/* Two transfers cut short, then a good one: retried with backoff, each time resuming where the partial
 * file ends (issue 15, item 2). */
static void test_retry_resumes(void) {
        Env e;
        env_setup(&e, "PrefetchOnQueue=yes\n[Upstream]\nRetryInitialSec=100ms\nRetryMaxSec=200ms");
        size_t n = 300000;
        g_autofree uint8_t *data = make_data(n, 7);
        UpstreamImageOptions o = { .close_after = 100000, .fail_first = 2, .etag = "\"r1\"" };
        upstream_fixture_add_image(e.fx, "/images/flaky", data, n, &o);
        g_autofree char *sum = sha256_of(data, n);

        queue_image(&e, "flaky", sum);
        wait_for(&e, removed_count, GUINT_TO_POINTER(3), "three JobRemoved");
        g_assert_true(g_str_has_suffix(e.job_removed->pdata[0], " failed"));
        g_assert_true(g_str_has_suffix(e.job_removed->pdata[1], " failed"));
        g_assert_true(g_str_has_suffix(e.job_removed->pdata[2], " done"));
        assert_cached(&e, "flaky", data, n);
        g_assert_false(queued_details(&e, "flaky", &(QueuedDetails) {}));

        char **ranges = upstream_fixture_ranges(e.fx, "/images/flaky");
        g_assert_cmpuint(g_strv_length(ranges), ==, 3);
        g_assert_cmpstr(ranges[0], ==, "");
        g_assert_cmpstr(ranges[1], ==, "bytes=100000-");
        g_assert_cmpstr(ranges[2], ==, "bytes=200000-");
        upstream_fixture_strv_free(ranges);
        env_teardown(&e);
}

/* The backoff as the listing shows it: the last error and when the next attempt is due, within the
 * bounds of the first delay (RetryInitialSec=1h jittered into [30min, 1h]). A Prefetch does not wait for
 * it; a dequeue forgets it. */
static void test_retry_listing(void) {
        Env e;
        env_setup(&e, "PrefetchOnQueue=yes\n[Upstream]\nRetryInitialSec=1h\nRetryMaxSec=4h");
        size_t n = 1000;
        g_autofree uint8_t *data = make_data(n, 8);
        UpstreamImageOptions o = { .status = 503, .fail_first = 2 };
        upstream_fixture_add_image(e.fx, "/images/later", data, n, &o);

        guint64 before = (guint64) g_get_real_time();
        queue_image(&e, "later", "");
        wait_for(&e, removed_count, GUINT_TO_POINTER(1), "JobRemoved");
        guint64 after = (guint64) g_get_real_time();
        g_assert_true(g_str_has_suffix(e.job_removed->pdata[0], " failed"));

        g_auto(QueuedDetails) d = {};
        g_assert_true(queued_details(&e, "later", &d));
        g_assert_cmpstr(d.checksum, ==, "");
        g_assert_nonnull(strstr(d.last_error, "503"));
        g_assert_cmpuint(d.next_attempt, >=, before + (guint64) 1800 * G_USEC_PER_SEC);
        g_assert_cmpuint(d.next_attempt, <=, after + (guint64) 3600 * G_USEC_PER_SEC);

        /* imgcachectl shows the same. */
        g_autofree char *out = NULL;
        const char *argv[] = { g_getenv("IMGCACHECTL"), "--user", "--no-legend", "list-queued", NULL };
        g_assert_nonnull(argv[0]);
        g_assert_cmpint(test_bus_run(e.bus, argv, &out, NULL), ==, 0);
        g_assert_true(g_regex_match_simple("^later .* in [0-9]+(min|h) +.*503", out, 0, 0));

        /* Prefetch fetches now: the second 503 resets the backoff's clock, not the count. */
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "Prefetch", NULL, &error);
        g_assert_no_error(error);
        wait_for(&e, removed_count, GUINT_TO_POINTER(2), "the second JobRemoved");
        g_auto(QueuedDetails) d2 = {};
        g_assert_true(queued_details(&e, "later", &d2));
        g_assert_cmpuint(d2.next_attempt, >=, after + (guint64) 3600 * G_USEC_PER_SEC); /* the second delay: [1h, 2h] */
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/images/later"), ==, 2);

        g_autoptr(GVariant) dq = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "DequeueImage", g_variant_new("(s)", "later"),
                                      &error);
        g_assert_no_error(error);
        queue_image(&e, "later", ""); /* a fresh entry: the third request succeeds */
        wait_for(&e, removed_count, GUINT_TO_POINTER(3), "the third JobRemoved");
        g_assert_true(g_str_has_suffix(e.job_removed->pdata[2], " done"));
        assert_cached(&e, "later", data, n);
        env_teardown(&e);
}

/* A 404 is permanent: one request, no retry, the error in the listing. */
static void test_permanent_not_retried(void) {
        Env e;
        env_setup(&e, "PrefetchOnQueue=yes\n[Upstream]\nRetryInitialSec=10ms\nRetryMaxSec=10ms");

        queue_image(&e, "absent", "");
        wait_for(&e, removed_count, GUINT_TO_POINTER(1), "JobRemoved");
        g_assert_true(g_str_has_suffix(e.job_removed->pdata[0], " failed"));
        g_auto(QueuedDetails) d = {};
        g_assert_true(queued_details(&e, "absent", &d));
        g_assert_cmpstr(d.last_error, !=, "");
        g_assert_cmpuint(d.next_attempt, ==, 0);

        /* A retry would have come within 10 ms; a ListJobs round trip well after shows none ran. */
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) jobs = call(&e, TEST_BUS_PATH, TEST_BUS_IFACE, "ListJobs", NULL, &error);
        g_assert_no_error(error);
        g_assert_cmpuint(n_children0(jobs), ==, 0);
        g_assert_cmpuint(e.job_new->len, ==, 1);
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/images/absent"), ==, 1);
        env_teardown(&e);
}

/* Queue markers left by an earlier daemon (one with a checksum), and the upstream's images, before the
 * next daemon starts. */
#define LEFT_SIZE 200000
static void leave_queue(Env *e) {
        g_autofree char *queue = g_build_filename(test_bus_cache_dir(e->bus), "queue", NULL);
        g_autofree char *one = g_build_filename(queue, "left1", NULL);
        g_autofree char *two = g_build_filename(queue, "left2", NULL);
        g_autofree uint8_t *d1 = make_data(LEFT_SIZE, 9), *d2 = make_data(LEFT_SIZE, 10);
        g_autofree char *sum = sha256_of(d2, LEFT_SIZE);
        g_autofree char *line = g_strdup_printf("%s\n", sum);

        upstream_fixture_add_image(e->fx, "/images/left1", d1, LEFT_SIZE, NULL);
        upstream_fixture_add_image(e->fx, "/images/left2", d2, LEFT_SIZE, NULL);
        g_assert_cmpint(g_mkdir_with_parents(queue, 0755), ==, 0);
        g_assert_true(g_file_set_contents(one, "", 0, NULL));
        g_assert_true(g_file_set_contents(two, line, -1, NULL));
}

static void test_queue_fetched_on_start(void) {
        Env e;
        g_autofree uint8_t *one = make_data(LEFT_SIZE, 9), *two = make_data(LEFT_SIZE, 10);

        env_setup_full(&e, "PrefetchOnQueue=yes", "infinity", leave_queue);
        wait_for(&e, removed_count, GUINT_TO_POINTER(2), "two JobRemoved");
        assert_cached(&e, "left1", one, LEFT_SIZE);
        assert_cached(&e, "left2", two, LEFT_SIZE);
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/images/left1"), ==, 1);
        g_assert_false(queued_details(&e, "left1", &(QueuedDetails) {}));
        env_teardown(&e);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/fetch-daemon/fetch-done", test_fetch_done);
        g_test_add_func("/fetch-daemon/fetch-failed", test_fetch_failed);
        g_test_add_func("/fetch-daemon/cancel", test_cancel);
        g_test_add_func("/fetch-daemon/prefetch-order", test_prefetch_order);
        g_test_add_func("/fetch-daemon/prefetch-on-queue", test_prefetch_on_queue);
        g_test_add_func("/fetch-daemon/resume-after-kill", test_resume_after_kill);
        g_test_add_func("/fetch-daemon/job-ids-across-restart", test_job_ids_across_restart);
        g_test_add_func("/fetch-daemon/queued-checksum-survives-idle-exit", test_queued_checksum_survives_idle_exit);
        g_test_add_func("/fetch-daemon/retry-resumes", test_retry_resumes);
        g_test_add_func("/fetch-daemon/retry-listing", test_retry_listing);
        g_test_add_func("/fetch-daemon/permanent-not-retried", test_permanent_not_retried);
        g_test_add_func("/fetch-daemon/queue-fetched-on-start", test_queue_fetched_on_start);
        return g_test_run();
}
