/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>

/* Scratch directories and files for tests. Every helper asserts (g_assert) on failure, so a broken
 * environment fails the test at the line that needed it. */

/* A new empty directory under $TMPDIR (or /tmp); free with g_free after test_tmpdir_remove. */
char *test_tmpdir_new(void);
/* rm -rf, without following symlinks. */
void test_tmpdir_remove(const char *path);

/* Writes data to dir/name (created or truncated). */
void test_write_file(const char *dir, const char *name, const void *data, size_t size);
/* The whole file, NUL-terminated for convenience; g_free it. */
char *test_read_file(const char *path, size_t *ret_size);
/* Whether dir/name exists (without following a final symlink). */
int test_file_exists(const char *dir, const char *name);
