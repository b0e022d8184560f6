/* SPDX-License-Identifier: MIT */

/* imgcachectl against the real imgcached on a private bus (tests/lib/test-bus.h): each verb's output and
 * exit status, --json parsed back with jansson and compared with the daemon's own D-Bus replies, prompts
 * answered through a pseudo-terminal, error lines for bad ids, missing images, a missing bus and a call
 * refused by the bus, bus activation, and the bash and zsh completions asking the running daemon for ids.
 *
 * Environment (set by meson): IMGCACHECTL, IMGCACHED, IMGCACHE_SOURCE_ROOT. No sleeps: every wait follows
 * a child's output or exit, bounded by a deadline; every child is killed by pid when it overstays. */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gio/gio.h>
#include <gio/gunixfdlist.h>
#include <glib/gstdio.h>
#include <jansson.h>

#include "image-id.h"
#include "test-bus.h"
#include "test-util.h"
#include "upstream-fixture.h"

#define RUN_TIMEOUT_MS TEST_BUS_TIMEOUT_MS

/* Seeded into every fixture's cache directory before the daemon starts: adopted at start. */
#define IMAGE_SMALL "cirros-0.6.2"
#define IMAGE_BIG   "6ee6e7a6-92c4-4b4c-9c1b-4ad1d01f1a1f"
#define SIZE_SMALL  3000
#define SIZE_BIG    200000

/* Served by the upstream of FIXTURE_UPSTREAM, not cached at start. */
#define UPSTREAM_A   "fedora-40"
#define UPSTREAM_B   "debian-12"
#define UPSTREAM_ONE "one-byte"
#define SIZE_A       4000
#define SIZE_B       6000

typedef struct Fixture {
        TestBus *bus;
        UpstreamFixture *upstream;
} Fixture;

typedef enum FixtureFlags {
        FIXTURE_EMPTY       = 1 << 0, /* no images */
        FIXTURE_SMALL_MAX   = 1 << 1, /* MaxSize=4K, EnforceMaxSize=no */
        FIXTURE_JUNK        = 1 << 2, /* invalid/ and stalled incomplete/ files */
        FIXTURE_NO_DAEMON   = 1 << 3,
        FIXTURE_UPSTREAM    = 1 << 4, /* an upstream serving UPSTREAM_A, UPSTREAM_B and UPSTREAM_ONE */
} FixtureFlags;

static const char *ctl_path(void) {
        const char *p = g_getenv("IMGCACHECTL");
        return p ? p : "imgcachectl";
}

static const char *source_root(void) {
        const char *p = g_getenv("IMGCACHE_SOURCE_ROOT");
        g_assert_nonnull(p);
        return p;
}

static void write_image(const char *dir, const char *name, size_t size, char fill) {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        g_autofree char *data = g_malloc(size);
        g_autoptr(GError) error = NULL;

        memset(data, fill, size);
        g_assert_true(g_file_set_contents(path, data, (gssize) size, &error));
}

static void set_old_mtime(const char *path) {
        struct timeval tv[2] = {};

        gettimeofday(&tv[0], NULL);
        tv[0].tv_sec -= 3 * 24 * 3600;
        tv[1] = tv[0];
        g_assert_cmpint(utimes(path, tv), ==, 0);
}

static void add_upstream_image(Fixture *f, const char *id, size_t size, char fill) {
        g_autofree char *path = g_strconcat("/images/", id, NULL);
        g_autofree char *data = g_malloc(size);

        memset(data, fill, size);
        g_assert_cmpint(upstream_fixture_add_image(f->upstream, path, data, size, NULL), ==, 0);
}

static void fixture_setup(Fixture *f, gconstpointer data) {
        FixtureFlags flags = GPOINTER_TO_UINT(data);
        g_autofree char *upstream = NULL, *config = NULL;
        /* Any free port: parallel tests never fight over the default 127.0.0.1:9393. */
        const char *args[] = { "--listen=127.0.0.1:0", NULL };
        const char *cache;

        f->bus = test_bus_new();
        cache = test_bus_cache_dir(f->bus);

        if (flags & FIXTURE_UPSTREAM) {
                g_autofree char *url = NULL;

                g_assert_cmpint(upstream_fixture_new(0, &f->upstream), ==, 0);
                add_upstream_image(f, UPSTREAM_A, SIZE_A, 'a');
                add_upstream_image(f, UPSTREAM_B, SIZE_B, 'b');
                add_upstream_image(f, UPSTREAM_ONE, 1, '1');
                url = upstream_fixture_url(f->upstream, "/images/{id}");
                upstream = g_strdup_printf("[Upstream]\nURL=%s\n", url);
        }
        config = g_strdup_printf("[Cache]\nMaxSize=%s\nPrefetchOnQueue=no\n%s[Daemon]\nExitOnIdleSec=infinity\n%s",
                                 (flags & FIXTURE_SMALL_MAX) ? "4K\nEnforceMaxSize=no" : "10G",
                                 (flags & (FIXTURE_UPSTREAM | FIXTURE_SMALL_MAX)) ? "KeepFree=0\n" : "",
                                 upstream ? upstream : "");
        test_bus_write_config(f->bus, config);

        if (!(flags & FIXTURE_EMPTY)) {
                write_image(cache, IMAGE_SMALL, SIZE_SMALL, 's');
                write_image(cache, IMAGE_BIG, SIZE_BIG, 'b');
        }

        if (flags & FIXTURE_JUNK) {
                g_autofree char *invalid = g_build_filename(cache, "invalid", NULL);
                g_autofree char *incomplete = g_build_filename(cache, "incomplete", NULL);
                g_autofree char *stalled = g_build_filename(incomplete, "stalled-image", NULL);

                g_assert_cmpint(g_mkdir_with_parents(invalid, 0755), ==, 0);
                g_assert_cmpint(g_mkdir_with_parents(incomplete, 0755), ==, 0);
                write_image(invalid, "bad-image", 100, 'x');
                write_image(incomplete, "stalled-image", 100, 'y');
                set_old_mtime(stalled);
        }

        if (!(flags & FIXTURE_NO_DAEMON) && !test_bus_start_daemon(f->bus, args))
                g_error("imgcached did not start: %s", test_bus_daemon_stderr(f->bus));
}

static void fixture_teardown(Fixture *f, gconstpointer data) {
        test_bus_free(f->bus);
        upstream_fixture_free(f->upstream);
}

/* ---- running imgcachectl -------------------------------------------------------------------------- */

typedef struct Run {
        int status;     /* exit status, -1 when killed */
        char *out;
        char *err;
} Run;

static void run_clear(Run *r) {
        g_free(r->out);
        g_free(r->err);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(Run, run_clear)

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

static void child_setup(gpointer userdata) {
        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* Runs argv with stdin on /dev/null (never a terminal) and the environment changed by env ("NAME=value",
 * or "NAME" to unset; may be NULL). */
static Run run_argv_env(const char *const *argv, const char *const *env) {
        g_autoptr(GSubprocessLauncher) l =
                g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE);
        g_autoptr(GSubprocess) p = NULL;
        g_autoptr(GError) error = NULL;
        RunState s = {};
        Run r = { .status = -1 };

        g_subprocess_launcher_set_child_setup(l, child_setup, NULL, NULL);
        g_subprocess_launcher_set_stdin_file_path(l, "/dev/null");
        g_subprocess_launcher_setenv(l, "IMGCACHECTL_PAGER", "", TRUE);
        for (const char *const *e = env; e && *e; e++) {
                const char *eq = strchr(*e, '=');
                if (eq) {
                        g_autofree char *name = g_strndup(*e, (gsize) (eq - *e));
                        g_subprocess_launcher_setenv(l, name, eq + 1, TRUE);
                } else
                        g_subprocess_launcher_unsetenv(l, *e);
        }

        p = g_subprocess_launcher_spawnv(l, argv, &error);
        if (!p)
                g_error("Cannot run %s: %s", argv[0], error->message);

        g_subprocess_communicate_utf8_async(p, NULL, NULL, on_communicated, &s);
        if (!test_bus_wait_flag(&s.done, RUN_TIMEOUT_MS)) {
                g_printerr("%s timed out, killing it\n", argv[0]);
                g_subprocess_force_exit(p);
                while (!s.done)
                        g_main_context_iteration(NULL, TRUE);
        } else if (g_subprocess_get_if_exited(p))
                r.status = g_subprocess_get_exit_status(p);

        r.out = s.out ? s.out : g_strdup("");
        r.err = s.err ? s.err : g_strdup("");
        if (g_test_verbose()) {
                g_autofree char *cmdline = g_strjoinv(" ", (char **) argv);
                g_printerr("$ %s\n%s%s[exit %d]\n", cmdline, r.out, r.err, r.status);
        }
        return r;
}

static Run run_ctlv(const char *const *env, const char *first, va_list ap) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new();

        g_ptr_array_add(argv, (char *) ctl_path());
        for (const char *a = first; a; a = va_arg(ap, const char *))
                g_ptr_array_add(argv, (char *) a);
        g_ptr_array_add(argv, NULL);

        return run_argv_env((const char *const *) argv->pdata, env);
}

/* imgcachectl with the given arguments (NULL-terminated). */
static Run run_ctl(const char *first, ...) G_GNUC_NULL_TERMINATED;
static Run run_ctl(const char *first, ...) {
        va_list ap;
        Run r;

        va_start(ap, first);
        r = run_ctlv(NULL, first, ap);
        va_end(ap);
        return r;
}

static Run run_ctl_env(const char *const *env, const char *first, ...) G_GNUC_NULL_TERMINATED;
static Run run_ctl_env(const char *const *env, const char *first, ...) {
        va_list ap;
        Run r;

        va_start(ap, first);
        r = run_ctlv(env, first, ap);
        va_end(ap);
        return r;
}

#define assert_success(r) G_STMT_START {                                                    \
                if ((r).status != 0)                                                        \
                        g_error("imgcachectl failed (%d): %s", (r).status, (r).err);        \
                g_assert_cmpstr((r).err, ==, "");                                           \
        } G_STMT_END

/* One line on stderr, "imgcachectl: <line>", and exit status 1. */
#define assert_error_line(r, line) G_STMT_START {                                           \
                g_autofree char *_expected = g_strdup_printf("imgcachectl: %s\n", (line));  \
                g_assert_cmpint((r).status, ==, 1);                                         \
                g_assert_cmpstr((r).err, ==, _expected);                                    \
        } G_STMT_END

static void assert_one_line(const char *text) {
        const char *nl = strchr(text, '\n');

        g_assert_nonnull(nl);
        g_assert_cmpstr(nl + 1, ==, "");
}

typedef struct PtyRun {
        int status;
        char *output;
} PtyRun;

/* Runs imgcachectl on a pseudo-terminal (stdin, stdout and stderr). When the output contains `when`,
 * writes `answer` (if non-NULL) or sends `sig` (if non-zero) once. Returns when the child has exited;
 * kills it by pid at the deadline. */
