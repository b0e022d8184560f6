/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
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
/* The fan-out (FanOut=): a node serving FanOut= peer streams of an image points the next asker at one of the
 * nodes it streams to, with a 307 naming that node in FLEET_HEADER_REDIRECT. The asker asks that node with
 * FLEET_HEADER_VIA listing the nodes it was pointed away from or that failed it: such a request never starts
 * a fill (it joins a running one, or is a hit, or is refused), and nobody points it at a node in that list.
 * Every image response to a peer names in FLEET_HEADER_PATH the node and the nodes its bytes come through,
 * parent first: a node never serves a peer that is on its own path (the loop guard of failovers). */
#define FLEET_HEADER_REDIRECT "Imgcache-Peer-Redirect"
#define FLEET_HEADER_VIA "Imgcache-Peer-Via"
#define FLEET_HEADER_PATH "Imgcache-Peer-Path"
/* The hop limit: redirects one fill follows from one source, and nodes a Via list or a path may name. */
#define FLEET_MAX_HOPS 16

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

/* Whether node is one of the fleet's, this one excepted: a redirect to anything else is ignored. */
bool fleet_is_peer(const Fleet *f, const char *node);

/* ---- the fan-out, pure (the simulator in bench/fleet links it as the daemon does) ---------------------- */

/* One node's peer streams, per image: whom it sends each image to now, and where it points the others. */
typedef struct FleetFanout FleetFanout;
typedef struct FanoutStream FanoutStream;  /* one peer stream being served, until released */
typedef enum FanoutVerdict {
        FANOUT_SERVE,     /* *ret_stream is counted until fleet_fanout_release() */
        FANOUT_REDIRECT,  /* *ret_node (borrowed, valid until the next call) is where to ask */
        FANOUT_REFUSE,    /* FanOut= streams, and none of their nodes may be pointed at */
        _FANOUT_VERDICT_MAX,
        _FANOUT_VERDICT_INVALID = -EINVAL,
} FanoutVerdict;
typedef struct FanoutStats {
        uint64_t redirects_given;  /* askers pointed at another node */
        uint64_t refused;          /* askers refused: all FanOut= receivers were in their Via list */
        unsigned streams_peak;     /* the most peer streams of one image served at once */
} FanoutStats;

FleetFanout *fleet_fanout_new(unsigned fanout);
FleetFanout *fleet_fanout_free(FleetFanout *t);
/* asker wants id; via (NULL-terminated, may be NULL) are the nodes it must not be pointed at. Below FanOut=
 * streams of id it is served; at FanOut= it is pointed at the receiver pointed at least so far (the oldest
 * of those): each receiver gets FanOut= of its own before any gets more, so the tree fills level by level. */
FanoutVerdict fleet_fanout_admit(FleetFanout *t, const char *id, const char *asker, char *const *via,
                                 FanoutStream **ret_stream, const char **ret_node);
void fleet_fanout_release(FleetFanout *t, FanoutStream *s);
unsigned fleet_fanout_streams(const FleetFanout *t, const char *id);
const FanoutStats *fleet_fanout_stats(const FleetFanout *t);
/* This node's, built by fleet_new() from FanOut=. */
FleetFanout *fleet_fanout(const Fleet *f);

/* "a b c" → { "a", "b", "c", NULL } (g_strfreev), at most FLEET_MAX_HOPS names; NULL for NULL or empty. */
char **fleet_split_nodes(const char *list);
bool fleet_nodes_contain(char *const *nodes, const char *node);

/* Who filled from whom: the path an image kept here came through (FLEET_HEADER_PATH of its source, "" from
 * the origin), remembered for the images filled since the start (the most recent FLEET_FILLED_MAX). */
#define FLEET_FILLED_MAX 65536
void fleet_note_filled(Fleet *f, const char *id, const char *path);
/* This node, then where its copy of id came from ("self a b", "self" from the origin); NULL: unknown. */
char *fleet_path_of(const Fleet *f, const char *id);

/* Asks every other node whether it holds id, with a HEAD that must not fetch (Cache-Control:
 * only-if-cached), and answers with the nodes that have it (this one first, when it does), each
 * bounded by PeerTimeoutSec= and made like every other request (fleet_set_transport(): CAFile=…), and
 * with paths[i] the path holders[i] named (fleet_path_of(), "" when it named none). done runs on the loop,
 * once, unless the query is freed first. -ENXIO without transport settings. */
typedef struct FleetQuery FleetQuery;
typedef void (*FleetQueryDone)(char *const *holders, char *const *paths, void *userdata);
int fleet_query_holders(Fleet *f, CurlLoop *curl, ImageCache *cache, const char *id, FleetQueryDone done,
                        void *userdata, FleetQuery **ret);
FleetQuery *fleet_query_free(FleetQuery *q);
/* Tells every other node that the upstream deleted or deactivated id (DELETE {node}/images/<id> with the
 * peer headers), made and bounded like the holders query; done runs once all answered (holders empty).
 * A node told so asks the upstream with its own credentials before it drops anything. */
int fleet_tell_gone(Fleet *f, CurlLoop *curl, const char *id, FleetQueryDone done, void *userdata, FleetQuery **ret);
