/* SPDX-License-Identifier: MIT */
/* The Prometheus text format for /metrics (metrics.h). */

#include <errno.h>
#include <inttypes.h>

#include "metrics.h"
#include "util.h"

static const char *const serve_source_table[_SERVE_SOURCE_MAX] = {
        [SERVE_SOURCE_CACHE] = "cache",
        [SERVE_SOURCE_UPSTREAM] = "upstream",
        [SERVE_SOURCE_PEER] = "peer",
};

const char *serve_source_to_string(ServeSource s) {
        return s >= 0 && s < _SERVE_SOURCE_MAX ? serve_source_table[s] : NULL;
}

static const char *const http_refusal_table[_HTTP_REFUSED_MAX] = {
        [HTTP_REFUSED_UPSTREAM_BUDGET] = "upstream_budget",
        [HTTP_REFUSED_FETCHES_PER_IP] = "fetches_per_ip",
        [HTTP_REFUSED_BODY] = "body",
        [HTTP_REFUSED_CONNECTIONS_PER_IP] = "connections_per_ip",
};

const char *http_refusal_to_string(HttpRefusal r) {
        return r >= 0 && r < _HTTP_REFUSED_MAX ? http_refusal_table[r] : NULL;
}

static const char *const upstream_error_kind_table[_UPSTREAM_ERROR_MAX] = {
        [UPSTREAM_ERROR_NOT_FOUND] = "not_found",
        [UPSTREAM_ERROR_INTEGRITY] = "integrity",
        [UPSTREAM_ERROR_TOO_LARGE] = "too_large",
        [UPSTREAM_ERROR_PROTOCOL] = "protocol",
        [UPSTREAM_ERROR_TIMEOUT] = "timeout",
        [UPSTREAM_ERROR_OTHER] = "other",
};

const char *upstream_error_kind_to_string(UpstreamErrorKind k) {
        return k >= 0 && k < _UPSTREAM_ERROR_MAX ? upstream_error_kind_table[k] : NULL;
}

UpstreamErrorKind upstream_error_kind_from_errno(int error) {
        switch (error) {
        case -ENOENT:
                return UPSTREAM_ERROR_NOT_FOUND;
        case -EBADMSG:
                return UPSTREAM_ERROR_INTEGRITY;
        case -EFBIG:
                return UPSTREAM_ERROR_TOO_LARGE;
        case -EPROTO:
                return UPSTREAM_ERROR_PROTOCOL;
        case -ETIMEDOUT:
                return UPSTREAM_ERROR_TIMEOUT;
        case 0:
        case -ECANCELED:
        case -ENOSPC:
        case -ENOMEM:
                return _UPSTREAM_ERROR_NONE;
        default:
                return UPSTREAM_ERROR_OTHER;
        }
}

const double fill_duration_bounds[FILL_DURATION_BUCKETS] = {
        1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600,
};

void histogram_observe(Histogram *h, double value) {
        for (size_t i = 0; i < FILL_DURATION_BUCKETS; i++)
                if (value <= fill_duration_bounds[i]) {
                        h->counts[i]++;
                        break;
                }
        h->count++; /* beyond the last bound: in +Inf only */
        h->sum += value;
}

void metrics_family(FILE *f, const char *name, const char *type, const char *help) {
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_sample(FILE *f, const char *name, const char *label, const char *value_label, uint64_t value) {
        if (label)
                fprintf(f, "%s{%s=\"%s\"} %" PRIu64 "\n", name, label, value_label, value);
        else
                fprintf(f, "%s %" PRIu64 "\n", name, value);
}

void metrics_histogram(FILE *f, const char *name, const char *help, const Histogram *h) {
        uint64_t cumulative = 0;

        metrics_family(f, name, "histogram", help);
        for (size_t i = 0; i < FILL_DURATION_BUCKETS; i++) {
                cumulative += h->counts[i];
                fprintf(f, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, fill_duration_bounds[i], cumulative);
        }
        fprintf(f, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.6f\n%s_count %" PRIu64 "\n", name, h->count, name,
                h->sum, name, h->count);
}
