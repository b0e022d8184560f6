/* SPDX-License-Identifier: MIT */

/* bench-fetch: imgcached's fill throughput against `curl -o`, same image, same upstream, same run.
 *
 *   bench-fetch [--size=BYTES] [--runs=N] [--digest=none|sha256|sha512|md5-hex] [--dir=DIR]
 *
 * Writes an image of --size (default 1 GiB) into a scratch directory under DIR (default $TMPDIR or
 * /var/tmp), serves it with upstream-server (tests/upstream-server.c, a separate process, so the
 * fetcher's CPU time is its own), then alternates N times: `curl -sS -o FILE URL` (wall time and the
 * child's CPU), and a Fill into a fresh cache directory on an sd-event loop in this process (wall time to
 * the last byte, wall time to DONE, i.e. including the worker thread's verify + fsync + rename, and this
 * process's CPU). The fill computes the digest while writing: sha256 when the upstream sends none, else the
 * one advertised. Prints a table and the best ratio; asserts nothing about time. */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "fetch.h"
#include "log.h"

static double now_s(void) {
        return (double) now_usec(CLOCK_MONOTONIC) / 1e6;
}

static double tv_s(struct timeval tv) {
        return (double) tv.tv_sec + (double) tv.tv_usec / 1e6;
}

static double self_cpu(void) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        return tv_s(ru.ru_utime) + tv_s(ru.ru_stime);
}

static int run(char *const argv[], double *ret_cpu) {
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                execvp(argv[0], argv);
                _exit(127);
        }
        int status;
        struct rusage ru;
        if (wait4(pid, &status, 0, &ru) < 0)
                return -errno;
        if (ret_cpu)
                *ret_cpu = tv_s(ru.ru_utime) + tv_s(ru.ru_stime);
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

static int write_image(const char *path, uint64_t size) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        size_t chunk = 4 << 20;
        uint8_t *buf = malloc(chunk);
        uint64_t x = 0x9e3779b97f4a7c15ULL;
        for (uint64_t done = 0; done < size;) {
                size_t n = (size_t) MIN((uint64_t) chunk, size - done);
                for (size_t i = 0; i + 8 <= n; i += 8) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        memcpy(buf + i, &x, 8);
                }
                if (loop_write(fd, buf, n) < 0) {
                        free(buf);
                        close(fd);
                        return -EIO;
                }
                done += n;
        }
        free(buf);
        close(fd);
        return 0;
}

typedef struct FillRun {
        double last_byte;
        bool sealing_seen;
} FillRun;

static void on_data(Fill *f, void *userdata) {
}

static int fill_once(const char *cache_dir, const char *url, const char *id, uint64_t size, double *ret_wall_body,
                     double *ret_wall_done, double *ret_cpu) {
        sd_event *event = NULL;
        ImageCache *cache = NULL;
        Fetcher *fe = NULL;
        Config config;
        char *error = NULL;
        int r;

        r = image_cache_open(cache_dir, DRIVER_SQLITE, &cache, &error);
        if (r < 0) {
                fprintf(stderr, "bench-fetch: %s\n", error ?: strerror(-r));
                return r;
        }
        config_init(&config);
        free(config.upstream_url);
        config.upstream_url = strdup(url);
        config.max_size = (SizeLimit) { .bytes = UINT64_MAX / 2, .permille = UINT64_MAX };
        config.keep_free = (SizeLimit) { .bytes = 0, .permille = UINT64_MAX };
        sd_event_new(&event);
        r = fetcher_new(event, cache, &config, &fe);
        if (r < 0)
                return r;

        double cpu0 = self_cpu(), t0 = now_s(), body = 0;
        Fill *f = NULL;
        r = fetcher_fill(fe, id, NULL, &f);
        if (r < 0)
                return r;
        FillSubscription *s = NULL;
        FillListener l = { .on_data = on_data };
        fill_subscribe(f, &l, NULL, &s);
        while (!fill_state_is_final(fill_state(f))) {
                sd_event_run(event, UINT64_MAX);
                if (body == 0 && fill_state(f) == FILL_SEALING)
                        body = now_s() - t0;
        }
        double done = now_s() - t0, cpu = self_cpu() - cpu0;
        r = fill_state(f) == FILL_DONE && fill_bytes_written(f) == size ? 0 : -EIO;
        if (r < 0)
                fprintf(stderr, "bench-fetch: fill failed: %s\n", strempty(fill_error_message(f)));
        fill_subscription_free(s);
        fill_unref(f);
        fetcher_free(fe);
        image_cache_close(cache);
        sd_event_unref(event);
        config_done(&config);
        *ret_wall_body = body;
        *ret_wall_done = done;
        *ret_cpu = cpu;
        return r;
}

