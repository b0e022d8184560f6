/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <systemd/sd-daemon.h>

#include "fetch.h"
#include "http-limits.h"
#include "http-manage.h"
#include "http-util.h"
#include "http.h"
#include "log.h"
#include "read-guard.h"
#include "ttl-cache.h"

/* A miss being served: the fill it reads, and the connection to wake when the fill moves on. Before the
 * fill has response headers it belongs to the request (Request.waiting, the connection suspended in the
 * access handler); after that to the MHD response streaming it, which frees it. */
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
        Stream *streams_prev, *streams_next;
};

/* Per request; lives inside the connection's context, so a hit allocates nothing of ours. */
typedef struct Request Request;
struct Request {
        HttpRouteMatch match;
        HttpMethod method;
        bool count_body;       /* add body_size to bytes_served when the response completes */
        uint64_t body_size;
        Stream *waiting;       /* a miss waiting for the fill's headers */
        bool begun;            /* request_begin() ran */
        bool http10;           /* an HTTP/1.0 client: no chunked encoding */
        bool bad_target;       /* the decoded target held a control byte */

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
        Request *waiting;        /* requests suspended for an answer of the upstream */
        bool stopping;
};

static void http_server_schedule_run(HttpServer *s);

/* ---- responses ---------------------------------------------------------------------------------- */

static enum MHD_Result queue_response(struct MHD_Connection *c, unsigned status, struct MHD_Response *resp) {
        enum MHD_Result ret;

        if (!resp)
                return MHD_NO;  /* OOM: MHD closes the connection */
        ret = MHD_queue_response(c, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

/* A plain-text response (text copied), or NULL on OOM. */
static struct MHD_Response *text_response(const char *text) {
        struct MHD_Response *resp;

        resp = MHD_create_response_from_buffer(strlen(text), (void *) text, MHD_RESPMEM_MUST_COPY);
        if (resp)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
        return resp;
}

/* text_response() with one more header (name NULL: none), queued. */
static enum MHD_Result respond_text_with(struct MHD_Connection *c, unsigned status, const char *text,
                                         const char *name, const char *value) {
        struct MHD_Response *resp = text_response(text);

        if (resp && name)
                MHD_add_response_header(resp, name, value);
        return queue_response(c, status, resp);
}

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned status, const char *text) {
        return respond_text_with(c, status, text, NULL, NULL);
}

static enum MHD_Result respond_printf(struct MHD_Connection *c, unsigned status, const char *format, ...)
        _printf_(3, 4);
static enum MHD_Result respond_printf(struct MHD_Connection *c, unsigned status, const char *format, ...) {
        char buf[512];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(buf, sizeof(buf), format, ap);
        va_end(ap);
        return respond_text(c, status, buf);
}

/* A request we will not read any further: 400, and the connection is closed after it, because whatever
 * follows on it could be framed either way. */
static enum MHD_Result respond_400_close(struct MHD_Connection *c, const char *text) {
        return respond_text_with(c, MHD_HTTP_BAD_REQUEST, text, MHD_HTTP_HEADER_CONNECTION, "close");
}

static enum MHD_Result respond_405(struct MHD_Connection *c, const char *allow) {
        return respond_text_with(c, MHD_HTTP_METHOD_NOT_ALLOWED, "Method not allowed\n", MHD_HTTP_HEADER_ALLOW, allow);
}

static enum MHD_Result respond_401(struct MHD_Connection *c) {
        return respond_text_with(c, MHD_HTTP_UNAUTHORIZED,
                                 "A valid X-Auth-Token or Authorization: Bearer token is required\n",
                                 MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"imgcache\"");
}

/* The body of a HEAD response is never read; a callback response gives MHD the size for Content-Length
 * without opening the file. */
static ssize_t never_read(void *cls, uint64_t pos, char *buf, size_t max) {
        return MHD_CONTENT_READER_END_WITH_ERROR;
}

static struct MHD_Response *response_for_head(uint64_t size) {
        return MHD_create_response_from_callback(size, 1024, never_read, NULL, NULL);
}

static void add_image_headers(struct MHD_Response *resp, const char *etag, const char *last_modified,
                              bool ranges) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
        if (ranges)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
        if (etag)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
        if (last_modified)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_LAST_MODIFIED, last_modified);
}

static enum MHD_Result respond_416(struct MHD_Connection *c, uint64_t size) {
        struct MHD_Response *resp;
        char cr[48];

        resp = text_response("Range not satisfiable\n");
        if (!resp)
                return MHD_NO;
        snprintf(cr, sizeof(cr), "bytes */%" PRIu64, size);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, cr);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
        return queue_response(c, MHD_HTTP_RANGE_NOT_SATISFIABLE, resp);
}

static void add_content_range(struct MHD_Response *resp, uint64_t start, uint64_t length, uint64_t size) {
        char cr[80];

        snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start, start + length - 1, size);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, cr);
}

