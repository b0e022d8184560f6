/* SPDX-License-Identifier: MIT */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <glib.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "upstream-fixture.h"
#include "util.h"

#define FIXTURE_BLOCK_SIZE (256U * 1024U)
#define FIXTURE_FIRST_PACED_BLOCK 4096U

typedef enum EntryKind {
        ENTRY_IMAGE,
        ENTRY_RECORD,   /* Glance image record: JSON about .image */
} EntryKind;

typedef struct Entry Entry;
struct Entry {
        int n_ref;      /* under fixture lock */
        EntryKind kind;

        /* ENTRY_IMAGE */
        uint8_t *data;          /* the true image (copied, or mapped from fd) */
        size_t size;
        bool mapped;
        int fd;                 /* directory files: for sendfile; -1 otherwise */
        uint8_t *body;          /* what is served: data, or a modified copy */
        size_t body_size;
        UpstreamImageOptions opts;
        unsigned gets;          /* GETs answered, for fail_first */
        char *etag;
        char *status_header;  /* opts.status_header, owned */
        pthread_mutex_t hash_lock;
        bool hashed;
        Checksum md5, sha256, sha512;

        /* ENTRY_RECORD */
        Entry *image;
        char *id;
        UpstreamGlanceOptions glance;
        char *g_status, *g_checksum, *g_algo, *g_value;

        /* Both kinds, for Glance images: who may see it (NULL: every valid token) */
        char **readers;
        unsigned hidden_status;
};

typedef struct PathStats {
        unsigned requests;
        uint64_t bytes_sent;
        GPtrArray *ranges;     /* char* */
        GPtrArray *if_ranges;  /* char* */
} PathStats;

struct UpstreamFixture {
        struct MHD_Daemon *mhd;
        uint16_t port;
        char *tls_cert, *tls_key;  /* PEM; set: HTTPS */

        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stopping;
        uint64_t release_generation;

        GHashTable *entries;   /* path → Entry* (one reference) */
        GHashTable *stats;     /* path → PathStats* */
        GPtrArray *log;        /* char*: the path of every request, in arrival order */
        char *token;
        GPtrArray *user_tokens; /* char*: the tokens of the image service's users (besides the daemon's) */
        GHashTable *token_requests; /* token → requests that carried it */
        bool (*token_valid)(const char *token, void *userdata);
        void *token_valid_userdata;
        char *directory;
        bool directory_glance;
        UpstreamImageOptions directory_opts;

        unsigned active, max_active, stalled;
};

typedef struct Request {
        UpstreamFixture *fx;
        Entry *entry;
        char *path;
        uint64_t start;        /* offset in the body */
        uint64_t length;       /* bytes this response serves */
        struct MHD_Connection *connection;
        bool counted_active;
        bool counts_bytes_at_end; /* served by MHD from a buffer or fd: count the length when complete */
        bool stalled_once;
        uint64_t began_usec;
        UpstreamImageOptions opts; /* the entry's, less the faults fail_first has used up */
} Request;

static uint64_t now_mono_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

/* ---- entries ------------------------------------------------------------------------------------ */

static void entry_unref(UpstreamFixture *fx, Entry *e);

static void entry_free(UpstreamFixture *fx, Entry *e) {
        g_strfreev(e->readers);
        if (e->kind == ENTRY_RECORD) {
                entry_unref(fx, e->image);
                free(e->id);
                free(e->g_status);
                free(e->g_checksum);
                free(e->g_algo);
                free(e->g_value);
        } else {
                if (e->body != e->data)
                        free(e->body);
                if (e->mapped)
                        munmap(e->data, e->size);
                else
                        free(e->data);
                if (e->fd >= 0)
                        close(e->fd);
                free(e->etag);
                free(e->status_header);
                pthread_mutex_destroy(&e->hash_lock);
        }
        free(e);
}

/* Called with fx->lock held, or from teardown. */
static void entry_unref(UpstreamFixture *fx, Entry *e) {
        if (e && --e->n_ref == 0)
                entry_free(fx, e);
}

static int entry_apply_options(Entry *e, const UpstreamImageOptions *o) {
        UpstreamImageOptions opts = o ? *o : (UpstreamImageOptions) {};
        char *etag = NULL, *status_header = NULL;

        if ((opts.etag && !(etag = strdup(opts.etag))) ||
            (opts.status_header && !(status_header = strdup(opts.status_header)))) {
                free(etag);
                return -ENOMEM;
        }
        if (opts.short_by > e->size)
                opts.short_by = e->size;

        uint8_t *body = e->data;
        size_t body_size = e->size - opts.short_by + opts.long_by;
        if (opts.wrong_body || opts.short_by > 0 || opts.long_by > 0) {
                body = malloc(body_size ? body_size : 1);
                if (!body) {
                        free(etag);
                        free(status_header);
                        return -ENOMEM;
                }
                memcpy(body, e->data, e->size - opts.short_by);
                for (uint64_t i = 0; i < opts.long_by; i++)
                        body[e->size + i] = (uint8_t) ('X' + i % 7);
                if (opts.wrong_body && body_size > 0)
                        body[body_size / 2] ^= 0x5a;
        }

        if (e->body != e->data)
                free(e->body);
        free(e->etag);
        free(e->status_header);
        e->body = body;
        e->body_size = body_size;
        e->etag = etag;
        e->status_header = status_header;
        e->opts = opts;
        e->opts.etag = e->etag;
        e->opts.status_header = e->status_header;
        return 0;
}

