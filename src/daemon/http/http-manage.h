/* SPDX-License-Identifier: MIT */
#pragma once

#include "http-util.h"
#include "http.h"

/* The management side of the HTTP server: Glance's cache API (/v2/cache…, the legacy /v2/cached_images
 * and /v2/queued_images of the cache_manage middleware, /versions), /healthcheck and /metrics. It turns a
 * routed request into a status and a body; http.c owns the protocol. JSON goes through jansson. */

/* Reads (listings) come from the store; every change goes through ops, the daemon's operations. */
typedef struct HttpManageContext {
        ImageCache *cache;
        const HttpOperations *ops;
        void *userdata;                 /* of ops */
} HttpManageContext;

typedef struct HttpReply {
        unsigned status;
        char *body;                     /* malloc'ed, NULL for none */
        const char *content_type;       /* static */
} HttpReply;

void http_reply_done(HttpReply *r);

/* Answers a management route (route->management, already authorized, status 0). clear_target is the
 * x-image-cache-clear-target header, host the Host header (for /versions' links); either may be NULL.
 * Returns 0 with *ret filled, or -ENOMEM. */
int http_manage_dispatch(const HttpManageContext *ctx, const HttpRouteMatch *route, HttpMethod method,
                         const char *clear_target, const char *host, HttpReply *ret);

/* GET /metrics: the Prometheus text exposition format (version 0.0.4). NULL on OOM. */
#define HTTP_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* The answer of GET /v2/cache/nodes/<id>: {"image_id": id, "cached_nodes": [holders…]}. */
int http_manage_holders_reply(const char *id, char *const *holders, HttpReply *ret);
/* The image API versions the management API advertises (the cache API's among them), each linking to
 * href: a JSON array, or NULL on OOM. */
#include <jansson.h>
json_t *http_manage_versions(const char *href);
char *http_metrics_render(const HttpManageContext *ctx, const HttpCounters *counters);