static const char *header(struct MHD_Connection *c, const char *name) {
        return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

static bool fill_state_failed(FillState state) {
        return state == FILL_FAILED || state == FILL_CANCELLED;
}

/* ---- hits --------------------------------------------------------------------------------------- */

/* Serves a cached image. Returns MHD_YES/MHD_NO, or -1 when the file vanished under us (deleted or
 * pruned since the lookup): the caller then treats the request as a miss. */
static int serve_hit(HttpServer *s, Request *req, struct MHD_Connection *c, const CacheEntry *e) {
        char etag_buf[HTTP_ETAG_MAX], lm[HTTP_DATE_MAX];
        const char *etag, *inm, *range;
        uint64_t size = e->size, start = 0, length;
        HttpRangeResult rr = HTTP_RANGE_NONE;
        struct MHD_Response *resp;
        unsigned status = MHD_HTTP_OK;
        int fd = -EBADF;

        etag = http_format_etag(e->checksum, e->size, e->last_modified, etag_buf, sizeof(etag_buf));
        http_format_date(e->last_modified, lm);

        /* If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2). */
        inm = header(c, MHD_HTTP_HEADER_IF_NONE_MATCH);
        if (inm ? http_etag_list_matches(inm, etag)
                : http_not_modified_since(header(c, MHD_HTTP_HEADER_IF_MODIFIED_SINCE), e->last_modified)) {
                resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
                if (!resp)
                        return MHD_NO;
                if (etag)
                        MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
                MHD_add_response_header(resp, MHD_HTTP_HEADER_LAST_MODIFIED, lm);
                return queue_response(c, MHD_HTTP_NOT_MODIFIED, resp);
        }

        if (req->method == HTTP_METHOD_GET) {
                struct stat st;

                fd = openat(image_cache_dir_fd(s->cache), e->id, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
                if (fd < 0)
                        return errno == ENOENT ? -1 : (int) respond_text(c, 500, "Failed to open the image\n");
                /* The file, not the index, decides what sendfile can deliver. */
                if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                        safe_close(fd);
                        return respond_text(c, 500, "Failed to open the image\n");
                }
                size = (uint64_t) st.st_size;

                /* Range applies to GET only (RFC 9110 §14.2). */
                range = header(c, MHD_HTTP_HEADER_RANGE);
                if (range && http_if_range_matches(header(c, MHD_HTTP_HEADER_IF_RANGE), etag, e->last_modified))
                        rr = http_range_parse(range, size, &start, &length);
        }

        switch (rr) {
        case HTTP_RANGE_UNSATISFIABLE:
                safe_close(fd);
                return respond_416(c, size);
        case HTTP_RANGE_SATISFIABLE:
                status = MHD_HTTP_PARTIAL_CONTENT;
                break;
        default:
                start = 0;
                length = size;
        }

        if (req->method == HTTP_METHOD_GET)
                /* sendfile(); MHD owns fd from here on, also on failure. */
                resp = MHD_create_response_from_fd_at_offset64(length, fd, start);
        else
                resp = response_for_head(length);
        if (!resp) {
                safe_close(fd);
                return MHD_NO;
        }

        add_image_headers(resp, etag, lm, true);
        if (status == MHD_HTTP_PARTIAL_CONTENT)
                add_content_range(resp, start, length, size);

        if (req->method == HTTP_METHOD_GET) {
                req->count_body = true;
                req->body_size = length;
                s->ops->count_hit(s->userdata, e->id);
        }

        return queue_response(c, status, resp);
}

/* ---- waiting for the upstream (a read verdict, a HEAD's metadata) --------------------------------- */

static void request_suspend(Request *req) {
        HttpServer *s = req->server;

        assert(!req->suspended);
        req->suspended = true;
        LIST_PREPEND(waiting, s->waiting, req);
        MHD_suspend_connection(req->connection);
}

static void request_unlink(Request *req) {
        HttpServer *s = req->server;

        if (!req->suspended)
                return;
        req->suspended = false;
        LIST_REMOVE(waiting, s->waiting, req);
}

static void request_resume(Request *req) {
        if (!req->suspended)
                return;
        request_unlink(req);
        MHD_resume_connection(req->connection);
        http_server_schedule_run(req->server);
}

/* Ends every wait for the upstream at shutdown, answering 503. */
static void http_server_abandon_waiting(HttpServer *s) {
        while (s->waiting) {
                Request *req = s->waiting;

                req->read_check = read_check_free(req->read_check);
                req->probe = upstream_query_free(req->probe);
                req->read_decided = true;
                req->read_verdict = MHD_HTTP_SERVICE_UNAVAILABLE;
                request_resume(req);
        }
}

static void request_on_read_verdict(int verdict, void *userdata) {
        Request *req = userdata;

        req->read_check = NULL;  /* the guard frees it */
        req->read_decided = true;
        req->read_verdict = verdict;
        request_resume(req);
}

static void request_on_probe_answer(const UpstreamAnswer *a, void *userdata) {
        Request *req = userdata;

        req->probe = upstream_query_free(req->probe);
        req->probe_done = true;
        req->probe_answer = *a;
        request_resume(req);
}

static enum MHD_Result respond_read_refused(struct MHD_Connection *c, int verdict) {
        switch (verdict) {
        case MHD_HTTP_UNAUTHORIZED:
                return respond_401(c);
        case MHD_HTTP_FORBIDDEN:
                return respond_text(c, MHD_HTTP_FORBIDDEN, "Forbidden\n");
        case MHD_HTTP_NOT_FOUND:
                return respond_text(c, MHD_HTTP_NOT_FOUND, "Not found\n");
        case MHD_HTTP_SERVICE_UNAVAILABLE:
                return respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "Try again\n");
        default:
                return respond_text(c, MHD_HTTP_BAD_GATEWAY, "Cannot check access with the upstream\n");
        }
}

static void remember_not_found(HttpServer *s, const char *id) {
        ttl_cache_put(s->not_found, id, 1, s->config->not_found_cache);
}

/* A HEAD of an image that is neither cached nor being fetched: answered from what the upstream says of
 * it (the Glance record, or a HEAD), without fetching it. */
static enum MHD_Result serve_head_probe(HttpServer *s, Request *req, struct MHD_Connection *c) {
        int r;

        r = fetcher_query(s->fetcher, req->match.id, /* credentials= */ NULL, request_on_probe_answer, req,
                          &req->probe);
        if (r < 0)
                return respond_text(c, MHD_HTTP_BAD_GATEWAY, "Fetching the image from the upstream failed\n");
        request_suspend(req);
        return MHD_YES;
}

static enum MHD_Result respond_probe(HttpServer *s, Request *req, struct MHD_Connection *c) {
        const UpstreamAnswer *a = &req->probe_answer;
        struct MHD_Response *resp;

        if (a->status == 404 || a->status == 410 || (a->status >= 200 && a->status < 300 && !a->available)) {
                remember_not_found(s, req->match.id);
                return respond_text(c, MHD_HTTP_NOT_FOUND, "No such image upstream\n");
        }
        if (a->status < 200 || a->status >= 400)
                return respond_text(c, MHD_HTTP_BAD_GATEWAY, "Fetching the image from the upstream failed\n");

        resp = response_for_head(a->has_size ? a->size : MHD_SIZE_UNKNOWN);
        if (!resp)
                return MHD_NO;
        add_image_headers(resp, NULL, NULL, a->has_size);
        return queue_response(c, MHD_HTTP_OK, resp);
}

/* ---- misses ------------------------------------------------------------------------------------- */

static void stream_wake(Stream *st) {
        if (!st->suspended)
                return;
        st->suspended = false;
        MHD_resume_connection(st->connection);
        /* In external-event mode MHD does not wake itself for a resume (its ITC is not readable
         * through the epoll fd then): run it on the next iteration, coalesced with other wakes. */
        http_server_schedule_run(st->server);
}

