/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <strings.h>

#include "checksum.h"
#include "util.h"

/* Every parser in this file reads untrusted input (upstream response headers, Glance image records,
 * D-Bus and HTTP arguments). They therefore work on explicit (pointer, length) spans, never read past
 * the terminating NUL, never allocate, and decode into fixed-size stack buffers bounded by
 * CHECKSUM_DIGEST_MAX. */

#define CHECKSUM_FD_CHUNK (1024U * 1024U)

/* Base64 text of the largest digest, padded: 4 * ceil(64 / 3). */
#define BASE64_DIGEST_MAX (((CHECKSUM_DIGEST_MAX + 2) / 3) * 4)

static const struct {
        const char *name;
        const char *alias;  /* the IANA "Hash Algorithms for HTTP Digest Fields" spelling */
        size_t size;
} algo_table[_CHECKSUM_ALGO_MAX] = {
        [CHECKSUM_MD5]    = { "md5",    NULL,      16 },
        [CHECKSUM_SHA256] = { "sha256", "sha-256", 32 },
        [CHECKSUM_SHA512] = { "sha512", "sha-512", 64 },
};

struct Hasher {
        ChecksumAlgo algo;
        EVP_MD_CTX *ctx;
        bool finished;
};

static bool algo_is_valid(ChecksumAlgo a) {
        return a >= 0 && a < _CHECKSUM_ALGO_MAX;
}

const char *checksum_algo_to_string(ChecksumAlgo a) {
        if (!algo_is_valid(a))
                return NULL;
        return algo_table[a].name;
}

static bool span_equal_ci(const char *s, size_t n, const char *literal) {
        return literal && strlen(literal) == n && strncasecmp(s, literal, n) == 0;
}

/* Like checksum_algo_from_string(), for a name that is not NUL-terminated (a span of a header). */
static ChecksumAlgo algo_from_span(const char *s, size_t n) {
        for (ChecksumAlgo a = 0; a < _CHECKSUM_ALGO_MAX; a++)
                if (span_equal_ci(s, n, algo_table[a].name) || span_equal_ci(s, n, algo_table[a].alias))
                        return a;
        return _CHECKSUM_ALGO_INVALID;
}

ChecksumAlgo checksum_algo_from_string(const char *s) {
        if (!s)
                return _CHECKSUM_ALGO_INVALID;
        return algo_from_span(s, strlen(s));
}

size_t checksum_algo_digest_size(ChecksumAlgo a) {
        if (!algo_is_valid(a))
                return 0;
        return algo_table[a].size;
}

static const EVP_MD *algo_to_md(ChecksumAlgo a) {
        switch (a) {
        case CHECKSUM_MD5:
                return EVP_md5();
        case CHECKSUM_SHA256:
                return EVP_sha256();
        case CHECKSUM_SHA512:
                return EVP_sha512();
        default:
                return NULL;
        }
}

/* Decodes exactly 2 * size hex digits of either case. Nothing else is tolerated: no separators, no
 * whitespace, no "0x". */
