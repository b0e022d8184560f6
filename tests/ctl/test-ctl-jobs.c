/* SPDX-License-Identifier: MIT */

/* imgcachectl's job-following code (fetch, prefetch, jobs, cancel) against a scripted stand-in for
 * imgcached's job API on a private bus. Until fetching lands, the real daemon answers these calls with
 * NoUpstream (tested in test-imgcachectl.c); this test drives the rest now: signals that arrive before
 * the method reply (subscribe-before-call), the progress bar on a pseudo-terminal, plain lines without
 * one, failed and cancelled jobs, --no-block, --json, Ctrl-C detaching, and the daemon going away.
 *
 * The stand-in implements the interfaces of dbus/org.imgcache.Manager.xml (loaded from the source tree)
 * with GDBus on the harness's bus (tests/lib/test-bus.h; no imgcached is started). Every wait iterates
 * the main loop until the child's output or exit says so, bounded by a deadline; no sleeps. */

#include <errno.h>
#include <pty.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib-unix.h>
#include <jansson.h>

#include "test-bus.h"

#define JOB_PREFIX "/org/imgcache/job/"
#define JOB_IFACE  "org.imgcache.Job"
#define MiB (1024ULL * 1024ULL)

typedef enum Scenario {
        SCENARIO_DONE_BEFORE_REPLY,   /* JobNew, progress and JobRemoved(done) are sent before the reply */
        SCENARIO_DRIVEN,              /* the test emits progress and the end when the client is watching */
        SCENARIO_FAIL,                /* the job fails with an Error after the reply */
        SCENARIO_VANISH,              /* the service drops its name after the reply */
        SCENARIO_END_WHEN_READ,       /* prefetch jobs end once the client has read every job's ImageId */
} Scenario;

typedef struct Job {
        guint32 id;
        char *image;
        char *path;
        char *state;
        char *error;
        guint64 done;
        guint64 total;
        guint registration;
        gboolean image_read;
} Job;

typedef struct Fake {
        TestBus *bus;
        GDBusConnection *conn;
        GDBusNodeInfo *info;
        guint manager_registration;
        guint name_id;
        gboolean name_acquired;
        Scenario scenario;
        GPtrArray *jobs;            /* Job*, alive ones */
        guint32 next_id;
        guint n_fetch_calls;
        guint n_cancel_calls;
        gboolean end_scheduled;
} Fake;

static Fake *fake;

static const char *source_root(void) {
        const char *p = g_getenv("IMGCACHE_SOURCE_ROOT");
        g_assert_nonnull(p);
        return p;
}

static const char *ctl_path(void) {
        const char *p = g_getenv("IMGCACHECTL");
        return p ? p : "imgcachectl";
}

/* ---- the stand-in service ------------------------------------------------------------------------- */

static void job_free(Job *j) {
        if (j->registration)
                g_dbus_connection_unregister_object(fake->conn, j->registration);
        g_free(j->image);
        g_free(j->path);
        g_free(j->state);
        g_free(j->error);
        g_free(j);
}

static Job *job_find(const char *path) {
        for (guint i = 0; i < fake->jobs->len; i++) {
                Job *j = fake->jobs->pdata[i];
                if (g_str_equal(j->path, path))
                        return j;
        }
        return NULL;
}

static void job_end(Job *j, const char *result, const char *error);

/* Ends every job, newest first. */
static gboolean end_all_jobs(gpointer userdata) {
        while (fake->jobs->len > 0)
                job_end(fake->jobs->pdata[fake->jobs->len - 1], "done", NULL);
        return G_SOURCE_REMOVE;
}