static void stream_on_event(Fill *f, void *userdata) {
        stream_wake(userdata);
}

static Stream *stream_free(Stream *st) {
        if (!st)
                return NULL;

        LIST_REMOVE(streams, st->server->streams, st);

        /* Not fill_cancel(): a client that goes away leaves the fill to the others and to the cache. */
        fill_subscription_free(st->subscription);
        fill_unref(st->fill);
        free(st);
        return NULL;
}

static void stream_free_callback(void *cls) {
        stream_free(cls);
}

static int stream_new(HttpServer *s, struct MHD_Connection *c, Fill *f, Stream **ret) {
        static const FillListener listener = {
                .on_headers = stream_on_event,
                .on_data = stream_on_event,
                .on_finished = stream_on_event,
        };
        Stream *st;
        int r;

        st = calloc(1, sizeof(Stream));
        if (!st)
                return -ENOMEM;
        *st = (Stream) {
                .server = s,
                .connection = c,
                .fill = fill_ref(f),
                .end = UINT64_MAX,
        };
        LIST_PREPEND(streams, s->streams, st);

        r = fill_subscribe(f, &listener, st, &st->subscription);
        if (r < 0) {
                stream_free(st);
                return r;
        }

        *ret = st;
        return 0;
}

static void stream_suspend(Stream *st) {
        assert(!st->suspended);
        st->suspended = true;
        MHD_suspend_connection(st->connection);
}

/* libmicrohttpd 0.9.75 closes a connection whose content reader returns END_WITH_ERROR, or END_OF_STREAM
 * for a body that has neither a length nor chunked encoding, but on that path it neither cleans the
 * connection up nor, with MHD_USE_TURBO, shuts its socket down; and a connection that was suspended is not
 * in its epoll set then, so no event on the socket brings it back either. In epoll mode MHD looks at such a
 * connection again only once it reaches the tail of its timeout list, which with any older connection open
 * (one idle keep-alive client is enough) is that connection's timeout, 60 s away: all that time the client
 * waits for the end of a transfer that has ended, and the connection holds its fd and its slot.
 * So the reader ends the connection itself before it returns such an end: shutdown() tells the client at
 * once (MHD asks a reader for more only after all it had was sent), and a timeout of its own moves the
 * connection to the short list of those MHD visits on every run, where the next run cleans it up. */
static void stream_end_connection(Stream *st) {
        HttpServer *s = st->server;
        const union MHD_ConnectionInfo *info;

        info = MHD_get_connection_info(st->connection, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (info)
                (void) shutdown(info->connect_fd, SHUT_WR);
        /* Any value but the daemon's own puts it on that list. */
        (void) MHD_set_connection_option(st->connection, MHD_CONNECTION_OPTION_TIMEOUT,
                                         s->connection_timeout_sec == 1 ? 2U : 1U);
        http_server_schedule_run(s);
}

static ssize_t stream_fail(Stream *st) {
        stream_end_connection(st);
        return MHD_CONTENT_READER_END_WITH_ERROR;
}

static ssize_t stream_finish(Stream *st) {
        /* A chunked body ends with its last chunk, and the connection goes on. */
        if (st->close_delimited)
                stream_end_connection(st);
        return MHD_CONTENT_READER_END_OF_STREAM;
}

/* Reads the body of a miss from the file being filled. Bytes are handed out as they land on disk, except
 * the last byte of the image, which waits until the fill is DONE (verified and committed): a digest
 * mismatch discovered at the end then aborts every client still reading, and none ever receives a
 * complete, wrong body. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
        Stream *st = cls;
        uint64_t off, written, total, limit;
        FillState state;
        ssize_t k;

        if (st->server->stopping)
                return stream_fail(st);

        off = st->offset + pos;
        if (st->end != UINT64_MAX && off >= st->end)
                return stream_finish(st);

        state = fill_state(st->fill);
        if (fill_state_failed(state))
                return stream_fail(st);

        written = fill_bytes_written(st->fill);
        if (state == FILL_DONE)
                limit = written;
        else {
                total = fill_bytes_total(st->fill);
                if (total == UINT64_MAX)
                        limit = written > 0 ? written - 1 : 0;
                else
                        limit = MIN(written, total > 0 ? total - 1 : 0);
        }
        if (st->end != UINT64_MAX)
                limit = MIN(limit, st->end);

        if (off >= limit) {
                if (state == FILL_DONE)
                        /* Everything there is was sent. With a known length MHD stops asking by itself, so
                         * getting here with bytes owed means the file is shorter than promised. */
                        return st->end == UINT64_MAX ? stream_finish(st) : stream_fail(st);
                stream_suspend(st);
                return 0;
        }

        k = fill_pread(st->fill, buf, (size_t) MIN((uint64_t) max, limit - off), off);
        if (k <= 0) {
                log_debug_errno(k < 0 ? (int) k : -EIO, "Failed to read %s at %" PRIu64 ": %m",
                                fill_image_id(st->fill), off);
                return stream_fail(st);
        }

        st->server->ops->count_bytes_served(st->server->userdata, (uint64_t) k);
        return k;
}

static unsigned fill_error_to_status(int error) {
        switch (error) {
        case -ENOENT:
                return MHD_HTTP_NOT_FOUND;
        case -ETIMEDOUT:
                return MHD_HTTP_GATEWAY_TIMEOUT;
        case -ECANCELED:
        case -ENOSPC:
                return MHD_HTTP_SERVICE_UNAVAILABLE;
        default:
                return MHD_HTTP_BAD_GATEWAY;
        }
}

/* What a client is told of a failed fill: the class of failure only. The fill's own message names the
 * upstream (its URL, address, curl's details) and goes to the journal; HTTP clients are untrusted. */
static const char *fill_error_to_client_text(int error) {
        switch (error) {
        case -ENOENT:
                return "No such image upstream";
        case -ETIMEDOUT:
                return "Fetching the image timed out";
        case -ECANCELED:
                return "Fetching the image was cancelled";
        case -ENOSPC:
                return "No space left in the cache";
        case -EBADMSG:
                return "The image from the upstream did not match its checksum or size";
        case -EFBIG:
                return "The image is too large";
        default:
                return "Fetching the image from the upstream failed";
        }
}

