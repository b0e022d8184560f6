/* SPDX-License-Identifier: MIT */

#include <arpa/inet.h>
#include <assert.h>
#include <glib.h>
#include <inttypes.h>
#include <limits.h>
#include <strings.h>

#include "parse-util.h"

#define USEC_PER_MINUTE (60ULL * USEC_PER_SEC)
#define USEC_PER_HOUR   (60ULL * USEC_PER_MINUTE)
#define USEC_PER_DAY    (24ULL * USEC_PER_HOUR)
#define USEC_PER_WEEK   (7ULL * USEC_PER_DAY)

/* Fraction digits beyond this many are read but do not count: 10^9 keeps every product in
 * scale_fraction() inside 64 bits, and nobody means a nanobyte. */
#define FRACTION_DIGITS_MAX 9

static const char *skip_space(const char *p) {
        return p + strspn(p, " \t\n\r");
}

static bool is_digit(char c) {
        return c >= '0' && c <= '9';
}

/* A run of unit letters. Bytes >= 0x80 count as letters so that "µs" (UTF-8) is one unit. */
static size_t unit_length(const char *p) {
        size_t n = 0;

        while ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= 'A' && p[n] <= 'Z') || (unsigned char) p[n] >= 0x80)
                n++;
        return n;
}

/* Whether [p, p + n) is all of s. */
static bool word_eq(const char *p, size_t n, const char *s, bool ignore_case) {
        if (strlen(s) != n)
                return false;
        return ignore_case ? strncasecmp(p, s, n) == 0 : strncmp(p, s, n) == 0;
}

/* Reads "digits[.digits]" at *p: the integral part, and the fraction as numerator over a power of ten
 * (den == 1 when there is no fraction). Advances *p past the number on success. We do this by hand
 * rather than with strtod(): doubles lose bytes above 2^53, and strtod() also takes signs, hex,
 * "inf", "nan" and the locale's decimal point. */
static int parse_decimal(const char **p, uint64_t *ret_int, uint64_t *ret_frac, uint64_t *ret_den) {
        const char *s = *p;
        uint64_t v = 0, frac = 0, den = 1;

        if (!is_digit(*s))
                return -EINVAL;

        for (; is_digit(*s); s++) {
                unsigned d = (unsigned) (*s - '0');

                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }

        if (*s == '.') {
                unsigned ndigits = 0;

                s++;
                if (!is_digit(*s))
                        return -EINVAL;

                for (; is_digit(*s); s++, ndigits++)
                        if (ndigits < FRACTION_DIGITS_MAX) {
                                frac = frac * 10 + (unsigned) (*s - '0');
                                den *= 10;
                        }
        }

        *p = s;
        *ret_int = v;
        *ret_frac = frac;
        *ret_den = den;
        return 0;
}

/* (v + frac/den) * mult, rounded down, or -ERANGE. frac * (mult % den) stays below 10^18 because both
 * factors are below den <= 10^9. */
static int scale_decimal(uint64_t v, uint64_t frac, uint64_t den, uint64_t mult, uint64_t *ret) {
        uint64_t whole, part;

        assert(mult > 0);
        assert(den > 0 && frac < den);

        if (v > UINT64_MAX / mult)
                return -ERANGE;
        whole = v * mult;

        part = frac * (mult / den) + frac * (mult % den) / den;
        if (whole > UINT64_MAX - part)
                return -ERANGE;

        *ret = whole + part;
        return 0;
}

int parse_boolean(const char *s, bool *ret) {
        static const char *const yes[] = { "1", "yes", "true", "on" };
        static const char *const no[] = { "0", "no", "false", "off" };

        assert(ret);

        if (!s)
                return -EINVAL;

        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }

        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }

        return -EINVAL;
}

