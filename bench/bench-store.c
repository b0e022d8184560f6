/* SPDX-License-Identifier: MIT */

/* How the store's costs grow with the number of images: create, list, reopen (load + reconcile),
 * reconcile with every row missing (adoption), prune of a tenth, for 1k, 10k and 100k images of a few
 * bytes, per driver. Not a test: it prints figures and asserts nothing about time.
 *
 *   bench-store [--dir=PARENT] [--driver=sqlite|xattr|both] [--max=100000]
 *
 * PARENT defaults to /dev/shm when it exists, so fsync costs (the disk's, not ours) stay out of the
 * figures; pass a directory on a real disk to include them. */

#include <getopt.h>
#include <glib.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

static const char *arg_dir = NULL;
static const char *arg_driver = "both";
static size_t arg_max = 100000;

static double now_ms(void) {
        return (double) now_usec(CLOCK_MONOTONIC) / 1000.0;
}

static void die(const char *what, int r) {
        fprintf(stderr, "bench-store: %s: %s\n", what, strerror(-r));
        exit(EXIT_FAILURE);
}

static ImageCache *open_cache(const char *dir, DriverKind driver) {
        ImageCache *c = NULL;
        char *error = NULL;
        int r = image_cache_open(dir, driver, &c, &error);
        if (r < 0) {
                fprintf(stderr, "bench-store: %s\n", error ?: strerror(-r));
                exit(EXIT_FAILURE);
        }
        return c;
}

static void create_images(ImageCache *c, size_t n) {
        for (size_t i = 0; i < n; i++) {
                char id[64];
                snprintf(id, sizeof(id), "%08zx-bench-image", i);
                CacheWrite *w = NULL;
                int r = image_cache_begin_write(c, id, NULL, &w);
                if (r < 0)
                        die("begin_write", r);
                r = cache_write_append(w, id, 16);
                if (r < 0)
                        die("append", r);
                r = image_cache_commit_write(c, w);
                if (r < 0)
                        die("commit", r);
        }
}

static void remove_tree(const char *path) {
        g_autofree char *cmd = g_strdup_printf("rm -rf -- '%s'", path);
        if (system(cmd) != 0)
                fprintf(stderr, "bench-store: could not remove %s\n", path);
}

static void row(const char *driver, size_t n, const char *op, double ms, size_t ops) {
        printf("%-7s %7zu  %-28s %10.1f ms  %8.2f µs/op\n", driver, n, op, ms, ms * 1000.0 / (double) ops);
}

static void bench_one(DriverKind driver, size_t n) {
        const char *name = driver_kind_to_string(driver);
        g_autofree char *template = g_build_filename(arg_dir, "imgcache-bench-XXXXXX", NULL);
        if (!g_mkdtemp(template))
                die("mkdtemp", -errno);

        ImageCache *c = open_cache(template, driver);
        double t = now_ms();
        create_images(c, n);
        row(name, n, "create (write+commit)", now_ms() - t, n);

        const CacheEntry **v = NULL;
        size_t listed = 0;
        t = now_ms();
        int r = image_cache_list(c, &v, &listed);
        if (r < 0)
                die("list", r);
        row(name, n, "list (sorted)", now_ms() - t, n);
        free(v);

        for (size_t i = 0; i < n; i += 7) {
                char id[64];
                snprintf(id, sizeof(id), "%08zx-bench-image", i);
                (void) image_cache_record_hit(c, id);
        }
        t = now_ms();
        r = image_cache_flush(c);
        if (r < 0)
                die("flush", r);
        row(name, n, "flush hits (1/7 of images)", now_ms() - t, n / 7 + 1);
        image_cache_close(c);

        t = now_ms();
        c = open_cache(template, driver);
        row(name, n, "open (load + reconcile)", now_ms() - t, n);

        unsigned files = 0;
        uint64_t bytes = 0;
        t = now_ms();
        r = image_cache_prune(c, image_cache_size(c) / 10 * 9, &files, &bytes);
        if (r < 0)
                die("prune", r);
        row(name, n, "prune a tenth (LRU)", now_ms() - t, MAX(files, 1u));
        image_cache_close(c);

        if (driver == DRIVER_SQLITE) {
                /* Every row gone: reconciliation adopts every file. */
                g_autofree char *db = g_build_filename(template, DRIVER_SQLITE_DB, NULL);
                for (const char *suffix = ""; suffix; suffix = streq(suffix, "") ? "-wal" : streq(suffix, "-wal") ? "-shm" : NULL) {
                        g_autofree char *p = g_strconcat(db, suffix, NULL);
                        (void) unlink(p);
                }
                t = now_ms();
                c = open_cache(template, driver);
                row(name, n, "open (adopt every file)", now_ms() - t, n);
                image_cache_close(c);
        }

        remove_tree(template);
}

static int parse_args(int argc, char *argv[]) {
        static const struct option options[] = {
                { "dir", required_argument, NULL, 'd' },
                { "driver", required_argument, NULL, 'D' },
                { "max", required_argument, NULL, 'm' },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        int c;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'd':
                        arg_dir = optarg;
                        break;
                case 'D':
                        arg_driver = optarg;
                        break;
                case 'm':
                        arg_max = strtoul(optarg, NULL, 10);
                        break;
                case 'h':
                        printf("%s [--dir=PARENT] [--driver=sqlite|xattr|both] [--max=N]\n", argv[0]);
                        exit(EXIT_SUCCESS);
                default:
                        return -EINVAL;
                }
        if (!arg_dir)
                arg_dir = access("/dev/shm", W_OK) >= 0 ? "/dev/shm" : g_get_tmp_dir();
        return 0;
}

int main(int argc, char *argv[]) {
        if (parse_args(argc, argv) < 0)
                return EXIT_FAILURE;

        printf("# imgcache store benchmark in %s\n", arg_dir);
        printf("%-7s %7s  %-28s %13s  %14s\n", "driver", "images", "operation", "total", "per op");
        for (DriverKind d = 0; d < _DRIVER_KIND_MAX; d++) {
                if (!streq(arg_driver, "both") && !streq(arg_driver, driver_kind_to_string(d)))
                        continue;
                for (size_t n = 1000; n <= arg_max; n *= 10)
                        bench_one(d, n);
        }
        return EXIT_SUCCESS;
}
