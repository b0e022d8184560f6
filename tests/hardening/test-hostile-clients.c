/* SPDX-License-Identifier: MIT */

/* Hostile HTTP clients against imgcached's HTTP listener (private bus, tests/lib/test-bus.h), loopback
 * only, each kind from its own source address in 127.0.0.0/8: IDLE connections held open without a byte
 * sent (from IDLE_ADDR, far more than MaxConnectionsPerIP= allows), LORIS slow-loris clients that trickle
 * header lines (dropped by HeaderTimeoutSec=), SLOW readers that asked for a large image and take one
 * byte per probe round, oversized headers, invalid methods and paths, pipelined garbage. Throughout, a
 * normal client on PROBE_ADDR GETs a cached image: every probe must succeed byte-exact within
 * PROBE_MAX_MS (latencies printed); each bad request must get its status; the daemon's RSS is printed
 * before and after and must stay within RSS_GROWTH_MAX. Every loop is bounded in count, every read in
 * time (poll with a timeout); nothing sleeps to synchronise. */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gio/gio.h>

#include "test-bus.h"
#include "test-util.h"
#include "upstream-fixture.h"
#include "util.h"

#define IMAGE_SIZE (256 * 1024)
#define BIG_SIZE (16 * 1024 * 1024)
#define IDLE 1000
#define LORIS 50
#define SLOW 5
#define ROUNDS 5
#define PROBE_MAX_MS 2000
#define IO_TIMEOUT_MS 5000
#define RSS_GROWTH_MAX (64 * 1024) /* KiB */
#define PER_IP 32                  /* MaxConnectionsPerIP= */
#define HEADER_TIMEOUT_SEC 3       /* HeaderTimeoutSec= */
#define IDLE_ADDR "127.0.0.2"
#define PROBE_ADDR "127.0.0.3"
#define LORIS_ADDR "127.0.0.4"
#define SLOW_ADDR "127.0.0.5"

typedef struct Env {
        TestBus *bus;
        UpstreamFixture *fx;
        uint16_t port;
        uint8_t *image;
} Env;

static void send_str(int fd, const char *s, size_t n) {
        while (n > 0) {
                ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return; /* the server may close on us: that is its right */
                s += k;
                n -= (size_t) k;
        }
}

/* Reads until EOF (or max bytes, or IO_TIMEOUT_MS of silence). */
static GByteArray *read_all(int fd, size_t max) {
        GByteArray *b = g_byte_array_new();
        uint8_t buf[65536];
        while (b->len < max) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                if (poll(&p, 1, IO_TIMEOUT_MS) <= 0)
                        break;
                ssize_t k = recv(fd, buf, sizeof buf, 0);
                if (k <= 0)
                        break;
                g_byte_array_append(b, buf, (guint) k);
        }
        return b;
}

static int status_of(const GByteArray *b) {
        int status = 0;
        if (b->len < 12 || memcmp(b->data, "HTTP/1.", 7) != 0)
                return 0;
        g_autofree char *line = g_strndup((const char *) b->data, MIN(b->len, 64));
        if (sscanf(line, "HTTP/1.%*d %d", &status) != 1)
                return 0;
        return status;
}

/* One request on a fresh connection; returns the status (0: none). */
static int request_from(Env *e, const char *source, const char *req, size_t n, GByteArray **ret) {
        int fd = test_connect_from(source, e->port);
        send_str(fd, req, n);
        GByteArray *b = read_all(fd, (size_t) BIG_SIZE * 2);
        close(fd);
        int s = status_of(b);
        if (ret)
                *ret = b;
        else
                g_byte_array_unref(b);
        return s;
}

static int request(Env *e, const char *req, size_t n, GByteArray **ret) {
        return request_from(e, PROBE_ADDR, req, n, ret);
}

/* Whether the server closed fd within timeout_ms (EOF or reset, whatever it sent before). */
static bool closed_by_server(int fd, int timeout_ms) {
        gint64 deadline = g_get_monotonic_time() + (gint64) timeout_ms * 1000;
        char buf[4096];

        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int left = (int) ((deadline - g_get_monotonic_time()) / 1000);
                if (left <= 0 || poll(&p, 1, left) <= 0)
                        return false;
                ssize_t k = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
                        return true;
        }
}

/* A normal client: GET the cached image, byte-exact, within PROBE_MAX_MS. Returns the latency in ms. */
static double probe(Env *e) {
        static const char req[] = "GET /images/img HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        gint64 t0 = g_get_monotonic_time();
        GByteArray *b = NULL;
        int s = request(e, req, strlen(req), &b);
        double ms = (g_get_monotonic_time() - t0) / 1000.0;
        g_assert_cmpint(s, ==, 200);
        const uint8_t *body = memmem(b->data, b->len, "\r\n\r\n", 4);
        g_assert_nonnull(body);
        body += 4;
        g_assert_cmpuint(b->len - (guint) (body - b->data), ==, IMAGE_SIZE);
        g_assert_true(memcmp(body, e->image, IMAGE_SIZE) == 0);
        g_byte_array_unref(b);
        if (ms > PROBE_MAX_MS)
                g_error("a normal client waited %.1f ms (more than %d ms)", ms, PROBE_MAX_MS);
        return ms;
}

