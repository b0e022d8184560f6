/* SPDX-License-Identifier: MIT */
#pragma once

#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-event.h>

#include "parse-util.h"
#include "util.h"

/* What keeps one HTTP client from hurting the others, beyond what libmicrohttpd does itself (its global
 * and per-address connection limits, its idle timeout): a deadline for a request's headers, the
 * requests refused as ambiguous, and a count of the fills each client address started. */

/* ---- header deadlines ----------------------------------------------------------------------------- */

/* MHD's connection timeout measures idleness, so a client sending one header line every few seconds
 * would hold its connection for ever. A HeaderDeadline (one per connection, embedded in the caller's
 * connection state) runs from the start of the connection, or from the request line of a later request
 * on it, to the end of the request's headers; when it passes, the socket is shut down and MHD closes
 * the connection. The timeout is the same for all, so the list is kept in order by appending. */
typedef struct HeaderDeadline HeaderDeadline;
struct HeaderDeadline {
        struct MHD_Connection *connection;
        usec_t at;                /* 0: not armed */
        HeaderDeadline *prev, *next;
};

typedef struct HeaderDeadlines HeaderDeadlines;

int header_deadlines_new(sd_event *event, HeaderDeadlines **ret);
HeaderDeadlines *header_deadlines_free(HeaderDeadlines *h);
/* Arms d for c unless it is armed already (the first request's clock starts with the connection).
 * timeout 0 or USEC_INFINITY: no deadline. */
void header_deadline_start(HeaderDeadlines *h, HeaderDeadline *d, struct MHD_Connection *c, usec_t timeout);
void header_deadline_stop(HeaderDeadlines *h, HeaderDeadline *d);

/* ---- ambiguous requests ----------------------------------------------------------------------------- */

/* A request whose framing two parsers could read differently (request smuggling): Content-Length together
 * with Transfer-Encoding, or more than one Content-Length. Returns the reason, or NULL. *ret_body tells
 * whether the request announces a body (a Content-Length other than 0, or a Transfer-Encoding). */
const char *http_request_framing(struct MHD_Connection *c, bool *ret_body);

/* ---- fills per client address ------------------------------------------------------------------------ */

/* How many fills each client address started that are still running. Keys are the address bytes, so a
 * client cannot dodge the count by changing ports. */
typedef struct PeerCounts PeerCounts;

int peer_counts_new(PeerCounts **ret);
PeerCounts *peer_counts_free(PeerCounts *p);
/* The address of c as a key (static buffer of the caller, at least PEER_KEY_MAX). false: unknown. */
#define PEER_KEY_MAX 64
bool peer_key(struct MHD_Connection *c, char key[static PEER_KEY_MAX]);
bool sockaddr_key(const struct sockaddr *sa, char key[static PEER_KEY_MAX]);
unsigned peer_counts_get(PeerCounts *p, const char *key);
void peer_counts_add(PeerCounts *p, const char *key, int delta);

/* ---- the upstream cost of a client address --------------------------------------------------------- */

/* What one client address may make the daemon ask of its upstream ([HTTP] UpstreamRequestsPerIP=,
 * UpstreamBurstPerIP=): a token bucket per address, burst tokens deep, refilled at rate a second. HEAD
 * probes, misses that start a fill, read checks that ask the upstream and ranges asked of the origin
 * each take one; answers remembered or shared with a request in flight take none. */
typedef struct UpstreamBudget UpstreamBudget;

int upstream_budget_new(unsigned rate, unsigned burst, UpstreamBudget **ret);
UpstreamBudget *upstream_budget_free(UpstreamBudget *b);
/* rate 0: no limit. Every bucket starts full again. */
void upstream_budget_configure(UpstreamBudget *b, unsigned rate, unsigned burst);
/* Takes one request's worth from key's bucket at now. false: none left, and *ret_retry_after says in how
 * many seconds there will be. */
bool upstream_budget_take(UpstreamBudget *b, const char *key, usec_t now, unsigned *ret_retry_after);

/* ---- trusted proxies ------------------------------------------------------------------------------- */

/* [HTTP] TrustedProxies=: the addresses and networks whose X-Forwarded-For names the client. A trusted
 * proxy is exempt from MaxConnectionsPerIP= (its clients are limited each by their own address). */
typedef struct TrustedProxies {
        IpPrefix *prefixes;
        size_t n;
} TrustedProxies;

/* -EINVAL leaves t as it was. */
int trusted_proxies_set(TrustedProxies *t, const char *list);
void trusted_proxies_done(TrustedProxies *t);
bool trusted_proxies_contain(const TrustedProxies *t, const struct sockaddr *sa);
bool trusted_proxies_connection(const TrustedProxies *t, struct MHD_Connection *c);
/* The client that X-Forwarded-For names, as seen by a trusted proxy: the rightmost address that is not
 * itself a trusted proxy, in key. false: none (missing, malformed). */
bool forwarded_client(const TrustedProxies *t, const char *xff, char key[static PEER_KEY_MAX]);
