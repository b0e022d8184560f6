/* SPDX-License-Identifier: MIT */

/* The cache store against real files and a real cache.db, every case once per metadata driver. The
 * list follows Glance's own image-cache tests (is_cached, hits, size, delete, clean, prune, queue,
 * writes good/aborted/partial/bad checksum) and adds what Glance lacks: reconciliation after a crash,
 * two openers, pins, id validation, an existing Glance cache.db. */

#include <fcntl.h>
#include <glib.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "image-id.h"
#include "store.h"
#include "test-util.h"
#include "test-verify.h"

typedef struct Fixture {
        DriverKind driver;
        char *dir;
        ImageCache *cache;
        /* What the observer saw. */
        GPtrArray *added;
        GPtrArray *removed; /* "id:reason" */
} Fixture;

static void on_added(ImageCache *c, const CacheEntry *e, void *userdata) {
        Fixture *f = userdata;
        g_ptr_array_add(f->added, g_strdup(e->id));
}

static void on_removed(ImageCache *c, const char *id, uint64_t size, RemoveReason reason, void *userdata) {
        Fixture *f = userdata;
        g_ptr_array_add(f->removed, g_strdup_printf("%s:%s", id, remove_reason_to_string(reason)));
}

static void fixture_open(Fixture *f) {
        char *error = NULL;
        int r = image_cache_open(f->dir, f->driver, &f->cache, &error);
        if (r < 0)
                g_error("image_cache_open(%s): %s (%s)", f->dir, g_strerror(-r), error ?: "no message");
        ImageCacheObserver o = { .image_added = on_added, .image_removed = on_removed, .userdata = f };
        image_cache_set_observer(f->cache, &o);
}

static void fixture_reopen(Fixture *f) {
        f->cache = image_cache_close(f->cache);
        fixture_open(f);
}

static void fixture_setup(Fixture *f, gconstpointer data) {
        f->driver = GPOINTER_TO_INT(data);
        f->dir = test_tmpdir_new();
        f->added = g_ptr_array_new_with_free_func(g_free);
        f->removed = g_ptr_array_new_with_free_func(g_free);
        fixture_open(f);
}

static void fixture_teardown(Fixture *f, gconstpointer data) {
        image_cache_close(f->cache);
        test_tmpdir_remove(f->dir);
        g_free(f->dir);
        g_ptr_array_free(f->added, TRUE);
        g_ptr_array_free(f->removed, TRUE);
}

static bool saw(GPtrArray *a, const char *s) {
        for (unsigned i = 0; i < a->len; i++)
                if (g_str_equal(a->pdata[i], s))
                        return true;
        return false;
}

/* Writes an image through the store, in a few chunks. Returns commit's result. */
static int write_image(Fixture *f, const char *id, const char *data, const char *expected) {
        Checksum sum;
        if (expected)
                g_assert_cmpint(checksum_from_string(expected, &sum), ==, 0);

        CacheWrite *w = NULL;
        int r = image_cache_begin_write(f->cache, id, expected ? &sum : NULL, &w);
        if (r < 0)
                return r;
        size_t n = strlen(data), half = n / 2;
        g_assert_cmpint(cache_write_append(w, data, half), ==, 0);
        g_assert_cmpint(cache_write_append(w, data + half, n - half), ==, 0);
        g_assert_cmpuint(cache_write_size(w), ==, n);
        return image_cache_commit_write(f->cache, w);
}

static void write_ok(Fixture *f, const char *id, const char *data) {
        g_assert_cmpint(write_image(f, id, data, NULL), ==, 0);
}

static char *image_path(Fixture *f, const char *sub, const char *id) {
        return sub ? g_build_filename(f->dir, sub, id, NULL) : g_build_filename(f->dir, id, NULL);
}

/* Sets last_accessed by counting a hit at a controlled moment: a hit stamps "now", so write order and
 * hit order give a deterministic LRU order without touching the clock. */
static void wait_clock_tick(void) {
        /* Waits for the event that matters, the µs clock moving on, so consecutive stamps differ. */
        usec_t t = now_usec(CLOCK_REALTIME);
        while (now_usec(CLOCK_REALTIME) == t)
                ;
}

static void touch(Fixture *f, const char *id) {
        g_assert_cmpint(image_cache_record_hit(f->cache, id), ==, 0);
        wait_clock_tick();
}

/* ---- Glance's cases ----------------------------------------------------------------------------- */

static void test_is_cached(Fixture *f, gconstpointer data) {
        g_assert_false(image_cache_is_cached(f->cache, "img1"));
        write_ok(f, "img1", "hello");
        g_assert_true(image_cache_is_cached(f->cache, "img1"));
        g_assert_false(image_cache_is_cached(f->cache, "img2"));
        g_assert_true(saw(f->added, "img1"));

        g_autofree char *path = image_path(f, NULL, "img1");
        g_autofree char *content = test_read_file(path, NULL);
        g_assert_cmpstr(content, ==, "hello");
        g_assert_false(test_file_exists(f->dir, "incomplete/img1"));

        fixture_reopen(f);
        g_assert_true(image_cache_is_cached(f->cache, "img1"));
}

