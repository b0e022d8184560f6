/* SPDX-License-Identifier: MIT */
/* Read authorization of HTTP clients (read-guard.h): static tokens, or the upstream asked with the
 * client's own token, its verdicts cached per (token digest, image). */

#include <errno.h>
#include <glib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "http-util.h"
#include "log.h"
#include "read-guard.h"
#include "ttl-cache.h"

#define DIGEST_SIZE 32  /* SHA-256 */
#define READ_TOKENS_MAX 1024U

typedef struct Pending Pending;

struct ReadCheck {
        Pending *pending;
        ReadCheckDone done;
        void *userdata;
        ReadCheck *checks_prev, *checks_next;
};

/* One question to the upstream for a (token, image) pair, and everyone waiting for its answer. */
struct Pending {
        ReadGuard *guard;
        char *key;
        char *owner;   /* the client address that asked first: its verdict counts against its quota */
        UpstreamQuery *query;
        ReadCheck *checks;
};

struct ReadGuard {
        ReadAccess mode;
        Fetcher *fetcher;
        uint8_t (*tokens)[DIGEST_SIZE];  /* ReadAccess=token: digests of the read tokens */
        size_t n_tokens;
        usec_t allow_ttl, deny_ttl;
        TtlCache *verdicts;              /* key → verdict */
        GHashTable *pending;             /* key → Pending* */
};

static int digest(const char *s, uint8_t ret[static DIGEST_SIZE]) {
        unsigned n = 0;

        if (EVP_Digest(s, strlen(s), ret, &n, EVP_sha256(), NULL) != 1 || n != DIGEST_SIZE)
                return -EIO;
        return 0;
}

/* The digests of the tokens in path; *ret is freed by the caller. */
static int load_tokens(const char *path, uint8_t (**ret)[DIGEST_SIZE], size_t *ret_n) {
        uint8_t (*digests)[DIGEST_SIZE];
        char **tokens = NULL;
        size_t n = 0;
        int r;

        if (isempty(path))
                return log_error_errno(-ENOKEY, "ReadAccess=token needs ReadTokenFile=; refusing to serve.");
        r = read_token_file(path, READ_TOKENS_MAX, &tokens);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return log_error_errno(-ENOKEY, "ReadAccess=token: cannot read ReadTokenFile=%s: %s; refusing to serve.",
                                       path, strerror(-r));
        while (tokens[n])
                n++;
        digests = calloc(n, DIGEST_SIZE);
        if (!digests) {
                token_strv_free(tokens);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n && r >= 0; i++)
                r = digest(tokens[i], digests[i]);
        token_strv_free(tokens);
        if (r < 0) {
                free(digests);
                return r;
        }
        *ret = digests;
        *ret_n = n;
        return 0;
}

static void forget_tokens(ReadGuard *g) {
        if (g->tokens)
                explicit_bzero(g->tokens, g->n_tokens * DIGEST_SIZE);
        free(g->tokens);
        g->tokens = NULL;
        g->n_tokens = 0;
}

int read_guard_reconfigure(ReadGuard *g, const Config *config) {
        uint8_t (*tokens)[DIGEST_SIZE] = NULL;
        ReadAccess mode = config_read_access(config);
        size_t n = 0;
        int r;

        if (mode == READ_ACCESS_TOKEN) {
                r = load_tokens(config->read_token_file, &tokens, &n);
                if (r < 0)
                        return r;
        }
        forget_tokens(g);
        g->tokens = tokens;
        g->n_tokens = n;
        g->mode = mode;
        g->allow_ttl = config->read_access_allow_cache;
        g->deny_ttl = config->read_access_deny_cache;
        /* Verdicts were believed for the old settings; checks in flight go on and are remembered. */
        ttl_cache_clear(g->verdicts);
        return 0;
}

int read_guard_new(const Config *config, Fetcher *fetcher, ReadGuard **ret) {
        ReadGuard *g;
        int r;

        g = calloc(1, sizeof(ReadGuard));
        if (!g)
                return -ENOMEM;
        *g = (ReadGuard) {
                .fetcher = fetcher,
                .pending = g_hash_table_new(g_str_hash, g_str_equal),
        };
        r = ttl_cache_new(READ_GUARD_CACHE_MAX, READ_GUARD_CACHE_PER_CLIENT, &g->verdicts);
        if (r >= 0)
                r = read_guard_reconfigure(g, config);
        if (r < 0) {
                read_guard_free(g);
                return r;
        }
        *ret = g;
        return 0;
}

static void pending_free(Pending *p) {
        while (p->checks) {
                ReadCheck *c = p->checks;
                LIST_REMOVE(checks, p->checks, c);
                free(c);
        }
        upstream_query_free(p->query);
        if (p->guard)
                g_hash_table_remove(p->guard->pending, p->key);
        free(p->key);
        free(p->owner);
        free(p);
}

ReadGuard *read_guard_free(ReadGuard *g) {
        GHashTableIter it;
        gpointer value;

        if (!g)
                return NULL;
        /* The HTTP server freed its requests (and their checks) before. */
        g_hash_table_iter_init(&it, g->pending);
        while (g_hash_table_iter_next(&it, NULL, &value)) {
                g_hash_table_iter_steal(&it);
                ((Pending *) value)->guard = NULL;
                pending_free(value);
        }
        g_hash_table_unref(g->pending);
        ttl_cache_free(g->verdicts);
        forget_tokens(g);
        free(g);
        return NULL;
}

/* Every token is compared, match or not, so the time taken says nothing about which. */
static int check_static_token(ReadGuard *g, const char *token) {
        uint8_t d[DIGEST_SIZE];
        int match = 0;

        if (!token || digest(token, d) < 0)
                return 401;
        for (size_t i = 0; i < g->n_tokens; i++)
                match |= CRYPTO_memcmp(d, g->tokens[i], DIGEST_SIZE) == 0;
        explicit_bzero(d, sizeof(d));
        return match ? 0 : 401;
}

