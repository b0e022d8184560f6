/* SPDX-License-Identifier: MIT */
/* config_load() on real files. The input is split at NUL bytes: the first part is imgcached.conf, each
 * further part a drop-in imgcached.conf.d/NN.conf, loaded in that (lexical) order. A first part that is
 * exactly "-" leaves the main file out, so that drop-ins alone are covered too. */

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"

#define DROPINS_MAX 16

static char dir[] = "/tmp/fuzz-config-XXXXXX";
static char main_path[sizeof(dir) + 32];
static char dropin_dir[sizeof(dir) + 32];

static void write_file(const char *path, const uint8_t *data, size_t size) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                abort();
        while (size > 0) {
                ssize_t k = write(fd, data, size);
                if (k <= 0)
                        abort();
                data += k;
                size -= (size_t) k;
        }
        close(fd);
}

static void remove_all(void) {
        (void) unlink(main_path);
        DIR *d = opendir(dropin_dir);
        if (!d)
                return;
        struct dirent *de;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        (void) unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
}

static void cleanup(void) {
        remove_all();
        (void) rmdir(dropin_dir);
        (void) rmdir(dir);
}

static void ignore_warning(const char *message, void *userdata) {
        assert(message);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > FUZZ_INPUT_MAX)
                return 0;

        if (!main_path[0]) {
                if (!mkdtemp(dir))
                        abort();
                snprintf(main_path, sizeof(main_path), "%s/imgcached.conf", dir);
                snprintf(dropin_dir, sizeof(dropin_dir), "%s/imgcached.conf.d", dir);
                if (mkdir(dropin_dir, 0755) < 0)
                        abort();
                atexit(cleanup);
        }
        remove_all();

        for (unsigned i = 0; size > 0 || i == 0; i++) {
                const uint8_t *e = memchr(data, 0, size);
                size_t n = e ? (size_t) (e - data) : size;

                if (i == 0) {
                        if (!(n == 1 && data[0] == '-'))
                                write_file(main_path, data, n);
                } else if (i <= DROPINS_MAX) {
                        char p[sizeof(dropin_dir) + 16];
                        snprintf(p, sizeof(p), "%s/%02u.conf", dropin_dir, i);
                        write_file(p, data, n);
                }
                data += e ? n + 1 : n;
                size -= e ? n + 1 : n;
                if (!e)
                        break;
        }

        Config c;
        char *error = NULL;
        assert(config_init(&c) >= 0);
        int r = config_load(&c, main_path, ignore_warning, NULL, &error);
        if (r < 0)
                assert(error && *error);
        else
                assert(!error);
        free(error);
        config_done(&c);
        return 0;
}
