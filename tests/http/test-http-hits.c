/* SPDX-License-Identifier: MIT */

/* The hit path of imgcached keeps files open and header values formatted between requests (hit-cache.c)
 * and copies small bodies instead of sendfile(): that must never serve stale bytes or headers, and never
 * write to disk per request. The real daemon on a private session bus (tests/lib/test-bus.h), the
 * upstream fixture in this process, libcurl as the client:
 *   - a deleted image's file is closed at once (its blocks are freed), and the image fetched again
 *     under the same id is served with its new bytes, whole and in ranges;
 *   - a Verify that records a checksum changes ETag and Repr-Digest; a Verify that finds the image
 *     invalid leaves no open file behind and the next GET fetches a good copy;
 *   - 300 hits (small ranges, a large GET, HEADs) cause at most one write-behind of the hit counters,
 *     counted with strace on the daemon's file writes and syncs.
 * Waits follow bus signals or processes, bounded by TEST_BUS_TIMEOUT_MS; every process is stopped by pid. */

#include <curl/curl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <unistd.h>

#include "test-bus.h"
#include "test-util.h"
#include "upstream-fixture.h"

#define IMAGE_SIZE (1024 * 1024 + 7)
#define N_HITS 300

typedef struct Fixture {
        TestBus *bus;
        UpstreamFixture *fx;
        uint8_t *a, *b;     /* two contents of the same size */
        char *image_path;   /* cache/img */
        uint16_t port;
        CURL *curl;         /* one keep-alive connection */
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer user) {
        f->bus = test_bus_new();
        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->a = test_random_data(IMAGE_SIZE, 1);
        f->b = test_random_data(IMAGE_SIZE, 2);
        f->image_path = g_build_filename(test_bus_cache_dir(f->bus), "img", NULL);
        f->curl = curl_easy_init();
        g_assert_nonnull(f->curl);
}

static void fixture_teardown(Fixture *f, gconstpointer user) {
        curl_easy_cleanup(f->curl);
        test_bus_free(f->bus); /* stops the daemon by pid */
        upstream_fixture_free(f->fx);
        g_free(f->a);
        g_free(f->b);
        g_free(f->image_path);
}

static void start_daemon(Fixture *f) {
        g_autofree char *url = upstream_fixture_url(f->fx, "/images/{id}");
        g_autofree char *config = g_strdup_printf("[Upstream]\nURL=%s\n[Daemon]\nExitOnIdleSec=infinity\n", url);
        g_autofree char *listen = NULL;

        test_bus_write_config(f->bus, config);
        f->port = test_free_port();
        listen = g_strdup_printf("--listen=127.0.0.1:%u", f->port);
        const char *args[] = { listen, NULL };
        if (!test_bus_start_daemon(f->bus, args))
                g_error("imgcached did not start:\n%s", test_bus_daemon_stderr(f->bus));
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata) {
        g_byte_array_append(userdata, (const guint8 *) ptr, (guint) (size * nmemb));
        return size * nmemb;
}

/* A request on the fixture's connection: its status; the body in *ret_body, the headers in *ret_headers. */
static long request(Fixture *f, const char *method, const char *range, GByteArray **ret_body, char **ret_headers) {
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/img", f->port);
        GByteArray *body = g_byte_array_new(), *headers = g_byte_array_new();
        long status = 0;

        curl_easy_reset(f->curl);
        (void) curl_easy_setopt(f->curl, CURLOPT_URL, url);
        if (g_str_equal(method, "HEAD"))
                (void) curl_easy_setopt(f->curl, CURLOPT_NOBODY, 1L);
        (void) curl_easy_setopt(f->curl, CURLOPT_RANGE, range);
        (void) curl_easy_setopt(f->curl, CURLOPT_WRITEFUNCTION, on_data);
        (void) curl_easy_setopt(f->curl, CURLOPT_WRITEDATA, body);
        (void) curl_easy_setopt(f->curl, CURLOPT_HEADERFUNCTION, on_data);
        (void) curl_easy_setopt(f->curl, CURLOPT_HEADERDATA, headers);
        (void) curl_easy_setopt(f->curl, CURLOPT_TIMEOUT_MS, (long) TEST_BUS_TIMEOUT_MS);
        g_assert_cmpint(curl_easy_perform(f->curl), ==, CURLE_OK);
        (void) curl_easy_getinfo(f->curl, CURLINFO_RESPONSE_CODE, &status);
        g_byte_array_append(headers, (const guint8 *) "", 1);
        if (ret_headers)
                *ret_headers = (char *) g_byte_array_free(headers, FALSE);
        else
                g_byte_array_unref(headers);
        if (ret_body)
                *ret_body = body;
        else
                g_byte_array_unref(body);
        return status;
}

