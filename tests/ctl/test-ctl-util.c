/* SPDX-License-Identifier: MIT */

/* Unit tests of imgcachectl's bus-free helpers: the table formatter, time/checksum/progress formatting,
 * the [y/N] prompt and the one-line message for failed and refused calls. */

#include <locale.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>

#include "bus-error.h"
#include "ctl-util.h"
#include "table.h"

static char *print_table(Table *t, gboolean header) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);

        g_assert_nonnull(f);
        g_assert_cmpint(table_print(t, f, header), ==, 0);
        g_assert_cmpint(fclose(f), ==, 0);
        return buf;
}

static void test_table(void) {
        _cleanup_(table_freep) Table *t = NULL;
        g_autofree char *with = NULL, *without = NULL;

        g_assert_cmpint(table_new(&t, "ID", "SIZE", "CHECKSUM", NULL), ==, 0);
        g_assert_cmpint(table_set_align(t, 1, TABLE_ALIGN_RIGHT), ==, 0);
        g_assert_cmpint(table_set_align(t, 3, TABLE_ALIGN_RIGHT), ==, -EINVAL);
        g_assert_cmpuint(table_get_columns(t), ==, 3);
        g_assert_cmpuint(table_get_rows(t), ==, 0);

        g_assert_cmpint(table_add_cell(t, "cirros"), ==, 0);
        g_assert_cmpint(table_add_cell(t, "12M"), ==, 0);
        g_assert_cmpint(table_add_cell(t, "sha256:3a7bd3e2360a…"), ==, 0);
        g_assert_cmpint(table_add_cell(t, "a-much-longer-image-id"), ==, 0);
        g_assert_cmpint(table_add_cellf(t, "%.1fG", 1.5), ==, 0);
        g_assert_cmpint(table_add_cell(t, NULL), ==, 0);
        g_assert_cmpuint(table_get_rows(t), ==, 2);
        g_assert_cmpstr(table_get_cell(t, 1, 1), ==, "1.5G");
        g_assert_cmpstr(table_get_cell(t, 1, 2), ==, "-");
        g_assert_null(table_get_cell(t, 2, 0));

        /* Columns sized by characters (the ellipsis is one), two spaces apart, right-aligned SIZE, the
         * last column unpadded. */
        with = print_table(t, TRUE);
        g_assert_cmpstr(with, ==,
                        "ID                      SIZE  CHECKSUM\n"
                        "cirros                   12M  sha256:3a7bd3e2360a…\n"
                        "a-much-longer-image-id  1.5G  -\n");

        without = print_table(t, FALSE);
        g_assert_cmpstr(without, ==,
                        "cirros                   12M  sha256:3a7bd3e2360a…\n"
                        "a-much-longer-image-id  1.5G  -\n");

        g_assert_cmpuint(utf8_width("a…b"), ==, 3);
        g_assert_cmpstr(ellipsis(), ==, "…");
}

static void test_table_incomplete_row(void) {
        _cleanup_(table_freep) Table *t = NULL;
        g_autofree char *s = NULL;

        g_assert_cmpint(table_new(&t, "A", "B", NULL), ==, 0);
        g_assert_cmpint(table_add_cell(t, "x"), ==, 0);
        g_assert_cmpuint(table_get_rows(t), ==, 1);
        s = print_table(t, TRUE);
        g_assert_cmpstr(s, ==, "A  B\nx  -\n");
}

#define SEC ((usec_t) 1000000)

static void test_relative(void) {
        char buf[FORMAT_RELATIVE_MAX];
        usec_t now = 1800000000 * SEC;

        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, 0, now), ==, "never");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now, now), ==, "just now");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now - SEC / 2, now), ==, "just now");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now - 42 * SEC, now), ==, "42s ago");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now - 5 * 60 * SEC, now), ==, "5min ago");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now - 3 * 3600 * SEC - 59 * 60 * SEC, now),
                        ==, "3h ago");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now - 2 * 86400 * SEC, now), ==, "2d ago");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now - 15 * 86400 * SEC, now), ==, "2w ago");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now - 33 * 86400 * SEC, now), ==, "4w ago");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now - 90 * 86400 * SEC, now), ==, "2mo ago");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now - 800 * 86400 * SEC, now), ==, "2y ago");
        g_assert_cmpstr(format_timestamp_relative(buf, sizeof buf, now + 300 * SEC, now), ==, "in 5min");
}

static void test_checksum_and_percent(void) {
        char buf[SHORT_CHECKSUM_MAX], p[FORMAT_PERCENT_MAX];

        g_assert_cmpstr(shorten_checksum(buf, sizeof buf, ""), ==, "-");
        g_assert_cmpstr(shorten_checksum(buf, sizeof buf, NULL), ==, "-");
        g_assert_cmpstr(shorten_checksum(buf, sizeof buf,
                                         "sha256:3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b"),
                        ==, "sha256:3a7bd3e2360a…");
        g_assert_cmpstr(shorten_checksum(buf, sizeof buf, "d41d8cd98f00b204e9800998ecf8427e"), ==,
                        "d41d8cd98f00…");
        g_assert_cmpstr(shorten_checksum(buf, sizeof buf, "md5:abc"), ==, "md5:abc");

        g_assert_cmpstr(format_percent(p, sizeof p, 412, 500), ==, "82.4%");
        g_assert_cmpstr(format_percent(p, sizeof p, 0, 0), ==, "-");
        g_assert_cmpstr(format_percent(p, sizeof p, 1, UINT64_MAX), ==, "-");
}