static GVariant *job_get_property(GDBusConnection *c, const char *sender, const char *path, const char *iface,
                                  const char *name, GError **error, gpointer userdata) {
        Job *j = job_find(path);

        if (!j) {
                g_set_error(error, G_DBUS_ERROR, G_DBUS_ERROR_UNKNOWN_OBJECT, "No job %s", path);
                return NULL;
        }
        if (g_str_equal(name, "Id"))
                return g_variant_new_uint32(j->id);
        if (g_str_equal(name, "ImageId")) {
                j->image_read = TRUE;
                if (fake->scenario == SCENARIO_END_WHEN_READ && !fake->end_scheduled) {
                        gboolean all = TRUE;

                        for (guint i = 0; i < fake->jobs->len; i++)
                                all = all && ((Job *) fake->jobs->pdata[i])->image_read;
                        if (all) {
                                fake->end_scheduled = TRUE;
                                g_idle_add(end_all_jobs, NULL);
                        }
                }
                return g_variant_new_string(j->image);
        }
        if (g_str_equal(name, "State"))
                return g_variant_new_string(j->state);
        if (g_str_equal(name, "Error"))
                return g_variant_new_string(j->error);
        if (g_str_equal(name, "Progress"))
                return g_variant_new_double(j->total ? (double) j->done / (double) j->total : 0.0);
        if (g_str_equal(name, "BytesDone"))
                return g_variant_new_uint64(j->done);
        if (g_str_equal(name, "BytesTotal"))
                return g_variant_new_uint64(j->total);
        g_set_error(error, G_DBUS_ERROR, G_DBUS_ERROR_UNKNOWN_PROPERTY, "No property %s", name);
        return NULL;
}

static void job_emit_changed(Job *j) {
        GVariantBuilder b;

        g_variant_builder_init(&b, G_VARIANT_TYPE("a{sv}"));
        g_variant_builder_add(&b, "{sv}", "State", g_variant_new_string(j->state));
        g_variant_builder_add(&b, "{sv}", "Error", g_variant_new_string(j->error));
        g_variant_builder_add(&b, "{sv}", "BytesDone", g_variant_new_uint64(j->done));
        g_variant_builder_add(&b, "{sv}", "BytesTotal", g_variant_new_uint64(j->total));
        g_variant_builder_add(&b, "{sv}", "Progress",
                              g_variant_new_double(j->total ? (double) j->done / (double) j->total : 0.0));
        g_assert_true(g_dbus_connection_emit_signal(fake->conn, NULL, j->path, "org.freedesktop.DBus.Properties",
                                                    "PropertiesChanged",
                                                    g_variant_new("(sa{sv}as)", JOB_IFACE, &b, NULL), NULL));
}

static void job_progress(Job *j, guint64 done) {
        j->done = done;
        job_emit_changed(j);
}

/* Ends a job: its last properties, JobRemoved, and the object goes. */
static void job_end(Job *j, const char *result, const char *error) {
        g_free(j->state);
        j->state = g_strdup(result);
        if (error) {
                g_free(j->error);
                j->error = g_strdup(error);
        }
        if (g_str_equal(result, "done"))
                j->done = j->total;
        job_emit_changed(j);
        g_assert_true(g_dbus_connection_emit_signal(fake->conn, NULL, TEST_BUS_PATH, TEST_BUS_IFACE, "JobRemoved",
                                                    g_variant_new("(uos)", j->id, j->path, result), NULL));
        g_ptr_array_remove(fake->jobs, j);
}

static void job_method_call(GDBusConnection *c, const char *sender, const char *path, const char *iface,
                            const char *method, GVariant *params, GDBusMethodInvocation *inv, gpointer userdata) {
        Job *j = job_find(path);

        g_assert_cmpstr(method, ==, "Cancel");
        fake->n_cancel_calls++;
        if (!j) {
                g_dbus_method_invocation_return_dbus_error(inv, "org.imgcache.Error.NoSuchJob", "No such job");
                return;
        }
        g_dbus_method_invocation_return_value(inv, NULL);
        job_end(j, "cancelled", NULL);
}

static const GDBusInterfaceVTable job_vtable = {
        .method_call = job_method_call,
        .get_property = job_get_property,
};

