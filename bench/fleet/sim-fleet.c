/* SPDX-License-Identifier: MIT */
/* A simulation of the fleet tier's fan-out for fleets too large to start: N nodes all asking for one image
 * at once, with the daemon's own code deciding what each node does — fleet_rank() picks the owner every
 * node asks first, and each node's FleetFanout (fleet_fanout_admit(), FanOut=k) serves, points the asker
 * at one of its receivers, or refuses, exactly as http-peer.c asks it to. Around that, a model of the
 * network: each node uploads at most UPLOAD bytes/s shared equally by its streams, downloads at most
 * DOWNLOAD, every message takes LATENCY one way, and a stream streams while it fills (a node never sends
 * bytes it has not received). The origin serves whoever asks it at ORIGIN bytes/s per stream.
 *
 * What the model leaves out: the last byte held until the digest is verified (hashing runs at the
 * network's speed here), TCP's ramp-up, failures (the failover path is the daemon's and its tests').
 *
 *   build/bench/fleet/sim-fleet [--nodes=100,1000,2600] [--fanout=2,4] [--size=3e9] [--upload=300e6]
 *                               [--download=UPLOAD] [--latency=0.0005] [--origin=UPLOAD] [--jitter=0]
 * Prints p50/p99/max of the time until each node holds the image, one node's transfer time, the largest
 * upload of any node (in images) and the deepest path, next to Kraken's published figures. */

#include <glib.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet.h"

#define DT 0.002 /* s: the step of the fluid model */

typedef enum NodeState {
        NODE_WAITING,   /* its client has not asked yet */
        NODE_ASKING,    /* a request to `target` is on its way, arriving at `at` */
        NODE_STARTING,  /* served: the first byte arrives at `at` */
        NODE_STREAMING,
        NODE_DONE,
} NodeState;

#define ORIGIN ((size_t) -1)

typedef struct Node {
        char *url;
        FleetFanout *fanout;
        NodeState state;
        double at;              /* when the step in progress completes */
        size_t target;          /* ASKING: the node asked (ORIGIN: the origin) */
        size_t parent;          /* STARTING, STREAMING: where the bytes come from */
        FanoutStream *stream;   /* at the parent's FleetFanout */
        char **via;             /* FLEET_HEADER_VIA: the nodes passed since the owner was asked */
        unsigned hops;
        double received, uploaded, done_at;
        unsigned depth, n_children;
} Node;

typedef struct Sim {
        size_t n;
        unsigned k;
        double size, upload, download, latency, origin, jitter;
        Node *nodes;
        GHashTable *by_url;     /* url → index + 1 */
        size_t owner;
        unsigned origin_fetches, redirects, refusals;
} Sim;

static void via_add(Node *x, const char *url) {
        size_t n = x->via ? g_strv_length(x->via) : 0;
        x->via = g_renew(char *, x->via, n + 2);
        x->via[n] = g_strdup(url);
        x->via[n + 1] = NULL;
}

static void ask(Sim *s, Node *x, size_t target, double now) {
        x->state = NODE_ASKING;
        x->target = target;
        x->at = now + (target == ORIGIN ? 0 : s->latency);
}

static void start_stream(Sim *s, Node *x, size_t parent, double now) {
        x->state = NODE_STARTING;
        x->parent = parent;
        x->at = now + s->latency; /* the answer's way back */
        if (parent == ORIGIN) {
                x->at += 2 * s->latency; /* its own request, out and back */
                s->origin_fetches++;
                x->depth = 0;
        } else {
                s->nodes[parent].n_children++;
                x->depth = s->nodes[parent].depth + 1;
        }
}

