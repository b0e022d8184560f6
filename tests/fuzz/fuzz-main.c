/* SPDX-License-Identifier: MIT */
/* Without libFuzzer: replays each file named on the command line (or each file inside a directory named
 * there, like libFuzzer does) through LLVMFuzzerTestOneInput once, so that the seed corpus runs as an
 * ordinary test in every build (and under ASan/UBSan in the sanitizer one). */

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static int replay(const char *path) {
        FILE *f = fopen(path, "re");
        if (!f) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return -errno;
        }

        size_t n = 0, allocated = 4096;
        uint8_t *buf = malloc(allocated);
        if (!buf)
                abort();
        for (;;) {
                if (n == allocated) {
                        allocated *= 2;
                        buf = realloc(buf, allocated);
                        if (!buf)
                                abort();
                }
                size_t k = fread(buf + n, 1, allocated - n, f);
                if (k == 0)
                        break;
                n += k;
        }
        int r = ferror(f) ? -EIO : 0;
        fclose(f);
        if (r < 0) {
                fprintf(stderr, "%s: read error\n", path);
                free(buf);
                return r;
        }

        LLVMFuzzerTestOneInput(buf, n);
        free(buf);
        printf("ok %s (%zu bytes)\n", path, n);
        return 0;
}

static int replay_dir(const char *path) {
        struct dirent **entries;
        int n, n_files = 0, r = 0;

        n = scandir(path, &entries, NULL, alphasort);
        if (n < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return -errno;
        }
        for (int i = 0; i < n; i++) {
                if (entries[i]->d_name[0] != '.') {
                        char *p;
                        if (asprintf(&p, "%s/%s", path, entries[i]->d_name) < 0)
                                abort();
                        if (replay(p) < 0)
                                r = -EIO;
                        n_files++;
                        free(p);
                }
                free(entries[i]);
        }
        free(entries);
        if (n_files == 0) {
                fprintf(stderr, "%s: no inputs\n", path);
                return -ENOENT;
        }
        if (r < 0)
                return r;
        return 0;
}

int main(int argc, char *argv[]) {
        int ret = EXIT_SUCCESS;

        if (argc < 2) {
                fprintf(stderr, "Usage: %s FILE|DIRECTORY...\n", argv[0]);
                return EXIT_FAILURE;
        }
        for (int i = 1; i < argc; i++) {
                DIR *d = opendir(argv[i]);
                int r;

                if (d) {
                        closedir(d);
                        r = replay_dir(argv[i]);
                } else
                        r = replay(argv[i]);
                if (r < 0)
                        ret = EXIT_FAILURE;
        }
        return ret;
}
