/* SPDX-License-Identifier: MIT */

/* The fill's state machine (src/daemon/fill.c) driven by a scripted transport instead of curl: no
 * network, every response, byte and end handed in by the test, the steps checked after each. The store,
 * the writer thread, the workers and the event loop are the real ones. */

#include <glib.h>
#include <sys/stat.h>
#include <systemd/sd-event.h>

#include "checksum.h"
#include "fill-internal.h"
#include "keystone-fixture.h"
#include "test-util.h"

#define WAIT_USEC (10 * USEC_PER_SEC)
#define MIB (1024U * 1024U)

/* What the fill asked of the transport, and what it holds. */
typedef struct Script {
        unsigned starts, resumes, stops;
        char *url;
        char *token;
        uint64_t range_start;
        char *if_range;
        char *via;              /* a peer request's Imgcache-Peer-Via */
        Fill *fill;             /* of the running transfer */
        uint8_t *held;          /* bytes refused with INTAKE_HOLD, handed back on resume */
        size_t held_size;
        FillIntake resumed;     /* what the fill said of the bytes handed back */
} Script;

static Script script;

static int script_start(Fill *f, const FillRequest *r) {
        script.starts++;
        g_free(script.url);
        g_free(script.token);
        g_free(script.if_range);
        script.url = g_strdup(r->url);
        script.token = g_strdup(r->token);
        script.range_start = r->range_start;
        script.if_range = g_strdup(r->if_range);
        g_free(script.via);
        script.via = g_strdup(r->peer_via);
        script.fill = f;
        f->transfer = &script;
        return 0;
}

static void script_resume(Fill *f) {
        script.resumes++;
        if (script.held_size > 0) {
                g_autofree uint8_t *held = g_steal_pointer(&script.held);
                size_t n = script.held_size;
                script.held_size = 0;
                script.resumed = fill_on_body(f, held, n);
        }
}

static void script_stop(Fill *f) {
        script.stops++;
        f->transfer = NULL;
        script.fill = NULL;
}

static const FillTransport scripted = {
        .start = script_start,
        .resume = script_resume,
        .stop = script_stop,
};

typedef struct Env {
        char *dir;
        sd_event *event;
        ImageCache *cache;
        Config config;
        Fetcher *fetcher;
        Fill *fill;
} Env;

static void env_setup(Env *e, UpstreamKind kind) {
        g_autofree char *cache_dir = NULL;
        char *error = NULL;

        *e = (Env) { .dir = test_tmpdir_new() };
        g_free(script.url);
        g_free(script.token);
        g_free(script.if_range);
        g_free(script.via);
        g_free(script.held);
        script = (Script) {};
        cache_dir = g_build_filename(e->dir, "cache", NULL);
        g_assert_cmpint(sd_event_new(&e->event), >=, 0);
        if (image_cache_open(cache_dir, DRIVER_SQLITE, &e->cache, &error) < 0)
                g_error("image_cache_open: %s", error);
        g_assert_cmpint(config_init(&e->config), ==, 0);
        e->config.upstream_kind = kind;
        free(e->config.upstream_url);
        e->config.upstream_url = g_strdup(kind == UPSTREAM_GLANCE ? "http://origin.test" : "http://origin.test/i/{id}");
        e->config.max_size = (SizeLimit) { .bytes = 1ULL << 30, .permille = UINT64_MAX };
        e->config.keep_free = (SizeLimit) { .bytes = 0, .permille = UINT64_MAX };
}

static Fill *env_start(Env *e, const char *id, const Checksum *expected) {
        g_assert_cmpint(fetcher_new_with_transport(e->event, e->cache, &e->config, &scripted, &e->fetcher), ==, 0);
        g_assert_cmpint(fetcher_fill(e->fetcher, id, expected, &e->fill), ==, 0);
        return e->fill;
}

static void env_teardown(Env *e) {
        e->fill = fill_unref(e->fill);
        e->fetcher = fetcher_free(e->fetcher);
        e->cache = image_cache_close(e->cache);
        config_done(&e->config);
        e->event = sd_event_unref(e->event);
        test_tmpdir_remove(e->dir);
        g_free(e->dir);
}

static void env_run_until_step(Env *e, FillStep step) {
        usec_t deadline = now_usec(CLOCK_MONOTONIC) + WAIT_USEC;
        while (e->fill->step != step) {
                if (now_usec(CLOCK_MONOTONIC) > deadline)
                        g_error("timed out waiting for step %s, at %s", fill_step_to_string(step),
                                fill_step_to_string(e->fill->step));
                g_assert_cmpint(sd_event_run(e->event, 100 * USEC_PER_MSEC), >=, 0);
        }
}

