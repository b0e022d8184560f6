/* SPDX-License-Identifier: MIT */

/* Both metadata drivers run the same list of tests; a few more cover what only one of them has: Glance's
 * cache.db and its schema for sqlite, Glance's user.hits and filesystems without user xattrs for xattr. */

#include <fcntl.h>
#include <ftw.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <sched.h>
#include <sqlite3.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>

#include "driver.h"
#include "image-id.h"
#include "util.h"

#define N_MANY 1000
#define BASE_USEC ((usec_t) 1700000000123456ULL) /* 2023-11-14, with a µs part */

/* One cache directory with a driver opened on it, as the store would have it. */
typedef struct Env {
        const DriverOps *ops;
        char *path;
        int dir_fd;
        void *state;
} Env;

static int rm_rf_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void rm_rf(const char *path) {
        (void) nftw(path, rm_rf_one, 16, FTW_DEPTH | FTW_PHYS);
}

static bool user_xattrs_work(const char *dir) {
        g_autofree char *p = g_build_filename(dir, "xattr-probe", NULL);
        bool ok;
        int fd;

        fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        g_assert_cmpint(fd, >=, 0);
        ok = fsetxattr(fd, "user.test", "1", 1, 0) >= 0;
        close(fd);
        g_assert_cmpint(unlink(p), ==, 0);
        return ok;
}

static void env_done(Env *env);

/* Makes a fresh directory; returns false (test skipped, env released) when the driver cannot run here. */
static bool env_init(Env *env, const DriverOps *ops) {
        g_autoptr(GError) error = NULL;
        g_autofree char *lock = NULL;
        int fd;

        *env = (Env) { .ops = ops, .dir_fd = -EBADF };

        env->path = g_dir_make_tmp("imgcache-test-driver-XXXXXX", &error);
        g_assert_no_error(error);

        env->dir_fd = open(env->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        g_assert_cmpint(env->dir_fd, >=, 0);

        if (ops == &driver_xattr_ops && !user_xattrs_work(env->path)) {
                g_test_skip("the temporary directory's filesystem has no user xattrs");
                env_done(env);
                return false;
        }

        /* The store creates and locks .lock before it opens the driver. */
        lock = g_build_filename(env->path, ".lock", NULL);
        fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        g_assert_cmpint(fd, >=, 0);
        close(fd);

        return true;
}

static void env_open(Env *env) {
        g_autofree char *error = NULL;
        int r;

        g_assert_null(env->state);
        r = env->ops->open(env->dir_fd, env->path, &env->state, &error);
        if (r < 0)
                g_error("open(%s) failed: %s (%s)", env->path, g_strerror(-r), strempty(error));
        g_assert_null(error);
        g_assert_nonnull(env->state);
}

static void env_close(Env *env) {
        if (env->state)
                env->ops->close(env->state);
        env->state = NULL;
}

static void env_done(Env *env) {
        env_close(env);
        if (env->dir_fd >= 0)
                close(env->dir_fd);
        if (env->path)
                rm_rf(env->path);
        g_free(env->path);
        *env = (Env) { .dir_fd = -EBADF };
}

static char *env_file(const Env *env, const char *name) {
        return g_build_filename(env->path, name, NULL);
}

static struct timespec usec_to_timespec(usec_t u) {
        return (struct timespec) {
                .tv_sec = (time_t) (u / USEC_PER_SEC),
                .tv_nsec = (long) (u % USEC_PER_SEC * NSEC_PER_USEC),
        };
}

/* The image file of e: e->size bytes (sparse), mtime = e->last_modified. The xattr driver takes size and
 * last_modified from the file, so tests that compare them create the file to match. atime is set far off
 * last_accessed, so a driver falling back to atime where it should not is caught. */
static void make_image(const Env *env, const CacheEntry *e) {
        g_autofree char *p = env_file(env, e->id);
        struct timespec ts[2];
        int fd;

        fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(ftruncate(fd, (off_t) e->size), ==, 0);
        ts[0] = usec_to_timespec(BASE_USEC - 86400 * USEC_PER_SEC);
        ts[1] = usec_to_timespec(e->last_modified);
        g_assert_cmpint(futimens(fd, ts), ==, 0);
        close(fd);
}

static void unlink_image(const Env *env, const char *id) {
        g_autofree char *p = env_file(env, id);
        g_assert_cmpint(unlink(p), ==, 0);
}

/* Realistic and varied records: big (sparse) and small sizes, µs times, every checksum form. */
static CacheEntry *make_entries(const char *prefix, size_t n) {
        CacheEntry *v = g_new0(CacheEntry, n);

        for (size_t i = 0; i < n; i++) {
                v[i].id = g_strdup_printf("%s-%04zu-%08x", prefix, i, g_str_hash(prefix) ^ (unsigned) i);
                g_assert_true(image_id_is_valid(v[i].id));
                v[i].size = i % 100 == 7 ? (UINT64_C(5) << 30) + i : i * 4099 + 1;
                v[i].hits = i * 3;
                v[i].last_modified = BASE_USEC + i * 1000003;
                v[i].last_accessed = BASE_USEC + i * 7777777 + 1;

                switch (i % 5) {
                case 0:
                        v[i].checksum = NULL;
                        break;
                case 1: /* what a Glance cache.db holds */
                        v[i].checksum = g_compute_checksum_for_string(G_CHECKSUM_MD5, v[i].id, -1);
                        break;
                case 2: {
                        g_autofree char *hex = g_compute_checksum_for_string(G_CHECKSUM_SHA512, v[i].id, -1);
                        v[i].checksum = g_strconcat("sha512:", hex, NULL);
                        break;
                }
                default: {
                        g_autofree char *hex = g_compute_checksum_for_string(G_CHECKSUM_SHA256, v[i].id, -1);
                        v[i].checksum = g_strconcat("sha256:", hex, NULL);
                        break;
                }
                }
        }
        return v;
}

/* g_free, not free: make_entries allocates with GLib. */
static void free_entries(CacheEntry *v, size_t n) {
        for (size_t i = 0; i < n; i++) {
                g_free(v[i].id);
                g_free(v[i].checksum);
        }
        g_free(v);
}

static void cache_entry_free(gpointer p) {
        cache_entry_done(p);
        g_free(p);
}

static int collect(const CacheEntry *e, void *userdata) {
        GHashTable *h = userdata;
        CacheEntry *copy = g_new0(CacheEntry, 1);

        g_assert_nonnull(e->id);
        g_assert_cmpint(cache_entry_copy(e, copy), ==, 0);
        /* Every record at most once. */
        g_assert_false(g_hash_table_contains(h, copy->id));
        g_hash_table_insert(h, copy->id, copy);
        return 0;
}

static GHashTable *load_all(const Env *env) {
        GHashTable *h = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, cache_entry_free);

        g_assert_cmpint(env->ops->load(env->state, collect, h), ==, 0);
        return h;
}

