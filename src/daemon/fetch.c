/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <glib.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>

#include "curl-loop.h"
#include "fetch.h"
#include "fill-writer.h"
#include "image-id.h"
#include "imgcache-config.h"
#include "log.h"
#include "upstream.h"

/* How a fill moves:
 *
 *   fetcher_fill ─→ PENDING ─(slot)─→ CONNECTING ─(headers accepted)─→ RECEIVING ─(body complete)─→ SEALING
 *                                      │  Glance: the record first, then the data                     │ worker thread:
 *                                      │  3xx: next request (same fill)                               │ verify, fsync, rename
 *                                      ↓                                                              ↓
 *                                    FAILED / CANCELLED  ←──────────── errors ───────────── DONE (commit on the loop)
 *
 * All curl calls happen on the event loop, never from inside a curl callback: the IO and timer handlers
 * call curl_multi_socket_action() and then drain curl_multi_info_read(). Curl callbacks (header, write)
 * only record what they saw and append bytes to the store's write; an error found there is kept in the
 * fill and returned to curl as a short write, and the fill is finished when the transfer's completion is
 * drained. Listeners are called from a defer source, so nothing the API does calls back synchronously.
 *
 * What happens to the partial file when a fill ends early:
 *   network trouble (reset, timeout, 5xx mid-body), cancel, shutdown → kept in incomplete/ with the
 *       upstream's ETag, so the next fill resumes with Range + If-Range (a crash leaves it there too);
 *   the digest or the length is wrong → invalid/ (Clean removes it), it must not be resumed;
 *   no space, too large → removed: it only takes space the cache needs. */

#define FETCH_MAX_REDIRECTS 10
#define FETCH_BUFFER_SIZE (512L * 1024L)
/* Bytes one fill may take in one turn of the event loop. curl reads for as long as the socket has data,
 * and a fast upstream always has data: without a budget one transfer would keep the loop for hundreds
 * of milliseconds, holding up every HTTP client and D-Bus call meanwhile. */
#define FETCH_TURN_BUDGET (1024UL * 1024UL)
#define FETCH_ETAG_XATTR "user.imgcache.etag"
#define FETCH_ETAG_MAX 1024

typedef enum FillPhase {
        PHASE_RECORD,  /* Glance: GET {URL}/v2/images/<id> */
        PHASE_IMAGE,
} FillPhase;

typedef enum AcceptResult {
        ACCEPT_BODY,    /* write the body */
        ACCEPT_SKIP,    /* ignore this response's body (a redirect, a restart) */
        ACCEPT_PAUSE,   /* resuming: wait for the digest of the bytes on disk */
} AcceptResult;

typedef enum WorkKind {
        WORK_SEAL,
        WORK_REHASH,
} WorkKind;

typedef struct Work Work;
struct Work {
        Fetcher *fetcher;
        Fill *fill;          /* a reference */
        CacheWrite *write;   /* borrowed from the fill for the duration */
        WorkKind kind;
        int result;
        pthread_t thread;
};

struct FillSubscription {
        Fill *fill;          /* a reference */
        FillListener listener;
        void *userdata;
        bool headers_sent, finished_sent, dead;
        FillSubscription *prev, *next;
};

struct Fill {
        unsigned n_ref;
        Fetcher *fetcher;    /* NULL once the fetcher is gone */
        char *id;
        FillState state;

        bool has_caller_expected;
        Checksum caller_expected;

        /* The current request. */
        FillPhase phase;
        CURL *curl;
        CurlTask task;           /* curl-loop's handle on the transfer */
        struct curl_slist *request_headers;
        char *phase_url;     /* first URL of the phase: redirects to another origin lose the token */
        unsigned redirects;
        bool send_token;
        bool has_slot;       /* counts against MaxParallelFetches */
        char curl_error[CURL_ERROR_SIZE];

        /* Its response. */
        char *etag, *content_md5, *digest, *repr_digest, *content_range;
        bool headers_accepted;
        bool skip_body;
        char *redirect_to;
        bool restart;        /* request again without Range */
        char *record_buf;
        size_t record_len;
        bool has_record;
        UpstreamRecord record;

        /* Resume. */
        uint64_t resume_offset;  /* asked for with Range; 0: a whole download */
        char *resume_etag;
        bool no_resume;

        /* The body. */
        CacheWrite *write;       /* NULL while the writer has it */
        FillWriter *writer;      /* from the first byte of the body until it is all on disk */
        bool writer_blocked;     /* paused: the writer's queue is full */
        bool unpausing;          /* inside fill_unpause() */
        bool draining;           /* body complete, waiting for the writer to finish */
        int read_fd;
        bool has_expected;
        Checksum expected;
        uint64_t bytes_written, bytes_total, cap;
        bool too_large;          /* streamed through, not kept */
        bool kept;
        bool paused;             /* waiting for WORK_REHASH */
        uint64_t turn;           /* the Fetcher.turn that turn_bytes counts for */
        size_t turn_bytes;
        bool transfer_done;      /* the body ended while paused (nothing left to receive) */
        bool worker_busy;
        bool cancel_requested;

        int error;
        char *error_message;

        /* Notifications. */
        bool data_pending;
        bool notify_queued;
        bool observer_finished;
        unsigned n_dispatching;
        FillSubscription *subs, *subs_tail;
};

struct Fetcher {
        sd_event *event;
        ImageCache *cache;
        CurlLoop *curl;
        sd_event_source *dispatch;
        sd_event_source *work_source;
        int work_fd;

        pthread_mutex_t work_lock;
        GQueue work_running;      /* Work*, loop thread only */
        GQueue work_done;         /* Work*, under work_lock */

        /* Configuration. */
        UpstreamKind kind;
        char *url;
        char *token;
        char *ca_file;
        unsigned max_parallel;
        usec_t connect_timeout, low_speed_timeout;
        SizeLimit max_size, keep_free;
        bool enforce_max_size;

        GHashTable *fills;        /* id → Fill* (a reference): fills not final */
        GHashTable *all;          /* Fill*: every fill alive, final or not (to detach them at free) */
        GQueue pending;           /* Fill*, FIFO, waiting for a slot */
        GQueue notify;            /* Fill* (a reference each), to dispatch */
        GQueue yielded;           /* Fill* (a reference each), paused until the loop has turned */
        sd_event_source *resume;  /* defer: unpauses the yielded fills */
        uint64_t resumes;         /* turns of the loop that unpaused fills (on top of the CurlLoop's) */
        unsigned n_slots_used;
        FetcherObserver *observers;
        bool freeing;
};

static const char *const fill_state_table[_FILL_STATE_MAX] = {
        [FILL_PENDING] = "pending",
        [FILL_CONNECTING] = "connecting",
        [FILL_RECEIVING] = "receiving",
        [FILL_SEALING] = "sealing",
        [FILL_DONE] = "done",
        [FILL_FAILED] = "failed",
        [FILL_CANCELLED] = "cancelled",
};

const char *fill_state_to_string(FillState s) {
        if (s < 0 || s >= _FILL_STATE_MAX)
                return NULL;
        return fill_state_table[s];
}

static void fetcher_start_pending(Fetcher *fe);
static int fill_request(Fill *f, const char *url);
static void fill_finish(Fill *f, int error);
static void fill_on_curl_done(CurlTask *t, CURL *easy, CURLcode code);
static void fill_schedule(Fill *f);

/* The turn of the event loop a fill's budget counts for: the CurlLoop's turns, and ours that unpaused. */
static uint64_t fetcher_turn(const Fetcher *fe) {
        return curl_loop_turns(fe->curl) + fe->resumes;
}

/* ---- small helpers ------------------------------------------------------------------------------ */

static _printf_(3, 4) int fill_set_error(Fill *f, int error, const char *fmt, ...) {
        assert(error < 0);
        if (f->error < 0)
                return f->error; /* the first cause wins */

        va_list ap;
        va_start(ap, fmt);
        char *m = NULL;
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        f->error = error;
        f->error_message = m;
        return error;
}

static bool fill_is_final(const Fill *f) {
        return fill_state_is_final(f->state);
}

static char *format_bytes(uint64_t n, char buf[static 32]) {
        snprintf(buf, 32, "%" PRIu64, n);
        return buf;
}

static bool header_is(const char *line, size_t len, const char *name, const char **ret_value, size_t *ret_len) {
        size_t n = strlen(name);
        if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0)
                return false;
        const char *v = line + n + 1, *end = line + len;
        while (v < end && (*v == ' ' || *v == '\t'))
                v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
                end--;
        *ret_value = v;
        *ret_len = (size_t) (end - v);
        return true;
}

