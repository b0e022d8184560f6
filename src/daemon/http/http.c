/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <fcntl.h>
#include <glib.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <systemd/sd-daemon.h>

#include "http-internal.h"
#include "http-manage.h"
#include "log.h"

/* Routing, the hit path, management, re-entering a request at its wait (and the one free of a wait's
 * pending object), the MHD callbacks, the event loop and the server's lifetime. Misses are decided in
 * http-miss.c and streamed by http-stream.c; the request's lifecycle primitives are in http-request.c,
 * responses are built in http-response.c, the listening socket comes from http-socket.c. The types and
 * the order of these files are in http-internal.h. */

/* ---- hits --------------------------------------------------------------------------------------- */

/* The body of a small hit, copied: one sendmsg of headers and body instead of a send and a sendfile,
 * which is fewer syscalls and one TCP segment instead of two (the client wakes once). NULL on failure. */
static struct MHD_Response *small_body_response(const HitFile *hf, uint64_t start, uint64_t length) {
        void *buf = malloc(MAX(length, 1U));

        if (!buf)
                return NULL;
        if (pread_retry(hf->fd, buf, (size_t) length, start) != (ssize_t) length) {
                free(buf);
                return NULL;
        }
        return MHD_create_response_from_buffer((size_t) length, buf, MHD_RESPMEM_MUST_FREE);
}

/* The body of a larger hit: sendfile() from a duplicate of the cached fd, which MHD owns (and closes). */
static struct MHD_Response *file_body_response(const HitFile *hf, uint64_t start, uint64_t length) {
        int fd = fcntl(hf->fd, F_DUPFD_CLOEXEC, 3);
        struct MHD_Response *resp;

        if (fd < 0)
                return NULL;
        resp = MHD_create_response_from_fd_at_offset64(length, fd, start);
        if (!resp)
                safe_close(fd);
        return resp;
}

static enum MHD_Result respond_not_modified(struct MHD_Connection *c, const HitFile *hf) {
        struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);

        if (!resp)
                return MHD_NO;
        if (hf->etag)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, hf->etag);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LAST_MODIFIED, hf->last_modified_text);
        return http_queue_response(c, MHD_HTTP_NOT_MODIFIED, resp);
}

/* Serves a cached image. Returns MHD_YES/MHD_NO, or -1 when the file vanished under us (deleted or
 * pruned since the lookup): the caller then treats the request as a miss. */
static int serve_hit(HttpServer *s, Request *req, struct MHD_Connection *c, const CacheEntry *e) {
        const char *inm, *range;
        uint64_t start = 0, length;
        HttpRangeResult rr = HTTP_RANGE_NONE;
        struct MHD_Response *resp;
        unsigned status = MHD_HTTP_OK;
        const HitFile *hf;

        int r = hit_cache_get(s->hit_cache, s->cache, e, &hf);
        if (r < 0)
                return r == -ENOENT ? -1 : (int) http_respond_text(c, 500, "Failed to open the image\n");

        /* If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2). */
        inm = http_header(c, MHD_HTTP_HEADER_IF_NONE_MATCH);
        if (inm ? http_etag_list_matches(inm, hf->etag)
                : http_not_modified_since(http_header(c, MHD_HTTP_HEADER_IF_MODIFIED_SINCE), e->last_modified))
                return respond_not_modified(c, hf);

        /* Range applies to GET only (RFC 9110 §14.2). */
        range = req->method == HTTP_METHOD_GET ? http_header(c, MHD_HTTP_HEADER_RANGE) : NULL;
        if (range && http_if_range_matches(http_header(c, MHD_HTTP_HEADER_IF_RANGE), hf->etag, e->last_modified))
                rr = http_range_parse(range, hf->size, &start, &length);

        switch (rr) {
        case HTTP_RANGE_UNSATISFIABLE:
                return http_respond_416(c, hf->size);
        case HTTP_RANGE_SATISFIABLE:
                status = MHD_HTTP_PARTIAL_CONTENT;
                break;
        default:
                start = 0;
                length = hf->size;
        }

        if (req->method != HTTP_METHOD_GET)
                resp = http_response_for_head(length);
        else if (length <= HTTP_COPY_BODY_MAX)
                resp = small_body_response(hf, start, length);
        else
                resp = file_body_response(hf, start, length);
        if (!resp)
                return http_respond_text(c, 500, "Failed to read the image\n");

        http_add_image_headers(resp, hf->etag, hf->last_modified_text, true);
        if (hf->repr_digest[0])
                MHD_add_response_header(resp, "Repr-Digest", hf->repr_digest);
        http_peer_add_path(req, resp, /* f= */ NULL);
        if (status == MHD_HTTP_PARTIAL_CONTENT)
                http_add_content_range(resp, start, length, hf->size);

        if (req->method != HTTP_METHOD_GET)
                return http_queue_response(c, status, resp);
        req->count_body = true;
        req->source = SERVE_SOURCE_CACHE;
        s->ops->count_hit(s->userdata, e->id);
        return http_queue_response_sized(c, status, resp, length);
}

