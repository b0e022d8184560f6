/* SPDX-License-Identifier: MIT */
/* checksum_from_string(), checksum_from_content_md5(), checksum_from_digest_header() and
 * checksum_algo_from_string() on the same input; a parsed "algo:hex" string must round-trip. */

#include <assert.h>
#include <string.h>

#include "checksum.h"
#include "fuzz.h"

static void check_parsed(const Checksum *c) {
        assert(c->algo >= 0 && c->algo < _CHECKSUM_ALGO_MAX);
        assert(c->size == checksum_algo_digest_size(c->algo));
        assert(c->size <= CHECKSUM_DIGEST_MAX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > FUZZ_INPUT_MAX)
                return 0;

        char *s = fuzz_strndup(data, size);
        Checksum c;

        if (checksum_from_string(s, &c) >= 0) {
                check_parsed(&c);
                char *t = checksum_to_string(&c);
                assert(t);
                Checksum d;
                assert(checksum_from_string(t, &d) >= 0);
                assert(checksum_equal(&c, &d));
                free(t);
        }

        int r = checksum_from_content_md5(s, &c);
        assert(r >= 0 || r == -EINVAL || r == -EOPNOTSUPP || r == -ENOMEM);
        if (r >= 0) {
                check_parsed(&c);
                assert(c.algo == CHECKSUM_MD5);
        }

        r = checksum_from_digest_header(s, &c);
        assert(r >= 0 || r == -EINVAL || r == -EOPNOTSUPP || r == -ENOMEM);
        if (r >= 0)
                check_parsed(&c);

        ChecksumAlgo a = checksum_algo_from_string(s);
        if (a >= 0)
                assert(checksum_algo_to_string(a));

        free(s);
        return 0;
}