/* GET (whole, and the ranges on both sides of HTTP_COPY_BODY_MAX) answers exactly data. */
static void assert_serves(Fixture *f, const uint8_t *data) {
        const struct { const char *range; size_t start, length; } cases[] = {
                { NULL, 0, IMAGE_SIZE },
                { "0-4095", 0, 4096 },
                { "1000-1999", 1000, 1000 },
                { "4096-69631", 4096, 65536 },  /* large enough for sendfile */
                { "-7", IMAGE_SIZE - 7, 7 },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autoptr(GByteArray) body = NULL;
                long status = request(f, "GET", cases[i].range, &body, NULL);
                g_assert_cmpint(status, ==, cases[i].range ? 206 : 200);
                g_assert_cmpuint(body->len, ==, cases[i].length);
                g_assert_true(memcmp(body->data, data + cases[i].start, cases[i].length) == 0);
        }
}

/* How many of the daemon's open fds point at path (as readlink shows it: " (deleted)" appended once
 * unlinked). */
static unsigned daemon_fds_on(Fixture *f, const char *path) {
        GPid pid = test_bus_name_owner_pid(f->bus);
        g_autofree char *dir = g_strdup_printf("/proc/%d/fd", (int) pid);
        g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
        const char *name;
        unsigned n = 0;

        g_assert_cmpint(pid, >, 0);
        g_assert_nonnull(d);
        while ((name = g_dir_read_name(d))) {
                g_autofree char *link = g_build_filename(dir, name, NULL);
                g_autofree char *target = g_file_read_link(link, NULL);
                if (target && g_str_has_prefix(target, path))
                        n++;
        }
        return n;
}

static GVariant *call_ok(Fixture *f, const char *method, GVariant *params) {
        g_autoptr(GError) error = NULL;
        GVariant *v = g_dbus_connection_call_sync(test_bus_connection(f->bus), TEST_BUS_NAME, TEST_BUS_PATH,
                                                  TEST_BUS_IFACE, method, params, NULL, G_DBUS_CALL_FLAGS_NONE,
                                                  TEST_BUS_TIMEOUT_MS, NULL, &error);
        g_assert_no_error(error);
        return v;
}

static void test_delete_and_refetch(Fixture *f, gconstpointer user) {
        g_assert_true(g_file_set_contents(f->image_path, (const char *) f->a, IMAGE_SIZE, NULL));
        g_assert_cmpint(upstream_fixture_add_image(f->fx, "/images/img", f->b, IMAGE_SIZE, NULL), ==, 0);
        start_daemon(f);
        g_autoptr(TestSignalLog) log = test_signal_log_new(f->bus);

        assert_serves(f, f->a);
        /* The file is held open between hits: that is what the rest of this test is about. */
        g_assert_cmpuint(daemon_fds_on(f, f->image_path), ==, 1);

        g_autoptr(GVariant) r = call_ok(f, "DeleteImage", g_variant_new("(s)", "img"));
        g_assert_false(g_file_test(f->image_path, G_FILE_TEST_EXISTS));
        g_assert_cmpuint(daemon_fds_on(f, f->image_path), ==, 0); /* not even " (deleted)" */

        /* The same id again, from the upstream with other bytes: a miss, then hits of the new file. */
        g_autoptr(GByteArray) body = NULL;
        g_assert_cmpint(request(f, "GET", NULL, &body, NULL), ==, 200);
        g_assert_true(body->len == IMAGE_SIZE && memcmp(body->data, f->b, IMAGE_SIZE) == 0);
        g_assert_nonnull(test_signal_log_wait(log, "ImageCached", "img"));
        assert_serves(f, f->b);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/img"), ==, 1);
}

static void test_verify(Fixture *f, gconstpointer user) {
        g_autofree char *before = NULL, *after = NULL;
        g_autofree char *invalid = g_build_filename(test_bus_cache_dir(f->bus), "invalid", "img", NULL);
        gboolean good;

        g_assert_true(g_file_set_contents(f->image_path, (const char *) f->a, IMAGE_SIZE, NULL));
        g_assert_cmpint(upstream_fixture_add_image(f->fx, "/images/img", f->a, IMAGE_SIZE, NULL), ==, 0);
        start_daemon(f);
        g_autoptr(TestSignalLog) log = test_signal_log_new(f->bus);

        /* Adopted without a checksum: no digest to tell. Verify records one, and the hit says so. */
        g_assert_cmpint(request(f, "HEAD", NULL, NULL, &before), ==, 200);
        g_assert_null(strcasestr(before, "Repr-Digest:"));
        g_autoptr(GVariant) v1 = call_ok(f, "Verify", g_variant_new("(s)", "img"));
        g_variant_get(v1, "(b)", &good);
        g_assert_true(good);
        g_assert_cmpint(request(f, "HEAD", NULL, NULL, &after), ==, 200);
        g_assert_nonnull(strcasestr(after, "Repr-Digest: sha-256=:"));
        assert_serves(f, f->a);

        /* Replaced behind the daemon's back with other bytes: Verify finds it invalid and moves it. */
        g_assert_true(g_file_set_contents(f->image_path, (const char *) f->b, IMAGE_SIZE, NULL));
        g_autoptr(GVariant) v2 = call_ok(f, "Verify", g_variant_new("(s)", "img"));
        g_variant_get(v2, "(b)", &good);
        g_assert_false(good);
        g_assert_nonnull(test_signal_log_wait(log, "ImageRemoved", "img"));
        g_assert_true(g_file_test(invalid, G_FILE_TEST_IS_REGULAR));
        g_assert_cmpuint(daemon_fds_on(f, f->image_path), ==, 0);
        g_assert_cmpuint(daemon_fds_on(f, invalid), ==, 0);

        /* The next GET is a miss that fetches the good copy. */
        assert_serves(f, f->a);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/img"), ==, 1);
}

