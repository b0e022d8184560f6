/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl-bus.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "parse-util.h"
#include "ctl-watch.h"
#include "imgcachectl.h"
#include "log.h"
#include "util.h"

static const PropertyMap job_property_map[] = {
        { "ImageId",    's', offsetof(JobInfo, p_image_id) },
        { "State",      's', offsetof(JobInfo, p_state)    },
        { "Error",      's', offsetof(JobInfo, p_error)    },
        { "Progress",   'd', offsetof(JobInfo, p_progress) },
        { "BytesDone",  't', offsetof(JobInfo, p_done)     },
        { "BytesTotal", 't', offsetof(JobInfo, p_total)    },
        {}
};

static void watch_unsubscribe(Watch *w) {
        for (size_t i = 0; i < ELEMENTSOF(w->matches); i++)
                w->matches[i] = sd_bus_slot_unref(w->matches[i]);
}

void watch_done(Watch *w) {
        watch_unsubscribe(w);
        for (size_t i = 0; i < w->n_jobs; i++) {
                sd_bus_slot_unref(w->jobs[i].get_all_slot);
                free(w->jobs[i].path);
                free(w->jobs[i].image_id);
                free(w->jobs[i].state);
                free(w->jobs[i].error);
                free(w->jobs[i].result);
        }
        free(w->jobs);
        sd_event_unref(w->event);
}

static JobInfo *watch_find(Watch *w, const char *path) {
        for (size_t i = 0; path && i < w->n_jobs; i++)
                if (streq(w->jobs[i].path, path))
                        return &w->jobs[i];
        return NULL;
}

int watch_add(Watch *w, const char *path, const char *image_id) {
        JobInfo *p, *j;

        if (watch_find(w, path))
                return 0;

        p = reallocarray(w->jobs, w->n_jobs + 1, sizeof(JobInfo));
        if (!p)
                return -ENOMEM;
        w->jobs = p;

        j = &w->jobs[w->n_jobs];
        *j = (JobInfo) {
                .path = strdup(path),
                .image_id = image_id ? strdup(image_id) : NULL,
                .first_seen = now_usec(CLOCK_MONOTONIC),
                .rate = -1,
        };
        if (!j->path || (image_id && !j->image_id)) {
                free(j->path);
                free(j->image_id);
                return -ENOMEM;
        }
        (void) job_id_from_path(path, &j->id);
        w->n_jobs++;
        return 0;
}

int watch_add_ended(Watch *w, const char *image_id, bool cached, uint64_t size, const char *error) {
        JobInfo *p, *j;

        p = reallocarray(w->jobs, w->n_jobs + 1, sizeof(JobInfo));
        if (!p)
                return -ENOMEM;
        w->jobs = p;

        /* An empty path matches no job's (watch_find()). */
        j = &w->jobs[w->n_jobs];
        *j = (JobInfo) {
                .path = strdup(""),
                .image_id = strdup(image_id),
                .result = strdup(cached ? "done" : "failed"),
                .error = strdup(strempty(error)),
                .done = size,
                .total = size,
                .removed = true,
                .cached = cached,
        };
        if (!j->path || !j->image_id || !j->result || !j->error) {
                free(j->path);
                free(j->image_id);
                free(j->result);
                free(j->error);
                return -ENOMEM;
        }
        w->n_jobs++;
        return 0;
}

static size_t watch_active(const Watch *w) {
        size_t n = 0;

        for (size_t i = 0; i < w->n_jobs; i++)
                if (!w->jobs[i].removed)
                        n++;
        return n;
}

const char *job_label(const JobInfo *j) {
        return j->image_id ?: j->path;
}

/* Erases the progress bars drawn so far, leaving the cursor where the first one was. */
static void watch_clear(Watch *w) {
        if (!w->tty || w->lines_drawn == 0)
                return;

        printf("\033[%uA\r\033[J", w->lines_drawn);
        w->lines_drawn = 0;
        fflush(stdout);
}

static void watch_draw(Watch *w) {
        unsigned columns;

        if (!w->tty || arg_quiet)
                return;

        watch_clear(w);

        columns = terminal_columns(STDOUT_FILENO, 80);
        for (size_t i = 0; i < w->n_jobs; i++) {
                const JobInfo *j = &w->jobs[i];
                char line[512];

                if (j->removed)
                        continue;

                format_progress_line(line, sizeof line, job_label(j), j->done, j->total, j->rate,
                                     columns > 1 ? columns - 1 : columns);
                printf("%s\n", line);
                w->lines_drawn++;
        }
        fflush(stdout);
}

