/* SPDX-License-Identifier: MIT */
#pragma once

/* The parts of imgcachectl that need no bus: formatting of times, checksums and progress bars, the
 * access-denied hint, the [y/N] prompt, the pager and the polkit agent. Kept apart so the unit tests can
 * drive them directly. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <systemd/sd-bus.h>

#include "util.h"

/* "…" in a UTF-8 locale, else "...". */
const char *ellipsis(void);

/* "3h ago", "12min ago", "just now", "in 5min" (clock skew), "never" for 0. */
#define FORMAT_RELATIVE_MAX 32
char *format_timestamp_relative(char *buf, size_t n, usec_t t, usec_t now);

/* "Tue 2026-11-24 10:03:12 UTC" in local time, "n/a" for 0. */
#define FORMAT_TIMESTAMP_MAX 64
char *format_timestamp(char *buf, size_t n, usec_t t);

/* "sha256:3a7bd3e2360a…" (algorithm and the first 12 hex digits, then ellipsis()), "-" for "". */
#define SHORT_CHECKSUM_MAX 64
char *shorten_checksum(char *buf, size_t n, const char *checksum);

/* "42.5%" of a ratio given as part/whole; "-" when whole is 0. */
#define FORMAT_PERCENT_MAX 16
char *format_percent(char *buf, size_t n, uint64_t part, uint64_t whole);

/* The polkit action guarding a Manager method, or NULL for calls anyone may make. */
const char *polkit_action_for_method(const char *member);

/* True for the errors a refused call gets: AccessDenied and InteractiveAuthorizationRequired. */
bool bus_error_is_access_denied(const sd_bus_error *e);

/* For a refused call, a sentence telling the user how to get access; *ret = NULL otherwise.
 * Returns 0 or -ENOMEM. */
int access_denied_hint(const sd_bus_error *e, const char *member, bool ask_password, bool user_bus, char **ret);

/* The whole error line for a failed call: "<what>: <message>[. <hint>]", without "Failed to". */
int format_call_error(const char *what, const sd_bus_error *e, int r, const char *member, bool ask_password,
                      bool user_bus, char **ret);

/* The job id from a job object path "/org/imgcache/job/<n>", or -EINVAL. */
int job_id_from_path(const char *path, uint32_t *ret);

/* One line: "<label> [#####-----]  45%  540M/1.2G  12.3M/s  ETA 55s", fitted into width columns; the bar
 * is left out when total is unknown (0) or the line would be too narrow. rate in bytes per second, < 0
 * when not known yet. */
char *format_progress_line(char *buf, size_t n, const char *label, uint64_t done, uint64_t total, double rate,
                           unsigned width);

/* Columns of the terminal on fd, or fallback. */
unsigned terminal_columns(int fd, unsigned fallback);

/* Writes the question and " [y/N] " to out and reads one line from in: true for "y" or "yes" (any case),
 * false for anything else including EOF. */
int ask_yes_no(FILE *in, FILE *out, bool *ret, const char *format, ...) _printf_(4, 5);

/* Pipes stdout through $IMGCACHECTL_PAGER, $PAGER, less or more when stdout is a terminal. Returns 0 when
 * no pager was started, 1 when one was. pager_close() flushes and waits for it. */
int pager_open(void);
void pager_close(void);

/* Starts pkttyagent on the controlling terminal, so polkit can ask for a password; does nothing when stdin
 * is no terminal or pkttyagent is missing. polkit_agent_close() stops it (by pid). */
int polkit_agent_open(void);
void polkit_agent_close(void);