#define assert_step(f, s) g_assert_cmpstr(fill_step_to_string((f)->step), ==, fill_step_to_string(s))

/* A response's headers; a peer's carry the fan-out's two (NULL: none). */
static FillIntake headers_full(Fill *f, long status, uint64_t length, const char *etag, const char *range,
                               const char *location, const char *peer_redirect, const char *peer_path) {
        FillResponse r = {
                .status = status,
                .content_length = length,
                .effective_url = script.url,
                .etag = etag,
                .content_range = range,
                .location = location,
                .peer_redirect = peer_redirect,
                .peer_path = peer_path,
        };
        return fill_on_headers(f, &r);
}

static FillIntake headers(Fill *f, long status, uint64_t length, const char *etag, const char *range,
                          const char *location) {
        return headers_full(f, status, length, etag, range, location, NULL, NULL);
}

/* Offers bytes as curl would: what is held comes back on resume. */
static FillIntake body(Fill *f, const void *data, size_t n) {
        FillIntake i = fill_on_body(f, data, n);
        if (i == INTAKE_HOLD) {
                g_assert_null(script.held);
                script.held = g_memdup2(data, n);
                script.held_size = n;
        }
        return i;
}

static void end(Fill *f, int error) {
        f->transfer = NULL;
        script.fill = NULL;
        fill_on_transfer_end(f, error, error < 0 ? "scripted failure" : NULL);
}

static void sha256_of(const void *data, size_t n, Checksum *ret) {
        _cleanup_(hasher_freep) Hasher *h = NULL;
        g_assert_cmpint(hasher_new(CHECKSUM_SHA256, &h), ==, 0);
        g_assert_cmpint(hasher_update(h, data, n), ==, 0);
        g_assert_cmpint(hasher_finish(h, ret), ==, 0);
}

static uint8_t *make_data(size_t n) {
        uint8_t *d = g_malloc(n);
        for (size_t i = 0; i < n; i++)
                d[i] = (uint8_t) (i * 7 + i / 251);
        return d;
}

/* The image as far as the machine admitted it: headers, admission on the loop, receiving. */
static void env_admit(Env *e, uint64_t length, const char *etag) {
        Fill *f = e->fill;
        assert_step(f, STEP_REQUESTING);
        g_assert_cmpint(headers(f, 200, length, etag, NULL, NULL), ==, INTAKE_HOLD);
        assert_step(f, STEP_ADMITTING);
        g_assert_cmpint(fill_state(f), ==, FILL_CONNECTING);
        unsigned resumes = script.resumes;
        env_run_until_step(e, STEP_RECEIVING);
        g_assert_cmpuint(script.resumes, ==, resumes + 1); /* admission lets the held transfer go on */
        g_assert_cmpint(fill_state(f), ==, FILL_RECEIVING);
}

static void test_whole_image(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        size_t n = 3 * MIB / 2;
        g_autofree uint8_t *data = make_data(n);
        Fill *f = env_start(&e, "whole", NULL);

        g_assert_cmpuint(script.starts, ==, 1);
        g_assert_cmpstr(script.url, ==, "http://origin.test/i/whole");
        g_assert_cmpuint(script.range_start, ==, 0);
        env_admit(&e, n, "\"v1\"");
        g_assert_cmpint(body(f, data, MIB / 2), ==, INTAKE_TAKEN);
        g_assert_cmpint(body(f, data + MIB / 2, MIB / 2), ==, INTAKE_TAKEN);
        /* The turn's budget (1 MiB) is spent: held, and resumed from the loop's next turn. */
        g_assert_cmpint(body(f, data + MIB, MIB / 2), ==, INTAKE_HOLD);
        assert_step(f, STEP_PAUSED_TURN);
        g_assert_cmpint(fill_state(f), ==, FILL_RECEIVING);
        env_run_until_step(&e, STEP_RECEIVING);
        g_assert_cmpint(script.resumed, ==, INTAKE_TAKEN);
        g_assert_cmpuint(fill_bytes_written(f), ==, n);

        end(f, 0);
        g_assert_true(f->step == STEP_DRAINING || f->step == STEP_SEALING);
        env_run_until_step(&e, STEP_DONE);
        g_assert_true(fill_kept(f));
        g_assert_true(image_cache_is_cached(e.cache, "whole"));
        g_assert_cmpuint(image_cache_get(e.cache, "whole")->size, ==, n);
        env_teardown(&e);
}

