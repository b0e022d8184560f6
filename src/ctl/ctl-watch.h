/* SPDX-License-Identifier: MIT */
#pragma once

/* Following fetch jobs to their end: the job signals (subscribed before the call that starts the jobs, so
 * none is missed), progress bars on a terminal or plain lines without one, one line per finished job,
 * Ctrl-C detaching (the jobs keep running in imgcached), and the daemon going away. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "util.h"

typedef struct Watch Watch;

typedef struct JobInfo {
        Watch *watch;
        sd_bus_slot *get_all_slot;
        char *path;
        uint32_t id;
        char *image_id;         /* as known from the call or the ImageId property */

        /* properties, as last seen */
        const char *p_image_id;
        const char *p_state;
        const char *p_error;
        double p_progress;
        uint64_t p_done;
        uint64_t p_total;

        char *state;
        char *error;
        uint64_t done;
        uint64_t total;

        usec_t first_seen;
        uint64_t first_done;
        double rate;

        bool removed;
        char *result;
} JobInfo;

struct Watch {
        sd_event *event;
        sd_bus_slot *matches[4];        /* JobRemoved, JobNew, PropertiesChanged, NameOwnerChanged */
        JobInfo *jobs;
        size_t n_jobs;
        bool tty;
        bool json;
        unsigned lines_drawn;
        unsigned n_failed;
        bool detached;
};

/* Frees what w holds (not w itself); for _cleanup_. */
void watch_done(Watch *w);

/* Creates w's event loop and installs the signal matches and the SIGINT/SIGTERM handlers. Call before the
 * method that starts the jobs. Logs failures. */
int watch_subscribe(sd_bus *bus, Watch *w);

/* Adds the job at path (image_id may be NULL: see watch_resolve_image_ids()); a path seen already is not
 * added twice. -ENOMEM on failure. */
int watch_add(Watch *w, const char *path, const char *image_id);

/* Asks each job without a known image for its ImageId, for the messages. */
void watch_resolve_image_ids(sd_bus *bus, Watch *w);

/* The image id, or the object path while the image is not known. */
const char *job_label(const JobInfo *j);

/* Runs the loop until every job has ended, Ctrl-C or the daemon going away, printing progress and, with
 * --json, the results. Returns -EREMOTEIO when a job failed or was cancelled, -EINTR when detached. */
int watch_follow(sd_bus *bus, Watch *w);
