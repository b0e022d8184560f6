/* SPDX-License-Identifier: MIT */
/* The fleet tier end to end: several imgcached on loopback, each with its own bus, cache directory and
 * socket-activated listener, sharing one origin (the upstream fixture, which counts what it is asked).
 * Clients are real curl processes. Owners are computed with the same rendezvous hashing the daemons use
 * (fleet_rank), so each test knows which node must have gone to the origin. */

#include <glib.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fleet.h"
#include "test-bus.h"
#include "test-util.h"
#include "upstream-fixture.h"

#define MAX_NODES 8
#define IMAGE_SIZE (6 * 1024 * 1024 + 7)
#define PEER_TOKEN "fleet-secret-1"

typedef struct Node {
        TestBus *bus;
        int sock;
        uint16_t port;
        char *url;
} Node;

typedef struct Fixture {
        UpstreamFixture *fx;
        UpstreamFixture *peer;  /* a peer that is not an imgcached, or NULL */
        UpstreamFixture *fakes[3]; /* more of them (test_fanout_loop_guard) */
        Node nodes[MAX_NODES];
        size_t n;
        uint8_t *data;
        char *dir;
} Fixture;

static void fixture_setup(Fixture *f, gconstpointer user) {
        *f = (Fixture) {};
        g_assert_cmpint(upstream_fixture_new(0, &f->fx), ==, 0);
        f->data = test_random_data(IMAGE_SIZE, 16);
        f->dir = test_tmpdir_new();
}

static void fixture_teardown(Fixture *f, gconstpointer user) {
        for (size_t i = 0; i < f->n; i++) {
                test_bus_free(f->nodes[i].bus); /* stops its daemon by pid */
                close(f->nodes[i].sock);
                g_free(f->nodes[i].url);
        }
        upstream_fixture_free(f->fx);
        upstream_fixture_free(f->peer);
        for (size_t i = 0; i < G_N_ELEMENTS(f->fakes); i++)
                upstream_fixture_free(f->fakes[i]);
        test_tmpdir_remove(f->dir);
        g_free(f->dir);
        g_free(f->data);
}

static void add_image(Fixture *f, const char *id, const UpstreamImageOptions *o) {
        g_autofree char *path = g_strdup_printf("/images/%s", id);
        g_assert_cmpint(upstream_fixture_add_image(f->fx, path, f->data, IMAGE_SIZE, o), ==, 0);
}

static unsigned origin_requests(Fixture *f, const char *id) {
        g_autofree char *path = g_strdup_printf("/images/%s", id);
        return upstream_fixture_requests(f->fx, path);
}

/* n nodes listing each other and more_peers (NULL: none); node i's peer secret is tokens[i] (NULL:
 * PEER_TOKEN); upstream_extra goes into every node's [Upstream], fleet_extra into its [Fleet] (NULL:
 * nothing). */
static void start_fleet_full(Fixture *f, size_t n, const char *const *tokens, const char *more_peers,
                             const char *upstream_extra, const char *fleet_extra) {
        g_autoptr(GString) peers = g_string_new(NULL);
        g_autofree char *origin = upstream_fixture_url(f->fx, "/images/{id}");
        g_autofree char *mgmt = g_build_filename(f->dir, "mgmt-token", NULL);

        g_assert_true(g_file_set_contents(mgmt, "mgmt-1\n", -1, NULL));
        f->n = n;
        for (size_t i = 0; i < n; i++) {
                Node *node = &f->nodes[i];
                node->sock = test_listen_socket(&node->port);
                node->url = g_strdup_printf("http://127.0.0.1:%u", node->port);
                g_string_append_printf(peers, "%s%s", i ? " " : "", node->url);
        }
        if (more_peers)
                g_string_append_printf(peers, " %s", more_peers);
        for (size_t i = 0; i < n; i++) {
                Node *node = &f->nodes[i];
                g_autofree char *token_file = g_strdup_printf("%s/peer-token-%zu", f->dir, i);
                g_autofree char *token = g_strdup_printf("%s\n", tokens && tokens[i] ? tokens[i] : PEER_TOKEN);
                g_assert_true(g_file_set_contents(token_file, token, -1, NULL));
                g_assert_cmpint(chmod(token_file, 0600), ==, 0);

                node->bus = test_bus_new();
                g_autofree char *config = g_strdup_printf(
                                "[Upstream]\nKind=generic\nURL=%s\n%s"
                                "[HTTP]\nManagementAPI=yes\nManagementTokenFile=%s\n"
                                "[Daemon]\nExitOnIdleSec=infinity\n"
                                "[Fleet]\nPeers=%s\nSelf=%s\nPeerTokenFile=%s\nPeerTimeoutSec=5s\n%s",
                                origin, strempty(upstream_extra), mgmt, peers->str, node->url, token_file,
                                strempty(fleet_extra));
                test_bus_write_config(node->bus, config);
                g_assert_true(test_bus_start_daemon_listening(node->bus, node->sock, NULL));
        }
}

static void start_fleet_with(Fixture *f, size_t n, const char *const *tokens, const char *more_peers,
                             const char *upstream_extra) {
        start_fleet_full(f, n, tokens, more_peers, upstream_extra, NULL);
}

static void start_fleet(Fixture *f, size_t n, const char *const *tokens) {
        start_fleet_with(f, n, tokens, NULL, NULL);
}

/* Node indices for id, best first, as every node ranks them. */
static void rank(Fixture *f, const char *id, size_t *order) {
        char *urls[MAX_NODES];
        for (size_t i = 0; i < f->n; i++)
                urls[i] = f->nodes[i].url;
        fleet_rank(urls, f->n, id, order);
}

