/* SPDX-License-Identifier: MIT */
#pragma once

/* What the files of the HTTP server (http*.c) share; not for the rest of the daemon, which sees http.h.
 * Everything here runs on the event loop's thread. The files call downwards only:
 *
 *   http.c          routing, hits, management, the MHD callbacks, re-entering a request at its wait
 *     http-peer.c   a peer's request before it is served: the fan-out (FanOut=), the loop guard
 *     http-pass.c   a request of Glance's API passed through to the upstream (PassThrough=)
 *     http-miss.c   a miss: the fill, its waits (headers, a HEAD's probe, a range asked of the origin)
 *       http-stream.c   the body of a miss, read from the fill as it lands
 *         http-request.c  the request's lifecycle: wait, wake, the one teardown of a wait
 *         http-response.c building and queueing responses */

#include <errno.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include "access-log.h"
#include "fetch.h"
#include "fleet.h"
#include "hit-cache.h"
#include "http-limits.h"
#include "http-util.h"
#include "http.h"
#include "read-guard.h"
#include "ttl-cache.h"
#include "upstream-query.h"

/* The body of a miss being sent: the fill it reads and the request it is for. Made when a miss starts;
 * the request owns it while it waits for the fill's headers (REQUEST_WAIT_FILL_HEADERS) or for the
 * origin's answer to a range (REQUEST_WAIT_ORIGIN_RANGE, as the fallback), and the MHD response owns it
 * once queued, and frees it. Fill events wake the request when it waits on this stream. */
typedef struct Request Request;
typedef struct Stream Stream;
typedef struct Pass Pass;
typedef struct GoneCheck GoneCheck;
typedef struct GoneNotice GoneNotice;
struct Stream {
        HttpServer *server;
        Fill *fill;
        FillSubscription *subscription;
        bool close_delimited; /* no length and no chunked encoding (HTTP/1.0): the body ends with the connection */
        bool awaited;      /* the request waits on it (http_stream_wait()): the fill's next event wakes it */
        uint64_t offset;   /* file offset of the first body byte */
        uint64_t end;      /* file offset after the last body byte; UINT64_MAX: wherever the fill ends */
        Request *request;  /* whose connection it answers and whose streamed counts the bytes; the reader
                            * runs, and the stream is awaited, only during that request */
        Stream *streams_prev, *streams_next;
};

/* What a request waits for, with its connection suspended: one thing at a time. A wait is entered with
 * http_request_wait() once its pending object is in Request.pending; the answer is kept there and the
 * request woken (http_request_wake()). http_on_request() then re-enters the request at its wait: it
 * takes the pending object out, hands it to that wait's step, and frees what the step left (http.c,
 * request_pending_free(): the one free of every pending object, also when the client goes away or the
 * server stops). REQUEST_WAIT_FILL_BYTES keeps nothing and ends when woken: MHD re-enters the content
 * reader. */
typedef enum RequestWait {
        REQUEST_WAIT_NONE,
        REQUEST_WAIT_READ,          /* may this client read the image? (read-guard.c) */
        REQUEST_WAIT_PROBE,         /* a HEAD of an image nobody fetches: the upstream's metadata */
        REQUEST_WAIT_HOLDERS,       /* GET /v2/cache/nodes/<id>: the answers of the fleet's nodes */
        REQUEST_WAIT_FILL_HEADERS,  /* a miss: its fill's response headers, or its end */
        REQUEST_WAIT_ORIGIN_RANGE,  /* a range the fill cannot answer soon, asked of the origin */
        REQUEST_WAIT_FILL_BYTES,    /* a miss being sent: the fill's next bytes (in the content reader) */
        REQUEST_WAIT_PASS_UPLOAD,   /* a pass-through: room for the client's body (http-pass.c) */
        REQUEST_WAIT_PASS_HEADERS,  /* a pass-through: the upstream's answer */
        REQUEST_WAIT_PASS_BYTES,    /* a pass-through being sent: the upstream's next bytes (content reader) */
        _REQUEST_WAIT_MAX,
        _REQUEST_WAIT_INVALID = -EINVAL,
} RequestWait;

