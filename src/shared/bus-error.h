/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

/* The org.imgcache.Error.* names of the D-Bus API and their errno equivalents, and the flags of its
 * *WithFlags methods. Both imgcached and imgcachectl call imgcache_bus_error_register() once at start,
 * so sd_bus_error_get_errno() and sd_bus_error_set_errno() translate in both directions. */

#define IMGCACHE_ERROR_NO_SUCH_IMAGE       "org.imgcache.Error.NoSuchImage"       /* ENOENT */
#define IMGCACHE_ERROR_INVALID_IMAGE_ID    "org.imgcache.Error.InvalidImageId"    /* EINVAL */
#define IMGCACHE_ERROR_NO_SUCH_JOB         "org.imgcache.Error.NoSuchJob"         /* ENXIO */
#define IMGCACHE_ERROR_NO_UPSTREAM         "org.imgcache.Error.NoUpstream"        /* EHOSTUNREACH */
#define IMGCACHE_ERROR_UPSTREAM_FAILED     "org.imgcache.Error.UpstreamFailed"    /* EREMOTEIO */
#define IMGCACHE_ERROR_CHECKSUM_MISMATCH   "org.imgcache.Error.ChecksumMismatch"  /* EBADMSG */
/* DeleteImage of an image someone pinned (PinImage), without IMGCACHE_DELETE_IMAGE_IGNORE_PINS. */
#define IMGCACHE_ERROR_IMAGE_PINNED        "org.imgcache.Error.ImagePinned"       /* EBUSY */
/* Pins and OpenImage used up the file descriptors imgcached sets aside for them (imgcached(8), LIMITS). */
#define IMGCACHE_ERROR_TOO_MANY_OPEN_FILES "org.imgcache.Error.TooManyOpenFiles"  /* EMFILE */

/* The flags of DeleteImageWithFlags(); any other bit is refused, so that new ones can be added. */
#define IMGCACHE_DELETE_IMAGE_IGNORE_PINS  (UINT64_C(1) << 0)  /* delete even while pinned */
#define IMGCACHE_DELETE_IMAGE_FLAGS_ALL    IMGCACHE_DELETE_IMAGE_IGNORE_PINS

extern const sd_bus_error_map imgcache_bus_error_map[];

/* Registers imgcache_bus_error_map with sd-bus; idempotent. Returns 0 or negative errno. */
int imgcache_bus_error_register(void);

/* If id is not a valid image id, sets error to InvalidImageId with a message naming the id and the
 * reason, and returns -EINVAL. Returns 0 for a valid id. */
int bus_error_check_image_id(sd_bus_error *error, const char *id);

/* For "Failed to connect to the session/system bus: %m (<hint>)": why the bus sd-bus looked for is not
 * there and how to get one, from the variables sd-bus reads the address from. Shared by imgcached and
 * imgcachectl, so both name the cause in the same words. *ret = NULL when r is not an error of finding
 * the bus (ENOENT, ECONNREFUSED, ENOMEDIUM). Returns 0 or -ENOMEM. */
int bus_connect_hint(bool user, int r, char **ret);
