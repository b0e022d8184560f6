/* SPDX-License-Identifier: MIT */
#pragma once

/* What the parts of the fetcher share; nothing outside them includes this.
 *
 *   fetcher.c      the Fetcher: configuration, the table of fills, parallel slots, observers, queries
 *   fill.c         one fill as an explicit state machine (FillStep below); knows no curl
 *   fill-curl.c    the transport of a fill's requests over the CurlLoop (FillTransport)
 *   fill-response.c  what a response's status and headers mean for a fill (pure functions)
 *   fill-notify.c  subscriptions and the coalesced delivery of news to them
 *
 * Everything runs on the event loop. The transport calls fill_on_headers() and fill_on_body() from
 * inside curl's callbacks: those only look at memory and answer; whatever needs I/O or calls back
 * into curl (making room, opening the write, the next request) happens on the loop, in the state
 * that waits for it. */

#include <glib.h>

#include "curl-easy.h"
#include "curl-loop.h"
#include "fetch.h"
#include "fill-writer.h"
#include "fleet.h"
#include "keystone.h"
#include "upstream.h"
#include "worker.h"

#define FETCH_MAX_REDIRECTS 10
/* Bytes one fill may take in one turn of the event loop. curl reads for as long as the socket has data,
 * and a fast upstream always has data: without a budget one transfer would keep the loop for hundreds
 * of milliseconds, holding up every HTTP client and D-Bus call meanwhile. */
#define FETCH_TURN_BUDGET (1024UL * 1024UL)

/* The fill's state machine. fill_state() shows callers a coarser view (FillState, fetch.h); the table
 * fill_step_state in fill.c maps one to the other. */
typedef enum FillStep {
        STEP_WAITING,         /* for a parallel slot (MaxParallelFetches) */
        STEP_REQUESTING,      /* a request is out (the Glance record or the image), no body yet */
        STEP_READING_RECORD,  /* Glance: the image record's body is coming in */
        STEP_REDIRECTED,      /* a 3xx: its body is discarded; its end starts the request it names */
        STEP_RESTARTING,      /* the partial file cannot be continued: this body is discarded; its end
                               * drops the partial file and asks for the whole image */
        STEP_REAUTHENTICATING, /* a 401 to our token: its body is discarded; its end re-reads TokenFile=
                                * and asks again, once, if the token changed */
        STEP_ADMITTING,       /* the image's headers are accepted and the transfer held; on the loop:
                               * make room, open the write (fill_admit) */
        STEP_REHASHING,       /* resuming: a worker rebuilds the digest of the bytes on disk; held */
        STEP_RECEIVING,       /* the body goes to the writer */
        STEP_RESUMING,        /* inside the transport's resume, which hands back the bytes it held:
                               * all are taken (libcurl 7.88 spins if paused again meanwhile) */
        STEP_PAUSED_TURN,     /* held: this turn's budget is spent; a defer source resumes it */
        STEP_PAUSED_WRITER,   /* held: the writer's queue is full; its progress resumes it */
        STEP_DRAINING,        /* the body is complete; the writer is still writing */
        STEP_SEALING,         /* a worker verifies, fsyncs and renames into place */
        STEP_ABORTING,        /* an error was recorded inside the transport's callbacks before the image's
                               * body: the transport ends the transfer, and its end moves on */
        STEP_ABORTING_BODY,   /* the same, while the image's body was coming in */
        STEP_FAILING,         /* an error was recorded while a worker holds the write: its end moves on */
        STEP_DONE,
        STEP_FAILED,
        STEP_CANCELLED,
        _STEP_MAX,
} FillStep;

const char *fill_step_to_string(FillStep s);

typedef enum FillPhase {
        PHASE_RECORD,  /* Glance: GET {URL}/v2/images/<id> */
        PHASE_IMAGE,
} FillPhase;