/* ---- clients ---- */

typedef struct Client {
        GSubprocess *p;
        gboolean exited;
        int status;
        char *out;
} Client;

static void on_client_exit(GObject *source, GAsyncResult *res, gpointer userdata) {
        Client *c = userdata;
        (void) g_subprocess_wait_finish(G_SUBPROCESS(source), res, NULL);
        c->status = g_subprocess_get_exit_status(G_SUBPROCESS(source));
        c->exited = TRUE;
}

/* curl -sS -o <out> [up to two extra headers] url, in the background. */
static void client_start_with(Fixture *f, Client *c, const char *name, const char *url, const char *h1,
                              const char *h2) {
        g_autoptr(GError) error = NULL;
        *c = (Client) { .out = g_build_filename(f->dir, name, NULL) };
        const char *argv[] = { "curl", "-sS", "--max-time", "60", "-o", c->out, url, h1 ? "-H" : NULL, h1,
                               h2 ? "-H" : NULL, h2, NULL };
        c->p = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDOUT_SILENCE, &error);
        g_assert_no_error(error);
        g_subprocess_wait_async(c->p, NULL, on_client_exit, c);
}

static void client_start(Fixture *f, Client *c, const char *name, const char *url, const char *header) {
        client_start_with(f, c, name, url, header, NULL);
}

static void client_wait(Client *c) {
        if (!test_bus_wait_flag(&c->exited, 90000)) {
                g_subprocess_force_exit(c->p);
                (void) test_bus_wait_flag(&c->exited, TEST_BUS_TIMEOUT_MS);
                g_assert_not_reached();
        }
        g_clear_object(&c->p);
}

static void client_done(Client *c) {
        g_free(c->out);
}

static void assert_file_is_image(Fixture *f, const char *path, uint64_t offset, uint64_t length) {
        g_autofree char *data = NULL;
        gsize n;
        g_assert_true(g_file_get_contents(path, &data, &n, NULL));
        g_assert_cmpuint(n, ==, length);
        g_assert_true(memcmp(data, f->data + offset, length) == 0);
}

/* c must end with the whole image. */
static void client_wait_image(Fixture *f, Client *c) {
        client_wait(c);
        g_assert_cmpint(c->status, ==, 0);
        assert_file_is_image(f, c->out, 0, IMAGE_SIZE);
}

/* SIGKILL, as a crash: nothing of the daemon's cleanup runs. test_bus_free() reaps it. */
static void kill_node(Fixture *f, size_t node) {
        GPid pid = test_bus_name_owner_pid(f->nodes[node].bus);
        g_assert_cmpint(pid, >, 0);
        g_assert_cmpint(kill(pid, SIGKILL), ==, 0);
}

static void assert_cached(Fixture *f, size_t node, const char *id) {
        g_autofree char *path = g_build_filename(test_bus_cache_dir(f->nodes[node].bus), id, NULL);
        assert_file_is_image(f, path, 0, IMAGE_SIZE);
}

static void assert_not_cached(Fixture *f, size_t node, const char *id) {
        g_assert_false(test_file_exists(test_bus_cache_dir(f->nodes[node].bus), id));
}

/* curl's status code and body for url with up to two headers. */
static char *http_get(Fixture *f, const char *url, const char *h1, const char *h2, char **ret_body) {
        g_autofree char *out = g_build_filename(f->dir, "get.out", NULL);
        g_autoptr(GError) error = NULL;
        g_autofree char *status = NULL;
        const char *argv[] = { "curl", "-sS", "--max-time", "30", "-o", out, "-w", "%{http_code}", url,
                               h1 ? "-H" : NULL, h1, h2 ? "-H" : NULL, h2, NULL };
        g_autoptr(GSubprocess) p = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDOUT_PIPE, &error);
        g_assert_no_error(error);
        g_assert_true(g_subprocess_communicate_utf8(p, NULL, NULL, &status, NULL, &error));
        g_assert_no_error(error);
        if (ret_body)
                g_assert_true(g_file_get_contents(out, ret_body, NULL, NULL));
        return g_steal_pointer(&status);
}

static uint64_t metric(Fixture *f, size_t node, const char *name) {
        g_autofree char *url = g_strdup_printf("%s/metrics", f->nodes[node].url);
        g_autofree char *body = NULL, *status = http_get(f, url, NULL, NULL, &body);
        g_autofree char *needle = g_strdup_printf("\n%s ", name);
        const char *p = strstr(body, needle);

        g_assert_cmpstr(status, ==, "200");
        g_assert_nonnull(p);
        return g_ascii_strtoull(p + strlen(needle), NULL, 10);
}

/* Runs the main context until cond(f) or the deadline; the condition is looked at every 10 ms. */
typedef gboolean (*Condition)(Fixture *f, const void *arg);
typedef struct Wait {
        Fixture *f;
        Condition cond;
        const void *arg;
        gboolean met;
} Wait;

static gboolean on_poll(gpointer userdata) {
        Wait *w = userdata;
        w->met = w->cond(w->f, w->arg);
        return w->met ? G_SOURCE_REMOVE : G_SOURCE_CONTINUE;
}

static gboolean wait_until(Fixture *f, Condition cond, const void *arg) {
        Wait w = { f, cond, arg, cond(f, arg) };
        if (w.met)
                return TRUE;
        guint id = g_timeout_add(10, on_poll, &w);
        gboolean ok = test_bus_wait_flag(&w.met, 30000);
        if (!ok)
                g_source_remove(id);
        return ok;
}