/* ---- waiting: the one free of a wait's pending object, the one teardown, re-entering -------------- */

/* Frees what a wait's pending object still holds, whichever wait it is: after the step that re-entered
 * it took what it keeps, when the request completes, and at shutdown. */
static void request_pending_free(HttpServer *s, RequestWait wait, RequestPending *p) {
        switch (wait) {
        case REQUEST_WAIT_NONE:
        case REQUEST_WAIT_FILL_BYTES: /* the response's stream, borrowed */
        case REQUEST_WAIT_PASS_UPLOAD: /* the pass-through's waits keep nothing: the request holds it */
        case REQUEST_WAIT_PASS_HEADERS:
        case REQUEST_WAIT_PASS_BYTES:
                break;
        case REQUEST_WAIT_READ:
                read_check_free(p->read.check);
                break;
        case REQUEST_WAIT_PROBE:
                upstream_query_free(p->probe.query);
                break;
        case REQUEST_WAIT_HOLDERS:
                fleet_query_free(p->holders.query);
                g_strfreev(p->holders.holders);
                break;
        case REQUEST_WAIT_FILL_HEADERS:
                http_stream_free(p->fill.stream);
                break;
        case REQUEST_WAIT_ORIGIN_RANGE:
                if (p->range.query) {
                        assert(s->n_range_queries > 0);
                        s->n_range_queries--;
                        upstream_query_free(p->range.query);
                }
                http_stream_free(p->range.stream);
                break;
        default:
                assert(false);
        }
        *p = (RequestPending) {};
}

/* Ends whatever req waits for, freeing its pending object. The connection stays as it is: a suspended
 * one is woken by the caller (shutdown), and a completed one is gone. */
static void request_end_wait(HttpServer *s, Request *req) {
        RequestPending p = req->pending;
        RequestWait wait = req->wait;

        req->wait = REQUEST_WAIT_NONE;
        req->pending = (RequestPending) {};
        request_pending_free(s, wait, &p);
}

/* Ends every wait at shutdown: each request is re-entered with nothing to wait for and answered 503, and
 * a miss being sent is aborted by its reader. */
static void http_server_abandon_waiting(HttpServer *s) {
        while (s->waiting) {
                Request *req = s->waiting;

                request_end_wait(s, req);
                http_request_wake(req);
        }
}

static void request_on_read_verdict(int verdict, void *userdata) {
        Request *req = userdata;

        req->pending.read.check = NULL;  /* the guard frees it */
        req->pending.read.verdict = verdict;
        http_request_wake(req);
}

/* A request passed through: begun from its headers; one without a body is complete, and goes on to its
 * answer now (MHD calls again only on an event). */
static enum MHD_Result pass_begin(HttpServer *s, Request *req, struct MHD_Connection *c, const char *method) {
        enum MHD_Result r = http_pass_begin(s, req, c, method);
        size_t none = 0;

        if (r != MHD_YES || !req->pass || req->body_announced)
                return r;
        return http_pass_on_request(s, req, NULL, &none);
}

/* ---- an image gone upstream ------------------------------------------------------------------------ */

/* A client was refused an image we hold: has the image service deleted or deactivated it? Asked with the
 * daemon's own credentials, never decided on the client's answer: Glance answers 404 for an image the
 * caller may not see, so a client's 404 alone would let any tenant evict another's private image. One
 * check per image at a time, and an image found still there is not asked about again for
 * ReadAccessDenyCacheSec= (at least a second). */
struct GoneCheck {
        HttpServer *server;
        UpstreamQuery *query;
        char id[sizeof(((HttpRouteMatch *) NULL)->id)];
        GoneCheck *gone_prev, *gone_next;
};

static GoneCheck *gone_check_free(GoneCheck *g) {
        LIST_REMOVE(gone, g->server->gone_checks, g);
        upstream_query_free(g->query);
        free(g);
        return NULL;
}

static void gone_on_answer(const UpstreamAnswer *a, void *userdata) {
        GoneCheck *g = userdata;
        HttpServer *s = g->server;

        if (a->status == 404 || a->status == 410 || (a->status >= 200 && a->status < 300 && a->error == 0 && !a->available))
                http_server_drop_image(s, g->id, "the image service no longer has it, or not active");
        else
                ttl_cache_put(s->gone_checked, g->id, 1, MAX(s->config->read_access_deny_cache, USEC_PER_SEC));
        gone_check_free(g);
}