static const struct {
        const char *suffix;
        uint64_t factor;
} size_units[] = {
        { "",    1ULL       },
        { "B",   1ULL       },
        { "K",   1ULL << 10 },
        { "KB",  1ULL << 10 },
        { "KiB", 1ULL << 10 },
        { "M",   1ULL << 20 },
        { "MB",  1ULL << 20 },
        { "MiB", 1ULL << 20 },
        { "G",   1ULL << 30 },
        { "GB",  1ULL << 30 },
        { "GiB", 1ULL << 30 },
        { "T",   1ULL << 40 },
        { "TB",  1ULL << 40 },
        { "TiB", 1ULL << 40 },
        { "P",   1ULL << 50 },
        { "PB",  1ULL << 50 },
        { "PiB", 1ULL << 50 },
        { "E",   1ULL << 60 },
        { "EB",  1ULL << 60 },
        { "EiB", 1ULL << 60 },
};

int parse_size(const char *s, uint64_t *ret) {
        uint64_t v, frac, den, factor = 0, bytes;
        const char *p;
        size_t n;
        int r;

        assert(ret);

        if (!s)
                return -EINVAL;

        p = skip_space(s);
        r = parse_decimal(&p, &v, &frac, &den);
        if (r < 0)
                return r;

        p = skip_space(p);
        n = unit_length(p);
        for (size_t i = 0; i < ELEMENTSOF(size_units); i++)
                if (word_eq(p, n, size_units[i].suffix, /* ignore_case= */ true)) {
                        factor = size_units[i].factor;
                        break;
                }
        if (factor == 0)
                return -EINVAL;

        /* "1.5" or "1.5B" is almost certainly a forgotten unit, not a wish for one and a half bytes. */
        if (factor == 1 && den > 1)
                return -EINVAL;

        p = skip_space(p + n);
        if (*p)
                return -EINVAL;

        r = scale_decimal(v, frac, den, factor, &bytes);
        if (r < 0)
                return r;

        *ret = bytes;
        return 0;
}

int parse_size_or_percent(const char *s, uint64_t *ret_bytes, uint64_t *ret_permille) {
        uint64_t v, frac, den, permille, bytes;
        const char *p;
        size_t n;
        int r;

        if (!s)
                return -EINVAL;

        /* Only a trailing '%' makes it a percentage; everything else is up to parse_size(). */
        p = skip_space(s);
        n = strlen(p);
        while (n > 0 && strchr(" \t\n\r", p[n - 1]))
                n--;

        if (n == 0 || p[n - 1] != '%') {
                r = parse_size(s, &bytes);
                if (r < 0)
                        return r;

                if (ret_bytes)
                        *ret_bytes = bytes;
                if (ret_permille)
                        *ret_permille = UINT64_MAX;
                return 0;
        }

        r = parse_decimal(&p, &v, &frac, &den);
        if (r < 0)
                return r;
        if (*p != '%')  /* no space between number and '%', and nothing else */
                return -EINVAL;
        p = skip_space(p + 1);
        if (*p)
                return -EINVAL;

        if (v > 100)
                return -ERANGE;

        /* Per-mille keeps one decimal of the percentage; finer fractions are dropped. */
        permille = v * 10 + frac * 10 / den;
        if (permille > 1000)
                return -ERANGE;

        if (ret_bytes)
                *ret_bytes = UINT64_MAX;
        if (ret_permille)
                *ret_permille = permille;
        return 0;
}

static const struct {
        const char *suffix;
        usec_t usec;
} time_units[] = {
        { "us",      1ULL            },
        { "usec",    1ULL            },
        { "µs",      1ULL            },
        { "ms",      USEC_PER_MSEC   },
        { "msec",    USEC_PER_MSEC   },
        { "s",       USEC_PER_SEC    },
        { "sec",     USEC_PER_SEC    },
        { "second",  USEC_PER_SEC    },
        { "seconds", USEC_PER_SEC    },
        { "m",       USEC_PER_MINUTE },
        { "min",     USEC_PER_MINUTE },
        { "minute",  USEC_PER_MINUTE },
        { "minutes", USEC_PER_MINUTE },
        { "h",       USEC_PER_HOUR   },
        { "hr",      USEC_PER_HOUR   },
        { "hour",    USEC_PER_HOUR   },
        { "hours",   USEC_PER_HOUR   },
        { "d",       USEC_PER_DAY    },
        { "day",     USEC_PER_DAY    },
        { "days",    USEC_PER_DAY    },
        { "w",       USEC_PER_WEEK   },
        { "week",    USEC_PER_WEEK   },
        { "weeks",   USEC_PER_WEEK   },
};

