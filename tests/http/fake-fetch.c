/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/mman.h>

#include "fake-fetch.h"
#include "fleet.h"
#include "image-id.h"

struct FillSubscription {
        Fill *fill;
        FillListener listener;
        void *userdata;
        FillSubscription *next;
};

struct Fill {
        unsigned n_ref;
        Fetcher *fetcher;
        char *id;
        FillState state;
        uint64_t written, total;
        int error;
        bool kept;
        int fd;
        FillSubscription *subscriptions;
        Fill *next;   /* in the fetcher's list */
};

struct UpstreamQuery {
        Fetcher *fetcher;
        char *id;
        char *credentials;
        UpstreamQueryDone done;
        void *userdata;
        UpstreamQuery *next;
};

struct Fetcher {
        ImageCache *cache;
        bool upstream;
        unsigned n_started;
        unsigned n_queries;
        Fill *fills;  /* every fill ever started, newest first; the fetcher holds a reference to each */
        UpstreamQuery *queries;  /* unanswered */
};

const char *fill_state_to_string(FillState s) {
        static const char *const table[] = {
                "pending", "connecting", "receiving", "sealing", "done", "failed", "cancelled",
        };
        return s >= 0 && s < _FILL_STATE_MAX ? table[s] : NULL;
}

int fetcher_new(sd_event *event, ImageCache *cache, const Config *config, Fetcher **ret) {
        Fetcher *fe = calloc(1, sizeof(Fetcher));
        if (!fe)
                return -ENOMEM;
        fe->cache = cache;
        fe->upstream = config && config->upstream_url;
        *ret = fe;
        return 0;
}

Fetcher *fetcher_free(Fetcher *fe) {
        if (!fe)
                return NULL;
        assert(!fe->queries);  /* their owners (the HTTP server) went first */
        while (fe->fills) {
                Fill *f = fe->fills;
                fe->fills = f->next;
                f->fetcher = NULL;
                fill_unref(f);
        }
        free(fe);
        return NULL;
}

int fetcher_reconfigure(Fetcher *fe, const Config *config) {
        fe->upstream = config && config->upstream_url;
        return 0;
}

void fetcher_add_observer(Fetcher *fe, FetcherObserver *o) {
}

void fetcher_remove_observer(Fetcher *fe, FetcherObserver *o) {
}

bool fetcher_has_upstream(const Fetcher *fe) {
        return fe->upstream;
}

unsigned fetcher_n_active(const Fetcher *fe) {
        unsigned n = 0;
        for (Fill *f = fe->fills; f; f = f->next)
                n += !fill_state_is_final(f->state);
        return n;
}

Fill *fetcher_find(const Fetcher *fe, const char *id) {
        for (Fill *f = fe->fills; f; f = f->next)
                if (streq(f->id, id) && !fill_state_is_final(f->state))
                        return f;
        return NULL;
}

int fetcher_fill(Fetcher *fe, const char *id, const Checksum *expected, Fill **ret) {
        Fill *f;

        if (!image_id_is_valid(id))
                return -EINVAL;
        if (image_cache_is_cached(fe->cache, id))
                return -EEXIST;
        if (!fe->upstream)
                return -ENXIO;

        f = fetcher_find(fe, id);
        if (f) {
                *ret = fill_ref(f);
                return 0;
        }

        f = calloc(1, sizeof(Fill));
        if (!f)
                return -ENOMEM;
        *f = (Fill) {
                .n_ref = 1,
                .fetcher = fe,
                .id = strdup(id),
                .state = FILL_CONNECTING,
                .total = UINT64_MAX,
                .fd = memfd_create("fake-fill", MFD_CLOEXEC),
                .next = fe->fills,
        };
        assert(f->id && f->fd >= 0);
        fe->fills = f;
        fe->n_started++;

        *ret = fill_ref(f);
        return 0;
}

int fetcher_query(Fetcher *fe, const char *id, const char *credentials, UpstreamQueryDone done, void *userdata,
                  UpstreamQuery **ret) {
        UpstreamQuery *q;

        if (!fe->upstream)
                return -ENXIO;
        q = calloc(1, sizeof(UpstreamQuery));
        if (!q)
                return -ENOMEM;
        *q = (UpstreamQuery) {
                .fetcher = fe,
                .id = strdup(id),
                .credentials = credentials ? strdup(credentials) : NULL,
                .done = done,
                .userdata = userdata,
                .next = fe->queries,
        };
        fe->queries = q;
        fe->n_queries++;
        *ret = q;
        return 0;
}

