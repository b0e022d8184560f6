/* SPDX-License-Identifier: MIT */
#pragma once

/* imgcachectl's side of the bus: connecting over the transport the options chose, calling the Manager and
 * job objects (with interactive authorization and the polkit agent), turning a failed call into one error
 * line, and reading a{sv} property sets into structs. */

#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

#include "imgcachectl.h"

#define BUS_NAME        "org.imgcache.Manager"
#define BUS_PATH        "/org/imgcache/Manager"
#define BUS_IFACE       "org.imgcache.Manager"
#define BUS_JOB_IFACE   "org.imgcache.Job"
#define BUS_JOB_PREFIX  "/org/imgcache/job"

/* The connection of c, opened on first use; logs why it could not be. */
int acquire_bus(Context *c, sd_bus **ret);

/* For the verbs taking image ids (argv[1] on): checks them all first, so that nothing is sent when one is
 * invalid, then acquire_bus(). */
int acquire_bus_for_images(Context *c, int argc, char *argv[], sd_bus **ret);

/* One method call on the manager or a job object, with the interactive-authorization flag set unless
 * --no-ask-password. timeout 0 = sd-bus's default. */
int call_method(sd_bus *bus, const char *path, const char *interface, const char *member, uint64_t timeout,
                sd_bus_error *error, sd_bus_message **ret_reply, const char *types, ...);

#define call_manager(bus, member, timeout, error, reply, types, ...) \
        call_method((bus), BUS_PATH, BUS_IFACE, (member), (timeout), (error), (reply), (types), ##__VA_ARGS__)

/* Logs "Failed to <what>: <the daemon's message>[. <how to get access>]" and returns r (negative). */
int log_call_error(int r, const sd_bus_error *error, const char *member, const char *format, ...)
        _printf_(4, 5);

/* Logs that a reply did not have the expected shape; returns r. */
int log_parse_error(int r);

/* Reads an a{sv} (positioned at it) into fields described by a map; unknown properties are skipped. */
typedef struct PropertyMap {
        const char *name;
        char type;              /* 's', 't', 'u', 'd' */
        size_t offset;
} PropertyMap;

int map_properties(sd_bus_message *m, const PropertyMap *map, void *userdata);
