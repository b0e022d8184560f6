/* SPDX-License-Identifier: MIT */
/* Integration tests of imgcached on a private session bus: the real daemon (--user), the real
 * dbus-daemon, stock clients (busctl, gdbus) and GDBus in this process for signals and fds. */

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gio/gunixfdlist.h>
#include <glib/gstdio.h>

#include "test-bus.h"
#include "test-util.h"

#define ERR_INVALID_ID "org.imgcache.Error.InvalidImageId"
#define ERR_NO_SUCH_IMAGE "org.imgcache.Error.NoSuchImage"
#define ERR_NO_UPSTREAM "org.imgcache.Error.NoUpstream"
#define ERR_IMAGE_PINNED "org.imgcache.Error.ImagePinned"
#define ERR_INVALID_ARGS "org.freedesktop.DBus.Error.InvalidArgs"

#define SHA256_HELLO "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03" /* "hello\n" */

/* ---- fixtures ----------------------------------------------------------------------------------- */

/* An image file in the cache directory before the daemon starts: reconciliation adopts it, with
 * last_accessed = its mtime (seconds ago, so tests control the LRU order). */
static void seed_image(TestBus *b, const char *id, const char *content, int age_sec) {
        g_autofree char *path = g_build_filename(test_bus_cache_dir(b), id, NULL);
        g_autoptr(GError) error = NULL;
        struct timeval tv[2];

        g_assert_true(g_file_set_contents(path, content, -1, &error));
        gettimeofday(&tv[0], NULL);
        tv[0].tv_sec -= age_sec;
        tv[1] = tv[0];
        g_assert_cmpint(utimes(path, tv), ==, 0);
}

static TestBus *start(const char *config) {
        TestBus *b = test_bus_new();

        test_bus_write_config(b, config ?: "[Daemon]\nExitOnIdleSec=infinity\n");
        return b;
}

static void start_daemon(TestBus *b, const char *const *extra_args) {
        if (!test_bus_start_daemon(b, extra_args))
                g_error("imgcached did not start:\n%s", test_bus_daemon_stderr(b));
}

static TestBus *start_with_daemon(const char *config) {
        TestBus *b = start(config);
        start_daemon(b, NULL);
        return b;
}

/* ---- stock clients ------------------------------------------------------------------------------ */

/* busctl --user call … ; returns its stdout (e.g. "b true\n"), or NULL. *ret_error is replaced by its
 * stderr. */
static char *busctl_call(TestBus *b, char **ret_error, const char *method, const char *signature, ...) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new();
        g_autofree char *out = NULL, *err = NULL;
        va_list ap;
        int status;

        g_ptr_array_add(argv, (char *) "busctl");
        g_ptr_array_add(argv, (char *) "--user");
        g_ptr_array_add(argv, (char *) "call");
        g_ptr_array_add(argv, (char *) TEST_BUS_NAME);
        g_ptr_array_add(argv, (char *) TEST_BUS_PATH);
        g_ptr_array_add(argv, (char *) TEST_BUS_IFACE);
        g_ptr_array_add(argv, (char *) method);
        if (signature) {
                g_ptr_array_add(argv, (char *) signature);
                va_start(ap, signature);
                for (const char *a; (a = va_arg(ap, const char *));)
                        g_ptr_array_add(argv, (char *) a);
                va_end(ap);
        }
        g_ptr_array_add(argv, NULL);

        status = test_bus_run(b, (const char *const *) argv->pdata, &out, &err);
        if (ret_error) {
                g_free(*ret_error);
                *ret_error = g_steal_pointer(&err);
        }
        return status == 0 ? g_steal_pointer(&out) : NULL;
}

static char *busctl_get_property(TestBus *b, const char *property) {
        const char *argv[] = { "busctl", "--user", "get-property", TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE,
                               property, NULL };
        g_autofree char *out = NULL, *err = NULL;

        g_assert_cmpint(test_bus_run(b, argv, &out, &err), ==, 0);
        return g_strchomp(g_steal_pointer(&out));
}

/* gdbus call --session …; returns the parsed reply tuple, or NULL with *ret_error_name set from
 * "GDBus.Error:<name>: <message>" and *ret_message (either may be NULL). */
static GVariant *gdbus_call(TestBus *b, char **ret_error_name, char **ret_message, const char *method, ...) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
        g_autofree char *out = NULL, *err = NULL;
        g_autoptr(GError) error = NULL;
        va_list ap;
        GVariant *v;

        g_ptr_array_add(argv, g_strdup("gdbus"));
        g_ptr_array_add(argv, g_strdup("call"));
        g_ptr_array_add(argv, g_strdup("--session"));
        g_ptr_array_add(argv, g_strdup("--dest=" TEST_BUS_NAME));
        g_ptr_array_add(argv, g_strdup("--object-path=" TEST_BUS_PATH));
        g_ptr_array_add(argv, g_strconcat("--method=" TEST_BUS_IFACE ".", method, NULL));
        va_start(ap, method);
        for (const char *a; (a = va_arg(ap, const char *));)
                g_ptr_array_add(argv, g_strdup(a));
        va_end(ap);
        g_ptr_array_add(argv, NULL);

        if (test_bus_run(b, (const char *const *) argv->pdata, &out, &err) != 0) {
                const char *p = strstr(err ?: "", "GDBus.Error:");
                g_assert_nonnull(p);
                p += strlen("GDBus.Error:");
                const char *colon = strstr(p, ": ");
                g_assert_nonnull(colon);
                if (ret_error_name)
                        *ret_error_name = g_strndup(p, (gsize) (colon - p));
                if (ret_message)
                        *ret_message = g_strchomp(g_strdup(colon + 2));
                return NULL;
        }
        v = g_variant_parse(NULL, out, NULL, NULL, &error);
        g_assert_no_error(error);
        return g_variant_ref_sink(v);
}

/* ---- GDBus in this process ---------------------------------------------------------------------- */

static GVariant *call(TestBus *b, const char *method, GVariant *params, GError **error) {
        return g_dbus_connection_call_sync(test_bus_connection(b), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE,
                                           method, params, NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS,
                                           NULL, error);
}

static GVariant *call_ok(TestBus *b, const char *method, GVariant *params) {
        g_autoptr(GError) error = NULL;
        GVariant *v = call(b, method, params, &error);
        g_assert_no_error(error);
        return v;
}

static void assert_call_error(TestBus *b, const char *method, GVariant *params, const char *error_name) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(b, method, params, &error);
        g_autofree char *name = NULL;

        g_assert_null(v);
        g_assert_nonnull(error);
        name = g_dbus_error_get_remote_error(error);
        g_assert_cmpstr(name, ==, error_name);
}

/* A Manager property's value (its variant, owned by the caller). */
static GVariant *get_property(TestBus *b, const char *property) {
        g_autoptr(GVariant) v = NULL;
        GVariant *inner;

        v = g_dbus_connection_call_sync(test_bus_connection(b), TEST_BUS_NAME, TEST_BUS_PATH,
                                        "org.freedesktop.DBus.Properties", "Get",
                                        g_variant_new("(ss)", TEST_BUS_IFACE, property), G_VARIANT_TYPE("(v)"),
                                        G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, NULL);
        g_assert_nonnull(v);
        g_variant_get(v, "(v)", &inner);
        return inner;
}

static guint32 get_u(TestBus *b, const char *property) {
        g_autoptr(GVariant) inner = get_property(b, property);

        if (g_variant_is_of_type(inner, G_VARIANT_TYPE_UINT32))
                return g_variant_get_uint32(inner);
        return (guint32) g_variant_get_uint64(inner);
}

static char *get_s(TestBus *b, const char *property) {
        g_autoptr(GVariant) inner = get_property(b, property);
        return g_variant_dup_string(inner, NULL);
}

/* ---- introspection equals the API of record ----------------------------------------------------- */

static char *args_signature(GDBusArgInfo **args) {
        GString *s = g_string_new(NULL);
        for (GDBusArgInfo **a = args; a && *a; a++)
                g_string_append_printf(s, "%s:%s,", (*a)->name, (*a)->signature);
        return g_string_free(s, FALSE);
}

static const char *emits_changed(GDBusPropertyInfo *p) {
        const char *v = g_dbus_annotation_info_lookup(p->annotations, "org.freedesktop.DBus.Property.EmitsChangedSignal");
        return v ?: "true";
}

