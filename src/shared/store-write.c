/* SPDX-License-Identifier: MIT */

#include <fcntl.h>
#include <linux/falloc.h>
#include <glib.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "image-id.h"
#include "store-internal.h"

/* ---- the upstream's validator of a partial file --------------------------------------------------- */

/* The ETag goes into a user xattr of the partial file; where the filesystem has none (tmpfs before
 * Linux 6.6), into incomplete/.<id>.etag, which no image id can be (ids never start with a dot). */
#define PARTIAL_ETAG_XATTR "user.imgcache.etag"

static int etag_sidecar_name(const char *id, char buf[static IMAGE_ID_MAX + 8]) {
        int n = snprintf(buf, IMAGE_ID_MAX + 8, ".%s.etag", id);
        return n < IMAGE_ID_MAX + 8 ? 0 : -ENAMETOOLONG;
}

static void partial_forget_etag(int incomplete_fd, const char *id) {
        char side[IMAGE_ID_MAX + 8];
        if (etag_sidecar_name(id, side) >= 0)
                (void) unlinkat(incomplete_fd, side, 0);
}

/* If-Range needs a strong validator (RFC 9110 13.1.5); W/"…" is weak. */
bool partial_etag_is_strong(const char *etag) {
        size_t n = etag ? strlen(etag) : 0;
        return n >= 2 && n <= PARTIAL_ETAG_MAX && etag[0] == '"' && etag[n - 1] == '"' && !strpbrk(etag, "\r\n");
}

int cache_write_set_etag(CacheWrite *w, const char *etag) {
        char side[IMAGE_ID_MAX + 8];
        int r = etag_sidecar_name(w->id, side);
        if (r < 0)
                return r;

        if (!partial_etag_is_strong(etag)) {
                (void) fremovexattr(w->fd, PARTIAL_ETAG_XATTR);
                (void) unlinkat(w->incomplete_fd, side, 0);
                return 0;
        }
        if (fsetxattr(w->fd, PARTIAL_ETAG_XATTR, etag, strlen(etag), 0) >= 0) {
                (void) unlinkat(w->incomplete_fd, side, 0);
                return 0;
        }
        _cleanup_(closep) int fd = openat(w->incomplete_fd, side, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
                                          0644);
        if (fd < 0)
                return -errno;
        return loop_write(fd, etag, strlen(etag));
}

