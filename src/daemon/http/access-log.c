/* SPDX-License-Identifier: MIT */
/* The access log (access-log.h): formats a finished request once, for the journal or for stderr. It runs
 * on the hit path, so it allocates nothing: every string is built in buffers on the stack. */

#include <arpa/inet.h>
#include <assert.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <string.h>

/* CODE_FILE= and friends would name this file in every entry: nothing an operator looks for. */
#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include <systemd/sd-journal.h>

#include "access-log.h"
#include "image-id.h"
#include "log.h"

static const char *const cache_names[_ACCESS_LOG_CACHE_MAX] = {
        [ACCESS_LOG_CACHE_NONE] = "none",
        [ACCESS_LOG_CACHE_HIT] = "hit",
        [ACCESS_LOG_CACHE_MISS] = "miss",
        [ACCESS_LOG_CACHE_PASS] = "pass",
};

const char *access_log_cache_to_string(AccessLogCache c) {
        if (c < 0 || c >= _ACCESS_LOG_CACHE_MAX)
                return NULL;
        return cache_names[c];
}

void access_log_configure(AccessLog *l, const Config *c) {
        l->enabled = c->access_log;
        l->burst = c->access_log_burst;
        l->interval = c->access_log_interval;
        l->journal = log_get_journal();
}

/* ---- escaping ----------------------------------------------------------------------------------- */

static bool needs_escape(unsigned char ch, bool keep_space) {
        if (ch == ' ')
                return !keep_space;
        /* '%' so that an escape in the log always means one; '\\' and '"' so that no parser of the
         * quoted fields sees a quote end early or an escape of ours it would undo. */
        return ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '%' || ch == '\\';
}

char *access_log_escape(const char *s, size_t max, bool keep_space, char *buf, size_t size) {
        static const char hex[] = "0123456789ABCDEF";
        size_t i, o = 0;

        assert(size >= sizeof("..."));

        if (!s)
                s = "";
        for (i = 0; s[i] && i < max; i++) {
                unsigned char ch = (unsigned char) s[i];

                if (needs_escape(ch, keep_space)) {
                        if (o + 3 > size - sizeof("..."))
                                break;
                        buf[o++] = '%';
                        buf[o++] = hex[ch >> 4];
                        buf[o++] = hex[ch & 0xf];
                } else {
                        if (o + 1 > size - sizeof("..."))
                                break;
                        buf[o++] = (char) ch;
                }
        }
        if (s[i]) {
                memcpy(buf + o, "...", 3);
                o += 3;
        }
        buf[o] = 0;
        return buf;
}

/* ---- the pieces both forms share ---------------------------------------------------------------- */

typedef struct EntryText {
        char method[ACCESS_LOG_ESCAPED_SIZE(ACCESS_LOG_METHOD_MAX)];
        char path[ACCESS_LOG_ESCAPED_SIZE(ACCESS_LOG_PATH_MAX)];
        char address[INET6_ADDRSTRLEN];
        unsigned port;          /* 0: none */
} EntryText;

static void format_address(const struct sockaddr *sa, char *buf, size_t size, unsigned *ret_port) {
        *ret_port = 0;
        if (sa && sa->sa_family == AF_INET) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                if (inet_ntop(AF_INET, &in->sin_addr, buf, size)) {
                        *ret_port = ntohs(in->sin_port);
                        return;
                }
        } else if (sa && sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                if (inet_ntop(AF_INET6, &in6->sin6_addr, buf, size)) {
                        *ret_port = ntohs(in6->sin6_port);
                        return;
                }
        }
        (void) snprintf(buf, size, "-");
}

static void entry_text(const AccessLogEntry *e, EntryText *t) {
        access_log_escape(e->method ?: "-", ACCESS_LOG_METHOD_MAX, false, t->method, sizeof(t->method));
        access_log_escape(e->path ?: "-", ACCESS_LOG_PATH_MAX, false, t->path, sizeof(t->path));
        if (e->forwarded_for) {
                (void) snprintf(t->address, sizeof(t->address), "%s", e->forwarded_for);
                t->port = 0;
        } else
                format_address(e->client, t->address, sizeof(t->address), &t->port);
}

