/* SPDX-License-Identifier: MIT */
/* A request passed through to the upstream (Kind=glance, PassThrough=yes): every Glance API request the
 * cache does not answer itself — image records, schemas, lists, members, tags, tasks, uploads, deletes —
 * so that Nova, Cinder, glanceclient and openstacksdk can use imgcached as their image endpoint with
 * nothing changed but the URL. The exchange (upstream-exchange.h) carries the client's method, target,
 * headers and body to the upstream and its answer back, each way through a bounded buffer; the client's
 * own credentials go with it and never the daemon's. The request's lifecycle is the server's: it waits
 * (REQUEST_WAIT_PASS_*) with its connection suspended for room in the upload buffer, for the upstream's
 * headers, and in the content reader for the upstream's next bytes. */

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http-internal.h"
#include "http-manage.h"
#include "log.h"

/* After an early answer of the upstream (a refusal before the whole upload), this much more of the body is
 * read and dropped, so that the client reads the answer rather than a reset; beyond, it is answered at
 * once and the connection closed. */
#define PASS_DISCARD_MAX (4U * 1024U * 1024U)
/* A version document is rewritten whole: more than this is not one. */
#define PASS_DISCOVERY_MAX (64U * 1024U)
#define PASS_BLOCK_SIZE (64U * 1024U)

struct Pass {
        HttpServer *server;
        Request *request;           /* NULL once the request is over (its response may still hold the pass) */
        UpstreamExchange *exchange;
        FetcherAddressWait *address_wait; /* waiting for Keystone's catalog to name the upstream */
        bool discovery;             /* the version document: read whole, its links rewritten */
        bool body_done;             /* the client's whole body was handed on */
        bool in_response;           /* the MHD response owns it */
        bool close_delimited;       /* no length and no chunked encoding (HTTP/1.0) */
        uint64_t discarded;         /* body bytes read after the upstream answered early, and dropped */
        char *public_base;          /* where the client reached us: links are rewritten to it */
        Pass *passes_prev, *passes_next;
};

/* ---- what goes out, what comes back ------------------------------------------------------------- */

/* Hop-by-hop (RFC 9110 §7.6.1), and what the exchange sets itself or must never pass on. */
static bool header_is_ours(const char *name) {
        static const char *const names[] = {
                "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
                "TE", "Trailer", "Transfer-Encoding", "Upgrade",
                "Host", "Content-Length", "Expect",
                "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded",
        };

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strcasecmp(name, names[i]) == 0)
                        return true;
        /* The fleet's secret is for this node, never for the upstream. */
        return strncasecmp(name, "Imgcache-", 9) == 0;
}

/* A header the Connection: header names is hop-by-hop too. */
static bool connection_names(const char *connection, const char *name) {
        size_t n = strlen(name);

        for (const char *p = connection; p && *p;) {
                p += strspn(p, " \t,");
                size_t k = strcspn(p, " \t,");
                if (k == n && strncasecmp(p, name, n) == 0)
                        return true;
                p += k;
        }
        return false;
}

typedef struct HeaderCopy {
        struct curl_slist *lines;
        const char *connection;
        int error;
} HeaderCopy;

static enum MHD_Result copy_request_header(void *cls, enum MHD_ValueKind kind, const char *name, const char *value) {
        HeaderCopy *h = cls;

        if (!name || header_is_ours(name) || connection_names(h->connection, name))
                return MHD_YES;
        /* "Name;" sends a header with an empty value; "Name:" would remove curl's own. */
        if (h->error >= 0)
                h->error = isempty(value) ? transport_header_addf(&h->lines, "%s;", name)
                                          : transport_header_addf(&h->lines, "%s: %s", name, value);
        return MHD_YES;
}

static int pass_request_headers(Request *req, struct curl_slist **ret) {
        struct MHD_Connection *c = req->connection;
        const char *client = http_request_client(req), *host = http_header(c, MHD_HTTP_HEADER_HOST);
        const char *xff = http_header(c, "X-Forwarded-For");
        HeaderCopy h = { .connection = http_header(c, MHD_HTTP_HEADER_CONNECTION) };
        char peer[PEER_KEY_MAX];

        (void) MHD_get_connection_values(c, MHD_HEADER_KIND, copy_request_header, &h);
        /* A trusted proxy's chain goes on, with that proxy added; anyone else's is replaced. */
        if (h.error >= 0 && req->forwarded && peer_key(c, peer))
                h.error = transport_header_addf(&h.lines, "X-Forwarded-For: %s, %s", xff, peer);
        else if (h.error >= 0 && client)
                h.error = transport_header_addf(&h.lines, "X-Forwarded-For: %s", client);
        if (h.error >= 0)
                h.error = transport_header_addf(&h.lines, "X-Forwarded-Proto: http");
        if (h.error >= 0 && host)
                h.error = transport_header_addf(&h.lines, "X-Forwarded-Host: %s", host);
        /* curl would wait a second for a 100 Continue before an upload. */
        if (h.error >= 0)
                h.error = transport_header_addf(&h.lines, "Expect:");
        if (h.error < 0) {
                transport_headers_free(h.lines);
                return h.error;
        }
        *ret = h.lines;
        return 0;
}