static int job_take_properties(JobInfo *j, sd_bus_message *m) {
        int r;

        j->p_image_id = j->p_state = j->p_error = NULL;
        j->p_done = j->done;
        j->p_total = j->total;

        r = map_properties(m, job_property_map, j);
        if (r < 0)
                return r;

        if (j->p_image_id && !j->image_id && free_and_strdup(&j->image_id, j->p_image_id) < 0)
                return -ENOMEM;
        if (j->p_state && free_and_strdup(&j->state, j->p_state) < 0)
                return -ENOMEM;
        if (j->p_error && free_and_strdup(&j->error, j->p_error) < 0)
                return -ENOMEM;

        j->total = j->p_total;
        if (j->p_done != j->done) {
                usec_t now = now_usec(CLOCK_MONOTONIC);

                j->done = j->p_done;
                /* The average since we started watching: steady, and honest for a resumed download. */
                if (now > j->first_seen && j->done >= j->first_done)
                        j->rate = (double) (j->done - j->first_done) * USEC_PER_SEC / (double) (now - j->first_seen);
        }
        return 0;
}

/* Both the PropertiesChanged signal and the first GetAll reply: a bad one is skipped, the next one
 * will do. */
static void job_update(Watch *w, JobInfo *j, sd_bus_message *m) {
        int r;

        r = job_take_properties(j, m);
        if (r < 0)
                log_debug_errno(r, "Failed to parse properties of %s, ignoring: %m", j->path);

        watch_draw(w);
}

static int on_job_properties(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Watch *w = userdata;
        const char *iface;
        JobInfo *j;
        int r;

        j = watch_find(w, sd_bus_message_get_path(m));
        if (!j || j->removed)
                return 0;

        r = sd_bus_message_read(m, "s", &iface);
        if (r < 0 || !streq(iface, BUS_JOB_IFACE))
                return 0;

        job_update(w, j, m);
        return 0;
}

static int on_job_get_all(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        JobInfo *j = userdata;

        j->get_all_slot = sd_bus_slot_unref(j->get_all_slot);

        /* An error means the job is gone already; JobRemoved tells the rest. */
        if (sd_bus_message_is_method_error(m, NULL) || j->removed)
                return 0;

        job_update(j->watch, j, m);
        return 0;
}

static void job_report_end(Watch *w, JobInfo *j) {
        char size[FORMAT_SIZE_MAX];

        if (streq_ptr(j->result, "done")) {
                if (arg_quiet || w->json)
                        return;
                if (j->total > 0 || j->done > 0)
                        printf("Fetched image %s (%s).\n", job_label(j),
                               format_size(size, sizeof size, MAX(j->total, j->done)));
                else
                        printf("Fetched image %s.\n", job_label(j));
                return;
        }

        w->n_failed++;
        fflush(stdout);
        if (streq_ptr(j->result, "cancelled") || streq_ptr(j->result, "canceled"))
                log_error("Fetch of image %s was cancelled (job %" PRIu32 ").", job_label(j), j->id);
        else
                log_error("Failed to fetch image %s: %s", job_label(j),
                          !isempty(j->error) ? j->error : strempty(j->result));
}

static int on_job_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Watch *w = userdata;
        const char *path, *result;
        uint32_t id;
        JobInfo *j;
        int r;

        r = sd_bus_message_read(m, "uos", &id, &path, &result);
        if (r < 0) {
                log_debug_errno(r, "Failed to parse JobRemoved, ignoring: %m");
                return 0;
        }

        j = watch_find(w, path);
        if (!j || j->removed)
                return 0;

        j->id = id;
        j->removed = true;
        if (free_and_strdup(&j->result, result) < 0)
                return sd_event_exit(w->event, -ENOMEM);
        if (streq(result, "done") && j->total > 0)
                j->done = j->total;

        watch_clear(w);
        job_report_end(w, j);
        watch_draw(w);

        if (watch_active(w) == 0)
                return sd_event_exit(w->event, 0);
        return 0;
}

static int on_job_new(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Watch *w = userdata;
        const char *path;
        uint32_t id;
        JobInfo *j;

        if (sd_bus_message_read(m, "uo", &id, &path) < 0)
                return 0;

        j = watch_find(w, path);
        if (j)
                j->id = id;
        return 0;
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Watch *w = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (!streq(name, BUS_NAME) || !isempty(new_owner))
                return 0;

        watch_clear(w);
        log_error("imgcached went away while jobs were running.");
        return sd_event_exit(w->event, -ECONNRESET);
}

static int on_interrupt(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Watch *w = userdata;

        watch_clear(w);
        w->detached = true;
        return sd_event_exit(w->event, -EINTR);
}

json_t *watch_to_json(const Watch *w) {
        json_t *a = json_array();

        for (size_t i = 0; a && i < w->n_jobs; i++) {
                const JobInfo *j = &w->jobs[i];

                if (json_array_append_new(a, json_pack("{s:o, s:s, s:s?, s:s?, s:s, s:o, s:b}",
                                                       "job", j->id > 0 ? json_integer(j->id) : json_null(),
                                                       "image_id", strempty(j->image_id),
                                                       "path", isempty(j->path) ? NULL : j->path,
                                                       "result", j->removed ? strempty(j->result) : NULL,
                                                       "error", strempty(j->error),
                                                       "size", json_u64(MAX(j->total, j->done)),
                                                       "cached", j->cached)) < 0) {
                        json_decref(a);
                        return NULL;
                }
        }
        return a;
}