static PtyRun run_pty(const char *const *args, const char *when, const char *answer, int sig) {
        struct winsize ws = { .ws_row = 40, .ws_col = 100 };
        g_autoptr(GPtrArray) argv = NULL;
        g_auto(GStrv) envp = NULL;
        g_autoptr(GString) out = g_string_new(NULL);
        gint64 deadline = g_get_monotonic_time() + (gint64) RUN_TIMEOUT_MS * 1000;
        gboolean acted = FALSE;
        PtyRun result = { .status = -1 };
        int master, wstatus;
        pid_t pid;

        /* Everything the child needs is prepared before fork(): the test has threads (GDBus), so the child
         * may only call async-signal-safe functions until execve(). */
        argv = g_ptr_array_new();
        g_ptr_array_add(argv, (char *) ctl_path());
        for (const char *const *a = args; *a; a++)
                g_ptr_array_add(argv, (char *) *a);
        g_ptr_array_add(argv, NULL);
        envp = g_get_environ();
        envp = g_environ_setenv(envp, "IMGCACHECTL_PAGER", "", TRUE);
        envp = g_environ_setenv(envp, "TERM", "xterm", TRUE);
        envp = g_environ_unsetenv(envp, "COLUMNS");

        pid = forkpty(&master, NULL, NULL, &ws);
        g_assert_cmpint(pid, >=, 0);
        if (pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                execve(argv->pdata[0], (char **) argv->pdata, envp);
                _exit(127);
        }

        for (;;) {
                struct pollfd p = { .fd = master, .events = POLLIN };
                gint64 left = (deadline - g_get_monotonic_time()) / 1000;
                char buf[4096];
                ssize_t n;
                int k;

                if (left <= 0) {
                        g_printerr("imgcachectl on a pty timed out, killing pid %d\n", (int) pid);
                        (void) kill(pid, SIGKILL);
                        break;
                }

                k = poll(&p, 1, (int) left);
                if (k < 0 && errno == EINTR)
                        continue;
                g_assert_cmpint(k, >=, 0);
                if (k == 0)
                        continue;

                n = read(master, buf, sizeof buf);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) /* EIO: every holder of the pty's other side is gone */
                        break;
                g_string_append_len(out, buf, n);

                if (!acted && when && strstr(out->str, when)) {
                        acted = TRUE;
                        if (answer)
                                g_assert_cmpint(write(master, answer, strlen(answer)), ==, (ssize_t) strlen(answer));
                        if (sig)
                                g_assert_cmpint(kill(pid, sig), ==, 0);
                }
        }

        g_assert_cmpint(waitpid(pid, &wstatus, 0), ==, pid);
        close(master);
        if (WIFEXITED(wstatus))
                result.status = WEXITSTATUS(wstatus);
        if (when)
                g_assert_true(acted);
        result.output = g_string_free(g_steal_pointer(&out), FALSE);
        if (g_test_verbose())
                g_printerr("[pty]\n%s[exit %d]\n", result.output, result.status);
        return result;
}

/* ---- talking to the daemon directly, for comparisons ----------------------------------------------- */

static GVariant *call(Fixture *f, const char *method, GVariant *args, const char *reply_type, GError **error) {
        return g_dbus_connection_call_sync(test_bus_connection(f->bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE,
                                           method, args, reply_type ? G_VARIANT_TYPE(reply_type) : NULL,
                                           G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, error);
}

static GVariant *call_ok(Fixture *f, const char *method, GVariant *args, const char *reply_type) {
        g_autoptr(GError) error = NULL;
        GVariant *v = call(f, method, args, reply_type, &error);

        g_assert_no_error(error);
        return v;
}

/* The daemon's error message for a call, as a client sees it. */
static char *call_error_message(Fixture *f, const char *method, GVariant *args) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(f, method, args, NULL, &error);

        g_assert_null(v);
        g_assert_nonnull(error);
        g_dbus_error_strip_remote_error(error);
        return g_strdup(error->message);
}

static gboolean image_exists(Fixture *f, const char *id) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(f, "GetImage", g_variant_new("(s)", id), "((stttts))", &error);

        return v != NULL;
}

static guint count_queued(Fixture *f) {
        g_autoptr(GVariant) v = call_ok(f, "ListQueued", NULL, "(a(st))");
        g_autoptr(GVariant) a = g_variant_get_child_value(v, 0);

        return (guint) g_variant_n_children(a);
}

static GVariant *get_property(Fixture *f, const char *name) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = g_dbus_connection_call_sync(test_bus_connection(f->bus), TEST_BUS_NAME, TEST_BUS_PATH,
                                                            "org.freedesktop.DBus.Properties", "Get",
                                                            g_variant_new("(ss)", TEST_BUS_IFACE, name),
                                                            G_VARIANT_TYPE("(v)"), G_DBUS_CALL_FLAGS_NONE,
                                                            TEST_BUS_TIMEOUT_MS, NULL, &error);
        GVariant *inner;

        g_assert_no_error(error);
        g_variant_get(v, "(v)", &inner);
        return inner;
}

/* Counts one hit on an image through OpenImage (the fd is closed at once). */
static void open_image(Fixture *f, const char *id) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GUnixFDList) fds = NULL;
        g_autoptr(GVariant) v = g_dbus_connection_call_with_unix_fd_list_sync(
                        test_bus_connection(f->bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE, "OpenImage",
                        g_variant_new("(s)", id), G_VARIANT_TYPE("(h)"), G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS,
                        NULL, &fds, NULL, &error);

        g_assert_no_error(error);
        g_assert_nonnull(fds);
}

static json_t *parse_json(const char *text) {
        json_error_t error;
        json_t *j = json_loads(text, 0, &error);

        if (!j)
                g_error("imgcachectl printed invalid JSON (%s at line %d): %s", error.text, error.line, text);
        return j;
}

static guint64 json_u64(json_t *o, const char *key) {
        json_t *v = json_object_get(o, key);

        if (!json_is_integer(v))
                g_error("JSON key '%s' is missing or not an integer", key);
        g_assert_cmpint(json_integer_value(v), >=, 0);
        return (guint64) json_integer_value(v);
}

static const char *json_str(json_t *o, const char *key) {
        json_t *v = json_object_get(o, key);

        if (!json_is_string(v))
                g_error("JSON key '%s' is missing or not a string", key);
        return json_string_value(v);
}

static char **lines(const char *text) {
        g_autofree char *t = g_strdup(text);

        g_strchomp(t);
        if (!*t)
                return g_new0(char *, 1);
        return g_strsplit(t, "\n", -1);
}

static char *first_word(const char *line) {
        const char *sp = strchr(line, ' ');
        return sp ? g_strndup(line, (gsize) (sp - line)) : g_strdup(line);
}

/* ---- status --------------------------------------------------------------------------------------- */

static void test_status(Fixture *f, gconstpointer data) {
        g_auto(Run) r = run_ctl("status", NULL);
        g_auto(Run) def = run_ctl(NULL, NULL);
        g_auto(Run) user = run_ctl("--user", "status", NULL);
        g_auto(Run) js = run_ctl("--json=short", "status", NULL);
        g_autofree char *dir_line = g_strdup_printf("   Directory: %s\n", test_bus_cache_dir(f->bus));
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) all = NULL, props = NULL;
        json_t *j;
        static const struct {
                const char *property;
                const char *key;
        } map[] = {
                { "Version", "version" }, { "Driver", "driver" }, { "CacheDirectory", "cache_directory" },
                { "Upstream", "upstream" }, { "MaxSize", "max_size" }, { "StallTimeUSec", "stall_time_usec" },
                { "CurrentSize", "current_size" }, { "ImageCount", "image_count" },
                { "QueuedCount", "queued_count" }, { "Hits", "hits" }, { "Misses", "misses" },
                { "BytesServed", "bytes_served" }, { "KeepFree", "keep_free" },
                { "ListenAddress", "listen_address" }, { "PinCount", "pin_count" },
        };
        g_autoptr(GVariant) listen = get_property(f, "ListenAddress");
        g_autofree char *http_line = g_strdup_printf("        HTTP: %s\n", g_variant_get_string(listen, NULL));

        assert_success(r);
        g_assert_nonnull(strstr(r.out, dir_line));
        g_assert_nonnull(strstr(r.out, "      Driver: sqlite\n"));
        g_assert_nonnull(strstr(r.out, " of 10G ("));
        g_assert_nonnull(strstr(r.out, "      Images: 2\n"));
        g_assert_nonnull(strstr(r.out, "      Queued: 0\n"));
        g_assert_nonnull(strstr(r.out, " Hits/Misses: 0/0 (hit ratio -)\n"));
        g_assert_nonnull(strstr(r.out, "    Upstream: none configured\n"));
        /* No upstream: no job can run; ListJobs' NoUpstream error reads as 0. */
        g_assert_nonnull(strstr(r.out, "Running jobs: 0\n"));
        /* Where HTTP is served (the fixture's port 0: the port the kernel chose), the free space with what
         * KeepFree= keeps, the pins. */
        g_assert_true(g_str_has_prefix(g_variant_get_string(listen, NULL), "127.0.0.1:"));
        g_assert_cmpstr(g_variant_get_string(listen, NULL), !=, "127.0.0.1:0");
        g_assert_nonnull(strstr(r.out, http_line));
        g_assert_true(g_regex_match_simple("\n  Free space: [0-9.]+[BKMGTPE] \\(keeps [0-9.]+[BKMGTPE] free\\)\n",
                                           r.out, 0, 0));
        g_assert_nonnull(strstr(r.out, "        Pins: 0\n"));

        /* status is the default verb; --user reaches the same daemon on the session bus. */
        assert_success(def);
        g_assert_cmpstr(def.out, ==, r.out);
        assert_success(user);
        g_assert_cmpstr(user.out, ==, r.out);

        /* JSON: every property, as the daemon reports it. */
        assert_success(js);
        g_assert_null(strchr(g_strchomp(js.out), '\n'));
        j = parse_json(js.out);
        all = g_dbus_connection_call_sync(test_bus_connection(f->bus), TEST_BUS_NAME, TEST_BUS_PATH,
                                          "org.freedesktop.DBus.Properties", "GetAll",
                                          g_variant_new("(s)", TEST_BUS_IFACE), G_VARIANT_TYPE("(a{sv})"),
                                          G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, &error);
        g_assert_no_error(error);
        props = g_variant_get_child_value(all, 0);
        for (size_t i = 0; i < G_N_ELEMENTS(map); i++) {
                g_autoptr(GVariant) v = g_variant_lookup_value(props, map[i].property, NULL);

                g_assert_nonnull(v);
                if (g_variant_is_of_type(v, G_VARIANT_TYPE_STRING))
                        g_assert_cmpstr(json_str(j, map[i].key), ==, g_variant_get_string(v, NULL));
                else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32))
                        g_assert_cmpuint(json_u64(j, map[i].key), ==, g_variant_get_uint32(v));
                else
                        g_assert_cmpuint(json_u64(j, map[i].key), ==, g_variant_get_uint64(v));
        }
        g_assert_cmpuint(json_u64(j, "running_jobs"), ==, 0);
        json_decref(j);
}

/* ---- list ----------------------------------------------------------------------------------------- */

