/* SPDX-License-Identifier: MIT */

/* The Fetcher: one fill per image however many parties want it, at most MaxParallelFetches of them
 * talking to the upstream at once, the rest waiting in order; the configuration they use; the observers
 * told of each fill; and the loop-side sources the fills share (news delivery, the turn budget). */

#include <assert.h>
#include <curl/curl.h>
#include <inttypes.h>

#include "fill-internal.h"
#include "image-id.h"
#include "log.h"

static void fill_unref_void(void *p) {
        fill_unref(p);
}

/* ---- slots, the turn budget, news ------------------------------------------------------------------- */

static bool fetcher_token_ready(Fetcher *fe);

static void fetcher_start_pending(Fetcher *fe) {
        if (!g_queue_is_empty(&fe->pending) && !fetcher_token_ready(fe))
                return; /* the fills wait in WAITING until Keystone answers */
        while (!fe->freeing && fe->n_slots_used < MAX(fe->max_parallel, 1u) && !g_queue_is_empty(&fe->pending)) {
                fe->n_slots_used++;
                fill_start(g_queue_pop_head(&fe->pending));
        }
}

void fetcher_release_slot(Fetcher *fe) {
        assert(fe->n_slots_used > 0);
        fe->n_slots_used--;
        fetcher_start_pending(fe);
}

/* The turn of the event loop a fill's budget counts for: the CurlLoop's turns, and ours that resumed. */
uint64_t fetcher_turn(const Fetcher *fe) {
        return (fe->curl ? curl_loop_turns(fe->curl) : 0) + fe->resumes;
}

void fetcher_yield(Fetcher *fe, Fill *f) {
        g_queue_push_tail(&fe->yielded, fill_ref(f));
        (void) sd_event_source_set_enabled(fe->resume, SD_EVENT_ONESHOT);
}

static int on_resume(sd_event_source *s, void *userdata) {
        Fetcher *fe = userdata;
        Fill *f;

        fe->resumes++;
        while ((f = g_queue_pop_head(&fe->yielded))) {
                fill_resume_transfer(f);
                fill_unref(f);
        }
        return 0;
}

static int on_dispatch(sd_event_source *s, void *userdata) {
        Fetcher *fe = userdata;
        Fill *f;

        while ((f = g_queue_pop_head(&fe->notify))) {
                f->notify_queued = false;
                fill_dispatch(f);
                fill_unref(f);
        }
        return 0;
}

void fetcher_fill_finished(Fetcher *fe, Fill *f, bool was_waiting) {
        if (was_waiting)
                g_queue_remove(&fe->pending, f);
        if (g_hash_table_lookup(fe->fills, f->id) == f)
                g_hash_table_remove(fe->fills, f->id); /* drops the table's reference */
}

void fetcher_tell_finished(Fetcher *fe, Fill *f) {
        for (FetcherObserver *o = fe->observers; o; o = o->observers_next)
                if (o->fill_finished)
                        o->fill_finished(fe, f, o->userdata);
}

/* ---- room for an incoming image ------------------------------------------------------------------------ */

void fetcher_make_room(Fetcher *fe, const char *id, uint64_t incoming, uint64_t max_size) {
        uint64_t keep_free = 0;
        SpaceResult res;
        int r;

        if (image_cache_resolve_limit(fe->cache, &fe->keep_free, &keep_free) < 0)
                keep_free = 0; /* the filesystem cannot be examined: there is nothing to compare with */

        r = image_cache_make_room(fe->cache, incoming, max_size, keep_free, &res);
        if (r < 0)
                log_image_errno(LOG_WARNING, r, NULL, id, "Cannot make room for %s: %m", id);
        if (res.files > 0)
                log_image(LOG_INFO, NULL, id, "Evicted %u images (%" PRIu64 " bytes) to admit %s", res.files, res.bytes, id);
}

#define FETCH_TOKEN_REREAD_USEC USEC_PER_SEC