/* imgcachectl --user ARGS... against node's daemon; its stdout. */
static char *ctl(Fixture *f, size_t node, const char *a1, const char *a2) {
        g_autoptr(GSubprocessLauncher) l = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE);
        g_autoptr(GError) error = NULL;
        g_autofree char *out = NULL;
        const char *argv[] = { g_getenv("IMGCACHECTL") ?: "imgcachectl", "--user", "--no-pager", a1, a2, NULL };

        g_subprocess_launcher_setenv(l, "DBUS_SESSION_BUS_ADDRESS", test_bus_address(f->nodes[node].bus), TRUE);
        g_autoptr(GSubprocess) p = g_subprocess_launcher_spawnv(l, argv, &error);
        g_assert_no_error(error);
        g_assert_true(g_subprocess_communicate_utf8(p, NULL, NULL, &out, NULL, &error));
        g_assert_no_error(error);
        g_assert_true(g_subprocess_get_if_exited(p));
        g_assert_cmpint(g_subprocess_get_exit_status(p), ==, 0);
        return g_steal_pointer(&out);
}

/* ---- the tests ---- */

/* Every node asked for the same image at once: one origin GET, a byte-exact copy everywhere, only the
 * owner's from the origin; a Range through a non-owner; /v2/cache/nodes names all three. */
static void test_one_origin_fetch(Fixture *f, gconstpointer user) {
        static const char id[] = "fleet-one";
        UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256, .rate = 8 * 1024 * 1024 };
        Client c[MAX_NODES + 1];
        size_t order[MAX_NODES];

        add_image(f, id, &o);
        start_fleet(f, 3, NULL);
        rank(f, id, order);

        for (size_t i = 0; i < 3; i++) {
                g_autofree char *url = g_strdup_printf("%s/images/%s", f->nodes[i].url, id);
                g_autofree char *name = g_strdup_printf("out-%zu", i);
                client_start(f, &c[i], name, url, NULL);
        }
        g_autofree char *range_url = g_strdup_printf("%s/images/%s", f->nodes[order[2]].url, id);
        client_start(f, &c[3], "out-range", range_url, "Range: bytes=1000000-1999999");
        for (size_t i = 0; i < 4; i++) {
                client_wait(&c[i]);
                g_assert_cmpint(c[i].status, ==, 0);
        }
        for (size_t i = 0; i < 3; i++)
                assert_file_is_image(f, c[i].out, 0, IMAGE_SIZE);
        assert_file_is_image(f, c[3].out, 1000000, 1000000);

        g_assert_cmpuint(origin_requests(f, id), ==, 1);
        for (size_t i = 0; i < 3; i++)
                assert_cached(f, i, id);
        size_t owner = order[0];
        g_assert_cmpuint(metric(f, owner, "imgcache_fleet_fetched_from_origin_bytes_total"), ==, IMAGE_SIZE);
        g_assert_cmpuint(metric(f, owner, "imgcache_fleet_served_to_peers_bytes_total"), ==, 2 * (uint64_t) IMAGE_SIZE);
        for (size_t k = 1; k < 3; k++) {
                g_assert_cmpuint(metric(f, order[k], "imgcache_fleet_fetched_from_origin_bytes_total"), ==, 0);
                g_assert_cmpuint(metric(f, order[k], "imgcache_fleet_fetched_from_peers_bytes_total"), ==, IMAGE_SIZE);
                g_assert_cmpuint(metric(f, order[k], "imgcache_fleet_origin_fetches_saved_total"), ==, 1);
        }

        /* Who holds it, asked of any node; a HEAD with only-if-cached fetches nothing. */
        g_autofree char *nodes_url = g_strdup_printf("%s/v2/cache/nodes/%s", f->nodes[order[1]].url, id);
        g_autofree char *body = NULL, *status = http_get(f, nodes_url, "X-Auth-Token: mgmt-1", NULL, &body);
        g_assert_cmpstr(status, ==, "200");
        for (size_t i = 0; i < 3; i++) {
                g_autofree char *quoted = g_strdup_printf("\"%s\"", f->nodes[i].url);
                g_assert_nonnull(strstr(body, quoted));
        }
        g_autofree char *none_url = g_strdup_printf("%s/v2/cache/nodes/fleet-nowhere", f->nodes[0].url);
        g_autofree char *none = NULL, *none_status = http_get(f, none_url, "X-Auth-Token: mgmt-1", NULL, &none);
        g_assert_cmpstr(none_status, ==, "200");
        g_assert_nonnull(strstr(none, "\"cached_nodes\":[]"));
        g_autofree char *refused = http_get(f, nodes_url, NULL, NULL, NULL);
        g_assert_cmpstr(refused, ==, "401");
        g_assert_cmpuint(upstream_fixture_requests(f->fx, "/images/fleet-nowhere"), ==, 0);

        /* The same through D-Bus and the command line. */
        g_autofree char *holders = ctl(f, order[2], "fleet", id);
        g_autofree char *members = ctl(f, order[2], "fleet", NULL);
        for (size_t i = 0; i < 3; i++) {
                g_assert_nonnull(strstr(holders, f->nodes[i].url));
                g_assert_nonnull(strstr(members, f->nodes[i].url));
        }
        g_assert_nonnull(strstr(members, "3 nodes"));
        for (size_t i = 0; i < 4; i++)
                client_done(&c[i]);
}

static gboolean partial_at_least(Fixture *f, const void *arg) {
        const size_t *node = arg;
        g_autofree char *path = g_build_filename(test_bus_cache_dir(f->nodes[*node].bus), "incomplete", "fleet-killed", NULL);
        struct stat st;
        return upstream_fixture_stalled(f->fx) == 1 && stat(path, &st) == 0 && st.st_size >= 512 * 1024;
}