static void test_list(Fixture *f, gconstpointer data) {
        g_autoptr(GVariant) reply = NULL, images = NULL, max = NULL;
        g_auto(GStrv) l = NULL, nl = NULL, by_size = NULL, by_id = NULL, by_hits = NULL;
        GVariantIter iter;
        const char *id, *checksum;
        guint64 size, hits, accessed, modified;
        json_t *j, *jp;

        /* One hit on the small image: it becomes the most recently accessed. */
        open_image(f, IMAGE_SMALL);

        g_autofree char *run_out_of_list = NULL;
        {
                g_auto(Run) r = run_ctl("list", NULL);

                assert_success(r);
                run_out_of_list = g_strdup(r.out);
                l = lines(r.out);
                g_assert_cmpuint(g_strv_length(l), ==, 5); /* header, 2 images, blank, footer */
                g_assert_true(g_regex_match_simple("^ID +SIZE +HITS +LAST ACCESSED +CHECKSUM$", l[0], 0, 0));
                g_assert_true(g_str_has_prefix(l[1], IMAGE_SMALL " "));
                g_assert_true(g_regex_match_simple("^" IMAGE_SMALL " +2\\.9K +1 +(just now|[0-9]+s ago) +-$",
                                                   l[1], 0, 0));
                g_assert_true(g_regex_match_simple("^" IMAGE_BIG " +195\\.3K +0 +(never|just now|[0-9]+s ago) +-$",
                                                   l[2], 0, 0));
                g_assert_cmpstr(l[3], ==, "");
                g_assert_true(g_regex_match_simple("^2 images, [0-9.]+K of 10G\\.$", l[4], 0, 0));
        }

        {
                g_auto(Run) alias = run_ctl("list-cached", NULL);
                g_auto(Run) r = run_ctl("--no-legend", "list", NULL);

                assert_success(r);
                nl = lines(r.out);
                /* Only the rows (sized without the header), same order. */
                g_assert_cmpuint(g_strv_length(nl), ==, 2);
                g_assert_true(g_regex_match_simple("^" IMAGE_SMALL " +2\\.9K  1  ", nl[0], 0, 0));
                g_assert_true(g_str_has_prefix(nl[1], IMAGE_BIG " "));

                assert_success(alias);
                g_assert_cmpstr(alias.out, ==, run_out_of_list);
        }

        {
                g_auto(Run) s = run_ctl("--no-legend", "--sort=size", "list", NULL);
                g_auto(Run) i = run_ctl("list", "--no-legend", "--sort=id", NULL); /* options after the verb */
                g_auto(Run) h = run_ctl("--no-legend", "--sort=hits", "list", NULL);
                g_auto(Run) bad = run_ctl("--sort=color", "list", NULL);

                assert_success(s);
                assert_success(i);
                assert_success(h);
                by_size = lines(s.out);
                by_id = lines(i.out);
                by_hits = lines(h.out);
                g_assert_true(g_str_has_prefix(by_size[0], IMAGE_BIG " "));
                g_assert_true(g_str_has_prefix(by_id[0], IMAGE_BIG " ")); /* '6' sorts before 'c' */
                g_assert_true(g_str_has_prefix(by_hits[0], IMAGE_SMALL " "));
                assert_error_line(bad, "Invalid --sort= key 'color': expected id, size, hits, accessed or modified.");
        }

        /* JSON: exactly ListImages' records, in the order of the text. */
        {
                g_auto(Run) r = run_ctl("--json=short", "list", NULL);
                g_auto(Run) p = run_ctl("--json=pretty", "list", NULL);
                size_t n = 0;

                assert_success(r);
                assert_success(p);
                j = parse_json(r.out);
                jp = parse_json(p.out);
                g_assert_true(json_equal(j, jp));
                g_assert_nonnull(strstr(p.out, "\n  {"));
                g_assert_true(json_is_array(j));

                reply = call_ok(f, "ListImages", NULL, "(a(stttts))");
                images = g_variant_get_child_value(reply, 0);
                g_assert_cmpuint(json_array_size(j), ==, g_variant_n_children(images));
                g_variant_iter_init(&iter, images);
                while (g_variant_iter_next(&iter, "(&stttt&s)", &id, &size, &hits, &accessed, &modified, &checksum)) {
                        json_t *o = NULL;

                        for (size_t k = 0; k < json_array_size(j); k++)
                                if (g_str_equal(json_str(json_array_get(j, k), "id"), id))
                                        o = json_array_get(j, k);
                        g_assert_nonnull(o);
                        g_assert_cmpuint(json_u64(o, "size"), ==, size);
                        g_assert_cmpuint(json_u64(o, "hits"), ==, hits);
                        g_assert_cmpuint(json_u64(o, "last_accessed"), ==, accessed);
                        g_assert_cmpuint(json_u64(o, "last_modified"), ==, modified);
                        g_assert_cmpstr(json_str(o, "checksum"), ==, checksum);
                        n++;
                }
                g_assert_cmpuint(n, ==, 2);
                g_assert_cmpstr(json_str(json_array_get(j, 0), "id"), ==, IMAGE_SMALL);
                json_decref(j);
                json_decref(jp);
        }

        max = get_property(f, "MaxSize");
        g_assert_cmpuint(g_variant_get_uint64(max), ==, 10ULL << 30);
}

static void test_list_empty(Fixture *f, gconstpointer data) {
        g_auto(Run) r = run_ctl("list", NULL);
        g_auto(Run) nl = run_ctl("--no-legend", "list", NULL);
        g_auto(Run) js = run_ctl("--json=short", "list", NULL);
        g_auto(Run) q = run_ctl("list-queued", NULL);
        g_auto(Run) v = run_ctl("verify", NULL);

        assert_success(r);
        g_assert_cmpstr(r.out, ==, "No images cached.\n");
        assert_success(nl);
        g_assert_cmpstr(nl.out, ==, "");
        assert_success(js);
        g_assert_cmpstr(js.out, ==, "[]\n");
        assert_success(q);
        g_assert_cmpstr(q.out, ==, "No images queued.\n");
        assert_success(v);
        g_assert_cmpstr(v.out, ==, "No images cached, nothing to verify.\n");
}

/* ---- show ----------------------------------------------------------------------------------------- */

static void test_show(Fixture *f, gconstpointer data) {
        g_autoptr(GVariant) reply = NULL;
        const char *id, *checksum;
        guint64 size, hits, accessed, modified;

        {
                g_auto(Run) r = run_ctl("show", IMAGE_BIG, NULL);

                assert_success(r);
                g_assert_nonnull(strstr(r.out, "           Id: " IMAGE_BIG "\n"));
                g_assert_nonnull(strstr(r.out, "         Size: 195.3K (200000 bytes)\n"));
                g_assert_nonnull(strstr(r.out, "         Hits: 0\n"));
                g_assert_nonnull(strstr(r.out, "\nLast accessed: "));
                g_assert_nonnull(strstr(r.out, "\nLast modified: "));
                g_assert_nonnull(strstr(r.out, "     Checksum: unknown\n"));
        }

        {
                g_auto(Run) r = run_ctl("--json=pretty", "show", IMAGE_BIG, NULL);
                json_t *j;

                assert_success(r);
                j = parse_json(r.out);
                reply = call_ok(f, "GetImage", g_variant_new("(s)", IMAGE_BIG), "((stttts))");
                g_variant_get(reply, "((&stttt&s))", &id, &size, &hits, &accessed, &modified, &checksum);
                g_assert_cmpstr(json_str(j, "id"), ==, id);
                g_assert_cmpuint(json_u64(j, "size"), ==, size);
                g_assert_cmpuint(json_u64(j, "hits"), ==, hits);
                g_assert_cmpuint(json_u64(j, "last_accessed"), ==, accessed);
                g_assert_cmpuint(json_u64(j, "last_modified"), ==, modified);
                g_assert_cmpstr(json_str(j, "checksum"), ==, checksum);
                json_decref(j);
        }

        /* A missing image: the daemon's message after what failed. */
        {
                g_auto(Run) r = run_ctl("show", "not-cached", NULL);
                g_autofree char *msg = call_error_message(f, "GetImage", g_variant_new("(s)", "not-cached"));
                g_autofree char *line = g_strdup_printf("Failed to get image not-cached: %s", msg);

                assert_error_line(r, line);
                g_assert_cmpstr(r.out, ==, "");
        }

        /* Too many arguments. */
        {
                g_auto(Run) r = run_ctl("show", IMAGE_BIG, IMAGE_SMALL, NULL);
                assert_error_line(r, "Too many arguments for 'show', see --help.");
        }
}

/* Bad ids are refused before any call, with the validator's words, the same the daemon uses. */
static void test_bad_ids(Fixture *f, gconstpointer data) {
        static const char *const bad[] = { "../etc/passwd", ".hidden", "a b", "queue", "x/y" };
        g_autofree char *too_long = g_strnfill(IMAGE_ID_MAX + 1, 'a');
        static const char *const verbs[] = { "show", "queue", "dequeue", "delete", "verify", "fetch" };

        for (size_t i = 0; i < G_N_ELEMENTS(bad) + 1; i++) {
                const char *id = i < G_N_ELEMENTS(bad) ? bad[i] : too_long;
                g_autofree char *line = g_strdup_printf("Invalid image id '%s': %s", id, image_id_invalid_reason(id));

                g_assert_nonnull(image_id_invalid_reason(id));
                for (size_t v = 0; v < G_N_ELEMENTS(verbs); v++) {
                        g_auto(Run) r = run_ctl(verbs[v], id, NULL);
                        assert_error_line(r, line);
                }

                /* The daemon says the same for the same id (the ones it can print unescaped, unshortened). */
                if (strlen(id) < 60) {
                        g_autofree char *msg = call_error_message(f, "GetImage", g_variant_new("(s)", id));
                        g_assert_cmpstr(msg, ==, line);
                }
        }

        /* Nothing was deleted on the way: all ids are checked first. */
        {
                g_auto(Run) r = run_ctl("delete", IMAGE_SMALL, "../x", NULL);
                assert_error_line(r, "Invalid image id '../x': an image id must not start with '.'");
                g_assert_true(image_exists(f, IMAGE_SMALL));
        }

        /* "--" ends the options, so an id starting with '-' can be given. */
        {
                g_auto(Run) r = run_ctl("queue", "--", "-dash-image", NULL);
                assert_success(r);
                g_assert_cmpstr(r.out, ==, "Queued image -dash-image.\n");
        }
}

/* ---- queue ---------------------------------------------------------------------------------------- */