static const char *entry_flags(const AccessLogEntry *e) {
        if (e->from_peer && e->aborted)
                return "peer,aborted";
        if (e->from_peer)
                return "peer";
        if (e->aborted)
                return "aborted";
        return "-";
}

/* ---- the text form ------------------------------------------------------------------------------ */

/* One gmtime_r() and strftime() per second, not per line. */
static const char *format_stamp(AccessLog *l, time_t t) {
        struct tm tm;

        if (t == l->stamp_sec && l->stamp[0])
                return l->stamp;
        if (!gmtime_r(&t, &tm) || strftime(l->stamp, sizeof(l->stamp), "%d/%b/%Y:%H:%M:%S +0000", &tm) == 0)
                (void) snprintf(l->stamp, sizeof(l->stamp), "-");
        l->stamp_sec = t;
        return l->stamp;
}

void access_log_format_line(AccessLog *l, const AccessLogEntry *e, time_t t, char *buf, size_t size) {
        char version[ACCESS_LOG_ESCAPED_SIZE(16)], ua[ACCESS_LOG_ESCAPED_SIZE(ACCESS_LOG_USER_AGENT_MAX)];
        const char *cache = e->cache == ACCESS_LOG_CACHE_NONE ? "-" : access_log_cache_to_string(e->cache);
        EntryText text;

        entry_text(e, &text);
        access_log_escape(e->version ?: "-", 16, false, version, sizeof(version));
        if (e->user_agent)
                access_log_escape(e->user_agent, ACCESS_LOG_USER_AGENT_MAX, true, ua, sizeof(ua));
        else
                strcpy(ua, "-");

        /* The Referer is left out on purpose: it is a URL with its query, which may hold a token. */
        (void) snprintf(buf, size, "%s - - [%s] \"%s %s %s\" %u %" PRIu64 " \"-\" \"%s\" %" PRIu64 ".%03" PRIu64 " %s %s\n",
                        text.address, format_stamp(l, t), text.method, text.path, version, e->status, e->bytes, ua,
                        e->duration / USEC_PER_SEC, e->duration % USEC_PER_SEC / USEC_PER_MSEC, cache,
                        entry_flags(e));
}

/* ---- the journal form --------------------------------------------------------------------------- */

static void field_add(AccessLogFields *f, const char *format, ...) _printf_(2, 3);
static void field_add(AccessLogFields *f, const char *format, ...) {
        va_list ap;
        int k;

        if (f->n >= ELEMENTSOF(f->iov) || f->used >= sizeof(f->buf))
                return;
        va_start(ap, format);
        k = vsnprintf(f->buf + f->used, sizeof(f->buf) - f->used, format, ap);
        va_end(ap);
        /* Cut fields are left out: the bounds above make it one that cannot happen. */
        if (k < 0 || (size_t) k >= sizeof(f->buf) - f->used)
                return;
        f->iov[f->n++] = (struct iovec) { f->buf + f->used, (size_t) k };
        f->used += (size_t) k + 1;
}