static void test_paused_for_writer(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        size_t big = 64 * MIB;
        g_autofree uint8_t *data = make_data(big);
        Fill *f = env_start(&e, "writer", NULL);

        env_admit(&e, UINT64_MAX, NULL);
        g_assert_cmpint(body(f, data, MIB), ==, INTAKE_TAKEN);
        /* Held for the budget; handed back whole on resume (RESUMING takes everything), which queues
         * far more chunks than the writer's cap. */
        g_assert_cmpint(body(f, data, big), ==, INTAKE_HOLD);
        env_run_until_step(&e, STEP_RECEIVING);
        g_assert_cmpint(script.resumed, ==, INTAKE_TAKEN);
        /* A new turn, but the writer's queue is full. */
        g_assert_cmpint(body(f, data, 4096), ==, INTAKE_HOLD);
        assert_step(f, STEP_PAUSED_WRITER);
        unsigned resumes = script.resumes;
        env_run_until_step(&e, STEP_RECEIVING);
        g_assert_cmpuint(script.resumes, ==, resumes + 1);
        g_assert_cmpuint(fill_bytes_written(f), ==, MIB + big + 4096);

        end(f, 0);
        env_run_until_step(&e, STEP_DONE);
        g_assert_cmpuint(image_cache_get(e.cache, "writer")->size, ==, MIB + big + 4096);
        env_teardown(&e);
}

/* A partial file incomplete/<id> of n bytes received under etag. */
static void make_partial(Env *e, const char *id, const uint8_t *data, size_t n, const char *etag) {
        CacheWrite *w;
        g_assert_cmpint(image_cache_begin_write(e->cache, id, NULL, &w), ==, 0);
        g_assert_cmpint(cache_write_append(w, data, n), ==, 0);
        g_assert_cmpint(cache_write_set_etag(w, etag), ==, 0);
        image_cache_suspend_write(e->cache, w);
}

static void test_resume_rehashes(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        size_t n = 200000, have = 80000;
        g_autofree uint8_t *data = make_data(n);
        make_partial(&e, "resumed", data, have, "\"r1\"");
        Checksum sum;
        sha256_of(data, n, &sum);
        Fill *f = env_start(&e, "resumed", &sum);

        g_assert_cmpuint(script.range_start, ==, have);
        g_assert_cmpstr(script.if_range, ==, "\"r1\"");
        g_autofree char *range = g_strdup_printf("bytes %zu-%zu/%zu", have, n - 1, n);
        g_assert_cmpint(headers(f, 206, n - have, "\"r1\"", range, NULL), ==, INTAKE_HOLD);
        assert_step(f, STEP_ADMITTING);
        while (f->step == STEP_ADMITTING)
                g_assert_cmpint(sd_event_run(e.event, 100 * USEC_PER_MSEC), >=, 0);
        /* The worker's end is dispatched on a later turn: a response that begins meanwhile sees the
         * headers and must carry the digest (Repr-Digest). */
        assert_step(f, STEP_REHASHING);
        g_assert_cmpint(fill_state(f), ==, FILL_RECEIVING);
        Checksum shown;
        g_assert_true(fill_expected(f, &shown));
        g_assert_true(checksum_equal(&shown, &sum));
        env_run_until_step(&e, STEP_RECEIVING);
        g_assert_cmpuint(fill_bytes_written(f), ==, have);
        g_assert_cmpint(body(f, data + have, n - have), ==, INTAKE_TAKEN);
        end(f, 0);
        env_run_until_step(&e, STEP_DONE);
        g_assert_true(fill_kept(f)); /* the digest over both parts matched */
        env_teardown(&e);
}

static void test_restart(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        g_autofree uint8_t *data = make_data(5000);
        make_partial(&e, "again", data, 1000, "\"old\"");
        Fill *f = env_start(&e, "again", NULL);

        g_assert_cmpuint(script.range_start, ==, 1000);
        /* A continuation of another representation must not be spliced on. */
        g_assert_cmpint(headers(f, 206, 4000, "\"new\"", "bytes 1000-4999/5000", NULL), ==, INTAKE_SKIPPED);
        assert_step(f, STEP_RESTARTING);
        g_assert_cmpint(fill_on_body(f, data, 100), ==, INTAKE_SKIPPED);
        end(f, 0);
        g_assert_cmpuint(script.starts, ==, 2);
        g_assert_cmpuint(script.range_start, ==, 0);
        g_assert_cmpint(test_file_exists(image_cache_path(e.cache), "incomplete/again"), ==, 0);
        env_admit(&e, 5000, NULL);
        g_assert_cmpint(body(f, data, 5000), ==, INTAKE_TAKEN);
        end(f, 0);
        env_run_until_step(&e, STEP_DONE);
        env_teardown(&e);
}