static Job *job_new(const char *image, guint64 total) {
        g_autoptr(GError) error = NULL;
        Job *j = g_new0(Job, 1);

        j->id = ++fake->next_id;
        j->image = g_strdup(image);
        j->path = g_strdup_printf(JOB_PREFIX "%u", j->id);
        j->state = g_strdup("running");
        j->error = g_strdup("");
        j->total = total;
        j->registration = g_dbus_connection_register_object(
                        fake->conn, j->path, g_dbus_node_info_lookup_interface(fake->info, JOB_IFACE),
                        &job_vtable, NULL, NULL, &error);
        g_assert_no_error(error);
        g_ptr_array_add(fake->jobs, j);
        g_assert_true(g_dbus_connection_emit_signal(fake->conn, NULL, TEST_BUS_PATH, TEST_BUS_IFACE, "JobNew",
                                                    g_variant_new("(uo)", j->id, j->path), NULL));
        return j;
}

static Job *job_by_index(guint i) {
        g_assert_cmpuint(i, <, fake->jobs->len);
        return fake->jobs->pdata[i];
}

static void manager_method_call(GDBusConnection *c, const char *sender, const char *path, const char *iface,
                                const char *method, GVariant *params, GDBusMethodInvocation *inv, gpointer userdata) {
        if (g_str_equal(method, "FetchImage")) {
                const char *id, *checksum;
                Job *j;

                g_variant_get(params, "(&s&s)", &id, &checksum);
                fake->n_fetch_calls++;
                j = job_new(id, 64 * MiB);

                switch (fake->scenario) {
                case SCENARIO_DONE_BEFORE_REPLY: {
                        /* The whole life of the job before the client even knows its path. */
                        g_autofree char *p = g_strdup(j->path);

                        job_progress(j, 16 * MiB);
                        job_end(j, "done", NULL);
                        g_dbus_method_invocation_return_value(inv, g_variant_new("(o)", p));
                        return;
                }
                case SCENARIO_FAIL:
                        g_dbus_method_invocation_return_value(inv, g_variant_new("(o)", j->path));
                        job_progress(j, 1 * MiB);
                        job_end(j, "failed", "Upstream answered 404 Not Found");
                        return;
                case SCENARIO_VANISH:
                        g_dbus_method_invocation_return_value(inv, g_variant_new("(o)", j->path));
                        g_bus_unown_name(fake->name_id);
                        fake->name_id = 0;
                        return;
                default:
                        g_dbus_method_invocation_return_value(inv, g_variant_new("(o)", j->path));
                        return;
                }
        }

        if (g_str_equal(method, "Prefetch")) {
                GVariantBuilder b;
                Job *a = job_new("fedora-40", 3 * MiB);
                Job *d = job_new("debian-12", 5 * MiB);

                g_variant_builder_init(&b, G_VARIANT_TYPE("ao"));
                g_variant_builder_add(&b, "o", a->path);
                g_variant_builder_add(&b, "o", d->path);
                g_dbus_method_invocation_return_value(inv, g_variant_new("(ao)", &b));
                return;
        }

        if (g_str_equal(method, "ListJobs")) {
                GVariantBuilder b;

                g_variant_builder_init(&b, G_VARIANT_TYPE("a(ussdo)"));
                for (guint i = 0; i < fake->jobs->len; i++) {
                        Job *j = fake->jobs->pdata[i];
                        g_variant_builder_add(&b, "(ussdo)", j->id, j->image, j->state,
                                              j->total ? (double) j->done / (double) j->total : 0.0, j->path);
                }
                g_dbus_method_invocation_return_value(inv, g_variant_new("(a(ussdo))", &b));
                return;
        }

        g_dbus_method_invocation_return_dbus_error(inv, "org.freedesktop.DBus.Error.NotSupported",
                                                   "Not part of this test");
}

static const GDBusInterfaceVTable manager_vtable = {
        .method_call = manager_method_call,
};