static int verdict_from_answer(const UpstreamAnswer *a) {
        switch (a->status) {
        case 200 ... 299:
                return a->available ? 0 : a->error == 0 ? READ_VERDICT_NOT_ACTIVE : 404;
        case 401:
        case 403:
                return (int) a->status;
        case 404:
        case 410:
                return 404;
        default:
                return 502;  /* no answer, an error, a redirect: no verdict either way */
        }
}

static void on_answer(const UpstreamAnswer *a, void *userdata) {
        Pending *p = userdata;
        ReadGuard *g = p->guard;
        int verdict = verdict_from_answer(a);
        ReadCheck *checks;

        if (verdict == 0)
                ttl_cache_put_owned(g->verdicts, p->key, 0, g->allow_ttl, p->owner);
        else if (verdict != 502)
                ttl_cache_put_owned(g->verdicts, p->key, verdict, g->deny_ttl, p->owner);
        else
                log_debug("The upstream could not say whether a client may read an image (HTTP %ld, %s).",
                          a->status, a->error < 0 ? strerror(-a->error) : "no error");

        /* The question is answered for everyone: each waiter is told once, and its check freed (done must
         * not free checks itself). */
        checks = p->checks;
        p->checks = NULL;
        pending_free(p);
        while (checks) {
                ReadCheck *c = checks;
                LIST_REMOVE(checks, checks, c);
                c->done(verdict, c->userdata);
                free(c);
        }
}

/* "<hex of SHA-256(token)>/<header>/<id>": the header the token came in is part of the question. */
static char *verdict_key(const char *token, bool bearer, const char *id) {
        uint8_t d[DIGEST_SIZE];
        char hex[2 * DIGEST_SIZE + 1];

        if (digest(token, d) < 0)
                return NULL;
        for (size_t i = 0; i < DIGEST_SIZE; i++)
                snprintf(hex + 2 * i, 3, "%02x", d[i]);
        explicit_bzero(d, sizeof(d));
        return g_strdup_printf("%s/%c/%s", hex, bearer ? 'b' : 'x', id);
}

/* The rules of read_token_file(): what a token file could hold is what a client may present. */
static bool token_is_sane(const char *t) {
        size_t n = strlen(t);
        return n > 0 && n <= TOKEN_MAX && !memory_has_control(t, n);
}

static int pending_start(ReadGuard *g, char *key, const char *token, bool bearer, const char *id, const char *owner,
                         Pending **ret) {
        _cleanup_(freep) char *line = NULL;
        Pending *p;
        int r;

        if (asprintf(&line, bearer ? "Authorization: Bearer %s" : "X-Auth-Token: %s", token) < 0)
                return -ENOMEM;
        p = calloc(1, sizeof(Pending));
        if (!p) {
                explicit_bzero(line, strlen(line));
                return -ENOMEM;
        }
        *p = (Pending) { .guard = g, .key = key, .owner = owner ? strdup(owner) : NULL };
        if (owner && !p->owner) {
                explicit_bzero(line, strlen(line));
                free(p);
                return -ENOMEM;
        }
        r = fetcher_query(g->fetcher, id, line, on_answer, p, &p->query);
        explicit_bzero(line, strlen(line));
        if (r < 0) {
                free(p->owner);
                free(p);
                return r;
        }
        g_hash_table_insert(g->pending, key, p);
        *ret = p;
        return 0;
}

int read_guard_check(ReadGuard *g, const ReadGuardAsker *asker, const char *x_auth_token, const char *authorization,
                     const char *id, ReadCheckDone done, void *userdata, ReadCheck **ret_check) {
        const char *token = http_request_token(x_auth_token, authorization);
        /* The upstream is asked with the header the client used. */
        bool bearer = token && !(x_auth_token && token >= x_auth_token && token <= x_auth_token + strlen(x_auth_token));
        char *key;
        Pending *p;
        ReadCheck *c;
        int verdict, r;

        switch (g->mode) {
        case READ_ACCESS_OPEN:
                return 0;
        case READ_ACCESS_TOKEN:
                return check_static_token(g, token);
        default:
                break;
        }

        if (!token || !token_is_sane(token))
                return 401;
        if (!g->fetcher)
                return 502;
        key = verdict_key(token, bearer, id);
        if (!key)
                return -ENOMEM;
        if (ttl_cache_get(g->verdicts, key, now_usec(CLOCK_MONOTONIC), &verdict)) {
                free(key);
                return verdict;
        }

        p = g_hash_table_lookup(g->pending, key);
        if (p)
                free(key);
        else if (asker->may_ask && !asker->may_ask(asker->userdata)) {
                free(key);
                return 429;
        } else {
                r = pending_start(g, key, token, bearer, id, asker->client, &p);
                if (r < 0) {
                        free(key);
                        return r == -ENOMEM ? r : 502;
                }
        }

        c = calloc(1, sizeof(ReadCheck));
        if (!c) {
                if (!p->checks)
                        pending_free(p);
                return -ENOMEM;
        }
        *c = (ReadCheck) { .pending = p, .done = done, .userdata = userdata };
        LIST_PREPEND(checks, p->checks, c);
        *ret_check = c;
        return -EINPROGRESS;
}

ReadCheck *read_check_free(ReadCheck *c) {
        Pending *p;

        if (!c)
                return NULL;
        p = c->pending;
        LIST_REMOVE(checks, p->checks, c);
        free(c);
        /* Nobody waits any more: the question is withdrawn. */
        if (!p->checks)
                pending_free(p);
        return NULL;
}
