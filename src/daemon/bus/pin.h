/* SPDX-License-Identifier: MIT */
#pragma once

#include <sys/types.h>

#include <systemd/sd-bus.h>

#include "manager.h"

/* A pin keeps an image from being pruned, evicted or deleted without IMGCACHE_DELETE_IMAGE_IGNORE_PINS
 * (image_cache_pin) for as long as its holder wants: like logind's inhibitor locks, the daemon keeps the
 * read end of a pipe and hands out the write end. The fd is the lease: the pin ends when the last copy of
 * it is closed (EPOLLHUP on the read end), in whichever process that copy is, and not when the bus
 * connection that asked for it goes away — a holder may pass the fd on, or keep a dup and disconnect. It
 * also ends when the image leaves the cache anyway (a forced delete, a failed Verify). */

struct Pin {
        Manager *manager;
        char *image_id;
        char *why;
        pid_t pid;
        int read_fd;
        sd_event_source *source;
};

/* Pins id for the sender of message; the caller owns *ret_fd (the write end) and replies with it. */
int pin_new(Manager *m, sd_bus_message *message, const char *id, const char *why, int *ret_fd);
/* Ends the pin (unpins the image) and frees it. Returns NULL. */
Pin *pin_free(Pin *p);

/* The oldest pin of id, or NULL when it has none: who to name when a delete is refused. */
const Pin *pin_find(const Manager *m, const char *id);
/* Ends every pin of id, an image that just left the cache: a pin must not outlive its image, or its end
 * would unpin a later copy of the same id that someone else pinned. */
void pins_end_for_image(Manager *m, const char *id);
