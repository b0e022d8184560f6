/* SPDX-License-Identifier: MIT */
/* upstream_record_parse(): a Glance GET /v2/images/<id> response body, as received (not NUL-terminated). */

#include <assert.h>
#include <errno.h>

#include "fuzz.h"
#include "upstream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > UPSTREAM_RECORD_MAX)
                return 0;

        /* An exact-size heap copy, so that ASan sees any read past the body. */
        char *json = malloc(size ?: 1);
        if (!json)
                abort();
        memcpy(json, data, size);

        UpstreamRecord rec = {};
        const char *reason = NULL;
        int r = upstream_record_parse(json, size, &rec, &reason);
        assert(r >= 0 || r == -EBADMSG || r == -ENOMEM);
        if (r == -EBADMSG)
                assert(reason && *reason);
        if (r >= 0 && rec.has_checksum) {
                assert(rec.checksum.algo >= 0 && rec.checksum.algo < _CHECKSUM_ALGO_MAX);
                assert(rec.checksum.size == checksum_algo_digest_size(rec.checksum.algo));
        }
        upstream_record_done(&rec);
        free(json);
        return 0;
}
