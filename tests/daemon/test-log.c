/* SPDX-License-Identifier: MIT */
/* log.[ch] and bus-error.[ch]: the logging contract (return value, errno for %m, the stderr format,
 * levels) and the org.imgcache.Error.* names with their errno mapping. */

#include <errno.h>
#include <glib.h>
#include <stdlib.h>

#include "bus-error.h"
#include "image-id.h"
#include "log.h"

static void test_errno_variants(void) {
        if (g_test_subprocess()) {
                log_setup("test-log");
                log_set_journal(false);
                errno = 0;
                int r = log_error_errno(EACCES, "opening %s: %m", "/x");
                g_assert_cmpint(r, ==, -EACCES);
                g_assert_cmpint(errno, ==, EACCES);
                r = log_warning_errno(-ENOENT, "negative works too: %m");
                g_assert_cmpint(r, ==, -ENOENT);
                log_info("plain %d", 42);
                log_debug("not shown at the default level");
                log_image(LOG_NOTICE, IMGCACHE_MESSAGE_IMAGE_CACHED, "img-1", "Cached %s", "img-1");
                return;
        }
        g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
        g_test_trap_assert_passed();
        g_test_trap_assert_stderr("test-log: opening /x: Permission denied\n"
                                  "test-log: negative works too: No such file or directory\n"
                                  "test-log: plain 42\n"
                                  "test-log: Cached img-1\n");
}

static void test_level_from_environment(void) {
        if (g_test_subprocess()) {
                g_setenv("IMGCACHE_LOG_LEVEL", "debug", TRUE);
                log_setup("test-log");
                log_set_journal(false);
                log_debug("now shown");
                g_assert_cmpint(log_get_max_level(), ==, LOG_DEBUG);
                g_setenv("IMGCACHE_LOG_LEVEL", "err", TRUE);
                log_setup("test-log");
                log_warning("hidden");
                log_error("shown");
                return;
        }
        g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
        g_test_trap_assert_passed();
        g_test_trap_assert_stderr("test-log: now shown\ntest-log: shown\n");
}

static void test_journal_detection(void) {
        if (g_test_subprocess()) {
                /* A JOURNAL_STREAM naming another file is not the journal: stderr stays plain. */
                g_setenv("JOURNAL_STREAM", "1:1", TRUE);
                log_setup("test-log");
                log_info("still on stderr");
                return;
        }
        g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
        g_test_trap_assert_passed();
        g_test_trap_assert_stderr("test-log: still on stderr\n");
}

static void test_error_map(void) {
        const struct {
                const char *name;
                int error;
        } map[] = {
                { IMGCACHE_ERROR_NO_SUCH_IMAGE, ENOENT },
                { IMGCACHE_ERROR_INVALID_IMAGE_ID, EINVAL },
                { IMGCACHE_ERROR_NO_SUCH_JOB, ENXIO },
                { IMGCACHE_ERROR_NO_UPSTREAM, EHOSTUNREACH },
                { IMGCACHE_ERROR_UPSTREAM_FAILED, EREMOTEIO },
                { IMGCACHE_ERROR_CHECKSUM_MISMATCH, EBADMSG },
                { IMGCACHE_ERROR_TOO_MANY_OPEN_FILES, EMFILE },
        };

        g_assert_cmpint(imgcache_bus_error_register(), ==, 0);
        g_assert_cmpint(imgcache_bus_error_register(), ==, 0); /* idempotent */
        for (size_t i = 0; i < G_N_ELEMENTS(map); i++) {
                sd_bus_error e = SD_BUS_ERROR_NULL;
                int r = sd_bus_error_set(&e, map[i].name, "message");
                g_assert_cmpint(r, ==, -map[i].error);
                g_assert_cmpint(sd_bus_error_get_errno(&e), ==, map[i].error);
                sd_bus_error_free(&e);
        }
}

static void test_invalid_image_id(void) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        g_autofree char *long_id = g_strnfill(200, 'x');

        g_assert_cmpint(bus_error_check_image_id(&e, "good-id"), ==, 0);
        g_assert_false(sd_bus_error_is_set(&e));

        g_assert_cmpint(bus_error_check_image_id(&e, "../x"), ==, -EINVAL);
        g_assert_cmpstr(e.name, ==, IMGCACHE_ERROR_INVALID_IMAGE_ID);
        g_assert_cmpstr(e.message, ==, "Invalid image id '../x': an image id must not start with '.'");
        sd_bus_error_free(&e);

        /* Control characters are escaped and long ids shortened in the message. */
        g_assert_cmpint(bus_error_check_image_id(&e, "a\nb"), ==, -EINVAL);
        g_assert_nonnull(strstr(e.message, "'a\\x0ab'"));
        sd_bus_error_free(&e);
        g_assert_cmpint(bus_error_check_image_id(&e, long_id), ==, -EINVAL);
        g_assert_nonnull(strstr(e.message, "...'"));
        g_assert_nonnull(strstr(e.message, "at most 128"));
        g_assert_cmpuint(strlen(e.message), <, 200);
        sd_bus_error_free(&e);

        g_assert_cmpint(bus_error_check_image_id(&e, ""), ==, -EINVAL);
        g_assert_nonnull(strstr(e.message, "must not be empty"));
        sd_bus_error_free(&e);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/log/errno-variants", test_errno_variants);
        g_test_add_func("/log/level-from-environment", test_level_from_environment);
        g_test_add_func("/log/journal-detection", test_journal_detection);
        g_test_add_func("/bus-error/map", test_error_map);
        g_test_add_func("/bus-error/invalid-image-id", test_invalid_image_id);
        return g_test_run();
}