static long rss_kib(GPid pid) {
        g_autofree char *path = g_strdup_printf("/proc/%d/status", (int) pid);
        g_autofree char *text = NULL;
        g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
        const char *p = strstr(text, "VmRSS:");
        g_assert_nonnull(p);
        return strtol(p + 6, NULL, 10);
}

static void test_hostile_clients(void) {
        Env e = { 0 };
        g_assert_cmpint(upstream_fixture_new(0, &e.fx), ==, 0);
        e.image = g_malloc(IMAGE_SIZE);
        for (size_t i = 0; i < IMAGE_SIZE; i++)
                e.image[i] = (uint8_t) (i * 7 + (i >> 12));
        g_autofree uint8_t *big = g_malloc(BIG_SIZE);
        for (size_t i = 0; i < BIG_SIZE; i++)
                big[i] = (uint8_t) (i * 3);
        upstream_fixture_add_image(e.fx, "/images/img", e.image, IMAGE_SIZE, NULL);
        upstream_fixture_add_image(e.fx, "/images/big", big, BIG_SIZE, NULL);
        e.bus = test_bus_new();
        e.port = test_free_port();
        g_autofree char *url = upstream_fixture_url(e.fx, "/images/{id}");
        g_autofree char *config = g_strdup_printf("[Cache]\nKeepFree=0\nMaxSize=1G\n[Upstream]\nURL=%s\n"
                                                  "[HTTP]\nListen=127.0.0.1:%u\nMaxConnections=2048\n"
                                                  "MaxConnectionsPerIP=%d\nHeaderTimeoutSec=%d\n"
                                                  "[Daemon]\nExitOnIdleSec=infinity\n", url, e.port, PER_IP,
                                                  HEADER_TIMEOUT_SEC);
        test_bus_write_config(e.bus, config);
        if (!test_bus_start_daemon(e.bus, NULL))
                g_error("imgcached did not start:\n%s", test_bus_daemon_stderr(e.bus));
        GPid pid = test_bus_name_owner_pid(e.bus);
        g_assert_cmpint(pid, >, 0);

        /* Warm up: both images cached (fetch-through), the normal client works. */
        static const char get_big[] = "GET /images/big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        g_assert_cmpint(request(&e, get_big, strlen(get_big), NULL), ==, 200);
        (void) probe(&e);
        (void) probe(&e);
        long rss_before = rss_kib(pid);

        int idle[IDLE], loris[LORIS], slow[SLOW];
        gint64 loris_start = g_get_monotonic_time();
        for (int i = 0; i < IDLE; i++)
                idle[i] = test_connect_from(IDLE_ADDR, e.port);
        for (int i = 0; i < LORIS; i++) {
                loris[i] = test_connect_from(LORIS_ADDR, e.port);
                send_str(loris[i], "GET /images/img HTTP/1.1\r\nHost: 127.0.0.1\r\n", 43);
        }
        for (int i = 0; i < SLOW; i++) {
                slow[i] = test_connect_from(SLOW_ADDR, e.port);
                int small = 4096;
                (void) setsockopt(slow[i], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
                send_str(slow[i], get_big, strlen(get_big));
        }

        double worst = 0, sum = 0;
        for (int round = 0; round < ROUNDS; round++) {
                /* Each slow-loris client sends one more header line; each slow reader takes one byte. */
                for (int i = 0; i < LORIS; i++) {
                        g_autofree char *h = g_strdup_printf("X-Loris-%d: %d\r\n", round, i);
                        send_str(loris[i], h, strlen(h));
                }
                for (int i = 0; i < SLOW; i++) {
                        struct pollfd p = { .fd = slow[i], .events = POLLIN };
                        char c;
                        if (poll(&p, 1, IO_TIMEOUT_MS) > 0)
                                (void) recv(slow[i], &c, 1, 0);
                }
                double ms = probe(&e);
                worst = MAX(worst, ms);
                sum += ms;
        }
        g_test_message("under load (%d idle, %d slow-loris, %d slow readers): probe latency avg %.1f ms, max %.1f ms",
                       IDLE, LORIS, SLOW, sum / ROUNDS, worst);

        /* The idle address holds at most PER_IP connections: one more is closed unanswered. The first
         * idle ones are still open (the per-address limit took the rest). */
        static const char health[] = "GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        g_assert_cmpint(request_from(&e, IDLE_ADDR, health, strlen(health), NULL), ==, 0);
        g_assert_false(closed_by_server(idle[0], 0));
        unsigned idle_closed = 0;
        for (int i = 0; i < IDLE; i++)
                idle_closed += closed_by_server(idle[i], i < PER_IP ? 0 : IO_TIMEOUT_MS);
        g_test_message("idle connections from one address closed by the server: %u of %d", idle_closed, IDLE);
        g_assert_cmpuint(idle_closed, >=, IDLE - PER_IP);

        /* The slow-loris clients never finish their headers: the server drops each within the header
         * timeout (plus a second of timer slack), though they were never idle. */
        for (int i = 0; i < LORIS; i++)
                g_assert_true(closed_by_server(loris[i], (HEADER_TIMEOUT_SEC + 2) * 1000 + IO_TIMEOUT_MS));
        g_test_message("slow-loris clients dropped %.1f s after they connected (HeaderTimeoutSec=%d)",
                       (g_get_monotonic_time() - loris_start) / 1e6, HEADER_TIMEOUT_SEC);

        /* Bad requests, each on its own connection, while the hostile clients are still there. */
        g_autofree char *huge_header = g_strdup_printf("GET /images/img HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: %0*d\r\n\r\n",
                                                       128 * 1024, 0);
        g_autofree char *huge_url = g_strdup_printf("GET /images/%0*d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 128 * 1024, 0);
        static const struct { const char *name, *req; int status; } bad[] = {
                { "invalid method", "BREW /images/img HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 405 },
                { "DELETE on an image", "DELETE /images/img HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 405 },
                { "invalid image id", "GET /images/.hidden HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 400 },
                { "path traversal", "GET /images/..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 400 },
                { "unknown path", "GET /no/such/thing HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 404 },
                { "no Host in HTTP/1.1", "GET /images/img HTTP/1.1\r\nConnection: close\r\n\r\n", 400 },
                /* Not HTTP at all: 400, or (libmicrohttpd's choice) closed without an answer: 0. */
                { "garbage request line", "\x01\x02garbage\xff\r\n\r\n", -1 },
        };
        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                int s = request(&e, bad[i].req, strlen(bad[i].req), NULL);
                g_test_message("%s: %d", bad[i].name, s);
                if (bad[i].status < 0 ? s != 400 && s != 0 : s != bad[i].status)
                        g_error("%s: status %d, want %d", bad[i].name, s, bad[i].status);
        }
        int s = request(&e, huge_header, strlen(huge_header), NULL);
        g_test_message("128 KiB header: %d", s);
        g_assert_cmpint(s, ==, 431);
        s = request(&e, huge_url, strlen(huge_url), NULL);
        g_test_message("128 KiB URL: %d", s);
        g_assert_cmpint(s, ==, 414);

        /* Pipelined: a good request followed by garbage on the same connection: the first is answered
         * 200 in full, the garbage 400 (or the connection closed), never anything else. */
        static const char pipelined[] = "GET /images/img HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                        "\x7f\x7fNOT HTTP AT ALL\r\n\r\nGET /images/img HTTP/1.1\r\n\r\n";
        GByteArray *b = NULL;
        s = request(&e, pipelined, sizeof pipelined - 1, &b);
        g_assert_cmpint(s, ==, 200);
        const uint8_t *body = memmem(b->data, b->len, "\r\n\r\n", 4);
        g_assert_nonnull(body);
        body += 4;
        size_t rest = b->len - (size_t) (body - b->data);
        g_assert_cmpuint(rest, >=, IMAGE_SIZE);
        g_assert_true(memcmp(body, e.image, IMAGE_SIZE) == 0);
        if (rest > IMAGE_SIZE) {
                GByteArray second = { .data = (guint8 *) body + IMAGE_SIZE, .len = (guint) (rest - IMAGE_SIZE) };
                g_test_message("pipelined garbage: %d", status_of(&second));
                g_assert_true(status_of(&second) == 400 || second.len == 0);
        } else
                g_test_message("pipelined garbage: connection closed");
        g_byte_array_unref(b);
        (void) probe(&e);

        for (int i = 0; i < IDLE; i++)
                close(idle[i]);
        for (int i = 0; i < LORIS; i++)
                close(loris[i]);
        for (int i = 0; i < SLOW; i++)
                close(slow[i]);
        double after_ms = probe(&e);
        long rss_after = rss_kib(pid);
        g_test_message("daemon RSS before %ld KiB, after %ld KiB; probe after the load %.1f ms", rss_before, rss_after,
                       after_ms);
        g_assert_cmpint(rss_after - rss_before, <, RSS_GROWTH_MAX);
        g_assert_cmpint(test_bus_name_owner_pid(e.bus), ==, pid); /* never restarted */

        test_bus_free(e.bus);
        upstream_fixture_free(e.fx);
        g_free(e.image);
}

/* A thousand held connections need more descriptors than the usual soft limit of 1024, here and in
 * the daemon, which inherits our limits. */
static void raise_fd_limit(void) {
        struct rlimit rl;
        g_assert_cmpint(getrlimit(RLIMIT_NOFILE, &rl), ==, 0);
        if (rl.rlim_cur < 4096 && rl.rlim_max > rl.rlim_cur) {
                rl.rlim_cur = MIN(rl.rlim_max, (rlim_t) 4096);
                g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &rl), ==, 0);
        }
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        raise_fd_limit();
        g_test_add_func("/hostile-clients/load", test_hostile_clients);
        return g_test_run();
}
