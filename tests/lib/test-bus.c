/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gio/gunixfdlist.h>
#include <glib/gstdio.h>

#include "test-bus.h"

struct TestBus {
        char *dir;
        char *cache_dir;
        char *config_path;
        char *address;
        GSubprocess *bus_daemon;
        GSubprocess *daemon;
        GString *daemon_stderr;
        GCancellable *stderr_cancel;
        gboolean stderr_reading; /* a read is outstanding; its callback uses this struct */
        GDBusConnection *connection;
};

static void stop_stderr_reader(TestBus *b);

static void child_setup(gpointer userdata) {
        /* Nothing outlives the test process, whatever happens to it. */
        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static GSubprocessLauncher *launcher_new(GSubprocessFlags flags) {
        GSubprocessLauncher *l = g_subprocess_launcher_new(flags);
        g_subprocess_launcher_set_child_setup(l, child_setup, NULL, NULL);
        return l;
}

static gboolean on_timeout(gpointer userdata) {
        *(gboolean *) userdata = TRUE;
        return G_SOURCE_REMOVE;
}

gboolean test_bus_wait_flag(const gboolean *flag, guint timeout_ms) {
        gboolean timed_out = FALSE;
        guint id = g_timeout_add(timeout_ms, on_timeout, &timed_out);

        while (!*flag && !timed_out)
                g_main_context_iteration(NULL, TRUE);
        if (!timed_out)
                g_source_remove(id);
        return *flag;
}

int test_bus_call_fd(TestBus *b, GDBusConnection *connection, const char *method, GVariant *params) {
        g_autoptr(GUnixFDList) fds = NULL;
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = NULL;
        gint32 handle;
        int fd;

        v = g_dbus_connection_call_with_unix_fd_list_sync(connection ?: test_bus_connection(b), TEST_BUS_NAME,
                                                          TEST_BUS_PATH, TEST_BUS_IFACE, method, params,
                                                          G_VARIANT_TYPE("(h)"), G_DBUS_CALL_FLAGS_NONE,
                                                          TEST_BUS_TIMEOUT_MS, NULL, &fds, NULL, &error);
        g_assert_no_error(error);
        g_variant_get(v, "(h)", &handle);
        g_assert_nonnull(fds);
        fd = g_unix_fd_list_get(fds, handle, &error);
        g_assert_no_error(error);
        g_assert_cmpint(fd, >=, 0);
        return fd;
}

static void write_file(const char *path, const char *text) {
        g_autoptr(GError) error = NULL;

        if (!g_file_set_contents(path, text, -1, &error))
                g_error("Cannot write %s: %s", path, error->message);
}

static void write_bus_config(TestBus *b) {
        g_autofree char *path = g_build_filename(b->dir, "bus.conf", NULL);
        g_autofree char *services = g_build_filename(b->dir, "services", NULL);
        g_autofree char *text = NULL;

        g_assert_cmpint(g_mkdir(services, 0755), ==, 0);
        text = g_strdup_printf(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n"
                "  <type>session</type>\n"
                "  <listen>unix:path=%s/bus</listen>\n"
                "  <auth>EXTERNAL</auth>\n"
                "  <servicedir>%s</servicedir>\n"
                "  <policy context=\"default\">\n"
                "    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
                "    <allow eavesdrop=\"true\"/>\n"
                "    <allow own=\"*\"/>\n"
                "  </policy>\n"
                "</busconfig>\n",
                b->dir, services);
        write_file(path, text);
}

static void start_bus_daemon(TestBus *b) {
        g_autoptr(GSubprocessLauncher) l = launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE);
        g_autoptr(GDataInputStream) in = NULL;
        g_autoptr(GError) error = NULL;
        g_autofree char *conf = g_build_filename(b->dir, "bus.conf", NULL);
        g_autofree char *conf_arg = g_strconcat("--config-file=", conf, NULL);
        g_autofree char *line = NULL;

        b->bus_daemon = g_subprocess_launcher_spawn(l, &error, "dbus-daemon", conf_arg, "--nofork",
                                                    "--nopidfile", "--nosyslog", "--print-address=1", NULL);
        if (!b->bus_daemon)
                g_error("Cannot start dbus-daemon: %s", error->message);

        /* dbus-daemon prints the address once it listens; EOF means it died. */
        in = g_data_input_stream_new(g_subprocess_get_stdout_pipe(b->bus_daemon));
        line = g_data_input_stream_read_line(in, NULL, NULL, &error);
        if (!line)
                g_error("dbus-daemon did not start: %s", error ? error->message : "no address printed");
        b->address = g_strdup(g_strstrip(line));
}

