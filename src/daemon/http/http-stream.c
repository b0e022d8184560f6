/* SPDX-License-Identifier: MIT */
/* The body of a miss, streamed from the fill that is writing it (fetch.h) as its bytes land, with the
 * rules that keep clients honest (the last byte waits for the verified commit; a failed fill aborts every
 * reader) and the end-of-connection workaround for libmicrohttpd below (issue 12). Which response a miss
 * gets is decided in http-miss.c; this file only sends it. */

#include <assert.h>
#include <inttypes.h>

#include "http-internal.h"
#include "log.h"

/* ---- streams ------------------------------------------------------------------------------------ */

void http_stream_wait(Stream *st, RequestWait wait) {
        assert(wait == REQUEST_WAIT_FILL_HEADERS || wait == REQUEST_WAIT_FILL_BYTES);
        st->awaited = true;
        st->request->pending.fill.stream = st;
        http_request_wait(st->request, wait);
}

/* News of the fill wakes the request when it waits on this stream: for the headers, or for bytes. Only
 * then: the request may be long gone for a stream its response still holds. */
static void stream_on_event(Fill *f, void *userdata) {
        Stream *st = userdata;

        if (!st->awaited)
                return;
        st->awaited = false;
        http_request_wake(st->request);
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

int http_stream_new(HttpServer *s, Request *req, Fill *f, Stream **ret) {
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
                .fill = fill_ref(f),
                .end = UINT64_MAX,
                .request = req,
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

static ssize_t stream_fail(Stream *st) {
        http_connection_end(st->server, st->request->connection);
        return MHD_CONTENT_READER_END_WITH_ERROR;
}

static ssize_t stream_finish(Stream *st) {
        /* A chunked body ends with its last chunk, and the connection goes on. */
        if (st->close_delimited)
                http_connection_end(st->server, st->request->connection);
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
        if (state == FILL_FAILED || state == FILL_CANCELLED)
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
                /* All there is for now was sent: wait for the fill's next bytes (or its end). */
                http_stream_wait(st, REQUEST_WAIT_FILL_BYTES);
                return 0;
        }

        k = fill_pread(st->fill, buf, (size_t) MIN((uint64_t) max, limit - off), off);
        if (k <= 0) {
                log_debug_errno(k < 0 ? (int) k : -EIO, "Failed to read %s at %" PRIu64 ": %m",
                                fill_image_id(st->fill), off);
                return stream_fail(st);
        }

        /* An image streamed through frees what every reader is past. */
        fill_subscription_consumed(st->subscription, off + (uint64_t) k);
        http_count_served(st->server, fill_from_peer(st->fill) ? SERVE_SOURCE_PEER : SERVE_SOURCE_UPSTREAM,
                          (uint64_t) k, st->request->from_peer);
        st->request->streamed += (uint64_t) k;
        return k;
}

void http_add_miss_headers(struct MHD_Response *resp, Fill *f, uint64_t total) {
        Checksum digest;

        http_add_image_headers(resp, NULL, NULL, total != UINT64_MAX);
        if (fill_expected(f, &digest))
                http_add_repr_digest(resp, &digest);
}

enum MHD_Result http_stream_respond(Request *req, Stream *st, uint64_t start, uint64_t length, uint64_t total) {
        bool partial = start != UINT64_MAX;
        struct MHD_Response *resp;

        assert(st->request == req);
        if (partial) {
                st->offset = start;
                st->end = start + length;
                fill_subscription_consumed(st->subscription, start); /* it reads nothing before */
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
        http_add_miss_headers(resp, st->fill, total);
        http_peer_add_path(req, resp, st->fill);
        if (partial)
                http_add_content_range(resp, start, length, total);
        return http_queue_response(req->connection, partial ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, resp);
}
