/* SPDX-License-Identifier: MIT */
#pragma once

/* What the files of the HTTP server (http*.c) share; not for the rest of the daemon, which sees http.h.
 * Everything here runs on the event loop's thread. */

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

/* A miss being served: the fill it reads, and the connection to wake when the fill moves on. Before the
 * fill has response headers it belongs to the request (Request.waiting, the connection suspended in the
 * access handler); after that to the MHD response streaming it, which frees it. */
typedef struct Request Request;
typedef struct Stream Stream;
struct Stream {
        HttpServer *server;
        struct MHD_Connection *connection;
        Fill *fill;
        FillSubscription *subscription;
        bool suspended;    /* we suspended the connection and owe it a resume */
        bool close_delimited; /* no length and no chunked encoding (HTTP/1.0): the body ends with the connection */
        uint64_t offset;   /* file offset of the first body byte */
        uint64_t end;      /* file offset after the last body byte; UINT64_MAX: wherever the fill ends */
        bool to_peer;      /* the client is a node of the fleet */
        Request *request;  /* whose streamed counts the bytes; the reader runs only during that request */
        Stream *streams_prev, *streams_next;
};

/* Per request; lives inside the connection's context, so a hit allocates nothing of ours. */
struct Request {
        HttpRouteMatch match;
        HttpMethod method;
        bool count_body;       /* count body_size as served from source when the response completes */
        ServeSource source;
        uint64_t body_size;    /* of the response queued, when it has one of a known size (not a miss) */
        unsigned status;       /* of the response queued; 0: none (yet) */
        Stream *waiting;       /* a miss waiting for the fill's headers */
        bool begun;            /* request_begin() ran */
        bool http10;           /* an HTTP/1.0 client: no chunked encoding */
        bool bad_target;       /* the decoded target held a control byte */
        bool from_peer;        /* a node of the fleet asks (fleet.h): the peer secret was checked */

        /* For the access log. The strings are MHD's, valid until the request completes. */
        const char *url, *method_name, *version;
        usec_t start;          /* CLOCK_MONOTONIC of the first access-handler call; 0: AccessLog=no */
        AccessLogCache cache;
        uint64_t streamed;     /* body bytes of a miss handed to MHD */

        /* Waiting with the connection suspended for an answer of the upstream (not a fill): a read
         * verdict or the metadata for a HEAD. */
        HttpServer *server;
        struct MHD_Connection *connection;
        bool suspended;
        Request *waiting_prev, *waiting_next;  /* in HttpServer.waiting */
        ReadCheck *read_check;
        bool read_decided;     /* read_verdict holds the upstream's verdict */
        int read_verdict;
        UpstreamQuery *probe;
        bool probe_done;       /* probe_answer holds the upstream's answer */
        UpstreamAnswer probe_answer;
        FleetQuery *holders_query; /* GET /v2/cache/nodes/<id>: asking the other nodes */
        bool holders_done;     /* holders holds the answer (NULL: the server is stopping) */
        char **holders;
        UpstreamQuery *range_query; /* a range far ahead of the fill, asked of the origin (http-stream.c) */
        bool range_done;       /* range_answer holds its answer */
        UpstreamAnswer range_answer;
        Stream *range_stream;  /* the fill's stream, to fall back on */
        uint64_t range_start, range_length;
        bool range_asked;      /* the origin was asked for the range once: never again for this request */
};

