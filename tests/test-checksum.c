/* SPDX-License-Identifier: MIT */

#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checksum.h"
#include "util.h"

/* Known answers (RFC 1321, FIPS 180-2 examples), hex and base64. */
#define MD5_EMPTY_HEX    "d41d8cd98f00b204e9800998ecf8427e"
#define MD5_ABC_HEX      "900150983cd24fb0d6963f7d28e17f72"
#define MD5_ABC_B64      "kAFQmDzST7DWlj99KOF/cg=="
#define SHA256_EMPTY_HEX "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SHA256_ABC_HEX   "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA256_ABC_B64   "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
#define SHA512_EMPTY_HEX "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce" \
                         "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
#define SHA512_ABC_HEX   "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a" \
                         "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
#define SHA512_ABC_B64   "3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw=="
#define SHA1_ABC_B64     "qZk+NkcGgWq6PiVxeFDCbJzQ2J0="

static void assert_checksum_is(const Checksum *c, ChecksumAlgo algo, const char *hex) {
        _cleanup_(freep) char *s = NULL;
        g_autofree char *expected = NULL;

        g_assert_cmpint(c->algo, ==, algo);
        g_assert_cmpuint(c->size, ==, checksum_algo_digest_size(algo));

        s = checksum_to_string(c);
        g_assert_nonnull(s);
        expected = g_strdup_printf("%s:%s", checksum_algo_to_string(algo), hex);
        g_assert_cmpstr(s, ==, expected);
}

static void hash_buffer(ChecksumAlgo algo, const void *data, size_t size, Checksum *ret) {
        _cleanup_(hasher_freep) Hasher *h = NULL;

        g_assert_cmpint(hasher_new(algo, &h), ==, 0);
        g_assert_cmpint(hasher_algo(h), ==, algo);
        g_assert_cmpint(hasher_update(h, data, size), ==, 0);
        g_assert_cmpint(hasher_finish(h, ret), ==, 0);
}

/* Deterministic pseudo-random bytes, so a failure reproduces. */
static uint8_t *make_data(size_t size) {
        uint8_t *p = g_malloc(size);
        uint32_t x = 0x12345678;

        for (size_t i = 0; i < size; i++) {
                x = x * 1103515245u + 12345u;
                p[i] = (uint8_t) (x >> 24);
        }
        return p;
}

static GChecksumType algo_to_glib(ChecksumAlgo algo) {
        switch (algo) {
        case CHECKSUM_MD5:
                return G_CHECKSUM_MD5;
        case CHECKSUM_SHA256:
                return G_CHECKSUM_SHA256;
        case CHECKSUM_SHA512:
                return G_CHECKSUM_SHA512;
        default:
                g_assert_not_reached();
        }
}

