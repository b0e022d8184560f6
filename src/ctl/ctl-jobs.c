/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "bus-error.h"
#include "ctl-bus.h"
#include "ctl-jobs.h"
#include "ctl-list.h"
#include "ctl-output.h"
#include "ctl-watch.h"
#include "parse-util.h"
#include "table.h"
#include "util.h"

/* Prefetch: adds the jobs it started to w. */
static int start_prefetch(sd_bus *bus, Watch *w) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path;
        int r;

        r = call_manager(bus, "Prefetch", 0, &error, &reply, NULL);
        if (r < 0)
                return log_call_error(r, &error, "Prefetch", "prefetch");

        r = sd_bus_message_enter_container(reply, 'a', "o");
        while (r >= 0 && (r = sd_bus_message_read(reply, "o", &path)) > 0)
                r = watch_add(w, path, NULL);
        if (r < 0)
                return log_parse_error(r);
        return 0;
}

/* FetchImage of one image; its job, or its failure (for --json), goes to w. */
static int start_fetch(sd_bus *bus, const char *id, Watch *w) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path;
        int r;

        r = call_manager(bus, "FetchImage", 0, &error, &reply, "ss", id, strempty(arg_checksum));
        if (r < 0) {
                r = log_call_error(r, &error, "FetchImage", "fetch image %s", id);
                if (watch_add_ended(w, id, /* cached= */ false, 0, error.message ?: strerror(-r)) < 0)
                        return log_oom();
                return r;
        }

        r = sd_bus_message_read(reply, "o", &path);
        if (r >= 0)
                r = watch_add(w, path, id);
        if (r < 0)
                return log_parse_error(r);
        return 0;
}

/* A cached image gets no job: imgcached would only end one at once, with no size to tell. Said here, and
 * in the --json results with its size. */
static int add_if_cached(sd_bus *bus, const char *id, Watch *w) {
        char size[FORMAT_SIZE_MAX];
        uint64_t bytes;
        int r;

        r = get_cached_size(bus, id, &bytes);
        if (r <= 0)
                return 0; /* not cached, or it could not tell: FetchImage will say */

        if (watch_add_ended(w, id, /* cached= */ true, bytes, NULL) < 0)
                return log_oom();
        if (!arg_quiet && arg_json == JSON_MODE_OFF)
                printf("Image %s is already cached (%s).\n", id, format_size(size, sizeof size, bytes));
        return 1;
}

/* --no-block: say which jobs were started, and leave them be. */
static int report_started_jobs(const Watch *w) {
        if (arg_json != JSON_MODE_OFF)
                return json_print_and_free(watch_to_json(w));

        for (size_t i = 0; i < w->n_jobs && !arg_quiet; i++) {
                const JobInfo *j = &w->jobs[i];

                if (!j->removed)
                        printf("Started job %" PRIu32 " for image %s.\n", j->id, job_label(j));
        }
        return 0;
}

/* Unless --no-block, follows the jobs in w to their end. */
static int follow_jobs(sd_bus *bus, Watch *w) {
        watch_resolve_image_ids(bus, w);

        if (arg_no_block)
                return report_started_jobs(w);
        return watch_follow(bus, w);
}

int verb_fetch(int argc, char *argv[], Context *c) {
        _cleanup_(watch_done) Watch w = {};
        sd_bus *bus;
        int r, ret = 0;

        r = acquire_bus_for_images(c, argc, argv, &bus);
        if (r < 0)
                return r;

        if (arg_checksum && argc > 2)
                return log_error_errno(EINVAL, "--checksum= applies to a single image; give one id only.");

        if (!arg_no_block) {
                r = watch_subscribe(bus, &w);
                if (r < 0)
                        return r;
        }

        /* All jobs are started first and followed together: they run side by side in imgcached anyway.
         * One failure does not stop the rest; the exit code tells there was one. */
        for (int i = 1; i < argc; i++) {
                r = add_if_cached(bus, argv[i], &w);
                if (r == 0)
                        r = start_fetch(bus, argv[i], &w);
                if (r < 0)
                        ret = r;
        }

        r = follow_jobs(bus, &w);
        return ret < 0 ? ret : r;
}