typedef struct HttpConnection {
        HttpServer *server;
        Request request;
        HeaderDeadline header;   /* armed while a request's headers are being read */
        bool bad_target;         /* set by the unescape callback for the request being read */
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
        char *token;            /* NULL: every management request is refused */

        struct MHD_Daemon *mhd;
        sd_event_source *io_source;
        sd_event_source *timer_source;
        sd_event_source *wake_source;  /* defer: run MHD for connections resumed by a fill */
        uint16_t port;
        unsigned connection_timeout_sec;

        HttpCounters counters;
        Stream *streams;        /* every live Stream, to abort them at shutdown */
        HeaderDeadlines *header_deadlines;
        PeerCounts *peer_fill_counts;
        PeerFill *peer_fills;
        ReadGuard *read_guard;
        TtlCache *not_found;     /* ids the upstream recently said it does not have (NotFoundCacheSec=) */
        HitCache *hit_cache;     /* open files and header values of images hit lately */
        Request *waiting;        /* requests suspended for an answer of the upstream */
        Fleet *fleet;            /* borrowed; NULL: no [Fleet] */
        unsigned n_range_queries; /* ranges far ahead of fills being asked of the origin now */
        AccessLog access_log;
        bool stopping;
};

/* http.c */
/* The request being answered on c (NULL before its headers are read); for what every response notes. */
Request *http_connection_request(struct MHD_Connection *c);
/* n image bytes handed to a client, from source: the one place they are counted (the Manager's
 * BytesServed, /metrics by source, and what peers got). */
void http_count_served(HttpServer *s, ServeSource source, uint64_t n, bool to_peer);
/* Runs MHD on the next iteration of the loop (coalesced): after a resume, or to let it clean up. */
void http_server_schedule_run(HttpServer *s);
/* Suspends the connection of req until the upstream answers (HttpServer.waiting); resumes it. */
void http_request_suspend(Request *req);
void http_request_resume(Request *req);
/* The UpstreamQueryDone of a HEAD probe (http-miss.c): keeps the answer, resumes the request. */
void http_request_on_probe_answer(const UpstreamAnswer *a, void *userdata);

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
enum MHD_Result http_respond_416(struct MHD_Connection *c, uint64_t size);
/* A HEAD response of size bytes (MHD_SIZE_UNKNOWN: none given), with no body to read. */
struct MHD_Response *http_response_for_head(uint64_t size);
void http_add_image_headers(struct MHD_Response *resp, const char *etag, const char *last_modified, bool ranges);
/* Repr-Digest: of the whole image (RFC 9530), so that peers and clients can verify what they got. */
void http_add_repr_digest(struct MHD_Response *resp, const Checksum *c);
void http_add_content_range(struct MHD_Response *resp, uint64_t start, uint64_t length, uint64_t size);
const char *http_header(struct MHD_Connection *c, const char *name);

/* http-stream.c */
int http_stream_new(HttpServer *s, struct MHD_Connection *c, Fill *f, Stream **ret);
Stream *http_stream_free(Stream *st);
void http_stream_suspend(Stream *st);
/* Resumes a suspended stream's connection (a fill event, or shutdown). */
void http_stream_wake(Stream *st);
/* RECEIVING, SEALING or final: the response can be decided. */
bool http_fill_has_headers(Fill *f);
/* Answers a miss whose fill has headers (or ended). Consumes st. */
enum MHD_Result http_respond_miss(HttpServer *s, Request *req, struct MHD_Connection *c, Stream *st);
/* Answers a miss at once if its fill has headers, asks the origin for a range the fill cannot answer
 * soon, else waits for the fill's headers (Request.waiting). Consumes st. */
enum MHD_Result http_respond_miss_when_ready(HttpServer *s, Request *req, struct MHD_Connection *c, Stream *st);
/* Answers a range far ahead of its fill from req->range_answer, or falls back on the fill's stream. */
enum MHD_Result http_respond_range_ahead(HttpServer *s, Request *req, struct MHD_Connection *c);

/* http-miss.c */
void http_server_remember_not_found(HttpServer *s, const char *id);
enum MHD_Result http_serve_miss(HttpServer *s, Request *req, struct MHD_Connection *c);
/* Answers a HEAD from the upstream's answer in req->probe_answer. */
enum MHD_Result http_respond_probe(HttpServer *s, Request *req, struct MHD_Connection *c);
PeerFill *http_peer_fill_free(PeerFill *pf);

/* http-socket.c */
uint16_t http_socket_port(int fd);
bool http_socket_is_loopback(int fd);
