/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "ctl-bus.h"
#include "ctl-cache.h"
#include "ctl-list.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "parse-util.h"
#include "util.h"

/* Re-hashing a large image takes a while; the default 25 s of sd-bus would cut it short. */
#define VERIFY_TIMEOUT_USEC (6 * 3600 * USEC_PER_SEC)

int verb_queue(int argc, char *argv[], Context *c) {
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

int verb_dequeue(int argc, char *argv[], Context *c) {
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

int verb_dequeue_all(int argc, char *argv[], Context *c) {
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

int verb_delete(int argc, char *argv[], Context *c) {
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

int verb_delete_all(int argc, char *argv[], Context *c) {
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

int verb_prune(int argc, char *argv[], Context *c) {
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

int verb_clean(int argc, char *argv[], Context *c) {
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

int verb_verify(int argc, char *argv[], Context *c) {
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
