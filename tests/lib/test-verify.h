/* SPDX-License-Identifier: MIT */
#pragma once

#include "store.h"
#include "util.h"
#include "verify.h"

/* The daemon's Verify job (src/daemon/verify.c) without its thread and its reply: the same three steps,
 * verify_hash() being what its worker runs. 1 good, 0 bad (moved to invalid/), -ENOENT not cached.
 * Link src/daemon/verify.c and worker.c. */
static inline int test_verify_image(ImageCache *c, const char *id) {
        _cleanup_(closep) int fd = -EBADF;
        ChecksumAlgo algo;
        Checksum actual;

        int r = image_cache_verify_begin(c, id, &fd, &algo);
        if (r < 0)
                return r;
        r = verify_hash(fd, algo, &actual);
        if (r < 0)
                return r;
        return image_cache_verify_end(c, id, &actual);
}