/* The object each wait is on, and the answer it keeps until the request is re-entered. */
typedef union RequestPending {
        struct {
                ReadCheck *check;      /* NULL once answered (the guard frees it) */
                int verdict;           /* 0: may read; else the status of the refusal */
        } read;
        struct {
                UpstreamQuery *query;
                UpstreamAnswer answer;
        } probe;
        struct {
                FleetQuery *query;
                char **holders;        /* NULL until answered */
        } holders;
        struct {
                Stream *stream;        /* FILL_HEADERS: the request's; FILL_BYTES: the response's */
        } fill;
        struct {
                UpstreamQuery *query;  /* counted in HttpServer.n_range_queries while not NULL */
                UpstreamAnswer answer;
                Stream *stream;        /* the fill's, to fall back on */
                uint64_t start, length;
        } range;
} RequestPending;

/* Per request; lives inside the connection's context, so a hit allocates nothing of ours. */
struct Request {
        HttpServer *server;
        struct MHD_Connection *connection;
        HttpRouteMatch match;
        HttpMethod method;
        bool begun;            /* the headers were read and routed (request_begin()) */
        bool http10;           /* an HTTP/1.0 client: no chunked encoding */
        bool bad_target;       /* the decoded target held a control byte */
        bool from_peer;        /* a node of the fleet asks (fleet.h): the peer secret was checked */
        bool peer_join;        /* ... pointed here by another node (FLEET_HEADER_VIA): it starts no fill */
        FanoutStream *fanout_stream; /* ... counted against FanOut= until the request completes */
        bool range_asked;      /* the origin was asked for a range once: never again for this request */
        bool body_announced;   /* a Content-Length other than 0, or a Transfer-Encoding */
        char client[PEER_KEY_MAX]; /* http_request_client(): the client's address, once asked for */
        bool forwarded;        /* client is what a trusted proxy's X-Forwarded-For names */
        unsigned retry_after;  /* a refusal's Retry-After, in seconds */
        const char *framing_problem; /* http_request_framing(): why the framing is ambiguous, or NULL */

        Pass *pass;            /* passed through to the upstream (http-pass.c): the request owns it until its
                                * response does, and each lets go of the other when it ends */
        RequestWait wait;      /* REQUEST_WAIT_NONE, or until re-entered at it */
        RequestPending pending;
        bool suspended;        /* in HttpServer.waiting: the connection is suspended */
        Request *waiting_prev, *waiting_next;

        /* The response queued, for the access log and the counters. */
        unsigned status;       /* 0: none (yet) */
        uint64_t body_size;    /* of a body of known size (not a miss's stream) */
        bool count_body;       /* count body_size as served from source when the response completes */
        ServeSource source;
        uint64_t streamed;     /* body bytes of a miss handed to MHD */

        /* For the access log. The strings are MHD's, valid until the request completes. */
        const char *url, *method_name, *version;
        usec_t start;          /* CLOCK_MONOTONIC of the first access-handler call; 0: AccessLog=no */
        AccessLogCache cache;
};

typedef struct HttpConnection {
        HttpServer *server;
        Request request;
        char address[PEER_KEY_MAX]; /* counted in HttpServer.connection_counts; "": not counted */
        HeaderDeadline header;   /* armed while a request's headers are being read */
        bool bad_target;         /* set by the unescape callback for the request being read */
        /* The request target as sent (PassThrough=; MHD decodes its own copy in place): in target_inline
         * when it fits, so that reading image data allocates nothing, else in target_heap. NULL: none. */
        const char *target;
        char target_inline[256];
        char *target_heap;
} HttpConnection;

/* A fill a client address started, counted against MaxFetchesPerIP= until it ends. It lets go of the
 * fill as soon as it ends: a reference held longer would keep the fill's file open, deleted or not. */
typedef struct PeerFill PeerFill;
struct PeerFill {
        HttpServer *server;
        FillSubscription *subscription;
        char key[PEER_KEY_MAX];
        PeerFill *peer_fills_prev, *peer_fills_next;
};

struct HttpServer {
        sd_event *event;
        ImageCache *cache;
        Fetcher *fetcher;
        const Config *config;
        const HttpOperations *ops;  /* the daemon's: counters and every change to the cache */
        void *userdata;             /* of ops */

        bool management_api;
        bool pass_through;      /* PassThrough=yes with Kind=glance: Glance's API beyond image data */
        char *token;            /* NULL: every management request is refused */

