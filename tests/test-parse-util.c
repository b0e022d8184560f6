/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>

#include <arpa/inet.h>
#include <glib.h>

#include "parse-util.h"

#define K ((uint64_t) 1024)
#define M (K * 1024)
#define G (M * 1024)
#define T (G * 1024)
#define P (T * 1024)
#define E (P * 1024)

#define MSEC USEC_PER_MSEC
#define SEC USEC_PER_SEC
#define MINUTE (60 * SEC)
#define HOUR (60 * MINUTE)
#define DAY (24 * HOUR)
#define WEEK (7 * DAY)

/* Sentinel: a failing parser must leave its outputs alone. */
#define UNTOUCHED ((uint64_t) 0xdeadbeefcafeULL)

static void test_parse_boolean(void) {
        static const char *const yes[] = { "1", "yes", "YES", "Yes", "true", "TRUE", "on", "On" };
        static const char *const no[] = { "0", "no", "NO", "false", "False", "off", "OFF" };
        static const char *const bad[] = {
                "", " ", "2", "-1", "y", "n", "yess", "yes ", "enable", "tru", "offf",
        };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                bool b = false;
                g_assert_cmpint(parse_boolean(yes[i], &b), ==, 0);
                g_assert_true(b);
        }

        for (size_t i = 0; i < ELEMENTSOF(no); i++) {
                bool b = true;
                g_assert_cmpint(parse_boolean(no[i], &b), ==, 0);
                g_assert_false(b);
        }

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                bool b = true;
                g_assert_cmpint(parse_boolean(bad[i], &b), ==, -EINVAL);
                g_assert_true(b);
        }

        bool b = true;
        g_assert_cmpint(parse_boolean(NULL, &b), ==, -EINVAL);
        g_assert_true(b);
}

static void test_parse_size_good(void) {
        static const struct {
                const char *s;
                uint64_t v;
        } cases[] = {
                { "0",                    0                    },
                { "4096",                 4096                 },
                { "007",                  7                    },
                { "512B",                 512                  },
                { "512K",                 512 * K              },
                { "10G",                  10 * G               },
                { "1.5T",                 T + T / 2            },
                { "1.5G",                 G + G / 2            },
                { "0.5K",                 512                  },
                { "0.25M",                M / 4                },
                { "10GiB",                10 * G               },
                { "10GB",                 10 * G               },
                { "10gb",                 10 * G               },
                { "10g",                  10 * G               },
                { "3MiB",                 3 * M                },
                { "2KB",                  2 * K                },
                { "1P",                   P                    },
                { "2PiB",                 2 * P                },
                { "1T",                   T                    },
                { "15E",                  15 * E               },
                { "10 G",                 10 * G               },
                { " 10G ",                10 * G               },
                /* fraction digits past the 9th are ignored */
                { "1.0000000001G",        G                    },
                { "0.1K",                 102                  },  /* rounded down */
                { "18446744073709551615", UINT64_MAX           },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t v = UNTOUCHED;
                g_test_message("parse_size(\"%s\")", cases[i].s);
                g_assert_cmpint(parse_size(cases[i].s, &v), ==, 0);
                g_assert_cmpuint(v, ==, cases[i].v);
        }
}

static void test_parse_size_bad(void) {
        static const char *const invalid[] = {
                "", " ", "abc", "G", "-1", "-1G", "+1", "+1G", "10X", "10G x", "10Gx", "10GG", "10 G B",
                "10%", "1.5", "1.5B", "1.", ".5G", "1..5G", "1.5.5G", "1e3", "0x10", "10KiBs", "10iB",
                "1,5G", "1 000",
        };
        static const char *const range[] = {
                "18446744073709551616", "99999999999999999999", "99999999999999999999K", "16E",
                "16384P", "17179869184G",
        };

        for (size_t i = 0; i < ELEMENTSOF(invalid); i++) {
                uint64_t v = UNTOUCHED;
                g_test_message("parse_size(\"%s\")", invalid[i]);
                g_assert_cmpint(parse_size(invalid[i], &v), ==, -EINVAL);
                g_assert_cmpuint(v, ==, UNTOUCHED);
        }

        for (size_t i = 0; i < ELEMENTSOF(range); i++) {
                uint64_t v = UNTOUCHED;
                g_test_message("parse_size(\"%s\")", range[i]);
                g_assert_cmpint(parse_size(range[i], &v), ==, -ERANGE);
                g_assert_cmpuint(v, ==, UNTOUCHED);
        }

        uint64_t v = UNTOUCHED;
        g_assert_cmpint(parse_size("16E", &v), ==, -ERANGE);
        g_assert_cmpint(parse_size("15.9999999999E", &v), ==, 0);  /* just below 2^64 */
        g_assert_cmpuint(v, <, UINT64_MAX);
        g_assert_cmpuint(v, >, 15 * E);
        v = UNTOUCHED;
        g_assert_cmpint(parse_size(NULL, &v), ==, -EINVAL);
        g_assert_cmpuint(v, ==, UNTOUCHED);
}

