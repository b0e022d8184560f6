/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "checksum.h"
#include "config.h"
#include "store.h"
#include "upstream-exchange.h"
#include "upstream-query.h"

/* Filling the cache from the upstream: one libcurl multi handle driven by sd-event, one Fill per image
 * however many parties want it (a D-Bus job, HTTP clients, prefetch). A Fill writes incomplete/<id>
 * through the store (hashing as it goes), then seals (verify + fsync + rename, on a worker thread) and
 * commits. Readers stream the growing image through fill_pread() as bytes arrive.
 *
 * Lifetime: the Fetcher owns running fills; callers hold references (fill_ref/fill_unref) and
 * subscriptions. A Fill that finished stays valid for as long as someone holds a reference. */

typedef struct Fetcher Fetcher;
typedef struct Fill Fill;
typedef struct FillSubscription FillSubscription;

typedef enum FillState {
        FILL_PENDING,    /* waiting for a parallel slot (MaxParallelFetches) */
        FILL_CONNECTING, /* request sent, no response headers yet */
        FILL_RECEIVING,  /* headers accepted, body being written */
        FILL_SEALING,    /* body complete; verifying, fsyncing, renaming on a worker thread */
        FILL_DONE,       /* verified and committed (or streamed through when too large to keep) */
        FILL_FAILED,
        FILL_CANCELLED,
        _FILL_STATE_MAX,
        _FILL_STATE_INVALID = -EINVAL,
} FillState;

const char *fill_state_to_string(FillState s);
static inline bool fill_state_is_final(FillState s) {
        return s >= FILL_DONE;
}

/* Errors a failed fill reports through fill_error(), so callers can map them (HTTP status, D-Bus
 * error name) without parsing messages:
 *   -ENOENT     the upstream does not have the image (404, or a Glance record that is not active)
 *   -EBADMSG    the digest or the length did not match what was expected
 *   -EFBIG      larger than the upstream size cap / MaxSize admits
 *   -ENOSPC     the cache filesystem is full
 *   -ECANCELED  cancelled (fill_cancel, or daemon shutdown)
 *   -EPROTO     the upstream answered badly (5xx, 401, a bad redirect, a short body, a reset)
 *   -ETIMEDOUT  connect or low-speed timeout
 * fill_error_message() says the same for people, naming the image and what went wrong. */

typedef struct FillListener {
        /* Response headers accepted: fill_bytes_total() is known if the upstream sent a length. */
        void (*on_headers)(Fill *f, void *userdata);
        /* More bytes were written; coalesced, so one call may stand for many writes. */
        void (*on_data)(Fill *f, void *userdata);
        /* The fill reached a final state. Called once; the subscription stays valid until freed. */
        void (*on_finished)(Fill *f, void *userdata);
        /* This subscriber wants the image in the cache, not its bytes (a D-Bus job, a prefetch). An image
         * larger than MaxSize is streamed through without being kept only while some subscriber without
         * this flag (an HTTP client) is reading; otherwise the fill fails with -EFBIG before writing. */
        bool requires_kept;
} FillListener;

/* Observers of the fetcher as a whole (jobs, idle accounting, metrics, logging),  told of every fill in
 * no particular order. The struct is borrowed: it must stay valid until removed. */
typedef struct FetcherObserver FetcherObserver;
struct FetcherObserver {
        void (*fill_started)(Fetcher *fe, Fill *f, void *userdata);
        void (*fill_finished)(Fetcher *fe, Fill *f, void *userdata);
        void *userdata;
        FetcherObserver *observers_prev, *observers_next; /* the Fetcher's list */
};

int fetcher_new(sd_event *event, ImageCache *cache, const Config *config, Fetcher **ret);
Fetcher *fetcher_free(Fetcher *fe); /* cancels running fills */
static inline void fetcher_freep(Fetcher **fe) {
        fetcher_free(*fe);
}
/* Applies a reloaded configuration to fills started from now on. */
int fetcher_reconfigure(Fetcher *fe, const Config *config);
void fetcher_add_observer(Fetcher *fe, FetcherObserver *o);
void fetcher_remove_observer(Fetcher *fe, FetcherObserver *o);
bool fetcher_has_upstream(const Fetcher *fe);
unsigned fetcher_n_active(const Fetcher *fe);  /* fills not yet final */

/* The running fill of id, or a new one. Returns a new reference. -EEXIST when the image is cached
 * already, -ENXIO when no upstream is configured, -EINVAL for a bad id. expected may be NULL. */
int fetcher_fill(Fetcher *fe, const char *id, const Checksum *expected, Fill **ret);
/* The same, for a fill that must go to the origin only when it is new: the request of a peer in the
 * fleet (fleet.h), which must never be forwarded again. A running fill is joined as it is. */
typedef enum FetchFlags {
        FETCH_ORIGIN_ONLY = 1 << 0,
} FetchFlags;
int fetcher_fill_full(Fetcher *fe, const char *id, const Checksum *expected, FetchFlags flags, Fill **ret);