static void test_queue(Fixture *f, gconstpointer data) {
        {
                g_auto(Run) r = run_ctl("queue", "fedora-40", "debian-12", NULL);
                assert_success(r);
                g_assert_cmpstr(r.out, ==, "Queued image fedora-40.\nQueued image debian-12.\n");
        }
        {
                /* Already queued, already cached: reported, not an error. */
                g_auto(Run) r = run_ctl("queue-image", "fedora-40", IMAGE_SMALL, NULL);
                assert_success(r);
                g_assert_cmpstr(r.out, ==, "Image fedora-40 is already queued.\n"
                                           "Image " IMAGE_SMALL " is already cached.\n");
        }
        {
                g_auto(Run) r = run_ctl("--json=short", "queue", "debian-12", "fedora-40", IMAGE_BIG, NULL);

                assert_success(r);
                g_assert_cmpstr(r.out, ==, "[{\"id\":\"debian-12\",\"queued\":false,\"already\":\"queued\"},"
                                           "{\"id\":\"fedora-40\",\"queued\":false,\"already\":\"queued\"},"
                                           "{\"id\":\"" IMAGE_BIG "\",\"queued\":false,\"already\":\"cached\"}]\n");
        }
        {
                g_auto(Run) r = run_ctl("--json=short", "queue", "--checksum=md5:d41d8cd98f00b204e9800998ecf8427e",
                                        "arch", NULL);
                json_t *j;

                assert_success(r);
                j = parse_json(r.out);
                g_assert_cmpuint(json_array_size(j), ==, 1);
                g_assert_cmpstr(json_str(json_array_get(j, 0), "id"), ==, "arch");
                g_assert_true(json_is_true(json_object_get(json_array_get(j, 0), "queued")));
                json_decref(j);
        }
        {
                g_auto(Run) bad = run_ctl("queue", "--checksum=sha256:xyz", "arch2", NULL);
                g_auto(Run) two = run_ctl("queue", "--checksum=md5:d41d8cd98f00b204e9800998ecf8427e", "a1", "a2", NULL);

                assert_error_line(bad, "Invalid checksum 'sha256:xyz': expected sha512:HEX, sha256:HEX, md5:HEX or "
                                       "bare hex digits.");
                assert_error_line(two, "--checksum= applies to a single image; give one id only.");
        }
        g_assert_cmpuint(count_queued(f), ==, 3);

        /* list-queued: oldest first, with the checksum stored with the entry and what is known of its
         * fetch (nothing here: no upstream); its JSON equals ListQueuedDetails, whose first two fields
         * are ListQueued's. */
        {
                g_auto(Run) r = run_ctl("list-queued", NULL);
                g_auto(Run) nl = run_ctl("--no-legend", "list-queued", NULL);
                g_auto(Run) js = run_ctl("--json=short", "list-queued", NULL);
                g_auto(GStrv) l = NULL, n = NULL;
                g_autoptr(GVariant) reply = call_ok(f, "ListQueued", NULL, "(a(st))");
                g_autoptr(GVariant) a = g_variant_get_child_value(reply, 0);
                g_autoptr(GVariant) dreply = call_ok(f, "ListQueuedDetails", NULL, "(a(stsst))");
                g_autoptr(GVariant) d = g_variant_get_child_value(dreply, 0);
                json_t *j;

                assert_success(r);
                l = lines(r.out);
                g_assert_cmpuint(g_strv_length(l), ==, 6);
                g_assert_true(g_regex_match_simple("^ID +QUEUED +QUEUED AT +CHECKSUM +NEXT ATTEMPT +LAST ERROR$",
                                                   l[0], 0, 0));
                g_assert_true(g_regex_match_simple("^arch .* md5:d41d8cd98f00… +- +-$", l[3], 0, 0));
                g_assert_true(g_regex_match_simple("^fedora-40 .* - +- +-$", l[1], 0, 0));
                g_assert_cmpstr(l[5], ==, "3 images queued.");

                assert_success(nl);
                n = lines(nl.out);
                g_assert_cmpuint(g_strv_length(n), ==, 3);

                assert_success(js);
                j = parse_json(js.out);
                g_assert_cmpuint(json_array_size(j), ==, g_variant_n_children(a));
                for (size_t i = 0; i < g_variant_n_children(a); i++) {
                        const char *id;
                        guint64 at;
                        g_autofree char *w = first_word(n[i]);

                        const char *did, *sum, *last_error;
                        guint64 dat, next;
                        json_t *row = json_array_get(j, i);

                        g_variant_get_child(a, i, "(&st)", &id, &at);
                        g_variant_get_child(d, i, "(&st&s&st)", &did, &dat, &sum, &last_error, &next);
                        g_assert_cmpstr(did, ==, id);
                        g_assert_cmpuint(dat, ==, at);
                        g_assert_cmpstr(sum, ==, g_str_equal(id, "arch") ? "md5:d41d8cd98f00b204e9800998ecf8427e" : "");
                        g_assert_cmpstr(last_error, ==, "");
                        g_assert_cmpuint(next, ==, 0);
                        g_assert_cmpstr(json_str(row, "id"), ==, id);
                        g_assert_cmpuint(json_u64(row, "queued_at"), ==, at);
                        g_assert_cmpstr(json_str(row, "checksum"), ==, sum);
                        g_assert_cmpstr(json_str(row, "last_error"), ==, "");
                        g_assert_cmpuint(json_u64(row, "next_attempt"), ==, 0);
                        g_assert_cmpstr(w, ==, id);
                }
                json_decref(j);
        }

        {
                g_auto(Run) r = run_ctl("dequeue", "debian-12", NULL);
                g_auto(Run) again = run_ctl("delete-queued-image", "debian-12", NULL);
                g_autofree char *msg = call_error_message(f, "DequeueImage", g_variant_new("(s)", "debian-12"));
                g_autofree char *line = g_strdup_printf("Failed to dequeue image debian-12: %s", msg);

                assert_success(r);
                g_assert_cmpstr(r.out, ==, "Removed image debian-12 from the queue.\n");
                assert_error_line(again, line);
        }
        g_assert_cmpuint(count_queued(f), ==, 2);

        {
                /* stdin is no terminal: no prompt, it proceeds. */
                g_auto(Run) r = run_ctl("dequeue-all", NULL);
                g_auto(Run) none = run_ctl("--json=short", "delete-all-queued-images", NULL);

                assert_success(r);
                g_assert_cmpstr(r.out, ==, "Removed 2 images from the queue.\n");
                assert_success(none);
                g_assert_cmpstr(none.out, ==, "{\"dequeued\":0}\n");
        }
        g_assert_cmpuint(count_queued(f), ==, 0);
}

/* ---- delete --------------------------------------------------------------------------------------- */

static void test_delete(Fixture *f, gconstpointer data) {
        g_autofree char *msg = call_error_message(f, "DeleteImage", g_variant_new("(s)", "not-cached"));
        g_autofree char *line = g_strdup_printf("Failed to delete image not-cached: %s", msg);

        {
                g_auto(Run) r = run_ctl("delete", IMAGE_SMALL, NULL);
                assert_success(r);
                g_assert_cmpstr(r.out, ==, "Deleted image " IMAGE_SMALL ".\n");
                g_assert_false(image_exists(f, IMAGE_SMALL));
        }
        {
                /* One failure does not stop the others; the exit status reports it. */
                g_auto(Run) r = run_ctl("delete-cached-image", "not-cached", IMAGE_BIG, NULL);
                assert_error_line(r, line);
                g_assert_cmpstr(r.out, ==, "Deleted image " IMAGE_BIG ".\n");
                g_assert_false(image_exists(f, IMAGE_BIG));
        }
        {
                g_auto(Run) q = run_ctl("-q", "delete", "not-cached", NULL);
                assert_error_line(q, line);
                g_assert_cmpstr(q.out, ==, "");
        }
}

static void test_delete_all(Fixture *f, gconstpointer data) {
        g_auto(Run) r = run_ctl("delete-all", NULL);
        g_auto(Run) again = run_ctl("--json=short", "delete-all-cached-images", NULL);
        g_auto(Run) quiet = run_ctl("-q", "delete-all", NULL);

        assert_success(r);
        g_assert_cmpstr(r.out, ==, "Deleted 2 images.\n");
        g_assert_false(image_exists(f, IMAGE_SMALL));
        assert_success(again);
        g_assert_cmpstr(again.out, ==, "{\"deleted\":0}\n");
        assert_success(quiet);
        g_assert_cmpstr(quiet.out, ==, "");
}

/* ---- pins ----------------------------------------------------------------------------------------- */

static guint count_pins(Fixture *f) {
        g_autoptr(GVariant) v = call_ok(f, "ListPins", NULL, "(a(sus))");
        g_autoptr(GVariant) a = g_variant_get_child_value(v, 0);

        return (guint) g_variant_n_children(a);
}

static char *own_comm(void) {
        g_autofree char *comm = NULL;

        g_assert_true(g_file_get_contents("/proc/self/comm", &comm, NULL, NULL));
        return g_strdup(g_strchomp(comm));
}

/* One pin in a --json pins listing: its pid, after checking the rest. */
static json_int_t assert_json_pin(const char *text, const char *id, const char *command, const char *why) {
        json_t *j = parse_json(text), *p;

        g_assert_true(json_is_array(j));
        g_assert_cmpuint(json_array_size(j), ==, 1);
        p = json_array_get(j, 0);
        g_assert_cmpstr(json_string_value(json_object_get(p, "id")), ==, id);
        g_assert_cmpstr(json_string_value(json_object_get(p, "command")), ==, command);
        g_assert_cmpstr(json_string_value(json_object_get(p, "why")), ==, why);
        json_int_t pid = json_integer_value(json_object_get(p, "pid"));
        g_assert_cmpint(pid, >, 0);
        json_decref(j);
        return pid;
}

static void test_pins(Fixture *f, gconstpointer data) {
        g_autofree char *comm = own_comm(), *pid = g_strdup_printf("%d", (int) getpid());

        {
                g_auto(Run) r = run_ctl("pins", NULL);
                assert_success(r);
                g_assert_cmpstr(r.out, ==, "No images pinned.\n");
        }

        int fd = test_bus_call_fd(f->bus, NULL, "PinImage", g_variant_new("(ss)", IMAGE_SMALL, "booting a VM"));
        {
                g_auto(Run) r = run_ctl("pins", NULL);
                g_auto(GStrv) l = NULL;

                assert_success(r);
                l = lines(r.out);
                g_assert_cmpuint(g_strv_length(l), ==, 4);
                g_assert_true(g_regex_match_simple("^IMAGE +PID +COMMAND +WHY$", l[0], 0, 0));
                g_autofree char *row = g_strdup_printf("^%s +%s +%s +booting a VM$", IMAGE_SMALL, pid, comm);
                g_assert_true(g_regex_match_simple(row, l[1], 0, 0));
                g_assert_cmpstr(l[3], ==, "1 pin.");
        }
        {
                g_auto(Run) r = run_ctl("--json=short", "pins", NULL);
                assert_success(r);
                g_assert_cmpint(assert_json_pin(r.out, IMAGE_SMALL, comm, "booting a VM"), ==, getpid());
        }
        {
                g_auto(Run) r = run_ctl("status", NULL);
                g_auto(Run) js = run_ctl("--json=short", "status", NULL);
                json_t *j;

                assert_success(r);
                g_assert_nonnull(strstr(r.out, "        Pins: 1\n"));
                assert_success(js);
                j = parse_json(js.out);
                g_assert_cmpuint(json_u64(j, "pin_count"), ==, 1);
                json_decref(j);
        }

        /* The daemon sees the hang-up before the next call: the pin is gone at once. */
        close(fd);
        g_assert_cmpuint(count_pins(f), ==, 0);
}

/* pin ID -- CMD: the command runs with the image pinned (it lists the pin and fails to delete the image
 * itself), imgcachectl exits with its status, and the pin is gone afterwards. */
static void test_pin_command(Fixture *f, gconstpointer data) {
        const char *script = "\"$0\" --json=short pins && \"$0\" delete " IMAGE_SMALL "; exit 3";

        {
                g_auto(Run) r = run_ctl("pin", IMAGE_SMALL, "--why=held by a command", "--", "sh", "-c", script,
                                        ctl_path(), NULL);
                g_assert_cmpint(r.status, ==, 3);
                json_int_t holder = assert_json_pin(r.out, IMAGE_SMALL, "imgcachectl", "held by a command");
                g_assert_cmpint(holder, !=, getpid());
                g_autofree char *refused = g_strdup_printf(
                        "imgcachectl: Failed to delete image %s: Image %s is pinned by pid %d: held by a command. "
                        "'imgcachectl pins' lists the pins; --ignore-pins deletes it anyway.\n",
                        IMAGE_SMALL, IMAGE_SMALL, (int) holder);
                g_assert_cmpstr(r.err, ==, refused);
                g_assert_true(image_exists(f, IMAGE_SMALL));
                g_assert_cmpuint(count_pins(f), ==, 0);
        }
        {
                /* Without --why=, the command's name. The fd is not passed on: ls sees stdin, stdout,
                 * stderr and the directory it lists, nothing else. */
                const char *fds = "ls /proc/self/fd | tr '\\n' ' '; echo; \"$0\" --json=short pins";
                g_auto(Run) r = run_ctl("pin", IMAGE_SMALL, "--", "sh", "-c", fds, ctl_path(), NULL);
                assert_success(r);
                g_assert_true(g_str_has_prefix(r.out, "0 1 2 3 \n"));
                (void) assert_json_pin(strchr(r.out, '\n') + 1, IMAGE_SMALL, "imgcachectl", "sh");
        }
        {
                /* Killed by a signal: 128 + the signal, as a shell says. */
                g_auto(Run) r = run_ctl("pin", IMAGE_SMALL, "--", "sh", "-c", "kill -TERM $$", NULL);
                g_assert_cmpint(r.status, ==, 128 + SIGTERM);
        }
        {
                g_auto(Run) r = run_ctl("pin", IMAGE_SMALL, "--", "/nonexistent/command", NULL);
                g_assert_cmpint(r.status, ==, 127);
                g_assert_nonnull(strstr(r.err, "Failed to run /nonexistent/command"));
        }
        {
                g_auto(Run) r = run_ctl("pin", "not-cached", "--", "true", NULL);
                assert_error_line(r, "Failed to pin image not-cached: Image not-cached is not cached.");
        }
        g_assert_cmpuint(count_pins(f), ==, 0);
}