static void check_gone(HttpServer *s, Request *req) {
        const char *id = req->match.id;
        GoneCheck *g;

        if (!s->fetcher || !image_cache_get(s->cache, id) ||
            ttl_cache_get(s->gone_checked, id, now_usec(CLOCK_MONOTONIC), NULL))
                return;
        for (g = s->gone_checks; g; g = g->gone_next)
                if (streq(g->id, id))
                        return;
        if (!http_request_charge_upstream(req))
                return;
        g = calloc(1, sizeof(GoneCheck));
        if (!g)
                return;
        *g = (GoneCheck) { .server = s };
        memcpy(g->id, req->match.id, sizeof(g->id));
        LIST_PREPEND(gone, s->gone_checks, g);
        if (fetcher_query(s->fetcher, id, NULL, gone_on_answer, g, &g->query) < 0)
                gone_check_free(g);
}

/* DELETE /images/<id> from a node of the fleet, which saw Glance drop the image (a DELETE or a
 * deactivation passed through it): checked here like any refusal, with this node's own credentials. */
static enum MHD_Result serve_peer_gone(HttpServer *s, Request *req, struct MHD_Connection *c) {
        const char *offered = http_header(c, FLEET_HEADER_TOKEN);

        if (!http_header(c, FLEET_HEADER_PEER))
                return http_respond_405(c, req->match.allow);
        if (!s->fleet || !offered || !http_token_equal(offered, fleet_token(s->fleet)))
                return http_respond_401(c);
        req->from_peer = true;
        check_gone(s, req);
        return http_respond_text(c, MHD_HTTP_ACCEPTED, "Checking with the image service\n");
}

/* Tells the fleet's other nodes of an image dropped because Glance did (fleet_tell_gone()); their
 * answers say nothing, so each notice is freed once all answered. */
struct GoneNotice {
        HttpServer *server;
        FleetQuery *query;
        GoneNotice *notices_prev, *notices_next;
};

static GoneNotice *gone_notice_free(GoneNotice *n) {
        LIST_REMOVE(notices, n->server->gone_notices, n);
        fleet_query_free(n->query);
        free(n);
        return NULL;
}

static void gone_notice_on_done(char *const *holders, char *const *paths, void *userdata) {
        gone_notice_free(userdata);
}

void http_server_tell_peers_gone(HttpServer *s, const char *id) {
        GoneNotice *n;

        if (!s->fleet || !s->fetcher || !(n = calloc(1, sizeof(GoneNotice))))
                return;
        *n = (GoneNotice) { .server = s };
        LIST_PREPEND(notices, s->gone_notices, n);
        if (fleet_tell_gone(s->fleet, fetcher_curl(s->fetcher), id, gone_notice_on_done, n, &n->query) < 0)
                gone_notice_free(n);
}

static enum MHD_Result respond_read_refused(Request *req, int verdict) {
        struct MHD_Connection *c = req->connection;

        if (verdict == MHD_HTTP_FORBIDDEN || verdict == MHD_HTTP_NOT_FOUND || verdict == READ_VERDICT_NOT_ACTIVE)
                check_gone(req->server, req);
        /* An image without data (queued, deactivated…) gets Glance's own answer (204, 403…), not ours. */
        if (verdict == READ_VERDICT_NOT_ACTIVE && req->server->pass_through && http_connection_context(c)->target) {
                req->match.route = HTTP_ROUTE_PASS;
                return pass_begin(req->server, req, c, req->method_name);
        }

        switch (verdict) {
        case MHD_HTTP_TOO_MANY_REQUESTS:
                return http_respond_429(c, req->retry_after);
        case MHD_HTTP_UNAUTHORIZED:
                return http_respond_401(c);
        case MHD_HTTP_FORBIDDEN:
                return http_respond_text(c, MHD_HTTP_FORBIDDEN, "Forbidden\n");
        case MHD_HTTP_NOT_FOUND:
        case READ_VERDICT_NOT_ACTIVE:
                return http_respond_text(c, MHD_HTTP_NOT_FOUND, "Not found\n");
        case MHD_HTTP_SERVICE_UNAVAILABLE:
                return http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "Try again\n");
        default:
                return http_respond_text(c, MHD_HTTP_BAD_GATEWAY, "Cannot check access with the upstream\n");
        }
}

static enum MHD_Result serve_image(HttpServer *s, Request *req, struct MHD_Connection *c) {
        const CacheEntry *e;

        e = image_cache_get(s->cache, req->match.id);
        if (e) {
                req->cache = ACCESS_LOG_CACHE_HIT;
                int r = serve_hit(s, req, c, e);
                if (r >= 0)
                        return (enum MHD_Result) r;
                /* Deleted since the index said so: fetch it again. */
        }
        req->cache = ACCESS_LOG_CACHE_MISS;
        /* Looked at on a miss only: a hit never parses it. */
        if (http_cache_control_has(http_header(c, MHD_HTTP_HEADER_CACHE_CONTROL), "only-if-cached"))
                return http_respond_text(c, MHD_HTTP_GATEWAY_TIMEOUT, "Not cached here\n");

