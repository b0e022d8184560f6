/* SPDX-License-Identifier: MIT */
/* The fleet tier (fleet.h): the nodes of [Fleet] Peers= and their ranking per image, the peer secret,
 * the asker's loop guard and the holders query. */

#include <arpa/inet.h>
#include <assert.h>
#include <glib.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "fleet.h"
#include "log.h"
#include "upstream.h"
#include "util.h"
#include "worker.h"

struct Fleet {
        sd_event *event;
        char **configured;     /* Peers=, normalized; host names not yet resolved */
        char **nodes;          /* what they stand for now: every node's URL, sorted, unique */
        char *self;
        char *token;
        unsigned replicas;
        usec_t peer_timeout, resolve_interval;
        const TransportSettings *transport; /* the Fetcher's */
        bool has_names;        /* some of Peers= are host names: resolve them, and again later */
        FleetFanout *fanout;
        GHashTable *filled;    /* id → path (fleet_note_filled) */

        sd_event_source *resolve_timer;
        Worker *resolver;
        char **resolved;       /* the resolver's result, handed over in its done() */
};

/* ---- rendezvous hashing ----------------------------------------------------------------------------- */

/* FNV-1a over node, a NUL, and id, then a 64-bit finalizer (from splitmix64), so that nearby inputs
 * spread over the whole range: HRW needs weights that are independent per node, not a fast lookup. */
uint64_t fleet_weight(const char *node, const char *id) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (const char *p = node;; p++) {
                h = (h ^ (uint8_t) *p) * UINT64_C(0x100000001b3);
                if (!*p)
                        break;
        }
        for (const char *p = id; *p; p++)
                h = (h ^ (uint8_t) *p) * UINT64_C(0x100000001b3);

        h ^= h >> 30;
        h *= UINT64_C(0xbf58476d1ce4e5b9);
        h ^= h >> 27;
        h *= UINT64_C(0x94d049bb133111eb);
        h ^= h >> 31;
        return h;
}

void fleet_rank(char *const *nodes, size_t n, const char *id, size_t *ret_order) {
        uint64_t w[n > 0 ? n : 1];

        for (size_t i = 0; i < n; i++) {
                w[i] = fleet_weight(nodes[i], id);
                ret_order[i] = i;
        }
        /* Insertion sort: a fleet is a handful of nodes. */
        for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0; j--) {
                        size_t a = ret_order[j - 1], b = ret_order[j];
                        if (w[a] > w[b] || (w[a] == w[b] && strcmp(nodes[a], nodes[b]) < 0))
                                break;
                        ret_order[j - 1] = b;
                        ret_order[j] = a;
                }
}

char **fleet_sources(const Fleet *f, const char *id) {
        size_t n = f->nodes ? g_strv_length(f->nodes) : 0, order[n > 0 ? n : 1];
        GPtrArray *v = g_ptr_array_new();

        fleet_rank(f->nodes, n, id, order);
        for (size_t i = 0; i < n && i < f->replicas; i++) {
                const char *node = f->nodes[order[i]];
                if (streq(node, f->self))
                        break; /* the rest rank below us: they would ask us */
                g_ptr_array_add(v, g_strdup(node));
        }
        g_ptr_array_add(v, NULL);
        return (char **) g_ptr_array_free(v, FALSE);
}

/* ---- the fan-out ------------------------------------------------------------------------------------ */

static char *node_normalize(const char *url);

struct FanoutStream {
        GPtrArray *image;      /* the FanoutImage's streams, this one among them */
        const char *id;        /* the table's key */
        char *asker;
        unsigned pointed;      /* askers pointed at this stream's node so far */
};

struct FleetFanout {
        unsigned fanout;
        GHashTable *images;    /* id → GPtrArray of FanoutStream*, oldest first; only images being served */
        FanoutStats stats;
};

