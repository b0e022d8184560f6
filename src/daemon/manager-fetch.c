/* SPDX-License-Identifier: MIT */
/* The Manager's side of fetching: it owns the Fetcher (setup, reconfiguration, free, its observer) and
 * the JobRegistry, starts the jobs of FetchImage, Prefetch, PrefetchOnQueue and start-up, and retries
 * failed fetches of queued images. job.c knows Jobs only; the Fetcher (fetcher.c, fill*.c) knows fills
 * only. */

#include <errno.h>
#include <stdlib.h>

#include "checksum.h"
#include "fleet.h"
#include "job.h"
#include "log.h"
#include "manager.h"
#include "parse-util.h"
#include "retry.h"

#define ACTION_QUEUE "org.imgcache.queue"

/* The fetcher sees --upstream= as URL=. */
static Config fetcher_config(const Manager *m) {
        Config c = m->config; /* shallow: fetcher_new/fetcher_reconfigure copy what they keep */
        c.upstream_url = (char *) manager_upstream(m);
        return c;
}

static void retry_started(Manager *m, const char *id);
static void retry_fill_ended(Manager *m, Fill *f);

/* Counted for /metrics. */
static void on_fill_started(Fetcher *fe, Fill *f, void *userdata) {
        Manager *m = userdata;
        m->fills_started++;
        retry_started(m, fill_image_id(f));
}

static void on_fill_finished(Fetcher *fe, Fill *f, void *userdata) {
        Manager *m = userdata;

        m->bytes_fetched += fill_bytes_written(f);
        if (fill_state(f) == FILL_DONE)
                histogram_observe(&m->fill_durations,
                                  (double) (now_usec(CLOCK_MONOTONIC) - fill_started_usec(f)) / USEC_PER_SEC);
        else {
                UpstreamErrorKind k = upstream_error_kind_from_errno(fill_error(f));
                m->fills_failed++;
                if (k >= 0)
                        m->upstream_errors[k]++;
        }
        retry_fill_ended(m, f);
}

static int job_authorize_cancel(sd_bus_message *message, const char *image_id, sd_bus_error *error,
                                void *userdata) {
        return manager_authorize(userdata, message, ACTION_QUEUE, image_id, error);
}

static void on_job_ended(void *userdata) {
        manager_properties_changed(userdata);
}

int manager_setup_fetcher(Manager *m) {
        const JobRegistryHooks hooks = {
                .authorize_cancel = job_authorize_cancel,
                .job_ended = on_job_ended,
                .userdata = m,
        };
        Config c = fetcher_config(m);
        int r;

        r = job_registry_new(m->event, &hooks, &m->jobs);
        if (r < 0)
                return log_error_errno(r, "Out of memory.");
        r = fetcher_new(m->event, m->cache, &c, &m->fetcher);
        if (r < 0)
                return log_error_errno(r, "Cannot set up fetching from the upstream: %m");
        r = fleet_new(m->event, &m->config, &m->fleet);
        if (r < 0)
                return r; /* logged, naming the setting */
        fetcher_set_fleet(m->fetcher, m->fleet);

        m->fetcher_observer = (FetcherObserver) {
                .fill_started = on_fill_started,
                .fill_finished = on_fill_finished,
                .userdata = m,
        };
        fetcher_add_observer(m->fetcher, &m->fetcher_observer);
        return 0;
}

int manager_reconfigure_fetcher(Manager *m) {
        if (!m->fetcher)
                return 0;
        Config c = fetcher_config(m);
        int r = fetcher_reconfigure(m->fetcher, &c);
        if (r < 0)
                return log_warning_errno(r, "The upstream settings cannot be applied: %m");
        return 0;
}

void manager_free_fetcher(Manager *m) {
        /* Freeing the fetcher cancels the fills; their jobs end through the listeners ("cancelled"),
         * so the registry goes after it. */
        m->fetcher = fetcher_free(m->fetcher);
        m->fleet = fleet_free(m->fleet);
        m->jobs = job_registry_free(m->jobs);
}

bool manager_has_upstream(const Manager *m) {
        return m->fetcher && fetcher_has_upstream(m->fetcher);
}