static void on_name_acquired(GDBusConnection *c, const char *name, gpointer userdata) {
        fake->name_acquired = TRUE;
}

static void fake_setup(char *f, gconstpointer data) {
        g_autofree char *xml_path = g_build_filename(source_root(), "dbus", "org.imgcache.Manager.xml", NULL);
        g_autofree char *xml = NULL;
        g_autoptr(GError) error = NULL;

        fake = g_new0(Fake, 1);
        fake->scenario = (Scenario) GPOINTER_TO_UINT(data);
        fake->bus = test_bus_new();
        fake->conn = test_bus_connection(fake->bus);
        fake->jobs = g_ptr_array_new_with_free_func((GDestroyNotify) job_free);

        g_assert_true(g_file_get_contents(xml_path, &xml, NULL, &error));
        fake->info = g_dbus_node_info_new_for_xml(xml, &error);
        g_assert_no_error(error);

        fake->manager_registration = g_dbus_connection_register_object(
                        fake->conn, TEST_BUS_PATH, g_dbus_node_info_lookup_interface(fake->info, TEST_BUS_IFACE),
                        &manager_vtable, NULL, NULL, &error);
        g_assert_no_error(error);

        fake->name_id = g_bus_own_name_on_connection(fake->conn, TEST_BUS_NAME, G_BUS_NAME_OWNER_FLAGS_NONE,
                                                     on_name_acquired, NULL, NULL, NULL);
        g_assert_true(test_bus_wait_flag(&fake->name_acquired, TEST_BUS_TIMEOUT_MS));
}

static void fake_teardown(char *f, gconstpointer data) {
        g_ptr_array_unref(fake->jobs);
        g_dbus_connection_unregister_object(fake->conn, fake->manager_registration);
        if (fake->name_id)
                g_bus_unown_name(fake->name_id);
        g_dbus_node_info_unref(fake->info);
        test_bus_free(fake->bus);
        g_clear_pointer(&fake, g_free);
}

/* ---- running the client --------------------------------------------------------------------------- */

typedef struct Client Client;
typedef void (*OutputFunc)(Client *c);

struct Client {
        GPid pid;
        int master;             /* the pty, or -1 */
        GString *out;
        GString *err;
        gboolean exited;
        int status;
        OutputFunc on_output;   /* called after each chunk of output */
        int step;               /* for on_output's own use */
};

static gboolean on_fd(int fd, GIOCondition cond, gpointer userdata) {
        GString *s = userdata;
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof buf);

        if (n < 0 && errno == EINTR)
                return G_SOURCE_CONTINUE;
        if (n <= 0)
                return G_SOURCE_REMOVE;
        g_string_append_len(s, buf, n);
        return G_SOURCE_CONTINUE;
}

typedef struct FdWatch {
        Client *client;
        GString *into;
        gboolean eof;
} FdWatch;

static gboolean on_client_fd(int fd, GIOCondition cond, gpointer userdata) {
        FdWatch *w = userdata;
        gsize before = w->into->len;

        if (on_fd(fd, cond, w->into) == G_SOURCE_REMOVE) {
                w->eof = TRUE;
                return G_SOURCE_REMOVE;
        }
        if (w->into->len > before && w->client->on_output)
                w->client->on_output(w->client);
        return G_SOURCE_CONTINUE;
}

static void on_child_exit(GPid pid, int wstatus, gpointer userdata) {
        Client *c = userdata;

        c->status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
        c->exited = TRUE;
        g_spawn_close_pid(pid);
}

/* Runs imgcachectl with args, on a pty (tty = TRUE; stdout and stderr both go there) or with pipes, and
 * iterates the main loop (serving the stand-in's D-Bus calls) until it exited and its output is read. */
