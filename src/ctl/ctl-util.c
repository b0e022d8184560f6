/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <langinfo.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus-error.h"
#include "ctl-util.h"
#include "parse-util.h"
#include "table.h"
#include "util.h"

#define USEC_PER_MINUTE (60 * USEC_PER_SEC)
#define USEC_PER_HOUR   (60 * USEC_PER_MINUTE)
#define USEC_PER_DAY    (24 * USEC_PER_HOUR)
#define USEC_PER_WEEK   (7 * USEC_PER_DAY)
#define USEC_PER_MONTH  (2629800 * USEC_PER_SEC)  /* 30.44 days */
#define USEC_PER_YEAR   (31557600 * USEC_PER_SEC) /* 365.25 days */

const char *ellipsis(void) {
        static int utf8 = -1;

        if (utf8 < 0) {
                const char *codeset = nl_langinfo(CODESET);
                utf8 = codeset && (strcasecmp(codeset, "UTF-8") == 0 || strcasecmp(codeset, "utf8") == 0);
        }
        return utf8 ? "…" : "...";
}

char *format_timestamp_relative(char *buf, size_t n, usec_t t, usec_t now) {
        static const struct {
                usec_t unit;
                const char *suffix;
        } units[] = {
                { USEC_PER_YEAR,   "y"   },
                { USEC_PER_MONTH,  "mo"  },
                { USEC_PER_WEEK,   "w"   },
                { USEC_PER_DAY,    "d"   },
                { USEC_PER_HOUR,   "h"   },
                { USEC_PER_MINUTE, "min" },
                { USEC_PER_SEC,    "s"   },
        };
        usec_t d;
        bool future;

        if (t == 0) {
                snprintf(buf, n, "never");
                return buf;
        }

        future = t > now;
        d = future ? t - now : now - t;

        /* Weeks only up to five, then months: "5w ago" reads better than "1mo ago" for 35 days. */
        for (size_t i = 0; i < ELEMENTSOF(units); i++) {
                if (d < units[i].unit)
                        continue;
                if (units[i].unit == USEC_PER_MONTH && d < 5 * USEC_PER_WEEK)
                        continue;

                if (future)
                        snprintf(buf, n, "in %" PRIu64 "%s", d / units[i].unit, units[i].suffix);
                else
                        snprintf(buf, n, "%" PRIu64 "%s ago", d / units[i].unit, units[i].suffix);
                return buf;
        }

        snprintf(buf, n, "just now");
        return buf;
}

char *format_timestamp(char *buf, size_t n, usec_t t) {
        struct tm tm;
        time_t sec;

        if (t == 0 || t == USEC_INFINITY) {
                snprintf(buf, n, "n/a");
                return buf;
        }

        sec = (time_t) (t / USEC_PER_SEC);
        if (!localtime_r(&sec, &tm) || strftime(buf, n, "%a %Y-%m-%d %H:%M:%S %Z", &tm) == 0)
                snprintf(buf, n, "@%" PRIu64, t / USEC_PER_SEC);
        return buf;
}

char *shorten_checksum(char *buf, size_t n, const char *checksum) {
        const char *colon, *hex;
        size_t algo_len;

        if (isempty(checksum)) {
                snprintf(buf, n, "-");
                return buf;
        }

        colon = strchr(checksum, ':');
        hex = colon ? colon + 1 : checksum;
        algo_len = colon ? (size_t) (colon - checksum) + 1 : 0;

        if (strlen(hex) <= 12)
                snprintf(buf, n, "%s", checksum);
        else
                snprintf(buf, n, "%.*s%.12s%s", (int) algo_len, checksum, hex, ellipsis());
        return buf;
}

char *format_percent(char *buf, size_t n, uint64_t part, uint64_t whole) {
        if (whole == 0 || whole == UINT64_MAX)
                snprintf(buf, n, "-");
        else
                snprintf(buf, n, "%.1f%%", (double) part * 100.0 / (double) whole);
        return buf;
}