/* base without its trailing slashes, as a length. */
static size_t base_length(const char *base) {
        size_t n = strlen(base);
        while (n > 0 && base[n - 1] == '/')
                n--;
        return n;
}

/* A link the upstream gave, as the client must see it: the upstream's base becomes ours; any other
 * absolute http(s) link keeps its path under our base (Glance builds links from the Host it was asked
 * with). NULL: leave it. */
static char *rewrite_link(const char *link, const char *upstream, const char *public_base) {
        size_t n = base_length(upstream), m = base_length(public_base);
        const char *rest = NULL;
        char *s;

        if (strncmp(link, upstream, n) == 0 && (link[n] == '/' || link[n] == 0))
                rest = link + n;
        else if (strncasecmp(link, "http://", 7) == 0 || strncasecmp(link, "https://", 8) == 0) {
                const char *authority = strstr(link, "://") + 3;
                rest = authority + strcspn(authority, "/");
        }
        if (!rest || asprintf(&s, "%.*s%s", (int) m, public_base, rest) < 0)
                return NULL;
        return s;
}

static void rewrite_hrefs(json_t *j, const char *upstream, const char *public_base) {
        const char *key;
        json_t *v;
        size_t i;

        if (json_is_array(j))
                json_array_foreach(j, i, v)
                        rewrite_hrefs(v, upstream, public_base);
        else if (json_is_object(j))
                json_object_foreach(j, key, v) {
                        if (streq(key, "href") && json_is_string(v)) {
                                _cleanup_(freep) char *s = rewrite_link(json_string_value(v), upstream, public_base);
                                if (s)
                                        (void) json_string_set(v, s);
                        } else
                                rewrite_hrefs(v, upstream, public_base);
                }
}

/* The management API's versions (the cache API's among them) that the upstream does not list. */
static void add_cache_versions(json_t *doc, const char *public_base) {
        json_t *theirs = json_object_get(doc, "versions"), *v;
        _cleanup_(freep) char *href = NULL;
        size_t i;

        if (!json_is_array(theirs) || asprintf(&href, "%.*s/v2/", (int) base_length(public_base), public_base) < 0)
                return;
        json_auto_t *ours = http_manage_versions(href);
        json_array_foreach(ours, i, v) {
                const char *id = json_string_value(json_object_get(v, "id"));
                bool listed = false;
                json_t *t;
                size_t k;

                json_array_foreach(theirs, k, t)
                        listed = listed || (id && json_is_string(json_object_get(t, "id")) &&
                                            streq(json_string_value(json_object_get(t, "id")), id));
                if (!listed)
                        (void) json_array_append(theirs, v);
        }
}

/* The version document with its links naming us; NULL when it is not JSON (passed on as it is). */
static char *rewrite_discovery(Pass *p, const char *body, size_t n) {
        const char *upstream = fetcher_upstream_url(p->server->fetcher);
        json_auto_t *doc = json_loadb(body, n, 0, NULL);

        if (!doc || !upstream)
                return NULL;
        rewrite_hrefs(doc, upstream, p->public_base);
        if (p->server->management_api)
                add_cache_versions(doc, p->public_base);
        return json_dumps(doc, JSON_COMPACT);
}