static int entry_new_image(uint8_t *data, size_t size, bool mapped, int fd, const UpstreamImageOptions *o,
                           Entry **ret) {
        Entry *e = calloc(1, sizeof(Entry));
        if (!e)
                return -ENOMEM;
        *e = (Entry) {
                .n_ref = 1,
                .kind = ENTRY_IMAGE,
                .data = data,
                .size = size,
                .mapped = mapped,
                .fd = fd,
                .body = data,
                .body_size = size,
        };
        pthread_mutex_init(&e->hash_lock, NULL);
        int r = entry_apply_options(e, o);
        if (r < 0) {
                e->data = NULL; /* the caller still owns it */
                e->mapped = false;
                e->fd = -1;
                entry_free(NULL, e);
                return r;
        }
        *ret = e;
        return 0;
}

static void entry_hash(Entry *e) {
        pthread_mutex_lock(&e->hash_lock);
        if (!e->hashed) {
                struct { ChecksumAlgo algo; Checksum *out; } v[] = {
                        { CHECKSUM_MD5, &e->md5 },
                        { CHECKSUM_SHA256, &e->sha256 },
                        { CHECKSUM_SHA512, &e->sha512 },
                };
                for (size_t i = 0; i < G_N_ELEMENTS(v); i++) {
                        Hasher *h = NULL;
                        if (hasher_new(v[i].algo, &h) < 0 ||
                            hasher_update(h, e->data, e->size) < 0 ||
                            hasher_finish(h, v[i].out) < 0)
                                g_error("upstream fixture: cannot hash an image");
                        hasher_free(h);
                }
                e->hashed = true;
        }
        pthread_mutex_unlock(&e->hash_lock);
}

static char *hex(const Checksum *c) {
        char *s = malloc(c->size * 2 + 1);
        if (!s)
                return NULL;
        for (size_t i = 0; i < c->size; i++)
                sprintf(s + 2 * i, "%02x", c->digest[i]);
        return s;
}

/* ---- stats -------------------------------------------------------------------------------------- */

static void path_stats_free(void *p) {
        PathStats *s = p;
        g_ptr_array_free(s->ranges, TRUE);
        g_ptr_array_free(s->if_ranges, TRUE);
        free(s);
}

static PathStats *stats_get(UpstreamFixture *fx, const char *path) {
        PathStats *s = g_hash_table_lookup(fx->stats, path);
        if (!s) {
                s = g_new0(PathStats, 1);
                s->ranges = g_ptr_array_new_with_free_func(g_free);
                s->if_ranges = g_ptr_array_new_with_free_func(g_free);
                g_hash_table_insert(fx->stats, g_strdup(path), s);
        }
        return s;
}

/* ---- directory mode ----------------------------------------------------------------------------- */

static bool name_ok(const char *name) {
        return *name && *name != '.' && !strchr(name, '/') && strlen(name) < 256;
}

/* Loads dir/name as an image entry, or NULL. Called without the lock (it does I/O). */
static Entry *directory_load(const char *dir, const char *name, const UpstreamImageOptions *o) {
        if (!name_ok(name))
                return NULL;

        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return NULL;
        int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        close(dfd);
        if (fd < 0)
                return NULL;

        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(fd);
                return NULL;
        }
        size_t size = (size_t) st.st_size;
        uint8_t *data = NULL;
        bool mapped = false;
        if (size > 0) {
                data = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
                if (data == MAP_FAILED) {
                        close(fd);
                        return NULL;
                }
                mapped = true;
        }

        /* A validator for If-Range unless the caller chose one ("" = none). */
        UpstreamImageOptions opts = *o;
        char etag[96];
        if (!opts.etag) {
                snprintf(etag, sizeof(etag), "\"%jx-%jx-%jx\"", (uintmax_t) st.st_ino, (uintmax_t) st.st_size,
                         (uintmax_t) st.st_mtim.tv_sec * 1000000000u + (uintmax_t) st.st_mtim.tv_nsec);
                opts.etag = etag;
        } else if (!*opts.etag)
                opts.etag = NULL;

        Entry *e;
        if (entry_new_image(data, size, mapped, fd, &opts, &e) < 0) {
                if (mapped)
                        munmap(data, size);
                close(fd);
                return NULL;
        }
        return e;
}

static Entry *record_new(Entry *image, const char *id, const UpstreamGlanceOptions *g) {
        Entry *e = calloc(1, sizeof(Entry));
        if (!e)
                return NULL;
        UpstreamGlanceOptions go = g ? *g : (UpstreamGlanceOptions) {};
        *e = (Entry) {
                .n_ref = 1,
                .kind = ENTRY_RECORD,
                .fd = -1,
                .image = image,
                .id = strdup(id),
                .glance = go,
                .g_status = go.status ? strdup(go.status) : NULL,
                .g_checksum = go.checksum ? strdup(go.checksum) : NULL,
                .g_algo = go.os_hash_algo ? strdup(go.os_hash_algo) : NULL,
                .g_value = go.os_hash_value ? strdup(go.os_hash_value) : NULL,
        };
        image->n_ref++;
        return e;
}

/* Finds (or, in directory mode, loads) the entry for path and takes a reference. With fx->lock held;
 * drops and retakes it around file I/O. */