/* One request of a fill, as the transport is to make it. */
typedef struct FillRequest {
        const char *url;
        const char *token;       /* X-Auth-Token; NULL when none or when url is another origin */
        bool json;               /* Accept: application/json (the record) */
        uint64_t range_start;    /* > 0: Range: bytes=N- with If-Range: if_range */
        const char *if_range;
        uint64_t max_body;       /* refuse a body larger than this; UINT64_MAX: no bound */
        const char *peer_self;   /* a peer's request: our URL (the loop guard) and the peer secret */
        const char *peer_token;
        const char *peer_via;    /* a peer's request after a redirect (FLEET_HEADER_VIA), else NULL */
} FillRequest;

/* What the transport saw of a response when its body starts (or it ends without one). Borrowed. */
typedef struct FillResponse {
        long status;
        uint64_t content_length;   /* UINT64_MAX: not given */
        const char *effective_url;
        const char *location;      /* of a 3xx, absolute */
        const char *etag, *content_md5, *digest, *repr_digest, *content_range;
        const char *peer_redirect, *peer_path; /* a peer's FLEET_HEADER_REDIRECT and FLEET_HEADER_PATH */
} FillResponse;

/* What the transport does with the bytes it was offered. */
typedef enum FillIntake {
        INTAKE_TAKEN,    /* all of them */
        INTAKE_SKIPPED,  /* dropped, as this body does not matter (a redirect, a restart) */
        INTAKE_HOLD,     /* none; pause the transfer until fill_transport.resume() */
        INTAKE_ABORT,    /* none; end the transfer (the fill has recorded why) */
} FillIntake;

/* The side of a fill that talks to the upstream. start() makes the request and later, on the loop,
 * calls fill_on_transfer_end() once (unless stop() came first); in between, the bytes of the response
 * go to fill_on_headers() (once, before the first byte, also for an empty body) and fill_on_body().
 * resume() lets a held transfer go on and may hand back held bytes before it returns. The curl one is
 * fill_curl_transport; tests script their own. */
typedef struct FillTransport {
        int (*start)(Fill *f, const FillRequest *r);
        void (*resume)(Fill *f);
        void (*stop)(Fill *f);
        void *userdata;
} FillTransport;

extern const FillTransport fill_curl_transport;
/* Same scheme, host and port (curl's URL parser): a token goes to the configured origin only. */
bool url_same_origin(const char *a, const char *b);

struct FillSubscription {
        Fill *fill;          /* a reference */
        FillListener listener;
        void *userdata;
        uint64_t position;   /* a reader: it has read the image up to here (fill_subscription_consumed()) */
        bool headers_sent, finished_sent, dead;
        FillSubscription *prev, *next;
};

struct Fill {
        unsigned n_ref;
        Fetcher *fetcher;        /* NULL once the fetcher is gone */
        char *id;
        FillStep step;
        usec_t started_usec;     /* CLOCK_MONOTONIC when created */

        bool has_caller_expected;
        Checksum caller_expected;

        /* Where the image comes from: the peers in sources (fleet.h), in order, then the origin. */
        FetchFlags flags;
        char **sources;          /* base URLs of peers; NULL: none */
        size_t source;           /* the one asked now; == the number of sources: the origin */
        char *peer_node;         /* a node sources[source] pointed at (fan-out), asked instead of it; NULL */
        char *next_peer;         /* REDIRECTED by a peer: the node to ask next */
        char **via;              /* since sources[source] was first asked: the nodes that pointed us on or
                                  * failed us there (FLEET_HEADER_VIA; a request with one never starts a fill) */
        unsigned hops;           /* redirects of peers followed since then (FLEET_MAX_HOPS) */
        char *peer_path;         /* the peer whose bytes we take and its own path (FLEET_HEADER_PATH) */
        bool switched;           /* a source failed after admission: the next continues the partial file */
        uint64_t switched_total; /* the length subscribers were promised before the switch */
        sd_event_source *first_byte; /* a peer must answer within PeerTimeoutSec= */
        sd_event_source *stall;  /* LowSpeedTimeoutSec=: no byte from the transfer for that long ends it */
        usec_t progress_usec;    /* CLOCK_MONOTONIC of the transfer's last byte (or of its start, or of the
                                  * end of a hold of ours) */

