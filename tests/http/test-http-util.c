/* SPDX-License-Identifier: MIT */

/* The pure helpers of the HTTP server: every case of the router, Range (RFC 9110 §14) with its edge
 * cases, If-None-Match / If-Range / If-Modified-Since, dates, entity-tags and tokens. */

#include <glib.h>

#include "http-util.h"

static void test_method(void) {
        g_assert_cmpint(http_method_from_string("GET"), ==, HTTP_METHOD_GET);
        g_assert_cmpint(http_method_from_string("HEAD"), ==, HTTP_METHOD_HEAD);
        g_assert_cmpint(http_method_from_string("PUT"), ==, HTTP_METHOD_PUT);
        g_assert_cmpint(http_method_from_string("POST"), ==, HTTP_METHOD_POST);
        g_assert_cmpint(http_method_from_string("DELETE"), ==, HTTP_METHOD_DELETE);
        g_assert_cmpint(http_method_from_string("get"), ==, HTTP_METHOD_OTHER);   /* case-sensitive */
        g_assert_cmpint(http_method_from_string("PATCH"), ==, HTTP_METHOD_OTHER);
        g_assert_cmpint(http_method_from_string(NULL), ==, _HTTP_METHOD_INVALID);
}

static void check_route(HttpMethod method, const char *path, HttpRoute route, unsigned status, const char *id,
                        const char *allow) {
        HttpRouteMatch m;

        http_route(method, path, &m);
        if (m.route != route || m.status != status)
                g_error("%s: route %d status %u, expected route %d status %u", path, m.route, m.status, route, status);
        if (id)
                g_assert_cmpstr(m.id, ==, id);
        if (allow)
                g_assert_cmpstr(m.allow, ==, allow);
        if (status == 400)
                g_assert_nonnull(m.id_reason);
}

static void check_pass(HttpMethod method, const char *name, const char *path, bool management, HttpRoute route,
                       unsigned status) {
        HttpRouteMatch m;

        http_route(method, path, &m);
        http_route_pass_through(method, name, path, management, &m);
        if (m.route != route || m.status != status)
                g_error("%s %s: route %d status %u, expected route %d status %u", name, path, m.route, m.status, route,
                        status);
}