void fetcher_refresh_token(Fetcher *fe) {
        _cleanup_(freep) char *token = NULL;
        usec_t now = now_usec(CLOCK_MONOTONIC);
        int r;

        if (!fe->token_file || (fe->token_read_at > 0 && now < fe->token_read_at + FETCH_TOKEN_REREAD_USEC))
                return;
        fe->token_read_at = now;
        r = read_token_file_first(fe->token_file, &token);
        if (r < 0) {
                log_warning_errno(r, "Cannot re-read TokenFile=%s after the upstream refused the token: %m",
                                  fe->token_file);
                return;
        }
        if (streq_ptr(token, fe->token)) {
                explicit_bzero(token, strlen(token));
                return;
        }
        if (fe->token)
                explicit_bzero(fe->token, strlen(fe->token));
        free_and_replace(fe->token, token);
        fe->token_generation++;
        log_info("The upstream refused the token: re-read TokenFile=%s, which holds a new one.", fe->token_file);
}

/* ---- Keystone ----------------------------------------------------------------------------------------- */

bool fetcher_may_reauthenticate(const Fetcher *fe) {
        return fe->token_file || fe->keystone;
}

const char *fetcher_credentials_hint(const Fetcher *fe) {
        return fe->keystone ? "CredentialsFile=" : "TokenFile=";
}

/* With Keystone, whether a token is there for fills to start with; asks for one when not. */
static bool fetcher_token_ready(Fetcher *fe) {
        if (!fe->keystone || keystone_token(fe->keystone))
                return true;
        int r = keystone_authenticate(fe->keystone);
        if (r < 0)
                log_warning_errno(r, "Cannot ask Keystone for a token: %m");
        return false;
}

bool fetcher_wait_for_token(Fetcher *fe, Fill *f) {
        if (!fe->keystone)
                return false;
        g_queue_push_tail(&fe->token_waiters, fill_ref(f));
        int r = keystone_authenticate(fe->keystone);
        if (r < 0)
                log_warning_errno(r, "Cannot ask Keystone for a token: %m");
        return true;
}

static int fetcher_take_keystone_token(Fetcher *fe) {
        _cleanup_(freep) char *token = strdup(keystone_token(fe->keystone) ?: "");
        _cleanup_(freep) char *url = NULL;

        if (!token)
                return -ENOMEM;
        if (!fe->configured_url && keystone_image_url(fe->keystone)) {
                if (!(url = strdup(keystone_image_url(fe->keystone))))
                        return -ENOMEM;
                if (!streq_ptr(url, fe->url))
                        log_info("The image endpoint from Keystone's catalog is %s.", url);
                free_and_replace(fe->url, url);
        }
        if (fe->token)
                explicit_bzero(fe->token, strlen(fe->token));
        free_and_replace(fe->token, token);
        fe->token_generation++;
        return 0;
}

/* Sends a prepared query to the upstream, with the daemon's token unless it carries credentials of its
 * own (a client's read check). */
static int fetcher_launch_query(Fetcher *fe, UpstreamQuery *q) {
        _cleanup_(freep) char *own = NULL;

        if (isempty(fe->url))
                return -ENXIO;
        if (fe->token && asprintf(&own, "X-Auth-Token: %s", fe->token) < 0)
                return -ENOMEM;
        int r = upstream_query_launch(q, fe->curl, &fe->transport_settings, fe->kind, fe->url, own);
        if (own)
                explicit_bzero(own, strlen(own));
        return r;
}

struct FetcherAddressWait {
        Fetcher *fe;            /* NULL once the fetcher is gone */
        void (*ready)(Fetcher *fe, int error, void *userdata);
        void *userdata;
};

/* Whatever waited for the upstream's address goes on (error 0), or is told why it cannot. Each leaves the
 * list before, as its ready may free others. */
static void fetcher_wake_address_waiters(Fetcher *fe, int error) {
        for (FetcherAddressWait *w; (w = g_queue_pop_head(&fe->address_waiters));) {
                w->fe = NULL;
                w->ready(fe, error, w->userdata);
                free(w);
        }
}

