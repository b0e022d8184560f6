/* SPDX-License-Identifier: MIT */
#pragma once

/* What a hit needs of a cached image, kept between requests: the open file and the header values that
 * only change with the image (ETag, Last-Modified, Repr-Digest). A hit then costs no openat, fstat or
 * close and no formatting of its own. Keyed by image id; an entry is dropped when the image leaves the
 * cache (hit_cache_forget, from the store's image_removed) and is not believed when the index's size,
 * mtime or checksum for the id no longer match it (a file replaced, a checksum recorded). A file
 * replaced behind the daemon's back (not through the store) is served as it was when opened until then:
 * the index, which the store keeps, is what the daemon trusts either way. At most HIT_CACHE_MAX files are held open, so
 * the daemon's fd budget for pins and OpenImage stays what it was less this. */

#include <stdint.h>

#include "checksum.h"
#include "driver.h"
#include "http-util.h"
#include "store.h"

#define HIT_CACHE_MAX 64U

typedef struct HitFile {
        char *id;
        int fd;                 /* O_RDONLY; the cache's own, lent to readers (dup it to hand it over) */
        uint64_t size;          /* of the file, from fstat: what sendfile can deliver */
        usec_t last_modified;   /* the index's, to notice a replaced file */
        uint64_t index_size;    /* likewise */
        char *checksum;         /* the index's (NULL: none yet): a Verify that records one changes the headers */
        const char *etag;       /* NULL: none (no checksum); else etag_buf */
        char etag_buf[HTTP_ETAG_MAX];
        char last_modified_text[HTTP_DATE_MAX];
        char repr_digest[CHECKSUM_REPR_DIGEST_MAX]; /* empty: no digest known */
} HitFile;

typedef struct HitCache HitCache;

HitCache *hit_cache_new(void);
HitCache *hit_cache_free(HitCache *hc);
/* The file of e (the index entry of a cached image), opened on first use. -ENOENT: the file is gone
 * although the index has it (deleted behind our back: a miss); other -errno on failure. The HitFile is
 * valid until the next call on hc. */
int hit_cache_get(HitCache *hc, ImageCache *cache, const CacheEntry *e, const HitFile **ret);
/* Closes the file of id (deleted, pruned, moved to invalid/), so that its blocks are freed now. */
void hit_cache_forget(HitCache *hc, const char *id);