static void test_redirect_drops_token(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        g_autofree char *token_file = g_build_filename(e.dir, "token", NULL);
        g_assert_true(g_file_set_contents(token_file, "s3cret\n", -1, NULL));
        e.config.token_file = g_strdup(token_file);
        Fill *f = env_start(&e, "moved", NULL);

        g_assert_cmpstr(script.token, ==, "s3cret");
        g_assert_cmpint(headers(f, 302, 0, NULL, NULL, "http://mirror.test/moved"), ==, INTAKE_SKIPPED);
        assert_step(f, STEP_REDIRECTED);
        end(f, 0);
        g_assert_cmpuint(script.starts, ==, 2);
        g_assert_cmpstr(script.url, ==, "http://mirror.test/moved");
        g_assert_null(script.token); /* never to another origin */
        assert_step(f, STEP_REQUESTING);
        g_assert_cmpint(headers(f, 302, 0, NULL, NULL, "ftp://mirror.test/x"), ==, INTAKE_ABORT);
        end(f, 0);
        assert_step(f, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -EPROTO);
        g_assert_nonnull(strstr(fill_error_message(f), "refused protocol"));
        env_teardown(&e);
}

static FillIntake peer_headers(Fill *f, long status, uint64_t length, const char *redirect, const char *path) {
        return headers_full(f, status, length, NULL, NULL, NULL, redirect, path);
}

/* The fan-out as the asker sees it: a redirect is followed with Via; one to a node passed is not, and
 * sends the fill back to the source that pointed it on, naming both; one to a node outside the fleet
 * counts as that source failing, and the fill goes on with the next source, its Via empty again. The
 * path the serving peer names is the fill's. */
static void test_peer_redirect(void) {
        static const char *nodes[] = { "http://10.0.0.1:1", "http://10.0.0.2:1", "http://10.0.0.3:1", "http://10.0.0.4:1",
                                       NULL };
        const char *self = nodes[3];
        g_autofree uint8_t *data = make_data(5000);
        _cleanup_(fleet_freep) Fleet *fleet = NULL;
        size_t order[4];
        char id[32];
        Env e;

        env_setup(&e, UPSTREAM_GENERIC);
        g_autofree char *token_file = g_build_filename(e.dir, "peer-token", NULL);
        g_assert_true(g_file_set_contents(token_file, "peer-secret\n", -1, NULL));
        g_assert_cmpint(chmod(token_file, 0600), ==, 0);
        e.config.fleet_peers = g_strjoinv(" ", (char **) nodes);
        e.config.fleet_self = g_strdup(self);
        e.config.peer_token_file = g_strdup(token_file);
        /* An image this node ranks last for: it asks the first two, then the origin. */
        for (unsigned i = 0;; i++) {
                g_snprintf(id, sizeof(id), "fanned-%u", i);
                fleet_rank((char **) nodes, 4, id, order);
                if (order[3] == 3)
                        break;
        }
        const char *first = nodes[order[0]], *second = nodes[order[1]], *other = nodes[order[2]];
        g_assert_cmpint(fleet_new(e.event, &e.config, &fleet), ==, 0);
        g_assert_cmpint(fetcher_new_with_transport(e.event, e.cache, &e.config, &scripted, &e.fetcher), ==, 0);
        fetcher_set_fleet(e.fetcher, fleet);
        g_assert_cmpint(fetcher_fill(e.fetcher, id, NULL, &e.fill), ==, 0);
        Fill *f = e.fill;
        g_autofree char *first_url = g_strdup_printf("%s/images/%s", first, id);
        g_autofree char *other_url = g_strdup_printf("%s/images/%s", other, id);
        g_autofree char *second_url = g_strdup_printf("%s/images/%s", second, id);
        g_autofree char *via_both = g_strdup_printf("%s %s", first, other);
        g_autofree char *path = g_strdup_printf("%s %s", second, first);

        g_assert_cmpstr(script.url, ==, first_url);
        g_assert_null(script.via);
        g_assert_cmpint(peer_headers(f, 307, 0, other, NULL), ==, INTAKE_SKIPPED);
        assert_step(f, STEP_REDIRECTED);
        end(f, 0);
        g_assert_cmpstr(script.url, ==, other_url);
        g_assert_cmpstr(script.via, ==, first);
        g_assert_cmpstr(fill_peer(f), ==, other);

        /* Pointed back at the first: not followed; back to the first, both in Via. */
        g_assert_cmpint(peer_headers(f, 307, 0, first, NULL), ==, INTAKE_ABORT);
        end(f, 0);
        assert_step(f, STEP_REQUESTING);
        g_assert_cmpstr(script.url, ==, first_url);
        g_assert_cmpstr(script.via, ==, via_both);

        /* Pointed outside the fleet: the first failed; the second, asked afresh. */
        g_assert_cmpint(peer_headers(f, 307, 0, "http://10.9.9.9:1", NULL), ==, INTAKE_ABORT);
        end(f, 0);
        g_assert_cmpstr(script.url, ==, second_url);
        g_assert_null(script.via);

        g_assert_cmpint(peer_headers(f, 200, 5000, NULL, path), ==, INTAKE_HOLD);
        env_run_until_step(&e, STEP_RECEIVING);
        g_assert_cmpstr(fill_peer_path(f), ==, path);
        g_assert_cmpint(body(f, data, 5000), ==, INTAKE_TAKEN);
        end(f, 0);
        env_run_until_step(&e, STEP_DONE);

        const FleetCounters *c = fetcher_fleet_counters(e.fetcher);
        g_assert_cmpuint(c->redirects_followed, ==, 1);
        g_assert_cmpuint(c->peer_failovers, ==, 2);
        g_assert_cmpuint(c->tree_depth, ==, 2);
        g_autofree char *filled = fleet_path_of(fleet, id);
        g_autofree char *expected = g_strdup_printf("%s %s", self, path);
        g_assert_cmpstr(filled, ==, expected);
        env_teardown(&e);
}

