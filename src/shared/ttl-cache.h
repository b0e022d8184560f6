/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/* A bounded map from string keys to small values that each hold until their own expiry: decisions and
 * answers believed for a while (read-access verdicts, upstream 404s). When full, expired entries go first,
 * then whichever entry the table yields: memory stays bounded whatever clients send. Times are
 * CLOCK_MONOTONIC µs. */
typedef struct TtlCache TtlCache;

int ttl_cache_new(size_t max_entries, TtlCache **ret);
TtlCache *ttl_cache_free(TtlCache *c);
/* ttl 0: nothing is stored (and an older entry for key is dropped). */
void ttl_cache_put(TtlCache *c, const char *key, int value, usec_t ttl);
/* The value stored for key that has not expired by now. */
bool ttl_cache_get(TtlCache *c, const char *key, usec_t now, int *ret_value);
void ttl_cache_remove(TtlCache *c, const char *key);
void ttl_cache_clear(TtlCache *c);
size_t ttl_cache_size(const TtlCache *c);
