/* SPDX-License-Identifier: MIT */

/* Metadata in user.* extended attributes of the image files themselves, like Glance's xattr driver:
 * there is no database to get out of step with the files, and size and last_modified are simply the
 * file's. Glance kept only user.hits and relied on atime for the LRU; atime is unreliable under
 * noatime/relatime, so we also keep the access time and the checksum under user.imgcache.*, and fall
 * back to atime for files Glance left behind. */

#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "driver.h"
#include "image-id.h"
#include "store.h"

/* Set and removed again at open, to learn whether the filesystem takes user xattrs at all. */
#define XATTR_PROBE "user.imgcache.probe"

/* Room for "sha512:" and 128 hex digits, and for any decimal number we write. */
#define XATTR_VALUE_MAX 256

typedef struct XattrState {
        int dir_fd;
        char *path;
} XattrState;

static XattrState *xattr_state_free(XattrState *s) {
        if (!s)
                return NULL;

        safe_close(s->dir_fd);
        free(s->path);
        free(s);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(XattrState *, xattr_state_free);

static bool errno_is_xattr_unsupported(int e) {
        /* ENOTSUP and EOPNOTSUPP are the same value on Linux, but not by any standard. */
        return e == EOPNOTSUPP || e == ENOTSUP;
}

/* Opens an image file for attribute access. Never follows a symlink, never blocks on a FIFO, and turns
 * anything that is not a regular file into -ENOENT: such a thing is not an image. */
static int open_image(int dir_fd, const char *id, struct stat *ret_st) {
        _cleanup_(closep) int fd = -EBADF;
        struct stat st;

        fd = openat(dir_fd, id, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) {
                if (errno == ELOOP || errno == ENXIO)
                        return -ENOENT;
                return -errno;
        }

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -ENOENT;

        if (ret_st)
                *ret_st = st;
        return TAKE_FD(fd);
}

/* Reads attribute name into buf as a NUL-terminated string. Returns 1 when present, 0 when absent or
 * unusable (too large for any value we would write), negative errno on real failures. */
static int read_xattr(int fd, const char *name, char buf[static XATTR_VALUE_MAX]) {
        ssize_t n;

        n = fgetxattr(fd, name, buf, XATTR_VALUE_MAX - 1);
        if (n < 0) {
                if (errno == ENODATA || errno == ERANGE || errno_is_xattr_unsupported(errno))
                        return 0;
                return -errno;
        }

        buf[n] = 0;
        return 1;
}

/* Glance wrote str(int) through Python's xattr module; shell users write with setfattr, which may add a
 * trailing NUL or newline. Anything else reads as absent. */
static bool parse_decimal(const char *s, uint64_t *ret) {
        uint64_t v = 0;
        const char *p = s;

        if (!(*p >= '0' && *p <= '9'))
                return false;

        for (; *p >= '0' && *p <= '9'; p++) {
                unsigned d = (unsigned) (*p - '0');

                if (v > (UINT64_MAX - d) / 10)
                        return false;
                v = v * 10 + d;
        }

        for (; *p; p++)
                if (!strchr(" \t\n", *p))
                        return false;

        *ret = v;
        return true;
}

static int read_xattr_u64(int fd, const char *name, uint64_t *ret) {
        char buf[XATTR_VALUE_MAX];
        uint64_t v;
        int r;

        r = read_xattr(fd, name, buf);
        if (r <= 0)
                return r;

        if (!parse_decimal(buf, &v))
                return 0;

        *ret = v;
        return 1;
}

static int write_xattr_u64(int fd, const char *name, uint64_t v) {
        char buf[sizeof(uint64_t) * 3 + 1];
        int n;

        n = snprintf(buf, sizeof(buf), "%" PRIu64, v);
        /* Without the NUL, exactly as Glance wrote user.hits. */
        if (fsetxattr(fd, name, buf, (size_t) n, 0) < 0)
                return -errno;
        return 0;
}

static int write_xattr_string(int fd, const char *name, const char *value) {
        if (isempty(value)) {
                if (fremovexattr(fd, name) < 0 && errno != ENODATA)
                        return -errno;
                return 0;
        }

        if (fsetxattr(fd, name, value, strlen(value), 0) < 0)
                return -errno;
        return 0;
}

static int xattr_open(int dir_fd, const char *path, void **ret_state, char **ret_error) {
        _cleanup_(xattr_state_freep) XattrState *s = NULL;
        _cleanup_(closep) int fd = -EBADF;

        assert(dir_fd >= 0);
        assert(path);
        assert(ret_state);

        s = calloc(1, sizeof(XattrState));
        if (!s)
                return -ENOMEM;
        s->dir_fd = -EBADF;

        s->path = strdup(path);
        if (!s->path)
                return -ENOMEM;

        /* Our own copy, so the state never outlives the descriptor it works through. */
        s->dir_fd = fcntl(dir_fd, F_DUPFD_CLOEXEC, 3);
        if (s->dir_fd < 0)
                return -errno;

        /* The store creates the lock file before it opens us; creating it here as well keeps the driver
         * usable on its own. It is a regular file we own, so it is a fair stand-in for an image. */
        fd = openat(s->dir_fd, IMAGE_CACHE_LOCK_FILE,
                    O_RDONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0644);
        if (fd < 0) {
                int r = -errno;
                set_error_message(ret_error, "Failed to open %s/%s: %s", path, IMAGE_CACHE_LOCK_FILE, strerror(-r));
                return r;
        }

        if (fsetxattr(fd, XATTR_PROBE, "1", 1, 0) < 0) {
                int r = -errno;

                if (errno_is_xattr_unsupported(-r)) {
                        set_error_message(ret_error,
                                  "Filesystem of %s does not support user extended attributes "
                                  "(mount with user_xattr or use Driver=sqlite)", path);
                        return -EOPNOTSUPP;
                }

                set_error_message(ret_error, "Failed to set extended attribute %s on %s/%s: %s",
                          XATTR_PROBE, path, IMAGE_CACHE_LOCK_FILE, strerror(-r));
                return r;
        }

        /* Leaving the probe behind is harmless; failing to remove it is not worth failing open. */
        (void) fremovexattr(fd, XATTR_PROBE);

        *ret_state = TAKE_PTR(s);
        return 0;
}

static void xattr_close(void *state) {
        xattr_state_free(state);
}

/* Reads the record of one directory entry. Returns 1 with *e filled (id and checksum borrowed from the
 * caller's buffers), 0 when the entry is not an image, negative errno on failure. */
static int read_entry(int dir_fd, const struct dirent *de, CacheEntry *e,
                      char checksum[static XATTR_VALUE_MAX]) {
        _cleanup_(closep) int fd = -EBADF;
        struct stat st;
        uint64_t v;
        int r;

        /* Dot-files (.lock, editors' leftovers), cache.db*, incomplete/, invalid/, queue/ and anything
         * else that cannot be an image id. */
        if (!image_id_is_valid(de->d_name))
                return 0;

        if (de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
                return 0;

        /* Without d_type, look before opening: opening a device node may have side effects. */
        if (de->d_type == DT_UNKNOWN) {
                if (fstatat(dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        return errno == ENOENT ? 0 : -errno;
                if (!S_ISREG(st.st_mode))
                        return 0;
        }

        fd = open_image(dir_fd, de->d_name, &st);
        if (fd == -ENOENT)
                return 0; /* vanished meanwhile, or not a regular file after all */
        if (fd < 0)
                return fd;

        *e = (CacheEntry) {
                .id = (char *) de->d_name,
                .size = (uint64_t) st.st_size,
                .last_modified = timespec_to_usec(&st.st_mtim),
                .last_accessed = timespec_to_usec(&st.st_atim),
        };

        r = read_xattr_u64(fd, XATTR_HITS, &v);
        if (r < 0)
                return r;
        if (r > 0)
                e->hits = v;

        r = read_xattr_u64(fd, XATTR_LAST_ACCESSED, &v);
        if (r < 0)
                return r;
        if (r > 0)
                e->last_accessed = v;

        r = read_xattr(fd, XATTR_CHECKSUM, checksum);
        if (r < 0)
                return r;
        if (r > 0 && !isempty(checksum))
                e->checksum = checksum;

        return 1;
}

static int xattr_load(void *state, DriverLoadFunc f, void *userdata) {
        _cleanup_(closedirp) DIR *d = NULL;
        XattrState *s = state;
        struct dirent *de;
        int r;

        assert(s);
        assert(f);

        r = opendir_at(s->dir_fd, &d);
        if (r < 0)
                return r;

        for (errno = 0; (de = readdir(d)); errno = 0) {
                char checksum[XATTR_VALUE_MAX];
                CacheEntry e;

                r = read_entry(dirfd(d), de, &e, checksum);
                if (r < 0)
                        return r;
                if (r == 0)
                        continue;

                r = f(&e, userdata);
                if (r < 0)
                        return r;
        }
        if (errno > 0)
                return -errno;

        return 0;
}

/* Extended attributes have no transactions. To come close to all-or-nothing, every file is checked
 * first, so the common failure (an image that vanished) changes nothing; a write error midway (ENOSPC
 * for the attribute block, EIO) can still leave earlier records updated. */
static int xattr_put(void *state, const CacheEntry *entries, size_t n) {
        XattrState *s = state;

        assert(s);
        assert(entries || n == 0);

        for (size_t i = 0; i < n; i++) {
                struct stat st;

                /* The id becomes a path component here: nothing but a valid id may reach openat(). */
                if (!entries[i].id || !image_id_is_valid(entries[i].id))
                        return -EINVAL;

                if (fstatat(s->dir_fd, entries[i].id, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        return -errno;
                if (!S_ISREG(st.st_mode))
                        return -ENOENT;
        }

        for (size_t i = 0; i < n; i++) {
                const CacheEntry *e = entries + i;
                _cleanup_(closep) int fd = -EBADF;
                int r;

                fd = open_image(s->dir_fd, e->id, /* ret_st= */ NULL);
                if (fd < 0)
                        return fd;

                /* size and last_modified are the file's own and need no attribute. */
                r = write_xattr_string(fd, XATTR_CHECKSUM, e->checksum);
                if (r < 0)
                        return r;
                r = write_xattr_u64(fd, XATTR_LAST_ACCESSED, e->last_accessed);
                if (r < 0)
                        return r;
                r = write_xattr_u64(fd, XATTR_HITS, e->hits);
                if (r < 0)
                        return r;
        }

        return 0;
}

static int xattr_remove(void *state, const char *const *ids, size_t n) {
        /* The attributes went away with the files. */
        return 0;
}

static int xattr_update_hits(void *state, const HitUpdate *updates, size_t n) {
        XattrState *s = state;

        assert(s);
        assert(updates || n == 0);

        for (size_t i = 0; i < n; i++)
                if (!updates[i].id || !image_id_is_valid(updates[i].id))
                        return -EINVAL;

        for (size_t i = 0; i < n; i++) {
                const HitUpdate *u = updates + i;
                _cleanup_(closep) int fd = -EBADF;
                int r;

                fd = open_image(s->dir_fd, u->id, /* ret_st= */ NULL);
                if (fd == -ENOENT)
                        continue; /* removed after the hit was counted */
                if (fd < 0)
                        return fd;

                r = write_xattr_u64(fd, XATTR_LAST_ACCESSED, u->last_accessed);
                if (r < 0)
                        return r;
                r = write_xattr_u64(fd, XATTR_HITS, u->hits);
                if (r < 0)
                        return r;
        }

        return 0;
}

const DriverOps driver_xattr_ops = {
        .name = "xattr",
        .records_are_files = true,
        .open = xattr_open,
        .close = xattr_close,
        .load = xattr_load,
        .put = xattr_put,
        .remove = xattr_remove,
        .update_hits = xattr_update_hits,
};