/* Answers a miss whose fill has headers (or ended). Consumes st. */
static enum MHD_Result respond_miss(HttpServer *s, Request *req, struct MHD_Connection *c, Stream *st) {
        FillState state = fill_state(st->fill);
        uint64_t total, start = 0, length = 0;
        HttpRangeResult rr = HTTP_RANGE_NONE;
        struct MHD_Response *resp;
        unsigned status = MHD_HTTP_OK;
        const char *range;

        if (fill_state_failed(state)) {
                int error = fill_error(st->fill);

                if (error == -ENOENT)
                        remember_not_found(s, fill_image_id(st->fill));
                stream_free(st);
                return respond_printf(c, fill_error_to_status(error), "%s\n", fill_error_to_client_text(error));
        }

        total = state == FILL_DONE ? fill_bytes_written(st->fill) : fill_bytes_total(st->fill);

        if (req->method == HTTP_METHOD_HEAD) {
                stream_free(st);
                resp = response_for_head(total == UINT64_MAX ? MHD_SIZE_UNKNOWN : total);
                if (!resp)
                        return MHD_NO;
                add_image_headers(resp, NULL, NULL, total != UINT64_MAX);
                return queue_response(c, MHD_HTTP_OK, resp);
        }

        /* A Range needs the total length; without it (or with an If-Range we cannot check before the
         * checksum is known) the whole image is sent. */
        range = header(c, MHD_HTTP_HEADER_RANGE);
        if (range && total != UINT64_MAX && !header(c, MHD_HTTP_HEADER_IF_RANGE))
                rr = http_range_parse(range, total, &start, &length);

        switch (rr) {
        case HTTP_RANGE_UNSATISFIABLE:
                stream_free(st);
                return respond_416(c, total);
        case HTTP_RANGE_SATISFIABLE:
                status = MHD_HTTP_PARTIAL_CONTENT;
                st->offset = start;
                st->end = start + length;
                break;
        default:
                length = total;
                st->end = total;
                /* MHD's rule: chunked encoding for every client but HTTP/1.0 (stream_finish()). */
                st->close_delimited = total == UINT64_MAX && req->http10;
        }

        resp = MHD_create_response_from_callback(length == UINT64_MAX ? MHD_SIZE_UNKNOWN : length,
                                                 HTTP_STREAM_BLOCK_SIZE, stream_read, st, stream_free_callback);
        if (!resp) {
                stream_free(st);
                return MHD_NO;
        }
        /* st belongs to the response now. */
        add_image_headers(resp, NULL, NULL, total != UINT64_MAX);
        if (status == MHD_HTTP_PARTIAL_CONTENT)
                add_content_range(resp, start, length, total);
        return queue_response(c, status, resp);
}

static bool fill_has_headers(Fill *f) {
        FillState state = fill_state(f);
        return state >= FILL_RECEIVING;  /* RECEIVING, SEALING or any final state */
}

static PeerFill *peer_fill_free(PeerFill *pf) {
        HttpServer *s;

        if (!pf)
                return NULL;
        s = pf->server;
        LIST_REMOVE(peer_fills, s->peer_fills, pf);
        peer_counts_add(s->peer_fill_counts, pf->key, -1);
        fill_subscription_free(pf->subscription);
        free(pf);
        return NULL;
}

static void peer_fill_on_finished(Fill *f, void *userdata) {
        peer_fill_free(userdata);
}

/* Counts f, just started for the client at key, until it ends. */
static int peer_fill_new(HttpServer *s, const char *key, Fill *f) {
        /* Not a reader: it must not keep a fill too large to keep streaming (FillListener). */
        static const FillListener listener = { .on_finished = peer_fill_on_finished, .requires_kept = true };
        PeerFill *pf;
        int r;

        pf = calloc(1, sizeof(PeerFill));
        if (!pf)
                return -ENOMEM;
        *pf = (PeerFill) { .server = s };
        (void) snprintf(pf->key, sizeof(pf->key), "%s", key);
        LIST_PREPEND(peer_fills, s->peer_fills, pf);
        peer_counts_add(s->peer_fill_counts, key, +1);

        r = fill_subscribe(f, &listener, pf, &pf->subscription);
        if (r < 0) {
                peer_fill_free(pf);
                return r;
        }
        return 0;
}

/* Starts (or joins) the fill of a miss. A client may have started at most MaxFetchesPerIP= fills that
 * still run; joining a running one is always fine. -EUSERS when this one would be one too many. */
static int http_server_fill(HttpServer *s, struct MHD_Connection *c, const char *id, Fill **ret) {
        char key[PEER_KEY_MAX];
        bool counted;
        int r;

        counted = !fetcher_find(s->fetcher, id) && peer_key(c, key);
        if (counted && peer_counts_get(s->peer_fill_counts, key) >= s->config->max_fills_per_ip)
                return -EUSERS;

        r = fetcher_fill(s->fetcher, id, /* expected= */ NULL, ret);
        if (r < 0 || !counted || fill_state_is_final(fill_state(*ret)))
                return r;
        r = peer_fill_new(s, key, *ret);
        if (r < 0)
                *ret = fill_unref(*ret);
        return r;
}

static enum MHD_Result serve_miss(HttpServer *s, Request *req, struct MHD_Connection *c) {
        _cleanup_(fill_unrefp) Fill *f = NULL;
        Stream *st = NULL;
        int r;

        if (!s->fetcher)
                return respond_text(c, MHD_HTTP_NOT_FOUND, "Image not cached, and no upstream to fetch it from\n");
        /* Unknown ids go to the upstream once per NotFoundCacheSec=, however often they are asked for. */
        if (ttl_cache_get(s->not_found, req->match.id, now_usec(CLOCK_MONOTONIC), NULL))
                return respond_text(c, MHD_HTTP_NOT_FOUND, "No such image upstream\n");
        if (req->method == HTTP_METHOD_HEAD && fetcher_has_upstream(s->fetcher) && !fetcher_find(s->fetcher, req->match.id))
                return serve_head_probe(s, req, c);