int manager_fetch(Manager *m, const char *id, const Checksum *expected, Job **ret) {
        _cleanup_(fill_unrefp) Fill *f = NULL;
        Job *j;
        int r;

        if (!manager_has_upstream(m))
                return -ENXIO;

        j = job_registry_find_image(m->jobs, id);
        if (j) {
                *ret = j;
                return 0;
        }
        if (job_registry_full(m->jobs))
                return -E2BIG;

        r = fetcher_fill(m->fetcher, id, expected, &f);
        if (r == -EEXIST)
                return job_new(m->jobs, id, NULL, ret);
        if (r < 0)
                return r;
        return job_new(m->jobs, id, f, ret);
}

/* The job fetching queued image id, with the checksum stored with its queue entry. */
static int fetch_queued(Manager *m, const char *id, Job **ret) {
        Checksum c;
        int r = image_cache_queued_checksum(m->cache, id, &c);
        if (r < 0)
                return r;
        return manager_fetch(m, id, r > 0 ? &c : NULL, ret);
}

/* Starts a job for every queued image, oldest first; appends their paths to reply unless NULL. */
static int prefetch_queue(Manager *m, sd_bus_message *reply) {
        QueuedImage *q = NULL;
        size_t n = 0;
        int r = image_cache_list_queued(m->cache, &q, &n);
        if (r < 0)
                return r;

        for (size_t i = 0; i < n; i++) {
                Job *j;
                if (image_cache_is_cached(m->cache, q[i].id)) {
                        (void) image_cache_dequeue(m->cache, q[i].id); /* a leftover marker */
                        continue;
                }
                r = manager_fetch(m, q[i].id, q[i].has_checksum ? &q[i].checksum : NULL, &j);
                if (r < 0) {
                        log_image_errno(LOG_WARNING, r, NULL, q[i].id, "Cannot prefetch %s: %m", q[i].id);
                        if (r == -E2BIG)
                                break;
                        continue;
                }
                r = reply ? sd_bus_message_append(reply, "o", job_path(j)) : 0;
                if (r < 0)
                        break;
        }
        queued_images_free(q, n);
        return r < 0 && r != -E2BIG ? r : 0;
}

int manager_prefetch(Manager *m, sd_bus_message *reply) {
        return prefetch_queue(m, reply);
}

void manager_fetch_queue_on_start(Manager *m) {
        if (!m->config.prefetch_on_queue || !manager_has_upstream(m))
                return;
        int r = prefetch_queue(m, NULL);
        if (r < 0)
                log_warning_errno(r, "Cannot start fetching the queued images: %m");
}

void manager_fetch_queued(Manager *m, const char *id) {
        Job *j;

        if (!m->config.prefetch_on_queue || !manager_has_upstream(m))
                return;
        int r = fetch_queued(m, id, &j);
        if (r < 0)
                log_image_errno(LOG_WARNING, r, NULL, id, "Cannot start fetching queued image %s: %m", id);
}

/* ---- retries of queued images ------------------------------------------------------------------- */

/* Failures that the same request would meet again: the upstream has no such image, the data is not what
 * was expected, or it will never fit. Everything else (a reset, a timeout, a 5xx, a full disk) may pass. */
static bool fill_error_is_permanent(int error) {
        return error == -ENOENT || error == -EBADMSG || error == -EFBIG;
}

static void retry_disarm(QueueRetry *q) {
        if (!q->timer)
                return;
        q->timer = sd_event_source_disable_unref(q->timer);
        q->manager->n_retries_pending--;
        q->next_attempt = 0;
}

void queue_retry_free_void(void *p) {
        QueueRetry *q = p;
        if (!q)
                return;
        retry_disarm(q);
        free(q->id);
        free(q->last_error);
        free(q);
}

const QueueRetry *manager_queue_retry(const Manager *m, const char *id) {
        return g_hash_table_lookup(m->retries, id);
}

bool manager_retries_pending(const Manager *m) {
        return m->n_retries_pending > 0;
}

