/* SPDX-License-Identifier: MIT */

/* The transport of a fill's requests over the Fetcher's CurlLoop: one easy handle per request, its
 * response headers collected, its body offered to the fill, its end mapped to an error the fill can
 * report. Redirects are followed by the fill, not by curl, so that the token goes to the configured
 * origin only (curl would send a custom header like X-Auth-Token to any host it is redirected to). */

#include <curl/curl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <strings.h>

#include "fill-internal.h"
#include "imgcache-config.h"

#define FETCH_BUFFER_SIZE (512L * 1024L)
#define HEADER_VALUE_MAX 1024 /* nothing we parse is that long */

typedef struct CurlTransfer {
        CurlTask task;
        Fill *fill;
        CURL *easy;
        struct curl_slist *request_headers;
        char error[CURL_ERROR_SIZE];
        char *etag, *content_md5, *digest, *repr_digest, *content_range;
        bool headers_delivered;
        bool skipping;           /* the fill does not want this body */
} CurlTransfer;

static void response_headers_reset(CurlTransfer *t) {
        free(t->etag);
        free(t->content_md5);
        free(t->digest);
        free(t->repr_digest);
        free(t->content_range);
        t->etag = t->content_md5 = t->digest = t->repr_digest = t->content_range = NULL;
}

static void transfer_free(CurlTransfer *t) {
        if (!t)
                return;
        curl_loop_discard(t->fill->fetcher ? t->fill->fetcher->curl : NULL, &t->easy);
        curl_slist_free_all(t->request_headers);
        response_headers_reset(t);
        free(t);
}

bool url_same_origin(const char *a, const char *b) {
        bool same = false;
        CURLU *ua = curl_url(), *ub = curl_url();
        if (ua && ub && curl_url_set(ua, CURLUPART_URL, a, 0) == CURLUE_OK &&
            curl_url_set(ub, CURLUPART_URL, b, 0) == CURLUE_OK) {
                same = true;
                static const CURLUPart parts[] = { CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT };
                for (size_t i = 0; i < ELEMENTSOF(parts) && same; i++) {
                        char *x = NULL, *y = NULL;
                        (void) curl_url_get(ua, parts[i], &x, CURLU_DEFAULT_PORT);
                        (void) curl_url_get(ub, parts[i], &y, CURLU_DEFAULT_PORT);
                        same = x && y && strcasecmp(x, y) == 0;
                        curl_free(x);
                        curl_free(y);
                }
        }
        curl_url_cleanup(ua);
        curl_url_cleanup(ub);
        return same;
}

/* ---- curl callbacks: record, offer, answer ---------------------------------------------------- */

static size_t on_curl_header(char *buffer, size_t size, size_t nitems, void *userdata) {
        CurlTransfer *t = userdata;
        size_t len = size * nitems;

        /* A status line starts a new response (after a 1xx, say): forget the previous one's headers. */
        if (len >= 5 && strncmp(buffer, "HTTP/", 5) == 0) {
                response_headers_reset(t);
                return len;
        }

        static const struct {
                const char *name;
                size_t offset;
        } wanted[] = {
                { "ETag", offsetof(CurlTransfer, etag) },
                { "Content-MD5", offsetof(CurlTransfer, content_md5) },
                { "Digest", offsetof(CurlTransfer, digest) },
                { "Repr-Digest", offsetof(CurlTransfer, repr_digest) },
                { "Content-Range", offsetof(CurlTransfer, content_range) },
        };
        for (size_t i = 0; i < ELEMENTSOF(wanted); i++) {
                const char *v;
                size_t n;
                if (!upstream_header_is(buffer, len, wanted[i].name, &v, &n))
                        continue;
                if (n > HEADER_VALUE_MAX)
                        break;
                char **field = (char **) ((uint8_t *) t + wanted[i].offset);
                char *copy = strndup(v, n);
                if (!copy)
                        return 0; /* aborts the transfer: out of memory */
                free(*field);
                *field = copy;
                break;
        }
        return len;
}

