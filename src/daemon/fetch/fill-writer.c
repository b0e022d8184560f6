/* SPDX-License-Identifier: MIT */
/* A fill's two writer threads (fill-writer.h): the write stage puts each chunk into the file, the hash
 * stage feeds it to the digest, and a chunk goes back to the pool once both are through with it. */

#include <assert.h>
#include <errno.h>
#include <glib.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "checksum.h"
#include "fill-writer.h"
#include "util.h"

typedef struct Chunk {
        uint64_t offset;  /* in the file */
        size_t len;
        uint8_t data[];   /* FILL_WRITER_CHUNK bytes */
} Chunk;

/* One of a writer's two threads: each takes every chunk, in order, and the loop frees a chunk once both
 * are done with it. */
typedef enum StageKind {
        STAGE_WRITE,  /* appends to the file: the bytes readers get from disk */
        STAGE_HASH,   /* feeds the digest */
        _STAGE_MAX,
} StageKind;

typedef struct Stage {
        FillWriter *fw;
        pthread_t thread;
        bool has_thread;
        /* Under the writer's lock. */
        GQueue queue;       /* Chunk*, oldest first, not done here yet; the head is in the works */
        unsigned n_done;    /* chunks done since the start */
} Stage;

struct FillWriter {
        CacheWrite *write;  /* the threads' while they run (see store.h for who touches what); NULL: streaming */
        int read_fd;
        Hasher *hasher;     /* streaming: the hash stage's digest (there is no write) */
        uint64_t floor;     /* streaming: every reader is past this offset (fill_writer_set_floor()) */
        unsigned n_queued;  /* chunks handed to the stages */

        Stage stages[_STAGE_MAX];
        int event_fd;       /* the threads → the loop: chunks done, or an error */
        sd_event_source *event_source;
        FillWriterProgress on_progress;
        void *userdata;

        /* Shared with the threads, under lock. */
        pthread_mutex_t lock;
        pthread_cond_t wake;
        int error;
        bool stop;
        uint64_t on_disk;   /* the file holds every byte before this offset (the write stage's progress) */
        uint64_t reserve;   /* set before the threads start, read by the write stage only */

        /* The loop's. A chunk's bytes do not change once queued and only the loop frees chunks, so the
         * loop reads them without the lock. */
        GQueue in_flight;   /* Chunk*: queued and not yet collected, oldest first */
        unsigned n_collected;
        Chunk *current;     /* being filled */
        GQueue spare;       /* Chunk*: done and collected, for reuse (fresh memory is slow to touch) */
        uint64_t end;       /* offset after the last appended byte */
        bool closed;
};

/* Chunks outlive their writer here, up to as many as one writer uses: memory the process touched before
 * is cheap, fresh memory costs a page fault per page (a multi-millisecond stall per chunk on a VM), and
 * the next fill's first bytes should not wait for that. The loop's thread only. */
static GQueue chunk_pool = G_QUEUE_INIT;
#define CHUNK_POOL_MAX (FILL_WRITER_MAX_QUEUED + 1)

static Chunk *chunk_take(FillWriter *fw) {
        Chunk *c = g_queue_pop_head(&fw->spare) ?: g_queue_pop_head(&chunk_pool);
        if (!c)
                c = malloc(sizeof(Chunk) + FILL_WRITER_CHUNK);
        if (c)
                *c = (Chunk) { .offset = fw->end };
        return c;
}

static void chunks_release(GQueue *q) {
        Chunk *c;
        while ((c = g_queue_pop_head(q)))
                if (g_queue_get_length(&chunk_pool) < CHUNK_POOL_MAX)
                        g_queue_push_head(&chunk_pool, c);
                else
                        free(c);
}

void fill_writer_trim_pool(void) {
        Chunk *c;
        while ((c = g_queue_pop_head(&chunk_pool)))
                free(c);
}

static void writer_notify(FillWriter *fw) {
        uint64_t one = 1;
        (void) !write(fw->event_fd, &one, sizeof(one));
}

/* What a stage does before its first chunk: the write stage reserves the file's blocks. */
static int stage_begin(FillWriter *fw, StageKind kind) {
        if (kind != STAGE_WRITE || fw->reserve == UINT64_MAX)
                return 0;
        return cache_write_reserve(fw->write, fw->reserve);
}

