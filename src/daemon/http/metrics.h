/* SPDX-License-Identifier: MIT */
#pragma once

/* The Prometheus text exposition format (version 0.0.4) for /metrics: families with HELP and TYPE, samples
 * with or without one label, and fixed-bucket histograms. Names follow Prometheus' conventions: base units
 * (_bytes, _seconds), counters end in _total. */

#include <stdint.h>
#include <stdio.h>

/* Where the bytes of an image response came from. */
typedef enum ServeSource {
        SERVE_SOURCE_CACHE,    /* a hit: the cached file */
        SERVE_SOURCE_UPSTREAM, /* a miss streamed while a fill fetches it from the upstream */
        SERVE_SOURCE_PEER,     /* a miss streamed while a fill fetches it from a peer of the fleet */
        _SERVE_SOURCE_MAX,
} ServeSource;

const char *serve_source_to_string(ServeSource s);

/* Why a client was turned away before it was served (imgcache_http_refused_total{reason}). */
typedef enum HttpRefusal {
        HTTP_REFUSED_UPSTREAM_BUDGET, /* UpstreamRequestsPerIP=: 429 */
        HTTP_REFUSED_FETCHES_PER_IP,  /* MaxFetchesPerIP=: 503 */
        HTTP_REFUSED_BODY,            /* a body announced to a route that takes none: 400 */
        HTTP_REFUSED_CONNECTIONS_PER_IP, /* MaxConnectionsPerIP=: the connection is closed unanswered */
        _HTTP_REFUSED_MAX,
} HttpRefusal;

const char *http_refusal_to_string(HttpRefusal r);

/* Why a fill failed, as far as the upstream (or a peer) is to blame; see fill_error() in fetch.h. */
typedef enum UpstreamErrorKind {
        UPSTREAM_ERROR_NOT_FOUND, /* -ENOENT */
        UPSTREAM_ERROR_INTEGRITY, /* -EBADMSG: digest or length mismatch */
        UPSTREAM_ERROR_TOO_LARGE, /* -EFBIG */
        UPSTREAM_ERROR_PROTOCOL,  /* -EPROTO: a refusal, 5xx, a short body, a reset */
        UPSTREAM_ERROR_TIMEOUT,   /* -ETIMEDOUT */
        UPSTREAM_ERROR_OTHER,
        _UPSTREAM_ERROR_MAX,
        _UPSTREAM_ERROR_NONE = -1, /* not the upstream's doing: cancelled, a full disk, out of memory */
} UpstreamErrorKind;

UpstreamErrorKind upstream_error_kind_from_errno(int error);
const char *upstream_error_kind_to_string(UpstreamErrorKind k);

/* Fill durations in seconds: from a second to an hour, which is what images of MBs to tens of GBs take. */
#define FILL_DURATION_BUCKETS 12
typedef struct Histogram {
        uint64_t counts[FILL_DURATION_BUCKETS]; /* observations <= the bucket's bound, not cumulative */
        uint64_t count;
        double sum;
} Histogram;

extern const double fill_duration_bounds[FILL_DURATION_BUCKETS];
void histogram_observe(Histogram *h, double value);

/* Writing: every family once, its samples right after it. */
void metrics_family(FILE *f, const char *name, const char *type, const char *help);
/* label is NULL or one `key` whose value is value_label (a fixed word of ours, never client input). */
void metrics_sample(FILE *f, const char *name, const char *label, const char *value_label, uint64_t value);
void metrics_histogram(FILE *f, const char *name, const char *help, const Histogram *h);
