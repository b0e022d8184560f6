/* SPDX-License-Identifier: MIT */

#include <fcntl.h>
#include <ftw.h>
#include <glib.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test-util.h"

char *test_tmpdir_new(void) {
        GError *error = NULL;
        char *path = g_dir_make_tmp("imgcache-test-XXXXXX", &error);
        g_assert_no_error(error);
        return path;
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) st;
        (void) type;
        (void) ftw;
        (void) remove(path);
        return 0;
}

void test_tmpdir_remove(const char *path) {
        if (!path)
                return;
        (void) nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

void test_write_file(const char *dir, const char *name, const void *data, size_t size) {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        GError *error = NULL;
        g_file_set_contents(path, data, (gssize) size, &error);
        g_assert_no_error(error);
}

char *test_read_file(const char *path, size_t *ret_size) {
        char *data = NULL;
        gsize size = 0;
        GError *error = NULL;
        g_file_get_contents(path, &data, &size, &error);
        g_assert_no_error(error);
        if (ret_size)
                *ret_size = size;
        return data;
}

int test_file_exists(const char *dir, const char *name) {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        struct stat st;
        return lstat(path, &st) >= 0;
}
