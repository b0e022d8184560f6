/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "checksum.h"
#include "config.h"

/* Where an image comes from. Kind=generic: URL= is a template, every "{id}" replaced by the image id
 * (a URL without "{id}" is taken as a base and gets "/<id>" appended). Kind=glance: URL= is the image
 * service endpoint; the record is {URL}/v2/images/<id> and the data {URL}/v2/images/<id>/file. Ids are
 * validated before they get here, and [A-Za-z0-9._-] needs no escaping in a URL path. */

#define UPSTREAM_RECORD_MAX (1024U * 1024U) /* a Glance image record is a few KiB; refuse anything huge */

int upstream_image_url(UpstreamKind kind, const char *url, const char *id, char **ret);
int upstream_record_url(const char *url, const char *id, char **ret); /* glance only */

/* What a Glance image record says about the data. */
typedef struct UpstreamRecord {
        char *status;           /* "active", "queued", "saving", "killed", "deleted", … */
        bool has_size;
        uint64_t size;
        bool has_checksum;      /* the strongest digest given: os_hash (multihash) over checksum (md5) */
        Checksum checksum;
} UpstreamRecord;

void upstream_record_done(UpstreamRecord *r);
/* Parses the JSON of GET /v2/images/<id>. -EBADMSG for anything that is not an image record (with
 * *ret_reason saying what, static), -ENOMEM. Digests naming algorithms we cannot verify are ignored. */
int upstream_record_parse(const char *json, size_t size, UpstreamRecord *ret, const char **ret_reason);

/* A line of curl's header callback ("Name: value\r\n"): true, with the value trimmed, when it is name's. */
bool upstream_header_is(const char *line, size_t len, const char *name, const char **ret_value, size_t *ret_len);
/* "bytes N-M/T" → N, M (ret_end may be NULL) and T (UINT64_MAX when "*"); -EBADMSG when malformed. */
int upstream_parse_content_range(const char *v, uint64_t *ret_start, uint64_t *ret_end, uint64_t *ret_total);
