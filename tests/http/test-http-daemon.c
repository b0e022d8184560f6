/* SPDX-License-Identifier: MIT */

/* imgcached itself over HTTP, on a private session bus (tests/lib/test-bus.h) with the upstream fixture
 * in this process:
 *   - socket activation with systemd-socket-activate: the first connection starts the daemon, which
 *     serves it and exits on idle;
 *   - re-activation the way systemd does it: the test holds the listening socket and passes it as fd 3
 *     (LISTEN_FDS/LISTEN_PID); after the idle exit a new connection still lands in the socket's backlog
 *     (so the daemon did not shut it down) and the next daemon serves it;
 *   - real clients: curl (hit, Range, HEAD, a miss), wget, qemu-img info/convert over http:// (qemu's
 *     curl driver issues Range requests), the management API with and without the token;
 *   - the access log on stderr (not under the journal): a line per request with its status, bytes and
 *     hit|miss, no query and no token; AccessLog=no writes none, and a reload turns it on.
 * Every process is stopped by pid; waits are bounded; nothing sleeps. */

#include <arpa/inet.h>
#include <glib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test-bus.h"
#include "test-util.h"
#include "upstream-fixture.h"

#define IMAGE_SIZE (5 * 1024 * 1024 + 11)

typedef struct Fixture {
        TestBus *bus;
        UpstreamFixture *fx;
        uint8_t *data;
        char *image_path;      /* the cached image, as the daemon will adopt it */
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer user) {
        f->bus = test_bus_new();
        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->data = test_random_data(IMAGE_SIZE, 5);
        f->image_path = g_build_filename(test_bus_cache_dir(f->bus), "img", NULL);
        g_assert_true(g_file_set_contents(f->image_path, (const char *) f->data, IMAGE_SIZE, NULL));
}

static void fixture_teardown(Fixture *f, gconstpointer user) {
        test_bus_free(f->bus);
        upstream_fixture_free(f->fx);
        g_free(f->data);
        g_free(f->image_path);
}

static void write_config(Fixture *f, const char *idle, const char *extra) {
        g_autofree char *url = upstream_fixture_url(f->fx, "/images/{id}");
        g_autofree char *text = g_strdup_printf("[Upstream]\nURL=%s\n[Daemon]\nExitOnIdleSec=%s\n%s", url, idle,
                                                extra ?: "");
        test_bus_write_config(f->bus, text);
}

static void child_setup(gpointer data) {
        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
}

typedef struct Child {
        GSubprocess *p;
        gboolean exited;
        int status;
} Child;

static void on_child_exit(GObject *source, GAsyncResult *res, gpointer userdata) {
        Child *c = userdata;
        (void) g_subprocess_wait_finish(G_SUBPROCESS(source), res, NULL);
        c->status = g_subprocess_get_status(G_SUBPROCESS(source));
        c->exited = TRUE;
}

/* Starts argv with the listening socket as fd 3 (when sock >= 0) and LISTEN_FDS=1 / LISTEN_PID set, like
 * systemd does: a shell exports its own pid and execs the program, which keeps that pid. */
static void child_start(Child *c, int sock, const char *const *argv) {
        GSubprocessLauncher *l = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_NONE);
        g_autoptr(GPtrArray) args = g_ptr_array_new();
        g_autoptr(GError) error = NULL;

        g_subprocess_launcher_set_child_setup(l, child_setup, NULL, NULL);
        if (sock >= 0) {
                g_subprocess_launcher_take_fd(l, dup(sock), 3);
                g_subprocess_launcher_setenv(l, "LISTEN_FDS", "1", TRUE);
                g_ptr_array_add(args, (char *) "/bin/sh");
                g_ptr_array_add(args, (char *) "-c");
                g_ptr_array_add(args, (char *) "LISTEN_PID=$$ exec \"$@\"");
                g_ptr_array_add(args, (char *) "sh");
        }
        for (const char *const *a = argv; *a; a++)
                g_ptr_array_add(args, (char *) *a);
        g_ptr_array_add(args, NULL);

        *c = (Child) {};
        c->p = g_subprocess_launcher_spawnv(l, (const char *const *) args->pdata, &error);
        g_assert_no_error(error);
        g_object_unref(l);
        g_subprocess_wait_async(c->p, NULL, on_child_exit, c);
}

