/* SPDX-License-Identifier: MIT */

/* One fill as a state machine. One file on purpose, about 1,200 lines: every step and every transition
 * of the machine read together; what is not a transition lives beside it (fill-response.c judges responses,
 * fill-notify.c delivers news, fill-curl.c is the transport, fill-writer.c writes). The steps (FillStep,
 * fill-internal.h) and what moves a fill between them:
 *
 *   WAITING ──slot──→ REQUESTING ──Glance record──→ READING_RECORD ──end──→ REQUESTING (the image)
 *                        │ ↑ 3xx: REDIRECTED ──end──┘ (the next request, same phase)
 *                        │ ↑ a peer at its FanOut= names a node: REDIRECTED ──end──┘ (that node, with Via)
 *                        │ ↑ 416, a 206 that is not our continuation: RESTARTING ──end──┘ (whole image)
 *                        │ ↑ 401 to our token: REAUTHENTICATING ──end, TokenFile= holds another──┘ (once)
 *                        ↓ image headers
 *                     ADMITTING ──(loop) make room, open the write──→ RECEIVING
 *                        │                                           ↑   │ ↕ PAUSED_TURN   (turn budget)
 *                        └─ a partial file: REHASHING ──worker done──┘   │ ↕ PAUSED_WRITER (writer full)
 *                                                                         │ ↕ RESUMING (held bytes)
 *                                                     end of the body ───→ DRAINING ──writer done──→ SEALING
 *                                                                                                     │ worker
 *   every step ──error, cancel──→ FAILED / CANCELLED                                                  DONE
 *       inside the transport's callbacks: ABORTING (ABORTING_BODY) ──end of the transfer──┘
 *       while a worker holds the write (REHASHING): FAILING ──worker done──┘
 *       a peer's failure: REQUESTING at the next source instead (fill_try_next_source), or, when the
 *       peer was one we were pointed at, at the source that pointed us there again
 *
 * fill_set_state() is the one place the step changes; it schedules news for subscribers when the state
 * they see (FillState) changes. An error is a transition, never a field left for someone to check:
 * fill_fail() and fill_abort() record it and leave the step in one call. The transport's callbacks
 * (fill_on_headers, fill_on_body) run inside curl and only look at memory and answer: admission, the
 * next request and the end are on the loop.
 *
 * What happens to the partial file when a fill ends early:
 *   network trouble (reset, timeout, 5xx mid-body), cancel, shutdown → kept in incomplete/ with the
 *       upstream's ETag, so the next fill resumes with Range + If-Range (a crash leaves it there too);
 *   the digest or the length is wrong → invalid/ (Clean removes it), it must not be resumed;
 *   no space, too large, an unreadable partial file → removed: it only takes space the cache needs. */

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "fill-internal.h"
#include "fleet.h"
#include "image-id.h"
#include "log.h"
#include "parse-util.h"

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

static const char *const fill_step_table[_STEP_MAX] = {
        [STEP_WAITING] = "waiting",
        [STEP_REQUESTING] = "requesting",
        [STEP_READING_RECORD] = "reading-record",
        [STEP_REDIRECTED] = "redirected",
        [STEP_RESTARTING] = "restarting",
        [STEP_REAUTHENTICATING] = "reauthenticating",
        [STEP_ADMITTING] = "admitting",
        [STEP_REHASHING] = "rehashing",
        [STEP_RECEIVING] = "receiving",
        [STEP_RESUMING] = "resuming",
        [STEP_PAUSED_TURN] = "paused-turn",
        [STEP_PAUSED_WRITER] = "paused-writer",
        [STEP_DRAINING] = "draining",
        [STEP_SEALING] = "sealing",
        [STEP_ABORTING] = "aborting",
        [STEP_ABORTING_BODY] = "aborting-body",
        [STEP_FAILING] = "failing",
        [STEP_DONE] = "done",
        [STEP_FAILED] = "failed",
        [STEP_CANCELLED] = "cancelled",
};

const char *fill_step_to_string(FillStep s) {
        if (s < 0 || s >= _STEP_MAX)
                return NULL;
        return fill_step_table[s];
}

/* What callers see of each step. */
static const FillState fill_step_state[_STEP_MAX] = {
        [STEP_WAITING] = FILL_PENDING,
        [STEP_REQUESTING] = FILL_CONNECTING,
        [STEP_READING_RECORD] = FILL_CONNECTING,
        [STEP_REDIRECTED] = FILL_CONNECTING,
        [STEP_RESTARTING] = FILL_CONNECTING,
        [STEP_REAUTHENTICATING] = FILL_CONNECTING,
        [STEP_ADMITTING] = FILL_CONNECTING,
        [STEP_REHASHING] = FILL_RECEIVING,
        [STEP_RECEIVING] = FILL_RECEIVING,
        [STEP_RESUMING] = FILL_RECEIVING,
        [STEP_PAUSED_TURN] = FILL_RECEIVING,
        [STEP_PAUSED_WRITER] = FILL_RECEIVING,
        [STEP_DRAINING] = FILL_RECEIVING,
        [STEP_SEALING] = FILL_SEALING,
        [STEP_ABORTING] = FILL_CONNECTING,
        [STEP_ABORTING_BODY] = FILL_RECEIVING,
        [STEP_FAILING] = FILL_RECEIVING,  /* only from REHASHING */
        [STEP_DONE] = FILL_DONE,
        [STEP_FAILED] = FILL_FAILED,
        [STEP_CANCELLED] = FILL_CANCELLED,
};

static void fill_set_state(Fill *f, FillStep step) {
        FillState before = fill_state(f);

        f->step = step;
        if (fill_state(f) != before)
                fill_schedule(f);
}

static bool fill_is_final(const Fill *f) {
        return f->step >= STEP_DONE;
}

/* Only fill_fail(), fill_abort(), fill_abandon() and the end of a transfer record an error: each leaves
 * the step with it. */
_printf_(3, 0) static void fill_record_error(Fill *f, int error, const char *fmt, va_list ap) {
        assert(error < 0);
        if (f->error < 0)
                return; /* the first cause wins */

        char *m = NULL;
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        f->error = error;
        f->error_message = m;
}

_printf_(3, 4) static void fill_record_errorf(Fill *f, int error, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        fill_record_error(f, error, fmt, ap);
        va_end(ap);
}

static void fill_finish(Fill *f, int error);
static void fill_seal(Fill *f);
static bool fill_try_next_source(Fill *f);

