/* SPDX-License-Identifier: MIT */

/* imgcached's HTTP management API and its D-Bus API are front ends of the same Manager operations: what a
 * request does over HTTP shows on the bus exactly as if it had come over D-Bus. The real daemon on a
 * private session bus (tests/lib/test-bus.h), the upstream fixture in this process, libcurl for HTTP:
 *   - PUT /v2/cache/<id> emits ImageQueued and changes QueuedCount;
 *   - its PrefetchOnQueue fill is a Job: ListJobs shows it, its Cancel ends it;
 *   - Misses never goes backwards across OpenImage and HTTP misses (one owner of the counters);
 *   - an HTTP dequeue-all drops the checksums QueueImage remembered for the queue;
 *   - a pinned image is refused (409) as DeleteImage refuses it.
 * Waits follow bus signals, bounded by TEST_BUS_TIMEOUT_MS; nothing sleeps; every process is stopped by
 * pid (test_bus_free). */

#include <curl/curl.h>
#include <glib.h>
#include <unistd.h>

#include "test-bus.h"
#include "test-util.h"
#include "upstream-fixture.h"

#define TOKEN "X-Auth-Token: tok-123"
#define IMAGE_SIZE (256 * 1024 + 5)

typedef struct Fixture {
        TestBus *bus;
        UpstreamFixture *fx;
        uint8_t *data;
        uint16_t port;
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer user) {
        f->bus = test_bus_new();
        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->data = test_random_data(IMAGE_SIZE, 7);
}

static void fixture_teardown(Fixture *f, gconstpointer user) {
        test_bus_free(f->bus);  /* stops the daemon by pid */
        upstream_fixture_free(f->fx);
        g_free(f->data);
}

/* Starts imgcached with the management API on a port of its own; prefetch_on_queue as PrefetchOnQueue=. */
static void start_daemon(Fixture *f, bool prefetch_on_queue) {
        g_autofree char *token = g_build_filename(test_bus_dir(f->bus), "token", NULL);
        g_autofree char *url = upstream_fixture_url(f->fx, "/images/{id}");
        g_autofree char *listen = NULL, *config = NULL;
        const char *args[2] = {};

        g_assert_true(g_file_set_contents(token, "tok-123\n", -1, NULL));
        config = g_strdup_printf("[Cache]\nPrefetchOnQueue=%s\n[Upstream]\nURL=%s\n[Daemon]\nExitOnIdleSec=infinity\n"
                                 "[HTTP]\nManagementAPI=yes\nManagementTokenFile=%s\n",
                                 prefetch_on_queue ? "yes" : "no", url, token);
        test_bus_write_config(f->bus, config);

        f->port = test_free_port();
        listen = g_strdup_printf("--listen=127.0.0.1:%u", f->port);
        args[0] = listen;
        /* The daemon listens before it takes the bus name: once the name is owned, HTTP answers. */
        if (!test_bus_start_daemon(f->bus, args))
                g_error("imgcached did not start:\n%s", test_bus_daemon_stderr(f->bus));
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
        g_string_append_len(userdata, ptr, (gssize) (size * nmemb));
        return size * nmemb;
}

/* One HTTP request to the daemon, with the management token (or none); its status. *ret_body: the body. */
static long http_request(Fixture *f, const char *method, const char *path, const char *header, char **ret_body) {
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u%s", f->port, path);
        GString *body = g_string_new(NULL);
        struct curl_slist *headers = header ? curl_slist_append(NULL, header) : NULL;
        CURL *curl = curl_easy_init();
        long status = 0;

        g_assert_nonnull(curl);
        (void) curl_easy_setopt(curl, CURLOPT_URL, url);
        (void) curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
        (void) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        (void) curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
        (void) curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
        (void) curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) TEST_BUS_TIMEOUT_MS);
        g_assert_cmpint(curl_easy_perform(curl), ==, CURLE_OK);
        (void) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(curl);
        curl_slist_free_all(headers);
        if (ret_body)
                *ret_body = g_string_free(body, FALSE);
        else
                g_string_free(body, TRUE);
        return status;
}

static GVariant *call(Fixture *f, const char *path, const char *interface, const char *method, GVariant *params,
                      GError **error) {
        return g_dbus_connection_call_sync(test_bus_connection(f->bus), TEST_BUS_NAME, path, interface, method,
                                           params, NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, error);
}

static GVariant *call_ok(Fixture *f, const char *method, GVariant *params) {
        g_autoptr(GError) error = NULL;
        GVariant *v = call(f, TEST_BUS_PATH, TEST_BUS_IFACE, method, params, &error);
        g_assert_no_error(error);
        return v;
}

