/* SPDX-License-Identifier: MIT */
/* access-log.[ch]: escaping of what clients send, the text line, the journal fields, the rate limit and
 * its "suppressed" summary, AccessLog=no. The daemon end to end is in tests/http/test-http-daemon.c. */

#include <arpa/inet.h>
#include <glib.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>

#include "access-log.h"
#include "log.h"

#define T_2026_12_02_15_00 ((time_t) 1796223600)

static char *escape(const char *s, size_t max, bool keep_space) {
        static char buf[ACCESS_LOG_ESCAPED_SIZE(ACCESS_LOG_PATH_MAX)];
        return access_log_escape(s, max, keep_space, buf, sizeof(buf));
}

static void test_escape(void) {
        g_assert_cmpstr(escape("/images/abc-1.2_x~", 512, false), ==, "/images/abc-1.2_x~");
        /* A line break or a quote would let a client end the line or the field and write its own. */
        g_assert_cmpstr(escape("/a\nb\rc", 512, false), ==, "/a%0Ab%0Dc");
        g_assert_cmpstr(escape("/a\" 200 999 \"x", 512, false), ==, "/a%22%20200%20999%20%22x");
        g_assert_cmpstr(escape("ua \"quoted\"", 512, true), ==, "ua %22quoted%22");
        g_assert_cmpstr(escape("\x01\x1b[31m\x7f", 512, false), ==, "%01%1B[31m%7F");
        g_assert_cmpstr(escape("/caf\xc3\xa9", 512, false), ==, "/caf%C3%A9");
        /* Our own escapes stay unambiguous, and no parser sees an escaped quote. */
        g_assert_cmpstr(escape("/100%25\\", 512, false), ==, "/100%2525%5C");
        g_assert_cmpstr(escape(NULL, 512, false), ==, "");

        /* Bounded, and a cut says so. */
        g_assert_cmpstr(escape("/abcdef", 4, false), ==, "/abc...");
        g_assert_cmpstr(escape("/abc", 4, false), ==, "/abc");
        g_autofree char *huge = g_strnfill(10000, '\n');
        const char *e = escape(huge, ACCESS_LOG_PATH_MAX, false);
        g_assert_cmpuint(strlen(e), ==, ACCESS_LOG_PATH_MAX * 3 + 3);
        g_assert_true(g_str_has_suffix(e, "%0A..."));

        /* A buffer smaller than the bound: cut at the buffer, never in the middle of an escape. */
        char small[12];
        g_assert_cmpstr(access_log_escape("\n\n\n\n\n", 100, false, small, sizeof(small)), ==, "%0A%0A...");
}

