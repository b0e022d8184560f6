/* SPDX-License-Identifier: MIT */
/* Open files and header values of cached images between hits (hit-cache.h). */

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hit-cache.h"
#include "util.h"

struct HitCache {
        GHashTable *files; /* id → HitFile* */
};

static void hit_file_free(void *p) {
        HitFile *hf = p;

        if (!hf)
                return;
        safe_close(hf->fd);
        free(hf->id);
        free(hf->checksum);
        free(hf);
}

HitCache *hit_cache_new(void) {
        HitCache *hc = calloc(1, sizeof(HitCache));

        if (!hc)
                return NULL;
        hc->files = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, hit_file_free);
        return hc;
}

HitCache *hit_cache_free(HitCache *hc) {
        if (!hc)
                return NULL;
        g_hash_table_destroy(hc->files);
        free(hc);
        return NULL;
}

static void format_headers(HitFile *hf, const CacheEntry *e) {
        Checksum digest;

        hf->etag = http_format_etag(e->checksum, e->size, e->last_modified, hf->etag_buf, sizeof(hf->etag_buf));
        http_format_date(e->last_modified, hf->last_modified_text);
        hf->repr_digest[0] = 0;
        if (e->checksum && checksum_from_string(e->checksum, &digest) >= 0)
                (void) checksum_to_repr_digest(&digest, hf->repr_digest, sizeof(hf->repr_digest));
}

static int hit_file_open(ImageCache *cache, const CacheEntry *e, HitFile **ret) {
        _cleanup_(closep) int fd = -EBADF;
        struct stat st;
        int r;

        r = image_cache_open_file(cache, e->id, &fd);
        if (r < 0)
                return r;
        /* The file, not the index, decides what sendfile can deliver. */
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;

        HitFile *hf = calloc(1, sizeof(HitFile));
        if (!hf)
                return -ENOMEM;
        hf->fd = -EBADF;
        hf->id = strdup(e->id);
        hf->checksum = e->checksum ? strdup(e->checksum) : NULL;
        if (!hf->id || (e->checksum && !hf->checksum)) {
                hit_file_free(hf);
                return -ENOMEM;
        }
        hf->fd = TAKE_FD(fd);
        hf->size = (uint64_t) st.st_size;
        hf->index_size = e->size;
        hf->last_modified = e->last_modified;
        format_headers(hf, e);
        *ret = hf;
        return 0;
}

/* Full: let one go. Which one matters little (a reopen is three syscalls); hits on a few hot images
 * are the common case, and they come back at once. */
static void make_room(HitCache *hc) {
        GHashTableIter it;
        void *key;

        if (g_hash_table_size(hc->files) < HIT_CACHE_MAX)
                return;
        g_hash_table_iter_init(&it, hc->files);
        if (g_hash_table_iter_next(&it, &key, NULL))
                g_hash_table_iter_remove(&it);
}

int hit_cache_get(HitCache *hc, ImageCache *cache, const CacheEntry *e, const HitFile **ret) {
        HitFile *hf = g_hash_table_lookup(hc->files, e->id);
        int r;

        if (hf && hf->index_size == e->size && hf->last_modified == e->last_modified &&
            streq_ptr(hf->checksum, e->checksum)) {
                *ret = hf;
                return 0;
        }
        if (hf)
                g_hash_table_remove(hc->files, e->id); /* replaced under the same id */

        r = hit_file_open(cache, e, &hf);
        if (r < 0)
                return r;
        make_room(hc);
        g_hash_table_insert(hc->files, hf->id, hf);
        *ret = hf;
        return 0;
}

void hit_cache_forget(HitCache *hc, const char *id) {
        if (hc)
                g_hash_table_remove(hc->files, id);
}