static void test_read_counts_hits(Fixture *f, gconstpointer data) {
        write_ok(f, "img1", "some bytes");
        g_assert_cmpuint(image_cache_hit_count(f->cache, "img1"), ==, 0);

        for (int i = 1; i <= 3; i++) {
                int fd = -1;
                g_assert_cmpint(image_cache_open_for_read(f->cache, "img1", &fd), ==, 0);
                char buf[32] = {};
                g_assert_cmpint(read(fd, buf, sizeof(buf) - 1), ==, 10);
                g_assert_cmpstr(buf, ==, "some bytes");
                close(fd);
                g_assert_cmpuint(image_cache_hit_count(f->cache, "img1"), ==, (guint64) i);
        }

        /* Hits live in memory until flushed ... */
        g_assert_true(image_cache_has_unflushed_hits(f->cache));
        g_assert_cmpint(image_cache_flush(f->cache), ==, 0);
        g_assert_false(image_cache_has_unflushed_hits(f->cache));

        /* ... and persist; close flushes what is left. */
        g_assert_cmpint(image_cache_record_hit(f->cache, "img1"), ==, 0);
        fixture_reopen(f);
        g_assert_cmpuint(image_cache_hit_count(f->cache, "img1"), ==, 4);

        int fd = -1;
        g_assert_cmpint(image_cache_open_for_read(f->cache, "nope", &fd), ==, -ENOENT);
        g_assert_cmpint(image_cache_record_hit(f->cache, "nope"), ==, -ENOENT);
}

static void test_size(Fixture *f, gconstpointer data) {
        g_assert_cmpuint(image_cache_size(f->cache), ==, 0);
        write_ok(f, "a", "12345");
        write_ok(f, "b", "1234567890");
        g_assert_cmpuint(image_cache_size(f->cache), ==, 15);
        g_assert_cmpuint(image_cache_count(f->cache), ==, 2);
        g_assert_cmpuint(image_cache_get(f->cache, "b")->size, ==, 10);

        fixture_reopen(f);
        g_assert_cmpuint(image_cache_size(f->cache), ==, 15);
}

static void test_delete(Fixture *f, gconstpointer data) {
        write_ok(f, "a", "aaa");
        write_ok(f, "b", "bbb");
        g_assert_cmpint(image_cache_delete(f->cache, "a"), ==, 0);
        g_assert_false(image_cache_is_cached(f->cache, "a"));
        g_assert_true(image_cache_is_cached(f->cache, "b"));
        g_assert_false(test_file_exists(f->dir, "a"));
        g_assert_cmpuint(image_cache_size(f->cache), ==, 3);
        g_assert_true(saw(f->removed, "a:deleted"));
        g_assert_cmpint(image_cache_delete(f->cache, "a"), ==, -ENOENT);

        fixture_reopen(f);
        g_assert_false(image_cache_is_cached(f->cache, "a"));
        g_assert_true(image_cache_is_cached(f->cache, "b"));
}

static void test_delete_all(Fixture *f, gconstpointer data) {
        write_ok(f, "a", "aaa");
        write_ok(f, "b", "bbb");
        write_ok(f, "c", "ccc");
        unsigned n = 0;
        g_assert_cmpint(image_cache_delete_all(f->cache, &n), ==, 0);
        g_assert_cmpuint(n, ==, 3);
        g_assert_cmpuint(image_cache_count(f->cache), ==, 0);
        g_assert_cmpuint(image_cache_size(f->cache), ==, 0);

        fixture_reopen(f);
        g_assert_cmpuint(image_cache_count(f->cache), ==, 0);
}

static void age_file(const char *path, time_t seconds) {
        struct timespec ts[2];
        clock_gettime(CLOCK_REALTIME, &ts[0]);
        ts[0].tv_sec -= seconds;
        ts[1] = ts[0];
        g_assert_cmpint(utimensat(AT_FDCWD, path, ts, 0), ==, 0);
}

static void test_clean_stalled_zero(Fixture *f, gconstpointer data) {
        /* Glance: clean(stall_time=0) removes every incomplete file at once. */
        test_write_file(f->dir, "incomplete/stalled", "part", 4);
        test_write_file(f->dir, "invalid/bad", "junk", 4);

        unsigned stalled = 0, invalid = 0;
        g_assert_cmpint(image_cache_clean(f->cache, 0, &stalled, &invalid), ==, 0);
        g_assert_cmpuint(stalled, ==, 1);
        g_assert_cmpuint(invalid, ==, 1);
        g_assert_false(test_file_exists(f->dir, "incomplete/stalled"));
        g_assert_false(test_file_exists(f->dir, "invalid/bad"));
}

static void test_clean_stalled_nonzero(Fixture *f, gconstpointer data) {
        test_write_file(f->dir, "incomplete/old", "part", 4);
        test_write_file(f->dir, "incomplete/fresh", "part", 4);
        g_autofree char *old = image_path(f, "incomplete", "old");
        age_file(old, 3600);

        /* A live write is never cleaned, however old its file looks. */
        CacheWrite *w = NULL;
        g_assert_cmpint(image_cache_begin_write(f->cache, "live", NULL, &w), ==, 0);
        g_autofree char *live = image_path(f, "incomplete", "live");
        age_file(live, 3600);

        unsigned stalled = 0, invalid = 0;
        g_assert_cmpint(image_cache_clean(f->cache, 10 * USEC_PER_SEC, &stalled, &invalid), ==, 0);
        g_assert_cmpuint(stalled, ==, 1);
        g_assert_cmpuint(invalid, ==, 0);
        g_assert_false(test_file_exists(f->dir, "incomplete/old"));
        g_assert_true(test_file_exists(f->dir, "incomplete/fresh"));
        g_assert_true(test_file_exists(f->dir, "incomplete/live"));

        image_cache_abort_write(f->cache, w);
}