FleetFanout *fleet_fanout_new(unsigned fanout) {
        FleetFanout *t = g_new0(FleetFanout, 1);
        t->fanout = MAX(fanout, 1u);
        t->images = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify) g_ptr_array_unref);
        return t;
}

static void fanout_stream_free(FanoutStream *s) {
        g_free(s->asker);
        g_free(s);
}

FleetFanout *fleet_fanout_free(FleetFanout *t) {
        if (!t)
                return NULL;
        g_hash_table_destroy(t->images); /* streams still counted go with it: their requests are gone too */
        g_free(t);
        return NULL;
}

bool fleet_nodes_contain(char *const *nodes, const char *node) {
        for (char *const *n = nodes; n && *n; n++)
                if (streq(*n, node))
                        return true;
        return false;
}

char **fleet_split_nodes(const char *list) {
        if (isempty(list))
                return NULL;
        g_auto(GStrv) words = g_strsplit_set(list, " \t", -1);
        GPtrArray *v = g_ptr_array_new();
        for (char **w = words; *w && v->len < FLEET_MAX_HOPS; w++)
                if (!isempty(*w))
                        g_ptr_array_add(v, node_normalize(*w));
        g_ptr_array_add(v, NULL);
        return (char **) g_ptr_array_free(v, FALSE);
}

FanoutVerdict fleet_fanout_admit(FleetFanout *t, const char *id, const char *asker, char *const *via,
                                 FanoutStream **ret_stream, const char **ret_node) {
        GPtrArray *streams = NULL;
        FanoutStream *best = NULL;
        gpointer key;

        if (!g_hash_table_lookup_extended(t->images, id, &key, (gpointer *) &streams)) {
                key = g_strdup(id);
                streams = g_ptr_array_new_with_free_func((GDestroyNotify) fanout_stream_free);
                g_hash_table_insert(t->images, key, streams);
        }
        if (streams->len < t->fanout) {
                FanoutStream *s = g_new0(FanoutStream, 1);
                *s = (FanoutStream) { .image = streams, .id = key, .asker = g_strdup(asker) };
                g_ptr_array_add(streams, s);
                t->stats.streams_peak = MAX(t->stats.streams_peak, streams->len);
                *ret_stream = s;
                return FANOUT_SERVE;
        }
        /* Never the asker itself, nor a node it was pointed away from or that failed it: that is what
         * keeps redirects from running in a circle. */
        for (guint i = 0; i < streams->len; i++) {
                FanoutStream *s = streams->pdata[i];
                if (streq(s->asker, asker) || fleet_nodes_contain(via, s->asker))
                        continue;
                if (!best || s->pointed < best->pointed)
                        best = s;
        }
        if (!best) {
                t->stats.refused++;
                return FANOUT_REFUSE;
        }
        best->pointed++;
        t->stats.redirects_given++;
        *ret_node = best->asker;
        return FANOUT_REDIRECT;
}

void fleet_fanout_release(FleetFanout *t, FanoutStream *s) {
        if (!s)
                return;
        GPtrArray *streams = s->image;
        const char *id = s->id;
        g_ptr_array_remove(streams, s); /* frees s, keeps the others oldest first */
        if (streams->len == 0)
                g_hash_table_remove(t->images, id);
}

unsigned fleet_fanout_streams(const FleetFanout *t, const char *id) {
        GPtrArray *streams = g_hash_table_lookup(t->images, id);
        return streams ? streams->len : 0;
}

const FanoutStats *fleet_fanout_stats(const FleetFanout *t) {
        return &t->stats;
}

FleetFanout *fleet_fanout(const Fleet *f) {
        return f->fanout;
}

/* ---- the node list ------------------------------------------------------------------------------- */

/* "http://h:1/" → "http://h:1": a node is named by its URL without a trailing slash. */
static char *node_normalize(const char *url) {
        size_t n = strlen(url);
        while (n > 0 && url[n - 1] == '/')
                n--;
        return g_strndup(url, n);
}

