/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "checksum.h"
#include "config.h"
#include "driver.h"
#include "util.h"

/* The image cache: a directory laid out like Glance's (complete images named by id, incomplete/,
 * invalid/, queue/), metadata through a driver, an in-memory index, batched hit accounting. It knows
 * nothing of D-Bus or HTTP. One process owns a directory at a time (flock on .lock).
 *
 * Threads: an ImageCache is not thread-safe; every image_cache_*() call runs on the owner's thread. The
 * cache_write_*() calls on one CacheWrite (append, seal, rehash, digest, size, id, set_etag,
 * open_reader) touch nothing but that write's own fds and files, so a worker thread may make them while
 * it alone holds the write (or two, one appending unhashed and one hashing: below); the owner's thread must
 * not use the write meanwhile, and hands it back (commit, suspend, abort, discard) on its own thread. */

typedef struct ImageCache ImageCache;
typedef struct CacheWrite CacheWrite;

typedef enum RemoveReason {
        REMOVE_DELETED,
        REMOVE_PRUNED,
        REMOVE_INVALID,
        _REMOVE_REASON_MAX,
        _REMOVE_REASON_INVALID = -EINVAL,
} RemoveReason;

const char *remove_reason_to_string(RemoveReason r); /* "deleted", "pruned", "invalid" */

/* Told about every image entering or leaving the cache, after the fact. */
typedef struct ImageCacheObserver {
        void (*image_added)(ImageCache *c, const CacheEntry *e, void *userdata);
        void (*image_removed)(ImageCache *c, const char *id, uint64_t size, RemoveReason reason, void *userdata);
        void *userdata;
} ImageCacheObserver;

#define IMAGE_CACHE_LOCK_FILE ".lock"
#define IMAGE_CACHE_INCOMPLETE_DIR "incomplete"
#define IMAGE_CACHE_INVALID_DIR "invalid"
#define IMAGE_CACHE_QUEUE_DIR "queue"

/* Opens (creating when missing) the cache directory at path, takes its lock, loads the metadata and
 * reconciles it with the files. A clear message for the operator goes to *ret_error on failure:
 * -EBUSY another process holds the directory, -EOPNOTSUPP no user xattrs (xattr driver), … */
int image_cache_open(const char *path, DriverKind driver, ImageCache **ret, char **ret_error);
/* Flushes batched hits and closes. Returns NULL. */
ImageCache *image_cache_close(ImageCache *c);
static inline void image_cache_closep(ImageCache **c) {
        image_cache_close(*c);
}

void image_cache_set_observer(ImageCache *c, const ImageCacheObserver *o);
const char *image_cache_path(const ImageCache *c);
DriverKind image_cache_driver(const ImageCache *c);

/* The filesystem holding the cache: its size and the bytes an unprivileged writer may still use. */
int image_cache_fs_space(const ImageCache *c, uint64_t *ret_size, uint64_t *ret_available);
/* MaxSize (or any limit given as bytes or as a share of the cache filesystem) in bytes. The one
 * resolution every caller uses: a share of a filesystem that cannot be examined is an error (-errno),
 * never a guess, so that Prune does not empty the cache and a fill does not run unbounded. */
int image_cache_resolve_limit(const ImageCache *c, const SizeLimit *limit, uint64_t *ret);

/* What reconciliation did at open, for the log. */
typedef struct ReconcileStats {
        unsigned adopted;  /* files without metadata, now indexed */
        unsigned dropped;  /* metadata without a file, forgotten */
        unsigned resized;  /* metadata whose size disagreed with the file */
} ReconcileStats;
ReconcileStats image_cache_reconcile_stats(const ImageCache *c);

/* Lookups over the in-memory index; no I/O. */
bool image_cache_is_cached(const ImageCache *c, const char *id);
bool image_cache_is_being_cached(const ImageCache *c, const char *id);
bool image_cache_is_queued(const ImageCache *c, const char *id);
const CacheEntry *image_cache_get(const ImageCache *c, const char *id); /* borrowed; NULL when not cached */
uint64_t image_cache_size(const ImageCache *c);                        /* bytes of complete images */
size_t image_cache_count(const ImageCache *c);
uint64_t image_cache_hit_count(const ImageCache *c, const char *id);   /* 0 when not cached */

/* Borrowed pointers to every entry, sorted by id; free the array (not the entries) with free(). */
int image_cache_list(const ImageCache *c, const CacheEntry ***ret, size_t *ret_n);

