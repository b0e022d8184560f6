/* SPDX-License-Identifier: MIT */
/* The lifecycle of an HTTP request below every other file of the server: entering a wait (its
 * connection suspended), waking it, taking its pending object out when it is re-entered, and what
 * every response notes (the request of a connection, the bytes served). The waits, and the steps that
 * re-enter them, are in http-internal.h and http.c. */

#include <assert.h>
#include <inttypes.h>
#include <sys/socket.h>

#include "http-internal.h"
#include "log.h"

void http_request_wait(Request *req, RequestWait wait) {
        HttpServer *s = req->server;

        assert(wait > REQUEST_WAIT_NONE && wait < _REQUEST_WAIT_MAX);
        assert(req->wait == REQUEST_WAIT_NONE && !req->suspended);
        req->wait = wait;
        req->suspended = true;
        LIST_PREPEND(waiting, s->waiting, req);
        MHD_suspend_connection(req->connection);
}

void http_request_wake(Request *req) {
        HttpServer *s = req->server;

        if (!req->suspended)
                return;
        req->suspended = false;
        LIST_REMOVE(waiting, s->waiting, req);
        /* Nothing to keep: the content reader goes on by itself. */
        if (req->wait == REQUEST_WAIT_FILL_BYTES || req->wait == REQUEST_WAIT_PASS_BYTES) {
                req->wait = REQUEST_WAIT_NONE;
                req->pending = (RequestPending) {};
        }
        MHD_resume_connection(req->connection);
        /* In external-event mode MHD does not wake itself for a resume (its ITC is not readable through
         * the epoll fd then): run it on the next iteration, coalesced with other wakes. */
        http_server_schedule_run(s);
}

RequestWait http_request_take_wait(Request *req, RequestPending *ret) {
        RequestWait w = req->wait;

        assert(!req->suspended);
        *ret = req->pending;
        req->pending = (RequestPending) {};
        req->wait = REQUEST_WAIT_NONE;
        return w;
}

/* libmicrohttpd 0.9.75 closes a connection whose content reader returns END_WITH_ERROR, or END_OF_STREAM
 * for a body that has neither a length nor chunked encoding, but on that path it neither cleans the
 * connection up nor, with MHD_USE_TURBO, shuts its socket down; and a connection that was suspended is not
 * in its epoll set then, so no event on the socket brings it back either. In epoll mode MHD looks at such a
 * connection again only once it reaches the tail of its timeout list, which with any older connection open
 * (one idle keep-alive client is enough) is that connection's timeout, 60 s away: all that time the client
 * waits for the end of a transfer that has ended, and the connection holds its fd and its slot.
 * So a reader ends the connection itself before it returns such an end: shutdown() tells the client at
 * once (MHD asks a reader for more only after all it had was sent), and a timeout of its own moves the
 * connection to the short list of those MHD visits on every run, where the next run cleans it up. */
void http_connection_end(HttpServer *s, struct MHD_Connection *c) {
        const union MHD_ConnectionInfo *info;

        info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (info)
                (void) shutdown(info->connect_fd, SHUT_WR);
        /* Any value but the daemon's own puts it on that list. */
        (void) MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
                                         s->connection_timeout_sec == 1 ? 2U : 1U);
        http_server_schedule_run(s);
}

HttpConnection *http_connection_context(struct MHD_Connection *c) {
        const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        return info ? info->socket_context : NULL;
}

Request *http_connection_request(struct MHD_Connection *c) {
        HttpConnection *hc = http_connection_context(c);
        return hc ? &hc->request : NULL;
}

void http_count_served(HttpServer *s, ServeSource source, uint64_t n, bool to_peer) {
        s->ops->count_bytes_served(s->userdata, n);
        s->counters.served_bytes[source] += n;
        if (to_peer)
                s->counters.bytes_to_peers += n;
}

const char *http_request_client(Request *req) {
        HttpServer *s = req->server;

        if (req->client[0])
                return req->client;
        if (trusted_proxies_connection(&s->trusted_proxies, req->connection) &&
            forwarded_client(&s->trusted_proxies, http_header(req->connection, "X-Forwarded-For"), req->client)) {
                req->forwarded = true;
                return req->client;
        }
        if (!peer_key(req->connection, req->client))
                return NULL;
        return req->client;
}

/* Refusals come in floods: one log line per reason and interval, saying how many. */
#define HTTP_REFUSAL_LOG_INTERVAL_USEC (10 * USEC_PER_SEC)

void http_count_refusal(HttpServer *s, HttpRefusal why, const char *client) {
        usec_t now = now_usec(CLOCK_MONOTONIC);

        s->counters.refused[why]++;
        s->refusals_unlogged[why]++;
        if (s->refusal_logged_at[why] != 0 && now < s->refusal_logged_at[why] + HTTP_REFUSAL_LOG_INTERVAL_USEC)
                return;
        log_notice("Refused %" PRIu64 " HTTP request%s (%s), the last from %s.", s->refusals_unlogged[why],
                   s->refusals_unlogged[why] == 1 ? "" : "s", http_refusal_to_string(why), client ?: "an unknown address");
        s->refusal_logged_at[why] = now;
        s->refusals_unlogged[why] = 0;
}

bool http_request_charge_upstream(Request *req) {
        HttpServer *s = req->server;
        const char *client;

        if (req->from_peer || !(client = http_request_client(req)))
                return true;
        if (upstream_budget_take(s->upstream_budget, client, now_usec(CLOCK_MONOTONIC), &req->retry_after))
                return true;
        http_count_refusal(s, HTTP_REFUSED_UPSTREAM_BUDGET, client);
        return false;
}

void http_server_schedule_run(HttpServer *s) {
        if (s->stopping || !s->wake_source)
                return;
        int r = sd_event_source_set_enabled(s->wake_source, SD_EVENT_ONESHOT);
        if (r < 0)
                log_warning_errno(r, "Failed to schedule the HTTP server, ignoring: %m");
}