/* What a stage does with a chunk. */
static int stage_work(FillWriter *fw, StageKind kind, const Chunk *c) {
        if (kind == STAGE_WRITE)
                return cache_write_append_unhashed(fw->write, c->data, c->len);
        if (!fw->write)
                return hasher_update(fw->hasher, c->data, c->len);
        return cache_write_hash(fw->write, c->data, c->len);
}

/* The stages a writer runs: streaming, there is no file to write. */
static bool stage_runs(const FillWriter *fw, StageKind kind) {
        return fw->write || kind == STAGE_HASH;
}

/* Chunks both threads are through with. Under the lock. */
static unsigned stages_done(const FillWriter *fw) {
        if (!fw->write)
                return fw->stages[STAGE_HASH].n_done;
        return MIN(fw->stages[STAGE_WRITE].n_done, fw->stages[STAGE_HASH].n_done);
}

static void *stage_thread(void *userdata) {
        static const char *const names[_STAGE_MAX] = {
                [STAGE_WRITE] = "fill-write",
                [STAGE_HASH] = "fill-hash",
        };
        Stage *st = userdata;
        FillWriter *fw = st->fw;
        StageKind kind = (StageKind) (st - fw->stages);

        /* For top -H and perf: which of the two is busy. Named here, as a prctl(), where naming it from
         * the loop would write to /proc while the first byte of the miss waits. */
        (void) prctl(PR_SET_NAME, names[kind]);
        int r = stage_begin(fw, kind);

        pthread_mutex_lock(&fw->lock);
        if (r < 0) {
                fw->error = fw->error ?: r;
                writer_notify(fw);
        }
        while (r >= 0) {
                while (!fw->stop && g_queue_is_empty(&st->queue))
                        pthread_cond_wait(&fw->wake, &fw->lock);
                if (fw->stop)
                        break;
                Chunk *c = g_queue_peek_head(&st->queue);
                pthread_mutex_unlock(&fw->lock);

                r = stage_work(fw, kind, c);

                pthread_mutex_lock(&fw->lock);
                (void) g_queue_pop_head(&st->queue);
                unsigned done_before = stages_done(fw);
                if (r < 0)
                        fw->error = fw->error ?: r;
                else {
                        st->n_done++;
                        if (kind == STAGE_WRITE)
                                fw->on_disk = c->offset + c->len;
                }
                /* The loop cares when a chunk is free for reuse, not when one of the two is through. */
                if (r < 0 || stages_done(fw) != done_before)
                        writer_notify(fw);
        }
        pthread_mutex_unlock(&fw->lock);
        return NULL;
}

/* Frees (for reuse) the chunks both threads are done with; streaming, only once every reader is past
 * them too: they are the only copy. Returns how many. */
static unsigned writer_collect(FillWriter *fw) {
        unsigned n = 0;

        pthread_mutex_lock(&fw->lock);
        unsigned n_done = stages_done(fw);
        pthread_mutex_unlock(&fw->lock);

        for (; fw->n_collected < n_done; fw->n_collected++, n++) {
                const Chunk *c = g_queue_peek_head(&fw->in_flight);
                if (!fw->write && c->offset + c->len > fw->floor)
                        break;
                g_queue_push_tail(&fw->spare, g_queue_pop_head(&fw->in_flight));
        }
        return n;
}

static int on_writer_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        FillWriter *fw = userdata;
        uint64_t n;

        (void) !read(fd, &n, sizeof(n));
        writer_collect(fw);
        fw->on_progress(fw, fw->userdata);
        return 0;
}

static int stage_start(FillWriter *fw, StageKind kind) {
        Stage *st = &fw->stages[kind];

        int r = -pthread_create(&st->thread, NULL, stage_thread, st);
        if (r < 0)
                return r;
        st->has_thread = true;
        return 0;
}

static void stages_stop(FillWriter *fw) {
        pthread_mutex_lock(&fw->lock);
        fw->stop = true;
        pthread_cond_broadcast(&fw->wake);
        pthread_mutex_unlock(&fw->lock);

        for (StageKind k = 0; k < _STAGE_MAX; k++)
                if (fw->stages[k].has_thread) {
                        (void) pthread_join(fw->stages[k].thread, NULL);
                        fw->stages[k].has_thread = false;
                }
}

