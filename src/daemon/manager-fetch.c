/* SPDX-License-Identifier: MIT */
/* The Manager's side of fetching: it owns the Fetcher (setup, reconfiguration, free, its observer) and
 * the JobRegistry, and starts the jobs of FetchImage, Prefetch and PrefetchOnQueue. job.c knows Jobs
 * only; fetch.c knows fills only. */

#include <errno.h>
#include <stdlib.h>

#include "checksum.h"
#include "job.h"
#include "log.h"
#include "manager.h"

#define ACTION_QUEUE "org.imgcache.queue"

/* The fetcher sees --upstream= as URL=. */
static Config fetcher_config(const Manager *m) {
        Config c = m->config; /* shallow: fetcher_new/fetcher_reconfigure copy what they keep */
        c.upstream_url = (char *) manager_upstream(m);
        return c;
}

/* Counted for /metrics. */
static void on_fill_started(Fetcher *fe, Fill *f, void *userdata) {
        Manager *m = userdata;
        m->fills_started++;
}

static void on_fill_finished(Fetcher *fe, Fill *f, void *userdata) {
        Manager *m = userdata;

        m->bytes_fetched += fill_bytes_written(f);
        if (fill_state(f) != FILL_DONE)
                m->fills_failed++;
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

        m->fetcher_observer = (FetcherObserver) {
                .fill_started = on_fill_started,
                .fill_finished = on_fill_finished,
                .userdata = m,
        };
        fetcher_add_observer(m->fetcher, &m->fetcher_observer);
        return 0;
}

void manager_reconfigure_fetcher(Manager *m) {
        if (!m->fetcher)
                return;
        Config c = fetcher_config(m);
        int r = fetcher_reconfigure(m->fetcher, &c);
        if (r < 0)
                log_warning_errno(r, "Keeping the previous upstream settings: %m");
}

void manager_free_fetcher(Manager *m) {
        /* Freeing the fetcher cancels the fills; their jobs end through the listeners ("cancelled"),
         * so the registry goes after it. */
        m->fetcher = fetcher_free(m->fetcher);
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

/* The checksum QueueImage was given for id, parsed into buf; NULL when none. */
static const Checksum *queued_checksum(Manager *m, const char *id, Checksum *buf) {
        const char *s = g_hash_table_lookup(m->queued_checksums, id);
        return s && checksum_from_string(s, buf) >= 0 ? buf : NULL;
}

int manager_prefetch(Manager *m, sd_bus_message *reply) {
        QueuedImage *q = NULL;
        size_t n = 0;
        int r = image_cache_list_queued(m->cache, &q, &n);
        if (r < 0)
                return r;

        for (size_t i = 0; i < n; i++) {
                Checksum c;
                Job *j;
                if (image_cache_is_cached(m->cache, q[i].id)) {
                        (void) image_cache_dequeue(m->cache, q[i].id); /* a leftover marker */
                        continue;
                }
                r = manager_fetch(m, q[i].id, queued_checksum(m, q[i].id, &c), &j);
                if (r < 0) {
                        log_image_errno(LOG_WARNING, r, NULL, q[i].id, "Cannot prefetch %s: %m", q[i].id);
                        if (r == -E2BIG)
                                break;
                        continue;
                }
                r = sd_bus_message_append(reply, "o", job_path(j));
                if (r < 0)
                        break;
        }
        queued_images_free(q, n);
        return r < 0 && r != -E2BIG ? r : 0;
}

void manager_fetch_queued(Manager *m, const char *id) {
        Checksum c;
        Job *j;

        if (!m->config.prefetch_on_queue || !manager_has_upstream(m))
                return;
        int r = manager_fetch(m, id, queued_checksum(m, id, &c), &j);
        if (r < 0)
                log_image_errno(LOG_WARNING, r, NULL, id, "Cannot start fetching queued image %s: %m", id);
}