/* Every member of want is in have with the same signature (names included). */
static void assert_interface_subset(GDBusInterfaceInfo *want, GDBusInterfaceInfo *have, const char *what) {
        for (GDBusMethodInfo **m = want->methods; m && *m; m++) {
                GDBusMethodInfo *h = g_dbus_interface_info_lookup_method(have, (*m)->name);
                if (!h)
                        g_error("method %s missing in %s", (*m)->name, what);
                g_autofree char *wi = args_signature((*m)->in_args), *hi = args_signature(h->in_args);
                g_autofree char *wo = args_signature((*m)->out_args), *ho = args_signature(h->out_args);
                g_assert_cmpstr(wi, ==, hi);
                g_assert_cmpstr(wo, ==, ho);
        }
        for (GDBusSignalInfo **s = want->signals; s && *s; s++) {
                GDBusSignalInfo *h = g_dbus_interface_info_lookup_signal(have, (*s)->name);
                if (!h)
                        g_error("signal %s missing in %s", (*s)->name, what);
                g_autofree char *w = args_signature((*s)->args), *hs = args_signature(h->args);
                g_assert_cmpstr(w, ==, hs);
        }
        for (GDBusPropertyInfo **p = want->properties; p && *p; p++) {
                GDBusPropertyInfo *h = g_dbus_interface_info_lookup_property(have, (*p)->name);
                if (!h)
                        g_error("property %s missing in %s", (*p)->name, what);
                g_assert_cmpstr((*p)->signature, ==, h->signature);
                g_assert_cmpint((*p)->flags, ==, h->flags);
                g_assert_cmpstr(emits_changed(*p), ==, emits_changed(h));
        }
}

static void test_introspection(void) {
        g_autoptr(TestBus) b = start_with_daemon(NULL);
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = NULL;
        g_autofree char *xml = NULL;
        g_autoptr(GDBusNodeInfo) record = NULL, live = NULL;
        const char *live_xml;

        g_assert_true(g_file_get_contents(g_getenv("IMGCACHE_MANAGER_XML"), &xml, NULL, &error));
        g_assert_no_error(error);
        record = g_dbus_node_info_new_for_xml(xml, &error);
        g_assert_no_error(error);

        v = g_dbus_connection_call_sync(test_bus_connection(b), TEST_BUS_NAME, TEST_BUS_PATH,
                                        "org.freedesktop.DBus.Introspectable", "Introspect", NULL,
                                        G_VARIANT_TYPE("(s)"), G_DBUS_CALL_FLAGS_NONE, -1, NULL, &error);
        g_assert_no_error(error);
        g_variant_get(v, "(&s)", &live_xml);
        live = g_dbus_node_info_new_for_xml(live_xml, &error);
        g_assert_no_error(error);

        GDBusInterfaceInfo *want = g_dbus_node_info_lookup_interface(record, TEST_BUS_IFACE);
        GDBusInterfaceInfo *have = g_dbus_node_info_lookup_interface(live, TEST_BUS_IFACE);
        g_assert_nonnull(want);
        g_assert_nonnull(have);
        assert_interface_subset(want, have, "the running daemon");
        assert_interface_subset(have, want, "dbus/org.imgcache.Manager.xml");
}

/* ---- read-only calls ---------------------------------------------------------------------------- */

static void test_list_and_get(void) {
        g_autoptr(TestBus) b = start(NULL);
        g_autoptr(GVariant) list = NULL, one = NULL, entry = NULL;
        g_autofree char *name = NULL, *msg = NULL;
        const char *id, *checksum;
        guint64 size, hits, accessed, modified;

        seed_image(b, "img-b", "bbbbbbb", 100);
        seed_image(b, "img-a", "hello\n", 200);
        start_daemon(b, NULL);

        list = gdbus_call(b, NULL, NULL, "ListImages", NULL);
        g_assert_nonnull(list);
        g_assert_true(g_variant_is_of_type(list, G_VARIANT_TYPE("(a(stttts))")));
        g_autoptr(GVariant) array = g_variant_get_child_value(list, 0);
        g_assert_cmpuint(g_variant_n_children(array), ==, 2);
        entry = g_variant_get_child_value(array, 0); /* sorted by id */
        g_variant_get(entry, "(&stttt&s)", &id, &size, &hits, &accessed, &modified, &checksum);
        g_assert_cmpstr(id, ==, "img-a");
        g_assert_cmpuint(size, ==, 6);
        g_assert_cmpuint(hits, ==, 0);
        g_assert_cmpuint(modified, >, (guint64) (g_get_real_time() - 300 * G_USEC_PER_SEC));
        g_assert_cmpuint(modified, <, (guint64) (g_get_real_time() - 100 * G_USEC_PER_SEC));
        g_assert_cmpstr(checksum, ==, "");

        one = gdbus_call(b, NULL, NULL, "GetImage", "img-b", NULL);
        g_assert_nonnull(one);
        g_variant_get(one, "((&stttt&s))", &id, &size, &hits, &accessed, &modified, &checksum);
        g_assert_cmpstr(id, ==, "img-b");
        g_assert_cmpuint(size, ==, 7);

        g_assert_null(gdbus_call(b, &name, &msg, "GetImage", "img-c", NULL));
        g_assert_cmpstr(name, ==, ERR_NO_SUCH_IMAGE);
        g_assert_nonnull(strstr(msg, "img-c"));

        g_autofree char *count = busctl_get_property(b, "ImageCount");
        g_assert_cmpstr(count, ==, "u 2");
        g_autofree char *current = busctl_get_property(b, "CurrentSize");
        g_assert_cmpstr(current, ==, "t 13");
}

/* ---- bad ids ------------------------------------------------------------------------------------ */

static void test_bad_ids(void) {
        g_autoptr(TestBus) b = start_with_daemon(NULL);
        g_autofree char *long_id = g_strnfill(200, 'a');
        const char *bad_ids[] = { "../x", "", long_id, "a/b", "a\x01" "b", ".hidden", "queue" };
        /* Each id-taking method, with its other arguments. */
        const struct {
                const char *method;
                const char *extra;
        } methods[] = {
                { "GetImage", NULL },     { "QueueImage", "" },   { "DequeueImage", NULL },
                { "DeleteImage", NULL },  { "Verify", NULL },     { "OpenImage", NULL },
                { "PinImage", "because" }, { "FetchImage", "" },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(methods); i++)
                for (size_t j = 0; j < G_N_ELEMENTS(bad_ids); j++) {
                        g_autofree char *name = NULL, *msg = NULL;
                        g_autoptr(GVariant) v = NULL;

                        /* gdbus parses its arguments as GVariant text: quote the id. */
                        g_autofree char *quoted = g_variant_print(g_variant_new_string(bad_ids[j]), FALSE);
                        g_autofree char *extra = methods[i].extra ?
                                g_variant_print(g_variant_new_string(methods[i].extra), FALSE) : NULL;
                        v = gdbus_call(b, &name, &msg, methods[i].method, quoted, extra, NULL);
                        if (v)
                                g_error("%s(%s) succeeded", methods[i].method, quoted);
                        g_test_message("%s(%s): %s: %s", methods[i].method, quoted, name, msg);
                        g_assert_cmpstr(name, ==, ERR_INVALID_ID);
                        g_assert_nonnull(strstr(msg, "Invalid image id"));
                }

        /* A message naming the reason, through the other stock client too. */
        g_autofree char *err = NULL;
        g_assert_null(busctl_call(b, &err, "GetImage", "s", "../x", NULL));
        g_assert_nonnull(strstr(err, "must not start with '.'"));
        g_assert_null(busctl_call(b, &err, "QueueImage", "ss", long_id, "", NULL));
        g_assert_nonnull(strstr(err, "at most 128"));

        /* After all that the daemon still answers. */
        g_autoptr(GVariant) still = call_ok(b, "ListImages", NULL);
        g_assert_nonnull(still);
}

/* ---- the queue ---------------------------------------------------------------------------------- */

