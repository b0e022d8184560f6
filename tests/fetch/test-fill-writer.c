/* SPDX-License-Identifier: MIT */
/* The fill writer (src/daemon/fill-writer.c) on a real sqlite cache in a temporary directory: bytes
 * appended in odd pieces reach the file and the digest whole and in order, every appended byte reads
 * back while chunks are still queued, the queue's cap holds the receiver back, and a stopped writer keeps
 * or drops what it had not written. */

#include <fcntl.h>
#include <glib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "fill-writer.h"
#include "store.h"
#include "test-util.h"
#include "util.h"

typedef struct Env {
        char *dir;
        ImageCache *cache;
        sd_event *event;
        CacheWrite *write;
        int read_fd;
        unsigned progress;
} Env;

static void env_setup(Env *e, const char *id) {
        *e = (Env) { .dir = test_tmpdir_new(), .read_fd = -EBADF };
        char *error = NULL;
        g_assert_cmpint(image_cache_open(e->dir, DRIVER_SQLITE, &e->cache, &error), ==, 0);
        g_assert_cmpint(sd_event_new(&e->event), >=, 0);
        g_assert_cmpint(image_cache_begin_write(e->cache, id, NULL, &e->write), ==, 0);
        g_autofree char *path = g_build_filename(e->dir, IMAGE_CACHE_INCOMPLETE_DIR, id, NULL);
        e->read_fd = open(path, O_RDONLY | O_CLOEXEC);
        g_assert_cmpint(e->read_fd, >=, 0);
}

static void env_teardown(Env *e) {
        safe_close(e->read_fd);
        image_cache_close(e->cache);
        sd_event_unref(e->event);
        test_tmpdir_remove(e->dir);
        g_free(e->dir);
}

static void on_progress(FillWriter *fw, void *userdata) {
        ((Env *) userdata)->progress++;
}

static uint8_t *make_data(size_t n) {
        uint8_t *d = g_malloc(n);
        for (size_t i = 0; i < n; i++)
                d[i] = (uint8_t) (i * 131 + i / 4099);
        return d;
}

/* Runs the loop until cond(fw) or a failure, with a deadline. */
static void run_until(Env *e, FillWriter *fw, bool (*cond)(const FillWriter *)) {
        usec_t deadline = now_usec(CLOCK_MONOTONIC) + 30 * USEC_PER_SEC;
        while (!cond(fw) && fill_writer_error(fw) == 0) {
                g_assert_cmpuint(now_usec(CLOCK_MONOTONIC), <, deadline);
                g_assert_cmpint(sd_event_run(e->event, 100 * USEC_PER_MSEC), >=, 0);
        }
}

static bool has_room(const FillWriter *fw) {
        return !fill_writer_full(fw);
}

static void assert_reads_back(FillWriter *fw, const uint8_t *data, size_t n) {
        g_autofree uint8_t *back = g_malloc(n);
        size_t off = 0;
        while (off < n) {
                /* Odd sizes, so reads straddle the file and the chunks, and chunk boundaries. */
                ssize_t k = fill_writer_pread(fw, back + off, MIN((size_t) 300007, n - off), off);
                g_assert_cmpint(k, >, 0);
                off += (size_t) k;
        }
        g_assert_true(memcmp(back, data, n) == 0);
        uint8_t byte;
        g_assert_cmpint(fill_writer_pread(fw, &byte, 1, n), ==, 0);
}