const char *polkit_action_for_method(const char *member) {
        static const struct {
                const char *member;
                const char *action;
        } table[] = {
                { "QueueImage",      "org.imgcache.queue"    },
                { "DequeueImage",    "org.imgcache.queue"    },
                { "DequeueAll",      "org.imgcache.queue"    },
                { "Prefetch",        "org.imgcache.queue"    },
                { "FetchImage",      "org.imgcache.queue"    },
                { "Cancel",          "org.imgcache.queue"    },
                { "DeleteImage",     "org.imgcache.delete"   },
                { "DeleteImageWithFlags", "org.imgcache.delete" },
                { "DeleteAllImages", "org.imgcache.delete"   },
                { "Prune",           "org.imgcache.maintain" },
                { "Clean",           "org.imgcache.maintain" },
                { "Verify",          "org.imgcache.maintain" },
                { "OpenImage",       "org.imgcache.open"     },
                { "PinImage",        "org.imgcache.open"     },
        };

        if (!member)
                return NULL;

        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (streq(table[i].member, member))
                        return table[i].action;
        return NULL;
}

bool bus_error_is_access_denied(const sd_bus_error *e) {
        return sd_bus_error_has_names(e,
                                      SD_BUS_ERROR_ACCESS_DENIED,
                                      SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED);
}

