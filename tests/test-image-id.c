/* SPDX-License-Identifier: MIT */

#include <glib.h>
#include <string.h>

#include "image-id.h"
#include "util.h"

static void assert_valid(const char *id) {
        if (g_test_verbose())
                g_test_message("valid: \"%s\"", id);
        g_assert_null(image_id_invalid_reason(id));
        g_assert_true(image_id_is_valid(id));
}

static void assert_invalid(const char *id) {
        const char *reason;

        if (g_test_verbose())
                g_test_message("invalid: \"%s\"", strempty(id));
        reason = image_id_invalid_reason(id);
        g_assert_nonnull(reason);
        g_assert_cmpstr(reason, !=, "");
        g_assert_false(image_id_is_valid(id));
}

static char *repeat(char c, size_t n) {
        char *s = g_malloc(n + 1);

        memset(s, c, n);
        s[n] = 0;
        return s;
}

static void test_uuids(void) {
        /* What Glance hands out. */
        assert_valid("3ad6e8b4-6f86-4a1e-9c3b-2a0c2f8b9d11");
        assert_valid("00000000-0000-0000-0000-000000000000");
        assert_valid("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF");
        assert_valid("3ad6e8b46f864a1e9c3b2a0c2f8b9d11");
}

static void test_valid(void) {
        assert_valid("a");
        assert_valid("Z");
        assert_valid("0");
        assert_valid("-");
        assert_valid("_");
        assert_valid("ubuntu-24.04_server.qcow2");
        assert_valid("a.");
        assert_valid("a..b");
        assert_valid("x..");
        assert_valid("-rf");
        assert_valid("cache.db2");
        assert_valid("cache.dbx");
        assert_valid("cache.db-wal2");
        assert_valid("xcache.db");
        assert_valid("Cache.db");    /* reserved names are matched exactly, as the file system does */
        assert_valid("incomplete2");
        assert_valid("invalid-");
        assert_valid("queued");
        assert_valid("QUEUE");
        assert_valid("lock");        /* ".lock" is the daemon's, but ids cannot start with '.' anyway */
}

static void test_length(void) {
        g_autofree char *s127 = repeat('a', IMAGE_ID_MAX - 1);
        g_autofree char *s128 = repeat('b', IMAGE_ID_MAX);
        g_autofree char *s129 = repeat('c', IMAGE_ID_MAX + 1);
        g_autofree char *s4096 = repeat('d', 4096);
        g_autofree char *s128_bad_tail = repeat('e', IMAGE_ID_MAX);

        g_assert_cmpint(IMAGE_ID_MAX, ==, 128);

        assert_valid(s127);
        assert_valid(s128);
        assert_invalid(s129);
        assert_invalid(s4096);

        /* The length check does not hide a bad character at the very end, nor vice versa. */
        s128_bad_tail[IMAGE_ID_MAX - 1] = '/';
        assert_invalid(s128_bad_tail);
}

static void test_empty_and_null(void) {
        assert_invalid(NULL);
        assert_invalid("");
}

static void test_dots_and_paths(void) {
        assert_invalid(".");
        assert_invalid("..");
        assert_invalid("...");
        assert_invalid(".hidden");
        assert_invalid(".lock");
        assert_invalid("../x");
        assert_invalid("../../etc/passwd");
        assert_invalid("a/b");
        assert_invalid("a/");
        assert_invalid("/a");
        assert_invalid("/");
        assert_invalid("x/../y");
        assert_invalid("incomplete/abc");
        assert_invalid("a\\b");
}

static void test_bad_characters(void) {
        static const char *const bad[] = {
                " ",
                "a b",
                " a",
                "a ",
                "a\tb",
                "a\nb",
                "a\rb",
                "a:b",
                "a;b",
                "a*b",
                "a?b",
                "a%2fb",
                "a+b",
                "a=b",
                "a~",
                "~a",
                "a,b",
                "a\"b",
                "a'b",
                "a$b",
                "a\x01",
                "a\x7f",
                /* non-ASCII, in UTF-8 and as stray high bytes */
                "caf\xc3\xa9",
                "\xc3\xa9",
                "\xe2\x80\x8b",         /* zero-width space */
                "a\xef\xbc\x8f" "b",    /* fullwidth solidus */
                "\xff",
                "a\x80",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_invalid(bad[i]);
}

static void test_embedded_nul(void) {
        /* A C string ends at its first NUL; anything after it is invisible here. Callers that receive
         * counted strings (D-Bus, HTTP) must reject embedded NULs themselves. */
        static const char with_nul[] = "abc\0/../etc";

        assert_valid(with_nul);
        g_assert_cmpuint(strlen(with_nul), ==, 3);
}

static void test_reserved(void) {
        static const char *const reserved[] = {
                "cache.db",
                "cache.db-wal",
                "cache.db-shm",
                "cache.db-journal",
                "incomplete",
                "invalid",
                "queue",
        };

        for (size_t i = 0; i < ELEMENTSOF(reserved); i++)
                assert_invalid(reserved[i]);
}

static void test_reasons_differ(void) {
        g_autofree char *s129 = repeat('a', IMAGE_ID_MAX + 1);
        const char *empty, *dot, *length, *chars, *reserved;

        /* Each kind of problem is explained as such, so an operator sees what to fix. */
        empty = image_id_invalid_reason("");
        dot = image_id_invalid_reason(".x");
        length = image_id_invalid_reason(s129);
        chars = image_id_invalid_reason("a/b");
        reserved = image_id_invalid_reason("queue");

        g_assert_nonnull(empty);
        g_assert_nonnull(dot);
        g_assert_nonnull(length);
        g_assert_nonnull(chars);
        g_assert_nonnull(reserved);

        g_assert_cmpstr(empty, !=, dot);
        g_assert_cmpstr(dot, !=, length);
        g_assert_cmpstr(length, !=, chars);
        g_assert_cmpstr(chars, !=, reserved);
        g_assert_cmpstr(reserved, !=, empty);

        g_assert_cmpstr(image_id_invalid_reason(NULL), ==, empty);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/image-id/uuids", test_uuids);
        g_test_add_func("/image-id/valid", test_valid);
        g_test_add_func("/image-id/length", test_length);
        g_test_add_func("/image-id/empty-and-null", test_empty_and_null);
        g_test_add_func("/image-id/dots-and-paths", test_dots_and_paths);
        g_test_add_func("/image-id/bad-characters", test_bad_characters);
        g_test_add_func("/image-id/embedded-nul", test_embedded_nul);
        g_test_add_func("/image-id/reserved", test_reserved);
        g_test_add_func("/image-id/reasons-differ", test_reasons_differ);

        return g_test_run();
}
