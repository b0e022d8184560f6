/* SPDX-License-Identifier: MIT */
#pragma once

#include "config.h"
#include "fetch.h"

/* Who may read a cached image over HTTP ([HTTP] ReadAccess=):
 *   upstream  the caller's token (X-Auth-Token, or Authorization: Bearer) is checked with the upstream for
 *             that image, with the caller's token: for Glance its record must answer 200 and be active,
 *             for a generic upstream a HEAD of the image must answer 2xx. 401, 403 and 404 deny with the
 *             same status. The verdict is cached per (SHA-256 of the token, image id): a yes for
 *             ReadAccessAllowCacheSec=, a no for ReadAccessDenyCacheSec=, bounded in memory; concurrent
 *             checks of the same pair share one request. Tokens are kept only as digests, except for the
 *             duration of a check's request.
 *   token     static tokens from ReadTokenFile=, compared as digests in constant time.
 *   open      everyone who reaches the listener.
 * Filling a miss afterwards uses the daemon's own credentials, as before. */

typedef struct ReadGuard ReadGuard;
typedef struct ReadCheck ReadCheck;

/* verdict: 0 = may read; otherwise the HTTP status to refuse with (401, 403, 404, 429 when the client
 * may not ask the upstream now, or 502 when the upstream could not say). */
typedef void (*ReadCheckDone)(int verdict, void *userdata);
/* The client may see the image, but it has no data to read (a Glance record not active: queued, saving,
 * deactivated…): Glance's own answer says which, so a drop-in endpoint passes the request through. */
#define READ_VERDICT_NOT_ACTIVE 409

/* Who asks: the client address (its verdicts count against its share of the cache, so that one client
 * cannot flush the others'; NULL: nobody's), and whether it may make the guard ask the upstream now
 * (asked only before a request of the guard's own; NULL: always). */
typedef struct ReadGuardAsker {
        const char *client;
        bool (*may_ask)(void *userdata);
        void *userdata;
} ReadGuardAsker;

#define READ_GUARD_CACHE_MAX 4096U
#define READ_GUARD_CACHE_PER_CLIENT (READ_GUARD_CACHE_MAX / 16)

/* Reads ReadTokenFile= for ReadAccess=token; -ENOKEY (logged, naming the file) when there is none. */
int read_guard_new(const Config *config, Fetcher *fetcher, ReadGuard **ret);
ReadGuard *read_guard_free(ReadGuard *g);
/* A reloaded configuration: on failure (no ReadTokenFile=) the old settings stay. Checks in flight go on;
 * remembered verdicts are forgotten. */
int read_guard_reconfigure(ReadGuard *g, const Config *config);

/* Decides at once (returns the verdict, >= 0) or starts or joins a check with the upstream (returns
 * -EINPROGRESS and *ret_check; done is called later from the loop, unless the check is freed first, and
 * the check is gone after it: done must forget it, and must not free other checks). */
int read_guard_check(ReadGuard *g, const ReadGuardAsker *asker, const char *x_auth_token, const char *authorization,
                     const char *id, ReadCheckDone done, void *userdata, ReadCheck **ret_check);
ReadCheck *read_check_free(ReadCheck *c);