/* The owner dies mid-stream: the node behind it resumes from the origin with a Range, its client reads
 * on to a byte-exact end, and the dead owner published nothing. */
static void test_owner_killed(Fixture *f, gconstpointer user) {
        static const char id[] = "fleet-killed";
        UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256, .stall_after = 1024 * 1024, .fail_first = 1 };
        size_t order[MAX_NODES];
        Client c;

        add_image(f, id, &o);
        start_fleet(f, 3, NULL);
        rank(f, id, order);
        size_t owner = order[0], second = order[1];

        /* The second-ranked node asks the owner, then the origin. */
        g_autofree char *url = g_strdup_printf("%s/images/%s", f->nodes[second].url, id);
        client_start(f, &c, "out", url, NULL);
        g_assert_true(wait_until(f, partial_at_least, &second));

        kill_node(f, owner);
        client_wait_image(f, &c);
        assert_cached(f, second, id);
        assert_not_cached(f, owner, id);

        g_auto(GStrv) ranges = upstream_fixture_ranges(f->fx, "/images/fleet-killed");
        g_assert_cmpuint(g_strv_length(ranges), ==, 2);
        g_assert_cmpstr(ranges[0], ==, "");
        g_assert_true(g_str_has_prefix(ranges[1], "bytes="));
        g_assert_cmpuint(g_ascii_strtoull(ranges[1] + 6, NULL, 10), >, 0);
        g_assert_cmpuint(metric(f, second, "imgcache_fleet_peer_failovers_total"), ==, 1);
        client_done(&c);
}

/* An image nowhere, asked of every node at once: one origin request at most, and a bounded number of
 * requests between the nodes. */
static void test_loop_no_storm(Fixture *f, gconstpointer user) {
        static const char id[] = "fleet-absent";
        Client c[3];
        uint64_t requests = 0;

        start_fleet(f, 3, NULL);
        for (size_t i = 0; i < 3; i++) {
                g_autofree char *url = g_strdup_printf("%s/images/%s", f->nodes[i].url, id);
                g_autofree char *name = g_strdup_printf("out-%zu", i);
                client_start(f, &c[i], name, url, NULL);
        }
        for (size_t i = 0; i < 3; i++) {
                client_wait(&c[i]);
                g_assert_cmpint(c[i].status, ==, 0);
        }
        g_assert_cmpuint(origin_requests(f, id), <=, 1);
        for (size_t i = 0; i < 3; i++) {
                assert_not_cached(f, i, id);
                requests += metric(f, i, "imgcache_http_requests_total");
        }
        /* 3 clients, each node asking at most the Replicas=2 ranked above it, and 0..2 /metrics reads
         * already counted: a storm would be far more. */
        g_test_message("requests across the fleet: %" PRIu64, requests);
        g_assert_cmpuint(requests, <=, 3 + 3 + 3);
        for (size_t i = 0; i < 3; i++)
                client_done(&c[i]);
}

/* Only the peer secret opens the peer door: without it, or with another, 401 and nothing fetched. A node
 * with the wrong secret is refused by its peers and goes to the origin itself. */
static void test_peer_token(Fixture *f, gconstpointer user) {
        const char *tokens[] = { NULL, NULL, "not-the-secret" };
        size_t order[MAX_NODES], bad = 2;
        char id[32];

        start_fleet(f, 3, tokens);
        /* An image the node with the wrong secret does not own, so that it has someone to ask. */
        for (unsigned i = 0;; i++) {
                g_snprintf(id, sizeof(id), "fleet-token-%u", i);
                rank(f, id, order);
                if (order[0] != bad)
                        break;
        }
        add_image(f, id, NULL);
        g_autofree char *url = g_strdup_printf("%s/images/%s", f->nodes[order[0]].url, id);
        g_autofree char *guard = g_strdup_printf("%s: %s", FLEET_HEADER_PEER, f->nodes[order[1]].url);

        g_autofree char *missing = http_get(f, url, guard, NULL, NULL);
        g_assert_cmpstr(missing, ==, "401");
        g_autofree char *wrong = http_get(f, url, guard, FLEET_HEADER_TOKEN ": nope", NULL);
        g_assert_cmpstr(wrong, ==, "401");
        g_assert_cmpuint(origin_requests(f, id), ==, 0);
        assert_not_cached(f, order[0], id);

        /* The node with the wrong secret is refused by the owner and asks the origin itself. */
        g_autofree char *bad_url = g_strdup_printf("%s/images/%s", f->nodes[bad].url, id);
        g_autofree char *body = NULL, *status = http_get(f, bad_url, NULL, NULL, &body);
        g_assert_cmpstr(status, ==, "200");
        g_assert_cmpuint(origin_requests(f, id), ==, 1);
        assert_cached(f, bad, id);
        assert_not_cached(f, order[0], id);
        g_assert_cmpuint(metric(f, bad, "imgcache_fleet_fetched_from_origin_bytes_total"), ==, IMAGE_SIZE);
        g_assert_cmpuint(metric(f, bad, "imgcache_fleet_peer_failovers_total"), >=, 1);

        /* With the secret, the owner serves. */
        g_autofree char *good = http_get(f, url, guard, FLEET_HEADER_TOKEN ": " PEER_TOKEN, NULL);
        g_assert_cmpstr(good, ==, "200");
}