/* A Manager property as a number (u or t). */
static guint64 get_number(Fixture *f, const char *property) {
        g_autoptr(GVariant) v = NULL, inner = NULL;
        g_autoptr(GError) error = NULL;

        v = call(f, TEST_BUS_PATH, "org.freedesktop.DBus.Properties", "Get",
                 g_variant_new("(ss)", TEST_BUS_IFACE, property), &error);
        g_assert_no_error(error);
        g_variant_get(v, "(v)", &inner);
        if (g_variant_is_of_type(inner, G_VARIANT_TYPE_UINT32))
                return g_variant_get_uint32(inner);
        return g_variant_get_uint64(inner);
}

/* The job path of the first JobNew, and the result of the first JobRemoved (for tests with one job). */
static const char *job_new_path(TestSignalLog *log) {
        const char *path;
        g_variant_get(test_signal_log_wait(log, "JobNew", NULL), "(u&o)", NULL, &path);
        return path;
}

static const char *job_removed_result(TestSignalLog *log, const char *path) {
        const char *removed, *result;
        g_variant_get(test_signal_log_wait(log, "JobRemoved", NULL), "(u&o&s)", NULL, &removed, &result);
        g_assert_cmpstr(removed, ==, path);
        return result;
}

/* ---- tests ---- */

static void test_put_queues(Fixture *f, gconstpointer user) {
        g_autoptr(TestSignalLog) log = NULL;

        start_daemon(f, false);
        log = test_signal_log_new(f->bus);
        g_assert_cmpuint(get_number(f, "QueuedCount"), ==, 0);

        g_assert_cmpint(http_request(f, "PUT", "/v2/cache/img-q", TOKEN, NULL), ==, 202);
        g_assert_nonnull(test_signal_log_wait(log, "ImageQueued", "img-q"));
        g_autoptr(GVariant) one = test_signal_log_wait_property(log, "QueuedCount", g_variant_new_uint32(1), NULL);
        g_assert_cmpuint(get_number(f, "QueuedCount"), ==, 1);

        /* The legacy route of Glance's cache_manage middleware is the same operation. */
        g_assert_cmpint(http_request(f, "PUT", "/v2/queued_images/img-r", TOKEN, NULL), ==, 200);
        g_assert_nonnull(test_signal_log_wait(log, "ImageQueued", "img-r"));
        g_autoptr(GVariant) two = test_signal_log_wait_property(log, "QueuedCount", g_variant_new_uint32(2), NULL);

        /* Refused without the token: nothing queued, nothing emitted. */
        g_assert_cmpint(http_request(f, "PUT", "/v2/cache/img-s", NULL, NULL), ==, 401);
        g_assert_cmpuint(get_number(f, "QueuedCount"), ==, 2);
        g_assert_cmpint(test_signal_log_find(log, "ImageQueued", "img-s"), <, 0);

        /* Dequeuing over HTTP is seen on the bus too. */
        g_assert_cmpint(http_request(f, "DELETE", "/v2/cache/img-q", TOKEN, NULL), ==, 204);
        g_autoptr(GVariant) back = test_signal_log_wait_property(log, "QueuedCount", g_variant_new_uint32(1), NULL);
        g_assert_cmpuint(get_number(f, "QueuedCount"), ==, 1);
}

static void test_put_prefetch_job(Fixture *f, gconstpointer user) {
        /* The upstream stalls after a few bytes until released: the fill is surely still running when the
         * test looks at it and cancels it. */
        UpstreamImageOptions o = { .stall_after = 4096 };
        g_autoptr(TestSignalLog) log = NULL;
        g_autoptr(GError) error = NULL;

        g_assert_cmpint(upstream_fixture_add_image(f->fx, "/images/slow", f->data, IMAGE_SIZE, &o), ==, 0);
        start_daemon(f, true);
        log = test_signal_log_new(f->bus);

        g_assert_cmpint(http_request(f, "PUT", "/v2/cache/slow", TOKEN, NULL), ==, 202);
        g_assert_nonnull(test_signal_log_wait(log, "ImageQueued", "slow"));
        g_autofree char *path = g_strdup(job_new_path(log));

        g_autoptr(GVariant) jobs = call_ok(f, "ListJobs", NULL);
        g_autoptr(GVariant) array = g_variant_get_child_value(jobs, 0);
        const char *image, *state, *listed;
        guint32 id;
        double progress;
        g_assert_cmpuint(g_variant_n_children(array), ==, 1);
        g_variant_get_child(array, 0, "(u&s&sd&o)", &id, &image, &state, &progress, &listed);
        g_assert_cmpstr(image, ==, "slow");
        g_assert_cmpstr(state, ==, "running");
        g_assert_cmpstr(listed, ==, path);

        g_autoptr(GVariant) r = call(f, path, "org.imgcache.Job", "Cancel", NULL, &error);
        g_assert_no_error(error);
        g_assert_cmpstr(job_removed_result(log, path), ==, "cancelled");
        g_autoptr(GVariant) after = call_ok(f, "ListJobs", NULL);
        g_autoptr(GVariant) none = g_variant_get_child_value(after, 0);
        g_assert_cmpuint(g_variant_n_children(none), ==, 0);
}