/* A peer request from x arrives at p: what p's HTTP server does (http-peer.c, http-miss.c). */
static void arrive(Sim *s, Node *x, double now) {
        size_t xi = (size_t) (x - s->nodes), pi = x->target;
        if (pi == ORIGIN) {
                start_stream(s, x, ORIGIN, now);
                return;
        }
        Node *p = &s->nodes[pi];
        bool filling = p->state == NODE_STREAMING || p->state == NODE_STARTING || p->state == NODE_DONE;
        const char *to = NULL;

        /* Pointed here (Via): only a running fill answers. The owner asked directly starts one. A path
         * FLEET_MAX_HOPS long serves nobody (http-peer.c's hop limit). */
        if ((!filling && x->via) || p->depth + 1 >= FLEET_MAX_HOPS) {
                s->refusals++;
                goto next_source;
        }
        switch (fleet_fanout_admit(p->fanout, "image", x->url, x->via, &x->stream, &to)) {
        case FANOUT_SERVE:
                if (!filling && p->state == NODE_WAITING)
                        start_stream(s, p, ORIGIN, now); /* the owner's origin fetch, for its peer */
                start_stream(s, x, pi, now);
                return;
        case FANOUT_REDIRECT: {
                size_t yi = GPOINTER_TO_SIZE(g_hash_table_lookup(s->by_url, to)) - 1;
                if (x->hops >= FLEET_MAX_HOPS || fleet_nodes_contain(x->via, to) || yi == xi)
                        goto next_source;
                s->redirects++;
                x->hops++;
                via_add(x, p->url);
                ask(s, x, yi, now + s->latency);
                return;
        }
        default:
                s->refusals++;
                goto next_source;
        }
next_source:
        /* Replicas=1 in the model: after the owner, the origin. */
        ask(s, x, ORIGIN, now + s->latency);
}

static double received_of(const Sim *s, size_t i) {
        return i == ORIGIN ? s->size : s->nodes[i].received;
}

static void step(Sim *s, double now) {
        for (size_t i = 0; i < s->n; i++) {
                Node *x = &s->nodes[i];
                if (x->state == NODE_WAITING && now >= x->at)
                        ask(s, x, i == s->owner ? ORIGIN : s->owner, now);
                else if (x->state == NODE_ASKING && now >= x->at)
                        arrive(s, x, now);
                else if (x->state == NODE_STARTING && now >= x->at)
                        x->state = NODE_STREAMING;
        }
        /* Rates from the state before this step: each parent's upload shared by its streams. */
        for (size_t i = 0; i < s->n; i++) {
                Node *x = &s->nodes[i];
                if (x->state != NODE_STREAMING)
                        continue;
                double up = x->parent == ORIGIN ? s->origin : s->upload / MAX(s->nodes[x->parent].n_children, 1u);
                double got = MIN(MIN(up, s->download) * DT, received_of(s, x->parent) - x->received);
                got = MAX(got, 0.0);
                x->received += got;
                if (x->parent != ORIGIN)
                        s->nodes[x->parent].uploaded += got;
                if (x->received >= s->size) {
                        x->state = NODE_DONE;
                        x->done_at = now;
                        if (x->parent != ORIGIN) {
                                s->nodes[x->parent].n_children--;
                                fleet_fanout_release(s->nodes[x->parent].fanout, TAKE_PTR(x->stream));
                        }
                }
        }
}

static int compare_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

static void simulate(Sim *s) {
        double now = 0;
        size_t n_done = 0;

        s->nodes = g_new0(Node, s->n);
        s->by_url = g_hash_table_new(g_str_hash, g_str_equal);
        char **urls = g_new0(char *, s->n + 1);
        for (size_t i = 0; i < s->n; i++) {
                Node *x = &s->nodes[i];
                x->url = g_strdup_printf("http://10.%zu.%zu.%zu:9393", i / 65536, i / 256 % 256, i % 256);
                x->fanout = fleet_fanout_new(s->k);
                x->at = s->jitter * g_random_double();
                urls[i] = x->url;
                g_hash_table_insert(s->by_url, x->url, GSIZE_TO_POINTER(i + 1));
        }
        size_t *order = g_new(size_t, s->n);
        fleet_rank(urls, s->n, "image", order);
        s->owner = order[0];

        while (n_done < s->n && now < 3600) {
                step(s, now);
                now += DT;
                n_done = 0;
                for (size_t i = 0; i < s->n; i++)
                        n_done += s->nodes[i].state == NODE_DONE;
        }

        double *t = g_new(double, s->n), up_max = 0;
        unsigned depth = 0;
        for (size_t i = 0; i < s->n; i++) {
                t[i] = s->nodes[i].state == NODE_DONE ? s->nodes[i].done_at : INFINITY;
                up_max = MAX(up_max, s->nodes[i].uploaded);
                depth = MAX(depth, s->nodes[i].depth);
        }
        qsort(t, s->n, sizeof(double), compare_double);
        printf("%6zu %3u %8.1f s %8.1f s %8.1f s %8.2f x %10.2f %6u %7u %6u %9u\n", s->n, s->k,
               t[(s->n - 1) / 2], t[(size_t) ceil(0.99 * (double) s->n) - 1], t[s->n - 1], t[s->n - 1] / (s->size / s->upload),
               up_max / s->size, depth, s->origin_fetches, s->redirects, s->refusals);

        for (size_t i = 0; i < s->n; i++) {
                if (s->nodes[i].stream) /* not done within the hour */
                        fleet_fanout_release(s->nodes[s->nodes[i].parent].fanout, s->nodes[i].stream);
                g_strfreev(s->nodes[i].via);
        }
        for (size_t i = 0; i < s->n; i++) {
                fleet_fanout_free(s->nodes[i].fanout);
                g_free(s->nodes[i].url);
        }
        g_hash_table_destroy(s->by_url);
        g_free(s->nodes);
        g_free(urls);
        g_free(order);
        g_free(t);
}