/* A HEAD of an image nobody has fetches it nowhere, and says what the origin says. */
static void test_head_never_fills(Fixture *f, gconstpointer user) {
        static const char id[] = "fleet-head";
        size_t order[MAX_NODES];

        add_image(f, id, NULL);
        start_fleet(f, 3, NULL);
        rank(f, id, order);
        g_autofree char *url = g_strdup_printf("%s/images/%s", f->nodes[order[2]].url, id);
        g_autoptr(GError) error = NULL;
        g_autofree char *status = NULL;
        const char *argv[] = { "curl", "-sS", "-I", "-o", "/dev/null", "-w", "%{http_code}", url, NULL };
        g_autoptr(GSubprocess) p = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDOUT_PIPE, &error);
        g_assert_no_error(error);
        g_assert_true(g_subprocess_communicate_utf8(p, NULL, NULL, &status, NULL, &error));
        g_assert_cmpstr(status, ==, "200");
        for (size_t i = 0; i < 3; i++) {
                g_assert_cmpuint(metric(f, i, "imgcache_transfers_started_total"), ==, 0);
                assert_not_cached(f, i, id);
        }
}

/* A [Fleet] without Self= or PeerTokenFile= refuses to start, naming the key. */
static void test_config_refused(Fixture *f, gconstpointer user) {
        static const struct {
                const char *fleet, *named;
        } cases[] = {
                { "Peers=http://127.0.0.1:1 http://127.0.0.1:2\nPeerTokenFile=/dev/null\n", "Self=" },
                { "Peers=http://127.0.0.1:1 http://127.0.0.1:2\nSelf=http://127.0.0.1:1\n", "PeerTokenFile=" },
        };
        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autoptr(TestBus) bus = test_bus_new();
                g_autofree char *config = g_strdup_printf("[Daemon]\nExitOnIdleSec=infinity\n[Fleet]\n%s", cases[i].fleet);
                test_bus_write_config(bus, config);
                g_assert_false(test_bus_start_daemon(bus, NULL));
                g_assert_nonnull(strstr(test_bus_daemon_stderr(bus), cases[i].named));
        }
}

typedef struct CtlContains {
        size_t node;
        const char *needle;
} CtlContains;

static gboolean ctl_fleet_contains(Fixture *f, const void *arg) {
        const CtlContains *c = arg;
        g_autofree char *out = ctl(f, c->node, "fleet", NULL);
        return strstr(out, c->needle) != NULL;
}

/* A host name in Peers= stands for its addresses, resolved in the background. */
static void test_host_names(Fixture *f, gconstpointer user) {
        f->n = 1;
        Node *node = &f->nodes[0];
        uint16_t other_port;
        int other = test_listen_socket(&other_port);
        g_autofree char *token_file = g_build_filename(f->dir, "peer-token", NULL);
        g_autofree char *origin = upstream_fixture_url(f->fx, "/images/{id}");

        g_assert_true(g_file_set_contents(token_file, PEER_TOKEN "\n", -1, NULL));
        node->sock = test_listen_socket(&node->port);
        node->url = g_strdup_printf("http://127.0.0.1:%u", node->port);
        node->bus = test_bus_new();
        g_autofree char *config = g_strdup_printf("[Upstream]\nURL=%s\n[Daemon]\nExitOnIdleSec=infinity\n"
                                                  "[Fleet]\nPeers=http://localhost:%u\nSelf=%s\nPeerTokenFile=%s\n",
                                                  origin, other_port, node->url, token_file);
        test_bus_write_config(node->bus, config);
        g_assert_true(test_bus_start_daemon_listening(node->bus, node->sock, NULL));

        g_autofree char *resolved = g_strdup_printf("http://127.0.0.1:%u", other_port);
        CtlContains c = { 0, resolved };
        g_assert_true(wait_until(f, ctl_fleet_contains, &c));
        close(other);
}

/* ---- a peer behind TLS ---- */

/* Runs a tool to its end (it reads nothing); it must succeed. */
static void run_tool(const char *const *argv) {
        g_autoptr(GError) error = NULL;
        g_autofree char *err = NULL;
        g_autoptr(GSubprocess) p = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_STDOUT_SILENCE |
                                                     G_SUBPROCESS_FLAGS_STDERR_PIPE, &error);

        g_assert_no_error(error);
        g_assert_true(g_subprocess_communicate_utf8(p, NULL, NULL, NULL, &err, &error));
        g_assert_no_error(error);
        if (!g_subprocess_get_if_exited(p) || g_subprocess_get_exit_status(p) != 0)
                g_error("%s %s failed: %s", argv[0], argv[1], err);
}

/* A private CA (its certificate's path returned) and a certificate it signed for IP:127.0.0.1. */
static char *make_private_ca(Fixture *f, char **ret_cert, char **ret_key) {
        g_autofree char *ca_key = g_build_filename(f->dir, "ca.key", NULL);
        g_autofree char *leaf_key = g_build_filename(f->dir, "leaf.key", NULL);
        g_autofree char *leaf_csr = g_build_filename(f->dir, "leaf.csr", NULL);
        g_autofree char *leaf_ext = g_build_filename(f->dir, "leaf.ext", NULL);
        g_autofree char *leaf = g_build_filename(f->dir, "leaf.pem", NULL);
        char *ca = g_build_filename(f->dir, "ca.pem", NULL);

        /* EC keys: quick to make. */
        const char *make_ca[] = { "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                  "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca_key, "-out", ca,
                                  "-days", "2", "-subj", "/CN=imgcache test CA",
                                  "-addext", "basicConstraints=critical,CA:TRUE",
                                  "-addext", "keyUsage=critical,keyCertSign", NULL };
        const char *make_csr[] = { "openssl", "req", "-newkey", "ec", "-pkeyopt",
                                   "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", leaf_key,
                                   "-out", leaf_csr, "-subj", "/CN=127.0.0.1", NULL };
        const char *sign[] = { "openssl", "x509", "-req", "-in", leaf_csr, "-CA", ca, "-CAkey", ca_key,
                               "-set_serial", "2", "-days", "2", "-extfile", leaf_ext, "-out", leaf, NULL };
        run_tool(make_ca);
        run_tool(make_csr);
        static const char ext[] = "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                  "extendedKeyUsage=serverAuth\n";
        g_assert_true(g_file_set_contents(leaf_ext, ext, -1, NULL));
        run_tool(sign);
        g_assert_true(g_file_get_contents(leaf, ret_cert, NULL, NULL));
        g_assert_true(g_file_get_contents(leaf_key, ret_key, NULL, NULL));
        return ca;
}