static void test_prune_keeps_most_recent(Fixture *f, gconstpointer data) {
        /* Ten 1 KiB images, accessed in order 0..9, then 0 again: 0 becomes the most recent. */
        char kib[1025];
        memset(kib, 'x', 1024);
        kib[1024] = 0;
        for (int i = 0; i < 10; i++) {
                g_autofree char *id = g_strdup_printf("img%d", i);
                write_ok(f, id, kib);
        }
        for (int i = 0; i < 10; i++) {
                g_autofree char *id = g_strdup_printf("img%d", i);
                touch(f, id);
        }
        touch(f, "img0");

        unsigned files = 0;
        uint64_t bytes = 0;
        g_assert_cmpint(image_cache_prune(f->cache, 5 * 1024, &files, &bytes), ==, 0);
        g_assert_cmpuint(files, ==, 5);
        g_assert_cmpuint(bytes, ==, 5 * 1024);
        g_assert_cmpuint(image_cache_size(f->cache), ==, 5 * 1024);

        /* Survivors: img0 (touched last) and img6..img9. */
        const char *kept[] = { "img0", "img6", "img7", "img8", "img9" };
        for (size_t i = 0; i < G_N_ELEMENTS(kept); i++)
                g_assert_true(image_cache_is_cached(f->cache, kept[i]));
        for (int i = 1; i <= 5; i++) {
                g_autofree char *id = g_strdup_printf("img%d", i);
                g_assert_false(image_cache_is_cached(f->cache, id));
                g_assert_false(test_file_exists(f->dir, id));
                g_autofree char *ev = g_strdup_printf("img%d:pruned", i);
                g_assert_true(saw(f->removed, ev));
        }

        /* Already small enough: nothing more to do. */
        g_assert_cmpint(image_cache_prune(f->cache, 5 * 1024, &files, &bytes), ==, 0);
        g_assert_cmpuint(files, ==, 0);
        g_assert_cmpuint(bytes, ==, 0);

        /* LRU order survives a restart: hits and access times were persisted. */
        fixture_reopen(f);
        g_assert_cmpint(image_cache_prune(f->cache, 4 * 1024, &files, &bytes), ==, 0);
        g_assert_cmpuint(files, ==, 1);
        g_assert_false(image_cache_is_cached(f->cache, "img6"));
        g_assert_true(image_cache_is_cached(f->cache, "img0"));
}

static void test_prune_to_zero(Fixture *f, gconstpointer data) {
        write_ok(f, "a", "aaa");
        write_ok(f, "b", "bbbb");
        unsigned files = 0;
        uint64_t bytes = 0;
        g_assert_cmpint(image_cache_prune(f->cache, 0, &files, &bytes), ==, 0);
        g_assert_cmpuint(files, ==, 2);
        g_assert_cmpuint(bytes, ==, 7);
        g_assert_cmpuint(image_cache_count(f->cache), ==, 0);
}

static void test_prune_skips_pinned(Fixture *f, gconstpointer data) {
        write_ok(f, "old", "0123456789");
        touch(f, "old");
        write_ok(f, "new", "0123456789");
        touch(f, "new");

        g_assert_cmpint(image_cache_pin(f->cache, "old"), ==, 0);
        g_assert_true(image_cache_is_pinned(f->cache, "old"));
        unsigned files = 0;
        uint64_t bytes = 0;
        g_assert_cmpint(image_cache_prune(f->cache, 10, &files, &bytes), ==, 0);
        g_assert_cmpuint(files, ==, 1);
        g_assert_true(image_cache_is_cached(f->cache, "old"));
        g_assert_false(image_cache_is_cached(f->cache, "new"));

        image_cache_unpin(f->cache, "old");
        g_assert_cmpint(image_cache_prune(f->cache, 0, &files, &bytes), ==, 0);
        g_assert_cmpuint(files, ==, 1);
        g_assert_cmpint(image_cache_pin(f->cache, "old"), ==, -ENOENT);
}

static void test_queue(Fixture *f, gconstpointer data) {
        g_assert_false(image_cache_is_queued(f->cache, "q1"));
        g_assert_cmpint(image_cache_queue(f->cache, "q1", NULL), ==, 1);
        g_assert_true(image_cache_is_queued(f->cache, "q1"));
        g_assert_cmpint(image_cache_queue(f->cache, "q1", NULL), ==, 0); /* already queued */
        wait_clock_tick();
        g_assert_cmpint(image_cache_queue(f->cache, "q0", NULL), ==, 1);
        wait_clock_tick();
        g_assert_cmpint(image_cache_queue(f->cache, "q2", NULL), ==, 1);

        write_ok(f, "cached", "x");
        g_assert_cmpint(image_cache_queue(f->cache, "cached", NULL), ==, 0); /* already cached */

        /* Oldest first, not alphabetical. */
        QueuedImage *q = NULL;
        size_t n = 0;
        g_assert_cmpint(image_cache_list_queued(f->cache, &q, &n), ==, 0);
        g_assert_cmpuint(n, ==, 3);
        g_assert_cmpstr(q[0].id, ==, "q1");
        g_assert_cmpstr(q[1].id, ==, "q0");
        g_assert_cmpstr(q[2].id, ==, "q2");
        g_assert_cmpuint(q[0].queued_at, <=, q[1].queued_at);
        queued_images_free(q, n);

        /* Caching an image takes it off the queue. */
        write_ok(f, "q0", "now cached");
        g_assert_false(image_cache_is_queued(f->cache, "q0"));

        /* The queue is the directory, so it survives a restart. */
        fixture_reopen(f);
        g_assert_true(image_cache_is_queued(f->cache, "q1"));
        g_assert_cmpint(image_cache_dequeue(f->cache, "q1"), ==, 1);
        g_assert_cmpint(image_cache_dequeue(f->cache, "q1"), ==, 0);
        unsigned removed = 0;
        g_assert_cmpint(image_cache_dequeue_all(f->cache, &removed), ==, 0);
        g_assert_cmpuint(removed, ==, 1);
        g_assert_cmpint(image_cache_list_queued(f->cache, &q, &n), ==, 0);
        g_assert_cmpuint(n, ==, 0);
        queued_images_free(q, n);
}