static Entry *lookup_entry(UpstreamFixture *fx, const char *path) {
        Entry *e = g_hash_table_lookup(fx->entries, path);
        if (e) {
                e->n_ref++;
                return e;
        }
        if (!fx->directory)
                return NULL;

        /* /<name>, /images/<name>, /v2/images/<name>[/file] */
        const char *name = NULL;
        bool record = false, glance_file = false;
        char buf[512];
        if (g_str_has_prefix(path, "/v2/images/") && fx->directory_glance) {
                g_strlcpy(buf, path + strlen("/v2/images/"), sizeof(buf));
                char *slash = strchr(buf, '/');
                if (slash && streq_ptr(slash, "/file")) {
                        *slash = 0;
                        glance_file = true;
                } else if (slash)
                        return NULL;
                else
                        record = true;
                name = buf;
        } else if (g_str_has_prefix(path, "/images/"))
                name = path + strlen("/images/");
        else
                name = path + 1;
        if (!name_ok(name))
                return NULL;

        char *dir = strdup(fx->directory);
        UpstreamImageOptions o = fx->directory_opts;
        pthread_mutex_unlock(&fx->lock);
        Entry *image = dir ? directory_load(dir, name, &o) : NULL;
        free(dir);
        pthread_mutex_lock(&fx->lock);
        if (!image)
                return NULL;

        /* Another request may have loaded it meanwhile: keep the first. */
        e = g_hash_table_lookup(fx->entries, path);
        if (e) {
                entry_unref(fx, image);
                e->n_ref++;
                return e;
        }
        if (record) {
                e = record_new(image, name, NULL);
                entry_unref(fx, image);
                if (!e)
                        return NULL;
        } else
                e = image;
        (void) glance_file;
        g_hash_table_insert(fx->entries, g_strdup(path), e);
        e->n_ref++;
        return e;
}

/* ---- responses ---------------------------------------------------------------------------------- */

static enum MHD_Result respond_status(struct MHD_Connection *c, unsigned status, const char *header) {
        char text[64];
        int n = snprintf(text, sizeof(text), "status %u\n", status);
        struct MHD_Response *resp = MHD_create_response_from_buffer((size_t) n, text, MHD_RESPMEM_MUST_COPY);
        if (!resp)
                return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", "text/plain");
        const char *colon = header ? strchr(header, ':') : NULL;
        if (colon) {
                char name[128];
                (void) snprintf(name, sizeof(name), "%.*s", (int) (colon - header), header);
                MHD_add_response_header(resp, name, colon + 1 + strspn(colon + 1, " "));
        }
        enum MHD_Result ret = MHD_queue_response(c, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static void json_set_or_null(json_t *o, const char *key, const char *value) {
        json_object_set_new(o, key, value && *value ? json_string(value) : json_null());
}

static enum MHD_Result respond_record(struct MHD_Connection *c, Entry *rec) {
        if (rec->glance.record_status)
                return respond_status(c, rec->glance.record_status, NULL);

        Entry *img = rec->image;
        entry_hash(img);

        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(rec->id));
        json_object_set_new(o, "name", json_string(rec->id));
        json_object_set_new(o, "status", json_string(rec->g_status ?: "active"));
        json_object_set_new(o, "disk_format", json_string("raw"));
        json_object_set_new(o, "container_format", json_string("bare"));
        json_object_set_new(o, "visibility", json_string("public"));
        if (rec->glance.size == -1)
                json_object_set_new(o, "size", json_null());
        else
                json_object_set_new(o, "size", json_integer(rec->glance.size ? rec->glance.size : (json_int_t) img->size));

        char *md5 = hex(&img->md5);
        json_set_or_null(o, "checksum", rec->g_checksum ?: md5);
        free(md5);

        if (rec->g_algo && !*rec->g_algo) {
                json_object_set_new(o, "os_hash_algo", json_null());
                json_object_set_new(o, "os_hash_value", json_null());
        } else {
                const char *algo = rec->g_algo ?: "sha512";
                ChecksumAlgo a = checksum_algo_from_string(algo);
                char *value = a == CHECKSUM_MD5 ? hex(&img->md5) :
                              a == CHECKSUM_SHA256 ? hex(&img->sha256) : hex(&img->sha512);
                json_object_set_new(o, "os_hash_algo", json_string(algo));
                json_set_or_null(o, "os_hash_value", rec->g_value ?: value);
                free(value);
        }
        char file[600];
        snprintf(file, sizeof(file), "/v2/images/%s/file", rec->id);
        json_object_set_new(o, "file", json_string(file));

        char *text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!text)
                return MHD_NO;
        struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
                free(text);
                return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "application/json");
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
}

