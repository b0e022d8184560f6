/* SPDX-License-Identifier: MIT */
#pragma once

/* Following fetch jobs to their end: the job signals (subscribed before the call that starts the jobs, so
 * none is missed), progress bars on a terminal or plain lines without one, one line per finished job,
 * Ctrl-C detaching (the jobs keep running in imgcached), and the daemon going away. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
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
        bool cached;            /* no job: the image was cached already (watch_add_ended()) */
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

/* Adds an image that got no job, with its end known already: cached (result "done", its size), or a call
 * that failed (result "failed", the error). It is in the --json results, in the order it was added, and
 * nothing waits for it. -ENOMEM on failure. */
int watch_add_ended(Watch *w, const char *image_id, bool cached, uint64_t size, const char *error);

/* Every entry as JSON: {job, image_id, path, result, error, size, cached}; job and path are null for an
 * image without a job, result null for a job still running. NULL when out of memory. */
json_t *watch_to_json(const Watch *w);

/* Asks each job without a known image for its ImageId, for the messages. */
void watch_resolve_image_ids(sd_bus *bus, Watch *w);

/* The image id, or the object path while the image is not known. */
const char *job_label(const JobInfo *j);

/* Runs the loop until every job has ended, Ctrl-C or the daemon going away, printing progress and, with
 * --json, the results. Returns -EREMOTEIO when a job failed or was cancelled, -EINTR when detached. */
int watch_follow(sd_bus *bus, Watch *w);
