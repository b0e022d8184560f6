/* SPDX-License-Identifier: MIT */

/* The Keystone fixture (keystone-fixture.h): POST /v3/auth/tokens with the two credential forms the
 * daemon sends, tokens that expire by the fixture's clock, a catalog with an image endpoint. */

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>

#include "keystone-fixture.h"

#define BODY_MAX (64U * 1024U)

struct KeystoneFixture {
        struct MHD_Daemon *mhd;
        uint16_t port;
        pthread_mutex_t lock;
        unsigned lifetime_ms;
        char *image_url;
        unsigned requests, issued;
        GHashTable *expiry;      /* token → gint64* CLOCK_MONOTONIC µs of its end */
};

typedef struct Upload {
        GString *body;
} Upload;

static gint64 now_real_usec(void) {
        return g_get_real_time();
}

static char *iso_time(gint64 usec) {
        time_t t = (time_t) (usec / G_USEC_PER_SEC);
        struct tm tm;
        char buf[64];
        gmtime_r(&t, &tm);
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
        return g_strdup_printf("%s.%06dZ", buf, (int) (usec % G_USEC_PER_SEC));
}

static const char *json_path_string(json_t *j, const char *const *path) {
        for (; *path; path++)
                j = json_object_get(j, *path);
        return json_string_value(j);
}

/* Whether the body names the fixture's application credential or its user in its project. */
static bool credentials_right(json_t *req) {
        const char *app_id = json_path_string(req, (const char *const[]) { "auth", "identity", "application_credential", "id", NULL });
        const char *app_secret = json_path_string(req, (const char *const[]) { "auth", "identity", "application_credential", "secret", NULL });
        if (app_id)
                return g_strcmp0(app_id, KEYSTONE_FIXTURE_APP_ID) == 0 && g_strcmp0(app_secret, KEYSTONE_FIXTURE_APP_SECRET) == 0;
        const char *user = json_path_string(req, (const char *const[]) { "auth", "identity", "password", "user", "name", NULL });
        const char *password = json_path_string(req, (const char *const[]) { "auth", "identity", "password", "user", "password", NULL });
        const char *project = json_path_string(req, (const char *const[]) { "auth", "scope", "project", "name", NULL });
        return g_strcmp0(user, KEYSTONE_FIXTURE_USER) == 0 && g_strcmp0(password, KEYSTONE_FIXTURE_PASSWORD) == 0 &&
               g_strcmp0(project, KEYSTONE_FIXTURE_PROJECT) == 0;
}

static json_t *catalog(const char *image_url) {
        json_t *c = json_array();
        if (image_url)
                json_array_append_new(c, json_pack("{s:s, s:[{s:s, s:s, s:s, s:s}]}", "type", "image", "endpoints",
                                                   "interface", "public", "region", "RegionOne", "region_id", "RegionOne",
                                                   "url", image_url));
        return c;
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, char *body, const char *token) {
        struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
        if (!r)
                return MHD_NO;
        MHD_add_response_header(r, "Content-Type", "application/json");
        if (token)
                MHD_add_response_header(r, "X-Subject-Token", token);
        enum MHD_Result ret = MHD_queue_response(c, status, r);
        MHD_destroy_response(r);
        return ret;
}

static enum MHD_Result issue(KeystoneFixture *ks, struct MHD_Connection *c) {
        pthread_mutex_lock(&ks->lock);
        char *token = g_strdup_printf("ks-token-%u", ++ks->issued);
        gint64 *end = g_new(gint64, 1);
        *end = g_get_monotonic_time() + (gint64) ks->lifetime_ms * 1000;
        g_hash_table_insert(ks->expiry, g_strdup(token), end);
        gint64 now = now_real_usec();
        char *issued = iso_time(now), *expires = iso_time(now + (gint64) ks->lifetime_ms * 1000);
        json_t *body = json_pack("{s:{s:s, s:s, s:[s], s:o}}", "token", "issued_at", issued, "expires_at", expires,
                                 "methods", "password", "catalog", catalog(ks->image_url));
        pthread_mutex_unlock(&ks->lock);
        enum MHD_Result ret = respond(c, MHD_HTTP_CREATED, json_dumps(body, JSON_COMPACT), token);
        json_decref(body);
        g_free(issued);
        g_free(expires);
        g_free(token);
        return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
        KeystoneFixture *ks = cls;
        Upload *u = *con_cls;

