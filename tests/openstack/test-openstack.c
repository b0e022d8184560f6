/* SPDX-License-Identifier: MIT */

/* imgcached with [Upstream] Kind=glance, Auth=keystone in front of the real Glance, which validates tokens
 * with the real Keystone: both started by with-openstack.sh, whose environment (IMGCACHE_OS_*, documented
 * there) names them, their users, the daemon's application credential and the images. The daemon runs on a
 * private session bus (tests/lib/test-bus.h) and listens on loopback; clients are curl with users' tokens
 * from Keystone, fresh for each test. /openstack/credentials/ needs Keystone's tokens to live 20 s
 * (with-openstack.sh --token-expiration=20). Every wait follows an event: an HTTP
 * answer, a D-Bus signal, a line of the daemon's log or Keystone's verdict on a token, bounded. */

#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include <gio/gio.h>
#include <jansson.h>

#include "test-bus.h"
#include "test-util.h"

#define CURL_MAX_TIME "30"

static const char *os_env(const char *name) {
        g_autofree char *var = g_strconcat("IMGCACHE_OS_", name, NULL);
        const char *v = g_getenv(var);
        if (!v)
                g_error("%s is not set: run this under tests/openstack/with-openstack.sh", var);
        return v;
}

/* curl with the arguments (NULL-terminated); its stdout (g_free). Fails the test when curl itself fails. */
static char *curl(const char *arg, ...) G_GNUC_NULL_TERMINATED;
static char *curl(const char *arg, ...) {
        g_autoptr(GStrvBuilder) b = g_strv_builder_new();
        g_strv_builder_add_many(b, "curl", "-sS", "--max-time", CURL_MAX_TIME, NULL);
        va_list ap;
        va_start(ap, arg);
        for (; arg; arg = va_arg(ap, const char *))
                g_strv_builder_add(b, arg);
        va_end(ap);
        g_auto(GStrv) argv = g_strv_builder_end(b);
        g_autofree char *err = NULL;
        g_autoptr(GError) error = NULL;
        char *out = NULL;
        int status = 0;
        g_assert_true(g_spawn_sync(NULL, argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err, &status, &error));
        g_assert_no_error(error);
        if (!g_spawn_check_wait_status(status, NULL))
                g_error("curl failed: %s", err);
        return out;
}

/* Keystone: a project-scoped token of a user (ALICE, BOB, SERVICE), by password; a new one each call. */
static char *user_token(const char *who) {
        g_autofree char *user = g_strconcat(who, "_USER", NULL), *password = g_strconcat(who, "_PASSWORD", NULL),
                        *project = g_strconcat(who, "_PROJECT", NULL);
        json_t *j = json_pack("{s:{s:{s:[s],s:{s:{s:s,s:{s:s},s:s}}},s:{s:{s:s,s:{s:s}}}}}", "auth",
                              "identity", "methods", "password", "password", "user", "name", os_env(user),
                              "domain", "name", "Default", "password", os_env(password),
                              "scope", "project", "name", os_env(project), "domain", "name", "Default");
        g_assert_nonnull(j);
        g_autofree char *body = json_dumps(j, 0);
        json_decref(j);
        g_autofree char *url = g_strconcat(os_env("AUTH_URL"), "/auth/tokens", NULL);
        g_autofree char *headers = curl("-D", "-", "-o", "/dev/null", "-H", "Content-Type: application/json",
                                        "--data", body, url, NULL);
        const char *h = strcasestr(headers, "X-Subject-Token: ");
        if (!h)
                g_error("Keystone gave %s no token:\n%s", who, headers);
        h += strlen("X-Subject-Token: ");
        return g_strndup(h, strcspn(h, "\r\n"));
}

/* Keystone's own verdict on a token (it may validate itself): HTTP 200 while it is valid. */
static gboolean token_valid(const char *token) {
        g_autofree char *url = g_strconcat(os_env("AUTH_URL"), "/auth/tokens", NULL);
        g_autofree char *auth = g_strconcat("X-Auth-Token: ", token, NULL);
        g_autofree char *subject = g_strconcat("X-Subject-Token: ", token, NULL);
        g_autofree char *status = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", auth, "-H", subject, url,
                                       NULL);
        return g_str_equal(status, "200");
}

typedef struct Daemon {
        TestBus *bus;
        TestJobWatch *jobs;
        uint16_t port;
} Daemon;