/* Splits a node URL into scheme ("http"), host and port (may be empty) with curl's URL parser. */
static int node_split(const char *url, char **ret_scheme, char **ret_host, char **ret_port) {
        CURLU *u = curl_url();
        char *scheme = NULL, *host = NULL, *port = NULL;
        int r = -EINVAL;

        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
                if (curl_url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK)
                        port = NULL;
                *ret_scheme = g_strdup(scheme);
                *ret_host = g_strdup(host);
                *ret_port = g_strdup(port ?: "");
                r = 0;
        }
        curl_free(scheme);
        curl_free(host);
        curl_free(port);
        curl_url_cleanup(u);
        return r;
}

static bool host_is_address(const char *host) {
        unsigned char buf[sizeof(struct in6_addr)];
        return host[0] == '[' || inet_pton(AF_INET, host, buf) == 1;
}

/* Adds what url stands for to nodes: itself, or one URL per address its host name resolves to.
 * Blocking (getaddrinfo): the resolver runs it on a worker thread. */
static void node_expand(const char *url, bool resolve, GPtrArray *nodes) {
        g_autofree char *scheme = NULL, *host = NULL, *port = NULL;
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;

        if (node_split(url, &scheme, &host, &port) < 0 || host_is_address(host)) {
                g_ptr_array_add(nodes, g_strdup(url));
                return;
        }
        if (!resolve)
                return;
        int r = getaddrinfo(host, NULL, &hints, &res);
        if (r != 0) {
                log_warning("Cannot resolve the peer %s: %s; leaving it out until the next attempt.", url,
                            gai_strerror(r));
                return;
        }
        for (struct addrinfo *a = res; a; a = a->ai_next) {
                char addr[INET6_ADDRSTRLEN];
                const void *p = a->ai_family == AF_INET6 ? (const void *) &((struct sockaddr_in6 *) a->ai_addr)->sin6_addr
                                                         : (const void *) &((struct sockaddr_in *) a->ai_addr)->sin_addr;
                if (!inet_ntop(a->ai_family, p, addr, sizeof(addr)))
                        continue;
                g_ptr_array_add(nodes, g_strdup_printf("%s://%s%s%s%s%s", scheme, a->ai_family == AF_INET6 ? "[" : "",
                                                       addr, a->ai_family == AF_INET6 ? "]" : "", *port ? ":" : "",
                                                       port));
        }
        freeaddrinfo(res);
}

static gint compare_strings(gconstpointer a, gconstpointer b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* configured → the sorted, unique node list (resolve: look host names up, else leave them out). */
static char **nodes_build(char *const *configured, const char *self, bool resolve) {
        GPtrArray *v = g_ptr_array_new_with_free_func(g_free);

        for (char *const *c = configured; *c; c++)
                node_expand(*c, resolve, v);
        if (self)
                g_ptr_array_add(v, g_strdup(self)); /* the list need not name us */
        g_ptr_array_sort(v, compare_strings);
        for (guint i = 1; i < v->len;)
                if (streq(v->pdata[i], v->pdata[i - 1]))
                        g_ptr_array_remove_index(v, i);
                else
                        i++;
        g_ptr_array_add(v, NULL);
        g_ptr_array_set_free_func(v, NULL);
        return (char **) g_ptr_array_free(v, FALSE);
}

static void fleet_set_nodes(Fleet *f, char **nodes) {
        if (f->nodes && g_strv_equal((const char *const *) f->nodes, (const char *const *) nodes)) {
                g_strfreev(nodes);
                return;
        }
        g_strfreev(f->nodes);
        f->nodes = nodes;
        g_autofree char *joined = g_strjoinv(" ", nodes);
        log_info("Fleet of %u nodes: %s (this one: %s)", g_strv_length(nodes), joined, f->self);
}

static int run_resolve(void *userdata) {
        Fleet *f = userdata;
        f->resolved = nodes_build(f->configured, f->self, true);
        return 0;
}

static void on_resolved(int result, void *userdata) {
        Fleet *f = userdata;

        f->resolver = NULL;
        if (f->resolved)
                fleet_set_nodes(f, TAKE_PTR(f->resolved));
        (void) sd_event_source_set_time_relative(f->resolve_timer, f->resolve_interval);
        (void) sd_event_source_set_enabled(f->resolve_timer, SD_EVENT_ONESHOT);
}

static int on_resolve_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Fleet *f = userdata;
        int r;

        if (f->resolver)
                return 0;
        r = worker_start(f->event, "fleet-resolve", run_resolve, on_resolved, f, &f->resolver);
        if (r < 0) {
                log_warning_errno(r, "Cannot start resolving the peers, trying again later: %m");
                on_resolved(r, f);
        }
        return 0;
}

