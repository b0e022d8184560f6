/* SPDX-License-Identifier: MIT */
#pragma once

#include <curl/curl.h>
#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "fetch.h"
#include "http.h"
#include "store.h"
#include "test-ops.h"
#include "test-util.h"

/* In-process loop tests of the HTTP server: the test thread runs sd-event with the server on
 * 127.0.0.1:0 and a store in a temp dir; each client runs in its own thread (libcurl easy, or a raw
 * socket for requests curl will not send) and wakes the loop through an eventfd when it made progress or
 * finished. Waits are bounded by a deadline (TEST_HTTP_TIMEOUT_MS) and fail the test; nothing sleeps. */

#define TEST_HTTP_TIMEOUT_MS 20000

typedef struct TestServer {
        sd_event *event;
        char *dir;
        ImageCache *cache;
        Config config;
        Fetcher *fetcher;
        HttpServer *server;
        TestOps ops;           /* the server's operations; the counters the daemon would own */
        char *base;            /* "http://127.0.0.1:PORT" */
        int wake_fd;           /* eventfd the clients write */
        sd_event_source *wake_source;
} TestServer;

/* Starts a server. setup may adjust the config (before the fetcher and server are created); NULL for
 * the defaults plus an upstream URL (so the fetcher has one). timeout_sec 0: the default. */
void test_server_start(TestServer *t, void (*setup)(Config *c, void *userdata), void *userdata,
                       unsigned timeout_sec);
void test_server_stop(TestServer *t);
/* Writes an image into the store (committed, sha256 recorded). */
void test_server_add_image(TestServer *t, const char *id, const void *data, size_t size);
char *test_server_url(TestServer *t, const char *path); /* g_free */

char *test_sha256(const void *data, size_t size); /* g_free */

typedef struct TestClient {
        /* in */
        char *url;
        char *method;             /* NULL: GET */
        char *headers[8];         /* "Name: value" */
        char *raw;                /* instead of curl: send these bytes on a plain socket, read to EOF */
        size_t raw_size;
        uint16_t raw_port;
        const char *raw_bind;     /* raw: the source address (127.0.0.0/8), NULL: the kernel's choice */
        size_t abort_after;       /* >0: hang up (curl write callback fails) once this many body bytes came */
        size_t pause_after;       /* >0: stop reading after this many body bytes until test_client_resume() */
        bool http10;
        bool keep_open;           /* raw: stop reading after one complete response (Content-Length) and
                                   * hold the connection open, idle, until test_client_free() */
        long timeout_ms;          /* curl: give up after this long (0: TEST_HTTP_TIMEOUT_MS) */

        /* out, valid once done */
        CURLcode result;
        long status;
        GByteArray *body;
        GString *head;            /* response header lines (all of them, for raw: the whole response) */

        /* progress */
        gint done;                /* atomic */
        gint received;            /* atomic: body bytes so far */
        gint paused;              /* atomic: sitting in the pause */

        TestServer *server;
        GThread *thread;
        int raw_fd;               /* keep_open: the connection held */
        GMutex lock;
        GCond cond;
        bool resume;
} TestClient;

TestClient *test_client_new(TestServer *t, const char *method, const char *path, ...) G_GNUC_NULL_TERMINATED;
TestClient *test_client_new_raw(TestServer *t, const char *request);
void test_client_start(TestClient *c);
void test_client_resume(TestClient *c);
void test_client_free(TestClient *c);   /* joins the thread */
/* A response header's value (last occurrence), or NULL; g_free. */
char *test_client_header(TestClient *c, const char *name);

/* Runs the loop until pred(userdata) holds; fails the test at the deadline. */
void test_run_until(TestServer *t, bool (*pred)(void *userdata), void *userdata);
/* Runs the loop until every client is done. */
void test_run_until_done(TestServer *t, TestClient **clients, size_t n);
/* Runs the loop until c received at least n body bytes (or finished). */
void test_run_until_received(TestServer *t, TestClient *c, size_t n);
/* Runs the loop until c sits in its pause (pause_after). */
void test_run_until_paused(TestServer *t, TestClient *c);
/* Dispatches whatever is ready without waiting, until nothing is. */
void test_run_pending(TestServer *t);

/* One GET/HEAD/…, run to completion. */
TestClient *test_request(TestServer *t, const char *method, const char *path, ...) G_GNUC_NULL_TERMINATED;
