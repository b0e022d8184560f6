/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <systemd/sd-journal.h>

#include "log.h"

#define LOG_LINE_MAX 2048

static int max_level = LOG_INFO;
static int use_journal = -1; /* -1: not decided yet */
static const char *program_name = "imgcache";

static bool stderr_is_journal(void) {
        const char *e = secure_getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

static int level_from_string(const char *s) {
        static const char *const names[] = {
                [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit", [LOG_ERR] = "err",
                [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
        };
        char *end;
        long l;

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strcasecmp(s, names[i]) == 0)
                        return (int) i;
        if (strcasecmp(s, "error") == 0)
                return LOG_ERR;
        errno = 0;
        l = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end || l < LOG_EMERG || l > LOG_DEBUG)
                return -EINVAL;
        return (int) l;
}

void log_setup(const char *program) {
        const char *e;

        if (program)
                program_name = program;
        use_journal = stderr_is_journal();

        e = secure_getenv("IMGCACHE_LOG_LEVEL");
        if (e) {
                int l = level_from_string(e);
                if (l >= 0)
                        max_level = l;
        }
}

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

void log_set_journal(bool journal) {
        use_journal = journal;
}

bool log_get_journal(void) {
        if (use_journal < 0)
                use_journal = stderr_is_journal();
        return use_journal;
}

const char *log_get_program_name(void) {
        return program_name;
}

static void log_to_journal(int level, int error, const char *file, int line, const char *func,
                           const char *image_id, const char *message_id, const char *message) {
        char priority[sizeof("PRIORITY=") + 3], code_line[sizeof("CODE_LINE=") + 12],
                err[sizeof("ERRNO=") + 12];
        _cleanup_(freep) char *m = NULL, *ident = NULL, *code_file = NULL, *code_func = NULL,
                *image = NULL, *mid = NULL;
        struct iovec iov[10];
        size_t n = 0;

        (void) snprintf(priority, sizeof priority, "PRIORITY=%i", level);
        (void) snprintf(code_line, sizeof code_line, "CODE_LINE=%i", line);
        if (asprintf(&m, "MESSAGE=%s", message) < 0 ||
            asprintf(&ident, "SYSLOG_IDENTIFIER=%s", program_name) < 0 ||
            asprintf(&code_file, "CODE_FILE=%s", file) < 0 ||
            asprintf(&code_func, "CODE_FUNC=%s", func) < 0)
                return;

        iov[n++] = (struct iovec) { m, strlen(m) };
        iov[n++] = (struct iovec) { priority, strlen(priority) };
        iov[n++] = (struct iovec) { ident, strlen(ident) };
        iov[n++] = (struct iovec) { code_file, strlen(code_file) };
        iov[n++] = (struct iovec) { code_line, strlen(code_line) };
        iov[n++] = (struct iovec) { code_func, strlen(code_func) };
        if (error != 0) {
                (void) snprintf(err, sizeof err, "ERRNO=%i", error);
                iov[n++] = (struct iovec) { err, strlen(err) };
        }
        if (image_id && asprintf(&image, "IMAGE_ID=%s", image_id) >= 0)
                iov[n++] = (struct iovec) { image, strlen(image) };
        if (message_id && asprintf(&mid, "MESSAGE_ID=%s", message_id) >= 0)
                iov[n++] = (struct iovec) { mid, strlen(mid) };

        (void) sd_journal_sendv(iov, (int) n);
}

static int log_dispatch(int level, int error, const char *file, int line, const char *func,
                        const char *image_id, const char *message_id, const char *format, va_list ap) {
        char buf[LOG_LINE_MAX];
        int saved = errno;

        error = abs(error);
        if (level > max_level)
                goto finish;

        if (use_journal < 0)
                use_journal = stderr_is_journal();

        errno = error; /* for %m */
        (void) vsnprintf(buf, sizeof buf, format, ap);

        if (use_journal)
                log_to_journal(level, error, file, line, func, image_id, message_id, buf);
        else
                (void) fprintf(stderr, "%s: %s\n", program_name, buf);

finish:
        errno = error != 0 ? error : saved;
        return -error;
}

int log_internal(int level, int error, const char *file, int line, const char *func, const char *format, ...) {
        va_list ap;
        int r;

        va_start(ap, format);
        r = log_dispatch(level, error, file, line, func, NULL, NULL, format, ap);
        va_end(ap);
        return r;
}

int log_image_internal(int level, int error, const char *file, int line, const char *func,
                       const char *image_id, const char *message_id, const char *format, ...) {
        va_list ap;
        int r;

        va_start(ap, format);
        r = log_dispatch(level, error, file, line, func, image_id, message_id, format, ap);
        va_end(ap);
        return r;
}