int fetcher_wait_address(Fetcher *fe, void (*ready)(Fetcher *fe, int error, void *userdata), void *userdata,
                         FetcherAddressWait **ret) {
        FetcherAddressWait *w;
        int r;

        *ret = NULL;
        if (!isempty(fe->url))
                return 0;
        if (!fe->keystone || keystone_token(fe->keystone))
                return -ENXIO;
        r = keystone_authenticate(fe->keystone);
        if (r < 0)
                return log_warning_errno(r, "Cannot ask Keystone for a token: %m");
        w = calloc(1, sizeof(FetcherAddressWait));
        if (!w)
                return -ENOMEM;
        *w = (FetcherAddressWait) { .fe = fe, .ready = ready, .userdata = userdata };
        g_queue_push_tail(&fe->address_waiters, w);
        *ret = w;
        return 0;
}

FetcherAddressWait *fetcher_address_wait_free(FetcherAddressWait *w) {
        if (!w)
                return NULL;
        if (w->fe)
                (void) g_queue_remove(&w->fe->address_waiters, w);
        free(w);
        return NULL;
}

const char *fetcher_upstream_url(const Fetcher *fe) {
        return isempty(fe->url) ? NULL : fe->url;
}

int fetcher_exchange(Fetcher *fe, UpstreamExchange *x) {
        if (isempty(fe->url))
                return -ENXIO;
        return upstream_exchange_launch(x, fe->curl, &fe->transport_settings, fe->url);
}

/* The fills refused with the old token ask again (error 0), or fail with message. */
static void fetcher_wake_token_waiters(Fetcher *fe, int error, const char *message) {
        for (Fill *f; (f = g_queue_pop_head(&fe->token_waiters));) {
                if (error < 0)
                        fill_fail_with(f, error, message);
                else
                        fill_token_refreshed(f);
                fill_unref(f);
        }
}

/* Every fill that waited for the answer goes on, or fails with what Keystone said. */
static void on_keystone_done(Keystone *k, int error, const char *message, void *userdata) {
        Fetcher *fe = userdata;
        _cleanup_(freep) char *why = NULL;

        if (error >= 0 && (error = fetcher_take_keystone_token(fe)) >= 0 && !fe->url) {
                error = -EHOSTUNREACH;
                (void) asprintf(&why, "Keystone's catalog has no %s image endpoint%s%s; set [Upstream] URL=",
                                keystone_interface(k), keystone_region(k) ? " in region " : "",
                                strempty(keystone_region(k)));
                message = why;
        }
        fetcher_wake_token_waiters(fe, error, message);
        fetcher_wake_address_waiters(fe, error);
        if (error >= 0) {
                fetcher_start_pending(fe);
                return;
        }
        GList *waiting = g_list_copy(fe->pending.head);
        for (GList *l = waiting; l; l = l->next)
                fill_ref(l->data);
        for (GList *l = waiting; l; l = l->next)
                fill_fail_with(l->data, error, message);
        g_list_free_full(waiting, fill_unref_void);
}

/* A token nobody needs is not renewed: an idle daemon does not talk to Keystone, the next fill asks. */
static void on_keystone_refresh_due(Keystone *k, void *userdata) {
        Fetcher *fe = userdata;
        if (fetcher_n_active(fe) > 0)
                (void) keystone_authenticate(k);
}

static int fetcher_setup_keystone(Fetcher *fe, const Config *config, Keystone **ret) {
        _cleanup_(keystone_credentials_done) KeystoneCredentials creds = {};
        _cleanup_(freep) char *error = NULL;
        int r;

        *ret = NULL;
        if (config->upstream_auth != UPSTREAM_AUTH_KEYSTONE)
                return 0;
        r = keystone_credentials_load(config->credentials_file, &creds, &error);
        if (r < 0)
                return log_error_errno(r, "%s", error ?: "Cannot read CredentialsFile=");
        KeystoneOptions o = {
                .auth_url = config->auth_url,
                .credentials_file = config->credentials_file,
                .credentials = &creds,
                .interface = config->endpoint_interface,
                .region = config->endpoint_region,
                .transport = &fe->transport_settings,
        };
        KeystoneCallbacks cb = { .done = on_keystone_done, .refresh_due = on_keystone_refresh_due, .userdata = fe };
        return keystone_new(fe->event, fe->curl, &o, &cb, ret);
}

/* ---- configuration ------------------------------------------------------------------------------------- */

