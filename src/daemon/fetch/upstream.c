/* SPDX-License-Identifier: MIT */
/* What the upstream is and says (upstream.h): image URLs per Kind=, and the Glance record parsed. */

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <strings.h>
#include <stdio.h>
#include <string.h>

#include "upstream.h"
#include "util.h"

int upstream_image_url(UpstreamKind kind, const char *url, const char *id, char **ret) {
        if (isempty(url) || isempty(id))
                return -EINVAL;

        if (kind == UPSTREAM_GLANCE) {
                char *record, *s;
                int r = upstream_record_url(url, id, &record);
                if (r < 0)
                        return r;
                r = asprintf(&s, "%s/file", record);
                free(record);
                if (r < 0)
                        return -ENOMEM;
                *ret = s;
                return 0;
        }

        _cleanup_(freep) char *s = NULL;
        size_t len = 0;
        bool replaced = false;
        for (const char *p = url;;) {
                const char *t = strstr(p, "{id}");
                if (!t) {
                        if (buf_append(&s, &len, SIZE_MAX, p, strlen(p)) < 0)
                                return -ENOMEM;
                        break;
                }
                if (buf_append(&s, &len, SIZE_MAX, p, (size_t) (t - p)) < 0 || buf_append(&s, &len, SIZE_MAX, id, strlen(id)) < 0)
                        return -ENOMEM;
                replaced = true;
                p = t + strlen("{id}");
        }
        if (!replaced) {
                bool slash = len > 0 && s[len - 1] == '/';
                if ((!slash && buf_append(&s, &len, SIZE_MAX, "/", 1) < 0) || buf_append(&s, &len, SIZE_MAX, id, strlen(id)) < 0)
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(s);
        return 0;
}

int upstream_record_url(const char *url, const char *id, char **ret) {
        if (isempty(url) || isempty(id))
                return -EINVAL;
        size_t n = strlen(url);
        while (n > 0 && url[n - 1] == '/')
                n--;
        char *s;
        if (asprintf(&s, "%.*s/v2/images/%s", (int) n, url, id) < 0)
                return -ENOMEM;
        *ret = s;
        return 0;
}

void upstream_record_done(UpstreamRecord *r) {
        free(r->status);
        *r = (UpstreamRecord) {};
}

static const char *json_string_or_null(json_t *o, const char *key) {
        json_t *v = json_object_get(o, key);
        return json_is_string(v) ? json_string_value(v) : NULL;
}

int upstream_record_parse(const char *json, size_t size, UpstreamRecord *ret, const char **ret_reason) {
        const char *reason = NULL;
        json_error_t err;
        json_t *root = json_loadb(json, size, JSON_REJECT_DUPLICATES, &err);
        if (!root) {
                reason = "not JSON";
                goto bad;
        }
        if (!json_is_object(root)) {
                reason = "not a JSON object";
                goto bad;
        }

        UpstreamRecord rec = {};
        const char *status = json_string_or_null(root, "status");
        if (!status) {
                reason = "no \"status\"";
                goto bad;
        }
        rec.status = strdup(status);
        if (!rec.status) {
                json_decref(root);
                return -ENOMEM;
        }

        json_t *size_v = json_object_get(root, "size");
        if (json_is_integer(size_v)) {
                json_int_t v = json_integer_value(size_v);
                if (v < 0) {
                        upstream_record_done(&rec);
                        reason = "negative \"size\"";
                        goto bad;
                }
                rec.has_size = true;
                rec.size = (uint64_t) v;
        } else if (size_v && !json_is_null(size_v)) {
                upstream_record_done(&rec);
                reason = "\"size\" is not a number";
                goto bad;
        }

        /* os_hash_algo/os_hash_value (Glance ≥ Rocky, sha512 by default) beat the legacy md5 checksum. */
        const char *algo = json_string_or_null(root, "os_hash_algo");
        const char *value = json_string_or_null(root, "os_hash_value");
        const char *md5 = json_string_or_null(root, "checksum");
        if (algo && value) {
                ChecksumAlgo a = checksum_algo_from_string(algo);
                _cleanup_(freep) char *s = NULL;
                if (a >= 0 && asprintf(&s, "%s:%s", checksum_algo_to_string(a), value) >= 0 &&
                    checksum_from_string(s, &rec.checksum) >= 0)
                        rec.has_checksum = true;
                else if (a >= 0) {
                        upstream_record_done(&rec);
                        reason = "malformed \"os_hash_value\"";
                        goto bad;
                }
        }
        if (!rec.has_checksum && md5) {
                if (strlen(md5) != 32 || checksum_from_string(md5, &rec.checksum) < 0) {
                        upstream_record_done(&rec);
                        reason = "malformed \"checksum\"";
                        goto bad;
                }
                rec.has_checksum = true;
        }

        json_decref(root);
        *ret = rec;
        return 0;

bad:
        json_decref(root);
        if (ret_reason)
                *ret_reason = reason;
        return -EBADMSG;
}

bool upstream_header_is(const char *line, size_t len, const char *name, const char **ret_value, size_t *ret_len) {
        size_t n = strlen(name);
        if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0)
                return false;
        const char *v = line + n + 1, *end = line + len;
        while (v < end && (*v == ' ' || *v == '\t'))
                v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
                end--;
        *ret_value = v;
        *ret_len = (size_t) (end - v);
        return true;
}

int upstream_parse_content_range(const char *v, uint64_t *ret_start, uint64_t *ret_end, uint64_t *ret_total) {
        unsigned long long start, end;
        char total[32];
        if (!v || sscanf(v, "bytes %llu-%llu/%31s", &start, &end, total) != 3 || end < start)
                return -EBADMSG;
        uint64_t t = UINT64_MAX;
        if (!streq(total, "*")) {
                char *e;
                errno = 0;
                unsigned long long x = strtoull(total, &e, 10);
                if (errno || *e || x <= end)
                        return -EBADMSG;
                t = x;
        }
        *ret_start = start;
        if (ret_end)
                *ret_end = end;
        *ret_total = t;
        return 0;
}
