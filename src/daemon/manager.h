/* SPDX-License-Identifier: MIT */
#pragma once

/* The Manager: the one object that owns the daemon's parts (the cache, the bus, the Fetcher, the HTTP
 * server, the fleet) and the one way to change the cache, whatever front end asks (manager-ops.c). */

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "checksum.h"
#include "config.h"
#include "fetch.h"
#include "metrics.h"
#include "store.h"
#include "util.h"

typedef struct HttpServer HttpServer;
typedef struct Job Job;
typedef struct JobRegistry JobRegistry;
typedef struct Pin Pin;
typedef struct PolkitRegistry PolkitRegistry;
typedef struct VerifyJob VerifyJob;

#define MANAGER_BUS_NAME "org.imgcache.Manager"
#define MANAGER_PATH "/org/imgcache/Manager"
#define MANAGER_INTERFACE "org.imgcache.Manager"

/* PropertiesChanged goes out at most this often; hits are written to disk at least this often. */
#define MANAGER_PROPERTIES_INTERVAL_USEC (250 * USEC_PER_MSEC)
#define MANAGER_HIT_FLUSH_USEC (5 * USEC_PER_SEC)
#define MANAGER_VERIFY_MAX 8
#define MANAGER_PINS_MAX 4096

/* File descriptors, for the budget of pins and OpenImage (manager_fd_budget_left()). Pins get what
 * RLIMIT_NOFILE leaves after everything else had its share: an HTTP connection holds its socket and the
 * image file it serves; a fill its curl socket, the resolver's socket pair, the partial file opened for
 * writing and for reading, and one spare; a Verify worker the image and an eventfd. The reserve is the
 * rest: stdio, the bus, the event loop (epoll, signalfd, timerfds), MHD (listening socket, epoll, ITC),
 * curl's multi handle, sqlite (database, journal, lock), the cache directory and its subdirectories, and
 * the two fds a PinImage call holds besides its pin until the reply is sent. units/imgcached.service.in
 * sizes LimitNOFILE= from the same numbers. */
#define MANAGER_FDS_PER_CONNECTION 2U
#define MANAGER_FDS_PER_FILL 6U
#define MANAGER_FDS_PER_VERIFY 2U
#define MANAGER_FDS_RESERVE 64U

/* The values behind the changing properties, as last announced; compared to find what changed. */
typedef struct PropertySnapshot {
        char *driver;
        char *cache_directory;
        char *upstream;
        uint64_t max_size;
        int max_size_error;       /* manager_max_size() failed: max_size means nothing */
        uint64_t keep_free;
        int keep_free_error;      /* likewise for manager_keep_free() */
        uint64_t stall_time;
        uint64_t current_size;
        uint32_t image_count;
        uint32_t queued_count;
        uint64_t hits;
        uint64_t misses;
        uint64_t bytes_served;
} PropertySnapshot;

/* What the Manager remembers of a queued image whose last fetch failed (manager-fetch.c). In memory
 * only: a restart forgets it, and fetches the queue again at once with PrefetchOnQueue=yes. The expected
 * checksum is not here: it is stored with the queue entry (image_cache_queued_checksum()). */
typedef struct QueueRetry {
        struct Manager *manager;
        char *id;
        unsigned failures;        /* transient failures in a row, for the backoff */
        char *last_error;         /* the message of the last failure */
        int last_errno;           /* its -errno (fetch.h) */
        usec_t next_attempt;      /* CLOCK_REALTIME of the retry scheduled; 0 when none is */
        sd_event_source *timer;   /* the retry scheduled, or NULL (running, or a permanent failure) */
} QueueRetry;
void queue_retry_free_void(void *p);

/* What the command line set; the rest comes from the config file. */
typedef struct ManagerOptions {
        bool user;
        const char *config_path;  /* NULL: the mode's default */
        const char *cache_dir;    /* NULL: Directory= or the mode's default */
        const char *upstream;     /* NULL: URL= */
        const char *listen;       /* NULL: Listen= */
} ManagerOptions;

