/* SPDX-License-Identifier: MIT */

/* Hostile upstreams against the real imgcached (private bus, tests/lib/test-bus.h): an origin written
 * here on raw sockets, so that it can lie in ways an HTTP library would not let it: a Content-Length
 * longer than the body (then a close) or shorter than the body (then the rest of the bytes), a redirect
 * loop, redirects to file:// and ftp://, an endless chunked body past MaxSize, a body that stalls forever
 * (LowSpeedTimeoutSec=2). Each fill must end "failed" with a clear Error, nothing may be cached or left
 * at <id>, and the daemon must keep answering (a good image is fetched after every case). Waits iterate
 * the main loop until a signal says so, bounded by a deadline; no sleeps. */

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gio/gio.h>

#include "checksum.h"
#include "test-bus.h"
#include "util.h"

#define GOOD_SIZE (256 * 1024)
#define MAX_SIZE (4 * 1024 * 1024)
#define ENDLESS_LIMIT ((uint64_t) 64 * 1024 * 1024) /* the origin gives up after this much */

/* ---- the hostile origin ---- */

typedef struct Origin {
        int listen_fd;
        uint16_t port;
        GThread *acceptor;
        GMutex lock;
        GPtrArray *conns; /* Conn* */
        uint8_t *good;    /* GOOD_SIZE bytes */
        gboolean stop;
} Origin;

typedef struct Conn {
        Origin *o;
        int fd;
        GThread *thread;
} Conn;

static void send_all(int fd, const void *p, size_t n) {
        const uint8_t *b = p;
        while (n > 0) {
                ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return;
                b += k;
                n -= (size_t) k;
        }
}

static void send_str(int fd, const char *s) {
        send_all(fd, s, strlen(s));
}