int main(int argc, char *argv[]) {
        uint64_t size = 1ULL << 30;
        unsigned runs = 3;
        const char *digest = "none", *base = getenv("TMPDIR") ?: "/var/tmp", *server = UPSTREAM_SERVER;
        static const struct option options[] = {
                { "size", required_argument, NULL, 's' },
                { "runs", required_argument, NULL, 'n' },
                { "digest", required_argument, NULL, 'd' },
                { "dir", required_argument, NULL, 'D' },
                { "server", required_argument, NULL, 'S' },
                {}
        };
        int c;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 's': size = strtoull(optarg, NULL, 10); break;
                case 'n': runs = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'd': digest = optarg; break;
                case 'D': base = optarg; break;
                case 'S': server = optarg; break;
                default: return 2;
                }

        log_setup("bench-fetch");
        log_set_max_level(LOG_WARNING);
        signal(SIGPIPE, SIG_IGN);

        char tmpl[4096];
        snprintf(tmpl, sizeof(tmpl), "%s/bench-fetch-XXXXXX", base);
        char *dir = mkdtemp(tmpl);
        if (!dir) {
                perror("mkdtemp");
                return 1;
        }
        char images[4200], image[4300], port_file[4200], out[4200], cmd[9000];
        snprintf(images, sizeof(images), "%s/images", dir);
        snprintf(image, sizeof(image), "%s/img", images);
        snprintf(port_file, sizeof(port_file), "%s/port", dir);
        snprintf(out, sizeof(out), "%s/curl.out", dir);
        mkdir(images, 0755);
        fprintf(stderr, "Writing a %" PRIu64 "-byte image to %s…\n", size, image);
        if (write_image(image, size) < 0) {
                perror("write image");
                return 1;
        }

        char dir_arg[4300], port_arg[4300], digest_arg[64];
        snprintf(dir_arg, sizeof(dir_arg), "--dir=%s", images);
        snprintf(port_arg, sizeof(port_arg), "--port-file=%s", port_file);
        snprintf(digest_arg, sizeof(digest_arg), "--digest=%s", digest);
        pid_t server_pid = fork();
        if (server_pid == 0) {
                execl(server, server, dir_arg, port_arg, "--port=0", digest_arg, (char *) NULL);
                _exit(127);
        }
        /* Wait for the port file (the server renames it into place when listening). */
        unsigned port = 0;
        for (double t = now_s(); now_s() - t < 10 && port == 0;) {
                FILE *f = fopen(port_file, "re");
                if (f) {
                        if (fscanf(f, "%u", &port) != 1)
                                port = 0;
                        fclose(f);
                } else
                        usleep(10000); /* a benchmark's startup, not a test's synchronisation */
        }
        if (port == 0) {
                fprintf(stderr, "bench-fetch: upstream-server did not start\n");
                return 1;
        }
        char url[128], tmpl_url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/images/img", port);
        snprintf(tmpl_url, sizeof(tmpl_url), "http://127.0.0.1:%u/images/{id}", port);

        /* Warm the server's mapping and the page cache once. */
        char *warm[] = { (char *) "curl", (char *) "-sS", (char *) "-o", (char *) "/dev/null", url, NULL };
        run(warm, NULL);

        double gib = (double) size / (1 << 30);
        double best_curl = 0, best_fill = 0, best_done = 0, cpu_fill_min = 1e9, cpu_curl_min = 1e9;
        printf("%-4s %12s %12s %14s %14s %12s\n", "run", "curl MiB/s", "fill MiB/s", "fill+seal MiB/s",
               "fill CPU s/GiB", "curl CPU s/GiB");
        for (unsigned i = 0; i < runs; i++) {
                unlink(out);
                char *cv[] = { (char *) "curl", (char *) "-sS", (char *) "-o", out, url, NULL };
                double t0 = now_s(), curl_cpu = 0;
                if (run(cv, &curl_cpu) < 0) {
                        fprintf(stderr, "bench-fetch: curl failed\n");
                        return 1;
                }
                double curl_wall = now_s() - t0;
                unlink(out);

                char cache_dir[4300];
                snprintf(cache_dir, sizeof(cache_dir), "%s/cache%u", dir, i);
                double body, done, cpu;
                if (fill_once(cache_dir, tmpl_url, "img", size, &body, &done, &cpu) < 0)
                        return 1;
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", cache_dir);
                (void) !system(cmd);

                double mc = size / curl_wall / (1 << 20), mf = size / body / (1 << 20), md = size / done / (1 << 20);
                printf("%-4u %12.0f %12.0f %14.0f %14.2f %12.2f\n", i + 1, mc, mf, md, cpu / gib, curl_cpu / gib);
                best_curl = MAX(best_curl, mc);
                best_fill = MAX(best_fill, mf);
                best_done = MAX(best_done, md);
                cpu_fill_min = MIN(cpu_fill_min, cpu / gib);
                cpu_curl_min = MIN(cpu_curl_min, curl_cpu / gib);
        }
        printf("best: curl %.0f MiB/s, fill %.0f MiB/s (%.2fx curl), fill incl. verify+fsync+rename %.0f MiB/s; "
               "CPU %.2f s/GiB (curl %.2f s/GiB); digest %s\n",
               best_curl, best_fill, best_fill / best_curl, best_done, cpu_fill_min, cpu_curl_min,
               streq(digest, "none") ? "sha256 (computed, none advertised)" : digest);

        kill(server_pid, SIGTERM);
        waitpid(server_pid, NULL, 0);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void) !system(cmd);
        return 0;
}