static void open_missing(Fixture *f, const char *id) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) v = call(f, TEST_BUS_PATH, TEST_BUS_IFACE, "OpenImage", g_variant_new("(s)", id), &error);
        g_assert_null(v);
        g_assert_nonnull(error);
}

static void test_misses_never_decrease(Fixture *f, gconstpointer user) {
        g_autoptr(TestSignalLog) log = NULL;
        g_autofree char *metrics = NULL;
        guint64 expected = 0;

        start_daemon(f, false);
        log = test_signal_log_new(f->bus);

        /* Two OpenImage misses, then two HTTP ones (ids unknown upstream, each new, so that the
         * not-found cache does not answer them), then one more of each. */
        const char *steps[] = { "open:a", "open:b", "http:c", "http:d", "open:e", "http:f" };
        for (size_t i = 0; i < G_N_ELEMENTS(steps); i++) {
                const char *id = steps[i] + 5;
                if (g_str_has_prefix(steps[i], "open:"))
                        open_missing(f, id);
                else {
                        g_autofree char *p = g_strdup_printf("/images/%s", id);
                        g_assert_cmpint(http_request(f, "GET", p, NULL, NULL), ==, 404);
                }
                expected++;
                g_assert_cmpuint(get_number(f, "Misses"), ==, expected);
        }

        /* Every value announced went up, and the last one is the total. */
        g_autoptr(GVariant) last = test_signal_log_wait_property(log, "Misses", g_variant_new_uint64(expected), NULL);
        g_autoptr(GPtrArray) values = test_signal_log_property_values(log, "Misses");
        g_assert_cmpuint(values->len, >=, 1);
        for (guint i = 1; i < values->len; i++)
                g_assert_cmpuint(g_variant_get_uint64(values->pdata[i]), >, g_variant_get_uint64(values->pdata[i - 1]));

        /* /metrics reports the same owner's number. */
        g_assert_cmpint(http_request(f, "GET", "/metrics", NULL, &metrics), ==, 200);
        g_autofree char *line = g_strdup_printf("\nimgcache_misses_total %" G_GUINT64_FORMAT "\n", expected);
        g_assert_nonnull(strstr(metrics, line));
}

static void test_dequeue_all_drops_checksums(Fixture *f, gconstpointer user) {
        g_autofree char *wrong = NULL, *body = NULL;
        g_autoptr(TestSignalLog) log = NULL;
        gboolean queued;

        g_assert_cmpint(upstream_fixture_add_image(f->fx, "/images/img-c", f->data, IMAGE_SIZE, NULL), ==, 0);
        start_daemon(f, false);
        log = test_signal_log_new(f->bus);

        /* Queued with a checksum the image does not have: a prefetch now would fail. */
        g_autofree char *other = g_compute_checksum_for_data(G_CHECKSUM_SHA256, f->data, IMAGE_SIZE - 1);
        wrong = g_strconcat("sha256:", other, NULL);
        g_autoptr(GVariant) r1 = call_ok(f, "QueueImage", g_variant_new("(ss)", "img-c", wrong));
        g_variant_get(r1, "(b)", &queued);
        g_assert_true(queued);

        /* Emptied over HTTP, queued again over D-Bus without a checksum. */
        g_assert_cmpint(http_request(f, "DELETE", "/v2/queued_images", TOKEN, &body), ==, 200);
        g_assert_nonnull(strstr(body, "\"num_deleted\":1"));
        g_assert_cmpuint(get_number(f, "QueuedCount"), ==, 0);
        g_autoptr(GVariant) r2 = call_ok(f, "QueueImage", g_variant_new("(ss)", "img-c", ""));
        g_variant_get(r2, "(b)", &queued);
        g_assert_true(queued);

        /* The prefetch expects nothing: the image is fetched and kept. */
        g_autoptr(GVariant) paths = call_ok(f, "Prefetch", NULL);
        g_autoptr(GVariant) array = g_variant_get_child_value(paths, 0);
        g_assert_cmpuint(g_variant_n_children(array), ==, 1);
        const char *path;
        g_variant_get_child(array, 0, "&o", &path);
        g_assert_cmpstr(job_removed_result(log, path), ==, "done");
        g_assert_nonnull(test_signal_log_wait(log, "ImageCached", "img-c"));
}

