/* SPDX-License-Identifier: MIT */

/* The fd budget of pins and OpenImage, against the real imgcached (--user on a private bus,
 * tests/lib/test-bus.h) started through prlimit with a low RLIMIT_NOFILE (soft below hard, so the daemon
 * must raise it) and a small MaxConnections=. The daemon warns once, naming what it needs and what the
 * limit is; pins are taken up to the budget it announces; then the next PinImage and an OpenImage fail
 * with org.imgcache.Error.TooManyOpenFiles naming the budget, while a miss still works over D-Bus
 * (FetchImage from an in-process upstream) and over HTTP (curl, with another keep-alive connection
 * open), and a hit still serves. Ending a pin lets the next one in; an OpenImage in between gives its fd
 * back to the budget. Nowhere may the daemon meet EMFILE. */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gio/gio.h>
#include <gio/gunixfdlist.h>

#include "test-bus.h"
#include "test-util.h"
#include "upstream-fixture.h"

#define ERR_TOO_MANY_OPEN_FILES "org.imgcache.Error.TooManyOpenFiles"

/* RLIMIT_NOFILE of the daemon: the soft limit it starts with and the hard one it must raise it to.
 * With MaxConnections=4 and MaxParallelFetches=1 the daemon keeps about 94 fds for connections, fills,
 * Verify and its reserve, so a hard limit of 98 leaves pins a budget of a few fds. */
#define NOFILE_SOFT 48
#define NOFILE_HARD 98
#define MAX_CONNECTIONS 4
#define N_SEEDED 16
#define MISS_SIZE (256 * 1024)

typedef struct Env {
        TestBus *bus;
        UpstreamFixture *fx;
        uint16_t http_port;
        TestJobWatch *jobs;
        char *wrapper;
        char *old_wrapper; /* IMGCACHED_WRAPPER before the test, restored after it */
} Env;

static GVariant *call(Env *e, const char *method, GVariant *params, GError **error) {
        return g_dbus_connection_call_sync(test_bus_connection(e->bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE,
                                           method, params, NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS,
                                           NULL, error);
}

/* Calls a method returning one fd: the fd (the caller closes it), or -1 with *error set. */
static int call_fd(Env *e, const char *method, GVariant *params, GError **error) {
        g_autoptr(GUnixFDList) fds = NULL;
        g_autoptr(GVariant) v = NULL;
        gint32 handle;

        v = g_dbus_connection_call_with_unix_fd_list_sync(test_bus_connection(e->bus), TEST_BUS_NAME, TEST_BUS_PATH,
                                                          TEST_BUS_IFACE, method, params, G_VARIANT_TYPE("(h)"),
                                                          G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, &fds,
                                                          NULL, error);
        if (!v)
                return -1;
        g_variant_get(v, "(h)", &handle);
        g_assert_nonnull(fds);
        return g_unix_fd_list_get(fds, handle, error);
}

static int pin(Env *e, const char *id, GError **error) {
        return call_fd(e, "PinImage", g_variant_new("(ss)", id, "fd budget test"), error);
}

/* The call failed with TooManyOpenFiles, and its message names the budget. */
static void assert_budget_spent(GError *error, unsigned budget) {
        g_autofree char *name = NULL, *expected = NULL;

        g_assert_nonnull(error);
        name = g_dbus_error_get_remote_error(error);
        g_assert_cmpstr(name, ==, ERR_TOO_MANY_OPEN_FILES);
        expected = g_strdup_printf("budget of %u file descriptors", budget);
        if (!strstr(error->message, expected))
                g_error("the TooManyOpenFiles message does not name the budget (\"%s\"): %s", expected,
                        error->message);
}

static guint n_pins(Env *e) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(e, "ListPins", NULL, &error);
        g_assert_no_error(error);
        g_autoptr(GVariant) a = g_variant_get_child_value(v, 0);
        return (guint) g_variant_n_children(a);
}