        r = http_server_fill(s, c, req->match.id, &f);
        if (r == -ENXIO)
                return respond_text(c, MHD_HTTP_NOT_FOUND, "Image not cached, and no upstream to fetch it from\n");
        if (r == -EUSERS)
                return respond_printf(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                                      "Too many fetches started from this address (MaxFetchesPerIP=%u)\n",
                                      s->config->max_fills_per_ip);
        if (r < 0)
                return respond_printf(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "Failed to start fetching the image: %s\n",
                                      strerror(-r));

        if (req->method == HTTP_METHOD_GET)
                s->ops->count_miss(s->userdata, req->match.id);

        r = stream_new(s, c, f, &st);
        if (r < 0)
                return MHD_NO;

        if (fill_has_headers(f))
                return respond_miss(s, req, c, st);

        /* Wait for the upstream's headers: they decide the status, and the length if any. */
        req->waiting = st;
        stream_suspend(st);
        return MHD_YES;
}

static enum MHD_Result serve_image(HttpServer *s, Request *req, struct MHD_Connection *c) {
        const CacheEntry *e;

        e = image_cache_get(s->cache, req->match.id);
        if (e) {
                int r = serve_hit(s, req, c, e);
                if (r >= 0)
                        return (enum MHD_Result) r;
                /* Deleted since the index said so: fetch it again. */
        }

        return serve_miss(s, req, c);
}

/* ---- management --------------------------------------------------------------------------------- */

static bool authorized(HttpServer *s, struct MHD_Connection *c) {
        const char *offered;

        offered = http_request_token(header(c, "X-Auth-Token"), header(c, MHD_HTTP_HEADER_AUTHORIZATION));
        return s->token && offered && http_token_equal(offered, s->token);
}

static enum MHD_Result serve_management(HttpServer *s, Request *req, struct MHD_Connection *c) {
        HttpManageContext ctx = {
                .cache = s->cache,
                .ops = s->ops,
                .userdata = s->userdata,
        };
        HttpReply reply = {};
        struct MHD_Response *resp;
        int r;

        r = http_manage_dispatch(&ctx, &req->match, req->method, header(c, "x-image-cache-clear-target"),
                                 header(c, MHD_HTTP_HEADER_HOST), &reply);
        if (r < 0)
                return MHD_NO;

        if (reply.body) {
                resp = MHD_create_response_from_buffer(strlen(reply.body), reply.body, MHD_RESPMEM_MUST_FREE);
                if (!resp) {
                        http_reply_done(&reply);
                        return MHD_NO;
                }
                reply.body = NULL;  /* MHD frees it */
        } else
                resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (!resp)
                return MHD_NO;
        if (reply.content_type)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, reply.content_type);

        return queue_response(c, reply.status, resp);
}

static enum MHD_Result serve_metrics(HttpServer *s, struct MHD_Connection *c) {
        HttpManageContext ctx = {
                .cache = s->cache,
                .ops = s->ops,
                .userdata = s->userdata,
        };
        struct MHD_Response *resp;
        char *text;

        text = http_metrics_render(&ctx, &s->counters);
        if (!text)
                return MHD_NO;
        resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
                free(text);
                return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, HTTP_METRICS_CONTENT_TYPE);
        return queue_response(c, MHD_HTTP_OK, resp);
}

/* ---- MHD callbacks ------------------------------------------------------------------------------ */

/* Serves an image to whoever ReadAccess= lets read it, asking the upstream first where it must. */
static enum MHD_Result authorize_image(HttpServer *s, Request *req, struct MHD_Connection *c) {
        int r;

        r = read_guard_check(s->read_guard, header(c, "X-Auth-Token"), header(c, MHD_HTTP_HEADER_AUTHORIZATION),
                             req->match.id, request_on_read_verdict, req, &req->read_check);
        if (r == -EINPROGRESS) {
                request_suspend(req);
                return MHD_YES;
        }
        if (r < 0)
                return MHD_NO;
        if (r > 0)
                return respond_read_refused(c, r);
        return serve_image(s, req, c);
}

static enum MHD_Result request_begin(HttpServer *s, Request *req, struct MHD_Connection *c, const char *url,
                                     const char *method, const char *version) {
        const HttpRouteMatch *m = &req->match;

        const char *problem;

        if (req->bad_target)
                return respond_400_close(c, "Control characters in the request target\n");
        problem = http_request_framing_problem(c);
        if (problem) {
                char text[128];
                (void) snprintf(text, sizeof(text), "Ambiguous request: %s\n", problem);
                return respond_400_close(c, text);
        }

        req->method = http_method_from_string(method);
        req->http10 = streq(version, MHD_HTTP_VERSION_1_0);
        req->server = s;
        req->connection = c;
        http_route(req->method, url, &req->match);

        if (m->route == HTTP_ROUTE_NONE)
                return respond_text(c, MHD_HTTP_NOT_FOUND, "Not found\n");

        if (m->management) {
                /* Off means absent: nothing tells a scanner the API exists. */
                if (!s->management_api)
                        return respond_text(c, MHD_HTTP_NOT_FOUND, "Not found\n");
                if (!authorized(s, c))
                        return respond_401(c);
        }

        if (m->status == MHD_HTTP_METHOD_NOT_ALLOWED)
                return respond_405(c, m->allow);
        if (m->status == MHD_HTTP_BAD_REQUEST)
                return respond_printf(c, MHD_HTTP_BAD_REQUEST, "Invalid image id: %s\n", m->id_reason);

        switch (m->route) {
        case HTTP_ROUTE_IMAGE:
                return authorize_image(s, req, c);
        case HTTP_ROUTE_HEALTHCHECK:
                return respond_text(c, MHD_HTTP_OK, "OK\n");
        case HTTP_ROUTE_METRICS:
                return serve_metrics(s, c);
        default:
                return serve_management(s, req, c);
        }
}

static HttpConnection *connection_context(struct MHD_Connection *c) {
        const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        return info ? info->socket_context : NULL;
}

