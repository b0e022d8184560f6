/* SPDX-License-Identifier: MIT */

/* The fast paths of imgcached must serve exactly the right bytes. The hit path keeps files open and header
 * values formatted between requests (hit-cache.c) and copies small bodies instead of sendfile(): that must
 * never serve stale bytes or headers, and never write to disk per request. A Range far ahead of a running
 * fill is asked of the origin directly (http-stream.c): bounded, with the daemon's credentials, after the
 * client's own authorization. The real daemon on a private session bus (tests/lib/test-bus.h), the
 * upstream fixture in this process, libcurl, curl and qemu-img as clients:
 *   - a deleted image's file is closed at once (its blocks are freed), and the image fetched again
 *     under the same id is served with its new bytes, whole and in ranges;
 *   - a Verify that records a checksum changes ETag and Repr-Digest; a Verify that finds the image
 *     invalid leaves no open file behind and the next GET fetches a good copy;
 *   - 300 hits (small ranges, a large GET, HEADs) cause at most one write-behind of the hit counters,
 *     counted with strace on the daemon's file writes and syncs;
 *   - while a fill is stalled at 1 MiB, the last 512 bytes of a 64 MiB image are answered (from one
 *     upstream request for exactly those bytes, with the daemon's token), qemu-img reads a VHD's footer,
 *     and ranges that straddle the front or are too long for the origin wait for the fill, byte-exact;
 *   - a client refused by ReadAccess= starts no upstream request at all.
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

/* extra: more configuration (NULL: none). */
static void start_daemon_with(Fixture *f, const char *extra) {
        g_autofree char *url = upstream_fixture_url(f->fx, "/images/{id}");
        g_autofree char *config = g_strdup_printf("[Upstream]\nURL=%s\n[Daemon]\nExitOnIdleSec=infinity\n%s", url,
                                                  extra ?: "");
        g_autofree char *listen = NULL;

        test_bus_write_config(f->bus, config);
        f->port = test_free_port();
        listen = g_strdup_printf("--listen=127.0.0.1:%u", f->port);
        const char *args[] = { listen, NULL };
        if (!test_bus_start_daemon(f->bus, args))
                g_error("imgcached did not start:\n%s", test_bus_daemon_stderr(f->bus));
}

static void start_daemon(Fixture *f) {
        start_daemon_with(f, NULL);
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata) {
        g_byte_array_append(userdata, (const guint8 *) ptr, (guint) (size * nmemb));
        return size * nmemb;
}

/* A request for image id on the fixture's connection, with one more header line (or NULL): its status; the
 * body in *ret_body, the headers in *ret_headers. */