static int fetcher_apply_config(Fetcher *fe, const Config *config) {
        _cleanup_(freep) char *url = NULL, *token = NULL, *token_file = NULL, *configured = NULL;
        _cleanup_(transport_settings_done) TransportSettings transport = {};
        Keystone *keystone = NULL;

        if (!isempty(config->upstream_url) && (!(url = strdup(config->upstream_url)) || !(configured = strdup(url))))
                return -ENOMEM;
        if (transport_settings_from_config(config, &transport) < 0)
                return -ENOMEM;
        int k = fetcher_setup_keystone(fe, config, &keystone);
        if (k < 0)
                return k;
        if (keystone) {
                /* A new Keystone: a token, and with no URL= the endpoint, come with the next fill. */
                keystone_free(fe->keystone);
                fe->keystone = keystone;
                free_and_replace(fe->configured_url, configured);
                fe->url = mfree(fe->url);
                free_and_replace(fe->url, url);
                fe->token_file = mfree(fe->token_file);
                goto rest;
        }
        fe->keystone = keystone_free(fe->keystone);
        fe->configured_url = mfree(fe->configured_url);
        if (!isempty(config->token_file)) {
                int r = read_token_file_first(config->token_file, &token);
                if (r < 0)
                        return log_error_errno(r, "Cannot read TokenFile=%s: %m", config->token_file);
        }

        if (!isempty(config->token_file) && !(token_file = strdup(config->token_file))) {
                if (token)
                        explicit_bzero(token, strlen(token));
                return -ENOMEM;
        }
        free_and_replace(fe->url, url);
        if (!streq_ptr(fe->token, token))
                fe->token_generation++;
        if (fe->token)
                explicit_bzero(fe->token, strlen(fe->token));
        free_and_replace(fe->token, token);
        free_and_replace(fe->token_file, token_file);
rest:
        /* Read by every request as it starts, Keystone's included: the new ones apply from the next. */
        transport_settings_done(&fe->transport_settings);
        fe->transport_settings = transport;
        transport = (TransportSettings) {};
        fe->kind = config->upstream_kind;
        fe->max_parallel = MAX(config->max_parallel_fetches, 1u);
        fe->max_size = config->max_size;
        fe->keep_free = config->keep_free;
        fe->enforce_max_size = config->enforce_max_size;
        if (!fe->keystone) {
                fetcher_wake_token_waiters(fe, 0, NULL); /* Keystone is gone: TokenFile= answers them */
                fetcher_wake_address_waiters(fe, isempty(fe->url) ? -ENXIO : 0);
        } else if (keystone && (!g_queue_is_empty(&fe->token_waiters) || !g_queue_is_empty(&fe->address_waiters)))
                (void) keystone_authenticate(keystone); /* they waited for the old one */
        return 0;
}

/* ---- the Fetcher API ------------------------------------------------------------------------------------ */

static int fetcher_add_sources(Fetcher *fe) {
        int r = sd_event_add_defer(fe->event, &fe->dispatch, on_dispatch, fe);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(fe->dispatch, SD_EVENT_OFF);
        (void) sd_event_source_set_description(fe->dispatch, "fetch-dispatch");
        /* News of a fill (headers, bytes, the end) reaches listeners before the fill moves on. */
        (void) sd_event_source_set_priority(fe->dispatch, SD_EVENT_PRIORITY_NORMAL - 1);

        r = sd_event_add_defer(fe->event, &fe->resume, on_resume, fe);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(fe->resume, SD_EVENT_OFF);
        (void) sd_event_source_set_description(fe->resume, "fetch-resume");
        return 0;
}

int fetcher_new_with_transport(sd_event *event, ImageCache *cache, const Config *config,
                               const FillTransport *transport, Fetcher **ret) {
        Fetcher *fe = calloc(1, sizeof(Fetcher));
        int r;

        if (!fe)
                return -ENOMEM;
        *fe = (Fetcher) {
                .event = sd_event_ref(event),
                .cache = cache,
                .transport = transport,
                .fills = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, fill_unref_void),
                .all = g_hash_table_new(g_direct_hash, g_direct_equal),
        };
        g_queue_init(&fe->pending);
        g_queue_init(&fe->notify);
        g_queue_init(&fe->yielded);

        g_queue_init(&fe->token_waiters);
        g_queue_init(&fe->address_waiters);
        r = curl_loop_new(event, &fe->curl); /* also for queries and Keystone */
        if (r >= 0)
                r = fetcher_apply_config(fe, config);
        if (r >= 0)
                r = fetcher_add_sources(fe);
        if (r < 0) {
                fetcher_free(fe);
                return r;
        }
        *ret = fe;
        return 0;
}

