/* SPDX-License-Identifier: MIT */

#include <assert.h>

#include "driver.h"

void cache_entry_done(CacheEntry *e) {
        if (!e)
                return;

        free(e->id);
        free(e->checksum);
        *e = (CacheEntry) {};
}

int cache_entry_copy(const CacheEntry *src, CacheEntry *ret) {
        _cleanup_(freep) char *id = NULL, *checksum = NULL;

        assert(src);
        assert(ret);

        if (src->id) {
                id = strdup(src->id);
                if (!id)
                        return -ENOMEM;
        }
        if (src->checksum) {
                checksum = strdup(src->checksum);
                if (!checksum)
                        return -ENOMEM;
        }

        *ret = (CacheEntry) {
                .id = TAKE_PTR(id),
                .size = src->size,
                .hits = src->hits,
                .last_accessed = src->last_accessed,
                .last_modified = src->last_modified,
                .checksum = TAKE_PTR(checksum),
        };
        return 0;
}
