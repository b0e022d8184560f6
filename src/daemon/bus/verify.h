/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-bus.h>

#include "manager.h"

/* Verify(id) without blocking the loop: the file is opened on the loop (image_cache_verify_begin), hashed
 * on a worker thread (checksum_fd), and the verdict applied and the call answered back on the loop
 * (image_cache_verify_end) when the worker signals its eventfd. */

/* The worker's step: hashes all of fd with algo. A test runs image_cache_verify_begin(), this and
 * image_cache_verify_end() in a row, which is the job without its thread and its reply. */
int verify_hash(int fd, ChecksumAlgo algo, Checksum *ret);
/* Starts the job for message; the caller returns 1 and the job replies. */
int verify_job_start(Manager *m, sd_bus_message *message, const char *id, sd_bus_error *error);
/* Waits for the worker and frees the job without replying (shutdown). Returns NULL. */
VerifyJob *verify_job_free(VerifyJob *j);
