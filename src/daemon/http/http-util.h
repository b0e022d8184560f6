/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image-id.h"
#include "util.h"

/* Pure helpers of the HTTP server: no I/O, no allocation, no libmicrohttpd, so that each can be unit
 * tested and fuzzed on its own. libmicrohttpd parses the protocol; these interpret a few header values
 * and map a request to what serves it. */

typedef enum HttpMethod {
        HTTP_METHOD_GET,
        HTTP_METHOD_HEAD,
        HTTP_METHOD_PUT,
        HTTP_METHOD_POST,
        HTTP_METHOD_DELETE,
        HTTP_METHOD_OTHER,  /* anything else: at most a 405 */
        _HTTP_METHOD_MAX,
        _HTTP_METHOD_INVALID = -EINVAL,
} HttpMethod;

HttpMethod http_method_from_string(const char *s);

typedef enum HttpRoute {
        HTTP_ROUTE_NONE,           /* no such path: 404 */
        HTTP_ROUTE_IMAGE,          /* /images/<id>, /v2/images/<id>/file */
        HTTP_ROUTE_HEALTHCHECK,    /* /healthcheck */
        HTTP_ROUTE_METRICS,        /* /metrics */
        /* The management API: present only with ManagementAPI=yes, and token-gated. */
        HTTP_ROUTE_VERSIONS,       /* /versions */
        HTTP_ROUTE_CACHE,          /* /v2/cache */
        HTTP_ROUTE_CACHE_IMAGE,    /* /v2/cache/<id> */
        HTTP_ROUTE_CACHE_PRUNE,    /* POST /v2/cache/prune */
        HTTP_ROUTE_CACHE_CLEAN,    /* POST /v2/cache/clean */
        HTTP_ROUTE_CACHE_NODES,    /* GET /v2/cache/nodes/<id>: the fleet's nodes holding it (Glance 2024.1) */
        HTTP_ROUTE_CACHED_IMAGES,  /* /v2/cached_images (Glance's cache_manage middleware) */
        HTTP_ROUTE_CACHED_IMAGE,   /* /v2/cached_images/<id> */
        HTTP_ROUTE_QUEUED_IMAGES,  /* /v2/queued_images */
        HTTP_ROUTE_QUEUED_IMAGE,   /* /v2/queued_images/<id> */
        HTTP_ROUTE_PEER_GONE,      /* DELETE /images/<id>: a node of the fleet says Glance dropped it (peers only) */
        /* Kind=glance with PassThrough=yes (http_route_pass_through()): */
        HTTP_ROUTE_DISCOVERY,      /* /, /versions, /v2: the upstream's version document, rewritten */
        HTTP_ROUTE_PASS,           /* the rest of Glance's API: passed through to the upstream */
        _HTTP_ROUTE_MAX,
        _HTTP_ROUTE_INVALID = -EINVAL,
} HttpRoute;

typedef struct HttpRouteMatch {
        HttpRoute route;
        bool management;        /* a management route: gate on ManagementAPI= and the token first */
        /* What to answer when the route is known: 0 serve it, 405 the method is not allowed here (allow
         * says which are), 400 the id is invalid (id_reason says why). Checked in this order, after the
         * management gate. */
        unsigned status;
        const char *allow;      /* value of the Allow: header for this path, NULL for HTTP_ROUTE_NONE */
        const char *id_reason;  /* from image_id_invalid_reason() when status is 400 */
        /* The image id for routes that carry one, NUL-terminated. An overlong id is cut after one
         * character too many, which the validator reports as too long. */
        char id[IMAGE_ID_MAX + 2];
} HttpRouteMatch;

/* Maps a method and a (decoded, query-less) path to a route. Always fills *ret. */
void http_route(HttpMethod method, const char *path, HttpRouteMatch *ret);
/* Then, for a drop-in Glance endpoint: what the cache does not serve itself becomes Glance's, passed
 * through (the version document, the image data's other methods, every other /v2 path, and the cache
 * API when management_api is off). method_name is the request's: TRACE and CONNECT are never passed. */
void http_route_pass_through(HttpMethod method, const char *method_name, const char *path, bool management_api,
                             HttpRouteMatch *m);