TestBus *test_bus_new(void) {
        g_autoptr(GError) error = NULL;
        TestBus *b = g_new0(TestBus, 1);
        g_autofree char *xdg_cache = NULL, *xdg_config = NULL, *xdg_runtime = NULL;

        b->dir = g_dir_make_tmp("imgcache-test-XXXXXX", &error);
        if (!b->dir)
                g_error("Cannot create a temporary directory: %s", error->message);
        b->cache_dir = g_build_filename(b->dir, "cache", NULL);
        b->config_path = g_build_filename(b->dir, "imgcached.conf", NULL);
        g_assert_cmpint(g_mkdir(b->cache_dir, 0755), ==, 0);
        b->daemon_stderr = g_string_new(NULL);

        /* Keep the daemon, the clients and their defaults away from the real home and buses. */
        xdg_cache = g_build_filename(b->dir, "xdg-cache", NULL);
        xdg_config = g_build_filename(b->dir, "xdg-config", NULL);
        xdg_runtime = g_build_filename(b->dir, "xdg-runtime", NULL);
        g_assert_cmpint(g_mkdir(xdg_runtime, 0700), ==, 0);
        g_setenv("XDG_CACHE_HOME", xdg_cache, TRUE);
        g_setenv("XDG_CONFIG_HOME", xdg_config, TRUE);
        g_setenv("XDG_RUNTIME_DIR", xdg_runtime, TRUE);
        g_unsetenv("NOTIFY_SOCKET");
        g_unsetenv("JOURNAL_STREAM");

        write_bus_config(b);
        start_bus_daemon(b);
        g_setenv("DBUS_SESSION_BUS_ADDRESS", b->address, TRUE);
        g_setenv("DBUS_SYSTEM_BUS_ADDRESS", b->address, TRUE);
        g_unsetenv("DBUS_STARTER_ADDRESS");
        g_unsetenv("DBUS_STARTER_BUS_TYPE");

        b->connection = g_dbus_connection_new_for_address_sync(
                        b->address,
                        G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT | G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
                        NULL, NULL, &error);
        if (!b->connection)
                g_error("Cannot connect to the test bus %s: %s", b->address, error->message);
        g_dbus_connection_set_exit_on_close(b->connection, FALSE);
        return b;
}

static void on_process_exit(GObject *source, GAsyncResult *res, gpointer userdata) {
        *(gboolean *) userdata = TRUE;
}

/* A flag a pending async wait may still write to after its waiter gave up: the last one frees it. */
typedef struct ExitFlag {
        gboolean exited;
        gboolean abandoned;
} ExitFlag;

static void on_exit_flag(GObject *source, GAsyncResult *res, gpointer userdata) {
        ExitFlag *f = userdata;

        if (f->abandoned)
                g_free(f);
        else
                f->exited = TRUE;
}

static void kill_and_wait(GSubprocess *p) {
        gboolean done = FALSE;

        if (!p)
                return;
        g_subprocess_send_signal(p, SIGTERM);
        g_subprocess_wait_async(p, NULL, on_process_exit, &done);
        if (!test_bus_wait_flag(&done, TEST_BUS_TIMEOUT_MS)) {
                g_printerr("Process did not exit on SIGTERM, killing it\n");
                g_subprocess_force_exit(p);
                while (!done) /* the callback refers to done: wait for it whatever it takes */
                        g_main_context_iteration(NULL, TRUE);
        }
}