/* delete refuses a pinned image with one clear line; delete-all keeps it; --ignore-pins deletes it. */
static void test_delete_pinned(Fixture *f, gconstpointer data) {
        int fd = test_bus_call_fd(f->bus, NULL, "PinImage", g_variant_new("(ss)", IMAGE_SMALL, "in use"));
        g_autofree char *line = g_strdup_printf("Failed to delete image %s: Image %s is pinned by pid %d: in use. "
                                                "'imgcachectl pins' lists the pins; --ignore-pins deletes it anyway.",
                                                IMAGE_SMALL, IMAGE_SMALL, (int) getpid());
        {
                g_auto(Run) r = run_ctl("-f", "delete", IMAGE_SMALL, NULL);
                assert_error_line(r, line);
                g_assert_true(image_exists(f, IMAGE_SMALL));
        }
        {
                g_auto(Run) r = run_ctl("delete-all", NULL);
                assert_success(r);
                g_assert_cmpstr(r.out, ==, "Deleted 1 image.\n");
                g_assert_true(image_exists(f, IMAGE_SMALL));
                g_assert_false(image_exists(f, IMAGE_BIG));
        }
        {
                g_auto(Run) r = run_ctl("delete", "--ignore-pins", IMAGE_SMALL, NULL);
                assert_success(r);
                g_assert_cmpstr(r.out, ==, "Deleted image " IMAGE_SMALL ".\n");
                g_assert_false(image_exists(f, IMAGE_SMALL));
                g_assert_cmpuint(count_pins(f), ==, 0); /* the pin went with the image */
        }
        close(fd);
}

/* ---- prompts on a terminal ------------------------------------------------------------------------ */

static void test_prompt(Fixture *f, gconstpointer data) {
        {
                const char *args[] = { "delete", IMAGE_SMALL, NULL };
                PtyRun r = run_pty(args, "[y/N] ", "n\n", 0);

                g_assert_nonnull(strstr(r.output, "Delete cached image " IMAGE_SMALL "? [y/N] "));
                g_assert_nonnull(strstr(r.output, "Aborted."));
                g_assert_cmpint(r.status, ==, 1);
                g_assert_true(image_exists(f, IMAGE_SMALL));
                g_free(r.output);
        }
        {
                /* EOF (Ctrl-D) is no, too. */
                const char *args[] = { "delete-all", NULL };
                PtyRun r = run_pty(args, "[y/N] ", "\004", 0);

                g_assert_nonnull(strstr(r.output, "Delete all cached images? [y/N] "));
                g_assert_cmpint(r.status, ==, 1);
                g_assert_true(image_exists(f, IMAGE_SMALL));
                g_assert_true(image_exists(f, IMAGE_BIG));
                g_free(r.output);
        }
        {
                const char *args[] = { "delete", IMAGE_SMALL, NULL };
                PtyRun r = run_pty(args, "[y/N] ", "y\n", 0);

                g_assert_nonnull(strstr(r.output, "Deleted image " IMAGE_SMALL "."));
                g_assert_cmpint(r.status, ==, 0);
                g_assert_false(image_exists(f, IMAGE_SMALL));
                g_free(r.output);
        }
        {
                /* --force: no question on a terminal either. */
                const char *args[] = { "-f", "delete", IMAGE_BIG, NULL };
                PtyRun r = run_pty(args, NULL, NULL, 0);

                g_assert_null(strstr(r.output, "[y/N]"));
                g_assert_nonnull(strstr(r.output, "Deleted image " IMAGE_BIG "."));
                g_assert_cmpint(r.status, ==, 0);
                g_assert_false(image_exists(f, IMAGE_BIG));
                g_free(r.output);
        }
        {
                /* dequeue-all asks too; "yes" counts. */
                g_auto(Run) q = run_ctl("queue", "fedora-40", NULL);
                const char *args[] = { "dequeue-all", NULL };
                PtyRun r;

                assert_success(q);
                r = run_pty(args, "[y/N] ", "yes\n", 0);
                g_assert_nonnull(strstr(r.output, "Remove all images from the prefetch queue? [y/N] "));
                g_assert_nonnull(strstr(r.output, "Removed 1 image from the queue."));
                g_assert_cmpint(r.status, ==, 0);
                g_free(r.output);
        }
        {
                /* Non-destructive verbs never ask. */
                const char *args[] = { "queue", "fedora-40", NULL };
                PtyRun r = run_pty(args, NULL, NULL, 0);

                g_assert_null(strstr(r.output, "[y/N]"));
                g_assert_cmpint(r.status, ==, 0);
                g_free(r.output);
        }
}

/* ---- maintenance ---------------------------------------------------------------------------------- */

static void test_prune(Fixture *f, gconstpointer data) {
        g_autoptr(GVariant) before = get_property(f, "CurrentSize");
        g_autoptr(GVariant) count_before = get_property(f, "ImageCount");
        g_autoptr(GVariant) after = NULL, count_after = NULL, max = NULL;
        g_auto(Run) js = run_ctl("--json=short", "prune", NULL);
        g_auto(Run) text = run_ctl("prune", NULL);
        json_t *j;

        assert_success(js);
        j = parse_json(js.out);
        after = get_property(f, "CurrentSize");
        count_after = get_property(f, "ImageCount");
        max = get_property(f, "MaxSize");

        /* What prune reports is what left the cache, and the cache now fits. */
        g_assert_cmpuint(json_u64(j, "files"), ==, g_variant_get_uint32(count_before) - g_variant_get_uint32(count_after));
        g_assert_cmpuint(json_u64(j, "bytes"), ==, g_variant_get_uint64(before) - g_variant_get_uint64(after));
        g_assert_cmpuint(json_u64(j, "files"), >=, 1);
        g_assert_cmpuint(g_variant_get_uint64(after), <=, g_variant_get_uint64(max));
        json_decref(j);

        assert_success(text);
        g_assert_cmpstr(text.out, ==, "Nothing to prune: the cache fits its maximum size and keeps its free space.\n");
}

static void test_prune_text(Fixture *f, gconstpointer data) {
        g_auto(Run) r = run_ctl("prune", NULL);

        assert_success(r);
        g_assert_true(g_regex_match_simple("^Pruned [12] images?, freeing [0-9.]+K\\.\n$", r.out, 0, 0));
}

/* One image: "image", not "images". The small one was used last, so only the big one goes. */
static void test_prune_one(Fixture *f, gconstpointer data) {
        open_image(f, IMAGE_SMALL);
        g_auto(Run) r = run_ctl("prune", NULL);

        assert_success(r);
        g_assert_cmpstr(r.out, ==, "Pruned 1 image, freeing 195.3K.\n");
        g_assert_true(image_exists(f, IMAGE_SMALL));
}

static void test_clean_text(Fixture *f, gconstpointer data) {
        g_auto(Run) r = run_ctl("clean", "--stall-time=1d", NULL);

        assert_success(r);
        g_assert_cmpstr(r.out, ==, "Removed 1 stalled incomplete file and 1 invalid file.\n");
}

static void test_clean(Fixture *f, gconstpointer data) {
        g_autofree char *invalid = g_build_filename(test_bus_cache_dir(f->bus), "invalid", "bad-image", NULL);
        g_autofree char *stalled = g_build_filename(test_bus_cache_dir(f->bus), "incomplete", "stalled-image", NULL);
        g_auto(Run) js = run_ctl("--json=short", "clean", "--stall-time=1d", NULL);
        g_auto(Run) text = run_ctl("clean", NULL);
        g_auto(Run) bad = run_ctl("clean", "--stall-time=soon", NULL);
        json_t *j;

        assert_success(js);
        j = parse_json(js.out);
        g_assert_cmpuint(json_u64(j, "stalled"), ==, 1);
        g_assert_cmpuint(json_u64(j, "invalid"), ==, 1);
        json_decref(j);
        g_assert_false(g_file_test(invalid, G_FILE_TEST_EXISTS));
        g_assert_false(g_file_test(stalled, G_FILE_TEST_EXISTS));

        assert_success(text);
        g_assert_cmpstr(text.out, ==, "Removed 0 stalled incomplete files and 0 invalid files.\n");
        assert_error_line(bad, "Invalid --stall-time= 'soon': expected a positive time span such as 3600, 90min or 1d.");
}

static void test_verify(Fixture *f, gconstpointer data) {
        {
                g_auto(Run) r = run_ctl("verify", NULL);
                g_auto(Run) one = run_ctl("--json=short", "verify", IMAGE_SMALL, NULL);

                assert_success(r);
                /* In ListImages' order (by id). */
                g_assert_cmpstr(r.out, ==, "Image " IMAGE_BIG ": OK\nImage " IMAGE_SMALL ": OK\n");
                assert_success(one);
                g_assert_cmpstr(one.out, ==, "[{\"id\":\"" IMAGE_SMALL "\",\"good\":true}]\n");
        }
        {
                /* The first verification recorded the digest of the adopted files: list shows it short,
                 * show in full. */
                g_auto(Run) l = run_ctl("--no-legend", "--sort=id", "list", NULL);
                g_auto(Run) s = run_ctl("show", IMAGE_SMALL, NULL);
                g_auto(GStrv) rows = NULL;

                assert_success(l);
                rows = lines(l.out);
                g_assert_true(g_regex_match_simple("  sha[0-9]+:[0-9a-f]{12}(…|\\.\\.\\.)$", rows[1], 0, 0));
                g_assert_true(g_regex_match_simple("\n     Checksum: sha[0-9]+:[0-9a-f]{64,128}\n", s.out, 0, 0));
        }
        {
                /* Same size, other content: it fails, goes to invalid/, and the exit status says so. */
                g_autofree char *invalid = g_build_filename(test_bus_cache_dir(f->bus), "invalid", IMAGE_SMALL, NULL);
                g_auto(Run) r = { .status = -1 };

                write_image(test_bus_cache_dir(f->bus), IMAGE_SMALL, SIZE_SMALL, 'X');
                r = run_ctl("verify", IMAGE_SMALL, IMAGE_BIG, NULL);
                assert_error_line(r, "Image " IMAGE_SMALL " failed verification and was moved to invalid/.");
                g_assert_cmpstr(r.out, ==, "Image " IMAGE_BIG ": OK\n");
                g_assert_false(image_exists(f, IMAGE_SMALL));
                g_assert_true(g_file_test(invalid, G_FILE_TEST_EXISTS));
        }
        {
                g_auto(Run) r = run_ctl("verify", "not-cached", NULL);
                g_autofree char *msg = call_error_message(f, "Verify", g_variant_new("(s)", "not-cached"));
                g_autofree char *line = g_strdup_printf("Failed to verify image not-cached: %s", msg);

                assert_error_line(r, line);
        }
}

