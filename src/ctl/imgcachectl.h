/* SPDX-License-Identifier: MIT */
#pragma once

/* What every part of imgcachectl shares: the options of the command line (set once by parse_argv() in
 * imgcachectl.c, read by the verbs, as systemctl does) and the verbs' common signature. */

#include <errno.h>
#include <stdbool.h>

#include <systemd/sd-bus.h>

#include "log.h"
#include "util.h"

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

extern Transport arg_transport;
extern const char *arg_host;
extern bool arg_user;
extern JsonMode arg_json;
extern bool arg_pager;
extern bool arg_legend;
extern bool arg_quiet;
extern bool arg_ask_password;
extern bool arg_force;
extern bool arg_ignore_pins;
extern bool arg_no_block;
extern SortKey arg_sort;
extern const char *arg_checksum;
extern usec_t arg_stall_time;
extern const char *arg_why;

#define log_oom() log_error_errno(ENOMEM, "Out of memory.")

/* The connection, opened by the first verb that needs it (acquire_bus()) and closed by main(). */
typedef struct Context {
        sd_bus *bus;
        int exit_status;        /* of a successful verb: 0, or what 'pin' ran exited with */
} Context;

/* Every verb: argv[0] is the verb itself; returns 0 or a negative errno, already logged. */
typedef int (*VerbFunction)(int argc, char *argv[], Context *c);