        /* The current request. */
        FillPhase phase;
        char *phase_url;         /* first URL of the phase: redirects to another origin lose the token */
        char *next_url;          /* REDIRECTED: where to */
        char *request_url;       /* of the request that is out */
        uint64_t token_generation; /* of the token that request carried */
        bool reauthenticated;    /* asked again with a re-read token already: a second 401 is final */
        char *refusal;           /* REAUTHENTICATING: the error, should the token not have changed */
        unsigned redirects;
        bool send_token;
        bool has_slot;           /* counts against MaxParallelFetches */
        void *transfer;          /* the transport's; NULL when no transfer is running */

        /* The Glance record. */
        char *record_buf;
        size_t record_len;
        bool has_record;
        UpstreamRecord record;

        /* Resume. */
        uint64_t resume_offset;  /* asked for with Range; 0: a whole download */
        char *resume_etag;
        bool no_resume;

        /* The image: what the accepted headers said, then the body. */
        char *etag;
        uint64_t body_offset;    /* where the response's body starts in the file */
        bool has_expected;
        Checksum expected;
        uint64_t bytes_written, bytes_total, cap;
        CacheWrite *write;       /* NULL before admission, after the end, and while the writer owns it
                                  * (fill_writer_free() hands it back); a worker (REHASHING, SEALING)
                                  * only borrows it: non-NULL until its done() runs */
        FillWriter *writer;      /* from admission until the body is all on disk */
        Worker *worker;          /* REHASHING, SEALING */
        int read_fd;
        bool too_large;          /* cannot be kept: streamed through memory (a streaming writer), never on
                                  * disk, ended when its last reader leaves */
        bool kept;
        uint64_t turn;           /* the Fetcher turn that turn_bytes counts for */
        size_t turn_bytes;
        sd_event_source *admit;  /* ADMITTING: runs fill_admit() on the loop */

        int error;               /* set with the step that leaves for it (fill_fail, fill_abort) */
        char *error_message;

        /* Notifications. */
        bool data_pending;
        bool notify_queued;
        bool observer_finished;
        unsigned n_dispatching;
        FillSubscription *subs, *subs_tail;
};

struct Fetcher {
        sd_event *event;
        ImageCache *cache;
        CurlLoop *curl;
        const FillTransport *transport;
        sd_event_source *dispatch;

        /* Configuration. */
        UpstreamKind kind;
        char *url;
        char *token;
        char *token_file;
        Keystone *keystone;        /* Auth=keystone: where token comes from; NULL with Auth=token */
        char *configured_url;      /* URL= as configured; with Keystone and none, url is the catalog's */
        GQueue token_waiters;      /* Fill* (a reference each), REAUTHENTICATING until Keystone answers */
        GQueue address_waiters;    /* FetcherAddressWait* (the callers'), waiting for Keystone's catalog
                                    * to name the upstream (URL= unset) */
        uint64_t token_generation; /* bumped whenever token changes */
        usec_t token_read_at;     /* CLOCK_MONOTONIC of the last re-read after a 401 */
        TransportSettings transport_settings; /* of every request: fills, queries, Keystone's, the fleet's */
        unsigned max_parallel;
        SizeLimit max_size, keep_free;
        bool enforce_max_size;

        GHashTable *fills;        /* id → Fill* (a reference): fills not final */
        GHashTable *all;          /* Fill*: every fill alive, final or not (to detach them at free) */
        GQueue pending;           /* Fill*, FIFO, waiting for a slot */
        GQueue notify;            /* Fill* (a reference each), to dispatch */
        GQueue yielded;           /* Fill* (a reference each), PAUSED_TURN until the loop has turned */
        sd_event_source *resume;  /* defer: resumes the yielded fills */
        uint64_t resumes;         /* turns of the loop that resumed fills (on top of the CurlLoop's) */
        unsigned n_slots_used;
        FetcherObserver *observers;
        bool freeing;

        Fleet *fleet;             /* borrowed */
        FleetCounters fleet_counters;
};

/* For tests: a fetcher whose fills talk through transport instead of curl. */
int fetcher_new_with_transport(sd_event *event, ImageCache *cache, const Config *config,
                               const FillTransport *transport, Fetcher **ret);