static void child_stop(Child *c) {
        if (!c->p)
                return;
        if (!c->exited) {
                g_subprocess_send_signal(c->p, SIGTERM);
                if (!test_bus_wait_flag(&c->exited, TEST_BUS_TIMEOUT_MS)) {
                        g_subprocess_force_exit(c->p);
                        (void) test_bus_wait_flag(&c->exited, TEST_BUS_TIMEOUT_MS);
                }
        }
        g_clear_object(&c->p);
}

static void daemon_argv(Fixture *f, GPtrArray *a) {
        g_ptr_array_add(a, g_strdup(test_bus_daemon_path()));
        g_ptr_array_add(a, g_strdup("--user"));
        g_ptr_array_add(a, g_strdup_printf("--cache-dir=%s", test_bus_cache_dir(f->bus)));
        g_ptr_array_add(a, g_strdup_printf("--config=%s", test_bus_config_path(f->bus)));
}

/* Runs a client to completion; its exit status. */
static int run(Fixture *f, char **out, char **err, ...) G_GNUC_NULL_TERMINATED;
static int run(Fixture *f, char **out, char **err, ...) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new();
        const char *a;
        va_list ap;

        va_start(ap, err);
        while ((a = va_arg(ap, const char *)))
                g_ptr_array_add(argv, (char *) a);
        va_end(ap);
        g_ptr_array_add(argv, NULL);
        return test_bus_run(f->bus, (const char *const *) argv->pdata, out, err);
}

static void assert_file(const char *path, const void *data, size_t size) {
        g_autofree char *got = NULL;
        gsize n = 0;
        g_assert_true(g_file_get_contents(path, &got, &n, NULL));
        g_assert_cmpuint(n, ==, size);
        g_assert_true(memcmp(got, data, size) == 0);
}

static bool have(const char *program) {
        g_autofree char *p = g_find_program_in_path(program);
        return p != NULL;
}

/* ---- socket activation ---- */

static void test_socket_activate(Fixture *f, gconstpointer user) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
        g_autofree char *listen = NULL, *url = NULL, *out = NULL;
        Child sa;

        if (!have("systemd-socket-activate")) {
                test_skip_missing("systemd-socket-activate is missing");
                return;
        }
        write_config(f, "1s", NULL);

        uint16_t port = test_free_port();
        listen = g_strdup_printf("127.0.0.1:%u", port);
        g_ptr_array_add(argv, g_strdup("systemd-socket-activate"));
        g_ptr_array_add(argv, g_strdup("-l"));
        g_ptr_array_add(argv, g_strdup(listen));
        g_ptr_array_add(argv, g_strdup("-E"));
        g_ptr_array_add(argv, g_strdup("DBUS_SESSION_BUS_ADDRESS"));
        daemon_argv(f, argv);
        g_ptr_array_add(argv, NULL);
        child_start(&sa, -1, (const char *const *) argv->pdata);

        /* Nothing runs until the first connection: the bus name has no owner. The curl below retries
         * connecting until systemd-socket-activate listens (bounded). */
        g_assert_cmpint(test_bus_name_owner_pid(f->bus), ==, 0);
        url = g_strdup_printf("http://%s/images/img", listen);
        g_autofree char *file = g_build_filename(test_bus_dir(f->bus), "out", NULL);
        g_assert_cmpint(run(f, NULL, NULL, "curl", "-sSf", "--retry", "50", "--retry-connrefused", "--retry-delay", "0",
                            "--retry-max-time", "10", "-o", file, url, NULL), ==, 0);
        assert_file(file, f->data, IMAGE_SIZE);

        /* It was the daemon that answered, and it leaves when idle (exit status 0). */
        g_assert_true(test_bus_wait_flag(&sa.exited, TEST_BUS_TIMEOUT_MS));
        g_assert_cmpint(sa.status, ==, 0);
        g_assert_true(test_bus_wait_name(f->bus, FALSE, TEST_BUS_TIMEOUT_MS));
        child_stop(&sa);
}

