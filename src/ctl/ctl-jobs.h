/* SPDX-License-Identifier: MIT */
#pragma once

/* The transfer verbs: fetch and prefetch (start jobs and follow them, see ctl-watch.h), jobs, cancel. */

#include "imgcachectl.h"

int verb_fetch(int argc, char *argv[], Context *c);
int verb_prefetch(int argc, char *argv[], Context *c);
int verb_jobs(int argc, char *argv[], Context *c);
int verb_cancel(int argc, char *argv[], Context *c);