static FillIntake deliver_headers(CurlTransfer *t) {
        FillResponse r = {
                .etag = t->etag,
                .content_md5 = t->content_md5,
                .digest = t->digest,
                .repr_digest = t->repr_digest,
                .content_range = t->content_range,
                .content_length = UINT64_MAX,
        };
        char *scheme = NULL, *effective = NULL, *location = NULL;
        curl_off_t cl = -1;

        t->headers_delivered = true;
        (void) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &r.status);
        (void) curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &effective);
        (void) curl_easy_getinfo(t->easy, CURLINFO_SCHEME, &scheme);
        (void) curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        if (r.status >= 300 && r.status < 400)
                (void) curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_URL, &location);
        if (r.status == 0 && scheme && strcasecmp(scheme, "file") == 0)
                r.status = 200;
        if (cl >= 0)
                r.content_length = (uint64_t) cl;
        r.effective_url = effective;
        r.location = location;

        FillIntake i = fill_on_headers(t->fill, &r);
        t->skipping = i == INTAKE_SKIPPED;
        return i;
}

static size_t answer(FillIntake i, size_t n) {
        switch (i) {
        case INTAKE_TAKEN:
        case INTAKE_SKIPPED:
                return n;
        case INTAKE_HOLD:
                return CURL_WRITEFUNC_PAUSE;
        default:
                return 0; /* a short write: curl ends the transfer */
        }
}

static size_t on_curl_write(char *ptr, size_t size, size_t nmemb, void *userdata) {
        CurlTransfer *t = userdata;
        size_t n = size * nmemb;

        if (!t->headers_delivered) {
                FillIntake i = deliver_headers(t);
                if (i != INTAKE_TAKEN)
                        return answer(i, n);
        }
        if (t->skipping)
                return n;
        return answer(fill_on_body(t->fill, ptr, n), n);
}

/* ---- the end of a transfer ---------------------------------------------------------------------- */

static int map_curl_error(const Fill *f, CURLcode code, const char *detail, char **ret_message) {
        int error = -EPROTO, k;

        switch (code) {
        case CURLE_OPERATION_TIMEDOUT:
                error = -ETIMEDOUT;
                k = asprintf(ret_message, "Fetching %s timed out: %s", f->id, detail);
                break;
        case CURLE_FILESIZE_EXCEEDED:
                error = -EFBIG;
                k = asprintf(ret_message, "Image %s is larger than the cache filesystem: %s", f->id, detail);
                break;
        case CURLE_PARTIAL_FILE:
                k = asprintf(ret_message, "Upstream closed the connection early fetching %s (short body): %s", f->id,
                             detail);
                break;
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
                k = asprintf(ret_message, "Connection to the upstream broke fetching %s: %s", f->id, detail);
                break;
        case CURLE_OUT_OF_MEMORY:
                error = -ENOMEM;
                k = asprintf(ret_message, "Out of memory fetching %s", f->id);
                break;
        default:
                k = asprintf(ret_message, "Fetching %s failed: %s", f->id, detail);
        }
        if (k < 0)
                *ret_message = NULL;
        return error;
}

static void on_curl_done(CurlTask *task, CURL *easy, CURLcode code) {
        CurlTransfer *t = container_of(task, CurlTransfer, task);
        Fill *f = fill_ref(t->fill);
        _cleanup_(freep) char *message = NULL;
        int error = 0;

        /* An empty body: the fill still hears of the response before its end. */
        if (code == CURLE_OK && !t->headers_delivered)
                (void) deliver_headers(t);
        if (code != CURLE_OK)
                error = map_curl_error(f, code, t->error[0] ? t->error : curl_easy_strerror(code), &message);

        f->transfer = NULL;
        transfer_free(t);
        fill_on_transfer_end(f, error, message);
        fill_unref(f);
}

/* ---- FillTransport -------------------------------------------------------------------------------- */

#define SETOPT(h, opt, val) if (curl_easy_setopt((h), (opt), (val)) != CURLE_OK) return -ENOMEM

static int add_header(CurlTransfer *t, const char *name, const char *value) {
        _cleanup_(freep) char *line = NULL;
        if (asprintf(&line, "%s: %s", name, value) < 0)
                return -ENOMEM;
        struct curl_slist *l = curl_slist_append(t->request_headers, line);
        explicit_bzero(line, strlen(line)); /* it may be the token */
        if (!l)
                return -ENOMEM;
        t->request_headers = l;
        return 0;
}