static void kill_pid_and_wait_name(TestBus *b, GPid pid) {
        if (pid <= 1 || pid == getpid())
                return;
        (void) kill(pid, SIGTERM);
        if (!test_bus_wait_name(b, FALSE, TEST_BUS_TIMEOUT_MS))
                (void) kill(pid, SIGKILL);
}

void test_bus_free(TestBus *b) {
        if (!b)
                return;

        if (b->connection && !g_dbus_connection_is_closed(b->connection))
                kill_pid_and_wait_name(b, test_bus_name_owner_pid(b));
        if (b->daemon)
                kill_and_wait(b->daemon);
        g_clear_object(&b->daemon);
        stop_stderr_reader(b);
        if (b->connection)
                g_dbus_connection_close_sync(b->connection, NULL, NULL);
        g_clear_object(&b->connection);
        kill_and_wait(b->bus_daemon);
        g_clear_object(&b->bus_daemon);

        /* Let finished async operations release their references before the dir goes. */
        while (g_main_context_iteration(NULL, FALSE))
                ;

        if (b->dir) {
                g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", b->dir);
                (void) !system(cmd);
        }
        g_free(b->dir);
        g_free(b->cache_dir);
        g_free(b->config_path);
        g_free(b->address);
        g_string_free(b->daemon_stderr, TRUE);
        g_free(b);
}

const char *test_bus_address(const TestBus *b) {
        return b->address;
}

const char *test_bus_dir(const TestBus *b) {
        return b->dir;
}

const char *test_bus_cache_dir(const TestBus *b) {
        return b->cache_dir;
}

const char *test_bus_config_path(const TestBus *b) {
        return b->config_path;
}

const char *test_bus_daemon_path(void) {
        /* IMGCACHED_WRAPPER: a script that execs the daemon under a checker (valgrind in tools/run-tests);
         * meson's test environment sets IMGCACHED, so the wrapper needs a name of its own. */
        return g_getenv("IMGCACHED_WRAPPER") ?: g_getenv("IMGCACHED") ?: "imgcached";
}

GDBusConnection *test_bus_connection(TestBus *b) {
        return b->connection;
}

const char *test_bus_daemon_stderr(TestBus *b) {
        return b->daemon_stderr->str;
}

gboolean test_bus_wait_stderr(TestBus *b, const char *needle, guint timeout_ms) {
        gboolean timed_out = FALSE;
        guint id = g_timeout_add(timeout_ms, on_timeout, &timed_out);

        while (!strstr(b->daemon_stderr->str, needle) && !timed_out)
                g_main_context_iteration(NULL, TRUE);
        if (!timed_out)
                g_source_remove(id);
        return strstr(b->daemon_stderr->str, needle) != NULL;
}

void test_bus_write_config(TestBus *b, const char *text) {
        write_file(b->config_path, text);
}

static void on_name_appeared(GDBusConnection *c, const char *name, const char *owner, gpointer userdata) {
        gboolean *owned = userdata;
        *owned = TRUE;
}

static void on_name_vanished(GDBusConnection *c, const char *name, gpointer userdata) {
        gboolean *owned = userdata;
        *owned = FALSE;
}

typedef struct NameWait {
        gboolean owned;
        gboolean want;
        gboolean reached;
        gboolean known;
} NameWait;

static void on_wait_appeared(GDBusConnection *c, const char *name, const char *owner, gpointer userdata) {
        NameWait *w = userdata;
        w->known = TRUE;
        on_name_appeared(c, name, owner, &w->owned);
        w->reached = w->owned == w->want;
}

static void on_wait_vanished(GDBusConnection *c, const char *name, gpointer userdata) {
        NameWait *w = userdata;
        w->known = TRUE;
        on_name_vanished(c, name, &w->owned);
        w->reached = w->owned == w->want;
}