static void add_digest_header(struct MHD_Response *resp, Entry *e) {
        if (e->opts.digest == UPSTREAM_DIGEST_NONE)
                return;
        entry_hash(e);

        char value[300];
        gchar *b64 = NULL;
        switch (e->opts.digest) {
        case UPSTREAM_DIGEST_CONTENT_MD5_HEX: {
                char *h = hex(&e->md5);
                MHD_add_response_header(resp, "Content-MD5", h);
                free(h);
                return;
        }
        case UPSTREAM_DIGEST_CONTENT_MD5_BASE64:
                b64 = g_base64_encode(e->md5.digest, e->md5.size);
                MHD_add_response_header(resp, "Content-MD5", b64);
                break;
        case UPSTREAM_DIGEST_SHA256:
                b64 = g_base64_encode(e->sha256.digest, e->sha256.size);
                snprintf(value, sizeof(value), "sha-256=%s", b64);
                MHD_add_response_header(resp, "Digest", value);
                break;
        case UPSTREAM_DIGEST_SHA512:
                b64 = g_base64_encode(e->sha512.digest, e->sha512.size);
                snprintf(value, sizeof(value), "sha-512=%s", b64);
                MHD_add_response_header(resp, "Digest", value);
                break;
        case UPSTREAM_DIGEST_REPR_SHA256:
                b64 = g_base64_encode(e->sha256.digest, e->sha256.size);
                snprintf(value, sizeof(value), "sha-256=:%s:", b64);
                MHD_add_response_header(resp, "Repr-Digest", value);
                break;
        case UPSTREAM_DIGEST_REPR_SHA512:
                b64 = g_base64_encode(e->sha512.digest, e->sha512.size);
                snprintf(value, sizeof(value), "sha-512=:%s:", b64);
                MHD_add_response_header(resp, "Repr-Digest", value);
                break;
        default:
                break;
        }
        g_free(b64);
}

/* Waits on the fixture's condition variable until deadline (monotonic µs; 0 = forever) or until
 * stop/release. Returns false when the fixture is stopping. With fx->lock held. */
static bool wait_until(UpstreamFixture *fx, uint64_t deadline, uint64_t generation) {
        while (!fx->stopping) {
                if (deadline == 0 && fx->release_generation != generation)
                        return true;
                if (deadline == 0)
                        pthread_cond_wait(&fx->cond, &fx->lock);
                else {
                        uint64_t now = now_mono_usec();
                        if (now >= deadline)
                                return true;
                        /* pthread condvars default to CLOCK_REALTIME: convert the remaining time. */
                        struct timespec ts;
                        clock_gettime(CLOCK_REALTIME, &ts);
                        uint64_t rem = deadline - now;
                        ts.tv_sec += (time_t) (rem / 1000000ULL);
                        ts.tv_nsec += (long) (rem % 1000000ULL) * 1000L;
                        if (ts.tv_nsec >= 1000000000L) {
                                ts.tv_sec++;
                                ts.tv_nsec -= 1000000000L;
                        }
                        pthread_cond_timedwait(&fx->cond, &fx->lock, &ts);
                }
        }
        return false;
}

static ssize_t body_reader(void *cls, uint64_t pos, char *buf, size_t max) {
        Request *rq = cls;
        UpstreamFixture *fx = rq->fx;
        Entry *e = rq->entry;
        const UpstreamImageOptions *o = &rq->opts;

        if (pos >= rq->length)
                return MHD_CONTENT_READER_END_OF_STREAM;

        if (o->close_after && pos >= o->close_after)
                return MHD_CONTENT_READER_END_WITH_ERROR; /* MHD closes: FIN short of the length */

        if (o->reset_after && pos >= o->reset_after) {
                const union MHD_ConnectionInfo *ci =
                        MHD_get_connection_info(rq->connection, MHD_CONNECTION_INFO_CONNECTION_FD);
                if (ci) {
                        struct linger l = { .l_onoff = 1, .l_linger = 0 };
                        (void) setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
                }
                return MHD_CONTENT_READER_END_WITH_ERROR;
        }

        if (o->stall_after && pos >= o->stall_after && !rq->stalled_once) {
                rq->stalled_once = true;
                pthread_mutex_lock(&fx->lock);
                fx->stalled++;
                pthread_cond_broadcast(&fx->cond);
                bool go_on = wait_until(fx, 0, fx->release_generation);
                fx->stalled--;
                pthread_mutex_unlock(&fx->lock);
                if (!go_on)
                        return MHD_CONTENT_READER_END_WITH_ERROR;
        }

        uint64_t n = MIN((uint64_t) max, rq->length - pos);
        /* Stop exactly at the next knob's position, so that "after N bytes" means N. */
        uint64_t limits[] = { o->close_after, o->reset_after, rq->stalled_once ? 0 : o->stall_after };
        for (size_t i = 0; i < G_N_ELEMENTS(limits); i++)
                if (limits[i] > pos)
                        n = MIN(n, limits[i] - pos);

        if (o->rate) {
                n = MIN(n, MAX(o->rate / 20, (uint64_t) 1));
                /* MHD sends the headers with the first block: a small one, so that they go out at once
                 * as on a slow link, not a twentieth of a second in. */
                if (pos == 0)
                        n = MIN(n, (uint64_t) FIXTURE_FIRST_PACED_BLOCK);
                /* Pace: byte pos may go out no earlier than pos/rate seconds after the start. */
                uint64_t due = rq->began_usec + (pos + n) * 1000000ULL / o->rate;
                pthread_mutex_lock(&fx->lock);
                bool go_on = wait_until(fx, due, 0);
                pthread_mutex_unlock(&fx->lock);
                if (!go_on)
                        return MHD_CONTENT_READER_END_WITH_ERROR;
        }

        memcpy(buf, e->body + rq->start + pos, (size_t) n);
        pthread_mutex_lock(&fx->lock);
        stats_get(fx, rq->path)->bytes_sent += n;
        /* The last bytes: this request stops counting as active before the client can see its end
         * (and start the next one), not when MHD's completion callback gets round to it, later. */
        if (pos + n >= rq->length && rq->counted_active) {
                rq->counted_active = false;
                fx->active--;
                pthread_cond_broadcast(&fx->cond);
        }
        pthread_mutex_unlock(&fx->lock);
        return (ssize_t) n;
}

