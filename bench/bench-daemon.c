/* SPDX-License-Identifier: MIT */
/* Benchmark of imgcached over D-Bus, on a private session bus it starts itself:
 *   - QueueImage and GetImage round trips (p50/p99 over N calls),
 *   - ListImages with M images, end to end (call, transfer, reading every entry),
 *   - daemon RSS idle (empty cache) and with M images,
 *   - start to READY=1 (sd_notify) with M images: first start (all adopted) and a warm restart.
 *
 * Usage: bench-daemon PATH-TO-IMGCACHED [IMAGES=100000] [CALLS=10000]
 * Prints one line per figure. Asserts nothing about time. */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#define NAME "org.imgcache.Manager"
#define PATH "/org/imgcache/Manager"
#define IFACE "org.imgcache.Manager"

static char dir[] = "/tmp/imgcache-bench-XXXXXX";
static const char *imgcached;
static pid_t bus_pid, daemon_pid;

static double now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}

static void die(const char *what) {
        fprintf(stderr, "bench-daemon: %s: %s\n", what, strerror(errno));
        if (daemon_pid > 0)
                kill(daemon_pid, SIGKILL);
        if (bus_pid > 0)
                kill(bus_pid, SIGKILL);
        exit(EXIT_FAILURE);
}

static void write_text(const char *path, const char *text) {
        FILE *f = fopen(path, "we");
        if (!f || fputs(text, f) < 0 || fclose(f) != 0)
                die(path);
}

static void start_bus(void) {
        char conf[512], text[1024], address[512] = "";
        int pipefd[2];

        snprintf(conf, sizeof conf, "%s/bus.conf", dir);
        snprintf(text, sizeof text,
                 "<busconfig><type>session</type><listen>unix:path=%s/bus</listen><auth>EXTERNAL</auth>"
                 "<policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>"
                 "<allow eavesdrop=\"true\"/><allow own=\"*\"/></policy>"
                 "<limit name=\"max_message_size\">268435456</limit></busconfig>\n", dir);
        write_text(conf, text);
        if (pipe2(pipefd, O_CLOEXEC) < 0)
                die("pipe");
        bus_pid = fork();
        if (bus_pid < 0)
                die("fork");
        if (bus_pid == 0) {
                char arg[600];
                dup2(pipefd[1], STDOUT_FILENO);
                snprintf(arg, sizeof arg, "--config-file=%s", conf);
                execlp("dbus-daemon", "dbus-daemon", arg, "--nofork", "--nopidfile", "--print-address=1", NULL);
                _exit(127);
        }
        close(pipefd[1]);
        if (read(pipefd[0], address, sizeof address - 1) <= 0)
                die("dbus-daemon did not start");
        close(pipefd[0]);
        address[strcspn(address, "\n")] = 0;
        setenv("DBUS_SESSION_BUS_ADDRESS", address, 1);
}

/* Starts the daemon and returns the ms from fork to READY=1 on a notify socket. */
static double start_daemon(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char cache_arg[600], config_arg[600];
        double t0;
        int fd;

        snprintf(sa.sun_path, sizeof sa.sun_path, "%s/notify", dir);
        unlink(sa.sun_path);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0)
                die("notify socket");
        snprintf(cache_arg, sizeof cache_arg, "--cache-dir=%s/cache", dir);
        snprintf(config_arg, sizeof config_arg, "--config=%s/imgcached.conf", dir);

        t0 = now_ms();
        daemon_pid = fork();
        if (daemon_pid < 0)
                die("fork");
        if (daemon_pid == 0) {
                setenv("NOTIFY_SOCKET", sa.sun_path, 1);
                setenv("IMGCACHE_LOG_LEVEL", "warning", 1);
                execl(imgcached, imgcached, "--user", cache_arg, config_arg, NULL);
                _exit(127);
        }
        for (int waited = 0;; waited++) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char buf[1024];
                ssize_t n;
                int k = poll(&p, 1, 1000);

                if (k == 0) {
                        errno = ETIMEDOUT;
                        if (waitpid(daemon_pid, NULL, WNOHANG) != 0) {
                                daemon_pid = 0;
                                die("imgcached exited before READY=1");
                        }
                        if (waited > 300)
                                die("no READY=1 within 300 s");
                        continue;
                }
                if (k < 0)
                        die("poll");
                n = recv(fd, buf, sizeof buf - 1, 0);
                if (n < 0)
                        die("recv");
                buf[n] = 0;
                if (strstr(buf, "READY=1")) {
                        close(fd);
                        return now_ms() - t0;
                }
        }
}

static void stop_daemon(void) {
        int status;

        kill(daemon_pid, SIGTERM);
        if (waitpid(daemon_pid, &status, 0) < 0)
                die("waitpid");
        daemon_pid = 0;
}