static void test_algo_strings(void) {
        g_assert_cmpstr(checksum_algo_to_string(CHECKSUM_MD5), ==, "md5");
        g_assert_cmpstr(checksum_algo_to_string(CHECKSUM_SHA256), ==, "sha256");
        g_assert_cmpstr(checksum_algo_to_string(CHECKSUM_SHA512), ==, "sha512");
        g_assert_null(checksum_algo_to_string(_CHECKSUM_ALGO_MAX));
        g_assert_null(checksum_algo_to_string(_CHECKSUM_ALGO_INVALID));

        for (ChecksumAlgo a = 0; a < _CHECKSUM_ALGO_MAX; a++)
                g_assert_cmpint(checksum_algo_from_string(checksum_algo_to_string(a)), ==, a);

        g_assert_cmpint(checksum_algo_from_string("MD5"), ==, CHECKSUM_MD5);
        g_assert_cmpint(checksum_algo_from_string("SHA256"), ==, CHECKSUM_SHA256);
        g_assert_cmpint(checksum_algo_from_string("sha-256"), ==, CHECKSUM_SHA256);
        g_assert_cmpint(checksum_algo_from_string("SHA-256"), ==, CHECKSUM_SHA256);
        g_assert_cmpint(checksum_algo_from_string("Sha-512"), ==, CHECKSUM_SHA512);
        g_assert_cmpint(checksum_algo_from_string("sHa512"), ==, CHECKSUM_SHA512);

        g_assert_cmpint(checksum_algo_from_string(NULL), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_cmpint(checksum_algo_from_string(""), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_cmpint(checksum_algo_from_string("sha1"), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_cmpint(checksum_algo_from_string("sha"), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_cmpint(checksum_algo_from_string("sha-"), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_cmpint(checksum_algo_from_string("sha2560"), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_cmpint(checksum_algo_from_string("md-5"), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_cmpint(checksum_algo_from_string(" md5"), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_cmpint(checksum_algo_from_string("md5 "), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_cmpint(checksum_algo_from_string("sha_256"), ==, _CHECKSUM_ALGO_INVALID);

        g_assert_cmpuint(checksum_algo_digest_size(CHECKSUM_MD5), ==, 16);
        g_assert_cmpuint(checksum_algo_digest_size(CHECKSUM_SHA256), ==, 32);
        g_assert_cmpuint(checksum_algo_digest_size(CHECKSUM_SHA512), ==, 64);
        g_assert_cmpuint(checksum_algo_digest_size(_CHECKSUM_ALGO_MAX), ==, 0);
        g_assert_cmpuint(checksum_algo_digest_size(_CHECKSUM_ALGO_INVALID), ==, 0);
}

static void test_known_vectors(void) {
        static const struct {
                ChecksumAlgo algo;
                const char *input, *hex;
        } v[] = {
                { CHECKSUM_MD5,    "",    MD5_EMPTY_HEX    },
                { CHECKSUM_MD5,    "abc", MD5_ABC_HEX      },
                { CHECKSUM_SHA256, "",    SHA256_EMPTY_HEX },
                { CHECKSUM_SHA256, "abc", SHA256_ABC_HEX   },
                { CHECKSUM_SHA512, "",    SHA512_EMPTY_HEX },
                { CHECKSUM_SHA512, "abc", SHA512_ABC_HEX   },
        };

        for (size_t i = 0; i < ELEMENTSOF(v); i++) {
                Checksum c;

                hash_buffer(v[i].algo, v[i].input, strlen(v[i].input), &c);
                assert_checksum_is(&c, v[i].algo, v[i].hex);
        }

        /* No update at all is the empty input too, and a NULL pointer with size 0 is fine. */
        for (ChecksumAlgo a = 0; a < _CHECKSUM_ALGO_MAX; a++) {
                _cleanup_(hasher_freep) Hasher *h = NULL;
                Checksum c, d;

                g_assert_cmpint(hasher_new(a, &h), ==, 0);
                g_assert_cmpint(hasher_update(h, NULL, 0), ==, 0);
                g_assert_cmpint(hasher_finish(h, &c), ==, 0);
                hash_buffer(a, "", 0, &d);
                g_assert_true(checksum_equal(&c, &d));
        }
}

static void test_hasher_misuse(void) {
        _cleanup_(hasher_freep) Hasher *h = NULL;
        Hasher *untouched = (Hasher *) 0x1;
        Checksum c, d = { .algo = CHECKSUM_SHA256, .size = 7 };

        g_assert_cmpint(hasher_new(_CHECKSUM_ALGO_INVALID, &untouched), ==, -EINVAL);
        g_assert_cmpint(hasher_new(_CHECKSUM_ALGO_MAX, &untouched), ==, -EINVAL);
        g_assert_true(untouched == (Hasher *) 0x1);

        g_assert_cmpint(hasher_algo(NULL), ==, _CHECKSUM_ALGO_INVALID);
        g_assert_null(hasher_free(NULL));
        g_assert_cmpint(hasher_update(NULL, "x", 1), ==, -EINVAL);
        g_assert_cmpint(hasher_finish(NULL, &c), ==, -EINVAL);

        g_assert_cmpint(hasher_new(CHECKSUM_SHA256, &h), ==, 0);
        g_assert_cmpint(hasher_update(h, NULL, 1), ==, -EINVAL);
        g_assert_cmpint(hasher_update(h, "abc", 3), ==, 0);
        g_assert_cmpint(hasher_finish(h, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_SHA256, SHA256_ABC_HEX);

        /* Finished means finished; the output is not touched on failure. */
        g_assert_cmpint(hasher_update(h, "abc", 3), ==, -ESTALE);
        g_assert_cmpint(hasher_finish(h, &d), ==, -ESTALE);
        g_assert_cmpuint(d.size, ==, 7);
        g_assert_cmpint(hasher_algo(h), ==, CHECKSUM_SHA256);
}

static void test_streaming(void) {
        /* Several MiB in odd-sized pieces, crossing every internal block boundary of all three
         * algorithms, must equal one update of the whole and GLib's independent implementation. */
        static const size_t pieces[] = { 1, 7, 63, 64, 65, 127, 4093, 65537, 1000003, 3 };
        const size_t total = 5 * 1024 * 1024 + 333;
        g_autofree uint8_t *data = make_data(total);

        for (ChecksumAlgo a = 0; a < _CHECKSUM_ALGO_MAX; a++) {
                _cleanup_(hasher_freep) Hasher *h = NULL;
                _cleanup_(freep) char *s = NULL;
                g_autofree char *glib_hex = NULL, *glib_str = NULL;
                Checksum one, many;
                size_t off = 0;

                hash_buffer(a, data, total, &one);

                g_assert_cmpint(hasher_new(a, &h), ==, 0);
                for (size_t i = 0; off < total; i++) {
                        size_t n = MIN(pieces[i % ELEMENTSOF(pieces)], total - off);

                        g_assert_cmpint(hasher_update(h, data + off, n), ==, 0);
                        off += n;
                }
                g_assert_cmpint(hasher_finish(h, &many), ==, 0);
                g_assert_true(checksum_equal(&one, &many));

                glib_hex = g_compute_checksum_for_data(algo_to_glib(a), data, total);
                glib_str = g_strdup_printf("%s:%s", checksum_algo_to_string(a), glib_hex);
                s = checksum_to_string(&one);
                g_assert_cmpstr(s, ==, glib_str);
        }
}

static void test_string_round_trip(void) {
        static const char *const good[] = {
                "md5:" MD5_ABC_HEX,
                "sha256:" SHA256_ABC_HEX,
                "sha512:" SHA512_ABC_HEX,
                "md5:" MD5_EMPTY_HEX,
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                _cleanup_(freep) char *s = NULL;
                Checksum c, d;

                g_assert_cmpint(checksum_from_string(good[i], &c), ==, 0);
                s = checksum_to_string(&c);
                g_assert_cmpstr(s, ==, good[i]);
                g_assert_cmpint(checksum_from_string(s, &d), ==, 0);
                g_assert_true(checksum_equal(&c, &d));
        }

        /* Validation only. */
        g_assert_cmpint(checksum_from_string("sha256:" SHA256_ABC_HEX, NULL), ==, 0);
}

static void test_string_bare_and_case(void) {
        g_autofree char *upper = NULL, *prefixed = NULL;
        Checksum c;

        /* Bare hex: length names the algorithm (Glance stores bare md5). */
        g_assert_cmpint(checksum_from_string(MD5_ABC_HEX, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_ABC_HEX);
        g_assert_cmpint(checksum_from_string(SHA256_ABC_HEX, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_SHA256, SHA256_ABC_HEX);
        g_assert_cmpint(checksum_from_string(SHA512_ABC_HEX, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_SHA512, SHA512_ABC_HEX);

        /* Uppercase hex and algorithm names in any case or RFC spelling; output is canonical. */
        upper = g_ascii_strup(SHA512_ABC_HEX, -1);
        g_assert_cmpint(checksum_from_string(upper, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_SHA512, SHA512_ABC_HEX);

        prefixed = g_strconcat("SHA-512:", upper, NULL);
        g_assert_cmpint(checksum_from_string(prefixed, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_SHA512, SHA512_ABC_HEX);

        g_assert_cmpint(checksum_from_string("MD5:900150983CD24FB0D6963F7D28E17F72", &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_ABC_HEX);
        g_assert_cmpint(checksum_from_string("sha-256:" SHA256_ABC_HEX, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_SHA256, SHA256_ABC_HEX);
}

static void test_string_bad(void) {
        static const char *const bad[] = {
                "",
                ":",
                "sha256:",
                "md5:",
                ":" MD5_ABC_HEX,
                "sha256",
                "md5",
                /* wrong lengths */
                "900150983cd24fb0d6963f7d28e17f7",
                "900150983cd24fb0d6963f7d28e17f722",
                "md5:" SHA256_ABC_HEX,
                "sha256:" MD5_ABC_HEX,
                "sha512:" SHA256_ABC_HEX,
                "sha256:" SHA256_ABC_HEX "0",
                "a9993e364706816aba3e25717850c26c9cd0d89d",           /* bare sha1 */
                /* not hex */
                "900150983cd24fb0d6963f7d28e17f7g",
                "md5:900150983cd24fb0d6963f7d28e17f7z",
                "md5:0x0150983cd24fb0d6963f7d28e17f72",
                "md5:kAFQmDzST7DWlj99KOF/cg==",
                /* unknown or misspelled algorithms */
                "sha1:a9993e364706816aba3e25717850c26c9cd0d89d",
                "blake2b:" SHA512_ABC_HEX,
                "sha384:" SHA256_ABC_HEX,
                "sha_256:" SHA256_ABC_HEX,
                "sha256 :" SHA256_ABC_HEX,
                /* whitespace anywhere */
                " " MD5_ABC_HEX,
                MD5_ABC_HEX " ",
                MD5_ABC_HEX "\n",
                "md5: " MD5_ABC_HEX,
                " md5:" MD5_ABC_HEX,
                "md5:90015098 3cd24fb0d6963f7d28e17f72",
                "md5:9001509\t83cd24fb0d6963f7d28e17f72",
                /* extra separators */
                "md5::" MD5_ABC_HEX,
                "md5:" MD5_ABC_HEX ":",
                "md5:sha256:" SHA256_ABC_HEX,
                "md5:90:01:50:98:3c:d2:4f:b0:d6:96:3f:7d:28:e1:7f:72",
                /* non-ASCII */
                "md5:900150983cd24fb0d6963f7d28e17f\xc3\xa9",
        };
        Checksum c = { .algo = CHECKSUM_SHA512, .size = 3 };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                if (g_test_verbose())
                        g_test_message("bad checksum string: \"%s\"", bad[i]);
                g_assert_cmpint(checksum_from_string(bad[i], &c), ==, -EINVAL);
                g_assert_cmpint(checksum_from_string(bad[i], NULL), ==, -EINVAL);
        }
        g_assert_cmpint(checksum_from_string(NULL, &c), ==, -EINVAL);

        /* ret is written only on success. */
        g_assert_cmpint(c.algo, ==, CHECKSUM_SHA512);
        g_assert_cmpuint(c.size, ==, 3);
}

static void test_equal(void) {
        Checksum md5, md5b, sha256, sha256b, sha512, bogus;

        g_assert_cmpint(checksum_from_string("md5:" MD5_ABC_HEX, &md5), ==, 0);
        g_assert_cmpint(checksum_from_string(MD5_ABC_HEX, &md5b), ==, 0);
        g_assert_cmpint(checksum_from_string("sha256:" SHA256_ABC_HEX, &sha256), ==, 0);
        g_assert_cmpint(checksum_from_string("sha512:" SHA512_ABC_HEX, &sha512), ==, 0);

        g_assert_true(checksum_equal(&md5, &md5));
        g_assert_true(checksum_equal(&md5, &md5b));
        g_assert_true(checksum_equal(NULL, NULL));
        g_assert_false(checksum_equal(&md5, NULL));
        g_assert_false(checksum_equal(NULL, &md5));

        /* Different algorithms never match, not even when the bytes agree over the shorter length. */
        g_assert_false(checksum_equal(&md5, &sha256));
        g_assert_false(checksum_equal(&sha256, &sha512));
        sha256b = sha256;
        memcpy(sha256b.digest, md5.digest, md5.size);
        sha256b.algo = CHECKSUM_MD5;
        sha256b.size = md5.size;
        g_assert_true(checksum_equal(&md5, &sha256b));
        sha256b.algo = CHECKSUM_SHA256;
        sha256b.size = 32;
        g_assert_false(checksum_equal(&md5, &sha256b));

        /* One bit off. */
        md5b.digest[15] ^= 1;
        g_assert_false(checksum_equal(&md5, &md5b));

        /* Bytes past size do not matter. */
        md5b = md5;
        md5b.digest[20] ^= 0xff;
        g_assert_true(checksum_equal(&md5, &md5b));

        /* Inconsistent structures are never equal and cannot be formatted. */
        bogus = md5;
        bogus.size = 17;
        g_assert_false(checksum_equal(&bogus, &md5));
        g_assert_null(checksum_to_string(&bogus));
        bogus = md5;
        bogus.algo = _CHECKSUM_ALGO_MAX;
        g_assert_false(checksum_equal(&bogus, &bogus));
        g_assert_null(checksum_to_string(&bogus));
        g_assert_null(checksum_to_string(NULL));
}

static void test_content_md5(void) {
        Checksum c, untouched = { .algo = CHECKSUM_SHA512, .size = 5 };
        static const char *const bad[] = {
                "",
                "   ",
                "900150983cd24fb0d6963f7d28e17f7",                  /* 31 hex */
                "900150983cd24fb0d6963f7d28e17f722",                /* 33 hex */
                "900150983cd24fb0d6963f7d28e17f7g",                 /* not hex */
                "md5:" MD5_ABC_HEX,                                 /* our own format is not HTTP's */
                "9001509 83cd24fb0d6963f7d28e17f72",
                "kAFQmDzST7DWlj99KOF/cg=",                          /* partial padding */
                "kAFQmDzST7DWlj99KOF/cg===",
                "kAFQmDzST7DWlj99KOF/c===",
                "kAFQmDzST7DWlj99KOF/cg=A",
                "kAFQmDzST7DWlj99KOF_cg==",                         /* base64url */
                "kAFQmDzST7DWlj99KOF-cg==",
                "kAFQmDzST7DWlj99KOF/c",                            /* too short */
                "kAFQmDzST7DWlj99KOF/cgAA",                         /* 18 bytes */
                "kAFQmDz ST7DWlj99KOF/cg=",
                "kAF=mDzST7DWlj99KOF/cg==",                         /* padding inside */
                "==kAFQmDzST7DWlj99KOF/cg",
                "\nkAFQmDzST7DWlj99KOF/cg==",
                "kAFQmDzST7DWlj99KOF/cg==\r\n",
                SHA256_ABC_B64,
                SHA256_ABC_HEX,
                SHA1_ABC_B64,
                "kAFQmDzST7DWlj99KOF/c\xc3\xa9=",
        };

        g_assert_cmpint(checksum_from_content_md5(MD5_ABC_HEX, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_ABC_HEX);
        g_assert_cmpint(checksum_from_content_md5("900150983CD24FB0D6963F7D28E17F72", &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_ABC_HEX);
        g_assert_cmpint(checksum_from_content_md5(MD5_ABC_B64, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_ABC_HEX);
        g_assert_cmpint(checksum_from_content_md5("1B2M2Y8AsgTpgAmY7PhCfg==", &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_EMPTY_HEX);

        /* Optional whitespace around the value, unpadded base64, NULL ret for validation. */
        g_assert_cmpint(checksum_from_content_md5(" \t" MD5_ABC_B64 " ", &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_ABC_HEX);
        g_assert_cmpint(checksum_from_content_md5("  " MD5_ABC_HEX "\t", &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_ABC_HEX);
        g_assert_cmpint(checksum_from_content_md5("kAFQmDzST7DWlj99KOF/cg", &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_ABC_HEX);
        g_assert_cmpint(checksum_from_content_md5(MD5_ABC_B64, NULL), ==, 0);

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                if (g_test_verbose())
                        g_test_message("bad Content-MD5: \"%s\"", bad[i]);
                g_assert_cmpint(checksum_from_content_md5(bad[i], &untouched), ==, -EINVAL);
        }
        g_assert_cmpint(checksum_from_content_md5(NULL, &untouched), ==, -EINVAL);
        g_assert_cmpuint(untouched.size, ==, 5);
}

static void test_digest_header_good(void) {
        static const struct {
                const char *value;
                ChecksumAlgo algo;
                const char *hex;
        } good[] = {
                /* RFC 3230 */
                { "sha-256=" SHA256_ABC_B64,                               CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "SHA-256=" SHA256_ABC_B64,                               CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "SHA-512=" SHA512_ABC_B64,                               CHECKSUM_SHA512, SHA512_ABC_HEX },
                { "MD5=" MD5_ABC_B64,                                      CHECKSUM_MD5,    MD5_ABC_HEX    },
                { "md5=" MD5_ABC_B64,                                      CHECKSUM_MD5,    MD5_ABC_HEX    },
                { "sha-256=" SHA256_ABC_B64 ", SHA-512=" SHA512_ABC_B64,   CHECKSUM_SHA512, SHA512_ABC_HEX },
                { "SHA-512=" SHA512_ABC_B64 ",sha-256=" SHA256_ABC_B64,    CHECKSUM_SHA512, SHA512_ABC_HEX },
                { "MD5=" MD5_ABC_B64 ", SHA-256=" SHA256_ABC_B64,          CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "SHA-256=" SHA256_ABC_B64 " , MD5=" MD5_ABC_B64,         CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "md5=" MD5_ABC_B64 ",sha-512=" SHA512_ABC_B64 ",sha-256=" SHA256_ABC_B64,
                                                                           CHECKSUM_SHA512, SHA512_ABC_HEX },
                { "SHA=" SHA1_ABC_B64 ", UNIXsum=30637, MD5=" MD5_ABC_B64, CHECKSUM_MD5,    MD5_ABC_HEX    },
                { "  sha-256=" SHA256_ABC_B64 "  ",                        CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "\tsha-256=" SHA256_ABC_B64 "\t",                        CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "sha-256=ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0",   CHECKSUM_SHA256, SHA256_ABC_HEX },
                /* empty list elements are ignored (RFC 9110 §5.6.1.2) */
                { ", sha-256=" SHA256_ABC_B64 ",,",                        CHECKSUM_SHA256, SHA256_ABC_HEX },
                /* the same algorithm twice, agreeing */
                { "sha-256=" SHA256_ABC_B64 ", sha-256=:" SHA256_ABC_B64 ":", CHECKSUM_SHA256, SHA256_ABC_HEX },
                /* RFC 9530 */
                { "sha-256=:" SHA256_ABC_B64 ":",                          CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "sha-512=:" SHA512_ABC_B64 ":",                          CHECKSUM_SHA512, SHA512_ABC_HEX },
                { "sha-256=:" SHA256_ABC_B64 ":, sha-512=:" SHA512_ABC_B64 ":",
                                                                           CHECKSUM_SHA512, SHA512_ABC_HEX },
                { "sha=:" SHA1_ABC_B64 ":, sha-256=:" SHA256_ABC_B64 ":",  CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "md5=:" MD5_ABC_B64 ":",                                 CHECKSUM_MD5,    MD5_ABC_HEX    },
                { "sha-256=:" SHA256_ABC_B64 ":;foo=1;bar",                CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "sha-256=:" SHA256_ABC_B64 ":; q=\"x,y\";z=:AA==:",      CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "unixsum=(1 2 \"a,)b\"), sha-256=:" SHA256_ABC_B64 ":", CHECKSUM_SHA256, SHA256_ABC_HEX },
                { "foo=\"a, b=\\\"c\\\"\", sha-256=:" SHA256_ABC_B64 ":", CHECKSUM_SHA256, SHA256_ABC_HEX },
                /* mixed forms, as after joining two header lines */
                { "sha-256=" SHA256_ABC_B64 ", sha-512=:" SHA512_ABC_B64 ":", CHECKSUM_SHA512, SHA512_ABC_HEX },
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                Checksum c;

                if (g_test_verbose())
                        g_test_message("good digest header: \"%s\"", good[i].value);
                g_assert_cmpint(checksum_from_digest_header(good[i].value, &c), ==, 0);
                assert_checksum_is(&c, good[i].algo, good[i].hex);
                g_assert_cmpint(checksum_from_digest_header(good[i].value, NULL), ==, 0);
        }
}

static void test_digest_header_unsupported(void) {
        static const char *const unsupported[] = {
                "SHA=" SHA1_ABC_B64,
                "sha=:" SHA1_ABC_B64 ":",
                "UNIXsum=30637",
                "unixcksum=1234, adler32=0x12345678",
                "id-sha-256=" SHA256_ABC_B64,
                "id-sha-512=:" SHA512_ABC_B64 ":",
                "sha-384=:" SHA512_ABC_B64 ":",
                "crc32c=:AAAAAA==:",
                "foo=\"a, b\"",
                "foo=(1 2 3);a=b",
                "sha-256x=" SHA256_ABC_B64,
                "sha256-=" SHA256_ABC_B64,
        };

        for (size_t i = 0; i < ELEMENTSOF(unsupported); i++) {
                Checksum c = { .size = 9 };

                if (g_test_verbose())
                        g_test_message("unsupported digest header: \"%s\"", unsupported[i]);
                g_assert_cmpint(checksum_from_digest_header(unsupported[i], &c), ==, -EOPNOTSUPP);
                g_assert_cmpuint(c.size, ==, 9);
        }
}

static void test_digest_header_bad(void) {
        static const char *const bad[] = {
                "",
                " ",
                ",",
                " , ,",
                "sha-256",
                "sha-256=",
                "sha-256= " SHA256_ABC_B64,
                "sha-256 =" SHA256_ABC_B64,
                "=" SHA256_ABC_B64,
                "sha-256=::",
                "sha-256=:abc:",
                "sha-256=:" SHA256_ABC_B64,                                  /* unterminated */
                "sha-256=" SHA256_ABC_B64 ":",
                "sha-256=" SHA256_ABC_HEX,                                   /* hex is not base64 */
                "sha-256=:" SHA256_ABC_HEX ":",
                "md5=" MD5_ABC_HEX,
                "sha-256=" MD5_ABC_B64,                                      /* wrong length */
                "sha-512=:" SHA256_ABC_B64 ":",
                "md5=" SHA1_ABC_B64,
                "sha-256=ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0==",    /* excess padding */
                "md5=kAFQmDzST7DWlj99KOF/cg=",                              /* partial padding */
                "sha-256=ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0=",     /* base64url */
                "sha-256=ungWv48Bz+pBQUDe Xa4iI7ADYaOWF3qctBD/YfIAFa0=",    /* embedded space */
                "sha-256=:ungWv48Bz+pBQUDe Xa4iI7ADYaOWF3qctBD/YfIAFa0=:",
                "sha-256=ungWv48Bz+pB=UDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",     /* '=' inside */
                "sha-256=" SHA256_ABC_B64 ";foo=1",                          /* parameters need SF form */
                "sha-256=:" SHA256_ABC_B64 ": ;foo=1",
                "sha-256=:" SHA256_ABC_B64 ":;",
                "sha-256=:" SHA256_ABC_B64 ":;=1",
                "sha-256=:" SHA256_ABC_B64 ":;a=(1)",
                "sha-256=" SHA256_ABC_B64 " garbage",
                "sha-256=" SHA256_ABC_B64 " sha-512=" SHA512_ABC_B64,        /* missing comma */
                "sha-256=\"" SHA256_ABC_B64 "\"",                            /* a string is not bytes */
                "sha-256=(" SHA256_ABC_B64 ")",
                "hello world",
                "just garbage",
                "sha-256=" SHA256_ABC_B64 ", junk",
                "foo=\"unterminated",
                "foo=\"bad escape \\",
                "foo=(1 2",
                "foo=(1 (2) 3)",
                "foo=)",
                "foo=bar\x01",
                "foo=\"ctl\x01\"",
                "sha-256=\xc3\xa9",
                "\xc3\xa9=" SHA256_ABC_B64,
                "sha-256=" SHA256_ABC_B64 "\r\n",
                /* a malformed supported digest spoils the header, even next to a good one */
                "sha-512=" SHA512_ABC_B64 ", md5=bad",
                "sha-512=:" SHA512_ABC_B64 ":, sha-256=:" MD5_ABC_B64 ":",
                /* the same algorithm twice, disagreeing */
                "sha-256=" SHA256_ABC_B64 ", sha-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                Checksum c = { .size = 9 };

                if (g_test_verbose())
                        g_test_message("bad digest header: \"%s\"", bad[i]);
                g_assert_cmpint(checksum_from_digest_header(bad[i], &c), ==, -EINVAL);
                g_assert_cmpuint(c.size, ==, 9);
        }
        g_assert_cmpint(checksum_from_digest_header(NULL, NULL), ==, -EINVAL);
}

/* Every prefix of valid and invalid values, each in an exactly sized heap buffer so that a sanitizer
 * build catches any read past the terminator. Results must stay within the documented set. */
static void test_parsers_truncated(void) {
        static const char *const inputs[] = {
                "sha-256=:" SHA256_ABC_B64 ":;q=\"x,\\\"y\";z=:AA==:, foo=(1 \"a)\" 2), md5=" MD5_ABC_B64,
                "SHA-512=" SHA512_ABC_B64 ", UNIXsum=30637",
                "sha512:" SHA512_ABC_HEX,
                MD5_ABC_B64,
                "foo=\"\\",
        };

        for (size_t i = 0; i < ELEMENTSOF(inputs); i++) {
                size_t n = strlen(inputs[i]);

                for (size_t l = 0; l <= n; l++) {
                        g_autofree char *p = g_malloc(l + 1);
                        int r;

                        memcpy(p, inputs[i], l);
                        p[l] = 0;

                        r = checksum_from_digest_header(p, NULL);
                        g_assert_true(r == 0 || r == -EINVAL || r == -EOPNOTSUPP);
                        r = checksum_from_content_md5(p, NULL);
                        g_assert_true(r == 0 || r == -EINVAL);
                        r = checksum_from_string(p, NULL);
                        g_assert_true(r == 0 || r == -EINVAL);
                }
        }
}

/* Random bytes and random mixes of the grammar's own characters. */
static void test_parsers_random(void) {
        static const char alphabet[] = "sha-256md5=:;,\"()\\ \tAZaz09+/=\x01\x7f\xff";
        GRand *rnd = g_rand_new_with_seed(4711);

        for (unsigned iter = 0; iter < 20000; iter++) {
                size_t l = (size_t) g_rand_int_range(rnd, 0, 120);
                g_autofree char *p = g_malloc(l + 1);
                bool grammar = iter % 2 == 0;
                int r;

                for (size_t k = 0; k < l; k++) {
                        char ch;

                        if (grammar)
                                ch = alphabet[g_rand_int_range(rnd, 0, sizeof(alphabet) - 1)];
                        else
                                ch = (char) g_rand_int_range(rnd, 1, 256);
                        p[k] = ch;
                }
                p[l] = 0;

                r = checksum_from_digest_header(p, NULL);
                g_assert_true(r == 0 || r == -EINVAL || r == -EOPNOTSUPP);
                r = checksum_from_content_md5(p, NULL);
                g_assert_true(r == 0 || r == -EINVAL);
                r = checksum_from_string(p, NULL);
                g_assert_true(r == 0 || r == -EINVAL);
        }

        g_rand_free(rnd);
}

static int write_temp_file(const void *data, size_t size, char **ret_path) {
        g_autoptr(GError) error = NULL;
        char *path = NULL;
        int fd;

        fd = g_file_open_tmp("test-checksum-XXXXXX", &path, &error);
        g_assert_no_error(error);
        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(loop_write(fd, data, size), ==, 0);

        *ret_path = path;
        return fd;
}

static void test_fd(void) {
        const size_t total = 3 * 1024 * 1024 + 123;
        const size_t partial = 1024 * 1024 + 5;
        g_autofree uint8_t *data = make_data(total);
        g_autofree char *path = NULL;
        _cleanup_(closep) int fd = -EBADF;
        Hasher *untouched = (Hasher *) 0x1;

        fd = write_temp_file(data, total, &path);

        for (ChecksumAlgo a = 0; a < _CHECKSUM_ALGO_MAX; a++) {
                _cleanup_(hasher_freep) Hasher *h = NULL;
                Checksum expected, got;
                off_t pos_before = lseek(fd, 0, SEEK_CUR);

                /* All of it. */
                g_assert_cmpint(checksum_fd(fd, a, UINT64_MAX, &h), ==, 0);
                g_assert_cmpint(hasher_algo(h), ==, a);
                g_assert_cmpint(hasher_finish(h, &got), ==, 0);
                hash_buffer(a, data, total, &expected);
                g_assert_true(checksum_equal(&expected, &got));
                h = hasher_free(h);

                /* The file position is not touched (pread). */
                g_assert_cmpint(lseek(fd, 0, SEEK_CUR), ==, pos_before);

                /* A prefix, then continued by hand, as a resumed fill does. */
                g_assert_cmpint(checksum_fd(fd, a, partial, &h), ==, 0);
                g_assert_cmpint(hasher_finish(h, &got), ==, 0);
                hash_buffer(a, data, partial, &expected);
                g_assert_true(checksum_equal(&expected, &got));
                h = hasher_free(h);

                g_assert_cmpint(checksum_fd(fd, a, partial, &h), ==, 0);
                g_assert_cmpint(hasher_update(h, data + partial, total - partial), ==, 0);
                g_assert_cmpint(hasher_finish(h, &got), ==, 0);
                hash_buffer(a, data, total, &expected);
                g_assert_true(checksum_equal(&expected, &got));
                h = hasher_free(h);

                /* Exactly one chunk, a single byte, nothing. */
                g_assert_cmpint(checksum_fd(fd, a, 1024 * 1024, &h), ==, 0);
                g_assert_cmpint(hasher_finish(h, &got), ==, 0);
                hash_buffer(a, data, 1024 * 1024, &expected);
                g_assert_true(checksum_equal(&expected, &got));
                h = hasher_free(h);

                g_assert_cmpint(checksum_fd(fd, a, 1, &h), ==, 0);
                g_assert_cmpint(hasher_finish(h, &got), ==, 0);
                hash_buffer(a, data, 1, &expected);
                g_assert_true(checksum_equal(&expected, &got));
                h = hasher_free(h);

                g_assert_cmpint(checksum_fd(fd, a, 0, &h), ==, 0);
                g_assert_cmpint(hasher_finish(h, &got), ==, 0);
                hash_buffer(a, "", 0, &expected);
                g_assert_true(checksum_equal(&expected, &got));
                h = hasher_free(h);

                /* max_bytes beyond the end is an upper bound. */
                g_assert_cmpint(checksum_fd(fd, a, (uint64_t) total + 4096, &h), ==, 0);
                g_assert_cmpint(hasher_finish(h, &got), ==, 0);
                hash_buffer(a, data, total, &expected);
                g_assert_true(checksum_equal(&expected, &got));
        }

        /* Bad arguments leave the output alone. */
        g_assert_cmpint(checksum_fd(-EBADF, CHECKSUM_SHA256, UINT64_MAX, &untouched), ==, -EBADF);
        g_assert_cmpint(checksum_fd(fd, _CHECKSUM_ALGO_INVALID, UINT64_MAX, &untouched), ==, -EINVAL);
        g_assert_true(untouched == (Hasher *) 0x1);

        g_assert_cmpint(g_unlink(path), ==, 0);
}

static void test_fd_empty_and_unreadable(void) {
        g_autofree char *path = NULL;
        _cleanup_(closep) int fd = -EBADF, wronly = -EBADF;
        _cleanup_(hasher_freep) Hasher *h = NULL;
        Hasher *untouched = (Hasher *) 0x1;
        Checksum c;

        fd = write_temp_file("", 0, &path);
        g_assert_cmpint(checksum_fd(fd, CHECKSUM_MD5, UINT64_MAX, &h), ==, 0);
        g_assert_cmpint(hasher_finish(h, &c), ==, 0);
        assert_checksum_is(&c, CHECKSUM_MD5, MD5_EMPTY_HEX);

        /* A write-only fd cannot be read: the error comes back as a negative errno. */
        wronly = open(path, O_WRONLY | O_CLOEXEC);
        g_assert_cmpint(wronly, >=, 0);
        g_assert_cmpint(checksum_fd(wronly, CHECKSUM_MD5, UINT64_MAX, &untouched), ==, -EBADF);
        g_assert_true(untouched == (Hasher *) 0x1);

        g_assert_cmpint(g_unlink(path), ==, 0);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/checksum/algo-strings", test_algo_strings);
        g_test_add_func("/checksum/known-vectors", test_known_vectors);
        g_test_add_func("/checksum/hasher-misuse", test_hasher_misuse);
        g_test_add_func("/checksum/streaming", test_streaming);
        g_test_add_func("/checksum/string-round-trip", test_string_round_trip);
        g_test_add_func("/checksum/string-bare-and-case", test_string_bare_and_case);
        g_test_add_func("/checksum/string-bad", test_string_bad);
        g_test_add_func("/checksum/equal", test_equal);
        g_test_add_func("/checksum/content-md5", test_content_md5);
        g_test_add_func("/checksum/digest-header-good", test_digest_header_good);
        g_test_add_func("/checksum/digest-header-unsupported", test_digest_header_unsupported);
        g_test_add_func("/checksum/digest-header-bad", test_digest_header_bad);
        g_test_add_func("/checksum/parsers-truncated", test_parsers_truncated);
        g_test_add_func("/checksum/parsers-random", test_parsers_random);
        g_test_add_func("/checksum/fd", test_fd);
        g_test_add_func("/checksum/fd-empty-and-unreadable", test_fd_empty_and_unreadable);

        return g_test_run();
}
