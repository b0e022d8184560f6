/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "curl-easy.h"
#include "curl-loop.h"
#include "store.h"

/* The fleet tier ([Fleet]): a static set of imgcached nodes that share one origin fetch per image.
 *
 * Every node ranks the nodes for an image by rendezvous (highest random weight) hashing of the image id
 * with each node's URL, so all compute the same order with no coordination, and adding or removing a
 * node moves only that node's share of owners. A miss asks the candidates ranked above this node among
 * the first Replicas=, in order, and then the origin: requests only ever go to nodes ranked higher for
 * that image, so they cannot run in a circle. A peer's request (FLEET_HEADER_PEER, with the shared
 * secret in FLEET_HEADER_TOKEN) is served as an ordinary miss that goes to the origin only.
 *
 * Host names in Peers= stand for every address they resolve to, and are resolved again every
 * PeerResolveSec= on a worker thread (never on the loop). */

#define FLEET_HEADER_PEER "Imgcache-Peer"        /* the loop guard: the asking node's URL */
#define FLEET_HEADER_TOKEN "Imgcache-Peer-Token" /* PeerTokenFile='s secret */

typedef struct Fleet Fleet;

/* *ret is NULL when Peers= is empty: no fleet. Errors name the setting that is wrong. */
int fleet_new(sd_event *event, const Config *config, Fleet **ret);
Fleet *fleet_free(Fleet *f);
static inline void fleet_freep(Fleet **f) {
        fleet_free(*f);
}

const char *fleet_self(const Fleet *f);
const char *fleet_token(const Fleet *f);
usec_t fleet_peer_timeout(const Fleet *f);
/* The settings of the requests to the peers: the Fetcher's (fetcher_set_fleet() hands them over), borrowed
 * and read at each query; NULL detaches them. */
void fleet_set_transport(Fleet *f, const TransportSettings *t);
/* Every node, this one included, as currently resolved (borrowed, NULL-terminated). */
char *const *fleet_nodes(const Fleet *f);

/* The nodes to ask for id before the origin, best first: the first Replicas= of the ranking that stand
 * above this node. A NULL-terminated array of base URLs (g_strfreev); empty when this node is the owner. */
char **fleet_sources(const Fleet *f, const char *id);

/* Rendezvous hashing, pure: the weight of node for id, and the order of n nodes for id (indices into
 * nodes, heaviest first, ties broken by the URLs' order). */
uint64_t fleet_weight(const char *node, const char *id);
void fleet_rank(char *const *nodes, size_t n, const char *id, size_t *ret_order);

/* Asks every other node whether it holds id, with a HEAD that must not fetch (Cache-Control:
 * only-if-cached), and answers with the nodes that have it (this one first, when it does), each
 * bounded by PeerTimeoutSec= and made like every other request (fleet_set_transport(): CAFile=…).
 * done runs on the loop, once, unless the query is freed first. -ENXIO without transport settings. */
typedef struct FleetQuery FleetQuery;
typedef void (*FleetQueryDone)(char *const *holders, void *userdata);
int fleet_query_holders(Fleet *f, CurlLoop *curl, ImageCache *cache, const char *id, FleetQueryDone done,
                        void *userdata, FleetQuery **ret);
FleetQuery *fleet_query_free(FleetQuery *q);