int parse_timespan(const char *s, usec_t default_unit, usec_t *ret) {
        usec_t total = 0;
        unsigned ncomponents = 0;
        bool bare = false;
        const char *p;
        int r;

        assert(default_unit > 0);
        assert(ret);

        if (!s)
                return -EINVAL;

        p = skip_space(s);
        if (strncmp(p, "infinity", strlen("infinity")) == 0 && *skip_space(p + strlen("infinity")) == 0) {
                *ret = USEC_INFINITY;
                return 0;
        }

        for (;;) {
                uint64_t v, frac, den;
                usec_t unit = 0, k;
                size_t n;

                p = skip_space(p);
                if (!*p)
                        break;

                r = parse_decimal(&p, &v, &frac, &den);
                if (r < 0)
                        return r;

                p = skip_space(p);
                n = unit_length(p);
                if (n == 0) {
                        unit = default_unit;
                        bare = true;
                } else {
                        /* Case matters, as in systemd: "M" would be months there. */
                        for (size_t i = 0; i < ELEMENTSOF(time_units); i++)
                                if (word_eq(p, n, time_units[i].suffix, /* ignore_case= */ false)) {
                                        unit = time_units[i].usec;
                                        break;
                                }
                        if (unit == 0)
                                return -EINVAL;
                        p += n;
                }

                r = scale_decimal(v, frac, den, unit, &k);
                if (r < 0)
                        return r;
                if (total > UINT64_MAX - k)
                        return -ERANGE;
                total += k;
                ncomponents++;
        }

        if (ncomponents == 0)
                return -EINVAL;

        /* A unit-less number is only unambiguous on its own: "1h 30" could mean minutes or seconds. */
        if (bare && ncomponents > 1)
                return -EINVAL;

        /* USEC_INFINITY is spelled "infinity"; a sum that reaches it is an overflow, not a wish. */
        if (total == USEC_INFINITY)
                return -ERANGE;

        *ret = total;
        return 0;
}

int parse_unsigned(const char *s, unsigned min, unsigned max, unsigned *ret) {
        uint64_t v = 0;
        const char *p;

        assert(min <= max);
        assert(ret);

        if (!s)
                return -EINVAL;

        p = skip_space(s);
        if (!is_digit(*p))
                return -EINVAL;  /* also rejects signs: strtoul() would happily wrap "-1" */

        for (; is_digit(*p); p++) {
                v = v * 10 + (unsigned) (*p - '0');
                if (v > UINT_MAX)
                        return -ERANGE;
        }

        p = skip_space(p);
        if (*p)
                return -EINVAL;

        if (v < min || v > max)
                return -ERANGE;

        *ret = (unsigned) v;
        return 0;
}

char *format_size(char *buf, size_t n, uint64_t bytes) {
        static const char suffixes[] = "KMGTPE";
        uint64_t factor = 1024;
        size_t i;

        assert(buf);
        assert(n > 0);

        if (bytes < 1024) {
                (void) snprintf(buf, n, "%" PRIu64 "B", bytes);
                return buf;
        }

        /* Pick the largest unit the value reaches. */
        for (i = 0; i + 1 < strlen(suffixes) && bytes / factor >= 1024; i++)
                factor <<= 10;

        /* One decimal, rounded down so that we never claim more than there is. The remainder is below
         * 2^60, so times ten still fits. */
        uint64_t whole = bytes / factor;
        unsigned tenth = (unsigned) ((bytes % factor) * 10 / factor);

        if (tenth == 0)
                (void) snprintf(buf, n, "%" PRIu64 "%c", whole, suffixes[i]);
        else
                (void) snprintf(buf, n, "%" PRIu64 ".%u%c", whole, tenth, suffixes[i]);
        return buf;
}

