/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

#include "checksum.h"
#include "manager.h"

/* org.imgcache.Job objects at /org/imgcache/job/<n>, one per image being fetched for a D-Bus caller
 * (FetchImage, Prefetch, PrefetchOnQueue). A job follows the image's Fill (fetch.h): HTTP misses join the
 * same fill, and a FetchImage of an image in flight returns the job that is already there. Jobs are
 * exported through a fallback vtable and a node enumerator; JobNew/JobRemoved go out on the Manager.
 * Progress (PropertiesChanged of Progress/BytesDone/BytesTotal) is sent at most every
 * JOB_PROGRESS_INTERVAL_USEC. When the fill ends, State/Error change, JobRemoved(id, path, "done" |
 * "failed" | "cancelled") follows, and the object disappears. */

#define JOB_PATH_PREFIX "/org/imgcache/job"
#define JOB_INTERFACE "org.imgcache.Job"
#define JOB_PROGRESS_INTERVAL_USEC (250 * USEC_PER_MSEC)
#define MANAGER_JOBS_MAX 4096

typedef struct Job Job;

/* m->fetcher from the configuration (URL= or --upstream=); after manager_load(). */
int manager_setup_fetcher(Manager *m);
/* After a reload: the new upstream settings apply to fills started from now on. */
void manager_reconfigure_fetcher(Manager *m);
/* Exports the job objects on m->bus. */
int manager_add_job_objects(Manager *m);
/* Cancels every fill (partial files stay for a resume), ends the jobs, frees the fetcher. */
void manager_free_jobs(Manager *m);
unsigned manager_n_jobs(const Manager *m);

/* The job fetching id: the running one, or a new one (starting the fill). A cached image gets a job
 * that ends "done" right after the reply. -ENXIO without an upstream, -E2BIG beyond MANAGER_JOBS_MAX. */
int manager_fetch(Manager *m, const char *id, const Checksum *expected, Job **ret);
/* Starts a job for every queued image, oldest first (the caller's QueueImage checksum applies); appends
 * the paths to reply as "ao" contents. */
int manager_prefetch(Manager *m, sd_bus_message *reply);
/* PrefetchOnQueue=yes: starts the fetch of a just-queued image (failures are logged). */
void manager_fetch_queued(Manager *m, const char *id);
/* ListJobs: appends a(ussdo). */
int manager_append_jobs(Manager *m, sd_bus_message *reply);

const char *job_path(const Job *j);