/* "bytes=N-" or "bytes=N-M". */
static bool parse_range(const char *v, uint64_t size, uint64_t *ret_start, uint64_t *ret_end) {
        if (!v || !g_str_has_prefix(v, "bytes="))
                return false;
        v += strlen("bytes=");
        char *end;
        errno = 0;
        unsigned long long a = strtoull(v, &end, 10);
        if (errno || end == v || *end != '-')
                return false;
        v = end + 1;
        unsigned long long b = size ? size - 1 : 0;
        if (*v) {
                b = strtoull(v, &end, 10);
                if (errno || *end || b < a)
                        return false;
                if (b >= size)
                        b = size ? size - 1 : 0;
        }
        *ret_start = a;
        *ret_end = b;
        return true;
}

/* The options of this request: past fail_first GETs, the image without its faults. */
static UpstreamImageOptions request_options(UpstreamFixture *fx, Entry *e, bool head) {
        UpstreamImageOptions o = e->opts;

        if (o.fail_first == 0 || head)
                return o;
        pthread_mutex_lock(&fx->lock);
        bool faulty = e->gets++ < o.fail_first;
        pthread_mutex_unlock(&fx->lock);
        if (!faulty)
                o.status = 0, o.stall_after = o.reset_after = o.close_after = 0;
        return o;
}