/* Reading. open_for_read counts a hit (batched in memory); record_hit counts one for a reader that
 * already has the file open (the HTTP server). Neither writes to disk. */
int image_cache_open_for_read(ImageCache *c, const char *id, int *ret_fd);
/* Opens a cached image without counting a hit (for a reader that counts hits when it serves them);
 * -ENOENT when it is not cached. */
int image_cache_open_file(ImageCache *c, const char *id, int *ret_fd);
int image_cache_record_hit(ImageCache *c, const char *id);
/* Writes the batched hits in one transaction. */
int image_cache_flush(ImageCache *c);
bool image_cache_has_unflushed_hits(const ImageCache *c);

/* Pins keep an image from being pruned or evicted; counted, so nest. */
int image_cache_pin(ImageCache *c, const char *id);
void image_cache_unpin(ImageCache *c, const char *id);
bool image_cache_is_pinned(const ImageCache *c, const char *id);

/* Removing. delete returns -ENOENT when the image is not cached. */
int image_cache_delete(ImageCache *c, const char *id);
int image_cache_delete_all(ImageCache *c, unsigned *ret_n);
/* Least recently used first until the cache holds at most max_size bytes; pinned images are skipped.
 * Glance's semantics: max_size 0 empties the cache. */
int image_cache_prune(ImageCache *c, uint64_t max_size, unsigned *ret_files, uint64_t *ret_bytes);
/* Making room, for an image about to be written (incoming bytes) or for Prune (incoming 0): evicts
 * least recently used unpinned images until the cache holds at most max_size - incoming bytes
 * (UINT64_MAX: unbounded) and keep_free + incoming bytes of the filesystem are free. Says what it evicted
 * and what it could not reach; an error is the first failure, after evicting what it could. */
typedef struct SpaceResult {
        unsigned files;              /* images evicted */
        uint64_t bytes;              /* their bytes */
        uint64_t pinned_over_max;    /* bytes above max_size that only pinned images hold */
        uint64_t keep_free_missing;  /* bytes still missing from keep_free once nothing unpinned is left */
} SpaceResult;
int image_cache_make_room(ImageCache *c, uint64_t incoming, uint64_t max_size, uint64_t keep_free, SpaceResult *ret);
/* Removes everything in invalid/ and incomplete/ files untouched for longer than stall_time that no
 * write of this process owns. */
int image_cache_clean(ImageCache *c, usec_t stall_time, unsigned *ret_stalled, unsigned *ret_invalid);
/* Re-hashes a cached image against its recorded checksum, in steps for an event loop (the daemon's
 * Verify, src/daemon/verify.c): begin on the loop (opens the file, says which digest to compute),
 * checksum_fd() on a worker thread, end on the loop (applies the verdict). end returns 1 good, 0 bad
 * (moved to invalid/), -ENOENT not cached (begin too); with no recorded checksum, the one computed is
 * recorded and 1 returned. */
int image_cache_verify_begin(ImageCache *c, const char *id, int *ret_fd, ChecksumAlgo *ret_algo);
int image_cache_verify_end(ImageCache *c, const char *id, const Checksum *actual);

/* The queue: queue/<id> markers, mtime = queue time, oldest first. A marker is empty (Glance's), or holds
 * the checksum the image is expected to have, as one line "algo:hex\n"; content that is not a checksum
 * counts as none. Glance-compatible tools see a marker either way. */
#define QUEUE_MARKER_MAX 256
typedef struct QueuedImage {
        char *id;
        usec_t queued_at;
        bool has_checksum;
        Checksum checksum;       /* the expected checksum, when has_checksum */
} QueuedImage;
void queued_images_free(QueuedImage *q, size_t n);
int image_cache_list_queued(const ImageCache *c, QueuedImage **ret, size_t *ret_n);
size_t image_cache_queued_count(const ImageCache *c); /* without reading the markers */
/* The checksum stored with a queued image: 1 with *ret set, 0 when it was queued without one, -ENOENT
 * when it is not queued. */
int image_cache_queued_checksum(const ImageCache *c, const char *id, Checksum *ret);
/* 1 queued; 0 already queued or cached. expected may be NULL. The marker appears whole or not at all. */
int image_cache_queue(ImageCache *c, const char *id, const Checksum *expected);
int image_cache_dequeue(ImageCache *c, const char *id);  /* 1 removed; 0 was not queued */
int image_cache_dequeue_all(ImageCache *c, unsigned *ret_n);

