/* SPDX-License-Identifier: MIT */

/* The default metadata driver: Glance's cache.db. The table stays exactly Glance's, so a Glance cache
 * directory can be adopted as-is and Glance's tools can still read what we write; anything of our own
 * goes into further tables added by later schema versions. */

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <sqlite3.h>
#include <stdarg.h>

#include "driver.h"
#include "image-id.h"

/* The daemon is the only writer; a busy database means an operator's sqlite3 shell or a leftover Glance
 * process holds a write lock. Wait a little for it, but not so long that the event loop stalls. */
#define SQLITE_BUSY_TIMEOUT_MSEC 2000

/* Schema migrations: entry i brings the database from user_version i to i + 1. Glance never sets
 * user_version, so its databases are at 0 and step 1 adopts them: the CREATE is a no-op when the table
 * exists. Later versions append here; a released entry is never changed. */
static const char *const migrations[] = {
        /* 1: Glance's table, column for column. */
        "CREATE TABLE IF NOT EXISTS cached_images ("
        "image_id TEXT PRIMARY KEY, "
        "last_accessed REAL DEFAULT 0.0, "
        "last_modified REAL DEFAULT 0.0, "
        "size INTEGER DEFAULT 0, "
        "hits INTEGER DEFAULT 0, "
        "checksum TEXT)",
};

#define SCHEMA_VERSION ((int) ELEMENTSOF(migrations))

/* An upsert rather than INSERT OR REPLACE: REPLACE deletes the row first, which would reset columns a
 * later schema version adds. */
#define SQL_PUT                                                                                 \
        "INSERT INTO cached_images (image_id, last_accessed, last_modified, size, hits, checksum) " \
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6) "                                                      \
        "ON CONFLICT (image_id) DO UPDATE SET "                                                 \
        "last_accessed = excluded.last_accessed, last_modified = excluded.last_modified, "      \
        "size = excluded.size, hits = excluded.hits, checksum = excluded.checksum"
#define SQL_REMOVE "DELETE FROM cached_images WHERE image_id = ?1"
#define SQL_UPDATE_HITS "UPDATE cached_images SET hits = ?2, last_accessed = ?3 WHERE image_id = ?1"
#define SQL_LOAD "SELECT image_id, last_accessed, last_modified, size, hits, checksum FROM cached_images"

typedef struct SqliteState {
        sqlite3 *db;
        char *db_path;

        sqlite3_stmt *begin;
        sqlite3_stmt *commit;
        sqlite3_stmt *rollback;
        sqlite3_stmt *put;
        sqlite3_stmt *remove;
        sqlite3_stmt *update_hits;
} SqliteState;