/* The upstream's headers for the client: without hop-by-hop ones, and with a Location naming us. */
static void add_response_headers(Pass *p, struct MHD_Response *resp) {
        const char *connection = NULL;
        size_t n = upstream_exchange_n_headers(p->exchange);

        for (size_t i = 0; i < n; i++) {
                const char *line = upstream_exchange_header(p->exchange, i);
                if (strncasecmp(line, "Connection:", 11) == 0)
                        connection = line + 11;
        }
        for (size_t i = 0; i < n; i++) {
                const char *line = upstream_exchange_header(p->exchange, i), *colon = strchr(line, ':');
                _cleanup_(freep) char *name = NULL, *location = NULL;
                const char *value;

                if (!colon || !(name = strndup(line, (size_t) (colon - line))))
                        continue;
                value = colon + 1 + strspn(colon + 1, " \t");
                if (header_is_ours(name) || connection_names(connection, name))
                        continue;
                if (strcasecmp(name, "Location") == 0 && fetcher_upstream_url(p->server->fetcher))
                        location = rewrite_link(value, fetcher_upstream_url(p->server->fetcher), p->public_base);
                (void) MHD_add_response_header(resp, name, location ?: value);
        }
}

/* The upstream's Content-Length, or UINT64_MAX. */
static uint64_t response_length(const Pass *p) {
        size_t n = upstream_exchange_n_headers(p->exchange);

        for (size_t i = 0; i < n; i++) {
                const char *line = upstream_exchange_header(p->exchange, i);
                uint64_t v;
                if (strncasecmp(line, "Content-Length:", 15) == 0 &&
                    http_parse_length(line + 15, &v) >= 0)
                        return v;
        }
        return UINT64_MAX;
}

/* ---- lifecycle ------------------------------------------------------------------------------------ */

static bool wait_is_pass(RequestWait w) {
        return w == REQUEST_WAIT_PASS_UPLOAD || w == REQUEST_WAIT_PASS_HEADERS || w == REQUEST_WAIT_PASS_BYTES;
}

/* Anything new on the exchange wakes the request when it waits on it. */
static void pass_on_event(UpstreamExchange *x, void *userdata) {
        Pass *p = userdata;

        if (p->request && p->request->suspended && wait_is_pass(p->request->wait))
                http_request_wake(p->request);
}

static Pass *pass_free(Pass *p) {
        if (!p)
                return NULL;
        LIST_REMOVE(passes, p->server->passes, p);
        fetcher_address_wait_free(p->address_wait);
        upstream_exchange_free(p->exchange);
        free(p->public_base);
        free(p);
        return NULL;
}

void http_pass_detach(Request *req) {
        Pass *p = req->pass;

        req->pass = NULL;
        if (!p)
                return;
        if (p->in_response)
                p->request = NULL;
        else
                pass_free(p);
}

static void pass_response_free(void *cls) {
        Pass *p = cls;

        if (p->request)
                p->request->pass = NULL;
        pass_free(p);
}

void http_pass_abort_all(HttpServer *s) {
        /* The transfers are on the fetcher's loop, which may go first: end them now. Readers then fail. */
        for (Pass *p = s->passes; p; p = p->passes_next)
                p->exchange = upstream_exchange_free(p->exchange);
}

/* The upstream's address became known (URL= unset, Keystone answered), or cannot be. */
static void pass_on_address(Fetcher *fe, int error, void *userdata) {
        Pass *p = userdata;

        p->address_wait = NULL;  /* freed by the fetcher after this */
        if (error >= 0)
                error = fetcher_exchange(fe, p->exchange);
        if (error < 0)
                upstream_exchange_fail(p->exchange, error); /* wakes the request */
}

/* ---- the response --------------------------------------------------------------------------------- */

