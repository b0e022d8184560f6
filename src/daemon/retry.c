/* SPDX-License-Identifier: MIT */
/* The backoff of retried fetches (retry.h): a pure function. */

#include "retry.h"

usec_t retry_backoff(usec_t initial, usec_t max, unsigned attempt, uint64_t random) {
        usec_t d = initial;

        if (initial == USEC_INFINITY)
                return USEC_INFINITY;
        if (max < initial)
                max = initial; /* RetryMaxSec= below RetryInitialSec= caps at the first delay */
        for (unsigned i = 1; i < attempt && d < max; i++)
                d = d > max / 2 ? max : d * 2;
        d = MIN(d, max);
        if (d == USEC_INFINITY)
                return d;

        /* Up to half of d off, uniformly; d - d/2 keeps an odd d's upper half whole. */
        usec_t half = d / 2;
        return d - (half > 0 ? random % (half + 1) : 0);
}
