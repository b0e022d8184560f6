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

/* How the daemon authenticates to a Glance upstream ([Upstream] Auth=). */
typedef enum UpstreamAuth {
        UPSTREAM_AUTH_TOKEN,    /* a static token from TokenFile= (or none) */
        UPSTREAM_AUTH_KEYSTONE, /* tokens from Keystone (AuthURL=, CredentialsFile=), refreshed */
        _UPSTREAM_AUTH_MAX,
        _UPSTREAM_AUTH_INVALID = -EINVAL,
} UpstreamAuth;

/* Who may read cached images over HTTP ([HTTP] ReadAccess=). AUTO: UPSTREAM with Kind=glance, else OPEN. */
typedef enum ReadAccess {
        READ_ACCESS_AUTO,
        READ_ACCESS_UPSTREAM,   /* the caller's token, checked with the upstream per image */
        READ_ACCESS_TOKEN,      /* static read tokens from ReadTokenFile= */
        READ_ACCESS_OPEN,       /* anyone who reaches the listener */
        _READ_ACCESS_MAX,
        _READ_ACCESS_INVALID = -EINVAL,
} ReadAccess;

const char *driver_kind_to_string(DriverKind k);
DriverKind driver_kind_from_string(const char *s);
const char *upstream_kind_to_string(UpstreamKind k);
UpstreamKind upstream_kind_from_string(const char *s);
UpstreamAuth upstream_auth_from_string(const char *s);
ReadAccess read_access_from_string(const char *s);

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
        usec_t free_space_check;  /* default 10s; USEC_INFINITY (also for 0): never */
        bool prefetch_on_queue;   /* default yes */

        /* [Upstream] */
        UpstreamKind upstream_kind;
        char *upstream_url;            /* with Auth=keystone may be unset: the token's catalog names it */
        UpstreamAuth upstream_auth;    /* default token */
        char *token_file;
        char *auth_url;                /* Auth=keystone: the identity endpoint */
        char *credentials_file;        /* Auth=keystone: application credential or user, mode 0600 */
        char *endpoint_interface;      /* default "public": which catalog endpoint, when URL= is unset */
        char *endpoint_region;         /* NULL: any region */
        char *ca_file;
        unsigned max_parallel_fetches; /* default 4 */
        usec_t connect_timeout;        /* default 30s */
        usec_t low_speed_timeout;      /* default 60s */
        usec_t not_found_cache;        /* default 30s: an upstream 404 is believed this long; 0: not at all */
        usec_t retry_initial;          /* default 30s: first delay before a failed queued image is fetched again;
                                        * infinity: never retried */
        usec_t retry_max;              /* default 1h: the longest delay between two retries */

        /* [HTTP] */
        char *listen;                  /* default "127.0.0.1:9393" */
        bool management_api;           /* default no */
        char *management_token_file;
        unsigned max_connections;      /* default 1024 */
        unsigned max_connections_per_ip; /* default 32; 0: no limit */
        usec_t header_timeout;         /* default 10s: a request's headers must be complete this soon */
        unsigned max_fills_per_ip;     /* default 4: fills one client address may have started and running */
        unsigned upstream_requests_per_ip; /* default 20: upstream requests a second one client address may
                                        * cause (probes, misses, read checks), sustained; 0: no limit */
        unsigned upstream_burst_per_ip; /* default 200: the same, at once after a quiet while */
        char *trusted_proxies;         /* addresses and networks whose X-Forwarded-For names the client */
        ReadAccess read_access;        /* default auto */
        char *read_token_file;         /* ReadAccess=token */
        bool acknowledge_open_read_access; /* default no: ReadAccess=open on a non-loopback listener */
        usec_t read_access_allow_cache; /* default 60s: how long an upstream's yes is believed */
        usec_t read_access_deny_cache;  /* default 10s: how long its no is */
        bool pass_through;             /* default yes: with Kind=glance, the rest of Glance's API is passed through */
        char *public_url;              /* the base URL clients reach us at, for the version document's links;
                                        * NULL: from each request's Host */
        usec_t idle_timeout;           /* default 60s: a connection with no byte either way this long is closed */
        bool access_log;               /* default yes: one entry per finished request */
        usec_t access_log_interval;    /* default 1s: at most access_log_burst entries in each such interval */
        unsigned access_log_burst;     /* default 1000 */

        /* [Fleet] */
        char *fleet_peers;             /* space-separated peer URLs (a host name may stand for several); NULL: no fleet */
        char *fleet_self;              /* this node's URL as the peers list it */
        char *peer_token_file;         /* the shared secret peers present to each other */
        unsigned fleet_replicas;       /* default 2: HRW candidates asked before the origin */
        unsigned fleet_fanout;         /* default 2: concurrent peer streams of one image; more are pointed on */
        usec_t peer_timeout;           /* default 5s: a peer's first byte must come this soon */
        usec_t peer_resolve_interval;  /* default 60s: host names in Peers= are resolved again this often */

        /* [Daemon] */
        usec_t exit_on_idle;           /* default 60s; USEC_INFINITY = never */
} Config;

/* ReadAccess=auto resolved against Kind=. */
static inline ReadAccess config_read_access(const Config *c) {
        if (c->read_access != READ_ACCESS_AUTO)
                return c->read_access;
        return c->upstream_kind == UPSTREAM_GLANCE ? READ_ACCESS_UPSTREAM : READ_ACCESS_OPEN;
}

/* Fills c with the defaults above. */
int config_init(Config *c);
void config_done(Config *c);

/* Loads path (a missing main file is fine: defaults apply) and then path + ".d/ *.conf". Errors are
 * returned as negative errno; a human-readable message naming file:line, section and key goes to
 * *ret_error (malloc'ed) when ret_error is non-NULL. Warnings for unknown keys go to stderr through
 * the log function passed (NULL: fprintf(stderr)). */
typedef void (*ConfigWarnFunc)(const char *message, void *userdata);
int config_load(Config *c, const char *path, ConfigWarnFunc warn, void *userdata, char **ret_error);
