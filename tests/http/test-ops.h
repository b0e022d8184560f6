/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>

#include "config.h"
#include "fetch.h"
#include "http.h"
#include "store.h"

/* The operations the HTTP server requires (http.h), for in-process tests without a Manager: it stands in
 * for the daemon around the server, not for the server under test. It acts on the test's store and
 * fetcher directly (queue, with a fill when PrefetchOnQueue=yes; delete; prune to MaxSize=; clean with
 * StallTime=) and keeps the counters the daemon would own, for the tests to look at. The tests of the
 * daemon itself (test-http-manager) check that the real table does what D-Bus does. */

typedef struct TestOps {
        ImageCache *cache;
        Fetcher *fetcher;          /* may be NULL */
        const Config *config;

        uint64_t hits, misses, bytes_served;
} TestOps;

extern const HttpOperations test_http_operations;  /* userdata: TestOps* */
