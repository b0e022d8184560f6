/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <glib.h>

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

/* Skips the running test for want of a tool or a privilege that tools/install-deps and CI provide
 * (reason names it), or, with IMGCACHE_TESTS_REQUIRE_ALL=1 in the environment (.ci/run sets it), fails
 * it: there nothing a test needs may be missing. Either way the caller returns next, as after
 * g_test_skip(). A skip that is the design (a pass where the test cannot mean anything) stays a
 * g_test_skip(). */
void test_skip_missing(const char *reason);
gboolean test_require_all(void);

/* A TCP connection to 127.0.0.1:port from source (an address in 127.0.0.0/8, so that one test can be
 * several clients), or from the kernel's choice when source is NULL. */
int test_connect_from(const char *source, uint16_t port);
/* A TCP port on 127.0.0.1 that was free a moment ago (for a daemon's Listen=). */
uint16_t test_free_port(void);
/* A listening TCP socket on 127.0.0.1, any free port (close-on-exec). */
int test_listen_socket(uint16_t *ret_port);
/* An idle keep-alive client of an HTTP server on 127.0.0.1:port: GET /healthcheck answered 200 in full,
 * the connection left open (libmicrohttpd orders its timeout list by age, so such an older connection
 * is what once kept a failed miss's client waiting). Returns the socket; close it when done. */
int test_hold_idle_http_connection(uint16_t port, unsigned timeout_ms);

/* Deterministic pseudo-random bytes (xorshift32 from seed); g_free. */
uint8_t *test_random_data(size_t size, uint32_t seed);

/* Runs test_path of this very program again inside a new user+mount namespace (unshare --user
 * --map-root-user --mount), where it may mount a small tmpfs, and asserts it passed there. Returns
 * FALSE, having marked the test skipped, where such namespaces are not allowed. Inside the namespace
 * (IMGCACHE_TEST_IN_NAMESPACE set) it returns TRUE at once without running anything: the caller then
 * runs the test's body. */
gboolean test_in_mount_namespace(const char *test_path, gboolean *ret_inside);