gboolean test_bus_wait_name(TestBus *b, gboolean owned, guint timeout_ms) {
        NameWait w = { .want = owned };
        guint id;

        /* GDBus watches NameOwnerChanged and asks GetNameOwner once, without activating. */
        id = g_bus_watch_name_on_connection(b->connection, TEST_BUS_NAME, G_BUS_NAME_WATCHER_FLAGS_NONE,
                                            on_wait_appeared, on_wait_vanished, &w, NULL);
        (void) test_bus_wait_flag(&w.reached, timeout_ms);
        g_bus_unwatch_name(id);
        return w.reached;
}

GPid test_bus_name_owner_pid(TestBus *b) {
        g_autoptr(GVariant) v = NULL;
        guint32 pid = 0;

        v = g_dbus_connection_call_sync(b->connection, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                        "org.freedesktop.DBus", "GetConnectionUnixProcessID",
                                        g_variant_new("(s)", TEST_BUS_NAME), G_VARIANT_TYPE("(u)"),
                                        G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, NULL);
        if (v)
                g_variant_get(v, "(u)", &pid);
        return (GPid) pid;
}

static void on_stderr_read(GObject *source, GAsyncResult *res, gpointer userdata);

/* Waits for EOF on the daemon's stderr (it exited), or cancels the read; either way the callback has
 * run when this returns. */
static void stop_stderr_reader(TestBus *b) {
        gboolean timed_out = FALSE;
        guint id = g_timeout_add(TEST_BUS_TIMEOUT_MS, on_timeout, &timed_out);

        while (b->stderr_reading && !timed_out)
                g_main_context_iteration(NULL, TRUE);
        if (!timed_out)
                g_source_remove(id);
        if (b->stderr_cancel)
                g_cancellable_cancel(b->stderr_cancel);
        while (b->stderr_reading)
                g_main_context_iteration(NULL, TRUE);
        g_clear_object(&b->stderr_cancel);
}

static void read_stderr_next(TestBus *b, GInputStream *in) {
        b->stderr_reading = TRUE;
        g_input_stream_read_bytes_async(in, 4096, G_PRIORITY_DEFAULT, b->stderr_cancel, on_stderr_read, b);
}

static void on_stderr_read(GObject *source, GAsyncResult *res, gpointer userdata) {
        g_autoptr(GBytes) bytes = g_input_stream_read_bytes_finish(G_INPUT_STREAM(source), res, NULL);
        TestBus *b = userdata;
        gsize n;
        const char *data;

        b->stderr_reading = FALSE;
        if (!bytes || g_bytes_get_size(bytes) == 0)
                return; /* EOF, error or cancelled */
        data = g_bytes_get_data(bytes, &n);
        g_string_append_len(b->daemon_stderr, data, (gssize) n);
        /* Echoed, so meson's log shows the daemon's side of a failure. */
        g_printerr("%.*s", (int) n, data);
        read_stderr_next(b, G_INPUT_STREAM(source));
}

gboolean test_bus_start_daemon(TestBus *b, const char *const *extra_args) {
        return test_bus_start_daemon_listening(b, -1, extra_args);
}

