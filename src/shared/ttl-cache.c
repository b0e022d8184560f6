/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <glib.h>
#include <stdlib.h>

#include "ttl-cache.h"

typedef struct TtlEntry {
        int value;
        usec_t until;
} TtlEntry;

struct TtlCache {
        GHashTable *entries;   /* char* → TtlEntry* */
        size_t max;
};

int ttl_cache_new(size_t max_entries, TtlCache **ret) {
        TtlCache *c = calloc(1, sizeof(TtlCache));
        if (!c)
                return -ENOMEM;
        c->entries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        c->max = MAX(max_entries, (size_t) 1);
        *ret = c;
        return 0;
}

TtlCache *ttl_cache_free(TtlCache *c) {
        if (!c)
                return NULL;
        g_hash_table_unref(c->entries);
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

void ttl_cache_put(TtlCache *c, const char *key, int value, usec_t ttl) {
        usec_t now = now_usec(CLOCK_MONOTONIC);
        TtlEntry *e;

        if (ttl == 0) {
                ttl_cache_remove(c, key);
                return;
        }
        if (!g_hash_table_contains(c->entries, key))
                ttl_cache_make_room(c, now);
        e = g_new(TtlEntry, 1);
        *e = (TtlEntry) { .value = value, .until = usec_add(now, ttl) };
        g_hash_table_insert(c->entries, g_strdup(key), e);
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
