/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bus-error.h"
#include "ctl-bus.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "log.h"
#include "util.h"

static const char *bus_kind(void) {
        return arg_user ? "session" : "system";
}

/* Opens the bus of the transport. For -H and -M, the connection goes through a child (ssh, systemd-run)
 * that fails only after the open: waiting for the bus's Hello reply (sd_bus_get_unique_name()) makes that
 * failure a connection error here, not a puzzling "Transport endpoint is not connected" of the first call. */
static int open_bus(sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        const char *unique;
        int r;

        switch (arg_transport) {
        case TRANSPORT_REMOTE:
                r = sd_bus_open_system_remote(&bus, arg_host);
                break;
        case TRANSPORT_MACHINE:
                r = arg_user ? sd_bus_open_user_machine(&bus, arg_host) : sd_bus_open_system_machine(&bus, arg_host);
                break;
        default:
                r = arg_user ? sd_bus_open_user(&bus) : sd_bus_open_system(&bus);
        }
        if (r < 0)
                return r;

        r = sd_bus_get_unique_name(bus, &unique);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(bus);
        return 0;
}

/* What to check when a machine's bus cannot be reached. */
static const char *machine_hint(int r) {
        if (r == -EPERM || r == -EACCES)
                return "entering a machine needs root";
        if (r == -ENOENT)
                return "is D-Bus running in the machine?";
        return "is the machine running? see machinectl list";
}

static int log_connect_error(int r) {
        _cleanup_(freep) char *hint = NULL;

        switch (arg_transport) {
        case TRANSPORT_MACHINE:
                return log_error_errno(r, "Failed to connect to the %s bus of machine '%s': %m (%s)", bus_kind(),
                                       arg_host, machine_hint(r));
        case TRANSPORT_REMOTE:
                return log_error_errno(r, "Failed to connect to the %s bus of host '%s' over ssh: %m "
                                       "(does 'ssh %s' log in, and is D-Bus running there?)", bus_kind(), arg_host,
                                       arg_host);
        default:
                if (bus_connect_hint(arg_user, r, &hint) < 0 || !hint)
                        return log_error_errno(r, "Failed to connect to the %s bus: %m", bus_kind());
                return log_error_errno(r, "Failed to connect to the %s bus: %m (%s)", bus_kind(), hint);
        }
}

int acquire_bus(Context *c, sd_bus **ret) {
        int r;

        if (!c->bus) {
                r = open_bus(&c->bus);
                if (r < 0)
                        return log_connect_error(r);

                (void) sd_bus_set_allow_interactive_authorization(c->bus, arg_ask_password);
        }

        *ret = c->bus;
        return 0;
}

int acquire_bus_for_images(Context *c, int argc, char *argv[], sd_bus **ret) {
        int r;

        r = validate_ids(argc - 1, argv + 1);
        if (r < 0)
                return r;
        return acquire_bus(c, ret);
}

static bool use_polkit_agent(void) {
        return arg_ask_password && !arg_user && arg_transport == TRANSPORT_LOCAL && geteuid() != 0;
}

int call_method(
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

int log_call_error(int r, const sd_bus_error *error, const char *member, const char *format, ...) {
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

int log_parse_error(int r) {
        return log_error_errno(r, "Failed to parse the reply of imgcached: %m");
}

int map_properties(sd_bus_message *m, const PropertyMap *map, void *userdata) {
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