static long request_full(Fixture *f, const char *id, const char *method, const char *range, const char *header,
                         GByteArray **ret_body, char **ret_headers) {
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/%s", f->port, id);
        struct curl_slist *headers_out = header ? curl_slist_append(NULL, header) : NULL;
        GByteArray *body = g_byte_array_new(), *headers = g_byte_array_new();
        long status = 0;

        curl_easy_reset(f->curl);
        (void) curl_easy_setopt(f->curl, CURLOPT_URL, url);
        if (g_str_equal(method, "HEAD"))
                (void) curl_easy_setopt(f->curl, CURLOPT_NOBODY, 1L);
        (void) curl_easy_setopt(f->curl, CURLOPT_RANGE, range);
        (void) curl_easy_setopt(f->curl, CURLOPT_HTTPHEADER, headers_out);
        (void) curl_easy_setopt(f->curl, CURLOPT_WRITEFUNCTION, on_data);
        (void) curl_easy_setopt(f->curl, CURLOPT_WRITEDATA, body);
        (void) curl_easy_setopt(f->curl, CURLOPT_HEADERFUNCTION, on_data);
        (void) curl_easy_setopt(f->curl, CURLOPT_HEADERDATA, headers);
        (void) curl_easy_setopt(f->curl, CURLOPT_TIMEOUT_MS, (long) TEST_BUS_TIMEOUT_MS);
        g_assert_cmpint(curl_easy_perform(f->curl), ==, CURLE_OK);
        (void) curl_easy_getinfo(f->curl, CURLINFO_RESPONSE_CODE, &status);
        curl_slist_free_all(headers_out);
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

static long request(Fixture *f, const char *method, const char *range, GByteArray **ret_body, char **ret_headers) {
        return request_full(f, "img", method, range, NULL, ret_body, ret_headers);
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

        g_autofree char *strace_path = g_find_program_in_path("strace");
        if (!strace_path) {
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

/* ---- ranges far ahead of a fill ---- */

#define BIG_SIZE (64 * 1024 * 1024)
#define STALL_AT (1024 * 1024)
#define NEXT_SIZE (4 * 1024 * 1024)
#define UPSTREAM_TOKEN "up-secret"

/* The 64 MiB image "big" upstream, whose first GET stalls after 1 MiB until released; the upstream wants
 * the daemon's token. */
static void add_stalling_image(Fixture *f, const char *path, const uint8_t *data, size_t size) {
        g_autofree char *token = g_build_filename(test_bus_dir(f->bus), "upstream-token", NULL);
        UpstreamImageOptions o = { .stall_after = STALL_AT, .fail_first = 1, .etag = "\"v1\"" };

        g_assert_true(g_file_set_contents(token, UPSTREAM_TOKEN "\n", -1, NULL));
        g_assert_cmpint(upstream_fixture_set_token(f->fx, UPSTREAM_TOKEN), ==, 0);
        g_assert_cmpint(upstream_fixture_add_image(f->fx, path, data, size, &o), ==, 0);
}

/* The daemon's configuration for it: its token, then extra (NULL: nothing). A second [Upstream] adds to
 * the first. */
static char *stalling_config(Fixture *f, const char *extra) {
        g_autofree char *token = g_build_filename(test_bus_dir(f->bus), "upstream-token", NULL);
        return g_strdup_printf("[Upstream]\nTokenFile=%s\n%s", token, extra ?: "");
}

/* curl in the background for a range of an image into a file; its process. Some of these wait for a 64 MiB
 * fill to finish first, which under valgrind on a loaded machine took more than 10 s: the bound is a
 * generous one against a hang, not a measure (meson's timeout is the other). */
static GSubprocess *curl_range_start(Fixture *f, const char *id, const char *range, const char *out) {
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/%s", f->port, id);
        g_autofree char *max = g_strdup_printf("%u", 6 * TEST_BUS_TIMEOUT_MS / 1000);
        g_autoptr(GError) error = NULL;
        GSubprocess *p = g_subprocess_new(G_SUBPROCESS_FLAGS_NONE, &error, "curl", "-sSf", "--max-time", max, "-r",
                                          range, "-o", out, url, NULL);
        g_assert_no_error(error);
        return p;
}

static void assert_file_is(const char *path, const uint8_t *data, size_t size) {
        g_autofree char *got = NULL;
        gsize n;

        g_assert_true(g_file_get_contents(path, &got, &n, NULL));
        g_assert_cmpuint(n, ==, size);
        g_assert_true(memcmp(got, data, size) == 0);
}

static bool strv_has(char **v, const char *s) {
        for (; v && *v; v++)
                if (g_str_equal(*v, s))
                        return true;
        return false;
}

static void test_range_ahead(Fixture *f, gconstpointer user) {
        g_autofree uint8_t *data = test_random_data(BIG_SIZE, 3);
        g_autofree char *config = NULL, *headers = NULL;
        g_autoptr(GByteArray) body = NULL;
        g_autofree char *dir = g_strdup(test_bus_dir(f->bus));

        add_stalling_image(f, "/images/big", data, BIG_SIZE);
        config = stalling_config(f, NULL);
        start_daemon_with(f, config);

        /* The footer, first: it starts the fill, which stalls at 1 MiB; waiting for it would never end. */
        g_assert_cmpint(request_full(f, "big", "GET", "-512", NULL, &body, &headers), ==, 206);
        g_assert_cmpuint(body->len, ==, 512);
        g_assert_true(memcmp(body->data, data + BIG_SIZE - 512, 512) == 0);
        g_autofree char *cr = g_strdup_printf("Content-Range: bytes %u-%u/%u", BIG_SIZE - 512, BIG_SIZE - 1, BIG_SIZE);
        g_assert_nonnull(strcasestr(headers, cr));

        /* One upstream request for exactly those bytes, of the same representation, with the daemon's token. */
        g_auto(GStrv) ranges = upstream_fixture_ranges(f->fx, "/images/big");
        g_autofree char *asked = g_strdup_printf("bytes=%u-%u", BIG_SIZE - 512, BIG_SIZE - 1);
        g_assert_cmpuint(g_strv_length(ranges), ==, 2); /* the fill's GET, and the range */
        g_assert_cmpstr(ranges[0], ==, "");
        g_assert_cmpstr(ranges[1], ==, asked);
        g_auto(GStrv) if_ranges = upstream_fixture_if_ranges(f->fx, "/images/big");
        g_assert_cmpstr(if_ranges[1], ==, "\"v1\"");
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, UPSTREAM_TOKEN), ==, 2);

        /* A range across the front and one too long to ask for separately wait for the fill. */
        g_autofree char *straddle = g_build_filename(dir, "straddle", NULL), *large = g_build_filename(dir, "large", NULL);
        g_autofree char *straddle_range = g_strdup_printf("%u-%u", STALL_AT - 100, STALL_AT + 99);
        g_autofree char *large_range = g_strdup_printf("%u-%u", 32 * 1024 * 1024, 52 * 1024 * 1024 - 1);
        g_autoptr(GSubprocess) p1 = curl_range_start(f, "big", straddle_range, straddle);
        g_autoptr(GSubprocess) p2 = curl_range_start(f, "big", large_range, large);
        upstream_fixture_release(f->fx);
        g_assert_true(g_subprocess_wait_check(p1, NULL, NULL));
        g_assert_true(g_subprocess_wait_check(p2, NULL, NULL));
        assert_file_is(straddle, data + STALL_AT - 100, 200);
        assert_file_is(large, data + 32 * 1024 * 1024, 20 * 1024 * 1024);

        g_auto(GStrv) after = upstream_fixture_ranges(f->fx, "/images/big");
        g_assert_cmpuint(g_strv_length(after), ==, 2); /* nothing more was asked of the origin */
        g_assert_false(strv_has(after, "bytes=32-"));
}

/* With MaxParallelFetches=1 held by big's stalled fill, the fill of "next" waits for a slot: a range of
 * it, at any offset, is asked of the origin at once; a suffix range, which needs the length, waits. */
static void test_range_of_waiting_fill(Fixture *f, gconstpointer user) {
        g_autofree uint8_t *data = test_random_data(BIG_SIZE, 5);
        g_autofree uint8_t *next = test_random_data(NEXT_SIZE, 6);
        g_autofree char *config = NULL, *headers = NULL;
        g_autoptr(GByteArray) body = NULL, footer = NULL;
        g_autofree char *out = g_build_filename(test_bus_dir(f->bus), "next-suffix", NULL);
        UpstreamImageOptions o = { .etag = "\"n1\"" };

        add_stalling_image(f, "/images/big", data, BIG_SIZE);
        g_assert_cmpint(upstream_fixture_add_image(f->fx, "/images/next", next, NEXT_SIZE, &o), ==, 0);
        config = stalling_config(f, "MaxParallelFetches=1\n");
        start_daemon_with(f, config);

        /* big's fill takes the one slot and stalls (its footer is answered from the origin). */
        g_assert_cmpint(request_full(f, "big", "GET", "-512", NULL, &footer, NULL), ==, 206);

        g_assert_cmpint(request_full(f, "next", "GET", "1000-1999", NULL, &body, &headers), ==, 206);
        g_assert_cmpuint(body->len, ==, 1000);
        g_assert_true(memcmp(body->data, next + 1000, 1000) == 0);
        g_autofree char *cr = g_strdup_printf("Content-Range: bytes 1000-1999/%u", NEXT_SIZE);
        g_assert_nonnull(strcasestr(headers, cr));

        g_autoptr(GSubprocess) p = curl_range_start(f, "next", "-512", out);
        upstream_fixture_release(f->fx);
        g_assert_true(g_subprocess_wait_check(p, NULL, NULL));
        assert_file_is(out, next + NEXT_SIZE - 512, 512);

        /* The origin saw the range, without If-Range (the fill had no ETag yet), then the fill's GET:
         * the suffix range was never asked of it. */
        g_auto(GStrv) ranges = upstream_fixture_ranges(f->fx, "/images/next");
        g_assert_cmpuint(g_strv_length(ranges), ==, 2);
        g_assert_cmpstr(ranges[0], ==, "bytes=1000-1999");
        g_assert_cmpstr(ranges[1], ==, "");
        g_auto(GStrv) if_ranges = upstream_fixture_if_ranges(f->fx, "/images/next");
        g_assert_cmpstr(if_ranges[0], ==, "");
}

/* qemu-img reads a VHD's footer at the end of the image: answered while the fill is stalled. */
static void test_range_ahead_qemu_img(Fixture *f, gconstpointer user) {
        g_autofree char *vhd = g_build_filename(test_bus_dir(f->bus), "disk.vhd", NULL);
        g_autofree char *contents = NULL, *info = NULL, *config = NULL;
        gsize size;
        int status;

        g_autofree char *qemu_img = g_find_program_in_path("qemu-img");
        if (!qemu_img) {
                test_skip_missing("qemu-img is missing");
                return;
        }
        g_assert_true(g_spawn_sync(NULL, (char *[]) { "qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed",
                                                      vhd, "64M", NULL },
                                   NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, &status, NULL));
        g_assert_true(g_spawn_check_wait_status(status, NULL));
        g_assert_true(g_file_get_contents(vhd, &contents, &size, NULL));
        add_stalling_image(f, "/images/disk", (const uint8_t *) contents, size);
        config = stalling_config(f, NULL);
        start_daemon_with(f, config);

        g_autofree char *url = g_strdup_printf("json:{\"driver\":\"vpc\",\"file\":{\"driver\":\"http\","
                                               "\"url\":\"http://127.0.0.1:%u/images/disk\",\"timeout\":%u}}",
                                               f->port, TEST_BUS_TIMEOUT_MS / 1000);
        g_autofree char *err = NULL;
        g_assert_true(g_spawn_sync(NULL, (char *[]) { "qemu-img", "info", "--output=json", url, NULL }, NULL,
                                   G_SPAWN_SEARCH_PATH, NULL, NULL, &info, &err, &status, NULL));
        if (!g_spawn_check_wait_status(status, NULL) && strstr(err, "Unknown protocol")) {
                test_skip_missing("qemu-img cannot read http:// here (qemu-block-extra missing)");
                return;
        }
        if (!g_spawn_check_wait_status(status, NULL))
                g_error("qemu-img info failed: %s", err);
        /* What qemu-img says of the local file, from the footer it read over HTTP. */
        g_autofree char *local = NULL;
        g_assert_true(g_spawn_sync(NULL, (char *[]) { "qemu-img", "info", "--output=json", "-f", "vpc", vhd, NULL }, NULL,
                                   G_SPAWN_SEARCH_PATH, NULL, NULL, &local, NULL, &status, NULL));
        g_assert_true(g_spawn_check_wait_status(status, NULL));
        const char *want = strstr(local, "\"virtual-size\":");
        g_assert_nonnull(want);
        g_autofree char *line = g_strndup(want, strcspn(want, ","));
        g_assert_nonnull(strstr(info, line));
        g_assert_nonnull(strstr(info, "\"format\": \"vpc\""));
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, UPSTREAM_TOKEN), >=, 2);
}