static void test_record_then_image(void) {
        Env e;
        env_setup(&e, UPSTREAM_GLANCE);
        Fill *f = env_start(&e, "rec", NULL);

        g_assert_cmpstr(script.url, ==, "http://origin.test/v2/images/rec");
        g_assert_cmpint(headers(f, 200, UINT64_MAX, NULL, NULL, NULL), ==, INTAKE_TAKEN);
        assert_step(f, STEP_READING_RECORD);
        const char *json = "{\"id\":\"rec\",\"status\":\"active\",\"size\":3}";
        g_assert_cmpint(body(f, json, strlen(json)), ==, INTAKE_TAKEN);
        end(f, 0);
        g_assert_cmpstr(script.url, ==, "http://origin.test/v2/images/rec/file");
        /* The record's size is the law: a body of another length is refused before a byte is written. */
        g_assert_cmpint(headers(f, 200, 4, NULL, NULL, NULL), ==, INTAKE_ABORT);
        end(f, 0);
        assert_step(f, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -EBADMSG);
        env_teardown(&e);
}

static void test_malformed_record(void) {
        Env e;
        env_setup(&e, UPSTREAM_GLANCE);
        Fill *f = env_start(&e, "bad", NULL);

        g_assert_cmpint(headers(f, 200, UINT64_MAX, NULL, NULL, NULL), ==, INTAKE_TAKEN);
        g_assert_cmpint(body(f, "{not json", 9), ==, INTAKE_TAKEN);
        end(f, 0);
        assert_step(f, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -EPROTO);
        g_assert_cmpuint(script.starts, ==, 1);
        env_teardown(&e);
}

/* ---- each failure in each state ---------------------------------------------------------------------- */

static void test_fail_requesting(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        Fill *f = env_start(&e, "timeout", NULL);
        end(f, -ETIMEDOUT);
        assert_step(f, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -ETIMEDOUT);
        g_assert_cmpstr(fill_error_message(f), ==, "scripted failure");
        g_assert_cmpint(headers(f, 404, 0, NULL, NULL, NULL), ==, INTAKE_ABORT); /* late news is refused */
        env_teardown(&e);
}

static void test_fail_not_found(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        Fill *f = env_start(&e, "missing", NULL);
        g_assert_cmpint(headers(f, 404, 0, NULL, NULL, NULL), ==, INTAKE_ABORT);
        end(f, -EPROTO); /* curl's write error after the abort: the first cause wins */
        g_assert_cmpint(fill_error(f), ==, -ENOENT);
        env_teardown(&e);
}

static void test_cancel_admitting(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        Fill *f = env_start(&e, "adm", NULL);
        g_assert_cmpint(headers(f, 200, 10, NULL, NULL, NULL), ==, INTAKE_HOLD);
        fill_cancel(f);
        assert_step(f, STEP_CANCELLED);
        g_assert_cmpuint(script.stops, ==, 1);
        /* The admission that was scheduled does not run. */
        g_assert_cmpint(sd_event_run(e.event, 0), >=, 0);
        g_assert_cmpint(test_file_exists(image_cache_path(e.cache), "incomplete/adm"), ==, 0);
        env_teardown(&e);
}