        if (!u) {
                u = g_new0(Upload, 1);
                u->body = g_string_new(NULL);
                *con_cls = u;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                if (u->body->len + *upload_data_size <= BODY_MAX)
                        g_string_append_len(u->body, upload_data, (gssize) *upload_data_size);
                *upload_data_size = 0;
                return MHD_YES;
        }
        if (strcmp(method, "POST") != 0 || strcmp(url, "/v3/auth/tokens") != 0)
                return respond(c, MHD_HTTP_NOT_FOUND, strdup("{\"error\":{\"code\":404}}"), NULL);

        pthread_mutex_lock(&ks->lock);
        ks->requests++;
        pthread_mutex_unlock(&ks->lock);
        json_t *req = json_loads(u->body->str, 0, NULL);
        bool right = req && credentials_right(req);
        json_decref(req);
        if (!right)
                return respond(c, MHD_HTTP_UNAUTHORIZED,
                               strdup("{\"error\":{\"code\":401,\"title\":\"Unauthorized\"}}"), NULL);
        return issue(ks, c);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
        Upload *u = *con_cls;
        if (!u)
                return;
        g_string_free(u->body, TRUE);
        g_free(u);
        *con_cls = NULL;
}

int keystone_fixture_new(KeystoneFixture **ret) {
        KeystoneFixture *ks = g_new0(KeystoneFixture, 1);
        pthread_mutex_init(&ks->lock, NULL);
        ks->lifetime_ms = 3600 * 1000;
        ks->expiry = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        ks->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL,
                                   0, NULL, NULL, on_request, ks,
                                   MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &sa,
                                   MHD_OPTION_NOTIFY_COMPLETED, on_completed, ks,
                                   MHD_OPTION_END);
        if (!ks->mhd) {
                keystone_fixture_free(ks);
                return -EADDRNOTAVAIL;
        }
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(ks->mhd, MHD_DAEMON_INFO_BIND_PORT);
        ks->port = info ? info->port : 0;
        *ret = ks;
        return 0;
}

void keystone_fixture_free(KeystoneFixture *ks) {
        if (!ks)
                return;
        if (ks->mhd)
                MHD_stop_daemon(ks->mhd);
        g_hash_table_destroy(ks->expiry);
        g_free(ks->image_url);
        pthread_mutex_destroy(&ks->lock);
        g_free(ks);
}

char *keystone_fixture_url(const KeystoneFixture *ks) {
        char *u = NULL;
        return asprintf(&u, "http://127.0.0.1:%u", ks->port) < 0 ? NULL : u;
}

void keystone_fixture_set_lifetime_ms(KeystoneFixture *ks, unsigned ms) {
        pthread_mutex_lock(&ks->lock);
        ks->lifetime_ms = ms;
        pthread_mutex_unlock(&ks->lock);
}

void keystone_fixture_set_image_url(KeystoneFixture *ks, const char *url) {
        pthread_mutex_lock(&ks->lock);
        g_free(ks->image_url);
        ks->image_url = g_strdup(url);
        pthread_mutex_unlock(&ks->lock);
}

unsigned keystone_fixture_token_requests(KeystoneFixture *ks) {
        pthread_mutex_lock(&ks->lock);
        unsigned n = ks->requests;
        pthread_mutex_unlock(&ks->lock);
        return n;
}

unsigned keystone_fixture_tokens_issued(KeystoneFixture *ks) {
        pthread_mutex_lock(&ks->lock);
        unsigned n = ks->issued;
        pthread_mutex_unlock(&ks->lock);
        return n;
}

bool keystone_fixture_token_valid(const char *token, void *userdata) {
        KeystoneFixture *ks = userdata;
        pthread_mutex_lock(&ks->lock);
        gint64 *end = token ? g_hash_table_lookup(ks->expiry, token) : NULL;
        bool valid = end && g_get_monotonic_time() < *end;
        pthread_mutex_unlock(&ks->lock);
        return valid;
}

void keystone_fixture_revoke_all(KeystoneFixture *ks) {
        pthread_mutex_lock(&ks->lock);
        g_hash_table_remove_all(ks->expiry);
        pthread_mutex_unlock(&ks->lock);
}