static enum MHD_Result http_on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                       const char *version, const char *upload_data, size_t *upload_data_size,
                                       void **req_cls) {
        HttpServer *s = cls;
        Request *req = *req_cls;

        if (!req) {
                HttpConnection *hc = connection_context(c);

                if (!hc)
                        return MHD_NO;

                /* The headers are complete. */
                header_deadline_stop(s->header_deadlines, &hc->header);
                req = &hc->request;
                *req = (Request) { .bad_target = hc->bad_target };
                hc->bad_target = false;
                *req_cls = req;
                /* Answer on the next call, once the request is read completely: MHD 0.9.75 treats a
                 * response queued on this first call as "early" and closes the connection after it,
                 * which would cost every client its keep-alive. */
                return MHD_YES;
        }

        /* A request body nobody asked for: drop it. */
        if (*upload_data_size > 0) {
                *upload_data_size = 0;
                return MHD_YES;
        }

        if (!req->begun) {
                req->begun = true;
                return request_begin(s, req, c, url, method, version);
        }

        if (req->read_decided) {
                req->read_decided = false;
                if (req->read_verdict != 0)
                        return respond_read_refused(c, req->read_verdict);
                return serve_image(s, req, c);
        }
        if (req->probe_done) {
                req->probe_done = false;
                return respond_probe(s, req, c);
        }

        if (req->waiting) {
                Stream *st = req->waiting;

                if (!fill_has_headers(st->fill) && !s->stopping) {
                        stream_suspend(st);
                        return MHD_YES;
                }
                req->waiting = NULL;
                if (s->stopping) {
                        stream_free(st);
                        return MHD_NO;
                }
                return respond_miss(s, req, c, st);
        }

        return MHD_YES;
}

static void http_on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                              enum MHD_RequestTerminationCode toe) {
        HttpServer *s = cls;
        Request *req = *req_cls;

        if (!req)
                return;

        req->waiting = stream_free(req->waiting);
        req->read_check = read_check_free(req->read_check);
        req->probe = upstream_query_free(req->probe);
        request_unlink(req);
        if (req->count_body && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
                s->ops->count_bytes_served(s->userdata, req->body_size);
        s->counters.requests++;
        *req = (Request) {};
        *req_cls = NULL;
}

static void http_on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                               enum MHD_ConnectionNotificationCode toe) {
        HttpServer *s = cls;

        if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
                HttpConnection *hc = calloc(1, sizeof(HttpConnection));
                if (hc) {
                        hc->server = s;
                        header_deadline_start(s->header_deadlines, &hc->header, c, s->config->header_timeout);
                }
                *socket_context = hc;  /* NULL: the first request is refused (connection closed) */
                s->counters.connections++;
        } else {
                HttpConnection *hc = *socket_context;
                if (hc)
                        header_deadline_stop(s->header_deadlines, &hc->header);
                free(hc);
                *socket_context = NULL;
                assert(s->counters.connections > 0);
                s->counters.connections--;
        }
}

/* The request line of a request is in: its headers have HeaderTimeoutSec= from now (the first request of
 * a connection keeps the clock that started with the connection). */
static void *http_on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
        HttpServer *s = cls;
        HttpConnection *hc = connection_context(c);

        if (hc) {
                hc->bad_target = false;
                header_deadline_start(s->header_deadlines, &hc->header, c, s->config->header_timeout);
        }
        return NULL;  /* the request's context is made on the first access-handler call */
}

static size_t http_on_unescape(void *cls, struct MHD_Connection *c, char *uri) {
        HttpConnection *hc = connection_context(c);
        bool bad;
        size_t n;

        n = http_unescape(uri, &bad);
        if (bad && hc)
                hc->bad_target = true;
        return n;
}

static void http_on_log(void *cls, const char *format, va_list ap) {
        char buf[512];
        size_t n;

        (void) vsnprintf(buf, sizeof(buf), format, ap);
        n = strlen(buf);
        while (n > 0 && buf[n - 1] == '\n')
                buf[--n] = 0;
        /* MHD reports client misbehaviour here too (bad requests, resets): not worth more than debug. */
        log_debug("microhttpd: %s", buf);
}

/* ---- the event loop ----------------------------------------------------------------------------- */

/* MHD never needs more than its connection timeout; a day bounds absurd values without overflow. */
#define HTTP_TIMER_MAX_MSEC (24ULL * 3600ULL * 1000ULL)
/* Slack for timeouts of a second or more (connection timeouts), so that sd-event can leave them be. */
#define HTTP_TIMER_SLACK_USEC (100ULL * USEC_PER_MSEC)

static void http_server_arm_timer(HttpServer *s) {
        MHD_UNSIGNED_LONG_LONG ms;
        int r;

        if (MHD_get_timeout(s->mhd, &ms) != MHD_YES) {
                (void) sd_event_source_set_enabled(s->timer_source, SD_EVENT_OFF);
                return;
        }

        /* MHD gives a timeout relative to now in ms (0: it has work already); sd-event's plain
         * set_time wants an absolute time in µs, so use the relative variant. */
        r = sd_event_source_set_time_relative(s->timer_source,
                                              (usec_t) MIN(ms, (MHD_UNSIGNED_LONG_LONG) HTTP_TIMER_MAX_MSEC) * USEC_PER_MSEC);
        /* MHD re-arms after every run; a connection timeout keeps moving by microseconds, and an exact
         * timer would reprogram the timerfd on each turn of the loop while bytes stream. */
        if (r >= 0)
                r = sd_event_source_set_time_accuracy(s->timer_source, ms >= 1000 ? HTTP_TIMER_SLACK_USEC : 1);
        if (r >= 0)
                r = sd_event_source_set_enabled(s->timer_source, SD_EVENT_ONESHOT);
        if (r < 0)
                log_warning_errno(r, "Failed to arm the HTTP timer, ignoring: %m");
}

static void http_server_schedule_run(HttpServer *s) {
        if (s->stopping || !s->wake_source)
                return;
        int r = sd_event_source_set_enabled(s->wake_source, SD_EVENT_ONESHOT);
        if (r < 0)
                log_warning_errno(r, "Failed to schedule the HTTP server, ignoring: %m");
}

static void http_server_run(HttpServer *s) {
        if (MHD_run(s->mhd) != MHD_YES)
                log_debug("MHD_run() failed, ignoring.");
        http_server_arm_timer(s);
}

static int http_on_io(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        http_server_run(userdata);
        return 0;
}

static int http_on_wake(sd_event_source *es, void *userdata) {
        http_server_run(userdata);
        return 0;
}

static int http_on_timer(sd_event_source *es, uint64_t usec, void *userdata) {
        http_server_run(userdata);
        return 0;
}

/* ---- sockets ------------------------------------------------------------------------------------ */