        return http_serve_miss(s, req, c);
}


/* ---- management --------------------------------------------------------------------------------- */

static void request_on_holders(char *const *holders, char *const *paths, void *userdata) {
        Request *req = userdata;

        req->pending.holders.holders = g_strdupv((char **) holders);
        http_request_wake(req);
}

/* GET /v2/cache/nodes/<id>: which nodes of the fleet hold the image (each asked, none fetching). */
static enum MHD_Result serve_holders(HttpServer *s, Request *req, struct MHD_Connection *c) {
        if (!s->fleet || !s->fetcher)
                return http_respond_text(c, MHD_HTTP_NOT_FOUND, "No [Fleet] is configured on this node\n");
        int r = fleet_query_holders(s->fleet, fetcher_curl(s->fetcher), s->cache, req->match.id, request_on_holders,
                                    req, &req->pending.holders.query);
        if (r < 0)
                return MHD_NO;
        http_request_wait(req, REQUEST_WAIT_HOLDERS);
        return MHD_YES;
}

static enum MHD_Result queue_reply(struct MHD_Connection *c, HttpReply *reply);

static enum MHD_Result respond_holders(Request *req, RequestPending *p) {
        HttpReply reply = {};

        if (!p->holders.holders)
                return http_respond_text(req->connection, MHD_HTTP_SERVICE_UNAVAILABLE, "Try again\n");
        if (http_manage_holders_reply(req->match.id, p->holders.holders, &reply) < 0)
                return MHD_NO;
        return queue_reply(req->connection, &reply);
}

static bool authorized(HttpServer *s, struct MHD_Connection *c) {
        const char *offered;

        offered = http_request_token(http_header(c, "X-Auth-Token"), http_header(c, MHD_HTTP_HEADER_AUTHORIZATION));
        return s->token && offered && http_token_equal(offered, s->token);
}

static enum MHD_Result serve_management(HttpServer *s, Request *req, struct MHD_Connection *c) {
        HttpManageContext ctx = {
                .cache = s->cache,
                .ops = s->ops,
                .userdata = s->userdata,
        };
        HttpReply reply = {};
        int r;

        r = http_manage_dispatch(&ctx, &req->match, req->method, http_header(c, "x-image-cache-clear-target"),
                                 http_header(c, MHD_HTTP_HEADER_HOST), &reply);
        if (r < 0)
                return MHD_NO;
        return queue_reply(c, &reply);
}

/* Queues a management reply; consumes it. */
static enum MHD_Result queue_reply(struct MHD_Connection *c, HttpReply *reply_in) {
        HttpReply reply = *reply_in;
        struct MHD_Response *resp;
        size_t size = 0;

        *reply_in = (HttpReply) {};
        if (reply.body) {
                size = strlen(reply.body);
                resp = MHD_create_response_from_buffer(size, reply.body, MHD_RESPMEM_MUST_FREE);
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

        return http_queue_response_sized(c, reply.status, resp, size);
}

static enum MHD_Result serve_metrics(HttpServer *s, struct MHD_Connection *c) {
        HttpManageContext ctx = {
                .cache = s->cache,
                .ops = s->ops,
                .userdata = s->userdata,
        };
        struct MHD_Response *resp;
        size_t size;
        char *text;

        text = http_metrics_render(&ctx, &s->counters);
        if (!text)
                return MHD_NO;
        size = strlen(text);
        resp = MHD_create_response_from_buffer(size, text, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
                free(text);
                return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, HTTP_METRICS_CONTENT_TYPE);
        return http_queue_response_sized(c, MHD_HTTP_OK, resp, size);
}

/* ---- MHD callbacks ------------------------------------------------------------------------------ */

/* A node of the fleet is authorized by the peer secret alone; it reads what any client could, and
 * a miss it causes is filled from the origin with this node's own credentials. */
static enum MHD_Result authorize_peer(HttpServer *s, Request *req, struct MHD_Connection *c) {
        const char *offered = http_header(c, FLEET_HEADER_TOKEN);

        if (!s->fleet || !offered || !http_token_equal(offered, fleet_token(s->fleet)))
                return http_respond_401(c);
        req->from_peer = true;
        int r = http_peer_admit(s, req, c);
        if (r >= 0)
                return (enum MHD_Result) r;
        return serve_image(s, req, c);
}

static bool request_may_ask_upstream(void *userdata) {
        return http_request_charge_upstream(userdata);
}

/* Serves an image to whoever ReadAccess= lets read it, asking the upstream first where it must. */
static enum MHD_Result authorize_image(HttpServer *s, Request *req, struct MHD_Connection *c) {
        int r;