static bool etag_is_strong(const char *etag) {
        /* If-Range needs a strong validator (RFC 9110 13.1.5); W/"…" is weak. */
        return etag && etag[0] == '"' && strlen(etag) >= 2 && etag[strlen(etag) - 1] == '"' &&
               strlen(etag) <= FETCH_ETAG_MAX && !strpbrk(etag, "\r\n");
}

/* ---- the partial file and its ETag -------------------------------------------------------------- */

static int incomplete_path(const char *id, char buf[static 256]) {
        int n = snprintf(buf, 256, IMAGE_CACHE_INCOMPLETE_DIR "/%s", id);
        return n < 256 ? 0 : -ENAMETOOLONG;
}

/* The ETag goes into a user xattr of the partial file; where the filesystem has none (tmpfs before
 * Linux 6.6), into incomplete/.<id>.etag, which no image id can be (ids never start with a dot). */
static int sidecar_path(const char *id, char buf[static 256]) {
        int n = snprintf(buf, 256, IMAGE_CACHE_INCOMPLETE_DIR "/.%s.etag", id);
        return n < 256 ? 0 : -ENAMETOOLONG;
}

static void partial_store_etag(Fill *f, const char *etag) {
        int dir_fd = image_cache_dir_fd(f->fetcher->cache);
        char side[256];
        if (sidecar_path(f->id, side) < 0)
                return;

        if (!etag_is_strong(etag)) {
                (void) fremovexattr(f->read_fd, FETCH_ETAG_XATTR);
                (void) unlinkat(dir_fd, side, 0);
                return;
        }
        if (fsetxattr(f->read_fd, FETCH_ETAG_XATTR, etag, strlen(etag), 0) >= 0) {
                (void) unlinkat(dir_fd, side, 0);
                return;
        }
        _cleanup_(closep) int fd = openat(dir_fd, side, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0 || loop_write(fd, etag, strlen(etag)) < 0)
                log_image_errno(LOG_DEBUG, fd < 0 ? -errno : -EIO, NULL, f->id,
                                "Cannot remember the ETag of %s, a later fill will start over: %m", f->id);
}

static void partial_forget_etag(Fetcher *fe, const char *id) {
        char side[256];
        if (sidecar_path(id, side) >= 0)
                (void) unlinkat(image_cache_dir_fd(fe->cache), side, 0);
}