int http_listen_fd_from_systemd(int *ret_fd) {
        int n, r, fd, flags;

        assert(ret_fd);

        n = sd_listen_fds(/* unset_environment= */ 0);
        if (n < 0)
                return n;
        if (n == 0)
                return 0;
        if (n > 1)
                return -EINVAL;  /* exactly one socket: imgcached.socket has one ListenStream= */

        fd = SD_LISTEN_FDS_START;
        r = sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, /* listening= */ 1);
        if (r < 0)
                return r;
        if (r == 0)
                return -EINVAL;

        /* MHD expects a non-blocking listening socket in external-event mode. */
        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return negative_errno();
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
                return negative_errno();

        *ret_fd = fd;
        return 1;
}

int http_open_listen_socket(const char *address, int *ret_fd) {
        struct addrinfo hints = {
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
                .ai_flags = AI_NUMERICSERV | AI_PASSIVE,
        }, *ai = NULL;
        char host[256];
        const char *port, *h;
        size_t n;
        int fd, r;

        assert(address);
        assert(ret_fd);

        if (address[0] == '[') {
                const char *close = strchr(address, ']');
                if (!close || close[1] != ':')
                        return -EINVAL;
                h = address + 1;
                n = (size_t) (close - h);
                port = close + 2;
        } else {
                const char *colon = strrchr(address, ':');
                if (!colon)
                        return -EINVAL;
                h = address;
                n = (size_t) (colon - address);
                port = colon + 1;
        }
        if (n == 0 || n >= sizeof(host) || isempty(port))
                return -EINVAL;
        memcpy(host, h, n);
        host[n] = 0;

        /* Resolving a host name blocks; this runs once at start, before the loop. */
        r = getaddrinfo(host, port, &hints, &ai);
        if (r != 0)
                return r == EAI_SYSTEM ? negative_errno() : -EADDRNOTAVAIL;

        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
                r = negative_errno();
                freeaddrinfo(ai);
                return r;
        }

        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &(int) { 1 }, sizeof(int)) < 0 ||
            bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            listen(fd, SOMAXCONN) < 0) {
                r = negative_errno();
                freeaddrinfo(ai);
                safe_close(fd);
                return r;
        }

        freeaddrinfo(ai);
        *ret_fd = fd;
        return 0;
}

static uint16_t socket_port(int fd) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);

        if (getsockname(fd, (struct sockaddr *) &ss, &len) < 0)
                return 0;
        if (ss.ss_family == AF_INET)
                return ntohs(((struct sockaddr_in *) &ss)->sin_port);
        if (ss.ss_family == AF_INET6)
                return ntohs(((struct sockaddr_in6 *) &ss)->sin6_port);
        return 0;
}

/* ---- lifetime ----------------------------------------------------------------------------------- */

static bool socket_is_loopback(int fd) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);

        if (getsockname(fd, (struct sockaddr *) &ss, &len) < 0)
                return false;
        switch (ss.ss_family) {
        case AF_INET:
                return (ntohl(((struct sockaddr_in *) &ss)->sin_addr.s_addr) >> 24) == 127;
        case AF_INET6: {
                const struct in6_addr *a = &((struct sockaddr_in6 *) &ss)->sin6_addr;
                return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
        }
        case AF_UNIX:
                return true;
        default:
                return false;
        }
}

/* ReadAccess=open serves every cached image to whoever reaches the listener fd: on anything but loopback
 * only with AcknowledgeOpenReadAccess=yes. */
static int check_open_read_access(const Config *config, int fd) {
        if (config_read_access(config) == READ_ACCESS_OPEN && !config->acknowledge_open_read_access &&
            !socket_is_loopback(fd))
                return log_error_errno(-EPERM,
                                       "ReadAccess=open on a listener that is not loopback would serve every cached image to anyone who reaches it: set ReadAccess=upstream or token, or AcknowledgeOpenReadAccess=yes.");
        return 0;
}

static int load_token(HttpServer *s, const Config *config) {
        char *token = NULL;
        int r;

        if (!config->management_api) {
                free(s->token);
                s->token = NULL;
                s->management_api = false;
                return 0;
        }

        s->management_api = true;
        if (isempty(config->management_token_file))
                log_warning("ManagementAPI=yes without ManagementTokenFile=: every management request is refused.");
        else {
                r = read_token_file_first(config->management_token_file, &token);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        log_warning_errno(r, "Failed to read ManagementTokenFile=%s, refusing every management request: %m",
                                          config->management_token_file);
        }

        free(s->token);
        s->token = token;
        return 0;
}

