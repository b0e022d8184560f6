/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* A small text table: a header row and cells added row by row, columns sized to their widest cell (counted
 * in UTF-8 characters), separated by two spaces, the last column not padded. Cells are copied. */

typedef enum TableAlign {
        TABLE_ALIGN_LEFT,
        TABLE_ALIGN_RIGHT,
        _TABLE_ALIGN_MAX,
        _TABLE_ALIGN_INVALID = -1,
} TableAlign;

typedef struct Table Table;

/* Headers are given as a NULL-terminated list; at least one column. */
int table_new(Table **ret, const char *header, ...);
Table *table_free(Table *t);

static inline void table_freep(Table **t) {
        table_free(*t);
}

int table_set_align(Table *t, size_t column, TableAlign align);

/* Appends one cell; rows fill from left to right. NULL is shown as "-". */
int table_add_cell(Table *t, const char *s);
/* Appends one cell formatted with printf(). */
int table_add_cellf(Table *t, const char *format, ...) __attribute__((format(printf, 2, 3)));

size_t table_get_rows(const Table *t);  /* data rows, without the header */
size_t table_get_columns(const Table *t);

/* Returns the cell's text, or NULL out of range. */
const char *table_get_cell(const Table *t, size_t row, size_t column);

/* Writes the table; with header=false, only the data rows. A row left incomplete is padded with "-". */
int table_print(const Table *t, FILE *f, bool header);

/* Number of characters (not bytes) in a UTF-8 string. */
size_t utf8_width(const char *s);