/* imgcached listening on a free loopback port. with_url: URL= names Glance, else Keystone's catalog does.
 * credentials: a CredentialsFile= (NULL: the run's application credential). */
static void daemon_start(Daemon *d, gboolean with_url, const char *credentials) {
        *d = (Daemon) { .bus = test_bus_new(), .port = test_free_port() };
        g_autofree char *url_line = with_url ? g_strdup_printf("URL=%s\n", os_env("GLANCE_URL")) : g_strdup("");
        g_autofree char *config = g_strdup_printf("[Cache]\nKeepFree=0\nMaxSize=1G\n"
                                                  "[Upstream]\nKind=glance\n%sAuth=keystone\nAuthURL=%s\n"
                                                  "CredentialsFile=%s\n[Daemon]\nExitOnIdleSec=infinity\n",
                                                  url_line, os_env("AUTH_URL"),
                                                  credentials ?: os_env("CREDENTIALS_FILE"));
        test_bus_write_config(d->bus, config);
        g_autofree char *listen = g_strdup_printf("--listen=127.0.0.1:%u", d->port);
        g_assert_true(test_bus_start_daemon(d->bus, (const char *const[]) { listen, NULL }));
        d->jobs = test_job_watch_new(d->bus);
}

static void daemon_stop(Daemon *d) {
        test_job_watch_free(d->jobs);
        test_bus_free(d->bus);
}

/* GET /images/ID with token (NULL: none); returns the status, the body in *ret_body (may be NULL). */
static char *daemon_get(Daemon *d, const char *id, const char *token, char **ret_body, size_t *ret_size) {
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/%s", d->port, id);
        g_autofree char *out = g_build_filename(test_bus_dir(d->bus), "body", NULL);
        /* "X-Auth-Token:" with nothing after the colon: curl sends no such header. */
        g_autofree char *header = g_strconcat("X-Auth-Token:", token ? " " : "", token, NULL);
        char *status = curl("-o", out, "-w", "%{http_code}", "-H", header, url, NULL);
        if (ret_body)
                *ret_body = test_read_file(out, ret_size);
        return status;
}

static void assert_status(Daemon *d, const char *id, const char *token, const char *want, const char *what) {
        g_autofree char *status = daemon_get(d, id, token, NULL, NULL);
        if (!g_str_equal(status, want))
                g_error("%s: HTTP %s, wanted %s; the daemon said:\n%s", what, status, want,
                        test_bus_daemon_stderr(d->bus));
}

/* A 200 whose body is the image exactly as it was uploaded to Glance. */
static void assert_reads(Daemon *d, const char *image, const char *token, const char *what) {
        g_autofree char *file_var = g_strconcat("IMAGE_", image, "_FILE", NULL);
        size_t want_size = 0, got_size = 0;
        g_autofree char *want = test_read_file(os_env(file_var), &want_size);
        g_autofree char *got = NULL;
        g_autofree char *id_var = g_strconcat("IMAGE_", image, NULL);
        g_autofree char *status = daemon_get(d, os_env(id_var), token, &got, &got_size);
        if (!g_str_equal(status, "200"))
                g_error("%s: HTTP %s; the daemon said:\n%s", what, status, test_bus_daemon_stderr(d->bus));
        g_assert_cmpmem(got, got_size, want, want_size);
}

/* Read authorization (ReadAccess=upstream, the default with Glance): every client's token is checked with
 * Glance for that image, hits and misses alike, while fills use the daemon's application credential (a
 * service user with admin, which Glance requires to read another project's private image). */