static char *queue_marker_path(Fixture *f, const char *id) {
        return g_build_filename(f->dir, IMAGE_CACHE_QUEUE_DIR, id, NULL);
}

static void test_queue_checksum(Fixture *f, gconstpointer data) {
        const char *sum = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        g_autofree char *with = queue_marker_path(f, "with"), *without = queue_marker_path(f, "without");
        g_autofree char *content = NULL;
        Checksum c, got;
        struct stat st;

        g_assert_cmpint(checksum_from_string(sum, &c), ==, 0);
        g_assert_cmpint(image_cache_queue(f->cache, "with", &c), ==, 1);
        g_assert_cmpint(image_cache_queue(f->cache, "without", NULL), ==, 1);
        /* A second queue call neither replaces the checksum nor moves the queue time. */
        g_assert_cmpint(stat(with, &st), ==, 0);
        usec_t queued_at = timespec_to_usec(&st.st_mtim);
        wait_clock_tick();
        g_assert_cmpint(image_cache_queue(f->cache, "with", NULL), ==, 0);

        /* One line in the marker; Glance's empty marker for none. No temporary file is left behind. */
        g_assert_true(g_file_get_contents(with, &content, NULL, NULL));
        g_assert_cmpstr(content, ==, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n");
        g_assert_cmpint(stat(without, &st), ==, 0);
        g_assert_cmpint(st.st_size, ==, 0);
        g_autofree char *queue_dir = g_build_filename(f->dir, IMAGE_CACHE_QUEUE_DIR, NULL);
        GDir *d = g_dir_open(queue_dir, 0, NULL);
        unsigned entries = 0;
        while (g_dir_read_name(d))
                entries++;
        g_dir_close(d);
        g_assert_cmpuint(entries, ==, 2);

        /* It survives a restart, with the queue time. */
        fixture_reopen(f);
        g_assert_cmpint(image_cache_queued_checksum(f->cache, "with", &got), ==, 1);
        g_assert_true(checksum_equal(&c, &got));
        g_assert_cmpint(image_cache_queued_checksum(f->cache, "without", &got), ==, 0);
        g_assert_cmpint(image_cache_queued_checksum(f->cache, "nothere", &got), ==, -ENOENT);
        g_assert_cmpuint(image_cache_queued_count(f->cache), ==, 2);

        QueuedImage *q = NULL;
        size_t n = 0;
        g_assert_cmpint(image_cache_list_queued(f->cache, &q, &n), ==, 0);
        g_assert_cmpuint(n, ==, 2);
        g_assert_cmpstr(q[0].id, ==, "with");
        g_assert_cmpuint(q[0].queued_at, ==, queued_at);
        g_assert_true(q[0].has_checksum);
        g_assert_true(checksum_equal(&c, &q[0].checksum));
        g_assert_cmpstr(q[1].id, ==, "without");
        g_assert_false(q[1].has_checksum);
        queued_images_free(q, n);

        /* Whatever another tool wrote is no checksum, but still a queued image. */
        g_assert_true(g_file_set_contents(without, "queued by hand\n", -1, NULL));
        g_assert_cmpint(image_cache_queued_checksum(f->cache, "without", &got), ==, 0);
        g_assert_true(image_cache_is_queued(f->cache, "without"));
}

static void test_write_good_checksum(Fixture *f, gconstpointer data) {
        /* sha256("abc") */
        const char *sum = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        g_assert_cmpint(write_image(f, "good", "abc", sum), ==, 0);
        g_assert_true(image_cache_is_cached(f->cache, "good"));
        g_assert_cmpstr(image_cache_get(f->cache, "good")->checksum, ==, sum);

        /* Glance's legacy bare md5 works too, and is recorded as md5. */
        g_assert_cmpint(write_image(f, "md5", "abc", "900150983cd24fb0d6963f7d28e17f72"), ==, 0);
        g_assert_cmpstr(image_cache_get(f->cache, "md5")->checksum, ==, "md5:900150983cd24fb0d6963f7d28e17f72");

        /* Without an expected digest, a sha256 is computed and recorded. */
        write_ok(f, "plain", "abc");
        g_assert_cmpstr(image_cache_get(f->cache, "plain")->checksum, ==, sum);

        fixture_reopen(f);
        g_assert_cmpstr(image_cache_get(f->cache, "good")->checksum, ==, sum);
}

static void test_write_bad_checksum(Fixture *f, gconstpointer data) {
        const char *sum = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        g_assert_cmpint(write_image(f, "bad", "abc", sum), ==, -EBADMSG);
        g_assert_false(image_cache_is_cached(f->cache, "bad"));
        g_assert_false(test_file_exists(f->dir, "bad"));
        g_assert_false(test_file_exists(f->dir, "incomplete/bad"));
        g_assert_true(test_file_exists(f->dir, "invalid/bad"));
        g_assert_false(image_cache_is_being_cached(f->cache, "bad"));

        fixture_reopen(f);
        g_assert_false(image_cache_is_cached(f->cache, "bad"));
}

/* The two halves of an append, as the fill writer's two threads make them: the digest covers what the
 * hash half was fed, and a file with bytes the digest never saw is not sealed. */
static void test_write_halves(Fixture *f, gconstpointer data) {
        CacheWrite *w = NULL;
        g_assert_cmpint(image_cache_begin_write(f->cache, "split", NULL, &w), ==, 0);
        g_assert_cmpint(cache_write_append_unhashed(w, "ab", 2), ==, 0);
        g_assert_cmpint(cache_write_hash(w, "ab", 2), ==, 0);
        g_assert_cmpint(cache_write_append_unhashed(w, "c", 1), ==, 0);
        g_assert_cmpint(cache_write_hash(w, "c", 1), ==, 0);
        g_assert_cmpint(image_cache_commit_write(f->cache, w), ==, 0);
        /* sha256("abc") */
        g_assert_cmpstr(image_cache_get(f->cache, "split")->checksum, ==,
                        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

        g_assert_cmpint(image_cache_begin_write(f->cache, "unhashed", NULL, &w), ==, 0);
        g_assert_cmpint(cache_write_append_unhashed(w, "abc", 3), ==, 0);
        g_assert_cmpint(cache_write_hash(w, "ab", 2), ==, 0);
        g_assert_cmpint(image_cache_commit_write(f->cache, w), ==, -EIO);
        g_assert_false(image_cache_is_cached(f->cache, "unhashed"));
        g_assert_false(test_file_exists(f->dir, "unhashed"));
        g_assert_true(test_file_exists(f->dir, "invalid/unhashed"));
}

static void test_write_aborted(Fixture *f, gconstpointer data) {
        /* Glance's "exception while writing": the partial goes to invalid/, nothing is cached. */
        CacheWrite *w = NULL;
        g_assert_cmpint(image_cache_begin_write(f->cache, "img", NULL, &w), ==, 0);
        g_assert_true(image_cache_is_being_cached(f->cache, "img"));
        g_assert_cmpint(image_cache_begin_write(f->cache, "img", NULL, &(CacheWrite *){ NULL }), ==, -EBUSY);
        g_assert_cmpint(cache_write_append(w, "part", 4), ==, 0);
        image_cache_abort_write(f->cache, w);

        g_assert_false(image_cache_is_cached(f->cache, "img"));
        g_assert_false(image_cache_is_being_cached(f->cache, "img"));
        g_assert_false(test_file_exists(f->dir, "incomplete/img"));
        g_assert_true(test_file_exists(f->dir, "invalid/img"));

        /* Clean then removes it. */
        unsigned stalled = 0, invalid = 0;
        g_assert_cmpint(image_cache_clean(f->cache, 0, &stalled, &invalid), ==, 0);
        g_assert_cmpuint(invalid, ==, 1);
}

static struct stat stat_in(Fixture *f, const char *rel) {
        g_autofree char *path = g_build_filename(f->dir, rel, NULL);
        struct stat st;
        g_assert_cmpint(stat(path, &st), ==, 0);
        return st;
}

static uint64_t allocated_bytes(Fixture *f, const char *rel) {
        return (uint64_t) stat_in(f, rel).st_blocks * 512;
}

static void test_write_reserve(Fixture *f, gconstpointer data) {
        /* A known size is reserved up front, without changing the file's size; a write that stops short
         * gives the reserved tail back, whether it is suspended for a resume or aborted to invalid/. */
        const uint64_t total = 8 * 1024 * 1024;
        CacheWrite *w = NULL;
        uint64_t size = 0;
        g_assert_cmpint(image_cache_begin_write(f->cache, "img", NULL, &w), ==, 0);
        g_assert_cmpint(cache_write_append(w, "part", 4), ==, 0);
        g_assert_cmpint(cache_write_reserve(w, total), ==, 0);
        if (allocated_bytes(f, "incomplete/img") < total) {
                image_cache_abort_write(f->cache, w);
                g_test_skip("this filesystem cannot preallocate");
                return;
        }
        g_assert_cmpint(stat_in(f, "incomplete/img").st_size, ==, 4);
        image_cache_suspend_write(f->cache, w);
        g_assert_cmpuint(allocated_bytes(f, "incomplete/img"), <, total / 2);
        g_assert_cmpint(stat_in(f, "incomplete/img").st_size, ==, 4);

        g_assert_cmpint(image_cache_resume_write(f->cache, "img", NULL, &size, &w), ==, 0);
        g_assert_cmpuint(size, ==, 4);
        g_assert_cmpint(cache_write_reserve(w, total), ==, 0);
        g_assert_cmpint(cache_write_append(w, "more", 4), ==, 0);
        image_cache_abort_write(f->cache, w);
        g_assert_cmpuint(allocated_bytes(f, "invalid/img"), <, total / 2);
        g_assert_cmpint(stat_in(f, "invalid/img").st_size, ==, 8);
        /* Where the room is not there: /fetch/enospc. */
}

static void test_write_partial_not_cached(Fixture *f, gconstpointer data) {
        /* A write still running is not cached and not servable; a crash (close without commit) leaves
         * only incomplete/, which the next open does not list. */
        CacheWrite *w = NULL;
        g_assert_cmpint(image_cache_begin_write(f->cache, "img", NULL, &w), ==, 0);
        g_assert_cmpint(cache_write_append(w, "first half", 10), ==, 0);
        g_assert_false(image_cache_is_cached(f->cache, "img"));
        int fd = -1;
        g_assert_cmpint(image_cache_open_for_read(f->cache, "img", &fd), ==, -ENOENT);

        fixture_reopen(f); /* w died with the old store */
        g_assert_false(image_cache_is_cached(f->cache, "img"));
        g_assert_false(image_cache_is_being_cached(f->cache, "img"));
        g_assert_true(test_file_exists(f->dir, "incomplete/img"));
        g_assert_false(test_file_exists(f->dir, "img"));

        /* A new write of the same image starts over and succeeds. */
        write_ok(f, "img", "complete");
        g_autofree char *path = image_path(f, NULL, "img");
        g_autofree char *content = test_read_file(path, NULL);
        g_assert_cmpstr(content, ==, "complete");
}

static void test_write_existing(Fixture *f, gconstpointer data) {
        write_ok(f, "img", "one");
        CacheWrite *w = NULL;
        g_assert_cmpint(image_cache_begin_write(f->cache, "img", NULL, &w), ==, -EEXIST);
}

/* ---- beyond Glance ------------------------------------------------------------------------------ */

static void test_bad_ids(Fixture *f, gconstpointer data) {
        /* A file outside the cache that a traversal would reach. */
        g_autofree char *outside = g_build_filename(f->dir, "..", "imgcache-victim", NULL);
        const char *bad[] = { "", "../x", "..", ".hidden", "a/b", "/etc/passwd", "cache.db", "queue",
                              "incomplete", "with space", "tab\there" };

        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                CacheWrite *w = NULL;
                g_assert_cmpint(image_cache_begin_write(f->cache, bad[i], NULL, &w), ==, -EINVAL);
                g_assert_cmpint(image_cache_queue(f->cache, bad[i], NULL), ==, -EINVAL);
                g_assert_cmpint(image_cache_dequeue(f->cache, bad[i]), ==, -EINVAL);
                g_assert_false(image_cache_is_queued(f->cache, bad[i]));
                g_assert_false(image_cache_is_cached(f->cache, bad[i]));
                g_assert_cmpint(image_cache_delete(f->cache, bad[i]), ==, -ENOENT);
                int fd = -1;
                g_assert_cmpint(image_cache_open_for_read(f->cache, bad[i], &fd), ==, -ENOENT);
        }
        char long_id[200];
        memset(long_id, 'a', sizeof(long_id) - 1);
        long_id[sizeof(long_id) - 1] = 0;
        g_assert_cmpint(image_cache_queue(f->cache, long_id, NULL), ==, -EINVAL);
        g_assert_false(g_file_test(outside, G_FILE_TEST_EXISTS));

        /* A planted symlink or directory with an id-like name is never indexed. */
        g_autofree char *link = image_path(f, NULL, "link");
        g_assert_cmpint(symlink("/etc/passwd", link), ==, 0);
        g_autofree char *sub = image_path(f, NULL, "subdir");
        g_assert_cmpint(mkdir(sub, 0755), ==, 0);
        fixture_reopen(f);
        g_assert_false(image_cache_is_cached(f->cache, "link"));
        g_assert_false(image_cache_is_cached(f->cache, "subdir"));
}

static void test_reconcile_after_crash(Fixture *f, gconstpointer data) {
        write_ok(f, "kept", "kept data");
        write_ok(f, "gone", "gone data");
        f->cache = image_cache_close(f->cache);

        /* While "down": a file vanishes (row without file), a file appears (file without row), a
         * partial is left in incomplete/, and a kept file changes size. */
        g_autofree char *gone = image_path(f, NULL, "gone");
        g_assert_cmpint(unlink(gone), ==, 0);
        test_write_file(f->dir, "adopted", "adopt me", 8);
        test_write_file(f->dir, "incomplete/partial", "half", 4);
        test_write_file(f->dir, "kept", "kept data, longer now", 21);

        fixture_open(f);
        ReconcileStats st = image_cache_reconcile_stats(f->cache);
        /* xattr metadata lives on the file itself: a vanished file takes its record with it, a new file
         * is its own record, a resized file reports its new size. Only sqlite has anything to fix. */
        unsigned expected = f->driver == DRIVER_SQLITE ? 1 : 0;
        g_assert_cmpuint(st.adopted, ==, expected);
        g_assert_cmpuint(st.resized, ==, expected);
        g_assert_cmpuint(st.dropped, ==, expected);

        g_assert_false(image_cache_is_cached(f->cache, "gone"));
        g_assert_false(image_cache_is_cached(f->cache, "partial"));
        g_assert_true(image_cache_is_cached(f->cache, "adopted"));
        const CacheEntry *e = image_cache_get(f->cache, "adopted");
        g_assert_cmpuint(e->size, ==, 8);
        g_assert_cmpuint(e->hits, ==, 0);
        g_assert_null(e->checksum);
        g_assert_cmpuint(image_cache_get(f->cache, "kept")->size, ==, 21);
        g_assert_cmpuint(image_cache_size(f->cache), ==, 29);

        /* Reconciled state is persisted: a second open finds nothing to fix. */
        fixture_reopen(f);
        st = image_cache_reconcile_stats(f->cache);
        g_assert_cmpuint(st.adopted + st.dropped + st.resized, ==, 0);
        g_assert_true(image_cache_is_cached(f->cache, "adopted"));
}

static void test_two_openers(Fixture *f, gconstpointer data) {
        ImageCache *second = NULL;
        char *error = NULL;
        g_assert_cmpint(image_cache_open(f->dir, f->driver, &second, &error), ==, -EBUSY);
        g_assert_null(second);
        g_assert_nonnull(error);
        g_autofree char *pid = g_strdup_printf("pid %d", (int) getpid());
        g_assert_nonnull(strstr(error, f->dir));
        g_assert_nonnull(strstr(error, pid));
        free(error);

        /* Released on close. */
        f->cache = image_cache_close(f->cache);
        g_assert_cmpint(image_cache_open(f->dir, f->driver, &second, NULL), ==, 0);
        f->cache = second;
}

static void test_verify(Fixture *f, gconstpointer data) {
        write_ok(f, "img", "original");
        g_assert_cmpint(test_verify_image(f->cache, "img"), ==, 1);

        /* Bit rot behind our back: verify catches it and moves the file to invalid/. */
        test_write_file(f->dir, "img", "0riginal", 8);
        g_assert_cmpint(test_verify_image(f->cache, "img"), ==, 0);
        g_assert_false(image_cache_is_cached(f->cache, "img"));
        g_assert_true(test_file_exists(f->dir, "invalid/img"));
        g_assert_true(saw(f->removed, "img:invalid"));
        g_assert_cmpint(test_verify_image(f->cache, "img"), ==, -ENOENT);

        /* An adopted file has no checksum: verify records one. */
        f->cache = image_cache_close(f->cache);
        test_write_file(f->dir, "adopted", "abc", 3);
        fixture_open(f);
        g_assert_null(image_cache_get(f->cache, "adopted")->checksum);
        g_assert_cmpint(test_verify_image(f->cache, "adopted"), ==, 1);
        g_assert_cmpstr(image_cache_get(f->cache, "adopted")->checksum, ==,
                        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        fixture_reopen(f);
        g_assert_nonnull(image_cache_get(f->cache, "adopted")->checksum);
}

static void test_list(Fixture *f, gconstpointer data) {
        write_ok(f, "b", "2");
        write_ok(f, "a", "1");
        write_ok(f, "c", "3");
        const CacheEntry **v = NULL;
        size_t n = 0;
        g_assert_cmpint(image_cache_list(f->cache, &v, &n), ==, 0);
        g_assert_cmpuint(n, ==, 3);
        g_assert_cmpstr(v[0]->id, ==, "a");
        g_assert_cmpstr(v[1]->id, ==, "b");
        g_assert_cmpstr(v[2]->id, ==, "c");
        g_assert_cmpuint(v[0]->last_modified, >, 0);
        g_assert_cmpuint(v[0]->last_accessed, >, 0);
        free(v);
}

/* ---- driver-specific ---------------------------------------------------------------------------- */

static void exec_sql(sqlite3 *db, const char *sql) {
        char *err = NULL;
        if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
                g_error("%s: %s", sql, err);
}

static void test_glance_cache_db(void) {
        /* A cache directory exactly as Glance's sqlite driver leaves it. */
        g_autofree char *dir = test_tmpdir_new();
        g_autofree char *db_path = g_build_filename(dir, "cache.db", NULL);
        sqlite3 *db = NULL;
        g_assert_cmpint(sqlite3_open(db_path, &db), ==, SQLITE_OK);
        exec_sql(db, "CREATE TABLE IF NOT EXISTS cached_images (image_id TEXT PRIMARY KEY, "
                     "last_accessed REAL DEFAULT 0.0, last_modified REAL DEFAULT 0.0, size INTEGER DEFAULT 0, "
                     "hits INTEGER DEFAULT 0, checksum TEXT)");
        exec_sql(db, "INSERT INTO cached_images VALUES ('6ee6a1c2-9f6e-4b7f-8b4c-0d2c8e5b7a11', 1700000000.5, "
                     "1690000000.0, 3, 7, '900150983cd24fb0d6963f7d28e17f72')");
        exec_sql(db, "INSERT INTO cached_images VALUES ('0b1d2c3e-0000-4000-8000-000000000001', 1600000000.0, "
                     "1600000000.0, 5, 2, NULL)");
        sqlite3_close(db);
        test_write_file(dir, "6ee6a1c2-9f6e-4b7f-8b4c-0d2c8e5b7a11", "abc", 3);
        test_write_file(dir, "0b1d2c3e-0000-4000-8000-000000000001", "older", 5);
        const char *subdirs[] = { "incomplete", "invalid", "queue" };
        for (size_t i = 0; i < G_N_ELEMENTS(subdirs); i++) {
                g_autofree char *sub = g_build_filename(dir, subdirs[i], NULL);
                g_assert_cmpint(mkdir(sub, 0755), ==, 0);
        }
        test_write_file(dir, "queue/11111111-2222-3333-4444-555555555555", "", 0);

        ImageCache *c = NULL;
        g_assert_cmpint(image_cache_open(dir, DRIVER_SQLITE, &c, NULL), ==, 0);
        ReconcileStats st = image_cache_reconcile_stats(c);
        g_assert_cmpuint(st.adopted + st.dropped + st.resized, ==, 0);
        g_assert_cmpuint(image_cache_count(c), ==, 2);
        g_assert_cmpuint(image_cache_size(c), ==, 8);

        const CacheEntry *e = image_cache_get(c, "6ee6a1c2-9f6e-4b7f-8b4c-0d2c8e5b7a11");
        g_assert_nonnull(e);
        g_assert_cmpuint(e->hits, ==, 7);
        g_assert_cmpuint(e->last_accessed, ==, 1700000000500000ULL);
        g_assert_cmpuint(e->last_modified, ==, 1690000000000000ULL);
        g_assert_true(image_cache_is_queued(c, "11111111-2222-3333-4444-555555555555"));

        /* Glance's bare md5 verifies. */
        g_assert_cmpint(test_verify_image(c, "6ee6a1c2-9f6e-4b7f-8b4c-0d2c8e5b7a11"), ==, 1);

        /* Prune by LRU: the 2016 image goes first. */
        unsigned files = 0;
        uint64_t bytes = 0;
        g_assert_cmpint(image_cache_prune(c, 4, &files, &bytes), ==, 0);
        g_assert_cmpuint(files, ==, 1);
        g_assert_cmpuint(bytes, ==, 5);
        g_assert_false(image_cache_is_cached(c, "0b1d2c3e-0000-4000-8000-000000000001"));
        image_cache_close(c);

        /* Glance can still read what we left: same table, its columns intact. */
        g_assert_cmpint(sqlite3_open(db_path, &db), ==, SQLITE_OK);
        sqlite3_stmt *stmt = NULL;
        g_assert_cmpint(sqlite3_prepare_v2(db, "SELECT image_id, hits, size FROM cached_images", -1, &stmt, NULL),
                        ==, SQLITE_OK);
        g_assert_cmpint(sqlite3_step(stmt), ==, SQLITE_ROW);
        g_assert_cmpstr((const char *) sqlite3_column_text(stmt, 0), ==, "6ee6a1c2-9f6e-4b7f-8b4c-0d2c8e5b7a11");
        g_assert_cmpint(sqlite3_column_int(stmt, 1), ==, 7);
        g_assert_cmpint(sqlite3_column_int(stmt, 2), ==, 3);
        g_assert_cmpint(sqlite3_step(stmt), ==, SQLITE_DONE);
        sqlite3_finalize(stmt);
        sqlite3_close(db);

        test_tmpdir_remove(dir);
}

static void test_glance_xattr_hits(void) {
        /* Glance's xattr driver counts hits in user.hits on the file. */
        g_autofree char *dir = test_tmpdir_new();
        test_write_file(dir, "img", "data", 4);
        g_autofree char *path = g_build_filename(dir, "img", NULL);
        if (setxattr(path, "user.hits", "5", 1, 0) < 0) {
                g_test_skip("no user xattrs on the test filesystem");
                test_tmpdir_remove(dir);
                return;
        }

        ImageCache *c = NULL;
        g_assert_cmpint(image_cache_open(dir, DRIVER_XATTR, &c, NULL), ==, 0);
        g_assert_cmpuint(image_cache_hit_count(c, "img"), ==, 5);
        g_assert_cmpint(image_cache_record_hit(c, "img"), ==, 0);
        image_cache_close(c);

        char buf[32] = {};
        g_assert_cmpint(getxattr(path, "user.hits", buf, sizeof(buf) - 1), >, 0);
        g_assert_cmpstr(buf, ==, "6");
        test_tmpdir_remove(dir);
}

static void test_not_a_directory(void) {
        g_autofree char *dir = test_tmpdir_new();
        test_write_file(dir, "file", "x", 1);
        g_autofree char *path = g_build_filename(dir, "file", NULL);
        ImageCache *c = NULL;
        char *error = NULL;
        g_assert_cmpint(image_cache_open(path, DRIVER_SQLITE, &c, &error), <, 0);
        g_assert_nonnull(error);
        g_assert_nonnull(strstr(error, path));
        free(error);
        g_assert_cmpint(image_cache_open("relative/path", DRIVER_SQLITE, &c, NULL), ==, -EINVAL);
        test_tmpdir_remove(dir);
}

#define ADD(name, fn)                                                                              \
        do {                                                                                      \
                g_test_add("/store/sqlite/" name, Fixture, GINT_TO_POINTER(DRIVER_SQLITE),        \
                           fixture_setup, fn, fixture_teardown);                                  \
                g_test_add("/store/xattr/" name, Fixture, GINT_TO_POINTER(DRIVER_XATTR),          \
                           fixture_setup, fn, fixture_teardown);                                  \
        } while (0)

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        ADD("is-cached", test_is_cached);
        ADD("read-counts-hits", test_read_counts_hits);
        ADD("size", test_size);
        ADD("delete", test_delete);
        ADD("delete-all", test_delete_all);
        ADD("clean-stalled-zero", test_clean_stalled_zero);
        ADD("clean-stalled-nonzero", test_clean_stalled_nonzero);
        ADD("prune-keeps-most-recent", test_prune_keeps_most_recent);
        ADD("prune-to-zero", test_prune_to_zero);
        ADD("prune-skips-pinned", test_prune_skips_pinned);
        ADD("queue", test_queue);
        ADD("queue-checksum", test_queue_checksum);
        ADD("write-good-checksum", test_write_good_checksum);
        ADD("write-bad-checksum", test_write_bad_checksum);
        ADD("write-halves", test_write_halves);
        ADD("write-aborted", test_write_aborted);
        ADD("write-reserve", test_write_reserve);
        ADD("write-partial-not-cached", test_write_partial_not_cached);
        ADD("write-existing", test_write_existing);
        ADD("bad-ids", test_bad_ids);
        ADD("reconcile-after-crash", test_reconcile_after_crash);
        ADD("two-openers", test_two_openers);
        ADD("verify", test_verify);
        ADD("list", test_list);

        g_test_add_func("/store/sqlite/glance-cache-db", test_glance_cache_db);
        g_test_add_func("/store/xattr/glance-user-hits", test_glance_xattr_hits);
        g_test_add_func("/store/open/not-a-directory", test_not_a_directory);

        return g_test_run();
}