int http_server_new(sd_event *event, ImageCache *cache, Fetcher *fetcher, const Config *config,
                    const HttpServerOptions *options, const HttpOperations *ops, void *userdata,
                    HttpServer **ret) {
        _cleanup_(http_server_freep) HttpServer *s = NULL;
        const union MHD_DaemonInfo *info;
        int fd = -EBADF, r;

        assert(event);
        assert(cache);
        assert(config);
        assert(ops && ops->count_hit && ops->count_miss && ops->count_bytes_served && ops->queue_image &&
               ops->dequeue_image && ops->dequeue_all && ops->delete_image && ops->delete_all_images &&
               ops->prune && ops->clean && ops->metrics);
        assert(ret);

        s = calloc(1, sizeof(HttpServer));
        if (!s)
                return -ENOMEM;
        s->event = sd_event_ref(event);
        s->cache = cache;
        s->fetcher = fetcher;
        s->config = config;
        s->ops = ops;
        s->userdata = userdata;

        r = load_token(s, config);
        if (r < 0)
                return r;

        r = header_deadlines_new(event, &s->header_deadlines);
        if (r < 0)
                return r;
        r = peer_counts_new(&s->peer_fill_counts);
        if (r < 0)
                return r;
        r = ttl_cache_new(HTTP_NOT_FOUND_CACHE_MAX, &s->not_found);
        if (r < 0)
                return r;

        if (options && options->listen_fd >= 0)
                fd = options->listen_fd;
        else {
                const char *address = (options ? options->listen : NULL) ?: config->listen;
                if (!address)
                        return -EINVAL;
                r = http_open_listen_socket(address, &fd);
                if (r < 0)
                        return log_error_errno(r, "Failed to listen on %s: %m", address);
        }
        s->port = socket_port(fd);

        r = check_open_read_access(config, fd);
        if (r >= 0)
                r = read_guard_new(config, s->fetcher, &s->read_guard);
        if (r < 0) {
                if (!(options && options->listen_fd >= 0))
                        safe_close(fd);
                return r;
        }
        s->connection_timeout_sec = options && options->connection_timeout_sec ? options->connection_timeout_sec
                                                                               : HTTP_CONNECTION_TIMEOUT_SEC;

        /* sendfile() has no MSG_NOSIGNAL: a client that hangs up mid-transfer would kill us with SIGPIPE.
         * MHD only uses sendfile when told SIGPIPE is taken care of. */
        (void) signal(SIGPIPE, SIG_IGN);

        s->mhd = MHD_start_daemon(
                        MHD_USE_EPOLL | MHD_USE_ITC | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_USE_ERROR_LOG,
                        /* port= */ 0,
                        /* apc= */ NULL, NULL,
                        http_on_request, s,
                        MHD_OPTION_EXTERNAL_LOGGER, http_on_log, s,
                        MHD_OPTION_LISTEN_SOCKET, fd,
                        MHD_OPTION_CONNECTION_LIMIT, (unsigned) MAX(config->max_connections, 1U),
                        MHD_OPTION_PER_IP_CONNECTION_LIMIT, config->max_connections_per_ip,
                        MHD_OPTION_URI_LOG_CALLBACK, http_on_uri, s,
                        MHD_OPTION_UNESCAPE_CALLBACK, http_on_unescape, s,
                        MHD_OPTION_CONNECTION_TIMEOUT, s->connection_timeout_sec,
                        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) HTTP_CONNECTION_MEMORY_LIMIT,
                        MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, s,
                        MHD_OPTION_NOTIFY_CONNECTION, http_on_connection, s,
                        MHD_OPTION_SIGPIPE_HANDLED_BY_APP, (int) 1,
                        /* HTTP/1.1 without Host:, spaces in the target and such get 400 (RFC 9112). */
                        MHD_OPTION_STRICT_FOR_CLIENT, (int) 1,
                        MHD_OPTION_END);
        if (!s->mhd) {
                /* MHD did not take the socket. An inherited one stays open for systemd either way. */
                if (!(options && options->listen_fd >= 0))
                        safe_close(fd);
                return log_error_errno(-EIO, "Failed to start the HTTP server.");
        }

        info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        if (!info)
                return log_error_errno(-EIO, "Failed to get the HTTP server's epoll fd.");

        r = sd_event_add_io(event, &s->io_source, info->epoll_fd, EPOLLIN, http_on_io, s);
        if (r < 0)
                return log_error_errno(r, "Failed to watch the HTTP server's epoll fd: %m");
        (void) sd_event_source_set_description(s->io_source, "http-io");

        r = sd_event_add_time_relative(event, &s->timer_source, CLOCK_MONOTONIC, 0,
                                       /* accuracy= */ 1, http_on_timer, s);
        if (r < 0)
                return log_error_errno(r, "Failed to create the HTTP timer: %m");
        (void) sd_event_source_set_enabled(s->timer_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(s->timer_source, "http-timer");

        /* Ahead of the sources that move a fill's bytes (same priority, they would take turns with it):
         * the first bytes of a miss, or the next ones of a client waiting for the fill, go out before
         * the fill takes its next turn. Fill events are bounded by the fill's progress, so this cannot
         * starve it. */
        r = sd_event_add_defer(event, &s->wake_source, http_on_wake, s);
        if (r < 0)
                return log_error_errno(r, "Failed to create the HTTP wake-up source: %m");
        (void) sd_event_source_set_enabled(s->wake_source, SD_EVENT_OFF);
        (void) sd_event_source_set_priority(s->wake_source, SD_EVENT_PRIORITY_NORMAL - 1);
        (void) sd_event_source_set_description(s->wake_source, "http-wake");

        http_server_arm_timer(s);

        *ret = TAKE_PTR(s);
        return 0;
}

HttpServer *http_server_free(HttpServer *s) {
        if (!s)
                return NULL;

        /* MHD may still complete requests while it closes connections below: ops are called until
         * MHD_stop_daemon() returns (their owner outlives the server). */
        s->io_source = sd_event_source_disable_unref(s->io_source);
        s->timer_source = sd_event_source_disable_unref(s->timer_source);
        s->wake_source = sd_event_source_disable_unref(s->wake_source);

        if (s->mhd) {
                MHD_socket fd;

                /* Stop accepting without touching the listening socket itself (no shutdown()), and take
                 * it back from MHD: a socket inherited from systemd must stay usable for the next
                 * activation. Our copy is closed; systemd keeps its own. */
                fd = MHD_quiesce_daemon(s->mhd);
                if (fd != MHD_INVALID_SOCKET)
                        safe_close(fd);

                /* MHD refuses to stop with suspended connections: wake them all; their streams see
                 * "stopping" and end with an error. */
                s->stopping = true;
                for (Stream *st = s->streams; st; st = st->streams_next)
                        stream_wake(st);
                http_server_abandon_waiting(s);

                MHD_stop_daemon(s->mhd);
        }

        /* Streams of requests that never got an answer were freed with their requests above. */
        assert(!s->streams);

        while (s->peer_fills)
                peer_fill_free(s->peer_fills);
        read_guard_free(s->read_guard);
        ttl_cache_free(s->not_found);
        peer_counts_free(s->peer_fill_counts);
        header_deadlines_free(s->header_deadlines);

        free(s->token);
        sd_event_unref(s->event);
        free(s);
        return NULL;
}

int http_server_reconfigure(HttpServer *s, const Config *config) {
        const union MHD_DaemonInfo *info;
        int r;

        assert(s);
        assert(config);

        /* Settings that cannot be applied (ReadTokenFile= gone, open on the network) leave the old ones. */
        info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_LISTEN_FD);
        r = check_open_read_access(config, info ? info->listen_fd : -EBADF);
        if (r >= 0)
                r = read_guard_reconfigure(s->read_guard, config);
        if (r < 0)
                return r;

        s->config = config;
        return load_token(s, config);
}

const HttpCounters *http_server_counters(const HttpServer *s) {
        assert(s);
        return &s->counters;
}

unsigned http_server_n_connections(const HttpServer *s) {
        assert(s);
        return s->counters.connections;
}

uint16_t http_server_port(const HttpServer *s) {
        assert(s);
        return s->port;
}
