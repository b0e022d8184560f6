/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "curl-easy.h"
#include "curl-loop.h"

/* One small question to the upstream about an image, without its data: for Kind=glance the image record
 * (GET {URL}/v2/images/<id>), for Kind=generic a HEAD of the image URL. Or one bounded byte range of the
 * image's data (UpstreamQueryOptions.range_length > 0): a range far ahead of a running fill. Asked with whichever credentials
 * the caller gives: the daemon's own (HEAD on a miss) or an HTTP client's (read authorization). Redirects
 * are not followed: a client's token goes to the configured origin only. */

typedef struct UpstreamQuery UpstreamQuery;

typedef struct UpstreamAnswer {
        long status;        /* HTTP status; 0 when there was no answer (error says why) */
        int error;          /* negative errno when status is 0 or the record could not be read */
        bool available;     /* 2xx and, for Glance, a well-formed record with status "active" */
        bool has_size;
        uint64_t size;
        /* A range: available when the upstream answered 206 with exactly the range asked for, of an image
         * of range_total bytes (of any length when that is UINT64_MAX; size says which); data then holds
         * its bytes, owned by the query (valid until it is freed). */
        const uint8_t *data;
        size_t data_size;
} UpstreamAnswer;

typedef void (*UpstreamQueryDone)(const UpstreamAnswer *a, void *userdata);

typedef struct UpstreamQueryOptions {
        const char *id;
        const char *credentials;    /* a whole header line ("X-Auth-Token: …"), or NULL */
        usec_t timeout;             /* the whole exchange; 0: UPSTREAM_QUERY_TIMEOUT_USEC */
        uint64_t range_start, range_length; /* length > 0: GET these bytes of the image's data */
        uint64_t range_total;       /* the length of the image the range must be of; UINT64_MAX: any */
        const char *if_range;       /* a strong ETag the range must be of, or NULL */
} UpstreamQueryOptions;

#define UPSTREAM_QUERY_TIMEOUT_USEC (15ULL * USEC_PER_SEC)

/* A query is made in two halves, so that one may wait for the upstream's address (URL= unset: Keystone's
 * catalog names it with the daemon's first token). Prepare copies what o says (the credentials into
 * the request, wiped when it ends). Launch
 * sends it on l, made with t (the Fetcher's settings), to url of kind, with default_credentials (a
 * header line, or NULL) unless it has its own; done is then called once, from the loop, unless the query
 * is freed first. A query that cannot be sent is ended with upstream_query_fail(): done is called with
 * status 0 and error, and may free it. */
UpstreamQuery *upstream_query_free(UpstreamQuery *q);  /* cancels; done is not called */

int upstream_query_prepare(const UpstreamQueryOptions *o, UpstreamQueryDone done, void *userdata,
                           UpstreamQuery **ret);
int upstream_query_launch(UpstreamQuery *q, CurlLoop *l, const TransportSettings *t, UpstreamKind kind,
                          const char *url, const char *default_credentials);
void upstream_query_fail(UpstreamQuery *q, int error);
/* release is called when q is freed, before it is sent or after: whoever keeps it waiting forgets it. */
void upstream_query_set_release(UpstreamQuery *q, void (*release)(UpstreamQuery *q, void *userdata),
                                void *userdata);