/* The fleet whose peers fills ask before the origin (borrowed; NULL: none). */
typedef struct Fleet Fleet;
void fetcher_set_fleet(Fetcher *fe, Fleet *fleet);
typedef struct FleetCounters {
        uint64_t bytes_from_peers;    /* image bytes that came from peers */
        uint64_t bytes_from_origin;   /* image bytes that came from the upstream */
        uint64_t fills_from_peers;    /* images kept that a peer supplied: origin fetches saved */
        uint64_t peer_failovers;      /* a peer failed and the fill went on with the next source */
        uint64_t redirects_followed;  /* a peer at its FanOut= pointed a fill at another node, which it asked */
        unsigned tree_depth;          /* the longest path of peers an image came through (1: from the owner) */
} FleetCounters;
const FleetCounters *fetcher_fleet_counters(const Fetcher *fe);
CurlLoop *fetcher_curl(const Fetcher *fe);
/* The running fill of id, or NULL; no new reference. */
Fill *fetcher_find(const Fetcher *fe, const char *id);
/* Asks the upstream about id without fetching it (upstream-query.h): with credentials (a whole header
 * line, an HTTP client's), or with the daemon's own token when NULL. -ENXIO without an upstream. */
int fetcher_query(Fetcher *fe, const char *id, const char *credentials, UpstreamQueryDone done, void *userdata,
                  UpstreamQuery **ret);
/* Whatever must be sent to the upstream waits here for its address when that is not known yet (URL=
 * unset: the catalog of the daemon's first Keystone token names it): ready is called once, from the loop,
 * with 0 (fetcher_upstream_url() says it now) or Keystone's error; the wait is freed after ready returns.
 * Returns 0 with *ret NULL when the address is known (nothing to wait for), 0 with *ret set when waiting
 * (free *ret to stop waiting: ready is not called then), -ENXIO when there is no upstream. */
typedef struct FetcherAddressWait FetcherAddressWait;
int fetcher_wait_address(Fetcher *fe, void (*ready)(Fetcher *fe, int error, void *userdata), void *userdata,
                         FetcherAddressWait **ret);
FetcherAddressWait *fetcher_address_wait_free(FetcherAddressWait *w);
/* Sends an exchange passed through for a client (upstream-exchange.h) to the upstream, with only the
 * client's headers; the address must be known (fetcher_wait_address()). */
int fetcher_exchange(Fetcher *fe, UpstreamExchange *x);
/* The upstream's base URL (URL=, or the catalog's), or NULL while unknown. */
const char *fetcher_upstream_url(const Fetcher *fe);
/* Asks the origin, with the daemon's credentials, for length bytes at start of the image f is filling,
 * of the same representation (If-Range with the fill's strong ETag, and the length checked, once the
 * fill has them; a fill waiting for a slot has neither, and the answer's length is the origin's): bytes
 * far ahead of the fill. The answer holds them (UpstreamAnswer.data, .size the image's length). */
int fetcher_query_range(Fetcher *fe, const Fill *f, uint64_t start, uint64_t length, UpstreamQueryDone done,
                        void *userdata, UpstreamQuery **ret);

Fill *fill_ref(Fill *f);
Fill *fill_unref(Fill *f);
static inline void fill_unrefp(Fill **f) {
        fill_unref(*f);
}

const char *fill_image_id(const Fill *f);
FillState fill_state(const Fill *f);
uint64_t fill_bytes_written(const Fill *f);
uint64_t fill_bytes_total(const Fill *f);      /* UINT64_MAX while unknown */
int fill_error(const Fill *f);                 /* 0 unless FAILED/CANCELLED */
const char *fill_error_message(const Fill *f); /* NULL unless FAILED/CANCELLED */
bool fill_kept(const Fill *f);                 /* DONE and stored (false: streamed through, too large) */
bool fill_from_peer(const Fill *f);            /* the image's bytes are asked of a peer now, not the origin */
/* The node the image's bytes are asked of now: a peer's URL, or NULL for the origin. */
const char *fill_peer(const Fill *f);
/* The nodes the image's bytes come through once its headers are accepted, the parent first ("a b");
 * NULL when they come from the origin. */
const char *fill_peer_path(const Fill *f);
usec_t fill_started_usec(const Fill *f);       /* CLOCK_MONOTONIC when the fill was created */
/* The image's response headers were accepted and its bytes can be read (fill_pread()), or the fill
 * ended: what a reader waits for before it decides its response. on_headers and on_finished tell of it. */
bool fill_has_headers(const Fill *f);
/* The digest the fill verifies against, once its headers are accepted; false while none is known. */
bool fill_expected(const Fill *f, Checksum *ret);
/* Reads the image's bytes at offset, up to fill_bytes_written(), wherever they are (on disk, or still
 * gathered in memory); valid for the fill's whole life (the file survives the rename into place and the
 * unlink of a too-large image). Returns the bytes read, 0 at the end, -EBADF until on_headers (nothing is
 * written before the response headers are accepted), or -errno. */
ssize_t fill_pread(const Fill *f, void *buf, size_t size, uint64_t offset);
void fill_cancel(Fill *f);

/* Listeners are called on the event loop, never from inside curl callbacks. */
int fill_subscribe(Fill *f, const FillListener *l, void *userdata, FillSubscription **ret);
FillSubscription *fill_subscription_free(FillSubscription *s);
/* A reader has read the image up to offset (and will not read before it): a fill too large to keep
 * frees its bytes once every reader is past them. */
void fill_subscription_consumed(FillSubscription *s, uint64_t offset);
/* The first offset fill_pread() can still read: 0, but for an image streamed through (too large to keep)
 * whose readers were all past it. A reader that needs earlier bytes cannot be served by this fill. */
uint64_t fill_readable_from(const Fill *f);
static inline void fill_subscription_freep(FillSubscription **s) {
        fill_subscription_free(*s);
}