static ssize_t pass_read(void *cls, uint64_t pos, char *buf, size_t max) {
        Pass *p = cls;
        Request *req = p->request;
        int error;
        size_t n;

        if (p->server->stopping || !p->exchange || !req) {
                if (req)
                        http_connection_end(p->server, req->connection);
                return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        n = upstream_exchange_read(p->exchange, buf, max);
        if (n > 0) {
                req->streamed += n;
                p->server->counters.pass_bytes_down += n;
                return (ssize_t) n;
        }
        if (upstream_exchange_ended(p->exchange, &error)) {
                /* A body cut short, or longer than said (MHD stops asking at the length), is an error. */
                if (error < 0 || p->close_delimited)
                        http_connection_end(p->server, req->connection);
                return error < 0 ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
        }
        http_request_wait(req, REQUEST_WAIT_PASS_BYTES);
        return 0;
}

static enum MHD_Result pass_respond_error(Request *req, int error) {
        /* Never the upstream's address or the reason in detail: a class of failure. */
        if (error == -ETIMEDOUT)
                return http_respond_text(req->connection, MHD_HTTP_GATEWAY_TIMEOUT, "The image service did not answer in time\n");
        if (error == -ENXIO)
                return http_respond_text(req->connection, MHD_HTTP_BAD_GATEWAY, "No image service is configured\n");
        return http_respond_text(req->connection, MHD_HTTP_BAD_GATEWAY, "The image service cannot be reached\n");
}

/* A successful DELETE of an image, or its deactivation, through us: the local copy goes at once. */
static void pass_note_success(Pass *p, Request *req) {
        HttpServer *s = p->server;
        char id[IMAGE_ID_MAX + 1];
        long status = upstream_exchange_status(p->exchange);

        if (status < 200 || status >= 300 || !http_pass_invalidates(req->method, req->url, id))
                return;
        http_server_drop_image(s, id, "it was deleted or deactivated through this node");
        http_server_tell_peers_gone(s, id);
}

/* Queues an answer whose whole body is here (n bytes at body, copied; a HEAD's says length), with the
 * upstream's status and headers. */
static enum MHD_Result pass_queue_whole(Pass *p, Request *req, long status, const void *body, size_t n,
                                        uint64_t head_length) {
        bool head = req->method == HTTP_METHOD_HEAD;
        struct MHD_Response *resp;

        resp = head ? http_response_for_head(head_length == UINT64_MAX ? MHD_SIZE_UNKNOWN : head_length)
                    : MHD_create_response_from_buffer(n, (void *) body, MHD_RESPMEM_MUST_COPY);
        if (!resp)
                return MHD_NO;
        add_response_headers(p, resp);
        p->server->counters.pass_bytes_down += head ? 0 : n;
        return http_queue_response_sized(req->connection, (unsigned) status, resp, head ? 0 : n);
}

/* The version document: read whole, and its links rewritten (passed on as it is when it is no JSON). */
static enum MHD_Result pass_respond_discovery(Pass *p, Request *req, long status) {
        size_t n = upstream_exchange_available(p->exchange);
        _cleanup_(freep) char *body = NULL, *rewritten = NULL;

        if (n > PASS_DISCOVERY_MAX || !upstream_exchange_ended(p->exchange, NULL))
                return pass_respond_error(req, -EPROTO);
        body = malloc(MAX(n, 1U));
        if (!body)
                return MHD_NO;
        n = upstream_exchange_read(p->exchange, body, n);
        rewritten = rewrite_discovery(p, body, n);
        if (rewritten)
                return pass_queue_whole(p, req, status, rewritten, strlen(rewritten), strlen(rewritten));
        return pass_queue_whole(p, req, status, body, n, n);
}

static enum MHD_Result pass_respond(Pass *p, Request *req) {
        long status = upstream_exchange_status(p->exchange);
        uint64_t length = response_length(p);
        struct MHD_Response *resp;
        int error;
        bool ended = upstream_exchange_ended(p->exchange, &error);

        if (!upstream_exchange_has_head(p->exchange) || (p->discovery && error < 0))
                return pass_respond_error(req, error);
        if (status < 100 || status > 599)
                return pass_respond_error(req, -EPROTO);
        pass_note_success(p, req);

        if (p->discovery)
                return pass_respond_discovery(p, req, status);
        /* No body, whether or not the transfer is over yet: nothing for a reader to wait for. */
        if (status == MHD_HTTP_NO_CONTENT || status == MHD_HTTP_NOT_MODIFIED || length == 0)
                return pass_queue_whole(p, req, status, NULL, 0, length);
        if (req->method == HTTP_METHOD_HEAD)
                return pass_queue_whole(p, req, status, NULL, 0, length);
        if (ended && error == 0) {
                /* All of it is here (records, lists, errors: the common case): one copy, no reader. */
                size_t n = upstream_exchange_available(p->exchange);
                _cleanup_(freep) char *body = malloc(MAX(n, 1U));
                if (!body)
                        return MHD_NO;
                n = upstream_exchange_read(p->exchange, body, n);
                return pass_queue_whole(p, req, status, body, n, n);
        }

        resp = MHD_create_response_from_callback(length == UINT64_MAX ? MHD_SIZE_UNKNOWN : length, PASS_BLOCK_SIZE,
                                                 pass_read, p, pass_response_free);
        if (!resp)
                return MHD_NO;
        p->in_response = true;  /* the response frees it from now on */
        p->close_delimited = length == UINT64_MAX && req->http10;
        add_response_headers(p, resp);
        return http_queue_response(req->connection, (unsigned) status, resp);
}

/* ---- the request ---------------------------------------------------------------------------------- */

/* The base URL the client reached us at: PublicURL=, else http:// and the Host it asked for. */
static char *public_base(HttpServer *s, Request *req) {
        const char *host = http_header(req->connection, MHD_HTTP_HEADER_HOST);
        char *b;

        if (s->config->public_url)
                return strdup(s->config->public_url);
        if (!http_host_is_sane(host))
                host = "localhost";
        return asprintf(&b, "http://%s", host) < 0 ? NULL : b;
}

enum MHD_Result http_pass_begin(HttpServer *s, Request *req, struct MHD_Connection *c, const char *method) {
        HttpConnection *hc = http_connection_context(c);
        uint64_t length = UINT64_MAX;
        const char *cl;
        Pass *p;
        int r;

        if (!s->fetcher || !fetcher_has_upstream(s->fetcher))
                return pass_respond_error(req, -ENXIO);
        if (!hc || !hc->target)
                return MHD_NO;
        if (!http_request_charge_upstream(req))
                return http_respond_429(c, req->retry_after);

        cl = http_header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && http_parse_length(cl, &length) < 0)
                return http_respond_400_close(c, "Invalid Content-Length\n");
        UpstreamExchangeRequest xr = {
                .method = method,
                .target = hc->target,
                /* A POST, PUT or PATCH without a body still says so (Content-Length: 0). */
                .body = req->body_announced || req->method == HTTP_METHOD_POST || req->method == HTTP_METHOD_PUT ||
                        streq(method, "PATCH"),
                .body_size = req->body_announced ? length : 0,
        };

        p = calloc(1, sizeof(Pass));
        if (!p)
                return MHD_NO;
        *p = (Pass) {
                .server = s,
                .request = req,
                .discovery = req->match.route == HTTP_ROUTE_DISCOVERY,
                .body_done = !xr.body,
        };
        LIST_PREPEND(passes, s->passes, p);
        req->pass = p;
        req->cache = ACCESS_LOG_CACHE_PASS;
        s->counters.pass_requests++;

        p->public_base = public_base(s, req);
        r = p->public_base ? pass_request_headers(req, &xr.headers) : -ENOMEM;
        if (r >= 0)
                r = upstream_exchange_new(&xr, pass_on_event, p, &p->exchange);
        transport_headers_free(xr.headers); /* NULL when the exchange took it */
        if (r < 0)
                return MHD_NO;  /* freed when the request completes */

        r = fetcher_wait_address(s->fetcher, pass_on_address, p, &p->address_wait);
        if (r >= 0 && !p->address_wait)
                r = fetcher_exchange(s->fetcher, p->exchange);
        if (r < 0)
                upstream_exchange_fail(p->exchange, r);
        return MHD_YES;  /* on with the body, or to the answer at the next call */
}