int verb_prefetch(int argc, char *argv[], Context *c) {
        _cleanup_(watch_done) Watch w = {};
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        if (!arg_no_block) {
                r = watch_subscribe(bus, &w);
                if (r < 0)
                        return r;
        }

        r = start_prefetch(bus, &w);
        if (r < 0)
                return r;

        if (w.n_jobs == 0) {
                if (arg_json != JSON_MODE_OFF)
                        return json_print_and_free(json_array());
                if (!arg_quiet)
                        printf("No images queued, nothing to prefetch.\n");
                return 0;
        }

        return follow_jobs(bus, &w);
}

static int read_job_row(sd_bus_message *reply, Table *t, json_t *json, void *userdata) {
        const char *image, *state, *path;
        double progress;
        uint32_t id;
        int r;

        r = sd_bus_message_read(reply, "(ussdo)", &id, &image, &state, &progress, &path);
        if (r <= 0)
                return r < 0 ? log_parse_error(r) : 0;

        if (json)
                return json_array_append_new(json, json_pack("{s:I, s:s, s:s, s:f, s:s}",
                                                             "job", (json_int_t) id, "image_id", image,
                                                             "state", state, "progress", progress,
                                                             "path", path)) < 0 ? log_oom() : 1;

        /* A progress outside 0..1 shows as "-" rather than as a nonsense percentage. */
        if (table_add_cellf(t, "%" PRIu32, id) < 0 ||
            table_add_cell(t, image) < 0 ||
            table_add_cell(t, state) < 0 ||
            (progress >= 0 && progress <= 1 ?
             table_add_cellf(t, "%.0f%%", progress * 100.0) :
             table_add_cell(t, "-")) < 0)
                return log_oom();
        return 1;
}

int verb_jobs(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        r = call_manager(bus, "ListJobs", 0, &error, &reply, NULL);
        if (r < 0)
                return log_call_error(r, &error, "ListJobs", "list jobs");

        r = table_new(&t, "JOB", "IMAGE", "STATE", "PROGRESS", NULL);
        if (r < 0)
                return log_oom();
        (void) table_set_align(t, 0, TABLE_ALIGN_RIGHT);
        (void) table_set_align(t, 3, TABLE_ALIGN_RIGHT);

        return print_reply_listing(reply, "(ussdo)", t, read_job_row, NULL, "No jobs.", "job", "jobs");
}

int verb_cancel(int argc, char *argv[], Context *c) {
        sd_bus *bus;
        int r, ret = 0;

        for (int i = 1; i < argc; i++) {
                unsigned id;

                if (parse_unsigned(argv[i], 1, UINT32_MAX, &id) < 0)
                        return log_error_errno(EINVAL, "Invalid job id '%s': expected a positive number, "
                                               "see \"imgcachectl jobs\".", argv[i]);
        }

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        for (int i = 1; i < argc; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                char path[sizeof(BUS_JOB_PREFIX) + 16];
                unsigned id;

                (void) parse_unsigned(argv[i], 1, UINT32_MAX, &id);
                snprintf(path, sizeof path, BUS_JOB_PREFIX "/%u", id);

                r = call_method(bus, path, BUS_JOB_IFACE, "Cancel", 0, &error, NULL, NULL);
                if (sd_bus_error_has_names(&error, SD_BUS_ERROR_UNKNOWN_OBJECT, SD_BUS_ERROR_UNKNOWN_METHOD)) {
                        /* No such object: say it in the project's words. */
                        sd_bus_error_free(&error);
                        (void) sd_bus_error_setf(&error, IMGCACHE_ERROR_NO_SUCH_JOB, "No such job %u", id);
                }
                if (r < 0) {
                        ret = log_call_error(r, &error, "Cancel", "cancel job %u", id);
                        continue;
                }
                if (!arg_quiet && arg_json == JSON_MODE_OFF)
                        printf("Cancelled job %u.\n", id);
        }

        return ret;
}