static void sqlite3_finalize_void(sqlite3_stmt *st) {
        (void) sqlite3_finalize(st);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(sqlite3_stmt *, sqlite3_finalize_void);

static SqliteState *sqlite_state_free(SqliteState *s) {
        if (!s)
                return NULL;

        sqlite3_finalize(s->begin);
        sqlite3_finalize(s->commit);
        sqlite3_finalize(s->rollback);
        sqlite3_finalize(s->put);
        sqlite3_finalize(s->remove);
        sqlite3_finalize(s->update_hits);

        /* With every statement finalized this cannot be SQLITE_BUSY; closing the last connection also
         * checkpoints the WAL back into cache.db. */
        (void) sqlite3_close(s->db);

        free(s->db_path);
        free(s);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(SqliteState *, sqlite_state_free);

/* The errno boundary: nothing above this file sees sqlite's result codes. */
static int errno_from_sqlite(sqlite3 *db, int rc) {
        switch (rc & 0xff) {
        case SQLITE_OK:
        case SQLITE_ROW:
        case SQLITE_DONE:
                return 0;
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                return -EBADMSG;
        case SQLITE_CANTOPEN:
                return db && sqlite3_system_errno(db) == ENOENT ? -ENOENT : -EACCES;
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_READONLY:
                return -EROFS;
        default:
                return -EIO;
        }
}

/* Fails open() with the mapped errno and a message naming the database and sqlite's own words. */
static int open_fail(SqliteState *s, int rc, const char *what, char **ret_error) {
        const char *msg = s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
        int r = errno_from_sqlite(s->db, rc);

        if (r == 0) /* a step that returned an unexpected "success" code */
                r = -EIO;

        if (r == -EBADMSG)
                /* Never delete it ourselves: it may be a Glance database an operator wants to rescue. */
                set_error_message(ret_error,
                          "Metadata database %s is damaged or not an SQLite database (%s). It was left "
                          "untouched; move it away to start over with empty metadata (the images are kept "
                          "and adopted again).",
                          s->db_path, msg);
        else
                set_error_message(ret_error, "Failed to %s metadata database %s: %s", what, s->db_path, msg);
        return r;
}

/* Runs st to completion and resets it, so it can be bound and run again. */
static int stmt_run(SqliteState *s, sqlite3_stmt *st) {
        int rc;

        do
                rc = sqlite3_step(st);
        while (rc == SQLITE_ROW);

        (void) sqlite3_reset(st);
        /* Text is bound SQLITE_STATIC; drop the references before the caller's strings go away. */
        (void) sqlite3_clear_bindings(st);

        return rc == SQLITE_DONE ? 0 : errno_from_sqlite(s->db, rc);
}

static int tx_begin(SqliteState *s) {
        return stmt_run(s, s->begin);
}

static void tx_rollback(SqliteState *s) {
        /* Some errors (SQLITE_FULL, I/O errors, SQLITE_NOMEM) roll back by themselves. */
        if (!sqlite3_get_autocommit(s->db))
                (void) stmt_run(s, s->rollback);
}

static int tx_commit(SqliteState *s) {
        int r;

        r = stmt_run(s, s->commit);
        if (r < 0)
                tx_rollback(s);
        return r;
}

static int bind_usec(sqlite3_stmt *st, int i, usec_t t) {
        /* Glance stores time.time(): epoch seconds as a double. µs since the epoch are far below 2^53,
         * so the round trip through seconds is exact after rounding. */
        return sqlite3_bind_double(st, i, (double) t / USEC_PER_SEC);
}

static int bind_text(sqlite3_stmt *st, int i, const char *s) {
        if (!s)
                return sqlite3_bind_null(st, i);
        return sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* Values written by Glance or by hand may be NULL, negative, text or absurd; all of that reads as 0. */
static usec_t column_usec(sqlite3_stmt *st, int i) {
        int type = sqlite3_column_type(st, i);
        double d;

        if (type != SQLITE_INTEGER && type != SQLITE_FLOAT)
                return 0;

        d = sqlite3_column_double(st, i);
        /* 1e13 s is far in the future yet keeps d * 10^6 + 0.5 well inside uint64_t. */
        if (!isfinite(d) || d <= 0 || d >= 1e13)
                return 0;

        return (usec_t) (d * USEC_PER_SEC + 0.5);
}

static uint64_t column_u64(sqlite3_stmt *st, int i) {
        int type = sqlite3_column_type(st, i);

        if (type == SQLITE_INTEGER) {
                sqlite3_int64 v = sqlite3_column_int64(st, i);
                return v > 0 ? (uint64_t) v : 0;
        }
        if (type == SQLITE_FLOAT) {
                double d = sqlite3_column_double(st, i);
                return isfinite(d) && d > 0 && d < 9e18 ? (uint64_t) d : 0;
        }
        return 0;
}

static const char *column_text(sqlite3_stmt *st, int i) {
        const char *s;

        if (sqlite3_column_type(st, i) != SQLITE_TEXT)
                return NULL;

        s = (const char *) sqlite3_column_text(st, i);
        return isempty(s) ? NULL : s;
}

static int read_user_version(SqliteState *s, int *ret) {
        _cleanup_(sqlite3_finalize_voidp) sqlite3_stmt *st = NULL;
        int rc;

        rc = sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL);
        if (rc != SQLITE_OK)
                return rc;

        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
                return rc == SQLITE_DONE ? SQLITE_ERROR : rc;

        *ret = sqlite3_column_int(st, 0);
        return SQLITE_OK;
}

/* Brings the schema to SCHEMA_VERSION in one transaction. Returns a sqlite result code; a database
 * newer than us is reported through *ret_too_new. */
static int migrate(SqliteState *s, int *ret_too_new) {
        _cleanup_(freep) char *set_version = NULL;
        int rc, version;

        rc = read_user_version(s, &version);
        if (rc != SQLITE_OK)
                return rc;
        if (version > SCHEMA_VERSION) {
                *ret_too_new = version;
                return SQLITE_OK;
        }
        if (version == SCHEMA_VERSION)
                return SQLITE_OK;

        rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                return rc;

        /* Read again under the write lock, in case another process migrated in between. */
        rc = read_user_version(s, &version);
        if (rc != SQLITE_OK)
                goto fail;
        if (version > SCHEMA_VERSION) {
                *ret_too_new = version;
                goto fail;
        }

        for (int v = version; v < SCHEMA_VERSION; v++) {
                rc = sqlite3_exec(s->db, migrations[v], NULL, NULL, NULL);
                if (rc != SQLITE_OK)
                        goto fail;
        }

        /* PRAGMAs take no bound parameters; the value is our own constant. */
        if (asprintf(&set_version, "PRAGMA user_version = %d", SCHEMA_VERSION) < 0) {
                rc = SQLITE_NOMEM;
                goto fail;
        }
        rc = sqlite3_exec(s->db, set_version, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                goto fail;

        rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                goto fail;

        return SQLITE_OK;

fail:
        if (!sqlite3_get_autocommit(s->db))
                (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
}

static int prepare_persistent(SqliteState *s, const char *sql, sqlite3_stmt **ret) {
        return sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, ret, NULL);
}

static int sqlite_open(int dir_fd, const char *path, void **ret_state, char **ret_error) {
        _cleanup_(sqlite_state_freep) SqliteState *s = NULL;
        int rc, too_new = 0;

        assert(path);
        assert(ret_state);

        s = calloc(1, sizeof(SqliteState));
        if (!s)
                return -ENOMEM;

        /* sqlite wants a path (it derives the -wal and -shm names from it), so dir_fd is not used. */
        if (asprintf(&s->db_path, "%s/%s", path, DRIVER_SQLITE_DB) < 0) {
                s->db_path = NULL;
                return -ENOMEM;
        }

        /* NOFOLLOW: a cache.db symlink planted in the cache directory must not redirect our writes. */
        rc = sqlite3_open_v2(s->db_path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOFOLLOW,
                             /* zVfs= */ NULL);
        if (rc != SQLITE_OK)
                return open_fail(s, rc, "open", ret_error);

        /* Asked for read-write, sqlite quietly settles for read-only when the file is not writable. Say so
         * now rather than with an obscure error at the first hit flush. */
        if (sqlite3_db_readonly(s->db, "main") > 0) {
                set_error_message(ret_error,
                          "Metadata database %s can only be opened read-only; "
                          "check its owner and permissions.",
                          s->db_path);
                return -EACCES;
        }

        (void) sqlite3_extended_result_codes(s->db, 1);

        rc = sqlite3_busy_timeout(s->db, SQLITE_BUSY_TIMEOUT_MSEC);
        if (rc != SQLITE_OK)
                return open_fail(s, rc, "configure", ret_error);

        /* WAL: readers (imgcachectl users poking with sqlite3, Glance tools) never block the daemon, and
         * a commit is one append plus an fsync at checkpoint. Opening a file that is not a database
         * fails here, on the first read of its header. The returned row names the mode actually in use;
         * a filesystem without shared memory support keeps the rollback journal, which works too. */
        rc = sqlite3_exec(s->db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                return open_fail(s, rc, "set journal mode of", ret_error);

        /* In WAL mode NORMAL loses at most the last commits on power failure, never consistency; the
         * store reconciles with the files at start anyway. */
        rc = sqlite3_exec(s->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                return open_fail(s, rc, "configure", ret_error);

        rc = migrate(s, &too_new);
        if (too_new > 0) {
                set_error_message(ret_error,
                          "Metadata database %s has schema version %d, newer than version %d understood "
                          "by this imgcache; refusing to use it (was it written by a newer release?).",
                          s->db_path, too_new, SCHEMA_VERSION);
                return -EPROTONOSUPPORT;
        }
        if (rc != SQLITE_OK)
                return open_fail(s, rc, "update schema of", ret_error);

        /* Prepared now, so a database whose table lacks a column we need fails at open, not at the
         * first write. */
        rc = prepare_persistent(s, "BEGIN IMMEDIATE", &s->begin);
        if (rc == SQLITE_OK)
                rc = prepare_persistent(s, "COMMIT", &s->commit);
        if (rc == SQLITE_OK)
                rc = prepare_persistent(s, "ROLLBACK", &s->rollback);
        if (rc == SQLITE_OK)
                rc = prepare_persistent(s, SQL_PUT, &s->put);
        if (rc == SQLITE_OK)
                rc = prepare_persistent(s, SQL_REMOVE, &s->remove);
        if (rc == SQLITE_OK)
                rc = prepare_persistent(s, SQL_UPDATE_HITS, &s->update_hits);
        if (rc != SQLITE_OK)
                return open_fail(s, rc, "prepare statements for", ret_error);

        *ret_state = TAKE_PTR(s);
        return 0;
}

static void sqlite_close(void *state) {
        sqlite_state_free(state);
}

static int sqlite_load(void *state, DriverLoadFunc f, void *userdata) {
        _cleanup_(sqlite3_finalize_voidp) sqlite3_stmt *st = NULL;
        SqliteState *s = state;
        int rc, r;

        assert(s);
        assert(f);

        rc = sqlite3_prepare_v2(s->db, SQL_LOAD, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return errno_from_sqlite(s->db, rc);

        for (;;) {
                const char *id;

                rc = sqlite3_step(st);
                if (rc == SQLITE_DONE)
                        return 0;
                if (rc != SQLITE_ROW)
                        return errno_from_sqlite(s->db, rc) ?: -EIO;

                /* The id becomes a file name in the store; a row that could not name one of our files
                 * (hand-edited, or from a Glance that accepted anything) is not ours to interpret. */
                id = column_text(st, 0);
                if (!id || !image_id_is_valid(id))
                        continue;

                /* Borrowed from the statement: valid until the next step, which is all f may assume. */
                CacheEntry e = {
                        .id = (char *) id,
                        .last_accessed = column_usec(st, 1),
                        .last_modified = column_usec(st, 2),
                        .size = column_u64(st, 3),
                        .hits = column_u64(st, 4),
                        .checksum = (char *) column_text(st, 5),
                };

                r = f(&e, userdata);
                if (r < 0)
                        return r;
        }
}

static int sqlite_put(void *state, const CacheEntry *entries, size_t n) {
        SqliteState *s = state;
        int r;

        assert(s);
        assert(entries || n == 0);

        if (n == 0)
                return 0;

        for (size_t i = 0; i < n; i++) {
                if (!entries[i].id)
                        return -EINVAL;
                /* sqlite integers are signed 64 bit; no real image comes near that. */
                if (entries[i].size > INT64_MAX)
                        return -ERANGE;
        }

        r = tx_begin(s);
        if (r < 0)
                return r;

        for (size_t i = 0; i < n; i++) {
                const CacheEntry *e = entries + i;
                int rc;

                rc = bind_text(s->put, 1, e->id);
                if (rc == SQLITE_OK)
                        rc = bind_usec(s->put, 2, e->last_accessed);
                if (rc == SQLITE_OK)
                        rc = bind_usec(s->put, 3, e->last_modified);
                if (rc == SQLITE_OK)
                        rc = sqlite3_bind_int64(s->put, 4, (sqlite3_int64) e->size);
                if (rc == SQLITE_OK)
                        rc = sqlite3_bind_int64(s->put, 5,
                                                (sqlite3_int64) MIN(e->hits, (uint64_t) INT64_MAX));
                if (rc == SQLITE_OK)
                        rc = bind_text(s->put, 6, e->checksum);
                if (rc != SQLITE_OK) {
                        (void) sqlite3_clear_bindings(s->put);
                        tx_rollback(s);
                        return errno_from_sqlite(s->db, rc);
                }

                r = stmt_run(s, s->put);
                if (r < 0) {
                        tx_rollback(s);
                        return r;
                }
        }

        return tx_commit(s);
}

static int sqlite_remove(void *state, const char *const *ids, size_t n) {
        SqliteState *s = state;
        int r;

        assert(s);
        assert(ids || n == 0);

        if (n == 0)
                return 0;

        for (size_t i = 0; i < n; i++)
                if (!ids[i])
                        return -EINVAL;

        r = tx_begin(s);
        if (r < 0)
                return r;

        for (size_t i = 0; i < n; i++) {
                int rc;

                rc = bind_text(s->remove, 1, ids[i]);
                if (rc != SQLITE_OK) {
                        (void) sqlite3_clear_bindings(s->remove);
                        tx_rollback(s);
                        return errno_from_sqlite(s->db, rc);
                }

                r = stmt_run(s, s->remove);
                if (r < 0) {
                        tx_rollback(s);
                        return r;
                }
        }

        return tx_commit(s);
}

static int sqlite_update_hits(void *state, const HitUpdate *updates, size_t n) {
        SqliteState *s = state;
        int r;

        assert(s);
        assert(updates || n == 0);

        if (n == 0)
                return 0;

        for (size_t i = 0; i < n; i++)
                if (!updates[i].id)
                        return -EINVAL;

        r = tx_begin(s);
        if (r < 0)
                return r;

        /* An id without a row updates nothing: the image went away after the hit was counted. */
        for (size_t i = 0; i < n; i++) {
                const HitUpdate *u = updates + i;
                int rc;

                rc = bind_text(s->update_hits, 1, u->id);
                if (rc == SQLITE_OK)
                        rc = sqlite3_bind_int64(s->update_hits, 2,
                                                (sqlite3_int64) MIN(u->hits, (uint64_t) INT64_MAX));
                if (rc == SQLITE_OK)
                        rc = bind_usec(s->update_hits, 3, u->last_accessed);
                if (rc != SQLITE_OK) {
                        (void) sqlite3_clear_bindings(s->update_hits);
                        tx_rollback(s);
                        return errno_from_sqlite(s->db, rc);
                }

                r = stmt_run(s, s->update_hits);
                if (r < 0) {
                        tx_rollback(s);
                        return r;
                }
        }

        return tx_commit(s);
}

const DriverOps driver_sqlite_ops = {
        .name = "sqlite",
        .open = sqlite_open,
        .close = sqlite_close,
        .load = sqlite_load,
        .put = sqlite_put,
        .remove = sqlite_remove,
        .update_hits = sqlite_update_hits,
};