/* CAFile= names a private CA and a peer serves HTTPS with a certificate it signed: the holders query
 * (/v2/cache/nodes) and a fill both reach it, as every request is made with the same settings. The peer
 * is the upstream fixture over TLS, which answers /images/<id> as a node holding the image does; the
 * origin has no copy, so the image can only come from the peer. */
static void test_tls_peer(Fixture *f, gconstpointer user) {
        g_autofree char *openssl = g_find_program_in_path("openssl");
        g_autofree char *cert = NULL, *key = NULL;
        size_t order[2];
        char id[32];
        Client c;

        if (!openssl) {
                g_test_skip("openssl is not installed (tools/install-deps installs it)");
                return;
        }
        g_autofree char *ca = make_private_ca(f, &cert, &key);
        g_assert_cmpint(upstream_fixture_new_tls(0, cert, key, &f->peer), ==, 0);
        g_autofree char *peer = upstream_fixture_url(f->peer, NULL);
        g_autofree char *ca_setting = g_strdup_printf("CAFile=%s\n", ca);
        start_fleet_with(f, 1, NULL, peer, ca_setting);

        /* An image the peer ranks first for, so that the node's fill asks it. */
        char *urls[] = { peer, f->nodes[0].url };
        for (unsigned i = 0;; i++) {
                g_snprintf(id, sizeof(id), "fleet-tls-%u", i);
                fleet_rank(urls, 2, id, order);
                if (order[0] == 0)
                        break;
        }
        g_autofree char *path = g_strdup_printf("/images/%s", id);
        g_assert_cmpint(upstream_fixture_add_image(f->peer, path, f->data, IMAGE_SIZE, NULL), ==, 0);

        /* Who holds it: the peer, asked over HTTPS. */
        g_autofree char *nodes_url = g_strdup_printf("%s/v2/cache/nodes/%s", f->nodes[0].url, id);
        g_autofree char *body = NULL, *status = http_get(f, nodes_url, "X-Auth-Token: mgmt-1", NULL, &body);
        g_autofree char *quoted = g_strdup_printf("\"%s\"", peer);
        g_assert_cmpstr(status, ==, "200");
        g_test_message("holders: %s", body);
        g_assert_nonnull(strstr(body, quoted));
        g_assert_cmpuint(upstream_fixture_requests(f->peer, path), ==, 1);

        /* A fill from it. */
        g_autofree char *url = g_strdup_printf("%s/images/%s", f->nodes[0].url, id);
        client_start(f, &c, "out", url, NULL);
        client_wait(&c);
        g_assert_cmpint(c.status, ==, 0);
        assert_file_is_image(f, c.out, 0, IMAGE_SIZE);
        assert_cached(f, 0, id);
        g_assert_cmpuint(origin_requests(f, id), ==, 0);
        g_assert_cmpuint(upstream_fixture_requests(f->peer, path), ==, 2);
        g_assert_cmpuint(metric(f, 0, "imgcache_fleet_fetched_from_peers_bytes_total"), ==, IMAGE_SIZE);
        client_done(&c);
}

/* ---- the fan-out (FanOut=) ---- */

typedef struct MetricAtLeast {
        size_t node;
        const char *name;
        uint64_t value;
} MetricAtLeast;

static gboolean metric_at_least(Fixture *f, const void *arg) {
        const MetricAtLeast *m = arg;
        return metric(f, m->node, m->name) >= m->value;
}

static void wait_metric(Fixture *f, size_t node, const char *name, uint64_t value) {
        MetricAtLeast m = { node, name, value };
        g_assert_true(wait_until(f, metric_at_least, &m));
}

static void assert_no_partial(Fixture *f, size_t node, const char *id) {
        g_autofree char *dir = g_build_filename(test_bus_cache_dir(f->nodes[node].bus), "incomplete", NULL);
        g_assert_false(test_file_exists(dir, id));
}

/* Six of eight nodes ask for one image at once, FanOut=2: one origin GET, no node serves more than two
 * peer streams of it at once (its own count), every asking node holds a byte-exact copy, and the two that
 * nobody asked hold none: the nodes that ask form a tree among themselves, at least two levels deep. */
