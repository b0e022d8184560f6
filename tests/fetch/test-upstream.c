/* SPDX-License-Identifier: MIT */

#include <glib.h>
#include <string.h>

#include "upstream.h"
#include "util.h"

static void check_url(UpstreamKind kind, const char *tmpl, const char *id, const char *expected) {
        char *url = NULL;
        g_assert_cmpint(upstream_image_url(kind, tmpl, id, &url), ==, 0);
        g_assert_cmpstr(url, ==, expected);
        free(url);
}

static void test_image_url(void) {
        check_url(UPSTREAM_GENERIC, "https://mirror/images/{id}.raw", "abc", "https://mirror/images/abc.raw");
        check_url(UPSTREAM_GENERIC, "http://h/{id}/{id}", "x-1", "http://h/x-1/x-1");
        check_url(UPSTREAM_GENERIC, "http://h/base", "a.b", "http://h/base/a.b");
        check_url(UPSTREAM_GENERIC, "http://h/base/", "a", "http://h/base/a");
        check_url(UPSTREAM_GLANCE, "http://glance:9292", "u", "http://glance:9292/v2/images/u/file");
        check_url(UPSTREAM_GLANCE, "http://glance:9292//", "u", "http://glance:9292/v2/images/u/file");

        char *url = NULL;
        g_assert_cmpint(upstream_record_url("http://glance:9292/", "u", &url), ==, 0);
        g_assert_cmpstr(url, ==, "http://glance:9292/v2/images/u");
        free(url);
        g_assert_cmpint(upstream_image_url(UPSTREAM_GENERIC, "", "a", &url), ==, -EINVAL);
        g_assert_cmpint(upstream_image_url(UPSTREAM_GENERIC, NULL, "a", &url), ==, -EINVAL);
}

static const char sha512_hex[] =
        "3b38563092f4ee3175a256a3c3e3923c33c48b0336eb45eb420371d5d5acea5c4d2ed6712d48945d21075f65bd7662c51ae7df75198abf740f86bfbdaf9c2388";

static void test_record_parse(void) {
        UpstreamRecord rec;
        const char *why = NULL;
        char *json = g_strdup_printf("{\"id\":\"x\",\"status\":\"active\",\"size\":1000000,"
                                     "\"checksum\":\"f7c8efbcd7cc4e76366ced43398c3e88\","
                                     "\"os_hash_algo\":\"sha512\",\"os_hash_value\":\"%s\"}", sha512_hex);
        g_assert_cmpint(upstream_record_parse(json, strlen(json), &rec, &why), ==, 0);
        g_assert_cmpstr(rec.status, ==, "active");
        g_assert_true(rec.has_size);
        g_assert_cmpuint(rec.size, ==, 1000000);
        g_assert_true(rec.has_checksum);
        g_assert_cmpint(rec.checksum.algo, ==, CHECKSUM_SHA512); /* the multihash beats md5 */
        char *s = checksum_to_string(&rec.checksum);
        g_assert_cmpstr(s + strlen("sha512:"), ==, sha512_hex);
        free(s);
        upstream_record_done(&rec);
        g_free(json);

        /* Older records: md5 only, size null. */
        const char *old = "{\"status\":\"queued\",\"size\":null,\"checksum\":\"f7c8efbcd7cc4e76366ced43398c3e88\","
                          "\"os_hash_algo\":null,\"os_hash_value\":null}";
        g_assert_cmpint(upstream_record_parse(old, strlen(old), &rec, &why), ==, 0);
        g_assert_cmpstr(rec.status, ==, "queued");
        g_assert_false(rec.has_size);
        g_assert_true(rec.has_checksum);
        g_assert_cmpint(rec.checksum.algo, ==, CHECKSUM_MD5);
        upstream_record_done(&rec);

        /* No digest at all. */
        const char *bare = "{\"status\":\"active\"}";
        g_assert_cmpint(upstream_record_parse(bare, strlen(bare), &rec, &why), ==, 0);
        g_assert_false(rec.has_checksum);
        g_assert_false(rec.has_size);
        upstream_record_done(&rec);

        /* Garbage of every kind is refused with a reason. */
        static const char *const bad[] = {
                "", "[]", "{\"status\":1}", "{}", "{\"status\":\"active\",\"size\":-1}",
                "{\"status\":\"active\",\"size\":\"big\"}", "{\"status\":\"active\",\"checksum\":\"zz\"}",
                "{\"status\":\"active\",\"os_hash_algo\":\"sha512\",\"os_hash_value\":\"abcd\"}",
                "{\"status\":\"active\",\"status\":\"killed\"}", "{\"status\":\"active\"",
        };
        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                why = NULL;
                g_assert_cmpint(upstream_record_parse(bad[i], strlen(bad[i]), &rec, &why), ==, -EBADMSG);
                g_assert_nonnull(why);
        }
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/upstream/image-url", test_image_url);
        g_test_add_func("/upstream/record-parse", test_record_parse);
        return g_test_run();
}