static void assert_entry_equal(const CacheEntry *got, const CacheEntry *want) {
        g_assert_nonnull(got);
        g_assert_cmpstr(got->id, ==, want->id);
        g_assert_cmpuint(got->size, ==, want->size);
        g_assert_cmpuint(got->hits, ==, want->hits);
        g_assert_cmpuint(got->last_accessed, ==, want->last_accessed);
        g_assert_cmpuint(got->last_modified, ==, want->last_modified);
        g_assert_cmpstr(got->checksum, ==, want->checksum);
}

static void assert_loaded(const Env *env, const CacheEntry *want, size_t n) {
        g_autoptr(GHashTable) h = load_all(env);

        g_assert_cmpuint(g_hash_table_size(h), ==, n);
        for (size_t i = 0; i < n; i++)
                assert_entry_equal(g_hash_table_lookup(h, want[i].id), want + i);
}

/* ---- tests both drivers run ---- */

static void test_entry_copy(void) {
        CacheEntry src = {
                .id = (char *) "abc",
                .size = 1,
                .hits = 2,
                .last_accessed = 3,
                .last_modified = 4,
                .checksum = (char *) "md5:d41d8cd98f00b204e9800998ecf8427e",
        };
        CacheEntry copy;

        g_assert_cmpint(cache_entry_copy(&src, &copy), ==, 0);
        assert_entry_equal(&copy, &src);
        g_assert_true(copy.id != src.id);
        g_assert_true(copy.checksum != src.checksum);
        cache_entry_done(&copy);
        g_assert_null(copy.id);
        g_assert_null(copy.checksum);
        g_assert_cmpuint(copy.size, ==, 0);
        cache_entry_done(&copy); /* idempotent */
        cache_entry_done(NULL);

        src.checksum = NULL;
        g_assert_cmpint(cache_entry_copy(&src, &copy), ==, 0);
        g_assert_null(copy.checksum);
        cache_entry_done(&copy);
}

static void test_open_close(gconstpointer data) {
        Env env;

        if (!env_init(&env, data))
                return;

        g_assert_cmpstr(env.ops->name, !=, NULL);

        env_open(&env);
        {
                g_autoptr(GHashTable) h = load_all(&env);
                g_assert_cmpuint(g_hash_table_size(h), ==, 0);
        }
        env_close(&env);

        /* Again on the now initialised directory. */
        env_open(&env);
        env_close(&env);

        env_done(&env);
}

static void test_round_trip(gconstpointer data) {
        CacheEntry *v;
        Env env;

        if (!env_init(&env, data))
                return;

        v = make_entries("img", N_MANY);
        for (size_t i = 0; i < N_MANY; i++)
                make_image(&env, v + i);

        env_open(&env);
        g_assert_cmpint(env.ops->put(env.state, v, N_MANY), ==, 0);
        assert_loaded(&env, v, N_MANY);
        env_close(&env);

        /* Persisted, not just remembered. */
        env_open(&env);
        assert_loaded(&env, v, N_MANY);
        env_close(&env);

        free_entries(v, N_MANY);
        env_done(&env);
}

