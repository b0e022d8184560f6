/* SPDX-License-Identifier: MIT */

/* fleet lists the nodes of the fleet the daemon belongs to (FleetNodes, FleetSelf); fleet ID... asks it
 * which nodes hold each image and where each one's copy came from (GetImageSources: every node is asked,
 * none fetches). */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ctl-bus.h"
#include "ctl-fleet.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "util.h"

static void strv_freep(char ***v) {
        if (*v)
                for (char **p = *v; *p; p++)
                        free(*p);
        free(*v);
}

static int list_nodes(sd_bus *bus) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(strv_freep) char **nodes = NULL;
        _cleanup_(freep) char *self = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        json_t *json = NULL;
        size_t n = 0;
        int r;

        r = sd_bus_get_property_strv(bus, BUS_NAME, BUS_PATH, BUS_IFACE, "FleetNodes", &error, &nodes);
        if (r >= 0)
                r = sd_bus_get_property_string(bus, BUS_NAME, BUS_PATH, BUS_IFACE, "FleetSelf", &error, &self);
        if (r < 0)
                return log_call_error(r, &error, "Get", "get the fleet of imgcached");

        if (table_new(&t, "NODE", "SELF", NULL) < 0 || json_array_if_asked(&json) < 0)
                return log_oom();
        for (char **p = nodes; p && *p; p++, n++) {
                bool is_self = streq(*p, self);
                if (json) {
                        if (json_array_append_new(json, json_pack("{s:s, s:b}", "node", *p, "self", is_self)) < 0)
                                return log_oom();
                } else if (table_add_cell(t, *p) < 0 || table_add_cell(t, is_self ? "yes" : "") < 0)
                        return log_oom();
        }
        return print_listing(t, json, n, "No [Fleet] is configured.", "node", "nodes");
}

/* The holders of id and, for each, the nodes its copy came through (GetImageSources). */
typedef struct Holder {
        char *node, *from;
} Holder;

static void holders_freep(Holder **v) {
        for (Holder *h = *v; h && h->node; h++) {
                free(h->node);
                free(h->from);
        }
        free(*v);
}

static int image_sources(sd_bus *bus, const char *id, Holder **ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(holders_freep) Holder *v = NULL;
        const char *node, *from;
        size_t n = 0;
        int r;

        r = call_manager(bus, "GetImageSources", 0, &error, &reply, "s", id);
        if (r < 0)
                return log_call_error(r, &error, "GetImageSources", "find the nodes holding %s", id);
        v = calloc(1, sizeof(Holder));
        r = v ? sd_bus_message_enter_container(reply, 'a', "(ss)") : -ENOMEM;
        while (r >= 0 && (r = sd_bus_message_read(reply, "(ss)", &node, &from)) > 0) {
                Holder *bigger = realloc(v, (n + 2) * sizeof(Holder));
                if (!bigger)
                        return log_oom();
                v = bigger;
                v[n] = (Holder) { strdup(node), strdup(from) };
                v[++n] = (Holder) {};
                if (!v[n - 1].node || !v[n - 1].from)
                        return log_oom();
        }
        if (r < 0)
                return r == -ENOMEM ? log_oom() : log_parse_error(r);
        *ret = TAKE_PTR(v);
        return 0;
}

/* Where a holder's copy came from, for people: its parent and the parent's, or the origin. */
static const char *shown_from(const char *from) {
        return !*from ? "origin" : streq(from, "?") ? "-" : from;
}

static int add_holders_rows(Table *t, json_t *json, const char *id, const Holder *holders) {
        if (json) {
                json_t *list = json_array(), *from = json_object();
                for (const Holder *h = holders; h->node; h++)
                        if (json_array_append_new(list, json_string(h->node)) < 0 ||
                            json_object_set_new(from, h->node, json_string(shown_from(h->from))) < 0) {
                                json_decref(list);
                                json_decref(from);
                                return -ENOMEM;
                        }
                return json_array_append_new(json, json_pack("{s:s, s:o, s:o}", "id", id, "nodes", list, "from", from));
        }
        if (!holders->node)
                return table_add_cell(t, id) < 0 || table_add_cell(t, "-") < 0 || table_add_cell(t, "") < 0 ? -ENOMEM : 0;
        for (const Holder *h = holders; h->node; h++)
                if (table_add_cell(t, id) < 0 || table_add_cell(t, h->node) < 0 ||
                    table_add_cell(t, shown_from(h->from)) < 0)
                        return -ENOMEM;
        return 0;
}

static int list_holders(sd_bus *bus, int n_ids, char *ids[]) {
        _cleanup_(table_freep) Table *t = NULL;
        json_t *json = NULL;
        int r;

        if (table_new(&t, "IMAGE", "NODE", "FILLED FROM", NULL) < 0 || json_array_if_asked(&json) < 0)
                return log_oom();
        for (int i = 0; i < n_ids; i++) {
                _cleanup_(holders_freep) Holder *holders = NULL;
                r = image_sources(bus, ids[i], &holders);
                if (r < 0) {
                        json_decref(json);
                        return r;
                }
                if (add_holders_rows(t, json, ids[i], holders) < 0) {
                        json_decref(json);
                        return log_oom();
                }
        }
        return print_listing(t, json, (size_t) n_ids, NULL, "image", "images");
}

int verb_fleet(int argc, char *argv[], Context *c) {
        sd_bus *bus;
        int r;

        if (argc > 1) {
                r = validate_ids(argc - 1, argv + 1);
                if (r < 0)
                        return r;
        }
        r = acquire_bus(c, &bus);
        if (r < 0)
                return r;
        return argc > 1 ? list_holders(bus, argc - 1, argv + 1) : list_nodes(bus);
}