static void test_parse_size_or_percent(void) {
        static const struct {
                const char *s;
                uint64_t bytes;
                uint64_t permille;
        } good[] = {
                { "10%",     UINT64_MAX, 100        },
                { "12.5%",   UINT64_MAX, 125        },
                { "0%",      UINT64_MAX, 0          },
                { "0.1%",    UINT64_MAX, 1          },
                { "0.05%",   UINT64_MAX, 0          },  /* finer than per-mille is dropped */
                { "33.35%",  UINT64_MAX, 333        },
                { "100%",    UINT64_MAX, 1000       },
                { "100.0%",  UINT64_MAX, 1000       },
                { " 50% ",   UINT64_MAX, 500        },
                { "10",      10,         UINT64_MAX },
                { "10G",     10 * G,     UINT64_MAX },
                { "1.5T",    T + T / 2,  UINT64_MAX },
                { "0",       0,          UINT64_MAX },
        };
        static const char *const invalid[] = {
                "", " ", "%", "-10%", "+10%", "10 %", "10%%", "abc%", "10%x", "%10", "10G%", ".5%",
                "10.%", "ten percent", "10x",
        };
        static const char *const range[] = {
                "100.1%", "101%", "1000%", "99999999999999999999%", "16E",
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                uint64_t b = UNTOUCHED, p = UNTOUCHED;
                g_test_message("parse_size_or_percent(\"%s\")", good[i].s);
                g_assert_cmpint(parse_size_or_percent(good[i].s, &b, &p), ==, 0);
                g_assert_cmpuint(b, ==, good[i].bytes);
                g_assert_cmpuint(p, ==, good[i].permille);
        }

        for (size_t i = 0; i < ELEMENTSOF(invalid); i++) {
                uint64_t b = UNTOUCHED, p = UNTOUCHED;
                g_test_message("parse_size_or_percent(\"%s\")", invalid[i]);
                g_assert_cmpint(parse_size_or_percent(invalid[i], &b, &p), ==, -EINVAL);
                g_assert_cmpuint(b, ==, UNTOUCHED);
                g_assert_cmpuint(p, ==, UNTOUCHED);
        }

        for (size_t i = 0; i < ELEMENTSOF(range); i++) {
                uint64_t b = UNTOUCHED, p = UNTOUCHED;
                g_test_message("parse_size_or_percent(\"%s\")", range[i]);
                g_assert_cmpint(parse_size_or_percent(range[i], &b, &p), ==, -ERANGE);
                g_assert_cmpuint(b, ==, UNTOUCHED);
                g_assert_cmpuint(p, ==, UNTOUCHED);
        }

        /* "10%" and "10" are different things. */
        uint64_t b, p;
        g_assert_cmpint(parse_size_or_percent("10%", &b, &p), ==, 0);
        g_assert_cmpuint(p, ==, 100);
        g_assert_cmpint(parse_size_or_percent("10", &b, &p), ==, 0);
        g_assert_cmpuint(b, ==, 10);
        g_assert_cmpint(parse_size_or_percent(NULL, &b, &p), ==, -EINVAL);

        /* Either output may be left out. */
        g_assert_cmpint(parse_size_or_percent("10%", NULL, &p), ==, 0);
        g_assert_cmpint(parse_size_or_percent("10", &b, NULL), ==, 0);
}

