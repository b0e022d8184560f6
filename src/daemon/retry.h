/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>

#include "util.h"

/* The delay before retry number attempt (1: the first retry) of a failed fetch: initial doubled for
 * every earlier attempt, at most max, then jittered down by up to half, so that images that failed
 * together (an upstream outage) do not come back in step. random is uniform over uint64_t. The result
 * lies in [d/2, d] for that d; USEC_INFINITY when initial is infinity (no retries). */
usec_t retry_backoff(usec_t initial, usec_t max, unsigned attempt, uint64_t random);
