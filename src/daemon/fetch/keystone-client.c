/* SPDX-License-Identifier: MIT */

/* The Keystone client on the event loop: POST {AuthURL}/v3/auth/tokens, made and run like every other
 * request of the daemon (curl-easy.h with the Fetcher's settings, then the CurlLoop; never a blocking
 * curl_easy_perform), the token from X-Subject-Token, the image endpoint from the catalog, and a timer at
 * the token's refresh time. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "keystone.h"
#include "log.h"

#define KEYSTONE_BODY_MAX (4U * 1024U * 1024U) /* a catalog of a big cloud is some hundred KiB */
#define KEYSTONE_TIMEOUT_USEC (30ULL * USEC_PER_SEC)

typedef struct KeystoneRequest {
        Keystone *keystone;
        CURL *easy;
        CurlTask task;
        struct curl_slist *headers;
        char *post;             /* the credentials, wiped when done */
        char *subject_token;
        char *body;
        size_t body_size;
        bool body_too_large;
        char error[CURL_ERROR_SIZE];
} KeystoneRequest;

struct Keystone {
        sd_event *event;
        CurlLoop *loop;
        char *tokens_url;
        char *credentials_file;
        char *interface, *region;
        const TransportSettings *transport;
        char *request_body;     /* built once; wiped at free */
        KeystoneCallbacks cb;

        KeystoneRequest *request;
        char *token;
        char *image_url;
        usec_t refresh_at;      /* CLOCK_MONOTONIC */
        sd_event_source *refresh_timer;
};

static void wipe(char *s) {
        if (s)
                explicit_bzero(s, strlen(s));
}

static void request_free(Keystone *k, KeystoneRequest *q) {
        if (!q)
                return;
        curl_loop_discard(k->loop, &q->easy);
        transport_headers_free(q->headers);
        wipe(q->subject_token);
        free(q->subject_token);
        free(q->body);
        free(q);
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata) {
        KeystoneRequest *q = userdata;
        size_t n = size * nmemb;
        static const char name[] = "X-Subject-Token:";

        if (n > sizeof(name) - 1 && strncasecmp(ptr, name, sizeof(name) - 1) == 0) {
                const char *v = ptr + sizeof(name) - 1, *end = ptr + n;
                while (v < end && (*v == ' ' || *v == '\t'))
                        v++;
                while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
                        end--;
                if (q->subject_token) {
                        wipe(q->subject_token);
                        free(q->subject_token);
                }
                q->subject_token = end - v <= TOKEN_MAX ? strndup(v, (size_t) (end - v)) : NULL;
        }
        return n;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
        KeystoneRequest *q = userdata;
        size_t n = size * nmemb;

        int r = buf_append(&q->body, &q->body_size, KEYSTONE_BODY_MAX, ptr, n);

        q->body_too_large = r == -EFBIG;
        return r < 0 ? 0 : n;  /* 0 aborts the transfer */
}

static int on_refresh_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Keystone *k = userdata;
        if (k->cb.refresh_due)
                k->cb.refresh_due(k, k->cb.userdata);
        return 0;
}

static void arm_refresh(Keystone *k, usec_t delay) {
        k->refresh_at = now_usec(CLOCK_MONOTONIC) + delay;
        if (!k->refresh_timer) {
                if (sd_event_add_time(k->event, &k->refresh_timer, CLOCK_MONOTONIC, k->refresh_at, USEC_PER_SEC / 10,
                                      on_refresh_timer, k) < 0)
                        return; /* the token is still replaced at its refresh time, when next wanted */
                (void) sd_event_source_set_description(k->refresh_timer, "keystone-refresh");
        } else
                (void) sd_event_source_set_time(k->refresh_timer, k->refresh_at);
        (void) sd_event_source_set_enabled(k->refresh_timer, SD_EVENT_ONESHOT);
}

/* Takes what a 201 brought; returns -errno with *ret_message on a response that is no usable token. */
static int take_token(Keystone *k, KeystoneRequest *q, char **ret_message) {
        KeystoneTokenInfo info = {};
        const char *why = NULL;
        int r;

        if (!q->subject_token || !*q->subject_token) {
                (void) asprintf(ret_message, "Keystone at %s answered without an X-Subject-Token", k->tokens_url);
                return -EBADMSG;
        }
        r = keystone_token_parse(q->body ?: "", q->body_size, k->interface, k->region, &info, &why);
        if (r < 0) {
                (void) asprintf(ret_message, "Keystone at %s sent an unusable token: %s", k->tokens_url,
                                why ?: strerror(-r));
                return r;
        }
        wipe(k->token);
        free_and_replace(k->token, q->subject_token);
        free_and_replace(k->image_url, info.image_url);
        arm_refresh(k, keystone_refresh_delay(info.lifetime));
        log_info("Got a Keystone token from %s, valid for %llus; refreshing it in %llus.", k->tokens_url,
                 (unsigned long long) (info.lifetime / USEC_PER_SEC),
                 (unsigned long long) (keystone_refresh_delay(info.lifetime) / USEC_PER_SEC));
        return 0;
}