char *format_timespan(char *buf, size_t n, usec_t t) {
        static const struct {
                const char *suffix;
                usec_t usec;
        } units[] = {
                { "w",   USEC_PER_WEEK   },
                { "d",   USEC_PER_DAY    },
                { "h",   USEC_PER_HOUR   },
                { "min", USEC_PER_MINUTE },
                { "s",   USEC_PER_SEC    },
                { "ms",  USEC_PER_MSEC   },
                { "us",  1ULL            },
        };
        size_t used = 0;

        assert(buf);
        assert(n > 0);

        if (t == USEC_INFINITY) {
                (void) snprintf(buf, n, "infinity");
                return buf;
        }

        if (t == 0) {
                (void) snprintf(buf, n, "0");
                return buf;
        }

        /* Every non-zero component, largest first, so the result reads back through parse_timespan().
         * "us" rather than "µs" keeps the output ASCII for logs and the bus. */
        buf[0] = 0;
        for (size_t i = 0; i < ELEMENTSOF(units) && t > 0; i++) {
                usec_t k = t / units[i].usec;
                int m;

                if (k == 0)
                        continue;
                t -= k * units[i].usec;

                m = snprintf(buf + used, n - used, "%s%" PRIu64 "%s",
                             used > 0 ? " " : "", k, units[i].suffix);
                if (m < 0 || (size_t) m >= n - used) {
                        /* Too small a buffer: drop the partial component rather than show "1h 3". */
                        buf[used] = 0;
                        break;
                }
                used += (size_t) m;
        }

        return buf;
}

int parse_ip_prefix(const char *s, IpPrefix *ret) {
        char buf[INET6_ADDRSTRLEN + 8];
        IpPrefix p = {};
        const char *slash;
        unsigned max, len;
        size_t n;

        if (!s)
                return -EINVAL;
        slash = strchr(s, '/');
        n = slash ? (size_t) (slash - s) : strlen(s);
        if (n == 0 || n >= INET6_ADDRSTRLEN)
                return -EINVAL;
        memcpy(buf, s, n);
        buf[n] = 0;
        if (inet_pton(AF_INET, buf, p.addr) == 1)
                p.family = AF_INET;
        else if (inet_pton(AF_INET6, buf, p.addr) == 1)
                p.family = AF_INET6;
        else
                return -EINVAL;
        max = p.family == AF_INET ? 32 : 128;
        len = max;
        if (slash && parse_unsigned(slash + 1, 0, max, &len) < 0)
                return -EINVAL;
        /* "10.0.0.1/8" is a typo for one of two things: refuse it rather than guess. */
        for (unsigned bit = len; bit < max; bit++)
                if (p.addr[bit / 8] & (0x80 >> (bit % 8)))
                        return -EINVAL;
        p.prefixlen = len;
        *ret = p;
        return 0;
}

bool ip_prefix_contains(const IpPrefix *p, int family, const void *addr) {
        static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        const uint8_t *a = addr;

        if (family == AF_INET6 && p->family == AF_INET && memcmp(a, mapped, sizeof(mapped)) == 0) {
                family = AF_INET;
                a += sizeof(mapped);
        }
        if (family != p->family)
                return false;
        for (unsigned bit = 0; bit < p->prefixlen; bit++) {
                uint8_t m = 0x80 >> (bit % 8);
                if ((a[bit / 8] & m) != (p->addr[bit / 8] & m))
                        return false;
        }
        return true;
}

int parse_ip_prefix_list(const char *s, IpPrefix **ret) {
        g_auto(GStrv) words = NULL;
        IpPrefix *list = NULL;
        size_t n = 0;

        words = g_strsplit_set(s ?: "", " \t", -1);
        for (char **w = words; *w; w++) {
                IpPrefix p;

                if (isempty(*w))
                        continue;
                if (parse_ip_prefix(*w, &p) < 0) {
                        free(list);
                        return -EINVAL;
                }
                if (ret) {
                        IpPrefix *l = reallocarray(list, n + 1, sizeof(IpPrefix));
                        if (!l) {
                                free(list);
                                return -ENOMEM;
                        }
                        list = l;
                        list[n] = p;
                }
                n++;
        }
        if (ret)
                *ret = list;
        return (int) n;
}
