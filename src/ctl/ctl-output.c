/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "ctl-bus.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "image-id.h"
#include "imgcachectl.h"
#include "log.h"

json_t *json_u64(uint64_t v) {
        /* JSON integers are signed 64 bit in jansson; "no limit" (UINT64_MAX) is null. */
        return v > INT64_MAX ? json_null() : json_integer((json_int_t) v);
}

static int json_print(json_t *j) {
        _cleanup_(freep) char *s = NULL;
        size_t flags = JSON_PRESERVE_ORDER;

        if (!j)
                return log_oom();

        flags |= arg_json == JSON_MODE_PRETTY ? JSON_INDENT(2) : JSON_COMPACT;
        s = json_dumps(j, flags);
        if (!s)
                return log_oom();

        puts(s);
        return 0;
}

int json_print_and_free(json_t *j) {
        int r = json_print(j);

        json_decref(j);
        return r;
}

int json_array_if_asked(json_t **ret) {
        *ret = NULL;
        if (arg_json == JSON_MODE_OFF)
                return 0;

        *ret = json_array();
        return *ret ? 0 : log_oom();
}

int validate_ids(int argc, char *argv[]) {
        int r = 0;

        for (int i = 0; i < argc; i++) {
                const char *reason = image_id_invalid_reason(argv[i]);

                if (reason) {
                        log_error("Invalid image id '%s': %s", argv[i], reason);
                        r = -EINVAL;
                }
        }
        return r;
}

int confirm(const char *format, ...) {
        _cleanup_(freep) char *question = NULL;
        va_list ap;
        bool yes;
        int r;

        if (arg_force || !isatty(STDIN_FILENO))
                return 0;

        va_start(ap, format);
        r = vasprintf(&question, format, ap);
        va_end(ap);
        if (r < 0) {
                question = NULL;
                return log_oom();
        }

        r = ask_yes_no(stdin, stdout, &yes, "%s", question);
        if (r < 0)
                return log_error_errno(r, "Failed to read the answer: %m");
        if (!yes) {
                log_error("Aborted.");
                return -ECANCELED;
        }
        return 0;
}

void open_pager(void) {
        if (arg_pager && arg_json == JSON_MODE_OFF)
                (void) pager_open();
}

int print_listing(Table *t, json_t *json, size_t n, const char *nothing, const char *noun, const char *nouns) {
        if (json)
                return json_print_and_free(json);
        if (n == 0) {
                if (arg_legend)
                        puts(nothing);
                return 0;
        }

        open_pager();
        int r = table_print(t, stdout, arg_legend);
        if (r < 0)
                return log_error_errno(r, "Failed to print the table: %m");
        if (arg_legend && noun)
                printf("\n%zu %s.\n", n, plural(n, noun, nouns));
        return 0;
}

int print_reply_listing(sd_bus_message *reply, const char *row_type, Table *t, ReadRowFunction read_row,
                        void *userdata, const char *nothing, const char *noun, const char *nouns) {
        json_t *json;
        size_t n = 0;
        int r;

        r = json_array_if_asked(&json);
        if (r < 0)
                return r;

        r = sd_bus_message_enter_container(reply, 'a', row_type);
        if (r < 0) {
                json_decref(json);
                return log_parse_error(r);
        }

        while ((r = read_row(reply, t, json, userdata)) > 0)
                n++;
        if (r < 0) {
                json_decref(json);
                return r;
        }

        return print_listing(t, json, n, nothing, noun, nouns);
}