/* ---- lifetime ------------------------------------------------------------------------------------- */

static int fleet_load(Fleet *f, const Config *c) {
        int r;

        if (isempty(c->fleet_self))
                return log_error_errno(-EINVAL, "[Fleet] Peers= needs Self= (this node's URL as the peers know it).");
        if (isempty(c->peer_token_file))
                return log_error_errno(-EINVAL, "[Fleet] Peers= needs PeerTokenFile= (the secret the peers share).");
        r = read_token_file_first(c->peer_token_file, &f->token);
        if (r < 0)
                return log_error_errno(r, "Cannot read [Fleet] PeerTokenFile=%s: %m", c->peer_token_file);

        f->self = node_normalize(c->fleet_self);
        g_auto(GStrv) words = g_strsplit_set(c->fleet_peers, " \t", -1);
        GPtrArray *v = g_ptr_array_new();
        for (char **w = words; *w; w++)
                if (!isempty(*w))
                        g_ptr_array_add(v, node_normalize(*w));
        g_ptr_array_add(v, NULL);
        f->configured = (char **) g_ptr_array_free(v, FALSE);

        f->replicas = c->fleet_replicas;
        f->fanout = fleet_fanout_new(c->fleet_fanout);
        f->filled = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        f->peer_timeout = c->peer_timeout;
        f->resolve_interval = c->peer_resolve_interval;
        for (char **p = f->configured; *p; p++) {
                g_autofree char *scheme = NULL, *host = NULL, *port = NULL;
                if (node_split(*p, &scheme, &host, &port) < 0)
                        return log_error_errno(-EINVAL, "[Fleet] Peers=: cannot parse %s", *p);
                f->has_names = f->has_names || !host_is_address(host);
        }
        return 0;
}

int fleet_new(sd_event *event, const Config *config, Fleet **ret) {
        _cleanup_(fleet_freep) Fleet *f = NULL;
        int r;

        *ret = NULL;
        if (isempty(config->fleet_peers))
                return 0;

        f = calloc(1, sizeof(Fleet));
        if (!f)
                return -ENOMEM;
        f->event = sd_event_ref(event);
        r = fleet_load(f, config);
        if (r < 0)
                return r;

        /* The addresses now; the names as soon as the resolver has them. */
        fleet_set_nodes(f, nodes_build(f->configured, f->self, false));
        if (f->has_names) {
                r = sd_event_add_time_relative(event, &f->resolve_timer, CLOCK_MONOTONIC, 0, 0, on_resolve_timer, f);
                if (r < 0)
                        return log_error_errno(r, "Cannot set up resolving the peers: %m");
                (void) sd_event_source_set_description(f->resolve_timer, "fleet-resolve");
        }
        *ret = TAKE_PTR(f);
        return 0;
}

Fleet *fleet_free(Fleet *f) {
        if (!f)
                return NULL;
        f->resolver = worker_abandon(f->resolver);
        g_strfreev(f->resolved);
        sd_event_source_disable_unref(f->resolve_timer);
        fleet_fanout_free(f->fanout);
        if (f->filled)
                g_hash_table_destroy(f->filled);
        g_strfreev(f->configured);
        g_strfreev(f->nodes);
        free(f->self);
        if (f->token) {
                explicit_bzero(f->token, strlen(f->token));
                free(f->token);
        }
        sd_event_unref(f->event);
        free(f);
        return NULL;
}

