/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-bus.h>

/* The org.imgcache.Error.* names of the D-Bus API and their errno equivalents. Both imgcached and
 * imgcachectl call imgcache_bus_error_register() once at start, so sd_bus_error_get_errno() and
 * sd_bus_error_set_errno() translate in both directions. */

#define IMGCACHE_ERROR_NO_SUCH_IMAGE       "org.imgcache.Error.NoSuchImage"       /* ENOENT */
#define IMGCACHE_ERROR_INVALID_IMAGE_ID    "org.imgcache.Error.InvalidImageId"    /* EINVAL */
#define IMGCACHE_ERROR_NO_SUCH_JOB         "org.imgcache.Error.NoSuchJob"         /* ENXIO */
#define IMGCACHE_ERROR_NO_UPSTREAM         "org.imgcache.Error.NoUpstream"        /* EHOSTUNREACH */
#define IMGCACHE_ERROR_UPSTREAM_FAILED     "org.imgcache.Error.UpstreamFailed"    /* EREMOTEIO */
#define IMGCACHE_ERROR_CHECKSUM_MISMATCH   "org.imgcache.Error.ChecksumMismatch"  /* EBADMSG */
/* Pins and OpenImage used up the file descriptors imgcached sets aside for them (imgcached(8), LIMITS). */
#define IMGCACHE_ERROR_TOO_MANY_OPEN_FILES "org.imgcache.Error.TooManyOpenFiles"  /* EMFILE */

extern const sd_bus_error_map imgcache_bus_error_map[];

/* Registers imgcache_bus_error_map with sd-bus; idempotent. Returns 0 or negative errno. */
int imgcache_bus_error_register(void);

/* If id is not a valid image id, sets error to InvalidImageId with a message naming the id and the
 * reason, and returns -EINVAL. Returns 0 for a valid id. */
int bus_error_check_image_id(sd_bus_error *error, const char *id);