/* Writing: incomplete/<id> (O_EXCL) → append (hashing) → seal (verify, fsync, rename, fsync dir) →
 * commit (metadata). begin_write fails with -EEXIST when the image is cached and -EBUSY when this
 * process is writing it already. expected may be NULL; the digest is then sha256 and recorded. */
int image_cache_begin_write(ImageCache *c, const char *id, const Checksum *expected, CacheWrite **ret);
int cache_write_append(CacheWrite *w, const void *data, size_t size);
/* The two halves of cache_write_append(), for a caller that writes on one thread and hashes on another
 * (they touch disjoint parts of w): the digest must be fed the bytes written, in order, before the seal,
 * which fails with -EIO otherwise. */
int cache_write_append_unhashed(CacheWrite *w, const void *data, size_t size);
int cache_write_hash(CacheWrite *w, const void *data, size_t size);
uint64_t cache_write_size(const CacheWrite *w);
/* Reserves the disk blocks of an image whose total size is known (fallocate, keeping the file's size):
 * a fill that cannot fit fails at its start instead of after gigabytes, and concurrent fills
 * see each other's space taken. -ENOSPC (also for a quota) when the room is not there; 0 where the
 * filesystem cannot preallocate, which changes nothing. Suspend and abort give the reserved tail back. */
int cache_write_reserve(CacheWrite *w, uint64_t total);
/* Finishes the digest and compares it with the expected one (-EBADMSG on mismatch), then fsyncs and
 * renames into place. Touches nothing but w's own files, so it may run on a worker thread. */
int cache_write_seal(CacheWrite *w);
/* Records a sealed write in the index and the driver and frees w. If w was not sealed yet, seals it
 * first. On any failure the file goes to invalid/ and w is freed all the same. */
int image_cache_commit_write(ImageCache *c, CacheWrite *w);
/* Gives up a write: the partial file goes to invalid/ (evidence, for Clean). Frees w. */
void image_cache_abort_write(ImageCache *c, CacheWrite *w);
/* Gives up a write and removes its file, wherever it got to (also after a seal: an image streamed through
 * without being kept). Open fds on it stay readable. Frees w. */
void image_cache_discard_write(ImageCache *c, CacheWrite *w);
/* A read-only fd on the file w writes, valid across the rename into place and an unlink. */
int cache_write_open_reader(const CacheWrite *w, int *ret_fd);

/* Resuming an interrupted write (a reset transfer, a restart, a crash): reopens the partial file left in
 * incomplete/<id> for appending, registers the write and returns the bytes already there in
 * *ret_size. -ENOENT when there is no such file; -EEXIST and -EBUSY as begin_write. The digest over the
 * bytes on disk is not rebuilt here, because that reads the whole partial file: call cache_write_rehash()
 * (a worker thread may) before the first append. */
int image_cache_resume_write(ImageCache *c, const char *id, const Checksum *expected, uint64_t *ret_size,
                             CacheWrite **ret);
/* Rebuilds the running digest over the bytes already in the file (checksum_fd). Touches nothing but w.
 * -EIO if the file no longer holds the size it had. */
int cache_write_rehash(CacheWrite *w);
/* Stops a write but keeps the partial file in incomplete/ for a later resume (its idle time still
 * counts for Clean). Frees w. */
void image_cache_suspend_write(ImageCache *c, CacheWrite *w);
/* The partial file's upstream validator. A resume asks for the rest only under the ETag the bytes on disk
 * came with (If-Range): kept in the user.imgcache.etag xattr of incomplete/<id>, or in incomplete/.<id>.etag
 * where the filesystem has no user xattrs. Setting a weak or missing ETag forgets it (0). Commit, abort,
 * discard and a new begin_write forget it too. */
#define PARTIAL_ETAG_MAX 1024
bool partial_etag_is_strong(const char *etag);
int cache_write_set_etag(CacheWrite *w, const char *etag);
/* The size of incomplete/<id> and its ETag, when it may be resumed; -ENOENT when there is none, the file
 * is empty or the ETag is missing or weak. */
int image_cache_partial_info(ImageCache *c, const char *id, uint64_t *ret_size, char **ret_etag);
/* Removes a partial file that cannot be continued, and its ETag. -EBUSY while a write owns it. */
int image_cache_forget_partial(ImageCache *c, const char *id);
/* The digest the write computed, once cache_write_seal() has finished it (also when the comparison
 * failed with -EBADMSG, to say what arrived). -ESTALE before. */
int cache_write_digest(const CacheWrite *w, Checksum *ret);