const char *fleet_self(const Fleet *f) {
        return f->self;
}

const char *fleet_token(const Fleet *f) {
        return f->token;
}

usec_t fleet_peer_timeout(const Fleet *f) {
        return f->peer_timeout;
}

void fleet_set_transport(Fleet *f, const TransportSettings *t) {
        f->transport = t;
}

char *const *fleet_nodes(const Fleet *f) {
        return f->nodes;
}

bool fleet_is_peer(const Fleet *f, const char *node) {
        return !streq(node, f->self) && fleet_nodes_contain(f->nodes, node);
}

void fleet_note_filled(Fleet *f, const char *id, const char *path) {
        /* Shown to people only: past the bound, forgetting all beats an LRU's bookkeeping. */
        if (g_hash_table_size(f->filled) >= FLEET_FILLED_MAX)
                g_hash_table_remove_all(f->filled);
        g_hash_table_insert(f->filled, g_strdup(id), g_strdup(strempty(path)));
}

char *fleet_path_of(const Fleet *f, const char *id) {
        const char *path = g_hash_table_lookup(f->filled, id);
        if (!path)
                return NULL;
        return g_strdup_printf("%s%s%s", f->self, *path ? " " : "", path);
}

/* ---- who holds an image ------------------------------------------------------------------------- */

typedef struct FleetAsk {
        FleetQuery *query;
        CurlTask task;
        CURL *easy;
        struct curl_slist *headers;
        char *node;
        char *path;          /* its FLEET_HEADER_PATH */
} FleetAsk;

struct FleetQuery {
        CurlLoop *curl;
        GPtrArray *holders;  /* char*, the answer so far */
        GPtrArray *paths;    /* char*, of each holder */
        FleetAsk *asks;
        size_t n_asks, n_pending;
        sd_event_source *done_source;
        FleetQueryDone done;
        void *userdata;
};

static void ask_done(FleetAsk *a) {
        curl_loop_discard(a->query->curl, &a->easy);
        transport_headers_free(a->headers);
        a->headers = NULL;
}

static int on_query_complete(sd_event_source *s, void *userdata) {
        FleetQuery *q = userdata;

        g_ptr_array_add(q->holders, NULL);
        g_ptr_array_add(q->paths, NULL);
        q->done((char *const *) q->holders->pdata, (char *const *) q->paths->pdata, q->userdata);
        return 0;
}

static void on_ask_done(CurlTask *t, CURL *easy, CURLcode code) {
        FleetAsk *a = container_of(t, FleetAsk, task);
        FleetQuery *q = a->query;
        long status = 0;

        if (code == CURLE_OK && curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200) {
                g_ptr_array_add(q->holders, g_strdup(a->node));
                g_ptr_array_add(q->paths, g_strdup(strempty(a->path)));
        }
        ask_done(a);
        if (--q->n_pending == 0)
                (void) sd_event_source_set_enabled(q->done_source, SD_EVENT_ONESHOT);
}

static size_t on_ask_header(char *buffer, size_t size, size_t nitems, void *userdata) {
        FleetAsk *a = userdata;
        size_t len = size * nitems, n;
        const char *v;

        if (upstream_header_is(buffer, len, FLEET_HEADER_PATH, &v, &n) && n < 4096) {
                g_free(a->path);
                a->path = g_strndup(v, n);
        }
        return len;
}