static void test_reactivation(Fixture *f, gconstpointer user) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
        uint16_t port;
        int sock = test_listen_socket(&port);
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/img", port);
        g_autofree char *file = g_build_filename(test_bus_dir(f->bus), "out", NULL);
        Child d;

        write_config(f, "1s", NULL);
        daemon_argv(f, argv);
        g_ptr_array_add(argv, NULL);

        for (int round = 0; round < 2; round++) {
                /* A client is already waiting in the backlog (round 1: queued while no daemon ran). */
                int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
                                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                static const char req[] = "GET /images/img HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\nConnection: close\r\n\r\n";
                g_assert_cmpint(connect(client, (struct sockaddr *) &sa, sizeof(sa)), ==, 0);
                g_assert_cmpint(send(client, req, strlen(req), MSG_NOSIGNAL), ==, (ssize_t) strlen(req));

                child_start(&d, sock, (const char *const *) argv->pdata);

                GString *resp = g_string_new(NULL);
                struct timeval tv = { .tv_sec = TEST_BUS_TIMEOUT_MS / 1000 };
                char buf[4096];
                ssize_t k;
                g_assert_cmpint(setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), ==, 0);
                while ((k = recv(client, buf, sizeof(buf), 0)) > 0)
                        g_string_append_len(resp, buf, k);
                close(client);
                g_assert_true(g_str_has_prefix(resp->str, "HTTP/1.1 206"));
                const char *body = strstr(resp->str, "\r\n\r\n");
                g_assert_nonnull(body);
                g_assert_cmpuint(resp->len - (size_t) (body + 4 - resp->str), ==, 100);
                g_assert_true(memcmp(body + 4, f->data, 100) == 0);
                g_string_free(resp, TRUE);

                /* curl too, while this daemon runs. */
                g_assert_cmpint(run(f, NULL, NULL, "curl", "-sSf", "-o", file, url, NULL), ==, 0);
                assert_file(file, f->data, IMAGE_SIZE);

                /* Idle exit; the socket we hold must still be a listening socket afterwards. */
                g_assert_true(test_bus_wait_flag(&d.exited, TEST_BUS_TIMEOUT_MS));
                g_assert_cmpint(d.status, ==, 0);
                child_stop(&d);
                int listening = 0;
                socklen_t len = sizeof(listening);
                g_assert_cmpint(getsockopt(sock, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len), ==, 0);
                g_assert_cmpint(listening, ==, 1);
        }
        close(sock);
}

/* ---- real clients against one running daemon ---- */

typedef struct Running {
        Child d;
        int sock;
        uint16_t port;
} Running;

static void start_running(Fixture *f, Running *r, const char *extra_config) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);

        write_config(f, "infinity", extra_config);
        r->sock = test_listen_socket(&r->port);
        daemon_argv(f, argv);
        g_ptr_array_add(argv, NULL);
        child_start(&r->d, r->sock, (const char *const *) argv->pdata);
        g_assert_true(test_bus_wait_name(f->bus, TRUE, TEST_BUS_TIMEOUT_MS));
}

static void stop_running(Running *r) {
        child_stop(&r->d);
        close(r->sock);
}

