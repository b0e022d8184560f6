/* SPDX-License-Identifier: MIT */
/* org.imgcache.Job objects (job.h): one per image fetched for a bus caller, their properties, signals
 * and ends. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "bus-error.h"
#include "job.h"
#include "log.h"

struct JobRegistry {
        sd_event *event;
        JobRegistryHooks hooks;
        GHashTable *by_id;      /* GUINT_TO_POINTER(id) → Job* (owned) */
        GHashTable *by_image;   /* image id → Job* (borrowed) */
        uint32_t last_id;
        sd_bus *bus;            /* NULL until attached */
        const char *signal_path, *signal_interface;
        sd_bus_slot *vtable_slot;
        sd_bus_slot *enumerator_slot;
};

struct Job {
        JobRegistry *registry;
        uint32_t id;
        char *path;
        char *image_id;
        Fill *fill;                 /* NULL for an image that was cached already */
        FillSubscription *subscription;
        const char *state;          /* "running", "done", "failed", "cancelled" */
        char *error;                /* "" unless failed/cancelled */
        uint64_t bytes_done, bytes_total;
        bool progress_pending;
        sd_event_source *progress_timer;
        sd_event_source *end_source;  /* ends a job of an already cached image after the reply */
};

static void job_free(Job *j) {
        if (!j)
                return;
        fill_subscription_free(j->subscription);
        fill_unref(j->fill);
        sd_event_source_disable_unref(j->progress_timer);
        sd_event_source_disable_unref(j->end_source);
        free(j->path);
        free(j->image_id);
        free(j->error);
        free(j);
}

static void job_free_void(void *p) {
        job_free(p);
}

const char *job_path(const Job *j) {
        return j->path;
}

unsigned job_registry_size(const JobRegistry *reg) {
        return reg ? g_hash_table_size(reg->by_id) : 0;
}

bool job_registry_full(const JobRegistry *reg) {
        return job_registry_size(reg) >= JOB_REGISTRY_MAX;
}

Job *job_registry_find_image(const JobRegistry *reg, const char *image_id) {
        return reg ? g_hash_table_lookup(reg->by_image, image_id) : NULL;
}

static double job_progress(const Job *j) {
        if (streq(j->state, "done"))
                return 1.0;
        if (j->bytes_total == 0 || j->bytes_total == UINT64_MAX)
                return 0.0;
        return MIN((double) j->bytes_done / (double) j->bytes_total, 1.0);
}

static void job_update_bytes(Job *j) {
        if (!j->fill)
                return;
        j->bytes_done = fill_bytes_written(j->fill);
        uint64_t total = fill_bytes_total(j->fill);
        j->bytes_total = total == UINT64_MAX ? 0 : total;
}

static void job_emit(Job *j, char **names) {
        JobRegistry *reg = j->registry;
        if (!reg->bus)
                return;
        int r = sd_bus_emit_properties_changed_strv(reg->bus, j->path, JOB_INTERFACE, names);
        if (r < 0)
                log_debug_errno(r, "Cannot emit PropertiesChanged of %s, ignoring: %m", j->path);
}

/* ---- progress, at most every JOB_PROGRESS_INTERVAL_USEC ---------------------------------------- */

static int on_progress_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;
        if (!j->progress_pending)
                return 0;
        j->progress_pending = false;
        job_emit(j, (char *[]) { (char *) "Progress", (char *) "BytesDone", (char *) "BytesTotal", NULL });
        /* Keep the pace: the next change waits for the next tick. */
        (void) sd_event_source_set_time_relative(s, JOB_PROGRESS_INTERVAL_USEC);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return 0;
}