static void test_replace(gconstpointer data) {
        CacheEntry *v;
        Env env;

        if (!env_init(&env, data))
                return;

        v = make_entries("replace", 3);
        for (size_t i = 0; i < 3; i++)
                make_image(&env, v + i);

        env_open(&env);
        g_assert_cmpint(env.ops->put(env.state, v, 3), ==, 0);

        /* A new copy of image 1 (a new file, as the store would write it) and of image 2 without checksum. */
        v[1].size = 77;
        v[1].hits = 0;
        v[1].last_modified += 5 * USEC_PER_SEC;
        v[1].last_accessed += 9 * USEC_PER_SEC;
        g_free(v[1].checksum);
        v[1].checksum = g_strdup("sha256:0000000000000000000000000000000000000000000000000000000000000000");
        make_image(&env, v + 1);

        g_free(v[2].checksum);
        v[2].checksum = NULL;
        v[2].hits = 42;

        g_assert_cmpint(env.ops->put(env.state, v + 1, 2), ==, 0);
        assert_loaded(&env, v, 3);

        /* The same record twice in one batch: the last one wins. */
        CacheEntry twice[2] = { v[0], v[0] };
        twice[1].hits = 1234;
        g_assert_cmpint(env.ops->put(env.state, twice, 2), ==, 0);
        v[0].hits = 1234;
        assert_loaded(&env, v, 3);
        env_close(&env);

        env_open(&env);
        assert_loaded(&env, v, 3);
        env_close(&env);

        free_entries(v, 3);
        env_done(&env);
}

static void test_remove(gconstpointer data) {
        const char *ids[8];
        CacheEntry *v, keep[5];
        Env env;

        if (!env_init(&env, data))
                return;

        v = make_entries("remove", 10);
        for (size_t i = 0; i < 10; i++)
                make_image(&env, v + i);

        env_open(&env);
        g_assert_cmpint(env.ops->put(env.state, v, 10), ==, 0);

        /* Odd ones go; the store removes the files first, then the records. Unknown ids are fine. */
        for (size_t i = 0; i < 5; i++) {
                ids[i] = v[2 * i + 1].id;
                unlink_image(&env, ids[i]);
                keep[i] = v[2 * i];
        }
        ids[5] = "never-seen";
        ids[6] = "also-unknown";
        ids[7] = v[1].id; /* twice in one batch */

        g_assert_cmpint(env.ops->remove(env.state, ids, 8), ==, 0);
        assert_loaded(&env, keep, 5);

        /* Removing the same again, and nothing at all, both succeed. */
        g_assert_cmpint(env.ops->remove(env.state, ids, 8), ==, 0);
        g_assert_cmpint(env.ops->remove(env.state, NULL, 0), ==, 0);
        env_close(&env);

        env_open(&env);
        assert_loaded(&env, keep, 5);
        env_close(&env);

        free_entries(v, 10);
        env_done(&env);
}

static void test_update_hits(gconstpointer data) {
        CacheEntry *v;
        Env env;

        if (!env_init(&env, data))
                return;

        v = make_entries("hits", 4);
        for (size_t i = 0; i < 4; i++)
                make_image(&env, v + i);

        env_open(&env);
        g_assert_cmpint(env.ops->put(env.state, v, 4), ==, 0);

        /* Image 3 is deleted after its hit was counted but before the flush. */
        unlink_image(&env, v[3].id);
        const char *gone = v[3].id;
        g_assert_cmpint(env.ops->remove(env.state, &gone, 1), ==, 0);

        HitUpdate u[] = {
                { .id = v[0].id, .hits = 17, .last_accessed = BASE_USEC + 3600 * USEC_PER_SEC },
                { .id = v[2].id, .hits = 1, .last_accessed = BASE_USEC + 7200 * USEC_PER_SEC + 999999 },
                { .id = v[3].id, .hits = 5, .last_accessed = BASE_USEC },
                { .id = "unknown-image", .hits = 5, .last_accessed = BASE_USEC },
        };
        g_assert_cmpint(env.ops->update_hits(env.state, u, ELEMENTSOF(u)), ==, 0);
        g_assert_cmpint(env.ops->update_hits(env.state, NULL, 0), ==, 0);

        v[0].hits = u[0].hits;
        v[0].last_accessed = u[0].last_accessed;
        v[2].hits = u[1].hits;
        v[2].last_accessed = u[1].last_accessed;
        /* Counters are absolute, and only hits and the access time change. */
        assert_loaded(&env, v, 3);
        env_close(&env);

        env_open(&env);
        assert_loaded(&env, v, 3);
        env_close(&env);

        free_entries(v, 4);
        env_done(&env);
}

static int stop_after_three(const CacheEntry *e, void *userdata) {
        unsigned *n = userdata;

        return ++*n == 3 ? -ECANCELED : 0;
}

static void test_load_stops(gconstpointer data) {
        unsigned n = 0;
        CacheEntry *v;
        Env env;

        if (!env_init(&env, data))
                return;

        v = make_entries("stop", 10);
        for (size_t i = 0; i < 10; i++)
                make_image(&env, v + i);

        env_open(&env);
        g_assert_cmpint(env.ops->put(env.state, v, 10), ==, 0);
        g_assert_cmpint(env.ops->load(env.state, stop_after_three, &n), ==, -ECANCELED);
        g_assert_cmpuint(n, ==, 3);

        /* A stopped walk leaves nothing behind that would hinder the next call. */
        assert_loaded(&env, v, 10);
        g_assert_cmpint(env.ops->put(env.state, v, 10), ==, 0);
        env_close(&env);

        free_entries(v, 10);
        env_done(&env);
}

/* ---- sqlite ---- */

