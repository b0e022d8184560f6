/* SPDX-License-Identifier: MIT */

/* The small helpers of src/shared/util.h that carry a rule of their own. */

#include <errno.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <unistd.h>

#include "ttl-cache.h"
#include "util.h"

static void assert_redacted(const char *url, const char *want) {
        char *got = url_redact_userinfo(url);
        g_assert_nonnull(got);
        g_assert_cmpstr(got, ==, want);
        free(got);
}

static void test_buf_append(void) {
        char *buf = NULL;
        size_t len = 0;

        g_assert_cmpint(buf_append(&buf, &len, 8, "abc", 3), ==, 0);
        g_assert_cmpint(buf_append(&buf, &len, 8, "defgh", 5), ==, 0);
        g_assert_cmpstr(buf, ==, "abcdefgh");  /* exactly max, NUL-terminated */
        g_assert_cmpint(buf_append(&buf, &len, 8, "i", 1), ==, -EFBIG);
        g_assert_cmpuint(len, ==, 8);
        g_assert_cmpstr(buf, ==, "abcdefgh");  /* nothing appended */
        g_assert_cmpint(buf_append(&buf, &len, SIZE_MAX, "", 0), ==, 0);
        g_assert_cmpint(buf_append(&buf, &len, SIZE_MAX, "ij", 2), ==, 0);
        g_assert_cmpstr(buf, ==, "abcdefghij");
        free(buf);
}

static void test_url_redact_userinfo(void) {
        assert_redacted("http://user:secret@glance:9292/v2/images/x", "http://glance:9292/v2/images/x");
        assert_redacted("https://token@mirror/images/{id}", "https://mirror/images/{id}");
        /* A password may hold '@' (percent-encoding is the rule, but the last '@' ends the userinfo). */
        assert_redacted("http://u:p@ss@host/x", "http://host/x");
        /* An '@' after the authority belongs to the path or the query. */
        assert_redacted("http://host/images/a@b", "http://host/images/a@b");
        assert_redacted("http://host?who=a@b", "http://host?who=a@b");
        assert_redacted("http://host#a@b", "http://host#a@b");
        assert_redacted("http://[::1]:80/x", "http://[::1]:80/x");
        assert_redacted("file:///var/images/x", "file:///var/images/x");
        assert_redacted("not a url", "not a url");
        assert_redacted("", "");
        assert_redacted(NULL, "");
}

static void test_ttl_cache(void) {
        TtlCache *c = NULL;
        usec_t now = now_usec(CLOCK_MONOTONIC);
        int v = 0;

        g_assert_cmpint(ttl_cache_new(3, 0, &c), ==, 0);
        ttl_cache_put(c, "a", 1, (3600 * USEC_PER_SEC));
        ttl_cache_put(c, "b", 2, 1);              /* expires at once */
        g_assert_true(ttl_cache_get(c, "a", now, &v));
        g_assert_cmpint(v, ==, 1);
        g_assert_false(ttl_cache_get(c, "b", now + USEC_PER_SEC, &v));
        g_assert_false(ttl_cache_get(c, "nope", now, &v));
        /* An answer is believed until its own expiry, not a second longer. */
        g_assert_false(ttl_cache_get(c, "a", now + 2 * (3600 * USEC_PER_SEC), &v));

        /* Bounded: however many keys come, at most 3 are kept, and the newest is among them. */
        for (int i = 0; i < 100; i++) {
                char key[16];
                snprintf(key, sizeof(key), "k%d", i);
                ttl_cache_put(c, key, i, (3600 * USEC_PER_SEC));
                g_assert_cmpuint(ttl_cache_size(c), <=, 3);
                g_assert_true(ttl_cache_get(c, key, now_usec(CLOCK_MONOTONIC), &v));
                g_assert_cmpint(v, ==, i);
        }
        /* ttl 0 drops. */
        ttl_cache_put(c, "k99", 5, 0);
        g_assert_false(ttl_cache_get(c, "k99", now_usec(CLOCK_MONOTONIC), NULL));
        ttl_cache_free(c);
}

