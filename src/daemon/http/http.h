/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "metrics.h"
#include "store.h"

/* The HTTP side of imgcached: libmicrohttpd in external-epoll mode on the daemon's sd-event loop, serving
 * cached images with sendfile, streaming misses from the fill that is writing them (fetch.h), and the
 * Glance-compatible management API (http-manage.h). Everything runs on the loop's thread.
 *
 * MHD's epoll fd is one IO source; one timer, re-armed after every MHD_run() from MHD_get_timeout() as a
 * *relative* deadline, covers MHD's own timeouts and connections MHD still has work for. */

typedef struct Fetcher Fetcher;
typedef struct HttpServer HttpServer;

/* Idle timeout of a connection (no bytes moving; a connection suspended while it waits for a fill does
 * not time out). */
#define HTTP_CONNECTION_TIMEOUT_SEC 60U
/* Memory MHD may use per connection; bounds the request head (oversized heads get 431). */
#define HTTP_CONNECTION_MEMORY_LIMIT (16U * 1024U)
/* A Range of a miss that starts at least HTTP_RANGE_AHEAD_MIN bytes past what the fill has written and
 * is at most HTTP_RANGE_AHEAD_MAX long is asked of the origin directly, at most HTTP_RANGE_AHEAD_PARALLEL
 * at a time (http-stream.c); others wait for the fill. */
#define HTTP_RANGE_AHEAD_MIN (8U * 1024U * 1024U)
#define HTTP_RANGE_AHEAD_MAX (16U * 1024U * 1024U)
#define HTTP_RANGE_AHEAD_PARALLEL 16U
/* Hits of at most this many bytes are copied into the response instead of sent with sendfile(). */
#define HTTP_COPY_BODY_MAX (16U * 1024U)
/* Largest block a streamed miss hands MHD at a time (allocated with each miss response): larger blocks
 * mean fewer wake-ups per byte; 256 KiB took a miss from ~190 to ~310 MiB/s here. */
#define HTTP_STREAM_BLOCK_SIZE (256U * 1024U)
/* Ids remembered as missing upstream (NotFoundCacheSec=), at most. */
#define HTTP_NOT_FOUND_CACHE_MAX 4096U

/* What the server counts itself. Hits, misses and bytes served are not among them: the daemon owns those
 * (HttpOperations), for HTTP and D-Bus readers alike. */
typedef struct HttpCounters {
        uint64_t requests;      /* requests answered */
        unsigned connections;   /* open right now */
        uint64_t bytes_to_peers; /* image body bytes sent to nodes of the fleet */
        uint64_t responses[6];  /* by status class: [2] is 2xx; [0] unused */
        uint64_t served_bytes[_SERVE_SOURCE_MAX]; /* image body bytes sent, by where they came from */
        uint64_t ranges_ahead;  /* ranges far ahead of a fill answered by asking the origin directly */
        uint64_t refused[_HTTP_REFUSED_MAX]; /* clients turned away, by why */
        uint64_t pass_requests;  /* requests passed through to the upstream */
        uint64_t pass_bytes_up, pass_bytes_down; /* their bodies: to the upstream, to the clients */
        uint64_t evictions_upstream; /* cached images dropped because the upstream deleted or deactivated them */
} HttpCounters;

/* What /metrics reports that the HTTP server does not count itself. */
typedef struct HttpMetrics {
        uint64_t hits;               /* images answered from the cache (HTTP GETs and the daemon's other readers) */
        uint64_t misses;             /* image requests that were not */
        uint64_t bytes_served;       /* body bytes of image responses handed to HTTP clients */
        uint64_t bytes_fetched;      /* bytes written by fills */
        uint64_t evictions;          /* images pruned or evicted */
        unsigned transfers_active;   /* fills not finished yet */
        uint64_t transfers_started;  /* fills started */
        uint64_t transfers_failed;   /* fills that failed */
        uint64_t free_bytes;         /* available on the cache's filesystem; UINT64_MAX: unknown */
        uint64_t keep_free_bytes;    /* KeepFree= resolved; UINT64_MAX: unknown */
        uint64_t max_size_bytes;     /* MaxSize= resolved; UINT64_MAX: unknown */
        unsigned queued;             /* images in queue/ */
        unsigned pins;               /* pins held (PinImage) */
        const Histogram *fill_durations; /* of fills that ended, in seconds */
        const uint64_t *upstream_errors; /* [_UPSTREAM_ERROR_MAX]: fills failed, by the upstream's fault */
        bool fleet;                  /* a [Fleet] is configured: the fleet's series are shown */
        uint64_t fleet_bytes_from_peers, fleet_bytes_from_origin, fleet_origin_fetches_saved, fleet_peer_failovers;
        uint64_t fleet_redirects_given, fleet_redirects_followed, fleet_fanout_refused;
        uint64_t fleet_peer_streams_peak, fleet_tree_depth; /* gauges: the most peer streams of one image at
                                                             * once; the longest path of peers a fill took */
} HttpMetrics;