static int unhex_exact(const char *s, size_t n, size_t size, uint8_t *ret) {
        uint8_t buf[CHECKSUM_DIGEST_MAX];

        assert(size <= sizeof(buf));

        if (n != size * 2)
                return -EINVAL;

        for (size_t i = 0; i < size; i++) {
                int hi = unhex_char(s[2 * i]), lo = unhex_char(s[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                buf[i] = (uint8_t) ((hi << 4) | lo);
        }

        memcpy(ret, buf, size);
        return 0;
}

static bool base64_char_ok(char c) {
        return (c >= 'A' && c <= 'Z') ||
               (c >= 'a' && c <= 'z') ||
               (c >= '0' && c <= '9') ||
               c == '+' || c == '/';
}

/* Decodes standard base64 (RFC 4648 §4, not base64url) that must encode exactly size bytes.
 *
 * EVP_DecodeBlock() on its own is far too forgiving for untrusted input: it skips leading whitespace,
 * drops trailing whitespace and '-', reads '=' anywhere as a zero sextet, and always yields a multiple
 * of three bytes. So the text is checked here first (alphabet, exact length, padding only at the end)
 * and OpenSSL does the arithmetic.
 *
 * The '=' padding may be left out altogether, and non-zero bits in the last character are ignored:
 * RFC 8941 §4.2.7 asks structured-field parsers to tolerate both, and neither makes the decoded bytes
 * ambiguous. Partial padding ("…A=" where "…A==" is due) is refused. */
static int unbase64_exact(const char *s, size_t n, size_t size, uint8_t *ret) {
        char text[BASE64_DIGEST_MAX + 1];
        unsigned char out[BASE64_DIGEST_MAX / 4 * 3];
        size_t unpadded, padded;
        int k;

        assert(size > 0 && size <= CHECKSUM_DIGEST_MAX);

        unpadded = size / 3 * 4 + (size % 3 == 0 ? 0 : size % 3 + 1);
        padded = (size + 2) / 3 * 4;

        if (n != unpadded && n != padded)
                return -EINVAL;

        for (size_t i = 0; i < unpadded; i++)
                if (!base64_char_ok(s[i]))
                        return -EINVAL;
        for (size_t i = unpadded; i < n; i++)
                if (s[i] != '=')
                        return -EINVAL;

        memcpy(text, s, unpadded);
        memset(text + unpadded, '=', padded - unpadded);
        text[padded] = 0;

        k = EVP_DecodeBlock(out, (const unsigned char *) text, (int) padded);
        if (k < 0 || (size_t) k != padded / 4 * 3)
                return -EINVAL;

        memcpy(ret, out, size);
        return 0;
}

int checksum_from_string(const char *s, Checksum *ret) {
        Checksum c = {};
        const char *colon, *hex;
        size_t n;
        int r;

        if (isempty(s))
                return -EINVAL;

        colon = strchr(s, ':');
        if (colon) {
                c.algo = algo_from_span(s, (size_t) (colon - s));
                if (c.algo < 0)
                        return -EINVAL;
                hex = colon + 1;
                n = strlen(hex);
        } else {
                /* Glance's cache.db and image records hold bare md5 hex; the length names the
                 * algorithm, and the three lengths are distinct. */
                hex = s;
                n = strlen(hex);
                c.algo = _CHECKSUM_ALGO_INVALID;
                for (ChecksumAlgo a = 0; a < _CHECKSUM_ALGO_MAX; a++)
                        if (n == algo_table[a].size * 2)
                                c.algo = a;
                if (c.algo < 0)
                        return -EINVAL;
        }

        c.size = algo_table[c.algo].size;
        r = unhex_exact(hex, n, c.size, c.digest);
        if (r < 0)
                return r;

        if (ret)
                *ret = c;
        return 0;
}

static bool checksum_is_sane(const Checksum *c) {
        return c && algo_is_valid(c->algo) && c->size == algo_table[c->algo].size;
}

char *checksum_to_string(const Checksum *c) {
        static const char hexchars[] = "0123456789abcdef";
        const char *name;
        size_t l;
        char *s, *p;

        if (!checksum_is_sane(c)) {
                errno = EINVAL;
                return NULL;
        }

        name = algo_table[c->algo].name;
        l = strlen(name);

        s = malloc(l + 1 + c->size * 2 + 1);
        if (!s)
                return NULL;

        p = mempcpy(s, name, l);
        *(p++) = ':';
        for (size_t i = 0; i < c->size; i++) {
                *(p++) = hexchars[c->digest[i] >> 4];
                *(p++) = hexchars[c->digest[i] & 0xf];
        }
        *p = 0;

        return s;
}

int checksum_to_repr_digest(const Checksum *c, char *buf, size_t n) {
        static const char *const names[_CHECKSUM_ALGO_MAX] = {
                [CHECKSUM_MD5] = "md5", [CHECKSUM_SHA256] = "sha-256", [CHECKSUM_SHA512] = "sha-512",
        };
        unsigned char b64[4 * ((CHECKSUM_DIGEST_MAX + 2) / 3) + 1];

        if (!checksum_is_sane(c))
                return -EINVAL;
        (void) EVP_EncodeBlock(b64, c->digest, (int) c->size);
        if ((size_t) snprintf(buf, n, "%s=:%s:", names[c->algo], b64) >= n)
                return -ENOBUFS;
        return 0;
}

bool checksum_equal(const Checksum *a, const Checksum *b) {
        if (!a || !b)
                return a == b;
        if (!checksum_is_sane(a) || !checksum_is_sane(b))
                return false;

        /* Digests of different algorithms never compare equal, even where one happens to be a prefix of
         * the other: the caller must hash with the algorithm it compares against. */
        return a->algo == b->algo && memcmp(a->digest, b->digest, a->size) == 0;
}

static bool is_ows(char c) {
        return c == ' ' || c == '\t';
}

int checksum_from_content_md5(const char *value, Checksum *ret) {
        Checksum c = {
                .algo = CHECKSUM_MD5,
                .size = algo_table[CHECKSUM_MD5].size,
        };
        size_t n;
        int r;

        if (!value)
                return -EINVAL;

        /* A header value may carry optional whitespace around it (RFC 9110 §5.5). */
        while (is_ows(*value))
                value++;
        n = strlen(value);
        while (n > 0 && is_ows(value[n - 1]))
                n--;

        /* RFC 1864 says base64, but Glance-era servers commonly send the hex form. The two cannot be
         * confused: 32 characters of hex versus 22 or 24 of base64. */
        if (n == c.size * 2)
                r = unhex_exact(value, n, c.size, c.digest);
        else
                r = unbase64_exact(value, n, c.size, c.digest);
        if (r < 0)
                return r;

        if (ret)
                *ret = c;
        return 0;
}

/* Parsing of Digest: (RFC 3230) and Repr-Digest:/Content-Digest: (RFC 9530). Both are comma-separated
 * lists of "algorithm=value". RFC 3230 gives the value as bare base64 ("sha-256=X48E9q…="); RFC 9530
 * makes the field a structured-field dictionary (RFC 8941) whose values are byte sequences in colons
 * ("sha-256=:X48E9q…=:"), possibly followed by ";parameters". The same value may hold either form,
 * since the caller only tells us it is one of these headers.
 *
 * Members naming algorithms we do not verify (sha, unixsum, adler32, id-sha-256, …) are skipped, but
 * still must be well-formed, so that a comma inside a quoted string or an inner list does not start a
 * new member and garbage does not pass as "unknown". */

typedef enum DigestValueKind {
        DIGEST_VALUE_BARE,          /* RFC 3230 token-like value */
        DIGEST_VALUE_BYTE_SEQUENCE, /* RFC 8941 ":base64:" */
        DIGEST_VALUE_OTHER,         /* quoted string or inner list: never a digest we verify */
} DigestValueKind;

static bool is_tchar(char c) {
        /* RFC 9110 §5.6.2 token characters */
        return (c >= 'a' && c <= 'z') ||
               (c >= 'A' && c <= 'Z') ||
               (c >= '0' && c <= '9') ||
               (c != 0 && strchr("!#$%&'*+-.^_`|~", c));
}

static bool is_bare_value_char(char c) {
        /* Visible ASCII, less what delimits members, parameters, strings and lists. */
        return c > 0x20 && c < 0x7f && !strchr(",;\"()\\", c);
}

static size_t skip_ows(const char *s, size_t i) {
        while (is_ows(s[i]))
                i++;
        return i;
}

static int parse_token(const char *s, size_t *i, const char **ret_start, size_t *ret_len) {
        size_t j = *i;

        while (is_tchar(s[j]))
                j++;
        if (j == *i)
                return -EINVAL;

        *ret_start = s + *i;
        *ret_len = j - *i;
        *i = j;
        return 0;
}

static int parse_quoted_string(const char *s, size_t *i) {
        size_t j = *i;

        assert(s[j] == '"');

        for (j++;; j++) {
                char c = s[j];

                if (c == '"')
                        break;
                if (c == '\\') {
                        j++;
                        c = s[j];
                }
                /* Printable ASCII only, which also stops at the terminating NUL. */
                if (c < 0x20 || c >= 0x7f)
                        return -EINVAL;
        }

        *i = j + 1;
        return 0;
}

/* Parses one item value at s[*i]: a byte sequence, a quoted string, an inner list (when allowed) or a
 * bare value. On success returns the kind, the span of the payload (for byte sequences the text between
 * the colons) and advances *i past it. */
static int parse_item_value(
                const char *s,
                size_t *i,
                bool allow_inner_list,
                DigestValueKind *ret_kind,
                const char **ret_start,
                size_t *ret_len) {

        size_t j = *i, start;
        DigestValueKind kind;

        switch (s[j]) {

        case ':':
                start = ++j;
                while (base64_char_ok(s[j]) || s[j] == '=')
                        j++;
                if (s[j] != ':')
                        return -EINVAL;
                kind = DIGEST_VALUE_BYTE_SEQUENCE;
                *ret_start = s + start;
                *ret_len = j - start;
                j++;
                break;

        case '"': {
                int r = parse_quoted_string(s, &j);
                if (r < 0)
                        return r;
                kind = DIGEST_VALUE_OTHER;
                *ret_start = NULL;
                *ret_len = 0;
                break;
        }

        case '(':
                if (!allow_inner_list)
                        return -EINVAL;
                /* RFC 8941 inner lists do not nest; strings inside may hold ')' or ','. */
                for (j++; s[j] != ')';) {
                        if (s[j] == '"') {
                                int r = parse_quoted_string(s, &j);
                                if (r < 0)
                                        return r;
                        } else if (s[j] >= 0x20 && s[j] < 0x7f && s[j] != '(')
                                j++;
                        else
                                return -EINVAL;
                }
                j++;
                kind = DIGEST_VALUE_OTHER;
                *ret_start = NULL;
                *ret_len = 0;
                break;

        default:
                start = j;
                while (is_bare_value_char(s[j]))
                        j++;
                if (j == start)
                        return -EINVAL;
                kind = DIGEST_VALUE_BARE;
                *ret_start = s + start;
                *ret_len = j - start;
                break;
        }

        *ret_kind = kind;
        *i = j;
        return 0;
}

/* RFC 8941 parameters: *( ";" *SP key [ "=" bare-item ] ). Their meaning is never needed here. */
static int skip_parameters(const char *s, size_t *i) {
        size_t j = *i;

        while (s[j] == ';') {
                DigestValueKind kind;
                const char *p;
                size_t l;
                int r;

                j++;
                while (s[j] == ' ')
                        j++;

                r = parse_token(s, &j, &p, &l);
                if (r < 0)
                        return r;

                if (s[j] == '=') {
                        j++;
                        r = parse_item_value(s, &j, /* allow_inner_list= */ false, &kind, &p, &l);
                        if (r < 0)
                                return r;
                }
        }

        *i = j;
        return 0;
}

int checksum_from_digest_header(const char *value, Checksum *ret) {
        Checksum found[_CHECKSUM_ALGO_MAX] = {};
        bool have[_CHECKSUM_ALGO_MAX] = {}, any_member = false;
        size_t i = 0;
        int r;

        if (!value)
                return -EINVAL;

        for (;;) {
                DigestValueKind kind;
                const char *key, *payload;
                size_t key_len, payload_len;
                ChecksumAlgo algo;
                Checksum c = {};

                i = skip_ows(value, i);
                if (value[i] == 0)
                        break;

                /* Empty list elements, as produced when empty header lines are joined: RFC 9110
                 * §5.6.1.2 asks recipients to ignore them. */
                if (value[i] == ',') {
                        i++;
                        continue;
                }

                r = parse_token(value, &i, &key, &key_len);
                if (r < 0)
                        return r;

                /* A bare key would be an RFC 8941 boolean; no digest field uses that, and in RFC 3230
                 * form it is plain garbage. */
                if (value[i] != '=')
                        return -EINVAL;
                i++;

                r = parse_item_value(value, &i, /* allow_inner_list= */ true, &kind, &payload, &payload_len);
                if (r < 0)
                        return r;

                /* Parameters exist only in the structured-field form. */
                if (kind != DIGEST_VALUE_BARE) {
                        r = skip_parameters(value, &i);
                        if (r < 0)
                                return r;
                }

                i = skip_ows(value, i);
                if (value[i] == ',')
                        i++;
                else if (value[i] != 0)
                        return -EINVAL;

                any_member = true;

                algo = algo_from_span(key, key_len);
                if (algo < 0)
                        continue;

                if (kind == DIGEST_VALUE_OTHER)
                        return -EINVAL;

                c.algo = algo;
                c.size = algo_table[algo].size;
                r = unbase64_exact(payload, payload_len, c.size, c.digest);
                if (r < 0)
                        return r;

                /* The same algorithm twice (e.g. after two header lines were joined) is fine if both
                 * agree; if they disagree we cannot know which to trust, so trust neither. */
                if (have[algo] && !checksum_equal(&found[algo], &c))
                        return -EINVAL;

                found[algo] = c;
                have[algo] = true;
        }

        if (!any_member)
                return -EINVAL;

        /* Strongest first. */
        static const ChecksumAlgo preference[] = { CHECKSUM_SHA512, CHECKSUM_SHA256, CHECKSUM_MD5 };
        for (size_t k = 0; k < ELEMENTSOF(preference); k++)
                if (have[preference[k]]) {
                        if (ret)
                                *ret = found[preference[k]];
                        return 0;
                }

        return -EOPNOTSUPP;
}

int hasher_new(ChecksumAlgo algo, Hasher **ret) {
        _cleanup_(hasher_freep) Hasher *h = NULL;
        const EVP_MD *md;

        assert(ret);

        md = algo_to_md(algo);
        if (!md)
                return -EINVAL;

        h = calloc(1, sizeof(Hasher));
        if (!h)
                return -ENOMEM;
        h->algo = algo;

        h->ctx = EVP_MD_CTX_new();
        if (!h->ctx)
                return -ENOMEM;

        /* This fails when a provider refuses the algorithm, e.g. md5 with only the FIPS provider. */
        if (EVP_DigestInit_ex(h->ctx, md, NULL) != 1)
                return -EOPNOTSUPP;

        *ret = TAKE_PTR(h);
        return 0;
}

Hasher *hasher_free(Hasher *h) {
        if (!h)
                return NULL;

        EVP_MD_CTX_free(h->ctx);
        free(h);
        return NULL;
}

int hasher_update(Hasher *h, const void *data, size_t size) {
        if (!h)
                return -EINVAL;
        if (h->finished)
                return -ESTALE;
        if (size == 0)
                return 0;
        if (!data)
                return -EINVAL;

        if (EVP_DigestUpdate(h->ctx, data, size) != 1)
                return -EIO;

        return 0;
}

int hasher_finish(Hasher *h, Checksum *ret) {
        Checksum c = {};
        unsigned n = 0;

        if (!h)
                return -EINVAL;
        if (h->finished)
                return -ESTALE;

        /* Whatever happens now, the context is spent. */
        h->finished = true;

        if (EVP_DigestFinal_ex(h->ctx, c.digest, &n) != 1)
                return -EIO;
        if (n != algo_table[h->algo].size)
                return -EIO;

        c.algo = h->algo;
        c.size = n;

        if (ret)
                *ret = c;
        return 0;
}

ChecksumAlgo hasher_algo(const Hasher *h) {
        if (!h)
                return _CHECKSUM_ALGO_INVALID;
        return h->algo;
}

int checksum_fd(int fd, ChecksumAlgo algo, uint64_t max_bytes, Hasher **ret_hasher) {
        _cleanup_(hasher_freep) Hasher *h = NULL;
        _cleanup_(freep) uint8_t *buf = NULL;
        uint64_t offset = 0;
        size_t chunk;
        int r;

        assert(ret_hasher);

        if (fd < 0)
                return -EBADF;

        r = hasher_new(algo, &h);
        if (r < 0)
                return r;

        /* No point in a 1 MiB buffer to rebuild the digest of a few bytes. */
        chunk = (size_t) MIN((uint64_t) CHECKSUM_FD_CHUNK, MAX(max_bytes, (uint64_t) 1));
        buf = malloc(chunk);
        if (!buf)
                return -ENOMEM;

        /* pread() rather than read(): the file position is left alone, and the fd may be shared with a
         * writer (a fill being resumed) that depends on it. */
        while (offset < max_bytes) {
                size_t want = (size_t) MIN((uint64_t) chunk, max_bytes - offset);
                ssize_t k;

                if (offset > (uint64_t) INT64_MAX - want)
                        return -EFBIG;

                k = pread(fd, buf, want, (off_t) offset);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;  /* EOF: max_bytes is an upper bound, not a promise */

                r = hasher_update(h, buf, (size_t) k);
                if (r < 0)
                        return r;

                offset += (uint64_t) k;
        }

        *ret_hasher = TAKE_PTR(h);
        return 0;
}
