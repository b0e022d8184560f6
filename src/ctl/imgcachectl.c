/* SPDX-License-Identifier: MIT */

/* imgcachectl: the command line of imgcached. It talks only D-Bus (org.imgcache.Manager, see
 * dbus/org.imgcache.Manager.xml), on the system bus by default, the session bus with --user, a remote
 * host's system bus with -H, or a container's with -M. */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "bus-error.h"
#include "checksum.h"
#include "ctl-util.h"
#include "image-id.h"
#include "imgcache-config.h"
#include "log.h"
#include "parse-util.h"
#include "table.h"
#include "util.h"

#define BUS_NAME        "org.imgcache.Manager"
#define BUS_PATH        "/org/imgcache/Manager"
#define BUS_IFACE       "org.imgcache.Manager"
#define BUS_JOB_IFACE   "org.imgcache.Job"
#define BUS_JOB_PREFIX  "/org/imgcache/job"

/* Re-hashing a large image takes a while; the default 25 s of sd-bus would cut it short. */
#define VERIFY_TIMEOUT_USEC (6 * 3600 * USEC_PER_SEC)

typedef enum JsonMode {
        JSON_MODE_OFF,
        JSON_MODE_SHORT,
        JSON_MODE_PRETTY,
        _JSON_MODE_MAX,
        _JSON_MODE_INVALID = -EINVAL,
} JsonMode;

typedef enum SortKey {
        SORT_ACCESSED,
        SORT_ID,
        SORT_SIZE,
        SORT_HITS,
        SORT_MODIFIED,
        _SORT_KEY_MAX,
        _SORT_KEY_INVALID = -EINVAL,
} SortKey;

typedef enum Transport {
        TRANSPORT_LOCAL,
        TRANSPORT_REMOTE,
        TRANSPORT_MACHINE,
} Transport;

static Transport arg_transport = TRANSPORT_LOCAL;
static const char *arg_host = NULL;
static bool arg_user = false;
static JsonMode arg_json = JSON_MODE_OFF;
static bool arg_pager = true;
static bool arg_legend = true;
static bool arg_quiet = false;
static bool arg_ask_password = true;
static bool arg_force = false;
static bool arg_no_block = false;
static SortKey arg_sort = SORT_ACCESSED;
static const char *arg_checksum = NULL;
static usec_t arg_stall_time = 0;

#define log_oom() log_error_errno(ENOMEM, "Out of memory.")
#define IN_SET_ERRNO(r, a, b, c) ((r) == -(a) || (r) == -(b) || (r) == -(c))

static const char *const json_mode_table[_JSON_MODE_MAX] = {
        [JSON_MODE_OFF] = "off",
        [JSON_MODE_SHORT] = "short",
        [JSON_MODE_PRETTY] = "pretty",
};

static const char *const sort_key_table[_SORT_KEY_MAX] = {
        [SORT_ACCESSED] = "accessed",
        [SORT_ID] = "id",
        [SORT_SIZE] = "size",
        [SORT_HITS] = "hits",
        [SORT_MODIFIED] = "modified",
};

static int string_table_lookup(const char *const *table, size_t n, const char *s) {
        for (size_t i = 0; i < n; i++)
                if (table[i] && streq(table[i], s))
                        return (int) i;
        return -EINVAL;
}

/* ---- bus plumbing ---------------------------------------------------------------------------------- */

typedef struct Context {
        sd_bus *bus;
} Context;

static const char *bus_description(void) {
        switch (arg_transport) {
        case TRANSPORT_REMOTE:
                return arg_user ? "the remote session bus" : "the remote system bus";
        case TRANSPORT_MACHINE:
                return arg_user ? "the container's session bus" : "the container's system bus";
        default:
                return arg_user ? "the session bus" : "the system bus";
        }
}

static int acquire_bus(Context *c, sd_bus **ret) {
        int r;

        if (!c->bus) {
                switch (arg_transport) {
                case TRANSPORT_REMOTE:
                        r = sd_bus_open_system_remote(&c->bus, arg_host);
                        break;
                case TRANSPORT_MACHINE:
                        r = arg_user ? sd_bus_open_user_machine(&c->bus, arg_host) :
                                       sd_bus_open_system_machine(&c->bus, arg_host);
                        break;
                default:
                        r = arg_user ? sd_bus_open_user(&c->bus) : sd_bus_open_system(&c->bus);
                }
                if (r < 0) {
                        const char *hint = "";

                        c->bus = NULL;
                        if (arg_transport == TRANSPORT_LOCAL && IN_SET_ERRNO(r, ENOENT, ECONNREFUSED, ENOMEDIUM))
                                hint = arg_user ?
                                        ". Is there a session bus (DBUS_SESSION_BUS_ADDRESS, XDG_RUNTIME_DIR)?" :
                                        ". Is D-Bus running?";
                        return log_error_errno(r, "Failed to connect to %s%s%s: %m%s",
                                               bus_description(),
                                               arg_host ? " of " : "", strempty(arg_host), hint);
                }

                (void) sd_bus_set_allow_interactive_authorization(c->bus, arg_ask_password);
        }

        *ret = c->bus;
        return 0;
}

static bool use_polkit_agent(void) {
        return arg_ask_password && !arg_user && arg_transport == TRANSPORT_LOCAL && geteuid() != 0;
}

/* One method call on the manager or a job object, with the interactive-authorization flag set unless
 * --no-ask-password. timeout 0 = sd-bus's default. */
static int call_method(
                sd_bus *bus,
                const char *path,
                const char *interface,
                const char *member,
                uint64_t timeout,
                sd_bus_error *error,
                sd_bus_message **ret_reply,
                const char *types, ...) {

        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, BUS_NAME, path, interface, member);
        if (r < 0)
                return r;

        if (types) {
                va_list ap;

                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
                if (r < 0)
                        return r;
        }

        r = sd_bus_message_set_allow_interactive_authorization(m, arg_ask_password);
        if (r < 0)
                return r;

        if (polkit_action_for_method(member) && use_polkit_agent())
                (void) polkit_agent_open();

        return sd_bus_call(bus, m, timeout, error, ret_reply);
}

