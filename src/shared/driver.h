/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Where the metadata of complete images lives. The store keeps the working index in memory and uses a
 * driver only to persist it and to read it back at open, so a driver is a plain record store: no policy,
 * no knowledge of incomplete/, invalid/ or queue/. Every call runs on the thread that owns the store. */

typedef struct CacheEntry {
        char *id;
        uint64_t size;           /* bytes */
        uint64_t hits;
        usec_t last_accessed;    /* µs since the epoch */
        usec_t last_modified;    /* µs since the epoch */
        char *checksum;          /* "algo:hex", or NULL when unknown */
} CacheEntry;

void cache_entry_done(CacheEntry *e);
int cache_entry_copy(const CacheEntry *src, CacheEntry *ret);

/* Absolute hit counters to persist for one image (the store accumulates them in memory). */
typedef struct HitUpdate {
        const char *id;
        uint64_t hits;
        usec_t last_accessed;
} HitUpdate;

typedef int (*DriverLoadFunc)(const CacheEntry *e, void *userdata);

typedef struct DriverOps {
        const char *name;

        /* load() reports exactly the regular image files present, size and mtime taken from the files
         * themselves (metadata kept on the files). The store then trusts it instead of scanning the
         * directory a second time: nothing can disagree. */
        bool records_are_files;

        /* Opens the metadata of the cache directory dir_fd (path only for messages). On failure, a
         * human-readable reason may be stored in *ret_error (malloc'ed). */
        int (*open)(int dir_fd, const char *path, void **ret_state, char **ret_error);
        void (*close)(void *state);

        /* Calls f for every stored record; the entry is only borrowed for the call. A negative return of
         * f stops the walk and is returned. Records may name files that no longer exist: the store
         * reconciles. */
        int (*load)(void *state, DriverLoadFunc f, void *userdata);

        /* Inserts or replaces records, all or nothing. */
        int (*put)(void *state, const CacheEntry *entries, size_t n);

        /* Forgets records, all or nothing; unknown ids are not an error. Called after the files are gone. */
        int (*remove)(void *state, const char *const *ids, size_t n);

        /* Persists hit counters and access times, in one transaction where the backend has them. */
        int (*update_hits)(void *state, const HitUpdate *updates, size_t n);
} DriverOps;

extern const DriverOps driver_sqlite_ops;
extern const DriverOps driver_xattr_ops;

/* The file names the sqlite driver owns in the cache directory. */
#define DRIVER_SQLITE_DB "cache.db"

/* Extended attributes of the xattr driver. user.hits is Glance's own and stays compatible. */
#define XATTR_HITS          "user.hits"
#define XATTR_LAST_ACCESSED "user.imgcache.last_accessed"
#define XATTR_CHECKSUM      "user.imgcache.checksum"