static void test_cancel_rehashing(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        size_t have = 4 * MIB;
        g_autofree uint8_t *data = make_data(have);
        make_partial(&e, "rh", data, have, "\"r\"");
        Fill *f = env_start(&e, "rh", NULL);
        g_autofree char *range = g_strdup_printf("bytes %zu-%zu/%zu", have, have + 9, have + 10);
        g_assert_cmpint(headers(f, 206, 10, "\"r\"", range, NULL), ==, INTAKE_HOLD);
        while (f->step == STEP_ADMITTING)
                g_assert_cmpint(sd_event_run(e.event, 100 * USEC_PER_MSEC), >=, 0);
        if (f->step == STEP_REHASHING) {
                fill_cancel(f);
                assert_step(f, STEP_FAILING); /* the worker holds the write: the end waits for it */
                g_assert_cmpint(fill_state(f), ==, FILL_RECEIVING);
        } else
                fill_cancel(f); /* the worker was quicker: cancelled while receiving */
        env_run_until_step(&e, STEP_CANCELLED);
        /* Interrupted, not bad: the partial file stays for the next resume. */
        g_assert_cmpint(test_file_exists(image_cache_path(e.cache), "incomplete/rh"), ==, 1);
        env_teardown(&e);
}

static void test_fail_receiving_keeps_partial(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        g_autofree uint8_t *data = make_data(9000);
        Fill *f = env_start(&e, "reset", NULL);
        env_admit(&e, 9000, "\"e\"");
        g_assert_cmpint(body(f, data, 4000), ==, INTAKE_TAKEN);
        end(f, -EPROTO);
        assert_step(f, STEP_FAILED);
        uint64_t size;
        g_autofree char *etag = NULL;
        g_assert_cmpint(image_cache_partial_info(e.cache, "reset", &size, &etag), ==, 0);
        g_assert_cmpuint(size, ==, 4000);
        g_assert_cmpstr(etag, ==, "\"e\"");
        env_teardown(&e);
}

static void test_cancel_paused(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        g_autofree uint8_t *data = make_data(2 * MIB);
        Fill *f = env_start(&e, "pause", NULL);
        env_admit(&e, UINT64_MAX, NULL);
        g_assert_cmpint(body(f, data, MIB), ==, INTAKE_TAKEN);
        g_assert_cmpint(body(f, data, MIB), ==, INTAKE_HOLD);
        assert_step(f, STEP_PAUSED_TURN);
        fill_cancel(f);
        assert_step(f, STEP_CANCELLED);
        g_assert_cmpuint(script.stops, ==, 1);
        /* The queued resume finds a final fill and leaves it alone. */
        unsigned resumes = script.resumes;
        g_assert_cmpint(sd_event_run(e.event, 0), >=, 0);
        g_assert_cmpuint(script.resumes, ==, resumes);
        env_teardown(&e);
}

static void test_fail_short_body(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        g_autofree uint8_t *data = make_data(100);
        Fill *f = env_start(&e, "short", NULL);
        env_admit(&e, 100, NULL);
        g_assert_cmpint(body(f, data, 60), ==, INTAKE_TAKEN);
        end(f, 0);
        assert_step(f, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -EBADMSG);
        g_assert_cmpint(test_file_exists(image_cache_path(e.cache), "invalid/short"), ==, 1);
        env_teardown(&e);
}

static void test_fail_long_body(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        g_autofree uint8_t *data = make_data(100);
        Fill *f = env_start(&e, "long", NULL);
        env_admit(&e, 50, NULL);
        g_assert_cmpint(body(f, data, 100), ==, INTAKE_ABORT);
        /* Aborted inside the callbacks: RECEIVING to readers until the transfer's end moves on. */
        assert_step(f, STEP_ABORTING_BODY);
        g_assert_cmpint(fill_state(f), ==, FILL_RECEIVING);
        g_assert_cmpint(body(f, data, 10), ==, INTAKE_ABORT); /* bytes curl had already */
        end(f, -EPROTO);
        assert_step(f, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -EBADMSG);
        env_teardown(&e);
}

static void test_fail_sealing(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        g_autofree uint8_t *data = make_data(100);
        Checksum wrong;
        sha256_of("other", 5, &wrong);
        Fill *f = env_start(&e, "sealbad", &wrong);
        env_admit(&e, 100, NULL);
        g_assert_cmpint(body(f, data, 100), ==, INTAKE_TAKEN);
        end(f, 0);
        env_run_until_step(&e, STEP_SEALING);
        fill_cancel(f); /* no effect: the image is complete */
        env_run_until_step(&e, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -EBADMSG);
        g_assert_nonnull(strstr(fill_error_message(f), "failed verification"));
        g_assert_cmpint(test_file_exists(image_cache_path(e.cache), "invalid/sealbad"), ==, 1);
        env_teardown(&e);
}