static void run_client(Client *c, const char *const *args, gboolean tty, OutputFunc on_output) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new();
        g_auto(GStrv) envp = g_get_environ();
        gint64 deadline = g_get_monotonic_time() + (gint64) TEST_BUS_TIMEOUT_MS * 1000;
        FdWatch wo = {}, we = {};
        int out_fd = -1, err_fd = -1;

        *c = (Client) { .master = -1, .out = g_string_new(NULL), .err = g_string_new(NULL), .on_output = on_output };

        g_ptr_array_add(argv, (char *) ctl_path());
        for (const char *const *a = args; *a; a++)
                g_ptr_array_add(argv, (char *) *a);
        g_ptr_array_add(argv, NULL);
        envp = g_environ_setenv(envp, "IMGCACHECTL_PAGER", "", TRUE);
        envp = g_environ_setenv(envp, "TERM", "xterm", TRUE);
        envp = g_environ_setenv(envp, "COLUMNS", "100", TRUE);

        if (tty) {
                struct winsize ws = { .ws_row = 40, .ws_col = 100 };
                pid_t pid = forkpty(&c->master, NULL, NULL, &ws);

                g_assert_cmpint(pid, >=, 0);
                if (pid == 0) {
                        /* Async-signal-safe only: the test has threads. */
                        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                        execve(argv->pdata[0], (char **) argv->pdata, envp);
                        _exit(127);
                }
                c->pid = pid;
                out_fd = c->master;
        } else {
                g_autoptr(GError) error = NULL;

                g_assert_true(g_spawn_async_with_pipes(NULL, (char **) argv->pdata, envp, G_SPAWN_DO_NOT_REAP_CHILD,
                                                       NULL, NULL, &c->pid, NULL, &out_fd, &err_fd, &error));
                g_assert_no_error(error);
        }

        wo = (FdWatch) { .client = c, .into = c->out };
        g_unix_fd_add(out_fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_client_fd, &wo);
        if (err_fd >= 0) {
                we = (FdWatch) { .client = c, .into = c->err };
                g_unix_fd_add(err_fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_client_fd, &we);
        } else
                we.eof = TRUE;
        g_child_watch_add(c->pid, on_child_exit, c);

        while (!(c->exited && wo.eof && we.eof)) {
                if (g_get_monotonic_time() > deadline) {
                        g_printerr("imgcachectl timed out, killing pid %d\n", (int) c->pid);
                        (void) kill(c->pid, SIGKILL);
                        deadline = G_MAXINT64;
                }
                g_main_context_iteration(NULL, TRUE);
        }

        close(out_fd);
        if (err_fd >= 0)
                close(err_fd);
        if (g_test_verbose())
                g_printerr("[%s]\n%s%s[exit %d]\n", tty ? "pty" : "pipes", c->out->str, c->err->str, c->status);
}

static void client_clear(Client *c) {
        g_string_free(c->out, TRUE);
        g_string_free(c->err, TRUE);
}

/* ---- tests ---------------------------------------------------------------------------------------- */

/* Every signal is sent before the reply: only a client that subscribed first sees the job end. */
static void test_done_before_reply(char *f, gconstpointer data) {
        const char *args[] = { "fetch", "fedora-40", NULL };
        Client c;

        run_client(&c, args, FALSE, NULL);
        g_assert_cmpint(c.status, ==, 0);
        g_assert_cmpstr(c.out->str, ==, "Started job 1 for image fedora-40.\nFetched image fedora-40 (64M).\n");
        g_assert_cmpstr(c.err->str, ==, "");
        g_assert_cmpuint(fake->n_fetch_calls, ==, 1);
        client_clear(&c);
}