static void watch_report_detached(Watch *w) {
        for (size_t i = 0; i < w->n_jobs; i++) {
                JobInfo *j = &w->jobs[i];

                if (j->removed)
                        continue;
                fprintf(stderr, "Job %" PRIu32 " (image %s) keeps running in the background; "
                        "use \"imgcachectl cancel %" PRIu32 "\" to stop it.\n", j->id, job_label(j), j->id);
        }
}

/* Prefetch returns only job paths: ask each job for its image, for the messages. A job that is gone
 * already keeps its path as the label. */
void watch_resolve_image_ids(sd_bus *bus, Watch *w) {
        for (size_t i = 0; i < w->n_jobs; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
                JobInfo *j = &w->jobs[i];
                char *s = NULL;

                if (j->image_id)
                        continue;
                if (sd_bus_get_property_string(bus, BUS_NAME, j->path, BUS_JOB_IFACE, "ImageId", &e, &s) >= 0)
                        j->image_id = s;
        }
}

static int add_job_matches(sd_bus *bus, Watch *w) {
        sd_bus_slot **slots = w->matches;
        int r;

        /* Installed synchronously, before the call that starts the jobs: no signal can be missed. */
        r = sd_bus_match_signal(bus, &slots[0], NULL, BUS_PATH, BUS_IFACE, "JobRemoved", on_job_removed, w);
        if (r < 0)
                return r;
        r = sd_bus_match_signal(bus, &slots[1], NULL, BUS_PATH, BUS_IFACE, "JobNew", on_job_new, w);
        if (r < 0)
                return r;
        r = sd_bus_add_match(bus, &slots[2],
                             "type='signal',"
                             "interface='org.freedesktop.DBus.Properties',"
                             "member='PropertiesChanged',"
                             "path_namespace='" BUS_JOB_PREFIX "',"
                             "arg0='" BUS_JOB_IFACE "'",
                             on_job_properties, w);
        if (r < 0)
                return r;
        return sd_bus_match_signal(bus, &slots[3], "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                   "org.freedesktop.DBus", "NameOwnerChanged", on_name_owner_changed, w);
}

int watch_subscribe(sd_bus *bus, Watch *w) {
        int r;

        r = sd_event_new(&w->event);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate an event loop: %m");

        r = add_job_matches(bus, w);
        if (r < 0)
                return log_error_errno(r, "Failed to subscribe to job signals: %m");

        /* Blocked from here on, so Ctrl-C during the call also detaches politely. */
        r = sd_event_add_signal(w->event, NULL, SIGINT | SD_EVENT_SIGNAL_PROCMASK, on_interrupt, w);
        if (r >= 0)
                r = sd_event_add_signal(w->event, NULL, SIGTERM | SD_EVENT_SIGNAL_PROCMASK, on_interrupt, w);
        if (r < 0)
                return log_error_errno(r, "Failed to handle SIGINT/SIGTERM: %m");
        return 0;
}

/* Without a terminal each job gets a "Started" line; with one, the bars say it. */
static void watch_ask_for_properties(sd_bus *bus, Watch *w) {
        for (size_t i = 0; i < w->n_jobs; i++) {
                JobInfo *j = &w->jobs[i];
                int r;

                if (j->removed)
                        continue;
                if (!arg_quiet && !w->tty && !w->json)
                        printf("Started job %" PRIu32 " for image %s.\n", j->id, job_label(j));

                /* The array does not move any more: the job itself is the callback's userdata. */
                j->watch = w;
                r = sd_bus_call_method_async(bus, &j->get_all_slot, BUS_NAME, j->path,
                                             "org.freedesktop.DBus.Properties", "GetAll", on_job_get_all, j,
                                             "s", BUS_JOB_IFACE);
                if (r < 0)
                        log_debug_errno(r, "Failed to ask for the properties of %s, ignoring: %m", j->path);
        }
}

int watch_follow(sd_bus *bus, Watch *w) {
        int r;

        w->json = arg_json != JSON_MODE_OFF;
        w->tty = isatty(STDOUT_FILENO) && !w->json;

        r = sd_bus_attach_event(bus, w->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");

        watch_ask_for_properties(bus, w);

        /* Images that got no job (watch_add_ended()) are all there may be: nothing to wait for then. */
        if (watch_active(w) > 0) {
                if (!arg_quiet && w->tty)
                        printf("Press Ctrl-C to stop watching; the %s in the background.\n",
                               watch_active(w) == 1 ? "job continues" : "jobs continue");
                fflush(stdout);
                watch_draw(w);

                r = sd_event_loop(w->event);
                watch_clear(w);
        } else
                r = 0;

        if (w->detached && !arg_quiet)
                watch_report_detached(w);

        /* Drop our handlers before the watch goes away: the bus may outlive it. */
        watch_unsubscribe(w);
        (void) sd_bus_detach_event(bus);

        if (w->json && !w->detached) {
                int k = json_print_and_free(watch_to_json(w));
                if (k < 0 && r >= 0)
                        r = k;
        }

        if (r >= 0 && w->n_failed > 0)
                r = -EREMOTEIO;
        return r;
}
