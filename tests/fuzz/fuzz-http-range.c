/* SPDX-License-Identifier: MIT */
/* The Range header: http_range_parse() against a representation size taken from the first 8 bytes of the
 * input (and against a few fixed sizes); a satisfiable range must lie inside the representation. */

#include <assert.h>
#include <string.h>

#include "fuzz.h"
#include "http-util.h"

static void check(const char *value, uint64_t size) {
        uint64_t start = UINT64_MAX, length = UINT64_MAX;
        HttpRangeResult r = http_range_parse(value, size, &start, &length);

        assert(r >= 0 && r < _HTTP_RANGE_RESULT_MAX);
        if (r == HTTP_RANGE_SATISFIABLE) {
                assert(length > 0);
                assert(start < size);
                assert(length <= size - start);
        } else
                assert(start == UINT64_MAX && length == UINT64_MAX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        uint64_t rep_size = 0;

        if (size > FUZZ_INPUT_MAX)
                return 0;

        if (size >= sizeof(rep_size)) {
                memcpy(&rep_size, data, sizeof(rep_size));
                data += sizeof(rep_size);
                size -= sizeof(rep_size);
        }

        char *value = fuzz_strndup(data, size);
        check(value, rep_size);
        check(value, 0);
        check(value, 1);
        check(value, 1000);
        check(value, UINT64_MAX);
        free(value);
        return 0;
}