void manager_forget_retry(Manager *m, const char *id) {
        g_hash_table_remove(m->retries, id);
}

void manager_forget_retries(Manager *m) {
        g_hash_table_remove_all(m->retries);
}

static QueueRetry *retry_get(Manager *m, const char *id) {
        QueueRetry *q = g_hash_table_lookup(m->retries, id);
        if (q)
                return q;

        q = calloc(1, sizeof(QueueRetry));
        if (!q)
                return NULL;
        q->manager = m;
        q->id = strdup(id);
        if (!q->id) {
                free(q);
                return NULL;
        }
        g_hash_table_insert(m->retries, q->id, q);
        return q;
}

static void retry_schedule(QueueRetry *q);

static int on_retry_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        QueueRetry *q = userdata;
        Manager *m = q->manager;
        Job *j;

        retry_disarm(q);
        if (image_cache_is_cached(m->cache, q->id) || !image_cache_is_queued(m->cache, q->id)) {
                manager_forget_retry(m, q->id);
                return 0;
        }
        int r = fetch_queued(m, q->id, &j);
        if (r == -ENXIO) {
                manager_forget_retry(m, q->id); /* the upstream was configured away */
                return 0;
        }
        if (r < 0) {
                /* No job now (too many of them, say): the same backoff as a failed fetch. */
                log_image_errno(LOG_WARNING, r, NULL, q->id, "Cannot retry queued image %s: %m", q->id);
                q->failures++;
                retry_schedule(q);
        }
        return 0;
}

static void retry_schedule(QueueRetry *q) {
        Manager *m = q->manager;
        char span[FORMAT_TIMESPAN_MAX];
        uint64_t random = (uint64_t) g_random_int() << 32 | g_random_int();
        usec_t delay = retry_backoff(m->config.retry_initial, m->config.retry_max, q->failures, random);
        int r;

        if (delay == USEC_INFINITY)
                return; /* RetryInitialSec=infinity: no retries */
        r = sd_event_add_time_relative(m->event, &q->timer, CLOCK_MONOTONIC, delay, 0, on_retry_timer, q);
        if (r < 0) {
                log_image_errno(LOG_WARNING, r, NULL, q->id, "Cannot schedule a retry of %s: %m", q->id);
                return;
        }
        (void) sd_event_source_set_description(q->timer, "queue-retry");
        m->n_retries_pending++;
        q->next_attempt = usec_add(now_usec(CLOCK_REALTIME), delay);
        log_image(LOG_NOTICE, NULL, q->id, "Fetching queued image %s failed (%s); retrying in %s.", q->id,
                  q->last_error, format_timespan(span, sizeof span, delay));
}

/* A fill of id started, whoever started it: a retry scheduled for it is done with. */
static void retry_started(Manager *m, const char *id) {
        QueueRetry *q = g_hash_table_lookup(m->retries, id);
        if (q)
                retry_disarm(q);
}

static void retry_fill_ended(Manager *m, Fill *f) {
        const char *id = fill_image_id(f);
        int error = fill_error(f);

        /* Success forgets the failures (the store's observer too, once cached); a cancel is somebody's
         * decision, not a failure to retry. Images that are not queued are nobody's to retry. */
        if (fill_state(f) == FILL_DONE) {
                manager_forget_retry(m, id);
                return;
        }
        if (fill_state(f) != FILL_FAILED || !image_cache_is_queued(m->cache, id))
                return;

        QueueRetry *q = retry_get(m, id);
        if (!q || free_and_strdup(&q->last_error, fill_error_message(f) ?: "fetch failed") < 0) {
                log_error_errno(ENOMEM, "Out of memory: a failed fetch of %s is not retried.", id);
                return;
        }
        q->last_errno = error;
        retry_disarm(q);
        if (fill_error_is_permanent(error)) {
                q->failures = 0;
                log_image(LOG_ERR, IMGCACHE_MESSAGE_FETCH_FAILED, id,
                          "Fetching queued image %s failed for good, not retrying: %s", id, q->last_error);
                manager_properties_changed(m);
                return;
        }
        q->failures++;
        retry_schedule(q);
}