static void test_parse_timespan_good(void) {
        static const struct {
                const char *s;
                usec_t unit;
                usec_t v;
        } cases[] = {
                { "60",           SEC,  60 * SEC                 },
                { "60",           MSEC, 60 * MSEC                },
                { "60",           1,    60                       },
                { "0",            SEC,  0                        },
                { "1.5",          SEC,  1500 * MSEC              },
                { "500ms",        SEC,  500 * MSEC               },
                { "500msec",      SEC,  500 * MSEC               },
                { "10us",         SEC,  10                       },
                { "10usec",       SEC,  10                       },
                { "10µs",         SEC,  10                       },
                { "30s",          SEC,  30 * SEC                 },
                { "30sec",        SEC,  30 * SEC                 },
                { "1second",      SEC,  SEC                      },
                { "30 seconds",   SEC,  30 * SEC                 },
                { "30m",          SEC,  30 * MINUTE              },
                { "30min",        SEC,  30 * MINUTE              },
                { "1minute",      SEC,  MINUTE                   },
                { "2 minutes",    SEC,  2 * MINUTE               },
                { "24h",          SEC,  24 * HOUR                },
                { "1hr",          SEC,  HOUR                     },
                { "1hour",        SEC,  HOUR                     },
                { "3hours",       SEC,  3 * HOUR                 },
                { "2d",           SEC,  2 * DAY                  },
                { "1day",         SEC,  DAY                      },
                { "2days",        SEC,  2 * DAY                  },
                { "1w",           SEC,  WEEK                     },
                { "1week",        SEC,  WEEK                     },
                { "2weeks",       SEC,  2 * WEEK                 },
                { "1h 30min",     SEC,  HOUR + 30 * MINUTE       },
                { "1h30min",      SEC,  HOUR + 30 * MINUTE       },
                { "1h  30min 5s", SEC,  HOUR + 30 * MINUTE + 5 * SEC },
                { "1.5h",         SEC,  HOUR + 30 * MINUTE       },
                { "0.5s",         SEC,  500 * MSEC               },
                { " 5s ",         SEC,  5 * SEC                  },
                { "1w 1d 1h 1min 1s 1ms 1us", SEC, WEEK + DAY + HOUR + MINUTE + SEC + MSEC + 1 },
                { "30500568w",    SEC,  30500568 * WEEK          },
                { "infinity",     SEC,  USEC_INFINITY            },
                { " infinity ",   SEC,  USEC_INFINITY            },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                usec_t v = UNTOUCHED;
                g_test_message("parse_timespan(\"%s\", %" PRIu64 ")", cases[i].s, cases[i].unit);
                g_assert_cmpint(parse_timespan(cases[i].s, cases[i].unit, &v), ==, 0);
                g_assert_cmpuint(v, ==, cases[i].v);
        }
}

static void test_parse_timespan_bad(void) {
        static const char *const invalid[] = {
                "", " ", "-1", "-1s", "+1s", "1x", "1 x", "1s x", "abc", "h", "1h 30", "30 1h", "1 2",
                "infinityx", "infinity 1s", "1s infinity", "1M", "1S", "1H", "1h-30min", "1h,30min", "1.s",
                ".5s", "1..5s", "0x10s", "10%", "1e3s", "5 mins",
        };
        static const char *const range[] = {
                "18446744073709551616", "99999999999999999999s", "30500569w", "30500568w 1w",
                "18446744073709551615us", "18446744073709551615",
        };

        for (size_t i = 0; i < ELEMENTSOF(invalid); i++) {
                usec_t v = UNTOUCHED;
                g_test_message("parse_timespan(\"%s\")", invalid[i]);
                g_assert_cmpint(parse_timespan(invalid[i], SEC, &v), ==, -EINVAL);
                g_assert_cmpuint(v, ==, UNTOUCHED);
        }

        for (size_t i = 0; i < ELEMENTSOF(range); i++) {
                usec_t v = UNTOUCHED;
                g_test_message("parse_timespan(\"%s\")", range[i]);
                g_assert_cmpint(parse_timespan(range[i], SEC, &v), ==, -ERANGE);
                g_assert_cmpuint(v, ==, UNTOUCHED);
        }

        usec_t v = UNTOUCHED;
        g_assert_cmpint(parse_timespan(NULL, SEC, &v), ==, -EINVAL);
        g_assert_cmpuint(v, ==, UNTOUCHED);
}

