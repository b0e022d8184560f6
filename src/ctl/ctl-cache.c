/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "bus-error.h"
#include "ctl-bus.h"
#include "ctl-cache.h"
#include "ctl-list.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "parse-util.h"
#include "util.h"

/* Re-hashing a large image takes a while; the default 25 s of sd-bus would cut it short. */
#define VERIFY_TIMEOUT_USEC (6 * 3600 * USEC_PER_SEC)

/* One call about one image: "s" (id), or "ss" (id, expected checksum) when checksum is not NULL. Logs a
 * failure as "Failed to <action> image <id>: …". */
static int call_image(sd_bus *bus, const char *method, uint64_t timeout, const char *action, const char *id,
                      const char *checksum, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        if (checksum)
                r = call_manager(bus, method, timeout, &error, ret_reply, "ss", id, checksum);
        else
                r = call_manager(bus, method, timeout, &error, ret_reply, "s", id);
        if (r < 0)
                return log_call_error(r, &error, method, "%s image %s", action, id);
        return 0;
}

/* QueueImage and Verify answer yes or no: returns the answer (0 or 1), or a negative errno, logged. */
static int call_image_yes_no(sd_bus *bus, const char *method, uint64_t timeout, const char *action,
                             const char *id, const char *checksum) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int answer, r;

        r = call_image(bus, method, timeout, action, id, checksum, &reply);
        if (r < 0)
                return r;

        r = sd_bus_message_read(reply, "b", &answer);
        if (r < 0)
                return log_parse_error(r);
        return !!answer;
}

/* The verbs that go image by image print their JSON array at the end, whatever failed on the way; a
 * failure to print counts only when nothing else failed. */
static int print_json_results(json_t *results, int ret) {
        int r;

        if (!results)
                return ret;

        r = json_print_and_free(results);
        return r < 0 && ret == 0 ? r : ret;
}

/* Connects, then asks (see confirm()): a daemon that is not there is reported before anyone is asked. */
static int acquire_bus_confirmed(Context *c, const char *question, sd_bus **ret) {
        int r;

        r = acquire_bus(c, ret);
        if (r < 0)
                return r;
        return confirm("%s", question);
}

/* QueueImage says only that id was there already: GetImage tells which way. An image fetched in between
 * reads as cached, which it is by then. */
static const char *already_where(sd_bus *bus, const char *id) {
        uint64_t size;
        int r;

        r = get_cached_size(bus, id, &size);
        if (r < 0)
                return NULL;
        return r > 0 ? "cached" : "queued";
}

static void print_queued(sd_bus *bus, const char *id, int queued, json_t *results) {
        const char *where = queued ? NULL : already_where(bus, id);

        if (results)
                (void) json_array_append_new(results, json_pack("{s:s, s:b, s:s*}", "id", id, "queued", queued,
                                                                "already", where));
        else if (arg_quiet)
                ;
        else if (queued)
                printf("Queued image %s.\n", id);
        else if (where)
                printf("Image %s is already %s.\n", id, where);
        else
                printf("Image %s is already queued or cached.\n", id);
}

int verb_queue(int argc, char *argv[], Context *c) {
        json_t *results;
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

        r = json_array_if_asked(&results);
        if (r < 0)
                return r;

        /* One failure does not stop the rest; the exit code tells there was one. */
        for (int i = 1; i < argc; i++) {
                r = call_image_yes_no(bus, "QueueImage", 0, "queue", argv[i], strempty(arg_checksum));
                if (r < 0)
                        ret = r;
                else
                        print_queued(bus, argv[i], r, results);
        }

        return print_json_results(results, ret);
}

/* The verbs that remove images one call each (DequeueImage, DeleteImage): one shape, different words. */
typedef struct PerImageVerb {
        const char *method;     /* takes "s", returns nothing */
        const char *ignoring_pins_method; /* with --ignore-pins: takes "st" (id, IGNORE_PINS); NULL: none */
        const char *action;     /* "Failed to <action> image <id>" */
        const char *done;       /* "<done> image <id><where>." */
        const char *where;
        bool confirm;           /* ask "Delete cached image X?" / "Delete N cached images?" first */
} PerImageVerb;

static const PerImageVerb dequeue_images = {
        .method = "DequeueImage", .action = "dequeue", .done = "Removed", .where = " from the queue",
};

static const PerImageVerb delete_images = {
        .method = "DeleteImage", .ignoring_pins_method = "DeleteImageWithFlags", .action = "delete",
        .done = "Deleted", .where = "", .confirm = true,
};

/* v's method on one image. The flags variant only with --ignore-pins: without it, an imgcached older than
 * DeleteImageWithFlags still works. */
static int call_per_image(sd_bus *bus, const PerImageVerb *v, const char *id) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *method = v->ignoring_pins_method;
        int r;

        if (!arg_ignore_pins || !method)
                return call_image(bus, v->method, 0, v->action, id, /* checksum= */ NULL, NULL);

        r = call_manager(bus, method, 0, &error, NULL, "st", id, IMGCACHE_DELETE_IMAGE_IGNORE_PINS);
        if (r < 0)
                return log_call_error(r, &error, method, "%s image %s", v->action, id);
        return 0;
}

static int confirm_per_image(int argc, char *argv[]) {
        if (argc == 2)
                return confirm("Delete cached image %s?", argv[1]);
        return confirm("Delete %i cached images?", argc - 1);
}