static sqlite3 *db_open_raw(const Env *env) {
        g_autofree char *p = env_file(env, DRIVER_SQLITE_DB);
        sqlite3 *db = NULL;

        g_assert_cmpint(sqlite3_open_v2(p, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                        ==, SQLITE_OK);
        g_assert_cmpint(sqlite3_busy_timeout(db, 5000), ==, SQLITE_OK);
        return db;
}

static void db_exec(sqlite3 *db, const char *sql) {
        char *err = NULL;

        if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
                g_error("%s: %s", sql, err);
}

static sqlite3_int64 db_int(sqlite3 *db, const char *sql) {
        sqlite3_stmt *st = NULL;
        sqlite3_int64 v;

        g_assert_cmpint(sqlite3_prepare_v2(db, sql, -1, &st, NULL), ==, SQLITE_OK);
        g_assert_cmpint(sqlite3_step(st), ==, SQLITE_ROW);
        v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        return v;
}

static char *db_text(sqlite3 *db, const char *sql) {
        sqlite3_stmt *st = NULL;
        char *v;

        g_assert_cmpint(sqlite3_prepare_v2(db, sql, -1, &st, NULL), ==, SQLITE_OK);
        g_assert_cmpint(sqlite3_step(st), ==, SQLITE_ROW);
        v = g_strdup((const char *) sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        return v;
}

static int open_expect_failure(Env *env, char **ret_error) {
        void *state = NULL;
        int r;

        *ret_error = NULL;
        r = env->ops->open(env->dir_fd, env->path, &state, ret_error);
        g_assert_cmpint(r, <, 0);
        g_assert_null(state);
        return r;
}

/* A cache.db as Glance's sqlite driver leaves it: its DDL, user_version 0, rollback journal, bare md5
 * hex checksums, times as floats, and the odd damaged row. */
static void test_sqlite_glance_db(gconstpointer data) {
        g_autoptr(GHashTable) h = NULL;
        sqlite3 *db;
        Env env;

        if (!env_init(&env, data))
                return;

        db = db_open_raw(&env);
        db_exec(db,
                "CREATE TABLE IF NOT EXISTS cached_images (\n"
                "    image_id TEXT PRIMARY KEY,\n"
                "    last_accessed REAL DEFAULT 0.0,\n"
                "    last_modified REAL DEFAULT 0.0,\n"
                "    size INTEGER DEFAULT 0,\n"
                "    hits INTEGER DEFAULT 0,\n"
                "    checksum TEXT\n"
                ");");
        db_exec(db,
                "INSERT INTO cached_images "
                "(image_id, last_accessed, last_modified, hits, size, checksum) VALUES "
                "('6b8ac5fb-0a0a-4c35-9f8d-2a1e0e4c3f11', 1700000000.2499996, 1699999999.5, 3, 1048576, "
                "'d41d8cd98f00b204e9800998ecf8427e'),"
                "('null-row', NULL, NULL, NULL, NULL, NULL),"
                "('negative-row', -5.0, -1.0, -7, -1, ''),"
                "('text-row', 'yesterday', x'00ff', 'many', 'big', x'00'),"
                "(NULL, 1.0, 1.0, 1, 1, NULL),"
                "('../escape', 1.0, 1.0, 1, 1, NULL),"
                "('huge-row', 1e300, 9e18, 1e30, 2.5e3, NULL);"
                "INSERT INTO cached_images (image_id) VALUES ('defaults-only');");
        g_assert_cmpint(db_int(db, "PRAGMA user_version"), ==, 0);
        sqlite3_close(db);

        env_open(&env);
        h = load_all(&env);

        /* The NULL id and the id that is no file name are skipped; the rest loads, garbage as 0.
         * time.time() has sub-µs digits: they round to the nearest µs. */
        g_assert_cmpuint(g_hash_table_size(h), ==, 6);
        assert_entry_equal(g_hash_table_lookup(h, "6b8ac5fb-0a0a-4c35-9f8d-2a1e0e4c3f11"), &(CacheEntry) {
                .id = (char *) "6b8ac5fb-0a0a-4c35-9f8d-2a1e0e4c3f11",
                .size = 1048576,
                .hits = 3,
                .last_accessed = 1700000000250000,
                .last_modified = 1699999999500000,
                .checksum = (char *) "d41d8cd98f00b204e9800998ecf8427e",
        });
        const char *zero_rows[] = { "null-row", "negative-row", "text-row", "defaults-only" };
        for (size_t i = 0; i < ELEMENTSOF(zero_rows); i++)
                assert_entry_equal(g_hash_table_lookup(h, zero_rows[i]),
                                   &(CacheEntry) { .id = (char *) zero_rows[i] });
        assert_entry_equal(g_hash_table_lookup(h, "huge-row"), &(CacheEntry) {
                .id = (char *) "huge-row",
                .size = 2500,
                .hits = 0,
                .last_accessed = 0,
                .last_modified = 0,
        });

        /* What we write stays readable by Glance: seconds as REAL, bare checksum untouched. */
        CacheEntry e = {
                .id = (char *) "written-by-us",
                .size = 4096,
                .hits = 2,
                .last_accessed = 1700000001500000,
                .last_modified = 1700000000000001,
                .checksum = (char *) "0cc175b9c0f1b6a831c399e269772661",
        };
        g_assert_cmpint(env.ops->put(env.state, &e, 1), ==, 0);
        HitUpdate u = {
                .id = "6b8ac5fb-0a0a-4c35-9f8d-2a1e0e4c3f11",
                .hits = 4,
                .last_accessed = 1700000100000000,
        };
        g_assert_cmpint(env.ops->update_hits(env.state, &u, 1), ==, 0);
        env_close(&env);

        db = db_open_raw(&env);
        g_assert_cmpint(db_int(db, "PRAGMA user_version"), ==, 1);
        {
                g_autofree char *mode = db_text(db, "PRAGMA journal_mode");
                g_assert_cmpstr(mode, ==, "wal");
        }
        g_assert_cmpint(db_int(db, "SELECT count(*) FROM cached_images WHERE image_id = 'written-by-us' AND "
                                   "typeof(last_accessed) = 'real' AND last_accessed = 1700000001.5 AND "
                                   "last_modified = 1700000000.000001 AND size = 4096 AND hits = 2 AND "
                                   "checksum = '0cc175b9c0f1b6a831c399e269772661'"), ==, 1);
        g_assert_cmpint(db_int(db, "SELECT hits FROM cached_images WHERE image_id LIKE '6b8ac5fb-%'"), ==, 4);
        g_assert_cmpint(db_int(db, "SELECT last_accessed = 1700000100.0 FROM cached_images "
                                   "WHERE image_id LIKE '6b8ac5fb-%'"), ==, 1);
        /* Rows we could not use are left alone. */
        g_assert_cmpint(db_int(db, "SELECT count(*) FROM cached_images"), ==, 9);
        sqlite3_close(db);

        /* Opening again does not migrate again. */
        env_open(&env);
        env_close(&env);

        env_done(&env);
}

static void test_sqlite_corrupt(gconstpointer data) {
        g_autofree char *p = NULL, *error = NULL, *after = NULL;
        char garbage[8192];
        gsize n = 0;
        Env env;
        int r;

        if (!env_init(&env, data))
                return;

        for (size_t i = 0; i < sizeof(garbage); i++)
                garbage[i] = (char) ("this is no database\n"[i % 20] ^ (i / 20 % 3));
        p = env_file(&env, DRIVER_SQLITE_DB);
        g_assert_true(g_file_set_contents(p, garbage, sizeof(garbage), NULL));

        r = open_expect_failure(&env, &error);
        g_assert_cmpint(r, ==, -EBADMSG);
        g_assert_nonnull(error);
        g_test_message("corrupt cache.db: %s", error);
        g_assert_nonnull(strstr(error, p));

        /* Left exactly as it was, for the operator. */
        g_assert_true(g_file_get_contents(p, &after, &n, NULL));
        g_assert_cmpmem(after, n, garbage, sizeof(garbage));

        env_done(&env);
}

static void test_sqlite_future_version(gconstpointer data) {
        g_autofree char *error = NULL;
        sqlite3 *db;
        Env env;
        int r;

        if (!env_init(&env, data))
                return;

        db = db_open_raw(&env);
        db_exec(db, "CREATE TABLE cached_images (image_id TEXT PRIMARY KEY, last_accessed REAL, "
                    "last_modified REAL, size INTEGER, hits INTEGER, checksum TEXT, colour TEXT);"
                    "CREATE TABLE from_the_future (x);"
                    "PRAGMA user_version = 99;");
        sqlite3_close(db);

        r = open_expect_failure(&env, &error);
        g_assert_cmpint(r, ==, -EPROTONOSUPPORT);
        g_assert_nonnull(error);
        g_test_message("future cache.db: %s", error);
        g_assert_nonnull(strstr(error, "99"));
        g_assert_nonnull(strstr(error, DRIVER_SQLITE_DB));

        db = db_open_raw(&env);
        g_assert_cmpint(db_int(db, "PRAGMA user_version"), ==, 99);
        sqlite3_close(db);

        env_done(&env);
}

static void test_sqlite_missing_directory(gconstpointer data) {
        g_autofree char *error = NULL;
        char *real_path;
        Env env;
        int r;

        if (!env_init(&env, data))
                return;

        real_path = TAKE_PTR(env.path);
        env.path = g_strdup("/nonexistent-imgcache-test/cache");

        r = open_expect_failure(&env, &error);
        g_assert_cmpint(r, ==, -ENOENT);
        g_assert_nonnull(error);
        g_assert_nonnull(strstr(error, "/nonexistent-imgcache-test/cache/" DRIVER_SQLITE_DB));

        g_free(env.path);
        env.path = real_path;
        env_done(&env);
}

/* Toggles the immutable flag, the one thing that keeps root from writing a file. */
static bool set_immutable(const char *path, bool b) {
        int fd, flags, r;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        g_assert_cmpint(fd, >=, 0);
        r = ioctl(fd, FS_IOC_GETFLAGS, &flags);
        if (r >= 0) {
                flags = b ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
                r = ioctl(fd, FS_IOC_SETFLAGS, &flags);
        }
        close(fd);
        return r >= 0;
}

/* sqlite falls back to read-only on a file it cannot write; that must fail open, not the first flush. */
static void test_sqlite_read_only(gconstpointer data) {
        g_autofree char *p = NULL, *error = NULL;
        Env env;
        int r;

        if (!env_init(&env, data))
                return;

        env_open(&env);
        env_close(&env);

        p = env_file(&env, DRIVER_SQLITE_DB);
        if (geteuid() != 0)
                g_assert_cmpint(chmod(p, 0444), ==, 0);
        else if (!set_immutable(p, true)) {
                g_test_skip("cannot make cache.db unwritable for root (no immutable flag here)");
                env_done(&env);
                return;
        }

        r = open_expect_failure(&env, &error);
        g_assert_cmpint(r, ==, -EACCES);
        g_assert_nonnull(error);
        g_test_message("read-only cache.db: %s", error);
        g_assert_nonnull(strstr(error, p));

        if (geteuid() == 0)
                g_assert_true(set_immutable(p, false));
        env_done(&env);
}

/* A batch fails as a whole: a trigger poisons one record in the middle of each kind of batch. */
static void test_sqlite_all_or_nothing(gconstpointer data) {
        CacheEntry *v;
        sqlite3 *db;
        Env env;

        if (!env_init(&env, data))
                return;

        v = make_entries("atomic", 4);
        env_open(&env);
        g_assert_cmpint(env.ops->put(env.state, v, 2), ==, 0);

        db = db_open_raw(&env);
        db_exec(db,
                "CREATE TRIGGER poison_put BEFORE INSERT ON cached_images WHEN NEW.image_id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'poisoned'); END;"
                "CREATE TRIGGER poison_remove BEFORE DELETE ON cached_images "
                "WHEN OLD.image_id = 'poison-row' "
                "BEGIN SELECT RAISE(ABORT, 'poisoned'); END;"
                "CREATE TRIGGER poison_hits BEFORE UPDATE OF hits ON cached_images WHEN NEW.hits = 666 "
                "BEGIN SELECT RAISE(ABORT, 'poisoned'); END;"
                "INSERT INTO cached_images (image_id) VALUES ('poison-row');");

        /* v[2] and v[3] around a poisoned record: neither may be stored. */
        CacheEntry batch[3] = { v[2], { .id = (char *) "poison" }, v[3] };
        g_assert_cmpint(env.ops->put(env.state, batch, 3), <, 0);

        const char *ids[] = { v[0].id, "poison-row", v[1].id };
        g_assert_cmpint(env.ops->remove(env.state, ids, 3), <, 0);

        HitUpdate u[] = {
                { .id = v[0].id, .hits = 100, .last_accessed = BASE_USEC },
                { .id = v[1].id, .hits = 666, .last_accessed = BASE_USEC },
        };
        g_assert_cmpint(env.ops->update_hits(env.state, u, 2), <, 0);

        db_exec(db, "DROP TRIGGER poison_put; DROP TRIGGER poison_remove; DROP TRIGGER poison_hits;"
                    "DELETE FROM cached_images WHERE image_id = 'poison-row';");

        /* Nothing of the failed batches happened, and the driver is not stuck inside a transaction. */
        assert_loaded(&env, v, 2);
        g_assert_cmpint(env.ops->put(env.state, v, 4), ==, 0);
        assert_loaded(&env, v, 4);

        /* Another writer holding the database: -EBUSY after the busy timeout, then back to normal. */
        db_exec(db, "BEGIN IMMEDIATE");
        g_assert_cmpint(env.ops->update_hits(env.state, u, 1), ==, -EBUSY);
        db_exec(db, "ROLLBACK");
        g_assert_cmpint(env.ops->update_hits(env.state, u, 1), ==, 0);
        sqlite3_close(db);

        env_close(&env);
        free_entries(v, 4);
        env_done(&env);
}

/* ---- xattr ---- */

static void set_times(const Env *env, const char *id, usec_t atime, usec_t mtime) {
        g_autofree char *p = env_file(env, id);
        struct timespec ts[2] = { usec_to_timespec(atime), usec_to_timespec(mtime) };

        g_assert_cmpint(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW), ==, 0);
}

static void set_xattr(const Env *env, const char *id, const char *name, const char *value, size_t n) {
        g_autofree char *p = env_file(env, id);

        g_assert_cmpint(lsetxattr(p, name, value, n, 0), ==, 0);
}

/* A cache directory Glance's xattr driver filled: user.hits as a decimal string, LRU by atime. */
static void test_xattr_glance_files(gconstpointer data) {
        g_autoptr(GHashTable) h = NULL;
        Env env;

        if (!env_init(&env, data))
                return;

        CacheEntry glance = { .id = (char *) "2a1e0e4c-3f11-4c35-9f8d-6b8ac5fb0a0a", .size = 123456 };
        make_image(&env, &glance);
        set_times(&env, glance.id, BASE_USEC + 60 * USEC_PER_SEC, BASE_USEC);
        set_xattr(&env, glance.id, "user.hits", "5", 1);

        /* setfattr users and other writers: trailing NUL or newline, garbage, negative, overflow. */
        CacheEntry odd[] = {
                { .id = (char *) "nul-terminated", .size = 1 },
                { .id = (char *) "newline", .size = 2 },
                { .id = (char *) "garbage", .size = 3 },
                { .id = (char *) "negative", .size = 4 },
                { .id = (char *) "overflow", .size = 5 },
                { .id = (char *) "bad-access-time", .size = 6 },
        };
        for (size_t i = 0; i < ELEMENTSOF(odd); i++) {
                make_image(&env, odd + i);
                set_times(&env, odd[i].id, BASE_USEC + i, BASE_USEC);
        }
        set_xattr(&env, "nul-terminated", "user.hits", "12", 3);
        set_xattr(&env, "newline", "user.hits", "13\n", 3);
        set_xattr(&env, "garbage", "user.hits", "lots", 4);
        set_xattr(&env, "negative", "user.hits", "-3", 2);
        set_xattr(&env, "overflow", "user.hits", "99999999999999999999999", 23);
        set_xattr(&env, "bad-access-time", XATTR_LAST_ACCESSED, "soon", 4);
        set_xattr(&env, "bad-access-time", XATTR_CHECKSUM, "", 0);

        env_open(&env);
        h = load_all(&env);
        g_assert_cmpuint(g_hash_table_size(h), ==, 1 + ELEMENTSOF(odd));

        assert_entry_equal(g_hash_table_lookup(h, glance.id), &(CacheEntry) {
                .id = glance.id,
                .size = 123456,
                .hits = 5,
                .last_accessed = BASE_USEC + 60 * USEC_PER_SEC, /* atime */
                .last_modified = BASE_USEC,
        });

        const uint64_t odd_hits[] = { 12, 13, 0, 0, 0, 0 };
        for (size_t i = 0; i < ELEMENTSOF(odd); i++)
                assert_entry_equal(g_hash_table_lookup(h, odd[i].id), &(CacheEntry) {
                        .id = odd[i].id,
                        .size = odd[i].size,
                        .hits = odd_hits[i],
                        .last_accessed = BASE_USEC + i,
                        .last_modified = BASE_USEC,
                });

        /* Hits we count stay readable by Glance: a plain decimal string in user.hits. */
        HitUpdate u = { .id = glance.id, .hits = 6, .last_accessed = BASE_USEC + 120 * USEC_PER_SEC };
        g_assert_cmpint(env.ops->update_hits(env.state, &u, 1), ==, 0);
        {
                g_autofree char *p = env_file(&env, glance.id);
                char buf[32] = {};

                g_assert_cmpint(lgetxattr(p, "user.hits", buf, sizeof(buf) - 1), ==, 1);
                g_assert_cmpstr(buf, ==, "6");
        }
        env_close(&env);

        env_done(&env);
}

/* Only valid image ids naming regular files are images; symlinks are never followed. */
static void test_xattr_skips_non_images(gconstpointer data) {
        g_autoptr(GHashTable) h = NULL;
        g_autofree char *outside = NULL;
        Env env;

        if (!env_init(&env, data))
                return;

        CacheEntry img = { .id = (char *) "real-image", .size = 10, .last_modified = BASE_USEC };
        make_image(&env, &img);

        const char *dirs[] = { "incomplete", "invalid", "queue", "a-directory" };
        for (size_t i = 0; i < ELEMENTSOF(dirs); i++) {
                g_autofree char *p = env_file(&env, dirs[i]);
                g_assert_cmpint(mkdir(p, 0755), ==, 0);
        }

        const char *files[] = { "cache.db", "cache.db-wal", "cache.db-shm", "cache.db-journal", ".hidden",
                                "bad name", "~backup~" };
        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                g_autofree char *p = env_file(&env, files[i]);
                g_assert_true(g_file_set_contents(p, "x", 1, NULL));
        }

        /* A symlink to an image inside and to a file outside the cache, and a FIFO that must not block. */
        outside = g_build_filename(g_get_tmp_dir(), "imgcache-test-driver-outside", NULL);
        g_assert_true(g_file_set_contents(outside, "secret", 6, NULL));
        {
                g_autofree char *l1 = env_file(&env, "link-in");
                g_autofree char *l2 = env_file(&env, "link-out");
                g_autofree char *fifo = env_file(&env, "fifo");

                g_assert_cmpint(symlink("real-image", l1), ==, 0);
                g_assert_cmpint(symlink(outside, l2), ==, 0);
                g_assert_cmpint(mkfifo(fifo, 0644), ==, 0);
        }

        env_open(&env);
        h = load_all(&env);
        g_assert_cmpuint(g_hash_table_size(h), ==, 1);
        g_assert_nonnull(g_hash_table_lookup(h, "real-image"));

        /* Nor is a symlink written through, and a batch naming one fails before writing anything. */
        CacheEntry batch[] = {
                { .id = (char *) "real-image", .hits = 1, .checksum = (char *) "md5:x" },
                { .id = (char *) "link-out", .hits = 1 },
        };
        g_assert_cmpint(env.ops->put(env.state, batch, 2), ==, -ENOENT);
        {
                g_autofree char *p = env_file(&env, "real-image");
                char buf[8];

                g_assert_cmpint(lgetxattr(p, XATTR_CHECKSUM, buf, sizeof(buf)), <, 0);
                g_assert_cmpint(errno, ==, ENODATA);
                g_assert_cmpint(getxattr(outside, "user.hits", buf, sizeof(buf)), <, 0);
        }

        HitUpdate u[] = {
                { .id = "link-out", .hits = 9 },
                { .id = "fifo", .hits = 9 },
        };
        g_assert_cmpint(env.ops->update_hits(env.state, u, ELEMENTSOF(u)), ==, 0);
        {
                char buf[8];
                g_assert_cmpint(getxattr(outside, "user.hits", buf, sizeof(buf)), <, 0);
        }
        env_close(&env);

        g_assert_cmpint(unlink(outside), ==, 0);
        env_done(&env);
}