gboolean test_bus_start_daemon_listening(TestBus *b, int listen_fd, const char *const *extra_args) {
        g_autoptr(GSubprocessLauncher) l = launcher_new(G_SUBPROCESS_FLAGS_STDERR_PIPE);
        g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GError) error = NULL;
        ExitFlag *exit_flag = g_new0(ExitFlag, 1);
        gboolean owned = FALSE, exited;
        gboolean timed_out = FALSE;
        guint watch, timeout;

        g_assert_null(b->daemon);
        /* This bus, whichever bus the test process points at (several buses: several daemons). */
        g_subprocess_launcher_setenv(l, "DBUS_SESSION_BUS_ADDRESS", b->address, TRUE);
        if (listen_fd >= 0) {
                /* As systemd passes it: fd 3, LISTEN_FDS=1, LISTEN_PID of the process that execs it. */
                g_subprocess_launcher_take_fd(l, dup(listen_fd), 3);
                g_subprocess_launcher_setenv(l, "LISTEN_FDS", "1", TRUE);
                g_ptr_array_add(argv, g_strdup("/bin/sh"));
                g_ptr_array_add(argv, g_strdup("-c"));
                g_ptr_array_add(argv, g_strdup("LISTEN_PID=$$ exec \"$@\""));
                g_ptr_array_add(argv, g_strdup("sh"));
        }
        g_ptr_array_add(argv, g_strdup(test_bus_daemon_path()));
        g_ptr_array_add(argv, g_strdup("--user"));
        g_ptr_array_add(argv, g_strconcat("--cache-dir=", b->cache_dir, NULL));
        g_ptr_array_add(argv, g_strconcat("--config=", b->config_path, NULL));
        for (const char *const *a = extra_args; a && *a; a++)
                g_ptr_array_add(argv, g_strdup(*a));
        g_ptr_array_add(argv, NULL);

        g_string_truncate(b->daemon_stderr, 0);
        g_assert_false(b->stderr_reading);
        b->daemon = g_subprocess_launcher_spawnv(l, (const char *const *) argv->pdata, &error);
        if (!b->daemon)
                g_error("Cannot start %s: %s", test_bus_daemon_path(), error->message);
        g_clear_object(&b->stderr_cancel);
        b->stderr_cancel = g_cancellable_new();
        read_stderr_next(b, g_subprocess_get_stderr_pipe(b->daemon));

        watch = g_bus_watch_name_on_connection(b->connection, TEST_BUS_NAME, G_BUS_NAME_WATCHER_FLAGS_NONE,
                                               on_name_appeared, on_name_vanished, &owned, NULL);
        g_subprocess_wait_async(b->daemon, NULL, on_exit_flag, exit_flag);
        timeout = g_timeout_add(TEST_BUS_TIMEOUT_MS, on_timeout, &timed_out);
        while (!owned && !exit_flag->exited && !timed_out)
                g_main_context_iteration(NULL, TRUE);
        if (!timed_out)
                g_source_remove(timeout);
        g_bus_unwatch_name(watch);
        exited = exit_flag->exited;
        if (exited)
                g_free(exit_flag);
        else
                exit_flag->abandoned = TRUE;

        if (owned && !exited)
                return TRUE;

        /* Collect the rest of its stderr before reporting. */
        if (!exited)
                kill_and_wait(b->daemon);
        stop_stderr_reader(b);
        g_clear_object(&b->daemon);
        return FALSE;
}

int test_bus_stop_daemon(TestBus *b) {
        int status;

        if (!b->daemon) {
                GPid pid = test_bus_name_owner_pid(b);
                if (pid <= 0)
                        return -1;
                kill_pid_and_wait_name(b, pid);
                return 0;
        }

        kill_and_wait(b->daemon);
        status = g_subprocess_get_status(b->daemon);
        stop_stderr_reader(b);
        g_clear_object(&b->daemon);
        /* Its name goes when its connection does; wait, so the next daemon can take it. */
        (void) test_bus_wait_name(b, FALSE, TEST_BUS_TIMEOUT_MS);
        return status;
}

void test_bus_install_activation(TestBus *b) {
        g_autofree char *path = g_build_filename(b->dir, "services", TEST_BUS_NAME ".service", NULL);
        g_autofree char *text = NULL;

        text = g_strdup_printf("[D-BUS Service]\n"
                               "Name=%s\n"
                               "Exec=%s --user --cache-dir=%s --config=%s\n",
                               TEST_BUS_NAME, test_bus_daemon_path(), b->cache_dir, b->config_path);
        write_file(path, text);
}

typedef struct RunState {
        gboolean done;
        char *out;
        char *err;
} RunState;

static void on_communicated(GObject *source, GAsyncResult *res, gpointer userdata) {
        RunState *s = userdata;

        (void) g_subprocess_communicate_utf8_finish(G_SUBPROCESS(source), res, &s->out, &s->err, NULL);
        s->done = TRUE;
}