static void test_ttl_cache_owners(void) {
        TtlCache *c = NULL;
        usec_t hour = 3600 * USEC_PER_SEC;

        /* Room for 8, at most 2 each: one owner's flood replaces only its own entries. */
        g_assert_cmpint(ttl_cache_new(8, 2, &c), ==, 0);
        ttl_cache_put_owned(c, "alice-1", 1, hour, "alice");
        ttl_cache_put_owned(c, "bob-1", 1, hour, "bob");
        ttl_cache_put(c, "nobody", 1, hour);
        for (int i = 0; i < 1000; i++) {
                char key[16];
                snprintf(key, sizeof(key), "mallory-%d", i);
                ttl_cache_put_owned(c, key, 1, hour, "mallory");
                g_assert_cmpuint(ttl_cache_size(c), <=, 5);
        }
        g_assert_true(ttl_cache_get(c, "alice-1", now_usec(CLOCK_MONOTONIC), NULL));
        g_assert_true(ttl_cache_get(c, "bob-1", now_usec(CLOCK_MONOTONIC), NULL));
        g_assert_true(ttl_cache_get(c, "nobody", now_usec(CLOCK_MONOTONIC), NULL));
        g_assert_true(ttl_cache_get(c, "mallory-999", now_usec(CLOCK_MONOTONIC), NULL));
        g_assert_true(ttl_cache_get(c, "mallory-998", now_usec(CLOCK_MONOTONIC), NULL));
        g_assert_false(ttl_cache_get(c, "mallory-997", now_usec(CLOCK_MONOTONIC), NULL));
        /* Replacing a key keeps the count right; dropping gives the quota back. */
        ttl_cache_put_owned(c, "alice-1", 2, hour, "alice");
        ttl_cache_put_owned(c, "alice-2", 2, hour, "alice");
        ttl_cache_remove(c, "alice-1");
        ttl_cache_put_owned(c, "alice-3", 3, hour, "alice");
        g_assert_true(ttl_cache_get(c, "alice-2", now_usec(CLOCK_MONOTONIC), NULL));
        g_assert_true(ttl_cache_get(c, "alice-3", now_usec(CLOCK_MONOTONIC), NULL));
        ttl_cache_free(c);
}

static char *write_temp(const char *content) {
        char *path = g_build_filename(g_get_tmp_dir(), "imgcache-test-tokens-XXXXXX", NULL);
        int fd = g_mkstemp(path);
        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(write(fd, content, strlen(content)), ==, (ssize_t) strlen(content));
        close(fd);
        return path;
}

static void test_read_token_file(void) {
        g_autofree char *many = write_temp("# read tokens\n\n  alpha  \n\tbeta\n# gamma\ngamma\n");
        g_autofree char *one = write_temp("s3cret\n");
        g_autofree char *empty = write_temp("\n# nothing\n");
        g_autofree char *ctrl = write_temp("ab\001c\n");
        g_autofree char *huge = NULL;
        g_autofree char *big = g_strnfill(TOKEN_MAX + 1, 'x');
        char **t = NULL, *single = NULL;

        huge = write_temp(big);
        g_assert_cmpint(read_token_file(many, 16, &t), ==, 0);
        g_assert_cmpstr(t[0], ==, "alpha");
        g_assert_cmpstr(t[1], ==, "beta");
        g_assert_cmpstr(t[2], ==, "gamma");
        g_assert_null(t[3]);
        token_strv_free(t);
        g_assert_cmpint(read_token_file(many, 2, &t), ==, 0);   /* at most max */
        g_assert_null(t[2]);
        token_strv_free(t);

        g_assert_cmpint(read_token_file_first(one, &single), ==, 0);
        g_assert_cmpstr(single, ==, "s3cret");
        free(single);
        /* A file meant for one secret that holds several is refused, not read halfway. */
        g_assert_cmpint(read_token_file_first(many, &single), ==, -EBADMSG);
        g_assert_cmpint(read_token_file(empty, 16, &t), ==, -ENOMSG);
        g_assert_cmpint(read_token_file(ctrl, 16, &t), ==, -EBADMSG);
        g_assert_cmpint(read_token_file(huge, 16, &t), ==, -EFBIG);
        g_assert_cmpint(read_token_file("/nonexistent/tokens", 16, &t), ==, -ENOENT);

        const char *paths[] = { many, one, empty, ctrl, huge };
        for (size_t i = 0; i < G_N_ELEMENTS(paths); i++)
                (void) unlink(paths[i]);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/util/buf-append", test_buf_append);
        g_test_add_func("/util/url-redact-userinfo", test_url_redact_userinfo);
        g_test_add_func("/util/ttl-cache", test_ttl_cache);
        g_test_add_func("/util/ttl-cache-owners", test_ttl_cache_owners);
        g_test_add_func("/util/read-token-file", test_read_token_file);
        return g_test_run();
}
