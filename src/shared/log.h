/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <syslog.h>

#include "util.h"

/* Logging for imgcached and imgcachectl. Under systemd (stderr is the journal stream named by
 * $JOURNAL_STREAM) records go to the journal through sd_journal_send() with structured fields
 * (PRIORITY=, CODE_FILE=, CODE_LINE=, CODE_FUNC=, ERRNO=, SYSLOG_IDENTIFIER=, and IMAGE_ID= /
 * MESSAGE_ID= where given); otherwise one line "program: message" goes to stderr.
 *
 * The _errno variants take an error (negative or positive errno), set errno to it so that %m in the
 * format names it, and return it as a negative value, so "return log_error_errno(r, "…: %m");" works. */

/* Fixed ids of the events operators may want to find in the journal (journalctl MESSAGE_ID=…). */
#define IMGCACHE_MESSAGE_IMAGE_CACHED  "6789071c983e4afb9497ee56040374dc"
#define IMGCACHE_MESSAGE_IMAGE_REMOVED "c73248f1db9f4e7693cf6f8d944eb6d2" /* deleted or pruned */
#define IMGCACHE_MESSAGE_IMAGE_INVALID "1d8072adbed44989add05ffaad6eb399"
#define IMGCACHE_MESSAGE_FETCH_FAILED  "5ad4a7512aa04894b60a46ad893bce97" /* a queued image's fetch failed for good: not retried */

/* Decides once where records go: program is the prefix on stderr and the SYSLOG_IDENTIFIER=.
 * $IMGCACHE_LOG_LEVEL (debug, info, notice, warning, err or a number) sets the maximum level. */
void log_setup(const char *program);
void log_set_max_level(int level);
int log_get_max_level(void);
/* Forces (true) or forbids (false) the journal, for tests; log_setup() detects it. */
void log_set_journal(bool journal);
/* Where records go (true: the journal), and the SYSLOG_IDENTIFIER=, for writers of their own records
 * (the access log) that must go where the rest goes. */
bool log_get_journal(void);
const char *log_get_program_name(void);

int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *format, ...) _printf_(6, 7);
/* As log_internal(), with IMAGE_ID= and (when non-NULL) MESSAGE_ID= fields. */
int log_image_internal(int level, int error, const char *file, int line, const char *func,
                       const char *image_id, const char *message_id, const char *format, ...) _printf_(8, 9);

#define log_full_errno(level, error, ...) \
        log_internal((level), (error), __FILE__, __LINE__, __func__, __VA_ARGS__)
#define log_full(level, ...) (void) log_full_errno((level), 0, __VA_ARGS__)

#define log_debug(...)   log_full(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)    log_full(LOG_INFO, __VA_ARGS__)
#define log_notice(...)  log_full(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_error(...)   log_full(LOG_ERR, __VA_ARGS__)

#define log_debug_errno(error, ...)   log_full_errno(LOG_DEBUG, (error), __VA_ARGS__)
#define log_info_errno(error, ...)    log_full_errno(LOG_INFO, (error), __VA_ARGS__)
#define log_notice_errno(error, ...)  log_full_errno(LOG_NOTICE, (error), __VA_ARGS__)
#define log_warning_errno(error, ...) log_full_errno(LOG_WARNING, (error), __VA_ARGS__)
#define log_error_errno(error, ...)   log_full_errno(LOG_ERR, (error), __VA_ARGS__)

/* An event about one image: log_image(LOG_INFO, IMGCACHE_MESSAGE_IMAGE_CACHED, id, "Cached %s", id). */
#define log_image(level, message_id, image_id, ...) \
        (void) log_image_internal((level), 0, __FILE__, __LINE__, __func__, (image_id), (message_id), __VA_ARGS__)
#define log_image_errno(level, error, message_id, image_id, ...) \
        log_image_internal((level), (error), __FILE__, __LINE__, __func__, (image_id), (message_id), __VA_ARGS__)