/* The step after an error: the next source, FAILING while a worker holds the write, or the end. */
static void fill_leave_for_error(Fill *f) {
        assert(f->error < 0);
        if (fill_is_final(f))
                return;
        if (f->worker) {
                fill_set_state(f, STEP_FAILING);
                return;
        }
        if (!fill_try_next_source(f))
                fill_finish(f, f->error);
}

int fill_fail(Fill *f, int error, const char *fmt, ...) {
        va_list ap;

        if (fill_is_final(f))
                return error;
        va_start(ap, fmt);
        fill_record_error(f, error, fmt, ap);
        va_end(ap);
        /* In ABORTING, the transport's end of the transfer moves on; in FAILING, the worker's. */
        if (f->step != STEP_ABORTING && f->step != STEP_ABORTING_BODY)
                fill_leave_for_error(f);
        return error;
}

FillIntake fill_abort(Fill *f, int error, const char *fmt, ...) {
        va_list ap;

        if (fill_is_final(f))
                return INTAKE_ABORT;
        va_start(ap, fmt);
        fill_record_error(f, error, fmt, ap);
        va_end(ap);
        fill_set_state(f, fill_state(f) == FILL_RECEIVING ? STEP_ABORTING_BODY : STEP_ABORTING);
        return INTAKE_ABORT;
}

/* The error of a failed write, with the message for it: what fill_fail() and fill_abort() take. */
static int write_error_message(const Fill *f, int r, char **ret) {
        int k;

        if (r != -ENOSPC && r != -EDQUOT)
                k = asprintf(ret, "Cannot write %s: %s", f->id, strerror(-r));
        /* With the size known, it is the writer's reservation that fails, at the start. */
        else if (f->bytes_total != UINT64_MAX)
                k = asprintf(ret, "No space left in the cache for %s: its %" PRIu64 " bytes do not fit", f->id,
                             f->bytes_total);
        else
                k = asprintf(ret, "No space left in the cache for %s after %" PRIu64 " bytes", f->id,
                             f->bytes_written);
        if (k < 0)
                *ret = NULL;
        return r == -EDQUOT ? -ENOSPC : r;
}

/* ---- requests ------------------------------------------------------------------------------------- */

bool fill_from_peer(const Fill *f) {
        return f->phase == PHASE_IMAGE && f->sources && f->sources[f->source];
}

const char *fill_peer(const Fill *f) {
        if (!fill_from_peer(f))
                return NULL;
        return f->peer_node ?: f->sources[f->source];
}

const char *fill_peer_path(const Fill *f) {
        return f->peer_path;
}

usec_t fill_started_usec(const Fill *f) {
        return f->started_usec;
}

/* ---- stalls ---------------------------------------------------------------------------------------- */

/* Steps in which the transfer is held by the fill itself, not starved by the upstream. */
static bool fill_holds_transfer(const Fill *f) {
        return f->step == STEP_ADMITTING || f->step == STEP_REHASHING || f->step == STEP_PAUSED_TURN ||
               f->step == STEP_PAUSED_WRITER;
}