void access_log_format_fields(const AccessLogEntry *e, AccessLogFields *f) {
        char ua[ACCESS_LOG_ESCAPED_SIZE(ACCESS_LOG_USER_AGENT_MAX)], id[ACCESS_LOG_ESCAPED_SIZE(IMAGE_ID_MAX + 2)];
        EntryText text;

        f->n = f->used = 0;
        entry_text(e, &text);

        field_add(f, "MESSAGE=%s %s %u %" PRIu64 " bytes %" PRIu64 ".%" PRIu64 " ms%s%s%s%s %s", text.method,
                  text.path, e->status, e->bytes, e->duration / USEC_PER_MSEC, e->duration % USEC_PER_MSEC / 100,
                  e->cache == ACCESS_LOG_CACHE_NONE ? "" : " ", e->cache == ACCESS_LOG_CACHE_NONE ? "" : access_log_cache_to_string(e->cache),
                  e->from_peer ? " peer" : "", e->aborted ? " aborted" : "", text.address);
        field_add(f, "MESSAGE_ID=%s", IMGCACHE_MESSAGE_ACCESS);
        field_add(f, "PRIORITY=%i", LOG_INFO);
        field_add(f, "SYSLOG_IDENTIFIER=%s", log_get_program_name());
        field_add(f, "IMGCACHE_HTTP_METHOD=%s", text.method);
        field_add(f, "IMGCACHE_HTTP_PATH=%s", text.path);
        field_add(f, "IMGCACHE_HTTP_STATUS=%u", e->status);
        field_add(f, "IMGCACHE_HTTP_BYTES=%" PRIu64, e->bytes);
        field_add(f, "IMGCACHE_HTTP_DURATION_USEC=%" PRIu64, e->duration);
        field_add(f, "IMGCACHE_CACHE=%s", access_log_cache_to_string(e->cache) ?: "none");
        field_add(f, "IMGCACHE_CLIENT_ADDRESS=%s", text.address);
        if (text.port > 0)
                field_add(f, "IMGCACHE_CLIENT_PORT=%u", text.port);
        if (e->from_peer)
                field_add(f, "IMGCACHE_PEER=1");
        if (e->aborted)
                field_add(f, "IMGCACHE_HTTP_ABORTED=1");
        if (e->image_id)
                field_add(f, "IMGCACHE_IMAGE_ID=%s", access_log_escape(e->image_id, IMAGE_ID_MAX + 1, false, id, sizeof(id)));
        if (e->user_agent)
                field_add(f, "IMGCACHE_HTTP_USER_AGENT=%s",
                          access_log_escape(e->user_agent, ACCESS_LOG_USER_AGENT_MAX, true, ua, sizeof(ua)));
}

/* ---- writing ------------------------------------------------------------------------------------ */

static void write_suppressed(AccessLog *l) {
        uint64_t n = l->suppressed;

        if (n == 0)
                return;
        l->suppressed = 0;
        if (l->journal)
                (void) sd_journal_send("MESSAGE=%" PRIu64 " access log entries suppressed", n,
                                       "PRIORITY=%i", LOG_NOTICE,
                                       "SYSLOG_IDENTIFIER=%s", log_get_program_name(),
                                       "IMGCACHE_ACCESS_LOG_SUPPRESSED=%" PRIu64, n,
                                       NULL);
        else
                (void) fprintf(l->stream ?: stderr, "%s: %" PRIu64 " access log entries suppressed\n",
                               log_get_program_name(), n);
}

/* A fixed window: at most burst entries from window_start on, for interval. One comparison and one
 * increment per request, also when it says no. */
static bool rate_limit_admit(AccessLog *l, usec_t now) {
        if (now - l->window_start >= l->interval || now < l->window_start) {
                l->window_start = now;
                l->in_window = 0;
        }
        if (l->in_window >= l->burst) {
                l->suppressed++;
                return false;
        }
        l->in_window++;
        return true;
}

void access_log_write(AccessLog *l, const AccessLogEntry *e, usec_t now) {
        if (!l->enabled || !rate_limit_admit(l, now))
                return;

        write_suppressed(l);
        if (l->journal) {
                AccessLogFields f;

                access_log_format_fields(e, &f);
                (void) sd_journal_sendv(f.iov, (int) f.n);
        } else {
                char line[ACCESS_LOG_ESCAPED_SIZE(ACCESS_LOG_PATH_MAX) + ACCESS_LOG_ESCAPED_SIZE(ACCESS_LOG_USER_AGENT_MAX) + 512];
                struct timespec ts;

                (void) clock_gettime(CLOCK_REALTIME, &ts);
                access_log_format_line(l, e, ts.tv_sec, line, sizeof(line));
                /* One write per line: stderr is unbuffered, and lines from elsewhere must not split it. */
                (void) fputs(line, l->stream ?: stderr);
        }
}

void access_log_flush(AccessLog *l) {
        write_suppressed(l);
}
