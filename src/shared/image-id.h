/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>

/* The one validator of image identifiers. An id is used verbatim as a file name inside the cache
 * directory, so it must be a single, harmless path component that cannot collide with the cache's own
 * entries. Every entry point (D-Bus, HTTP, CLI, config) goes through here. */

#define IMAGE_ID_MAX 128

/* Returns NULL when id is valid, else a static phrase saying what is wrong with it, fit to follow
 * "Invalid image id '...': ". */
const char *image_id_invalid_reason(const char *id);

static inline bool image_id_is_valid(const char *id) {
        return !image_id_invalid_reason(id);
}
