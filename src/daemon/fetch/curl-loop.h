/* SPDX-License-Identifier: MIT */
#pragma once

#include <curl/curl.h>
#include <stdint.h>

#include <systemd/sd-event.h>

/* One libcurl multi handle driven by sd-event: an IO source per socket curl watches, one relative timer,
 * and completions delivered outside curl's callbacks, each to the task that added the transfer. Every
 * request of the daemon to the upstream, Keystone or a peer (fills, their records, read-access checks, token
 * requests, the fleet's holders query) goes through the one CurlLoop the Fetcher owns, so they share
 * connections and the loop. */

typedef struct CurlLoop CurlLoop;

/* Embedded in whatever owns a transfer; CURLOPT_PRIVATE of the easy handle points to it (set by
 * transport_easy_new(), curl-easy.h). on_done runs after the handle was removed from the multi handle; it
 * may free the handle and the task. */
typedef struct CurlTask CurlTask;
struct CurlTask {
        void (*on_done)(CurlTask *t, CURL *easy, CURLcode result);
};

int curl_loop_new(sd_event *event, CurlLoop **ret);
CurlLoop *curl_loop_free(CurlLoop *l); /* the transfers must be gone */

/* Starts the transfer of a handle from transport_easy_new(). */
int curl_loop_add(CurlLoop *l, CURL *easy);
/* Ends a transfer without its completion (fine for a handle not added, or already completed) and frees
 * the handle; *easy is NULL afterwards. l may be NULL when the loop is gone. */
void curl_loop_discard(CurlLoop *l, CURL **easy);

/* Delivers the completions curl has for us. The loop does so after every action; call it after a
 * curl_easy_pause() that may have let a transfer finish. */
void curl_loop_collect(CurlLoop *l);

/* Counts the times the loop let curl move data (socket and timer events): a transfer that wants a
 * budget per turn of the event loop compares it. */
uint64_t curl_loop_turns(const CurlLoop *l);
