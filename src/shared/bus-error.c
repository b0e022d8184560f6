/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>

#include "bus-error.h"
#include "image-id.h"

const sd_bus_error_map imgcache_bus_error_map[] = {
        SD_BUS_ERROR_MAP(IMGCACHE_ERROR_NO_SUCH_IMAGE, ENOENT),
        SD_BUS_ERROR_MAP(IMGCACHE_ERROR_INVALID_IMAGE_ID, EINVAL),
        SD_BUS_ERROR_MAP(IMGCACHE_ERROR_NO_SUCH_JOB, ENXIO),
        SD_BUS_ERROR_MAP(IMGCACHE_ERROR_NO_UPSTREAM, EHOSTUNREACH),
        SD_BUS_ERROR_MAP(IMGCACHE_ERROR_UPSTREAM_FAILED, EREMOTEIO),
        SD_BUS_ERROR_MAP(IMGCACHE_ERROR_CHECKSUM_MISMATCH, EBADMSG),
        SD_BUS_ERROR_MAP(IMGCACHE_ERROR_IMAGE_PINNED, EBUSY),
        SD_BUS_ERROR_MAP(IMGCACHE_ERROR_TOO_MANY_OPEN_FILES, EMFILE),
        SD_BUS_ERROR_MAP_END,
};

int imgcache_bus_error_register(void) {
        int r;

        /* sd-bus keeps a list of maps and ignores one it already has, so calling twice is harmless. */
        r = sd_bus_error_add_map(imgcache_bus_error_map);
        return r < 0 ? r : 0;
}

/* Printable rendering of an id for messages: ids may contain anything when they are invalid. */
static void id_for_message(const char *id, char *buf, size_t n) {
        size_t j = 0;

        for (size_t i = 0; id[i] && j + 5 < n; i++) {
                unsigned char c = (unsigned char) id[i];
                if (c >= 0x20 && c < 0x7f && c != '\'')
                        buf[j++] = (char) c;
                else
                        j += (size_t) snprintf(buf + j, n - j, "\\x%02x", c);
        }
        if (id[0] && j + 5 >= n && j + 3 < n) {
                buf[j++] = '.';
                buf[j++] = '.';
                buf[j++] = '.';
        }
        buf[j] = '\0';
}

int bus_error_check_image_id(sd_bus_error *error, const char *id) {
        const char *reason;
        char shown[64];

        reason = image_id_invalid_reason(id);
        if (!reason)
                return 0;

        id_for_message(id, shown, sizeof shown);
        return sd_bus_error_setf(error, IMGCACHE_ERROR_INVALID_IMAGE_ID,
                                 "Invalid image id '%s': %s", shown, reason);
}
