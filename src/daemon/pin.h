/* SPDX-License-Identifier: MIT */
#pragma once

#include <sys/types.h>

#include <systemd/sd-bus.h>

#include "manager.h"

/* A pin keeps an image from being pruned or evicted (image_cache_pin) for as long as its holder wants:
 * like logind's inhibitor locks, the daemon keeps the read end of a pipe and hands out the write end.
 * The pin ends when the last copy of that fd is closed (EPOLLHUP on the read end) or when the bus
 * connection that asked for it goes away. */

struct Pin {
        Manager *manager;
        char *image_id;
        char *why;
        pid_t pid;
        int read_fd;
        sd_event_source *source;
        sd_bus_track *track;
};

/* Pins id for the sender of message; the caller owns *ret_fd (the write end) and replies with it. */
int pin_new(Manager *m, sd_bus_message *message, const char *id, const char *why, int *ret_fd);
/* Ends the pin (unpins the image) and frees it. Returns NULL. */
Pin *pin_free(Pin *p);