/* The operations of the daemon the server goes through, so that a request over HTTP has the effects the
 * same request has over D-Bus: the same signals, jobs, counters and log lines (the daemon's table is
 * manager_http_operations, manager-ops.c). Required, every member: the server never acts on the store
 * behind the daemon's back (it only reads the store: hits, listings). The management calls come after the
 * token check; return values are the Manager's (manager.h). */
typedef struct HttpOperations {
        void (*count_hit)(void *userdata, const char *id);          /* a GET answered from the cache */
        void (*count_miss)(void *userdata, const char *id);         /* a GET that goes to the upstream */
        void (*count_bytes_served)(void *userdata, uint64_t n);     /* image body bytes handed to a client */
        int (*queue_image)(void *userdata, const char *id);         /* 1 queued, 0 already queued or cached */
        int (*dequeue_image)(void *userdata, const char *id);       /* 1 dequeued, 0 was not queued */
        int (*dequeue_all)(void *userdata, unsigned *ret_n);
        int (*delete_image)(void *userdata, const char *id);        /* -ENOENT: not cached, -EBUSY: pinned */
        int (*delete_all_images)(void *userdata, unsigned *ret_n);  /* pinned images are kept */
        /* MaxSize= unresolvable: -errno with *ret_limit_failed set, nothing pruned. */
        int (*prune)(void *userdata, SpaceResult *ret, bool *ret_limit_failed);
        int (*clean)(void *userdata, unsigned *ret_stalled, unsigned *ret_invalid);  /* with StallTime= */
        void (*metrics)(void *userdata, HttpMetrics *ret);
} HttpOperations;

typedef struct HttpServerOptions {
        int listen_fd;                     /* >= 0: serve this listening socket (taken over) */
        const char *listen;                /* else bind this HOST:PORT (port 0: any); NULL: config->listen */
        unsigned connection_timeout_sec;   /* 0: HTTP_CONNECTION_TIMEOUT_SEC */
} HttpServerOptions;

/* The socket systemd passed, checked: 1 and *ret_fd set (non-blocking now) when there is exactly one
 * listening stream socket, 0 when none was passed, -EINVAL (logged by the caller) for anything else. */
int http_listen_fd_from_systemd(int *ret_fd);
/* A listening TCP socket on HOST:PORT or [IPV6]:PORT (non-blocking, close-on-exec). */
int http_open_listen_socket(const char *address, int *ret_fd);

/* fetcher may be NULL: misses are then 404. The config is copied where needed (token read now). ops
 * (borrowed, every member set) is called with userdata. */
int http_server_new(sd_event *event, ImageCache *cache, Fetcher *fetcher, const Config *config,
                    const HttpServerOptions *options, const HttpOperations *ops, void *userdata,
                    HttpServer **ret);
/* Stops serving: resumes and aborts suspended streams, quiesces MHD so the listening socket is left
 * untouched (an inherited socket must keep working for the next activation), stops MHD. */
HttpServer *http_server_free(HttpServer *s);
static inline void http_server_freep(HttpServer **s) {
        http_server_free(*s);
}

/* Applies a reloaded configuration: ManagementAPI= and the token file. MaxConnections= and the listen
 * address take effect at the next start. */
int http_server_reconfigure(HttpServer *s, const Config *config);

const HttpCounters *http_server_counters(const HttpServer *s);
/* The image left the cache (deleted, pruned, invalid): its file is closed now, so its blocks are freed.
 * s may be NULL. */
void http_server_forget_image(HttpServer *s, const char *id);
/* Serves the fleet's peers (their requests, GET /v2/cache/nodes/<id>); fleet is borrowed, NULL: none. */
typedef struct Fleet Fleet;
void http_server_set_fleet(HttpServer *s, Fleet *fleet);
unsigned http_server_n_connections(const HttpServer *s);
/* The local port of the listening socket (for Listen=…:0 in tests). */
uint16_t http_server_port(const HttpServer *s);
/* The listening socket MHD serves (owned by the server), for its address; -EBADF when MHD cannot say. */
int http_server_listen_fd(const HttpServer *s);