/* Is there a partial file we may continue? Sets resume_offset/resume_etag. */
static void fill_prepare_resume(Fill *f) {
        Fetcher *fe = f->fetcher;
        int dir_fd = image_cache_dir_fd(fe->cache);
        char path[256], side[256];

        f->resume_offset = 0;
        free(f->resume_etag);
        f->resume_etag = NULL;
        if (f->no_resume || incomplete_path(f->id, path) < 0 || sidecar_path(f->id, side) < 0)
                return;

        _cleanup_(closep) int fd = openat(dir_fd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0)
                return;

        char etag[FETCH_ETAG_MAX + 1];
        ssize_t n = fgetxattr(fd, FETCH_ETAG_XATTR, etag, FETCH_ETAG_MAX);
        if (n < 0) {
                _cleanup_(closep) int sfd = openat(dir_fd, side, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
                n = sfd >= 0 ? read(sfd, etag, FETCH_ETAG_MAX) : -1;
        }
        if (n <= 0)
                return;
        etag[n] = 0;
        if (!etag_is_strong(etag))
                return;

        f->resume_etag = strdup(etag);
        if (f->resume_etag)
                f->resume_offset = (uint64_t) st.st_size;
}

/* ---- curl callbacks (record only; no curl calls, no listeners) ---------------------------------- */

static void response_reset(Fill *f) {
        free(f->etag);
        free(f->content_md5);
        free(f->digest);
        free(f->repr_digest);
        free(f->content_range);
        f->etag = f->content_md5 = f->digest = f->repr_digest = f->content_range = NULL;
}

static size_t on_curl_header(char *buffer, size_t size, size_t nitems, void *userdata) {
        Fill *f = userdata;
        size_t len = size * nitems;

        /* A status line starts a new response (after a 1xx, say): forget the previous one's headers. */
        if (len >= 5 && strncmp(buffer, "HTTP/", 5) == 0) {
                response_reset(f);
                return len;
        }

        static const struct {
                const char *name;
                size_t offset;
        } wanted[] = {
                { "ETag", offsetof(Fill, etag) },
                { "Content-MD5", offsetof(Fill, content_md5) },
                { "Digest", offsetof(Fill, digest) },
                { "Repr-Digest", offsetof(Fill, repr_digest) },
                { "Content-Range", offsetof(Fill, content_range) },
        };
        for (size_t i = 0; i < ELEMENTSOF(wanted); i++) {
                const char *v;
                size_t n;
                if (!header_is(buffer, len, wanted[i].name, &v, &n))
                        continue;
                char **field = (char **) ((uint8_t *) f + wanted[i].offset);
                if (n > FETCH_ETAG_MAX)
                        break; /* nothing we parse is that long */
                char *copy = strndup(v, n);
                if (!copy)
                        return 0; /* aborts the transfer: out of memory */
                free(*field);
                *field = copy;
                break;
        }
        return len;
}

/* Expected digest: the caller's; else the strongest of what the response and the Glance record say
 * (sha512 > sha256 > md5; the response wins a tie). On a 206, Content-MD5 describes the partial body
 * (RFC 2616 14.15), so only Digest/Repr-Digest count there. */
static void fill_choose_expected(Fill *f, long status) {
        Checksum best = {}, c;
        bool have = false;

        if (f->has_caller_expected) {
                f->expected = f->caller_expected;
                f->has_expected = true;
                return;
        }

        if (f->repr_digest && checksum_from_digest_header(f->repr_digest, &c) >= 0) {
                best = c;
                have = true;
        }
        if (f->digest && checksum_from_digest_header(f->digest, &c) >= 0 && (!have || c.algo > best.algo)) {
                best = c;
                have = true;
        }
        if (status != 206 && f->content_md5 && checksum_from_content_md5(f->content_md5, &c) >= 0 && !have) {
                best = c;
                have = true;
        }
        if (f->has_record && f->record.has_checksum && (!have || f->record.checksum.algo > best.algo)) {
                best = f->record.checksum;
                have = true;
        }
        f->has_expected = have;
        if (have)
                f->expected = best;
}

/* "bytes N-M/T" → N and T (UINT64_MAX when "*"). */
static int parse_content_range(const char *v, uint64_t *ret_start, uint64_t *ret_total) {
        unsigned long long start, end;
        char total[32];
        if (!v || sscanf(v, "bytes %llu-%llu/%31s", &start, &end, total) != 3 || end < start)
                return -EBADMSG;
        uint64_t t = UINT64_MAX;
        if (!streq(total, "*")) {
                char *e;
                errno = 0;
                unsigned long long x = strtoull(total, &e, 10);
                if (errno || *e || x <= end)
                        return -EBADMSG;
                t = x;
        }
        *ret_start = start;
        *ret_total = t;
        return 0;
}

static bool fill_streams(const Fill *f) {
        for (FillSubscription *s = f->subs; s; s = s->next)
                if (!s->dead && !s->listener.requires_kept)
                        return true;
        return false;
}

static uint64_t fetcher_fs_size(Fetcher *fe, uint64_t *ret_free) {
        struct statvfs sv;
        if (fstatvfs(image_cache_dir_fd(fe->cache), &sv) < 0) {
                if (ret_free)
                        *ret_free = UINT64_MAX;
                return UINT64_MAX;
        }
        if (ret_free)
                *ret_free = (uint64_t) sv.f_bavail * sv.f_frsize;
        return (uint64_t) sv.f_blocks * sv.f_frsize;
}

static uint64_t fetcher_cap(Fetcher *fe) {
        uint64_t fs = fetcher_fs_size(fe, NULL);
        if (fe->max_size.permille != UINT64_MAX && fs == UINT64_MAX)
                return UINT64_MAX; /* cannot tell: do not refuse */
        return size_limit_resolve(&fe->max_size, fs);
}

/* Admission: before writing `incoming` more bytes, evict least recently used images (pins are skipped by
 * the store) so that the cache stays within MaxSize (EnforceMaxSize=yes) and KeepFree stays free. */
static void fetcher_make_room(Fetcher *fe, const char *id, uint64_t incoming) {
        uint64_t free_bytes, fs = fetcher_fs_size(fe, &free_bytes);
        unsigned files = 0;
        uint64_t bytes = 0;

        if (fe->enforce_max_size) {
                uint64_t cap = fetcher_cap(fe);
                uint64_t target = cap > incoming ? cap - incoming : 0;
                if (image_cache_size(fe->cache) > target) {
                        unsigned n = 0;
                        uint64_t b = 0;
                        int r = image_cache_prune(fe->cache, target, &n, &b);
                        if (r < 0)
                                log_image_errno(LOG_WARNING, r, NULL, id, "Cannot make room for %s: %m", id);
                        files += n;
                        bytes += b;
                        free_bytes = free_bytes == UINT64_MAX ? free_bytes : free_bytes + b;
                }
        }

        if (fs != UINT64_MAX) {
                uint64_t keep = size_limit_resolve(&fe->keep_free, fs);
                uint64_t need = keep > UINT64_MAX - incoming ? UINT64_MAX : keep + incoming;
                if (free_bytes < need) {
                        uint64_t deficit = need - free_bytes, size = image_cache_size(fe->cache);
                        unsigned n = 0;
                        uint64_t b = 0;
                        int r = image_cache_prune(fe->cache, size > deficit ? size - deficit : 0, &n, &b);
                        if (r < 0)
                                log_image_errno(LOG_WARNING, r, NULL, id, "Cannot free space for %s: %m", id);
                        files += n;
                        bytes += b;
                }
        }

        if (files > 0)
                log_image(LOG_INFO, NULL, id, "Evicted %u images (%" PRIu64 " bytes) to admit %s", files, bytes, id);
}

static int fill_open_read_fd(Fill *f) {
        if (f->read_fd >= 0)
                return 0;
        char path[256];
        int r = incomplete_path(f->id, path);
        if (r < 0)
                return r;
        f->read_fd = openat(image_cache_dir_fd(f->fetcher->cache), path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        return f->read_fd < 0 ? -errno : 0;
}

static void fill_start_work(Fill *f, WorkKind kind);

/* The response headers are in. Decides what to do with the body. May run inside the write callback: it
 * calls no curl function but curl_easy_getinfo(). Negative: f->error is set, abort. */
static int fill_accept(Fill *f) {
        Fetcher *fe = f->fetcher;
        long status = 0;
        _cleanup_(freep) char *effective = NULL;
        char *url = NULL, *scheme = NULL;
        char sz[32], sz2[32];

        (void) curl_easy_getinfo(f->curl, CURLINFO_RESPONSE_CODE, &status);
        /* For messages, which reach the journal and D-Bus callers: never the URL's credentials. */
        (void) curl_easy_getinfo(f->curl, CURLINFO_EFFECTIVE_URL, &url);
        effective = url_redact_userinfo(url);
        (void) curl_easy_getinfo(f->curl, CURLINFO_SCHEME, &scheme);
        if (status == 0 && scheme && strcasecmp(scheme, "file") == 0)
                status = 200;
        f->headers_accepted = true;

        if (status >= 300 && status < 400) {
                char *location = NULL;
                (void) curl_easy_getinfo(f->curl, CURLINFO_REDIRECT_URL, &location);
                if (!location)
                        return fill_set_error(f, -EPROTO, "Upstream answered %ld without a Location for %s", status, f->id);
                if (f->redirects >= FETCH_MAX_REDIRECTS)
                        return fill_set_error(f, -EPROTO, "Too many redirects fetching %s", f->id);
                if (strncasecmp(location, "http://", 7) != 0 && strncasecmp(location, "https://", 8) != 0) {
                        _cleanup_(freep) char *shown = url_redact_userinfo(location);
                        return fill_set_error(f, -EPROTO, "Upstream redirected %s to a refused protocol: %s",
                                              f->id, strempty(shown));
                }
                f->redirect_to = strdup(location);
                if (!f->redirect_to)
                        return fill_set_error(f, -ENOMEM, "Out of memory");
                f->skip_body = true;
                return ACCEPT_SKIP;
        }
        if (status == 404 || status == 410)
                return fill_set_error(f, -ENOENT, "Upstream has no image %s (HTTP %ld from %s)", f->id, status, strempty(effective));
        if (status == 401 || status == 403)
                return fill_set_error(f, -EPROTO, "Upstream refused access to %s (HTTP %ld from %s); check TokenFile=",
                                      f->id, status, strempty(effective));
        if (status == 416 && f->phase == PHASE_IMAGE && f->resume_offset > 0) {
                f->restart = true;
                f->skip_body = true;
                return ACCEPT_SKIP;
        }
        if (status != 200 && !(status == 206 && f->phase == PHASE_IMAGE))
                return fill_set_error(f, -EPROTO, "Upstream answered HTTP %ld for %s (%s)", status, f->id, strempty(effective));

        if (f->phase == PHASE_RECORD)
                return ACCEPT_BODY;

        /* The image. How long is it, and from where are we writing? */
        curl_off_t cl = -1;
        (void) curl_easy_getinfo(f->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        uint64_t offset = 0, total = cl >= 0 ? (uint64_t) cl : UINT64_MAX;
        if (status == 206) {
                uint64_t start, t;
                if (f->resume_offset == 0 || parse_content_range(f->content_range, &start, &t) < 0 ||
                    start != f->resume_offset || (f->etag && !streq(f->etag, f->resume_etag))) {
                        /* Not the continuation we asked for: start over rather than splice. */
                        f->restart = true;
                        f->skip_body = true;
                        return ACCEPT_SKIP;
                }
                offset = start;
                total = t != UINT64_MAX ? t : (cl >= 0 ? offset + (uint64_t) cl : UINT64_MAX);
        }

        if (f->has_record && f->record.has_size) {
                if (total != UINT64_MAX && total != f->record.size)
                        return fill_set_error(f, -EBADMSG, "Upstream sends %s bytes of %s, its record says %s",
                                              format_bytes(total, sz), f->id, format_bytes(f->record.size, sz2));
                total = f->record.size;
        }

        fill_choose_expected(f, status);

        /* Size cap, before a single byte is written. */
        f->cap = fetcher_cap(fe);
        if (total != UINT64_MAX && total > f->cap) {
                if (!fill_streams(f))
                        return fill_set_error(f, -EFBIG, "Image %s is %s bytes, larger than MaxSize (%s bytes): not fetched",
                                              f->id, format_bytes(total, sz), format_bytes(f->cap, sz2));
                f->too_large = true;
        }
        if (!f->too_large)
                fetcher_make_room(fe, f->id, total != UINT64_MAX ? total - MIN(offset, total) : 0);

        int r;
        if (offset > 0) {
                uint64_t size = 0;
                r = image_cache_resume_write(fe->cache, f->id, f->has_expected ? &f->expected : NULL, &size, &f->write);
                if (r >= 0 && size != offset) {
                        image_cache_suspend_write(fe->cache, TAKE_PTR(f->write));
                        r = -ESTALE;
                }
                if (r < 0) {
                        f->restart = true;
                        f->skip_body = true;
                        return ACCEPT_SKIP;
                }
        } else {
                partial_forget_etag(fe, f->id);
                r = image_cache_begin_write(fe->cache, f->id, f->has_expected ? &f->expected : NULL, &f->write);
                if (r < 0)
                        return fill_set_error(f, r, "Cannot write %s into the cache: %s", f->id, strerror(-r));
        }
        r = fill_open_read_fd(f);
        if (r < 0)
                return fill_set_error(f, r, "Cannot open the partial file of %s: %s", f->id, strerror(-r));
        partial_store_etag(f, f->etag);

        f->bytes_written = offset;
        f->bytes_total = total;
        f->state = FILL_RECEIVING;
        fill_schedule(f);

        if (offset > 0) {
                log_image(LOG_INFO, NULL, f->id, "Resuming %s at byte %" PRIu64, f->id, offset);
                f->paused = true;
                fill_start_work(f, WORK_REHASH);
                return ACCEPT_PAUSE;
        }
        return ACCEPT_BODY;
}

static int fill_set_write_error(Fill *f, int r) {
        char sz[32];
        if (r == -ENOSPC || r == -EDQUOT)
                return fill_set_error(f, -ENOSPC, "No space left in the cache for %s after %s bytes", f->id,
                                      format_bytes(f->bytes_written, sz));
        return fill_set_error(f, r, "Cannot write %s: %s", f->id, strerror(-r));
}

/* True when taking n more bytes would exceed this turn's budget: the fill is then paused and resumed from
 * a defer source, after the sources that were already waiting (HTTP clients, bus calls) had their turn.
 * curl keeps the refused bytes and hands them over again when resumed. */
static bool fill_turn_spent(Fill *f, size_t n) {
        Fetcher *fe = f->fetcher;

        if (f->turn != fetcher_turn(fe)) {
                f->turn = fetcher_turn(fe);
                f->turn_bytes = 0;
        }
        if (f->turn_bytes > 0 && f->turn_bytes + n > FETCH_TURN_BUDGET) {
                g_queue_push_tail(&fe->yielded, fill_ref(f));
                (void) sd_event_source_set_enabled(fe->resume, SD_EVENT_ONESHOT);
                return true;
        }
        f->turn_bytes += n;
        return false;
}

/* Lets a paused transfer go on. curl hands the bytes it held back to the write callback right inside this
 * call, and they are all taken (the budget and the writer's cap are soft): libcurl 7.88 spins when a
 * transfer pauses again while those bytes are being delivered. */
static void fill_unpause(Fill *f) {
        if (!f->curl)
                return;
        f->unpausing = true;
        (void) curl_easy_pause(f->curl, CURLPAUSE_CONT);
        f->unpausing = false;
}

static size_t fill_take_record(Fill *f, const char *ptr, size_t n) {
        if (f->record_len + n > UPSTREAM_RECORD_MAX) {
                fill_set_error(f, -EPROTO, "The image record of %s is larger than %u bytes", f->id, UPSTREAM_RECORD_MAX);
                return 0;
        }
        char *p = realloc(f->record_buf, f->record_len + n + 1);
        if (!p) {
                fill_set_error(f, -ENOMEM, "Out of memory");
                return 0;
        }
        memcpy(p + f->record_len, ptr, n);
        f->record_len += n;
        p[f->record_len] = 0;
        f->record_buf = p;
        return n;
}

static void fill_on_writer_progress(FillWriter *fw, void *userdata);

/* Hands the write to a writer thread for the rest of the body (after a resume's rehash, which needs it). */
static int fill_start_writer(Fill *f) {
        int r = fill_writer_new(f->fetcher->event, f->write, f->read_fd, fill_on_writer_progress, f, &f->writer);
        if (r < 0)
                return fill_set_error(f, r, "Cannot start writing %s: %s", f->id, strerror(-r));
        f->write = NULL;
        return 0;
}

static size_t on_curl_write(char *ptr, size_t size, size_t nmemb, void *userdata) {
        Fill *f = userdata;
        size_t n = size * nmemb;
        char sz[32], sz2[32];

        if (f->error < 0)
                return 0;
        if (!f->headers_accepted) {
                int r = fill_accept(f);
                if (r < 0)
                        return 0;
                if (r == ACCEPT_PAUSE)
                        return CURL_WRITEFUNC_PAUSE;
        }
        if (f->skip_body)
                return n;
        if (f->paused)
                return CURL_WRITEFUNC_PAUSE;
        if (f->phase == PHASE_RECORD)
                return fill_take_record(f, ptr, n);

        if (!f->unpausing && fill_turn_spent(f, n))
                return CURL_WRITEFUNC_PAUSE;
        if (!f->writer && fill_start_writer(f) < 0)
                return 0;
        if (!f->unpausing && fill_writer_full(f->writer)) {
                f->writer_blocked = true; /* fill_on_writer_progress() goes on */
                return CURL_WRITEFUNC_PAUSE;
        }

        if (f->bytes_total != UINT64_MAX && f->bytes_written + n > f->bytes_total) {
                fill_set_error(f, -EBADMSG, "Upstream sent more than the %s bytes announced for %s",
                               format_bytes(f->bytes_total, sz), f->id);
                return 0;
        }
        if (!f->too_large && f->bytes_written + n > f->cap) {
                if (!fill_streams(f)) {
                        fill_set_error(f, -EFBIG, "Image %s is larger than MaxSize (%s bytes): not fetched",
                                       f->id, format_bytes(f->cap, sz2));
                        return 0;
                }
                f->too_large = true;
        }

        /* A failure of the writer thread ends the fill from fill_on_writer_progress(). */
        int r = fill_writer_append(f->writer, ptr, n);
        if (r < 0) {
                fill_set_write_error(f, r);
                return 0;
        }
        f->bytes_written += n;
        if (!f->data_pending) {
                f->data_pending = true;
                fill_schedule(f);
        }
        return n;
}

/* ---- requests ----------------------------------------------------------------------------------- */

static bool same_origin(const char *a, const char *b) {
        bool same = false;
        CURLU *ua = curl_url(), *ub = curl_url();
        if (ua && ub && curl_url_set(ua, CURLUPART_URL, a, 0) == CURLUE_OK &&
            curl_url_set(ub, CURLUPART_URL, b, 0) == CURLUE_OK) {
                same = true;
                static const CURLUPart parts[] = { CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT };
                for (size_t i = 0; i < ELEMENTSOF(parts) && same; i++) {
                        char *x = NULL, *y = NULL;
                        (void) curl_url_get(ua, parts[i], &x, CURLU_DEFAULT_PORT);
                        (void) curl_url_get(ub, parts[i], &y, CURLU_DEFAULT_PORT);
                        same = x && y && strcasecmp(x, y) == 0;
                        curl_free(x);
                        curl_free(y);
                }
        }
        curl_url_cleanup(ua);
        curl_url_cleanup(ub);
        return same;
}

static void fill_drop_handle(Fill *f) {
        if (f->curl) {
                if (f->fetcher)
                        curl_loop_remove(f->fetcher->curl, f->curl);
                curl_easy_cleanup(f->curl);
                f->curl = NULL;
        }
        curl_slist_free_all(f->request_headers);
        f->request_headers = NULL;
}

#define SETOPT(h, opt, val) if (curl_easy_setopt((h), (opt), (val)) != CURLE_OK) goto oom

/* Starts a request of the current phase at url (outside curl callbacks). */
static int fill_request(Fill *f, const char *url) {
        Fetcher *fe = f->fetcher;

        fill_drop_handle(f);
        response_reset(f);
        f->headers_accepted = f->skip_body = f->restart = false;
        free(f->redirect_to);
        f->redirect_to = NULL;
        f->curl_error[0] = 0;

        if (!f->phase_url) {
                f->phase_url = strdup(url);
                if (!f->phase_url)
                        return fill_set_error(f, -ENOMEM, "Out of memory");
                f->send_token = true;
        } else if (f->send_token && !same_origin(f->phase_url, url))
                f->send_token = false; /* never hand the token to another origin */

        struct curl_slist *l = NULL;
        char *line = NULL;
        CURL *h = curl_easy_init();
        if (!h)
                return fill_set_error(f, -ENOMEM, "Cannot create a transfer for %s", f->id);
        f->curl = h;

        SETOPT(h, CURLOPT_URL, url);
        SETOPT(h, CURLOPT_NOSIGNAL, 1L);
        SETOPT(h, CURLOPT_PROTOCOLS_STR, "http,https,file");
        SETOPT(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        /* Redirects are followed here, not by curl, so that the token goes to the configured origin only
         * (curl would send a custom header like X-Auth-Token to any host it is redirected to). */
        SETOPT(h, CURLOPT_FOLLOWLOCATION, 0L);
        SETOPT(h, CURLOPT_MAXREDIRS, (long) FETCH_MAX_REDIRECTS);
        SETOPT(h, CURLOPT_USERAGENT, "imgcached/" PROJECT_VERSION);
        SETOPT(h, CURLOPT_ERRORBUFFER, f->curl_error);
        SETOPT(h, CURLOPT_HEADERFUNCTION, on_curl_header);
        SETOPT(h, CURLOPT_HEADERDATA, f);
        SETOPT(h, CURLOPT_WRITEFUNCTION, on_curl_write);
        SETOPT(h, CURLOPT_WRITEDATA, f);
        SETOPT(h, CURLOPT_BUFFERSIZE, FETCH_BUFFER_SIZE);
        SETOPT(h, CURLOPT_SSL_VERIFYPEER, 1L);
        SETOPT(h, CURLOPT_SSL_VERIFYHOST, 2L);
        if (fe->ca_file)
                SETOPT(h, CURLOPT_CAINFO, fe->ca_file);
        if (fe->connect_timeout > 0 && fe->connect_timeout != USEC_INFINITY)
                SETOPT(h, CURLOPT_CONNECTTIMEOUT_MS,
                       (long) MIN((fe->connect_timeout + USEC_PER_MSEC - 1) / USEC_PER_MSEC, (usec_t) LONG_MAX));
        if (fe->low_speed_timeout > 0 && fe->low_speed_timeout != USEC_INFINITY) {
                /* Less than a byte a second for that long counts as a stall. */
                SETOPT(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
                SETOPT(h, CURLOPT_LOW_SPEED_TIME,
                       (long) MIN((fe->low_speed_timeout + USEC_PER_SEC - 1) / USEC_PER_SEC, (usec_t) LONG_MAX));
        }
        if (f->phase == PHASE_IMAGE) {
                /* Nothing larger than the filesystem can be written, streamed or not. */
                uint64_t fs = fetcher_fs_size(fe, NULL);
                if (fs != UINT64_MAX && fs <= INT64_MAX)
                        SETOPT(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) fs);
        } else
                SETOPT(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) UPSTREAM_RECORD_MAX);

        if (fe->token && f->send_token) {
                if (asprintf(&line, "X-Auth-Token: %s", fe->token) < 0)
                        goto oom;
                l = curl_slist_append(l, line);
                free(line);
                if (!l)
                        goto oom;
        }
        if (f->phase == PHASE_RECORD)
                l = curl_slist_append(l, "Accept: application/json");
        else if (f->resume_offset > 0) {
                char range[64];
                snprintf(range, sizeof(range), "%" PRIu64 "-", f->resume_offset);
                SETOPT(h, CURLOPT_RANGE, range);
                if (asprintf(&line, "If-Range: %s", f->resume_etag) < 0)
                        goto oom;
                struct curl_slist *nl = curl_slist_append(l, line);
                free(line);
                if (!nl)
                        goto oom;
                l = nl;
        }
        f->request_headers = l;
        if (l)
                SETOPT(h, CURLOPT_HTTPHEADER, l);

        f->task.on_done = fill_on_curl_done;
        if (curl_loop_add(fe->curl, h, &f->task) < 0)
                goto oom;
        if (f->state == FILL_PENDING)
                f->state = FILL_CONNECTING;
        return 0;

oom:
        curl_slist_free_all(l);
        return fill_set_error(f, -ENOMEM, "Cannot set up the transfer of %s", f->id);
}

static int fill_start_phase(Fill *f, FillPhase phase) {
        Fetcher *fe = f->fetcher;
        _cleanup_(freep) char *url = NULL;
        int r;

        f->phase = phase;
        free(f->phase_url);
        f->phase_url = NULL;
        f->redirects = 0;

        if (phase == PHASE_RECORD)
                r = upstream_record_url(fe->url, f->id, &url);
        else {
                r = upstream_image_url(fe->kind, fe->url, f->id, &url);
                fill_prepare_resume(f);
        }
        if (r < 0)
                return fill_set_error(f, r, "Cannot build the upstream URL of %s", f->id);
        return fill_request(f, url);
}

static void fill_start(Fill *f) {
        Fetcher *fe = f->fetcher;

        f->has_slot = true;
        fe->n_slots_used++;
        int r = fill_start_phase(f, fe->kind == UPSTREAM_GLANCE ? PHASE_RECORD : PHASE_IMAGE);
        if (r < 0)
                fill_finish(f, r);
}

static void fill_release_slot(Fill *f) {
        if (!f->has_slot)
                return;
        f->has_slot = false;
        if (f->fetcher) {
                f->fetcher->n_slots_used--;
                fetcher_start_pending(f->fetcher);
        }
}

static void fetcher_start_pending(Fetcher *fe) {
        while (!fe->freeing && fe->n_slots_used < MAX(fe->max_parallel, 1u) && !g_queue_is_empty(&fe->pending)) {
                Fill *f = g_queue_pop_head(&fe->pending);
                fill_start(f);
        }
}

/* ---- completion --------------------------------------------------------------------------------- */

static int map_curl_error(Fill *f, CURLcode code) {
        const char *detail = f->curl_error[0] ? f->curl_error : curl_easy_strerror(code);
        switch (code) {
        case CURLE_OPERATION_TIMEDOUT:
                return fill_set_error(f, -ETIMEDOUT, "Fetching %s timed out: %s", f->id, detail);
        case CURLE_FILESIZE_EXCEEDED:
                return fill_set_error(f, -EFBIG, "Image %s is larger than the cache filesystem: %s", f->id, detail);
        case CURLE_PARTIAL_FILE:
                return fill_set_error(f, -EPROTO, "Upstream closed the connection early fetching %s (short body): %s",
                                      f->id, detail);
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
                return fill_set_error(f, -EPROTO, "Connection to the upstream broke fetching %s: %s", f->id, detail);
        case CURLE_OUT_OF_MEMORY:
                return fill_set_error(f, -ENOMEM, "Out of memory fetching %s", f->id);
        default:
                return fill_set_error(f, -EPROTO, "Fetching %s failed: %s", f->id, detail);
        }
}

static void fill_seal(Fill *f);
static void fill_on_writer_progress(FillWriter *fw, void *userdata);

static void fill_body_complete(Fill *f) {
        char sz[32], sz2[32];

        if (f->bytes_total != UINT64_MAX && f->bytes_written != f->bytes_total) {
                fill_set_error(f, -EBADMSG, "Upstream sent %s of the %s bytes of %s",
                               format_bytes(f->bytes_written, sz), format_bytes(f->bytes_total, sz2), f->id);
                fill_finish(f, f->error);
                return;
        }
        f->bytes_total = f->bytes_written;
        fill_drop_handle(f);
        fill_release_slot(f);
        if (f->writer) {
                /* The writer may still have chunks to write: seal when it is done. */
                f->draining = true;
                fill_writer_close(f->writer);
                fill_on_writer_progress(f->writer, f);
                return;
        }
        fill_seal(f);
}

static void fill_seal(Fill *f) {
        f->draining = false;
        f->state = FILL_SEALING;
        fill_schedule(f);
        fill_start_work(f, WORK_SEAL);
}

/* The writer wrote chunks or failed: go on receiving, or seal, or fail. */
static void fill_on_writer_progress(FillWriter *fw, void *userdata) {
        Fill *f = userdata;

        int r = fill_writer_error(fw);
        if (r < 0) {
                if (f->error >= 0)
                        fill_set_write_error(f, r);
                fill_finish(f, f->error);
                return;
        }
        if (f->draining) {
                if (fill_writer_done(fw)) {
                        f->write = fill_writer_free(TAKE_PTR(f->writer), false);
                        fill_seal(f);
                }
                return;
        }
        if (f->writer_blocked && !fill_writer_full(fw)) {
                f->writer_blocked = false;
                fill_ref(f);
                fill_unpause(f);
                curl_loop_collect(f->fetcher->curl);
                fill_unref(f);
        }
}

static void fill_on_transfer_done(Fill *f, CURLcode code) {
        Fetcher *fe = f->fetcher;
        int r;

        if (f->error < 0) {
                fill_finish(f, f->error);
                return;
        }
        if (code != CURLE_OK) {
                fill_finish(f, map_curl_error(f, code));
                return;
        }
        if (!f->headers_accepted) {
                /* A response without a body: an error status, an empty image, a redirect. */
                r = fill_accept(f);
                if (r < 0) {
                        fill_finish(f, r);
                        return;
                }
                if (r == ACCEPT_PAUSE) {
                        f->transfer_done = true; /* the rehash completion goes on from here */
                        return;
                }
        }
        if (f->redirect_to) {
                _cleanup_(freep) char *to = TAKE_PTR(f->redirect_to);
                f->redirects++;
                r = fill_request(f, to);
                if (r < 0)
                        fill_finish(f, r);
                return;
        }
        if (f->restart) {
                /* The partial file cannot be continued: drop it and download the whole image. */
                char path[256];
                if (incomplete_path(f->id, path) >= 0)
                        (void) unlinkat(image_cache_dir_fd(fe->cache), path, 0);
                partial_forget_etag(fe, f->id);
                log_image(LOG_INFO, NULL, f->id, "Upstream cannot continue %s from byte %" PRIu64 ", starting over",
                          f->id, f->resume_offset);
                f->no_resume = true;
                r = fill_start_phase(f, PHASE_IMAGE);
                if (r < 0)
                        fill_finish(f, r);
                return;
        }

        if (f->phase == PHASE_RECORD) {
                const char *why = "empty";
                r = f->record_buf ? upstream_record_parse(f->record_buf, f->record_len, &f->record, &why) : -EBADMSG;
                free(f->record_buf);
                f->record_buf = NULL;
                f->record_len = 0;
                if (r == -ENOMEM) {
                        fill_finish(f, fill_set_error(f, r, "Out of memory"));
                        return;
                }
                if (r < 0) {
                        fill_finish(f, fill_set_error(f, -EPROTO, "The upstream's record of %s is malformed: %s", f->id, why));
                        return;
                }
                f->has_record = true;
                if (!streq(f->record.status, "active")) {
                        fill_finish(f, fill_set_error(f, -ENOENT, "Image %s is '%s' upstream, not 'active'",
                                                      f->id, f->record.status));
                        return;
                }
                r = fill_start_phase(f, PHASE_IMAGE);
                if (r < 0)
                        fill_finish(f, r);
                return;
        }

        if (f->paused) {
                f->transfer_done = true;
                return;
        }
        fill_body_complete(f);
}

static void fill_on_curl_done(CurlTask *t, CURL *easy, CURLcode code) {
        Fill *f = container_of(t, Fill, task);

        if (f->curl != easy)
                return;
        fill_ref(f);
        fill_on_transfer_done(f, code);
        fill_unref(f);
}

/* ---- worker threads (seal, rehash) -------------------------------------------------------------- */

static void *work_run(void *userdata) {
        Work *w = userdata;
        Fetcher *fe = w->fetcher;

        w->result = w->kind == WORK_SEAL ? cache_write_seal(w->write) : cache_write_rehash(w->write);

        pthread_mutex_lock(&fe->work_lock);
        g_queue_push_tail(&fe->work_done, w);
        pthread_mutex_unlock(&fe->work_lock);
        uint64_t one = 1;
        (void) !write(fe->work_fd, &one, sizeof(one));
        return NULL;
}

static void fill_start_work(Fill *f, WorkKind kind) {
        Fetcher *fe = f->fetcher;
        Work *w = calloc(1, sizeof(Work));
        if (!w) {
                fill_set_error(f, -ENOMEM, "Out of memory");
                if (kind == WORK_SEAL)
                        fill_finish(f, -ENOMEM);
                return;
        }
        *w = (Work) {
                .fetcher = fe,
                .fill = fill_ref(f),
                .write = f->write,
                .kind = kind,
        };
        f->worker_busy = true;
        int r = -pthread_create(&w->thread, NULL, work_run, w);
        if (r < 0) {
                /* Run it here: slower, but correct. */
                w->result = kind == WORK_SEAL ? cache_write_seal(w->write) : cache_write_rehash(w->write);
                w->thread = pthread_self();
                pthread_mutex_lock(&fe->work_lock);
                g_queue_push_tail(&fe->work_done, w);
                pthread_mutex_unlock(&fe->work_lock);
                uint64_t one = 1;
                (void) !write(fe->work_fd, &one, sizeof(one));
                return;
        }
        g_queue_push_tail(&fe->work_running, w);
}

static void fill_on_sealed(Fill *f, int r) {
        Fetcher *fe = f->fetcher;
        char sz[32];

        if (r == -EBADMSG) {
                Checksum actual;
                _cleanup_(freep) char *e = checksum_to_string(&f->expected);
                _cleanup_(freep) char *a = cache_write_digest(f->write, &actual) >= 0 ? checksum_to_string(&actual) : NULL;
                fill_set_error(f, -EBADMSG, "Image %s failed verification: expected %s, got %s; moved to invalid/",
                               f->id, strempty(e), a ?: "?");
                fill_finish(f, -EBADMSG);
                return;
        }
        if (r < 0) {
                fill_set_error(f, r == -EDQUOT ? -ENOSPC : r, "Cannot store %s: %s", f->id, strerror(-r));
                fill_finish(f, f->error);
                return;
        }

        if (f->too_large) {
                /* Verified and streamed; not kept. The readers' fds keep the data alive. */
                image_cache_abort_write(fe->cache, TAKE_PTR(f->write));
                char path[256];
                snprintf(path, sizeof(path), IMAGE_CACHE_INVALID_DIR "/%s", f->id);
                (void) unlinkat(image_cache_dir_fd(fe->cache), path, 0);
                log_image(LOG_INFO, NULL, f->id, "Streamed %s (%s bytes, verified) without keeping it: larger than MaxSize",
                          f->id, format_bytes(f->bytes_written, sz));
                f->kept = false;
                fill_finish(f, 0);
                return;
        }

        r = image_cache_commit_write(fe->cache, TAKE_PTR(f->write));
        if (r < 0) {
                fill_set_error(f, r, "Cannot record %s in the cache: %s", f->id, strerror(-r));
                fill_finish(f, r);
                return;
        }
        partial_forget_etag(fe, f->id);
        f->kept = true;
        const CacheEntry *e = image_cache_get(fe->cache, f->id);
        log_image(LOG_INFO, IMGCACHE_MESSAGE_IMAGE_CACHED, f->id, "Cached %s (%s bytes, %s)", f->id,
                  format_bytes(f->bytes_written, sz), e && e->checksum ? e->checksum : "no checksum");

        /* Images written concurrently may have pushed the cache over MaxSize; the newest is used last. */
        if (fe->enforce_max_size) {
                uint64_t cap = fetcher_cap(fe);
                if (image_cache_size(fe->cache) > cap)
                        (void) image_cache_prune(fe->cache, cap, NULL, NULL);
        }
        fill_finish(f, 0);
}

static int on_resume(sd_event_source *s, void *userdata) {
        Fetcher *fe = userdata;
        Fill *f;

        fe->resumes++;
        while ((f = g_queue_pop_head(&fe->yielded))) {
                if (!fill_is_final(f))
                        fill_unpause(f);
                fill_unref(f);
        }
        curl_loop_collect(fe->curl);
        return 0;
}

static void fill_on_rehashed(Fill *f, int r) {
        f->paused = false;
        if (f->cancel_requested) {
                fill_finish(f, fill_set_error(f, -ECANCELED, "Fetch of %s cancelled", f->id));
                return;
        }
        if (r < 0) {
                /* The partial file is unusable: drop it, the next attempt starts over. */
                fill_set_error(f, -EIO, "Cannot read the partial file of %s to resume: %s", f->id, strerror(-r));
                image_cache_abort_write(f->fetcher->cache, TAKE_PTR(f->write));
                fill_finish(f, -EIO);
                return;
        }
        if (f->transfer_done) {
                fill_body_complete(f);
                return;
        }
        fill_unpause(f);
        curl_loop_collect(f->fetcher->curl);
}

static void work_complete(Work *w) {
        Fill *f = w->fill;
        if (!pthread_equal(w->thread, pthread_self()))
                (void) pthread_join(w->thread, NULL);
        f->worker_busy = false;
        if (w->kind == WORK_SEAL)
                fill_on_sealed(f, w->result);
        else
                fill_on_rehashed(f, w->result);
        fill_unref(f);
        free(w);
}

static void fetcher_collect_work(Fetcher *fe) {
        for (;;) {
                pthread_mutex_lock(&fe->work_lock);
                Work *w = g_queue_pop_head(&fe->work_done);
                pthread_mutex_unlock(&fe->work_lock);
                if (!w)
                        break;
                g_queue_remove(&fe->work_running, w);
                work_complete(w);
        }
}

static int on_work_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Fetcher *fe = userdata;
        uint64_t v;
        (void) !read(fe->work_fd, &v, sizeof(v));
        fetcher_collect_work(fe);
        return 0;
}

/* ---- finishing and notifying -------------------------------------------------------------------- */

/* Interruptions keep the partial file for a resume; bad data and lack of space do not. */
static bool error_keeps_partial(int error) {
        return error != -EBADMSG && error != -ENOSPC && error != -EFBIG && error != -EIO;
}

static void fill_dispose_write(Fill *f, int error) {
        Fetcher *fe = f->fetcher;
        bool keep = !f->too_large && f->bytes_written > 0 && error_keeps_partial(error);

        if (f->writer)
                f->write = fill_writer_free(TAKE_PTR(f->writer), /* write_rest= */ keep);
        if (!f->write)
                return;

        char path[256];
        snprintf(path, sizeof(path), IMAGE_CACHE_INVALID_DIR "/%s", f->id);
        if (error == -EBADMSG)
                image_cache_abort_write(fe->cache, TAKE_PTR(f->write)); /* evidence, for Clean */
        else if (keep)
                image_cache_suspend_write(fe->cache, TAKE_PTR(f->write));
        else {
                image_cache_abort_write(fe->cache, TAKE_PTR(f->write));
                (void) unlinkat(image_cache_dir_fd(fe->cache), path, 0);
                partial_forget_etag(fe, f->id);
        }
}

/* Ends a fill: error 0 → DONE, -ECANCELED → CANCELLED, else FAILED (f->error says why). Outside curl
 * callbacks only. */
static void fill_finish(Fill *f, int error) {
        Fetcher *fe = f->fetcher;

        if (fill_is_final(f))
                return;
        if (error < 0 && f->error >= 0)
                fill_set_error(f, error, "Fetching %s failed: %s", f->id, strerror(-error));

        fill_ref(f);
        fill_drop_handle(f);
        if (f->state == FILL_PENDING)
                g_queue_remove(&fe->pending, f);
        fill_dispose_write(f, error);
        free(f->record_buf);
        f->record_buf = NULL;

        f->state = error == 0 ? FILL_DONE : error == -ECANCELED ? FILL_CANCELLED : FILL_FAILED;
        if (f->state == FILL_FAILED)
                log_image_errno(error == -EBADMSG ? LOG_ERR : LOG_WARNING, error,
                                error == -EBADMSG ? IMGCACHE_MESSAGE_IMAGE_INVALID : NULL, f->id, "%s",
                                f->error_message ?: "fetch failed");
        else if (f->state == FILL_CANCELLED)
                log_image(LOG_INFO, NULL, f->id, "%s", f->error_message ?: "cancelled");

        fill_schedule(f);
        if (g_hash_table_lookup(fe->fills, f->id) == f)
                g_hash_table_remove(fe->fills, f->id); /* drops the table's reference */
        fill_release_slot(f);
        fill_unref(f);
}

static void subscription_unlink(FillSubscription *s) {
        Fill *f = s->fill;
        if (s->prev)
                s->prev->next = s->next;
        else
                f->subs = s->next;
        if (s->next)
                s->next->prev = s->prev;
        else
                f->subs_tail = s->prev;
        s->prev = s->next = NULL;
}

static void fill_dispatch(Fill *f) {
        Fetcher *fe = f->fetcher;

        fill_ref(f);
        f->n_dispatching++;
        bool data = f->data_pending;
        f->data_pending = false;
        bool headers = f->headers_accepted && f->phase == PHASE_IMAGE && f->read_fd >= 0;
        bool final = fill_is_final(f);

        /* Subscriptions added by a listener are appended and seen in this same pass. */
        for (FillSubscription *s = f->subs; s; s = s->next) {
                if (s->dead)
                        continue;
                if (headers && !s->headers_sent) {
                        s->headers_sent = true;
                        if (s->listener.on_headers)
                                s->listener.on_headers(f, s->userdata);
                }
                if (!s->dead && data && !final && s->listener.on_data)
                        s->listener.on_data(f, s->userdata);
                if (!s->dead && final && !s->finished_sent) {
                        s->finished_sent = true;
                        if (s->listener.on_finished)
                                s->listener.on_finished(f, s->userdata);
                }
        }
        if (final && !f->observer_finished && fe) {
                f->observer_finished = true;
                for (FetcherObserver *o = fe->observers; o; o = o->observers_next)
                        if (o->fill_finished)
                                o->fill_finished(fe, f, o->userdata);
        }

        if (--f->n_dispatching == 0)
                for (FillSubscription *s = f->subs, *next; s; s = next) {
                        next = s->next;
                        if (s->dead) {
                                subscription_unlink(s);
                                free(s);
                                fill_unref(f);
                        }
                }
        fill_unref(f);
}

static int on_dispatch(sd_event_source *s, void *userdata) {
        Fetcher *fe = userdata;
        Fill *f;

        while ((f = g_queue_pop_head(&fe->notify))) {
                f->notify_queued = false;
                fill_dispatch(f);
                fill_unref(f);
        }
        return 0;
}

static void fill_schedule(Fill *f) {
        Fetcher *fe = f->fetcher;
        if (!fe || f->notify_queued)
                return;
        f->notify_queued = true;
        g_queue_push_tail(&fe->notify, fill_ref(f));
        if (!fe->freeing)
                (void) sd_event_source_set_enabled(fe->dispatch, SD_EVENT_ONESHOT);
}

/* ---- configuration ------------------------------------------------------------------------------ */

static int fetcher_apply_config(Fetcher *fe, const Config *config) {
        _cleanup_(freep) char *url = NULL, *token = NULL, *ca = NULL;

        if (!isempty(config->upstream_url) && !(url = strdup(config->upstream_url)))
                return -ENOMEM;
        if (!isempty(config->ca_file) && !(ca = strdup(config->ca_file)))
                return -ENOMEM;
        if (!isempty(config->token_file)) {
                int r = read_token_file_first(config->token_file, &token);
                if (r < 0)
                        return log_error_errno(r, "Cannot read TokenFile=%s: %m", config->token_file);
        }

        free(fe->url);
        fe->url = TAKE_PTR(url);
        if (fe->token)
                explicit_bzero(fe->token, strlen(fe->token));
        free(fe->token);
        fe->token = TAKE_PTR(token);
        free(fe->ca_file);
        fe->ca_file = TAKE_PTR(ca);
        fe->kind = config->upstream_kind;
        fe->max_parallel = MAX(config->max_parallel_fetches, 1u);
        fe->connect_timeout = config->connect_timeout;
        fe->low_speed_timeout = config->low_speed_timeout;
        fe->max_size = config->max_size;
        fe->keep_free = config->keep_free;
        fe->enforce_max_size = config->enforce_max_size;
        return 0;
}

/* ---- Fetcher API -------------------------------------------------------------------------------- */

static void fill_unref_void(void *p) {
        fill_unref(p);
}

int fetcher_new(sd_event *event, ImageCache *cache, const Config *config, Fetcher **ret) {
        int r;

        Fetcher *fe = calloc(1, sizeof(Fetcher));
        if (!fe)
                return -ENOMEM;
        *fe = (Fetcher) {
                .event = sd_event_ref(event),
                .cache = cache,
                .work_fd = -EBADF,
                .fills = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, fill_unref_void),
                .all = g_hash_table_new(g_direct_hash, g_direct_equal),
        };
        pthread_mutex_init(&fe->work_lock, NULL);
        g_queue_init(&fe->pending);
        g_queue_init(&fe->notify);
        g_queue_init(&fe->yielded);
        g_queue_init(&fe->work_running);
        g_queue_init(&fe->work_done);

        r = fetcher_apply_config(fe, config);
        if (r < 0)
                goto fail;

        r = curl_loop_new(event, &fe->curl);
        if (r < 0)
                goto fail;

        const curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
        if (!(vi->features & CURL_VERSION_ASYNCHDNS))
                log_warning("libcurl %s resolves names synchronously: a slow DNS server will stall the daemon", vi->version);

        r = sd_event_add_defer(event, &fe->dispatch, on_dispatch, fe);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_enabled(fe->dispatch, SD_EVENT_OFF);
        (void) sd_event_source_set_description(fe->dispatch, "fetch-dispatch");
        /* News of a fill (headers, bytes, the end) reaches listeners before the fill moves on. */
        (void) sd_event_source_set_priority(fe->dispatch, SD_EVENT_PRIORITY_NORMAL - 1);

        r = sd_event_add_defer(event, &fe->resume, on_resume, fe);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_enabled(fe->resume, SD_EVENT_OFF);
        (void) sd_event_source_set_description(fe->resume, "fetch-resume");

        fe->work_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fe->work_fd < 0) {
                r = -errno;
                goto fail;
        }
        r = sd_event_add_io(event, &fe->work_source, fe->work_fd, EPOLLIN, on_work_done, fe);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(fe->work_source, "fetch-workers");

        *ret = fe;
        return 0;

fail:
        fetcher_free(fe);
        return r;
}