static void test_prefetch_plain(char *f, gconstpointer data) {
        const char *args[] = { "prefetch", NULL };
        const char *json_args[] = { "--json=short", "prefetch", NULL };
        Client c, j;
        json_t *a;

        run_client(&c, args, FALSE, NULL);
        g_assert_cmpint(c.status, ==, 0);
        /* Image ids learnt from the jobs' properties; ends in the order the daemon reports them. */
        g_assert_cmpstr(c.out->str, ==, "Started job 1 for image fedora-40.\nStarted job 2 for image debian-12.\n"
                                        "Fetched image debian-12 (5M).\nFetched image fedora-40 (3M).\n");
        g_assert_cmpstr(c.err->str, ==, "");
        client_clear(&c);
        fake->end_scheduled = FALSE;

        run_client(&j, json_args, FALSE, NULL);
        g_assert_cmpint(j.status, ==, 0);
        a = json_loads(j.out->str, 0, NULL);
        g_assert_nonnull(a);
        g_assert_cmpuint(json_array_size(a), ==, 2);
        g_assert_cmpstr(json_string_value(json_object_get(json_array_get(a, 0), "result")), ==, "done");
        g_assert_cmpstr(json_string_value(json_object_get(json_array_get(a, 1), "image_id")), ==, "debian-12");
        g_assert_cmpint(json_integer_value(json_object_get(json_array_get(a, 1), "size")), ==, 5 * MiB);
        json_decref(a);
        client_clear(&j);
}

/* On a terminal: a progress bar with bytes, rate and ETA, redrawn as the job advances, gone at the end. */
static void progress_steps(Client *c) {
        if (c->step == 0 && strstr(c->out->str, "Press Ctrl-C")) {
                c->step = 1;
                job_progress(job_by_index(0), 16 * MiB);
        } else if (c->step == 1 && strstr(c->out->str, " 25%  16M/64M")) {
                c->step = 2;
                job_progress(job_by_index(0), 48 * MiB);
        } else if (c->step == 2 && strstr(c->out->str, " 75%  48M/64M")) {
                c->step = 3;
                job_end(job_by_index(0), "done", NULL);
        }
}

static void test_progress_tty(char *f, gconstpointer data) {
        const char *args[] = { "fetch", "--checksum=md5:d41d8cd98f00b204e9800998ecf8427e", "fedora-40", NULL };
        Client c;

        run_client(&c, args, TRUE, progress_steps);
        g_assert_cmpint(c.step, ==, 3);
        g_assert_cmpint(c.status, ==, 0);
        g_assert_nonnull(strstr(c.out->str, "fedora-40 [#"));
        g_assert_nonnull(strstr(c.out->str, "/s  ETA "));
        g_assert_nonnull(strstr(c.out->str, "\033[1A\r\033[J")); /* the bar is redrawn in place */
        g_assert_true(g_str_has_suffix(c.out->str, "Fetched image fedora-40 (64M).\r\n"));
        client_clear(&c);
}

static void test_fail(char *f, gconstpointer data) {
        const char *args[] = { "fetch", "fedora-40", NULL };
        Client c;

        run_client(&c, args, FALSE, NULL);
        g_assert_cmpint(c.status, ==, 1);
        g_assert_cmpstr(c.err->str, ==, "imgcachectl: Failed to fetch image fedora-40: Upstream answered 404 Not Found\n");
        client_clear(&c);
}