static void test_parse_unsigned(void) {
        unsigned u = 42;

        g_assert_cmpint(parse_unsigned("5", 1, 64, &u), ==, 0);
        g_assert_cmpuint(u, ==, 5);
        g_assert_cmpint(parse_unsigned("1", 1, 64, &u), ==, 0);
        g_assert_cmpuint(u, ==, 1);
        g_assert_cmpint(parse_unsigned("64", 1, 64, &u), ==, 0);
        g_assert_cmpuint(u, ==, 64);
        g_assert_cmpint(parse_unsigned(" 7 ", 0, 10, &u), ==, 0);
        g_assert_cmpuint(u, ==, 7);
        g_assert_cmpint(parse_unsigned("007", 0, 10, &u), ==, 0);
        g_assert_cmpuint(u, ==, 7);
        g_assert_cmpint(parse_unsigned("4294967295", 0, UINT_MAX, &u), ==, 0);
        g_assert_cmpuint(u, ==, UINT_MAX);

        u = 42;
        g_assert_cmpint(parse_unsigned("0", 1, 64, &u), ==, -ERANGE);
        g_assert_cmpint(parse_unsigned("65", 1, 64, &u), ==, -ERANGE);
        g_assert_cmpint(parse_unsigned("4294967296", 0, UINT_MAX, &u), ==, -ERANGE);
        g_assert_cmpint(parse_unsigned("99999999999999999999999", 0, UINT_MAX, &u), ==, -ERANGE);
        g_assert_cmpint(parse_unsigned("-1", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned("+1", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned("", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned(" ", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned("abc", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned("5x", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned("5 5", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned("1.5", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned("0x10", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned("10%", 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpint(parse_unsigned(NULL, 0, UINT_MAX, &u), ==, -EINVAL);
        g_assert_cmpuint(u, ==, 42);
}

static void test_format_size(void) {
        static const struct {
                uint64_t v;
                const char *s;
        } cases[] = {
                { 0,                  "0B"     },
                { 1,                  "1B"     },
                { 512,                "512B"   },
                { 1023,               "1023B"  },
                { 1024,               "1K"     },
                { 1536,               "1.5K"   },
                { 1024 * 1023,        "1023K"  },
                { M,                  "1M"     },
                { 10 * G,             "10G"    },
                { G + G / 2,          "1.5G"   },
                { 2 * G - 1,          "1.9G"   },  /* rounded down, never up */
                { T + T / 10 + 1,     "1.1T"   },
                { 3 * P,              "3P"     },
                { E,                  "1E"     },
                { UINT64_MAX,         "15.9E"  },
        };
        char buf[FORMAT_SIZE_MAX];

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                g_assert_true(format_size(buf, sizeof(buf), cases[i].v) == buf);
                g_assert_cmpstr(buf, ==, cases[i].s);

                /* What we print reads back, never to more than there was. */
                uint64_t back;
                g_assert_cmpint(parse_size(buf, &back), ==, 0);
                g_assert_cmpuint(back, <=, cases[i].v);
        }

        /* A short buffer truncates (callers use FORMAT_SIZE_MAX) but stays a string. */
        char small[3];
        format_size(small, sizeof(small), 10 * G + G / 2);
        g_assert_cmpstr(small, ==, "10");
}

static void test_format_timespan(void) {
        static const struct {
                usec_t v;
                const char *s;
        } cases[] = {
                { 0,                                   "0"                  },
                { 1,                                   "1us"                },
                { 250 * MSEC,                          "250ms"              },
                { SEC,                                 "1s"                 },
                { 60 * SEC,                            "1min"               },
                { HOUR + 30 * MINUTE,                  "1h 30min"           },
                { 24 * HOUR,                           "1d"                 },
                { WEEK + DAY + HOUR + MINUTE + SEC + MSEC + 1, "1w 1d 1h 1min 1s 1ms 1us" },
                { 1500 * MSEC,                         "1s 500ms"           },
                { USEC_INFINITY,                       "infinity"           },
                { USEC_INFINITY - 1,                   "30500568w 6d 8h 1min 49s 551ms 614us" },
        };
        char buf[FORMAT_TIMESPAN_MAX];

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                g_assert_true(format_timespan(buf, sizeof(buf), cases[i].v) == buf);
                g_assert_cmpstr(buf, ==, cases[i].s);

                usec_t back;
                g_assert_cmpint(parse_timespan(buf, SEC, &back), ==, 0);
                g_assert_cmpuint(back, ==, cases[i].v);
        }

        /* A short buffer keeps only the components that fit whole. */
        char small[6];
        format_timespan(small, sizeof(small), HOUR + 30 * MINUTE);
        g_assert_cmpstr(small, ==, "1h");
        char tiny[2];
        format_timespan(tiny, sizeof(tiny), 30 * MINUTE);
        g_assert_cmpstr(tiny, ==, "");
}

static void test_ip_prefix(void) {
        IpPrefix p;
        uint8_t a4[4] = { 10, 1, 2, 3 }, b4[4] = { 11, 0, 0, 1 }, lo[4] = { 127, 0, 0, 1 };
        uint8_t mapped[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 9, 9, 9 }, v6[16] = { 0xfd, 0x12 };
        IpPrefix *list = NULL;

        g_assert_cmpint(parse_ip_prefix("10.0.0.0/8", &p), ==, 0);
        g_assert_cmpint(p.family, ==, AF_INET);
        g_assert_cmpuint(p.prefixlen, ==, 8);
        g_assert_true(ip_prefix_contains(&p, AF_INET, a4));
        g_assert_false(ip_prefix_contains(&p, AF_INET, b4));
        g_assert_true(ip_prefix_contains(&p, AF_INET6, mapped)); /* ::ffff:10.9.9.9 */
        g_assert_cmpint(parse_ip_prefix("127.0.0.1", &p), ==, 0);
        g_assert_cmpuint(p.prefixlen, ==, 32);
        g_assert_true(ip_prefix_contains(&p, AF_INET, lo));
        g_assert_cmpint(parse_ip_prefix("fd00::/8", &p), ==, 0);
        g_assert_true(ip_prefix_contains(&p, AF_INET6, v6));
        g_assert_false(ip_prefix_contains(&p, AF_INET, a4));
        g_assert_cmpint(parse_ip_prefix("0.0.0.0/0", &p), ==, 0);
        g_assert_true(ip_prefix_contains(&p, AF_INET, b4));

        const char *bad[] = { "", "/8", "10.0.0.1/8", "10.0.0.0/33", "fd00::/129", "10.0.0.0/", "10.0.0.0/x",
                              "host.example", "10.0.0.0/8/8", "1.2.3", "::1 ", NULL };
        for (const char **b = bad; *b; b++)
                g_assert_cmpint(parse_ip_prefix(*b, &p), ==, -EINVAL);

        g_assert_cmpint(parse_ip_prefix_list(" 127.0.0.1\t::1  10.0.0.0/8 ", &list), ==, 3);
        g_assert_cmpuint(list[2].prefixlen, ==, 8);
        free(list);
        g_assert_cmpint(parse_ip_prefix_list(NULL, NULL), ==, 0);
        g_assert_cmpint(parse_ip_prefix_list("127.0.0.1 nonsense", NULL), ==, -EINVAL);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/parse-util/boolean", test_parse_boolean);
        g_test_add_func("/parse-util/size/good", test_parse_size_good);
        g_test_add_func("/parse-util/size/bad", test_parse_size_bad);
        g_test_add_func("/parse-util/size-or-percent", test_parse_size_or_percent);
        g_test_add_func("/parse-util/timespan/good", test_parse_timespan_good);
        g_test_add_func("/parse-util/timespan/bad", test_parse_timespan_bad);
        g_test_add_func("/parse-util/unsigned", test_parse_unsigned);
        g_test_add_func("/parse-util/format-size", test_format_size);
        g_test_add_func("/parse-util/format-timespan", test_format_timespan);
        g_test_add_func("/parse-util/ip-prefix", test_ip_prefix);

        return g_test_run();
}