Fetcher *fetcher_free(Fetcher *fe) {
        if (!fe)
                return NULL;

        fe->freeing = true;

        /* Seals and rehashes in flight finish first (a seal that renamed the file is committed; a fill
         * whose partial file was being rehashed is cancelled). */
        GHashTableIter it;
        gpointer key;
        g_hash_table_iter_init(&it, fe->fills);
        while (g_hash_table_iter_next(&it, NULL, &key))
                ((Fill *) key)->cancel_requested = true;
        for (GList *l = fe->work_running.head; l; l = l->next) {
                Work *w = l->data;
                (void) pthread_join(w->thread, NULL);
                w->thread = pthread_self(); /* joined */
        }
        fetcher_collect_work(fe);

        /* Everything else is cancelled; partial files stay for a resume. */
        GList *fills = g_hash_table_get_values(fe->fills);
        for (GList *l = fills; l; l = l->next)
                fill_ref(l->data);
        for (GList *l = fills; l; l = l->next) {
                Fill *f = l->data;
                if (!fill_is_final(f)) {
                        fill_set_error(f, -ECANCELED, "Fetch of %s cancelled: the daemon is stopping", f->id);
                        fill_finish(f, -ECANCELED);
                }
        }
        on_dispatch(NULL, fe);
        for (Fill *y; (y = g_queue_pop_head(&fe->yielded)); )
                fill_unref(y);
        for (GList *l = fills; l; l = l->next)
                fill_unref(l->data);
        g_list_free(fills);

        /* Fills still referenced by others outlive us, final: they must not reach back. */
        g_hash_table_iter_init(&it, fe->all);
        while (g_hash_table_iter_next(&it, &key, NULL))
                ((Fill *) key)->fetcher = NULL;
        g_hash_table_destroy(fe->all);
        fe->all = NULL;

        curl_loop_free(fe->curl);
        if (fe->fills)
                g_hash_table_destroy(fe->fills);
        sd_event_source_disable_unref(fe->dispatch);
        sd_event_source_disable_unref(fe->resume);
        fill_writer_trim_pool();
        sd_event_source_disable_unref(fe->work_source);
        safe_close(fe->work_fd);
        pthread_mutex_destroy(&fe->work_lock);
        if (fe->token)
                explicit_bzero(fe->token, strlen(fe->token));
        free(fe->token);
        free(fe->url);
        free(fe->ca_file);
        sd_event_unref(fe->event);
        free(fe);
        return NULL;
}

