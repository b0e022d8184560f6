/* SPDX-License-Identifier: MIT */

/* The transport of a fill's requests over the Fetcher's CurlLoop: one easy handle per request, its
 * response headers collected, its body offered to the fill, its end mapped to an error the fill can
 * report. Redirects are followed by the fill, not by curl, so that the token goes to the configured
 * origin only (curl would send a custom header like X-Auth-Token to any host it is redirected to). */

#include <curl/curl.h>
#include <inttypes.h>
#include <stdio.h>
#include <strings.h>

#include "fill-internal.h"

#define FETCH_BUFFER_SIZE (512L * 1024L)
#define HEADER_VALUE_MAX 4096 /* nothing we parse is that long (a peer path: FLEET_MAX_HOPS URLs) */

typedef struct CurlTransfer {
        CurlTask task;
        Fill *fill;
        CURL *easy;
        struct curl_slist *request_headers;
        char error[CURL_ERROR_SIZE];
        char *etag, *content_md5, *digest, *repr_digest, *content_range, *peer_redirect, *peer_path;
        bool headers_delivered;
        bool skipping;           /* the fill does not want this body */
} CurlTransfer;

static void response_headers_reset(CurlTransfer *t) {
        free(t->etag);
        free(t->content_md5);
        free(t->digest);
        free(t->repr_digest);
        free(t->content_range);
        free(t->peer_redirect);
        free(t->peer_path);
        t->etag = t->content_md5 = t->digest = t->repr_digest = t->content_range = NULL;
        t->peer_redirect = t->peer_path = NULL;
}

static void transfer_free(CurlTransfer *t) {
        if (!t)
                return;
        curl_loop_discard(t->fill->fetcher ? t->fill->fetcher->curl : NULL, &t->easy);
        transport_headers_free(t->request_headers); /* may hold the token or the peer secret */
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
                { FLEET_HEADER_REDIRECT, offsetof(CurlTransfer, peer_redirect) },
                { FLEET_HEADER_PATH, offsetof(CurlTransfer, peer_path) },
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
                .peer_redirect = t->peer_redirect,
                .peer_path = t->peer_path,
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

static int request_headers(CurlTransfer *t, const FillRequest *r) {
        struct curl_slist **h = &t->request_headers;
        int k = 0;

        if (r->token)
                k = transport_header_addf(h, "X-Auth-Token: %s", r->token);
        if (k >= 0 && r->json)
                k = transport_header_addf(h, "Accept: application/json");
        if (k >= 0 && r->range_start > 0 && r->if_range)
                k = transport_header_addf(h, "If-Range: %s", r->if_range);
        if (k >= 0 && r->peer_self)
                k = transport_header_addf(h, "%s: %s", FLEET_HEADER_PEER, r->peer_self);
        if (k >= 0 && r->peer_self)
                k = transport_header_addf(h, "%s: %s", FLEET_HEADER_TOKEN, r->peer_token);
        if (k >= 0 && r->peer_via)
                k = transport_header_addf(h, "%s: %s", FLEET_HEADER_VIA, r->peer_via);
        return k;
}

/* Redirects are the fill's (see the top): the handle follows none. No overall timeout: an image takes
 * as long as it takes, and LowSpeedTimeoutSec= ends a stall. */
static int setup_request(CurlTransfer *t, const Fetcher *fe, const FillRequest *r) {
        char range[64];
        int k;

        k = request_headers(t, r);
        if (k < 0)
                return k;
        TransportRequest req = {
                .url = r->url,
                .task = &t->task,
                .allow_file = true,
                .headers = t->request_headers,
                .error = t->error,
                .on_header = on_curl_header,
                .on_body = on_curl_write,
                .userdata = t,
                .own_connection = true,
        };
        k = transport_easy_new(&fe->transport_settings, &req, &t->easy);
        if (k < 0)
                return k;

        CURL *h = t->easy;
        k = easy_setopt(h, CURLOPT_BUFFERSIZE, FETCH_BUFFER_SIZE);
        if (k >= 0 && r->max_body <= INT64_MAX)
                k = easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) r->max_body);
        if (k >= 0 && r->range_start > 0) {
                snprintf(range, sizeof(range), "%" PRIu64 "-", r->range_start);
                k = easy_setopt(h, CURLOPT_RANGE, range); /* copied */
        }
        return k;
}

static int curl_start(Fill *f, const FillRequest *r) {
        Fetcher *fe = f->fetcher;
        CurlTransfer *t = calloc(1, sizeof(CurlTransfer));
        if (!t)
                return -ENOMEM;
        *t = (CurlTransfer) { .fill = f, .task.on_done = on_curl_done };

        int r2 = setup_request(t, fe, r);
        if (r2 >= 0)
                r2 = curl_loop_add(fe->curl, t->easy);
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