static long rss_kib(pid_t pid) {
        char path[64], line[256];
        long kib = -1;
        FILE *f;

        snprintf(path, sizeof path, "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return -1;
        while (fgets(line, sizeof line, f))
                if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
                        break;
        fclose(f);
        return kib;
}

static int compare_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

static void report_rtt(const char *what, double *t, unsigned n) {
        qsort(t, n, sizeof *t, compare_double);
        printf("%-34s p50 %.3f ms  p99 %.3f ms  max %.3f ms  (%u calls)\n", what, t[n / 2], t[n * 99 / 100],
               t[n - 1], n);
}

static void bench_round_trips(sd_bus *bus, unsigned calls) {
        double *t = calloc(calls, sizeof(double));
        if (!t)
                die("calloc");

        for (unsigned i = 0; i < calls; i++) {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                char id[32];
                double t0 = now_ms();

                snprintf(id, sizeof id, "queued-%06u", i);
                if (sd_bus_call_method(bus, NAME, PATH, IFACE, "QueueImage", &error, &reply, "ss", id, "") < 0) {
                        fprintf(stderr, "QueueImage: %s\n", error.message);
                        exit(EXIT_FAILURE);
                }
                t[i] = now_ms() - t0;
                sd_bus_message_unref(reply);
        }
        report_rtt("QueueImage round trip", t, calls);

        for (unsigned i = 0; i < calls; i++) {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                double t0 = now_ms();

                if (sd_bus_call_method(bus, NAME, PATH, IFACE, "GetImage", &error, &reply, "s", "img-000000") < 0) {
                        fprintf(stderr, "GetImage: %s\n", error.message);
                        exit(EXIT_FAILURE);
                }
                t[i] = now_ms() - t0;
                sd_bus_message_unref(reply);
        }
        report_rtt("GetImage round trip", t, calls);
        free(t);
}

static void bench_list(sd_bus *bus, unsigned expected) {
        double best = 1e9, total = 0;
        const int runs = 5;

        for (int r = 0; r < runs; r++) {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                double t0 = now_ms(), t;
                unsigned n = 0;
                int k;

                if (sd_bus_call_method(bus, NAME, PATH, IFACE, "ListImages", &error, &reply, NULL) < 0) {
                        fprintf(stderr, "ListImages: %s\n", error.message);
                        exit(EXIT_FAILURE);
                }
                if (sd_bus_message_enter_container(reply, 'a', "(stttts)") < 0)
                        die("ListImages reply");
                for (;;) {
                        const char *id, *checksum;
                        uint64_t size, hits, accessed, modified;
                        k = sd_bus_message_read(reply, "(stttts)", &id, &size, &hits, &accessed, &modified,
                                                &checksum);
                        if (k <= 0)
                                break;
                        n++;
                }
                t = now_ms() - t0;
                sd_bus_message_unref(reply);
                if (n != expected) {
                        fprintf(stderr, "ListImages returned %u entries, expected %u\n", n, expected);
                        exit(EXIT_FAILURE);
                }
                best = t < best ? t : best;
                total += t;
        }
        printf("%-34s best %.1f ms  mean %.1f ms  (%u images, %d runs)\n", "ListImages end to end", best,
               total / runs, expected, runs);
}

static void seed(unsigned images) {
        char path[600];
        double t0 = now_ms();

        for (unsigned i = 0; i < images; i++) {
                int fd;
                snprintf(path, sizeof path, "%s/cache/img-%06u", dir, i);
                fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                if (fd < 0 || write(fd, "x", 1) != 1 || close(fd) < 0)
                        die(path);
        }
        printf("%-34s %.0f ms\n", "(seeding image files)", now_ms() - t0);
}

static sd_bus *connect_bus(void) {
        sd_bus *bus = NULL;
        if (sd_bus_open_user(&bus) < 0)
                die("sd_bus_open_user");
        return bus;
}

int main(int argc, char *argv[]) {
        unsigned images = argc > 2 ? (unsigned) strtoul(argv[2], NULL, 10) : 100000;
        unsigned calls = argc > 3 ? (unsigned) strtoul(argv[3], NULL, 10) : 10000;
        char path[600], cmd[700];
        sd_bus *bus;
        double t;

        if (argc < 2) {
                fprintf(stderr, "Usage: %s PATH-TO-IMGCACHED [IMAGES] [CALLS]\n", argv[0]);
                return EXIT_FAILURE;
        }
        imgcached = argv[1];
        if (!mkdtemp(dir))
                die("mkdtemp");
        snprintf(path, sizeof path, "%s/cache", dir);
        if (mkdir(path, 0755) < 0)
                die(path);
        snprintf(path, sizeof path, "%s/imgcached.conf", dir);
        write_text(path, "[Daemon]\nExitOnIdleSec=infinity\n");
        start_bus();

        /* Empty cache: start, idle RSS, round trips. */
        t = start_daemon();
        printf("%-34s %.1f ms\n", "start to READY (empty cache)", t);
        printf("%-34s %.1f MiB\n", "RSS idle (empty cache)", rss_kib(daemon_pid) / 1024.0);
        snprintf(path, sizeof path, "%s/cache/img-000000", dir);
        write_text(path, "x"); /* adopted at the next start; GetImage needs one */
        stop_daemon();
        start_daemon();
        bus = connect_bus();
        bench_round_trips(bus, calls);
        printf("%-34s %.1f MiB\n", "RSS after round trips", rss_kib(daemon_pid) / 1024.0);
        sd_bus_flush_close_unref(bus);
        stop_daemon();

        /* M images: first start adopts them all, the second finds them in the metadata. */
        snprintf(path, sizeof path, "%s/cache/img-000000", dir);
        unlink(path);
        seed(images);
        t = start_daemon();
        printf("%-34s %.1f ms  (%u images)\n", "start to READY, first (adopting)", t, images);
        stop_daemon();
        t = start_daemon();
        printf("%-34s %.1f ms  (%u images)\n", "start to READY, warm", t, images);
        printf("%-34s %.1f MiB  (%u images)\n", "RSS idle", rss_kib(daemon_pid) / 1024.0, images);
        bus = connect_bus();
        bench_list(bus, images);
        printf("%-34s %.1f MiB  (%u images)\n", "RSS after ListImages", rss_kib(daemon_pid) / 1024.0, images);
        sd_bus_flush_close_unref(bus);
        stop_daemon();

        kill(bus_pid, SIGTERM);
        waitpid(bus_pid, NULL, 0);
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        return system(cmd) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