int fetcher_reconfigure(Fetcher *fe, const Config *config) {
        int r = fetcher_apply_config(fe, config);
        if (r < 0)
                return r;
        fetcher_start_pending(fe);
        return 0;
}

void fetcher_add_observer(Fetcher *fe, FetcherObserver *o) {
        LIST_PREPEND(observers, fe->observers, o);
}

void fetcher_remove_observer(Fetcher *fe, FetcherObserver *o) {
        LIST_REMOVE(observers, fe->observers, o);
}

bool fetcher_has_upstream(const Fetcher *fe) {
        return !isempty(fe->url);
}

unsigned fetcher_n_active(const Fetcher *fe) {
        return g_hash_table_size(fe->fills);
}

Fill *fetcher_find(const Fetcher *fe, const char *id) {
        return id ? g_hash_table_lookup(fe->fills, id) : NULL;
}

int fetcher_fill(Fetcher *fe, const char *id, const Checksum *expected, Fill **ret) {
        if (!image_id_is_valid(id))
                return -EINVAL;
        if (!fetcher_has_upstream(fe))
                return -ENXIO;
        if (fe->freeing)
                return -ECANCELED;

        Fill *f = g_hash_table_lookup(fe->fills, id);
        if (f) {
                *ret = fill_ref(f);
                return 0;
        }
        if (image_cache_is_cached(fe->cache, id))
                return -EEXIST;

        f = calloc(1, sizeof(Fill));
        if (!f)
                return -ENOMEM;
        *f = (Fill) {
                .n_ref = 1,
                .fetcher = fe,
                .id = strdup(id),
                .state = FILL_PENDING,
                .read_fd = -EBADF,
                .bytes_total = UINT64_MAX,
                .cap = UINT64_MAX,
                .has_caller_expected = expected,
        };
        if (!f->id) {
                free(f);
                return -ENOMEM;
        }
        if (expected)
                f->caller_expected = *expected;

        g_hash_table_add(fe->all, f);
        g_hash_table_insert(fe->fills, f->id, fill_ref(f));
        for (FetcherObserver *o = fe->observers; o; o = o->observers_next)
                if (o->fill_started)
                        o->fill_started(fe, f, o->userdata);

        if (fe->n_slots_used < fe->max_parallel)
                fill_start(f);
        else
                g_queue_push_tail(&fe->pending, f);

        *ret = f;
        return 0;
}