static enum MHD_Result respond_image(UpstreamFixture *fx, struct MHD_Connection *c, const char *path, Entry *e,
                                     bool head, Request **ret_request) {
        const UpstreamImageOptions opts = request_options(fx, e, head), *o = &opts;
        if (o->status)
                return respond_status(c, o->status, o->status_header);

        const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
        const char *if_range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-Range");
        uint64_t start = 0, end = e->body_size ? e->body_size - 1 : 0;
        bool partial = false;
        if (range && o->range != UPSTREAM_RANGE_IGNORE && parse_range(range, e->body_size, &start, &end)) {
                partial = true;
                if (o->range == UPSTREAM_RANGE_HONOUR && if_range && !streq_ptr(if_range, e->etag))
                        partial = false;
                if (!partial) {
                        start = 0;
                        end = e->body_size ? e->body_size - 1 : 0;
                }
        }
        if (partial && start >= e->body_size) {
                struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
                char cr[64];
                snprintf(cr, sizeof(cr), "bytes */%zu", e->body_size);
                MHD_add_response_header(resp, "Content-Range", cr);
                enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_RANGE_NOT_SATISFIABLE, resp);
                MHD_destroy_response(resp);
                return ret;
        }
        uint64_t length = e->body_size ? end - start + 1 : 0;

        Request *rq = calloc(1, sizeof(Request));
        if (!rq)
                return MHD_NO;
        *rq = (Request) {
                .fx = fx,
                .entry = e,
                .path = strdup(path),
                .start = start,
                .length = length,
                .connection = c,
                .began_usec = now_mono_usec(),
                .opts = opts,
        };
        pthread_mutex_lock(&fx->lock);
        e->n_ref++;
        pthread_mutex_unlock(&fx->lock);
        *ret_request = rq; /* freed in the completion callback */

        /* HEAD: MHD sends the headers of the same response (length included) and no body. */
        bool knobs = !head && (o->no_content_length || o->stall_after || o->reset_after || o->close_after || o->rate);
        rq->counts_bytes_at_end = !knobs && !head;
        struct MHD_Response *resp;
        if (knobs)
                resp = MHD_create_response_from_callback(o->no_content_length ? MHD_SIZE_UNKNOWN : length,
                                                         FIXTURE_BLOCK_SIZE, body_reader, rq, NULL);
        else if (e->fd >= 0 && e->body == e->data) {
                int fd = dup(e->fd);
                resp = fd >= 0 ? MHD_create_response_from_fd_at_offset64(length, fd, start) : NULL;
                if (!resp && fd >= 0)
                        close(fd);
        } else
                resp = MHD_create_response_from_buffer((size_t) length, e->body + start, MHD_RESPMEM_PERSISTENT);
        if (!resp)
                return MHD_NO;

        MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
        if (o->range != UPSTREAM_RANGE_IGNORE)
                MHD_add_response_header(resp, "Accept-Ranges", "bytes");
        if (e->etag)
                MHD_add_response_header(resp, "ETag", e->etag);
        add_digest_header(resp, e);
        if (partial) {
                char cr[96];
                snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%zu", start, end, e->body_size);
                MHD_add_response_header(resp, "Content-Range", cr);
        }

        pthread_mutex_lock(&fx->lock);
        fx->active++;
        fx->max_active = MAX(fx->max_active, fx->active);
        rq->counted_active = true;
        pthread_mutex_unlock(&fx->lock);

        enum MHD_Result ret = MHD_queue_response(c, partial ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
        UpstreamFixture *fx = cls;

        if (*upload_data_size > 0) {
                *upload_data_size = 0; /* ignore request bodies */
                return MHD_YES;
        }
        if (*con_cls)
                return MHD_YES; /* already answered */

        const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
        const char *if_range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-Range");
        const char *token = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Auth-Token");
        const char *authorization = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        if (!token && authorization && g_ascii_strncasecmp(authorization, "Bearer ", 7) == 0)
                token = authorization + 7;

        pthread_mutex_lock(&fx->lock);
        PathStats *s = stats_get(fx, url);
        s->requests++;
        g_ptr_array_add(fx->log, g_strdup(url));
        g_ptr_array_add(s->ranges, g_strdup(range ?: ""));
        g_ptr_array_add(s->if_ranges, g_strdup(if_range ?: ""));
        if (token)
                g_hash_table_insert(fx->token_requests, g_strdup(token),
                                    GUINT_TO_POINTER(GPOINTER_TO_UINT(g_hash_table_lookup(fx->token_requests, token)) + 1));
        bool daemon_token = fx->token && streq_ptr(token, fx->token);
        bool user_token = token && g_ptr_array_find_with_equal_func(fx->user_tokens, token, g_str_equal, NULL);
        if (fx->token_valid && token && fx->token_valid(token, fx->token_valid_userdata))
                daemon_token = true; /* a current token of the fixture's Keystone: the daemon's */
        bool token_ok = (!fx->token && fx->user_tokens->len == 0 && !fx->token_valid) || daemon_token || user_token;
        Entry *e = lookup_entry(fx, url);
        /* The daemon's token sees every image, as a service user's does in Glance. */
        bool hidden = e && e->readers && !daemon_token && !(token && g_strv_contains((const char *const *) e->readers, token));
        unsigned hidden_status = e && e->hidden_status ? e->hidden_status : MHD_HTTP_NOT_FOUND;
        pthread_mutex_unlock(&fx->lock);

        enum MHD_Result ret;
        bool head = streq_ptr(method, "HEAD");
        Request *rq = NULL;
        if (!streq_ptr(method, "GET") && !head)
                ret = respond_status(c, MHD_HTTP_METHOD_NOT_ALLOWED, NULL);
        else if (!token_ok)
                ret = respond_status(c, MHD_HTTP_UNAUTHORIZED, NULL);
        else if (!e)
                ret = respond_status(c, MHD_HTTP_NOT_FOUND, NULL);
        else if (hidden)
                ret = respond_status(c, hidden_status, NULL);
        else if (e->kind == ENTRY_RECORD)
                ret = respond_record(c, e);
        else
                ret = respond_image(fx, c, url, e, head, &rq);

        if (e) {
                pthread_mutex_lock(&fx->lock);
                entry_unref(fx, e);
                pthread_mutex_unlock(&fx->lock);
        }
        *con_cls = rq ? (void *) rq : (void *) fx; /* non-NULL: answered */
        return ret;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
        UpstreamFixture *fx = cls;
        if (!*con_cls || *con_cls == fx)
                return;

        Request *rq = *con_cls;
        pthread_mutex_lock(&fx->lock);
        if (rq->counted_active)
                fx->active--;
        if (rq->counts_bytes_at_end && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
                stats_get(fx, rq->path)->bytes_sent += rq->length;
        entry_unref(fx, rq->entry);
        pthread_cond_broadcast(&fx->cond);
        pthread_mutex_unlock(&fx->lock);
        free(rq->path);
        free(rq);
        *con_cls = NULL;
}

/* ---- API ---------------------------------------------------------------------------------------- */

static void entry_unref_void(void *p) {
        /* Only at teardown, when no request can hold the lock any more. */
        entry_unref(NULL, p);
}

static int fixture_start(uint16_t port, const char *cert_pem, const char *key_pem, UpstreamFixture **ret) {
        UpstreamFixture *fx = calloc(1, sizeof(UpstreamFixture));
        unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL;

        if (!fx)
                return -ENOMEM;
        pthread_mutex_init(&fx->lock, NULL);
        pthread_cond_init(&fx->cond, NULL);
        fx->entries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, entry_unref_void);
        fx->stats = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, path_stats_free);
        fx->log = g_ptr_array_new_with_free_func(g_free);
        fx->user_tokens = g_ptr_array_new_with_free_func(g_free);
        fx->token_requests = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);

        struct sockaddr_in sa = {
                .sin_family = AF_INET,
                .sin_port = htons(port),
                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
        if (cert_pem) {
                if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
                        upstream_fixture_free(fx);
                        return -EOPNOTSUPP;
                }
                fx->tls_cert = g_strdup(cert_pem);
                fx->tls_key = g_strdup(key_pem);
                flags |= MHD_USE_TLS;
        }
        /* Without TLS the two certificate options are skipped: MHD_OPTION_END ends the list before them. */
        fx->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, fx,
                                   MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &sa,
                                   MHD_OPTION_NOTIFY_COMPLETED, on_completed, fx,
                                   MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned) 1,
                                   cert_pem ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, fx->tls_cert,
                                   MHD_OPTION_HTTPS_MEM_KEY, fx->tls_key,
                                   MHD_OPTION_END);
        if (!fx->mhd) {
                upstream_fixture_free(fx);
                return -EADDRNOTAVAIL;
        }
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(fx->mhd, MHD_DAEMON_INFO_BIND_PORT);
        if (!info || info->port == 0) {
                upstream_fixture_free(fx);
                return -EADDRNOTAVAIL;
        }
        fx->port = info->port;
        *ret = fx;
        return 0;
}

int upstream_fixture_new(uint16_t port, UpstreamFixture **ret) {
        return fixture_start(port, NULL, NULL, ret);
}

int upstream_fixture_new_tls(uint16_t port, const char *cert_pem, const char *key_pem,
                             UpstreamFixture **ret) {
        return fixture_start(port, cert_pem, key_pem, ret);
}