int fill_writer_new(sd_event *event, CacheWrite *w, int read_fd, uint64_t reserve, FillWriterProgress on_progress,
                    void *userdata, FillWriter **ret) {
        FillWriter *fw = calloc(1, sizeof(FillWriter));
        if (!fw)
                return -ENOMEM;
        *fw = (FillWriter) {
                .write = w,
                .read_fd = read_fd,
                .event_fd = -EBADF,
                .on_progress = on_progress,
                .userdata = userdata,
                .end = w ? cache_write_size(w) : 0,
                .on_disk = w ? cache_write_size(w) : 0,
                .reserve = reserve,
        };
        pthread_mutex_init(&fw->lock, NULL);
        pthread_cond_init(&fw->wake, NULL);
        g_queue_init(&fw->in_flight);
        g_queue_init(&fw->spare);
        for (StageKind k = 0; k < _STAGE_MAX; k++) {
                fw->stages[k] = (Stage) { .fw = fw };
                g_queue_init(&fw->stages[k].queue);
        }

        int r;
        fw->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fw->event_fd < 0) {
                r = -errno;
                goto fail;
        }
        r = sd_event_add_io(event, &fw->event_source, fw->event_fd, EPOLLIN, on_writer_event, fw);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(fw->event_source, "fill-writer");

        for (StageKind k = 0; k < _STAGE_MAX; k++) {
                if (!stage_runs(fw, k))
                        continue;
                r = stage_start(fw, k);
                if (r < 0)
                        goto fail;
        }

        *ret = fw;
        return 0;

fail:
        (void) fill_writer_free(fw, false);
        return r;
}

int fill_writer_new_streaming(sd_event *event, ChecksumAlgo algo, FillWriterProgress on_progress, void *userdata,
                              FillWriter **ret) {
        _cleanup_(hasher_freep) Hasher *h = NULL;
        int r;

        r = hasher_new(algo, &h);
        if (r < 0)
                return r;
        /* No write, no file: fill_writer_new() starts the hash stage only, which owns h from here. */
        r = fill_writer_new(event, /* w= */ NULL, /* read_fd= */ -EBADF, UINT64_MAX, on_progress, userdata, ret);
        if (r < 0)
                return r;
        (*ret)->hasher = TAKE_PTR(h);
        return 0;
}

void fill_writer_set_floor(FillWriter *fw, uint64_t offset) {
        const Chunk *c = g_queue_peek_head(&fw->in_flight);

        if (fw->write || offset <= fw->floor)
                return;
        fw->floor = offset;
        /* Collected from the loop's next turn, as chunks the threads are done with: the caller (a reader
         * in an HTTP callback) must not have the receiver resumed under it. */
        if (c && c->offset + c->len <= offset)
                writer_notify(fw);
}

uint64_t fill_writer_start(const FillWriter *fw) {
        const Chunk *c = g_queue_peek_head((GQueue *) &fw->in_flight) ?: fw->current;
        return c ? c->offset : fw->end;
}

int fill_writer_digest(FillWriter *fw, Checksum *ret) {
        assert(!fw->write && fill_writer_done(fw));
        return hasher_finish(fw->hasher, ret);
}

static void writer_queue_current(FillWriter *fw) {
        Chunk *c = TAKE_PTR(fw->current);
        g_queue_push_tail(&fw->in_flight, c);
        fw->n_queued++;
        pthread_mutex_lock(&fw->lock);
        for (StageKind k = 0; k < _STAGE_MAX; k++)
                if (stage_runs(fw, k))
                        g_queue_push_tail(&fw->stages[k].queue, c);
        pthread_cond_broadcast(&fw->wake);
        pthread_mutex_unlock(&fw->lock);
}

/* After the threads stopped: what the write thread did not write, in order, here. Not what the hash
 * thread did not hash: a partial file kept for a resume gets its digest rebuilt from the file then
 * (cache_write_rehash()), so hashing up to FILL_WRITER_MAX_QUEUED chunks here would only hold up the loop. */
static void writer_write_rest(FillWriter *fw) {
        if (fw->error < 0 || !fw->write)
                return;
        if (fw->current && fw->current->len > 0)
                writer_queue_current(fw);
        for (GList *l = fw->stages[STAGE_WRITE].queue.head; l; l = l->next)
                if (stage_work(fw, STAGE_WRITE, l->data) < 0)
                        return;
}