/* ReadAccess= comes first: a refused client starts nothing upstream, a range ahead included. */
static void test_range_ahead_authorized(Fixture *f, gconstpointer user) {
        g_autofree uint8_t *data = test_random_data(BIG_SIZE, 4);
        g_autofree char *read_token = g_build_filename(test_bus_dir(f->bus), "read-token", NULL);
        g_autofree char *config = NULL;
        g_autoptr(GByteArray) body = NULL;

        add_stalling_image(f, "/images/big", data, BIG_SIZE);
        g_assert_true(g_file_set_contents(read_token, "reader\n", -1, NULL));
        g_autofree char *http = g_strdup_printf("[HTTP]\nReadAccess=token\nReadTokenFile=%s\n", read_token);
        config = stalling_config(f, http);
        start_daemon_with(f, config);

        g_assert_cmpint(request_full(f, "big", "GET", "-512", NULL, NULL, NULL), ==, 401);
        g_assert_cmpint(request_full(f, "big", "GET", "-512", "X-Auth-Token: wrong", NULL, NULL), ==, 401);
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/big"), ==, 0);

        g_assert_cmpint(request_full(f, "big", "GET", "-512", "X-Auth-Token: reader", &body, NULL), ==, 206);
        g_assert_true(body->len == 512 && memcmp(body->data, data + BIG_SIZE - 512, 512) == 0);
        g_assert_cmpuint(upstream_fixture_token_requests(f->fx, "reader"), ==, 0); /* never sent upstream */
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_assert_cmpint(curl_global_init(CURL_GLOBAL_DEFAULT), ==, CURLE_OK);

#define ADD(name, fn) g_test_add(name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
        ADD("/http-fast/hit-delete-and-refetch", test_delete_and_refetch);
        ADD("/http-fast/hit-verify", test_verify);
        ADD("/http-fast/no-disk-write-per-hit", test_no_disk_write_per_hit);
        ADD("/http-fast/range-ahead", test_range_ahead);
        ADD("/http-fast/range-ahead-qemu-img", test_range_ahead_qemu_img);
        ADD("/http-fast/range-of-waiting-fill", test_range_of_waiting_fill);
        ADD("/http-fast/range-ahead-authorized", test_range_ahead_authorized);
        return g_test_run();
}