/* A pinned image is refused over HTTP as over D-Bus (the same operation): 409 with a body that names
 * nobody, the image and its queue state untouched; deleting everything keeps it. */
static void test_delete_pinned(Fixture *f, gconstpointer user) {
        g_autofree char *image = g_build_filename(test_bus_cache_dir(f->bus), "pinned", NULL);
        g_autofree char *body = NULL, *legacy_body = NULL;
        g_autoptr(GError) error = NULL;

        g_assert_true(g_file_set_contents(image, "pinned image", -1, &error));
        start_daemon(f, false);
        int fd = test_bus_call_fd(f->bus, NULL, "PinImage", g_variant_new("(ss)", "pinned", "secret reason"));

        g_assert_cmpint(http_request(f, "DELETE", "/v2/cache/pinned", TOKEN, &body), ==, 409);
        g_assert_null(strstr(body, "secret reason"));
        g_assert_cmpint(http_request(f, "DELETE", "/v2/cached_images/pinned", TOKEN, &legacy_body), ==, 409);
        g_assert_cmpint(http_request(f, "DELETE", "/v2/cache", TOKEN, NULL), ==, 204);
        g_assert_true(g_file_test(image, G_FILE_TEST_EXISTS));
        g_assert_cmpuint(get_number(f, "ImageCount"), ==, 1);

        /* Once the pin ends, the same request deletes it. */
        close(fd);
        g_assert_cmpint(http_request(f, "DELETE", "/v2/cache/pinned", TOKEN, NULL), ==, 204);
        g_assert_false(g_file_test(image, G_FILE_TEST_EXISTS));
}

/* The series of /metrics as name{labels} → value, parsed strictly: every line a HELP or TYPE comment or a
 * sample with a value, every sample under a TYPE given before it. */
static GHashTable *parse_metrics(const char *text) {
        g_autoptr(GHashTable) typed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        GHashTable *series = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        g_auto(GStrv) lines = g_strsplit(text, "\n", -1);

        for (char **l = lines; *l && **l; l++) {
                g_auto(GStrv) w = g_strsplit(*l, " ", 4);
                if (g_str_has_prefix(*l, "# TYPE ")) {
                        g_assert_cmpuint(g_strv_length(w), ==, 4);
                        g_hash_table_add(typed, g_strdup(w[2]));
                        continue;
                }
                if (g_str_has_prefix(*l, "# HELP "))
                        continue;
                g_assert_cmpuint(g_strv_length(w), ==, 2);
                g_autofree char *family = g_strndup(w[0], strcspn(w[0], "{"));
                const char *suffixes[] = { "", "_bucket", "_sum", "_count" };
                bool known = false;
                for (size_t i = 0; i < G_N_ELEMENTS(suffixes) && !known; i++)
                        if (g_str_has_suffix(family, suffixes[i])) {
                                g_autofree char *base = g_strndup(family, strlen(family) - strlen(suffixes[i]));
                                known = g_hash_table_contains(typed, base);
                        }
                g_assert_true(known);
                char *end;
                (void) g_ascii_strtod(w[1], &end);
                g_assert_true(*end == 0);
                g_hash_table_insert(series, g_strdup(w[0]), g_strdup(w[1]));
        }
        return series;
}

static guint64 series_value(GHashTable *series, const char *name) {
        const char *v = g_hash_table_lookup(series, name);
        if (!v)
                g_error("/metrics lacks %s", name);
        return g_ascii_strtoull(v, NULL, 10);
}

/* promtool's lint: exit 0, nothing to complain about. */
static void check_with_promtool(const char *text) {
        g_autoptr(GSubprocess) p = NULL;
        g_autoptr(GBytes) in = g_bytes_new(text, strlen(text)), out = NULL, err = NULL;
        g_autoptr(GError) error = NULL;

        p = g_subprocess_new(G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                     G_SUBPROCESS_FLAGS_STDERR_PIPE,
                             &error, "promtool", "check", "metrics", NULL);
        g_assert_no_error(error); /* promtool comes with tools/install-deps (Debian's prometheus) */
        g_assert_true(g_subprocess_communicate(p, in, NULL, &out, &err, &error));
        g_assert_no_error(error);
        if (!g_subprocess_get_if_exited(p) || g_subprocess_get_exit_status(p) != 0 || g_bytes_get_size(out) > 0 ||
            g_bytes_get_size(err) > 0)
                g_error("promtool check metrics: %.*s%.*s", (int) g_bytes_get_size(out),
                        (const char *) g_bytes_get_data(out, NULL), (int) g_bytes_get_size(err),
                        (const char *) g_bytes_get_data(err, NULL));
}