/* fetcher.c, for fill.c */
uint64_t fetcher_turn(const Fetcher *fe);
void fetcher_yield(Fetcher *fe, Fill *f);
void fetcher_release_slot(Fetcher *fe);
/* f reached a final step: out of the table (and of the queue for a slot, when it was waiting). */
void fetcher_fill_finished(Fetcher *fe, Fill *f, bool was_waiting);
void fetcher_tell_finished(Fetcher *fe, Fill *f);  /* the observers, after the subscribers */
/* Admission: evicts images so that incoming bytes fit within max_size (the fill's cap when
 * EnforceMaxSize=yes, else UINT64_MAX) and KeepFree. */
void fetcher_make_room(Fetcher *fe, const char *id, uint64_t incoming, uint64_t max_size);
/* The upstream refused our token: re-reads TokenFile= (at most once a second for all fills), so that a
 * rotated token is used without a reload. fe->token_generation says whether it changed. */
void fetcher_refresh_token(Fetcher *fe);
/* Auth=keystone: f was refused; fill_token_refreshed(f) follows once Keystone answered (or the fill
 * fails). Returns false with Auth=token, where fetcher_refresh_token() answers at once. */
bool fetcher_wait_for_token(Fetcher *fe, Fill *f);
/* Whether a 401 to the daemon's token is worth a second try (TokenFile= or Keystone), and what to check. */
bool fetcher_may_reauthenticate(const Fetcher *fe);
const char *fetcher_credentials_hint(const Fetcher *fe);

/* fill.c, for fetcher.c */
Fill *fill_new(Fetcher *fe, const char *id, const Checksum *expected, FetchFlags flags);
void fill_start(Fill *f);                  /* WAITING → the first request; takes a slot */
void fill_resume_transfer(Fill *f);        /* PAUSED_TURN → RECEIVING */
void fill_abandon(Fill *f);                /* the fetcher is going: finish now, workers completed */
void fill_token_refreshed(Fill *f);        /* REAUTHENTICATING: a new token is there, ask again */
void fill_fail_with(Fill *f, int error, const char *message); /* WAITING or REAUTHENTICATING: no token */

/* Errors are transitions: each of these records why (the first cause wins) and leaves the step in the
 * same call. fill_fail(), on the loop: to the next source, to FAILING while a worker holds the write, or
 * to FAILED/CANCELLED. fill_abort(), inside the transport's callbacks (which may not call back into the
 * transport): to ABORTING, and returns INTAKE_ABORT for the transport, whose end of the transfer moves
 * on as fill_fail() would. Both return the error. */
_printf_(3, 4) int fill_fail(Fill *f, int error, const char *fmt, ...);
_printf_(3, 4) FillIntake fill_abort(Fill *f, int error, const char *fmt, ...);

/* fill.c, for the transport */
FillIntake fill_on_headers(Fill *f, const FillResponse *r);
FillIntake fill_on_body(Fill *f, const void *data, size_t n);
/* The transfer ended: error 0, or -errno with message (naming the image) for people. */
void fill_on_transfer_end(Fill *f, int error, const char *message);

/* fill-response.c */
typedef enum ResponseVerdict {
        VERDICT_BODY,       /* the record's or the image's body follows */
        VERDICT_REDIRECT,   /* follow response->location */
        VERDICT_PEER,       /* a peer at its FanOut= points at another node (f->next_peer set) */
        VERDICT_RESTART,    /* not the continuation asked for: download the whole image */
        VERDICT_REAUTH,     /* 401 to our token: ask again if TokenFile= now holds another (f->refusal set) */
        VERDICT_ERROR,      /* fill_abort() was called */
} ResponseVerdict;
ResponseVerdict fill_judge_response(Fill *f, const FillResponse *r);
void fill_choose_expected(Fill *f, const FillResponse *r);

/* fill-notify.c */
void fill_schedule(Fill *f);
void fill_dispatch(Fill *f);
bool fill_streams(const Fill *f);  /* some subscriber reads the bytes (rather than wanting them kept) */
/* A fill too large to keep with no reader left is cancelled from fill_dispatch(), with why. */
void fill_cancel_for(Fill *f, const char *why);
