/* SPDX-License-Identifier: MIT */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bus-error.h"
#include "ctl-bus.h"
#include "ctl-list.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "parse-util.h"
#include "table.h"
#include "util.h"

typedef struct ManagerStatus {
        const char *version;
        const char *driver;
        const char *directory;
        const char *upstream;
        uint64_t max_size;
        uint64_t keep_free;
        uint64_t free_space;
        uint64_t stall_time;
        uint64_t current_size;
        uint32_t image_count;
        uint32_t queued_count;
        uint64_t hits;
        uint64_t misses;
        uint64_t bytes_served;
        const char *listen_address;
        uint32_t pin_count;
} ManagerStatus;

static const PropertyMap manager_status_map[] = {
        { "Version",        's', offsetof(ManagerStatus, version)      },
        { "Driver",         's', offsetof(ManagerStatus, driver)       },
        { "CacheDirectory", 's', offsetof(ManagerStatus, directory)    },
        { "Upstream",       's', offsetof(ManagerStatus, upstream)     },
        { "MaxSize",        't', offsetof(ManagerStatus, max_size)     },
        { "KeepFree",       't', offsetof(ManagerStatus, keep_free)    },
        { "FreeSpace",      't', offsetof(ManagerStatus, free_space)   },
        { "StallTimeUSec",  't', offsetof(ManagerStatus, stall_time)   },
        { "CurrentSize",    't', offsetof(ManagerStatus, current_size) },
        { "ImageCount",     'u', offsetof(ManagerStatus, image_count)  },
        { "QueuedCount",    'u', offsetof(ManagerStatus, queued_count) },
        { "Hits",           't', offsetof(ManagerStatus, hits)         },
        { "Misses",         't', offsetof(ManagerStatus, misses)       },
        { "BytesServed",    't', offsetof(ManagerStatus, bytes_served) },
        { "ListenAddress",  's', offsetof(ManagerStatus, listen_address) },
        { "PinCount",       'u', offsetof(ManagerStatus, pin_count)    },
        {}
};

/* Fills s with strings borrowed from *ret_reply. */
static int get_manager_status(sd_bus *bus, ManagerStatus *s, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        /* A daemon older than KeepFree/FreeSpace, ListenAddress or PinCount does not send them: unknown,
         * not 0 or "not serving". */
        *s = (ManagerStatus) { .keep_free = UINT64_MAX, .free_space = UINT64_MAX, .pin_count = UINT32_MAX };

        r = sd_bus_call_method(bus, BUS_NAME, BUS_PATH, "org.freedesktop.DBus.Properties", "GetAll",
                               &error, &reply, "s", BUS_IFACE);
        if (r < 0)
                return log_call_error(r, &error, "GetAll", "get the state of imgcached");

        r = map_properties(reply, manager_status_map, s);
        if (r < 0)
                return log_parse_error(r);

        *ret_reply = TAKE_PTR(reply);
        return 0;
}

/* Number of running jobs, or -EHOSTUNREACH-style errors; 0 jobs when there is no upstream at all. */
static int count_running_jobs(sd_bus *bus, uint32_t *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *state;
        uint32_t n = 0;
        int r;

        r = call_manager(bus, "ListJobs", 0, &error, &reply, NULL);
        if (sd_bus_error_has_name(&error, IMGCACHE_ERROR_NO_UPSTREAM)) {
                *ret = 0;
                return 0;
        }
        if (r < 0)
                return log_debug_errno(r, "ListJobs failed: %s", error.message ?: "n/a");

        r = sd_bus_message_enter_container(reply, 'a', "(ussdo)");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_read(reply, "(ussdo)", NULL, NULL, &state, NULL, NULL)) > 0)
                if (streq(state, "running"))
                        n++;
        if (r < 0)
                return r;

        *ret = n;
        return 0;
}

/* MaxSize reads 0 or UINT64_MAX when the cache has no limit. */
static bool has_size_limit(uint64_t max_size) {
        return max_size != UINT64_MAX && max_size != 0;
}

