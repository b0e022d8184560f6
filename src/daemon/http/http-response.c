/* SPDX-License-Identifier: MIT */
/* Building and queueing MHD responses: plain-text answers, image headers, ranges. */

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "http-internal.h"

enum MHD_Result http_queue_response_sized(struct MHD_Connection *c, unsigned status, struct MHD_Response *resp,
                                          uint64_t size) {
        enum MHD_Result ret;

        if (!resp)
                return MHD_NO;  /* OOM: MHD closes the connection */
        ret = MHD_queue_response(c, status, resp);
        MHD_destroy_response(resp);

        Request *req = http_connection_request(c);
        if (req && ret == MHD_YES) {
                req->status = status;  /* counted by class when the request completes */
                req->body_size = size;
        }
        return ret;
}

/* A response whose body is not counted here: none, a HEAD's, or a miss's (its stream counts). */
enum MHD_Result http_queue_response(struct MHD_Connection *c, unsigned status, struct MHD_Response *resp) {
        return http_queue_response_sized(c, status, resp, 0);
}

/* A plain-text response (text copied), or NULL on OOM. */
struct MHD_Response *http_text_response(const char *text) {
        struct MHD_Response *resp;

        resp = MHD_create_response_from_buffer(strlen(text), (void *) text, MHD_RESPMEM_MUST_COPY);
        if (resp)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
        return resp;
}

/* http_text_response() with one more header (name NULL: none), queued. */
enum MHD_Result http_respond_text_with(struct MHD_Connection *c, unsigned status, const char *text,
                                         const char *name, const char *value) {
        struct MHD_Response *resp = http_text_response(text);

        if (resp && name)
                MHD_add_response_header(resp, name, value);
        return http_queue_response_sized(c, status, resp, strlen(text));
}

enum MHD_Result http_respond_text(struct MHD_Connection *c, unsigned status, const char *text) {
        return http_respond_text_with(c, status, text, NULL, NULL);
}

enum MHD_Result http_respond_printf(struct MHD_Connection *c, unsigned status, const char *format, ...) {
        char buf[512];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(buf, sizeof(buf), format, ap);
        va_end(ap);
        return http_respond_text(c, status, buf);
}

/* A request we will not read any further: 400, and the connection is closed after it, because whatever
 * follows on it could be framed either way. */
enum MHD_Result http_respond_400_close(struct MHD_Connection *c, const char *text) {
        return http_respond_text_with(c, MHD_HTTP_BAD_REQUEST, text, MHD_HTTP_HEADER_CONNECTION, "close");
}

enum MHD_Result http_respond_405(struct MHD_Connection *c, const char *allow) {
        return http_respond_text_with(c, MHD_HTTP_METHOD_NOT_ALLOWED, "Method not allowed\n", MHD_HTTP_HEADER_ALLOW, allow);
}

enum MHD_Result http_respond_401(struct MHD_Connection *c) {
        return http_respond_text_with(c, MHD_HTTP_UNAUTHORIZED,
                                 "A valid X-Auth-Token or Authorization: Bearer token is required\n",
                                 MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"imgcache\"");
}

enum MHD_Result http_respond_429(struct MHD_Connection *c, unsigned retry_after) {
        char value[16];

        (void) snprintf(value, sizeof(value), "%u", MAX(retry_after, 1U));
        return http_respond_text_with(c, MHD_HTTP_TOO_MANY_REQUESTS,
                                      "Too many requests to the upstream from this address; try again later\n",
                                      MHD_HTTP_HEADER_RETRY_AFTER, value);
}

/* The body of a HEAD response is never read; a callback response gives MHD the size for Content-Length
 * without opening the file. */
static ssize_t never_read(void *cls, uint64_t pos, char *buf, size_t max) {
        return MHD_CONTENT_READER_END_WITH_ERROR;
}

struct MHD_Response *http_response_for_head(uint64_t size) {
        return MHD_create_response_from_callback(size, 1024, never_read, NULL, NULL);
}

void http_add_image_headers(struct MHD_Response *resp, const char *etag, const char *last_modified,
                              bool ranges) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
        if (ranges)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
        if (etag)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
        if (last_modified)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_LAST_MODIFIED, last_modified);
}

void http_add_repr_digest(struct MHD_Response *resp, const Checksum *c) {
        char value[CHECKSUM_REPR_DIGEST_MAX];

        if (c && checksum_to_repr_digest(c, value, sizeof(value)) >= 0)
                MHD_add_response_header(resp, "Repr-Digest", value);
}

enum MHD_Result http_respond_416(struct MHD_Connection *c, uint64_t size) {
        struct MHD_Response *resp;
        char cr[48];

        resp = http_text_response("Range not satisfiable\n");
        if (!resp)
                return MHD_NO;
        snprintf(cr, sizeof(cr), "bytes */%" PRIu64, size);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, cr);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
        return http_queue_response(c, MHD_HTTP_RANGE_NOT_SATISFIABLE, resp);
}

void http_add_content_range(struct MHD_Response *resp, uint64_t start, uint64_t length, uint64_t size) {
        char cr[80];

        snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start, start + length - 1, size);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_RANGE, cr);
}

const char *http_header(struct MHD_Connection *c, const char *name) {
        return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}