#define call_manager(bus, member, timeout, error, reply, types, ...) \
        call_method((bus), BUS_PATH, BUS_IFACE, (member), (timeout), (error), (reply), (types), ##__VA_ARGS__)

/* Logs "Failed to <what>: <the daemon's message>[. <how to get access>]" and returns r (negative). */
static int log_call_error(int r, const sd_bus_error *error, const char *member, const char *format, ...)
        _printf_(4, 5);
static int log_call_error(int r, const sd_bus_error *error, const char *member, const char *format, ...) {
        _cleanup_(freep) char *what = NULL, *line = NULL;
        va_list ap;
        int k;

        if (r >= 0)
                r = -EIO;

        va_start(ap, format);
        k = vasprintf(&what, format, ap);
        va_end(ap);
        if (k < 0) {
                what = NULL;
                return log_oom();
        }

        if (format_call_error(what, error, r, member, arg_ask_password, arg_user, &line) < 0)
                return log_oom();

        (void) log_error_errno(r, "%s", line);
        return r;
}

static int log_parse_error(int r) {
        return log_error_errno(r, "Failed to parse the reply of imgcached: %m");
}

/* Reads an a{sv} (positioned at it) into fields described by a map; unknown properties are skipped. */
typedef struct PropertyMap {
        const char *name;
        char type;              /* 's', 't', 'u', 'd' */
        size_t offset;
} PropertyMap;

static int map_properties(sd_bus_message *m, const PropertyMap *map, void *userdata) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;

        for (;;) {
                const PropertyMap *p = NULL;
                const char *name;

                r = sd_bus_message_enter_container(m, 'e', "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;

                r = sd_bus_message_read(m, "s", &name);
                if (r < 0)
                        return r;

                for (const PropertyMap *i = map; i->name; i++)
                        if (streq(i->name, name)) {
                                p = i;
                                break;
                        }

                if (p) {
                        const char sig[2] = { p->type, 0 };

                        r = sd_bus_message_enter_container(m, 'v', sig);
                        if (r < 0)
                                return r;
                        r = sd_bus_message_read_basic(m, p->type, (uint8_t *) userdata + p->offset);
                        if (r < 0)
                                return r;
                        r = sd_bus_message_exit_container(m);
                } else
                        r = sd_bus_message_skip(m, "v");
                if (r < 0)
                        return r;

                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }

        return sd_bus_message_exit_container(m);
}

/* ---- output helpers -------------------------------------------------------------------------------- */

static json_t *json_u64(uint64_t v) {
        /* JSON integers are signed 64 bit in jansson; "no limit" (UINT64_MAX) is null. */
        return v > INT64_MAX ? json_null() : json_integer((json_int_t) v);
}

static int json_print(json_t *j) {
        _cleanup_(freep) char *s = NULL;
        size_t flags = JSON_PRESERVE_ORDER;

        if (!j)
                return log_oom();

        flags |= arg_json == JSON_MODE_PRETTY ? JSON_INDENT(2) : JSON_COMPACT;
        s = json_dumps(j, flags);
        if (!s)
                return log_oom();

        puts(s);
        return 0;
}

/* Prints and frees j. */
static int json_print_and_free(json_t *j) {
        int r = json_print(j);

        json_decref(j);
        return r;
}

static int validate_ids(int argc, char *argv[]) {
        int r = 0;

        for (int i = 0; i < argc; i++) {
                const char *reason = image_id_invalid_reason(argv[i]);

                if (reason) {
                        log_error("Invalid image id '%s': %s", argv[i], reason);
                        r = -EINVAL;
                }
        }
        return r;
}

/* Asks before destructive operations: only on a terminal and unless --force. */
static int confirm(const char *format, ...) _printf_(1, 2);
static int confirm(const char *format, ...) {
        _cleanup_(freep) char *question = NULL;
        va_list ap;
        bool yes;
        int r;

        if (arg_force || !isatty(STDIN_FILENO))
                return 0;

        va_start(ap, format);
        r = vasprintf(&question, format, ap);
        va_end(ap);
        if (r < 0) {
                question = NULL;
                return log_oom();
        }

        r = ask_yes_no(stdin, stdout, &yes, "%s", question);
        if (r < 0)
                return log_error_errno(r, "Failed to read the answer: %m");
        if (!yes) {
                log_error("Aborted.");
                return -ECANCELED;
        }
        return 0;
}

static const char *plural(uint64_t n, const char *one, const char *many) {
        return n == 1 ? one : many;
}

static void open_pager(void) {
        if (arg_pager && arg_json == JSON_MODE_OFF)
                (void) pager_open();
}

/* The end every listing verb shares: JSON when asked for, one line when there is nothing, else the
 * table through the pager, then "N things." unless the caller prints a footer of its own (noun NULL).
 * Consumes json. */
static int print_listing(Table *t, json_t *json, size_t n, const char *nothing,
                         const char *noun, const char *nouns) {
        if (json)
                return json_print_and_free(json);
        if (n == 0) {
                if (arg_legend)
                        puts(nothing);
                return 0;
        }

        open_pager();
        int r = table_print(t, stdout, arg_legend);
        if (r < 0)
                return log_error_errno(r, "Failed to print the table: %m");
        if (arg_legend && noun)
                printf("\n%zu %s.\n", n, plural(n, noun, nouns));
        return 0;
}

/* ---- status ---------------------------------------------------------------------------------------- */

typedef struct ManagerStatus {
        const char *version;
        const char *driver;
        const char *directory;
        const char *upstream;
        uint64_t max_size;
        uint64_t stall_time;
        uint64_t current_size;
        uint32_t image_count;
        uint32_t queued_count;
        uint64_t hits;
        uint64_t misses;
        uint64_t bytes_served;
} ManagerStatus;

static const PropertyMap manager_status_map[] = {
        { "Version",        's', offsetof(ManagerStatus, version)      },
        { "Driver",         's', offsetof(ManagerStatus, driver)       },
        { "CacheDirectory", 's', offsetof(ManagerStatus, directory)    },
        { "Upstream",       's', offsetof(ManagerStatus, upstream)     },
        { "MaxSize",        't', offsetof(ManagerStatus, max_size)     },
        { "StallTimeUSec",  't', offsetof(ManagerStatus, stall_time)   },
        { "CurrentSize",    't', offsetof(ManagerStatus, current_size) },
        { "ImageCount",     'u', offsetof(ManagerStatus, image_count)  },
        { "QueuedCount",    'u', offsetof(ManagerStatus, queued_count) },
        { "Hits",           't', offsetof(ManagerStatus, hits)         },
        { "Misses",         't', offsetof(ManagerStatus, misses)       },
        { "BytesServed",    't', offsetof(ManagerStatus, bytes_served) },
        {}
};

/* Fills s with strings borrowed from *ret_reply. */
static int get_manager_status(sd_bus *bus, ManagerStatus *s, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        *s = (ManagerStatus) {};

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

static int verb_status(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        char size[FORMAT_SIZE_MAX], max[FORMAT_SIZE_MAX], served[FORMAT_SIZE_MAX],
                stall[FORMAT_TIMESPAN_MAX], pct[FORMAT_PERCENT_MAX], ratio[FORMAT_PERCENT_MAX];
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

        running_known = count_running_jobs(bus, &running) >= 0;

        if (arg_json != JSON_MODE_OFF)
                return json_print_and_free(json_pack(
                                "{s:s, s:s, s:s, s:s, s:o, s:o, s:o, s:I, s:I, s:o, s:o, s:o, s:o}",
                                "version", strempty(s.version),
                                "driver", strempty(s.driver),
                                "cache_directory", strempty(s.directory),
                                "upstream", strempty(s.upstream),
                                "max_size", json_u64(s.max_size),
                                "stall_time_usec", json_u64(s.stall_time),
                                "current_size", json_u64(s.current_size),
                                "image_count", (json_int_t) s.image_count,
                                "queued_count", (json_int_t) s.queued_count,
                                "hits", json_u64(s.hits),
                                "misses", json_u64(s.misses),
                                "bytes_served", json_u64(s.bytes_served),
                                "running_jobs", running_known ? json_integer(running) : json_null()));

        open_pager();

        format_size(size, sizeof size, s.current_size);
        printf("   Directory: %s\n", strempty(s.directory));
        printf("      Driver: %s\n", strempty(s.driver));
        if (s.max_size == UINT64_MAX || s.max_size == 0)
                printf("        Size: %s (no limit)\n", size);
        else
                printf("        Size: %s of %s (%s)\n", size, format_size(max, sizeof max, s.max_size),
                       format_percent(pct, sizeof pct, s.current_size, s.max_size));
        printf("      Images: %" PRIu32 "\n", s.image_count);
        printf("      Queued: %" PRIu32 "\n", s.queued_count);
        printf(" Hits/Misses: %" PRIu64 "/%" PRIu64 " (hit ratio %s)\n", s.hits, s.misses,
               format_percent(ratio, sizeof ratio, s.hits, s.hits + s.misses));
        printf("Bytes served: %s\n", format_size(served, sizeof served, s.bytes_served));
        printf("    Upstream: %s\n", isempty(s.upstream) ? "none configured" : s.upstream);
        printf("  Stall time: %s\n", format_timespan(stall, sizeof stall, s.stall_time));
        if (running_known)
                printf("Running jobs: %" PRIu32 "\n", running);
        else
                printf("Running jobs: n/a\n");
        printf("     Version: %s\n", strempty(s.version));

        return 0;
}

/* ---- list / show ----------------------------------------------------------------------------------- */

typedef struct ImageInfo {
        const char *id;
        uint64_t size;
        uint64_t hits;
        uint64_t last_accessed;
        uint64_t last_modified;
        const char *checksum;
} ImageInfo;

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

/* Reads ListImages; the strings in *ret are borrowed from *ret_reply. */
static int list_images(sd_bus *bus, ImageInfo **ret, size_t *ret_n, sd_bus_message **ret_reply) {
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

static int verb_list(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL, *props = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        _cleanup_(freep) ImageInfo *images = NULL;
        char buf[MAX(FORMAT_RELATIVE_MAX, MAX(SHORT_CHECKSUM_MAX, FORMAT_SIZE_MAX))];
        char total[FORMAT_SIZE_MAX], max[FORMAT_SIZE_MAX];
        uint64_t sum = 0;
        usec_t now;
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

        if (arg_json != JSON_MODE_OFF) {
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

        r = table_new(&t, "ID", "SIZE", "HITS", "LAST ACCESSED", "CHECKSUM", NULL);
        if (r < 0)
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

        r = print_listing(t, /* json= */ NULL, n, "No images cached.", /* noun= */ NULL, NULL);
        if (r < 0 || n == 0)
                return r;

        if (arg_legend) {
                ManagerStatus s;

                /* The footer uses the daemon's own accounting, which also counts files being written. */
                if (get_manager_status(bus, &s, &props) >= 0)
                        sum = s.current_size;
                else
                        s.max_size = UINT64_MAX;

                format_size(total, sizeof total, sum);
                if (s.max_size == UINT64_MAX || s.max_size == 0)
                        printf("\n%zu %s, %s.\n", n, plural(n, "image", "images"), total);
                else
                        printf("\n%zu %s, %s of %s.\n", n, plural(n, "image", "images"), total,
                               format_size(max, sizeof max, s.max_size));
        }

        return 0;
}

static int verb_list_queued(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        char rel[FORMAT_RELATIVE_MAX], abs_time[FORMAT_TIMESTAMP_MAX];
        json_t *a = NULL;
        usec_t now;
        size_t n = 0;
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        r = call_manager(bus, "ListQueued", 0, &error, &reply, NULL);
        if (r < 0)
                return log_call_error(r, &error, "ListQueued", "list queued images");

        r = table_new(&t, "ID", "QUEUED", "QUEUED AT", NULL);
        if (r < 0)
                return log_oom();

        if (arg_json != JSON_MODE_OFF) {
                a = json_array();
                if (!a)
                        return log_oom();
        }

        r = sd_bus_message_enter_container(reply, 'a', "(st)");
        if (r < 0)
                goto parse_error;

        now = now_usec(CLOCK_REALTIME);
        for (;;) {
                const char *id;
                uint64_t queued_at;

                r = sd_bus_message_read(reply, "(st)", &id, &queued_at);
                if (r < 0)
                        goto parse_error;
                if (r == 0)
                        break;

                if (a) {
                        if (json_array_append_new(a, json_pack("{s:s, s:o}", "id", id,
                                                               "queued_at", json_u64(queued_at))) < 0) {
                                json_decref(a);
                                return log_oom();
                        }
                } else if (table_add_cell(t, id) < 0 ||
                           table_add_cell(t, format_timestamp_relative(rel, sizeof rel, queued_at, now)) < 0 ||
                           table_add_cell(t, format_timestamp(abs_time, sizeof abs_time, queued_at)) < 0)
                        return log_oom();
                n++;
        }

        return print_listing(t, a, n, "No images queued.", "image queued", "images queued");

parse_error:
        json_decref(a);
        return log_parse_error(r);
}

static int verb_show(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        char size[FORMAT_SIZE_MAX], ts[FORMAT_TIMESTAMP_MAX], rel[FORMAT_RELATIVE_MAX];
        const char *id = argv[1];
        usec_t now;
        ImageInfo i;
        sd_bus *bus;
        int r;

        r = validate_ids(1, argv + 1);
        if (r < 0)
                return r;

        r = acquire_bus(c, &bus);
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
        printf("         Size: %s (%" PRIu64 " bytes)\n", format_size(size, sizeof size, i.size), i.size);
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

/* ---- queue management ------------------------------------------------------------------------------ */

static int verb_queue(int argc, char *argv[], Context *c) {
        json_t *a = NULL;
        sd_bus *bus;
        int r, ret = 0;

        r = validate_ids(argc - 1, argv + 1);
        if (r < 0)
                return r;

        if (arg_checksum && argc > 2)
                return log_error_errno(EINVAL, "--checksum= applies to a single image; give one id only.");

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        if (arg_json != JSON_MODE_OFF) {
                a = json_array();
                if (!a)
                        return log_oom();
        }

        for (int i = 1; i < argc; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                int queued;

                r = call_manager(bus, "QueueImage", 0, &error, &reply, "ss", argv[i], strempty(arg_checksum));
                if (r < 0) {
                        ret = log_call_error(r, &error, "QueueImage", "queue image %s", argv[i]);
                        continue;
                }

                r = sd_bus_message_read(reply, "b", &queued);
                if (r < 0) {
                        ret = log_parse_error(r);
                        continue;
                }

                if (a)
                        (void) json_array_append_new(a, json_pack("{s:s, s:b}", "id", argv[i], "queued", queued));
                else if (arg_quiet)
                        ;
                else if (queued)
                        printf("Queued image %s.\n", argv[i]);
                else
                        printf("Image %s is already queued or cached.\n", argv[i]);
        }

        if (a) {
                r = json_print_and_free(a);
                if (r < 0 && ret == 0)
                        ret = r;
        }
        return ret;
}

static int verb_dequeue(int argc, char *argv[], Context *c) {
        sd_bus *bus;
        int r, ret = 0;

        r = validate_ids(argc - 1, argv + 1);
        if (r < 0)
                return r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        for (int i = 1; i < argc; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;

                r = call_manager(bus, "DequeueImage", 0, &error, NULL, "s", argv[i]);
                if (r < 0) {
                        ret = log_call_error(r, &error, "DequeueImage", "dequeue image %s", argv[i]);
                        continue;
                }
                if (!arg_quiet && arg_json == JSON_MODE_OFF)
                        printf("Removed image %s from the queue.\n", argv[i]);
        }

        return ret;
}

/* The calls returning one count (DequeueAll, DeleteAllImages). Prints the JSON object itself; returns 1
 * when the caller should print its text line. */
static int call_count(sd_bus *bus, const char *member, const char *what, const char *json_key, uint32_t *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = call_manager(bus, member, 0, &error, &reply, NULL);
        if (r < 0)
                return log_call_error(r, &error, member, "%s", what);

        r = sd_bus_message_read(reply, "u", ret);
        if (r < 0)
                return log_parse_error(r);

        if (arg_json != JSON_MODE_OFF)
                return json_print_and_free(json_pack("{s:I}", json_key, (json_int_t) *ret));
        return !arg_quiet;
}

/* The verbs that empty something in one call and report how many went: one shape, different words. */
typedef struct EmptyingVerb {
        const char *question; /* asked on a terminal */
        const char *method;   /* returns "u" */
        const char *action;   /* for "Failed to …" */
        const char *json_key;
        const char *verb;     /* "<verb> N images<where>." */
        const char *where;
} EmptyingVerb;

static int run_emptying_verb(Context *c, const EmptyingVerb *v) {
        uint32_t n;
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        r = confirm("%s", v->question);
        if (r < 0)
                return r;

        r = call_count(bus, v->method, v->action, v->json_key, &n);
        if (r > 0)
                printf("%s %" PRIu32 " %s%s.\n", v->verb, n, plural(n, "image", "images"), v->where);
        return r < 0 ? r : 0;
}

static int verb_dequeue_all(int argc, char *argv[], Context *c) {
        static const EmptyingVerb v = {
                .question = "Remove all images from the prefetch queue?",
                .method = "DequeueAll",
                .action = "empty the queue",
                .json_key = "dequeued",
                .verb = "Removed",
                .where = " from the queue",
        };
        return run_emptying_verb(c, &v);
}

/* ---- deletion and maintenance ---------------------------------------------------------------------- */

static int verb_delete(int argc, char *argv[], Context *c) {
        sd_bus *bus;
        int r, ret = 0;

        r = validate_ids(argc - 1, argv + 1);
        if (r < 0)
                return r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        if (argc == 2)
                r = confirm("Delete cached image %s?", argv[1]);
        else
                r = confirm("Delete %i cached images?", argc - 1);
        if (r < 0)
                return r;

        for (int i = 1; i < argc; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;

                r = call_manager(bus, "DeleteImage", 0, &error, NULL, "s", argv[i]);
                if (r < 0) {
                        ret = log_call_error(r, &error, "DeleteImage", "delete image %s", argv[i]);
                        continue;
                }
                if (!arg_quiet && arg_json == JSON_MODE_OFF)
                        printf("Deleted image %s.\n", argv[i]);
        }

        return ret;
}

static int verb_delete_all(int argc, char *argv[], Context *c) {
        static const EmptyingVerb v = {
                .question = "Delete all cached images?",
                .method = "DeleteAllImages",
                .action = "delete all images",
                .json_key = "deleted",
                .verb = "Deleted",
                .where = "",
        };
        return run_emptying_verb(c, &v);
}

static int verb_prune(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        char size[FORMAT_SIZE_MAX];
        uint64_t bytes;
        uint32_t files;
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        r = confirm("Remove the least recently used images until the cache fits its maximum size?");
        if (r < 0)
                return r;

        r = call_manager(bus, "Prune", 0, &error, &reply, NULL);
        if (r < 0)
                return log_call_error(r, &error, "Prune", "prune the cache");

        r = sd_bus_message_read(reply, "ut", &files, &bytes);
        if (r < 0)
                return log_parse_error(r);

        if (arg_json != JSON_MODE_OFF)
                return json_print_and_free(json_pack("{s:I, s:o}", "files", (json_int_t) files,
                                                     "bytes", json_u64(bytes)));
        if (arg_quiet)
                return 0;
        if (files == 0)
                printf("Nothing to prune: the cache fits its maximum size.\n");
        else
                printf("Pruned %" PRIu32 " %s, freeing %s.\n", files, plural(files, "image", "images"),
                       format_size(size, sizeof size, bytes));
        return 0;
}

static int verb_clean(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t stalled, invalid;
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        r = confirm("Remove invalid images and incomplete downloads stalled for longer than the stall time?");
        if (r < 0)
                return r;

        r = call_manager(bus, "Clean", 0, &error, &reply, "t", (uint64_t) arg_stall_time);
        if (r < 0)
                return log_call_error(r, &error, "Clean", "clean the cache");

        r = sd_bus_message_read(reply, "uu", &stalled, &invalid);
        if (r < 0)
                return log_parse_error(r);

        if (arg_json != JSON_MODE_OFF)
                return json_print_and_free(json_pack("{s:I, s:I}", "stalled", (json_int_t) stalled,
                                                     "invalid", (json_int_t) invalid));
        if (!arg_quiet)
                printf("Removed %" PRIu32 " stalled incomplete %s and %" PRIu32 " invalid %s.\n",
                       stalled, plural(stalled, "file", "files"), invalid, plural(invalid, "file", "files"));
        return 0;
}

static int verb_verify(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *list_reply = NULL;
        _cleanup_(freep) ImageInfo *images = NULL;
        _cleanup_(freep) const char **ids = NULL;
        size_t n_ids;
        unsigned n_bad = 0;
        json_t *a = NULL;
        sd_bus *bus;
        int r, ret = 0;

        r = validate_ids(argc - 1, argv + 1);
        if (r < 0)
                return r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        if (argc > 1) {
                n_ids = (size_t) argc - 1;
                ids = calloc(n_ids, sizeof(char *));
                if (!ids)
                        return log_oom();
                for (size_t i = 0; i < n_ids; i++)
                        ids[i] = argv[i + 1];
        } else {
                r = list_images(bus, &images, &n_ids, &list_reply);
                if (r < 0)
                        return r;
                if (n_ids == 0) {
                        if (arg_json != JSON_MODE_OFF)
                                return json_print_and_free(json_array());
                        if (!arg_quiet)
                                printf("No images cached, nothing to verify.\n");
                        return 0;
                }
                ids = calloc(n_ids, sizeof(char *));
                if (!ids)
                        return log_oom();
                for (size_t i = 0; i < n_ids; i++)
                        ids[i] = images[i].id;
        }

        if (arg_json != JSON_MODE_OFF) {
                a = json_array();
                if (!a)
                        return log_oom();
        }

        for (size_t i = 0; i < n_ids; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                int good;

                r = call_manager(bus, "Verify", VERIFY_TIMEOUT_USEC, &error, &reply, "s", ids[i]);
                if (r < 0) {
                        ret = log_call_error(r, &error, "Verify", "verify image %s", ids[i]);
                        continue;
                }

                r = sd_bus_message_read(reply, "b", &good);
                if (r < 0) {
                        ret = log_parse_error(r);
                        continue;
                }

                if (!good)
                        n_bad++;

                if (a)
                        (void) json_array_append_new(a, json_pack("{s:s, s:b}", "id", ids[i], "good", good));
                else if (!good)
                        log_error("Image %s failed verification and was moved to invalid/.", ids[i]);
                else if (!arg_quiet)
                        printf("Image %s: OK\n", ids[i]);
        }

        if (a) {
                r = json_print_and_free(a);
                if (r < 0 && ret == 0)
                        ret = r;
        }

        if (ret == 0 && n_bad > 0)
                ret = -EBADMSG;
        return ret;
}

/* ---- jobs ------------------------------------------------------------------------------------------ */

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
} JobInfo;

static const PropertyMap job_property_map[] = {
        { "ImageId",    's', offsetof(JobInfo, p_image_id) },
        { "State",      's', offsetof(JobInfo, p_state)    },
        { "Error",      's', offsetof(JobInfo, p_error)    },
        { "Progress",   'd', offsetof(JobInfo, p_progress) },
        { "BytesDone",  't', offsetof(JobInfo, p_done)     },
        { "BytesTotal", 't', offsetof(JobInfo, p_total)    },
        {}
};

struct Watch {
        sd_event *event;
        JobInfo *jobs;
        size_t n_jobs;
        const char *verb;       /* "fetch" or "prefetch", for messages */
        bool tty;
        bool json;
        unsigned lines_drawn;
        unsigned n_failed;
        bool detached;
};

static void watch_done(Watch *w) {
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

static int watch_add(Watch *w, const char *path, const char *image_id) {
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

static size_t watch_active(const Watch *w) {
        size_t n = 0;

        for (size_t i = 0; i < w->n_jobs; i++)
                if (!w->jobs[i].removed)
                        n++;
        return n;
}

static const char *job_label(const JobInfo *j) {
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

        r = job_take_properties(j, m);
        if (r < 0)
                log_debug_errno(r, "Failed to parse properties of %s, ignoring: %m", j->path);

        watch_draw(w);
        return 0;
}

static int on_job_get_all(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        JobInfo *j = userdata;
        Watch *w = j->watch;
        int r;

        j->get_all_slot = sd_bus_slot_unref(j->get_all_slot);

        /* An error means the job is gone already; JobRemoved tells the rest. */
        if (sd_bus_message_is_method_error(m, NULL) || j->removed)
                return 0;

        r = job_take_properties(j, m);
        if (r < 0)
                log_debug_errno(r, "Failed to parse properties of %s, ignoring: %m", j->path);

        watch_draw(w);
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

static json_t *watch_results_to_json(const Watch *w) {
        json_t *a = json_array();

        for (size_t i = 0; a && i < w->n_jobs; i++) {
                const JobInfo *j = &w->jobs[i];

                if (json_array_append_new(a, json_pack("{s:I, s:s, s:s, s:s, s:s, s:o}",
                                                       "job", (json_int_t) j->id,
                                                       "image_id", strempty(j->image_id),
                                                       "path", j->path,
                                                       "result", strempty(j->result),
                                                       "error", strempty(j->error),
                                                       "size", json_u64(MAX(j->total, j->done)))) < 0) {
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
static void watch_resolve_image_ids(sd_bus *bus, Watch *w) {
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

static int add_job_matches(sd_bus *bus, Watch *w, sd_bus_slot **slots) {
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

/* Starts jobs with member (FetchImage or Prefetch) and, unless --no-block, follows them to their end. */
static int run_jobs(sd_bus *bus, const char *member, const char *image_id, const char *what) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *s0 = NULL, *s1 = NULL, *s2 = NULL, *s3 = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        sd_bus_slot *slots[4] = {};
        Watch w = { .verb = what };
        int r;

        if (!arg_no_block) {
                r = sd_event_new(&w.event);
                if (r < 0)
                        return log_error_errno(r, "Failed to allocate an event loop: %m");

                r = add_job_matches(bus, &w, slots);
                s0 = slots[0], s1 = slots[1], s2 = slots[2], s3 = slots[3];
                if (r < 0) {
                        watch_done(&w);
                        return log_error_errno(r, "Failed to subscribe to job signals: %m");
                }

                /* Blocked from here on, so Ctrl-C during the call also detaches politely. */
                r = sd_event_add_signal(w.event, NULL, SIGINT | SD_EVENT_SIGNAL_PROCMASK, on_interrupt, &w);
                if (r >= 0)
                        r = sd_event_add_signal(w.event, NULL, SIGTERM | SD_EVENT_SIGNAL_PROCMASK, on_interrupt, &w);
                if (r < 0) {
                        watch_done(&w);
                        return log_error_errno(r, "Failed to handle SIGINT/SIGTERM: %m");
                }
        }

        if (image_id)
                r = call_manager(bus, member, 0, &error, &reply, "ss", image_id, strempty(arg_checksum));
        else
                r = call_manager(bus, member, 0, &error, &reply, NULL);
        if (r < 0) {
                watch_done(&w);
                if (image_id)
                        return log_call_error(r, &error, member, "%s image %s", what, image_id);
                return log_call_error(r, &error, member, "%s", what);
        }

        if (image_id) {
                const char *path;

                r = sd_bus_message_read(reply, "o", &path);
                if (r >= 0)
                        r = watch_add(&w, path, image_id);
        } else {
                const char *path;

                r = sd_bus_message_enter_container(reply, 'a', "o");
                while (r >= 0 && (r = sd_bus_message_read(reply, "o", &path)) > 0)
                        r = watch_add(&w, path, NULL);
        }
        if (r < 0) {
                watch_done(&w);
                return log_parse_error(r);
        }

        if (w.n_jobs == 0) {
                watch_done(&w);
                if (arg_json != JSON_MODE_OFF)
                        return json_print_and_free(json_array());
                if (!arg_quiet)
                        printf("No images queued, nothing to prefetch.\n");
                return 0;
        }

        watch_resolve_image_ids(bus, &w);

        if (arg_no_block) {
                json_t *a = arg_json != JSON_MODE_OFF ? json_array() : NULL;

                for (size_t i = 0; i < w.n_jobs; i++) {
                        JobInfo *j = &w.jobs[i];

                        if (a)
                                (void) json_array_append_new(a, json_pack("{s:I, s:s, s:s}",
                                                                          "job", (json_int_t) j->id,
                                                                          "image_id", strempty(j->image_id),
                                                                          "path", j->path));
                        else if (!arg_quiet)
                                printf("Started job %" PRIu32 " for image %s.\n", j->id, job_label(j));
                }
                watch_done(&w);
                return a ? json_print_and_free(a) : 0;
        }

        w.json = arg_json != JSON_MODE_OFF;
        w.tty = isatty(STDOUT_FILENO) && !w.json;

        r = sd_bus_attach_event(bus, w.event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0) {
                watch_done(&w);
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");
        }


        for (size_t i = 0; i < w.n_jobs; i++) {
                JobInfo *j = &w.jobs[i];

                if (!arg_quiet && !w.tty && !w.json)
                        printf("Started job %" PRIu32 " for image %s.\n", j->id, job_label(j));

                /* The array does not move any more: the job itself is the callback's userdata. */
                j->watch = &w;
                r = sd_bus_call_method_async(bus, &j->get_all_slot, BUS_NAME, j->path,
                                             "org.freedesktop.DBus.Properties", "GetAll", on_job_get_all, j,
                                             "s", BUS_JOB_IFACE);
                if (r < 0)
                        log_debug_errno(r, "Failed to ask for the properties of %s, ignoring: %m", j->path);
        }

        if (!arg_quiet && w.tty)
                printf("Press Ctrl-C to stop watching; the %s continues in the background.\n",
                       w.n_jobs == 1 ? "job" : "jobs");
        fflush(stdout);
        watch_draw(&w);

        r = sd_event_loop(w.event);
        watch_clear(&w);

        if (w.detached && !arg_quiet)
                watch_report_detached(&w);

        /* Drop our handlers before the watch goes away: the bus may outlive it. */
        s0 = sd_bus_slot_unref(s0);
        s1 = sd_bus_slot_unref(s1);
        s2 = sd_bus_slot_unref(s2);
        s3 = sd_bus_slot_unref(s3);
        (void) sd_bus_detach_event(bus);

        if (w.json && !w.detached) {
                int k = json_print_and_free(watch_results_to_json(&w));
                if (k < 0 && r >= 0)
                        r = k;
        }

        if (r >= 0 && w.n_failed > 0)
                r = -EREMOTEIO;
        watch_done(&w);
        return r;
}

static int verb_fetch(int argc, char *argv[], Context *c) {
        sd_bus *bus;
        int r;

        r = validate_ids(1, argv + 1);
        if (r < 0)
                return r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        return run_jobs(bus, "FetchImage", argv[1], "fetch");
}

static int verb_prefetch(int argc, char *argv[], Context *c) {
        sd_bus *bus;
        int r;

        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;

        return run_jobs(bus, "Prefetch", NULL, "prefetch");
}

static int verb_jobs(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        json_t *a = NULL;
        size_t n = 0;
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

        if (arg_json != JSON_MODE_OFF) {
                a = json_array();
                if (!a)
                        return log_oom();
        }

        r = sd_bus_message_enter_container(reply, 'a', "(ussdo)");
        if (r < 0)
                goto parse_error;

        for (;;) {
                const char *image, *state, *path;
                double progress;
                uint32_t id;

                r = sd_bus_message_read(reply, "(ussdo)", &id, &image, &state, &progress, &path);
                if (r < 0)
                        goto parse_error;
                if (r == 0)
                        break;

                if (a) {
                        if (json_array_append_new(a, json_pack("{s:I, s:s, s:s, s:f, s:s}",
                                                               "job", (json_int_t) id, "image_id", image,
                                                               "state", state, "progress", progress,
                                                               "path", path)) < 0) {
                                json_decref(a);
                                return log_oom();
                        }
                } else if (table_add_cellf(t, "%" PRIu32, id) < 0 ||
                           table_add_cell(t, image) < 0 ||
                           table_add_cell(t, state) < 0 ||
                           (progress >= 0 && progress <= 1 ?
                            table_add_cellf(t, "%.0f%%", progress * 100.0) :
                            table_add_cell(t, "-")) < 0)
                        return log_oom();
                n++;
        }

        return print_listing(t, a, n, "No jobs.", "job", "jobs");

parse_error:
        json_decref(a);
        return log_parse_error(r);
}

static int verb_cancel(int argc, char *argv[], Context *c) {
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

/* ---- command line ---------------------------------------------------------------------------------- */

typedef enum VerbFlags {
        VERB_DEFAULT = 1 << 0,  /* run when no verb is given */
} VerbFlags;

#define ARGS_ANY UINT_MAX

typedef struct Verb {
        const char *name;
        unsigned min_args;      /* counting the verb itself */
        unsigned max_args;
        VerbFlags flags;
        int (*dispatch)(int argc, char *argv[], Context *c);
} Verb;

static const Verb verbs[] = {
        { "status",                   1, 1,        VERB_DEFAULT, verb_status      },
        { "list",                     1, 1,        0,            verb_list        },
        { "list-cached",              1, 1,        0,            verb_list        },
        { "list-queued",              1, 1,        0,            verb_list_queued },
        { "show",                     2, 2,        0,            verb_show        },
        { "queue",                    2, ARGS_ANY, 0,            verb_queue       },
        { "queue-image",              2, ARGS_ANY, 0,            verb_queue       },
        { "dequeue",                  2, ARGS_ANY, 0,            verb_dequeue     },
        { "delete-queued-image",      2, ARGS_ANY, 0,            verb_dequeue     },
        { "dequeue-all",              1, 1,        0,            verb_dequeue_all },
        { "delete-all-queued-images", 1, 1,        0,            verb_dequeue_all },
        { "delete",                   2, ARGS_ANY, 0,            verb_delete      },
        { "delete-cached-image",      2, ARGS_ANY, 0,            verb_delete      },
        { "delete-all",               1, 1,        0,            verb_delete_all  },
        { "delete-all-cached-images", 1, 1,        0,            verb_delete_all  },
        { "prune",                    1, 1,        0,            verb_prune       },
        { "clean",                    1, 1,        0,            verb_clean       },
        { "prefetch",                 1, 1,        0,            verb_prefetch    },
        { "fetch",                    2, 2,        0,            verb_fetch       },
        { "verify",                   1, ARGS_ANY, 0,            verb_verify      },
        { "jobs",                     1, 1,        0,            verb_jobs        },
        { "cancel",                   2, ARGS_ANY, 0,            verb_cancel      },
};

static int dispatch_verb(int argc, char *argv[], Context *c) {
        static char *default_argv[2] = {};
        const Verb *verb = NULL;
        unsigned n;

        if (argc <= 0) {
                for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                        if (verbs[i].flags & VERB_DEFAULT) {
                                default_argv[0] = (char *) verbs[i].name;
                                return verbs[i].dispatch(1, default_argv, c);
                        }
                return log_error_errno(EINVAL, "Command verb required.");
        }

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (streq(verbs[i].name, argv[0])) {
                        verb = &verbs[i];
                        break;
                }
        if (!verb)
                return log_error_errno(EINVAL, "Unknown command verb '%s', see --help.", argv[0]);

        n = (unsigned) argc;
        if (n < verb->min_args)
                return log_error_errno(EINVAL, "Too few arguments for '%s', see --help.", argv[0]);
        if (verb->max_args != ARGS_ANY && n > verb->max_args)
                return log_error_errno(EINVAL, "Too many arguments for '%s', see --help.", argv[0]);

        return verb->dispatch(argc, argv, c);
}

static void help(void) {
        printf("%1$s [OPTIONS...] COMMAND ...\n"
               "\n"
               "Control the image cache daemon imgcached.\n"
               "\n"
               "Cache commands:\n"
               "  status                   Show the daemon's state at a glance (default)\n"
               "  list                     List cached images (alias: list-cached)\n"
               "  list-queued              List images queued for prefetching\n"
               "  show ID                  Show one cached image\n"
               "  queue ID...              Queue images for prefetching (alias: queue-image)\n"
               "  dequeue ID...            Remove images from the queue\n"
               "                           (alias: delete-queued-image)\n"
               "  dequeue-all              Empty the queue (alias: delete-all-queued-images)\n"
               "  delete ID...             Delete cached images (alias: delete-cached-image)\n"
               "  delete-all               Delete all cached images\n"
               "                           (alias: delete-all-cached-images)\n"
               "  prune                    Remove least recently used images until the cache\n"
               "                           fits its maximum size\n"
               "  clean                    Remove invalid images and stalled downloads\n"
               "  verify [ID...]           Re-hash cached images, all when no ID is given\n"
               "\n"
               "Transfer commands:\n"
               "  prefetch                 Fetch every queued image\n"
               "  fetch ID                 Fetch one image now\n"
               "  jobs                     List fetch jobs\n"
               "  cancel JOB...            Cancel fetch jobs\n"
               "\n"
               "Options:\n"
               "  -h --help                Show this help\n"
               "     --version             Show the package version\n"
               "  -H --host=[USER@]HOST    Operate on a remote host (over ssh)\n"
               "  -M --machine=CONTAINER   Operate on a local container\n"
               "     --user                Talk to imgcached --user on the session bus\n"
               "     --json=pretty|short|off\n"
               "                           Print JSON instead of text\n"
               "     --no-pager            Do not pipe output into a pager\n"
               "     --no-legend           Do not show headers and footers\n"
               "  -q --quiet               Print only errors and requested listings\n"
               "     --no-ask-password     Do not ask for a password for privileged calls\n"
               "  -f --force               Do not ask before destructive commands\n"
               "     --sort=id|size|hits|accessed|modified\n"
               "                           Order of 'list' (default: accessed)\n"
               "     --checksum=ALGO:HEX   Expected checksum for 'queue' and 'fetch'\n"
               "     --stall-time=TIMESPAN Age of stalled downloads for 'clean'\n"
               "     --no-block            Do not wait for 'fetch' and 'prefetch' jobs\n"
               "\n"
               "See the imgcachectl(1) man page for details.\n",
               program_invocation_short_name);
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_USER,
                ARG_JSON,
                ARG_NO_PAGER,
                ARG_NO_LEGEND,
                ARG_NO_ASK_PASSWORD,
                ARG_SORT,
                ARG_CHECKSUM,
                ARG_STALL_TIME,
                ARG_NO_BLOCK,
        };

        static const struct option options[] = {
                { "help",            no_argument,       NULL, 'h'                 },
                { "version",         no_argument,       NULL, ARG_VERSION         },
                { "host",            required_argument, NULL, 'H'                 },
                { "machine",         required_argument, NULL, 'M'                 },
                { "user",            no_argument,       NULL, ARG_USER            },
                { "json",            required_argument, NULL, ARG_JSON            },
                { "no-pager",        no_argument,       NULL, ARG_NO_PAGER        },
                { "no-legend",       no_argument,       NULL, ARG_NO_LEGEND       },
                { "quiet",           no_argument,       NULL, 'q'                 },
                { "no-ask-password", no_argument,       NULL, ARG_NO_ASK_PASSWORD },
                { "force",           no_argument,       NULL, 'f'                 },
                { "sort",            required_argument, NULL, ARG_SORT            },
                { "checksum",        required_argument, NULL, ARG_CHECKSUM        },
                { "stall-time",      required_argument, NULL, ARG_STALL_TIME      },
                { "no-block",        no_argument,       NULL, ARG_NO_BLOCK        },
                {}
        };

        int c, r;

        /* GNU getopt permutes: options may follow the verb; "--" ends them (for ids starting with '-'). */
        while ((c = getopt_long(argc, argv, "hH:M:qf", options, NULL)) >= 0) {
                switch (c) {

                case 'h':
                        help();
                        return 0;

                case ARG_VERSION:
                        printf("imgcachectl %s\n", PROJECT_VERSION);
                        return 0;

                case 'H':
                        arg_transport = TRANSPORT_REMOTE;
                        arg_host = optarg;
                        break;

                case 'M':
                        arg_transport = TRANSPORT_MACHINE;
                        arg_host = optarg;
                        break;

                case ARG_USER:
                        arg_user = true;
                        break;

                case ARG_JSON:
                        r = string_table_lookup(json_mode_table, ELEMENTSOF(json_mode_table), optarg);
                        if (r < 0)
                                return log_error_errno(EINVAL, "Invalid --json= mode '%s': expected pretty, short or off.",
                                                       optarg);
                        arg_json = (JsonMode) r;
                        break;

                case ARG_NO_PAGER:
                        arg_pager = false;
                        break;

                case ARG_NO_LEGEND:
                        arg_legend = false;
                        break;

                case 'q':
                        arg_quiet = true;
                        break;

                case ARG_NO_ASK_PASSWORD:
                        arg_ask_password = false;
                        break;

                case 'f':
                        arg_force = true;
                        break;

                case ARG_SORT:
                        r = string_table_lookup(sort_key_table, ELEMENTSOF(sort_key_table), optarg);
                        if (r < 0)
                                return log_error_errno(EINVAL, "Invalid --sort= key '%s': expected id, size, hits, "
                                                       "accessed or modified.", optarg);
                        arg_sort = (SortKey) r;
                        break;

                case ARG_CHECKSUM: {
                        Checksum sum;

                        if (checksum_from_string(optarg, &sum) < 0)
                                return log_error_errno(EINVAL, "Invalid checksum '%s': expected sha512:HEX, sha256:HEX, "
                                                       "md5:HEX or bare hex digits.", optarg);
                        arg_checksum = optarg;
                        break;
                }

                case ARG_STALL_TIME:
                        r = parse_timespan(optarg, USEC_PER_SEC, &arg_stall_time);
                        if (r < 0 || arg_stall_time == 0 || arg_stall_time == USEC_INFINITY)
                                return log_error_errno(EINVAL, "Invalid --stall-time= '%s': expected a positive "
                                                       "time span such as 3600, 90min or 1d.", optarg);
                        break;

                case ARG_NO_BLOCK:
                        arg_no_block = true;
                        break;

                case '?':
                        return -EINVAL;

                default:
                        abort();
                }
        }

        if (arg_user && arg_transport == TRANSPORT_REMOTE)
                return log_error_errno(EINVAL, "--user cannot be combined with --host=: only the remote system "
                                       "bus is reachable over ssh.");

        return 1;
}

int main(int argc, char *argv[]) {
        Context c = {};
        int r;

        setlocale(LC_ALL, "");
        log_setup("imgcachectl");

        r = imgcache_bus_error_register();
        if (r < 0)
                log_debug_errno(r, "Failed to register the imgcache error map, ignoring: %m");

        r = parse_argv(argc, argv);
        if (r <= 0)
                goto finish;

        r = dispatch_verb(argc - optind, argv + optind, &c);

finish:
        pager_close();
        polkit_agent_close();
        sd_bus_flush_close_unref(c.bus);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