int test_bus_run(TestBus *b, const char *const *argv, char **ret_stdout, char **ret_stderr) {
        g_autoptr(GSubprocessLauncher) l =
                launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE);
        g_autoptr(GSubprocess) p = NULL;
        g_autoptr(GError) error = NULL;
        RunState s = {};
        int status = -1;

        p = g_subprocess_launcher_spawnv(l, argv, &error);
        if (!p)
                g_error("Cannot run %s: %s", argv[0], error->message);

        g_subprocess_communicate_utf8_async(p, NULL, NULL, on_communicated, &s);
        if (!test_bus_wait_flag(&s.done, TEST_BUS_TIMEOUT_MS)) {
                g_printerr("%s timed out, killing it\n", argv[0]);
                g_subprocess_force_exit(p);
                while (!s.done) /* on_communicated() refers to s */
                        g_main_context_iteration(NULL, TRUE);
        } else if (g_subprocess_get_if_exited(p))
                status = g_subprocess_get_exit_status(p);

        if (ret_stdout)
                *ret_stdout = g_steal_pointer(&s.out);
        if (ret_stderr)
                *ret_stderr = g_steal_pointer(&s.err);
        g_free(s.out);
        g_free(s.err);
        return status;
}

/* ---- watching fetch jobs ------------------------------------------------------------------------ */

struct TestJobWatch {
        TestBus *bus;
        GHashTable *removed; /* job path → result */
        GHashTable *errors;  /* job path → last non-empty Error */
        guint subs[2];
};

static void on_job_signal(GDBusConnection *c, const char *sender, const char *path, const char *iface,
                          const char *member, GVariant *params, gpointer userdata) {
        TestJobWatch *w = userdata;

        if (g_str_equal(member, "JobRemoved")) {
                const char *p, *result;
                guint32 id;
                g_variant_get(params, "(u&o&s)", &id, &p, &result);
                g_hash_table_replace(w->removed, g_strdup(p), g_strdup(result));
                return;
        }

        const char *iface_name, *err;
        g_autoptr(GVariant) changed = NULL;
        g_autoptr(GVariant) invalidated = NULL;
        g_variant_get(params, "(&s@a{sv}@as)", &iface_name, &changed, &invalidated);
        if (g_str_equal(iface_name, "org.imgcache.Job") && g_variant_lookup(changed, "Error", "&s", &err) && *err)
                g_hash_table_replace(w->errors, g_strdup(path), g_strdup(err));
}

TestJobWatch *test_job_watch_new(TestBus *b) {
        TestJobWatch *w = g_new0(TestJobWatch, 1);
        GDBusConnection *c = test_bus_connection(b);

        w->bus = b;
        w->removed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        w->errors = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        w->subs[0] = g_dbus_connection_signal_subscribe(c, NULL, TEST_BUS_IFACE, "JobRemoved", TEST_BUS_PATH, NULL,
                                                        G_DBUS_SIGNAL_FLAGS_NONE, on_job_signal, w, NULL);
        w->subs[1] = g_dbus_connection_signal_subscribe(c, NULL, "org.freedesktop.DBus.Properties",
                                                        "PropertiesChanged", NULL, "org.imgcache.Job",
                                                        G_DBUS_SIGNAL_FLAGS_NONE, on_job_signal, w, NULL);
        return w;
}

void test_job_watch_free(TestJobWatch *w) {
        if (!w)
                return;
        for (size_t i = 0; i < G_N_ELEMENTS(w->subs); i++)
                g_dbus_connection_signal_unsubscribe(test_bus_connection(w->bus), w->subs[i]);
        g_hash_table_destroy(w->removed);
        g_hash_table_destroy(w->errors);
        g_free(w);
}

static gboolean on_job_deadline(gpointer userdata) {
        *(gboolean *) userdata = TRUE;
        return G_SOURCE_REMOVE;
}