/* A pin ends asynchronously (EPOLLHUP on the daemon's end); each ListPins is a round trip. */
static void wait_pins(Env *e, guint n) {
        gint64 deadline = g_get_monotonic_time() + TEST_BUS_TIMEOUT_MS * 1000;

        while (n_pins(e) != n)
                g_assert_cmpint(g_get_monotonic_time(), <, deadline);
}

static uint8_t *make_data(size_t n, unsigned seed) {
        uint8_t *d = g_malloc(n);
        for (size_t i = 0; i < n; i++)
                d[i] = (uint8_t) (i * 31 + seed * 7 + (i >> 9));
        return d;
}

static char *seeded_id(unsigned i) {
        return g_strdup_printf("seed%u", i);
}

static char *seeded_content(unsigned i) {
        return g_strdup_printf("content of seeded image %u\n", i);
}

static void seed_images(Env *e) {
        for (unsigned i = 0; i < N_SEEDED; i++) {
                g_autofree char *id = seeded_id(i), *content = seeded_content(i);
                g_autofree char *path = g_build_filename(test_bus_cache_dir(e->bus), id, NULL);
                g_autoptr(GError) error = NULL;

                g_assert_true(g_file_set_contents(path, content, -1, &error));
        }
}

/* GET over the daemon's HTTP listener with curl; the body must be byte-exact. */
static void assert_served(Env *e, const char *id, const void *data, size_t n) {
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/%s", e->http_port, id);
        g_autofree char *out = g_build_filename(test_bus_dir(e->bus), "served", NULL);
        const char *argv[] = { "curl", "-sSf", "--max-time", "10", "-o", out, url, NULL };
        g_autofree char *got = NULL, *err = NULL;
        gsize len = 0;

        if (test_bus_run(e->bus, argv, NULL, &err) != 0)
                g_error("curl %s failed: %s\ndaemon:\n%s", url, err, test_bus_daemon_stderr(e->bus));
        g_assert_true(g_file_get_contents(out, &got, &len, NULL));
        g_assert_cmpuint(len, ==, n);
        g_assert_true(memcmp(got, data, n) == 0);
        (void) unlink(out);
}

/* A script that runs the daemon (or the wrapper already configured, valgrind say) under prlimit, and
 * IMGCACHED_WRAPPER pointing at it. */
static void install_prlimit_wrapper(Env *e) {
        g_autofree char *inner = g_strdup(test_bus_daemon_path());
        g_autofree char *quoted = g_shell_quote(inner);
        g_autofree char *script = g_strdup_printf("#!/bin/sh\nexec prlimit --nofile=%u:%u -- %s \"$@\"\n",
                                                  NOFILE_SOFT, NOFILE_HARD, quoted);
        g_autoptr(GError) error = NULL;

        e->old_wrapper = g_strdup(g_getenv("IMGCACHED_WRAPPER"));
        e->wrapper = g_build_filename(test_bus_dir(e->bus), "imgcached-prlimit", NULL);
        g_assert_true(g_file_set_contents(e->wrapper, script, -1, &error));
        g_assert_cmpint(chmod(e->wrapper, 0755), ==, 0);
        g_setenv("IMGCACHED_WRAPPER", e->wrapper, TRUE);
}

/* The daemon's warning about the limit, once its stderr has been read that far: needed, limit, budget. */
static void wait_limit_warning(Env *e, guint64 *ret_needed, guint64 *ret_limit, guint *ret_budget) {
        g_autoptr(GRegex) re = g_regex_new("need (\\d+) file descriptors, but RLIMIT_NOFILE is (\\d+); "
                                           "limiting pins and OpenImage to (\\d+) file descriptors", 0, 0, NULL);
        gint64 deadline = g_get_monotonic_time() + TEST_BUS_TIMEOUT_MS * 1000;
        g_autoptr(GMatchInfo) match = NULL;

        while (!g_regex_match(re, test_bus_daemon_stderr(e->bus), 0, &match)) {
                g_clear_pointer(&match, g_match_info_free);
                if (g_get_monotonic_time() > deadline)
                        g_error("no warning about RLIMIT_NOFILE from the daemon:\n%s", test_bus_daemon_stderr(e->bus));
                g_main_context_iteration(NULL, TRUE);
        }
        g_autofree char *needed = g_match_info_fetch(match, 1), *limit = g_match_info_fetch(match, 2),
                        *budget = g_match_info_fetch(match, 3);
        *ret_needed = g_ascii_strtoull(needed, NULL, 10);
        *ret_limit = g_ascii_strtoull(limit, NULL, 10);
        *ret_budget = (guint) g_ascii_strtoull(budget, NULL, 10);
}

