/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An upstream image server for tests and demos: libmicrohttpd on 127.0.0.1 (port 0 = any free one), one
 * thread per connection, running beside whatever event loop the test drives. Every knob that a real
 * network or a broken origin can throw at a fetcher is per image:
 *
 *   UpstreamFixture *fx;
 *   assert(upstream_fixture_new(0, &fx) == 0);
 *   UpstreamImageOptions o = { .digest = UPSTREAM_DIGEST_SHA256, .etag = "\"v1\"", .close_after = 4096 };
 *   upstream_fixture_add_image(fx, "/images/a", data, size, &o);        // generic: GET /images/a
 *   upstream_fixture_add_glance_image(fx, "a", data, size, NULL, NULL); // GET /v2/images/a[/file]
 *   char *url = upstream_fixture_url(fx, "/images/{id}");               // "http://127.0.0.1:PORT/images/{id}"
 *   ... upstream_fixture_requests(fx, "/images/a"), upstream_fixture_ranges(fx, "/images/a") ...
 *   upstream_fixture_free(fx);   // releases stalled responses, stops, joins every thread
 *
 * Counters and the request log are kept under a lock, so the test thread may read them at any time.
 * Nothing here sleeps to synchronise: stalls block on a condition variable until
 * upstream_fixture_release() or upstream_fixture_free(). */

typedef struct UpstreamFixture UpstreamFixture;

typedef enum UpstreamDigest {
        UPSTREAM_DIGEST_NONE,
        UPSTREAM_DIGEST_CONTENT_MD5_HEX,     /* Content-MD5: <32 hex> (what Glance-era servers send) */
        UPSTREAM_DIGEST_CONTENT_MD5_BASE64,  /* Content-MD5: <base64> (RFC 1864) */
        UPSTREAM_DIGEST_SHA256,              /* Digest: sha-256=<base64> (RFC 3230) */
        UPSTREAM_DIGEST_SHA512,              /* Digest: sha-512=<base64> */
        UPSTREAM_DIGEST_REPR_SHA256,         /* Repr-Digest: sha-256=:<base64>: (RFC 9530) */
        UPSTREAM_DIGEST_REPR_SHA512,         /* Repr-Digest: sha-512=:<base64>: */
        _UPSTREAM_DIGEST_MAX,
} UpstreamDigest;

typedef enum UpstreamRange {
        UPSTREAM_RANGE_HONOUR,          /* Range: bytes=N- → 206, unless an If-Range differs from the ETag → 200 */
        UPSTREAM_RANGE_IGNORE,          /* always 200 with the whole body */
        UPSTREAM_RANGE_IGNORE_IF_RANGE, /* 206 for any Range, whatever If-Range says (a broken origin) */
        _UPSTREAM_RANGE_MAX,
} UpstreamRange;

/* All zero = a well-behaved origin: 200, Content-Length, no digest, no ETag, Range honoured, full speed.
 * Byte positions count bytes of the body sent in this response (not offsets in the image). */
typedef struct UpstreamImageOptions {
        unsigned status;           /* 0: serve the image; else answer with this status (404, 500, 401…) */
        const char *status_header; /* with status: one more header, "Name: value" (a redirect's Location…) */
        bool no_content_length;    /* chunked transfer encoding instead of Content-Length */
        UpstreamDigest digest;     /* digest header, computed over the true image */
        const char *etag;          /* sent as ETag (quote it yourself) and compared with If-Range; NULL: none */
        UpstreamRange range;
        uint64_t stall_after;      /* >0: after this many body bytes, send nothing more until released */
        uint64_t reset_after;      /* >0: after this many body bytes, abort the connection with a TCP RST */
        uint64_t close_after;      /* >0: after this many body bytes, close (FIN) short of the advertised length */
        bool wrong_body;           /* one byte of the served body differs from the true image */
        uint64_t short_by;         /* serve (and advertise) this many bytes less than the true image */
        uint64_t long_by;          /* serve (and advertise) this many extra bytes after the true image */
        uint64_t rate;             /* >0: at most this many body bytes per second and connection */
        unsigned fail_first;       /* >0: status, stall_after, reset_after and close_after apply to the first
                                    * this many GETs of the image only; later ones are served well */
} UpstreamImageOptions;

/* The image record of Kind=glance (GET /v2/images/<id>). Zero = an active record describing the image
 * truthfully, with checksum (md5), os_hash_algo sha512 and os_hash_value. */
typedef struct UpstreamGlanceOptions {
        const char *status;        /* NULL: "active" */
        const char *checksum;      /* NULL: the true md5 hex; "" omits the key (JSON null) */
        const char *os_hash_algo;  /* NULL: "sha512"; "" omits both os_hash keys (JSON null) */
        const char *os_hash_value; /* NULL: the true digest of os_hash_algo */
        int64_t size;              /* 0: the true size; -1: JSON null; else this value */
        unsigned record_status;    /* 0: 200 with the record; else answer the record request with it */
        const char *const *readers; /* tokens that may see the record and the data (NULL: every valid token;
                                     * the daemon's own token sees all); others get hidden_status */
        unsigned hidden_status;    /* 0: 404, as Glance answers for an image the caller may not see */
} UpstreamGlanceOptions;