void upstream_fixture_free(UpstreamFixture *fx) {
        if (!fx)
                return;
        if (fx->mhd) {
                pthread_mutex_lock(&fx->lock);
                fx->stopping = true;
                pthread_cond_broadcast(&fx->cond);
                pthread_mutex_unlock(&fx->lock);
                MHD_stop_daemon(fx->mhd);
        }
        g_hash_table_destroy(fx->entries);
        g_hash_table_destroy(fx->stats);
        g_ptr_array_free(fx->log, TRUE);
        g_ptr_array_free(fx->user_tokens, TRUE);
        g_hash_table_destroy(fx->token_requests);
        free(fx->token);
        free(fx->directory);
        free((char *) fx->directory_opts.etag);
        g_free(fx->tls_cert);
        g_free(fx->tls_key);
        pthread_cond_destroy(&fx->cond);
        pthread_mutex_destroy(&fx->lock);
        free(fx);
}

uint16_t upstream_fixture_port(const UpstreamFixture *fx) {
        return fx->port;
}

char *upstream_fixture_url(const UpstreamFixture *fx, const char *path) {
        char *s;
        const char *scheme = fx->tls_cert ? "https" : "http";
        if (asprintf(&s, "%s://127.0.0.1:%u%s", scheme, (unsigned) fx->port, path ?: "") < 0)
                return NULL;
        return s;
}

static void entries_replace(UpstreamFixture *fx, const char *path, Entry *e) {
        pthread_mutex_lock(&fx->lock);
        gpointer old_key, old;
        if (g_hash_table_steal_extended(fx->entries, path, &old_key, &old)) {
                /* Stolen, not removed: the old entry may still serve requests, under the lock. */
                g_free(old_key);
                g_hash_table_insert(fx->entries, g_strdup(path), e);
                entry_unref(fx, old);
        } else
                g_hash_table_insert(fx->entries, g_strdup(path), e);
        pthread_mutex_unlock(&fx->lock);
}

static int image_new_copy(const void *data, size_t size, const UpstreamImageOptions *o, Entry **ret) {
        uint8_t *copy = malloc(size ? size : 1);
        if (!copy)
                return -ENOMEM;
        if (size)
                memcpy(copy, data, size);
        int r = entry_new_image(copy, size, false, -1, o, ret);
        if (r < 0)
                free(copy);
        return r;
}

int upstream_fixture_add_image(UpstreamFixture *fx, const char *path, const void *data, size_t size,
                               const UpstreamImageOptions *o) {
        if (!path || path[0] != '/')
                return -EINVAL;
        Entry *e;
        int r = image_new_copy(data, size, o, &e);
        if (r < 0)
                return r;
        entries_replace(fx, path, e);
        return 0;
}

int upstream_fixture_set_options(UpstreamFixture *fx, const char *path, const UpstreamImageOptions *o) {
        /* A new entry with the same bytes: responses in flight keep the old options. */
        pthread_mutex_lock(&fx->lock);
        Entry *old = g_hash_table_lookup(fx->entries, path);
        if (!old || old->kind != ENTRY_IMAGE) {
                pthread_mutex_unlock(&fx->lock);
                return -ENOENT;
        }
        old->n_ref++;
        pthread_mutex_unlock(&fx->lock);

        Entry *e;
        int r = image_new_copy(old->data, old->size, o, &e);
        pthread_mutex_lock(&fx->lock);
        entry_unref(fx, old);
        pthread_mutex_unlock(&fx->lock);
        if (r < 0)
                return r;
        entries_replace(fx, path, e);
        return 0;
}

int upstream_fixture_add_glance_image(UpstreamFixture *fx, const char *id, const void *data, size_t size,
                                      const UpstreamImageOptions *o, const UpstreamGlanceOptions *g) {
        if (!name_ok(id))
                return -EINVAL;
        Entry *img;
        int r = image_new_copy(data, size, o, &img);
        if (r < 0)
                return r;
        Entry *rec = record_new(img, id, g);
        if (!rec) {
                entry_unref(fx, img);
                return -ENOMEM;
        }

        if (g && g->readers) {
                img->readers = g_strdupv((char **) g->readers);
                rec->readers = g_strdupv((char **) g->readers);
                img->hidden_status = rec->hidden_status = g->hidden_status;
        }

        char *file_path = g_strdup_printf("/v2/images/%s/file", id);
        char *record_path = g_strdup_printf("/v2/images/%s", id);
        entries_replace(fx, file_path, img);
        entries_replace(fx, record_path, rec);
        g_free(file_path);
        g_free(record_path);
        return 0;
}

int upstream_fixture_serve_directory(UpstreamFixture *fx, const char *dir, bool glance, const UpstreamImageOptions *o) {
        char *d = strdup(dir);
        char *etag = o && o->etag ? strdup(o->etag) : NULL;
        if (!d || (o && o->etag && !etag)) {
                free(d);
                free(etag);
                return -ENOMEM;
        }
        pthread_mutex_lock(&fx->lock);
        free(fx->directory);
        free((char *) fx->directory_opts.etag);
        fx->directory = d;
        fx->directory_glance = glance;
        fx->directory_opts = o ? *o : (UpstreamImageOptions) {};
        fx->directory_opts.etag = etag;
        pthread_mutex_unlock(&fx->lock);
        return 0;
}

