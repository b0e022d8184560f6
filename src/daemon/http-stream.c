/* SPDX-License-Identifier: MIT */
/* The body of a miss, streamed from the fill that is writing it (fetch.h) as its bytes land, with the
 * rules that keep clients honest (the last byte waits for the verified commit; a failed fill aborts every
 * reader) and the end-of-connection workaround for libmicrohttpd below (issue 12). */

#include <assert.h>
#include <inttypes.h>
#include <sys/socket.h>

#include "http-internal.h"
#include "log.h"

static bool fill_state_failed(FillState state) {
        return state == FILL_FAILED || state == FILL_CANCELLED;
}

/* ---- streams ------------------------------------------------------------------------------------ */

void http_stream_wake(Stream *st) {
        if (!st->suspended)
                return;
        st->suspended = false;
        MHD_resume_connection(st->connection);
        /* In external-event mode MHD does not wake itself for a resume (its ITC is not readable
         * through the epoll fd then): run it on the next iteration, coalesced with other wakes. */
        http_server_schedule_run(st->server);
}

static void stream_on_event(Fill *f, void *userdata) {
        http_stream_wake(userdata);
}

Stream *http_stream_free(Stream *st) {
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
        http_stream_free(cls);
}

int http_stream_new(HttpServer *s, struct MHD_Connection *c, Fill *f, Stream **ret) {
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
                http_stream_free(st);
                return r;
        }

        *ret = st;
        return 0;
}

void http_stream_suspend(Stream *st) {
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
                http_stream_suspend(st);
                return 0;
        }

        k = fill_pread(st->fill, buf, (size_t) MIN((uint64_t) max, limit - off), off);
        if (k <= 0) {
                log_debug_errno(k < 0 ? (int) k : -EIO, "Failed to read %s at %" PRIu64 ": %m",
                                fill_image_id(st->fill), off);
                return stream_fail(st);
        }

        http_count_served(st->server, fill_from_peer(st->fill) ? SERVE_SOURCE_PEER : SERVE_SOURCE_UPSTREAM,
                          (uint64_t) k, st->to_peer);
        st->request->streamed += (uint64_t) k;
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

static enum MHD_Result respond_stream(Request *req, struct MHD_Connection *c, Stream *st, uint64_t start,
                                      uint64_t length, uint64_t total);
static bool range_is_far_ahead(HttpServer *s, Request *req, Fill *f, uint64_t start, uint64_t length);
static bool range_of_waiting_fill(HttpServer *s, Request *req, struct MHD_Connection *c, Fill *f, uint64_t *ret_start,
                                  uint64_t *ret_length);
static enum MHD_Result fetch_range_ahead(HttpServer *s, Request *req, Stream *st, uint64_t start, uint64_t length);

/* Answers a miss whose fill has headers (or ended). Consumes st. */
enum MHD_Result http_respond_miss(HttpServer *s, Request *req, struct MHD_Connection *c, Stream *st) {
        FillState state = fill_state(st->fill);
        uint64_t total, start = 0, length = 0;
        HttpRangeResult rr = HTTP_RANGE_NONE;
        struct MHD_Response *resp;
        const char *range;

        if (fill_state_failed(state)) {
                int error = fill_error(st->fill);

                if (error == -ENOENT)
                        http_server_remember_not_found(s, fill_image_id(st->fill));
                http_stream_free(st);
                return http_respond_printf(c, fill_error_to_status(error), "%s\n", fill_error_to_client_text(error));
        }

        total = state == FILL_DONE ? fill_bytes_written(st->fill) : fill_bytes_total(st->fill);

        if (req->method == HTTP_METHOD_HEAD) {
                http_stream_free(st);
                resp = http_response_for_head(total == UINT64_MAX ? MHD_SIZE_UNKNOWN : total);
                if (!resp)
                        return MHD_NO;
                http_add_image_headers(resp, NULL, NULL, total != UINT64_MAX);
                return http_queue_response(c, MHD_HTTP_OK, resp);
        }