static void test_queue(void) {
        g_autoptr(TestBus) b = start(NULL);
        g_autofree char *out = NULL, *err = NULL;
        g_autoptr(TestSignalLog) log = NULL;

        seed_image(b, "cached", "hello\n", 10);
        start_daemon(b, NULL);
        log = test_signal_log_new(b);

        out = busctl_call(b, &err, "QueueImage", "ss", "img-1", "", NULL);
        g_assert_cmpstr(out, ==, "b true\n");
        g_free(out);
        g_assert_nonnull(test_signal_log_wait(log, "ImageQueued", "img-1"));

        out = busctl_call(b, &err, "QueueImage", "ss", "img-1", "", NULL);
        g_assert_cmpstr(out, ==, "b false\n"); /* already queued */
        g_free(out);
        out = busctl_call(b, &err, "QueueImage", "ss", "cached", "", NULL);
        g_assert_cmpstr(out, ==, "b false\n"); /* already cached */
        g_free(out);
        out = busctl_call(b, &err, "QueueImage", "ss", "img-2", SHA256_HELLO, NULL);
        g_assert_cmpstr(out, ==, "b true\n");
        g_free(out);
        g_assert_null(busctl_call(b, &err, "QueueImage", "ss", "img-3", "sha256:xyz", NULL));
        g_assert_nonnull(strstr(err, "Invalid checksum 'sha256:xyz' for image img-3"));
        assert_call_error(b, "QueueImage", g_variant_new("(ss)", "img-3", "nonsense"), ERR_INVALID_ARGS);

        g_autoptr(GVariant) q = gdbus_call(b, NULL, NULL, "ListQueued", NULL);
        g_autoptr(GVariant) array = g_variant_get_child_value(q, 0);
        g_assert_cmpuint(g_variant_n_children(array), ==, 2);
        const char *id;
        guint64 at;
        g_variant_get_child(array, 0, "(&st)", &id, &at);
        g_assert_cmpstr(id, ==, "img-1"); /* oldest first */
        g_assert_cmpuint(at, >, (guint64) (g_get_real_time() - 60 * G_USEC_PER_SEC));
        g_variant_get_child(array, 1, "(&st)", &id, &at);
        g_assert_cmpstr(id, ==, "img-2");
        g_assert_cmpuint(get_u(b, "QueuedCount"), ==, 2);
        g_autoptr(GVariant) changed = test_signal_log_wait_property(log, "QueuedCount", g_variant_new_uint32(2), NULL);
        (void) changed;

        out = busctl_call(b, &err, "DequeueImage", "s", "img-1", NULL);
        g_assert_cmpstr(out, ==, ""); /* an empty reply */
        g_free(out);
        g_assert_null(busctl_call(b, &err, "DequeueImage", "s", "img-1", NULL));
        g_assert_nonnull(strstr(err, "img-1 is not queued"));
        assert_call_error(b, "DequeueImage", g_variant_new("(s)", "img-1"), ERR_NO_SUCH_IMAGE);

        out = busctl_call(b, &err, "QueueImage", "ss", "img-4", "", NULL);
        g_free(out);
        out = busctl_call(b, &err, "DequeueAll", NULL, NULL);
        g_assert_cmpstr(out, ==, "u 2\n");
        g_assert_cmpuint(get_u(b, "QueuedCount"), ==, 0);
}

static void test_queue_survives_restart(void) {
        g_autoptr(TestBus) b = start_with_daemon(NULL);
        g_autoptr(GVariant) r = call_ok(b, "QueueImage", g_variant_new("(ss)", "img-persist", ""));
        gboolean queued;
        int status;

        g_variant_get(r, "(b)", &queued);
        g_assert_true(queued);
        status = test_bus_stop_daemon(b);
        g_assert_true(WIFEXITED(status));
        g_assert_cmpint(WEXITSTATUS(status), ==, 0);

        start_daemon(b, NULL);
        g_autoptr(GVariant) q = gdbus_call(b, NULL, NULL, "ListQueued", NULL);
        g_autoptr(GVariant) array = g_variant_get_child_value(q, 0);
        const char *id;
        guint64 at;
        g_assert_cmpuint(g_variant_n_children(array), ==, 1);
        g_variant_get_child(array, 0, "(&st)", &id, &at);
        g_assert_cmpstr(id, ==, "img-persist");
}

/* ---- reading and hits --------------------------------------------------------------------------- */

static void test_open_image(void) {
        g_autoptr(TestBus) b = start(NULL);
        g_autoptr(TestSignalLog) log = NULL;
        char buf[64] = {};
        ssize_t n;
        int fd, flags, status;

        seed_image(b, "img-open", "the right bytes\n", 10);
        start_daemon(b, NULL);
        log = test_signal_log_new(b);

        fd = test_bus_call_fd(b, NULL, "OpenImage", g_variant_new("(s)", "img-open"));
        n = pread(fd, buf, sizeof buf - 1, 0);
        g_assert_cmpint(n, ==, 16);
        g_assert_cmpstr(buf, ==, "the right bytes\n");
        flags = fcntl(fd, F_GETFL);
        g_assert_cmpint(flags & O_ACCMODE, ==, O_RDONLY);
        g_assert_cmpint(write(fd, "x", 1), ==, -1);
        close(fd);

        g_autoptr(GVariant) hits = test_signal_log_wait_property(log, "Hits", g_variant_new_uint64(1), NULL);
        g_assert_cmpuint(g_variant_get_uint64(hits), ==, 1);
        g_autofree char *h = busctl_get_property(b, "Hits");
        g_assert_cmpstr(h, ==, "t 1");

        assert_call_error(b, "OpenImage", g_variant_new("(s)", "img-missing"), ERR_NO_SUCH_IMAGE);
        g_autoptr(GVariant) misses = test_signal_log_wait_property(log, "Misses", g_variant_new_uint64(1), NULL);
        g_assert_cmpuint(g_variant_get_uint64(misses), ==, 1);

        /* The hit is written at exit and read back by the next daemon. */
        status = test_bus_stop_daemon(b);
        g_assert_cmpint(WEXITSTATUS(status), ==, 0);
        start_daemon(b, NULL);
        g_autoptr(GVariant) e = call_ok(b, "GetImage", g_variant_new("(s)", "img-open"));
        guint64 size, nhits, accessed, modified;
        const char *id, *checksum;
        g_variant_get(e, "((&stttt&s))", &id, &size, &nhits, &accessed, &modified, &checksum);
        g_assert_cmpuint(nhits, ==, 1);
        g_assert_cmpuint(accessed, >, (guint64) (g_get_real_time() - 5 * G_USEC_PER_SEC));
}

/* ---- removal ------------------------------------------------------------------------------------ */

static void test_delete(void) {
        g_autoptr(TestBus) b = start(NULL);
        g_autoptr(TestSignalLog) log = NULL;
        g_autofree char *out = NULL, *err = NULL;
        g_autofree char *path = NULL;

        seed_image(b, "img-1", "1", 10);
        seed_image(b, "img-2", "22", 10);
        seed_image(b, "img-3", "333", 10);
        start_daemon(b, NULL);
        log = test_signal_log_new(b);

        out = busctl_call(b, &err, "DeleteImage", "s", "img-1", NULL);
        g_assert_nonnull(out);
        GVariant *p = test_signal_log_wait(log, "ImageRemoved", "img-1");
        const char *id, *reason;
        g_variant_get(p, "(&s&s)", &id, &reason);
        g_assert_cmpstr(reason, ==, "deleted");
        path = g_build_filename(test_bus_cache_dir(b), "img-1", NULL);
        g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
        assert_call_error(b, "GetImage", g_variant_new("(s)", "img-1"), ERR_NO_SUCH_IMAGE);
        assert_call_error(b, "DeleteImage", g_variant_new("(s)", "img-1"), ERR_NO_SUCH_IMAGE);

        g_autoptr(GVariant) count = test_signal_log_wait_property(log, "ImageCount", g_variant_new_uint32(2), NULL);
        (void) count;
        g_free(out);
        out = busctl_call(b, &err, "DeleteAllImages", NULL, NULL);
        g_assert_cmpstr(out, ==, "u 2\n");
        g_assert_nonnull(test_signal_log_wait(log, "ImageRemoved", "img-2"));
        g_assert_nonnull(test_signal_log_wait(log, "ImageRemoved", "img-3"));
        g_assert_cmpuint(get_u(b, "ImageCount"), ==, 0);
        g_autofree char *size = busctl_get_property(b, "CurrentSize");
        g_assert_cmpstr(size, ==, "t 0");
}

/* ---- pins and prune ----------------------------------------------------------------------------- */

static guint n_pins(TestBus *b) {
        g_autoptr(GVariant) v = call_ok(b, "ListPins", NULL);
        g_autoptr(GVariant) a = g_variant_get_child_value(v, 0);
        return (guint) g_variant_n_children(a);
}

/* The pin ends when the daemon sees the hang-up of its pipe; each ListPins is a round trip through the
 * daemon's loop, bounded by the deadline. */
static void wait_no_pins(TestBus *b) {
        gint64 deadline = g_get_monotonic_time() + TEST_BUS_TIMEOUT_MS * 1000;

        while (n_pins(b) > 0)
                g_assert_cmpint(g_get_monotonic_time(), <, deadline);
}

