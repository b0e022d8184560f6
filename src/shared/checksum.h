/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Streaming digests over libcrypto's EVP interface, and the "algo:hex" strings imgcache stores and
 * exchanges ("sha512:…", "sha256:…", "md5:…"). A bare hex string is accepted on input, its length
 * naming the algorithm, because Glance's cache.db and image records hold bare md5 hex. */

typedef enum ChecksumAlgo {
        CHECKSUM_MD5,
        CHECKSUM_SHA256,
        CHECKSUM_SHA512,
        _CHECKSUM_ALGO_MAX,
        _CHECKSUM_ALGO_INVALID = -EINVAL,
} ChecksumAlgo;

#define CHECKSUM_DIGEST_MAX 64 /* sha512 */

typedef struct Checksum {
        ChecksumAlgo algo;
        size_t size;  /* bytes used in digest */
        uint8_t digest[CHECKSUM_DIGEST_MAX];
} Checksum;

const char *checksum_algo_to_string(ChecksumAlgo a);       /* "md5", "sha256", "sha512" */
ChecksumAlgo checksum_algo_from_string(const char *s);     /* also accepts "sha-256", "sha-512", any case */
size_t checksum_algo_digest_size(ChecksumAlgo a);

/* Parses "algo:hex" or bare hex (32 → md5, 64 → sha256, 128 → sha512). -EINVAL on anything else. */
int checksum_from_string(const char *s, Checksum *ret);
/* "algo:lowercase-hex"; NULL on OOM. */
char *checksum_to_string(const Checksum *c);
/* The value of a Repr-Digest: header (RFC 9530), "sha-256=:<base64>:", into buf of n bytes
 * (CHECKSUM_REPR_DIGEST_MAX is enough). */
#define CHECKSUM_REPR_DIGEST_MAX (8 + 2 + 4 * ((CHECKSUM_DIGEST_MAX + 2) / 3) + 1)
int checksum_to_repr_digest(const Checksum *c, char *buf, size_t n);
bool checksum_equal(const Checksum *a, const Checksum *b);

/* Upstream response headers that carry an expected digest. Each returns -EINVAL for a malformed value
 * and -EOPNOTSUPP for a well-formed value naming only algorithms we do not verify. */
int checksum_from_content_md5(const char *value, Checksum *ret);  /* Content-MD5: hex or base64 */
int checksum_from_digest_header(const char *value, Checksum *ret); /* Digest: / Repr-Digest: (RFC 3230 / 9530),
                                                                    * strongest of sha-512, sha-256, md5 */

typedef struct Hasher Hasher;

int hasher_new(ChecksumAlgo algo, Hasher **ret);
Hasher *hasher_free(Hasher *h);
int hasher_update(Hasher *h, const void *data, size_t size);
/* Finishes the digest; the hasher may not be updated afterwards. */
int hasher_finish(Hasher *h, Checksum *ret);
ChecksumAlgo hasher_algo(const Hasher *h);

static inline void hasher_freep(Hasher **h) {
        hasher_free(*h);
}

/* Hashes the whole of fd from offset 0 (used by Verify and to rebuild a digest on resume up to max_bytes;
 * UINT64_MAX for all). Blocking: callers on an event loop run it in a thread. */
int checksum_fd(int fd, ChecksumAlgo algo, uint64_t max_bytes, Hasher **ret_hasher);
