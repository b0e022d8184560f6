/* SPDX-License-Identifier: MIT */
#pragma once

/* How imgcachectl's verbs talk to the user, the same way in every verb: JSON per --json=, tables through
 * the pager, the "N things." footer, the [y/N] question before destructive calls, and the check of image
 * ids before anything is sent. */

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <systemd/sd-bus.h>

#include "table.h"
#include "util.h"

/* An unsigned JSON number; null for what does not fit jansson's signed 64 bit ("no limit" = UINT64_MAX). */
json_t *json_u64(uint64_t v);

/* Prints j per --json= and frees it; NULL counts as out of memory. */
int json_print_and_free(json_t *j);

/* *ret = a new JSON array with --json, NULL without. 0, or -ENOMEM (logged). */
int json_array_if_asked(json_t **ret);

/* Logs every invalid id and returns -EINVAL if there was one: nothing is sent then. */
int validate_ids(int argc, char *argv[]);

/* Asks before destructive operations: only on a terminal and unless --force. 0 to go on, -ECANCELED when
 * the answer was no. */
int confirm(const char *format, ...) _printf_(1, 2);


/* Starts the pager unless --no-pager or JSON output. */
void open_pager(void);

/* The end every listing verb shares: JSON when asked for, one line when there is nothing, else the
 * table through the pager, then "N things." unless the caller prints a footer of its own (noun NULL).
 * Consumes json. */
int print_listing(Table *t, json_t *json, size_t n, const char *nothing, const char *noun, const char *nouns);

/* Reads one row of an array reply and adds it to json (with --json) or to t. Returns 1 after a row, 0 at
 * the end of the array, or a negative errno it has logged. */
typedef int (*ReadRowFunction)(sd_bus_message *reply, Table *t, json_t *json, void *userdata);

/* The listings made row by row from an array reply of row_type ("(st)", …), ending in print_listing(). */
int print_reply_listing(sd_bus_message *reply, const char *row_type, Table *t, ReadRowFunction read_row,
                        void *userdata, const char *nothing, const char *noun, const char *nouns);