        /* A Range needs the total length; without it (or with an If-Range we cannot check before the
         * checksum is known) the whole image is sent. */
        range = http_header(c, MHD_HTTP_HEADER_RANGE);
        if (range && total != UINT64_MAX && !http_header(c, MHD_HTTP_HEADER_IF_RANGE))
                rr = http_range_parse(range, total, &start, &length);

        switch (rr) {
        case HTTP_RANGE_UNSATISFIABLE:
                http_stream_free(st);
                return http_respond_416(c, total);
        case HTTP_RANGE_SATISFIABLE:
                if (range_is_far_ahead(s, req, st->fill, start, length))
                        return fetch_range_ahead(s, req, st, start, length);
                return respond_stream(req, c, st, start, length, total);
        default:
                return respond_stream(req, c, st, UINT64_MAX, total, total);
        }
}

enum MHD_Result http_respond_miss_when_ready(HttpServer *s, Request *req, struct MHD_Connection *c, Stream *st) {
        uint64_t start, length;

        if (http_fill_has_headers(st->fill))
                return http_respond_miss(s, req, c, st);
        if (range_of_waiting_fill(s, req, c, st->fill, &start, &length))
                return fetch_range_ahead(s, req, st, start, length);

        /* Wait for the upstream's headers: they decide the status, and the length if any. */
        req->waiting = st;
        http_stream_suspend(st);
        return MHD_YES;
}

/* The image's headers of a miss response, digest included once the fill knows it. */
static void add_miss_headers(struct MHD_Response *resp, Fill *f, uint64_t total) {
        Checksum digest;

        http_add_image_headers(resp, NULL, NULL, total != UINT64_MAX);
        if (fill_expected(f, &digest))
                http_add_repr_digest(resp, &digest);
}

/* Streams the image from the fill: the whole of it (start UINT64_MAX), or length bytes at start (206). */
static enum MHD_Result respond_stream(Request *req, struct MHD_Connection *c, Stream *st, uint64_t start,
                                      uint64_t length, uint64_t total) {
        bool partial = start != UINT64_MAX;
        struct MHD_Response *resp;

        if (partial) {
                st->offset = start;
                st->end = start + length;
        } else {
                st->end = total;
                /* MHD's rule: chunked encoding for every client but HTTP/1.0 (stream_finish()). */
                st->close_delimited = total == UINT64_MAX && req->http10;
        }

        resp = MHD_create_response_from_callback(length == UINT64_MAX ? MHD_SIZE_UNKNOWN : length,
                                                 HTTP_STREAM_BLOCK_SIZE, stream_read, st, stream_free_callback);
        if (!resp) {
                http_stream_free(st);
                return MHD_NO;
        }
        /* st belongs to the response now. */
        add_miss_headers(resp, st->fill, total);
        if (partial)
                http_add_content_range(resp, start, length, total);
        return http_queue_response(c, partial ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, resp);
}

/* ---- ranges far ahead of the fill ------------------------------------------------------------------ */

/* The bounds on every range asked of the origin: not for a peer, once per request, at most
 * HTTP_RANGE_AHEAD_MAX long, HTTP_RANGE_AHEAD_PARALLEL at a time. */
static bool range_may_be_asked(HttpServer *s, Request *req, uint64_t length) {
        return !req->from_peer && !req->range_asked && length <= HTTP_RANGE_AHEAD_MAX &&
               s->n_range_queries < HTTP_RANGE_AHEAD_PARALLEL;
}

/* A range the fill will not reach soon (HTTP_RANGE_AHEAD_MIN past what it has written), small enough
 * to ask the origin for directly (HTTP_RANGE_AHEAD_MAX), while few such requests run: a client reading
 * an image's footer (qemu-img and a VHD, say) must not wait for the whole download. Peers want whole
 * images and are never answered this way. */
static bool range_is_far_ahead(HttpServer *s, Request *req, Fill *f, uint64_t start, uint64_t length) {
        uint64_t written = fill_bytes_written(f);

        return range_may_be_asked(s, req, length) && !fill_state_is_final(fill_state(f)) && start > written &&
               start - written >= HTTP_RANGE_AHEAD_MIN;
}