        struct MHD_Daemon *mhd;
        sd_event_source *io_source;
        sd_event_source *timer_source;
        sd_event_source *wake_source;  /* defer: run MHD for connections resumed by a fill */
        uint16_t port;
        unsigned connection_timeout_sec;

        HttpCounters counters;
        Stream *streams;        /* every live Stream, to abort them at shutdown */
        Pass *passes;           /* every live Pass, likewise */
        GoneCheck *gone_checks; /* cached images a client was refused: asked whether they are gone upstream */
        TtlCache *gone_checked; /* ids found still there lately */
        GoneNotice *gone_notices; /* the fleet's nodes being told of an image Glance dropped */
        HeaderDeadlines *header_deadlines;
        PeerCounts *peer_fill_counts;
        PeerFill *peer_fills;
        ReadGuard *read_guard;
        TtlCache *not_found;     /* ids the upstream recently said it does not have (NotFoundCacheSec=) */
        HitCache *hit_cache;     /* open files and header values of images hit lately */
        Request *waiting;        /* requests suspended for an answer of the upstream */
        Fleet *fleet;            /* borrowed; NULL: no [Fleet] */
        unsigned n_range_queries; /* ranges far ahead of fills being asked of the origin now */
        UpstreamBudget *upstream_budget; /* what each client address may make us ask the upstream */
        TrustedProxies trusted_proxies;  /* TrustedProxies= */
        PeerCounts *connection_counts;   /* open connections by address (MaxConnectionsPerIP=) */
        usec_t refusal_logged_at[_HTTP_REFUSED_MAX]; /* CLOCK_MONOTONIC of the last log line of each */
        uint64_t refusals_unlogged[_HTTP_REFUSED_MAX]; /* refusals since that line */
        AccessLog access_log;
        bool stopping;
};

/* http-request.c: the request's lifecycle, below every other file of the server */
HttpConnection *http_connection_context(struct MHD_Connection *c);
/* The request being answered on c (NULL before its headers are read); for what every response notes. */
Request *http_connection_request(struct MHD_Connection *c);
/* n image bytes handed to a client, from source: the one place they are counted (the Manager's
 * BytesServed, /metrics by source, and what peers got). */
void http_count_served(HttpServer *s, ServeSource source, uint64_t n, bool to_peer);
/* Runs MHD on the next iteration of the loop (coalesced): after a resume, or to let it clean up. */
void http_server_schedule_run(HttpServer *s);
/* Suspends req's connection until what it waits for is there; req->pending holds the wait's object. */
void http_request_wait(Request *req, RequestWait wait);
/* Resumes a suspended request: MHD re-enters it at its wait (the access handler, or the content reader). */
void http_request_wake(Request *req);
/* Takes the pending object out of a request re-entered at its wait: the request waits no more. */
RequestWait http_request_take_wait(Request *req, RequestPending *ret);
/* The client's address as a key for per-address limits (peer_key()), or the client a trusted proxy names
 * in X-Forwarded-For; NULL when it has none. */
const char *http_request_client(Request *req);
/* Takes one upstream request's worth from the client address's budget (UpstreamBudget): false when
 * there is none left (the refusal is counted, and req->retry_after set). Peers of the fleet, limited by
 * their own node, are not charged. */
bool http_request_charge_upstream(Request *req);
/* A client turned away: counted in /metrics, and logged at most every few seconds per reason. */
void http_count_refusal(HttpServer *s, HttpRefusal why, const char *client);

/* http-response.c */
enum MHD_Result http_queue_response(struct MHD_Connection *c, unsigned status, struct MHD_Response *resp);
/* http_queue_response() of a body of size bytes, noted for the access log (and, with count_body, for
 * the bytes served). */
enum MHD_Result http_queue_response_sized(struct MHD_Connection *c, unsigned status, struct MHD_Response *resp,
                                          uint64_t size);
/* A plain-text response (text copied), or NULL on OOM. */
struct MHD_Response *http_text_response(const char *text);
/* http_text_response() with one more header (name NULL: none), queued. */
enum MHD_Result http_respond_text_with(struct MHD_Connection *c, unsigned status, const char *text,
                                       const char *name, const char *value);
enum MHD_Result http_respond_text(struct MHD_Connection *c, unsigned status, const char *text);
enum MHD_Result http_respond_printf(struct MHD_Connection *c, unsigned status, const char *format, ...)
        _printf_(3, 4);