/* port 0: any free port on 127.0.0.1. */
int upstream_fixture_new(uint16_t port, UpstreamFixture **ret);
/* The same over HTTPS with a certificate and its key (PEM text); -EOPNOTSUPP when libmicrohttpd was built
 * without TLS. upstream_fixture_url() then says https. */
int upstream_fixture_new_tls(uint16_t port, const char *cert_pem, const char *key_pem,
                             UpstreamFixture **ret);
/* Releases stalls, stops the server, joins its threads, frees the images. NULL is fine. */
void upstream_fixture_free(UpstreamFixture *fx);

uint16_t upstream_fixture_port(const UpstreamFixture *fx);
/* "http://127.0.0.1:<port>" (or https) + path; free() it. */
char *upstream_fixture_url(const UpstreamFixture *fx, const char *path);

/* Serves data (copied) at path (starting with '/'); replaces an image already at that path, also while
 * requests for the old one are running (they finish with the old copy). o may be NULL. */
int upstream_fixture_add_image(UpstreamFixture *fx, const char *path, const void *data, size_t size,
                               const UpstreamImageOptions *o);
/* Changes the options of the image at path (for "the next attempt behaves differently"). */
int upstream_fixture_set_options(UpstreamFixture *fx, const char *path, const UpstreamImageOptions *o);
/* Glance mode: /v2/images/<id> answers the record JSON, /v2/images/<id>/file the image with o. */
int upstream_fixture_add_glance_image(UpstreamFixture *fx, const char *id, const void *data, size_t size,
                                      const UpstreamImageOptions *o, const UpstreamGlanceOptions *g);

/* Serves the regular files of dir for paths that name no added image: /<name>, /images/<name> and,
 * when glance is true, /v2/images/<name> (the record, hashed once on first request) and
 * /v2/images/<name>/file. Files are mapped on first request and kept; they are served with sendfile when
 * no knob needs the bytes. o applies to all of them (NULL: defaults), except that o->etag NULL gives each
 * file its own ETag from inode, size and mtime ("" for none). Names are never paths: '/' and a leading
 * '.' are refused. */
int upstream_fixture_serve_directory(UpstreamFixture *fx, const char *dir, bool glance,
                                     const UpstreamImageOptions *o);

/* Every request must carry "X-Auth-Token: token" (or "Authorization: Bearer token") or is answered 401
 * (NULL: no check). Tokens added as user tokens are valid too; a revoked one is answered 401 again. */
void upstream_fixture_add_user_token(UpstreamFixture *fx, const char *token);
void upstream_fixture_revoke_user_token(UpstreamFixture *fx, const char *token);
/* Requests that carried token (as X-Auth-Token or Bearer), whatever the answer. */
unsigned upstream_fixture_token_requests(UpstreamFixture *fx, const char *token);
int upstream_fixture_set_token(UpstreamFixture *fx, const char *token);
/* A token is also good when valid(token, userdata) says so (a Keystone fixture's current tokens); it is
 * called from the server's threads. NULL: only the tokens above. */
void upstream_fixture_set_token_validator(UpstreamFixture *fx, bool (*valid)(const char *token, void *userdata),
                                          void *userdata);

/* Lets every response stalled so far continue (a later stall_after stalls again). */
void upstream_fixture_release(UpstreamFixture *fx);

/* Requests received for path (any method, any answer). */
unsigned upstream_fixture_requests(UpstreamFixture *fx, const char *path);
/* The Range header of each request for path, in arrival order ("" where there was none), as a
 * NULL-terminated array; free with upstream_fixture_strv_free(). Likewise the If-Range headers. */
char **upstream_fixture_ranges(UpstreamFixture *fx, const char *path);
char **upstream_fixture_if_ranges(UpstreamFixture *fx, const char *path);
void upstream_fixture_strv_free(char **v);
/* The path of every request, in arrival order (NULL-terminated; upstream_fixture_strv_free()). */
char **upstream_fixture_request_log(UpstreamFixture *fx);
/* Responses in progress now, and the most there ever were at once (image bodies only). */
unsigned upstream_fixture_active(UpstreamFixture *fx);
unsigned upstream_fixture_max_active(UpstreamFixture *fx);
/* Waits until no response is in progress, at most timeout_ms; whether none is. */
bool upstream_fixture_wait_idle(UpstreamFixture *fx, unsigned timeout_ms);
/* Body bytes handed to the network for path, over all requests (responses without knobs count when
 * they complete). */
uint64_t upstream_fixture_bytes_sent(UpstreamFixture *fx, const char *path);
/* Responses currently stalled (blocked after stall_after). Lets a test wait until a stall is reached. */
unsigned upstream_fixture_stalled(UpstreamFixture *fx);
/* Forgets the counters and the request log. */
void upstream_fixture_reset_counters(UpstreamFixture *fx);