/* ---- jobs, before fetching exists: the daemon says NoUpstream ---------------------------------------- */

static void test_jobs_no_upstream(Fixture *f, gconstpointer data) {
        g_autofree char *fetch_msg = call_error_message(f, "FetchImage", g_variant_new("(ss)", "fedora-40", ""));
        g_autofree char *prefetch_msg = call_error_message(f, "Prefetch", NULL);
        g_autofree char *jobs_msg = call_error_message(f, "ListJobs", NULL);
        g_autofree char *fetch_line = g_strdup_printf("Failed to fetch image fedora-40: %s", fetch_msg);
        g_autofree char *prefetch_line = g_strdup_printf("Failed to prefetch: %s", prefetch_msg);
        g_autofree char *jobs_line = g_strdup_printf("Failed to list jobs: %s", jobs_msg);

        g_assert_nonnull(strstr(fetch_msg, "upstream"));

        {
                g_auto(Run) r = run_ctl("fetch", "fedora-40", NULL);
                g_auto(Run) nb = run_ctl("fetch", "--no-block", "--checksum=md5:d41d8cd98f00b204e9800998ecf8427e",
                                         "fedora-40", NULL);
                assert_error_line(r, fetch_line);
                assert_error_line(nb, fetch_line);
                g_assert_cmpstr(r.out, ==, "");
        }
        {
                g_auto(Run) two = run_ctl("fetch", "--checksum=md5:d41d8cd98f00b204e9800998ecf8427e", "a1", "a2", NULL);

                assert_error_line(two, "--checksum= applies to a single image; give one id only.");
        }
        {
                /* --json: one object per id, the failed ones too, with the daemon's message. */
                g_auto(Run) r = run_ctl("--json=short", "fetch", "fedora-40", "debian-12", NULL);
                json_t *a;

                g_assert_cmpint(r.status, ==, 1);
                a = parse_json(r.out);
                g_assert_cmpuint(json_array_size(a), ==, 2);
                for (size_t i = 0; i < 2; i++) {
                        json_t *o = json_array_get(a, i);

                        g_assert_cmpstr(json_str(o, "image_id"), ==, i == 0 ? "fedora-40" : "debian-12");
                        g_assert_cmpstr(json_str(o, "result"), ==, "failed");
                        g_assert_true(json_is_null(json_object_get(o, "job")));
                }
                g_assert_cmpstr(json_str(json_array_get(a, 0), "error"), ==, fetch_msg);
                json_decref(a);
        }
        {
                g_auto(Run) q = run_ctl("queue", "fedora-40", NULL);
                g_auto(Run) r = run_ctl("prefetch", NULL);
                g_auto(Run) nb = run_ctl("prefetch", "--no-block", NULL);

                assert_success(q);
                assert_error_line(r, prefetch_line);
                assert_error_line(nb, prefetch_line);
        }
        {
                g_auto(Run) r = run_ctl("jobs", NULL);
                assert_error_line(r, jobs_line);
        }
        {
                g_auto(Run) r = run_ctl("cancel", "1", NULL);
                g_auto(Run) bad = run_ctl("cancel", "first", NULL);

                g_assert_cmpint(r.status, ==, 1);
                g_assert_true(g_str_has_prefix(r.err, "imgcachectl: Failed to cancel job 1: "));
                assert_one_line(r.err);
                assert_error_line(bad, "Invalid job id 'first': expected a positive number, see \"imgcachectl jobs\".");
        }
        {
                /* On a terminal too: one clear line, no progress bar left behind. */
                const char *args[] = { "fetch", "fedora-40", NULL };
                PtyRun r = run_pty(args, NULL, NULL, 0);

                g_assert_cmpint(r.status, ==, 1);
                g_assert_nonnull(strstr(r.output, fetch_line));
                g_assert_null(strstr(r.output, "[#"));
                g_free(r.output);
        }
}

/* ---- buses ---------------------------------------------------------------------------------------- */

static void test_no_bus(Fixture *f, gconstpointer data) {
        g_autofree char *nowhere = g_strdup_printf("DBUS_SYSTEM_BUS_ADDRESS=unix:path=%s/no-such-bus",
                                                   test_bus_dir(f->bus));
        g_autofree char *nowhere_user = g_strdup_printf("DBUS_SESSION_BUS_ADDRESS=unix:path=%s/no-such-bus",
                                                        test_bus_dir(f->bus));
        const char *env[] = { nowhere, NULL };
        const char *env_user[] = { nowhere_user, NULL };
        g_auto(Run) r = run_ctl_env(env, "list", NULL);
        g_auto(Run) u = run_ctl_env(env_user, "--user", "list", NULL);

        g_autofree char *runtime_env = g_strdup_printf("XDG_RUNTIME_DIR=%s", test_bus_cache_dir(f->bus));
        const char *env_runtime[] = { "DBUS_SESSION_BUS_ADDRESS", runtime_env, NULL };
        g_auto(Run) rt = run_ctl_env(env_runtime, "--user", "list", NULL);
        g_autofree char *line = g_strdup_printf("Failed to connect to the system bus: No such file or directory "
                                                "(is the bus at %s running?)", nowhere + strlen("DBUS_SYSTEM_BUS_ADDRESS="));
        g_autofree char *line_user = g_strdup_printf("Failed to connect to the session bus: No such file or directory "
                                                     "(is the bus at %s running?)",
                                                     nowhere_user + strlen("DBUS_SESSION_BUS_ADDRESS="));
        g_autofree char *line_runtime = g_strdup_printf(
                "Failed to connect to the session bus: No such file or directory (DBUS_SESSION_BUS_ADDRESS is not set "
                "and %s/bus does not exist; start it in a user session or under dbus-run-session)",
                test_bus_cache_dir(f->bus));

        /* The words imgcached uses when it finds no bus (tests/daemon/test-daemon.c). */
        assert_error_line(r, line);
        assert_error_line(u, line_user);
        assert_error_line(rt, line_runtime);
}

/* -M and -H: which machine or host, and what to check. The host's ssh is a stand-in that fails as ssh
 * fails, printing its own reason first. */
static void test_remote_errors(Fixture *f, gconstpointer data) {
        g_autofree char *bin = g_build_filename(test_bus_dir(f->bus), "bin", NULL);
        g_autofree char *ssh = g_build_filename(bin, "ssh", NULL);
        g_autofree char *path_env = g_strdup_printf("PATH=%s:%s", bin, g_getenv("PATH"));
        const char *env[] = { path_env, NULL };
        g_autoptr(GError) error = NULL;

        {
                g_auto(Run) r = run_ctl("-M", "no-such-machine", "status", NULL);
                assert_error_line(r, "Failed to connect to the system bus of machine 'no-such-machine': Host is down "
                                     "(is the machine running? see machinectl list)");
        }

        g_assert_cmpint(g_mkdir(bin, 0755), ==, 0);
        g_assert_true(g_file_set_contents(ssh, "#!/bin/sh\necho \"ssh: Could not resolve hostname $3\" >&2\nexit 255\n",
                                          -1, &error));
        g_assert_cmpint(chmod(ssh, 0755), ==, 0);
        {
                g_auto(Run) r = run_ctl_env(env, "-H", "builder.invalid", "list", NULL);

                g_assert_cmpint(r.status, ==, 1);
                g_assert_true(g_str_has_prefix(r.err, "ssh: Could not resolve hostname builder.invalid\n"
                                                      "imgcachectl: Failed to connect to the system bus of host "
                                                      "'builder.invalid' over ssh: "));
                g_assert_true(g_str_has_suffix(r.err, " (does 'ssh builder.invalid' log in, and is D-Bus running "
                                                      "there?)\n"));
                g_assert_cmpstr(r.out, ==, "");
        }
}

static void test_activation(Fixture *f, gconstpointer data) {
        /* No daemon and no activation file: say so. */
        {
                g_auto(Run) r = run_ctl("status", NULL);

                g_assert_cmpint(r.status, ==, 1);
                g_assert_true(g_str_has_prefix(r.err, "imgcachectl: Failed to get the state of imgcached: "));
                g_assert_true(g_str_has_suffix(r.err, "Is imgcached installed and its D-Bus activation file in place?\n"));
        }
        {
                g_auto(Run) r = run_ctl("--user", "list", NULL);
                g_assert_true(g_str_has_suffix(r.err, "Is imgcached running (imgcached --user) on this session bus?\n"));
        }

        /* With the activation file, the first call starts it. */
        test_bus_install_activation(f->bus);
        {
                g_auto(Run) r = run_ctl("--no-legend", "--sort=id", "list", NULL);
                g_auto(GStrv) l = NULL;

                assert_success(r);
                l = lines(r.out);
                g_assert_cmpuint(g_strv_length(l), ==, 2);
                g_assert_true(g_str_has_prefix(l[0], IMAGE_BIG " "));
        }
        g_assert_cmpint(test_bus_name_owner_pid(f->bus), >, 0);
        g_assert_cmpint(test_bus_stop_daemon(f->bus), ==, 0);
}

/* A call refused by the bus: the bus configuration gets a deny rule for DeleteImage and is reloaded. */
static void test_denied(Fixture *f, gconstpointer data) {
        g_autofree char *conf_path = g_build_filename(test_bus_dir(f->bus), "bus.conf", NULL);
        g_autofree char *conf = NULL;
        g_autofree char *denied = NULL;
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = NULL;
        char *end;

        g_assert_true(g_file_get_contents(conf_path, &conf, NULL, &error));
        end = strstr(conf, "</policy>");
        g_assert_nonnull(end);
        *end = '\0';
        denied = g_strdup_printf("%s    <deny send_destination=\"" TEST_BUS_NAME "\" send_interface=\"" TEST_BUS_IFACE "\""
                                 " send_member=\"DeleteImage\"/>\n  </policy>%s",
                                 conf, end + strlen("</policy>"));
        g_assert_true(g_file_set_contents(conf_path, denied, -1, &error));
        v = g_dbus_connection_call_sync(test_bus_connection(f->bus), "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                        "org.freedesktop.DBus", "ReloadConfig", NULL, NULL, G_DBUS_CALL_FLAGS_NONE,
                                        TEST_BUS_TIMEOUT_MS, NULL, &error);
        g_assert_no_error(error);

        {
                /* "System bus" (the test points it at the same bus): polkit is what an admin would change. */
                g_auto(Run) r = run_ctl("delete", IMAGE_SMALL, NULL);

                g_assert_cmpint(r.status, ==, 1);
                g_assert_true(g_str_has_prefix(r.err, "imgcachectl: Failed to delete image " IMAGE_SMALL ": "));
                g_assert_true(g_str_has_suffix(r.err, ". Run as root, or ask the administrator to allow the polkit "
                                                      "action org.imgcache.delete (see polkit(8)).\n"));
                assert_one_line(r.err);
        }
        {
                /* Session bus: no polkit there, the bus policy said no. */
                g_auto(Run) r = run_ctl("--user", "--no-ask-password", "delete", IMAGE_SMALL, NULL);

                g_assert_cmpint(r.status, ==, 1);
                g_assert_true(g_str_has_suffix(r.err, ". The bus policy does not allow this call; check the D-Bus "
                                                      "configuration of org.imgcache.Manager.\n"));
        }
        g_assert_true(image_exists(f, IMAGE_SMALL));

        /* Others calls still work. */
        {
                g_auto(Run) r = run_ctl("show", IMAGE_SMALL, NULL);
                assert_success(r);
        }
}

/* ---- command line, help and man page ---------------------------------------------------------------- */