typedef struct Manager {
        sd_event *event;
        sd_bus *bus;
        ImageCache *cache;
        PolkitRegistry *polkit;   /* NULL in --user mode: no authorization on the session bus */

        bool user;
        char *config_path;
        char *cache_dir;
        char *upstream_override;
        char *listen_override;
        bool listen_from_systemd;
        bool cache_dir_from_command_line; /* --cache-dir=: Directory= does not apply */     /* the HTTP socket was passed in: Listen= does not apply */
        char *restart_needed;         /* settings a reload changed that apply at the next start ("Driver=, Listen=") */
        Config config;

        GHashTable *retries;          /* image id → QueueRetry*: queued images whose last fetch failed */
        unsigned n_retries_pending;   /* of them, with a retry scheduled (no exit on idle meanwhile) */
        Fetcher *fetcher;             /* fills from the upstream (fetch.h); manager-fetch.c */
        Fleet *fleet;                 /* the peers fills ask first ([Fleet], fleet.h); NULL: none */
        GList *nodes_calls;           /* NodesCall*: GetImageNodes waiting for the fleet (manager-dbus.c) */
        FetcherObserver fetcher_observer;
        JobRegistry *jobs;            /* org.imgcache.Job objects (job.h); manager-fetch.c */
        GList *pins;                  /* Pin* */
        unsigned n_pins;
        uint64_t fd_limit;            /* RLIMIT_NOFILE, once raised to the hard limit */
        unsigned fd_budget;           /* fds pins and OpenImage may hold at once; UINT_MAX before the load */
        unsigned n_open_fds;          /* OpenImage fds opened and not closed yet (the reply is in flight) */
        GList *verify_jobs;           /* VerifyJob* */
        unsigned n_verify_jobs;

        uint64_t hits, misses, bytes_served; /* since start */
        HttpServer *http;             /* the HTTP side (http.h); NULL when it could not listen */
        uint64_t evictions, bytes_fetched, fills_started, fills_failed; /* for /metrics, since start */
        Histogram fill_durations;     /* of fills that completed, in seconds */
        uint64_t upstream_errors[_UPSTREAM_ERROR_MAX]; /* fills that failed, by the upstream's fault */

        sd_event_source *properties_timer;
        sd_event_source *flush_timer;
        sd_event_source *free_space_timer; /* FreeSpaceCheckSec=: KeepFree= while running */
        bool keep_free_short;         /* the last check could not reach KeepFree= (logged once) */
        PropertySnapshot announced;

        bool name_released;           /* idle exit: the bus name is gone, finish and exit */
} Manager;

int manager_new(const ManagerOptions *o, Manager **ret);
Manager *manager_free(Manager *m);
/* A GetImageNodes call not answered yet: dropped (at shutdown). */
typedef struct NodesCall NodesCall;
void manager_nodes_call_free(NodesCall *call);
static inline void manager_freep(Manager **m) {
        manager_free(*m);
}

/* Loads the configuration and opens the cache directory; logs what went wrong. */
int manager_load(Manager *m);
/* Connects to the bus, exports the object and takes the name. */
int manager_connect_bus(Manager *m);
/* The main loop, with exit on idle. Returns 0 or a negative errno. */
int manager_run(Manager *m);
/* Re-reads the configuration (SIGHUP). A broken file is logged and the old configuration kept. */
int manager_reload(Manager *m);

/* Starts the HTTP server on the socket systemd passed, else on --listen=/Listen=. */
int manager_start_http(Manager *m);

/* True when one more pin or OpenImage fits the fd budget: pins (one fd each, the read end of their pipe,
 * for as long as they last) and OpenImage calls in flight (one fd each, until the reply has been queued
 * and our copy closed) together stay within m->fd_budget, so that connections, fills and sqlite never
 * meet EMFILE because of them. */
bool manager_fd_budget_left(const Manager *m);

/* True while something other than an incoming call needs the daemon: a polkit query, a Verify worker,
 * a pin, a fill from the upstream. */
bool manager_is_busy(const Manager *m);

/* Sends STATUS= (images, size of max, hit ratio), after extra ("READY=1\n" or NULL). */
void manager_notify_status(Manager *m, const char *extra);
/* Schedules a PropertiesChanged (and a STATUS= update) for whatever changed, coalesced. */
void manager_properties_changed(Manager *m);
/* The counters of Hits, Misses and BytesServed (and /metrics); the Manager is their only owner, every
 * front end reports here. count_hit also schedules the write-behind of the store's hit counters (the
 * hit itself is recorded in the store by whoever opened the file). */
void manager_count_hit(Manager *m, const char *id);
void manager_count_miss(Manager *m, const char *id);
void manager_count_bytes_served(Manager *m, uint64_t n);

/* Values of properties, shared by the getters and the change detection. MaxSize= in bytes, resolved
 * by the store: -errno when it is a share of a filesystem that cannot be examined. */
int manager_max_size(const Manager *m, uint64_t *ret);
int manager_keep_free(const Manager *m, uint64_t *ret);  /* KeepFree= in bytes, the same way */
DriverKind manager_driver(const Manager *m);
/* (Re)arms the free-space check of FreeSpaceCheckSec= (after load and reload). */
void manager_arm_free_space_check(Manager *m);
uint32_t manager_queued_count(const Manager *m);
const char *manager_upstream(const Manager *m);
void manager_snapshot(const Manager *m, PropertySnapshot *ret);
void property_snapshot_done(PropertySnapshot *s);