/* What a drop-in Glance endpoint keeps for itself, and what it passes on. */
static void test_route_pass_through(void) {
        /* Ours: reading image data, the generic path, health, metrics, the cache API when on. */
        check_pass(HTTP_METHOD_GET, "GET", "/v2/images/abc/file", false, HTTP_ROUTE_IMAGE, 0);
        check_pass(HTTP_METHOD_HEAD, "HEAD", "/v2/images/abc/file", false, HTTP_ROUTE_IMAGE, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/images/abc", false, HTTP_ROUTE_IMAGE, 0);
        check_pass(HTTP_METHOD_PUT, "PUT", "/images/abc", false, HTTP_ROUTE_IMAGE, 405);
        check_pass(HTTP_METHOD_GET, "GET", "/healthcheck", false, HTTP_ROUTE_HEALTHCHECK, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/metrics", false, HTTP_ROUTE_METRICS, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/v2/cache", true, HTTP_ROUTE_CACHE, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/v2/cached_images", true, HTTP_ROUTE_CACHED_IMAGES, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/v2/images/../x/file", false, HTTP_ROUTE_IMAGE, 400);
        /* Glance's: the version document, uploads, records, everything else under /v2. */
        check_pass(HTTP_METHOD_GET, "GET", "/", false, HTTP_ROUTE_DISCOVERY, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/versions", true, HTTP_ROUTE_DISCOVERY, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/v2", false, HTTP_ROUTE_DISCOVERY, 0);
        check_pass(HTTP_METHOD_POST, "POST", "/versions", false, HTTP_ROUTE_DISCOVERY, 405);
        check_pass(HTTP_METHOD_PUT, "PUT", "/v2/images/abc/file", false, HTTP_ROUTE_PASS, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/v2/images/abc", false, HTTP_ROUTE_PASS, 0);
        check_pass(HTTP_METHOD_OTHER, "PATCH", "/v2/images/abc", false, HTTP_ROUTE_PASS, 0);
        check_pass(HTTP_METHOD_DELETE, "DELETE", "/v2/images/abc", false, HTTP_ROUTE_PASS, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/v2/schemas/image", false, HTTP_ROUTE_PASS, 0);
        check_pass(HTTP_METHOD_GET, "GET", "/v2/cache", false, HTTP_ROUTE_PASS, 0); /* Glance's own cache API */
        check_pass(HTTP_METHOD_OTHER, "TRACE", "/v2/images", false, HTTP_ROUTE_PASS, 405);
        check_pass(HTTP_METHOD_OTHER, "CONNECT", "/v2/images", false, HTTP_ROUTE_PASS, 405);
        /* A node of the fleet telling of an image Glance dropped: ours (only peers may; http.c). */
        check_pass(HTTP_METHOD_DELETE, "DELETE", "/images/abc", false, HTTP_ROUTE_PEER_GONE, 0);
        check_pass(HTTP_METHOD_DELETE, "DELETE", "/images/../x", false, HTTP_ROUTE_PEER_GONE, 400);
        /* Nothing outside the image API. */
        check_pass(HTTP_METHOD_GET, "GET", "/v1/images", false, HTTP_ROUTE_NONE, 404);
        check_pass(HTTP_METHOD_GET, "GET", "/etc/passwd", false, HTTP_ROUTE_NONE, 404);
}

static void test_pass_invalidates(void) {
        char id[IMAGE_ID_MAX + 1];

        g_assert_true(http_pass_invalidates(HTTP_METHOD_DELETE, "/v2/images/abc", id));
        g_assert_cmpstr(id, ==, "abc");
        g_assert_true(http_pass_invalidates(HTTP_METHOD_POST, "/v2/images/abc/actions/deactivate", id));
        g_assert_false(http_pass_invalidates(HTTP_METHOD_POST, "/v2/images/abc/actions/reactivate", id));
        g_assert_false(http_pass_invalidates(HTTP_METHOD_GET, "/v2/images/abc", id));
        g_assert_false(http_pass_invalidates(HTTP_METHOD_DELETE, "/v2/images/abc/tags/x", id));
        g_assert_false(http_pass_invalidates(HTTP_METHOD_DELETE, "/v2/images/..", id));
        g_assert_false(http_pass_invalidates(HTTP_METHOD_DELETE, "/v2/images/", id));
        g_assert_false(http_pass_invalidates(HTTP_METHOD_DELETE, NULL, id));
}

static void test_parse_length(void) {
        uint64_t v;

        g_assert_cmpint(http_parse_length("0", &v), ==, 0);
        g_assert_cmpuint(v, ==, 0);
        g_assert_cmpint(http_parse_length(" 1048576 ", &v), ==, 0);
        g_assert_cmpuint(v, ==, 1048576);
        g_assert_cmpint(http_parse_length("18446744073709551614", &v), ==, 0);
        g_assert_cmpint(http_parse_length("18446744073709551615", &v), ==, -EINVAL);
        g_assert_cmpint(http_parse_length("99999999999999999999999", &v), ==, -EINVAL);
        g_assert_cmpint(http_parse_length("-1", &v), ==, -EINVAL);
        g_assert_cmpint(http_parse_length("1,2", &v), ==, -EINVAL);
        g_assert_cmpint(http_parse_length("", &v), ==, -EINVAL);
        g_assert_cmpint(http_parse_length(NULL, &v), ==, -EINVAL);
}

static void test_route(void) {
        check_route(HTTP_METHOD_GET, "/images/abc", HTTP_ROUTE_IMAGE, 0, "abc", "GET, HEAD");
        check_route(HTTP_METHOD_HEAD, "/images/a.b_c-1", HTTP_ROUTE_IMAGE, 0, "a.b_c-1", NULL);
        check_route(HTTP_METHOD_GET, "/v2/images/abc/file", HTTP_ROUTE_IMAGE, 0, "abc", NULL);
        check_route(HTTP_METHOD_PUT, "/images/abc", HTTP_ROUTE_IMAGE, 405, NULL, "GET, HEAD");
        check_route(HTTP_METHOD_OTHER, "/images/abc", HTTP_ROUTE_IMAGE, 405, NULL, "GET, HEAD");
        /* 405 is decided before the id is looked at. */
        check_route(HTTP_METHOD_POST, "/images/.x", HTTP_ROUTE_IMAGE, 405, NULL, NULL);

        /* Ids the validator refuses: 400 with its reason. */
        check_route(HTTP_METHOD_GET, "/images/", HTTP_ROUTE_IMAGE, 400, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/images/.hidden", HTTP_ROUTE_IMAGE, 400, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/images/a/b", HTTP_ROUTE_IMAGE, 400, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/images/..", HTTP_ROUTE_IMAGE, 400, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/images/cache.db", HTTP_ROUTE_IMAGE, 400, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/images/a b", HTTP_ROUTE_IMAGE, 400, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/v2/images//file", HTTP_ROUTE_IMAGE, 400, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/v2/images/a/b/file", HTTP_ROUTE_IMAGE, 400, NULL, NULL);

        /* 128 characters pass, 129 do not, however long the path. */
        char id[300];
        memset(id, 'a', sizeof(id));
        id[128] = 0;
        g_autofree char *p128 = g_strconcat("/images/", id, NULL);
        check_route(HTTP_METHOD_GET, p128, HTTP_ROUTE_IMAGE, 0, id, NULL);
        id[128] = 'a';
        id[299] = 0;
        g_autofree char *p299 = g_strconcat("/images/", id, NULL);
        check_route(HTTP_METHOD_GET, p299, HTTP_ROUTE_IMAGE, 400, NULL, NULL);
        HttpRouteMatch m;
        http_route(HTTP_METHOD_GET, p299, &m);
        g_assert_true(strstr(m.id_reason, "128"));

        /* Not ours. */
        check_route(HTTP_METHOD_GET, "/", HTTP_ROUTE_NONE, 404, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/images", HTTP_ROUTE_NONE, 404, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/v2/images/abc", HTTP_ROUTE_NONE, 404, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/v2/images/file", HTTP_ROUTE_NONE, 404, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/imagesabc", HTTP_ROUTE_NONE, 404, NULL, NULL);
        check_route(HTTP_METHOD_GET, "/healthcheck/", HTTP_ROUTE_NONE, 404, NULL, NULL);
        check_route(HTTP_METHOD_GET, NULL, HTTP_ROUTE_NONE, 404, NULL, NULL);

        check_route(HTTP_METHOD_GET, "/healthcheck", HTTP_ROUTE_HEALTHCHECK, 0, NULL, NULL);
        check_route(HTTP_METHOD_POST, "/healthcheck", HTTP_ROUTE_HEALTHCHECK, 405, NULL, "GET, HEAD");
        check_route(HTTP_METHOD_GET, "/metrics", HTTP_ROUTE_METRICS, 0, NULL, NULL);

        /* Management routes are flagged so the caller gates them. */
        http_route(HTTP_METHOD_GET, "/v2/cache", &m);
        g_assert_true(m.management);
        http_route(HTTP_METHOD_GET, "/images/x", &m);
        g_assert_false(m.management);

        check_route(HTTP_METHOD_GET, "/versions", HTTP_ROUTE_VERSIONS, 0, NULL, "GET");
        check_route(HTTP_METHOD_GET, "/v2/cache", HTTP_ROUTE_CACHE, 0, NULL, "GET, DELETE");
        check_route(HTTP_METHOD_DELETE, "/v2/cache", HTTP_ROUTE_CACHE, 0, NULL, NULL);
        check_route(HTTP_METHOD_PUT, "/v2/cache", HTTP_ROUTE_CACHE, 405, NULL, "GET, DELETE");
        check_route(HTTP_METHOD_PUT, "/v2/cache/abc", HTTP_ROUTE_CACHE_IMAGE, 0, "abc", NULL);
        check_route(HTTP_METHOD_DELETE, "/v2/cache/abc", HTTP_ROUTE_CACHE_IMAGE, 0, "abc", NULL);
        check_route(HTTP_METHOD_GET, "/v2/cache/abc", HTTP_ROUTE_CACHE_IMAGE, 405, NULL, "PUT, DELETE");
        check_route(HTTP_METHOD_PUT, "/v2/cache/.x", HTTP_ROUTE_CACHE_IMAGE, 400, NULL, NULL);
        check_route(HTTP_METHOD_POST, "/v2/cache/prune", HTTP_ROUTE_CACHE_PRUNE, 0, NULL, NULL);
        check_route(HTTP_METHOD_POST, "/v2/cache/clean", HTTP_ROUTE_CACHE_CLEAN, 0, NULL, NULL);
        /* "prune" is a valid image id as well. */
        check_route(HTTP_METHOD_PUT, "/v2/cache/prune", HTTP_ROUTE_CACHE_IMAGE, 0, "prune", NULL);
        check_route(HTTP_METHOD_GET, "/v2/cache/prune", HTTP_ROUTE_CACHE_IMAGE, 405, NULL, "PUT, DELETE, POST");
        check_route(HTTP_METHOD_POST, "/v2/cache/abc", HTTP_ROUTE_CACHE_IMAGE, 405, NULL, "PUT, DELETE");

        check_route(HTTP_METHOD_GET, "/v2/cached_images", HTTP_ROUTE_CACHED_IMAGES, 0, NULL, NULL);
        check_route(HTTP_METHOD_DELETE, "/v2/cached_images", HTTP_ROUTE_CACHED_IMAGES, 0, NULL, NULL);
        check_route(HTTP_METHOD_DELETE, "/v2/cached_images/abc", HTTP_ROUTE_CACHED_IMAGE, 0, "abc", NULL);
        check_route(HTTP_METHOD_GET, "/v2/cached_images/abc", HTTP_ROUTE_CACHED_IMAGE, 405, NULL, "DELETE");
        check_route(HTTP_METHOD_GET, "/v2/queued_images", HTTP_ROUTE_QUEUED_IMAGES, 0, NULL, NULL);
        check_route(HTTP_METHOD_DELETE, "/v2/queued_images", HTTP_ROUTE_QUEUED_IMAGES, 0, NULL, NULL);
        check_route(HTTP_METHOD_PUT, "/v2/queued_images/abc", HTTP_ROUTE_QUEUED_IMAGE, 0, "abc", NULL);
        check_route(HTTP_METHOD_DELETE, "/v2/queued_images/abc", HTTP_ROUTE_QUEUED_IMAGE, 0, "abc", NULL);
        check_route(HTTP_METHOD_GET, "/v2/queued_images/abc", HTTP_ROUTE_QUEUED_IMAGE, 405, NULL, "PUT, DELETE");
}

static void check_range(const char *value, uint64_t size, HttpRangeResult expected, uint64_t start, uint64_t length) {
        uint64_t s = 12345, l = 12345;
        HttpRangeResult r = http_range_parse(value, size, &s, &l);

        if (r != expected)
                g_error("Range '%s' of %" G_GUINT64_FORMAT ": %d, expected %d", value ?: "(null)", size, r, expected);
        if (r == HTTP_RANGE_SATISFIABLE) {
                g_assert_cmpuint(s, ==, start);
                g_assert_cmpuint(l, ==, length);
        } else {
                /* Written only on success. */
                g_assert_cmpuint(s, ==, 12345);
                g_assert_cmpuint(l, ==, 12345);
        }
}

static void test_range(void) {
        check_range("bytes=0-0", 100, HTTP_RANGE_SATISFIABLE, 0, 1);
        check_range("bytes=0-99", 100, HTTP_RANGE_SATISFIABLE, 0, 100);
        check_range("bytes=10-19", 100, HTTP_RANGE_SATISFIABLE, 10, 10);
        check_range("bytes=10-", 100, HTTP_RANGE_SATISFIABLE, 10, 90);
        check_range("bytes=99-", 100, HTTP_RANGE_SATISFIABLE, 99, 1);
        check_range("bytes=90-1000", 100, HTTP_RANGE_SATISFIABLE, 90, 10);        /* last clamped */
        check_range("bytes=90-99999999999999999999999", 100, HTTP_RANGE_SATISFIABLE, 90, 10);
        check_range("bytes=-1", 100, HTTP_RANGE_SATISFIABLE, 99, 1);
        check_range("bytes=-10", 100, HTTP_RANGE_SATISFIABLE, 90, 10);
        check_range("bytes=-1000", 100, HTTP_RANGE_SATISFIABLE, 0, 100);          /* suffix longer than all */
        check_range("BYTES=1-2", 100, HTTP_RANGE_SATISFIABLE, 1, 2);              /* unit is case-insensitive */
        check_range("bytes= 1-2 ", 100, HTTP_RANGE_SATISFIABLE, 1, 2);
        check_range("bytes=,1-2,", 100, HTTP_RANGE_SATISFIABLE, 1, 2);            /* empty list elements */

        check_range("bytes=100-", 100, HTTP_RANGE_UNSATISFIABLE, 0, 0);
        check_range("bytes=100-200", 100, HTTP_RANGE_UNSATISFIABLE, 0, 0);
        check_range("bytes=99999999999999999999999-", 100, HTTP_RANGE_UNSATISFIABLE, 0, 0);
        check_range("bytes=-0", 100, HTTP_RANGE_UNSATISFIABLE, 0, 0);
        check_range("bytes=0-", 0, HTTP_RANGE_UNSATISFIABLE, 0, 0);               /* empty representation */
        check_range("bytes=-5", 0, HTTP_RANGE_UNSATISFIABLE, 0, 0);

        /* Invalid: ignored, the whole representation is served. */
        check_range(NULL, 100, HTTP_RANGE_NONE, 0, 0);
        check_range("", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes=", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes=,", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes=-", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes=a-b", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes=5-1", 100, HTTP_RANGE_NONE, 0, 0);                     /* last < first */
        check_range("bytes=1-2x", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes=+1-2", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes = 1-2", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("items=1-2", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytesx=1-2", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes=1-2,x", 100, HTTP_RANGE_NONE, 0, 0);

        /* Several ranges: the whole representation (no multipart/byteranges), even when none fits. */
        check_range("bytes=0-1,5-6", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes=0-1, -5", 100, HTTP_RANGE_NONE, 0, 0);
        check_range("bytes=200-300,400-500", 100, HTTP_RANGE_NONE, 0, 0);

        /* Huge sizes. */
        check_range("bytes=18446744073709551614-", UINT64_MAX, HTTP_RANGE_SATISFIABLE, UINT64_MAX - 1, 1);
}

static void test_etag_list(void) {
        const char *etag = "\"sha256:abc\"";

        g_assert_true(http_etag_list_matches("\"sha256:abc\"", etag));
        g_assert_true(http_etag_list_matches("W/\"sha256:abc\"", etag));            /* weak comparison */
        g_assert_true(http_etag_list_matches("\"x\", \"sha256:abc\"", etag));
        g_assert_true(http_etag_list_matches("\"x\",W/\"sha256:abc\" ", etag));
        g_assert_true(http_etag_list_matches("*", etag));
        g_assert_true(http_etag_list_matches("\"a,b\", \"sha256:abc\"", etag));     /* comma inside a tag */
        g_assert_false(http_etag_list_matches("\"sha256:abd\"", etag));
        g_assert_false(http_etag_list_matches("\"sha256:ab\"", etag));
        g_assert_false(http_etag_list_matches("sha256:abc", etag));                 /* unquoted: malformed */
        g_assert_false(http_etag_list_matches("\"sha256:abc", etag));
        g_assert_false(http_etag_list_matches("", etag));
        g_assert_false(http_etag_list_matches(NULL, etag));
        g_assert_true(http_etag_list_matches("\"sha256:abc\"", "W/\"sha256:abc\""));
}

static void test_if_range(void) {
        const char *etag = "\"sha256:abc\"";
        usec_t lm = 784111777 * USEC_PER_SEC + 123;  /* Sun, 06 Nov 1994 08:49:37 GMT */

        g_assert_true(http_if_range_matches(NULL, etag, lm));
        g_assert_true(http_if_range_matches("\"sha256:abc\"", etag, lm));
        g_assert_false(http_if_range_matches("W/\"sha256:abc\"", etag, lm));        /* strong comparison */
        g_assert_false(http_if_range_matches("\"sha256:abc\"", "W/\"sha256:abc\"", lm));
        g_assert_false(http_if_range_matches("\"sha256:abd\"", etag, lm));
        g_assert_false(http_if_range_matches("\"sha256:abc\", \"x\"", etag, lm));   /* one validator only */
        g_assert_true(http_if_range_matches("Sun, 06 Nov 1994 08:49:37 GMT", etag, lm));
        g_assert_false(http_if_range_matches("Sun, 06 Nov 1994 08:49:38 GMT", etag, lm));
        g_assert_false(http_if_range_matches("Sun, 06 Nov 1994 08:49:36 GMT", etag, lm));
        g_assert_false(http_if_range_matches("garbage", etag, lm));
}

static void test_not_modified_since(void) {
        usec_t lm = 784111777 * USEC_PER_SEC;

        g_assert_true(http_not_modified_since("Sun, 06 Nov 1994 08:49:37 GMT", lm));
        g_assert_true(http_not_modified_since("Sun, 06 Nov 1994 08:49:38 GMT", lm));
        g_assert_true(http_not_modified_since("Sunday, 06-Nov-94 08:49:37 GMT", lm)); /* RFC 850 */
        g_assert_false(http_not_modified_since("Sun, 06 Nov 1994 08:49:36 GMT", lm));
        g_assert_false(http_not_modified_since("not a date", lm));
        g_assert_false(http_not_modified_since(NULL, lm));
}

static void test_format(void) {
        char date[HTTP_DATE_MAX], etag[HTTP_ETAG_MAX];

        g_assert_cmpstr(http_format_date(784111777 * USEC_PER_SEC + 999999, date), ==, "Sun, 06 Nov 1994 08:49:37 GMT");
        g_assert_cmpstr(http_format_date(0, date), ==, "Thu, 01 Jan 1970 00:00:00 GMT");
        g_assert_cmpstr(http_format_date(USEC_INFINITY, date), ==, "Fri, 31 Dec 9999 23:59:59 GMT");

        g_assert_cmpstr(http_format_etag("sha256:abc", 1, 2, etag, sizeof(etag)), ==, "\"sha256:abc\"");
        g_assert_cmpstr(http_format_etag(NULL, 255, 16, etag, sizeof(etag)), ==, "W/\"ff-10\"");
        g_assert_null(http_format_etag("sha256:abc", 1, 2, etag, 5));

        /* The longest checksum fits. */
        char sha512[7 + 128 + 1];
        memcpy(sha512, "sha512:", 7);
        memset(sha512 + 7, 'f', 128);
        sha512[135] = 0;
        g_assert_nonnull(http_format_etag(sha512, 1, 2, etag, sizeof(etag)));
}

static void test_token(void) {
        g_assert_true(http_token_equal("secret", "secret"));
        g_assert_false(http_token_equal("secret", "secreT"));
        g_assert_false(http_token_equal("secret", "secret2"));
        g_assert_false(http_token_equal("", ""));
        g_assert_false(http_token_equal(NULL, "x"));

        g_assert_cmpstr(http_request_token("abc", "Bearer def"), ==, "abc");
        g_assert_cmpstr(http_request_token(NULL, "Bearer def"), ==, "def");
        g_assert_cmpstr(http_request_token("", "bearer   def"), ==, "def");
        g_assert_null(http_request_token(NULL, "Basic ZGVm"));
        g_assert_null(http_request_token(NULL, "Bearer"));
        g_assert_null(http_request_token(NULL, "Bearer "));
        g_assert_null(http_request_token(NULL, "Bearerdef"));
        g_assert_null(http_request_token(NULL, NULL));
}

static void test_cache_control(void) {
        g_assert_true(http_cache_control_has("only-if-cached", "only-if-cached"));
        g_assert_true(http_cache_control_has("max-age=0, Only-If-Cached", "only-if-cached"));
        g_assert_true(http_cache_control_has(" no-store ,only-if-cached ", "only-if-cached"));
        g_assert_true(http_cache_control_has("max-age=5", "max-age"));
        g_assert_false(http_cache_control_has(NULL, "only-if-cached"));
        g_assert_false(http_cache_control_has("", "only-if-cached"));
        g_assert_false(http_cache_control_has("only-if-cached-not", "only-if-cached"));
        g_assert_false(http_cache_control_has("x=only-if-cached", "only-if-cached"));
        g_assert_false(http_cache_control_has("no-cache=\"only-if-cached\"", "only-if-cached"));
}

/* /v2/cache/nodes/<id> is its own route, GET only; "nodes" alone stays an image id. */
static void test_route_nodes(void) {
        HttpRouteMatch m;

        http_route(HTTP_METHOD_GET, "/v2/cache/nodes/img-1", &m);
        g_assert_cmpint(m.route, ==, HTTP_ROUTE_CACHE_NODES);
        g_assert_true(m.management);
        g_assert_cmpstr(m.id, ==, "img-1");
        http_route(HTTP_METHOD_DELETE, "/v2/cache/nodes/img-1", &m);
        g_assert_cmpuint(m.status, ==, 405);
        http_route(HTTP_METHOD_GET, "/v2/cache/nodes/../x", &m);
        g_assert_cmpuint(m.status, ==, 400);
        http_route(HTTP_METHOD_PUT, "/v2/cache/nodes", &m);
        g_assert_cmpint(m.route, ==, HTTP_ROUTE_CACHE_IMAGE);
}

static void assert_unescaped(const char *in, const char *out, size_t n, bool bad) {
        g_autofree char *s = g_strdup(in);
        bool b = !bad;

        g_assert_cmpuint(http_unescape(s, &b), ==, n);
        g_assert_cmpmem(s, n, out, n);
        g_assert_cmpint(s[n], ==, 0);
        g_assert_cmpint(b, ==, bad);
}

static void test_unescape(void) {
        assert_unescaped("/images/abc", "/images/abc", 11, false);
        assert_unescaped("/images/a%62c", "/images/abc", 11, false);
        assert_unescaped("/images/a%2Fb%2f", "/images/a/b/", 12, false);
        assert_unescaped("/a+b", "/a+b", 4, false);                  /* not a space in a path */
        assert_unescaped("/a%zz%4", "/a%zz%4", 7, false);            /* not hex: kept, as MHD does */
        assert_unescaped("%", "%", 1, false);
        assert_unescaped("/images/a%00.bin", "/images/a\0.bin", 14, true);
        assert_unescaped("/images/a%0d%0aX", "/images/a\r\nX", 12, true);
        assert_unescaped("/x%7f", "/x\x7f", 3, true);
        assert_unescaped("", "", 0, false);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/http-util/method", test_method);
        g_test_add_func("/http-util/route", test_route);
        g_test_add_func("/http-util/range", test_range);
        g_test_add_func("/http-util/etag-list", test_etag_list);
        g_test_add_func("/http-util/if-range", test_if_range);
        g_test_add_func("/http-util/not-modified-since", test_not_modified_since);
        g_test_add_func("/http-util/format", test_format);
        g_test_add_func("/http-util/token", test_token);
        g_test_add_func("/http-util/cache-control", test_cache_control);
        g_test_add_func("/http-util/route-nodes", test_route_nodes);
        g_test_add_func("/http-util/unescape", test_unescape);
        g_test_add_func("/http-util/route-pass-through", test_route_pass_through);
        g_test_add_func("/http-util/pass-invalidates", test_pass_invalidates);
        g_test_add_func("/http-util/parse-length", test_parse_length);

        return g_test_run();
}