        if (http_header(c, FLEET_HEADER_PEER))
                return authorize_peer(s, req, c);

        ReadGuardAsker asker = {
                .client = http_request_client(req),
                .may_ask = request_may_ask_upstream,
                .userdata = req,
        };
        r = read_guard_check(s->read_guard, &asker, http_header(c, "X-Auth-Token"),
                             http_header(c, MHD_HTTP_HEADER_AUTHORIZATION), req->match.id, request_on_read_verdict,
                             req, &req->pending.read.check);
        if (r == -EINPROGRESS) {
                http_request_wait(req, REQUEST_WAIT_READ);
                return MHD_YES;
        }
        if (r < 0)
                return MHD_NO;
        if (r > 0)
                return respond_read_refused(req, r);
        return serve_image(s, req, c);
}

static enum MHD_Result request_begin(HttpServer *s, Request *req, struct MHD_Connection *c, const char *url,
                                     const char *method, const char *version) {
        const HttpRouteMatch *m = &req->match;

        if (req->bad_target)
                return http_respond_400_close(c, "Control characters in the request target\n");
        if (req->framing_problem) {
                char text[128];
                (void) snprintf(text, sizeof(text), "Ambiguous request: %s\n", req->framing_problem);
                return http_respond_400_close(c, text);
        }

        req->method = http_method_from_string(method);
        req->http10 = streq(version, MHD_HTTP_VERSION_1_0);
        http_route(req->method, url, &req->match);
        if (s->pass_through)
                http_route_pass_through(req->method, method, url, s->management_api, &req->match);

        if (m->route == HTTP_ROUTE_NONE)
                return http_respond_text(c, MHD_HTTP_NOT_FOUND, "Not found\n");

        if (m->management) {
                /* Off means absent: nothing tells a scanner the API exists. */
                if (!s->management_api)
                        return http_respond_text(c, MHD_HTTP_NOT_FOUND, "Not found\n");
                if (!authorized(s, c))
                        return http_respond_401(c);
        }

        if (m->status == MHD_HTTP_METHOD_NOT_ALLOWED)
                return http_respond_405(c, m->allow);
        if (m->status == MHD_HTTP_BAD_REQUEST)
                return http_respond_printf(c, MHD_HTTP_BAD_REQUEST, "Invalid image id: %s\n", m->id_reason);
        if (m->route == HTTP_ROUTE_PASS)
                return pass_begin(s, req, c, method);
        /* No other route takes a body: one announced is refused before a byte of it is read. */
        if (req->body_announced) {
                http_count_refusal(s, HTTP_REFUSED_BODY, http_request_client(req));
                return http_respond_400_close(c, "This request takes no body\n");
        }

        switch (m->route) {
        case HTTP_ROUTE_IMAGE:
                return authorize_image(s, req, c);
        case HTTP_ROUTE_HEALTHCHECK:
                return http_respond_text(c, MHD_HTTP_OK, "OK\n");
        case HTTP_ROUTE_METRICS:
                return serve_metrics(s, c);
        case HTTP_ROUTE_CACHE_NODES:
                return serve_holders(s, req, c);
        case HTTP_ROUTE_PEER_GONE:
                return serve_peer_gone(s, req, c);
        case HTTP_ROUTE_DISCOVERY:
                return pass_begin(s, req, c, method);
        default:
                return serve_management(s, req, c);
        }
}

/* A request woken from its wait: the step of that wait goes on from what it got, and what the step did
 * not take of the pending object is freed. */
static enum MHD_Result request_reenter(HttpServer *s, Request *req, struct MHD_Connection *c) {
        RequestPending p;
        RequestWait wait = http_request_take_wait(req, &p);
        enum MHD_Result r;