int image_cache_partial_info(ImageCache *c, const char *id, uint64_t *ret_size, char **ret_etag) {
        char side[IMAGE_ID_MAX + 8], etag[PARTIAL_ETAG_MAX + 1];
        struct stat st;

        if (!image_id_is_valid(id) || etag_sidecar_name(id, side) < 0)
                return -EINVAL;
        _cleanup_(closep) int fd = openat(c->incomplete_fd, id, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || st.st_size <= 0)
                return -ENOENT;

        ssize_t n = fgetxattr(fd, PARTIAL_ETAG_XATTR, etag, PARTIAL_ETAG_MAX);
        if (n < 0) {
                _cleanup_(closep) int sfd = openat(c->incomplete_fd, side, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
                n = sfd >= 0 ? read(sfd, etag, PARTIAL_ETAG_MAX) : -1;
        }
        if (n <= 0)
                return -ENOENT;
        etag[n] = 0;
        if (!partial_etag_is_strong(etag))
                return -ENOENT;

        char *copy = strdup(etag);
        if (!copy)
                return -ENOMEM;
        *ret_size = (uint64_t) st.st_size;
        *ret_etag = copy;
        return 0;
}

int image_cache_forget_partial(ImageCache *c, const char *id) {
        if (!image_id_is_valid(id))
                return -EINVAL;
        if (image_cache_is_being_cached(c, id))
                return -EBUSY;
        partial_forget_etag(c->incomplete_fd, id);
        if (unlinkat(c->incomplete_fd, id, 0) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

/* ---- writing ------------------------------------------------------------------------------------ */

void cache_write_free(CacheWrite *w) {
        if (!w)
                return;
        safe_close(w->fd);
        hasher_free(w->hasher);
        free(w->id);
        free(w);
}

/* A write of id that nobody else has: checks and allocation shared by begin and resume. The file is the
 * caller's to open. */
static int write_new(ImageCache *c, const char *id, const Checksum *expected, CacheWrite **ret) {
        if (!image_id_is_valid(id))
                return -EINVAL;
        if (image_cache_is_cached(c, id))
                return -EEXIST;
        if (image_cache_is_being_cached(c, id))
                return -EBUSY;

        CacheWrite *w = calloc(1, sizeof(CacheWrite));
        if (!w)
                return -ENOMEM;
        *w = (CacheWrite) {
                .id = strdup(id),
                .fd = -EBADF,
                .incomplete_fd = c->incomplete_fd,
                .dir_fd = c->dir_fd,
                .has_expected = expected,
        };
        if (expected)
                w->expected = *expected;

        int r = w->id ? hasher_new(expected ? expected->algo : CHECKSUM_SHA256, &w->hasher) : -ENOMEM;
        if (r < 0) {
                cache_write_free(w);
                return r;
        }
        *ret = w;
        return 0;
}

int image_cache_begin_write(ImageCache *c, const char *id, const Checksum *expected, CacheWrite **ret) {
        CacheWrite *w;
        int r = write_new(c, id, expected, &w);
        if (r < 0)
                return r;

        /* No live write owns a leftover partial file (we checked above): it is from a crash. Start over. */
        (void) unlinkat(c->incomplete_fd, id, 0);
        partial_forget_etag(c->incomplete_fd, id);
        w->fd = openat(c->incomplete_fd, id, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (w->fd < 0) {
                r = -errno;
                cache_write_free(w);
                return r;
        }

        g_hash_table_insert(c->writes, w->id, w);
        *ret = w;
        return 0;
}

/* Starts writeback of every CACHE_WRITE_BEHIND bytes as they are written: the disk works while the
 * download goes on, dirty pages do not pile up to the kernel's threshold (GBs on a large host), and the
 * fsync at sealing waits for the tail only. Only a hint: its failure shows, if at all, at the fsync. */
static void write_behind(CacheWrite *w) {
        if (w->size - w->written_back < CACHE_WRITE_BEHIND)
                return;
        (void) sync_file_range(w->fd, (off_t) w->written_back, (off_t) (w->size - w->written_back),
                               SYNC_FILE_RANGE_WRITE);
        w->written_back = w->size;
}

int cache_write_append_unhashed(CacheWrite *w, const void *data, size_t size) {
        if (w->sealed)
                return -ESTALE;

        int r = loop_write(w->fd, data, size);
        if (r < 0)
                return r;
        w->size += size;
        write_behind(w);
        return 0;
}

int cache_write_hash(CacheWrite *w, const void *data, size_t size) {
        if (w->sealed || w->finished)
                return -ESTALE;

        int r = hasher_update(w->hasher, data, size);
        if (r < 0)
                return r;
        w->hashed += size;
        return 0;
}

int cache_write_append(CacheWrite *w, const void *data, size_t size) {
        int r = cache_write_append_unhashed(w, data, size);
        if (r < 0)
                return r;
        return cache_write_hash(w, data, size);
}

int cache_write_reserve(CacheWrite *w, uint64_t total) {
        if (total <= w->size || total > INT64_MAX)
                return 0;
        if (fallocate(w->fd, FALLOC_FL_KEEP_SIZE, (off_t) w->size, (off_t) (total - w->size)) >= 0) {
                w->reserved_end = total;
                return 0;
        }
        if (errno == ENOSPC || errno == EDQUOT)
                return -ENOSPC;
        /* EOPNOTSUPP and the like: the blocks are then allocated as the bytes arrive, as without. */
        return 0;
}

int cache_write_open_reader(const CacheWrite *w, int *ret_fd) {
        int fd = openat(w->sealed ? w->dir_fd : w->incomplete_fd, w->id, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        *ret_fd = fd;
        return 0;
}

uint64_t cache_write_size(const CacheWrite *w) {
        return w->size;
}

int cache_write_seal(CacheWrite *w) {
        if (w->sealed)
                return 0;

        if (!w->finished) {
                /* A digest of other bytes than the file's would be worse than none. */
                if (w->hashed != w->size)
                        return -EIO;
                int k = hasher_finish(w->hasher, &w->actual);
                if (k < 0)
                        return k;
                w->finished = true;
        }
        int r;
        if (w->has_expected && !checksum_equal(&w->expected, &w->actual))
                return -EBADMSG;

        /* Data on disk before the name: after a crash the name never points at a torn file. */
        if (fsync(w->fd) < 0)
                return -errno;
        if (renameat(w->incomplete_fd, w->id, w->dir_fd, w->id) < 0)
                return -errno;
        r = fsync_directory_fd(w->dir_fd);
        if (r < 0)
                return r;

        w->sealed = true;
        return 0;
}

/* Index and persist a sealed image; the file is already in place. */
static int index_sealed(ImageCache *c, CacheWrite *w) {
        struct stat st;
        if (fstat(w->fd, &st) < 0)
                return -errno;

        _cleanup_(freep) IndexEntry *ie = calloc(1, sizeof(IndexEntry));
        if (!ie)
                return -ENOMEM;
        usec_t now = now_usec(CLOCK_REALTIME);
        ie->e = (CacheEntry) {
                .id = strdup(w->id),
                .size = w->size,
                .last_accessed = now,
                .last_modified = timespec_to_usec(&st.st_mtim),
                .checksum = checksum_to_string(&w->actual),
        };
        if (!ie->e.id || !ie->e.checksum) {
                cache_entry_done(&ie->e);
                return -ENOMEM;
        }

        int r = c->driver->put(c->driver_state, &ie->e, 1);
        if (r < 0) {
                cache_entry_done(&ie->e);
                return r;
        }

        index_insert(c, TAKE_PTR(ie));
        (void) unlinkat(c->queue_fd, w->id, 0); /* cached now, so no longer queued */

        if (c->observer.image_added)
                c->observer.image_added(c, image_cache_get(c, w->id), c->observer.userdata);
        return 0;
}

static void write_forget(ImageCache *c, CacheWrite *w) {
        g_hash_table_remove(c->writes, w->id);
        cache_write_free(w);
}

/* Where the write's file is now: incomplete/ until sealed, the cache directory after. */
static int write_dir_fd(const ImageCache *c, const CacheWrite *w) {
        return w->sealed ? c->dir_fd : c->incomplete_fd;
}

int image_cache_commit_write(ImageCache *c, CacheWrite *w) {
        int r = cache_write_seal(w);
        if (r >= 0)
                r = index_sealed(c, w);
        /* Wherever it got to, the file must not stay servable without metadata we trust. */
        if (r < 0)
                (void) move_file(write_dir_fd(c, w), w->id, c->invalid_fd, w->id);
        partial_forget_etag(c->incomplete_fd, w->id);
        write_forget(c, w);
        return r;
}

int image_cache_resume_write(ImageCache *c, const char *id, const Checksum *expected, uint64_t *ret_size,
                             CacheWrite **ret) {
        CacheWrite *w;
        int r = write_new(c, id, expected, &w);
        if (r < 0)
                return r;

        /* Read-write: the digest is rebuilt from the same fd. */
        w->fd = openat(c->incomplete_fd, id, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (w->fd < 0) {
                r = -errno;
                goto fail;
        }
        struct stat st;
        if (fstat(w->fd, &st) < 0) {
                r = -errno;
                goto fail;
        }
        if (!S_ISREG(st.st_mode)) {
                r = -ENOENT;
                goto fail;
        }
        if (lseek(w->fd, 0, SEEK_END) < 0) {
                r = -errno;
                goto fail;
        }
        w->size = (uint64_t) st.st_size;

        g_hash_table_insert(c->writes, w->id, w);
        *ret_size = w->size;
        *ret = w;
        return 0;

fail:
        cache_write_free(w);
        return r;
}

int cache_write_rehash(CacheWrite *w) {
        if (w->sealed || w->finished)
                return -ESTALE;

        Hasher *h = NULL;
        int r = checksum_fd(w->fd, hasher_algo(w->hasher), w->size, &h);
        if (r < 0)
                return r;

        /* checksum_fd() stops early at EOF: the file must still hold what we counted. */
        struct stat st;
        if (fstat(w->fd, &st) < 0 || (uint64_t) st.st_size != w->size) {
                hasher_free(h);
                return -EIO;
        }
        hasher_free(w->hasher);
        w->hasher = h;
        w->hashed = w->size;
        return 0;
}

/* A write that stops short gives back the blocks reserved past its end, so a partial file kept for a
 * resume or as evidence holds only the bytes it has. A truncation to the size it has releases them on
 * ext4 and XFS, whose hole punching stops at the end of the file; tmpfs needs the punched hole. */
static void write_release_reserve(CacheWrite *w) {
        if (w->reserved_end > w->size && !w->sealed) {
                (void) fallocate(w->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) w->size,
                                 (off_t) (w->reserved_end - w->size));
                (void) ftruncate(w->fd, (off_t) w->size);
        }
        w->reserved_end = 0;
}

void image_cache_suspend_write(ImageCache *c, CacheWrite *w) {
        if (!w)
                return;
        if (w->sealed) {
                /* Renamed into place but never indexed: not servable, nothing to resume either. */
                image_cache_abort_write(c, w);
                return;
        }
        write_release_reserve(w);
        write_forget(c, w);
}

int cache_write_digest(const CacheWrite *w, Checksum *ret) {
        if (!w->finished)
                return -ESTALE;
        *ret = w->actual;
        return 0;
}

void image_cache_abort_write(ImageCache *c, CacheWrite *w) {
        if (!w)
                return;
        write_release_reserve(w);
        (void) move_file(write_dir_fd(c, w), w->id, c->invalid_fd, w->id);
        partial_forget_etag(c->incomplete_fd, w->id);
        write_forget(c, w);
}

void image_cache_discard_write(ImageCache *c, CacheWrite *w) {
        if (!w)
                return;
        (void) unlinkat(write_dir_fd(c, w), w->id, 0);
        partial_forget_etag(c->incomplete_fd, w->id);
        write_forget(c, w);
}
