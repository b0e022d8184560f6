/* SPDX-License-Identifier: MIT */
/* The pure helpers of the HTTP server (http-util.h): routes, Range, conditionals, dates, tokens, the
 * decoding of the request target. */

#include <assert.h>
#include <ctype.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <strings.h>
#include <time.h>

#include "http-util.h"

HttpMethod http_method_from_string(const char *s) {
        static const char *const table[] = {
                [HTTP_METHOD_GET] = "GET",
                [HTTP_METHOD_HEAD] = "HEAD",
                [HTTP_METHOD_PUT] = "PUT",
                [HTTP_METHOD_POST] = "POST",
                [HTTP_METHOD_DELETE] = "DELETE",
        };

        if (!s)
                return _HTTP_METHOD_INVALID;
        /* Methods are case-sensitive (RFC 9110 §9.1): "get" is some other method. */
        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (streq(s, table[i]))
                        return (HttpMethod) i;
        return HTTP_METHOD_OTHER;
}

static const char *startswith(const char *s, const char *prefix) {
        size_t n = strlen(prefix);
        return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

#define M(m) (1u << (m))

typedef struct RouteSpec {
        HttpRoute route;
        bool management;
        unsigned methods;
        const char *allow;
} RouteSpec;

static void route_set(HttpRouteMatch *ret, HttpMethod method, const RouteSpec *spec, const char *id, size_t id_len) {
        ret->route = spec->route;
        ret->management = spec->management;
        ret->allow = spec->allow;
        ret->status = 0;

        if (method < 0 || method >= _HTTP_METHOD_MAX || !(spec->methods & M(method))) {
                ret->status = 405;
                return;
        }

        if (!id)
                return;

        size_t n = MIN(id_len, sizeof(ret->id) - 1);
        memcpy(ret->id, id, n);
        ret->id[n] = 0;
        ret->id_reason = image_id_invalid_reason(ret->id);
        if (ret->id_reason)
                ret->status = 400;
}

void http_route(HttpMethod method, const char *path, HttpRouteMatch *ret) {
        static const RouteSpec image = { HTTP_ROUTE_IMAGE, false, M(HTTP_METHOD_GET) | M(HTTP_METHOD_HEAD), "GET, HEAD" };
        /* Only a node of the fleet may, and only to tell of an image gone upstream: anyone else gets 405. */
        static const RouteSpec peer_gone = { HTTP_ROUTE_PEER_GONE, false, M(HTTP_METHOD_DELETE), "GET, HEAD" };
        static const RouteSpec healthcheck = { HTTP_ROUTE_HEALTHCHECK, false, M(HTTP_METHOD_GET) | M(HTTP_METHOD_HEAD), "GET, HEAD" };
        static const RouteSpec metrics = { HTTP_ROUTE_METRICS, false, M(HTTP_METHOD_GET) | M(HTTP_METHOD_HEAD), "GET, HEAD" };
        static const RouteSpec versions = { HTTP_ROUTE_VERSIONS, true, M(HTTP_METHOD_GET), "GET" };
        static const RouteSpec cache = { HTTP_ROUTE_CACHE, true, M(HTTP_METHOD_GET) | M(HTTP_METHOD_DELETE), "GET, DELETE" };
        static const RouteSpec cache_image = { HTTP_ROUTE_CACHE_IMAGE, true, M(HTTP_METHOD_PUT) | M(HTTP_METHOD_DELETE), "PUT, DELETE" };
        /* "prune" and "clean" are valid image ids too: PUT and DELETE treat them as such. */
        static const RouteSpec cache_verb_image = { HTTP_ROUTE_CACHE_IMAGE, true, M(HTTP_METHOD_PUT) | M(HTTP_METHOD_DELETE), "PUT, DELETE, POST" };
        static const RouteSpec cache_prune = { HTTP_ROUTE_CACHE_PRUNE, true, M(HTTP_METHOD_POST), "PUT, DELETE, POST" };
        static const RouteSpec cache_clean = { HTTP_ROUTE_CACHE_CLEAN, true, M(HTTP_METHOD_POST), "PUT, DELETE, POST" };
        static const RouteSpec cache_nodes = { HTTP_ROUTE_CACHE_NODES, true, M(HTTP_METHOD_GET), "GET" };
        static const RouteSpec cached_images = { HTTP_ROUTE_CACHED_IMAGES, true, M(HTTP_METHOD_GET) | M(HTTP_METHOD_DELETE), "GET, DELETE" };
        static const RouteSpec cached_image = { HTTP_ROUTE_CACHED_IMAGE, true, M(HTTP_METHOD_DELETE), "DELETE" };
        static const RouteSpec queued_images = { HTTP_ROUTE_QUEUED_IMAGES, true, M(HTTP_METHOD_GET) | M(HTTP_METHOD_DELETE), "GET, DELETE" };
        static const RouteSpec queued_image = { HTTP_ROUTE_QUEUED_IMAGE, true, M(HTTP_METHOD_PUT) | M(HTTP_METHOD_DELETE), "PUT, DELETE" };
        const char *rest;

        assert(ret);

        *ret = (HttpRouteMatch) { .route = HTTP_ROUTE_NONE, .status = 404 };
        if (!path)
                return;

        if ((rest = startswith(path, "/images/")))
                return route_set(ret, method, method == HTTP_METHOD_DELETE ? &peer_gone : &image, rest, strlen(rest));

        if ((rest = startswith(path, "/v2/images/"))) {
                /* /v2/images/<id>/file; the image record itself (/v2/images/<id>) is the upstream's. */
                size_t n = strlen(rest);
                if (n < 5 || !streq(rest + n - 5, "/file"))
                        return;
                return route_set(ret, method, &image, rest, n - 5);
        }

        if (streq(path, "/healthcheck"))
                return route_set(ret, method, &healthcheck, NULL, 0);
        if (streq(path, "/metrics"))
                return route_set(ret, method, &metrics, NULL, 0);
        if (streq(path, "/versions"))
                return route_set(ret, method, &versions, NULL, 0);

        if (streq(path, "/v2/cache"))
                return route_set(ret, method, &cache, NULL, 0);
        if ((rest = startswith(path, "/v2/cache/"))) {
                const char *id = startswith(rest, "nodes/");
                if (id)
                        return route_set(ret, method, &cache_nodes, id, strlen(id));
                if (streq(rest, "prune") || streq(rest, "clean")) {
                        if (method == HTTP_METHOD_POST)
                                return route_set(ret, method, streq(rest, "prune") ? &cache_prune : &cache_clean,
                                                 NULL, 0);
                        return route_set(ret, method, &cache_verb_image, rest, strlen(rest));
                }
                return route_set(ret, method, &cache_image, rest, strlen(rest));
        }

        if (streq(path, "/v2/cached_images"))
                return route_set(ret, method, &cached_images, NULL, 0);
        if ((rest = startswith(path, "/v2/cached_images/")))
                return route_set(ret, method, &cached_image, rest, strlen(rest));
        if (streq(path, "/v2/queued_images"))
                return route_set(ret, method, &queued_images, NULL, 0);
        if ((rest = startswith(path, "/v2/queued_images/")))
                return route_set(ret, method, &queued_image, rest, strlen(rest));
}

bool http_host_is_sane(const char *host) {
        /* Echoed into a link: a host name or address with an optional port, nothing else. */
        if (isempty(host) || strlen(host) > 255)
                return false;
        for (const char *p = host; *p; p++)
                if (!isalnum((unsigned char) *p) && !strchr(".-:[]_%", *p))
                        return false;
        return true;
}

bool http_pass_invalidates(HttpMethod method, const char *path, char ret_id[static IMAGE_ID_MAX + 1]) {
        const char *rest = startswith(path ?: "", "/v2/images/");
        size_t n;

        if (!rest)
                return false;
        n = strcspn(rest, "/");
        if (n == 0 || n > IMAGE_ID_MAX)
                return false;
        if (!(method == HTTP_METHOD_DELETE && rest[n] == 0) &&
            !(method == HTTP_METHOD_POST && streq(rest + n, "/actions/deactivate")))
                return false;
        memcpy(ret_id, rest, n);
        ret_id[n] = 0;
        return image_id_invalid_reason(ret_id) == NULL;
}

void http_route_pass_through(HttpMethod method, const char *method_name, const char *path, bool management_api,
                             HttpRouteMatch *m) {
        static const RouteSpec discovery = { HTTP_ROUTE_DISCOVERY, false, M(HTTP_METHOD_GET) | M(HTTP_METHOD_HEAD), "GET, HEAD" };
        bool image_data = m->route == HTTP_ROUTE_IMAGE && startswith(path ?: "", "/v2/images/");

        if (!path)
                return;
        if (streq(path, "/") || streq(path, "/versions") || streq(path, "/v2") || streq(path, "/v2/"))
                return route_set(m, method, &discovery, NULL, 0);
        /* Ours: the image data read (GET, HEAD), the generic image path, health, metrics, and the cache API
         * when it is on. */
        if (image_data ? m->status != 405 : m->route != HTTP_ROUTE_NONE && !(m->management && !management_api))
                return;
        if (!startswith(path, "/v2/"))
                return;
        *m = (HttpRouteMatch) { .route = HTTP_ROUTE_PASS };
        if (!method_name || streq(method_name, "TRACE") || streq(method_name, "CONNECT")) {
                m->status = 405;
                m->allow = "GET, HEAD, POST, PUT, PATCH, DELETE";
        }
}

static const char *skip_ows(const char *p) {
        while (*p == ' ' || *p == '\t')
                p++;
        return p;
}

/* 1*DIGIT, saturating at UINT64_MAX: a huge first-pos is unsatisfiable, a huge last-pos or suffix means
 * "to the end", so saturation gives the right answer without overflow. */
static int parse_digits(const char **p, uint64_t *ret) {
        const char *s = *p;
        uint64_t v = 0;

        if (*s < '0' || *s > '9')
                return -EINVAL;
        for (; *s >= '0' && *s <= '9'; s++) {
                unsigned d = (unsigned) (*s - '0');
                v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
        }
        *p = s;
        *ret = v;
        return 0;
}

int http_parse_length(const char *s, uint64_t *ret) {
        uint64_t v;

        s = skip_ows(s ?: "");
        if (parse_digits(&s, &v) < 0 || v == UINT64_MAX || *skip_ows(s) != 0)
                return -EINVAL;
        *ret = v;
        return 0;
}


HttpRangeResult http_range_parse(const char *value, uint64_t size, uint64_t *ret_start, uint64_t *ret_length) {
        uint64_t start = 0, length = 0;
        unsigned n_specs = 0;
        bool satisfiable = false;
        const char *p;

        if (!value)
                return HTTP_RANGE_NONE;

        /* range-unit is case-insensitive; no whitespace around '=' in the grammar. */
        if (strncasecmp(value, "bytes", 5) != 0 || value[5] != '=')
                return HTTP_RANGE_NONE;
        p = value + 6;

        for (;;) {
                uint64_t first, last;

                /* 1#range-spec: empty list elements are allowed and ignored (RFC 9110 §5.6.1). */
                p = skip_ows(p);
                if (*p == ',') {
                        p++;
                        continue;
                }
                if (!*p)
                        break;

                if (*p == '-') {
                        /* suffix-range: the last N bytes. */
                        p++;
                        if (parse_digits(&p, &last) < 0)
                                return HTTP_RANGE_NONE;
                        if (last > 0 && size > 0) {
                                satisfiable = true;
                                start = size > last ? size - last : 0;
                                length = size - start;
                        }
                } else {
                        if (parse_digits(&p, &first) < 0 || *p != '-')
                                return HTTP_RANGE_NONE;
                        p++;
                        if (*p >= '0' && *p <= '9') {
                                if (parse_digits(&p, &last) < 0)
                                        return HTTP_RANGE_NONE;
                                if (last < first)  /* invalid, not merely unsatisfiable */
                                        return HTTP_RANGE_NONE;
                        } else
                                last = UINT64_MAX;

                        if (first < size) {
                                satisfiable = true;
                                start = first;
                                length = MIN(last, size - 1) - first + 1;
                        }
                }

                n_specs++;
                p = skip_ows(p);
                if (*p == ',')
                        p++;
                else if (*p)
                        return HTTP_RANGE_NONE;
        }

        /* No spec at all is invalid syntax; several are answered with the whole representation. */
        if (n_specs != 1)
                return HTTP_RANGE_NONE;
        if (!satisfiable)
                return HTTP_RANGE_UNSATISFIABLE;

        if (ret_start)
                *ret_start = start;
        if (ret_length)
                *ret_length = length;
        return HTTP_RANGE_SATISFIABLE;
}

/* The opaque-tag (quotes included) at *p, after an optional W/. Returns its length, 0 when malformed. */
static size_t entity_tag_at(const char **p, bool *ret_weak) {
        const char *s = *p, *close;
        bool weak = false;

        if (s[0] == 'W' && s[1] == '/') {
                weak = true;
                s += 2;
        }
        if (*s != '"')
                return 0;
        close = strchr(s + 1, '"');
        if (!close)
                return 0;

        *p = s;
        if (ret_weak)
                *ret_weak = weak;
        return (size_t) (close - s) + 1;
}

bool http_etag_list_matches(const char *header, const char *etag) {
        const char *ours = etag, *p = header;
        size_t ours_len;

        if (!header || !etag)
                return false;
        ours_len = entity_tag_at(&ours, NULL);
        if (ours_len == 0)
                return false;

        for (;;) {
                size_t n;

                p = skip_ows(p);
                if (*p == ',') {
                        p++;
                        continue;
                }
                if (!*p)
                        return false;
                if (*p == '*')
                        return true;

                n = entity_tag_at(&p, NULL);
                if (n == 0)
                        return false;  /* malformed: match nothing rather than guess */
                if (n == ours_len && memcmp(p, ours, n) == 0)
                        return true;
                p += n;
                p = skip_ows(p);
                if (*p && *p != ',')
                        return false;
        }
}

bool http_if_range_matches(const char *value, const char *etag, usec_t last_modified) {
        const char *p;

        if (!value)
                return true;  /* no If-Range: nothing stops the Range */

        p = skip_ows(value);
        if (p[0] == 'W' && p[1] == '/')
                return false;  /* weak validators never match If-Range */
        if (*p == '"') {
                const char *theirs = p;
                size_t n = entity_tag_at(&theirs, NULL);
                bool ours_weak = false;
                const char *ours = etag;
                size_t m = etag ? entity_tag_at(&ours, &ours_weak) : 0;

                if (n == 0 || m == 0 || ours_weak)
                        return false;
                if (*skip_ows(theirs + n))
                        return false;
                return n == m && memcmp(theirs, ours, n) == 0;
        }

        time_t t = curl_getdate(p, NULL);
        if (t == (time_t) -1)
                return false;
        return (usec_t) t == last_modified / USEC_PER_SEC;
}

bool http_not_modified_since(const char *value, usec_t last_modified) {
        if (!value)
                return false;

        time_t t = curl_getdate(value, NULL);
        if (t == (time_t) -1 || t < 0)
                return false;
        return last_modified / USEC_PER_SEC <= (usec_t) t;
}

char *http_format_date(usec_t t, char buf[static HTTP_DATE_MAX]) {
        static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
        static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        time_t sec = (time_t) MIN(t / USEC_PER_SEC, (usec_t) 253402300799); /* 9999-12-31T23:59:59Z */
        struct tm tm;

        if (!gmtime_r(&sec, &tm)) {
                sec = 0;
                (void) gmtime_r(&sec, &tm);
        }

        /* Written by hand rather than with strftime(), whose day and month names follow the locale. */
        snprintf(buf, HTTP_DATE_MAX, "%s, %02u %s %04u %02u:%02u:%02u GMT",
                 days[(unsigned) tm.tm_wday % 7], (unsigned) tm.tm_mday % 100, months[(unsigned) tm.tm_mon % 12],
                 (unsigned) (tm.tm_year + 1900) % 10000, (unsigned) tm.tm_hour % 100, (unsigned) tm.tm_min % 100,
                 (unsigned) tm.tm_sec % 100);
        return buf;
}

char *http_format_etag(const char *checksum, uint64_t size, usec_t last_modified, char *buf, size_t n) {
        int k;

        if (!isempty(checksum))
                k = snprintf(buf, n, "\"%s\"", checksum);
        else
                k = snprintf(buf, n, "W/\"%" PRIx64 "-%" PRIx64 "\"", size, last_modified);

        return k < 0 || (size_t) k >= n ? NULL : buf;
}

bool http_token_equal(const char *a, const char *b) {
        unsigned char da[EVP_MAX_MD_SIZE], db[EVP_MAX_MD_SIZE];
        unsigned na = 0, nb = 0;

        if (isempty(a) || isempty(b))
                return false;

        /* Hashing both sides first makes the comparison's time independent of the lengths too. */
        if (EVP_Digest(a, strlen(a), da, &na, EVP_sha256(), NULL) != 1 ||
            EVP_Digest(b, strlen(b), db, &nb, EVP_sha256(), NULL) != 1 ||
            na != nb)
                return false;

        return CRYPTO_memcmp(da, db, na) == 0;
}

const char *http_request_token(const char *x_auth_token, const char *authorization) {
        if (!isempty(x_auth_token))
                return x_auth_token;

        if (!authorization || strncasecmp(authorization, "Bearer", 6) != 0 ||
            (authorization[6] != ' ' && authorization[6] != '\t'))
                return NULL;

        const char *p = skip_ows(authorization + 6);
        return isempty(p) ? NULL : p;
}

bool http_cache_control_has(const char *value, const char *directive) {
        size_t n = strlen(directive);

        for (const char *p = value; p && *p;) {
                p = skip_ows(p);
                size_t len = strcspn(p, ",=");
                size_t name = len;
                while (name > 0 && (p[name - 1] == ' ' || p[name - 1] == '\t'))
                        name--;
                if (name == n && strncasecmp(p, directive, n) == 0)
                        return true;
                p = strchr(p, ',');
                if (p)
                        p++;
        }
        return false;
}

size_t http_unescape(char *s, bool *ret_bad) {
        size_t r = 0, w = 0;

        while (s[r]) {
                int hi, lo;

                if (s[r] == '%' && (hi = unhex_char(s[r + 1])) >= 0 && (lo = unhex_char(s[r + 2])) >= 0) {
                        s[w++] = (char) (hi << 4 | lo);
                        r += 3;
                } else
                        s[w++] = s[r++];
        }
        s[w] = 0;
        *ret_bad = memory_has_control(s, w);
        return w;
}