        switch (wait) {
        case REQUEST_WAIT_READ:
                r = p.read.verdict != 0 ? respond_read_refused(req, p.read.verdict) : serve_image(s, req, c);
                break;
        case REQUEST_WAIT_PROBE:
                r = http_miss_on_probe(s, req, &p);
                break;
        case REQUEST_WAIT_HOLDERS:
                r = respond_holders(req, &p);
                break;
        case REQUEST_WAIT_FILL_HEADERS:
                r = http_miss_on_fill_headers(s, req, &p);
                break;
        case REQUEST_WAIT_ORIGIN_RANGE:
                r = http_miss_on_origin_range(s, req, &p);
                break;
        default:
                /* FILL_BYTES is re-entered in the content reader, NONE is not a wait. */
                assert(false);
                r = MHD_NO;
        }
        request_pending_free(s, wait, &p);
        return r;
}

static enum MHD_Result http_on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                       const char *version, const char *upload_data, size_t *upload_data_size,
                                       void **req_cls) {
        HttpServer *s = cls;
        Request *req = *req_cls;

        if (!req) {
                HttpConnection *hc = http_connection_context(c);

                if (!hc)
                        return MHD_NO;

                /* The headers are complete. */
                header_deadline_stop(s->header_deadlines, &hc->header);
                req = &hc->request;
                *req = (Request) {
                        .server = s,
                        .connection = c,
                        .bad_target = hc->bad_target,
                        .url = url,
                        .method_name = method,
                        .version = version,
                        /* The one clock read of ours per request, and only with AccessLog=yes. */
                        .start = access_log_enabled(&s->access_log) ? now_usec(CLOCK_MONOTONIC) : 0,
                };
                hc->bad_target = false;
                *req_cls = req;
                req->framing_problem = http_request_framing(c, &req->body_announced);
                /* A request that announces a body is routed and authorized now, from its headers, before
                 * a byte of the body is read: a client must not hold a connection by trickling a body
                 * nobody will take. MHD 0.9.75 closes the connection after a response queued on this
                 * first call ("early"), which is right for such a request. Any other is answered on
                 * the next call, once read completely, so that it keeps its keep-alive. */
                if (req->body_announced || req->framing_problem) {
                        req->begun = true;
                        return request_begin(s, req, c, url, method, version);
                }
                return MHD_YES;
        }

        /* Its body, then its answer, until the response is queued. */
        if (req->pass)
                return http_pass_on_request(s, req, upload_data, upload_data_size);

        /* A request body nobody asked for: drop it. */
        if (*upload_data_size > 0) {
                *upload_data_size = 0;
                return MHD_YES;
        }

        if (!req->begun) {
                req->begun = true;
                return request_begin(s, req, c, url, method, version);
        }

        /* Woken from a wait; or the server stops, which ended every wait (http_server_abandon_waiting()). */
        if (s->stopping)
                return http_respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "Try again\n");
        if (req->wait != REQUEST_WAIT_NONE)
                return request_reenter(s, req, c);
        return MHD_YES;
}

/* The access log's entry for req, ending with toe (access-log.h). */
static void log_access(HttpServer *s, Request *req, struct MHD_Connection *c, enum MHD_RequestTerminationCode toe) {
        const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        bool ok = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
        usec_t now = now_usec(CLOCK_MONOTONIC);
        AccessLogEntry e = {
                .method = req->method_name,
                .path = req->url,
                .version = req->version,
                .user_agent = http_header(c, MHD_HTTP_HEADER_USER_AGENT),
                .client = info ? info->client_addr : NULL,
                .forwarded_for = req->forwarded ? req->client : NULL,
                .image_id = req->match.id[0] && req->match.status != MHD_HTTP_BAD_REQUEST ? req->match.id : NULL,
                /* nginx's 499: the client went away before it was answered. */
                .status = req->status != 0 ? req->status : 499,
                /* A HEAD's body is never sent; a hit's (sendfile in MHD) counts only once it all went out. */
                .bytes = req->streamed + (ok && req->method != HTTP_METHOD_HEAD ? req->body_size : 0),
                .duration = req->start > 0 && now > req->start ? now - req->start : 0,
                .cache = req->cache,
                .from_peer = req->from_peer,
                .aborted = !ok,
        };

        access_log_write(&s->access_log, &e, now);
}

static void http_on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                              enum MHD_RequestTerminationCode toe) {
        HttpServer *s = cls;
        Request *req = *req_cls;

        if (!req)
                return;

        assert(!req->suspended); /* MHD completes no suspended connection */
        request_end_wait(s, req);
        http_pass_detach(req);
        http_peer_release(s, req);
        if (access_log_enabled(&s->access_log))
                log_access(s, req, c, toe);
        if (req->count_body && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
                http_count_served(s, req->source, req->body_size, req->from_peer);
        if (req->status >= 100 && req->status < 600)
                s->counters.responses[req->status / 100]++;
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
                        /* Counted for MaxConnectionsPerIP= (http_on_accept()), unless from a trusted proxy. */
                        if (!trusted_proxies_connection(&s->trusted_proxies, c) && peer_key(c, hc->address))
                                peer_counts_add(s->connection_counts, hc->address, +1);
                        else
                                hc->address[0] = 0;
                }
                *socket_context = hc;  /* NULL: the first request is refused (connection closed) */
                s->counters.connections++;
        } else {
                HttpConnection *hc = *socket_context;
                if (hc) {
                        header_deadline_stop(s->header_deadlines, &hc->header);
                        if (hc->address[0])
                                peer_counts_add(s->connection_counts, hc->address, -1);
                        free(hc->target_heap);
                }
                free(hc);
                *socket_context = NULL;
                assert(s->counters.connections > 0);
                s->counters.connections--;
                /* MHD tells of a close from the cleanup at the end of its run. At MaxConnections= it took
                 * the listening socket out of its epoll set, and puts it back only at the start of its
                 * next run: when every connection closed in one turn, nothing else would cause that run,
                 * and the server would never accept again. */
                http_server_schedule_run(s);
        }
}