/* Authorization of a call for action (org.imgcache.*): 1 allowed, 0 pending (the handler returns 1; the
 * call is dispatched again with the answer), negative errno with error set when denied or failed. */
int manager_authorize(Manager *m, sd_bus_message *message, const char *action, const char *image_id,
                      sd_bus_error *error);

/* ---- fetching (manager-fetch.c) ---- */

/* m->fetcher from the configuration (URL= or --upstream=) and m->jobs; after the cache is open. */
int manager_setup_fetcher(Manager *m);
/* After a reload: the new upstream settings apply to fills started from now on. */
/* Applies m->config's upstream settings; on failure (logged) the fetcher keeps the ones it had. */
int manager_reconfigure_fetcher(Manager *m);
/* Cancels every fill (partial files stay for a resume), ends the jobs, frees the fetcher and the jobs. */
void manager_free_fetcher(Manager *m);
bool manager_has_upstream(const Manager *m);
/* The job fetching id: the running one, or a new one (starting the fill). A cached image gets a job
 * that ends "done" right after the reply. -ENXIO without an upstream, -E2BIG beyond JOB_REGISTRY_MAX. */
int manager_fetch(Manager *m, const char *id, const Checksum *expected, Job **ret);
/* Starts a job for every queued image, oldest first (the checksum stored with the queue entry applies);
 * appends the paths to reply as "ao" contents. */
int manager_prefetch(Manager *m, sd_bus_message *reply);
/* PrefetchOnQueue=yes: starts the fetch of a just-queued image (failures are logged). */
void manager_fetch_queued(Manager *m, const char *id);
/* At start-up with PrefetchOnQueue=yes: starts the fetch of every queued image, in queue order. */
void manager_fetch_queue_on_start(Manager *m);
/* Retries of failed queued images: a failed fill of a queued image is fetched again after a backoff
 * (RetryInitialSec= doubling up to RetryMaxSec=, with jitter), unless its failure is permanent (404, a
 * digest or length mismatch, larger than MaxSize), which is reported once and left to the next explicit
 * Prefetch. The state of image id (NULL when its last fetch did not fail), for ListQueuedDetails. */
const QueueRetry *manager_queue_retry(const Manager *m, const char *id);
bool manager_retries_pending(const Manager *m);   /* some retry is scheduled */
/* Forgets the failures of id (dequeued or cached), or of every image (the queue emptied). */
void manager_forget_retry(Manager *m, const char *id);
void manager_forget_retries(Manager *m);

/* ---- the operations of every front end (manager-ops.c) ---- */

/* The D-Bus methods call these after polkit; the HTTP server through manager_http_operations, after its
 * token check. Each does everything the operation implies (signals, properties, retry state,
 * PrefetchOnQueue, the log), whoever asked. */

/* 1 queued (the checksum stored with the marker, ImageQueued, QueuedCount, PrefetchOnQueue); 0 when the
 * image is cached or queued already. expected may be NULL. */
int manager_queue_image(Manager *m, const char *id, const Checksum *expected);
/* 1 dequeued (and its retry state forgotten), 0 when it was not queued. */
int manager_dequeue_image(Manager *m, const char *id);
int manager_dequeue_all(Manager *m, unsigned *ret_n);
/* -ENOENT when the image is not cached, -EBUSY when it is pinned and !ignore_pins (its pins end when it is
 * deleted anyway). */
int manager_delete_image(Manager *m, const char *id, bool ignore_pins);
/* Deletes every image that is not pinned; *ret_n: how many went. The log line counts the pinned ones kept. */
int manager_delete_all_images(Manager *m, unsigned *ret_n);
/* Prunes until both MaxSize= and KeepFree= hold (least recently used first, pins skipped); *ret says
 * what was removed and what pins kept. On failure *ret_limit_failed says whether a limit could not be
 * resolved (nothing was pruned then) or the pruning itself failed. */
int manager_prune(Manager *m, SpaceResult *ret, bool *ret_limit_failed);
/* The journal line of a Prune or of the free-space watch. */
void manager_log_space(const char *what, const SpaceResult *res, uint64_t max_size, uint64_t keep_free);
/* Clean with stall (0: StallTime=). */
int manager_clean(Manager *m, usec_t stall, unsigned *ret_stalled, unsigned *ret_invalid);

typedef struct HttpOperations HttpOperations;
extern const HttpOperations manager_http_operations;

/* The bus object (manager-dbus.c). */
extern const sd_bus_vtable manager_vtable[];