static void test_fanout_tree(Fixture *f, gconstpointer user) {
        static const char id[] = "fleet-tree";
        /* Slow enough that every request arrives while the first streams run. */
        UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256, .rate = 4 * 1024 * 1024 };
        size_t order[MAX_NODES], n = 8, n_asking = 6;
        uint64_t redirects = 0, followed = 0, depth = 0;
        Client c[MAX_NODES];

        add_image(f, id, &o);
        start_fleet_full(f, n, NULL, NULL, NULL, "FanOut=2\n");
        rank(f, id, order);

        /* The owner and rank 1 among them: the nodes every asker may ask first (Replicas=2). */
        for (size_t r = 0; r < n_asking; r++) {
                g_autofree char *url = g_strdup_printf("%s/images/%s", f->nodes[order[r]].url, id);
                g_autofree char *name = g_strdup_printf("out-%zu", r);
                client_start(f, &c[r], name, url, NULL);
        }
        for (size_t r = 0; r < n_asking; r++) {
                client_wait_image(f, &c[r]);
                assert_cached(f, order[r], id);
                client_done(&c[r]);
        }
        for (size_t r = n_asking; r < n; r++) {
                assert_not_cached(f, order[r], id);
                assert_no_partial(f, order[r], id);
        }
        g_assert_cmpuint(origin_requests(f, id), ==, 1);
        for (size_t i = 0; i < n; i++) {
                g_assert_cmpuint(metric(f, i, "imgcache_fleet_peer_streams_peak"), <=, 2);
                redirects += metric(f, i, "imgcache_fleet_redirects_given_total");
                followed += metric(f, i, "imgcache_fleet_redirects_followed_total");
                depth = MAX(depth, metric(f, i, "imgcache_fleet_tree_depth"));
        }
        g_test_message("redirects given %" PRIu64 ", followed %" PRIu64 ", depth %" PRIu64, redirects, followed, depth);
        /* Five peers asked the owner, which serves two. */
        g_assert_cmpuint(redirects, >=, 3);
        g_assert_cmpuint(followed, ==, redirects);
        g_assert_cmpuint(depth, >=, 2);

        /* Who filled from whom: a node pointed on names its parent, and that parent's. */
        g_autofree char *tree = ctl(f, order[0], "fleet", id);
        g_test_message("%s", tree);
        g_assert_nonnull(strstr(tree, "origin"));
        g_assert_nonnull(strstr(tree, f->nodes[order[0]].url));
}

/* FanOut=2: the owner streams to A and X, and points B at A. A dies mid-stream: B goes back to the owner, which
 * serves it (or points it at the other receiver) from where it stopped, with a Range; B's copy is
 * byte-exact and nothing of A's is published. */
static void test_fanout_parent_killed(Fixture *f, gconstpointer user) {
        static const char id[] = "fleet-parent";
        UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256, .rate = 2 * 1024 * 1024 };
        size_t order[MAX_NODES];
        Client ca, cx, cb;

        add_image(f, id, &o);
        start_fleet_full(f, 4, NULL, NULL, NULL, "FanOut=2\n");
        rank(f, id, order);
        size_t owner = order[0], a = order[1], x = order[2], b = order[3];

        /* A, then X: the owner's two streams. B is pointed at the receiver pointed at least, the older: A. */
        g_autofree char *url_a = g_strdup_printf("%s/images/%s", f->nodes[a].url, id);
        client_start(f, &ca, "out-a", url_a, NULL);
        wait_metric(f, owner, "imgcache_fleet_peer_streams_peak", 1);
        g_autofree char *url_x = g_strdup_printf("%s/images/%s", f->nodes[x].url, id);
        client_start(f, &cx, "out-x", url_x, NULL);
        wait_metric(f, owner, "imgcache_fleet_peer_streams_peak", 2);
        g_autofree char *url_b = g_strdup_printf("%s/images/%s", f->nodes[b].url, id);
        client_start(f, &cb, "out-b", url_b, NULL);
        wait_metric(f, a, "imgcache_fleet_served_to_peers_bytes_total", 256 * 1024);
        g_assert_cmpuint(metric(f, b, "imgcache_fleet_redirects_followed_total"), ==, 1);

        kill_node(f, a);
        client_wait_image(f, &cb);
        assert_cached(f, b, id);
        assert_not_cached(f, a, id);
        client_wait_image(f, &cx);
        client_wait(&ca); /* its node died under it */

        g_assert_cmpuint(origin_requests(f, id), ==, 1);
        g_assert_cmpuint(metric(f, b, "imgcache_fleet_peer_failovers_total"), ==, 1);
        /* Continued, not started over: every byte came from a peer, once. */
        g_assert_cmpuint(metric(f, b, "imgcache_fleet_fetched_from_peers_bytes_total"), ==, IMAGE_SIZE);
        g_assert_cmpuint(metric(f, b, "imgcache_fleet_fetched_from_origin_bytes_total"), ==, 0);
        client_done(&ca);
        client_done(&cx);
        client_done(&cb);
}

/* FanOut=1, and the owner's one stream goes to a node of the fleet that is down now: the next asker is
 * pointed there, cannot connect, goes back to the owner, which has nobody else to point at and refuses,
 * and goes on as without a fan-out: the next candidate (none here), then the origin. */