static void test_pin_and_prune(void) {
        /* Three images of 5 bytes, MaxSize 6: Prune must leave one. LRU order: a (oldest), b, c. */
        g_autoptr(TestBus) b = start("[Cache]\nMaxSize=6\n[Daemon]\nExitOnIdleSec=infinity\n");
        g_autoptr(TestSignalLog) log = NULL;
        g_autofree char *out = NULL, *err = NULL;
        guint32 files, pid;
        guint64 bytes;
        int fd;

        seed_image(b, "a", "aaaaa", 300);
        seed_image(b, "c", "ccccc", 100);
        seed_image(b, "b", "bbbbb", 200);
        start_daemon(b, NULL);
        log = test_signal_log_new(b);

        g_autofree char *max = busctl_get_property(b, "MaxSize");
        g_assert_cmpstr(max, ==, "t 6");

        fd = test_bus_call_fd(b, NULL, "PinImage", g_variant_new("(ss)", "a", "booting a VM"));
        g_autoptr(GVariant) pins = call_ok(b, "ListPins", NULL);
        g_autoptr(GVariant) pin_list = g_variant_get_child_value(pins, 0);
        const char *id, *why;
        g_assert_cmpuint(g_variant_n_children(pin_list), ==, 1);
        g_variant_get_child(pin_list, 0, "(&su&s)", &id, &pid, &why);
        g_assert_cmpstr(id, ==, "a");
        g_assert_cmpuint(pid, ==, (guint32) getpid());
        g_assert_cmpstr(why, ==, "booting a VM");

        /* Without the pin, a (least recently used) would go first and b after it. */
        out = busctl_call(b, &err, "Prune", NULL, NULL);
        g_assert_cmpstr(out, ==, "ut 2 10\n");
        g_autoptr(GVariant) still = call_ok(b, "GetImage", g_variant_new("(s)", "a"));
        assert_call_error(b, "GetImage", g_variant_new("(s)", "b"), ERR_NO_SUCH_IMAGE);
        assert_call_error(b, "GetImage", g_variant_new("(s)", "c"), ERR_NO_SUCH_IMAGE);
        g_assert_nonnull(test_signal_log_wait(log, "ImageRemoved", "b"));
        g_assert_nonnull(test_signal_log_wait(log, "ImageRemoved", "c"));
        g_assert_cmpint(test_signal_log_find(log, "ImageRemoved", "a"), <, 0);
        g_variant_get(test_signal_log_wait(log, "ImageRemoved", "b"), "(&s&s)", &id, &why);
        g_assert_cmpstr(why, ==, "pruned");

        /* A duplicate of the fd keeps the pin; closing the last copy ends it. */
        int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        close(fd);
        g_assert_cmpuint(n_pins(b), ==, 1);
        close(dup_fd);
        wait_no_pins(b);

        /* Now a can go: MaxSize=0 through a reload (SIGHUP), then Prune. */
        test_bus_write_config(b, "[Cache]\nMaxSize=0\n[Daemon]\nExitOnIdleSec=infinity\n");
        g_assert_cmpint(kill(test_bus_name_owner_pid(b), SIGHUP), ==, 0);
        g_autoptr(GVariant) new_max = test_signal_log_wait_property(log, "MaxSize", g_variant_new_uint64(0), NULL);
        g_assert_cmpuint(g_variant_get_uint64(new_max), ==, 0);
        g_autoptr(GVariant) r = call_ok(b, "Prune", NULL);
        g_variant_get(r, "(ut)", &files, &bytes);
        g_assert_cmpuint(files, ==, 1);
        g_assert_cmpuint(bytes, ==, 5);
        g_assert_nonnull(test_signal_log_wait(log, "ImageRemoved", "a"));
}

static void on_name_lost(GDBusConnection *c, const char *sender, const char *path, const char *iface,
                         const char *member, GVariant *params, gpointer userdata) {
        const char *name, *old_owner, *new_owner;

        g_variant_get(params, "(&s&s&s)", &name, &old_owner, &new_owner);
        if (!*new_owner)
                *(gboolean *) userdata = TRUE;
}

/* Closes connection and waits until the bus announced that its unique name is gone. The bus sends that
 * NameOwnerChanged to imgcached before it reads anything this test sends afterwards, so a call made after
 * the wait reaches imgcached after the disconnect. */
static void close_and_wait_gone(TestBus *b, GDBusConnection *connection) {
        g_autoptr(GError) error = NULL;
        const char *unique = g_dbus_connection_get_unique_name(connection);
        gboolean gone = FALSE;
        guint sub;

        sub = g_dbus_connection_signal_subscribe(test_bus_connection(b), "org.freedesktop.DBus",
                                                 "org.freedesktop.DBus", "NameOwnerChanged", "/org/freedesktop/DBus",
                                                 unique, G_DBUS_SIGNAL_FLAGS_NONE, on_name_lost, &gone, NULL);
        g_autoptr(GVariant) round_trip = call_ok(b, "ListPins", NULL); /* the match is in place */
        g_assert_true(g_dbus_connection_close_sync(connection, NULL, &error));
        g_assert_no_error(error);
        g_assert_true(test_bus_wait_flag(&gone, TEST_BUS_TIMEOUT_MS));
        g_dbus_connection_signal_unsubscribe(test_bus_connection(b), sub);
}

static GDBusConnection *new_connection(TestBus *b) {
        g_autoptr(GError) error = NULL;
        GDBusConnection *c;

        c = g_dbus_connection_new_for_address_sync(test_bus_address(b),
                                                   G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT |
                                                   G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION,
                                                   NULL, NULL, &error);
        g_assert_no_error(error);
        return c;
}

/* The fd is the lease: a holder that keeps a dup of it and closes its bus connection keeps the pin, through
 * a Prune that would otherwise take the image. */
static void test_pin_outlives_bus_connection(void) {
        g_autoptr(TestBus) b = start("[Cache]\nMaxSize=1\n[Daemon]\nExitOnIdleSec=infinity\n");
        g_autoptr(GDBusConnection) other = NULL;
        const char *id, *why;
        guint32 files, pid;
        guint64 bytes;
        int fd, dup_fd;

        seed_image(b, "img", "xxxxx", 10);
        seed_image(b, "old", "yyy", 20);
        start_daemon(b, NULL);
        assert_call_error(b, "PinImage", g_variant_new("(ss)", "nope", "why"), ERR_NO_SUCH_IMAGE);

        other = new_connection(b);
        fd = test_bus_call_fd(b, other, "PinImage", g_variant_new("(ss)", "img", "lease test"));
        dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        g_assert_cmpint(dup_fd, >=, 0);
        close(fd);
        close_and_wait_gone(b, other);

        g_autoptr(GVariant) pins = call_ok(b, "ListPins", NULL);
        g_autoptr(GVariant) pin_list = g_variant_get_child_value(pins, 0);
        g_assert_cmpuint(g_variant_n_children(pin_list), ==, 1);
        g_variant_get_child(pin_list, 0, "(&su&s)", &id, &pid, &why);
        g_assert_cmpstr(id, ==, "img");
        g_assert_cmpuint(pid, ==, (guint32) getpid()); /* who asked, even after it disconnected */
        g_assert_cmpstr(why, ==, "lease test");

        g_autoptr(GVariant) pruned = call_ok(b, "Prune", NULL);
        g_variant_get(pruned, "(ut)", &files, &bytes);
        g_assert_cmpuint(files, ==, 1); /* old only */
        g_assert_cmpuint(bytes, ==, 3);
        g_autoptr(GVariant) kept = call_ok(b, "GetImage", g_variant_new("(s)", "img"));

        /* The hang-up goes before bus calls: the pin is gone for the first call after the last close. */
        close(dup_fd);
        g_assert_cmpuint(n_pins(b), ==, 0);
        g_autoptr(GVariant) pruned_now = call_ok(b, "Prune", NULL);
        g_variant_get(pruned_now, "(ut)", &files, &bytes);
        g_assert_cmpuint(files, ==, 1);
        assert_call_error(b, "GetImage", g_variant_new("(s)", "img"), ERR_NO_SUCH_IMAGE);
}

/* DeleteImage refuses a pinned image with a named error; DeleteAllImages keeps it; the flag deletes it
 * and ends its pins. */
