/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fetch.h"

/* A stand-in for the fetcher (fetcher.c, fill*.c) that implements fetch.h with no network: the test
 * decides when a fill gets its headers, which bytes land and how it ends. It lets the HTTP tests pin down the streaming rules
 * (suspension, the held-back last byte, aborts, joiners, slow readers) step by step, deterministically.
 * Listeners are called synchronously from the control functions below, which the test calls from its
 * event loop (never from inside MHD), as the fetcher (fetcher.c, fill*.c) calls them from the loop.
 *
 * fetcher_new(event, cache, config, &fe) works as the real one does; an upstream counts as configured
 * when config->upstream_url is set. */

/* Fills started so far (each would be one upstream request). */
unsigned fake_fetcher_n_started(Fetcher *fe);
/* The fill of id created last (running or finished), or NULL. No new reference. */
Fill *fake_fetcher_get(Fetcher *fe, const char *id);

/* The upstream answered: RECEIVING, total = UINT64_MAX when no length was given. Calls on_headers. */
void fake_fill_headers(Fill *f, uint64_t total);
/* Bytes written to the file; calls on_data. */
void fake_fill_write(Fill *f, const void *data, size_t size);
/* Ends the fill: error 0 = DONE (committed into the store when keep is true, else streamed through),
 * else FAILED with that error. Calls on_finished. */
void fake_fill_finish(Fill *f, int error, bool keep);
/* Questions to the upstream (fetcher_query()): the unanswered one for id, or NULL; how many were asked;
 * the credentials it carries (NULL: the daemon's own); answering it calls its done, which frees it. */
UpstreamQuery *fake_fetcher_query(Fetcher *fe, const char *id);
unsigned fake_fetcher_n_queries(Fetcher *fe);
const char *fake_query_credentials(const UpstreamQuery *q);
void fake_query_answer(UpstreamQuery *q, const UpstreamAnswer *a);

/* Readers currently subscribed to f (listeners with on_data: the streams of HTTP clients). */
unsigned fake_fill_n_subscribers(Fill *f);