void upstream_fixture_add_user_token(UpstreamFixture *fx, const char *token) {
        pthread_mutex_lock(&fx->lock);
        g_ptr_array_add(fx->user_tokens, g_strdup(token));
        pthread_mutex_unlock(&fx->lock);
}

unsigned upstream_fixture_token_requests(UpstreamFixture *fx, const char *token) {
        pthread_mutex_lock(&fx->lock);
        unsigned n = GPOINTER_TO_UINT(g_hash_table_lookup(fx->token_requests, token));
        pthread_mutex_unlock(&fx->lock);
        return n;
}

void upstream_fixture_revoke_user_token(UpstreamFixture *fx, const char *token) {
        guint i;
        pthread_mutex_lock(&fx->lock);
        if (g_ptr_array_find_with_equal_func(fx->user_tokens, token, g_str_equal, &i))
                g_ptr_array_remove_index(fx->user_tokens, i);
        pthread_mutex_unlock(&fx->lock);
}

void upstream_fixture_set_token_validator(UpstreamFixture *fx, bool (*valid)(const char *token, void *userdata),
                                          void *userdata) {
        pthread_mutex_lock(&fx->lock);
        fx->token_valid = valid;
        fx->token_valid_userdata = userdata;
        pthread_mutex_unlock(&fx->lock);
}

int upstream_fixture_set_token(UpstreamFixture *fx, const char *token) {
        char *t = token ? strdup(token) : NULL;
        if (token && !t)
                return -ENOMEM;
        pthread_mutex_lock(&fx->lock);
        free(fx->token);
        fx->token = t;
        pthread_mutex_unlock(&fx->lock);
        return 0;
}

void upstream_fixture_release(UpstreamFixture *fx) {
        pthread_mutex_lock(&fx->lock);
        fx->release_generation++;
        pthread_cond_broadcast(&fx->cond);
        pthread_mutex_unlock(&fx->lock);
}

unsigned upstream_fixture_requests(UpstreamFixture *fx, const char *path) {
        pthread_mutex_lock(&fx->lock);
        PathStats *s = g_hash_table_lookup(fx->stats, path);
        unsigned n = s ? s->requests : 0;
        pthread_mutex_unlock(&fx->lock);
        return n;
}

static char **strv_from(GPtrArray *a) {
        char **v = calloc((a ? a->len : 0) + 1, sizeof(char *));
        for (unsigned i = 0; v && a && i < a->len; i++)
                v[i] = strdup(a->pdata[i]);
        return v;
}

char **upstream_fixture_ranges(UpstreamFixture *fx, const char *path) {
        pthread_mutex_lock(&fx->lock);
        PathStats *s = g_hash_table_lookup(fx->stats, path);
        char **v = strv_from(s ? s->ranges : NULL);
        pthread_mutex_unlock(&fx->lock);
        return v;
}

char **upstream_fixture_if_ranges(UpstreamFixture *fx, const char *path) {
        pthread_mutex_lock(&fx->lock);
        PathStats *s = g_hash_table_lookup(fx->stats, path);
        char **v = strv_from(s ? s->if_ranges : NULL);
        pthread_mutex_unlock(&fx->lock);
        return v;
}

char **upstream_fixture_request_log(UpstreamFixture *fx) {
        pthread_mutex_lock(&fx->lock);
        char **v = strv_from(fx->log);
        pthread_mutex_unlock(&fx->lock);
        return v;
}

void upstream_fixture_strv_free(char **v) {
        for (char **p = v; p && *p; p++)
                free(*p);
        free(v);
}

unsigned upstream_fixture_active(UpstreamFixture *fx) {
        pthread_mutex_lock(&fx->lock);
        unsigned n = fx->active;
        pthread_mutex_unlock(&fx->lock);
        return n;
}

bool upstream_fixture_wait_idle(UpstreamFixture *fx, unsigned timeout_ms) {
        struct timespec ts;

        /* Woken by every change of the count; pthread condvars default to CLOCK_REALTIME. */
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long) (timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&fx->lock);
        while (fx->active > 0)
                if (pthread_cond_timedwait(&fx->cond, &fx->lock, &ts) == ETIMEDOUT)
                        break;
        bool idle = fx->active == 0;
        pthread_mutex_unlock(&fx->lock);
        return idle;
}

unsigned upstream_fixture_max_active(UpstreamFixture *fx) {
        pthread_mutex_lock(&fx->lock);
        unsigned n = fx->max_active;
        pthread_mutex_unlock(&fx->lock);
        return n;
}

uint64_t upstream_fixture_bytes_sent(UpstreamFixture *fx, const char *path) {
        pthread_mutex_lock(&fx->lock);
        PathStats *s = g_hash_table_lookup(fx->stats, path);
        uint64_t n = s ? s->bytes_sent : 0;
        pthread_mutex_unlock(&fx->lock);
        return n;
}

unsigned upstream_fixture_stalled(UpstreamFixture *fx) {
        pthread_mutex_lock(&fx->lock);
        unsigned n = fx->stalled;
        pthread_mutex_unlock(&fx->lock);
        return n;
}

void upstream_fixture_reset_counters(UpstreamFixture *fx) {
        pthread_mutex_lock(&fx->lock);
        g_hash_table_remove_all(fx->stats);
        g_ptr_array_set_size(fx->log, 0);
        fx->max_active = fx->active;
        pthread_mutex_unlock(&fx->lock);
}