static void test_delete_pinned(void) {
        g_autoptr(TestBus) b = start(NULL);
        g_autoptr(TestSignalLog) log = NULL;
        g_autofree char *name = NULL, *msg = NULL, *path = NULL;
        int fd;

        seed_image(b, "img", "x", 10);
        seed_image(b, "free", "y", 10);
        start_daemon(b, NULL);
        log = test_signal_log_new(b);
        fd = test_bus_call_fd(b, NULL, "PinImage", g_variant_new("(ss)", "img", "booting a VM"));

        g_assert_null(gdbus_call(b, &name, &msg, "DeleteImage", "img", NULL));
        g_assert_cmpstr(name, ==, ERR_IMAGE_PINNED);
        g_test_message("%s", msg);
        g_assert_nonnull(strstr(msg, "booting a VM"));
        g_autofree char *pid = g_strdup_printf("pid %d", (int) getpid());
        g_assert_nonnull(strstr(msg, pid));
        g_autoptr(GVariant) still = call_ok(b, "GetImage", g_variant_new("(s)", "img"));

        g_autoptr(GVariant) n = call_ok(b, "DeleteAllImages", NULL);
        guint32 deleted;
        g_variant_get(n, "(u)", &deleted);
        g_assert_cmpuint(deleted, ==, 1);
        g_assert_nonnull(test_signal_log_wait(log, "ImageRemoved", "free"));
        g_autoptr(GVariant) kept = call_ok(b, "GetImage", g_variant_new("(s)", "img"));
        g_assert_cmpuint(n_pins(b), ==, 1);

        assert_call_error(b, "DeleteImageWithFlags", g_variant_new("(st)", "img", (guint64) 0), ERR_IMAGE_PINNED);
        assert_call_error(b, "DeleteImageWithFlags", g_variant_new("(st)", "img", (guint64) 2), ERR_INVALID_ARGS);
        assert_call_error(b, "DeleteImageWithFlags", g_variant_new("(st)", "../x", (guint64) 1), ERR_INVALID_ID);
        g_autoptr(GVariant) forced = call_ok(b, "DeleteImageWithFlags", g_variant_new("(st)", "img", (guint64) 1));
        g_assert_nonnull(test_signal_log_wait(log, "ImageRemoved", "img"));
        path = g_build_filename(test_bus_cache_dir(b), "img", NULL);
        g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
        /* The pin went with its image, though its fd is still open here. */
        g_assert_cmpuint(n_pins(b), ==, 0);
        assert_call_error(b, "DeleteImageWithFlags", g_variant_new("(st)", "img", (guint64) 1), ERR_NO_SUCH_IMAGE);
        close(fd);
}

/* ---- maintenance -------------------------------------------------------------------------------- */

static void test_verify(void) {
        g_autoptr(TestBus) b = start(NULL);
        g_autoptr(TestSignalLog) log = NULL;
        g_autofree char *out = NULL, *err = NULL, *path = NULL, *invalid = NULL;
        const char *id, *checksum;
        guint64 size, hits, accessed, modified;

        seed_image(b, "img", "hello\n", 10);
        start_daemon(b, NULL);
        log = test_signal_log_new(b);

        /* An adopted image has no checksum: Verify records one. */
        out = busctl_call(b, &err, "Verify", "s", "img", NULL);
        g_assert_cmpstr(out, ==, "b true\n");
        g_autoptr(GVariant) e = call_ok(b, "GetImage", g_variant_new("(s)", "img"));
        g_variant_get(e, "((&stttt&s))", &id, &size, &hits, &accessed, &modified, &checksum);
        g_assert_cmpstr(checksum, ==, SHA256_HELLO);
        g_free(out);
        out = busctl_call(b, &err, "Verify", "s", "img", NULL);
        g_assert_cmpstr(out, ==, "b true\n");

        /* Corrupt it behind the daemon's back: Verify says false and moves it to invalid/. */
        path = g_build_filename(test_bus_cache_dir(b), "img", NULL);
        g_assert_true(g_file_set_contents(path, "HELLO\n", -1, NULL));
        g_free(out);
        out = busctl_call(b, &err, "Verify", "s", "img", NULL);
        g_assert_cmpstr(out, ==, "b false\n");
        GVariant *p = test_signal_log_wait(log, "ImageRemoved", "img");
        const char *reason;
        g_variant_get(p, "(&s&s)", &id, &reason);
        g_assert_cmpstr(reason, ==, "invalid");
        invalid = g_build_filename(test_bus_cache_dir(b), "invalid", "img", NULL);
        g_assert_true(g_file_test(invalid, G_FILE_TEST_IS_REGULAR));
        assert_call_error(b, "Verify", g_variant_new("(s)", "img"), ERR_NO_SUCH_IMAGE);

        /* Clean removes it from invalid/. */
        g_autoptr(GVariant) c = call_ok(b, "Clean", g_variant_new("(t)", (guint64) 0));
        guint32 stalled, removed;
        g_variant_get(c, "(uu)", &stalled, &removed);
        g_assert_cmpuint(stalled, ==, 0);
        g_assert_cmpuint(removed, ==, 1);
        g_assert_false(g_file_test(invalid, G_FILE_TEST_EXISTS));
}

static void test_clean(void) {
        g_autoptr(TestBus) b = start_with_daemon("[Cache]\nStallTimeSec=1h\n[Daemon]\nExitOnIdleSec=infinity\n");
        g_autofree char *old = g_build_filename(test_bus_cache_dir(b), "incomplete", "old", NULL);
        g_autofree char *fresh = g_build_filename(test_bus_cache_dir(b), "incomplete", "fresh", NULL);
        struct timeval tv[2];
        guint32 stalled, invalid;

        g_autofree char *stall = busctl_get_property(b, "StallTimeUSec");
        g_assert_cmpstr(stall, ==, "t 3600000000");

        g_assert_true(g_file_set_contents(old, "partial", -1, NULL));
        g_assert_true(g_file_set_contents(fresh, "partial", -1, NULL));
        gettimeofday(&tv[0], NULL);
        tv[0].tv_sec -= 2 * 3600;
        tv[1] = tv[0];
        g_assert_cmpint(utimes(old, tv), ==, 0);

        /* 0 = the configured 1h: only the old one goes. */
        g_autoptr(GVariant) r = call_ok(b, "Clean", g_variant_new("(t)", (guint64) 0));
        g_variant_get(r, "(uu)", &stalled, &invalid);
        g_assert_cmpuint(stalled, ==, 1);
        g_assert_cmpuint(invalid, ==, 0);
        g_assert_false(g_file_test(old, G_FILE_TEST_EXISTS));
        g_assert_true(g_file_test(fresh, G_FILE_TEST_EXISTS));

        /* An explicit stall time of 1 µs takes the fresh one too (its mtime is in the past). */
        g_autoptr(GVariant) r2 = call_ok(b, "Clean", g_variant_new("(t)", (guint64) 1));
        g_variant_get(r2, "(uu)", &stalled, &invalid);
        g_assert_cmpuint(stalled, ==, 1);
        g_assert_false(g_file_test(fresh, G_FILE_TEST_EXISTS));
}

static void test_no_upstream(void) {
        g_autoptr(TestBus) b = start_with_daemon(NULL);
        g_autofree char *name = NULL, *msg = NULL;

        g_assert_null(gdbus_call(b, &name, &msg, "Prefetch", NULL));
        g_assert_cmpstr(name, ==, ERR_NO_UPSTREAM);
        g_assert_nonnull(strstr(msg, "No upstream is configured"));
        g_clear_pointer(&name, g_free);
        g_clear_pointer(&msg, g_free);
        g_assert_null(gdbus_call(b, &name, &msg, "FetchImage", "'img'", "''", NULL));
        g_assert_cmpstr(name, ==, ERR_NO_UPSTREAM);
        assert_call_error(b, "ListJobs", NULL, ERR_NO_UPSTREAM);

        /* With an upstream (--upstream= counts) FetchImage answers with a job (tests/fetch/test-fetch-daemon.c
         * follows jobs to their end). */
        test_bus_stop_daemon(b);
        const char *args[] = { "--upstream=http://mirror.example/{id}", NULL };
        start_daemon(b, args);
        g_autofree char *up = busctl_get_property(b, "Upstream");
        g_assert_cmpstr(up, ==, "s \"http://mirror.example/{id}\"");
        g_autoptr(GVariant) job = call_ok(b, "FetchImage", g_variant_new("(ss)", "img", ""));
        const char *path = NULL;
        g_variant_get(job, "(&o)", &path);
        g_assert_true(g_str_has_prefix(path, "/org/imgcache/job/"));

        /* Every bus peer may read Upstream: a URL's credentials are not shown. */
        test_bus_stop_daemon(b);
        const char *secret[] = { "--upstream=http://fetcher:s3cret@mirror.example/{id}", NULL };
        start_daemon(b, secret);
        g_autofree char *shown = busctl_get_property(b, "Upstream");
        g_assert_cmpstr(shown, ==, "s \"http://mirror.example/{id}\"");
}