static void test_job_path(void) {
        uint32_t id = 0;

        g_assert_cmpint(job_id_from_path("/org/imgcache/job/17", &id), ==, 0);
        g_assert_cmpuint(id, ==, 17);
        g_assert_cmpint(job_id_from_path("/org/imgcache/job/_312", &id), ==, 0);
        g_assert_cmpuint(id, ==, 12);
        g_assert_cmpint(job_id_from_path("/org/imgcache/job/", &id), ==, -EINVAL);
        g_assert_cmpint(job_id_from_path("/org/imgcache/job/1x", &id), ==, -EINVAL);
        g_assert_cmpint(job_id_from_path("/org/imgcache/Manager", &id), ==, -EINVAL);
        g_assert_cmpint(job_id_from_path("/org/imgcache/job/99999999999", &id), ==, -EINVAL);
        g_assert_cmpint(job_id_from_path(NULL, &id), ==, -EINVAL);
}

static void test_progress(void) {
        char buf[256];
        const uint64_t G = 1024ULL * 1024 * 1024, M = 1024ULL * 1024;

        /* With a total and a rate: bar, percent, sizes, rate and ETA, and exactly the given width. */
        format_progress_line(buf, sizeof buf, "cirros", G / 2, G, 10.0 * M, 79);
        g_assert_nonnull(strstr(buf, "cirros ["));
        g_assert_nonnull(strstr(buf, " 50%"));
        g_assert_nonnull(strstr(buf, "/s"));
        g_assert_nonnull(strstr(buf, "ETA "));
        g_assert_cmpuint(utf8_width(buf), ==, 79);

        /* Too narrow for a bar: the numbers stay. */
        format_progress_line(buf, sizeof buf, "cirros", G / 2, G, 10.0 * M, 30);
        g_assert_null(strchr(buf, '['));
        g_assert_nonnull(strstr(buf, " 50%"));

        /* Unknown total: no bar, no percent, no ETA. */
        format_progress_line(buf, sizeof buf, "cirros", 5 * M, 0, -1, 80);
        g_assert_null(strchr(buf, '['));
        g_assert_null(strchr(buf, '%'));
        g_assert_null(strstr(buf, "ETA"));

        /* A long id is cut. */
        format_progress_line(buf, sizeof buf,
                             "an-image-id-that-is-much-longer-than-forty-characters-in-total", 0, G, -1, 100);
        g_assert_nonnull(strstr(buf, "…"));
        g_assert_null(strstr(buf, "in-total"));
}

static gboolean ask(const char *input, int *ret_r, char **ret_out) {
        char *out = NULL;
        size_t size = 0;
        FILE *in = fmemopen((void *) input, strlen(input), "r");
        FILE *o = open_memstream(&out, &size);
        bool yes = true;

        /* fmemopen() of an empty buffer is fine with glibc (reads EOF). */
        g_assert_nonnull(in);
        g_assert_nonnull(o);
        *ret_r = ask_yes_no(in, o, &yes, "Delete cached image %s?", "cirros");
        fclose(in);
        fclose(o);
        *ret_out = out;
        return yes;
}

static void test_ask(void) {
        static const struct {
                const char *input;
                gboolean yes;
        } cases[] = {
                { "y\n", TRUE }, { "Y\n", TRUE }, { "yes\n", TRUE }, { "YES\r\n", TRUE }, { "y", TRUE },
                { "n\n", FALSE }, { "\n", FALSE }, { "no\n", FALSE }, { "yess\n", FALSE }, { "", FALSE },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autofree char *out = NULL;
                int r;
                gboolean yes = ask(cases[i].input, &r, &out);

                g_assert_cmpint(r, ==, 0);
                g_assert_cmpint(yes, ==, cases[i].yes);
                g_assert_true(g_str_has_prefix(out, "Delete cached image cirros? [y/N] "));
        }
}

static void test_polkit_actions(void) {
        g_assert_cmpstr(polkit_action_for_method("DeleteImage"), ==, "org.imgcache.delete");
        g_assert_cmpstr(polkit_action_for_method("DeleteImageWithFlags"), ==, "org.imgcache.delete");
        g_assert_cmpstr(polkit_action_for_method("DeleteAllImages"), ==, "org.imgcache.delete");
        g_assert_cmpstr(polkit_action_for_method("QueueImage"), ==, "org.imgcache.queue");
        g_assert_cmpstr(polkit_action_for_method("Cancel"), ==, "org.imgcache.queue");
        g_assert_cmpstr(polkit_action_for_method("Prune"), ==, "org.imgcache.maintain");
        g_assert_cmpstr(polkit_action_for_method("Verify"), ==, "org.imgcache.maintain");
        g_assert_null(polkit_action_for_method("ListImages"));
        g_assert_null(polkit_action_for_method(NULL));
}