static void test_too_large_refused(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        e.config.max_size = (SizeLimit) { .bytes = 1000, .permille = UINT64_MAX };
        Fill *f = env_start(&e, "big", NULL);
        g_assert_cmpint(headers(f, 200, 5000, NULL, NULL, NULL), ==, INTAKE_HOLD);
        env_run_until_step(&e, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -EFBIG); /* nobody streams it: not fetched */
        g_assert_cmpuint(script.stops, ==, 1);
        env_teardown(&e);
}

/* ---- a wait that fails ends the fill ---------------------------------------------------------------- */

/* Auth=keystone against the fixture: the fill's first request carries Keystone's first token, and the
 * upstream refuses it, so the fill waits in REAUTHENTICATING for Keystone's next answer. */
static Fill *env_start_refused_by_upstream(Env *e, KeystoneFixture **ret_ks) {
        KeystoneFixture *ks;
        g_assert_cmpint(keystone_fixture_new(&ks), ==, 0);
        g_autofree char *url = keystone_fixture_url(ks);
        g_autofree char *creds = g_build_filename(e->dir, "keystone.conf", NULL);
        g_assert_true(g_file_set_contents(creds,
                                          "application_credential_id=" KEYSTONE_FIXTURE_APP_ID "\n"
                                          "application_credential_secret=" KEYSTONE_FIXTURE_APP_SECRET "\n",
                                          -1, NULL));
        g_assert_cmpint(chmod(creds, 0600), ==, 0);
        e->config.upstream_auth = UPSTREAM_AUTH_KEYSTONE;
        e->config.auth_url = g_strdup_printf("%s/v3", url);
        e->config.credentials_file = g_strdup(creds);

        Fill *f = env_start(e, "refused", NULL);
        env_run_until_step(e, STEP_REQUESTING); /* once Keystone gave a token */
        g_assert_nonnull(script.token);
        g_assert_cmpuint(e->fetcher->n_slots_used, ==, 1);
        g_assert_cmpint(headers(f, 401, 0, NULL, NULL, NULL), ==, INTAKE_SKIPPED);
        assert_step(f, STEP_REAUTHENTICATING);
        end(f, 0);
        assert_step(f, STEP_REAUTHENTICATING); /* Keystone is asked; the loop has not run yet */
        *ret_ks = ks;
        return f;
}

/* The reload of issue 34: Auth=keystone becomes a TokenFile= holding the very token refused. The fill
 * must fail with the refusal and give its slot back, not wait for a token that will never change. */
static void test_reauth_reload_same_token(void) {
        Env e;
        KeystoneFixture *ks;
        env_setup(&e, UPSTREAM_GENERIC);
        Fill *f = env_start_refused_by_upstream(&e, &ks);

        g_autofree char *token_file = g_build_filename(e.dir, "token", NULL);
        g_assert_true(g_file_set_contents(token_file, script.token, -1, NULL));
        e.config.upstream_auth = UPSTREAM_AUTH_TOKEN;
        e.config.token_file = g_strdup(token_file);
        g_assert_cmpint(fetcher_reconfigure(e.fetcher, &e.config), ==, 0);

        assert_step(f, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -EPROTO);
        g_assert_nonnull(strstr(fill_error_message(f), "refused access"));
        g_assert_cmpuint(e.fetcher->n_slots_used, ==, 0);
        g_assert_cmpuint(script.starts, ==, 1); /* not asked again with the refused token */
        env_teardown(&e);
        keystone_fixture_free(ks);
}

/* Keystone goes away while the fill waits for its next token: the fill fails, naming Keystone. */
static void test_reauth_keystone_gone(void) {
        Env e;
        KeystoneFixture *ks;
        env_setup(&e, UPSTREAM_GENERIC);
        Fill *f = env_start_refused_by_upstream(&e, &ks);

        keystone_fixture_free(ks);
        env_run_until_step(&e, STEP_FAILED);
        g_assert_nonnull(strstr(fill_error_message(f), "Keystone"));
        g_assert_cmpuint(e.fetcher->n_slots_used, ==, 0);
        env_teardown(&e);
}