/* Without a bus, the one line says which bus was looked for where, and how to get one. */
static void test_no_bus_hint(void) {
        g_autoptr(TestBus) b = start(NULL);
        g_autofree char *runtime = g_build_filename(test_bus_dir(b), "run", NULL);
        g_autofree char *runtime_env = g_strconcat("XDG_RUNTIME_DIR=", runtime, NULL);
        g_autofree char *nowhere = g_strdup_printf("DBUS_SYSTEM_BUS_ADDRESS=unix:path=%s/no-bus", test_bus_dir(b));
        g_autofree char *cache_arg = g_strconcat("--cache-dir=", test_bus_cache_dir(b), NULL);
        g_autofree char *config_arg = g_strconcat("--config=", test_bus_config_path(b), NULL);
        const char *daemon = test_bus_daemon_path();

        g_assert_cmpint(g_mkdir(runtime, 0700), ==, 0);
        {
                const char *argv[] = { "env", "-u", "DBUS_SESSION_BUS_ADDRESS", runtime_env, daemon, "--user",
                                       cache_arg, config_arg, "--listen=127.0.0.1:0", NULL };
                g_autofree char *err = NULL;
                g_autofree char *line = g_strdup_printf(
                        "Cannot connect to the session bus: No such file or directory (DBUS_SESSION_BUS_ADDRESS is "
                        "not set and %s/bus does not exist; start it in a user session or under dbus-run-session)\n",
                        runtime);

                g_assert_cmpint(test_bus_run(b, argv, NULL, &err), ==, 1);
                g_assert_true(g_str_has_suffix(err, line));
        }
        {
                const char *argv[] = { "env", "-u", "DBUS_SESSION_BUS_ADDRESS", "-u", "XDG_RUNTIME_DIR", daemon, "--user",
                                       cache_arg, config_arg, "--listen=127.0.0.1:0", NULL };
                g_autofree char *err = NULL;

                g_assert_cmpint(test_bus_run(b, argv, NULL, &err), ==, 1);
                g_assert_true(g_str_has_suffix(err, "Cannot connect to the session bus: No medium found (neither "
                                                    "DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set; start it "
                                                    "in a user session or under dbus-run-session)\n"));
        }
        {
                /* The system bus at an address that was set on purpose: that address is what to check. */
                const char *argv[] = { "env", nowhere, daemon, cache_arg, config_arg, "--listen=127.0.0.1:0", NULL };
                g_autofree char *err = NULL;
                g_autofree char *line = g_strdup_printf("Cannot connect to the system bus: No such file or directory "
                                                        "(is the bus at %s running?)\n",
                                                        nowhere + strlen("DBUS_SYSTEM_BUS_ADDRESS="));

                g_assert_cmpint(test_bus_run(b, argv, NULL, &err), ==, 1);
                g_assert_true(g_str_has_suffix(err, line));
        }
}

/* ---- properties --------------------------------------------------------------------------------- */

/* ListenAddress is the address served: the port the kernel chose for :0, the socket systemd passed, and
 * nothing when the address was taken and the daemon went on without HTTP. */
static void test_listen_address(void) {
        g_autoptr(TestBus) b = start_with_daemon(NULL);
        uint16_t port;
        int fd;

        test_bus_stop_daemon(b);
        {
                const char *args[] = { "--listen=127.0.0.1:0", NULL };
                g_autofree char *address = NULL;
                unsigned got = 0;

                start_daemon(b, args);
                address = get_s(b, "ListenAddress");
                g_assert_true(g_str_has_prefix(address, "127.0.0.1:"));
                g_assert_cmpint(sscanf(address, "127.0.0.1:%u", &got), ==, 1);
                g_assert_cmpuint(got, >, 0);
                g_assert_cmpuint(got, <=, UINT16_MAX);
                test_bus_stop_daemon(b);
        }

        fd = test_listen_socket(&port);
        {
                g_autofree char *expected = g_strdup_printf("127.0.0.1:%u", port);
                g_autofree char *address = NULL;

                g_assert_true(test_bus_start_daemon_listening(b, fd, NULL));
                address = get_s(b, "ListenAddress");
                g_assert_cmpstr(address, ==, expected);
                test_bus_stop_daemon(b);
        }
        {
                /* fd still listens here: the daemon cannot bind the same address. */
                g_autofree char *taken = g_strdup_printf("--listen=127.0.0.1:%u", port);
                const char *args[] = { taken, NULL };
                g_autofree char *address = NULL;

                start_daemon(b, args);
                g_assert_true(test_bus_wait_stderr(b, "Continuing without HTTP", TEST_BUS_TIMEOUT_MS));
                address = get_s(b, "ListenAddress");
                g_assert_cmpstr(address, ==, "");
        }
        close(fd);
}

/* PinCount follows the pins, each change announced. */
static void test_pin_count(void) {
        g_autoptr(TestBus) b = start(NULL);
        g_autoptr(TestSignalLog) log = NULL;
        int fd, fd2;

        seed_image(b, "img", "12345", 10);
        start_daemon(b, NULL);
        log = test_signal_log_new(b);
        g_assert_cmpuint(get_u(b, "PinCount"), ==, 0);

        fd = test_bus_call_fd(b, NULL, "PinImage", g_variant_new("(ss)", "img", "one"));
        g_autoptr(GVariant) one = test_signal_log_wait_property(log, "PinCount", g_variant_new_uint32(1), NULL);
        fd2 = test_bus_call_fd(b, NULL, "PinImage", g_variant_new("(ss)", "img", "two"));
        g_autoptr(GVariant) two = test_signal_log_wait_property(log, "PinCount", g_variant_new_uint32(2), NULL);
        g_assert_cmpuint(get_u(b, "PinCount"), ==, 2);

        close(fd);
        close(fd2);
        g_autoptr(GVariant) none = test_signal_log_wait_property(log, "PinCount", g_variant_new_uint32(0), NULL);
        g_assert_cmpuint(get_u(b, "PinCount"), ==, 0);
}


static void test_properties(void) {
        g_autoptr(TestBus) b = start_with_daemon("[Cache]\nMaxSize=1G\nDriver=sqlite\n[Daemon]\nExitOnIdleSec=infinity\n");
        g_autoptr(TestSignalLog) log = test_signal_log_new(b);
        g_autofree char *version = NULL, *dir = NULL, *driver = NULL, *expected_dir = NULL;
        guint count = 0;

        version = busctl_get_property(b, "Version");
        g_autofree char *expected_version = g_strdup_printf("s \"%s\"", g_getenv("IMGCACHE_VERSION"));
        g_assert_cmpstr(version, ==, expected_version);
        dir = busctl_get_property(b, "CacheDirectory");
        expected_dir = g_strdup_printf("s \"%s\"", test_bus_cache_dir(b));
        g_assert_cmpstr(dir, ==, expected_dir);
        driver = busctl_get_property(b, "Driver");
        g_assert_cmpstr(driver, ==, "s \"sqlite\"");
        g_autofree char *max = busctl_get_property(b, "MaxSize");
        g_assert_cmpstr(max, ==, "t 1073741824");
        g_autofree char *served = busctl_get_property(b, "BytesServed");
        g_assert_cmpstr(served, ==, "t 0");

        /* 20 changes in a burst: PropertiesChanged is coalesced, far fewer than 20 signals. */
        for (int i = 0; i < 20; i++) {
                g_autofree char *id = g_strdup_printf("burst-%d", i);
                g_autoptr(GVariant) r = call_ok(b, "QueueImage", g_variant_new("(ss)", id, ""));
        }
        g_autoptr(GVariant) last = test_signal_log_wait_property(log, "QueuedCount", g_variant_new_uint32(20), &count);
        g_assert_nonnull(last);
        g_test_message("%u PropertiesChanged for 20 changes", count);
        g_assert_cmpuint(count, <=, 4);
        g_assert_cmpint(test_signal_log_find(log, "ImageQueued", "burst-19"), >=, 0);
}

/* ---- sd_notify, SIGHUP, SIGTERM ----------------------------------------------------------------- */

typedef struct NotifySocket {
        int fd;
        char *path;
} NotifySocket;

static void notify_socket_open(NotifySocket *s, TestBus *b) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        s->path = g_build_filename(test_bus_dir(b), "notify", NULL);
        g_assert_cmpuint(strlen(s->path), <, sizeof sa.sun_path);
        strcpy(sa.sun_path, s->path);
        s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        g_assert_cmpint(s->fd, >=, 0);
        g_assert_cmpint(bind(s->fd, (struct sockaddr *) &sa, sizeof sa), ==, 0);
        g_setenv("NOTIFY_SOCKET", s->path, TRUE);
}

