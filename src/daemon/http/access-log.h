/* SPDX-License-Identifier: MIT */
#pragma once

/* The access log: one entry per finished HTTP request ([HTTP] AccessLog=). Under the journal an entry is
 * one sd_journal_sendv() with structured fields (below); otherwise one nginx "combined"-like line on
 * stderr:
 *
 *   127.0.0.1 - - [02/Dec/2026:15:00:00 +0000] "GET /images/x HTTP/1.1" 200 1234 "-" "curl/7.88.1" 0.001 hit -
 *
 * (the last three: the duration in seconds, hit|miss|- and the flags: "-", or "peer", "aborted" joined by
 * commas). Only the path is logged, never the query (clients may put tokens there), and of the headers
 * only User-Agent; every string is escaped (access_log_escape()) and bounded, so a client cannot break a
 * line or fake a field. At most AccessLogRateLimitBurst= entries are written per
 * AccessLogRateLimitIntervalSec=; the first entry after a gap says how many were left out. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "config.h"
#include "util.h"

/* journalctl MESSAGE_ID=… finds every access log entry (and nothing else). */
#define IMGCACHE_MESSAGE_ACCESS "8f0d2e0c51d94b53a3ab8a2a1f0e7c64"

/* Bounds of what is logged of the client's strings, before escaping grows them. */
#define ACCESS_LOG_PATH_MAX 512
#define ACCESS_LOG_USER_AGENT_MAX 256
#define ACCESS_LOG_METHOD_MAX 32

typedef enum AccessLogCache {
        ACCESS_LOG_CACHE_NONE,  /* no lookup: management, metrics, a request refused before it */
        ACCESS_LOG_CACHE_HIT,
        ACCESS_LOG_CACHE_MISS,
        ACCESS_LOG_CACHE_PASS,  /* passed through to the upstream (PassThrough=) */
        _ACCESS_LOG_CACHE_MAX,
        _ACCESS_LOG_CACHE_INVALID = -EINVAL,
} AccessLogCache;

const char *access_log_cache_to_string(AccessLogCache c);

/* A finished request, as the HTTP server saw it. Strings are the client's, unescaped; NULL: unknown. */
typedef struct AccessLogEntry {
        const char *method;
        const char *path;       /* decoded, without the query */
        const char *version;    /* "HTTP/1.1" */
        const char *user_agent;
        const struct sockaddr *client;
        const char *forwarded_for; /* the client a trusted proxy named (TrustedProxies=), logged instead */
        const char *image_id;   /* NULL: the route names none */
        unsigned status;
        uint64_t bytes;         /* body bytes sent */
        usec_t duration;
        AccessLogCache cache;
        bool from_peer;
        bool aborted;           /* the connection ended before the response did */
} AccessLogEntry;

typedef struct AccessLog {
        bool enabled;
        bool journal;
        unsigned burst;
        usec_t interval;
        usec_t window_start;    /* CLOCK_MONOTONIC */
        unsigned in_window;     /* entries written since window_start */
        uint64_t suppressed;    /* entries left out since the last one written */
        FILE *stream;           /* the text form goes here; NULL: stderr */
        time_t stamp_sec;       /* the second stamp[] was formatted for */
        char stamp[sizeof("02/Dec/2026:15:00:00 +0000")];
} AccessLog;

/* Takes AccessLog=, the rate limit and (from log.c) whether stderr is the journal. Keeps the window. */
void access_log_configure(AccessLog *l, const Config *c);
/* Whether to log at all: the only cost of AccessLog=no. */
static inline bool access_log_enabled(const AccessLog *l) {
        return l->enabled;
}
/* Logs e, finished at now (CLOCK_MONOTONIC), unless the rate limit says no. */
void access_log_write(AccessLog *l, const AccessLogEntry *e, usec_t now);
/* Says how many entries were left out, if any (at shutdown: no entry will follow to say it). */
void access_log_flush(AccessLog *l);

/* Exposed for the tests. */

/* Copies at most max bytes of s to buf, percent-encoding control bytes, DEL, non-ASCII, '"', '%' and '\\'
 * (and space, unless keep_space), and ending with "..." when s was cut. Returns buf. */
char *access_log_escape(const char *s, size_t max, bool keep_space, char *buf, size_t size);
#define ACCESS_LOG_ESCAPED_SIZE(max) ((max) * 3 + sizeof("..."))

/* The text form of e at wall-clock time t, with a newline, NUL-terminated. */
void access_log_format_line(AccessLog *l, const AccessLogEntry *e, time_t t, char *buf, size_t size);

/* The journal form of e: iov[0..n) point into buf. */
typedef struct AccessLogFields {
        struct iovec iov[20];
        size_t n;
        char buf[8192];  /* room for every field at its bound */
        size_t used;
} AccessLogFields;
void access_log_format_fields(const AccessLogEntry *e, AccessLogFields *f);