int fetcher_query(Fetcher *fe, const char *id, const char *credentials, UpstreamQueryDone done, void *userdata,
                  UpstreamQuery **ret) {
        _cleanup_(freep) char *own = NULL;
        UpstreamQueryOptions o = {
                .kind = fe->kind,
                .url = fe->url,
                .id = id,
                .credentials = credentials,
                .ca_file = fe->ca_file,
                .connect_timeout = fe->connect_timeout,
        };
        int r;

        if (isempty(fe->url))
                return -ENXIO;
        if (!credentials && fe->token) {
                if (asprintf(&own, "X-Auth-Token: %s", fe->token) < 0)
                        return -ENOMEM;
                o.credentials = own;
        }
        r = upstream_query_start(fe->curl, &o, done, userdata, ret);
        if (own)
                explicit_bzero(own, strlen(own));
        return r;
}

/* ---- Fill API ----------------------------------------------------------------------------------- */

Fill *fill_ref(Fill *f) {
        if (f)
                f->n_ref++;
        return f;
}

Fill *fill_unref(Fill *f) {
        if (!f || --f->n_ref > 0)
                return NULL;

        assert(!f->curl && !f->write && !f->writer && !f->subs);
        if (f->fetcher)
                g_hash_table_remove(f->fetcher->all, f);
        curl_slist_free_all(f->request_headers);
        response_reset(f);
        free(f->redirect_to);
        free(f->record_buf);
        upstream_record_done(&f->record);
        free(f->resume_etag);
        free(f->phase_url);
        safe_close(f->read_fd);
        free(f->error_message);
        free(f->id);
        free(f);
        return NULL;
}