/* Reads datagrams until one contains needle; returns it. */
static char *notify_wait(NotifySocket *s, const char *needle) {
        gint64 deadline = g_get_monotonic_time() + TEST_BUS_TIMEOUT_MS * 1000;

        for (;;) {
                GPollFD p = { .fd = s->fd, .events = G_IO_IN };
                char buf[4096];
                gint64 left = (deadline - g_get_monotonic_time()) / 1000;
                ssize_t n;

                g_assert_cmpint(left, >, 0);
                if (g_poll(&p, 1, (gint) left) <= 0)
                        continue;
                n = recv(s->fd, buf, sizeof buf - 1, 0);
                g_assert_cmpint(n, >=, 0);
                buf[n] = 0;
                g_test_message("notify: %s", buf);
                if (strstr(buf, needle))
                        return g_strdup(buf);
        }
}

static void test_notify_and_signals(void) {
        g_autoptr(TestBus) b = start(NULL);
        NotifySocket s;
        int status;

        seed_image(b, "img", "12345", 10);
        notify_socket_open(&s, b);
        start_daemon(b, NULL);
        g_unsetenv("NOTIFY_SOCKET");

        g_autofree char *ready = notify_wait(&s, "READY=1");
        g_assert_nonnull(strstr(ready, "STATUS=1 images, 5B of 10G, hit ratio n/a"));

        /* STATUS= follows the counters. */
        int fd = test_bus_call_fd(b, NULL, "OpenImage", g_variant_new("(s)", "img"));
        close(fd);
        g_autofree char *status_hit = notify_wait(&s, "hit ratio 100%");
        g_assert_nonnull(strstr(status_hit, "STATUS=1 images, 5B of 10G"));

        g_assert_cmpint(kill(test_bus_name_owner_pid(b), SIGHUP), ==, 0);
        g_autofree char *reloading = notify_wait(&s, "RELOADING=1");
        g_autofree char *ready2 = notify_wait(&s, "READY=1");
        g_assert_nonnull(strstr(ready2, "STATUS="));

        /* A bad value on reload keeps the old configuration and the daemon running. */
        test_bus_write_config(b, "[Cache]\nMaxSize=lots\n");
        g_assert_cmpint(kill(test_bus_name_owner_pid(b), SIGHUP), ==, 0);
        g_autofree char *ready3 = notify_wait(&s, "READY=1");
        g_autofree char *max = busctl_get_property(b, "MaxSize");
        g_assert_cmpstr(max, ==, "t 10737418240");
        g_assert_true(test_bus_wait_stderr(b, "MaxSize", TEST_BUS_TIMEOUT_MS));

        status = test_bus_stop_daemon(b);
        g_assert_true(WIFEXITED(status));
        g_assert_cmpint(WEXITSTATUS(status), ==, 0);
        g_autofree char *stopping = notify_wait(&s, "STOPPING=1");
        close(s.fd);
        g_free(s.path);
}

/* A reload names what it cannot apply (one log line, the STATUS=), and the properties keep saying what
 * the running daemon uses. */
static void test_reload_names_restart_settings(void) {
        uint16_t port = test_free_port(), other = test_free_port();
        g_autofree char *config = g_strdup_printf("[HTTP]\nListen=127.0.0.1:%u\n[Daemon]\nExitOnIdleSec=infinity\n", port);
        g_autoptr(TestBus) b = start(config);
        NotifySocket s;

        notify_socket_open(&s, b);
        start_daemon(b, NULL);
        g_unsetenv("NOTIFY_SOCKET");
        g_autofree char *ready = notify_wait(&s, "READY=1");
        g_assert_null(strstr(ready, "restart"));

        g_autofree char *changed = g_strdup_printf("[Cache]\nDriver=xattr\nMaxSize=5G\n[HTTP]\nListen=127.0.0.1:%u\n"
                                                   "[Daemon]\nExitOnIdleSec=infinity\n", other);
        test_bus_write_config(b, changed);
        g_assert_cmpint(kill(test_bus_name_owner_pid(b), SIGHUP), ==, 0);
        g_autofree char *ready2 = notify_wait(&s, "READY=1");
        g_assert_nonnull(strstr(ready2, "restart to apply Driver=, Listen="));
        g_assert_true(test_bus_wait_stderr(b, "keeps its Driver=, Listen= until it is restarted", TEST_BUS_TIMEOUT_MS));
        g_autofree char *driver = busctl_get_property(b, "Driver");
        g_assert_cmpstr(driver, ==, "s \"sqlite\"");  /* what it uses, not what the file says */
        g_autofree char *max = busctl_get_property(b, "MaxSize");
        g_assert_cmpstr(max, ==, "t 5368709120");    /* applied at once */

        g_assert_cmpint(test_bus_stop_daemon(b), ==, 0);
        close(s.fd);
        g_free(s.path);
}

/* A reload that a part refuses (here the fetcher: Keystone credentials anyone may read) changes nothing,
 * and says so: no "Reloaded", the properties as before. */
static void test_reload_refused(void) {
        g_autoptr(TestBus) b = start("[Cache]\nMaxSize=5G\n[Upstream]\nURL=http://127.0.0.1:1/images/{id}\n"
                                     "[Daemon]\nExitOnIdleSec=infinity\n");
        start_daemon(b, NULL);
        g_autofree char *creds = g_build_filename(test_bus_dir(b), "keystone.conf", NULL);
        g_assert_true(g_file_set_contents(creds, "application_credential_id=a\napplication_credential_secret=s\n", -1,
                                          NULL));
        g_assert_cmpint(chmod(creds, 0644), ==, 0);
        g_autofree char *changed = g_strdup_printf("[Cache]\nMaxSize=7G\n[Upstream]\nKind=glance\n"
                                                   "URL=http://127.0.0.1:1\nAuth=keystone\n"
                                                   "AuthURL=http://127.0.0.1:1/v3\nCredentialsFile=%s\n"
                                                   "[Daemon]\nExitOnIdleSec=infinity\n", creds);
        test_bus_write_config(b, changed);
        g_assert_cmpint(kill(test_bus_name_owner_pid(b), SIGHUP), ==, 0);
        g_assert_true(test_bus_wait_stderr(b, "Keeping the previous configuration", TEST_BUS_TIMEOUT_MS));
        g_assert_null(strstr(test_bus_daemon_stderr(b), "Reloaded"));
        g_autofree char *max = busctl_get_property(b, "MaxSize");
        g_assert_cmpstr(max, ==, "t 5368709120");
        g_autofree char *upstream = busctl_get_property(b, "Upstream");
        g_assert_nonnull(strstr(upstream, "/images/{id}"));
        g_assert_cmpint(test_bus_stop_daemon(b), ==, 0);
}

/* Under WatchdogSec= the daemon pings from its loop, and those wake-ups are not activity: they must
 * neither keep it alive forever nor make it exit before ExitOnIdleSec has passed. */
static void test_watchdog(void) {
        g_autoptr(TestBus) b = start("[Daemon]\nExitOnIdleSec=2\n");
        NotifySocket s;

        notify_socket_open(&s, b);
        g_setenv("WATCHDOG_USEC", "200000", TRUE); /* a ping every 100 ms */
        start_daemon(b, NULL);
        g_unsetenv("WATCHDOG_USEC");
        g_unsetenv("NOTIFY_SOCKET");

        g_autofree char *ready = notify_wait(&s, "READY=1");
        for (int i = 0; i < 5; i++) {
                g_autofree char *ping = notify_wait(&s, "WATCHDOG=1");
        }
        /* Five pings (~500 ms) in, well short of the 2 s idle timeout: still serving. */
        g_assert_cmpint(test_bus_name_owner_pid(b), >, 0);

        /* And idle exit still comes. */
        g_assert_true(test_bus_wait_name(b, FALSE, TEST_BUS_TIMEOUT_MS));
        close(s.fd);
        g_free(s.path);
}

/* ---- configuration errors ----------------------------------------------------------------------- */