/* strace's -y shows an fd's path: "write(7</…/cache.db>, …". Writes and syncs of files, and sends on
 * sockets (the responses: proof that the trace saw the hits). */
static void count_writes(const char *trace, unsigned *ret_files, unsigned *ret_tcp) {
        g_auto(GStrv) lines = g_strsplit(trace, "\n", -1);

        *ret_files = *ret_tcp = 0;
        for (char **l = lines; *l; l++) {
                const char *fd = strchr(*l, '<');
                if (!fd || !strchr(*l, '('))
                        continue;
                if (g_str_has_prefix(fd, "<socket:"))
                        (*ret_tcp)++;
                else if (fd[1] == '/' && !g_str_has_prefix(fd, "</dev/"))
                        (*ret_files)++;
        }
}

static void test_no_disk_write_per_hit(Fixture *f, gconstpointer user) {
        g_autofree char *trace_path = g_build_filename(test_bus_dir(f->bus), "strace.out", NULL);
        g_autofree char *trace = NULL, *pid = NULL;
        g_autoptr(GSubprocess) strace = NULL;
        g_autoptr(GError) error = NULL;

        if (!g_find_program_in_path("strace")) {
                g_test_fail_printf("strace is missing (tools/install-deps installs it)");
                return;
        }
        g_assert_true(g_file_set_contents(f->image_path, (const char *) f->a, IMAGE_SIZE, NULL));
        start_daemon(f);
        assert_serves(f, f->a); /* the first hit opens the file; the counters' write-behind is armed */

        pid = g_strdup_printf("%d", (int) test_bus_name_owner_pid(f->bus));
        strace = g_subprocess_new(G_SUBPROCESS_FLAGS_STDERR_PIPE, &error, "strace", "-f", "-y", "-o",
                                  trace_path, "-e",
                                  "trace=write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,sync_file_range,"
                                  "ftruncate,fallocate,rename,renameat,renameat2,unlink,unlinkat,sendmsg,sendto,"
                                  "sendfile",
                                  "-p", pid, NULL);
        g_assert_no_error(error);
        /* strace says "Process N attached" on stderr once it traces the daemon (or exits: EOF). */
        g_autoptr(GDataInputStream) err = g_data_input_stream_new(g_subprocess_get_stderr_pipe(strace));
        for (;;) {
                g_autofree char *line = g_data_input_stream_read_line(err, NULL, NULL, &error);
                g_assert_no_error(error);
                if (!line)
                        g_error("strace did not attach to %s", pid);
                if (strstr(line, "attached"))
                        break;
        }

        for (unsigned i = 0; i < N_HITS; i++) {
                unsigned start = (i % 200) * 4096;
                g_autofree char *range = g_strdup_printf("%u-%u", start, start + 4095);
                bool head = i % 3 == 2;
                long expected = head ? 200 : 206;
                g_assert_cmpint(request(f, head ? "HEAD" : "GET", head ? NULL : range, NULL, NULL), ==, expected);
        }
        g_assert_cmpint(request(f, "GET", NULL, NULL, NULL), ==, 200);

        g_subprocess_send_signal(strace, SIGINT);
        g_assert_true(g_subprocess_wait(strace, NULL, &error));
        g_assert_true(g_file_get_contents(trace_path, &trace, NULL, NULL));
        /* One write-behind of the hit counters (MANAGER_HIT_FLUSH_USEC) may fall into the window; a
         * write per hit would be hundreds. */
        unsigned files, tcp;
        count_writes(trace, &files, &tcp);
        if (tcp < N_HITS)
                g_error("the trace saw %u sends for %u hits:\n%.2000s", tcp, N_HITS, trace);
        if (files > 24)
                g_error("%u file writes for %u hits:\n%s", files, N_HITS + 1, trace);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_assert_cmpint(curl_global_init(CURL_GLOBAL_DEFAULT), ==, CURLE_OK);

#define ADD(name, fn) g_test_add(name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
        ADD("/http-hits/delete-and-refetch", test_delete_and_refetch);
        ADD("/http-hits/verify", test_verify);
        ADD("/http-hits/no-disk-write-per-hit", test_no_disk_write_per_hit);
        return g_test_run();
}