static int print_status_json(const ManagerStatus *s, bool running_known, uint32_t running) {
        return json_print_and_free(json_pack(
                        "{s:s, s:s, s:s, s:s, s:s?, s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:o, s:o, s:o, s:o, s:o}",
                        "version", strempty(s->version),
                        "driver", strempty(s->driver),
                        "cache_directory", strempty(s->directory),
                        "upstream", strempty(s->upstream),
                        "listen_address", s->listen_address,
                        "max_size", json_u64(s->max_size),
                        "keep_free", s->keep_free != UINT64_MAX ? json_u64(s->keep_free) : json_null(),
                        "free_space", s->free_space != UINT64_MAX ? json_u64(s->free_space) : json_null(),
                        "stall_time_usec", json_u64(s->stall_time),
                        "current_size", json_u64(s->current_size),
                        "image_count", (json_int_t) s->image_count,
                        "queued_count", (json_int_t) s->queued_count,
                        "hits", json_u64(s->hits),
                        "misses", json_u64(s->misses),
                        "bytes_served", json_u64(s->bytes_served),
                        "pin_count", s->pin_count != UINT32_MAX ? json_integer(s->pin_count) : json_null(),
                        "running_jobs", running_known ? json_integer(running) : json_null()));
}

static void print_status_text(const ManagerStatus *s, bool running_known, uint32_t running) {
        char size[FORMAT_SIZE_MAX], max[FORMAT_SIZE_MAX], served[FORMAT_SIZE_MAX], avail[FORMAT_SIZE_MAX],
                keep[FORMAT_SIZE_MAX], stall[FORMAT_TIMESPAN_MAX], pct[FORMAT_PERCENT_MAX], ratio[FORMAT_PERCENT_MAX];

        format_size(size, sizeof size, s->current_size);
        printf("   Directory: %s\n", strempty(s->directory));
        printf("      Driver: %s\n", strempty(s->driver));
        if (!has_size_limit(s->max_size))
                printf("        Size: %s (no limit)\n", size);
        else
                printf("        Size: %s of %s (%s)\n", size, format_size(max, sizeof max, s->max_size),
                       format_percent(pct, sizeof pct, s->current_size, s->max_size));
        if (s->free_space != UINT64_MAX && s->keep_free != UINT64_MAX)
                printf("  Free space: %s (keeps %s free)\n", format_size(avail, sizeof avail, s->free_space),
                       format_size(keep, sizeof keep, s->keep_free));
        else if (s->free_space != UINT64_MAX)
                printf("  Free space: %s\n", format_size(avail, sizeof avail, s->free_space));
        printf("      Images: %" PRIu32 "\n", s->image_count);
        printf("      Queued: %" PRIu32 "\n", s->queued_count);
        if (s->pin_count != UINT32_MAX)
                printf("        Pins: %" PRIu32 "\n", s->pin_count);
        printf(" Hits/Misses: %" PRIu64 "/%" PRIu64 " (hit ratio %s)\n", s->hits, s->misses,
               format_percent(ratio, sizeof ratio, s->hits, s->hits + s->misses));
        printf("Bytes served: %s\n", format_size(served, sizeof served, s->bytes_served));
        printf("    Upstream: %s\n", isempty(s->upstream) ? "none configured" : s->upstream);
        if (s->listen_address)
                printf("        HTTP: %s\n", isempty(s->listen_address) ? "not serving" : s->listen_address);
        printf("  Stall time: %s\n", format_timespan(stall, sizeof stall, s->stall_time));
        if (running_known)
                printf("Running jobs: %" PRIu32 "\n", running);
        else
                printf("Running jobs: n/a\n");
        printf("     Version: %s\n", strempty(s->version));
}