static char *read_source(const char *relative) {
        g_autofree char *path = g_build_filename(source_root(), relative, NULL);
        g_autoptr(GError) error = NULL;
        char *text = NULL;

        g_assert_true(g_file_get_contents(path, &text, NULL, &error));
        return text;
}

/* The verbs (and aliases) and the long options --help names. */
static void help_words(const char *help, GPtrArray *verbs, GPtrArray *options) {
        g_autoptr(GRegex) verb_re = g_regex_new("^  ([a-z][a-z-]+)( |$)", G_REGEX_MULTILINE, 0, NULL);
        g_autoptr(GRegex) alias_re = g_regex_new("alias: ([a-z-]+)", 0, 0, NULL);
        g_autoptr(GRegex) opt_re = g_regex_new("(--[a-z][a-z-]+)", 0, 0, NULL);
        g_autoptr(GMatchInfo) m = NULL;

        g_regex_match(verb_re, help, 0, &m);
        while (g_match_info_matches(m)) {
                g_ptr_array_add(verbs, g_match_info_fetch(m, 1));
                g_match_info_next(m, NULL);
        }
        g_clear_pointer(&m, g_match_info_free);
        g_regex_match(alias_re, help, 0, &m);
        while (g_match_info_matches(m)) {
                g_ptr_array_add(verbs, g_match_info_fetch(m, 1));
                g_match_info_next(m, NULL);
        }
        g_clear_pointer(&m, g_match_info_free);
        g_regex_match(opt_re, help, 0, &m);
        while (g_match_info_matches(m)) {
                g_ptr_array_add(options, g_match_info_fetch(m, 1));
                g_match_info_next(m, NULL);
        }
}

static void test_help(Fixture *f, gconstpointer data) {
        g_auto(Run) h = run_ctl("--help", NULL);
        g_auto(Run) hs = run_ctl("-h", NULL);
        g_auto(Run) v = run_ctl("--version", NULL);
        g_auto(Run) unknown = run_ctl("frobnicate", NULL);
        g_auto(Run) few = run_ctl("delete", NULL);
        g_auto(Run) badopt = run_ctl("--colour", "list", NULL);
        g_autoptr(GPtrArray) verbs = g_ptr_array_new_with_free_func(g_free);
        g_autoptr(GPtrArray) options = g_ptr_array_new_with_free_func(g_free);
        g_autofree char *man = read_source("man/imgcachectl.1.scd");
        g_autofree char *bash = read_source("completions/bash/imgcachectl");
        g_autofree char *zsh = read_source("completions/zsh/_imgcachectl");
        static const char *const design_verbs[] = {
                "status", "list", "list-cached", "list-queued", "show", "queue", "queue-image", "dequeue",
                "delete-queued-image", "dequeue-all", "delete-all-queued-images", "delete", "delete-cached-image",
                "delete-all", "delete-all-cached-images", "prune", "clean", "prefetch", "fetch", "verify", "jobs",
                "cancel", "pins", "pin", "fleet",
        };

        assert_success(h);
        g_assert_cmpstr(h.out, ==, hs.out);
        g_assert_true(g_str_has_prefix(h.out, "imgcachectl [OPTIONS...] COMMAND ...\n"));
        assert_success(v);
        g_assert_cmpstr(v.out, ==, "imgcachectl " IMGCACHE_VERSION "\n");
        assert_error_line(unknown, "Unknown command verb 'frobnicate', see --help.");
        assert_error_line(few, "Too few arguments for 'delete', see --help.");
        g_assert_cmpint(badopt.status, ==, 1);
        g_assert_nonnull(strstr(badopt.err, "colour"));

        help_words(h.out, verbs, options);

        /* Every verb of the design is in --help, and everything --help names is in the man page and in
         * both completions. */
        for (size_t i = 0; i < G_N_ELEMENTS(design_verbs); i++)
                g_assert_true(g_ptr_array_find_with_equal_func(verbs, design_verbs[i], g_str_equal, NULL));
        g_assert_cmpuint(verbs->len, ==, G_N_ELEMENTS(design_verbs));

        for (guint i = 0; i < verbs->len; i++) {
                const char *verb = verbs->pdata[i];
                g_autofree char *in_man = g_strdup_printf("*%s*", verb);
                g_autofree char *in_zsh = g_strdup_printf("\"%s:", verb);
                g_autofree char *in_bash = g_strdup_printf("\\b%s\\b", verb);

                if (!strstr(man, in_man))
                        g_error("verb %s is not in imgcachectl.1.scd", verb);
                if (!strstr(zsh, in_zsh))
                        g_error("verb %s is not in _imgcachectl", verb);
                if (!g_regex_match_simple(in_bash, bash, 0, 0))
                        g_error("verb %s is not in the bash completion", verb);
        }
        for (guint i = 0; i < options->len; i++) {
                const char *opt = options->pdata[i];
                g_autofree char *in_man = g_strdup_printf("*%s", opt);

                if (!strstr(man, in_man))
                        g_error("option %s is not in imgcachectl.1.scd", opt);
                if (!strstr(zsh, opt))
                        g_error("option %s is not in _imgcachectl", opt);
                if (!strstr(bash, opt))
                        g_error("option %s is not in the bash completion", opt);
        }
        g_assert_cmpuint(options->len, >=, 15);
}

/* ---- completions ---------------------------------------------------------------------------------- */

/* Runs the bash completion function for the given words (the last one is being completed) and returns
 * COMPREPLY, one per line. */
static char *bash_complete(const char *const *words, const char *const *env) {
        g_autofree char *file = g_build_filename(source_root(), "completions", "bash", "imgcachectl", NULL);
        g_autoptr(GString) script = g_string_new(NULL);
        const char *argv[] = { "bash", "--norc", "--noprofile", "-c", NULL, NULL };
        guint n = g_strv_length((char **) words);
        Run r;

        g_string_append_printf(script, "set -u\nsource '%s'\nCOMP_WORDS=(", file);
        for (guint i = 0; i < n; i++) {
                g_autofree char *q = g_shell_quote(words[i]);
                g_string_append_printf(script, " %s", q);
        }
        g_string_append_printf(script, ")\nCOMP_CWORD=%u\nCOMP_LINE=\"${COMP_WORDS[*]}\"\nCOMP_POINT=${#COMP_LINE}\n"
                                       "_imgcachectl imgcachectl \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n"
                                       "printf '%%s\\n' \"${COMPREPLY[@]}\" | sort\n", n - 1);
        argv[4] = script->str;

        r = run_argv_env(argv, env);
        if (r.status != 0)
                g_error("bash completion failed: %s", r.err);
        g_assert_cmpstr(r.err, ==, "");
        g_free(r.err);
        return r.out;
}

static void assert_has_lines(const char *text, const char *const *expected) {
        g_auto(GStrv) l = lines(text);

        for (const char *const *e = expected; *e; e++)
                if (!g_strv_contains((const char *const *) l, *e))
                        g_error("'%s' missing from completion output:\n%s", *e, text);
}

static void test_completion_bash(Fixture *f, gconstpointer data) {
        g_autofree char *nowhere = g_strdup_printf("DBUS_SYSTEM_BUS_ADDRESS=unix:path=%s/no-such-bus",
                                                   test_bus_dir(f->bus));
        const char *no_system_bus[] = { nowhere, NULL };
        g_auto(Run) q = run_ctl("queue", "fedora-40", "debian-12", NULL);
        const char *ctl = ctl_path();

        assert_success(q);

        {
                const char *w[] = { ctl, "", NULL };
                g_autofree char *out = bash_complete(w, NULL);
                const char *expected[] = { "status", "list", "list-cached", "delete", "delete-all-cached-images",
                                           "dequeue", "prefetch", "fetch", "verify", "jobs", "cancel", "fleet", NULL };
                g_auto(GStrv) l = lines(out);

                assert_has_lines(out, expected);
                g_assert_cmpuint(g_strv_length(l), ==, 25);
        }
        {
                const char *w[] = { ctl, "de", NULL };
                g_autofree char *out = bash_complete(w, NULL);
                g_assert_cmpstr(out, ==, "delete\ndelete-all\ndelete-all-cached-images\ndelete-all-queued-images\n"
                                         "delete-cached-image\ndelete-queued-image\ndequeue\ndequeue-all\n");
        }
        {
                /* Cached ids for delete/show/verify, from the running daemon. */
                const char *w[] = { ctl, "delete", "", NULL };
                const char *w2[] = { ctl, "-q", "show", "6", NULL };
                g_autofree char *out = bash_complete(w, NULL);
                g_autofree char *out2 = bash_complete(w2, NULL);
                g_assert_cmpstr(out, ==, IMAGE_BIG "\n" IMAGE_SMALL "\n");
                g_assert_cmpstr(out2, ==, IMAGE_BIG "\n");
        }
        {
                /* pin: a cached id first, a command after "--". */
                const char *w[] = { ctl, "pin", "c", NULL };
                const char *w2[] = { ctl, "pin", IMAGE_SMALL, "--", "sh", NULL };
                const char *sh[] = { "sh", NULL };
                g_autofree char *out = bash_complete(w, NULL);
                g_autofree char *out2 = bash_complete(w2, NULL);
                g_assert_cmpstr(out, ==, IMAGE_SMALL "\n");
                assert_has_lines(out2, sh);
        }
        {
                /* Queued ids for dequeue. */
                const char *w[] = { ctl, "dequeue", "", NULL };
                g_autofree char *out = bash_complete(w, NULL);
                g_assert_cmpstr(out, ==, "debian-12\nfedora-40\n");
        }
        {
                /* fetch takes several ids: queued ones after the first, too. */
                const char *w[] = { ctl, "fetch", "fedora-40", "", NULL };
                g_autofree char *out = bash_complete(w, NULL);
                g_assert_cmpstr(out, ==, "debian-12\nfedora-40\n");
        }
        {
                /* --user on the line is honoured: with the system bus gone, only --user finds the daemon. */
                const char *w[] = { ctl, "verify", "", NULL };
                const char *wu[] = { ctl, "--user", "verify", "", NULL };
                g_autofree char *none = bash_complete(w, no_system_bus);
                g_autofree char *some = bash_complete(wu, no_system_bus);
                g_assert_cmpstr(none, ==, "\n");
                g_assert_cmpstr(some, ==, IMAGE_BIG "\n" IMAGE_SMALL "\n");
        }
        {
                /* Options and option values, also in the "--json=" and "--json pr" forms. */
                const char *w1[] = { ctl, "--no-", NULL };
                const char *w2[] = { ctl, "--json", "=", "", NULL };
                const char *w3[] = { ctl, "--sort", "s", NULL };
                const char *w4[] = { ctl, "--json=p", NULL };
                g_autofree char *o1 = bash_complete(w1, NULL);
                g_autofree char *o2 = bash_complete(w2, NULL);
                g_autofree char *o3 = bash_complete(w3, NULL);
                g_autofree char *o4 = bash_complete(w4, NULL);
                g_assert_cmpstr(o1, ==, "--no-ask-password\n--no-block\n--no-legend\n--no-pager\n");
                g_assert_cmpstr(o2, ==, "off\npretty\nshort\n");
                g_assert_cmpstr(o3, ==, "size\n");
                g_assert_cmpstr(o4, ==, "--json=pretty\n");
        }
        {
                /* The verb is found after options taking values. */
                const char *w[] = { ctl, "--sort", "id", "dequeue", "f", NULL };
                g_autofree char *out = bash_complete(w, NULL);
                g_assert_cmpstr(out, ==, "fedora-40\n");
        }
}

