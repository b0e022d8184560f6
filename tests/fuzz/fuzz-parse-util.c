/* SPDX-License-Identifier: MIT */
/* parse_size(), parse_size_or_percent(), parse_timespan(), parse_boolean() and parse_unsigned() on the same
 * input, and format_size()/format_timespan() on whatever parsed. */

#include <assert.h>
#include <string.h>

#include "fuzz.h"
#include "parse-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > FUZZ_INPUT_MAX)
                return 0;

        char *s = fuzz_strndup(data, size);
        char buf[FORMAT_TIMESPAN_MAX];
        uint64_t u, bytes, permille;
        usec_t t;
        unsigned v;
        bool b;
        int r;

        r = parse_size(s, &u);
        assert(r >= 0 || r == -EINVAL || r == -ERANGE);
        if (r >= 0)
                assert(strlen(format_size(buf, FORMAT_SIZE_MAX, u)) < FORMAT_SIZE_MAX);

        r = parse_size_or_percent(s, &bytes, &permille);
        assert(r >= 0 || r == -EINVAL || r == -ERANGE);
        if (r >= 0) {
                /* One of them is unset; both are UINT64_MAX for the size "18446744073709551615", which
                 * size_limit_resolve() reads correctly as that many bytes. */
                assert(bytes == UINT64_MAX || permille == UINT64_MAX);
                if (permille != UINT64_MAX)
                        assert(permille <= 1000);
        }

        r = parse_timespan(s, USEC_PER_SEC, &t);
        assert(r >= 0 || r == -EINVAL || r == -ERANGE);
        if (r >= 0)
                assert(strlen(format_timespan(buf, sizeof(buf), t)) < sizeof(buf));
        r = parse_timespan(s, 1, &t);
        assert(r >= 0 || r == -EINVAL || r == -ERANGE);

        r = parse_unsigned(s, 1, 1024, &v);
        assert(r >= 0 || r == -EINVAL || r == -ERANGE);
        if (r >= 0)
                assert(v >= 1 && v <= 1024);

        (void) parse_boolean(s, &b);

        free(s);
        return 0;
}