static void test_fanout_target_down(Fixture *f, gconstpointer user) {
        uint16_t dead_port;
        int dead = test_listen_socket(&dead_port);
        g_autofree char *dead_url = g_strdup_printf("http://127.0.0.1:%u", dead_port);
        UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256, .rate = 2 * 1024 * 1024 };
        size_t order[3];
        char id[32];
        Client held, c;

        close(dead); /* refused from now on */
        start_fleet_full(f, 2, NULL, dead_url, NULL, "FanOut=1\n");
        /* An image both live nodes rank above the dead one: one owns it, the other asks it. */
        char *urls[] = { f->nodes[0].url, f->nodes[1].url, dead_url };
        for (unsigned i = 0;; i++) {
                g_snprintf(id, sizeof(id), "fleet-down-%u", i);
                fleet_rank(urls, 3, id, order);
                if (order[2] == 2)
                        break;
        }
        size_t owner = order[0], asker = order[1];
        add_image(f, id, &o);

        /* The dead node's request, as it made it before it went down. */
        g_autofree char *owner_url = g_strdup_printf("%s/images/%s", f->nodes[owner].url, id);
        g_autofree char *as_dead = g_strdup_printf("%s: %s", FLEET_HEADER_PEER, dead_url);
        client_start_with(f, &held, "out-held", owner_url, as_dead, FLEET_HEADER_TOKEN ": " PEER_TOKEN);
        wait_metric(f, owner, "imgcache_fleet_peer_streams_peak", 1);

        g_autofree char *url = g_strdup_printf("%s/images/%s", f->nodes[asker].url, id);
        client_start(f, &c, "out", url, NULL);
        client_wait_image(f, &c);
        assert_cached(f, asker, id);
        g_assert_cmpuint(metric(f, asker, "imgcache_fleet_redirects_followed_total"), ==, 1);
        g_assert_cmpuint(metric(f, owner, "imgcache_fleet_redirects_given_total"), ==, 1);
        g_assert_cmpuint(metric(f, owner, "imgcache_fleet_fanout_refused_total"), ==, 1);
        g_assert_cmpuint(metric(f, owner, "imgcache_fleet_peer_streams_peak"), ==, 1);
        g_assert_cmpuint(origin_requests(f, id), ==, 2);

        client_wait_image(f, &held);
        client_done(&held);
        client_done(&c);
}

/* Three peers each point every asker at the next one, in a ring. The node follows each pointer once per
 * source it asks (never back to a node it passed), returns to the source when the ring closes, then goes
 * on with the next source and finally the origin: a bounded number of requests, and the image. */
static void test_fanout_loop_guard(Fixture *f, gconstpointer user) {
        char *urls[G_N_ELEMENTS(f->fakes) + 1];
        size_t n = G_N_ELEMENTS(f->fakes), order[G_N_ELEMENTS(f->fakes) + 1];
        g_autoptr(GString) peers = g_string_new(NULL);
        unsigned asked = 0;
        char id[32];
        Client c;

        for (size_t i = 0; i < n; i++) {
                g_assert_cmpint(upstream_fixture_new(0, &f->fakes[i]), ==, 0);
                urls[i] = upstream_fixture_url(f->fakes[i], NULL);
                g_string_append_printf(peers, "%s%s", i ? " " : "", urls[i]);
        }
        start_fleet_with(f, 1, NULL, peers->str, NULL);
        urls[n] = f->nodes[0].url;
        /* An image the node ranks last for: it asks the first two (Replicas=2) before the origin. */
        for (unsigned i = 0;; i++) {
                g_snprintf(id, sizeof(id), "fleet-ring-%u", i);
                fleet_rank(urls, n + 1, id, order);
                if (order[n] == n)
                        break;
        }
        g_autofree char *path = g_strdup_printf("/images/%s", id);
        for (size_t i = 0; i < n; i++) {
                g_autofree char *next = g_strdup_printf("%s: %s", FLEET_HEADER_REDIRECT, urls[(i + 1) % n]);
                UpstreamImageOptions o = { .status = 307, .status_header = next };
                g_assert_cmpint(upstream_fixture_add_image(f->fakes[i], path, f->data, IMAGE_SIZE, &o), ==, 0);
        }
        add_image(f, id, NULL);

        g_autofree char *url = g_strdup_printf("%s/images/%s", f->nodes[0].url, id);
        client_start(f, &c, "out", url, NULL);
        client_wait_image(f, &c);
        g_assert_cmpuint(origin_requests(f, id), ==, 1);

        /* Per source: it, the node it points at, the next (which points back at the source: not
         * followed), and the source again with all three in Via (which points on to a node passed). */
        for (size_t i = 0; i < n; i++)
                asked += upstream_fixture_requests(f->fakes[i], path);
        g_assert_cmpuint(asked, ==, 2 * 4);
        g_assert_cmpuint(metric(f, 0, "imgcache_fleet_redirects_followed_total"), ==, 2 * 2);
        for (size_t i = 0; i < n; i++)
                g_free(urls[i]);
        client_done(&c);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add("/fleet-daemon/one-origin-fetch", Fixture, NULL, fixture_setup, test_one_origin_fetch, fixture_teardown);
        g_test_add("/fleet-daemon/owner-killed", Fixture, NULL, fixture_setup, test_owner_killed, fixture_teardown);
        g_test_add("/fleet-daemon/loop-no-storm", Fixture, NULL, fixture_setup, test_loop_no_storm, fixture_teardown);
        g_test_add("/fleet-daemon/peer-token", Fixture, NULL, fixture_setup, test_peer_token, fixture_teardown);
        g_test_add("/fleet-daemon/head-never-fills", Fixture, NULL, fixture_setup, test_head_never_fills, fixture_teardown);
        g_test_add("/fleet-daemon/config-refused", Fixture, NULL, fixture_setup, test_config_refused, fixture_teardown);
        g_test_add("/fleet-daemon/host-names", Fixture, NULL, fixture_setup, test_host_names, fixture_teardown);
        g_test_add("/fleet-daemon/tls-peer", Fixture, NULL, fixture_setup, test_tls_peer, fixture_teardown);
        g_test_add("/fleet-daemon/fanout-tree", Fixture, NULL, fixture_setup, test_fanout_tree, fixture_teardown);
        g_test_add("/fleet-daemon/fanout-parent-killed", Fixture, NULL, fixture_setup, test_fanout_parent_killed,
                   fixture_teardown);
        g_test_add("/fleet-daemon/fanout-target-down", Fixture, NULL, fixture_setup, test_fanout_target_down,
                   fixture_teardown);
        g_test_add("/fleet-daemon/fanout-loop-guard", Fixture, NULL, fixture_setup, test_fanout_loop_guard,
                   fixture_teardown);
        return g_test_run();
}
