/* SPDX-License-Identifier: MIT */

/* The backoff of retried fetches (src/daemon/retry.c): doubling from the initial delay, capped, and
 * jittered within [d/2, d]. */

#include <glib.h>

#include "retry.h"

#define S USEC_PER_SEC

/* The delay without jitter, for checking the bounds of the jittered one. */
static usec_t nominal(usec_t initial, usec_t max, unsigned attempt) {
        usec_t d = initial;
        for (unsigned i = 1; i < attempt && d < max; i++)
                d = MIN(d * 2, max);
        return MIN(d, max);
}

static void test_doubling_and_cap(void) {
        /* random 0 takes nothing off: the nominal delay itself. */
        g_assert_cmpuint(retry_backoff(30 * S, 3600 * S, 1, 0), ==, 30 * S);
        g_assert_cmpuint(retry_backoff(30 * S, 3600 * S, 2, 0), ==, 60 * S);
        g_assert_cmpuint(retry_backoff(30 * S, 3600 * S, 3, 0), ==, 120 * S);
        g_assert_cmpuint(retry_backoff(30 * S, 3600 * S, 7, 0), ==, 1920 * S);
        g_assert_cmpuint(retry_backoff(30 * S, 3600 * S, 8, 0), ==, 3600 * S);
        g_assert_cmpuint(retry_backoff(30 * S, 3600 * S, 1000000, 0), ==, 3600 * S);
        /* attempt 0 is read as the first. */
        g_assert_cmpuint(retry_backoff(30 * S, 3600 * S, 0, 0), ==, 30 * S);
        /* A cap below the initial delay caps at the initial delay. */
        g_assert_cmpuint(retry_backoff(30 * S, 10 * S, 5, 0), ==, 30 * S);
        /* No cap: doubling without overflow. */
        g_assert_cmpuint(retry_backoff(S, USEC_INFINITY, 20, 0), ==, (usec_t) S << 19);
        g_assert_cmpuint(retry_backoff(S, USEC_INFINITY, 200, 0), ==, USEC_INFINITY);
        /* RetryInitialSec=infinity: never. */
        g_assert_cmpuint(retry_backoff(USEC_INFINITY, USEC_INFINITY, 1, 12345), ==, USEC_INFINITY);
}

static void test_jitter_within_bounds(void) {
        static const struct {
                usec_t initial, max;
        } cases[] = {
                { 30 * S, 3600 * S },
                { 100 * USEC_PER_MSEC, 2 * S },
                { 1, 1 },
                { 3, 1000 },
        };
        GRand *rand = g_rand_new_with_seed(15);

        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
                for (unsigned attempt = 1; attempt <= 20; attempt++) {
                        usec_t d = nominal(cases[i].initial, cases[i].max, attempt);
                        usec_t lo = d, hi = 0;
                        for (unsigned k = 0; k < 2000; k++) {
                                uint64_t r = (uint64_t) g_rand_int(rand) << 32 | g_rand_int(rand);
                                usec_t t = retry_backoff(cases[i].initial, cases[i].max, attempt, r);
                                g_assert_cmpuint(t, >=, d - d / 2);
                                g_assert_cmpuint(t, <=, d);
                                g_assert_cmpuint(t, <=, cases[i].max);
                                lo = MIN(lo, t);
                                hi = MAX(hi, t);
                        }
                        /* It is spread, not one value (where there is room for more). */
                        if (d >= 1000)
                                g_assert_cmpuint(hi - lo, >, d / 4);
                }
        /* The extremes of random reach both ends. */
        g_assert_cmpuint(retry_backoff(100, 100, 1, 50), ==, 50);
        g_assert_cmpuint(retry_backoff(100, 100, 1, 51), ==, 100);
        g_rand_free(rand);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/retry/doubling-and-cap", test_doubling_and_cap);
        g_test_add_func("/retry/jitter-within-bounds", test_jitter_within_bounds);
        return g_test_run();
}