/* How many fds the daemon has open now (for the log: the headroom the reserve leaves). */
static guint daemon_n_fds(Env *e) {
        g_autofree char *path = g_strdup_printf("/proc/%d/fd", (int) test_bus_name_owner_pid(e->bus));
        g_autoptr(GDir) dir = g_dir_open(path, 0, NULL);
        guint n = 0;

        g_assert_nonnull(dir);
        while (g_dir_read_name(dir))
                n++;
        return n;
}

static gboolean have_prlimit(void) {
        g_autofree char *p = g_find_program_in_path("prlimit");
        return p != NULL;
}

static void test_fd_budget(void) {
        g_autoptr(GError) error = NULL;
        g_autofree uint8_t *miss1 = make_data(MISS_SIZE, 1), *miss2 = make_data(MISS_SIZE, 2);
        int pins[N_SEEDED];
        guint64 needed, limit;
        guint budget;
        Env e = {};

        if (!have_prlimit()) {
                test_skip_missing("prlimit (util-linux) is not installed");
                return;
        }
        /* valgrind keeps descriptors of its own at the top of the client's limit and refuses to raise it:
         * under it the daemon cannot see the limits this test sets (it runs in the plain and ASan passes). */
        if (g_getenv("IMGCACHED_WRAPPER")) {
                g_test_skip("the daemon runs under IMGCACHED_WRAPPER, whose fd limits are its own");
                return;
        }

        g_assert_cmpint(upstream_fixture_new(0, &e.fx), ==, 0);
        upstream_fixture_add_image(e.fx, "/images/miss1", miss1, MISS_SIZE, NULL);
        upstream_fixture_add_image(e.fx, "/images/miss2", miss2, MISS_SIZE, NULL);

        e.bus = test_bus_new();
        seed_images(&e);
        e.http_port = test_free_port();
        g_autofree char *url = upstream_fixture_url(e.fx, "/images/{id}");
        g_autofree char *config = g_strdup_printf("[Upstream]\nURL=%s\nMaxParallelFetches=1\n"
                                                  "[HTTP]\nListen=127.0.0.1:%u\nMaxConnections=%u\n"
                                                  "[Daemon]\nExitOnIdleSec=infinity\n",
                                                  url, e.http_port, MAX_CONNECTIONS);
        test_bus_write_config(e.bus, config);
        install_prlimit_wrapper(&e);
        e.jobs = test_job_watch_new(e.bus);
        if (!test_bus_start_daemon(e.bus, NULL))
                g_error("imgcached did not start:\n%s", test_bus_daemon_stderr(e.bus));

        /* One warning, naming both numbers; the limit is the hard one: the daemon raised its soft limit. */
        wait_limit_warning(&e, &needed, &limit, &budget);
        g_test_message("needed %" G_GUINT64_FORMAT ", limit %" G_GUINT64_FORMAT ", budget %u", needed, limit,
                       budget);
        g_assert_cmpuint(limit, ==, NOFILE_HARD);
        g_assert_cmpuint(needed, >, limit);
        g_assert_cmpuint(budget, >=, 2);
        g_assert_cmpuint(budget, <, N_SEEDED);

        /* Pins up to the budget. */
        for (guint i = 0; i < budget; i++) {
                g_autofree char *id = seeded_id(i);
                pins[i] = pin(&e, id, &error);
                g_assert_no_error(error);
                g_assert_cmpint(pins[i], >=, 0);
        }
        g_assert_cmpuint(n_pins(&e), ==, budget);

        /* The budget is spent: the next pin and an OpenImage fail with the named error. */
        g_autofree char *next = seeded_id(budget);
        g_assert_cmpint(pin(&e, next, &error), <, 0);
        assert_budget_spent(error, budget);
        g_clear_error(&error);
        g_assert_cmpint(call_fd(&e, "OpenImage", g_variant_new("(s)", next), &error), <, 0);
        assert_budget_spent(error, budget);
        g_clear_error(&error);

        /* Misses and hits keep their share: a fill over D-Bus, a miss streamed over HTTP next to an idle
         * keep-alive connection, a hit over HTTP (which opens the image file). */
        g_autofree char *job_error = NULL;
        g_autofree char *result = test_job_watch_fetch(e.jobs, "miss1", "", &job_error);
        if (!g_str_equal(result, "done"))
                g_error("FetchImage(miss1) at a spent fd budget: %s (%s)\ndaemon:\n%s", result, job_error,
                        test_bus_daemon_stderr(e.bus));
        int idle_fd = test_hold_idle_http_connection(e.http_port, TEST_BUS_TIMEOUT_MS);
        assert_served(&e, "miss2", miss2, MISS_SIZE);
        assert_served(&e, "miss1", miss1, MISS_SIZE);
        g_autofree char *content0 = seeded_content(0);
        assert_served(&e, "seed0", content0, strlen(content0));
        g_test_message("the daemon holds %u fds with %u pins and a keep-alive connection open (limit %"
                       G_GUINT64_FORMAT ")", daemon_n_fds(&e), budget, limit);
        g_assert_cmpuint(daemon_n_fds(&e), <, limit);
        close(idle_fd);

        /* Ending a pin frees its share: the next pin gets in, and the budget is spent again. */
        close(pins[0]);
        wait_pins(&e, budget - 1);
        pins[0] = pin(&e, next, &error);
        g_assert_no_error(error);
        g_assert_cmpint(pins[0], >=, 0);
        g_autofree char *after = seeded_id(budget + 1);
        g_assert_cmpint(pin(&e, after, &error), <, 0);
        assert_budget_spent(error, budget);
        g_clear_error(&error);

        /* An OpenImage borrows a share only while its reply is in flight: once it returned, the budget it
         * used is back (the pin after it gets in). */
        close(pins[1]);
        wait_pins(&e, budget - 1);
        int open_fd = call_fd(&e, "OpenImage", g_variant_new("(s)", "seed1"), &error);
        g_assert_no_error(error);
        g_autofree char *content1 = seeded_content(1);
        char buf[128] = {};
        g_assert_cmpint(pread(open_fd, buf, sizeof buf - 1, 0), ==, (ssize_t) strlen(content1));
        g_assert_cmpstr(buf, ==, content1);
        pins[1] = pin(&e, after, &error);
        g_assert_no_error(error);
        g_assert_cmpint(pins[1], >=, 0);
        close(open_fd);

        /* Nothing in the daemon ran out of fds. */
        g_assert_null(strstr(test_bus_daemon_stderr(e.bus), "Too many open files"));

        for (guint i = 0; i < budget; i++)
                close(pins[i]);
        wait_pins(&e, 0);
        test_job_watch_free(e.jobs);
        g_assert_cmpint(test_bus_stop_daemon(e.bus), ==, 0);
        if (e.old_wrapper)
                g_setenv("IMGCACHED_WRAPPER", e.old_wrapper, TRUE);
        else
                g_unsetenv("IMGCACHED_WRAPPER");
        g_free(e.old_wrapper);
        g_free(e.wrapper);
        test_bus_free(e.bus);
        upstream_fixture_free(e.fx);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/fd-budget/pins-leave-room-for-misses", test_fd_budget);
        return g_test_run();
}