int verb_status(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        ManagerStatus s;
        uint32_t running = 0;
        bool running_known;
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        r = get_manager_status(bus, &s, &reply);
        if (r < 0)
                return r;

        /* Jobs are a second call: when it fails, the rest of the status is still worth showing. */
        running_known = count_running_jobs(bus, &running) >= 0;

        if (arg_json != JSON_MODE_OFF)
                return print_status_json(&s, running_known, running);

        open_pager();
        print_status_text(&s, running_known, running);
        return 0;
}

static int compare_images(const void *a, const void *b) {
        const ImageInfo *x = a, *y = b;

#define CMP(p, q) ((p) < (q) ? -1 : (p) > (q) ? 1 : 0)
        int d = 0;

        switch (arg_sort) {
        case SORT_ACCESSED:
                d = -CMP(x->last_accessed, y->last_accessed); /* newest first */
                break;
        case SORT_MODIFIED:
                d = -CMP(x->last_modified, y->last_modified);
                break;
        case SORT_SIZE:
                d = -CMP(x->size, y->size);                   /* largest first */
                break;
        case SORT_HITS:
                d = -CMP(x->hits, y->hits);                   /* most used first */
                break;
        default:
                break;
        }
#undef CMP

        return d != 0 ? d : strcmp(x->id, y->id);
}

int list_images(sd_bus *bus, ImageInfo **ret, size_t *ret_n, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(freep) ImageInfo *images = NULL;
        size_t n = 0, allocated = 0;
        int r;

        r = call_manager(bus, "ListImages", 0, &error, &reply, NULL);
        if (r < 0)
                return log_call_error(r, &error, "ListImages", "list cached images");

        r = sd_bus_message_enter_container(reply, 'a', "(stttts)");
        if (r < 0)
                return log_parse_error(r);

        for (;;) {
                ImageInfo i;

                r = sd_bus_message_read(reply, "(stttts)", &i.id, &i.size, &i.hits, &i.last_accessed,
                                        &i.last_modified, &i.checksum);
                if (r < 0)
                        return log_parse_error(r);
                if (r == 0)
                        break;

                if (n >= allocated) {
                        size_t k = MAX(allocated * 2, (size_t) 16);
                        ImageInfo *p = reallocarray(images, k, sizeof(ImageInfo));
                        if (!p)
                                return log_oom();
                        images = p;
                        allocated = k;
                }
                images[n++] = i;
        }

        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return log_parse_error(r);

        *ret = TAKE_PTR(images);
        *ret_n = n;
        *ret_reply = TAKE_PTR(reply);
        return 0;
}

static json_t *image_to_json(const ImageInfo *i) {
        return json_pack("{s:s, s:o, s:o, s:o, s:o, s:s}",
                         "id", i->id,
                         "size", json_u64(i->size),
                         "hits", json_u64(i->hits),
                         "last_accessed", json_u64(i->last_accessed),
                         "last_modified", json_u64(i->last_modified),
                         "checksum", i->checksum);
}

static int print_images_json(const ImageInfo *images, size_t n) {
        json_t *a = json_array();

        if (!a)
                return log_oom();
        for (size_t i = 0; i < n; i++)
                if (json_array_append_new(a, image_to_json(&images[i])) < 0) {
                        json_decref(a);
                        return log_oom();
                }
        return json_print_and_free(a);
}

/* The table of list; *ret_sum is the size of the images in it. */
static int images_to_table(const ImageInfo *images, size_t n, Table **ret, uint64_t *ret_sum) {
        _cleanup_(table_freep) Table *t = NULL;
        char buf[MAX(FORMAT_RELATIVE_MAX, MAX(SHORT_CHECKSUM_MAX, FORMAT_SIZE_MAX))];
        uint64_t sum = 0;
        usec_t now;

        if (table_new(&t, "ID", "SIZE", "HITS", "LAST ACCESSED", "CHECKSUM", NULL) < 0)
                return log_oom();
        (void) table_set_align(t, 1, TABLE_ALIGN_RIGHT);
        (void) table_set_align(t, 2, TABLE_ALIGN_RIGHT);

        now = now_usec(CLOCK_REALTIME);
        for (size_t i = 0; i < n; i++) {
                if (table_add_cell(t, images[i].id) < 0 ||
                    table_add_cell(t, format_size(buf, sizeof buf, images[i].size)) < 0 ||
                    table_add_cellf(t, "%" PRIu64, images[i].hits) < 0 ||
                    table_add_cell(t, format_timestamp_relative(buf, sizeof buf, images[i].last_accessed, now)) < 0 ||
                    table_add_cell(t, shorten_checksum(buf, sizeof buf, images[i].checksum)) < 0)
                        return log_oom();
                sum += images[i].size;
        }

        *ret = TAKE_PTR(t);
        *ret_sum = sum;
        return 0;
}