static GArray *parse_list(const char *text) {
        g_auto(GStrv) words = g_strsplit(text, ",", -1);
        GArray *v = g_array_new(FALSE, FALSE, sizeof(unsigned));
        for (char **w = words; *w; w++) {
                unsigned x = (unsigned) strtoul(*w, NULL, 10);
                g_array_append_val(v, x);
        }
        return v;
}

/* "--name=value" → "value"; NULL for another option. */
static const char *option(const char *arg, const char *name) {
        size_t n = strlen(name);
        return strncmp(arg, "--", 2) == 0 && strncmp(arg + 2, name, n) == 0 && arg[2 + n] == '=' ? arg + 3 + n : NULL;
}

int main(int argc, char *argv[]) {
        const char *nodes = "100,1000,2600", *fanouts = "2,4";
        Sim base = { .size = 3e9, .upload = 300e6, .latency = 0.0005 };
        double download = 0, origin = 0;

        for (int i = 1; i < argc; i++) {
                const char *v;
                if ((v = option(argv[i], "nodes")))
                        nodes = v;
                else if ((v = option(argv[i], "fanout")))
                        fanouts = v;
                else if ((v = option(argv[i], "size")))
                        base.size = strtod(v, NULL);
                else if ((v = option(argv[i], "upload")))
                        base.upload = strtod(v, NULL);
                else if ((v = option(argv[i], "download")))
                        download = strtod(v, NULL);
                else if ((v = option(argv[i], "latency")))
                        base.latency = strtod(v, NULL);
                else if ((v = option(argv[i], "origin")))
                        origin = strtod(v, NULL);
                else if ((v = option(argv[i], "jitter")))
                        base.jitter = strtod(v, NULL);
                else {
                        fprintf(stderr, "usage: %s [--nodes=N,...] [--fanout=K,...] [--size=BYTES] [--upload=B/s] "
                                "[--download=B/s] [--latency=S] [--origin=B/s] [--jitter=S]\n", argv[0]);
                        return 2;
                }
        }
        base.download = download > 0 ? download : base.upload;
        base.origin = origin > 0 ? origin : base.upload;
        g_random_set_seed(1);

        printf("# %.2g bytes at %.3g B/s up, %.3g B/s down per node, %.2g s latency, origin %.3g B/s per stream, "
               "requests within %.2g s\n", base.size, base.upload, base.download, base.latency, base.origin, base.jitter);
        printf("# one node's transfer time: %.1f s. Kraken (3 GB to 2,600 hosts): p50 10 s, p99 18 s.\n",
               base.size / base.upload);
        printf("#    N   k      p50        p99        max    max/one  max upload  depth  origin  redirects  refused\n");
        g_autoptr(GArray) ns = parse_list(nodes), ks = parse_list(fanouts);
        for (guint i = 0; i < ns->len; i++)
                for (guint j = 0; j < ks->len; j++) {
                        Sim s = base;
                        s.n = g_array_index(ns, unsigned, i);
                        s.k = g_array_index(ks, unsigned, j);
                        s.k = s.k ? s.k : (unsigned) s.n; /* 0: the owner serves all */
                        simulate(&s);
                }
        return 0;
}
