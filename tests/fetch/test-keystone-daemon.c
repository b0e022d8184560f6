/* SPDX-License-Identifier: MIT */

/* imgcached with [Upstream] Auth=keystone against the Keystone fixture and the Glance-mode upstream
 * fixture, which accepts only the fixture Keystone's current tokens: application credentials and the
 * image endpoint from the catalog, a user's password, a token refreshed while a fetch runs, a 401 that
 * gets a new token once, wrong credentials, and a credentials file others may read. The daemon runs on a
 * private session bus (tests/lib/test-bus.h); every wait is bounded and follows an event. */

#include <string.h>
#include <sys/stat.h>

#include <gio/gio.h>

#include "keystone-fixture.h"
#include "test-bus.h"
#include "test-util.h"
#include "upstream-fixture.h"

#define APP_CREDENTIALS "application_credential_id = " KEYSTONE_FIXTURE_APP_ID "\n" \
                        "application_credential_secret = " KEYSTONE_FIXTURE_APP_SECRET "\n"
#define USER_CREDENTIALS "username=" KEYSTONE_FIXTURE_USER "\npassword=" KEYSTONE_FIXTURE_PASSWORD "\n" \
                         "project_name=" KEYSTONE_FIXTURE_PROJECT "\n"

typedef struct Env {
        TestBus *bus;
        UpstreamFixture *fx;
        KeystoneFixture *ks;
        TestJobWatch *jobs;
        char *credentials;
} Env;

static uint8_t *make_data(size_t n, unsigned seed) {
        uint8_t *d = g_malloc(n);
        for (size_t i = 0; i < n; i++)
                d[i] = (uint8_t) (i * 13 + seed + (i >> 11));
        return d;
}

/* The fixtures and the config; the daemon is started by the test. with_url: URL= names the upstream,
 * else the catalog does. */
static void env_setup(Env *e, const char *credentials, mode_t mode, bool with_url) {
        *e = (Env) { .bus = test_bus_new() };
        g_assert_cmpint(upstream_fixture_new(0, &e->fx), ==, 0);
        g_assert_cmpint(keystone_fixture_new(&e->ks), ==, 0);
        upstream_fixture_set_token_validator(e->fx, keystone_fixture_token_valid, e->ks);
        g_autofree char *glance = upstream_fixture_url(e->fx, "");
        keystone_fixture_set_image_url(e->ks, glance);

        e->credentials = g_build_filename(test_bus_dir(e->bus), "keystone.conf", NULL);
        g_assert_true(g_file_set_contents(e->credentials, credentials, -1, NULL));
        g_assert_cmpint(chmod(e->credentials, mode), ==, 0);
        g_autofree char *auth = keystone_fixture_url(e->ks);
        g_autofree char *url_line = with_url ? g_strdup_printf("URL=%s\n", glance) : g_strdup("");
        g_autofree char *config = g_strdup_printf("[Cache]\nKeepFree=0\nMaxSize=1G\n[Upstream]\nKind=glance\n%s"
                                                  "Auth=keystone\nAuthURL=%s/v3\nCredentialsFile=%s\n"
                                                  "[Daemon]\nExitOnIdleSec=infinity\n",
                                                  url_line, auth, e->credentials);
        test_bus_write_config(e->bus, config);
}

static void env_start(Env *e) {
        g_assert_true(test_bus_start_daemon(e->bus, NULL));
        e->jobs = test_job_watch_new(e->bus);
}

static void env_teardown(Env *e) {
        if (e->jobs)
                test_job_watch_free(e->jobs);
        test_bus_free(e->bus);
        keystone_fixture_free(e->ks);
        upstream_fixture_free(e->fx);
        g_free(e->credentials);
}

static void add_image(Env *e, const char *id, size_t n, const UpstreamImageOptions *o) {
        g_autofree uint8_t *data = make_data(n, (unsigned) strlen(id));
        g_assert_cmpint(upstream_fixture_add_glance_image(e->fx, id, data, n, o, NULL), ==, 0);
}