static void test_curl(Fixture *f, gconstpointer user) {
        Running r;
        g_autofree char *file = g_build_filename(test_bus_dir(f->bus), "out", NULL);
        g_autofree char *head = NULL;

        start_running(f, &r, NULL);
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/img", r.port);

        g_assert_cmpint(run(f, NULL, NULL, "curl", "-sSf", "-o", file, url, NULL), ==, 0);
        assert_file(file, f->data, IMAGE_SIZE);
        g_assert_cmpint(run(f, NULL, NULL, "curl", "-sSf", "-r", "1000-1999", "-o", file, url, NULL), ==, 0);
        assert_file(file, f->data + 1000, 1000);
        g_assert_cmpint(run(f, &head, NULL, "curl", "-sSfI", url, NULL), ==, 0);
        g_autofree char *cl = g_strdup_printf("Content-Length: %d", IMAGE_SIZE);
        g_assert_nonnull(strstr(head, cl));
        g_assert_nonnull(strstr(head, "Accept-Ranges: bytes"));

        /* A miss through the daemon's fetcher: streamed, then cached (one upstream request). */
        g_assert_cmpint(upstream_fixture_add_image(f->fx, "/images/fresh", f->data, IMAGE_SIZE / 2, NULL), ==, 0);
        g_autofree char *fresh = g_strdup_printf("http://127.0.0.1:%u/v2/images/fresh/file", r.port);
        g_assert_cmpint(run(f, NULL, NULL, "curl", "-sSf", "-o", file, fresh, NULL), ==, 0);
        assert_file(file, f->data, IMAGE_SIZE / 2);
        g_assert_cmpint(run(f, NULL, NULL, "curl", "-sSf", "-o", file, fresh, NULL), ==, 0);
        assert_file(file, f->data, IMAGE_SIZE / 2);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/fresh"), ==, 1);

        /* Errors as curl sees them (-f: exit 22 for >= 400). */
        g_autofree char *bad = g_strdup_printf("http://127.0.0.1:%u/images/.bad", r.port);
        g_autofree char *missing = g_strdup_printf("http://127.0.0.1:%u/images/nowhere", r.port);
        g_autofree char *status = NULL;
        g_assert_cmpint(run(f, &status, NULL, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", bad, NULL), ==, 0);
        g_assert_cmpstr(status, ==, "400");
        g_free(status);
        g_assert_cmpint(run(f, &status, NULL, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", missing, NULL), ==, 0);
        g_assert_cmpstr(status, ==, "404");

        /* The daemon's properties saw it: two misses? One miss (fresh) and three hits counted. */
        g_autofree char *props = NULL;
        g_assert_cmpint(run(f, &props, NULL, "busctl", "--user", "get-property", TEST_BUS_NAME, TEST_BUS_PATH,
                            TEST_BUS_IFACE, "Misses", NULL), ==, 0);
        g_assert_cmpstr(g_strstrip(props), ==, "t 2");  /* "fresh" and "nowhere" */
        stop_running(&r);
}

static void test_wget(Fixture *f, gconstpointer user) {
        Running r;
        g_autofree char *file = g_build_filename(test_bus_dir(f->bus), "wget.out", NULL);

        if (!have("wget")) {
                test_skip_missing("wget is missing");
                return;
        }
        start_running(f, &r, NULL);
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/img", r.port);
        g_assert_cmpint(run(f, NULL, NULL, "wget", "-q", "-O", file, url, NULL), ==, 0);
        assert_file(file, f->data, IMAGE_SIZE);

        /* wget -c continues a partial download with a Range request. */
        g_assert_true(g_file_set_contents(file, (const char *) f->data, 12345, NULL));
        g_assert_cmpint(run(f, NULL, NULL, "wget", "-q", "-c", "-O", file, url, NULL), ==, 0);
        assert_file(file, f->data, IMAGE_SIZE);
        stop_running(&r);
}

static void test_qemu_img(Fixture *f, gconstpointer user) {
        g_autofree char *dir = g_strdup(test_bus_dir(f->bus));
        g_autofree char *raw = g_build_filename(dir, "disk.raw", NULL);
        g_autofree char *qcow = g_build_filename(test_bus_cache_dir(f->bus), "disk.qcow2", NULL);
        g_autofree char *local_out = g_build_filename(dir, "local.raw", NULL);
        g_autofree char *http_out = g_build_filename(dir, "http.raw", NULL);
        g_autofree char *local_info = NULL, *http_info = NULL;
        Running r;

        if (!have("qemu-img")) {
                test_skip_missing("qemu-img is missing");
                return;
        }
        /* A qcow2 image with data in it, placed in the cache before the daemon starts (adopted). */
        g_assert_true(g_file_set_contents(raw, (const char *) f->data, IMAGE_SIZE - 11, NULL));
        g_assert_cmpint(run(f, NULL, NULL, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow, NULL), ==, 0);

        start_running(f, &r, NULL);
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/disk.qcow2", r.port);

        g_assert_cmpint(run(f, &local_info, NULL, "qemu-img", "info", "--output=json", "-f", "qcow2", qcow, NULL), ==, 0);
        g_autofree char *err = NULL;
        int k = run(f, &http_info, &err, "qemu-img", "info", "--output=json", "-f", "qcow2", url, NULL);
        if (k != 0 && strstr(err, "Unknown protocol")) {
                /* Debian ships qemu's curl driver apart, in qemu-block-extra. */
                test_skip_missing("qemu-img cannot read http:// here (qemu-block-extra missing)");
                stop_running(&r);
                return;
        }
        g_assert_cmpint(k, ==, 0);
        /* Same format and sizes (the filename and the host's allocation differ by nature). */
        const char *keys[] = { "\"virtual-size\"", "\"cluster-size\"", "\"format\"", "\"compat\"" };
        for (size_t i = 0; i < G_N_ELEMENTS(keys); i++) {
                const char *a = strstr(local_info, keys[i]), *b = strstr(http_info, keys[i]);
                g_assert_nonnull(a);
                g_assert_nonnull(b);
                g_autofree char *la = g_strndup(a, strcspn(a, ",\n")), *lb = g_strndup(b, strcspn(b, ",\n"));
                g_assert_cmpstr(la, ==, lb);
        }

        g_assert_cmpint(run(f, NULL, NULL, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, local_out, NULL), ==, 0);
        /* -m 1: qemu 7.2's curl driver sometimes stalls for good with several coroutines reading at once,
         * against nginx just the same (a qemu bug); one at a time still reads through Range requests. */
        g_assert_cmpint(run(f, NULL, NULL, "qemu-img", "convert", "-m", "1", "-f", "qcow2", "-O", "raw", url, http_out,
                            NULL), ==, 0);
        g_autofree char *a = NULL, *b = NULL;
        gsize na, nb;
        g_assert_true(g_file_get_contents(local_out, &a, &na, NULL));
        g_assert_true(g_file_get_contents(http_out, &b, &nb, NULL));
        g_assert_cmpuint(na, ==, nb);
        g_assert_true(memcmp(a, b, na) == 0);
        g_assert_true(memcmp(a, f->data, IMAGE_SIZE - 11) == 0);
        stop_running(&r);
}

static void test_management(Fixture *f, gconstpointer user) {
        g_autofree char *token = g_build_filename(test_bus_dir(f->bus), "token", NULL);
        g_autofree char *extra = g_strdup_printf("[HTTP]\nManagementAPI=yes\nManagementTokenFile=%s\n", token);
        g_autofree char *status = NULL, *body = NULL;
        Running r;

        g_assert_true(g_file_set_contents(token, "tok-123\n", -1, NULL));
        start_running(f, &r, extra);
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/v2/cache", r.port);

        g_assert_cmpint(run(f, &status, NULL, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url, NULL), ==, 0);
        g_assert_cmpstr(status, ==, "401");
        g_assert_cmpint(run(f, &body, NULL, "curl", "-sSf", "-H", "X-Auth-Token: tok-123", url, NULL), ==, 0);
        g_assert_nonnull(strstr(body, "\"image_id\":\"img\""));
        g_assert_nonnull(strstr(body, "\"queued_images\":[]"));
        stop_running(&r);
}

/* ReadAccess=upstream against a Glance stand-in: the caller's token decides, per image, hit or miss. */
static void test_read_access(Fixture *f, gconstpointer user) {
        static const char *const readers[] = { "alice", NULL };
        g_autofree char *token_file = g_build_filename(test_bus_dir(f->bus), "glance-token", NULL);
        g_autofree char *file = g_build_filename(test_bus_dir(f->bus), "out", NULL);
        g_autofree char *base = upstream_fixture_url(f->fx, "");
        g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
        g_autofree char *status = NULL;
        Running r;

        g_assert_true(g_file_set_contents(token_file, "service-token\n", -1, NULL));
        g_assert_cmpint(upstream_fixture_set_token(f->fx, "service-token"), ==, 0);
        upstream_fixture_add_user_token(f->fx, "alice");
        upstream_fixture_add_user_token(f->fx, "bob");
        UpstreamGlanceOptions priv = { .readers = readers };
        g_assert_cmpint(upstream_fixture_add_glance_image(f->fx, "priv", f->data, IMAGE_SIZE, NULL, &priv), ==, 0);
        g_autofree char *config = g_strdup_printf("[Upstream]\nKind=glance\nURL=%s\nTokenFile=%s\n"
                                                  "[Daemon]\nExitOnIdleSec=infinity\n", base, token_file);
        test_bus_write_config(f->bus, config);
        r.sock = test_listen_socket(&r.port);
        daemon_argv(f, argv);
        g_ptr_array_add(argv, NULL);
        child_start(&r.d, r.sock, (const char *const *) argv->pdata);
        g_assert_true(test_bus_wait_name(f->bus, TRUE, TEST_BUS_TIMEOUT_MS));

        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/priv", r.port);
        static const struct { const char *header, *status; } refused[] = {
                { "X-Nothing: 1", "401" },              /* anonymous */
                { "X-Auth-Token: bob", "404" },         /* another tenant: not visible */
                { "X-Auth-Token: mallory", "401" },     /* unknown to the image service */
        };
        for (size_t i = 0; i < G_N_ELEMENTS(refused); i++) {
                g_assert_cmpint(run(f, &status, NULL, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                    "-H", refused[i].header, url, NULL), ==, 0);
                g_assert_cmpstr(status, ==, refused[i].status);
                g_clear_pointer(&status, g_free);
        }
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/v2/images/priv/file"), ==, 0);

        /* The owner: the miss, then a hit that asks the upstream nothing. */
        for (int i = 0; i < 2; i++) {
                g_assert_cmpint(run(f, NULL, NULL, "curl", "-sSf", "-H", "X-Auth-Token: alice", "-o", file, url, NULL), ==, 0);
                assert_file(file, f->data, IMAGE_SIZE);
        }
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "alice"), ==, 1);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/v2/images/priv/file"), ==, 1);

        /* A cached image the image service does not know is no one's to read. */
        g_autofree char *img = g_strdup_printf("http://127.0.0.1:%u/images/img", r.port);
        g_assert_cmpint(run(f, &status, NULL, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "-H", "X-Auth-Token: alice", img, NULL), ==, 0);
        g_assert_cmpstr(status, ==, "404");
        stop_running(&r);
}

/* ---- the access log ---- */

/* Runs the main context until the daemon's stderr has a line containing needle; that line. */
static char *wait_access_line(Fixture *f, const char *needle) {
        const char *log, *p, *end;

        if (!test_bus_wait_stderr(f->bus, needle, TEST_BUS_TIMEOUT_MS))
                g_error("no access log line with %s; the daemon said:\n%s", needle, test_bus_daemon_stderr(f->bus));
        log = test_bus_daemon_stderr(f->bus);
        p = strstr(log, needle);
        while (p > log && p[-1] != '\n')
                p--;
        end = strchrnul(p, '\n');
        return g_strndup(p, (gsize) (end - p));
}

static void curl_status(Fixture *f, const char *expect, const char *const *extra) {
        g_autoptr(GPtrArray) argv = g_ptr_array_new();
        g_autofree char *status = NULL;

        g_ptr_array_add(argv, (char *) "curl");
        g_ptr_array_add(argv, (char *) "-s");
        g_ptr_array_add(argv, (char *) "-o");
        g_ptr_array_add(argv, (char *) "/dev/null");
        g_ptr_array_add(argv, (char *) "-w");
        g_ptr_array_add(argv, (char *) "%{http_code}");
        for (const char *const *a = extra; *a; a++)
                g_ptr_array_add(argv, (char *) *a);
        g_ptr_array_add(argv, NULL);
        g_assert_cmpint(test_bus_run(f->bus, (const char *const *) argv->pdata, &status, NULL), ==, 0);
        g_assert_cmpstr(status, ==, expect);
}

static void test_access_log(Fixture *f, gconstpointer user) {
        uint16_t port;
        int sock = test_listen_socket(&port);
        g_autofree char *base = g_strdup_printf("http://127.0.0.1:%u", port);
        g_autofree char *hit = g_strdup_printf("%s/images/img?token=SECRET-IN-QUERY", base);
        g_autofree char *fresh = g_strdup_printf("%s/v2/images/fresh/file", base);
        g_autofree char *missing = g_strdup_printf("%s/images/nowhere", base);
        g_autofree char *quote = g_strdup_printf("%s/nothing%%22here", base);
        g_autofree char *newline = g_strdup_printf("%s/images/x%%0Aevil", base);
        g_autofree char *health = g_strdup_printf("%s/healthcheck", base);
        g_autofree char *line = NULL, *size = g_strdup_printf(" 200 %d ", IMAGE_SIZE);

        write_config(f, "infinity", NULL);
        g_assert_true(test_bus_start_daemon_listening(f->bus, sock, NULL));

        /* A hit, with a token in the query and in a header: neither may reach the log. */
        curl_status(f, "200", (const char *const[]) { "-A", "test-agent/1.0", "-H", "X-Auth-Token: SECRET-IN-HEADER",
                                                       hit, NULL });
        line = wait_access_line(f, "\"GET /images/img HTTP/1.1\"");
        g_assert_true(g_str_has_prefix(line, "127.0.0.1 - - ["));
        g_assert_nonnull(strstr(line, size));
        g_assert_nonnull(strstr(line, " \"-\" \"test-agent/1.0\" "));
        g_assert_true(g_str_has_suffix(line, " hit -"));
        g_clear_pointer(&line, g_free);

        /* A Range of a hit and a HEAD: what was sent, not the image's size. */
        curl_status(f, "206", (const char *const[]) { "-r", "0-99", hit, NULL });
        line = wait_access_line(f, "\"GET /images/img HTTP/1.1\" 206 100 ");
        g_assert_true(g_str_has_suffix(line, " hit -"));
        g_clear_pointer(&line, g_free);
        curl_status(f, "200", (const char *const[]) { "-I", hit, NULL });
        line = wait_access_line(f, "\"HEAD /images/img HTTP/1.1\" 200 0 ");
        g_assert_true(g_str_has_suffix(line, " hit -"));
        g_clear_pointer(&line, g_free);

        /* A miss, streamed: the bytes the stream handed out. */
        g_assert_cmpint(upstream_fixture_add_image(f->fx, "/images/fresh", f->data, IMAGE_SIZE / 2, NULL), ==, 0);
        curl_status(f, "200", (const char *const[]) { fresh, NULL });
        g_autofree char *fresh_line = g_strdup_printf("\"GET /v2/images/fresh/file HTTP/1.1\" 200 %d ", IMAGE_SIZE / 2);
        line = wait_access_line(f, fresh_line);
        g_assert_true(g_str_has_suffix(line, " miss -"));
        g_clear_pointer(&line, g_free);

        /* Not upstream either: a miss answered 404, with its text's length. */
        curl_status(f, "404", (const char *const[]) { missing, NULL });
        line = wait_access_line(f, "\"GET /images/nowhere HTTP/1.1\" 404 ");
        g_assert_nonnull(strstr(line, " 404 23 "));  /* "No such image upstream\n" */
        g_assert_true(g_str_has_suffix(line, " miss -"));
        g_clear_pointer(&line, g_free);

        /* No lookup at all: none. What a client smuggles into the path stays in its field, escaped. */
        curl_status(f, "404", (const char *const[]) { quote, NULL });
        line = wait_access_line(f, "\"GET /nothing%22here HTTP/1.1\" 404 10 ");
        g_assert_true(g_str_has_suffix(line, " - -"));
        g_clear_pointer(&line, g_free);
        curl_status(f, "400", (const char *const[]) { newline, NULL });
        line = wait_access_line(f, "\"GET /images/x%0Aevil HTTP/1.1\" 400 ");
        g_clear_pointer(&line, g_free);

        g_assert_null(strstr(test_bus_daemon_stderr(f->bus), "SECRET"));
        g_assert_cmpint(test_bus_stop_daemon(f->bus), ==, 0);

        /* AccessLog=no: nothing. Then a reload turns it on, and the next request has its line. */
        write_config(f, "infinity", "[HTTP]\nAccessLog=no\n");
        g_assert_true(test_bus_start_daemon_listening(f->bus, sock, NULL));
        curl_status(f, "200", (const char *const[]) { hit, NULL });
        curl_status(f, "404", (const char *const[]) { missing, NULL });
        write_config(f, "infinity", "[HTTP]\nAccessLog=yes\n");
        g_assert_cmpint(kill(test_bus_name_owner_pid(f->bus), SIGHUP), ==, 0);
        g_assert_true(test_bus_wait_stderr(f->bus, "Reloaded ", TEST_BUS_TIMEOUT_MS));
        curl_status(f, "200", (const char *const[]) { health, NULL });
        line = wait_access_line(f, "\"GET /healthcheck HTTP/1.1\" 200 3 ");
        g_assert_null(strstr(test_bus_daemon_stderr(f->bus), "\"GET /images/"));
        g_assert_cmpint(test_bus_stop_daemon(f->bus), ==, 0);
        close(sock);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

#define ADD(name, fn) g_test_add(name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
        ADD("/http-daemon/socket-activate", test_socket_activate);
        ADD("/http-daemon/reactivation", test_reactivation);
        ADD("/http-daemon/curl", test_curl);
        ADD("/http-daemon/wget", test_wget);
        ADD("/http-daemon/qemu-img", test_qemu_img);
        ADD("/http-daemon/management", test_management);
        ADD("/http-daemon/read-access", test_read_access);
        ADD("/http-daemon/access-log", test_access_log);

        return g_test_run();
}
