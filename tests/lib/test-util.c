/* SPDX-License-Identifier: MIT */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glib.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test-util.h"

gboolean test_require_all(void) {
        return g_strcmp0(g_getenv("IMGCACHE_TESTS_REQUIRE_ALL"), "1") == 0;
}

void test_skip_missing(const char *reason) {
        if (test_require_all())
                g_test_fail_printf("%s (IMGCACHE_TESTS_REQUIRE_ALL=1: a failure, not a skip)", reason);
        else
                g_test_skip(reason);
}

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

int test_connect_from(const char *source, uint16_t port) {
        struct sockaddr_in src = { .sin_family = AF_INET }, dst = {
                .sin_family = AF_INET,
                .sin_port = htons(port),
                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        g_assert_cmpint(fd, >=, 0);
        if (source) {
                g_assert_cmpint(inet_pton(AF_INET, source, &src.sin_addr), ==, 1);
                g_assert_cmpint(bind(fd, (struct sockaddr *) &src, sizeof(src)), ==, 0);
        }
        /* The kernel completes loopback connects into the backlog at once, accepted or not. */
        if (connect(fd, (struct sockaddr *) &dst, sizeof(dst)) < 0)
                g_error("connect to 127.0.0.1:%u: %s", port, g_strerror(errno));
        return fd;
}

static int bound_socket(uint16_t *ret_port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), ==, 0);
        g_assert_cmpint(getsockname(fd, (struct sockaddr *) &sa, &len), ==, 0);
        *ret_port = ntohs(sa.sin_port);
        return fd;
}

uint16_t test_free_port(void) {
        uint16_t port;
        close(bound_socket(&port));
        return port;
}

int test_listen_socket(uint16_t *ret_port) {
        int fd = bound_socket(ret_port);
        g_assert_cmpint(listen(fd, 64), ==, 0);
        return fd;
}

int test_hold_idle_http_connection(uint16_t port, unsigned timeout_ms) {
        static const char request[] = "GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
        g_autoptr(GString) response = g_string_new(NULL);
        char buf[512];
        int fd;

        fd = test_connect_from(NULL, port);
        g_assert_cmpint(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), ==, 0);
        g_assert_cmpint(send(fd, request, strlen(request), MSG_NOSIGNAL), ==, (ssize_t) strlen(request));
        /* The body of /healthcheck is "OK\n". */
        while (!g_str_has_suffix(response->str, "\r\n\r\nOK\n")) {
                ssize_t k = recv(fd, buf, sizeof(buf), 0);
                g_assert_cmpint(k, >, 0);
                g_string_append_len(response, buf, k);
        }
        g_assert_true(g_str_has_prefix(response->str, "HTTP/1.1 200"));
        return fd;
}

uint8_t *test_random_data(size_t size, uint32_t seed) {
        uint8_t *p = g_malloc(size ? size : 1);
        uint32_t x = seed ? seed : 1;

        for (size_t i = 0; i < size; i++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                p[i] = (uint8_t) x;
        }
        return p;
}

gboolean test_in_mount_namespace(const char *test_path, gboolean *ret_inside) {
        *ret_inside = g_getenv("IMGCACHE_TEST_IN_NAMESPACE") != NULL;
        if (*ret_inside)
                return TRUE;

        const char *probe[] = { "unshare", "--user", "--map-root-user", "--mount", "true", NULL };
        int probe_status = 0;
        if (!g_spawn_sync(NULL, (char **) probe, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL |
                          G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, NULL, NULL, &probe_status, NULL) ||
            !g_spawn_check_wait_status(probe_status, NULL)) {
                test_skip_missing("no unprivileged user+mount namespaces here (unshare --user --mount)");
                return FALSE;
        }
        g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
        const char *argv[] = { "unshare", "--user", "--map-root-user", "--mount", self, "--tap", "-p", test_path, NULL };
        g_auto(GStrv) env = g_environ_setenv(g_get_environ(), "IMGCACHE_TEST_IN_NAMESPACE", "1", TRUE);
        g_autofree char *out = NULL, *err = NULL;
        g_autoptr(GError) error = NULL;
        int status = 0;
        g_assert_true(g_spawn_sync(NULL, (char **) argv, env, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err, &status, &error));
        g_test_message("namespace run:\n%s", out);
        if (!g_spawn_check_wait_status(status, NULL))
                g_error("%s in a namespace failed:\n%s\n%s", test_path, out, err);
        g_autofree char *ok = g_strdup_printf("ok 1 %s", test_path);
        g_assert_nonnull(strstr(out, ok));
        g_assert_null(strstr(out, "# SKIP"));
        return TRUE;
}