static void assert_no_secret_in_log(Env *e) {
        const char *log = test_bus_daemon_stderr(e->bus);
        g_assert_null(strstr(log, KEYSTONE_FIXTURE_APP_SECRET));
        g_assert_null(strstr(log, KEYSTONE_FIXTURE_PASSWORD));
        g_assert_null(strstr(log, "ks-token-"));
}

static void test_application_credential_catalog(void) {
        Env e;
        env_setup(&e, APP_CREDENTIALS, 0600, /* with_url= */ false);
        add_image(&e, "img", 256 * 1024, NULL);
        env_start(&e);
        g_assert_cmpuint(keystone_fixture_token_requests(e.ks), ==, 0); /* no fill, no token */

        test_job_watch_assert_fetch(e.jobs, "img", "done", NULL);
        g_assert_cmpuint(keystone_fixture_tokens_issued(e.ks), ==, 1);
        g_assert_cmpuint(upstream_fixture_token_requests(e.fx, "ks-token-1"), ==, 2); /* record and data */
        g_assert_true(test_bus_wait_stderr(e.bus, "The image endpoint from Keystone's catalog is", TEST_BUS_TIMEOUT_MS));
        assert_no_secret_in_log(&e);
        env_teardown(&e);
}

/* A token of the Keystone fixture, as a client would get it (curl), for the image service's read check. */
static char *client_token(Env *e) {
        char *base = keystone_fixture_url(e->ks);
        g_autofree char *url = g_strdup_printf("%s/v3/auth/tokens", base);
        free(base);
        g_autofree char *out = NULL;
        g_autoptr(GError) error = NULL;
        const char *body = "{\"auth\":{\"identity\":{\"methods\":[\"application_credential\"],"
                           "\"application_credential\":{\"id\":\"" KEYSTONE_FIXTURE_APP_ID "\",\"secret\":\""
                           KEYSTONE_FIXTURE_APP_SECRET "\"}}}}";
        const char *argv[] = { "curl", "-sS", "-D", "-", "-o", "/dev/null", "-H", "Content-Type: application/json",
                               "--data", body, url, NULL };
        g_assert_true(g_spawn_sync(NULL, (char **) argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, NULL, NULL,
                                   &error));
        g_assert_no_error(error);
        const char *h = strcasestr(out, "X-Subject-Token: ");
        g_assert_nonnull(h);
        h += strlen("X-Subject-Token: ");
        return g_strndup(h, strcspn(h, "\r\n"));
}

/* URL= unset: the image endpoint comes from the catalog, with the daemon's first token. An HTTP read is
 * the first thing that needs the upstream: its read check (and a HEAD's probe) must get that token and
 * wait for it, not fail with 502 because no fill has asked Keystone yet. */
static void test_catalog_first_read(void) {
        Env e;
        env_setup(&e, APP_CREDENTIALS, 0600, /* with_url= */ false);
        add_image(&e, "img", 256 * 1024, NULL);
        add_image(&e, "other", 64 * 1024, NULL);
        uint16_t port = test_free_port();
        g_autofree char *listen = g_strdup_printf("--listen=127.0.0.1:%u", port);
        const char *args[] = { listen, NULL };
        g_assert_true(test_bus_start_daemon(e.bus, args));
        g_autofree char *token = client_token(&e);
        g_assert_cmpuint(keystone_fixture_tokens_issued(e.ks), ==, 1); /* the client's, not the daemon's */

        g_autofree char *header = g_strdup_printf("X-Auth-Token: %s", token);
        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/img", port);
        g_autofree char *out = g_build_filename(test_bus_dir(e.bus), "img.out", NULL);
        const char *get[] = { "curl", "-sS", "-o", out, "-w", "%{http_code}", "-H", header, url, NULL };
        g_autofree char *status = NULL;
        g_autoptr(GError) error = NULL;
        g_assert_true(g_spawn_sync(NULL, (char **) get, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &status, NULL, NULL,
                                   &error));
        g_assert_no_error(error);
        g_assert_cmpstr(status, ==, "200");
        gsize n = 0;
        g_autofree char *got = NULL;
        g_assert_true(g_file_get_contents(out, &got, &n, NULL));
        g_assert_cmpuint(n, ==, 256 * 1024);

        g_autofree char *other = g_strdup_printf("http://127.0.0.1:%u/images/other", port);
        const char *head[] = { "curl", "-sS", "-I", "-o", "/dev/null", "-w", "%{http_code}", "-H", header, other, NULL };
        g_autofree char *head_status = NULL;
        g_assert_true(g_spawn_sync(NULL, (char **) head, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &head_status, NULL,
                                   NULL, &error));
        g_assert_no_error(error);
        g_assert_cmpstr(head_status, ==, "200");
        g_assert_true(test_bus_wait_stderr(e.bus, "The image endpoint from Keystone's catalog is", TEST_BUS_TIMEOUT_MS));
        assert_no_secret_in_log(&e);
        env_teardown(&e);
}