/* MaxConnectionsPerIP=, ours rather than libmicrohttpd's, so that a trusted proxy (TrustedProxies=), which
 * carries many clients, is exempt, and refusals are counted. A refused connection is closed unanswered:
 * no response is possible before it is accepted, and accepting it would take a slot of the table. */
static enum MHD_Result http_on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
        HttpServer *s = cls;
        char key[PEER_KEY_MAX];

        if (s->config->max_connections_per_ip == 0 || trusted_proxies_contain(&s->trusted_proxies, addr) ||
            !sockaddr_key(addr, key) || peer_counts_get(s->connection_counts, key) < s->config->max_connections_per_ip)
                return MHD_YES;
        http_count_refusal(s, HTTP_REFUSED_CONNECTIONS_PER_IP, key);
        return MHD_NO;
}

static void connection_keep_target(HttpConnection *hc, const char *uri) {
        size_t n = uri ? strlen(uri) : 0;

        hc->target_heap = mfree(hc->target_heap);
        hc->target = NULL;
        if (!uri)
                return;
        if (n < sizeof(hc->target_inline))
                hc->target = memcpy(hc->target_inline, uri, n + 1);
        else
                hc->target = hc->target_heap = strdup(uri);
}

/* The request line of a request is in: its headers have HeaderTimeoutSec= from now (the first request of
 * a connection keeps the clock that started with the connection). */
static void *http_on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
        HttpServer *s = cls;
        HttpConnection *hc = http_connection_context(c);

        if (hc) {
                hc->bad_target = false;
                header_deadline_start(s->header_deadlines, &hc->header, c, s->config->header_timeout);
                /* MHD decodes the target in place: a pass-through sends it on as the client wrote it. The
                 * generic image paths never pass through. */
                connection_keep_target(hc, s->pass_through && strncmp(uri, "/images/", 8) != 0 ? uri : NULL);
        }
        return NULL;  /* the request's context is made on the first access-handler call */
}

