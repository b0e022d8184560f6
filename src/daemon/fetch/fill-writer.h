/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "checksum.h"
#include "store.h"

/* Writing a fill's bytes to disk on threads of its own, so that the event loop receiving them (which
 * also serves every HTTP client and D-Bus call) never waits for the disk: a write into fresh page cache,
 * dirty-page throttling or a slow disk would otherwise hold all of them up.
 *
 * The loop appends bytes, which are gathered into chunks ending on FILL_WRITER_CHUNK boundaries of the
 * file: each write is then one syscall covering whole pages, where bytes written as they arrive (pieces
 * of a few KiB) would each be a syscall ending inside a page, which the kernel zeroes around them. Full
 * chunks are queued to two threads, each taking every chunk in order: one appends them to the file, the
 * other feeds the digest (cache_write_append_unhashed() and cache_write_hash()). sha256 runs at about
 * 1 GB/s a core, the costliest step of a miss: on the same thread as the write it bounded a miss to what
 * one core does (issue 17's note has the figures). A chunk is reused once both are through with it. At
 * most FILL_WRITER_MAX_QUEUED chunks wait: the receiver stops taking bytes while fill_writer_full() and
 * goes on when on_progress is called. Readers get every appended byte from fill_writer_pread(), from the
 * file or from the chunks not written yet.
 *
 * Everything here but the threads runs on the event loop. */

#define FILL_WRITER_CHUNK (1024U * 1024U)
#define FILL_WRITER_MAX_QUEUED 16U

typedef struct FillWriter FillWriter;
/* Chunks were written and hashed, or a thread failed (fill_writer_error()). */
typedef void (*FillWriterProgress)(FillWriter *fw, void *userdata);

/* Takes over w until fill_writer_free(); read_fd (borrowed) reads the file w writes. reserve: the size the
 * file will have, UINT64_MAX when unknown; the writing thread reserves it (cache_write_reserve()) before its first
 * write, since allocating a GiB takes milliseconds the loop must not wait for, and fails with -ENOSPC
 * when it cannot. */
int fill_writer_new(sd_event *event, CacheWrite *w, int read_fd, uint64_t reserve, FillWriterProgress on_progress,
                    void *userdata, FillWriter **ret);
/* A writer for an image that will not be kept (larger than the cache can hold): no file, only the hash
 * stage, digesting with algo. Its chunks are the only copy of the bytes: they stay until every reader is
 * past them (fill_writer_set_floor()) and the digest has them, so at most FILL_WRITER_MAX_QUEUED chunks
 * are in memory, and fill_writer_full() holds the receiver back for the slowest reader. */
int fill_writer_new_streaming(sd_event *event, ChecksumAlgo algo, FillWriterProgress on_progress, void *userdata,
                              FillWriter **ret);
/* Streaming: every reader has read up to offset. Chunks it frees are collected from the loop, and
 * on_progress says so (the receiver may go on if it was held for room). */
void fill_writer_set_floor(FillWriter *fw, uint64_t offset);
/* The first offset fill_writer_pread() can still read (0, but for streaming writers). */
uint64_t fill_writer_start(const FillWriter *fw);
/* Streaming, once done: the digest of every byte. */
int fill_writer_digest(FillWriter *fw, Checksum *ret);

/* Stops the threads (after the chunk each is on) and gives back the write (NULL: streaming). With write_rest, the bytes
 * not written yet are written here first (blocking: to keep a partial file for a resume, whose digest a
 * resume rebuilds from the file, so the write is not to be sealed); otherwise they are dropped. */
CacheWrite *fill_writer_free(FillWriter *fw, bool write_rest);

/* Frees the chunks kept for the next writers (they are reused otherwise). */
void fill_writer_trim_pool(void);

/* Copies size bytes in. Only -ENOMEM: errors of the disk come from fill_writer_error(). */
int fill_writer_append(FillWriter *fw, const void *data, size_t size);
bool fill_writer_full(const FillWriter *fw);
/* No more bytes: queues the last, partial chunk. */
void fill_writer_close(FillWriter *fw);
/* Closed, and every byte is in the file. */
bool fill_writer_done(const FillWriter *fw);
/* The first error of the threads (-ENOSPC, -EIO, ...), or 0. */
int fill_writer_error(const FillWriter *fw);
/* Appended bytes at offset: up to size bytes, 0 at the end, or -errno. */
ssize_t fill_writer_pread(const FillWriter *fw, void *buf, size_t size, uint64_t offset);