static void job_on_progress(Fill *f, void *userdata) {
        Job *j = userdata;
        job_update_bytes(j);
        j->progress_pending = true;

        int enabled = SD_EVENT_OFF;
        if (j->progress_timer && sd_event_source_get_enabled(j->progress_timer, &enabled) >= 0 &&
            enabled != SD_EVENT_OFF)
                return; /* a tick is due anyway */
        if (!j->progress_timer) {
                /* The first change goes out at once, later ones at the tick. */
                if (sd_event_add_time_relative(j->registry->event, &j->progress_timer, CLOCK_MONOTONIC, 0, 0,
                                               on_progress_timer, j) >= 0)
                        (void) sd_event_source_set_description(j->progress_timer, "job-progress");
        } else {
                (void) sd_event_source_set_time_relative(j->progress_timer, JOB_PROGRESS_INTERVAL_USEC);
                (void) sd_event_source_set_enabled(j->progress_timer, SD_EVENT_ONESHOT);
        }
}

/* ---- the end ------------------------------------------------------------------------------------ */

static void job_end(Job *j, const char *state, const char *error) {
        JobRegistry *reg = j->registry;

        j->state = state;
        free(j->error);
        j->error = strdup(strempty(error));
        job_update_bytes(j);
        job_emit(j, (char *[]) { (char *) "State", (char *) "Error", (char *) "Progress", (char *) "BytesDone",
                                 (char *) "BytesTotal", NULL });
        if (reg->bus) {
                int r = sd_bus_emit_signal(reg->bus, reg->signal_path, reg->signal_interface, "JobRemoved", "uos",
                                           j->id, j->path, state);
                if (r < 0)
                        log_debug_errno(r, "Cannot emit JobRemoved, ignoring: %m");
        }
        log_image(streq(state, "done") ? LOG_INFO : LOG_NOTICE, NULL, j->image_id, "Job %" PRIu32 " (%s) %s%s%s",
                  j->id, j->image_id, state, isempty(error) ? "" : ": ", strempty(error));

        if (g_hash_table_lookup(reg->by_image, j->image_id) == j)
                g_hash_table_remove(reg->by_image, j->image_id);
        g_hash_table_remove(reg->by_id, GUINT_TO_POINTER(j->id)); /* frees j */
        if (reg->hooks.job_ended)
                reg->hooks.job_ended(reg->hooks.userdata); /* QueuedCount, CurrentSize… */
}

static void job_on_finished(Fill *f, void *userdata) {
        Job *j = userdata;
        char buf[256];

        switch (fill_state(f)) {
        case FILL_DONE:
                if (fill_kept(f))
                        job_end(j, "done", NULL);
                else {
                        snprintf(buf, sizeof(buf), "Image %s is larger than MaxSize: streamed to a reader, not kept",
                                 j->image_id);
                        job_end(j, "failed", buf);
                }
                break;
        case FILL_CANCELLED:
                job_end(j, "cancelled", fill_error_message(f));
                break;
        default:
                job_end(j, "failed", fill_error_message(f) ?: "fetch failed");
        }
}

static int on_end_cached(sd_event_source *s, void *userdata) {
        job_end(userdata, "done", NULL);
        return 0;
}

/* ---- creation ----------------------------------------------------------------------------------- */

int job_new(JobRegistry *reg, const char *id, Fill *f, Job **ret) {
        if (job_registry_full(reg))
                return -E2BIG;

        Job *j = calloc(1, sizeof(Job));
        if (!j)
                return -ENOMEM;
        do
                reg->last_id++;
        while (reg->last_id == 0 || g_hash_table_contains(reg->by_id, GUINT_TO_POINTER(reg->last_id)));
        *j = (Job) {
                .registry = reg,
                .id = reg->last_id,
                .image_id = strdup(id),
                .fill = fill_ref(f),
                .state = "running",
                .error = strdup(""),
        };
        if (asprintf(&j->path, JOB_PATH_PREFIX "/%" PRIu32, j->id) < 0)
                j->path = NULL;
        if (!j->image_id || !j->error || !j->path) {
                job_free(j);
                return -ENOMEM;
        }

        int r;
        if (f) {
                static const FillListener listener = {
                        .on_headers = job_on_progress,
                        .on_data = job_on_progress,
                        .on_finished = job_on_finished,
                        .requires_kept = true,
                };
                r = fill_subscribe(f, &listener, j, &j->subscription);
                job_update_bytes(j);
        } else {
                r = sd_event_add_defer(reg->event, &j->end_source, on_end_cached, j);
                if (r >= 0)
                        (void) sd_event_source_set_description(j->end_source, "job-cached");
        }
        if (r < 0) {
                job_free(j);
                return r;
        }

        g_hash_table_insert(reg->by_id, GUINT_TO_POINTER(j->id), j);
        if (f)
                g_hash_table_insert(reg->by_image, j->image_id, j);
        if (reg->bus)
                (void) sd_bus_emit_signal(reg->bus, reg->signal_path, reg->signal_interface, "JobNew", "uo", j->id,
                                          j->path);
        log_image(LOG_INFO, NULL, id, "Job %" PRIu32 " fetches %s", j->id, id);
        *ret = j;
        return 0;
}

