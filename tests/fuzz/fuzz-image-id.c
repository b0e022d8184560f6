/* SPDX-License-Identifier: MIT */
/* image_id_invalid_reason(): any byte string is either refused with a reason or is a harmless path
 * component. */

#include <assert.h>
#include <string.h>

#include "fuzz.h"
#include "image-id.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > FUZZ_INPUT_MAX)
                return 0;

        char *id = fuzz_strndup(data, size);
        const char *reason = image_id_invalid_reason(id);
        if (reason)
                assert(*reason);
        else {
                size_t n = strlen(id);
                assert(n > 0 && n <= IMAGE_ID_MAX);
                assert(!strchr(id, '/'));
                assert(strcmp(id, ".") != 0 && strcmp(id, "..") != 0);
                assert(image_id_is_valid(id));
        }
        free(id);
        return 0;
}