/* A Content-Length value: digits only (optional whitespace around); UINT64_MAX and more are -EINVAL. */
int http_parse_length(const char *s, uint64_t *ret);
/* A Host header fit to be echoed into a link: a host name or address with an optional port. */
bool http_host_is_sane(const char *host);
/* A request that, once the upstream said 2xx, leaves the image without data for us: DELETE
 * /v2/images/<id> and POST /v2/images/<id>/actions/deactivate. The id (valid) in ret_id. */
bool http_pass_invalidates(HttpMethod method, const char *path, char ret_id[static IMAGE_ID_MAX + 1]);

/* A single byte range resolved against a representation of size bytes. */
typedef enum HttpRangeResult {
        HTTP_RANGE_NONE,           /* no usable Range: serve the whole representation (200) */
        HTTP_RANGE_SATISFIABLE,    /* serve *ret_start, *ret_length (206) */
        HTTP_RANGE_UNSATISFIABLE,  /* 416 with Content-Range: bytes * / size */
        _HTTP_RANGE_RESULT_MAX,
        _HTTP_RANGE_RESULT_INVALID = -EINVAL,
} HttpRangeResult;

/* Interprets a Range: header value (RFC 9110 §14). A syntactically invalid value, a unit other than
 * "bytes" and a request for more than one range all yield HTTP_RANGE_NONE: RFC 9110 lets a server ignore
 * Range, and we do not produce multipart/byteranges, so several ranges are answered with the whole
 * representation. ret_* are written only for HTTP_RANGE_SATISFIABLE. */
HttpRangeResult http_range_parse(const char *value, uint64_t size, uint64_t *ret_start, uint64_t *ret_length);

/* If-None-Match: whether the list ("*" or comma-separated entity-tags) matches etag with the weak
 * comparison (W/ prefixes ignored). etag is a complete entity-tag, quotes included. */
bool http_etag_list_matches(const char *header, const char *etag);

/* If-Range: whether the validator (an entity-tag or an HTTP-date) still matches, so that the Range may
 * be honoured. Entity-tags compare strongly (a weak one never matches); a date must equal the
 * Last-Modified second exactly. last_modified is µs since the epoch. */
bool http_if_range_matches(const char *value, const char *etag, usec_t last_modified);

/* If-Modified-Since: true when the representation did not change after the given date, i.e. a 304 is
 * due. An unparsable date is ignored (false). */
bool http_not_modified_since(const char *value, usec_t last_modified);

/* An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") of t (µs since the epoch) into buf. Returns buf. */
#define HTTP_DATE_MAX 30
char *http_format_date(usec_t t, char buf[static HTTP_DATE_MAX]);

/* The entity-tag of an image: the checksum quoted ("\"sha256:…\""), or, for an image without a
 * recorded checksum, a weak tag made of its size and modification time. Returns buf, or NULL when it
 * does not fit. */
#define HTTP_ETAG_MAX (2 + 7 + 2 * 64 + 1 + 2)
char *http_format_etag(const char *checksum, uint64_t size, usec_t last_modified, char *buf, size_t n);

/* Compares two secrets in time independent of where they differ and of their lengths (both are hashed
 * first; CRYPTO_memcmp on the digests). */
bool http_token_equal(const char *a, const char *b);

/* Whether a Cache-Control: value (may be NULL) carries directive, e.g. "only-if-cached" (RFC 9111 §5.2:
 * a comma-separated list, case-insensitive names, optionally "=value"). */
bool http_cache_control_has(const char *value, const char *directive);

/* The token offered by a request: X-Auth-Token's value, else the credentials of "Authorization: Bearer
 * …" (scheme case-insensitive). Returns a pointer into one of the values, or NULL when neither has one. */
const char *http_request_token(const char *x_auth_token, const char *authorization);

/* Percent-decodes s in place, leniently as libmicrohttpd does (a '%' not followed by two hex digits stays
 * as it is; '+' is not a space), for MHD_OPTION_UNESCAPE_CALLBACK, and returns the new length. *ret_bad
 * tells whether the result holds a NUL or another control byte: "/images/a%00.bin" would otherwise reach
 * the router as "/images/a". */
size_t http_unescape(char *s, bool *ret_bad);