static void test_read_access(gconstpointer with_url) {
        Daemon d;
        daemon_start(&d, GPOINTER_TO_INT(with_url), NULL);
        const char *private = os_env("IMAGE_PRIVATE");
        g_autofree char *alice = user_token("ALICE"), *bob = user_token("BOB");

        /* Another project's private image: Glance answers bob 404 (not 403), before it is cached ... */
        assert_status(&d, private, bob, "404", "bob, alice's private image, not cached");
        assert_status(&d, private, NULL, "401", "no token, not cached");
        assert_reads(&d, "PRIVATE", alice, "alice, her private image");
        /* ... and after, with a new token of his, so the daemon asks Glance again rather than remembering
         * the first refusal (ReadAccessDenyCacheSec=). */
        g_autofree char *bob2 = user_token("BOB");
        assert_status(&d, private, bob2, "404", "bob, alice's private image, cached");
        assert_status(&d, private, NULL, "401", "no token, cached");
        assert_status(&d, private, "not-a-token", "401", "an invalid token, cached");
        assert_reads(&d, "PRIVATE", alice, "alice again, a hit");

        assert_reads(&d, "PUBLIC", bob, "bob, a public image");
        assert_reads(&d, "PUBLIC", alice, "alice, a public image");
        assert_status(&d, os_env("IMAGE_PUBLIC"), NULL, "401", "no token, a public image");

        /* Glance gives alice the record of her deactivated image (status "deactivated") and refuses its data
         * (403): the daemon refuses it too, serving nothing. */
        assert_status(&d, os_env("IMAGE_DEACTIVATED"), alice, "404", "alice, her deactivated image");

        if (!GPOINTER_TO_INT(with_url)) {
                g_autofree char *line = g_strdup_printf("The image endpoint from Keystone's catalog is %s",
                                                        os_env("GLANCE_URL"));
                g_assert_true(test_bus_wait_stderr(d.bus, line, TEST_BUS_TIMEOUT_MS));
        }
        g_assert_null(strstr(test_bus_daemon_stderr(d.bus), os_env("APP_CRED_SECRET")));
        daemon_stop(&d);
}

static void delete_image(Daemon *d, const char *id) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GVariant) r = g_dbus_connection_call_sync(
                        test_bus_connection(d->bus), TEST_BUS_NAME, TEST_BUS_PATH, TEST_BUS_IFACE, "DeleteImage",
                        g_variant_new("(s)", id), NULL, G_DBUS_CALL_FLAGS_NONE, TEST_BUS_TIMEOUT_MS, NULL, &error);
        g_assert_no_error(error);
}

static unsigned count(const char *haystack, const char *needle) {
        g_auto(GStrv) parts = g_strsplit(haystack, needle, -1);
        return g_strv_length(parts) - 1;
}

/* How many requests Glance refused with 401 so far (its access log, eventlet's format). */
static unsigned glance_401s(void) {
        g_autofree char *log = test_read_file(os_env("GLANCE_LOG"), NULL);
        return count(log, "HTTP/1.1\" 401 ");
}

#define TOKEN_LINE "Got a Keystone token from "

/* Tokens live 20 s. Daemon a fetches without a pause, so its token is always in use: the daemon must replace
 * Keystone's first token at 90% of its life, as its log says from the token's own issued_at and
 * expires_at, so that Glance never sees it expire (no 401 for any of its requests: a daemon that waited
 * for the refusal would get one), and fills go on working once that first token is over. Daemon b fetches
 * once, idles while its token expires, and fetches again: it asks Keystone for a new token rather than
 * sending the expired one. */
static void test_token_lifetime(void) {
        const char *image = os_env("IMAGE_PUBLIC");
        g_assert_cmpstr(os_env("TOKEN_EXPIRATION"), ==, "20");
        unsigned refusals = glance_401s();
        Daemon a, b;
        daemon_start(&a, /* with_url= */ FALSE, NULL);
        daemon_start(&b, /* with_url= */ TRUE, NULL);

        gint64 t0 = g_get_monotonic_time();
        test_job_watch_assert_fetch(a.jobs, image, "done", NULL);
        test_job_watch_assert_fetch(b.jobs, image, "done", NULL);
        g_assert_true(test_bus_wait_stderr(a.bus, "valid for 20s; refreshing it in 18s.", TEST_BUS_TIMEOUT_MS));
        /* Fernet tokens count whole seconds: this one expires no sooner than both daemons' first tokens. */
        g_autofree char *after = user_token("BOB");

        /* Until a's second token, then until its first is over; each fill with a's current token. */
        unsigned fills = 0;
        while (count(test_bus_daemon_stderr(a.bus), TOKEN_LINE) < 2) {
                g_assert_cmpint(g_get_monotonic_time() - t0, <, 60 * G_USEC_PER_SEC);
                delete_image(&a, image);
                test_job_watch_assert_fetch(a.jobs, image, "done", NULL);
                fills++;
        }
        gint64 renewed = g_get_monotonic_time() - t0;
        g_test_message("a's token renewed, seen %.1f s after its first fill began, after %u fills",
                       (double) renewed / G_USEC_PER_SEC, fills);
        g_assert_cmpint(renewed, >=, 18 * G_USEC_PER_SEC); /* not before its time */
        g_assert_cmpuint(glance_401s(), ==, refusals);

        while (token_valid(after)) {
                g_assert_cmpint(g_get_monotonic_time() - t0, <, 60 * G_USEC_PER_SEC);
                delete_image(&a, image);
                test_job_watch_assert_fetch(a.jobs, image, "done", NULL);
        }
        delete_image(&a, image);
        test_job_watch_assert_fetch(a.jobs, image, "done", NULL);
        g_assert_cmpuint(count(test_bus_daemon_stderr(a.bus), TOKEN_LINE), ==, 2);

        delete_image(&b, image);
        test_job_watch_assert_fetch(b.jobs, image, "done", NULL);
        g_assert_cmpuint(count(test_bus_daemon_stderr(b.bus), TOKEN_LINE), ==, 2);
        /* Neither daemon ever sent Glance a token that had expired. */
        g_assert_cmpuint(glance_401s(), ==, refusals);
        daemon_stop(&a);
        daemon_stop(&b);
}

