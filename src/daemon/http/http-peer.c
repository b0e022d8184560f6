/* SPDX-License-Identifier: MIT */
/* A peer's request for an image (fleet.h), before it is served as a hit or a miss: the fan-out (FanOut=),
 * the loop guard of failovers, and what a peer is told of where the bytes come from. */

#include <glib.h>
#include <stdio.h>

#include "http-internal.h"
#include "log.h"

/* A node never serves a peer its own bytes come through: that peer would read what it sends itself.
 * Nor does it serve from a path already FLEET_MAX_HOPS long (the hop limit of the tree's depth). */
static bool peer_would_loop(HttpServer *s, const char *id, const char *asker) {
        Fill *running = s->fetcher ? fetcher_find(s->fetcher, id) : NULL;
        g_auto(GStrv) path = running ? fleet_split_nodes(fill_peer_path(running)) : NULL;

        return fleet_nodes_contain(path, asker) || (path && g_strv_length(path) + 1 >= FLEET_MAX_HOPS);
}

int http_peer_admit(HttpServer *s, Request *req, struct MHD_Connection *c) {
        const char *asker = http_header(c, FLEET_HEADER_PEER), *node = NULL;
        g_auto(GStrv) via = fleet_split_nodes(http_header(c, FLEET_HEADER_VIA));
        const char *id = req->match.id;

        /* Pointed here by another node: only a fill running here, or a hit, may answer it. */
        req->peer_join = via != NULL;
        if (req->method != HTTP_METHOD_GET)
                return -1; /* a HEAD (who holds an image) sends no image */
        if (peer_would_loop(s, id, asker))
                return http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "This node's copy comes through the asker\n");

        switch (fleet_fanout_admit(fleet_fanout(s->fleet), id, asker, via, &req->fanout_stream, &node)) {
        case FANOUT_SERVE:
                return -1;
        case FANOUT_REDIRECT: {
                g_autofree char *location = g_strdup_printf("%s/images/%s", node, id);
                struct MHD_Response *resp = http_text_response("Ask the node named in " FLEET_HEADER_REDIRECT "\n");
                if (!resp)
                        return MHD_NO;
                MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, location);
                MHD_add_response_header(resp, FLEET_HEADER_REDIRECT, node);
                return http_queue_response(c, MHD_HTTP_TEMPORARY_REDIRECT, resp);
        }
        default:
                return http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "Serving enough peers with this image\n");
        }
}

void http_peer_release(HttpServer *s, Request *req) {
        if (req->fanout_stream)
                fleet_fanout_release(fleet_fanout(s->fleet), TAKE_PTR(req->fanout_stream));
}

void http_peer_add_path(Request *req, struct MHD_Response *resp, Fill *f) {
        HttpServer *s = req->server;
        g_autofree char *path = NULL;

        if (!req->from_peer || !s->fleet)
                return;
        if (f) {
                const char *parent = fill_peer_path(f);
                path = g_strdup_printf("%s%s%s", fleet_self(s->fleet), parent ? " " : "", strempty(parent));
        } else
                path = fleet_path_of(s->fleet, req->match.id); /* a hit filled before the start: unknown */
        if (path)
                MHD_add_response_header(resp, FLEET_HEADER_PATH, path);
}