static void test_no_block_jobs_cancel(char *f, gconstpointer data) {
        const char *fetch[] = { "fetch", "--no-block", "fedora-40", NULL };
        const char *jobs[] = { "jobs", NULL };
        const char *jobs_json[] = { "--json=short", "jobs", NULL };
        const char *cancel[] = { "cancel", "1", NULL };
        const char *cancel_again[] = { "cancel", "1", NULL };
        Client c;
        json_t *a;

        run_client(&c, fetch, FALSE, NULL);
        g_assert_cmpint(c.status, ==, 0);
        g_assert_cmpstr(c.out->str, ==, "Started job 1 for image fedora-40.\n");
        g_assert_cmpuint(fake->jobs->len, ==, 1);
        client_clear(&c);

        job_progress(job_by_index(0), 32 * MiB);
        run_client(&c, jobs, FALSE, NULL);
        g_assert_cmpint(c.status, ==, 0);
        g_assert_true(g_regex_match_simple("^JOB +IMAGE +STATE +PROGRESS\n +1 +fedora-40 +running +50%\n\n1 job\\.\n$",
                                           c.out->str, 0, 0));
        client_clear(&c);

        run_client(&c, jobs_json, FALSE, NULL);
        a = json_loads(c.out->str, 0, NULL);
        g_assert_nonnull(a);
        g_assert_cmpint(json_integer_value(json_object_get(json_array_get(a, 0), "job")), ==, 1);
        g_assert_cmpstr(json_string_value(json_object_get(json_array_get(a, 0), "path")), ==, JOB_PREFIX "1");
        g_assert_cmpfloat(json_real_value(json_object_get(json_array_get(a, 0), "progress")), ==, 0.5);
        json_decref(a);
        client_clear(&c);

        run_client(&c, cancel, FALSE, NULL);
        g_assert_cmpint(c.status, ==, 0);
        g_assert_cmpstr(c.out->str, ==, "Cancelled job 1.\n");
        g_assert_cmpuint(fake->jobs->len, ==, 0);
        client_clear(&c);

        run_client(&c, cancel_again, FALSE, NULL);
        g_assert_cmpint(c.status, ==, 1);
        g_assert_true(g_str_has_prefix(c.err->str, "imgcachectl: Failed to cancel job 1: "));
        client_clear(&c);
}

/* Ctrl-C while watching: the job keeps running and the client says how to stop it. */
static void interrupt_steps(Client *c) {
        if (c->step == 0 && strstr(c->out->str, "Press Ctrl-C")) {
                c->step = 1;
                job_progress(job_by_index(0), 8 * MiB);
        } else if (c->step == 1 && strstr(c->out->str, "8M/64M")) {
                c->step = 2;
                g_assert_cmpint(kill(c->pid, SIGINT), ==, 0);
        }
}

static void test_interrupt(char *f, gconstpointer data) {
        const char *args[] = { "fetch", "fedora-40", NULL };
        Client c;

        run_client(&c, args, TRUE, interrupt_steps);
        g_assert_cmpint(c.step, ==, 2);
        g_assert_cmpint(c.status, ==, 1);
        g_assert_nonnull(strstr(c.out->str, "Job 1 (image fedora-40) keeps running in the background; use "
                                            "\"imgcachectl cancel 1\" to stop it."));
        g_assert_cmpuint(fake->jobs->len, ==, 1);
        g_assert_cmpuint(fake->n_cancel_calls, ==, 0);
        client_clear(&c);
}

static void test_vanish(char *f, gconstpointer data) {
        const char *args[] = { "fetch", "fedora-40", NULL };
        Client c;

        run_client(&c, args, FALSE, NULL);
        g_assert_cmpint(c.status, ==, 1);
        g_assert_cmpstr(c.err->str, ==, "imgcachectl: imgcached went away while jobs were running.\n");
        client_clear(&c);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

#define ADD(path, fn, scenario) \
        g_test_add(path, char, GUINT_TO_POINTER(scenario), fake_setup, fn, fake_teardown)

        ADD("/ctl/jobs/done-before-reply", test_done_before_reply, SCENARIO_DONE_BEFORE_REPLY);
        ADD("/ctl/jobs/prefetch", test_prefetch_plain, SCENARIO_END_WHEN_READ);
        ADD("/ctl/jobs/progress-tty", test_progress_tty, SCENARIO_DRIVEN);
        ADD("/ctl/jobs/fail", test_fail, SCENARIO_FAIL);
        ADD("/ctl/jobs/no-block-jobs-cancel", test_no_block_jobs_cancel, SCENARIO_DRIVEN);
        ADD("/ctl/jobs/interrupt", test_interrupt, SCENARIO_DRIVEN);
        ADD("/ctl/jobs/vanish", test_vanish, SCENARIO_VANISH);

        return g_test_run();
}
