/* SPDX-License-Identifier: MIT */
/* The cache directory (store.h): the index of cached images, the lock, admission, pruning, pins, the
 * queue and the partial files; writes are in store-write.c, the metadata drivers in driver*.c. About
 * 1,000 lines in one file on purpose: it is the one owner of every path under the directory. */

#include <dirent.h>
#include <fcntl.h>
#include <glib.h>
#include <stdarg.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "image-id.h"
#include "store-internal.h"

static const char *const remove_reason_table[_REMOVE_REASON_MAX] = {
        [REMOVE_DELETED] = "deleted",
        [REMOVE_PRUNED] = "pruned",
        [REMOVE_INVALID] = "invalid",
};

const char *remove_reason_to_string(RemoveReason r) {
        if (r < 0 || r >= _REMOVE_REASON_MAX)
                return NULL;
        return remove_reason_table[r];
}

static const DriverOps *driver_ops_for(DriverKind k) {
        switch (k) {
        case DRIVER_SQLITE:
                return &driver_sqlite_ops;
        case DRIVER_XATTR:
                return &driver_xattr_ops;
        default:
                return NULL;
        }
}

static void index_entry_free(IndexEntry *ie) {
        if (!ie)
                return;
        cache_entry_done(&ie->e);
        free(ie);
}

static void index_entry_free_void(void *p) {
        index_entry_free(p);
}

/* ---- opening ---------------------------------------------------------------------------------- */

static int open_subdir(int dir_fd, const char *name, int *ret_fd) {
        if (mkdirat(dir_fd, name, 0755) < 0 && errno != EEXIST)
                return -errno;

        /* O_NOFOLLOW: a symlink planted as incomplete/ must not redirect our writes elsewhere. */
        int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        *ret_fd = fd;
        return 0;
}

