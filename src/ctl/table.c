/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "table.h"
#include "util.h"

#define TABLE_COLUMNS_MAX 32

struct Table {
        size_t n_columns;
        char **cells;           /* header first, then data, row-major */
        size_t n_cells;
        size_t n_allocated;
        TableAlign align[TABLE_COLUMNS_MAX];
};

size_t utf8_width(const char *s) {
        size_t n = 0;

        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                if ((*p & 0xC0) != 0x80) /* count every byte but continuation bytes */
                        n++;
        return n;
}

static int table_append(Table *t, char *s) {
        if (t->n_cells >= t->n_allocated) {
                size_t k = MAX(t->n_allocated * 2, (size_t) 16);
                char **c = reallocarray(t->cells, k, sizeof(char *));
                if (!c)
                        return -ENOMEM;
                t->cells = c;
                t->n_allocated = k;
        }
        t->cells[t->n_cells++] = s;
        return 0;
}

int table_new(Table **ret, const char *header, ...) {
        _cleanup_(table_freep) Table *t = NULL;
        va_list ap;
        int r = 0;

        if (!ret || !header)
                return -EINVAL;

        t = calloc(1, sizeof(Table));
        if (!t)
                return -ENOMEM;

        va_start(ap, header);
        for (const char *h = header; h; h = va_arg(ap, const char *)) {
                char *copy;

                if (t->n_columns >= TABLE_COLUMNS_MAX) {
                        r = -E2BIG;
                        break;
                }
                copy = strdup(h);
                if (!copy) {
                        r = -ENOMEM;
                        break;
                }
                r = table_append(t, copy);
                if (r < 0) {
                        free(copy);
                        break;
                }
                t->n_columns++;
        }
        va_end(ap);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(t);
        return 0;
}

Table *table_free(Table *t) {
        if (!t)
                return NULL;

        for (size_t i = 0; i < t->n_cells; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t);
        return NULL;
}

int table_set_align(Table *t, size_t column, TableAlign align) {
        if (!t || column >= t->n_columns || align < 0 || align >= _TABLE_ALIGN_MAX)
                return -EINVAL;

        t->align[column] = align;
        return 0;
}

int table_add_cell(Table *t, const char *s) {
        char *copy;
        int r;

        if (!t)
                return -EINVAL;

        copy = strdup(s ?: "-");
        if (!copy)
                return -ENOMEM;

        r = table_append(t, copy);
        if (r < 0)
                free(copy);
        return r;
}

int table_add_cellf(Table *t, const char *format, ...) {
        char *s = NULL;
        va_list ap;
        int r;

        if (!t || !format)
                return -EINVAL;

        va_start(ap, format);
        r = vasprintf(&s, format, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;

        r = table_append(t, s);
        if (r < 0)
                free(s);
        return r;
}

size_t table_get_columns(const Table *t) {
        return t ? t->n_columns : 0;
}

size_t table_get_rows(const Table *t) {
        if (!t)
                return 0;
        /* An incomplete last row counts as a row. */
        return (t->n_cells - t->n_columns + t->n_columns - 1) / t->n_columns;
}

const char *table_get_cell(const Table *t, size_t row, size_t column) {
        size_t i;

        if (!t || column >= t->n_columns)
                return NULL;

        i = (row + 1) * t->n_columns + column;
        return i < t->n_cells ? t->cells[i] : NULL;
}

static const char *table_cell_or_dash(const Table *t, size_t i) {
        return i < t->n_cells ? t->cells[i] : "-";
}

int table_print(const Table *t, FILE *f, bool header) {
        size_t width[TABLE_COLUMNS_MAX] = {};
        size_t n_rows;

        if (!t || !f)
                return -EINVAL;

        n_rows = table_get_rows(t) + 1;

        for (size_t row = header ? 0 : 1; row < n_rows; row++)
                for (size_t c = 0; c < t->n_columns; c++)
                        width[c] = MAX(width[c], utf8_width(table_cell_or_dash(t, row * t->n_columns + c)));

        for (size_t row = header ? 0 : 1; row < n_rows; row++) {
                for (size_t c = 0; c < t->n_columns; c++) {
                        const char *s = table_cell_or_dash(t, row * t->n_columns + c);
                        size_t pad = width[c] - utf8_width(s);
                        bool last = c + 1 == t->n_columns;

                        if (c > 0)
                                fputs("  ", f);
                        if (t->align[c] == TABLE_ALIGN_RIGHT)
                                fprintf(f, "%*s", (int) pad, "");
                        fputs(s, f);
                        if (t->align[c] == TABLE_ALIGN_LEFT && !last)
                                fprintf(f, "%*s", (int) pad, "");
                }
                fputc('\n', f);
        }

        return ferror(f) ? -EIO : 0;
}
