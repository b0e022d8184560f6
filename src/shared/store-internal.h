/* SPDX-License-Identifier: MIT */
#pragma once

/* What store.c (the index, reading, removing, the queue) and store-write.c (writes and their partial
 * files) share. Nothing outside the store includes this. */

#include <glib.h>

#include "store.h"

/* One complete image in the in-memory index. The CacheEntry comes first so that a pointer to it is a
 * pointer to the whole. */
typedef struct IndexEntry {
        CacheEntry e;
        unsigned pins;
        bool hits_dirty;
} IndexEntry;

struct ImageCache {
        char *path;
        int dir_fd;
        int lock_fd;
        int incomplete_fd;
        int invalid_fd;
        int queue_fd;

        DriverKind driver_kind;
        const DriverOps *driver;
        void *driver_state;

        GHashTable *index;   /* id (owned by the entry) → IndexEntry* */
        GHashTable *dirty;   /* id → IndexEntry*: hits not yet persisted */
        GHashTable *writes;  /* id (owned by the write) → CacheWrite*: writes in progress */
        uint64_t total_size;

        ImageCacheObserver observer;
        ReconcileStats reconcile;
};

/* Writeback of a growing image is started every this many bytes (store-write.c). */
#define CACHE_WRITE_BEHIND (8U * 1024U * 1024U)

struct CacheWrite {
        char *id;
        int fd;
        /* Borrowed from the cache, which outlives its writes; plain ints so sealing needs no cache. */
        int incomplete_fd;
        int dir_fd;
        Hasher *hasher;
        bool has_expected;
        Checksum expected;
        Checksum actual;
        uint64_t size;
        uint64_t hashed;       /* bytes the digest was fed: size when it is complete */
        uint64_t written_back; /* bytes handed to writeback so far (sync_file_range) */
        uint64_t reserved_end; /* blocks up to here are allocated (cache_write_reserve); 0: none */
        bool finished;  /* actual holds the final digest */
        bool sealed;
};

IndexEntry *index_lookup(const ImageCache *c, const char *id);
void index_insert(ImageCache *c, IndexEntry *ie);
/* renameat(): moves a file between the cache's directories. */
int move_file(int from_dir, const char *from, int to_dir, const char *to);
void cache_write_free(CacheWrite *w);
