/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/* A bounded map from string keys to small values that each hold until their own expiry: decisions and
 * answers believed for a while (read-access verdicts, upstream 404s). When full, expired entries go first,
 * then whichever entry the table yields: memory stays bounded whatever clients send. An entry may be put
 * for an owner (a client address): an owner holds at most max_per_owner entries, and one at its quota
 * replaces its own entry nearest to expiry, so that one client cannot flush what others are believed.
 * Times are CLOCK_MONOTONIC µs. */
typedef struct TtlCache TtlCache;

/* max_per_owner 0: as many as the cache holds. */
int ttl_cache_new(size_t max_entries, size_t max_per_owner, TtlCache **ret);
TtlCache *ttl_cache_free(TtlCache *c);
/* ttl 0: nothing is stored (and an older entry for key is dropped). */
void ttl_cache_put(TtlCache *c, const char *key, int value, usec_t ttl);
/* ttl_cache_put() counted against owner's quota (NULL: nobody's). */
void ttl_cache_put_owned(TtlCache *c, const char *key, int value, usec_t ttl, const char *owner);
/* The value stored for key that has not expired by now. */
bool ttl_cache_get(TtlCache *c, const char *key, usec_t now, int *ret_value);
void ttl_cache_remove(TtlCache *c, const char *key);
void ttl_cache_clear(TtlCache *c);
size_t ttl_cache_size(const TtlCache *c);