/* A fill waiting for a fetch slot (MaxParallelFetches) may wait for other images' downloads, so a range of
 * it is asked of the origin whatever its offset, on the same bounds as a range far ahead. Its length is
 * not known yet: only an explicit first-last range can be asked; a suffix or an open-ended one (which
 * end where the unknown length would) waits for the fill. */
static bool range_of_waiting_fill(HttpServer *s, Request *req, struct MHD_Connection *c, Fill *f, uint64_t *ret_start,
                                  uint64_t *ret_length) {
        uint64_t start, length;

        if (fill_state(f) != FILL_PENDING || req->method != HTTP_METHOD_GET || http_header(c, MHD_HTTP_HEADER_IF_RANGE) ||
            http_range_parse(http_header(c, MHD_HTTP_HEADER_RANGE), UINT64_MAX, &start, &length) != HTTP_RANGE_SATISFIABLE ||
            start + length == UINT64_MAX || !range_may_be_asked(s, req, length))
                return false;
        *ret_start = start;
        *ret_length = length;
        return true;
}

static void request_on_range_answer(const UpstreamAnswer *a, void *userdata) {
        Request *req = userdata;

        req->range_answer = *a;
        req->range_done = true;
        http_request_resume(req);
}

/* Asks the origin for the range, keeping st (and so the fill) to fall back on. The client was authorized
 * for the image before its miss began; the request goes with the daemon's credentials, as the fill. */
static enum MHD_Result fetch_range_ahead(HttpServer *s, Request *req, Stream *st, uint64_t start, uint64_t length) {
        int r;

        req->range_asked = true;
        r = fetcher_query_range(s->fetcher, st->fill, start, length, request_on_range_answer, req, &req->range_query);
        if (r < 0) {
                log_debug_errno(r, "Cannot ask the upstream for a range of %s, waiting for the fill: %m",
                                fill_image_id(st->fill));
                return http_respond_miss_when_ready(s, req, req->connection, st);
        }
        s->n_range_queries++;
        req->range_stream = st;
        req->range_start = start;
        req->range_length = length;
        http_request_suspend(req);
        return MHD_YES;
}

/* The origin answered the range (or failed: then the fill serves it when it gets there). */
enum MHD_Result http_respond_range_ahead(HttpServer *s, Request *req, struct MHD_Connection *c) {
        Stream *st = TAKE_PTR(req->range_stream);
        const UpstreamAnswer *a = &req->range_answer;
        uint64_t fill_total = fill_bytes_total(st->fill);
        struct MHD_Response *resp;

        assert(s->n_range_queries > 0);
        s->n_range_queries--;
        if (s->stopping) {
                req->range_query = upstream_query_free(req->range_query);
                http_stream_free(st);
                return MHD_NO;
        }
        /* Asked while the fill had no length, the answer must still agree with the one it has now. */
        if (!a->available || (fill_total != UINT64_MAX && a->size != fill_total)) {
                log_debug("The upstream did not answer the range of %s as asked (HTTP %ld): waiting for the fill",
                          fill_image_id(st->fill), a->status);
                req->range_query = upstream_query_free(req->range_query);
                return http_respond_miss_when_ready(s, req, c, st);
        }

        resp = MHD_create_response_from_buffer(a->data_size, (void *) a->data, MHD_RESPMEM_MUST_COPY);
        if (resp) {
                add_miss_headers(resp, st->fill, a->size);
                http_add_content_range(resp, req->range_start, req->range_length, a->size);
                s->counters.ranges_ahead++;
                /* Counted as served once it all went out, like a hit. */
                req->count_body = true;
                req->source = SERVE_SOURCE_UPSTREAM;
        }
        size_t size = a->data_size;
        req->range_query = upstream_query_free(req->range_query);
        http_stream_free(st);
        return http_queue_response_sized(c, MHD_HTTP_PARTIAL_CONTENT, resp, size);
}

bool http_fill_has_headers(Fill *f) {
        FillState state = fill_state(f);
        return state >= FILL_RECEIVING;  /* RECEIVING, SEALING or any final state */
}