static int take_lock(ImageCache *c, char **ret_error) {
        c->lock_fd = openat(c->dir_fd, IMAGE_CACHE_LOCK_FILE, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (c->lock_fd < 0) {
                int r = -errno;
                set_error_message(ret_error, "Cannot open lock file %s/%s: %s", c->path, IMAGE_CACHE_LOCK_FILE, strerror(-r));
                return r;
        }

        if (flock(c->lock_fd, LOCK_EX | LOCK_NB) < 0) {
                int r = errno == EWOULDBLOCK ? -EBUSY : -errno;
                char holder[32] = "";
                ssize_t n = pread(c->lock_fd, holder, sizeof(holder) - 1, 0);
                holder[MAX(n, (ssize_t) 0)] = 0;
                holder[strcspn(holder, "\n")] = 0;
                if (r == -EBUSY)
                        set_error_message(ret_error, "Cache directory %s is in use by another process (pid %s)",
                                  c->path, isempty(holder) ? "unknown" : holder);
                else
                        set_error_message(ret_error, "Cannot lock %s/%s: %s", c->path, IMAGE_CACHE_LOCK_FILE, strerror(-r));
                return r;
        }

        /* The pid is only for the message a second opener prints; the flock is what excludes. */
        char pid[32];
        int n = snprintf(pid, sizeof(pid), "%d\n", (int) getpid());
        if (ftruncate(c->lock_fd, 0) < 0 || pwrite(c->lock_fd, pid, (size_t) n, 0) != n)
                return 0; /* read-only lock file content is harmless */
        return 0;
}

static int open_directories(ImageCache *c, char **ret_error) {
        int r = mkdir_parents_and_self(c->path, 0755);
        if (r < 0) {
                set_error_message(ret_error, "Cannot create cache directory %s: %s", c->path, strerror(-r));
                return r;
        }

        c->dir_fd = open(c->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (c->dir_fd < 0) {
                r = -errno;
                set_error_message(ret_error, "Cannot open cache directory %s: %s", c->path, strerror(-r));
                return r;
        }

        r = take_lock(c, ret_error);
        if (r < 0)
                return r;

        struct { const char *name; int *fd; } subdirs[] = {
                { IMAGE_CACHE_INCOMPLETE_DIR, &c->incomplete_fd },
                { IMAGE_CACHE_INVALID_DIR, &c->invalid_fd },
                { IMAGE_CACHE_QUEUE_DIR, &c->queue_fd },
        };
        for (size_t i = 0; i < ELEMENTSOF(subdirs); i++) {
                r = open_subdir(c->dir_fd, subdirs[i].name, subdirs[i].fd);
                if (r < 0) {
                        set_error_message(ret_error, "Cannot open %s/%s/: %s", c->path, subdirs[i].name, strerror(-r));
                        return r;
                }
        }
        return 0;
}

/* ---- reconciliation ----------------------------------------------------------------------------- */

typedef struct ReconcileState {
        GHashTable *rows;      /* id → CacheEntry* copies of the driver's records */
        GPtrArray *to_put;     /* CacheEntry* borrowed from the index */
        GPtrArray *to_drop;    /* char* owned */
} ReconcileState;

static void cache_entry_free_void(void *p) {
        cache_entry_done(p);
        free(p);
}

static int reconcile_collect_row(const CacheEntry *e, void *userdata) {
        ReconcileState *s = userdata;

        /* A row naming something that is not an image id (a hand-edited or hostile cache.db) never
         * becomes a path: it is simply forgotten. */
        if (!image_id_is_valid(e->id)) {
                char *id = strdup(e->id);
                if (!id)
                        return -ENOMEM;
                g_ptr_array_add(s->to_drop, id);
                return 0;
        }

        CacheEntry *copy = calloc(1, sizeof(CacheEntry));
        if (!copy)
                return -ENOMEM;
        int r = cache_entry_copy(e, copy);
        if (r < 0) {
                free(copy);
                return r;
        }
        g_hash_table_replace(s->rows, copy->id, copy);
        return 0;
}

void index_insert(ImageCache *c, IndexEntry *ie) {
        c->total_size += ie->e.size;
        g_hash_table_replace(c->index, ie->e.id, ie);
}

/* Indexes one regular file found in the directory, from its row when there is one. */
static int reconcile_file(ImageCache *c, ReconcileState *s, const char *name, const struct stat *st) {
        _cleanup_(freep) IndexEntry *ie = calloc(1, sizeof(IndexEntry));
        if (!ie)
                return -ENOMEM;

        CacheEntry *row = g_hash_table_lookup(s->rows, name);
        if (row) {
                int r = cache_entry_copy(row, &ie->e);
                if (r < 0)
                        return r;
                g_hash_table_remove(s->rows, name);
                if (ie->e.size != (uint64_t) st->st_size) {
                        /* The file is the truth: metadata is written after it, never before. */
                        ie->e.size = (uint64_t) st->st_size;
                        c->reconcile.resized++;
                        g_ptr_array_add(s->to_put, &ie->e);
                }
        } else {
                usec_t mtime = timespec_to_usec(&st->st_mtim);
                ie->e = (CacheEntry) {
                        .id = strdup(name),
                        .size = (uint64_t) st->st_size,
                        .last_accessed = mtime,
                        .last_modified = mtime,
                };
                if (!ie->e.id)
                        return -ENOMEM;
                c->reconcile.adopted++;
                g_ptr_array_add(s->to_put, &ie->e);
        }

        index_insert(c, TAKE_PTR(ie));
        return 0;
}

static int reconcile_scan_directory(ImageCache *c, ReconcileState *s) {
        _cleanup_(closedirp) DIR *d = NULL;
        int r = opendir_at(c->dir_fd, &d);
        if (r < 0)
                return r;

        struct dirent *de;
        while ((errno = 0, de = readdir(d))) {
                /* Dot files, cache.db* and the subdirectories are not valid ids, so this skips them. */
                if (!image_id_is_valid(de->d_name))
                        continue;

                struct stat st;
                if (fstatat(c->dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                        if (errno == ENOENT)
                                continue;
                        r = -errno;
                        break;
                }
                if (!S_ISREG(st.st_mode))
                        continue; /* never serve a symlink or a device planted in the cache */

                r = reconcile_file(c, s, de->d_name, &st);
                if (r < 0)
                        break;
        }
        if (r == 0 && errno != 0)
                r = -errno;
        return r;
}

/* For drivers whose records are the files: every record is an image as it is on disk. */
static int index_record(const CacheEntry *e, void *userdata) {
        ImageCache *c = userdata;

        if (!image_id_is_valid(e->id))
                return 0;

        _cleanup_(freep) IndexEntry *ie = calloc(1, sizeof(IndexEntry));
        if (!ie)
                return -ENOMEM;
        int r = cache_entry_copy(e, &ie->e);
        if (r < 0)
                return r;
        index_insert(c, TAKE_PTR(ie));
        return 0;
}

static int reconcile(ImageCache *c) {
        if (c->driver->records_are_files)
                return c->driver->load(c->driver_state, index_record, c);

        ReconcileState s = {
                .rows = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, cache_entry_free_void),
                .to_put = g_ptr_array_new(),
                .to_drop = g_ptr_array_new_with_free_func(free),
        };

        int r = c->driver->load(c->driver_state, reconcile_collect_row, &s);
        if (r >= 0)
                r = reconcile_scan_directory(c, &s);
        if (r >= 0) {
                /* Rows left over have no file: a crash between unlink and forget, or a hand deletion. */
                GHashTableIter it;
                gpointer key;
                g_hash_table_iter_init(&it, s.rows);
                while (g_hash_table_iter_next(&it, &key, NULL)) {
                        char *id = strdup(key);
                        if (!id) {
                                r = -ENOMEM;
                                break;
                        }
                        g_ptr_array_add(s.to_drop, id);
                }
        }
        if (r >= 0 && s.to_drop->len > 0) {
                c->reconcile.dropped = s.to_drop->len;
                r = c->driver->remove(c->driver_state, (const char *const *) s.to_drop->pdata, s.to_drop->len);
        }
        if (r >= 0 && s.to_put->len > 0) {
                _cleanup_(freep) CacheEntry *put = calloc(s.to_put->len, sizeof(CacheEntry));
                if (!put)
                        r = -ENOMEM;
                else {
                        for (unsigned i = 0; i < s.to_put->len; i++)
                                put[i] = *(CacheEntry *) s.to_put->pdata[i]; /* shallow: the index owns them */
                        r = c->driver->put(c->driver_state, put, s.to_put->len);
                }
        }

        g_hash_table_destroy(s.rows);
        g_ptr_array_free(s.to_put, TRUE);
        g_ptr_array_free(s.to_drop, TRUE);
        return r;
}

int image_cache_open(const char *path, DriverKind driver, ImageCache **ret, char **ret_error) {
        int r;

        if (!path || path[0] != '/') {
                set_error_message(ret_error, "Cache directory must be an absolute path: %s", strempty(path));
                return -EINVAL;
        }
        const DriverOps *ops = driver_ops_for(driver);
        if (!ops) {
                set_error_message(ret_error, "Unknown metadata driver");
                return -EINVAL;
        }

        _cleanup_(image_cache_closep) ImageCache *c = calloc(1, sizeof(ImageCache));
        if (!c)
                return -ENOMEM;
        *c = (ImageCache) {
                .path = strdup(path),
                .dir_fd = -EBADF,
                .lock_fd = -EBADF,
                .incomplete_fd = -EBADF,
                .invalid_fd = -EBADF,
                .queue_fd = -EBADF,
                .driver_kind = driver,
                .index = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, index_entry_free_void),
                .dirty = g_hash_table_new(g_str_hash, g_str_equal),
                .writes = g_hash_table_new(g_str_hash, g_str_equal),
        };
        if (!c->path)
                return -ENOMEM;

        r = open_directories(c, ret_error);
        if (r < 0)
                return r;

        char *driver_error = NULL;
        r = ops->open(c->dir_fd, c->path, &c->driver_state, &driver_error);
        if (r < 0) {
                if (ret_error && !*ret_error)
                        *ret_error = driver_error;
                else
                        free(driver_error);
                set_error_message(ret_error, "Cannot open %s metadata of %s: %s", ops->name, c->path, strerror(-r));
                return r;
        }
        c->driver = ops;

        r = reconcile(c);
        if (r < 0) {
                set_error_message(ret_error, "Cannot reconcile metadata with the files in %s: %s", c->path, strerror(-r));
                return r;
        }

        *ret = TAKE_PTR(c);
        return 0;
}


ImageCache *image_cache_close(ImageCache *c) {
        if (!c)
                return NULL;

        if (c->driver) {
                (void) image_cache_flush(c);
                c->driver->close(c->driver_state);
        }

        /* Writes still open at close leave their partial files in incomplete/ for Clean (or a resume). */
        if (c->writes) {
                GHashTableIter it;
                gpointer value;
                g_hash_table_iter_init(&it, c->writes);
                while (g_hash_table_iter_next(&it, NULL, &value))
                        cache_write_free(value);
                g_hash_table_destroy(c->writes);
        }
        if (c->dirty)
                g_hash_table_destroy(c->dirty);
        if (c->index)
                g_hash_table_destroy(c->index);

        safe_close(c->queue_fd);
        safe_close(c->invalid_fd);
        safe_close(c->incomplete_fd);
        safe_close(c->lock_fd);
        safe_close(c->dir_fd);
        free(c->path);
        free(c);
        return NULL;
}

void image_cache_set_observer(ImageCache *c, const ImageCacheObserver *o) {
        c->observer = o ? *o : (ImageCacheObserver) {};
}

const char *image_cache_path(const ImageCache *c) {
        return c->path;
}

DriverKind image_cache_driver(const ImageCache *c) {
        return c->driver_kind;
}

int image_cache_fs_space(const ImageCache *c, uint64_t *ret_size, uint64_t *ret_available) {
        struct statvfs sv;

        if (fstatvfs(c->dir_fd, &sv) < 0)
                return -errno;
        if (ret_size)
                *ret_size = (uint64_t) sv.f_blocks * sv.f_frsize;
        if (ret_available)
                *ret_available = (uint64_t) sv.f_bavail * sv.f_frsize;
        return 0;
}

int image_cache_resolve_limit(const ImageCache *c, const SizeLimit *limit, uint64_t *ret) {
        uint64_t fs_size = 0;

        if (limit->permille != UINT64_MAX) {
                int r = image_cache_fs_space(c, &fs_size, NULL);
                if (r < 0)
                        return r;
        }
        *ret = size_limit_resolve(limit, fs_size);
        return 0;
}

ReconcileStats image_cache_reconcile_stats(const ImageCache *c) {
        return c->reconcile;
}

/* ---- lookups ------------------------------------------------------------------------------------ */

IndexEntry *index_lookup(const ImageCache *c, const char *id) {
        if (!id)
                return NULL;
        return g_hash_table_lookup(c->index, id);
}

bool image_cache_is_cached(const ImageCache *c, const char *id) {
        return index_lookup(c, id);
}

bool image_cache_is_being_cached(const ImageCache *c, const char *id) {
        return id && g_hash_table_contains(c->writes, id);
}

const CacheEntry *image_cache_get(const ImageCache *c, const char *id) {
        IndexEntry *ie = index_lookup(c, id);
        return ie ? &ie->e : NULL;
}

uint64_t image_cache_size(const ImageCache *c) {
        return c->total_size;
}

size_t image_cache_count(const ImageCache *c) {
        return g_hash_table_size(c->index);
}

uint64_t image_cache_hit_count(const ImageCache *c, const char *id) {
        IndexEntry *ie = index_lookup(c, id);
        return ie ? ie->e.hits : 0;
}

static int compare_entry_id(const void *a, const void *b) {
        const CacheEntry *x = *(const CacheEntry *const *) a, *y = *(const CacheEntry *const *) b;
        return strcmp(x->id, y->id);
}

/* Every indexed entry, as an array of borrowed pointers, optionally sorted. */
static int index_snapshot(const ImageCache *c, int (*compare)(const void *, const void *),
                          IndexEntry ***ret, size_t *ret_n) {
        size_t n = g_hash_table_size(c->index);
        IndexEntry **v = malloc(MAX(n, (size_t) 1) * sizeof(IndexEntry *));
        if (!v)
                return -ENOMEM;

        GHashTableIter it;
        gpointer value;
        size_t i = 0;
        g_hash_table_iter_init(&it, c->index);
        while (g_hash_table_iter_next(&it, NULL, &value))
                v[i++] = value;
        if (compare)
                qsort(v, n, sizeof(IndexEntry *), compare);

        *ret = v;
        *ret_n = n;
        return 0;
}

int image_cache_list(const ImageCache *c, const CacheEntry ***ret, size_t *ret_n) {
        IndexEntry **v;
        size_t n;
        int r = index_snapshot(c, compare_entry_id, &v, &n);
        if (r < 0)
                return r;
        /* IndexEntry starts with its CacheEntry, so the array converts in place. */
        *ret = (const CacheEntry **) v;
        *ret_n = n;
        return 0;
}

/* ---- reading and hits --------------------------------------------------------------------------- */

int image_cache_record_hit(ImageCache *c, const char *id) {
        IndexEntry *ie = index_lookup(c, id);
        if (!ie)
                return -ENOENT;

        ie->e.hits++;
        ie->e.last_accessed = now_usec(CLOCK_REALTIME);
        if (!ie->hits_dirty) {
                ie->hits_dirty = true;
                g_hash_table_add(c->dirty, ie->e.id);
        }
        return 0;
}

int image_cache_open_file(ImageCache *c, const char *id, int *ret_fd) {
        if (!index_lookup(c, id))
                return -ENOENT;

        int fd = openat(c->dir_fd, id, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        *ret_fd = fd;
        return 0;
}

int image_cache_open_for_read(ImageCache *c, const char *id, int *ret_fd) {
        int fd = -EBADF, r;

        r = image_cache_open_file(c, id, &fd);
        if (r < 0)
                return r;
        (void) image_cache_record_hit(c, id);
        *ret_fd = fd;
        return 0;
}

bool image_cache_has_unflushed_hits(const ImageCache *c) {
        return g_hash_table_size(c->dirty) > 0;
}

int image_cache_flush(ImageCache *c) {
        size_t n = g_hash_table_size(c->dirty);
        if (n == 0)
                return 0;

        _cleanup_(freep) HitUpdate *updates = calloc(n, sizeof(HitUpdate));
        if (!updates)
                return -ENOMEM;

        GHashTableIter it;
        gpointer key;
        size_t i = 0;
        g_hash_table_iter_init(&it, c->dirty);
        while (g_hash_table_iter_next(&it, &key, NULL)) {
                IndexEntry *ie = index_lookup(c, key);
                updates[i++] = (HitUpdate) {
                        .id = ie->e.id,
                        .hits = ie->e.hits,
                        .last_accessed = ie->e.last_accessed,
                };
        }

        int r = c->driver->update_hits(c->driver_state, updates, n);
        if (r < 0)
                return r; /* stay dirty: the next flush retries */

        g_hash_table_iter_init(&it, c->dirty);
        while (g_hash_table_iter_next(&it, &key, NULL))
                index_lookup(c, key)->hits_dirty = false;
        g_hash_table_remove_all(c->dirty);
        return 0;
}

/* ---- pins --------------------------------------------------------------------------------------- */

int image_cache_pin(ImageCache *c, const char *id) {
        IndexEntry *ie = index_lookup(c, id);
        if (!ie)
                return -ENOENT;
        ie->pins++;
        return 0;
}

void image_cache_unpin(ImageCache *c, const char *id) {
        IndexEntry *ie = index_lookup(c, id);
        if (ie && ie->pins > 0)
                ie->pins--;
}

bool image_cache_is_pinned(const ImageCache *c, const char *id) {
        IndexEntry *ie = index_lookup(c, id);
        return ie && ie->pins > 0;
}

/* ---- removal ------------------------------------------------------------------------------------ */

/* Moves a file from one directory to another, replacing what is there. */
int move_file(int from_dir, const char *from, int to_dir, const char *to) {
        if (renameat(from_dir, from, to_dir, to) < 0)
                return -errno;
        return 0;
}

/* Drops entries from the index and tells the observer. Their files are already gone or moved. */
static void index_forget(ImageCache *c, IndexEntry **v, size_t n, RemoveReason reason) {
        for (size_t i = 0; i < n; i++) {
                IndexEntry *ie = v[i];
                c->total_size -= ie->e.size;
                if (ie->hits_dirty)
                        g_hash_table_remove(c->dirty, ie->e.id);
                if (c->observer.image_removed)
                        c->observer.image_removed(c, ie->e.id, ie->e.size, reason, c->observer.userdata);
                g_hash_table_remove(c->index, ie->e.id); /* frees ie */
        }
}

/* Removes the files of v[0..n) (or moves them to invalid/), then their metadata in one transaction,
 * then the index entries. File first: a crash in between leaves metadata without a file, which
 * reconciliation drops, never a file that comes back. Stops at the first file that cannot be removed,
 * still finishing the bookkeeping for those that were. */
static int remove_entries(ImageCache *c, IndexEntry **v, size_t n, RemoveReason reason, size_t *ret_removed) {
        int r = 0;
        size_t done = 0;

        for (; done < n; done++) {
                const char *id = v[done]->e.id;
                int k = reason == REMOVE_INVALID ?
                        move_file(c->dir_fd, id, c->invalid_fd, id) :
                        (unlinkat(c->dir_fd, id, 0) < 0 ? -errno : 0);
                if (k < 0 && k != -ENOENT) {
                        r = k;
                        break;
                }
        }

        if (done > 0) {
                _cleanup_(freep) const char **ids = calloc(done, sizeof(char *));
                if (!ids)
                        return -ENOMEM;
                for (size_t i = 0; i < done; i++)
                        ids[i] = v[i]->e.id;
                int k = c->driver->remove(c->driver_state, ids, done);
                if (k < 0 && r == 0)
                        r = k; /* the files are gone; reconciliation will drop the rows at next open */
                index_forget(c, v, done, reason);
        }

        if (ret_removed)
                *ret_removed = done;
        return r;
}

int image_cache_delete(ImageCache *c, const char *id) {
        IndexEntry *ie = index_lookup(c, id);
        if (!ie)
                return -ENOENT;
        return remove_entries(c, &ie, 1, REMOVE_DELETED, NULL);
}

int image_cache_delete_all(ImageCache *c, unsigned *ret_n) {
        _cleanup_(freep) IndexEntry **v = NULL;
        size_t n, removed = 0;

        int r = index_snapshot(c, NULL, &v, &n);
        if (r < 0)
                return r;
        r = remove_entries(c, v, n, REMOVE_DELETED, &removed);
        if (ret_n)
                *ret_n = (unsigned) removed;
        return r;
}

static int compare_entry_lru(const void *a, const void *b) {
        const IndexEntry *x = *(const IndexEntry *const *) a, *y = *(const IndexEntry *const *) b;
        if (x->e.last_accessed != y->e.last_accessed)
                return x->e.last_accessed < y->e.last_accessed ? -1 : 1;
        return strcmp(x->e.id, y->e.id);
}

int image_cache_prune(ImageCache *c, uint64_t max_size, unsigned *ret_files, uint64_t *ret_bytes) {
        _cleanup_(freep) IndexEntry **v = NULL;
        size_t n, victims = 0, removed = 0;
        uint64_t size = c->total_size, freed = 0;

        int r = index_snapshot(c, compare_entry_lru, &v, &n);
        if (r < 0)
                return r;

        /* Pick the least recently used unpinned images until what remains fits. */
        for (size_t i = 0; i < n && size > max_size; i++) {
                if (v[i]->pins > 0)
                        continue;
                size -= v[i]->e.size;
                v[victims++] = v[i];
        }

        for (size_t i = 0; i < victims; i++)
                freed += v[i]->e.size;
        r = remove_entries(c, v, victims, REMOVE_PRUNED, &removed);
        if (removed < victims)
                for (size_t i = removed; i < victims; i++)
                        freed -= v[i]->e.size;

        if (ret_files)
                *ret_files = (unsigned) removed;
        if (ret_bytes)
                *ret_bytes = freed;
        return r;
}

/* Unlinks the regular files of dir_fd for which keep() says no. */
/* Prunes down to target, adding what went to the running totals. */
static int prune_add(ImageCache *c, uint64_t target, SpaceResult *res) {
        unsigned n = 0;
        uint64_t b = 0;
        int r = image_cache_prune(c, target, &n, &b);
        res->files += n;
        res->bytes += b;
        return r;
}

int image_cache_make_room(ImageCache *c, uint64_t incoming, uint64_t max_size, uint64_t keep_free, SpaceResult *ret) {
        SpaceResult res = {};
        uint64_t available;
        int r = 0, k;

        if (max_size != UINT64_MAX) {
                uint64_t target = max_size > incoming ? max_size - incoming : 0;
                if (c->total_size > target)
                        r = prune_add(c, target, &res);
                /* What is left above the target is pinned: pruning takes every unpinned image first. */
                if (c->total_size > target)
                        res.pinned_over_max = c->total_size - target;
        }

        /* What the pruning above freed is not visible in statvfs until the unlinks are through. */
        if (keep_free > 0 && image_cache_fs_space(c, NULL, &available) >= 0) {
                available += res.bytes;
                uint64_t need = keep_free > UINT64_MAX - incoming ? UINT64_MAX : keep_free + incoming;
                if (available < need) {
                        uint64_t deficit = need - available, before = res.bytes;
                        k = prune_add(c, c->total_size > deficit ? c->total_size - deficit : 0, &res);
                        if (r >= 0)
                                r = k;
                        available += res.bytes - before;
                        if (available < need)
                                res.keep_free_missing = need - available;
                }
        }
        if (ret)
                *ret = res;
        return r;
}

static int unlink_files_in(int dir_fd, bool (*keep)(ImageCache *c, const char *name, const struct stat *st, usec_t arg),
                           ImageCache *c, usec_t arg, unsigned *ret_n) {
        _cleanup_(closedirp) DIR *d = NULL;
        int r = opendir_at(dir_fd, &d);
        if (r < 0)
                return r;

        unsigned n = 0;
        struct dirent *de;
        while ((errno = 0, de = readdir(d))) {
                if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                        continue;
                struct stat st;
                if (fstatat(dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || S_ISDIR(st.st_mode))
                        continue;
                if (keep && keep(c, de->d_name, &st, arg))
                        continue;
                if (unlinkat(dir_fd, de->d_name, 0) < 0) {
                        if (errno != ENOENT && r == 0)
                                r = -errno;
                        continue;
                }
                n++;
        }
        if (r == 0 && errno != 0)
                r = -errno;
        *ret_n = n;
        return r;
}

static bool keep_incomplete(ImageCache *c, const char *name, const struct stat *st, usec_t stall_time) {
        if (g_hash_table_contains(c->writes, name))
                return true; /* a live write owns it */
        usec_t now = now_usec(CLOCK_REALTIME), mtime = timespec_to_usec(&st->st_mtim);
        return mtime > now || now - mtime < stall_time;
}

int image_cache_clean(ImageCache *c, usec_t stall_time, unsigned *ret_stalled, unsigned *ret_invalid) {
        unsigned stalled = 0, invalid = 0;

        int r = unlink_files_in(c->invalid_fd, NULL, c, 0, &invalid);
        int k = unlink_files_in(c->incomplete_fd, keep_incomplete, c, stall_time, &stalled);

        if (ret_stalled)
                *ret_stalled = stalled;
        if (ret_invalid)
                *ret_invalid = invalid;
        return r < 0 ? r : k;
}

/* ---- verification ------------------------------------------------------------------------------- */

static int set_entry_checksum(ImageCache *c, IndexEntry *ie, const Checksum *sum) {
        _cleanup_(freep) char *s = checksum_to_string(sum);
        if (!s)
                return -ENOMEM;

        CacheEntry updated = ie->e;
        updated.checksum = s;
        int r = c->driver->put(c->driver_state, &updated, 1);
        if (r < 0)
                return r;
        free(ie->e.checksum);
        ie->e.checksum = TAKE_PTR(s);
        return 0;
}

int image_cache_verify_begin(ImageCache *c, const char *id, int *ret_fd, ChecksumAlgo *ret_algo) {
        IndexEntry *ie = index_lookup(c, id);
        if (!ie)
                return -ENOENT;

        Checksum expected;
        bool known = ie->e.checksum && checksum_from_string(ie->e.checksum, &expected) >= 0;

        int r = image_cache_open_file(c, id, ret_fd);
        if (r < 0)
                return r;
        *ret_algo = known ? expected.algo : CHECKSUM_SHA256;
        return 0;
}

int image_cache_verify_end(ImageCache *c, const char *id, const Checksum *actual) {
        IndexEntry *ie = index_lookup(c, id);
        if (!ie)
                return -ENOENT; /* deleted while we were hashing */

        Checksum expected;
        if (!ie->e.checksum || checksum_from_string(ie->e.checksum, &expected) < 0) {
                /* Nothing to compare with (an adopted file): what we computed becomes the record. */
                int r = set_entry_checksum(c, ie, actual);
                return r < 0 ? r : 1;
        }
        if (checksum_equal(&expected, actual))
                return 1;

        int r = remove_entries(c, &ie, 1, REMOVE_INVALID, NULL);
        return r < 0 ? r : 0;
}

/* ---- queue -------------------------------------------------------------------------------------- */

void queued_images_free(QueuedImage *q, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(q[i].id);
        free(q);
}

bool image_cache_is_queued(const ImageCache *c, const char *id) {
        return image_id_is_valid(id) && faccessat(c->queue_fd, id, F_OK, AT_SYMLINK_NOFOLLOW) >= 0;
}

static int compare_queued(const void *a, const void *b) {
        const QueuedImage *x = a, *y = b;
        if (x->queued_at != y->queued_at)
                return x->queued_at < y->queued_at ? -1 : 1;
        return strcmp(x->id, y->id);
}

/* The checksum in queue/<id>: 1 with *ret set, 0 for an empty marker or one whose content is not a
 * checksum (someone else's tool may write anything there), -errno when it cannot be read. */
static int read_marker(int queue_fd, const char *id, Checksum *ret) {
        char buf[QUEUE_MARKER_MAX + 1];
        int fd = openat(queue_fd, id, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n = read(fd, buf, QUEUE_MARKER_MAX);
        int r = n < 0 ? -errno : 0;
        safe_close(fd);
        if (r < 0)
                return r;

        while (n > 0 && strchr(" \t\r\n", buf[n - 1]))
                n--;
        buf[n] = '\0';
        return n > 0 && checksum_from_string(buf, ret) >= 0 ? 1 : 0;
}

int image_cache_queued_checksum(const ImageCache *c, const char *id, Checksum *ret) {
        if (!image_id_is_valid(id))
                return -EINVAL;
        return read_marker(c->queue_fd, id, ret);
}

/* Calls f for every marker (a regular file named by a valid id). */
static int for_each_marker(const ImageCache *c, int (*f)(const char *id, const struct stat *st, void *userdata),
                           void *userdata) {
        _cleanup_(closedirp) DIR *d = NULL;
        int r = opendir_at(c->queue_fd, &d);
        if (r < 0)
                return r;

        struct dirent *de;
        while ((errno = 0, de = readdir(d))) {
                struct stat st;
                if (!image_id_is_valid(de->d_name) ||
                    fstatat(c->queue_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                        continue;
                r = f(de->d_name, &st, userdata);
                if (r < 0)
                        return r;
        }
        return errno != 0 ? -errno : 0;
}

static int count_marker(const char *id, const struct stat *st, void *userdata) {
        (*(size_t *) userdata)++;
        return 0;
}

size_t image_cache_queued_count(const ImageCache *c) {
        size_t n = 0;
        (void) for_each_marker(c, count_marker, &n);
        return n;
}

typedef struct QueueList {
        const ImageCache *cache;
        QueuedImage *v;
        size_t n, allocated;
} QueueList;

static int list_marker(const char *id, const struct stat *st, void *userdata) {
        QueueList *l = userdata;

        if (l->n == l->allocated) {
                size_t allocated = MAX(l->allocated * 2, (size_t) 16);
                QueuedImage *nv = realloc(l->v, allocated * sizeof(QueuedImage));
                if (!nv)
                        return -ENOMEM;
                l->v = nv;
                l->allocated = allocated;
        }
        QueuedImage *q = l->v + l->n;
        *q = (QueuedImage) { .id = strdup(id), .queued_at = timespec_to_usec(&st->st_mtim) };
        if (!q->id)
                return -ENOMEM;
        l->n++;
        /* A marker dequeued meanwhile, or unreadable, is listed without a checksum. */
        q->has_checksum = read_marker(l->cache->queue_fd, id, &q->checksum) > 0;
        return 0;
}

int image_cache_list_queued(const ImageCache *c, QueuedImage **ret, size_t *ret_n) {
        QueueList l = { .cache = c };
        int r = for_each_marker(c, list_marker, &l);
        if (r < 0) {
                queued_images_free(l.v, l.n);
                return r;
        }

        if (l.n > 0)
                qsort(l.v, l.n, sizeof(QueuedImage), compare_queued);
        *ret = l.v;
        *ret_n = l.n;
        return 0;
}

/* Writes the marker's content and its queue time into a temporary file in queue/, then links it into
 * place: the marker appears whole (checksum and mtime) or not at all, and link(), unlike rename(), does
 * not replace a marker that is there already, whose queue time must stay. The temporary name starts
 * with '.', so it is never an id. */
static int write_marker(ImageCache *c, const char *id, const Checksum *expected) {
        _cleanup_(freep) char *tmp = NULL, *content = NULL;
        int r = 0;

        if (asprintf(&tmp, ".%s.new", id) < 0)
                return -ENOMEM;
        if (expected) {
                _cleanup_(freep) char *s = checksum_to_string(expected);
                if (!s || asprintf(&content, "%s\n", s) < 0)
                        return -ENOMEM;
        }

        int fd = openat(c->queue_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        if (content) {
                r = loop_write(fd, content, strlen(content));
                /* The checksum must not vanish in a crash while the name survives: a marker that came
                 * back empty would fetch the image unchecked. */
                if (r >= 0 && fdatasync(fd) < 0)
                        r = -errno;
        }
        /* The marker's mtime is the queue time, which orders prefetching. The kernel stamps new files
         * from a coarse clock (a jiffy), so two quick queue calls could tie: stamp it precisely. */
        struct timespec ts[2];
        (void) clock_gettime(CLOCK_REALTIME, &ts[0]);
        ts[1] = ts[0];
        if (r >= 0 && futimens(fd, ts) < 0)
                r = -errno;
        safe_close(fd);

        if (r >= 0 && linkat(c->queue_fd, tmp, c->queue_fd, id, 0) < 0)
                r = errno == EEXIST ? 0 : -errno;
        else if (r >= 0)
                r = 1;
        (void) unlinkat(c->queue_fd, tmp, 0);
        return r;
}

int image_cache_queue(ImageCache *c, const char *id, const Checksum *expected) {
        if (!image_id_is_valid(id))
                return -EINVAL;
        if (image_cache_is_cached(c, id) || image_cache_is_being_cached(c, id))
                return 0;
        if (image_cache_is_queued(c, id))
                return 0;
        return write_marker(c, id, expected);
}

int image_cache_dequeue(ImageCache *c, const char *id) {
        if (!image_id_is_valid(id))
                return -EINVAL;
        if (unlinkat(c->queue_fd, id, 0) < 0)
                return errno == ENOENT ? 0 : -errno;
        return 1;
}

int image_cache_dequeue_all(ImageCache *c, unsigned *ret_n) {
        unsigned n = 0;
        int r = unlink_files_in(c->queue_fd, NULL, c, 0, &n);
        if (ret_n)
                *ret_n = n;
        return r;
}