char *test_job_watch_fetch(TestJobWatch *w, const char *id, const char *checksum, char **ret_error) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = g_dbus_connection_call_sync(
                        test_bus_connection(w->bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE, "FetchImage",
                        g_variant_new("(ss)", id, checksum), NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS,
                        NULL, &error);
        g_assert_no_error(error);
        g_autofree char *path = NULL;
        g_variant_get(v, "(o)", &path);

        gboolean expired = FALSE;
        guint t = g_timeout_add(TEST_BUS_TIMEOUT_MS * 3, on_job_deadline, &expired);
        gint64 t0 = g_get_monotonic_time();
        while (!g_hash_table_contains(w->removed, path) && !expired)
                g_main_context_iteration(NULL, TRUE);
        if (!expired)
                g_source_remove(t);
        if (!g_hash_table_contains(w->removed, path))
                g_error("timed out waiting for the job of %s; daemon said:\n%s", id, test_bus_daemon_stderr(w->bus));

        const char *err = g_hash_table_lookup(w->errors, path);
        char *result = g_strdup(g_hash_table_lookup(w->removed, path));
        g_test_message("%s: %s after %.2f s: %s", id, result, (g_get_monotonic_time() - t0) / 1e6, err ?: "");
        if (ret_error)
                *ret_error = g_strdup(err);
        /* Job paths may be reused by later jobs. */
        g_hash_table_remove(w->errors, path);
        g_hash_table_remove(w->removed, path);
        return result;
}

void test_job_watch_assert_fetch(TestJobWatch *w, const char *id, const char *result, const char *const *error_needles) {
        g_autofree char *error = NULL;
        g_autofree char *r = test_job_watch_fetch(w, id, "", &error);
        if (!g_str_equal(r, result))
                g_error("fetch of %s: %s (%s), wanted %s; the daemon said:\n%s", id, r, error, result,
                        test_bus_daemon_stderr(w->bus));
        for (; error_needles && *error_needles; error_needles++)
                if (!error || !strstr(error, *error_needles))
                        g_error("the job's error '%s' does not say '%s'", error, *error_needles);
}

/* ---- signals of the Manager ---------------------------------------------------------------------- */

/* Records every signal of the Manager object. */
struct TestSignalLog {
        GPtrArray *names;   /* char* */
        GPtrArray *params;  /* GVariant* */
        guint id, props_id;
        GDBusConnection *connection;
};

static void on_manager_signal(GDBusConnection *c, const char *sender, const char *path, const char *interface,
                      const char *member, GVariant *params, gpointer userdata) {
        TestSignalLog *l = userdata;
        g_ptr_array_add(l->names, g_strdup(member));
        g_ptr_array_add(l->params, g_variant_ref(params));
}

TestSignalLog *test_signal_log_new(TestBus *b) {
        TestSignalLog *l = g_new0(TestSignalLog, 1);

        l->names = g_ptr_array_new_with_free_func(g_free);
        l->params = g_ptr_array_new_with_free_func((GDestroyNotify) g_variant_unref);
        l->connection = test_bus_connection(b);
        l->id = g_dbus_connection_signal_subscribe(l->connection, TEST_BUS_NAME, TEST_BUS_IFACE, NULL,
                                                   TEST_BUS_PATH, NULL, G_DBUS_SIGNAL_FLAGS_NONE, on_manager_signal, l,
                                                   NULL);
        l->props_id = g_dbus_connection_signal_subscribe(l->connection, TEST_BUS_NAME,
                                                         "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                                         TEST_BUS_PATH, NULL, G_DBUS_SIGNAL_FLAGS_NONE,
                                                         on_manager_signal, l, NULL);
        /* A round trip to the bus, so the match rules are in place before the test acts. */
        g_autoptr(GVariant) v = g_dbus_connection_call_sync(l->connection, "org.freedesktop.DBus",
                                                            "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                                            "GetId", NULL, NULL, G_DBUS_CALL_FLAGS_NONE, -1,
                                                            NULL, NULL);
        g_assert_nonnull(v);
        return l;
}