/* A request we will not read any further: 400, and the connection is closed after it. */
enum MHD_Result http_respond_400_close(struct MHD_Connection *c, const char *text);
enum MHD_Result http_respond_405(struct MHD_Connection *c, const char *allow);
enum MHD_Result http_respond_401(struct MHD_Connection *c);
/* UpstreamRequestsPerIP=: the client may ask again in retry_after seconds. */
enum MHD_Result http_respond_429(struct MHD_Connection *c, unsigned retry_after);
enum MHD_Result http_respond_416(struct MHD_Connection *c, uint64_t size);
/* A HEAD response of size bytes (MHD_SIZE_UNKNOWN: none given), with no body to read. */
struct MHD_Response *http_response_for_head(uint64_t size);
void http_add_image_headers(struct MHD_Response *resp, const char *etag, const char *last_modified, bool ranges);
/* Repr-Digest: of the whole image (RFC 9530), so that peers and clients can verify what they got. */
void http_add_repr_digest(struct MHD_Response *resp, const Checksum *c);
void http_add_content_range(struct MHD_Response *resp, uint64_t start, uint64_t length, uint64_t size);
const char *http_header(struct MHD_Connection *c, const char *name);

/* Ends a connection whose response body fails or is close-delimited, at once (see http-request.c). */
void http_connection_end(HttpServer *s, struct MHD_Connection *c);
/* The image is gone upstream (deleted, deactivated): its copy and queue entry go, and why is logged. */
void http_server_drop_image(HttpServer *s, const char *id, const char *why);
/* ... and the fleet's other nodes are told, so that each checks with Glance and drops its copy. */
void http_server_tell_peers_gone(HttpServer *s, const char *id);

/* http-pass.c: a request passed through to the upstream */
/* Starts it from the request's headers (the body, if any, follows). */
enum MHD_Result http_pass_begin(HttpServer *s, Request *req, struct MHD_Connection *c, const char *method);
/* Every later call of the access handler for it: its body, then its answer. */
enum MHD_Result http_pass_on_request(HttpServer *s, Request *req, const char *upload_data, size_t *upload_data_size);
/* The request is over: the pass goes, or is left to its response. */
void http_pass_detach(Request *req);
/* Shutdown: every transfer ends now. */
void http_pass_abort_all(HttpServer *s);

/* http-stream.c: the body of a miss, read from its fill */
int http_stream_new(HttpServer *s, Request *req, Fill *f, Stream **ret);
Stream *http_stream_free(Stream *st);
/* The request waits on st (REQUEST_WAIT_FILL_HEADERS or _FILL_BYTES) until the fill's next event. */
void http_stream_wait(Stream *st, RequestWait wait);
/* The image's headers of a miss response, the digest included once the fill knows it. */
void http_add_miss_headers(struct MHD_Response *resp, Fill *f, uint64_t total);
/* Queues the response streaming the fill: the whole image (start UINT64_MAX), or length bytes at start
 * (206). Consumes st. */
enum MHD_Result http_stream_respond(Request *req, Stream *st, uint64_t start, uint64_t length, uint64_t total);

/* http-miss.c: a miss, from its start to the response */
enum MHD_Result http_serve_miss(HttpServer *s, Request *req, struct MHD_Connection *c);
/* The steps at which a request re-enters the waits a miss starts, from their pending objects: each takes
 * what it keeps out of p (the caller frees the rest). */
enum MHD_Result http_miss_on_probe(HttpServer *s, Request *req, RequestPending *p);
enum MHD_Result http_miss_on_fill_headers(HttpServer *s, Request *req, RequestPending *p);
enum MHD_Result http_miss_on_origin_range(HttpServer *s, Request *req, RequestPending *p);
PeerFill *http_peer_fill_free(PeerFill *pf);

/* http-peer.c: a peer's request, before it is served */
/* Serves, points the peer at another node (307), or refuses it (503): -1 to go on serving, else the
 * response queued. */
int http_peer_admit(HttpServer *s, Request *req, struct MHD_Connection *c);
void http_peer_release(HttpServer *s, Request *req);
/* FLEET_HEADER_PATH on a response to a peer: this node, then where f's bytes come from (f NULL: a hit). */
void http_peer_add_path(Request *req, struct MHD_Response *resp, Fill *f);

/* http-socket.c */
uint16_t http_socket_port(int fd);
bool http_socket_is_loopback(int fd);