static int ask_start(Fleet *f, FleetQuery *q, FleetAsk *a, const char *id, bool gone) {
        g_autofree char *url = g_strdup_printf("%s/images/%s", a->node, id);
        int r;

        if ((r = transport_header_addf(&a->headers, "%s: %s", FLEET_HEADER_PEER, f->self)) < 0 ||
            (r = transport_header_addf(&a->headers, "%s: %s", FLEET_HEADER_TOKEN, f->token)) < 0 ||
            (!gone && (r = transport_header_addf(&a->headers, "Cache-Control: only-if-cached")) < 0))
                return r;
        TransportRequest req = {
                .url = url,
                .task = &a->task,
                .timeout = MAX(f->peer_timeout, 1u), /* 0 would be none */
                .headers = a->headers,
                .on_header = on_ask_header,
                .userdata = a,
                .no_body = true,
                .method = gone ? "DELETE" : NULL,
        };
        a->task.on_done = on_ask_done;
        r = transport_easy_new(f->transport, &req, &a->easy);
        if (r >= 0)
                r = curl_loop_add(q->curl, a->easy);
        return r;
}

/* Asks every other node about id: who holds it (a HEAD, only-if-cached), or, gone, tells each that the
 * upstream dropped it (a DELETE; the answers say nothing: each node asks the upstream itself). */
static int fleet_query_start(Fleet *f, CurlLoop *curl, ImageCache *cache, const char *id, bool gone,
                             FleetQueryDone done, void *userdata, FleetQuery **ret) {
        FleetQuery *q;
        size_t n = g_strv_length(f->nodes);
        int r;

        if (!f->transport)
                return -ENXIO; /* no Fetcher: the requests would not be made as the fills' are */
        q = calloc(1, sizeof(FleetQuery));
        if (!q)
                return -ENOMEM;
        *q = (FleetQuery) { .curl = curl, .holders = g_ptr_array_new_with_free_func(g_free),
                            .paths = g_ptr_array_new_with_free_func(g_free), .done = done,
                            .userdata = userdata, .asks = calloc(n, sizeof(FleetAsk)) };
        r = q->asks || n == 0 ? sd_event_add_defer(f->event, &q->done_source, on_query_complete, q) : -ENOMEM;
        if (r < 0) {
                fleet_query_free(q);
                return r;
        }
        (void) sd_event_source_set_enabled(q->done_source, SD_EVENT_OFF);
        if (!gone && image_cache_get(cache, id)) {
                g_ptr_array_add(q->holders, g_strdup(f->self));
                g_ptr_array_add(q->paths, fleet_path_of(f, id) ?: g_strdup(""));
        }

        for (size_t i = 0; i < n; i++) {
                if (streq(f->nodes[i], f->self))
                        continue;
                FleetAsk *a = &q->asks[q->n_asks++];
                *a = (FleetAsk) { .query = q, .node = g_strdup(f->nodes[i]) };
                if (ask_start(f, q, a, id, gone) < 0) {
                        ask_done(a); /* not asked: counted as not holding it */
                        continue;
                }
                q->n_pending++;
        }
        if (q->n_pending == 0)
                (void) sd_event_source_set_enabled(q->done_source, SD_EVENT_ONESHOT);
        *ret = q;
        return 0;
}

int fleet_query_holders(Fleet *f, CurlLoop *curl, ImageCache *cache, const char *id, FleetQueryDone done,
                        void *userdata, FleetQuery **ret) {
        return fleet_query_start(f, curl, cache, id, false, done, userdata, ret);
}

int fleet_tell_gone(Fleet *f, CurlLoop *curl, const char *id, FleetQueryDone done, void *userdata, FleetQuery **ret) {
        return fleet_query_start(f, curl, NULL, id, true, done, userdata, ret);
}

FleetQuery *fleet_query_free(FleetQuery *q) {
        if (!q)
                return NULL;
        for (size_t i = 0; i < q->n_asks; i++) {
                ask_done(&q->asks[i]);
                g_free(q->asks[i].node);
                g_free(q->asks[i].path);
        }
        free(q->asks);
        sd_event_source_disable_unref(q->done_source);
        g_ptr_array_free(q->holders, TRUE);
        g_ptr_array_free(q->paths, TRUE);
        free(q);
        return NULL;
}