int fetcher_new(sd_event *event, ImageCache *cache, const Config *config, Fetcher **ret) {
        const curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
        if (!(vi->features & CURL_VERSION_ASYNCHDNS))
                log_warning("libcurl %s resolves names synchronously: a slow DNS server will stall the daemon", vi->version);
        return fetcher_new_with_transport(event, cache, config, &fill_curl_transport, ret);
}

/* Every fill still running ends (a seal in flight is committed first); those that others still hold
 * outlive the fetcher, final, and must not reach back. */
static void fetcher_abandon_fills(Fetcher *fe) {
        GList *fills = g_hash_table_get_values(fe->fills);
        for (GList *l = fills; l; l = l->next)
                fill_ref(l->data);
        for (GList *l = fills; l; l = l->next)
                fill_abandon(l->data);
        on_dispatch(NULL, fe);
        for (Fill *y; (y = g_queue_pop_head(&fe->yielded));)
                fill_unref(y);
        g_list_free_full(fills, fill_unref_void);

        GHashTableIter it;
        gpointer key;
        g_hash_table_iter_init(&it, fe->all);
        while (g_hash_table_iter_next(&it, &key, NULL))
                ((Fill *) key)->fetcher = NULL;
}

Fetcher *fetcher_free(Fetcher *fe) {
        if (!fe)
                return NULL;

        fe->freeing = true;
        if (fe->fills)
                fetcher_abandon_fills(fe);
        if (fe->all)
                g_hash_table_destroy(fe->all);
        for (Fill *w; (w = g_queue_pop_head(&fe->token_waiters));)
                fill_unref(w);
        /* Their owners free them; they must not tell a fetcher that is gone. */
        for (FetcherAddressWait *w; (w = g_queue_pop_head(&fe->address_waiters));)
                w->fe = NULL;
        fe->keystone = keystone_free(fe->keystone); /* its request is on the CurlLoop */
        free(fe->configured_url);
        curl_loop_free(fe->curl);
        if (fe->fills)
                g_hash_table_destroy(fe->fills);
        sd_event_source_disable_unref(fe->dispatch);
        sd_event_source_disable_unref(fe->resume);
        fill_writer_trim_pool();
        if (fe->token)
                explicit_bzero(fe->token, strlen(fe->token));
        free(fe->token);
        free(fe->token_file);
        free(fe->url);
        if (fe->fleet)
                fleet_set_transport(fe->fleet, NULL);
        transport_settings_done(&fe->transport_settings);
        sd_event_unref(fe->event);
        free(fe);
        return NULL;
}

int fetcher_reconfigure(Fetcher *fe, const Config *config) {
        int r = fetcher_apply_config(fe, config);
        if (r < 0)
                return r;
        fetcher_start_pending(fe);
        return 0;
}

void fetcher_add_observer(Fetcher *fe, FetcherObserver *o) {
        LIST_PREPEND(observers, fe->observers, o);
}

void fetcher_remove_observer(Fetcher *fe, FetcherObserver *o) {
        LIST_REMOVE(observers, fe->observers, o);
}

bool fetcher_has_upstream(const Fetcher *fe) {
        return !isempty(fe->url) || fe->keystone; /* Keystone's catalog may name it */
}

unsigned fetcher_n_active(const Fetcher *fe) {
        return g_hash_table_size(fe->fills);
}

Fill *fetcher_find(const Fetcher *fe, const char *id) {
        return id ? g_hash_table_lookup(fe->fills, id) : NULL;
}

int fetcher_fill(Fetcher *fe, const char *id, const Checksum *expected, Fill **ret) {
        return fetcher_fill_full(fe, id, expected, 0, ret);
}

