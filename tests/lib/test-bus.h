/* SPDX-License-Identifier: MIT */
#pragma once

#include <gio/gio.h>

/* A private session bus with imgcached on it, for integration tests of the daemon and of imgcachectl.
 *
 *   TestBus *b = test_bus_new();                       // dbus-daemon in a fresh temp dir
 *   test_bus_write_config(b, "[Daemon]\nExitOnIdleSec=infinity\n");
 *   g_assert_true(test_bus_start_daemon(b, NULL));     // imgcached --user, waits for the name
 *   ... call it with test_bus_connection(b) (GDBus) or test_bus_run(b, argv, …) (busctl, gdbus, imgcachectl)
 *   test_bus_free(b);                                  // kills every process it started, by pid
 *
 * Layout under test_bus_dir(b): cache/ (the daemon's --cache-dir), imgcached.conf (its --config),
 * services/ (the bus's only servicedir, for activation tests), bus.conf (the bus config).
 *
 * Every process is started with PR_SET_PDEATHSIG=SIGKILL and stopped by pid in test_bus_free(), also
 * when the test failed half-way. No sleeps: waits follow bus signals or child exits, each bounded by a
 * deadline (TEST_BUS_TIMEOUT_MS). The daemon binary is $IMGCACHED (set by meson), else "imgcached" in
 * $PATH. The environment variable DBUS_SESSION_BUS_ADDRESS of the test process is set to the private
 * bus, so children find it; DBUS_SYSTEM_BUS_ADDRESS is pointed there too (nothing may reach the host's
 * buses). Failures to set up abort the test with g_error(). */

#define TEST_BUS_NAME "org.imgcache.Manager"
#define TEST_BUS_PATH "/org/imgcache/Manager"
#define TEST_BUS_IFACE "org.imgcache.Manager"
#define TEST_BUS_TIMEOUT_MS 10000

typedef struct TestBus TestBus;

TestBus *test_bus_new(void);
void test_bus_free(TestBus *b);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestBus, test_bus_free)

const char *test_bus_address(const TestBus *b);
const char *test_bus_dir(const TestBus *b);         /* the temp dir */
const char *test_bus_cache_dir(const TestBus *b);   /* <dir>/cache, created */
const char *test_bus_config_path(const TestBus *b); /* <dir>/imgcached.conf, not created */
const char *test_bus_daemon_path(void);             /* $IMGCACHED or "imgcached" */
GDBusConnection *test_bus_connection(TestBus *b);   /* borrowed, shared by the test */

/* Writes text to the config file (replacing it). */
void test_bus_write_config(TestBus *b, const char *text);

/* Starts imgcached --user --cache-dir=<cache> --config=<conf> plus extra_args (NULL-terminated,
 * may be NULL) and waits until it owns TEST_BUS_NAME. FALSE if it exited or timed out instead (it is
 * then stopped; its stderr is kept, see test_bus_daemon_stderr()). One daemon at a time. */
gboolean test_bus_start_daemon(TestBus *b, const char *const *extra_args);
/* The same, handing the daemon listen_fd (>= 0) as systemd's socket activation would. The daemon always
 * gets this bus's address, so tests may run several buses, each with its own daemon. */
gboolean test_bus_start_daemon_listening(TestBus *b, int listen_fd, const char *const *extra_args);
/* Sends SIGTERM and waits for the exit (SIGKILL after the timeout). Returns the wait status, or -1
 * when no daemon was running. Also stops a bus-activated daemon (found by its pid on the bus). */
int test_bus_stop_daemon(TestBus *b);
/* The pid of the process owning TEST_BUS_NAME, or 0. */
GPid test_bus_name_owner_pid(TestBus *b);
/* What the last daemon started by test_bus_start_daemon() wrote to stderr so far (borrowed). */
const char *test_bus_daemon_stderr(TestBus *b);
/* Runs the main context until the daemon's stderr contains needle (it is read asynchronously). */
gboolean test_bus_wait_stderr(TestBus *b, const char *needle, guint timeout_ms);

/* Waits until TEST_BUS_NAME has an owner (owned = TRUE) or none (FALSE); FALSE on timeout. */
gboolean test_bus_wait_name(TestBus *b, gboolean owned, guint timeout_ms);

/* Writes services/org.imgcache.Manager.service running imgcached --user with the test's cache dir and
 * config, so that the bus activates the daemon on the first call. */
void test_bus_install_activation(TestBus *b);

/* Runs a client (argv[0] looked up in $PATH) with the bus in its environment and a deadline; collects
 * stdout and stderr (either may be NULL). Returns the exit status (WEXITSTATUS), or -1 when it was
 * killed or timed out. */
int test_bus_run(TestBus *b, const char *const *argv, char **ret_stdout, char **ret_stderr);

/* Calls a Manager method returning one fd, on connection (NULL: test_bus_connection()), failing the test on
 * an error. Returns the fd (the caller closes it). */
int test_bus_call_fd(TestBus *b, GDBusConnection *connection, const char *method, GVariant *params);

/* Iterates the default main context until *flag becomes TRUE or timeout_ms passes; returns *flag. */
gboolean test_bus_wait_flag(const gboolean *flag, guint timeout_ms);

/* Watching fetch jobs: results (JobRemoved) and last Error of each job path, seen through signals
 * subscribed at creation (so before any call the test makes). */
typedef struct TestJobWatch TestJobWatch;
TestJobWatch *test_job_watch_new(TestBus *b);
void test_job_watch_free(TestJobWatch *w);
/* FetchImage(id, checksum), then runs the default main context until the job is removed (bounded by
 * 3 × TEST_BUS_TIMEOUT_MS, failing the test with the daemon's stderr on timeout). Returns the result
 * ("done", "failed", "cancelled"; g_free it); *ret_error gets the job's last Error (may be NULL). */
char *test_job_watch_fetch(TestJobWatch *w, const char *id, const char *checksum, char **ret_error);
/* The same without a checksum, failing the test (with the daemon's stderr) unless the result is result and
 * the job's error contains each of error_needles (NULL-terminated, may be NULL). */
void test_job_watch_assert_fetch(TestJobWatch *w, const char *id, const char *result, const char *const *error_needles);

/* Records every signal of the Manager object (and its PropertiesChanged), subscribed at creation with a
 * round trip to the bus, so before anything the test does next. */
typedef struct TestSignalLog TestSignalLog;
TestSignalLog *test_signal_log_new(TestBus *b);
void test_signal_log_free(TestSignalLog *l);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestSignalLog, test_signal_log_free)
/* Index of the first signal named member whose first string argument is arg0 (NULL: any), or -1. */
int test_signal_log_find(TestSignalLog *l, const char *member, const char *arg0);
/* Waits (TEST_BUS_TIMEOUT_MS, failing the test) for such a signal; returns its parameters (borrowed). */
GVariant *test_signal_log_wait(TestSignalLog *l, const char *member, const char *arg0);
/* Waits for a PropertiesChanged carrying property (with the value expected, unless NULL; expected is
 * consumed); returns the value. *ret_count: how many PropertiesChanged carried property until then. */
GVariant *test_signal_log_wait_property(TestSignalLog *l, const char *property, GVariant *expected, guint *ret_count);
/* Every value of property that PropertiesChanged carried so far, in order (GVariant*, owned). */
GPtrArray *test_signal_log_property_values(TestSignalLog *l, const char *property);