/* "N images, SIZE[ of MAX]." */
static void print_list_footer(sd_bus *bus, size_t n, uint64_t sum) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *props = NULL;
        char total[FORMAT_SIZE_MAX], max[FORMAT_SIZE_MAX];
        ManagerStatus s;

        /* The footer uses the daemon's own accounting, which also counts files being written. */
        if (get_manager_status(bus, &s, &props) >= 0)
                sum = s.current_size;
        else
                s.max_size = UINT64_MAX;

        format_size(total, sizeof total, sum);
        if (!has_size_limit(s.max_size))
                printf("\n%zu %s, %s.\n", n, plural(n, "image", "images"), total);
        else
                printf("\n%zu %s, %s of %s.\n", n, plural(n, "image", "images"), total,
                       format_size(max, sizeof max, s.max_size));
}

int verb_list(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        _cleanup_(freep) ImageInfo *images = NULL;
        uint64_t sum = 0;
        size_t n;
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        r = list_images(bus, &images, &n, &reply);
        if (r < 0)
                return r;

        if (n > 0)
                qsort(images, n, sizeof(ImageInfo), compare_images);

        if (arg_json != JSON_MODE_OFF)
                return print_images_json(images, n);

        r = images_to_table(images, n, &t, &sum);
        if (r < 0)
                return r;

        r = print_listing(t, /* json= */ NULL, n, "No images cached.", /* noun= */ NULL, NULL);
        if (r < 0 || n == 0)
                return r;

        if (arg_legend)
                print_list_footer(bus, n, sum);
        return 0;
}

/* One row of ListQueuedDetails, or of ListQueued from a daemon that predates it (no details then). */
typedef struct QueuedRowContext {
        usec_t now;
        bool details;
} QueuedRowContext;

static int read_queued_row(sd_bus_message *reply, Table *t, json_t *json, void *userdata) {
        char rel[FORMAT_RELATIVE_MAX], abs_time[FORMAT_TIMESTAMP_MAX], sum[SHORT_CHECKSUM_MAX],
                next[FORMAT_RELATIVE_MAX];
        const QueuedRowContext *ctx = userdata;
        const char *id, *checksum = "", *last_error = "";
        uint64_t queued_at, next_attempt = 0;
        int r;

        if (ctx->details)
                r = sd_bus_message_read(reply, "(stsst)", &id, &queued_at, &checksum, &last_error, &next_attempt);
        else
                r = sd_bus_message_read(reply, "(st)", &id, &queued_at);
        if (r <= 0)
                return r < 0 ? log_parse_error(r) : 0;

        if (json)
                return json_array_append_new(json, json_pack("{s:s, s:o, s:s, s:s, s:o}", "id", id,
                                                             "queued_at", json_u64(queued_at),
                                                             "checksum", checksum,
                                                             "last_error", last_error,
                                                             "next_attempt", json_u64(next_attempt))) < 0 ?
                        log_oom() : 1;

        if (table_add_cell(t, id) < 0 ||
            table_add_cell(t, format_timestamp_relative(rel, sizeof rel, queued_at, ctx->now)) < 0 ||
            table_add_cell(t, format_timestamp(abs_time, sizeof abs_time, queued_at)) < 0 ||
            table_add_cell(t, shorten_checksum(sum, sizeof sum, checksum)) < 0 ||
            table_add_cell(t, next_attempt > 0 ? format_timestamp_relative(next, sizeof next, next_attempt, ctx->now)
                                               : "-") < 0 ||
            table_add_cell(t, isempty(last_error) ? "-" : last_error) < 0)
                return log_oom();
        return 1;
}

