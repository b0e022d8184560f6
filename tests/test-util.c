/* SPDX-License-Identifier: MIT */

/* The small helpers of src/shared/util.h that carry a rule of their own. */

#include <glib.h>

#include "util.h"

static void assert_redacted(const char *url, const char *want) {
        char *got = url_redact_userinfo(url);
        g_assert_nonnull(got);
        g_assert_cmpstr(got, ==, want);
        free(got);
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

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/util/url-redact-userinfo", test_url_redact_userinfo);
        return g_test_run();
}
