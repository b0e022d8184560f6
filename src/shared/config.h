/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "util.h"

/* imgcached.conf: the main file, then imgcached.conf.d/ *.conf drop-ins in lexical order, later files
 * overriding earlier ones key by key. Unknown sections and keys warn; a bad value fails, naming
 * file:line, section and key. */

typedef enum DriverKind {
        DRIVER_SQLITE,
        DRIVER_XATTR,
        _DRIVER_KIND_MAX,
        _DRIVER_KIND_INVALID = -EINVAL,
} DriverKind;

typedef enum UpstreamKind {
        UPSTREAM_GENERIC,
        UPSTREAM_GLANCE,
        _UPSTREAM_KIND_MAX,
        _UPSTREAM_KIND_INVALID = -EINVAL,
} UpstreamKind;

const char *driver_kind_to_string(DriverKind k);
DriverKind driver_kind_from_string(const char *s);
const char *upstream_kind_to_string(UpstreamKind k);
UpstreamKind upstream_kind_from_string(const char *s);

/* A size given either in bytes or as a share of the cache filesystem. */
typedef struct SizeLimit {
        uint64_t bytes;    /* UINT64_MAX when a percentage was given */
        uint64_t permille; /* UINT64_MAX when bytes were given */
} SizeLimit;

/* Resolves a limit against the size of the filesystem holding the cache. */
uint64_t size_limit_resolve(const SizeLimit *l, uint64_t fs_size);

typedef struct Config {
        /* [Cache] */
        char *directory;          /* NULL: the mode's default */
        DriverKind driver;
        SizeLimit max_size;       /* default 10G */
        bool enforce_max_size;    /* default yes */
        SizeLimit keep_free;      /* default 10% */
        usec_t stall_time;        /* default 24h */
        bool prefetch_on_queue;   /* default yes */

        /* [Upstream] */
        UpstreamKind upstream_kind;
        char *upstream_url;
        char *token_file;
        char *ca_file;
        unsigned max_parallel_fetches; /* default 4 */
        usec_t connect_timeout;        /* default 30s */
        usec_t low_speed_timeout;      /* default 60s */

        /* [HTTP] */
        char *listen;                  /* default "127.0.0.1:9393" */
        bool management_api;           /* default no */
        char *management_token_file;
        unsigned max_connections;      /* default 1024 */

        /* [Daemon] */
        usec_t exit_on_idle;           /* default 60s; USEC_INFINITY = never */
} Config;

/* Fills c with the defaults above. */
int config_init(Config *c);
void config_done(Config *c);

/* Loads path (a missing main file is fine: defaults apply) and then path + ".d/ *.conf". Errors are
 * returned as negative errno; a human-readable message naming file:line, section and key goes to
 * *ret_error (malloc'ed) when ret_error is non-NULL. Warnings for unknown keys go to stderr through
 * the log function passed (NULL: fprintf(stderr)). */
typedef void (*ConfigWarnFunc)(const char *message, void *userdata);
int config_load(Config *c, const char *path, ConfigWarnFunc warn, void *userdata, char **ret_error);