int access_denied_hint(const sd_bus_error *e, const char *member, bool ask_password, bool user_bus, char **ret) {
        const char *action = polkit_action_for_method(member);
        int r;

        if (!ret)
                return -EINVAL;

        if (!bus_error_is_access_denied(e)) {
                *ret = NULL;
                return 0;
        }

        if (user_bus || !action)
                /* No polkit on the session bus, nor for unguarded calls: it is the bus policy that said no. */
                r = asprintf(ret, "The bus policy does not allow this call; check the D-Bus configuration of "
                             "org.imgcache.Manager.");
        else if (sd_bus_error_has_name(e, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED) && !ask_password)
                r = asprintf(ret, "Authentication is required: retry without --no-ask-password, run as root, "
                             "or configure polkit to allow the action %s.", action);
        else if (sd_bus_error_has_name(e, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED))
                r = asprintf(ret, "Authentication is required but no polkit agent could ask for it: run as root, "
                             "or configure polkit to allow the action %s.", action);
        else
                r = asprintf(ret, "Run as root, or ask the administrator to allow the polkit action %s "
                             "(see polkit(8)).", action);
        if (r < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

/* What to do about the errors that are not about access, or NULL. */
static const char *error_hint(const sd_bus_error *e, bool user_bus) {
        if (sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                return user_bus ? "Is imgcached running (imgcached --user) on this session bus?" :
                                  "Is imgcached installed and its D-Bus activation file in place?";
        if (sd_bus_error_has_name(e, IMGCACHE_ERROR_IMAGE_PINNED))
                return "'imgcachectl pins' lists the pins; --ignore-pins deletes it anyway.";
        return NULL;
}

int format_call_error(const char *what, const sd_bus_error *e, int r, const char *member, bool ask_password,
                      bool user_bus, char **ret) {
        _cleanup_(freep) char *hint = NULL;
        const char *message, *dot;
        char errbuf[128];
        size_t l;
        int k;

        if (!what || !ret)
                return -EINVAL;

        if (e && sd_bus_error_is_set(e))
                message = !isempty(e->message) ? e->message : e->name;
        else
                message = strerror_r(r < 0 ? -r : r, errbuf, sizeof errbuf);

        k = access_denied_hint(e, member, ask_password, user_bus, &hint);
        if (k < 0)
                return k;

        if (!hint && error_hint(e, user_bus)) {
                hint = strdup(error_hint(e, user_bus));
                if (!hint)
                        return -ENOMEM;
        }

        /* Join "message" and "Hint." with ". " unless the message already ends a sentence. */
        l = strlen(message);
        dot = l > 0 && strchr(".!?", message[l - 1]) ? "" : ".";

        if (hint)
                k = asprintf(ret, "Failed to %s: %s%s %s", what, message, dot, hint);
        else
                k = asprintf(ret, "Failed to %s: %s", what, message);
        if (k < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

int job_id_from_path(const char *path, uint32_t *ret) {
        static const char prefix[] = "/org/imgcache/job/";
        const char *p;
        unsigned long v;
        char *end;

        if (!path || strncmp(path, prefix, sizeof(prefix) - 1) != 0)
                return -EINVAL;

        p = path + sizeof(prefix) - 1;
        /* systemd's bus_path_encode() escapes a leading digit as "_3"; accept both spellings. */
        if (p[0] == '_' && p[1] == '3' && p[2] >= '0' && p[2] <= '9')
                p += 2;
        if (*p < '0' || *p > '9')
                return -EINVAL;

        errno = 0;
        v = strtoul(p, &end, 10);
        if (errno != 0 || *end != '\0' || v > UINT32_MAX)
                return -EINVAL;

        if (ret)
                *ret = (uint32_t) v;
        return 0;
}

char *format_progress_line(char *buf, size_t n, const char *label, uint64_t done, uint64_t total, double rate,
                           unsigned width) {
        char sdone[FORMAT_SIZE_MAX], stotal[FORMAT_SIZE_MAX], srate[FORMAT_SIZE_MAX], seta[FORMAT_TIMESPAN_MAX];
        char stats[160], shown_label[64];
        size_t label_w, stats_w;
        int bar;

        if (!buf || n == 0)
                return buf;

        label = strempty(label);

        /* Long ids are cut to keep the bar usable; the full id is printed when the job ends. */
        if (utf8_width(label) > 40)
                snprintf(shown_label, sizeof shown_label, "%.37s%s", label, ellipsis());
        else
                snprintf(shown_label, sizeof shown_label, "%s", label);

        format_size(sdone, sizeof sdone, done);
        if (total > 0) {
                unsigned percent = (unsigned) MIN((done * 100) / total, (uint64_t) 100);
                int k;

                format_size(stotal, sizeof stotal, total);
                k = snprintf(stats, sizeof stats, "%3u%%  %s/%s", percent, sdone, stotal);
                if (rate > 0) {
                        format_size(srate, sizeof srate, (uint64_t) rate);
                        k += snprintf(stats + k, sizeof stats - k, "  %s/s", srate);
                        if (done < total) {
                                /* Whole seconds, rounded up: "1s" until it is done, never "0". */
                                usec_t eta = (usec_t) ceil((double) (total - done) / rate) * USEC_PER_SEC;

                                format_timespan(seta, sizeof seta, eta);
                                snprintf(stats + k, sizeof stats - k, "  ETA %s", seta);
                        }
                }
        } else {
                int k = snprintf(stats, sizeof stats, "%s", sdone);

                if (rate > 0) {
                        format_size(srate, sizeof srate, (uint64_t) rate);
                        snprintf(stats + k, sizeof stats - k, "  %s/s", srate);
                }
        }

        label_w = utf8_width(shown_label);
        stats_w = utf8_width(stats);

        /* label, space, "[", bar, "]", two spaces, stats; the bar only when it gets 10 columns or more. */
        bar = (int) width - (int) (label_w + 1 + 2 + 2 + stats_w);
        bar = MIN(bar, 50);
        if (total > 0 && bar >= 10) {
                size_t filled = (size_t) ((double) bar * (double) MIN(done, total) / (double) total);
                char bar_text[64];

                memset(bar_text, '#', filled);
                memset(bar_text + filled, '-', (size_t) bar - filled);
                bar_text[bar] = '\0';
                snprintf(buf, n, "%s [%s]  %s", shown_label, bar_text, stats);
        } else
                snprintf(buf, n, "%s  %s", shown_label, stats);

        return buf;
}

unsigned terminal_columns(int fd, unsigned fallback) {
        struct winsize ws = {};
        const char *e;

        e = secure_getenv("COLUMNS");
        if (e) {
                char *end;
                unsigned long v = strtoul(e, &end, 10);

                if (*e && *end == '\0' && v > 0 && v < 10000)
                        return (unsigned) v;
        }

        if (ioctl(fd, TIOCGWINSZ, &ws) >= 0 && ws.ws_col > 0)
                return ws.ws_col;

        return fallback;
}

int ask_yes_no(FILE *in, FILE *out, bool *ret, const char *format, ...) {
        _cleanup_(freep) char *line = NULL;
        size_t allocated = 0;
        ssize_t k;
        va_list ap;

        if (!in || !out || !ret || !format)
                return -EINVAL;

        va_start(ap, format);
        vfprintf(out, format, ap);
        va_end(ap);
        fputs(" [y/N] ", out);
        fflush(out);

        errno = 0;
        k = getline(&line, &allocated, in);
        if (k < 0) {
                if (errno != 0 && !feof(in))
                        return -errno;
                /* EOF: no. End the prompt's line so what follows starts on its own. */
                fputc('\n', out);
                *ret = false;
                return 0;
        }

        line[strcspn(line, "\r\n")] = '\0';
        *ret = strcasecmp(line, "y") == 0 || strcasecmp(line, "yes") == 0;
        return 0;
}

/* The pager's pid, so that only our own child is waited for. */
static pid_t pager_pid = 0;

static void pager_copy_through(void) {
        char buf[4096];
        ssize_t k;

        /* No pager could be started: pass the output through unchanged. */
        while ((k = read(STDIN_FILENO, buf, sizeof buf)) > 0)
                if (loop_write(STDOUT_FILENO, buf, (size_t) k) < 0)
                        break;
}

int pager_open(void) {
        const char *pager;
        int fds[2];
        pid_t pid;

        if (pager_pid > 0)
                return 1;

        if (!isatty(STDOUT_FILENO))
                return 0;

        pager = secure_getenv("IMGCACHECTL_PAGER");
        if (!pager)
                pager = secure_getenv("PAGER");
        if (pager && (isempty(pager) || streq(pager, "cat")))
                return 0;

        fflush(stdout);

        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;

        pid = fork();
        if (pid < 0) {
                int e = errno;

                safe_close(fds[0]);
                safe_close(fds[1]);
                return -e;
        }

        if (pid == 0) {
                /* Child: the pager reads what we write. */
                if (dup2(fds[0], STDIN_FILENO) < 0)
                        _exit(EXIT_FAILURE);
                safe_close(fds[0]);
                safe_close(fds[1]);

                /* less: quit if one screen, raw colour codes, no init, keep the screen, no mouse. */
                (void) setenv("LESS", "FRXMK", /* overwrite= */ false);

                if (pager) {
                        execl("/bin/sh", "sh", "-c", pager, (char *) NULL);
                } else {
                        execlp("less", "less", (char *) NULL);
                        execlp("more", "more", (char *) NULL);
                }

                pager_copy_through();
                _exit(EXIT_SUCCESS);
        }

        if (dup2(fds[1], STDOUT_FILENO) < 0) {
                int e = errno;

                safe_close(fds[0]);
                safe_close(fds[1]);
                (void) kill(pid, SIGTERM);
                (void) waitpid(pid, NULL, 0);
                return -e;
        }
        safe_close(fds[0]);
        safe_close(fds[1]);

        pager_pid = pid;
        return 1;
}

void pager_close(void) {
        int fd;

        if (pager_pid <= 0)
                return;

        fflush(stdout);

        /* Point stdout at /dev/null so the pager sees EOF, then wait for the user to quit it. */
        fd = open("/dev/null", O_WRONLY|O_CLOEXEC);
        if (fd >= 0) {
                (void) dup2(fd, STDOUT_FILENO);
                safe_close(fd);
        } else
                (void) close(STDOUT_FILENO);

        while (waitpid(pager_pid, NULL, 0) < 0 && errno == EINTR)
                ;
        pager_pid = 0;
}

static pid_t agent_pid = 0;

int polkit_agent_open(void) {
        static const char agent_path[] = "/usr/bin/pkttyagent";
        char notify_fd[16];
        int fds[2];
        pid_t pid;
        char c;

        if (agent_pid > 0)
                return 0;

        if (!isatty(STDIN_FILENO) || access(agent_path, X_OK) < 0)
                return 0;

        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;

        pid = fork();
        if (pid < 0) {
                int e = errno;

                safe_close(fds[0]);
                safe_close(fds[1]);
                return -e;
        }

        if (pid == 0) {
                int nfd;

                safe_close(fds[0]);
                /* Keep the notification fd across exec. */
                nfd = fcntl(fds[1], F_DUPFD, 3);
                if (nfd < 0)
                        _exit(EXIT_FAILURE);
                snprintf(notify_fd, sizeof notify_fd, "%i", nfd);

                /* Registers for our session; --fallback leaves a desktop's own agent in charge. */
                execl(agent_path, agent_path, "--notify-fd", notify_fd, "--fallback", (char *) NULL);
                _exit(EXIT_FAILURE);
        }

        safe_close(fds[1]);

        /* The agent closes (or writes to) the notify fd once it is registered; EOF also comes if it died. */
        while (read(fds[0], &c, 1) < 0 && errno == EINTR)
                ;
        safe_close(fds[0]);

        agent_pid = pid;
        return 0;
}

void polkit_agent_close(void) {
        if (agent_pid <= 0)
                return;

        (void) kill(agent_pid, SIGTERM);
        (void) kill(agent_pid, SIGCONT);
        while (waitpid(agent_pid, NULL, 0) < 0 && errno == EINTR)
                ;
        agent_pid = 0;
}