static void test_bad_config(void) {
        g_autoptr(TestBus) b = start("[Cache]\nFrobnicate=yes\n[Daemon]\nExitOnIdleSec=infinity\n");

        /* Unknown key: a warning, and the daemon runs. */
        start_daemon(b, NULL);
        g_assert_nonnull(strstr(test_bus_daemon_stderr(b), "imgcached.conf:2"));
        g_assert_nonnull(strstr(test_bus_daemon_stderr(b), "Frobnicate"));
        test_bus_stop_daemon(b);

        /* Bad value: refuses to start, naming file:line and key. */
        test_bus_write_config(b, "[Cache]\nDriver=sqlite\nMaxSize=lots\n");
        g_assert_false(test_bus_start_daemon(b, NULL));
        g_autofree char *where = g_strdup_printf("%s:3", test_bus_config_path(b));
        g_assert_nonnull(strstr(test_bus_daemon_stderr(b), where));
        g_assert_true(test_bus_wait_stderr(b, "MaxSize", TEST_BUS_TIMEOUT_MS));

        /* Unknown command line option and extra arguments. */
        const char *bad_opt[] = { test_bus_daemon_path(), "--frobnicate", NULL };
        g_autofree char *err = NULL;
        g_assert_cmpint(test_bus_run(b, bad_opt, NULL, &err), !=, 0);
        g_assert_nonnull(strstr(err, "frobnicate"));
}

static void test_bad_cache_dir(void) {
        g_autoptr(TestBus) b = start(NULL);
        g_autofree char *file = g_build_filename(test_bus_dir(b), "not-a-dir", NULL);
        g_autofree char *arg = g_strconcat("--cache-dir=", file, "/cache", NULL);
        g_autofree char *err = NULL;

        /* A path that cannot be a directory. */
        g_assert_true(g_file_set_contents(file, "", -1, NULL));
        const char *args[] = { arg, NULL };
        g_assert_false(test_bus_start_daemon(b, args));
        g_assert_nonnull(strstr(test_bus_daemon_stderr(b), file));

        /* A directory this user cannot read: as root, run the daemon as nobody. */
        g_autofree char *locked = g_build_filename(test_bus_dir(b), "locked", NULL);
        g_autofree char *locked_arg = g_strconcat("--cache-dir=", locked, NULL);
        g_assert_cmpint(g_mkdir(locked, 0700), ==, 0);
        if (getuid() == 0) {
                g_assert_cmpint(chmod(test_bus_dir(b), 0755), ==, 0);
                const char *argv[] = { "runuser", "-u", "nobody", "--", test_bus_daemon_path(), "--user",
                                       locked_arg, "--config=/nonexistent/imgcached.conf", NULL };
                g_assert_cmpint(test_bus_run(b, argv, NULL, &err), !=, 0);
        } else {
                g_assert_cmpint(chmod(locked, 0), ==, 0);
                const char *argv[] = { test_bus_daemon_path(), "--user", locked_arg,
                                       "--config=/nonexistent/imgcached.conf", NULL };
                g_assert_cmpint(test_bus_run(b, argv, NULL, &err), !=, 0);
        }
        g_test_message("%s", err);
        g_assert_nonnull(strstr(err, locked));
        g_assert_nonnull(strstr(err, "ermission denied"));

        /* A second daemon on a directory in use refuses, naming the directory. */
        start_daemon(b, NULL);
        const char *second[] = { test_bus_daemon_path(), "--user", NULL, NULL, NULL };
        g_autofree char *cache_arg = g_strconcat("--cache-dir=", test_bus_cache_dir(b), NULL);
        g_autofree char *config_arg = g_strconcat("--config=", test_bus_config_path(b), NULL);
        second[2] = cache_arg;
        second[3] = config_arg;
        g_clear_pointer(&err, g_free);
        g_assert_cmpint(test_bus_run(b, second, NULL, &err), !=, 0);
        g_assert_nonnull(strstr(err, test_bus_cache_dir(b)));
        g_assert_nonnull(strstr(err, "in use"));
}

/* ---- exit on idle and activation ---------------------------------------------------------------- */

static void test_exit_on_idle(void) {
        g_autoptr(TestBus) b = start("[Daemon]\nExitOnIdleSec=1\n");
        GPid first, second;

        seed_image(b, "img", "x", 10);
        test_bus_install_activation(b);
        g_assert_cmpint(test_bus_name_owner_pid(b), ==, 0);

        /* The call activates the daemon through the bus. */
        g_autoptr(GVariant) v = gdbus_call(b, NULL, NULL, "GetImage", "img", NULL);
        g_assert_nonnull(v);
        first = test_bus_name_owner_pid(b);
        g_assert_cmpint(first, >, 0);

        /* Idle for a second: it goes, releasing the name. */
        g_assert_true(test_bus_wait_name(b, FALSE, TEST_BUS_TIMEOUT_MS));

        /* The next call brings it back. */
        g_autoptr(GVariant) v2 = gdbus_call(b, NULL, NULL, "ListImages", NULL);
        g_assert_nonnull(v2);
        second = test_bus_name_owner_pid(b);
        g_assert_cmpint(second, >, 0);
        g_assert_cmpint(second, !=, first);
}

/* Calls spaced around the idle timeout, so some land while the daemon is releasing its name: each must
 * be answered, by the old instance or by a new one the bus activates. */
typedef struct RaceState {
        TestBus *bus;
        guint sent, answered, failed, total;
        GPtrArray *errors;
} RaceState;

static void on_race_reply(GObject *source, GAsyncResult *res, gpointer userdata) {
        RaceState *s = userdata;
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = g_dbus_connection_call_finish(G_DBUS_CONNECTION(source), res, &error);

        if (v)
                s->answered++;
        else {
                s->failed++;
                g_ptr_array_add(s->errors, g_strdup(error->message));
        }
}

static gboolean on_race_tick(gpointer userdata) {
        RaceState *s = userdata;

        g_dbus_connection_call(test_bus_connection(s->bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE,
                               "ListImages", NULL, NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL,
                               on_race_reply, s);
        s->sent++;
        if (s->sent >= s->total)
                return G_SOURCE_REMOVE;
        /* Alternate just below and just above the 100 ms idle timeout. */
        g_timeout_add(s->sent % 2 ? 90 : 110 + (s->sent % 7), on_race_tick, s);
        return G_SOURCE_REMOVE;
}

static void test_exit_on_idle_race(void) {
        g_autoptr(TestBus) b = start("[Daemon]\nExitOnIdleSec=100ms\n");
        RaceState s = { .bus = b, .total = 40, .errors = g_ptr_array_new_with_free_func(g_free) };
        test_bus_install_activation(b);
        g_idle_add(on_race_tick, &s);
        gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
        while (s.answered + s.failed < s.total && g_get_monotonic_time() < deadline)
                g_main_context_iteration(NULL, TRUE);
        for (guint i = 0; i < s.errors->len; i++)
                g_test_message("failed: %s", (char *) s.errors->pdata[i]);
        g_assert_cmpuint(s.failed, ==, 0);
        g_assert_cmpuint(s.answered, ==, s.total);
        g_ptr_array_unref(s.errors);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/daemon/introspection", test_introspection);
        g_test_add_func("/daemon/list-and-get", test_list_and_get);
        g_test_add_func("/daemon/bad-ids", test_bad_ids);
        g_test_add_func("/daemon/queue", test_queue);
        g_test_add_func("/daemon/queue-survives-restart", test_queue_survives_restart);
        g_test_add_func("/daemon/open-image", test_open_image);
        g_test_add_func("/daemon/delete", test_delete);
        g_test_add_func("/daemon/pin-and-prune", test_pin_and_prune);
        g_test_add_func("/daemon/pin-outlives-bus-connection", test_pin_outlives_bus_connection);
        g_test_add_func("/daemon/delete-pinned", test_delete_pinned);
        g_test_add_func("/daemon/verify", test_verify);
        g_test_add_func("/daemon/clean", test_clean);
        g_test_add_func("/daemon/no-upstream", test_no_upstream);
        g_test_add_func("/daemon/properties", test_properties);
        g_test_add_func("/daemon/listen-address", test_listen_address);
        g_test_add_func("/daemon/pin-count", test_pin_count);
        g_test_add_func("/daemon/no-bus-hint", test_no_bus_hint);
        g_test_add_func("/daemon/notify-and-signals", test_notify_and_signals);
        g_test_add_func("/daemon/reload-names-restart-settings", test_reload_names_restart_settings);
        g_test_add_func("/daemon/reload-refused", test_reload_refused);
        g_test_add_func("/daemon/watchdog", test_watchdog);
        g_test_add_func("/daemon/bad-config", test_bad_config);
        g_test_add_func("/daemon/bad-cache-dir", test_bad_cache_dir);
        g_test_add_func("/daemon/exit-on-idle", test_exit_on_idle);
        g_test_add_func("/daemon/exit-on-idle-race", test_exit_on_idle_race);

        return g_test_run();
}