static struct sockaddr_in loopback(uint16_t port) {
        return (struct sockaddr_in) {
                .sin_family = AF_INET,
                .sin_port = htons(port),
                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
}

static void test_line(void) {
        struct sockaddr_in sa = loopback(40000);
        AccessLog l = {};
        AccessLogEntry e = {
                .method = "GET",
                .path = "/images/x",
                .version = "HTTP/1.1",
                .user_agent = "curl/7.88.1",
                .client = (struct sockaddr *) &sa,
                .image_id = "x",
                .status = 200,
                .bytes = 1234,
                .duration = 1500,
                .cache = ACCESS_LOG_CACHE_HIT,
        };
        char line[2048];

        access_log_format_line(&l, &e, T_2026_12_02_15_00, line, sizeof(line));
        g_assert_cmpstr(line, ==,
                        "127.0.0.1 - - [02/Dec/2026:15:00:00 +0000] \"GET /images/x HTTP/1.1\" 200 1234 \"-\" "
                        "\"curl/7.88.1\" 0.001 hit -\n");

        /* Through a trusted proxy: the client it names, not the proxy. */
        e.forwarded_for = "198.51.100.7";
        access_log_format_line(&l, &e, T_2026_12_02_15_00, line, sizeof(line));
        g_assert_true(g_str_has_prefix(line, "198.51.100.7 - - [02/Dec/2026:15:00:00 +0000]"));
        e.forwarded_for = NULL;

        /* A hostile client: one line still, every field where it belongs. */
        e = (AccessLogEntry) {
                .method = "GET",
                .path = "/images/x\n127.0.0.1 - - [01/Jan/2000:00:00:00 +0000] \"GET /",
                .version = "HTTP/1.0",
                .user_agent = "evil\"\r\nagent\xff",
                .status = 404,
                .bytes = 10,
                .duration = 2 * USEC_PER_SEC + 345 * USEC_PER_MSEC,
                .cache = ACCESS_LOG_CACHE_MISS,
                .from_peer = true,
                .aborted = true,
        };
        access_log_format_line(&l, &e, T_2026_12_02_15_00 + 3600, line, sizeof(line));
        g_assert_cmpstr(line, ==,
                        "- - - [02/Dec/2026:16:00:00 +0000] \"GET /images/x%0A127.0.0.1%20-%20-%20[01/Jan/2000:00:00:00"
                        "%20+0000]%20%22GET%20/ HTTP/1.0\" 404 10 \"-\" \"evil%22%0D%0Aagent%FF\" 2.345 miss peer,aborted\n");
        g_assert_true(strchr(line, '\n') == line + strlen(line) - 1);

        /* No lookup, no User-Agent, no response: dashes, nginx's 499 is the caller's to choose. */
        e = (AccessLogEntry) { .method = "DELETE", .path = "/v2/cache", .status = 499, .aborted = true };
        access_log_format_line(&l, &e, T_2026_12_02_15_00, line, sizeof(line));
        g_assert_cmpstr(line, ==, "- - - [02/Dec/2026:15:00:00 +0000] \"DELETE /v2/cache -\" 499 0 \"-\" \"-\" 0.000 - aborted\n");
}

static const char *field(const AccessLogFields *f, const char *name) {
        size_t n = strlen(name);

        for (size_t i = 0; i < f->n; i++) {
                const char *p = f->iov[i].iov_base;
                g_assert_cmpuint(strlen(p), ==, f->iov[i].iov_len);  /* NUL-terminated at the length */
                if (f->iov[i].iov_len > n && strncmp(p, name, n) == 0 && p[n] == '=')
                        return p + n + 1;
        }
        return NULL;
}

static void test_fields(void) {
        struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6, .sin6_port = htons(5555), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
        AccessLogEntry e = {
                .method = "GET",
                .path = "/v2/images/img-1/file",
                .version = "HTTP/1.1",
                .user_agent = "Glance\nX: y",
                .client = (struct sockaddr *) &sa6,
                .image_id = "img-1",
                .status = 206,
                .bytes = 100,
                .duration = 1234,
                .cache = ACCESS_LOG_CACHE_MISS,
                .from_peer = true,
        };
        AccessLogFields f;

        log_setup("test-access-log");
        access_log_format_fields(&e, &f);
        g_assert_cmpstr(field(&f, "MESSAGE"), ==, "GET /v2/images/img-1/file 206 100 bytes 1.2 ms miss peer ::1");
        g_assert_cmpstr(field(&f, "MESSAGE_ID"), ==, IMGCACHE_MESSAGE_ACCESS);
        g_assert_cmpstr(field(&f, "PRIORITY"), ==, "6");
        g_assert_cmpstr(field(&f, "SYSLOG_IDENTIFIER"), ==, "test-access-log");
        g_assert_cmpstr(field(&f, "IMGCACHE_HTTP_METHOD"), ==, "GET");
        g_assert_cmpstr(field(&f, "IMGCACHE_HTTP_PATH"), ==, "/v2/images/img-1/file");
        g_assert_cmpstr(field(&f, "IMGCACHE_HTTP_STATUS"), ==, "206");
        g_assert_cmpstr(field(&f, "IMGCACHE_HTTP_BYTES"), ==, "100");
        g_assert_cmpstr(field(&f, "IMGCACHE_HTTP_DURATION_USEC"), ==, "1234");
        g_assert_cmpstr(field(&f, "IMGCACHE_CACHE"), ==, "miss");
        g_assert_cmpstr(field(&f, "IMGCACHE_PEER"), ==, "1");
        g_assert_cmpstr(field(&f, "IMGCACHE_CLIENT_ADDRESS"), ==, "::1");
        g_assert_cmpstr(field(&f, "IMGCACHE_CLIENT_PORT"), ==, "5555");
        g_assert_cmpstr(field(&f, "IMGCACHE_IMAGE_ID"), ==, "img-1");
        g_assert_cmpstr(field(&f, "IMGCACHE_HTTP_USER_AGENT"), ==, "Glance%0AX: y");
        g_assert_null(field(&f, "IMGCACHE_HTTP_ABORTED"));
        g_assert_null(field(&f, "X"));

        /* Optional fields are absent, not empty. */
        e = (AccessLogEntry) { .method = "GET", .path = "/metrics", .status = 200, .aborted = true };
        access_log_format_fields(&e, &f);
        g_assert_cmpstr(field(&f, "MESSAGE"), ==, "GET /metrics 200 0 bytes 0.0 ms aborted -");
        g_assert_cmpstr(field(&f, "IMGCACHE_CACHE"), ==, "none");
        g_assert_cmpstr(field(&f, "IMGCACHE_CLIENT_ADDRESS"), ==, "-");
        g_assert_cmpstr(field(&f, "IMGCACHE_HTTP_ABORTED"), ==, "1");
        g_assert_null(field(&f, "IMGCACHE_PEER"));
        g_assert_null(field(&f, "IMGCACHE_IMAGE_ID"));
        g_assert_null(field(&f, "IMGCACHE_HTTP_USER_AGENT"));
        g_assert_null(field(&f, "IMGCACHE_CLIENT_PORT"));

        /* The largest entry still fits whole: no field is dropped for room. */
        g_autofree char *path = g_strnfill(5000, '"'), *ua = g_strnfill(5000, '\x01');
        e = (AccessLogEntry) { .method = path, .path = path, .user_agent = ua, .image_id = path, .status = 200 };
        access_log_format_fields(&e, &f);
        g_assert_nonnull(field(&f, "IMGCACHE_HTTP_USER_AGENT"));
        g_assert_nonnull(field(&f, "IMGCACHE_IMAGE_ID"));
        g_assert_cmpuint(strlen(field(&f, "IMGCACHE_HTTP_PATH")), ==, ACCESS_LOG_PATH_MAX * 3 + 3);
}

/* A log writing its text form to memory, as the daemon would to stderr. */
typedef struct Memory {
        AccessLog log;
        char *text;
        size_t size;
        size_t taken;   /* of text, by memory_take() */
} Memory;

static void memory_open(Memory *m, bool enabled, unsigned burst) {
        Config c;

        *m = (Memory) {};
        g_assert_cmpint(config_init(&c), ==, 0);
        c.access_log = enabled;
        c.access_log_burst = burst;
        log_set_journal(false);
        access_log_configure(&m->log, &c);
        config_done(&c);
        m->log.stream = open_memstream(&m->text, &m->size);
        g_assert_nonnull(m->log.stream);
}

static char *memory_take(Memory *m) {
        fflush(m->log.stream);
        char *t = g_strdup(m->text + m->taken);
        m->taken = m->size;
        return t;
}

static void memory_close(Memory *m) {
        fclose(m->log.stream);
        free(m->text);
}

static guint count_lines(const char *s, const char *needle) {
        guint n = 0;
        for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

static void test_rate_limit(void) {
        AccessLogEntry e = { .method = "GET", .path = "/images/x", .version = "HTTP/1.1", .status = 200 };
        usec_t t0 = 1000 * USEC_PER_SEC;
        g_autofree char *a = NULL, *b = NULL, *c = NULL, *d = NULL;
        Memory m;

        log_setup("test-access-log");
        memory_open(&m, true, 3);
        g_assert_cmpuint(m.log.interval, ==, USEC_PER_SEC);

        for (int i = 0; i < 10; i++)
                access_log_write(&m.log, &e, t0 + (usec_t) i * 1000);
        a = memory_take(&m);
        g_assert_cmpuint(count_lines(a, "\"GET /images/x HTTP/1.1\" 200"), ==, 3);
        g_assert_null(strstr(a, "suppressed"));
        g_assert_cmpuint(m.log.suppressed, ==, 7);

        /* The next interval: the gap is told first, once, then entries go on. */
        access_log_write(&m.log, &e, t0 + USEC_PER_SEC);
        access_log_write(&m.log, &e, t0 + USEC_PER_SEC + 1);
        b = memory_take(&m);
        g_assert_true(g_str_has_prefix(b, "test-access-log: 7 access log entries suppressed\n"));
        g_assert_cmpuint(count_lines(b, "suppressed"), ==, 1);
        g_assert_cmpuint(count_lines(b, "\"GET /images/x HTTP/1.1\" 200"), ==, 2);

        /* At shutdown no entry follows to tell it: the flush does; with nothing left out it is quiet. */
        for (int i = 0; i < 5; i++)
                access_log_write(&m.log, &e, t0 + USEC_PER_SEC + 2);
        access_log_flush(&m.log);
        c = memory_take(&m);
        g_assert_cmpuint(count_lines(c, "\"GET /images/x HTTP/1.1\" 200"), ==, 1);
        g_assert_true(g_str_has_suffix(c, "test-access-log: 4 access log entries suppressed\n"));
        access_log_flush(&m.log);
        d = memory_take(&m);
        g_assert_cmpstr(d, ==, "");
        memory_close(&m);
}

static void test_disabled(void) {
        AccessLogEntry e = { .method = "GET", .path = "/images/x", .status = 200 };
        g_autofree char *a = NULL;
        Memory m;

        memory_open(&m, false, 1000);
        g_assert_false(access_log_enabled(&m.log));
        for (int i = 0; i < 2000; i++)
                access_log_write(&m.log, &e, (usec_t) i);
        access_log_flush(&m.log);
        a = memory_take(&m);
        g_assert_cmpstr(a, ==, "");
        g_assert_cmpuint(m.log.suppressed, ==, 0);
        memory_close(&m);
}

static void test_strings(void) {
        g_assert_cmpstr(access_log_cache_to_string(ACCESS_LOG_CACHE_NONE), ==, "none");
        g_assert_cmpstr(access_log_cache_to_string(ACCESS_LOG_CACHE_HIT), ==, "hit");
        g_assert_cmpstr(access_log_cache_to_string(ACCESS_LOG_CACHE_MISS), ==, "miss");
        g_assert_null(access_log_cache_to_string(_ACCESS_LOG_CACHE_MAX));
        g_assert_null(access_log_cache_to_string(_ACCESS_LOG_CACHE_INVALID));
        /* A 128-bit id, as journalctl MESSAGE_ID= wants it. */
        g_assert_cmpuint(strlen(IMGCACHE_MESSAGE_ACCESS), ==, 32);
        g_assert_cmpuint(strspn(IMGCACHE_MESSAGE_ACCESS, "0123456789abcdef"), ==, 32);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/access-log/escape", test_escape);
        g_test_add_func("/access-log/line", test_line);
        g_test_add_func("/access-log/fields", test_fields);
        g_test_add_func("/access-log/rate-limit", test_rate_limit);
        g_test_add_func("/access-log/disabled", test_disabled);
        g_test_add_func("/access-log/strings", test_strings);

        return g_test_run();
}