int fetcher_fill_full(Fetcher *fe, const char *id, const Checksum *expected, FetchFlags flags, Fill **ret) {
        if (!image_id_is_valid(id))
                return -EINVAL;
        if (!fetcher_has_upstream(fe))
                return -ENXIO;
        if (fe->freeing)
                return -ECANCELED;

        Fill *f = g_hash_table_lookup(fe->fills, id);
        if (f) {
                *ret = fill_ref(f);
                return 0;
        }
        if (image_cache_is_cached(fe->cache, id))
                return -EEXIST;

        f = fill_new(fe, id, expected, flags);
        if (!f)
                return -ENOMEM;
        g_hash_table_add(fe->all, f);
        g_hash_table_insert(fe->fills, f->id, fill_ref(f));
        for (FetcherObserver *o = fe->observers; o; o = o->observers_next)
                if (o->fill_started)
                        o->fill_started(fe, f, o->userdata);

        g_queue_push_tail(&fe->pending, f);
        fetcher_start_pending(fe);
        *ret = f;
        return 0;
}

void fetcher_set_fleet(Fetcher *fe, Fleet *fleet) {
        if (fe->fleet && fe->fleet != fleet)
                fleet_set_transport(fe->fleet, NULL);
        fe->fleet = fleet;
        if (fleet) /* its holders query is a request like ours */
                fleet_set_transport(fleet, &fe->transport_settings);
}

const FleetCounters *fetcher_fleet_counters(const Fetcher *fe) {
        return &fe->fleet_counters;
}

CurlLoop *fetcher_curl(const Fetcher *fe) {
        return fe->curl;
}

/* A query waiting for the upstream's address: sent once it is known, or ended with Keystone's error. */
static void query_on_address(Fetcher *fe, int error, void *userdata) {
        UpstreamQuery *q = userdata;

        upstream_query_set_release(q, NULL, NULL); /* the wait is freed after this */
        int r = error < 0 ? error : fetcher_launch_query(fe, q);
        if (r < 0)
                upstream_query_fail(q, r);
}

/* The query is freed while it waits. */
static void query_wait_release(UpstreamQuery *q, void *userdata) {
        fetcher_address_wait_free(userdata);
}

static int fetcher_start_query(Fetcher *fe, const UpstreamQueryOptions *o, UpstreamQueryDone done, void *userdata,
                               UpstreamQuery **ret) {
        FetcherAddressWait *w = NULL;
        UpstreamQuery *q;
        int r;

        r = upstream_query_prepare(o, done, userdata, &q);
        if (r < 0)
                return r;
        r = fetcher_wait_address(fe, query_on_address, q, &w);
        if (r >= 0 && w)
                upstream_query_set_release(q, query_wait_release, w);
        else if (r >= 0)
                r = fetcher_launch_query(fe, q);
        if (r < 0) {
                upstream_query_free(q);
                return r;
        }
        *ret = q;
        return 0;
}

int fetcher_query(Fetcher *fe, const char *id, const char *credentials, UpstreamQueryDone done, void *userdata,
                  UpstreamQuery **ret) {
        UpstreamQueryOptions o = { .id = id, .credentials = credentials };
        return fetcher_start_query(fe, &o, done, userdata, ret);
}

int fetcher_query_range(Fetcher *fe, const Fill *f, uint64_t start, uint64_t length, UpstreamQueryDone done,
                        void *userdata, UpstreamQuery **ret) {
        uint64_t total = fill_bytes_total(f);
        UpstreamQueryOptions o = {
                .id = f->id,
                .range_start = start,
                .range_length = length,
                .range_total = total,
                /* If-Range wants a strong validator; a peer's is its own, not the origin's. */
                .if_range = f->etag && strncmp(f->etag, "W/", 2) != 0 && !fill_from_peer(f) ? f->etag : NULL,
        };

        /* A fill without a length yet (waiting for a slot) takes the range of whatever length the origin says. */
        if (length == 0 || (total != UINT64_MAX && start + length > total))
                return -EINVAL;
        return fetcher_start_query(fe, &o, done, userdata, ret);
}
