/* SPDX-License-Identifier: MIT */

#include <ctype.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util.h"

char *url_redact_userinfo(const char *url) {
        const char *authority, *end, *at;
        char *copy;

        if (!url)
                return strdup("");
        authority = strstr(url, "://");
        if (!authority)
                return strdup(url);
        authority += 3;
        /* The authority ends at the first '/', '?' or '#'; an '@' after that is part of the path. */
        end = authority + strcspn(authority, "/?#");
        at = memrchr(authority, '@', (size_t) (end - authority));
        if (!at)
                return strdup(url);

        copy = malloc(strlen(url) + 1);
        if (!copy)
                return NULL;
        memcpy(copy, url, (size_t) (authority - url));
        strcpy(copy + (authority - url), at + 1);
        return copy;
}

int unhex_char(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -EINVAL;
}

bool memory_has_control(const void *p, size_t n) {
        const unsigned char *b = p;

        for (size_t i = 0; i < n; i++)
                if (b[i] < ' ' || b[i] == 0x7f)
                        return true;
        return false;
}

void token_strv_free(char **tokens) {
        if (!tokens)
                return;
        for (char **t = tokens; *t; t++) {
                explicit_bzero(*t, strlen(*t));
                free(*t);
        }
        free(tokens);
}

int read_token_file(const char *path, size_t max, char ***ret) {
        _cleanup_(fclosep) FILE *f = NULL;
        char **tokens = NULL, *line = NULL;
        size_t n_tokens = 0, size = 0;
        ssize_t k;
        int r = 0;

        f = fopen(path, "re");
        if (!f)
                return -errno;

        while (n_tokens < max && (k = getline(&line, &size, f)) >= 0) {
                char *t = line, **grown;
                size_t n = (size_t) k;

                while (n > 0 && isspace((unsigned char) t[n - 1]))
                        n--;
                while (n > 0 && isspace((unsigned char) *t))
                        t++, n--;
                if (n == 0 || *t == '#')
                        continue;
                if (n > TOKEN_MAX) {
                        r = -EFBIG;
                        break;
                }
                if (memory_has_control(t, n)) {
                        r = -EBADMSG;
                        break;
                }
                grown = realloc(tokens, (n_tokens + 2) * sizeof(char *));
                if (!grown || !(grown[n_tokens] = strndup(t, n))) {
                        tokens = grown ?: tokens;
                        r = -ENOMEM;
                        break;
                }
                tokens = grown;
                tokens[++n_tokens] = NULL;
        }
        if (line) {
                explicit_bzero(line, size);
                free(line);
        }
        if (r == 0 && ferror(f))
                r = -EIO;
        if (r == 0 && n_tokens == 0)
                r = -ENOMSG;
        if (r < 0) {
                if (tokens)
                        tokens[n_tokens] = NULL;
                token_strv_free(tokens);
                return r;
        }
        *ret = tokens;
        return 0;
}

int read_token_file_first(const char *path, char **ret) {
        char **tokens = NULL;
        int r;

        r = read_token_file(path, 2, &tokens);
        if (r < 0)
                return r;
        if (tokens[1]) {
                token_strv_free(tokens);
                return -EBADMSG;
        }
        *ret = tokens[0];
        free(tokens);
        return 0;
}

int free_and_strdup(char **dst, const char *src) {
        char *copy = NULL;

        if (src) {
                copy = strdup(src);
                if (!copy)
                        return -ENOMEM;
        }
        free(*dst);
        *dst = copy;
        return 0;
}

int buf_append(char **buf, size_t *len, size_t max, const void *data, size_t n) {
        if (n > max || *len > max - n)
                return -EFBIG;
        char *p = realloc(*buf, *len + n + 1);
        if (!p)
                return -ENOMEM;
        memcpy(p + *len, data, n);
        *len += n;
        p[*len] = 0;
        *buf = p;
        return 0;
}

ssize_t pread_retry(int fd, void *buf, size_t n, uint64_t offset) {
        ssize_t k;
        do
                k = pread(fd, buf, n, (off_t) offset);
        while (k < 0 && errno == EINTR);
        return k < 0 ? -errno : k;
}

int loop_write(int fd, const void *buf, size_t n) {
        const char *p = buf;

        while (n > 0) {
                ssize_t k = write(fd, p, n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -EIO;
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

int fsync_directory_fd(int dir_fd) {
        if (fsync(dir_fd) < 0)
                return -errno;
        return 0;
}

int mkdir_parents_and_self(const char *path, mode_t mode) {
        if (mkdir(path, mode) >= 0 || errno == EEXIST)
                return 0;
        if (errno != ENOENT)
                return -errno;

        /* A parent is missing: create it first, then retry. Recursion depth is bounded by the path. */
        _cleanup_(freep) char *parent = strdup(path);
        if (!parent)
                return -ENOMEM;
        char *slash = strrchr(parent, '/');
        if (!slash || slash == parent)
                return -ENOENT;
        *slash = 0;

        int r = mkdir_parents_and_self(parent, 0755);
        if (r < 0)
                return r;
        if (mkdir(path, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

void set_error_message(char **ret_error, const char *fmt, ...) {
        if (!ret_error || *ret_error)
                return;

        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(ret_error, fmt, ap) < 0)
                *ret_error = NULL; /* out of memory: the caller still returns its errno */
        va_end(ap);
}

int opendir_at(int dir_fd, DIR **ret) {
        int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;

        DIR *d = fdopendir(fd);
        if (!d) {
                int r = -errno;
                safe_close(fd);
                return r;
        }
        *ret = d;
        return 0;
}