static gint compare_job_id(gconstpointer a, gconstpointer b) {
        const Job *x = *(Job *const *) a, *y = *(Job *const *) b;
        return x->id < y->id ? -1 : x->id > y->id;
}

int job_registry_append(JobRegistry *reg, sd_bus_message *reply) {
        GPtrArray *v = g_ptr_array_new();
        GHashTableIter it;
        gpointer value;
        g_hash_table_iter_init(&it, reg->by_id);
        while (g_hash_table_iter_next(&it, NULL, &value))
                g_ptr_array_add(v, value);
        g_ptr_array_sort(v, compare_job_id);

        int r = sd_bus_message_open_container(reply, 'a', "(ussdo)");
        for (unsigned i = 0; r >= 0 && i < v->len; i++) {
                Job *j = v->pdata[i];
                job_update_bytes(j);
                r = sd_bus_message_append(reply, "(ussdo)", j->id, j->image_id, j->state, job_progress(j), j->path);
        }
        g_ptr_array_free(v, TRUE);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

/* ---- the bus objects ---------------------------------------------------------------------------- */

static Job *job_from_path(JobRegistry *reg, const char *path) {
        const char *p = path + strlen(JOB_PATH_PREFIX);
        if (strncmp(path, JOB_PATH_PREFIX "/", strlen(JOB_PATH_PREFIX) + 1) != 0)
                return NULL;
        p++;
        char *end;
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (errno || end == p || *end || *p == '0' || v > UINT32_MAX)
                return NULL;
        return g_hash_table_lookup(reg->by_id, GUINT_TO_POINTER((uint32_t) v));
}

static int job_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                           sd_bus_error *error) {
        Job *j = job_from_path(userdata, path);
        if (!j)
                return 0;
        *found = j;
        return 1;
}

static int job_node_enumerator(sd_bus *bus, const char *prefix, void *userdata, char ***nodes, sd_bus_error *error) {
        JobRegistry *reg = userdata;
        size_t n = job_registry_size(reg), i = 0;
        char **v = calloc(n + 1, sizeof(char *));
        if (!v)
                return -ENOMEM;

        GHashTableIter it;
        gpointer value;
        g_hash_table_iter_init(&it, reg->by_id);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
                v[i] = strdup(((Job *) value)->path);
                if (!v[i]) {
                        for (size_t k = 0; k < i; k++)
                                free(v[k]);
                        free(v);
                        return -ENOMEM;
                }
                i++;
        }
        *nodes = v;
        return 0;
}

#define JOB_PROPERTY_GET(name, type, expr)                                                             \
        static int property_get_job_##name(sd_bus *bus, const char *path, const char *interface,      \
                                           const char *property, sd_bus_message *reply, void *userdata, \
                                           sd_bus_error *error) {                                      \
                Job *j = userdata;                                                                     \
                job_update_bytes(j);                                                                   \
                return sd_bus_message_append(reply, type, expr);                                       \
        }

JOB_PROPERTY_GET(id, "u", j->id)
JOB_PROPERTY_GET(image_id, "s", j->image_id)
JOB_PROPERTY_GET(state, "s", j->state)
JOB_PROPERTY_GET(progress, "d", job_progress(j))
JOB_PROPERTY_GET(bytes_done, "t", j->bytes_done)
JOB_PROPERTY_GET(bytes_total, "t", j->bytes_total)
JOB_PROPERTY_GET(error, "s", j->error)