UpstreamQuery *upstream_query_free(UpstreamQuery *q) {
        if (!q)
                return NULL;
        for (UpstreamQuery **p = &q->fetcher->queries; *p; p = &(*p)->next)
                if (*p == q) {
                        *p = q->next;
                        break;
                }
        free(q->id);
        free(q->credentials);
        free(q);
        return NULL;
}

UpstreamQuery *fake_fetcher_query(Fetcher *fe, const char *id) {
        for (UpstreamQuery *q = fe->queries; q; q = q->next)
                if (streq(q->id, id))
                        return q;
        return NULL;
}

unsigned fake_fetcher_n_queries(Fetcher *fe) {
        return fe->n_queries;
}

const char *fake_query_credentials(const UpstreamQuery *q) {
        return q->credentials;
}

void fake_query_answer(UpstreamQuery *q, const UpstreamAnswer *a) {
        q->done(a, q->userdata);  /* frees q */
}

Fill *fill_ref(Fill *f) {
        if (f)
                f->n_ref++;
        return f;
}

Fill *fill_unref(Fill *f) {
        if (!f)
                return NULL;
        assert(f->n_ref > 0);
        if (--f->n_ref > 0)
                return NULL;
        assert(!f->subscriptions);
        safe_close(f->fd);
        free(f->id);
        free(f);
        return NULL;
}

const char *fill_image_id(const Fill *f) {
        return f->id;
}
void fill_subscription_consumed(FillSubscription *s, uint64_t offset) {
}

uint64_t fill_readable_from(const Fill *f) {
        return 0;
}

bool fill_has_headers(const Fill *f) {
        return f->state >= FILL_RECEIVING;
}

FillState fill_state(const Fill *f) {
        return f->state;
}
uint64_t fill_bytes_written(const Fill *f) {
        return f->written;
}
uint64_t fill_bytes_total(const Fill *f) {
        return f->total;
}
int fill_error(const Fill *f) {
        return f->error;
}
const char *fill_error_message(const Fill *f) {
        return f->error ? "fake failure" : NULL;
}
bool fill_kept(const Fill *f) {
        return f->kept;
}
int fetcher_query_range(Fetcher *fe, const Fill *f, uint64_t start, uint64_t length, UpstreamQueryDone done,
                        void *userdata, UpstreamQuery **ret) {
        return -EOPNOTSUPP; /* the scripted fetcher has no origin: ranges wait for the fill */
}
bool fill_from_peer(const Fill *f) {
        return false;
}
usec_t fill_started_usec(const Fill *f) {
        return 0;
}
ssize_t fill_pread(const Fill *f, void *buf, size_t size, uint64_t offset) {
        return pread_retry(f->fd, buf, size, offset);
}

void fill_cancel(Fill *f) {
        fake_fill_finish(f, -ECANCELED, false);
}

int fill_subscribe(Fill *f, const FillListener *l, void *userdata, FillSubscription **ret) {
        FillSubscription *s = calloc(1, sizeof(FillSubscription));
        if (!s)
                return -ENOMEM;
        *s = (FillSubscription) { .fill = f, .listener = *l, .userdata = userdata, .next = f->subscriptions };
        f->subscriptions = s;
        *ret = s;
        return 0;
}

FillSubscription *fill_subscription_free(FillSubscription *s) {
        if (!s)
                return NULL;
        for (FillSubscription **p = &s->fill->subscriptions; *p; p = &(*p)->next)
                if (*p == s) {
                        *p = s->next;
                        break;
                }
        free(s);
        return NULL;
}

unsigned fake_fetcher_n_started(Fetcher *fe) {
        return fe->n_started;
}

Fill *fake_fetcher_get(Fetcher *fe, const char *id) {
        for (Fill *f = fe->fills; f; f = f->next)
                if (streq(f->id, id))
                        return f;
        return NULL;
}

unsigned fake_fill_n_subscribers(Fill *f) {
        unsigned n = 0;
        for (FillSubscription *s = f->subscriptions; s; s = s->next)
                n += s->listener.on_data != NULL;  /* readers; the per-address count only waits for the end */
        return n;
}

/* Listeners may unsubscribe (free their subscription) from inside the call: walk a snapshot. */
static void notify(Fill *f, size_t offset) {
        FillSubscription *snapshot[256];
        unsigned n = 0;

        for (FillSubscription *s = f->subscriptions; s && n < 256; s = s->next)
                snapshot[n++] = s;

        for (unsigned i = 0; i < n; i++) {
                bool alive = false;
                for (FillSubscription *s = f->subscriptions; s; s = s->next)
                        alive = alive || s == snapshot[i];
                if (!alive)
                        continue;
                void (*cb)(Fill *, void *) = *(void (**)(Fill *, void *)) ((char *) &snapshot[i]->listener + offset);
                if (cb)
                        cb(f, snapshot[i]->userdata);
        }
}