static int on_stall_check(sd_event_source *s, uint64_t usec, void *userdata) {
        Fill *f = userdata;
        usec_t timeout = f->fetcher->transport_settings.low_speed_timeout;

        if (fill_is_final(f) || !f->transfer)
                return 0; /* the next request re-arms it */
        /* A hold of ours is not the upstream's stall: the clock starts again when it ends. */
        if (fill_holds_transfer(f))
                f->progress_usec = usec;
        if (usec < f->progress_usec + timeout) {
                (void) sd_event_source_set_time(s, f->progress_usec + timeout);
                (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
                return 0;
        }
        char span[FORMAT_TIMESPAN_MAX];
        _cleanup_(freep) char *shown = url_redact_userinfo(f->request_url);
        fill_ref(f);
        fill_fail(f, -ETIMEDOUT, "Fetching %s timed out: no byte came from %s for LowSpeedTimeoutSec= (%s)", f->id,
                  shown ?: "the upstream", format_timespan(span, sizeof(span), timeout));
        fill_unref(f);
        return 0;
}

/* A byte came. On the path of every chunk: the loop's time of this turn, not a clock read. */
static void fill_note_progress(Fill *f) {
        if (sd_event_now(f->fetcher->event, CLOCK_MONOTONIC, &f->progress_usec) < 0)
                f->progress_usec = now_usec(CLOCK_MONOTONIC);
}

/* The transfer just started: without a byte for LowSpeedTimeoutSec= it ends. libcurl's own low-speed
 * check averages the speed over seconds first, and let a stall last about twice as long; this one checks
 * the time of the last byte. One timer per fill, moved only when it fires: bytes only note the time. */
static void fill_stall_watch(Fill *f) {
        usec_t timeout = f->fetcher->transport_settings.low_speed_timeout;

        f->progress_usec = now_usec(CLOCK_MONOTONIC);
        if (timeout == 0 || timeout == USEC_INFINITY)
                return;
        if (sd_event_source_set_time(f->stall, usec_add(f->progress_usec, timeout)) >= 0)
                (void) sd_event_source_set_enabled(f->stall, SD_EVENT_ONESHOT);
}

static int fill_request(Fill *f, const char *url) {
        Fetcher *fe = f->fetcher;
        bool peer = fill_from_peer(f);
        _cleanup_(freep) char *via = peer && f->via ? g_strjoinv(" ", f->via) : NULL;
        uint64_t fs_size;

        if (!f->phase_url) {
                f->phase_url = strdup(url);
                if (!f->phase_url)
                        return fill_fail(f, -ENOMEM, "Out of memory");
                f->send_token = !peer; /* the upstream's token is for the upstream only */
        } else if (f->send_token && !url_same_origin(f->phase_url, url))
                f->send_token = false; /* never hand the token to another origin */

        char *copy = strdup(url);
        if (!copy)
                return fill_fail(f, -ENOMEM, "Out of memory");
        free_and_replace(f->request_url, copy);
        f->token_generation = fe->token_generation;

        FillRequest req = {
                .url = f->request_url,
                .token = f->send_token ? fe->token : NULL,
                .json = f->phase == PHASE_RECORD,
                .range_start = f->phase == PHASE_IMAGE ? f->resume_offset : 0,
                .if_range = f->resume_etag,
                .max_body = UPSTREAM_RECORD_MAX,
                .peer_self = peer ? fleet_self(fe->fleet) : NULL,
                .peer_token = peer ? fleet_token(fe->fleet) : NULL,
                .peer_via = via,
        };
        /* Nothing larger than the filesystem can be written, streamed or not. */
        if (f->phase == PHASE_IMAGE)
                req.max_body = image_cache_fs_space(fe->cache, &fs_size, NULL) >= 0 ? fs_size : UINT64_MAX;

        int r = fe->transport->start(f, &req);
        if (r < 0)
                return fill_fail(f, r, "Cannot set up the transfer of %s: %s", f->id, strerror(-r));
        fill_set_state(f, STEP_REQUESTING);
        fill_stall_watch(f);
        /* A peer that is slow to answer is skipped; the origin has ConnectTimeoutSec= and the like. */
        if (peer && sd_event_source_set_time_relative(f->first_byte, fleet_peer_timeout(fe->fleet)) >= 0)
                (void) sd_event_source_set_enabled(f->first_byte, SD_EVENT_ONESHOT);
        return 0;
}

/* Is there a partial file we may continue? Sets resume_offset/resume_etag. */
static void fill_prepare_resume(Fill *f) {
        f->resume_offset = 0;
        f->resume_etag = mfree(f->resume_etag);
        if (!f->no_resume &&
            image_cache_partial_info(f->fetcher->cache, f->id, &f->resume_offset, &f->resume_etag) < 0)
                f->resume_offset = 0;
        /* After a switch of sources: where the last one stopped, without its entity-tag, which means
         * nothing to the next; the digest, known, vouches for the splice. */
        if (f->switched) {
                f->resume_offset = f->bytes_written;
                f->resume_etag = mfree(f->resume_etag);
        }
}

static int fill_start_phase(Fill *f, FillPhase phase) {
        Fetcher *fe = f->fetcher;
        _cleanup_(freep) char *url = NULL;
        int r;

        f->phase = phase;
        f->phase_url = mfree(f->phase_url);
        f->redirects = 0;

        if (phase == PHASE_RECORD)
                r = upstream_record_url(fe->url, f->id, &url);
        else if (fill_from_peer(f))
                r = asprintf(&url, "%s/images/%s", fill_peer(f), f->id) < 0 ? -ENOMEM : 0;
        else
                r = upstream_image_url(fe->kind, fe->url, f->id, &url);
        if (phase == PHASE_IMAGE) {
                fill_prepare_resume(f);
                /* The peer asked is on our path from now: the loop guard holds before its answer comes
                 * (fill_note_path() puts its whole path in once it does). */
                free(f->peer_path);
                f->peer_path = fill_from_peer(f) ? strdup(fill_peer(f)) : NULL;
        }
        if (r < 0)
                return fill_fail(f, r, "Cannot build the upstream URL of %s", f->id);
        return fill_request(f, url);
}

void fill_start(Fill *f) {
        assert(f->step == STEP_WAITING);
        f->has_slot = true;
        if (f->fetcher->fleet && !(f->flags & FETCH_ORIGIN_ONLY))
                f->sources = fleet_sources(f->fetcher->fleet, f->id);
        (void) fill_start_phase(f, f->fetcher->kind == UPSTREAM_GLANCE ? PHASE_RECORD : PHASE_IMAGE);
}

/* ---- the response's headers and body (inside the transport's callbacks) ------------------------- */

static int on_admit(sd_event_source *s, void *userdata);

/* Where the bytes come from: the peer and the path it named (an older node names none: itself then). */
static void fill_note_path(Fill *f, const FillResponse *r) {
        Fetcher *fe = f->fetcher;

        f->peer_path = mfree(f->peer_path);
        if (!fill_from_peer(f))
                return;
        f->peer_path = strdup(r->peer_path ?: fill_peer(f)); /* NULL on OOM: only the loop guard is weaker */
        g_auto(GStrv) path = fleet_split_nodes(f->peer_path);
        fe->fleet_counters.tree_depth = MAX(fe->fleet_counters.tree_depth, path ? g_strv_length(path) : 1);
}

static FillIntake fill_accept_image(Fill *f, const FillResponse *r) {
        if (f->switched && f->body_offset != f->resume_offset)
                return fill_abort(f, -EPROTO, "%s cannot continue %s at byte %" PRIu64, f->request_url, f->id,
                                  f->resume_offset);
        if (f->switched && f->switched_total != UINT64_MAX && f->bytes_total != f->switched_total)
                return fill_abort(f, -EPROTO, "%s is %" PRIu64 " bytes at one source and %" PRIu64 " at the next",
                                  f->id, f->switched_total, f->bytes_total);
        free(f->etag);
        if (!(f->etag = r->etag ? strdup(r->etag) : NULL) && r->etag)
                return fill_abort(f, -ENOMEM, "Out of memory");
        /* After a switch the digest stays the one chosen first: a later source may not change it. */
        if (!f->has_expected)
                fill_choose_expected(f, r);
        fill_note_path(f, r);
        /* Making room and opening files is I/O: on the loop, while the transfer is held. */
        fill_set_state(f, STEP_ADMITTING);
        (void) sd_event_source_set_enabled(f->admit, SD_EVENT_ONESHOT);
        return INTAKE_HOLD;
}

FillIntake fill_on_headers(Fill *f, const FillResponse *r) {
        if (f->step != STEP_REQUESTING)
                return INTAKE_ABORT;
        fill_note_progress(f);
        (void) sd_event_source_set_enabled(f->first_byte, SD_EVENT_OFF);

        switch (fill_judge_response(f, r)) {
        case VERDICT_REDIRECT:
                f->next_url = strdup(r->location);
                if (!f->next_url)
                        return fill_abort(f, -ENOMEM, "Out of memory");
                fill_set_state(f, STEP_REDIRECTED);
                return INTAKE_SKIPPED;
        case VERDICT_PEER:
                fill_set_state(f, STEP_REDIRECTED);
                return INTAKE_SKIPPED;
        case VERDICT_RESTART:
                if (f->read_fd >= 0)
                        /* Readers have bytes of the partial file: it cannot start over under them. */
                        return fill_abort(f, -EPROTO, "%s cannot continue %s at byte %" PRIu64, f->request_url,
                                          f->id, f->resume_offset);
                fill_set_state(f, STEP_RESTARTING);
                return INTAKE_SKIPPED;
        case VERDICT_REAUTH:
                fill_set_state(f, STEP_REAUTHENTICATING);
                return INTAKE_SKIPPED;
        case VERDICT_BODY:
                if (f->phase == PHASE_IMAGE)
                        return fill_accept_image(f, r);
                fill_set_state(f, STEP_READING_RECORD);
                return INTAKE_TAKEN;
        default:
                return INTAKE_ABORT; /* fill_abort() moved the fill to ABORTING */
        }
}

static FillIntake fill_take_record(Fill *f, const char *data, size_t n) {
        int r = buf_append(&f->record_buf, &f->record_len, UPSTREAM_RECORD_MAX, data, n);
        if (r == -EFBIG)
                return fill_abort(f, -EPROTO, "The image record of %s is larger than %u bytes", f->id,
                                  UPSTREAM_RECORD_MAX);
        if (r < 0)
                return fill_abort(f, -ENOMEM, "Out of memory");
        return INTAKE_TAKEN;
}

/* True when taking n more bytes would exceed this turn's budget: the fill is then held and resumed from
 * a defer source, after the sources that were already waiting (HTTP clients, bus calls) had their turn.
 * The transport keeps the refused bytes and hands them over again when resumed. */
static bool fill_turn_spent(Fill *f, size_t n) {
        uint64_t turn = fetcher_turn(f->fetcher);

        if (f->turn != turn) {
                f->turn = turn;
                f->turn_bytes = 0;
        }
        if (f->turn_bytes > 0 && f->turn_bytes + n > FETCH_TURN_BUDGET)
                return true;
        f->turn_bytes += n;
        return false;
}

static FillIntake fill_take_image(Fill *f, const void *data, size_t n) {
        if (f->bytes_total != UINT64_MAX && f->bytes_written + n > f->bytes_total)
                return fill_abort(f, -EBADMSG, "Upstream sent more than the %" PRIu64 " bytes announced for %s",
                                  f->bytes_total, f->id);
        /* Of unknown size, it turns out too large to keep: dropped here, and its readers get an honest end
         * (it was on disk, where it cannot stay). */
        if (!f->too_large && f->bytes_written + n > f->cap)
                return fill_abort(f, -EFBIG, "Image %s is larger than MaxSize (%" PRIu64 " bytes): %s", f->id, f->cap,
                                  fill_streams(f) ? "dropped" : "not fetched");

        /* A failure of a writer thread ends the fill from on_writer_progress(). */
        int r = fill_writer_append(f->writer, data, n);
        if (r < 0) {
                _cleanup_(freep) char *m = NULL;
                int e = write_error_message(f, r, &m);
                return fill_abort(f, e, "%s", m ?: "Out of memory");
        }
        f->bytes_written += n;
        if (fill_from_peer(f))
                f->fetcher->fleet_counters.bytes_from_peers += n;
        else
                f->fetcher->fleet_counters.bytes_from_origin += n;
        if (!f->data_pending) {
                f->data_pending = true;
                fill_schedule(f);
        }
        return INTAKE_TAKEN;
}

FillIntake fill_on_body(Fill *f, const void *data, size_t n) {
        fill_note_progress(f);
        switch (f->step) {
        case STEP_READING_RECORD:
                return fill_take_record(f, data, n);
        case STEP_REDIRECTED:
        case STEP_RESTARTING:
        case STEP_REAUTHENTICATING:
                return INTAKE_SKIPPED;
        case STEP_RECEIVING:
                if (fill_turn_spent(f, n)) {
                        fill_set_state(f, STEP_PAUSED_TURN);
                        fetcher_yield(f->fetcher, f);
                        return INTAKE_HOLD;
                }
                if (fill_writer_full(f->writer)) {
                        fill_set_state(f, STEP_PAUSED_WRITER); /* on_writer_progress() resumes it */
                        return INTAKE_HOLD;
                }
                return fill_take_image(f, data, n);
        case STEP_RESUMING:
                /* The budget and the writer's cap are soft: what was held is taken whole. */
                return fill_take_image(f, data, n);
        case STEP_ABORTING:
        case STEP_ABORTING_BODY:
        case STEP_FAILING:
                return INTAKE_ABORT;
        default:
                /* Held: admitting, rehashing, paused. */
                return INTAKE_HOLD;
        }
}

/* ---- admission, resuming, the writer (on the loop) ------------------------------------------------- */

static void on_writer_progress(FillWriter *fw, void *userdata);

/* The most the cache could ever hold of one image: MaxSize=, and the filesystem less KeepFree= (an image
 * larger than that would have every other one evicted for it, and still not fit). */
static uint64_t fill_keepable(Fill *f) {
        Fetcher *fe = f->fetcher;
        uint64_t fs_size, keep_free;

        if (image_cache_fs_space(fe->cache, &fs_size, NULL) < 0 ||
            image_cache_resolve_limit(fe->cache, &fe->keep_free, &keep_free) < 0)
                return f->cap;
        return MIN(f->cap, fs_size > keep_free ? fs_size - keep_free : 0);
}

/* Before a byte is written: the size cap, room in the cache, the write (new or resumed) and a reader
 * for subscribers. Negative: the fill failed (fill_fail()); 1: the partial file cannot be continued; 2: the
 * image cannot be kept, and is streamed through memory to its readers (nothing opened, nothing evicted). */
static int fill_admit(Fill *f) {
        Fetcher *fe = f->fetcher;
        uint64_t total = f->bytes_total, offset = f->body_offset, size = 0, keepable;
        int r;

        r = image_cache_resolve_limit(fe->cache, &fe->max_size, &f->cap);
        if (r < 0)
                return fill_fail(f, r, "Cannot resolve MaxSize= for %s: %s", f->id, strerror(-r));
        if (total != UINT64_MAX && total > (keepable = fill_keepable(f))) {
                if (!fill_streams(f))
                        return fill_fail(f, -EFBIG,
                                         "Image %s is %" PRIu64 " bytes, more than the cache can keep (%" PRIu64 " bytes, MaxSize= and KeepFree=): not fetched",
                                         f->id, total, keepable);
                /* Readers want it from its first byte: a continuation is of no use to them. */
                if (offset > 0 || f->switched)
                        return 1;
                f->too_large = true;
                return 2;
        }
        fetcher_make_room(fe, f->id, total != UINT64_MAX ? total - MIN(offset, total) : 0,
                          fe->enforce_max_size ? f->cap : UINT64_MAX);

        const Checksum *expected = f->has_expected ? &f->expected : NULL;
        if (offset > 0) {
                r = image_cache_resume_write(fe->cache, f->id, expected, &size, &f->write);
                if (r >= 0 && size != offset)
                        image_cache_suspend_write(fe->cache, TAKE_PTR(f->write));
                if (r < 0 || size != offset)
                        return 1;
        } else {
                r = image_cache_begin_write(fe->cache, f->id, expected, &f->write);
                if (r < 0)
                        return fill_fail(f, r, "Cannot write %s into the cache: %s", f->id, strerror(-r));
        }
        /* After a switch of sources the readers keep the fd they have: the same partial file. */
        r = f->read_fd >= 0 ? 0 : cache_write_open_reader(f->write, &f->read_fd);
        if (r < 0)
                return fill_fail(f, r, "Cannot open the partial file of %s: %s", f->id, strerror(-r));
        r = cache_write_set_etag(f->write, f->etag);
        if (r < 0)
                log_image_errno(LOG_DEBUG, r, NULL, f->id,
                                "Cannot remember the ETag of %s, a later fill will start over: %m", f->id);
        f->bytes_written = offset;
        return 0;
}

static void fill_body_complete(Fill *f);

static void fill_resume(Fill *f) {
        fill_ref(f);
        fill_set_state(f, STEP_RESUMING);
        f->fetcher->transport->resume(f);
        if (f->step == STEP_RESUMING)
                fill_set_state(f, STEP_RECEIVING);
        fill_unref(f);
}

void fill_resume_transfer(Fill *f) {
        if (f->step == STEP_PAUSED_TURN)
                fill_resume(f);
}

/* Receiving from here on: the body goes to the writer threads (to the file, or, too large to keep, to
 * memory only). */
static void fill_receive(Fill *f) {
        int r;

        if (f->too_large) {
                r = fill_writer_new_streaming(f->fetcher->event, f->has_expected ? f->expected.algo : CHECKSUM_SHA256,
                                              on_writer_progress, f, &f->writer);
                if (r >= 0)
                        log_image(LOG_INFO, NULL, f->id,
                                  "Streaming %s (%" PRIu64 " bytes) to its readers without keeping it: the cache cannot hold it",
                                  f->id, f->bytes_total);
        } else
                r = fill_writer_new(f->fetcher->event, f->write, f->read_fd, f->bytes_total, on_writer_progress, f,
                                    &f->writer);
        if (r < 0) {
                fill_fail(f, r, "Cannot start writing %s: %s", f->id, strerror(-r));
                return;
        }
        f->write = NULL;
        fill_set_state(f, STEP_RECEIVING);
        if (f->transfer)
                fill_resume(f);
        else
                fill_body_complete(f); /* the body was empty, or ended while held */
}

static void on_rehashed(int result, void *userdata) {
        Fill *f = userdata;

        f->worker = NULL;
        if (f->step == STEP_FAILING)
                fill_leave_for_error(f); /* cancelled meanwhile: the partial file stays for a resume */
        else if (result < 0) {
                /* The partial file is unusable: drop it, the next attempt starts over. */
                image_cache_abort_write(f->fetcher->cache, TAKE_PTR(f->write));
                fill_fail(f, -EIO, "Cannot read the partial file of %s to resume: %s", f->id, strerror(-result));
        } else
                fill_receive(f);
        fill_unref(f);
}

static int run_rehash(void *userdata) {
        return cache_write_rehash(((Fill *) userdata)->write);
}

static int run_seal(void *userdata) {
        return cache_write_seal(((Fill *) userdata)->write);
}

/* The worker borrows f->write (and a reference to f) until done runs. A worker that cannot start fails
 * the fill, keeping the partial file for the next one: its work (fsync, hashing a whole file) must never
 * run on the event loop instead. */
static void fill_start_worker(Fill *f, const char *name, WorkerRun run, WorkerDone done) {
        int r = worker_start(f->fetcher->event, name, run, done, f, &f->worker);
        if (r < 0) {
                fill_fail(f, r, "Cannot start a thread to %s %s: %s", name, f->id, strerror(-r));
                return;
        }
        fill_ref(f);
}

static void fill_admitted(Fill *f) {
        int r = fill_admit(f);
        if (r < 0)
                return; /* failed */
        if (r == 2) {
                fill_receive(f);
                return;
        }
        if (r > 0) {
                /* Not the continuation we asked for after all: discard this body, then start over. */
                fill_set_state(f, STEP_RESTARTING);
                if (f->transfer)
                        f->fetcher->transport->resume(f);
                else
                        fill_on_transfer_end(f, 0, NULL);
                return;
        }
        if (f->body_offset > 0) {
                log_image(LOG_INFO, NULL, f->id, "Resuming %s at byte %" PRIu64, f->id, f->body_offset);
                fill_set_state(f, STEP_REHASHING);
                fill_start_worker(f, "fill-rehash", run_rehash, on_rehashed);
                return;
        }
        fill_receive(f);
}

static int on_admit(sd_event_source *s, void *userdata) {
        Fill *f = userdata;

        if (f->step == STEP_ADMITTING) {
                fill_ref(f);
                fill_admitted(f);
                fill_unref(f);
        }
        return 0;
}

static void fill_end_streamed(Fill *f);

/* The writer wrote chunks or failed: go on receiving, or seal, or fail. Streaming, its chunks outlive the
 * fill's end for the readers still behind: only their collection is news then. */
static void on_writer_progress(FillWriter *fw, void *userdata) {
        Fill *f = userdata;

        if (fill_is_final(f))
                return;
        int r = fill_writer_error(fw);
        if (r < 0) {
                _cleanup_(freep) char *m = NULL;
                int e = write_error_message(f, r, &m);
                fill_fail(f, e, "%s", m ?: "Out of memory");
                return;
        }
        if (f->step == STEP_DRAINING && fill_writer_done(fw) && f->too_large)
                fill_end_streamed(f);
        else if (f->step == STEP_DRAINING && fill_writer_done(fw)) {
                f->write = fill_writer_free(TAKE_PTR(f->writer), false);
                fill_seal(f);
        } else if (f->step == STEP_PAUSED_WRITER && !fill_writer_full(fw))
                fill_resume(f);
}

/* ---- the end of a transfer, sealing ----------------------------------------------------------------- */

static void fill_take_record_end(Fill *f) {
        const char *why = "empty";
        int r = f->record_buf ? upstream_record_parse(f->record_buf, f->record_len, &f->record, &why) : -EBADMSG;

        f->record_buf = mfree(f->record_buf);
        f->record_len = 0;
        if (r == -ENOMEM)
                fill_fail(f, r, "Out of memory");
        else if (r < 0)
                fill_fail(f, -EPROTO, "The upstream's record of %s is malformed: %s", f->id, why);
        else {
                f->has_record = true;
                if (!streq(f->record.status, "active"))
                        fill_fail(f, -ENOENT, "Image %s is '%s' upstream, not 'active'", f->id, f->record.status);
                else
                        (void) fill_start_phase(f, PHASE_IMAGE);
        }
}

/* Adds node to f->via (the nodes no peer may point this fill at, from now on). */
static void fill_add_via(Fill *f, const char *node) {
        size_t n = f->via ? g_strv_length(f->via) : 0;

        if (fleet_nodes_contain(f->via, node))
                return;
        f->via = g_renew(char *, f->via, n + 2);
        f->via[n] = g_strdup(node);
        f->via[n + 1] = NULL;
}

/* A peer at its FanOut= pointed at another node: ask that one, which streams from its own fill. The
 * request names the nodes passed (Via), so it never starts a fill there, nor is pointed back. */
static void fill_follow_peer(Fill *f) {
        _cleanup_(freep) char *to = TAKE_PTR(f->next_peer);

        log_image(LOG_DEBUG, NULL, f->id, "Peer %s serves enough nodes with %s; asking %s", fill_peer(f), f->id, to);
        fill_add_via(f, fill_peer(f));
        free_and_replace(f->peer_node, to);
        f->hops++;
        f->fetcher->fleet_counters.redirects_followed++;
        (void) fill_start_phase(f, PHASE_IMAGE);
}

static void fill_follow_redirect(Fill *f) {
        if (f->next_peer) {
                fill_follow_peer(f);
                return;
        }
        _cleanup_(freep) char *to = TAKE_PTR(f->next_url);
        f->redirects++;
        (void) fill_request(f, to);
}

static void fill_start_over(Fill *f) {
        /* The partial file cannot be continued: drop it and download the whole image. */
        (void) image_cache_forget_partial(f->fetcher->cache, f->id);
        log_image(LOG_INFO, NULL, f->id, "Upstream cannot continue %s from byte %" PRIu64 ", starting over", f->id,
                  f->resume_offset);
        f->no_resume = true;
        (void) fill_start_phase(f, PHASE_IMAGE);
}

/* Asks again, once, when TokenFile= holds another token than the refused request carried, or Keystone
 * gave a new one. */
static void fill_reauthenticate(Fill *f) {
        Fetcher *fe = f->fetcher;

        if (fe->token_generation == f->token_generation && fetcher_wait_for_token(fe, f))
                return; /* fill_token_refreshed() goes on */
        fetcher_refresh_token(fe);
        if (fe->token_generation == f->token_generation) {
                fill_fail(f, -EPROTO, "%s", f->refusal ?: "Upstream refused access; check TokenFile=");
                return;
        }
        _cleanup_(freep) char *url = strdup(f->request_url);
        if (!url) {
                fill_fail(f, -ENOMEM, "Out of memory");
                return;
        }
        f->reauthenticated = true;
        f->refusal = mfree(f->refusal);
        (void) fill_request(f, url);
}

void fill_token_refreshed(Fill *f) {
        if (!fill_is_final(f) && f->step == STEP_REAUTHENTICATING)
                fill_reauthenticate(f);
}

void fill_fail_with(Fill *f, int error, const char *message) {
        fill_fail(f, error, "Cannot fetch %s: %s", f->id, message ?: strerror(-error));
}

void fill_on_transfer_end(Fill *f, int error, const char *message) {
        if (fill_is_final(f))
                return;
        if (error < 0) {
                /* The transfer is over either way. After an abort, the cause recorded with it wins over
                 * curl's "write error". */
                fill_record_errorf(f, error, "%s", message ?: strerror(-error));
                fill_leave_for_error(f);
                return;
        }

        switch (f->step) {
        case STEP_READING_RECORD:
                fill_take_record_end(f);
                return;
        case STEP_REDIRECTED:
                fill_follow_redirect(f);
                return;
        case STEP_RESTARTING:
                fill_start_over(f);
                return;
        case STEP_REAUTHENTICATING:
                fill_reauthenticate(f);
                return;
        case STEP_ADMITTING:
                /* An empty body: admit it now. */
                (void) sd_event_source_set_enabled(f->admit, SD_EVENT_OFF);
                fill_admitted(f);
                return;
        case STEP_REHASHING:
        case STEP_FAILING:
                return; /* on_rehashed() goes on */
        case STEP_RECEIVING:
        case STEP_RESUMING:
        case STEP_PAUSED_TURN:
        case STEP_PAUSED_WRITER:
                fill_body_complete(f);
                return;
        case STEP_ABORTING:
        case STEP_ABORTING_BODY:
                fill_leave_for_error(f);
                return;
        default:
                fill_fail(f, -EPROTO, "Upstream sent no response for %s", f->id);
        }
}

static void fill_body_complete(Fill *f) {
        if (f->bytes_total != UINT64_MAX && f->bytes_written != f->bytes_total) {
                fill_fail(f, -EBADMSG, "Upstream sent %" PRIu64 " of the %" PRIu64 " bytes of %s", f->bytes_written,
                          f->bytes_total, f->id);
                return;
        }
        f->bytes_total = f->bytes_written;
        if (f->transfer)
                f->fetcher->transport->stop(f);
        if (f->has_slot) {
                f->has_slot = false;
                fetcher_release_slot(f->fetcher);
        }
        /* The writer may still have chunks to write: seal when it is done. */
        fill_set_state(f, STEP_DRAINING);
        fill_writer_close(f->writer);
        on_writer_progress(f->writer, f);
}

static void fill_keep(Fill *f) {
        Fetcher *fe = f->fetcher;

        int r = image_cache_commit_write(fe->cache, TAKE_PTR(f->write));
        if (r < 0) {
                fill_fail(f, r, "Cannot record %s in the cache: %s", f->id, strerror(-r));
                return;
        }
        f->kept = true; /* the cache's observer logs "Cached" */
        if (fill_from_peer(f))
                fe->fleet_counters.fills_from_peers++;
        if (fe->fleet)
                fleet_note_filled(fe->fleet, f->id, f->peer_path);

        /* Images written concurrently may have pushed the cache over MaxSize; the newest is used last. */
        uint64_t cap;
        if (fe->enforce_max_size && image_cache_resolve_limit(fe->cache, &fe->max_size, &cap) >= 0 &&
            image_cache_size(fe->cache) > cap)
                (void) image_cache_prune(fe->cache, cap, NULL, NULL);
        fill_finish(f, 0);
}

static void on_sealed(int result, void *userdata) {
        Fill *f = userdata;

        f->worker = NULL;
        if (f->step == STEP_FAILING)
                fill_leave_for_error(f);
        else if (result == -EBADMSG) {
                Checksum actual;
                _cleanup_(freep) char *e = checksum_to_string(&f->expected);
                _cleanup_(freep) char *a = cache_write_digest(f->write, &actual) >= 0 ? checksum_to_string(&actual) : NULL;
                fill_fail(f, -EBADMSG, "Image %s failed verification: expected %s, got %s; moved to invalid/", f->id,
                          strempty(e), a ?: "?");
        } else if (result < 0)
                fill_fail(f, result == -EDQUOT ? -ENOSPC : result, "Cannot store %s: %s", f->id, strerror(-result));
        else
                fill_keep(f);
        fill_unref(f);
}

static void fill_seal(Fill *f) {
        fill_set_state(f, STEP_SEALING);
        fill_start_worker(f, "fill-seal", run_seal, on_sealed);
}

/* Every byte streamed through went to the digest: verified, the fill is done, and nothing is kept. The
 * writer stays, with the chunks readers behind still need (the last byte among them: readers get it only
 * now that it is verified). */
static void fill_end_streamed(Fill *f) {
        Checksum actual;
        int r = fill_writer_digest(f->writer, &actual);

        if (r < 0) {
                fill_fail(f, r, "Cannot digest %s: %s", f->id, strerror(-r));
                return;
        }
        if (f->has_expected && !checksum_equal(&actual, &f->expected)) {
                _cleanup_(freep) char *e = checksum_to_string(&f->expected), *a = checksum_to_string(&actual);
                fill_fail(f, -EBADMSG, "Image %s failed verification: expected %s, got %s; nothing was kept", f->id,
                          strempty(e), strempty(a));
                return;
        }
        log_image(LOG_INFO, NULL, f->id, "Streamed %s (%" PRIu64 " bytes, %s) without keeping it", f->id,
                  f->bytes_written, f->has_expected ? "verified" : "no digest to verify");
        fill_finish(f, 0);
}

/* ---- the next source ---------------------------------------------------------------------------- */

/* After these, another source cannot do better: the image is absent (a peer's 404 is what the origin told
 * it), no space, too large, cancelled. Bad bytes from a peer show at sealing, which is final too. */
static bool error_moves_on(int error) {
        return error != -ENOENT && error != -ENOSPC && error != -EFBIG && error != -ECANCELED && error != -ENOMEM;
}

/* A peer failed (refused, slow to answer, its stream broke): ask the next source, continuing the
 * partial file with a Range where bytes were written, the readers reading on. */
static bool fill_try_next_source(Fill *f) {
        Fetcher *fe = f->fetcher;

        if (!fe || !fill_from_peer(f) || !error_moves_on(f->error) || f->step == STEP_SEALING || fill_is_final(f))
                return false;
        if (f->bytes_written > 0 && !f->has_expected)
                return false; /* without a digest, bytes from two sources cannot be told to be one image */
        if (f->too_large && f->bytes_written > 0)
                return false; /* what was streamed is gone: there is no partial file to continue */

        /* A node we were pointed at failed us: back to the one that pointed us there, which points
         * elsewhere (or serves) now that it is in Via; else the next source, as without a fan-out. */
        const char *next = f->peer_node ? f->sources[f->source] : f->sources[f->source + 1];
        log_image(LOG_WARNING, NULL, f->id, "%s; going on with %s", f->error_message ?: "The peer failed",
                  next ?: "the upstream");
        if (f->transfer)
                fe->transport->stop(f);
        (void) sd_event_source_set_enabled(f->admit, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(f->first_byte, SD_EVENT_OFF);
        if (f->writer)
                f->write = fill_writer_free(TAKE_PTR(f->writer), /* write_rest= */ true);
        if (f->write && f->bytes_written > 0) {
                image_cache_suspend_write(fe->cache, TAKE_PTR(f->write));
                f->switched = true;
                f->switched_total = f->bytes_total;
        } else if (f->write) {
                /* Nobody read a byte: start afresh, with a new reader. */
                image_cache_discard_write(fe->cache, TAKE_PTR(f->write));
                f->read_fd = safe_close(f->read_fd);
        }

        f->error = 0;
        f->error_message = mfree(f->error_message);
        fe->fleet_counters.peer_failovers++;
        if (f->peer_node) {
                fill_add_via(f, f->peer_node);
                f->peer_node = mfree(f->peer_node);
        } else {
                f->source++;
                g_strfreev(f->via);
                f->via = NULL;
                f->hops = 0;
        }
        (void) fill_start_phase(f, PHASE_IMAGE); /* fails on by itself */
        return true;
}

/* ---- finishing ------------------------------------------------------------------------------------ */

/* Interruptions keep the partial file for a resume; bad data and lack of space do not. */
static bool error_keeps_partial(int error) {
        return error != -EBADMSG && error != -ENOSPC && error != -EFBIG && error != -EIO;
}

static void fill_dispose_write(Fill *f, int error) {
        ImageCache *cache = f->fetcher->cache;
        bool keep = !f->too_large && f->bytes_written > 0 && error_keeps_partial(error);

        if (f->too_large && error == 0)
                return; /* the streaming writer holds what readers behind still read; it goes with the fill */

        if (f->writer)
                f->write = fill_writer_free(TAKE_PTR(f->writer), /* write_rest= */ keep);
        if (!f->write)
                return;
        if (error == -EBADMSG)
                image_cache_abort_write(cache, TAKE_PTR(f->write)); /* evidence, for Clean */
        else if (keep)
                image_cache_suspend_write(cache, TAKE_PTR(f->write));
        else
                image_cache_discard_write(cache, TAKE_PTR(f->write));
}

static void fill_log_end(const Fill *f) {
        int error = f->error;

        if (f->step == STEP_FAILED)
                log_image_errno(error == -EBADMSG ? LOG_ERR : LOG_WARNING, error,
                                error == -EBADMSG ? IMGCACHE_MESSAGE_IMAGE_INVALID : NULL, f->id, "%s",
                                f->error_message ?: "fetch failed");
        else if (f->step == STEP_CANCELLED)
                log_image(LOG_INFO, NULL, f->id, "%s", f->error_message ?: "cancelled");
}

/* Ends a fill: error 0 → DONE, -ECANCELED → CANCELLED, else FAILED (f->error says why). On the loop, with
 * no worker running. */
static void fill_finish(Fill *f, int error) {
        Fetcher *fe = f->fetcher;

        assert(!f->worker);
        assert(error == 0 || error == f->error); /* recorded by whoever chose the end */
        if (fill_is_final(f))
                return;

        fill_ref(f);
        if (f->transfer)
                fe->transport->stop(f);
        (void) sd_event_source_set_enabled(f->admit, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(f->first_byte, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(f->stall, SD_EVENT_OFF);
        bool waiting = f->step == STEP_WAITING;
        fill_dispose_write(f, error);
        f->record_buf = mfree(f->record_buf);

        fill_set_state(f, error == 0 ? STEP_DONE : error == -ECANCELED ? STEP_CANCELLED : STEP_FAILED);
        fill_log_end(f);
        fetcher_fill_finished(fe, f, waiting);
        if (f->has_slot) {
                f->has_slot = false;
                fetcher_release_slot(fe);
        }
        fill_unref(f);
}

/* Not fill_fail(): no next source is tried while the daemon stops. */
void fill_abandon(Fill *f) {
        /* A seal that renamed the file is committed; a rehash ends the fill as cancelled. */
        if (f->step == STEP_REHASHING) {
                fill_record_errorf(f, -ECANCELED, "Fetch of %s cancelled: the daemon is stopping", f->id);
                fill_set_state(f, STEP_FAILING);
        }
        if (f->worker)
                worker_complete(f->worker);
        if (!fill_is_final(f)) {
                fill_record_errorf(f, -ECANCELED, "Fetch of %s cancelled: the daemon is stopping", f->id);
                fill_finish(f, f->error);
        }
}

/* ---- the Fill API ----------------------------------------------------------------------------------- */

static int on_first_byte_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Fill *f = userdata;

        if (f->step != STEP_REQUESTING || fill_is_final(f))
                return 0;
        fill_ref(f);
        fill_fail(f, -ETIMEDOUT, "Peer %s sent no response for %s within PeerTimeoutSec=", fill_peer(f),
                  f->id);
        fill_unref(f);
        return 0;
}

Fill *fill_new(Fetcher *fe, const char *id, const Checksum *expected, FetchFlags flags) {
        Fill *f = calloc(1, sizeof(Fill));
        if (!f)
                return NULL;
        *f = (Fill) {
                .n_ref = 1,
                .fetcher = fe,
                .id = strdup(id),
                .step = STEP_WAITING,
                .started_usec = now_usec(CLOCK_MONOTONIC),
                .read_fd = -EBADF,
                .bytes_total = UINT64_MAX,
                .cap = UINT64_MAX,
                .has_caller_expected = expected,
                .flags = flags,
        };
        if (expected)
                f->caller_expected = *expected;
        if (!f->id || sd_event_add_defer(fe->event, &f->admit, on_admit, f) < 0 ||
            sd_event_add_time(fe->event, &f->first_byte, CLOCK_MONOTONIC, USEC_INFINITY, 0,
                                       on_first_byte_timeout, f) < 0 ||
            /* A tenth of a second of slack: the stall is promised to end within a second of its due. */
            sd_event_add_time(fe->event, &f->stall, CLOCK_MONOTONIC, USEC_INFINITY, 100 * USEC_PER_MSEC,
                              on_stall_check, f) < 0) {
                sd_event_source_unref(f->admit);
                sd_event_source_unref(f->first_byte);
                sd_event_source_unref(f->stall);
                free(f->id);
                free(f);
                return NULL;
        }
        (void) sd_event_source_set_enabled(f->admit, SD_EVENT_OFF);
        (void) sd_event_source_set_description(f->admit, "fill-admit");
        (void) sd_event_source_set_enabled(f->first_byte, SD_EVENT_OFF);
        (void) sd_event_source_set_description(f->first_byte, "fill-peer-first-byte");
        (void) sd_event_source_set_enabled(f->stall, SD_EVENT_OFF);
        (void) sd_event_source_set_description(f->stall, "fill-stall");
        return f;
}

Fill *fill_ref(Fill *f) {
        if (f)
                f->n_ref++;
        return f;
}

Fill *fill_unref(Fill *f) {
        if (!f || --f->n_ref > 0)
                return NULL;

        assert(!f->transfer && !f->write && !f->worker && !f->subs);
        assert(!f->writer || f->too_large);
        fill_writer_free(f->writer, /* write_rest= */ false);
        if (f->fetcher)
                g_hash_table_remove(f->fetcher->all, f);
        sd_event_source_disable_unref(f->admit);
        sd_event_source_disable_unref(f->first_byte);
        sd_event_source_disable_unref(f->stall);
        g_strfreev(f->sources);
        g_strfreev(f->via);
        free(f->peer_node);
        free(f->next_peer);
        free(f->peer_path);
        free(f->next_url);
        free(f->request_url);
        free(f->refusal);
        free(f->record_buf);
        upstream_record_done(&f->record);
        free(f->resume_etag);
        free(f->phase_url);
        free(f->etag);
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
        return fill_step_state[f->step];
}

uint64_t fill_bytes_written(const Fill *f) {
        return f->bytes_written;
}

uint64_t fill_bytes_total(const Fill *f) {
        return f->bytes_total;
}

int fill_error(const Fill *f) {
        return f->step == STEP_FAILED || f->step == STEP_CANCELLED ? f->error : 0;
}

const char *fill_error_message(const Fill *f) {
        return f->step == STEP_FAILED || f->step == STEP_CANCELLED ? f->error_message : NULL;
}

bool fill_kept(const Fill *f) {
        return f->step == STEP_DONE && f->kept;
}

bool fill_has_headers(const Fill *f) {
        FillState state = fill_state(f);

        /* After a switch of sources the reader is open already, but the next source's headers are not
         * in before RECEIVING. */
        return fill_state_is_final(state) || (state >= FILL_RECEIVING && (f->read_fd >= 0 || f->too_large));
}

bool fill_expected(const Fill *f, Checksum *ret) {
        /* From the accepted headers on, as HTTP sees them (REHASHING included): a response that begins
         * while a resumed fill rehashes carries the digest too. */
        if (!f->has_expected || fill_state(f) < FILL_RECEIVING)
                return false;
        *ret = f->expected;
        return true;
}

ssize_t fill_pread(const Fill *f, void *buf, size_t size, uint64_t offset) {
        /* The newest bytes may not be on disk yet; once the writer is gone, everything is. Streamed through,
         * the writer's chunks are all there is. */
        if (f->writer)
                return fill_writer_pread(f->writer, buf, size, offset);
        if (f->read_fd < 0)
                return -EBADF;
        return pread_retry(f->read_fd, buf, size, offset);
}

/* Cancelling a fill that is sealing has no effect: the image is complete and about to be committed. */
void fill_cancel_for(Fill *f, const char *why) {
        if (!f->fetcher || fill_is_final(f) || f->step == STEP_SEALING)
                return;
        /* Rehashing: FAILING, until the worker is through. */
        fill_fail(f, -ECANCELED, "Fetch of %s cancelled%s%s", f->id, why ? ": " : "", strempty(why));
}

void fill_cancel(Fill *f) {
        fill_cancel_for(f, NULL);
}
