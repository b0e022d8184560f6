/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

/* One blocking job on a thread of its own, completed on the event loop: sealing a fill (fsync, rename),
 * rehashing a partial file before a resume, verifying a cached image. run() may only touch what its
 * caller handed over for the duration (see store.h for what is safe off the loop); done() runs on the
 * loop, where everything else lives, and the Worker is freed when it returns. */

typedef struct Worker Worker;
typedef int (*WorkerRun)(void *userdata);
typedef void (*WorkerDone)(int result, void *userdata);

int worker_start(sd_event *event, const char *name, WorkerRun run, WorkerDone done, void *userdata, Worker **ret);
/* Waits for run() to return, then calls done() right here, as the loop would have (at shutdown). */
void worker_complete(Worker *w);
/* Waits for run() to return and frees w without calling done(). Returns NULL. */
Worker *worker_abandon(Worker *w);