static int setup_timeouts(CURL *h, const Fetcher *fe) {
        if (fe->connect_timeout > 0 && fe->connect_timeout != USEC_INFINITY)
                SETOPT(h, CURLOPT_CONNECTTIMEOUT_MS,
                       (long) MIN((fe->connect_timeout + USEC_PER_MSEC - 1) / USEC_PER_MSEC, (usec_t) LONG_MAX));
        if (fe->low_speed_timeout > 0 && fe->low_speed_timeout != USEC_INFINITY) {
                /* Less than a byte a second for that long counts as a stall. */
                SETOPT(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
                SETOPT(h, CURLOPT_LOW_SPEED_TIME,
                       (long) MIN((fe->low_speed_timeout + USEC_PER_SEC - 1) / USEC_PER_SEC, (usec_t) LONG_MAX));
        }
        return 0;
}

static int setup_request(CurlTransfer *t, const Fetcher *fe, const FillRequest *r) {
        CURL *h = t->easy;
        char range[64];

        SETOPT(h, CURLOPT_URL, r->url);
        SETOPT(h, CURLOPT_NOSIGNAL, 1L);
        SETOPT(h, CURLOPT_PROTOCOLS_STR, "http,https,file");
        SETOPT(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        SETOPT(h, CURLOPT_FOLLOWLOCATION, 0L);
        SETOPT(h, CURLOPT_USERAGENT, "imgcached/" PROJECT_VERSION);
        SETOPT(h, CURLOPT_ERRORBUFFER, t->error);
        SETOPT(h, CURLOPT_HEADERFUNCTION, on_curl_header);
        SETOPT(h, CURLOPT_HEADERDATA, t);
        SETOPT(h, CURLOPT_WRITEFUNCTION, on_curl_write);
        SETOPT(h, CURLOPT_WRITEDATA, t);
        SETOPT(h, CURLOPT_BUFFERSIZE, FETCH_BUFFER_SIZE);
        SETOPT(h, CURLOPT_SSL_VERIFYPEER, 1L);
        SETOPT(h, CURLOPT_SSL_VERIFYHOST, 2L);
        if (fe->ca_file)
                SETOPT(h, CURLOPT_CAINFO, fe->ca_file);
        if (setup_timeouts(h, fe) < 0)
                return -ENOMEM;
        if (r->max_body <= INT64_MAX)
                SETOPT(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) r->max_body);

        if (r->token && add_header(t, "X-Auth-Token", r->token) < 0)
                return -ENOMEM;
        if (r->json && add_header(t, "Accept", "application/json") < 0)
                return -ENOMEM;
        if (r->range_start > 0) {
                snprintf(range, sizeof(range), "%" PRIu64 "-", r->range_start);
                SETOPT(h, CURLOPT_RANGE, range);
                if (r->if_range && add_header(t, "If-Range", r->if_range) < 0)
                        return -ENOMEM;
        }
        if (r->peer_self && (add_header(t, FLEET_HEADER_PEER, r->peer_self) < 0 ||
                             add_header(t, FLEET_HEADER_TOKEN, r->peer_token) < 0))
                return -ENOMEM;
        if (t->request_headers)
                SETOPT(h, CURLOPT_HTTPHEADER, t->request_headers);
        return 0;
}

static int curl_start(Fill *f, const FillRequest *r) {
        Fetcher *fe = f->fetcher;
        CurlTransfer *t = calloc(1, sizeof(CurlTransfer));
        if (!t)
                return -ENOMEM;
        *t = (CurlTransfer) { .fill = f, .task.on_done = on_curl_done, .easy = curl_easy_init() };

        int r2 = t->easy ? setup_request(t, fe, r) : -ENOMEM;
        if (r2 >= 0)
                r2 = curl_loop_add(fe->curl, t->easy, &t->task);
        if (r2 < 0) {
                transfer_free(t);
                return r2;
        }
        f->transfer = t;
        return 0;
}

static void curl_resume(Fill *f) {
        CurlTransfer *t = f->transfer;
        if (!t)
                return;
        (void) curl_easy_pause(t->easy, CURLPAUSE_CONT);
        /* The resumed transfer may have finished inside. */
        if (f->fetcher)
                curl_loop_collect(f->fetcher->curl);
}

static void curl_stop(Fill *f) {
        transfer_free(f->transfer);
        f->transfer = NULL;
}

const FillTransport fill_curl_transport = {
        .start = curl_start,
        .resume = curl_resume,
        .stop = curl_stop,
};
