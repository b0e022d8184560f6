/* SPDX-License-Identifier: MIT */
/* Pins (pin.h): who holds one, their bus objects, and the images they keep from being removed. */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "pin.h"

/* PinCount changes with every pin and there are few of them: announced at once, not with the coalesced
 * counters (manager_properties_changed()). */
static void pin_count_changed(Manager *m) {
        int r;

        if (!m->bus)
                return;
        r = sd_bus_emit_properties_changed(m->bus, MANAGER_PATH, MANAGER_INTERFACE, "PinCount", NULL);
        if (r < 0)
                log_debug_errno(r, "Cannot emit PropertiesChanged for PinCount, ignoring: %m");
}

Pin *pin_free(Pin *p) {
        if (!p)
                return NULL;

        if (p->manager) {
                image_cache_unpin(p->manager->cache, p->image_id);
                p->manager->pins = g_list_remove(p->manager->pins, p);
                p->manager->n_pins--;
                pin_count_changed(p->manager);
                log_image(LOG_DEBUG, NULL, p->image_id, "Pin on %s released (pid %d, \"%s\").", p->image_id,
                          (int) p->pid, p->why);
        }
        sd_event_source_disable_unref(p->source);
        safe_close(p->read_fd);
        free(p->image_id);
        free(p->why);
        free(p);
        return NULL;
}

static int on_pin_hangup(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        /* Nothing is ever written to the pipe: any event means every write end is closed. */
        pin_free(userdata);
        return 0;
}

static pid_t sender_pid(sd_bus_message *message) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        pid_t pid = 0;

        if (sd_bus_query_sender_creds(message, SD_BUS_CREDS_PID, &creds) >= 0)
                (void) sd_bus_creds_get_pid(creds, &pid);
        return pid;
}

/* Only the hang-up of the pipe ends the pin, never the bus connection of whoever asked for it. The hang-up
 * goes before bus messages: the last copy of the fd is closed before anything its holder sends afterwards
 * reaches us, so a ListPins or Prune sent after the close already finds the pin gone. */
static int pin_watch(Pin *p) {
        int r;

        r = sd_event_add_io(p->manager->event, &p->source, p->read_fd, EPOLLIN, on_pin_hangup, p);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(p->source, "pin");
        return sd_event_source_set_priority(p->source, SD_EVENT_PRIORITY_IMPORTANT);
}

int pin_new(Manager *m, sd_bus_message *message, const char *id, const char *why, int *ret_fd) {
        _cleanup_(closep) int write_fd = -EBADF;
        int fds[2], r;
        Pin *p;

        if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
                return -errno;
        write_fd = fds[1];

        p = calloc(1, sizeof(Pin));
        if (!p) {
                safe_close(fds[0]);
                return -ENOMEM;
        }
        *p = (Pin) {
                .read_fd = fds[0],
                .image_id = strdup(id),
                .why = strdup(why),
                .pid = sender_pid(message),
        };
        if (!p->image_id || !p->why) {
                pin_free(p);
                return -ENOMEM;
        }

        r = image_cache_pin(m->cache, id);
        if (r < 0) {
                pin_free(p);
                return r;
        }
        p->manager = m;
        m->pins = g_list_prepend(m->pins, p);
        m->n_pins++;

        r = pin_watch(p);
        if (r < 0) {
                pin_free(p);
                return r;
        }

        pin_count_changed(m);
        log_image(LOG_INFO, NULL, id, "Image %s pinned by pid %d: %s", id, (int) p->pid, why);
        *ret_fd = TAKE_FD(write_fd);
        return 0;
}

const Pin *pin_find(const Manager *m, const char *id) {
        for (GList *l = g_list_last(m->pins); l; l = l->prev) { /* oldest first */
                const Pin *p = l->data;
                if (streq(p->image_id, id))
                        return p;
        }
        return NULL;
}

void pins_end_for_image(Manager *m, const char *id) {
        for (GList *l = m->pins, *next; l; l = next) {
                Pin *p = l->data;

                next = l->next; /* pin_free() unlinks l */
                if (!streq(p->image_id, id))
                        continue;
                log_image(LOG_INFO, NULL, p->image_id, "Pin on %s by pid %d (\"%s\") ended: the image left the cache.",
                          p->image_id, (int) p->pid, p->why);
                pin_free(p);
        }
}
