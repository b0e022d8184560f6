/* SPDX-License-Identifier: MIT */
#pragma once

/* The verbs that only look: status, list, list-queued, show. */

#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

#include "imgcachectl.h"

/* One entry of ListImages / GetImage, "(stttts)". */
typedef struct ImageInfo {
        const char *id;
        uint64_t size;
        uint64_t hits;
        uint64_t last_accessed;
        uint64_t last_modified;
        const char *checksum;
} ImageInfo;

/* Reads ListImages; the strings in *ret are borrowed from *ret_reply. Logs failures. */
int list_images(sd_bus *bus, ImageInfo **ret, size_t *ret_n, sd_bus_message **ret_reply);

/* Whether id is cached, with its size: 1 (and *ret_size), 0 when imgcached says it is not, or a negative
 * errno (not logged) when it could not tell. */
int get_cached_size(sd_bus *bus, const char *id, uint64_t *ret_size);

int verb_status(int argc, char *argv[], Context *c);
int verb_list(int argc, char *argv[], Context *c);
int verb_list_queued(int argc, char *argv[], Context *c);
int verb_show(int argc, char *argv[], Context *c);