static char *call_error(const char *name, const char *message, int r, const char *member, bool ask_password,
                        bool user_bus) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        char *line = NULL;

        if (name)
                g_assert_cmpint(sd_bus_error_set(&e, name, message), <, 0);
        g_assert_cmpint(format_call_error("delete image 6ee6", &e, r, member, ask_password, user_bus, &line),
                        ==, 0);
        sd_bus_error_free(&e);
        g_assert_nonnull(line);
        g_assert_null(strchr(line, '\n')); /* one line */
        return line;
}

static void test_call_error(void) {
        g_autofree char *plain = NULL, *errno_only = NULL, *denied = NULL, *interactive = NULL,
                *interactive_agent = NULL, *denied_user = NULL, *denied_unguarded = NULL, *unknown = NULL,
                *pinned = NULL;

        g_assert_cmpint(imgcache_bus_error_register(), ==, 0);

        /* The daemon's message, verbatim, after what failed. */
        plain = call_error(IMGCACHE_ERROR_NO_SUCH_IMAGE, "No such image '6ee6'", -ENOENT, "DeleteImage", true, false);
        g_assert_cmpstr(plain, ==, "Failed to delete image 6ee6: No such image '6ee6'");

        /* No bus error: the errno's text. */
        errno_only = call_error(NULL, NULL, -ECONNRESET, "DeleteImage", true, false);
        g_assert_cmpstr(errno_only, ==, "Failed to delete image 6ee6: Connection reset by peer");

        /* Refused by polkit: how to get access, naming the action. */
        denied = call_error(SD_BUS_ERROR_ACCESS_DENIED, "Access denied", -EACCES, "DeleteImage", true, false);
        g_assert_cmpstr(denied, ==,
                        "Failed to delete image 6ee6: Access denied. Run as root, or ask the administrator to "
                        "allow the polkit action org.imgcache.delete (see polkit(8)).");

        interactive = call_error(SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                                 "Interactive authentication required.", -EACCES, "Prune", false, false);
        g_assert_cmpstr(interactive, ==,
                        "Failed to delete image 6ee6: Interactive authentication required. Authentication is "
                        "required: retry without --no-ask-password, run as root, or configure polkit to allow the "
                        "action org.imgcache.maintain.");

        interactive_agent = call_error(SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED, "Interactive authentication required.",
                                       -EACCES, "QueueImage", true, false);
        g_assert_nonnull(strstr(interactive_agent, "no polkit agent"));
        g_assert_nonnull(strstr(interactive_agent, "org.imgcache.queue"));

        /* On the session bus or for unguarded calls it is the bus policy, not polkit. */
        denied_user = call_error(SD_BUS_ERROR_ACCESS_DENIED, "Rejected send message", -EACCES, "DeleteImage", true, true);
        g_assert_nonnull(strstr(denied_user, "bus policy"));
        g_assert_null(strstr(denied_user, "polkit"));
        denied_unguarded = call_error(SD_BUS_ERROR_ACCESS_DENIED, "Rejected", -EACCES, "ListImages", true, false);
        g_assert_nonnull(strstr(denied_unguarded, "bus policy"));

        /* No daemon and no activation file. */
        unknown = call_error(SD_BUS_ERROR_SERVICE_UNKNOWN, "The name org.imgcache.Manager was not provided",
                             -EHOSTDOWN, "DeleteImage", true, false);
        g_assert_cmpstr(unknown, ==,
                        "Failed to delete image 6ee6: The name org.imgcache.Manager was not provided. Is imgcached "
                        "installed and its D-Bus activation file in place?");

        /* A pinned image: where to look, and how to delete it anyway. */
        pinned = call_error(IMGCACHE_ERROR_IMAGE_PINNED, "Image 6ee6 is pinned by pid 42: booting", -EBUSY,
                            "DeleteImage", true, false);
        g_assert_cmpstr(pinned, ==,
                        "Failed to delete image 6ee6: Image 6ee6 is pinned by pid 42: booting. 'imgcachectl pins' "
                        "lists the pins; --ignore-pins deletes it anyway.");
}

int main(int argc, char *argv[]) {
        /* The expectations spell the ellipsis as "…": a UTF-8 locale, present on every Debian system. */
        if (!setlocale(LC_ALL, "C.UTF-8"))
                g_error("The C.UTF-8 locale is missing");
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/ctl/table", test_table);
        g_test_add_func("/ctl/table-incomplete-row", test_table_incomplete_row);
        g_test_add_func("/ctl/relative-time", test_relative);
        g_test_add_func("/ctl/checksum-percent", test_checksum_and_percent);
        g_test_add_func("/ctl/job-path", test_job_path);
        g_test_add_func("/ctl/progress", test_progress);
        g_test_add_func("/ctl/ask", test_ask);
        g_test_add_func("/ctl/polkit-actions", test_polkit_actions);
        g_test_add_func("/ctl/call-error", test_call_error);

        return g_test_run();
}