/* The same, with Keystone gone: the read check ends at once with Keystone's failure, a 502 for the
 * client, and the journal names Keystone. */
static void test_catalog_keystone_down(void) {
        Env e;
        env_setup(&e, APP_CREDENTIALS, 0600, /* with_url= */ false);
        uint16_t port = test_free_port();
        g_autofree char *listen = g_strdup_printf("--listen=127.0.0.1:%u", port);
        const char *args[] = { listen, NULL };
        g_assert_true(test_bus_start_daemon(e.bus, args));
        keystone_fixture_free(e.ks);
        e.ks = NULL;

        g_autofree char *url = g_strdup_printf("http://127.0.0.1:%u/images/img", port);
        const char *get[] = { "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Auth-Token: anyone",
                              url, NULL };
        g_autofree char *status = NULL;
        g_autoptr(GError) error = NULL;
        g_assert_true(g_spawn_sync(NULL, (char **) get, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &status, NULL, NULL,
                                   &error));
        g_assert_no_error(error);
        g_assert_cmpstr(status, ==, "502");
        g_assert_true(test_bus_wait_stderr(e.bus, "Keystone", TEST_BUS_TIMEOUT_MS));
        env_teardown(&e);
}

static void test_user_password(void) {
        Env e;
        env_setup(&e, USER_CREDENTIALS, 0400, /* with_url= */ true);
        add_image(&e, "img", 64 * 1024, NULL);
        env_start(&e);
        test_job_watch_assert_fetch(e.jobs, "img", "done", NULL);
        g_assert_cmpuint(keystone_fixture_tokens_issued(e.ks), ==, 1);
        assert_no_secret_in_log(&e);
        env_teardown(&e);
}

static void test_wrong_credentials(void) {
        Env e;
        env_setup(&e, "application_credential_id=" KEYSTONE_FIXTURE_APP_ID "\napplication_credential_secret=wrong\n",
                  0600, /* with_url= */ true);
        add_image(&e, "img", 4096, NULL);
        env_start(&e);
        test_job_watch_assert_fetch(e.jobs, "img", "failed",
                                    (const char *const[]) { "Keystone", "HTTP 401", "CredentialsFile=", NULL });
        g_assert_cmpuint(keystone_fixture_token_requests(e.ks), ==, 1);
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/v2/images/img"), ==, 0);
        assert_no_secret_in_log(&e);
        env_teardown(&e);
}

/* AuthURL= names a path where no Keystone answers (the fixture's 404, as the real Keystone's for a deleted
 * application credential): the fill fails naming Keystone, the status, CredentialsFile= and AuthURL=. */
static void test_auth_url_not_keystone(void) {
        Env e;
        env_setup(&e, APP_CREDENTIALS, 0600, /* with_url= */ true);
        g_autofree char *base = keystone_fixture_url(e.ks);
        g_autofree char *glance = upstream_fixture_url(e.fx, "");
        g_autofree char *config = g_strdup_printf("[Upstream]\nKind=glance\nURL=%s\nAuth=keystone\n"
                                                  "AuthURL=%s/elsewhere/v3\nCredentialsFile=%s\n"
                                                  "[Daemon]\nExitOnIdleSec=infinity\n", glance, base, e.credentials);
        test_bus_write_config(e.bus, config);
        add_image(&e, "img", 4096, NULL);
        env_start(&e);
        test_job_watch_assert_fetch(e.jobs, "img", "failed",
                                    (const char *const[]) { "Keystone", "HTTP 404", "CredentialsFile=", "AuthURL=",
                                                            NULL });
        g_assert_cmpuint(upstream_fixture_requests(e.fx, "/v2/images/img"), ==, 0);
        assert_no_secret_in_log(&e);
        env_teardown(&e);
}

