/* SPDX-License-Identifier: MIT */
#pragma once

/* Small helpers every part of imgcache uses: scope-based cleanup, fd handling, time.
 * Written for this project; the idioms follow systemd's coding style. */

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/types.h>
#include <unistd.h>

typedef uint64_t usec_t;
#define USEC_INFINITY ((usec_t) UINT64_MAX)
#define USEC_PER_SEC  ((usec_t) 1000000ULL)
#define USEC_PER_MSEC ((usec_t) 1000ULL)
#define NSEC_PER_USEC ((uint64_t) 1000ULL)

#define _cleanup_(f) __attribute__((cleanup(f)))

/* Intrusive doubly linked lists: item->name##_prev / item->name##_next, head a pointer to the first. */
#define LIST_PREPEND(name, head, item)                                  \
        do {                                                            \
                (item)->name##_prev = NULL;                             \
                (item)->name##_next = (head);                           \
                if (head)                                               \
                        (head)->name##_prev = (item);                   \
                (head) = (item);                                        \
        } while (0)
#define LIST_REMOVE(name, head, item)                                   \
        do {                                                            \
                if ((item)->name##_prev)                                \
                        (item)->name##_prev->name##_next = (item)->name##_next; \
                else                                                    \
                        (head) = (item)->name##_next;                   \
                if ((item)->name##_next)                                \
                        (item)->name##_next->name##_prev = (item)->name##_prev; \
                (item)->name##_prev = (item)->name##_next = NULL;       \
        } while (0)

/* The struct of type t whose member m is at p. */
#define container_of(p, t, m) ((t *) ((char *) (p) - offsetof(t, m)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _pure_ __attribute__((pure))
#define _warn_unused_result_ __attribute__((warn_unused_result))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
/* GLib defines the same two; whichever header comes first wins, and they agree. */
#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif
#ifndef MAX
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif

/* Hand ownership of a pointer or fd out of a _cleanup_ variable. */
#define TAKE_PTR(p)                             \
        ({                                      \
                __typeof__(p) _p_ = (p);        \
                (p) = NULL;                     \
                _p_;                            \
        })
/* Frees a and takes b's pointer in its place (b becomes NULL). */
#define free_and_replace(a, b)                  \
        do {                                    \
                free(a);                        \
                (a) = TAKE_PTR(b);              \
        } while (0)
/* free() that returns NULL, for "p = mfree(p)". */
static inline void *mfree(void *p) {
        free(p);
        return NULL;
}
#define TAKE_FD(fd)                             \
        ({                                      \
                int _fd_ = (fd);                \
                (fd) = -EBADF;                  \
                _fd_;                           \
        })

/* Declares func##p(type *p) calling func(*p) when *p is set. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                 \
        static inline void func##p(type *p) {                   \
                if (*p)                                         \
                        func(*p);                               \
        }

static inline void freep(void *p) {
        free(*(void **) p);
}

static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void) close(fd);
                errno = saved;
        }
        return -EBADF;
}

static inline void closep(int *fd) {
        *fd = safe_close(*fd);
}

static inline void fclosep(FILE **f) {
        if (*f)
                (void) fclose(*f);
}

static inline bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}

/* The word for n things: one or many ("1 image", "2 images"). */
static inline const char *plural(uint64_t n, const char *one, const char *many) {
        return n == 1 ? one : many;
}

static inline bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return streq(a, b);
}

static inline const char *strempty(const char *s) {
        return s ?: "";
}

static inline bool isempty(const char *s) {
        return !s || !*s;
}

/* errno as a negative value, never 0, for code paths where a libc call failed. */
static inline int negative_errno(void) {
        return errno > 0 ? -errno : -EIO;
}

static inline usec_t timespec_to_usec(const struct timespec *ts) {
        return (usec_t) ts->tv_sec * USEC_PER_SEC + (usec_t) ts->tv_nsec / NSEC_PER_USEC;
}

/* a + b, saturating at USEC_INFINITY. */
static inline usec_t usec_add(usec_t a, usec_t b) {
        return a > USEC_INFINITY - b ? USEC_INFINITY : a + b;
}

static inline usec_t now_usec(clockid_t clock) {
        struct timespec ts;
        if (clock_gettime(clock, &ts) < 0)
                abort();  /* only with an invalid clock id: a programming error */
        return timespec_to_usec(&ts);
}

/* Replaces *dst with a copy of src (or NULL). Returns -ENOMEM on failure, leaving *dst alone. */
int free_and_strdup(char **dst, const char *src);

/* A copy of url without its userinfo ("scheme://user:pass@host/…" → "scheme://host/…"), for messages: a
 * URL with credentials may be logged or shown only this way. NULL gives "", NULL return: out of memory. */
char *url_redact_userinfo(const char *url);

/* Whether the n bytes at p hold a control byte (below 0x20, or DEL), e.g. a NUL or a line break. */
/* The value of one hex digit of either case, or -EINVAL. */
int unhex_char(char c);
bool memory_has_control(const void *p, size_t n);

/* Secret tokens from a file (TokenFile=, ManagementTokenFile=, ReadTokenFile=): one per line, surrounding
 * white space dropped, blank lines and lines starting with '#' skipped; a token must be a usable header
 * value (no control bytes, at most TOKEN_MAX bytes). At most max tokens are read (1: the first one).
 * Returns a NULL-terminated array (free with token_strv_free(), which wipes them); -ENOMSG when the file
 * holds none, -EBADMSG for a line that is no token, -EFBIG for one too long. */
#define TOKEN_MAX 8192
int read_token_file(const char *path, size_t max, char ***ret);
void token_strv_free(char **tokens);
/* The token of a file that holds one secret; -EBADMSG when it holds more than one. */
int read_token_file_first(const char *path, char **ret);

/* pread() retried on EINTR: the bytes read, 0 at the end, or -errno. */
ssize_t pread_retry(int fd, void *buf, size_t n, uint64_t offset);
/* Appends n bytes of data to *buf, *len bytes long and kept NUL-terminated, growing it but not past max
 * bytes (SIZE_MAX: no bound): -EFBIG (nothing appended) or -ENOMEM. For bodies gathered from curl. */
int buf_append(char **buf, size_t *len, size_t max, const void *data, size_t n);
/* Writes all of buf, retrying on EINTR and short writes. */
int loop_write(int fd, const void *buf, size_t n);

/* fsync() of the directory containing a just-renamed entry, so the rename survives a crash. */
int fsync_directory_fd(int dir_fd);

/* mkdir -p: creates path and any missing parents with mode. Existing directories are fine. */
int mkdir_parents_and_self(const char *path, mode_t mode);

/* For library code that explains failures to the operator: formats a message into *ret_error unless
 * ret_error is NULL or already holds one (the first, most specific explanation wins). */
void set_error_message(char **ret_error, const char *fmt, ...) _printf_(2, 3);

/* A fresh directory stream over dir_fd's directory: it starts at the beginning and leaves dir_fd's own
 * offset alone, so walks never disturb each other. */
int opendir_at(int dir_fd, DIR **ret);

static inline void closedirp(DIR **d) {
        if (*d)
                (void) closedir(*d);
}