CacheWrite *fill_writer_free(FillWriter *fw, bool write_rest) {
        if (!fw)
                return NULL;

        stages_stop(fw);
        if (write_rest)
                writer_write_rest(fw);
        CacheWrite *w = fw->write;

        for (StageKind k = 0; k < _STAGE_MAX; k++)
                g_queue_clear(&fw->stages[k].queue); /* chunks of in_flight */
        chunks_release(&fw->in_flight);
        chunks_release(&fw->spare);
        if (fw->current)
                g_queue_push_tail(&fw->spare, TAKE_PTR(fw->current));
        chunks_release(&fw->spare);
        sd_event_source_disable_unref(fw->event_source);
        safe_close(fw->event_fd);
        hasher_free(fw->hasher);
        pthread_cond_destroy(&fw->wake);
        pthread_mutex_destroy(&fw->lock);
        free(fw);
        return w;
}

int fill_writer_append(FillWriter *fw, const void *data, size_t size) {
        const uint8_t *p = data;

        assert(!fw->closed);
        while (size > 0) {
                if (!fw->current) {
                        fw->current = chunk_take(fw);
                        if (!fw->current)
                                return -ENOMEM;
                }
                /* Up to the next boundary of the file: a chunk starts at most that far before it. */
                size_t room = FILL_WRITER_CHUNK - (size_t) (fw->end % FILL_WRITER_CHUNK);
                size_t n = MIN(room, size);
                memcpy(fw->current->data + fw->current->len, p, n);
                fw->current->len += n;
                fw->end += n;
                p += n;
                size -= n;
                if (n == room)
                        writer_queue_current(fw);
        }
        return 0;
}

bool fill_writer_full(const FillWriter *fw) {
        return g_queue_get_length((GQueue *) &fw->in_flight) >= FILL_WRITER_MAX_QUEUED;
}

void fill_writer_close(FillWriter *fw) {
        if (fw->closed)
                return;
        fw->closed = true;
        if (fw->current && fw->current->len > 0)
                writer_queue_current(fw);
}

bool fill_writer_done(const FillWriter *fw) {
        if (!fw->write) {
                /* Streaming: every chunk hashed; the chunks stay for readers behind. */
                FillWriter *m = (FillWriter *) fw;
                pthread_mutex_lock(&m->lock);
                bool hashed = m->stages[STAGE_HASH].n_done == m->n_queued;
                pthread_mutex_unlock(&m->lock);
                return fw->closed && !fw->current && hashed;
        }
        return fw->closed && !fw->current && g_queue_is_empty((GQueue *) &fw->in_flight);
}

int fill_writer_error(const FillWriter *fw) {
        FillWriter *m = (FillWriter *) fw;
        pthread_mutex_lock(&m->lock);
        int r = m->error;
        pthread_mutex_unlock(&m->lock);
        return r;
}

/* The chunk that holds offset, among those not on disk yet. */
static const Chunk *writer_find_chunk(const FillWriter *fw, uint64_t offset) {
        for (GList *l = fw->in_flight.head; l; l = l->next) {
                const Chunk *c = l->data;
                if (offset >= c->offset && offset < c->offset + c->len)
                        return c;
        }
        const Chunk *c = fw->current;
        return c && offset >= c->offset && offset < c->offset + c->len ? c : NULL;
}

ssize_t fill_writer_pread(const FillWriter *fw, void *buf, size_t size, uint64_t offset) {
        FillWriter *m = (FillWriter *) fw;

        if (offset >= fw->end)
                return 0;
        size = (size_t) MIN((uint64_t) size, fw->end - offset);

        pthread_mutex_lock(&m->lock);
        uint64_t on_disk = m->on_disk;
        pthread_mutex_unlock(&m->lock);

        if (fw->write && offset < on_disk)
                return pread_retry(fw->read_fd, buf, (size_t) MIN((uint64_t) size, on_disk - offset), offset);

        const Chunk *c = writer_find_chunk(fw, offset);
        if (!c)
                /* Streaming, every reader was past these bytes, and they are gone; else cannot happen:
                 * every byte before end is on disk or in a chunk. */
                return fw->write ? -EIO : -ESPIPE;
        size_t n = (size_t) MIN((uint64_t) size, c->offset + c->len - offset);
        memcpy(buf, c->data + (offset - c->offset), n);
        return (ssize_t) n;
}