static int method_job_cancel(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        JobRegistry *reg = j->registry;

        int r = reg->hooks.authorize_cancel(message, j->image_id, error, reg->hooks.userdata);
        if (r <= 0)
                return r == 0 ? 1 : r; /* 0: polkit calls us again */

        /* The job may have ended while polkit was asked: the object is gone then. */
        Job *again = job_from_path(reg, sd_bus_message_get_path(message));
        if (again != j)
                return sd_bus_error_setf(error, IMGCACHE_ERROR_NO_SUCH_JOB, "Job %s is gone.",
                                         sd_bus_message_get_path(message));
        if (j->fill) {
                log_image(LOG_INFO, NULL, j->image_id, "Cancelling job %" PRIu32 " (%s)", j->id, j->image_id);
                fill_cancel(j->fill); /* the fill ends cancelled (or is already sealing: too late) */
        }
        return sd_bus_reply_method_return(message, NULL);
}

static const sd_bus_vtable job_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Id", "u", property_get_job_id, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("ImageId", "s", property_get_job_image_id, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", property_get_job_state, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Progress", "d", property_get_job_progress, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BytesDone", "t", property_get_job_bytes_done, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BytesTotal", "t", property_get_job_bytes_total, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Error", "s", property_get_job_error, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_ARGS("Cancel", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, method_job_cancel,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END
};

int job_registry_attach_bus(JobRegistry *reg, sd_bus *bus, const char *signal_path, const char *signal_interface) {
        int r = sd_bus_add_fallback_vtable(bus, &reg->vtable_slot, JOB_PATH_PREFIX, JOB_INTERFACE, job_vtable,
                                           job_object_find, reg);
        if (r < 0)
                return log_error_errno(r, "Cannot export the job objects: %m");
        r = sd_bus_add_node_enumerator(bus, &reg->enumerator_slot, JOB_PATH_PREFIX, job_node_enumerator, reg);
        if (r < 0)
                return log_error_errno(r, "Cannot export the job objects: %m");
        reg->bus = sd_bus_ref(bus);
        reg->signal_path = signal_path;
        reg->signal_interface = signal_interface;
        return 0;
}

/* ---- the registry ------------------------------------------------------------------------------- */

/* Ids go on from the wall clock in milliseconds, so that a restarted daemon does not hand out the id (and so
 * the object path) of a job of an earlier run, without writing anything to disk: an earlier run would have to
 * have started more than a thousand jobs a second on average to reach the ids of the next. The count wraps
 * after 49.7 days (u32 ms, the API's type of Id); 0 is never an id. */
#define JOB_IDS_PER_SEC 1000U

static uint32_t job_id_base(void) {
        return (uint32_t) (now_usec(CLOCK_REALTIME) / (USEC_PER_SEC / JOB_IDS_PER_SEC));
}

int job_registry_new(sd_event *event, const JobRegistryHooks *hooks, JobRegistry **ret) {
        JobRegistry *reg = calloc(1, sizeof(JobRegistry));
        if (!reg)
                return -ENOMEM;
        reg->event = sd_event_ref(event);
        reg->hooks = *hooks;
        reg->last_id = job_id_base();
        reg->by_id = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, job_free_void);
        reg->by_image = g_hash_table_new(g_str_hash, g_str_equal);
        *ret = reg;
        return 0;
}

JobRegistry *job_registry_free(JobRegistry *reg) {
        if (!reg)
                return NULL;
        g_hash_table_destroy(reg->by_image);
        g_hash_table_destroy(reg->by_id);
        sd_bus_slot_unref(reg->vtable_slot);
        sd_bus_slot_unref(reg->enumerator_slot);
        sd_bus_unref(reg->bus);
        sd_event_unref(reg->event);
        free(reg);
        return NULL;
}
