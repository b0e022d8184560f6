/* SPDX-License-Identifier: MIT */
#pragma once

/* The verbs that change the cache or its queue: queue, dequeue, dequeue-all, delete, delete-all, prune,
 * clean, verify. */

#include "imgcachectl.h"

int verb_queue(int argc, char *argv[], Context *c);
int verb_dequeue(int argc, char *argv[], Context *c);
int verb_dequeue_all(int argc, char *argv[], Context *c);
int verb_delete(int argc, char *argv[], Context *c);
int verb_delete_all(int argc, char *argv[], Context *c);
int verb_prune(int argc, char *argv[], Context *c);
int verb_clean(int argc, char *argv[], Context *c);
int verb_verify(int argc, char *argv[], Context *c);