void fake_fill_headers(Fill *f, uint64_t total) {
        assert(f->state == FILL_CONNECTING);
        f->state = FILL_RECEIVING;
        f->total = total;
        notify(f, offsetof(FillListener, on_headers));
}

void fake_fill_write(Fill *f, const void *data, size_t size) {
        assert(f->state == FILL_RECEIVING);
        assert(pwrite(f->fd, data, size, (off_t) f->written) == (ssize_t) size);
        f->written += size;
        notify(f, offsetof(FillListener, on_data));
}

void fake_fill_finish(Fill *f, int error, bool keep) {
        assert(!fill_state_is_final(f->state));

        if (error == 0 && keep && f->fetcher) {
                CacheWrite *w = NULL;
                char buf[65536];
                uint64_t off = 0;

                assert(image_cache_begin_write(f->fetcher->cache, f->id, NULL, &w) == 0);
                while (off < f->written) {
                        ssize_t k = pread(f->fd, buf, MIN(sizeof(buf), f->written - off), (off_t) off);
                        assert(k > 0);
                        assert(cache_write_append(w, buf, (size_t) k) == 0);
                        off += (uint64_t) k;
                }
                assert(image_cache_commit_write(f->fetcher->cache, w) == 0);
                f->kept = true;
        }

        f->state = error == 0 ? FILL_DONE : error == -ECANCELED ? FILL_CANCELLED : FILL_FAILED;
        f->error = error;
        notify(f, offsetof(FillListener, on_finished));
}

/* ---- what the server asks of the fleet tier: these tests run without a [Fleet] ---- */

int fetcher_fill_full(Fetcher *fe, const char *id, const Checksum *expected, FetchFlags flags, Fill **ret) {
        return fetcher_fill(fe, id, expected, ret);
}

CurlLoop *fetcher_curl(const Fetcher *fe) {
        return NULL;
}

bool fill_expected(const Fill *f, Checksum *ret) {
        return false; /* the scripted fills announce no digest */
}

const char *fleet_token(const Fleet *f) {
        assert(false); /* no HttpServer here is given a fleet */
        return NULL;
}

int fleet_query_holders(Fleet *f, CurlLoop *curl, ImageCache *cache, const char *id, FleetQueryDone done,
                        void *userdata, FleetQuery **ret) {
        assert(false);
        return -EOPNOTSUPP;
}

int fleet_tell_gone(Fleet *f, CurlLoop *curl, const char *id, FleetQueryDone done, void *userdata, FleetQuery **ret) {
        assert(false);
        return -EOPNOTSUPP;
}

FleetQuery *fleet_query_free(FleetQuery *q) {
        assert(!q);
        return NULL;
}

/* No pass-through here: the scripted fetcher has no upstream to pass to (tests/glance has the real one). */
int fetcher_wait_address(Fetcher *fe, void (*ready)(Fetcher *fe, int error, void *userdata), void *userdata,
                         FetcherAddressWait **ret) {
        *ret = NULL;
        return -ENXIO;
}

FetcherAddressWait *fetcher_address_wait_free(FetcherAddressWait *w) {
        return NULL;
}

int fetcher_exchange(Fetcher *fe, UpstreamExchange *x) {
        return -ENXIO;
}

const char *fetcher_upstream_url(const Fetcher *fe) {
        return NULL;
}

/* A peer's request (http-peer.c): never made here, as no request carries the peer secret of a fleet. */
const char *fleet_self(const Fleet *f) {
        assert(false);
        return NULL;
}

char *fleet_path_of(const Fleet *f, const char *id) {
        assert(false);
        return NULL;
}

const char *fill_peer_path(const Fill *f) {
        return NULL;
}

FleetFanout *fleet_fanout(const Fleet *f) {
        assert(false);
        return NULL;
}

FanoutVerdict fleet_fanout_admit(FleetFanout *t, const char *id, const char *asker, char *const *via,
                                 FanoutStream **ret_stream, const char **ret_node) {
        assert(false);
        return FANOUT_REFUSE;
}

void fleet_fanout_release(FleetFanout *t, FanoutStream *s) {
        assert(!s);
}

char **fleet_split_nodes(const char *list) {
        assert(false);
        return NULL;
}

bool fleet_nodes_contain(char *const *nodes, const char *node) {
        assert(false);
        return false;
}
