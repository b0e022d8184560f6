/* SPDX-License-Identifier: MIT */

/* The pure half of the Keystone client (src/daemon/keystone.c): the credentials file, the request body, the
 * token response and its catalog, the refresh time. */

#include <fcntl.h>
#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>

#include "keystone.h"

static void test_credentials_application(void) {
        KeystoneCredentials c = {};
        g_autofree char *error = NULL;
        g_assert_cmpint(keystone_credentials_parse("# an application credential\n\n"
                                                   "application_credential_id = abc123\n"
                                                   "application_credential_secret=s3cr3t \n", &c, &error), ==, 0);
        g_assert_cmpstr(c.application_credential_id, ==, "abc123");
        g_assert_cmpstr(c.application_credential_secret, ==, "s3cr3t");
        g_assert_null(c.username);

        char *body = NULL;
        g_assert_cmpint(keystone_auth_request_body(&c, &body), ==, 0);
        json_t *j = json_loads(body, 0, NULL);
        g_assert_nonnull(j);
        json_t *ac = json_object_get(json_object_get(json_object_get(j, "auth"), "identity"), "application_credential");
        g_assert_cmpstr(json_string_value(json_object_get(ac, "secret")), ==, "s3cr3t");
        g_assert_null(json_object_get(json_object_get(j, "auth"), "scope")); /* the credential has its own */
        json_decref(j);
        free(body);
        keystone_credentials_done(&c);
}

static void test_credentials_password(void) {
        KeystoneCredentials c = {};
        g_autofree char *error = NULL;
        g_assert_cmpint(keystone_credentials_parse("username=glance\npassword=pw\nproject_name=service\n"
                                                   "user_domain_name=Users\n", &c, &error), ==, 0);
        g_assert_cmpstr(c.project_domain_name, ==, "Default");
        char *body = NULL;
        g_assert_cmpint(keystone_auth_request_body(&c, &body), ==, 0);
        json_t *j = json_loads(body, 0, NULL);
        json_t *auth = json_object_get(j, "auth");
        json_t *user = json_object_get(json_object_get(json_object_get(auth, "identity"), "password"), "user");
        g_assert_cmpstr(json_string_value(json_object_get(user, "name")), ==, "glance");
        g_assert_cmpstr(json_string_value(json_object_get(json_object_get(user, "domain"), "name")), ==, "Users");
        json_t *project = json_object_get(json_object_get(auth, "scope"), "project");
        g_assert_cmpstr(json_string_value(json_object_get(project, "name")), ==, "service");
        json_decref(j);
        free(body);
        keystone_credentials_done(&c);
}

static void assert_credentials_refused(const char *text, const char *needle) {
        KeystoneCredentials c = {};
        g_autofree char *error = NULL;
        g_assert_cmpint(keystone_credentials_parse(text, &c, &error), ==, -EINVAL);
        g_assert_nonnull(error);
        if (!strstr(error, needle))
                g_error("'%s' does not say '%s'", error, needle);
        g_assert_null(c.application_credential_id);
}

static void test_credentials_refused(void) {
        assert_credentials_refused("application_credential_id=a\n", "application_credential_secret");
        assert_credentials_refused("username=u\npassword=p\n", "project_name");
        assert_credentials_refused("# nothing\n", "no credentials");
        assert_credentials_refused("application_credential_id=a\napplication_credential_secret=s\nusername=u\n", "both");
        assert_credentials_refused("\n\nbogus=1\n", "line 3: unknown key 'bogus'");
        assert_credentials_refused("password\n", "line 1: expected key = value");
        assert_credentials_refused("password=a\npassword=b\n", "line 2: password given twice");
}

static void test_credentials_mode(void) {
        g_autofree char *dir = g_dir_make_tmp("test-keystone-XXXXXX", NULL);
        g_autofree char *path = g_build_filename(dir, "creds", NULL);
        g_assert_true(g_file_set_contents(path, "application_credential_id=a\napplication_credential_secret=s\n", -1, NULL));
        KeystoneCredentials c = {};
        g_autofree char *error = NULL;

        g_assert_cmpint(chmod(path, 0644), ==, 0);
        g_assert_cmpint(keystone_credentials_load(path, &c, &error), ==, -EPERM);
        g_assert_nonnull(strstr(error, path));
        g_assert_nonnull(strstr(error, "0644"));
        g_assert_null(strstr(error, "=s")); /* never the secret */

        g_assert_cmpint(chmod(path, 0600), ==, 0);
        g_assert_cmpint(keystone_credentials_load(path, &c, NULL), ==, 0);
        g_assert_cmpstr(c.application_credential_id, ==, "a");
        keystone_credentials_done(&c);
        g_assert_null(c.application_credential_secret);
        unlink(path);
        rmdir(dir);
}