static void test_whole_image(void) {
        Env e;
        env_setup(&e, "img");
        size_t n = 5 * FILL_WRITER_CHUNK + 12345;
        g_autofree uint8_t *data = make_data(n);

        FillWriter *fw = NULL;
        g_assert_cmpint(fill_writer_new(e.event, e.write, e.read_fd, UINT64_MAX, on_progress, &e, &fw), ==, 0);
        for (size_t off = 0; off < n; off += 16381)
                g_assert_cmpint(fill_writer_append(fw, data + off, MIN((size_t) 16381, n - off)), ==, 0);
        /* Every byte reads back, wherever it is by now. */
        assert_reads_back(fw, data, n);
        g_assert_false(fill_writer_done(fw));

        fill_writer_close(fw);
        run_until(&e, fw, fill_writer_done);
        g_assert_cmpint(fill_writer_error(fw), ==, 0);
        g_assert_cmpuint(e.progress, >, 0);
        assert_reads_back(fw, data, n);

        e.write = fill_writer_free(fw, false);
        g_assert_cmpint(image_cache_commit_write(e.cache, e.write), ==, 0);
        g_autofree char *path = g_build_filename(e.dir, "img", NULL);
        size_t size = 0;
        g_autofree char *stored = test_read_file(path, &size);
        g_assert_cmpuint(size, ==, n);
        g_assert_true(memcmp(stored, data, n) == 0);
        /* The digest, made on a thread of its own, saw every chunk, in order. */
        g_autofree char *sha = g_compute_checksum_for_data(G_CHECKSUM_SHA256, data, n);
        g_autofree char *expected = g_strconcat("sha256:", sha, NULL);
        g_assert_cmpstr(image_cache_get(e.cache, "img")->checksum, ==, expected);
        env_teardown(&e);
}

static void test_cap_holds_back(void) {
        Env e;
        env_setup(&e, "capped");
        FillWriter *fw = NULL;
        g_assert_cmpint(fill_writer_new(e.event, e.write, e.read_fd, UINT64_MAX, on_progress, &e, &fw), ==, 0);
        g_autofree uint8_t *chunk = make_data(FILL_WRITER_CHUNK);

        /* Whole chunks as fast as they come: the queue reaches its cap before the thread can drain it
         * all, at the latest after the cap's worth of chunks (the receiver stops there). */
        unsigned n = 0;
        while (!fill_writer_full(fw)) {
                g_assert_cmpuint(n, <, 1000);
                g_assert_cmpint(fill_writer_append(fw, chunk, FILL_WRITER_CHUNK), ==, 0);
                n++;
        }
        /* The loop hears of progress, and the cap frees up. */
        run_until(&e, fw, has_room);
        g_assert_false(fill_writer_full(fw));
        g_assert_cmpuint(e.progress, >, 0);
        fill_writer_close(fw);
        run_until(&e, fw, fill_writer_done);
        image_cache_abort_write(e.cache, fill_writer_free(fw, false));
        env_teardown(&e);
}

/* Stopped early (a cancel, a broken connection), the writer writes out what it holds when the partial
 * file is kept for a resume. */
static void test_stop_keeps_rest(void) {
        Env e;
        env_setup(&e, "part");
        size_t n = 3 * FILL_WRITER_CHUNK + 777;
        g_autofree uint8_t *data = make_data(n);
        FillWriter *fw = NULL;
        g_assert_cmpint(fill_writer_new(e.event, e.write, e.read_fd, UINT64_MAX, on_progress, &e, &fw), ==, 0);
        g_assert_cmpint(fill_writer_append(fw, data, n), ==, 0);

        CacheWrite *w = fill_writer_free(fw, true);
        g_assert_cmpuint(cache_write_size(w), ==, n);
        image_cache_suspend_write(e.cache, w);

        g_autofree char *path = g_build_filename(e.dir, IMAGE_CACHE_INCOMPLETE_DIR, "part", NULL);
        size_t size = 0;
        g_autofree char *kept = test_read_file(path, &size);
        g_assert_cmpuint(size, ==, n);
        g_assert_true(memcmp(kept, data, n) == 0);
        env_teardown(&e);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);
        g_test_add_func("/fill-writer/whole-image", test_whole_image);
        g_test_add_func("/fill-writer/cap-holds-back", test_cap_holds_back);
        g_test_add_func("/fill-writer/stop-keeps-rest", test_stop_keeps_rest);
        return g_test_run();
}
