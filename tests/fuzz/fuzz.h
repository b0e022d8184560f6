/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Shared by the fuzz targets. Inputs longer than FUZZ_INPUT_MAX are skipped: every parser here works on a
 * header value, a config file or a JSON record, all of which are bounded well below it. */
#define FUZZ_INPUT_MAX (256U * 1024U)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A NUL-terminated copy of data (embedded NULs end the string early, as they would in a C API). */
static inline char *fuzz_strndup(const uint8_t *data, size_t size) {
        char *s = malloc(size + 1);
        if (!s)
                abort();
        memcpy(s, data, size);
        s[size] = 0;
        return s;
}

/* Splits off the next NUL- or newline-terminated field of *data into a fresh string. */
static inline char *fuzz_next_field(const uint8_t **data, size_t *size, char sep) {
        const uint8_t *e = memchr(*data, sep, *size);
        size_t n = e ? (size_t) (e - *data) : *size;
        char *s = fuzz_strndup(*data, n);
        *data += e ? n + 1 : n;
        *size -= e ? n + 1 : n;
        return s;
}