static void respond(Conn *c, const char *path) {
        Origin *o = c->o;
        char h[512];
        if (streq(path, "/images/good")) {
                snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", GOOD_SIZE);
                send_str(c->fd, h);
                send_all(c->fd, o->good, GOOD_SIZE);
        } else if (streq(path, "/images/cl-long")) {
                /* Promises 1 MiB, sends 64 KiB, closes. */
                send_str(c->fd, "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\nConnection: close\r\n\r\n");
                send_all(c->fd, o->good, 65536);
        } else if (streq(path, "/images/cl-short")) {
                /* Promises 64 KiB, sends 256 KiB (the client was told the sha256 of all 256 KiB). */
                send_str(c->fd, "HTTP/1.1 200 OK\r\nContent-Length: 65536\r\nConnection: close\r\n\r\n");
                send_all(c->fd, o->good, GOOD_SIZE);
        } else if (streq(path, "/images/loop")) {
                snprintf(h, sizeof h, "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%u/images/loop\r\n"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n", o->port);
                send_str(c->fd, h);
        } else if (streq(path, "/images/to-file")) {
                send_str(c->fd, "HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\n"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n");
        } else if (streq(path, "/images/to-ftp")) {
                send_str(c->fd, "HTTP/1.1 301 Moved Permanently\r\nLocation: ftp://127.0.0.1/images/to-ftp\r\n"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n");
        } else if (streq(path, "/images/endless")) {
                send_str(c->fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
                uint64_t sent = 0;
                while (sent < ENDLESS_LIMIT && !g_atomic_int_get(&o->stop)) {
                        send_str(c->fd, "10000\r\n");
                        send_all(c->fd, o->good, 65536);
                        send_str(c->fd, "\r\n");
                        struct pollfd p = { .fd = c->fd, .events = POLLOUT };
                        if (poll(&p, 1, 5000) <= 0 || (p.revents & (POLLERR | POLLHUP)))
                                break;
                        sent += 65536;
                }
        } else if (streq(path, "/images/stall")) {
                send_str(c->fd, "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\nConnection: close\r\n\r\n");
                send_all(c->fd, o->good, 4096);
                /* Nothing more, until the client gives up (or the test ends: shutdown wakes this). */
                char b[256];
                while (recv(c->fd, b, sizeof b, 0) > 0)
                        ;
        } else
                send_str(c->fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

static gpointer conn_main(gpointer userdata) {
        Conn *c = userdata;
        char req[4096];
        size_t n = 0;
        while (n < sizeof req - 1) {
                struct pollfd p = { .fd = c->fd, .events = POLLIN };
                if (poll(&p, 1, 10000) <= 0)
                        break;
                ssize_t k = recv(c->fd, req + n, sizeof req - 1 - n, 0);
                if (k <= 0)
                        break;
                n += (size_t) k;
                req[n] = 0;
                if (strstr(req, "\r\n\r\n")) {
                        char path[256] = "";
                        if (sscanf(req, "%*s %255s", path) == 1)
                                respond(c, path);
                        break;
                }
        }
        shutdown(c->fd, SHUT_WR);
        return NULL;
}

static gpointer accept_main(gpointer userdata) {
        Origin *o = userdata;
        for (;;) {
                int fd = accept(o->listen_fd, NULL, NULL);
                if (fd < 0) {
                        if (errno == EINTR)
                                continue;
                        return NULL;
                }
                g_mutex_lock(&o->lock);
                if (o->stop) {
                        g_mutex_unlock(&o->lock);
                        close(fd);
                        return NULL;
                }
                Conn *c = g_new0(Conn, 1);
                c->o = o;
                c->fd = fd;
                c->thread = g_thread_new("conn", conn_main, c);
                g_ptr_array_add(o->conns, c);
                g_mutex_unlock(&o->lock);
        }
}

static Origin *origin_new(void) {
        Origin *o = g_new0(Origin, 1);
        g_mutex_init(&o->lock);
        o->conns = g_ptr_array_new();
        o->good = g_malloc(GOOD_SIZE);
        for (size_t i = 0; i < GOOD_SIZE; i++)
                o->good[i] = (uint8_t) (i * 131 + (i >> 11));
        o->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        g_assert_cmpint(o->listen_fd, >=, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t l = sizeof a;
        g_assert_cmpint(bind(o->listen_fd, (struct sockaddr *) &a, sizeof a), ==, 0);
        g_assert_cmpint(listen(o->listen_fd, 64), ==, 0);
        g_assert_cmpint(getsockname(o->listen_fd, (struct sockaddr *) &a, &l), ==, 0);
        o->port = ntohs(a.sin_port);
        o->acceptor = g_thread_new("accept", accept_main, o);
        return o;
}

static void origin_free(Origin *o) {
        g_mutex_lock(&o->lock);
        o->stop = TRUE;
        g_atomic_int_set(&o->stop, TRUE);
        g_mutex_unlock(&o->lock);
        shutdown(o->listen_fd, SHUT_RDWR);
        g_thread_join(o->acceptor);
        close(o->listen_fd);
        for (size_t i = 0; i < o->conns->len; i++) {
                Conn *c = o->conns->pdata[i];
                shutdown(c->fd, SHUT_RDWR);
                g_thread_join(c->thread);
                close(c->fd);
                g_free(c);
        }
        g_ptr_array_free(o->conns, TRUE);
        g_mutex_clear(&o->lock);
        g_free(o->good);
        g_free(o);
}

/* ---- the daemon ---- */

typedef struct Env {
        TestBus *bus;
        Origin *o;
        TestJobWatch *jobs;
} Env;

static void env_setup(Env *e) {
        *e = (Env) {};
        e->o = origin_new();
        e->bus = test_bus_new();
        g_autofree char *config = g_strdup_printf(
                "[Cache]\nKeepFree=0\nMaxSize=%d\nEnforceMaxSize=yes\n"
                "[Upstream]\nURL=http://127.0.0.1:%u/images/{id}\nLowSpeedTimeoutSec=2\nConnectTimeoutSec=5\n"
                "[Daemon]\nExitOnIdleSec=infinity\n", MAX_SIZE, e->o->port);
        test_bus_write_config(e->bus, config);
        e->jobs = test_job_watch_new(e->bus);
        g_assert_true(test_bus_start_daemon(e->bus, NULL));
}

static void env_teardown(Env *e) {
        test_job_watch_free(e->jobs);
        test_bus_free(e->bus);
        origin_free(e->o);
}

static GVariant *call(Env *e, const char *method, GVariant *params, GError **error) {
        return g_dbus_connection_call_sync(test_bus_connection(e->bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE,
                                           method, params, NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS,
                                           NULL, error);
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

/* Nothing at <cache>/<id>, where complete images live (DESIGN.md: incomplete/<id> may be kept for a
 * resume, invalid/<id> until Clean; neither is ever listed or served). */
static void assert_no_file(const char *dir, const char *id) {
        g_autofree char *p = g_build_filename(dir, id, NULL);
        if (g_file_test(p, G_FILE_TEST_EXISTS))
                g_error("%s exists after a failed fill", p);
}

static void assert_not_cached(Env *e, const char *id) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(e, "GetImage", g_variant_new("(s)", id), &error);
        g_assert_null(v);
        g_assert_nonnull(error);
        g_clear_error(&error);
        g_autoptr(GVariant) list = call(e, "ListImages", NULL, &error);
        g_assert_no_error(error);
        g_assert_nonnull(list);
        g_autoptr(GVariant) arr = g_variant_get_child_value(list, 0);
        for (gsize i = 0; i < g_variant_n_children(arr); i++) {
                const char *rid;
                g_variant_get_child(arr, i, "(&stttt&s)", &rid, NULL, NULL, NULL, NULL, NULL);
                g_assert_cmpstr(rid, !=, id);
        }
        assert_no_file(test_bus_cache_dir(e->bus), id);
}

/* The daemon still answers and still fills: the good image comes in byte-exact (checksum verified). */
static void assert_daemon_healthy(Env *e) {
        g_autofree char *sum = sha256_of(e->o->good, GOOD_SIZE);
        g_autofree char *result = test_job_watch_fetch(e->jobs, "good", sum, NULL);
        g_assert_cmpstr(result, ==, "done");
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(e, "GetImage", g_variant_new("(s)", "good"), &error);
        g_assert_no_error(error);
        guint64 size;
        const char *checksum;
        g_variant_get(v, "((&stttt&s))", NULL, &size, NULL, NULL, NULL, &checksum);
        g_assert_cmpuint(size, ==, GOOD_SIZE);
        g_assert_cmpstr(checksum, ==, sum);
        g_autoptr(GVariant) ok = call(e, "Verify", g_variant_new("(s)", "good"), &error);
        g_assert_no_error(error);
        gboolean good = FALSE;
        g_variant_get(ok, "(b)", &good);
        g_assert_true(good);
        g_autoptr(GVariant) rm = call(e, "DeleteImage", g_variant_new("(s)", "good"), &error);
        g_assert_no_error(error);
}

typedef struct Case {
        const char *id;
        gboolean with_checksum; /* pass the sha256 of the good image */
        const char *const *words; /* the Error must contain one of these (case-insensitive) */
} Case;

static void run_case(gconstpointer data) {
        const Case *k = data;
        Env e;
        env_setup(&e);
        g_autofree char *sum = k->with_checksum ? sha256_of(e.o->good, GOOD_SIZE) : g_strdup("");
        g_autofree char *err = NULL;
        g_autofree char *result = test_job_watch_fetch(e.jobs, k->id, sum, &err);
        g_assert_cmpstr(result, ==, "failed");
        g_assert_nonnull(err);
        g_autofree char *lower = g_ascii_strdown(err, -1);
        gboolean found = FALSE;
        for (size_t i = 0; k->words[i]; i++)
                found = found || strstr(lower, k->words[i]);
        if (!found)
                g_error("Error of %s does not say what went wrong: \"%s\"", k->id, err);
        assert_not_cached(&e, k->id);
        assert_daemon_healthy(&e);
        assert_not_cached(&e, k->id);
        env_teardown(&e);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        static const char *const w_short[] = { "short", "partial", "length", "transfer", "closed", "before", NULL };
        static const char *const w_sum[] = { "checksum", "mismatch", "digest", "sha256", NULL };
        static const char *const w_loop[] = { "redirect", NULL };
        static const char *const w_proto[] = { "protocol", "redirect", "scheme", NULL };
        static const char *const w_big[] = { "size", "large", "maxsize", "exceed", "big", NULL };
        static const char *const w_stall[] = { "slow", "timeout", "timed out", "stall", "speed", NULL };
        static const Case cases[] = {
                { "cl-long", FALSE, w_short },
                { "cl-short", TRUE, w_sum },
                { "loop", FALSE, w_loop },
                { "to-file", FALSE, w_proto },
                { "to-ftp", FALSE, w_proto },
                { "endless", FALSE, w_big },
                { "stall", FALSE, w_stall },
        };
        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autofree char *name = g_strdup_printf("/hostile-upstream/%s", cases[i].id);
                g_test_add_data_func(name, &cases[i], run_case);
        }
        return g_test_run();
}