static int run_per_image_verb(Context *c, int argc, char *argv[], const PerImageVerb *v) {
        sd_bus *bus;
        int r, ret = 0;

        r = acquire_bus_for_images(c, argc, argv, &bus);
        if (r < 0)
                return r;

        if (v->confirm) {
                r = confirm_per_image(argc, argv);
                if (r < 0)
                        return r;
        }

        /* One failure does not stop the rest; the exit code tells there was one. */
        for (int i = 1; i < argc; i++) {
                r = call_per_image(bus, v, argv[i]);
                if (r < 0) {
                        ret = r;
                        continue;
                }
                if (!arg_quiet && arg_json == JSON_MODE_OFF)
                        printf("%s image %s%s.\n", v->done, argv[i], v->where);
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

static const EmptyingVerb empty_queue = {
        .question = "Remove all images from the prefetch queue?",
        .method = "DequeueAll", .action = "empty the queue", .json_key = "dequeued",
        .verb = "Removed", .where = " from the queue",
};

static const EmptyingVerb empty_cache = {
        .question = "Delete all cached images?",
        .method = "DeleteAllImages", .action = "delete all images", .json_key = "deleted",
        .verb = "Deleted", .where = "",
};

static int run_emptying_verb(Context *c, const EmptyingVerb *v) {
        uint32_t n;
        sd_bus *bus;
        int r;

        r = acquire_bus_confirmed(c, v->question, &bus);
        if (r < 0)
                return r;

        r = call_count(bus, v->method, v->action, v->json_key, &n);
        if (r > 0)
                printf("%s %" PRIu32 " %s%s.\n", v->verb, n, plural(n, "image", "images"), v->where);
        return r < 0 ? r : 0;
}

int verb_dequeue(int argc, char *argv[], Context *c) {
        return run_per_image_verb(c, argc, argv, &dequeue_images);
}

int verb_dequeue_all(int argc, char *argv[], Context *c) {
        return run_emptying_verb(c, &empty_queue);
}

int verb_delete(int argc, char *argv[], Context *c) {
        return run_per_image_verb(c, argc, argv, &delete_images);
}

int verb_delete_all(int argc, char *argv[], Context *c) {
        return run_emptying_verb(c, &empty_cache);
}

/* Prune takes every unpinned image it needs to: what is still above MaxSize afterwards is pinned. */
static void print_pinned_excess(sd_bus *bus) {
        char size[FORMAT_SIZE_MAX];
        uint64_t current, max;

        if (sd_bus_get_property_trivial(bus, BUS_NAME, BUS_PATH, BUS_IFACE, "CurrentSize", NULL, 't', &current) < 0 ||
            sd_bus_get_property_trivial(bus, BUS_NAME, BUS_PATH, BUS_IFACE, "MaxSize", NULL, 't', &max) < 0)
                return;
        if (current > max)
                printf("Pinned images keep the cache %s above its maximum size.\n",
                       format_size(size, sizeof size, current - max));
}

int verb_prune(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        char size[FORMAT_SIZE_MAX];
        uint64_t bytes;
        uint32_t files;
        sd_bus *bus;
        int r;

        r = acquire_bus_confirmed(c, "Remove the least recently used images until the cache fits its maximum size?", &bus);
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
                printf("Nothing to prune: the cache fits its maximum size and keeps its free space.\n");
        else
                printf("Pruned %" PRIu32 " %s, freeing %s.\n", files, plural(files, "image", "images"),
                       format_size(size, sizeof size, bytes));
        print_pinned_excess(bus);
        return 0;
}

int verb_clean(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t stalled, invalid;
        sd_bus *bus;
        int r;

        r = acquire_bus_confirmed(c, "Remove invalid images and incomplete downloads stalled for longer than the stall time?", &bus);
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

/* Verify re-hashes one image; a bad one is moved to invalid/ by imgcached and counted in *n_bad. */
static int verify_one(sd_bus *bus, const char *id, json_t *results, unsigned *n_bad) {
        int good;

        good = call_image_yes_no(bus, "Verify", VERIFY_TIMEOUT_USEC, "verify", id, /* checksum= */ NULL);
        if (good < 0)
                return good;

        if (!good)
                (*n_bad)++;

        if (results)
                (void) json_array_append_new(results, json_pack("{s:s, s:b}", "id", id, "good", good));
        else if (!good)
                log_error("Image %s failed verification and was moved to invalid/.", id);
        else if (!arg_quiet)
                printf("Image %s: OK\n", id);
        return 0;
}

int verb_verify(int argc, char *argv[], Context *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *list_reply = NULL;
        _cleanup_(freep) ImageInfo *images = NULL;
        size_t n_images = 0;
        unsigned n_bad = 0;
        json_t *results;
        sd_bus *bus;
        int r, ret = 0;

        r = acquire_bus_for_images(c, argc, argv, &bus);
        if (r < 0)
                return r;

        /* No ids: every cached image. */
        if (argc <= 1) {
                r = list_images(bus, &images, &n_images, &list_reply);
                if (r < 0)
                        return r;
                if (n_images == 0) {
                        if (arg_json != JSON_MODE_OFF)
                                return json_print_and_free(json_array());
                        if (!arg_quiet)
                                printf("No images cached, nothing to verify.\n");
                        return 0;
                }
        }

        r = json_array_if_asked(&results);
        if (r < 0)
                return r;

        for (int i = 1; i < argc; i++) {
                r = verify_one(bus, argv[i], results, &n_bad);
                if (r < 0)
                        ret = r;
        }
        for (size_t i = 0; i < n_images; i++) {
                r = verify_one(bus, images[i].id, results, &n_bad);
                if (r < 0)
                        ret = r;
        }

        ret = print_json_results(results, ret);
        if (ret == 0 && n_bad > 0)
                ret = -EBADMSG;
        return ret;
}
