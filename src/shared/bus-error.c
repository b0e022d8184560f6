/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

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

#define SYSTEM_BUS_SOCKET "/run/dbus/system_bus_socket"
#define RUN_IT " start it in a user session or under dbus-run-session"

int bus_connect_hint(bool user, int r, char **ret) {
        const char *address = secure_getenv(user ? "DBUS_SESSION_BUS_ADDRESS" : "DBUS_SYSTEM_BUS_ADDRESS");
        const char *runtime_dir = secure_getenv("XDG_RUNTIME_DIR");
        char *hint = NULL;
        int k;

        *ret = NULL;
        if (r != -ENOENT && r != -ECONNREFUSED && r != -ENOMEDIUM)
                return 0;

        /* An explicit address is the user's choice: only it can be wrong. Otherwise say which default
         * sd-bus tried (sd_bus_open_user() gives ENOMEDIUM when it has no place to look at all). */
        if (address && *address)
                k = asprintf(&hint, "is the bus at %s running?", address);
        else if (!user)
                k = asprintf(&hint, "is D-Bus running? %s %s", SYSTEM_BUS_SOCKET,
                             access(SYSTEM_BUS_SOCKET, F_OK) < 0 ? "does not exist" : "does not answer");
        else if (runtime_dir && *runtime_dir)
                k = asprintf(&hint, "DBUS_SESSION_BUS_ADDRESS is not set and %s/bus %s;" RUN_IT, runtime_dir,
                             r == -ECONNREFUSED ? "does not answer" : "does not exist");
        else
                k = asprintf(&hint, "neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set;" RUN_IT);
        if (k < 0)
                return -ENOMEM;

        *ret = hint;
        return 0;
}