int verb_list_queued(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        QueuedRowContext ctx = { .details = true };
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        r = call_manager(bus, "ListQueuedDetails", 0, &error, &reply, NULL);
        if (r < 0 && sd_bus_error_has_name(&error, SD_BUS_ERROR_UNKNOWN_METHOD)) {
                /* An older imgcached (over -H, say): the queue without checksums and retries. */
                sd_bus_error_free(&error);
                ctx.details = false;
                r = call_manager(bus, "ListQueued", 0, &error, &reply, NULL);
        }
        if (r < 0)
                return log_call_error(r, &error, ctx.details ? "ListQueuedDetails" : "ListQueued",
                                      "list queued images");

        r = table_new(&t, "ID", "QUEUED", "QUEUED AT", "CHECKSUM", "NEXT ATTEMPT", "LAST ERROR", NULL);
        if (r < 0)
                return log_oom();

        ctx.now = now_usec(CLOCK_REALTIME);
        return print_reply_listing(reply, ctx.details ? "(stsst)" : "(st)", t, read_queued_row, &ctx,
                                   "No images queued.", "image queued", "images queued");
}

int get_cached_size(sd_bus *bus, const char *id, uint64_t *ret_size) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *ignored;
        uint64_t size;
        int r;

        r = sd_bus_call_method(bus, BUS_NAME, BUS_PATH, BUS_IFACE, "GetImage", &error, &reply, "s", id);
        if (sd_bus_error_has_name(&error, IMGCACHE_ERROR_NO_SUCH_IMAGE))
                return 0;
        if (r < 0)
                return r;

        r = sd_bus_message_read(reply, "(stttts)", &ignored, &size, NULL, NULL, NULL, NULL);
        if (r < 0)
                return r;

        *ret_size = size;
        return 1;
}

int verb_show(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        char size[FORMAT_SIZE_MAX], ts[FORMAT_TIMESTAMP_MAX], rel[FORMAT_RELATIVE_MAX];
        const char *id = argv[1];
        usec_t now;
        ImageInfo i;
        sd_bus *bus;
        int r;

        r = acquire_bus_for_images(c, argc, argv, &bus);
        if (r < 0)
                return r;

        r = call_manager(bus, "GetImage", 0, &error, &reply, "s", id);
        if (r < 0)
                return log_call_error(r, &error, "GetImage", "get image %s", id);

        r = sd_bus_message_read(reply, "(stttts)", &i.id, &i.size, &i.hits, &i.last_accessed,
                                &i.last_modified, &i.checksum);
        if (r < 0)
                return log_parse_error(r);

        if (arg_json != JSON_MODE_OFF)
                return json_print_and_free(image_to_json(&i));

        now = now_usec(CLOCK_REALTIME);
        printf("           Id: %s\n", i.id);
        printf("         Size: %s (%" PRIu64 " %s)\n", format_size(size, sizeof size, i.size), i.size,
               plural(i.size, "byte", "bytes"));
        printf("         Hits: %" PRIu64 "\n", i.hits);
        printf("Last accessed: %s", format_timestamp(ts, sizeof ts, i.last_accessed));
        if (i.last_accessed > 0)
                printf(" (%s)", format_timestamp_relative(rel, sizeof rel, i.last_accessed, now));
        printf("\n");
        printf("Last modified: %s", format_timestamp(ts, sizeof ts, i.last_modified));
        if (i.last_modified > 0)
                printf(" (%s)", format_timestamp_relative(rel, sizeof rel, i.last_modified, now));
        printf("\n");
        printf("     Checksum: %s\n", isempty(i.checksum) ? "unknown" : i.checksum);
        return 0;
}