#define TOKEN_JSON(catalog) \
        "{\"token\":{\"issued_at\":\"2026-12-02T10:00:00.000000Z\",\"expires_at\":\"2026-12-02T11:00:00.000000Z\"," \
        "\"methods\":[\"application_credential\"]" catalog "}}"

static const char catalog_json[] = TOKEN_JSON(",\"catalog\":["
        "{\"type\":\"identity\",\"endpoints\":[{\"interface\":\"public\",\"region_id\":\"R1\",\"url\":\"http://ks/\"}]},"
        "{\"type\":\"image\",\"endpoints\":["
        "{\"interface\":\"internal\",\"region_id\":\"R1\",\"region\":\"R1\",\"url\":\"http://glance-int.r1:9292\"},"
        "{\"interface\":\"public\",\"region_id\":\"R1\",\"region\":\"R1\",\"url\":\"http://glance.r1:9292/\"},"
        "{\"interface\":\"public\",\"region_id\":\"R2\",\"region\":\"R2\",\"url\":\"http://glance.r2:9292\"}]}]");

static void assert_image_url(const char *interface, const char *region, const char *want) {
        KeystoneTokenInfo info = {};
        const char *why = NULL;
        g_assert_cmpint(keystone_token_parse(catalog_json, strlen(catalog_json), interface, region, &info, &why), ==, 0);
        g_assert_cmpuint(info.lifetime, ==, 3600 * USEC_PER_SEC);
        g_assert_cmpstr(info.image_url, ==, want);
        keystone_token_info_done(&info);
}

static void test_token_catalog(void) {
        assert_image_url("public", NULL, "http://glance.r1:9292"); /* the trailing slash dropped */
        assert_image_url("public", "R2", "http://glance.r2:9292");
        assert_image_url("internal", "R1", "http://glance-int.r1:9292");
        assert_image_url("admin", NULL, NULL);
        assert_image_url("public", "R3", NULL);
}

static void assert_token_refused(const char *json, const char *needle) {
        KeystoneTokenInfo info = {};
        const char *why = NULL;
        g_assert_cmpint(keystone_token_parse(json, strlen(json), "public", NULL, &info, &why), ==, -EBADMSG);
        g_assert_nonnull(why);
        g_assert_nonnull(strstr(why, needle));
}

static void test_token_refused(void) {
        assert_token_refused("not json", "no \"token\"");
        assert_token_refused("{\"token\":{}}", "expires_at");
        assert_token_refused("{\"token\":{\"expires_at\":\"yesterday\"}}", "expires_at");
        assert_token_refused(TOKEN_JSON(",\"catalog\":{}"), "catalog");
        assert_token_refused("{\"token\":{\"issued_at\":\"2026-12-02T11:00:00Z\",\"expires_at\":\"2026-12-02T10:00:00Z\"}}",
                             "expired");
}

static void test_time_and_refresh(void) {
        usec_t t = 0;
        g_assert_cmpint(keystone_parse_time("1970-01-01T00:00:01.5Z", &t), ==, 0);
        g_assert_cmpuint(t, ==, 1500000);
        g_assert_cmpint(keystone_parse_time("1970-01-01T00:01:00+00:00", &t), ==, 0);
        g_assert_cmpuint(t, ==, 60 * USEC_PER_SEC);
        g_assert_cmpint(keystone_parse_time("1970-01-01T00:01:00+02:00", &t), ==, -EINVAL);
        g_assert_cmpint(keystone_parse_time(NULL, &t), ==, -EINVAL);

        /* 90% of the lifetime, never sooner than a second. */
        g_assert_cmpuint(keystone_refresh_delay(10 * USEC_PER_SEC), ==, 9 * USEC_PER_SEC);
        g_assert_cmpuint(keystone_refresh_delay(3600 * USEC_PER_SEC), ==, 3240 * USEC_PER_SEC);
        g_assert_cmpuint(keystone_refresh_delay(24 * 3600 * USEC_PER_SEC), ==, 77760 * USEC_PER_SEC);
        g_assert_cmpuint(keystone_refresh_delay(USEC_PER_SEC / 2), ==, USEC_PER_SEC);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/keystone/credentials-application", test_credentials_application);
        g_test_add_func("/keystone/credentials-password", test_credentials_password);
        g_test_add_func("/keystone/credentials-refused", test_credentials_refused);
        g_test_add_func("/keystone/credentials-mode", test_credentials_mode);
        g_test_add_func("/keystone/token-catalog", test_token_catalog);
        g_test_add_func("/keystone/token-refused", test_token_refused);
        g_test_add_func("/keystone/time-and-refresh", test_time_and_refresh);
        return g_test_run();
}