const char *fill_image_id(const Fill *f) {
        return f->id;
}

FillState fill_state(const Fill *f) {
        return f->state;
}

uint64_t fill_bytes_written(const Fill *f) {
        return f->bytes_written;
}

uint64_t fill_bytes_total(const Fill *f) {
        return f->bytes_total;
}

int fill_error(const Fill *f) {
        return f->state == FILL_FAILED || f->state == FILL_CANCELLED ? f->error : 0;
}

const char *fill_error_message(const Fill *f) {
        return f->state == FILL_FAILED || f->state == FILL_CANCELLED ? f->error_message : NULL;
}

bool fill_kept(const Fill *f) {
        return f->state == FILL_DONE && f->kept;
}

ssize_t fill_pread(const Fill *f, void *buf, size_t size, uint64_t offset) {
        if (f->read_fd < 0)
                return -EBADF;
        /* The newest bytes may not be on disk yet; once the writer is gone, everything is. */
        if (f->writer)
                return fill_writer_pread(f->writer, buf, size, offset);
        return pread_retry(f->read_fd, buf, size, offset);
}

/* Cancelling a fill that is sealing has no effect: the image is complete and about to be committed. */
void fill_cancel(Fill *f) {
        if (!f->fetcher || fill_is_final(f) || f->state == FILL_SEALING)
                return;
        if (f->worker_busy) {
                f->cancel_requested = true; /* the rehash completion finishes it */
                return;
        }
        fill_set_error(f, -ECANCELED, "Fetch of %s cancelled", f->id);
        fill_finish(f, -ECANCELED);
}

int fill_subscribe(Fill *f, const FillListener *l, void *userdata, FillSubscription **ret) {
        FillSubscription *s = calloc(1, sizeof(FillSubscription));
        if (!s)
                return -ENOMEM;
        *s = (FillSubscription) {
                .fill = fill_ref(f),
                .listener = *l,
                .userdata = userdata,
                .prev = f->subs_tail,
        };
        if (f->subs_tail)
                f->subs_tail->next = s;
        else
                f->subs = s;
        f->subs_tail = s;

        /* A late subscriber still hears about headers already accepted and about the end. */
        if (fill_is_final(f) || f->state >= FILL_RECEIVING)
                fill_schedule(f);
        *ret = s;
        return 0;
}

FillSubscription *fill_subscription_free(FillSubscription *s) {
        if (!s)
                return NULL;
        Fill *f = s->fill;
        if (f->n_dispatching > 0) {
                s->dead = true; /* unlinked once the dispatch is over */
                return NULL;
        }
        subscription_unlink(s);
        free(s);
        fill_unref(f);
        return NULL;
}
