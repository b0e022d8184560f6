/* SPDX-License-Identifier: MIT */
/* The decoding of the request target and the router: the input is "METHOD\npath"; the decoded target
 * is no longer and NUL-terminated, and flagged exactly when it holds a control byte; the match must be
 * internally consistent (a 400 carries a reason, a known route an Allow value, an id is a NUL-terminated
 * prefix of the path). */

#include <assert.h>
#include <string.h>

#include "fuzz.h"
#include "http-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > FUZZ_INPUT_MAX)
                return 0;

        char *method = fuzz_next_field(&data, &size, '\n');
        char *path = fuzz_strndup(data, size);
        HttpMethod m = http_method_from_string(method);
        assert(m >= 0 && m < _HTTP_METHOD_MAX);

        HttpRouteMatch match;
        http_route(m, path, &match);
        assert(match.route >= 0 && match.route < _HTTP_ROUTE_MAX);
        assert(match.status == 0 || match.status == 400 || match.status == 404 || match.status == 405);
        if (match.route == HTTP_ROUTE_NONE)
                assert(match.status == 404);
        else
                assert(match.allow && match.status != 404);
        if (match.status == 400)
                assert(match.id_reason && *match.id_reason);
        assert(memchr(match.id, 0, sizeof(match.id)));
        if (match.status == 0 && match.id[0])
                assert(image_id_is_valid(match.id) && strstr(path, match.id));

        /* What the server does first (MHD's unescape callback), then routes what was decoded. */
        size_t n0 = strlen(path);
        bool bad;
        size_t n = http_unescape(path, &bad);
        assert(n <= n0 && path[n] == 0 && bad == memory_has_control(path, n));
        if (!bad) {
                http_route(m, path, &match);
                assert(match.route >= 0 && match.route < _HTTP_ROUTE_MAX);
        }

        /* Then as a drop-in Glance endpoint: whatever is passed on is under /v2 and never TRACE or CONNECT. */
        http_route(m, path, &match);
        http_route_pass_through(m, method, path, size % 2 == 0, &match);
        assert(match.route >= 0 && match.route < _HTTP_ROUTE_MAX);
        if (match.route == HTTP_ROUTE_PASS)
                assert(strncmp(path, "/v2/", 4) == 0 &&
                       (match.status == 405) == (!method || streq(method, "TRACE") || streq(method, "CONNECT")));
        char id[IMAGE_ID_MAX + 1];
        if (http_pass_invalidates(m, path, id))
                assert(image_id_is_valid(id) && strstr(path, id));
        uint64_t length;
        (void) http_parse_length(path, &length);

        http_route(m, NULL, &match);
        assert(match.route == HTTP_ROUTE_NONE && match.status == 404);

        free(method);
        free(path);
        return 0;
}