static void test_xattr_put_missing_file(gconstpointer data) {
        CacheEntry e = { .id = (char *) "not-there", .size = 1 };
        Env env;

        if (!env_init(&env, data))
                return;

        env_open(&env);
        g_assert_cmpint(env.ops->put(env.state, &e, 1), ==, -ENOENT);

        e.id = (char *) "../escape";
        g_assert_cmpint(env.ops->put(env.state, &e, 1), ==, -EINVAL);
        env_close(&env);

        env_done(&env);
}

/* ramfs keeps no user xattrs. Mounting one needs a private mount namespace, so this runs in a child;
 * where neither root nor a user namespace allows that, the test is skipped. */
/* In place: g_file_set_contents() would write a temporary file and rename it, which /proc refuses. */
static bool write_proc(const char *path, const char *s) {
        bool ok;
        int fd;

        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        ok = loop_write(fd, s, strlen(s)) >= 0;
        close(fd);
        return ok;
}

static int xattr_unsupported_child(const char *dir) {
        g_autofree char *error = NULL;
        void *state = NULL;
        int r, fd;

        if (unshare(CLONE_NEWNS) < 0) {
                uid_t uid = getuid();
                gid_t gid = getgid();
                char map[64];

                if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
                        return 77;
                (void) write_proc("/proc/self/setgroups", "deny");
                snprintf(map, sizeof(map), "0 %u 1", (unsigned) uid);
                if (!write_proc("/proc/self/uid_map", map))
                        return 77;
                snprintf(map, sizeof(map), "0 %u 1", (unsigned) gid);
                if (!write_proc("/proc/self/gid_map", map))
                        return 77;
        }
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                return 77;
        if (mount("imgcache-test", dir, "ramfs", 0, "mode=0755") < 0)
                return 77;

        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return 1;

        r = driver_xattr_ops.open(fd, dir, &state, &error);
        if (r >= 0) {
                /* ramfs learnt user xattrs: the premise of the test is gone. */
                driver_xattr_ops.close(state);
                return 77;
        }
        if (r != -EOPNOTSUPP) {
                fprintf(stderr, "open on ramfs: %s (%s)\n", strerror(-r), strempty(error));
                return 1;
        }
        if (!error || !strstr(error, dir) ||
            !strstr(error, "does not support user extended attributes "
                           "(mount with user_xattr or use Driver=sqlite)")) {
                fprintf(stderr, "open on ramfs: unexpected message: %s\n", strempty(error));
                return 1;
        }
        fprintf(stderr, "open on ramfs: %s\n", error);
        return 0;
}