/* Keystone answers: the fill asks again with the new token, once. */
static void test_reauth_new_token(void) {
        Env e;
        KeystoneFixture *ks;
        env_setup(&e, UPSTREAM_GENERIC);
        Fill *f = env_start_refused_by_upstream(&e, &ks);
        g_autofree char *refused = g_strdup(script.token);

        usec_t deadline = now_usec(CLOCK_MONOTONIC) + WAIT_USEC;
        while (script.starts < 2) {
                g_assert_cmpuint(now_usec(CLOCK_MONOTONIC), <, deadline);
                g_assert_cmpint(sd_event_run(e.event, 100 * USEC_PER_MSEC), >=, 0);
        }
        assert_step(f, STEP_REQUESTING);
        g_assert_cmpstr(script.token, !=, refused);
        /* A second refusal is final. */
        g_assert_cmpint(headers(f, 401, 0, NULL, NULL, NULL), ==, INTAKE_ABORT);
        assert_step(f, STEP_ABORTING);
        end(f, -EPROTO);
        assert_step(f, STEP_FAILED);
        g_assert_nonnull(strstr(fill_error_message(f), "refused access"));
        env_teardown(&e);
        keystone_fixture_free(ks);
}

/* A transfer that sends nothing for LowSpeedTimeoutSec= ends, before its headers or in its body; a hold
 * of the fill's own (its writer full) does not count. */
static void test_stall(void) {
        Env e;
        env_setup(&e, UPSTREAM_GENERIC);
        e.config.low_speed_timeout = 300 * USEC_PER_MSEC;
        g_autofree uint8_t *data = make_data(1000);
        usec_t start = now_usec(CLOCK_MONOTONIC);
        Fill *f = env_start(&e, "quiet", NULL);
        env_run_until_step(&e, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -ETIMEDOUT);
        g_assert_nonnull(strstr(fill_error_message(f), "LowSpeedTimeoutSec="));
        g_assert_cmpuint(now_usec(CLOCK_MONOTONIC) - start, >=, 300 * USEC_PER_MSEC);
        g_assert_cmpuint(script.stops, ==, 1);
        env_teardown(&e);

        env_setup(&e, UPSTREAM_GENERIC);
        e.config.low_speed_timeout = 300 * USEC_PER_MSEC;
        f = env_start(&e, "stops", NULL);
        env_admit(&e, 1000, NULL);
        g_assert_cmpint(body(f, data, 500), ==, INTAKE_TAKEN);
        start = now_usec(CLOCK_MONOTONIC);
        env_run_until_step(&e, STEP_FAILED);
        g_assert_cmpint(fill_error(f), ==, -ETIMEDOUT);
        g_assert_cmpuint(now_usec(CLOCK_MONOTONIC) - start, >=, 250 * USEC_PER_MSEC);
        env_teardown(&e);
}

int main(int argc, char **argv) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/fill-machine/whole-image", test_whole_image);
        g_test_add_func("/fill-machine/paused-for-writer", test_paused_for_writer);
        g_test_add_func("/fill-machine/resume-rehashes", test_resume_rehashes);
        g_test_add_func("/fill-machine/restart", test_restart);
        g_test_add_func("/fill-machine/redirect-drops-token", test_redirect_drops_token);
        g_test_add_func("/fill-machine/peer-redirect", test_peer_redirect);
        g_test_add_func("/fill-machine/record-then-image", test_record_then_image);
        g_test_add_func("/fill-machine/malformed-record", test_malformed_record);
        g_test_add_func("/fill-machine/fail/requesting", test_fail_requesting);
        g_test_add_func("/fill-machine/fail/not-found", test_fail_not_found);
        g_test_add_func("/fill-machine/fail/cancel-admitting", test_cancel_admitting);
        g_test_add_func("/fill-machine/fail/cancel-rehashing", test_cancel_rehashing);
        g_test_add_func("/fill-machine/fail/receiving-keeps-partial", test_fail_receiving_keeps_partial);
        g_test_add_func("/fill-machine/fail/cancel-paused", test_cancel_paused);
        g_test_add_func("/fill-machine/fail/short-body", test_fail_short_body);
        g_test_add_func("/fill-machine/fail/long-body", test_fail_long_body);
        g_test_add_func("/fill-machine/fail/sealing", test_fail_sealing);
        g_test_add_func("/fill-machine/fail/too-large", test_too_large_refused);
        g_test_add_func("/fill-machine/fail/stall", test_stall);
        g_test_add_func("/fill-machine/wait-fails/reauth-reload-same-token", test_reauth_reload_same_token);
        g_test_add_func("/fill-machine/wait-fails/reauth-keystone-gone", test_reauth_keystone_gone);
        g_test_add_func("/fill-machine/wait-ends/reauth-new-token", test_reauth_new_token);
        int r = g_test_run();
        g_free(script.url);
        g_free(script.token);
        g_free(script.if_range);
        g_free(script.held);
        return r;
}