/* A Keystone request as the service user: method, path under AuthURL, JSON body (or NULL); the answer. */
static json_t *keystone_as_service(const char *method, const char *path, const char *body) {
        g_autofree char *token = user_token("SERVICE");
        g_autofree char *url = g_strconcat(os_env("AUTH_URL"), path, NULL);
        g_autofree char *header = g_strconcat("X-Auth-Token: ", token, NULL);
        g_autofree char *out = body ? curl("-f", "-X", method, "-H", header, "-H", "Content-Type: application/json",
                                           "--data", body, url, NULL)
                                    : curl("-f", "-X", method, "-H", header, url, NULL);
        if (!*out)
                return NULL;
        json_error_t error;
        json_t *j = json_loads(out, 0, &error);
        if (!j)
                g_error("Keystone's answer to %s %s is not JSON (%s): %s", method, path, error.text, out);
        return j;
}

/* The daemon's application credential is deleted in Keystone while it runs: Keystone revokes its tokens,
 * Glance (which validates every token, token_cache_time = -1) refuses the next fill's, the daemon asks
 * Keystone for a new one, and Keystone answers 404 (it knows no such credential; a wrong secret would be
 * 401): the fill fails with an error that names Keystone, its status and CredentialsFile=, and no secret
 * reaches the log. */
static void test_credential_deleted(void) {
        g_autofree char *path = g_strdup_printf("/users/%s/application_credentials", os_env("SERVICE_USER_ID"));
        g_autofree char *name = g_strdup_printf("{\"application_credential\":{\"name\":\"deleted-%u\"}}",
                                                g_random_int());
        json_t *j = keystone_as_service("POST", path, name);
        json_t *cred = json_object_get(j, "application_credential");
        g_autofree char *id = g_strdup(json_string_value(json_object_get(cred, "id")));
        g_autofree char *secret = g_strdup(json_string_value(json_object_get(cred, "secret")));
        json_decref(j);
        g_assert_nonnull(id);
        g_assert_nonnull(secret);
        g_autofree char *dir = test_tmpdir_new();
        g_autofree char *text = g_strdup_printf("application_credential_id = %s\n"
                                                "application_credential_secret = %s\n", id, secret);
        test_write_file(dir, "credentials.conf", text, strlen(text));
        g_autofree char *file = g_build_filename(dir, "credentials.conf", NULL);
        g_assert_cmpint(chmod(file, 0600), ==, 0);

        Daemon d;
        daemon_start(&d, /* with_url= */ TRUE, file);
        test_job_watch_assert_fetch(d.jobs, os_env("IMAGE_PUBLIC"), "done", NULL);
        g_autofree char *one = g_strdup_printf("%s/%s", path, id);
        g_assert_null(keystone_as_service("DELETE", one, NULL));
        test_job_watch_assert_fetch(d.jobs, os_env("IMAGE_PRIVATE"), "failed",
                     (const char *const[]) { "Keystone", "HTTP 404", "CredentialsFile=", NULL });
        g_assert_null(strstr(test_bus_daemon_stderr(d.bus), secret));
        daemon_stop(&d);
        test_tmpdir_remove(dir);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_data_func("/openstack/read/catalog", GINT_TO_POINTER(FALSE), test_read_access);
        g_test_add_data_func("/openstack/read/url", GINT_TO_POINTER(TRUE), test_read_access);
        g_test_add_func("/openstack/credentials/token-lifetime", test_token_lifetime);
        g_test_add_func("/openstack/credentials/deleted", test_credential_deleted);
        return g_test_run();
}
