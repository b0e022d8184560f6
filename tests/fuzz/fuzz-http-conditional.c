/* SPDX-License-Identifier: MIT */
/* The conditional-request headers: If-None-Match (http_etag_list_matches), If-Range
 * (http_if_range_matches), If-Modified-Since (http_not_modified_since), and the token headers
 * (http_request_token). The input is "header\netag"; the etag may be empty, then a fixed one is used. */

#include <assert.h>
#include <string.h>

#include "fuzz.h"
#include "http-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > FUZZ_INPUT_MAX)
                return 0;

        char *header = fuzz_next_field(&data, &size, '\n');
        char *etag = fuzz_strndup(data, size);
        const char *tag = *etag ? etag : "\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"";
        const usec_t times[] = { 0, 784111777ULL * USEC_PER_SEC, 1700000000ULL * USEC_PER_SEC + 123, USEC_INFINITY - 1 };

        (void) http_etag_list_matches(header, tag);
        for (size_t i = 0; i < ELEMENTSOF(times); i++) {
                (void) http_if_range_matches(header, tag, times[i]);
                (void) http_not_modified_since(header, times[i]);
        }

        const char *t = http_request_token(header, NULL);
        if (t)
                assert(t >= header && t <= header + strlen(header));
        t = http_request_token(NULL, header);
        if (t)
                assert(t >= header && t <= header + strlen(header));
        t = http_request_token(etag, header);
        if (t)
                assert((t >= header && t <= header + strlen(header)) || (t >= etag && t <= etag + strlen(etag)));

        char date[HTTP_DATE_MAX];
        for (size_t i = 0; i + 1 < ELEMENTSOF(times); i++)
                assert(http_not_modified_since(http_format_date(times[i], date), times[i]));

        free(header);
        free(etag);
        return 0;
}