/* /metrics counts what was done, with the labels an operator filters on, and passes promtool's lint. */
static void test_metrics_labelled(Fixture *f, gconstpointer user) {
        g_autofree char *text = NULL;
        g_autoptr(GHashTable) series = NULL;

        g_assert_cmpint(upstream_fixture_add_image(f->fx, "/images/img-m", f->data, IMAGE_SIZE, NULL), ==, 0);
        start_daemon(f, false);

        /* A miss (kept by the time its last byte arrives), a hit, a 100-byte range of the hit: 2xx. */
        g_assert_cmpint(http_request(f, "GET", "/images/img-m", NULL, NULL), ==, 200);
        g_assert_cmpint(http_request(f, "GET", "/images/img-m", NULL, NULL), ==, 200);
        g_assert_cmpint(http_request(f, "GET", "/images/img-m", "Range: bytes=100-199", NULL), ==, 206);
        g_assert_cmpint(http_request(f, "PUT", "/v2/cache/img-q", TOKEN, NULL), ==, 202);
        /* An image the upstream does not have, and an id that is not one: 4xx. */
        g_assert_cmpint(http_request(f, "GET", "/images/nosuch", NULL, NULL), ==, 404);
        g_assert_cmpint(http_request(f, "GET", "/images/bad%0Aid", NULL, NULL), ==, 400);
        int fd = test_bus_call_fd(f->bus, NULL, "PinImage", g_variant_new("(ss)", "img-m", "metrics"));

        g_assert_cmpint(http_request(f, "GET", "/metrics", NULL, &text), ==, 200);
        check_with_promtool(text);
        series = parse_metrics(text);

        g_assert_cmpuint(series_value(series, "imgcache_http_responses_total{code=\"2xx\"}"), ==, 4);
        g_assert_cmpuint(series_value(series, "imgcache_http_responses_total{code=\"4xx\"}"), ==, 2);
        g_assert_cmpuint(series_value(series, "imgcache_http_responses_total{code=\"5xx\"}"), ==, 0);
        g_assert_cmpuint(series_value(series, "imgcache_served_bytes_total{source=\"upstream\"}"), ==, IMAGE_SIZE);
        g_assert_cmpuint(series_value(series, "imgcache_served_bytes_total{source=\"cache\"}"), ==, IMAGE_SIZE + 100);
        g_assert_cmpuint(series_value(series, "imgcache_served_bytes_total{source=\"peer\"}"), ==, 0);
        g_assert_cmpuint(series_value(series, "imgcache_upstream_errors_total{kind=\"not_found\"}"), ==, 1);
        g_assert_cmpuint(series_value(series, "imgcache_upstream_errors_total{kind=\"integrity\"}"), ==, 0);
        g_assert_cmpuint(series_value(series, "imgcache_fill_duration_seconds_count"), ==, 1);
        g_assert_cmpuint(series_value(series, "imgcache_fill_duration_seconds_bucket{le=\"+Inf\"}"), ==, 1);
        g_assert_cmpuint(series_value(series, "imgcache_queue_images"), ==, 1);
        g_assert_cmpuint(series_value(series, "imgcache_pins"), ==, 1);
        g_assert_cmpuint(series_value(series, "imgcache_cache_images"), ==, 1);
        g_assert_cmpuint(series_value(series, "imgcache_cache_max_size_bytes"), >, 0);
        g_assert_cmpuint(series_value(series, "imgcache_free_bytes"), >, 0);
        g_assert_cmpuint(series_value(series, "imgcache_transfers_active"), ==, 0);
        close(fd);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_assert_cmpint(curl_global_init(CURL_GLOBAL_DEFAULT), ==, CURLE_OK);

#define ADD(name, fn) g_test_add(name, Fixture, NULL, fixture_setup, fn, fixture_teardown)
        ADD("/http-manager/put-queues", test_put_queues);
        ADD("/http-manager/put-prefetch-job", test_put_prefetch_job);
        ADD("/http-manager/misses-never-decrease", test_misses_never_decrease);
        ADD("/http-manager/dequeue-all-drops-checksums", test_dequeue_all_drops_checksums);
        ADD("/http-manager/delete-pinned", test_delete_pinned);
        ADD("/http-manager/metrics-labelled", test_metrics_labelled);

        int r = g_test_run();
        curl_global_cleanup();
        return r;
}
