/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "fetch.h"

/* org.imgcache.Job objects at /org/imgcache/job/<n>, one per image being fetched for a D-Bus caller
 * (FetchImage, Prefetch, PrefetchOnQueue over D-Bus or HTTP). A job follows the image's Fill (fetch.h):
 * HTTP misses join the same fill, and a fetch of an image in flight returns the job that is already
 * there. Jobs are exported through a fallback vtable and a node enumerator; JobNew/JobRemoved go out on
 * the object the registry was attached with (the Manager). Progress (PropertiesChanged of
 * Progress/BytesDone/BytesTotal) is sent at most every JOB_PROGRESS_INTERVAL_USEC. When the fill ends,
 * State/Error change, JobRemoved(id, path, "done" | "failed" | "cancelled") follows, and the object
 * disappears.
 *
 * This file knows Jobs only: who starts fills and why is the Manager's business (manager-fetch.c),
 * which reaches the registry through this header and is reached back only through JobRegistryHooks. */

#define JOB_PATH_PREFIX "/org/imgcache/job"
#define JOB_INTERFACE "org.imgcache.Job"
#define JOB_PROGRESS_INTERVAL_USEC (250 * USEC_PER_MSEC)
#define JOB_REGISTRY_MAX 4096

typedef struct Job Job;
typedef struct JobRegistry JobRegistry;

typedef struct JobRegistryHooks {
        /* Authorizes Cancel of the job fetching image_id: 1 allowed, 0 pending (the call is dispatched
         * again with the answer), negative errno with error set when denied or failed. */
        int (*authorize_cancel)(sd_bus_message *message, const char *image_id, sd_bus_error *error,
                                void *userdata);
        /* A job ended and is gone (what the owner shows of the cache may have changed with it). */
        void (*job_ended)(void *userdata);
        void *userdata;
} JobRegistryHooks;

int job_registry_new(sd_event *event, const JobRegistryHooks *hooks, JobRegistry **ret);
/* Frees every job left (jobs of cached images that had not ended yet); no signals. */
JobRegistry *job_registry_free(JobRegistry *reg);
/* Exports the job objects on bus; JobNew/JobRemoved are emitted on signal_path, signal_interface
 * (both static strings). Before that, jobs run without objects or signals. */
int job_registry_attach_bus(JobRegistry *reg, sd_bus *bus, const char *signal_path, const char *signal_interface);

unsigned job_registry_size(const JobRegistry *reg);
bool job_registry_full(const JobRegistry *reg);  /* JOB_REGISTRY_MAX jobs exist */
/* The running job of the fill of image_id, or NULL. */
Job *job_registry_find_image(const JobRegistry *reg, const char *image_id);
/* ListJobs: appends a(ussdo), by job id. */
int job_registry_append(JobRegistry *reg, sd_bus_message *reply);

/* A new job following f, or, with f NULL (an image that is cached already), one that ends "done" right
 * after the reply. -E2BIG when the registry is full. */
int job_new(JobRegistry *reg, const char *image_id, Fill *f, Job **ret);
const char *job_path(const Job *j);
