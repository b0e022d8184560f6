/* SPDX-License-Identifier: MIT */

#include <string.h>

#include "image-id.h"
#include "util.h"

/* Names the cache directory itself uses. Glance has the same layout and the same hazard; we refuse
 * these rather than let an image overwrite the database or shadow a subdirectory. */
static const char *const reserved_names[] = {
        "cache.db",
        "cache.db-journal",
        "cache.db-shm",
        "cache.db-wal",
        "incomplete",
        "invalid",
        "queue",
};

static bool image_id_char_ok(char c) {
        return (c >= 'a' && c <= 'z') ||
               (c >= 'A' && c <= 'Z') ||
               (c >= '0' && c <= '9') ||
               c == '.' || c == '_' || c == '-';
}

const char *image_id_invalid_reason(const char *id) {
        if (isempty(id))
                return "an image id must not be empty";
        if (id[0] == '.')
                return "an image id must not start with '.'";

        size_t n = 0;
        for (const char *p = id; *p; p++, n++) {
                if (n >= IMAGE_ID_MAX)
                        return "an image id must be at most 128 characters long";
                if (!image_id_char_ok(*p))
                        return "an image id may contain only letters, digits, '.', '_' and '-'";
        }

        for (size_t i = 0; i < ELEMENTSOF(reserved_names); i++)
                if (streq(id, reserved_names[i]))
                        return "this name is reserved for the cache directory's own files";

        return NULL;
}