/* Drives the zsh completion through zsh's own completion system on a zpty (see zsh-complete.zsh). */
static char *zsh_complete(const char *line, const char *const *env) {
        g_autofree char *helper = g_build_filename(source_root(), "tests", "ctl", "zsh-complete.zsh", NULL);
        g_autofree char *dir = g_build_filename(source_root(), "completions", "zsh", NULL);
        const char *argv[] = { "zsh", "-f", helper, dir, line, NULL };
        Run r = run_argv_env(argv, env);

        if (r.status != 0)
                g_error("zsh completion harness failed (%d): %s\n%s", r.status, r.err, r.out);
        g_free(r.err);
        return r.out;
}

static void test_completion_zsh(Fixture *f, gconstpointer data) {
        g_autofree char *nowhere = g_strdup_printf("DBUS_SYSTEM_BUS_ADDRESS=unix:path=%s/no-such-bus",
                                                   test_bus_dir(f->bus));
        const char *no_system_bus[] = { nowhere, NULL };
        g_auto(Run) q = run_ctl("queue", "fedora-40", NULL);
        g_autofree char *ctl = g_strdup(ctl_path());

        g_autofree char *zsh = g_find_program_in_path("zsh");

        if (!zsh) {
                test_skip_missing("zsh is not installed");
                return;
        }
        assert_success(q);

        {
                g_autofree char *line = g_strdup_printf("%s ", ctl);
                g_autofree char *out = zsh_complete(line, NULL);
                const char *expected[] = { "status", "list", "list-queued", "delete", "dequeue-all", "verify",
                                           "fetch", "cancel", NULL };
                assert_has_lines(out, expected);
        }
        {
                g_autofree char *line = g_strdup_printf("%s delete ", ctl);
                g_autofree char *out = zsh_complete(line, NULL);
                g_assert_cmpstr(out, ==, IMAGE_BIG "\n" IMAGE_SMALL "\n");
        }
        {
                g_autofree char *line = g_strdup_printf("%s dequeue ", ctl);
                g_autofree char *out = zsh_complete(line, NULL);
                g_assert_cmpstr(out, ==, "fedora-40\n");
        }
        {
                g_autofree char *line = g_strdup_printf("%s fetch fedora-40 ", ctl);
                g_autofree char *out = zsh_complete(line, NULL);
                g_assert_cmpstr(out, ==, "fedora-40\n");
        }
        {
                g_autofree char *line = g_strdup_printf("%s show ", ctl);
                g_autofree char *lineu = g_strdup_printf("%s --user show ", ctl);
                g_autofree char *none = zsh_complete(line, no_system_bus);
                g_autofree char *some = zsh_complete(lineu, no_system_bus);
                g_assert_cmpstr(none, ==, "");
                g_assert_cmpstr(some, ==, IMAGE_BIG "\n" IMAGE_SMALL "\n");
        }
        {
                g_autofree char *line = g_strdup_printf("%s --json=", ctl);
                g_autofree char *out = zsh_complete(line, NULL);
                g_assert_cmpstr(out, ==, "off\npretty\nshort\n");
        }
        {
                g_autofree char *line = g_strdup_printf("%s --sort=", ctl);
                g_autofree char *out = zsh_complete(line, NULL);
                g_assert_cmpstr(out, ==, "accessed\nhits\nid\nmodified\nsize\n");
        }
}

/* ---- fetching from an upstream ------------------------------------------------------------------- */

static json_t *json_find_image(json_t *a, const char *id) {
        for (size_t i = 0; i < json_array_size(a); i++)
                if (g_str_equal(json_str(json_array_get(a, i), "image_id"), id))
                        return json_array_get(a, i);
        g_error("image %s missing from the JSON results", id);
}

static guint64 image_size(Fixture *f, const char *id) {
        g_autoptr(GVariant) v = call_ok(f, "GetImage", g_variant_new("(s)", id), "((stttts))");
        guint64 size;

        g_variant_get(v, "((&stttt&s))", NULL, &size, NULL, NULL, NULL, NULL);
        return size;
}

/* Several ids: each fetched, or said to be cached already, or failed, with one line each; a failure makes
 * the exit status, and does not stop the others. */
static void test_fetch_several(Fixture *f, gconstpointer data) {
        g_auto(Run) r = run_ctl("fetch", UPSTREAM_A, IMAGE_SMALL, UPSTREAM_B, "not-upstream", NULL);
        g_auto(GStrv) out = lines(r.out);
        const char *expected[] = {
                "Image " IMAGE_SMALL " is already cached (2.9K).",
                "Fetched image " UPSTREAM_A " (3.9K).",
                "Fetched image " UPSTREAM_B " (5.8K).",
                NULL
        };

        g_assert_cmpint(r.status, ==, 1);
        /* The cached one is known before any job starts; then a "Started" line and an end per job. */
        g_assert_cmpstr(out[0], ==, expected[0]);
        assert_has_lines(r.out, expected);
        g_assert_cmpuint(g_strv_length(out), ==, 6);
        for (guint i = 1; i <= 3; i++)
                g_assert_true(g_regex_match_simple("^Started job [0-9]+ for image (" UPSTREAM_A "|" UPSTREAM_B
                                                   "|not-upstream)\\.$", out[i], 0, 0));
        g_assert_true(g_str_has_prefix(r.err, "imgcachectl: Failed to fetch image not-upstream: "));
        assert_one_line(r.err);
        g_assert_cmpuint(image_size(f, UPSTREAM_A), ==, SIZE_A);
        g_assert_cmpuint(image_size(f, UPSTREAM_B), ==, SIZE_B);
        g_assert_false(image_exists(f, "not-upstream"));

        /* Fetched now: cached, with its size (not the 0 of a job that had nothing to do). */
        {
                g_auto(Run) again = run_ctl("fetch", UPSTREAM_A, NULL);

                assert_success(again);
                g_assert_cmpstr(again.out, ==, "Image " UPSTREAM_A " is already cached (3.9K).\n");
        }
}

/* --no-block: the jobs started, and what needed none, at once; result null for a job still running. */
static void test_fetch_no_block(Fixture *f, gconstpointer data) {
        g_auto(Run) r = run_ctl("fetch", "--no-block", UPSTREAM_A, IMAGE_SMALL, NULL);
        g_auto(Run) js = run_ctl("--json=short", "fetch", "--no-block", UPSTREAM_B, NULL);
        json_t *a;

        assert_success(r);
        g_assert_true(g_regex_match_simple("^Image " IMAGE_SMALL " is already cached \\(2\\.9K\\)\\.\n"
                                           "Started job [0-9]+ for image " UPSTREAM_A "\\.\n$", r.out, 0, 0));
        assert_success(js);
        a = parse_json(js.out);
        g_assert_cmpuint(json_array_size(a), ==, 1);
        g_assert_cmpstr(json_str(json_array_get(a, 0), "image_id"), ==, UPSTREAM_B);
        g_assert_cmpuint(json_u64(json_array_get(a, 0), "job"), >, 0);
        g_assert_true(json_is_null(json_object_get(json_array_get(a, 0), "result")));
        json_decref(a);
}

/* --json: one object per id, in the order given, each with its real size; the failed one too. */
static void test_fetch_json(Fixture *f, gconstpointer data) {
        g_auto(Run) r = run_ctl("--json=short", "fetch", UPSTREAM_ONE, IMAGE_BIG, "not-upstream", UPSTREAM_B, NULL);
        json_t *a, *o;

        g_assert_cmpint(r.status, ==, 1);
        a = parse_json(r.out);
        g_assert_cmpuint(json_array_size(a), ==, 4);
        g_assert_cmpstr(json_str(json_array_get(a, 0), "image_id"), ==, UPSTREAM_ONE);
        g_assert_cmpstr(json_str(json_array_get(a, 1), "image_id"), ==, IMAGE_BIG);
        g_assert_cmpstr(json_str(json_array_get(a, 2), "image_id"), ==, "not-upstream");
        g_assert_cmpstr(json_str(json_array_get(a, 3), "image_id"), ==, UPSTREAM_B);

        o = json_find_image(a, IMAGE_BIG);
        g_assert_cmpstr(json_str(o, "result"), ==, "done");
        g_assert_true(json_is_true(json_object_get(o, "cached")));
        g_assert_cmpuint(json_u64(o, "size"), ==, SIZE_BIG);
        g_assert_true(json_is_null(json_object_get(o, "job")));
        g_assert_true(json_is_null(json_object_get(o, "path")));

        o = json_find_image(a, UPSTREAM_B);
        g_assert_cmpstr(json_str(o, "result"), ==, "done");
        g_assert_true(json_is_false(json_object_get(o, "cached")));
        g_assert_cmpuint(json_u64(o, "size"), ==, SIZE_B);
        g_assert_cmpuint(json_u64(o, "job"), >, 0);

        o = json_find_image(a, "not-upstream");
        g_assert_cmpstr(json_str(o, "result"), ==, "failed");
        g_assert_cmpstr(json_str(o, "error"), !=, "");
        json_decref(a);

        /* A one-byte image reads as one. */
        {
                g_auto(Run) show = run_ctl("show", UPSTREAM_ONE, NULL);

                assert_success(show);
                g_assert_nonnull(strstr(show.out, "         Size: 1B (1 byte)\n"));
        }
}
int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

#define ADD(path, fn, flags) \
        g_test_add(path, Fixture, GUINT_TO_POINTER(flags), fixture_setup, fn, fixture_teardown)

        ADD("/ctl/status", test_status, 0);
        ADD("/ctl/list", test_list, 0);
        ADD("/ctl/list-empty", test_list_empty, FIXTURE_EMPTY);
        ADD("/ctl/show", test_show, 0);
        ADD("/ctl/bad-ids", test_bad_ids, 0);
        ADD("/ctl/queue", test_queue, 0);
        ADD("/ctl/delete", test_delete, 0);
        ADD("/ctl/delete-all", test_delete_all, 0);
        ADD("/ctl/pins", test_pins, 0);
        ADD("/ctl/pin-command", test_pin_command, 0);
        ADD("/ctl/delete-pinned", test_delete_pinned, 0);
        ADD("/ctl/prompt", test_prompt, 0);
        ADD("/ctl/prune", test_prune, FIXTURE_SMALL_MAX);
        ADD("/ctl/prune-text", test_prune_text, FIXTURE_SMALL_MAX);
        ADD("/ctl/prune-one", test_prune_one, FIXTURE_SMALL_MAX);
        ADD("/ctl/clean", test_clean, FIXTURE_JUNK);
        ADD("/ctl/clean-text", test_clean_text, FIXTURE_JUNK);
        ADD("/ctl/verify", test_verify, 0);
        ADD("/ctl/jobs-no-upstream", test_jobs_no_upstream, 0);
        ADD("/ctl/fetch-several", test_fetch_several, FIXTURE_UPSTREAM);
        ADD("/ctl/fetch-json", test_fetch_json, FIXTURE_UPSTREAM);
        ADD("/ctl/fetch-no-block", test_fetch_no_block, FIXTURE_UPSTREAM);
        ADD("/ctl/no-bus", test_no_bus, FIXTURE_NO_DAEMON);
        ADD("/ctl/remote-errors", test_remote_errors, FIXTURE_NO_DAEMON);
        ADD("/ctl/activation", test_activation, FIXTURE_NO_DAEMON);
        ADD("/ctl/denied", test_denied, 0);
        ADD("/ctl/help", test_help, FIXTURE_NO_DAEMON);
        ADD("/ctl/completion/bash", test_completion_bash, 0);
        ADD("/ctl/completion/zsh", test_completion_zsh, 0);

        return g_test_run();
}