enum MHD_Result http_pass_on_request(HttpServer *s, Request *req, const char *upload_data, size_t *upload_data_size) {
        Pass *p = req->pass;
        RequestPending unused;
        bool ended;

        (void) http_request_take_wait(req, &unused); /* the pass's waits keep nothing */
        if (s->stopping || !p->exchange)
                return http_respond_text(req->connection, MHD_HTTP_SERVICE_UNAVAILABLE, "Try again\n");

        ended = upstream_exchange_ended(p->exchange, NULL);
        if (*upload_data_size > 0) {
                size_t k = upstream_exchange_write(p->exchange, upload_data, *upload_data_size);
                if (ended)
                        p->discarded += k;
                else
                        p->server->counters.pass_bytes_up += k;
                *upload_data_size -= k;
                /* The upstream answered before the whole body and will read no more. Too much left: the
                 * answer goes now, and the connection is closed after it (MHD does so for a response queued
                 * before the body was read). */
                if (ended && p->discarded > PASS_DISCARD_MAX)
                        return pass_respond(p, req);
                if (*upload_data_size > 0)
                        http_request_wait(req, REQUEST_WAIT_PASS_UPLOAD);
                return MHD_YES;
        }

        if (!p->body_done) {
                p->body_done = true;
                upstream_exchange_write_end(p->exchange);
                ended = upstream_exchange_ended(p->exchange, NULL);
        }
        /* A version document is read whole (one too large is refused once it shows, not waited for: its
         * transfer pauses when the buffer is full); anything else is answered as soon as its headers are. */
        if (ended || (p->discovery ? upstream_exchange_available(p->exchange) > PASS_DISCOVERY_MAX
                                   : upstream_exchange_has_head(p->exchange)))
                return pass_respond(p, req);
        http_request_wait(req, REQUEST_WAIT_PASS_HEADERS);
        return MHD_YES;
}