static int judge_response(Keystone *k, KeystoneRequest *q, CURLcode code, char **ret_message) {
        long status = 0;

        if (code != CURLE_OK) {
                (void) asprintf(ret_message, "Cannot reach Keystone at %s: %s", k->tokens_url,
                                q->body_too_large ? "response too large" : q->error[0] ? q->error : curl_easy_strerror(code));
                return code == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EHOSTUNREACH;
        }
        (void) curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status == 401 || status == 403) {
                (void) asprintf(ret_message, "Keystone at %s refused the credentials in CredentialsFile=%s (HTTP %ld)",
                                k->tokens_url, k->credentials_file, status);
                return -EACCES;
        }
        /* Keystone answers an application credential id it does not know (deleted, or never its own) with
         * 404, where a wrong secret gets 401; so does a server that is no Keystone at that path. */
        if (status == 404) {
                (void) asprintf(ret_message, "Keystone at %s does not know the credentials in CredentialsFile=%s "
                                "(HTTP 404: a deleted application credential, or AuthURL= is not Keystone's)",
                                k->tokens_url, k->credentials_file);
                return -EACCES;
        }
        if (status != 201 && status != 200) {
                (void) asprintf(ret_message, "Keystone at %s answered HTTP %ld to the token request", k->tokens_url,
                                status);
                return -EPROTO;
        }
        return take_token(k, q, ret_message);
}

static void on_request_done(CurlTask *t, CURL *easy, CURLcode code) {
        KeystoneRequest *q = container_of(t, KeystoneRequest, task);
        Keystone *k = q->keystone;
        _cleanup_(freep) char *message = NULL;

        int r = judge_response(k, q, code, &message);
        k->request = NULL;
        request_free(k, q);
        if (r < 0)
                log_warning("%s", message ?: "Keystone failed");
        k->cb.done(k, r, message, k->cb.userdata);
}

/* The credentials go to AuthURL= only: like every request, this one follows no redirect. */
static int request_setup(Keystone *k, KeystoneRequest *q) {
        int r;

        if ((r = transport_header_addf(&q->headers, "Content-Type: application/json")) < 0 ||
            (r = transport_header_addf(&q->headers, "Accept: application/json")) < 0)
                return r;
        TransportRequest req = {
                .url = k->tokens_url,
                .task = &q->task,
                .timeout = KEYSTONE_TIMEOUT_USEC,
                .headers = q->headers,
                .error = q->error,
                .on_header = on_header,
                .on_body = on_body,
                .userdata = q,
        };
        r = transport_easy_new(k->transport, &req, &q->easy);
        if (r < 0)
                return r;
        /* Not COPYPOSTFIELDS: curl would keep a copy of the secret we could not wipe. */
        r = easy_setopt(q->easy, CURLOPT_POSTFIELDS, k->request_body);
        if (r >= 0)
                r = easy_setopt(q->easy, CURLOPT_POSTFIELDSIZE, (long) strlen(k->request_body));
        return r;
}

int keystone_authenticate(Keystone *k) {
        if (k->request)
                return 0;

        KeystoneRequest *q = calloc(1, sizeof(KeystoneRequest));
        if (!q)
                return -ENOMEM;
        *q = (KeystoneRequest) { .keystone = k, .task.on_done = on_request_done };
        int r = request_setup(k, q);
        if (r >= 0)
                r = curl_loop_add(k->loop, q->easy);
        if (r < 0) {
                request_free(k, q);
                return r;
        }
        k->request = q;
        log_debug("Asking Keystone at %s for a token.", k->tokens_url);
        return 0;
}

const char *keystone_token(const Keystone *k) {
        return k->token && now_usec(CLOCK_MONOTONIC) < k->refresh_at ? k->token : NULL;
}

const char *keystone_image_url(const Keystone *k) {
        return k->image_url;
}

const char *keystone_interface(const Keystone *k) {
        return k->interface;
}

const char *keystone_region(const Keystone *k) {
        return k->region;
}

static int keystone_tokens_url(const char *auth_url, char **ret) {
        size_t n = strlen(auth_url);
        while (n > 0 && auth_url[n - 1] == '/')
                n--;
        /* AuthURL= may or may not name the API version, as in clouds.yaml. */
        if (n >= 3 && strncmp(auth_url + n - 3, "/v3", 3) == 0)
                n -= 3;
        return asprintf(ret, "%.*s/v3/auth/tokens", (int) n, auth_url) < 0 ? -ENOMEM : 0;
}

int keystone_new(sd_event *event, CurlLoop *loop, const KeystoneOptions *o, const KeystoneCallbacks *cb,
                 Keystone **ret) {
        Keystone *k = calloc(1, sizeof(Keystone));
        int r;

        if (!k)
                return -ENOMEM;
        *k = (Keystone) {
                .event = sd_event_ref(event),
                .loop = loop,
                .cb = *cb,
                .transport = o->transport,
        };
        r = keystone_tokens_url(o->auth_url, &k->tokens_url);
        if (r >= 0)
                r = free_and_strdup(&k->credentials_file, o->credentials_file);
        if (r >= 0)
                r = free_and_strdup(&k->interface, o->interface ?: "public");
        if (r >= 0)
                r = free_and_strdup(&k->region, o->region);
        if (r >= 0)
                r = keystone_auth_request_body(o->credentials, &k->request_body);
        if (r < 0) {
                keystone_free(k);
                return r;
        }
        *ret = k;
        return 0;
}

Keystone *keystone_free(Keystone *k) {
        if (!k)
                return NULL;
        request_free(k, k->request);
        sd_event_source_disable_unref(k->refresh_timer);
        wipe(k->token);
        wipe(k->request_body);
        free(k->token);
        free(k->request_body);
        free(k->image_url);
        free(k->tokens_url);
        free(k->credentials_file);
        free(k->interface);
        free(k->region);
        sd_event_unref(k->event);
        free(k);
        return NULL;
}