static void test_xattr_unsupported(gconstpointer data) {
        int status;
        pid_t pid;
        Env env;

        if (!env_init(&env, data))
                return;

        pid = fork();
        g_assert_cmpint(pid, >=, 0);
        if (pid == 0)
                _exit(xattr_unsupported_child(env.path));

        g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
        g_assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == 77)
                g_test_skip("cannot mount a filesystem without user xattrs (ramfs) here");
        else
                g_assert_cmpint(WEXITSTATUS(status), ==, 0);

        env_done(&env);
}

/* ---- registration ---- */

static void add_test(const DriverOps *ops, const char *name, GTestDataFunc f) {
        g_autofree char *path = g_strdup_printf("/driver/%s/%s", ops->name, name);

        g_test_add_data_func(path, ops, f);
}

int main(int argc, char *argv[]) {
        const DriverOps *const drivers[] = { &driver_sqlite_ops, &driver_xattr_ops };

        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/driver/entry-copy", test_entry_copy);

        for (size_t i = 0; i < ELEMENTSOF(drivers); i++) {
                add_test(drivers[i], "open-close", test_open_close);
                add_test(drivers[i], "round-trip", test_round_trip);
                add_test(drivers[i], "replace", test_replace);
                add_test(drivers[i], "remove", test_remove);
                add_test(drivers[i], "update-hits", test_update_hits);
                add_test(drivers[i], "load-stops", test_load_stops);
        }

        add_test(&driver_sqlite_ops, "glance-db", test_sqlite_glance_db);
        add_test(&driver_sqlite_ops, "corrupt", test_sqlite_corrupt);
        add_test(&driver_sqlite_ops, "future-version", test_sqlite_future_version);
        add_test(&driver_sqlite_ops, "missing-directory", test_sqlite_missing_directory);
        add_test(&driver_sqlite_ops, "all-or-nothing", test_sqlite_all_or_nothing);
        add_test(&driver_sqlite_ops, "read-only", test_sqlite_read_only);

        add_test(&driver_xattr_ops, "glance-files", test_xattr_glance_files);
        add_test(&driver_xattr_ops, "skips-non-images", test_xattr_skips_non_images);
        add_test(&driver_xattr_ops, "put-missing-file", test_xattr_put_missing_file);
        add_test(&driver_xattr_ops, "unsupported-filesystem", test_xattr_unsupported);

        return g_test_run();
}