void test_signal_log_free(TestSignalLog *l) {
        g_dbus_connection_signal_unsubscribe(l->connection, l->id);
        g_dbus_connection_signal_unsubscribe(l->connection, l->props_id);
        g_ptr_array_unref(l->names);
        g_ptr_array_unref(l->params);
        g_free(l);
}

/* Index of the first signal named member whose first string argument is arg0 (NULL: any). */
int test_signal_log_find(TestSignalLog *l, const char *member, const char *arg0) {
        for (guint i = 0; i < l->names->len; i++) {
                GVariant *p = l->params->pdata[i];
                if (!g_str_equal(l->names->pdata[i], member))
                        continue;
                if (arg0) {
                        g_autoptr(GVariant) first = g_variant_get_child_value(p, 0);
                        if (!g_variant_is_of_type(first, G_VARIANT_TYPE_STRING) ||
                            !g_str_equal(g_variant_get_string(first, NULL), arg0))
                                continue;
                }
                return (int) i;
        }
        return -1;
}

static gboolean on_signal_deadline(gpointer userdata) {
        *(gboolean *) userdata = TRUE;
        return G_SOURCE_REMOVE;
}

/* Waits for a signal; returns its parameters (borrowed). */
GVariant *test_signal_log_wait(TestSignalLog *l, const char *member, const char *arg0) {
        gboolean timed_out = FALSE;
        guint id = g_timeout_add(TEST_BUS_TIMEOUT_MS, on_signal_deadline, &timed_out);
        int i;

        while ((i = test_signal_log_find(l, member, arg0)) < 0 && !timed_out)
                g_main_context_iteration(NULL, TRUE);
        if (!timed_out)
                g_source_remove(id);
        if (i < 0)
                g_error("Timed out waiting for signal %s(%s)", member, arg0 ?: "*");
        return l->params->pdata[i];
}

/* Waits for a PropertiesChanged carrying property (with the value expected, unless NULL; expected is
 * consumed); returns the value. *ret_count: how many PropertiesChanged carried property until then. */
GVariant *test_signal_log_wait_property(TestSignalLog *l, const char *property, GVariant *expected, guint *ret_count) {
        g_autoptr(GVariant) want = expected ? g_variant_ref_sink(expected) : NULL;
        gboolean timed_out = FALSE;
        guint id = g_timeout_add(TEST_BUS_TIMEOUT_MS, on_signal_deadline, &timed_out);
        GVariant *found = NULL;
        guint count = 0, scanned = 0;

        while (!found && !timed_out) {
                for (; !found && scanned < l->names->len; scanned++) {
                        g_autoptr(GVariant) changed = NULL, v = NULL;
                        if (!g_str_equal(l->names->pdata[scanned], "PropertiesChanged"))
                                continue;
                        changed = g_variant_get_child_value(l->params->pdata[scanned], 1);
                        v = g_variant_lookup_value(changed, property, NULL);
                        if (!v)
                                continue;
                        count++;
                        if (!want || g_variant_equal(v, want))
                                found = g_steal_pointer(&v);
                }
                if (!found)
                        g_main_context_iteration(NULL, TRUE);
        }
        if (!timed_out)
                g_source_remove(id);
        if (!found)
                g_error("Timed out waiting for PropertiesChanged of %s", property);
        if (ret_count)
                *ret_count = count;
        return found;
}

GPtrArray *test_signal_log_property_values(TestSignalLog *l, const char *property) {
        GPtrArray *values = g_ptr_array_new_with_free_func((GDestroyNotify) g_variant_unref);

        for (guint i = 0; i < l->names->len; i++) {
                g_autoptr(GVariant) changed = NULL;
                GVariant *v;

                if (!g_str_equal(l->names->pdata[i], "PropertiesChanged"))
                        continue;
                changed = g_variant_get_child_value(l->params->pdata[i], 1);
                v = g_variant_lookup_value(changed, property, NULL);
                if (v)
                        g_ptr_array_add(values, v);
        }
        return values;
}