static size_t http_on_unescape(void *cls, struct MHD_Connection *c, char *uri) {
        HttpConnection *hc = http_connection_context(c);
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
        if (ms == 0) {
                /* Work already (a large body between sendfile chunks): the next turn of the loop runs MHD
                 * again through the defer source, not through the timerfd, which would cost a settime and
                 * a read per chunk. */
                (void) sd_event_source_set_enabled(s->timer_source, SD_EVENT_OFF);
                http_server_schedule_run(s);
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

/* MHD sends a large body in chunks of its own (128 KiB of sendfile in this mode), one per run: a few runs
 * per turn of the loop save the loop's epoll_wait between them, and still let D-Bus and fills in after
 * HTTP_RUN_BURST chunks. */
#define HTTP_RUN_BURST 4

static void http_server_run(HttpServer *s) {
        MHD_UNSIGNED_LONG_LONG ms;

        for (unsigned i = 0; i < HTTP_RUN_BURST; i++) {
                if (MHD_run(s->mhd) != MHD_YES)
                        log_debug("MHD_run() failed, ignoring.");
                if (s->stopping || MHD_get_timeout(s->mhd, &ms) != MHD_YES || ms > 0)
                        break;
        }
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

/* ---- lifetime ----------------------------------------------------------------------------------- */

static int check_open_read_access(const Config *config, int fd) {
        if (config_read_access(config) == READ_ACCESS_OPEN && !config->acknowledge_open_read_access &&
            !http_socket_is_loopback(fd))
                return log_error_errno(-EPERM,
                                       "ReadAccess=open on a listener that is not loopback would serve every cached image to anyone who reaches it: set ReadAccess=upstream or token, or AcknowledgeOpenReadAccess=yes.");
        return 0;
}

static bool pass_through_enabled(const Config *config) {
        return config->pass_through && config->upstream_kind == UPSTREAM_GLANCE;
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
        access_log_configure(&s->access_log, config);

        r = load_token(s, config);
        if (r < 0)
                return r;

        r = header_deadlines_new(event, &s->header_deadlines);
        if (r < 0)
                return r;
        r = peer_counts_new(&s->peer_fill_counts);
        if (r < 0)
                return r;
        r = ttl_cache_new(HTTP_NOT_FOUND_CACHE_MAX, 0, &s->gone_checked);
        if (r >= 0)
                r = ttl_cache_new(HTTP_NOT_FOUND_CACHE_MAX, HTTP_NOT_FOUND_CACHE_MAX / 16, &s->not_found);
        if (r < 0)
                return r;
        r = upstream_budget_new(config->upstream_requests_per_ip, config->upstream_burst_per_ip,
                                &s->upstream_budget);
        if (r < 0)
                return r;
        r = peer_counts_new(&s->connection_counts);
        if (r < 0)
                return r;
        r = trusted_proxies_set(&s->trusted_proxies, config->trusted_proxies);
        if (r < 0)
                return r;
        s->hit_cache = hit_cache_new();
        if (!s->hit_cache)
                return -ENOMEM;

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
        s->port = http_socket_port(fd);

        r = check_open_read_access(config, fd);
        if (r >= 0)
                r = read_guard_new(config, s->fetcher, &s->read_guard);
        if (r < 0) {
                if (!(options && options->listen_fd >= 0))
                        safe_close(fd);
                return r;
        }
        /* IdleTimeoutSec=, rounded up to MHD's seconds; infinity: none (0). */
        s->connection_timeout_sec = options && options->connection_timeout_sec ? options->connection_timeout_sec
                                    : config->idle_timeout == USEC_INFINITY ? 0U
                                    : (unsigned) MIN((config->idle_timeout + USEC_PER_SEC - 1) / USEC_PER_SEC, (usec_t) UINT_MAX);
        s->pass_through = pass_through_enabled(config);

        /* sendfile() has no MSG_NOSIGNAL: a client that hangs up mid-transfer would kill us with SIGPIPE.
         * MHD only uses sendfile when told SIGPIPE is taken care of. */
        (void) signal(SIGPIPE, SIG_IGN);

        s->mhd = MHD_start_daemon(
                        MHD_USE_EPOLL | MHD_USE_ITC | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_USE_ERROR_LOG,
                        /* port= */ 0,
                        http_on_accept, s,
                        http_on_request, s,
                        MHD_OPTION_EXTERNAL_LOGGER, http_on_log, s,
                        MHD_OPTION_LISTEN_SOCKET, fd,
                        MHD_OPTION_CONNECTION_LIMIT, (unsigned) MAX(config->max_connections, 1U),
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

                /* MHD refuses to stop with suspended connections: wake them all; each is answered 503, or
                 * its stream sees "stopping" and ends with an error. */
                s->stopping = true;
                http_pass_abort_all(s);
                http_server_abandon_waiting(s);

                MHD_stop_daemon(s->mhd);
        }

        /* Streams and passes of requests that never got an answer were freed with their requests above. */
        assert(!s->streams);
        assert(!s->passes);

        while (s->peer_fills)
                http_peer_fill_free(s->peer_fills);
        while (s->gone_checks)
                gone_check_free(s->gone_checks);
        while (s->gone_notices)
                gone_notice_free(s->gone_notices);
        ttl_cache_free(s->gone_checked);
        read_guard_free(s->read_guard);
        ttl_cache_free(s->not_found);
        upstream_budget_free(s->upstream_budget);
        peer_counts_free(s->connection_counts);
        trusted_proxies_done(&s->trusted_proxies);
        hit_cache_free(s->hit_cache);
        peer_counts_free(s->peer_fill_counts);
        header_deadlines_free(s->header_deadlines);
        access_log_flush(&s->access_log);

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
        if (r >= 0)
                r = trusted_proxies_set(&s->trusted_proxies, config->trusted_proxies);
        if (r < 0)
                return r;

        s->config = config;
        s->pass_through = pass_through_enabled(config);
        access_log_configure(&s->access_log, config);
        upstream_budget_configure(s->upstream_budget, config->upstream_requests_per_ip, config->upstream_burst_per_ip);
        return load_token(s, config);
}

void http_server_set_fleet(HttpServer *s, Fleet *fleet) {
        s->fleet = fleet;
}

void http_server_drop_image(HttpServer *s, const char *id, const char *why) {
        int r;

        r = s->ops->delete_image(s->userdata, id);
        if (r >= 0)
                log_info("Dropped image %s from the cache: %s.", id, why);
        else if (r == -EBUSY)
                log_warning("Image %s is pinned, keeping it although %s.", id, why);
        else if (r != -ENOENT)
                log_warning_errno(r, "Cannot drop image %s (%s): %m", id, why);
        (void) s->ops->dequeue_image(s->userdata, id);
        if (r >= 0)
                s->counters.evictions_upstream++;
}

void http_server_forget_image(HttpServer *s, const char *id) {
        if (s)
                hit_cache_forget(s->hit_cache, id);
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

int http_server_listen_fd(const HttpServer *s) {
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_LISTEN_FD);
        return info ? info->listen_fd : -EBADF;
}

