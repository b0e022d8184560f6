/* SPDX-License-Identifier: MIT */
/* Small bounded caches with expiry (ttl-cache.h), with a quota per owner. */

#include <errno.h>
#include <glib.h>
#include <stdlib.h>

#include "ttl-cache.h"

typedef struct TtlEntry {
        TtlCache *cache;
        int value;
        usec_t until;
        uint64_t seq;  /* order of insertion: the older of two that expire together goes first */
        char *owner;   /* NULL: counted against nobody's quota */
} TtlEntry;

struct TtlCache {
        GHashTable *entries;   /* char* → TtlEntry* */
        GHashTable *owners;    /* char* owner → GUINT_TO_POINTER(entries it holds), > 0 only */
        size_t max, max_per_owner;
        uint64_t seq;
};

static void entry_free(gpointer p) {
        TtlEntry *e = p;

        if (e->owner) {
                unsigned n = GPOINTER_TO_UINT(g_hash_table_lookup(e->cache->owners, e->owner));
                if (n <= 1)
                        g_hash_table_remove(e->cache->owners, e->owner);
                else
                        g_hash_table_insert(e->cache->owners, g_strdup(e->owner), GUINT_TO_POINTER(n - 1));
                g_free(e->owner);
        }
        g_free(e);
}

int ttl_cache_new(size_t max_entries, size_t max_per_owner, TtlCache **ret) {
        TtlCache *c = calloc(1, sizeof(TtlCache));
        if (!c)
                return -ENOMEM;
        c->entries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, entry_free);
        c->owners = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        c->max = MAX(max_entries, (size_t) 1);
        c->max_per_owner = max_per_owner > 0 ? max_per_owner : c->max;
        *ret = c;
        return 0;
}

TtlCache *ttl_cache_free(TtlCache *c) {
        if (!c)
                return NULL;
        g_hash_table_unref(c->entries);  /* the entries first: they count against owners */
        g_hash_table_unref(c->owners);
        free(c);
        return NULL;
}

static gboolean entry_expired(gpointer key, gpointer value, gpointer userdata) {
        return ((TtlEntry *) value)->until <= *(usec_t *) userdata;
}

static void ttl_cache_make_room(TtlCache *c, usec_t now) {
        GHashTableIter it;

        if (g_hash_table_size(c->entries) < c->max)
                return;
        (void) g_hash_table_foreach_remove(c->entries, entry_expired, &now);
        g_hash_table_iter_init(&it, c->entries);
        while (g_hash_table_size(c->entries) >= c->max && g_hash_table_iter_next(&it, NULL, NULL))
                g_hash_table_iter_remove(&it);
}

/* An owner at its quota gives up its own entry nearest to expiry, never somebody else's. */
static void ttl_cache_evict_owned(TtlCache *c, const char *owner) {
        GHashTableIter it;
        gpointer key, value;
        const char *victim = NULL;
        const TtlEntry *oldest = NULL;

        g_hash_table_iter_init(&it, c->entries);
        while (g_hash_table_iter_next(&it, &key, &value)) {
                TtlEntry *e = value;
                if (!e->owner || !g_str_equal(e->owner, owner))
                        continue;
                if (!oldest || e->until < oldest->until || (e->until == oldest->until && e->seq < oldest->seq)) {
                        victim = key;
                        oldest = e;
                }
        }
        if (victim)
                (void) g_hash_table_remove(c->entries, victim);
}

void ttl_cache_put_owned(TtlCache *c, const char *key, int value, usec_t ttl, const char *owner) {
        usec_t now = now_usec(CLOCK_MONOTONIC);
        TtlEntry *e;

        if (ttl == 0) {
                ttl_cache_remove(c, key);
                return;
        }
        if (!g_hash_table_contains(c->entries, key)) {
                if (owner && GPOINTER_TO_UINT(g_hash_table_lookup(c->owners, owner)) >= c->max_per_owner)
                        ttl_cache_evict_owned(c, owner);
                ttl_cache_make_room(c, now);
        }
        e = g_new(TtlEntry, 1);
        *e = (TtlEntry) {
                .cache = c,
                .value = value,
                .until = usec_add(now, ttl),
                .seq = c->seq++,
                .owner = g_strdup(owner),
        };
        /* An entry it replaces is uncounted first (entry_free). */
        g_hash_table_insert(c->entries, g_strdup(key), e);
        if (owner) {
                unsigned n = GPOINTER_TO_UINT(g_hash_table_lookup(c->owners, owner));
                g_hash_table_insert(c->owners, g_strdup(owner), GUINT_TO_POINTER(n + 1));
        }
}

void ttl_cache_put(TtlCache *c, const char *key, int value, usec_t ttl) {
        ttl_cache_put_owned(c, key, value, ttl, /* owner= */ NULL);
}

bool ttl_cache_get(TtlCache *c, const char *key, usec_t now, int *ret_value) {
        TtlEntry *e = g_hash_table_lookup(c->entries, key);

        if (!e)
                return false;
        if (e->until <= now) {
                g_hash_table_remove(c->entries, key);
                return false;
        }
        if (ret_value)
                *ret_value = e->value;
        return true;
}

void ttl_cache_remove(TtlCache *c, const char *key) {
        (void) g_hash_table_remove(c->entries, key);
}

void ttl_cache_clear(TtlCache *c) {
        g_hash_table_remove_all(c->entries);
}

size_t ttl_cache_size(const TtlCache *c) {
        return g_hash_table_size(c->entries);
}