static void test_readable_credentials_refused(void) {
        Env e;
        env_setup(&e, APP_CREDENTIALS, 0644, /* with_url= */ true);
        g_assert_false(test_bus_start_daemon(e.bus, NULL));
        const char *log = test_bus_daemon_stderr(e.bus);
        if (!strstr(log, e.credentials) || !strstr(log, "0644"))
                g_error("the refusal does not name the file and its mode:\n%s", log);
        env_teardown(&e);
}

/* Keystone revoked the daemon's token: the upstream answers 401, the daemon gets a new token once and
 * the same request succeeds with it. */
static void test_401_gets_new_token(void) {
        Env e;
        env_setup(&e, APP_CREDENTIALS, 0600, /* with_url= */ true);
        add_image(&e, "one", 4096, NULL);
        add_image(&e, "two", 4096, NULL);
        env_start(&e);
        test_job_watch_assert_fetch(e.jobs, "one", "done", NULL);
        keystone_fixture_revoke_all(e.ks);
        test_job_watch_assert_fetch(e.jobs, "two", "done", NULL);
        g_assert_cmpuint(keystone_fixture_tokens_issued(e.ks), ==, 2);
        g_assert_cmpuint(upstream_fixture_token_requests(e.fx, "ks-token-2"), ==, 2);
        env_teardown(&e);
}

/* Tokens live 1.5 s; the image takes about 3 s (paced by the fixture): the daemon renews the token at
 * 90% of its life while the fetch runs, and the next fetch, after the first token expired, uses the new
 * one without a refusal. */
static void test_token_refreshed_during_fetch(void) {
        Env e;
        env_setup(&e, APP_CREDENTIALS, 0600, /* with_url= */ true);
        keystone_fixture_set_lifetime_ms(e.ks, 1500);
        UpstreamImageOptions slow = { .rate = 256 * 1024 };
        add_image(&e, "slow", 768 * 1024, &slow);
        add_image(&e, "after", 4096, NULL);
        env_start(&e);

        test_job_watch_assert_fetch(e.jobs, "slow", "done", NULL);
        g_assert_cmpuint(keystone_fixture_tokens_issued(e.ks), >=, 2); /* renewed while it ran */
        g_assert_false(keystone_fixture_token_valid("ks-token-1", e.ks)); /* the first one is over */
        unsigned issued = keystone_fixture_tokens_issued(e.ks);
        test_job_watch_assert_fetch(e.jobs, "after", "done", NULL);
        g_autofree char *token = g_strdup_printf("ks-token-%u", keystone_fixture_tokens_issued(e.ks));
        g_assert_cmpuint(upstream_fixture_token_requests(e.fx, token), >=, 2);
        g_assert_cmpuint(upstream_fixture_token_requests(e.fx, "ks-token-1"), ==, 2); /* slow's record and data */
        g_assert_cmpuint(keystone_fixture_tokens_issued(e.ks), >=, issued);
        env_teardown(&e);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/keystone-daemon/application-credential-catalog", test_application_credential_catalog);
        g_test_add_func("/keystone-daemon/catalog-first-read", test_catalog_first_read);
        g_test_add_func("/keystone-daemon/catalog-keystone-down", test_catalog_keystone_down);
        g_test_add_func("/keystone-daemon/user-password", test_user_password);
        g_test_add_func("/keystone-daemon/wrong-credentials", test_wrong_credentials);
        g_test_add_func("/keystone-daemon/auth-url-not-keystone", test_auth_url_not_keystone);
        g_test_add_func("/keystone-daemon/readable-credentials-refused", test_readable_credentials_refused);
        g_test_add_func("/keystone-daemon/401-gets-new-token", test_401_gets_new_token);
        g_test_add_func("/keystone-daemon/token-refreshed-during-fetch", test_token_refreshed_during_fetch);
        return g_test_run();
}
