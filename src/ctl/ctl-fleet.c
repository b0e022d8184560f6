/* SPDX-License-Identifier: MIT */

/* fleet lists the nodes of the fleet the daemon belongs to (FleetNodes, FleetSelf); fleet ID... asks it
 * which nodes hold each image (GetImageNodes: every node is asked, none fetches). */

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

static int image_nodes(sd_bus *bus, const char *id, char ***ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = call_manager(bus, "GetImageNodes", 0, &error, &reply, "s", id);
        if (r < 0)
                return log_call_error(r, &error, "GetImageNodes", "find the nodes holding %s", id);
        r = sd_bus_message_read_strv(reply, ret);
        return r < 0 ? log_parse_error(r) : 0;
}

/* "a b c", or "-" for none. */
static char *join_nodes(char **nodes) {
        size_t n = 2;
        for (char **p = nodes; p && *p; p++)
                n += strlen(*p) + 1;
        char *s = malloc(n), *e = s;
        if (!s)
                return NULL;
        *s = 0;
        for (char **p = nodes; p && *p; p++)
                e = stpcpy(stpcpy(e, p == nodes ? "" : " "), *p);
        return *s ? s : strcpy(s, "-");
}

static int add_holders_row(Table *t, json_t *json, const char *id, char **nodes) {
        if (json) {
                json_t *list = json_array();
                for (char **p = nodes; p && *p; p++)
                        if (json_array_append_new(list, json_string(*p)) < 0) {
                                json_decref(list);
                                return -ENOMEM;
                        }
                return json_array_append_new(json, json_pack("{s:s, s:o}", "id", id, "nodes", list));
        }
        _cleanup_(freep) char *joined = join_nodes(nodes);
        if (!joined || table_add_cell(t, id) < 0 || table_add_cell(t, joined) < 0)
                return -ENOMEM;
        return 0;
}

static int list_holders(sd_bus *bus, int n_ids, char *ids[]) {
        _cleanup_(table_freep) Table *t = NULL;
        json_t *json = NULL;
        int r;

        if (table_new(&t, "IMAGE", "NODES", NULL) < 0 || json_array_if_asked(&json) < 0)
                return log_oom();
        for (int i = 0; i < n_ids; i++) {
                _cleanup_(strv_freep) char **nodes = NULL;
                r = image_nodes(bus, ids[i], &nodes);
                if (r < 0) {
                        json_decref(json);
                        return r;
                }
                if (add_holders_row(t, json, ids[i], nodes) < 0) {
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
