/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <stdarg.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "config.h"
#include "parse-util.h"

#define G ((uint64_t) 1024 * 1024 * 1024)

/* A scratch directory per test, holding imgcached.conf and imgcached.conf.d/. */
typedef struct TestDir {
        char *dir;
        char *conf;      /* <dir>/imgcached.conf */
        char *dropins;   /* <dir>/imgcached.conf.d */
        GPtrArray *warnings;
} TestDir;

static void rm_rf(const char *path) {
        if (g_file_test(path, G_FILE_TEST_IS_DIR) && !g_file_test(path, G_FILE_TEST_IS_SYMLINK)) {
                GDir *d = g_dir_open(path, 0, NULL);
                const char *name;

                g_assert_nonnull(d);
                while ((name = g_dir_read_name(d))) {
                        char *p = g_build_filename(path, name, NULL);
                        rm_rf(p);
                        g_free(p);
                }
                g_dir_close(d);
                g_assert_cmpint(g_rmdir(path), ==, 0);
        } else
                g_assert_cmpint(g_unlink(path), ==, 0);
}

static void test_dir_setup(TestDir *t) {
        GError *error = NULL;

        t->dir = g_dir_make_tmp("test-config-XXXXXX", &error);
        g_assert_no_error(error);
        t->conf = g_build_filename(t->dir, "imgcached.conf", NULL);
        t->dropins = g_build_filename(t->dir, "imgcached.conf.d", NULL);
        t->warnings = g_ptr_array_new_with_free_func(g_free);
}

static void test_dir_teardown(TestDir *t) {
        rm_rf(t->dir);
        g_free(t->dir);
        g_free(t->conf);
        g_free(t->dropins);
        g_ptr_array_unref(t->warnings);
}

static void write_file(const char *path, const char *contents) {
        GError *error = NULL;

        g_file_set_contents(path, contents, -1, &error);
        g_assert_no_error(error);
}

/* Writes <dropins>/<name> and returns its path (g_free it). */
static char *write_dropin(TestDir *t, const char *name, const char *contents) {
        char *p;

        g_assert_cmpint(g_mkdir_with_parents(t->dropins, 0755), ==, 0);
        p = g_build_filename(t->dropins, name, NULL);
        write_file(p, contents);
        return p;
}

static void capture_warning(const char *message, void *userdata) {
        GPtrArray *warnings = userdata;

        g_test_message("warning: %s", message);
        g_ptr_array_add(warnings, g_strdup(message));
}

static bool warnings_contain(TestDir *t, const char *needle) {
        for (guint i = 0; i < t->warnings->len; i++)
                if (strstr(t->warnings->pdata[i], needle))
                        return true;
        return false;
}

static int load(TestDir *t, Config *c, char **ret_error) {
        return config_load(c, t->conf, capture_warning, t->warnings, ret_error);
}

static void assert_defaults(const Config *c) {
        g_assert_null(c->directory);
        g_assert_cmpint(c->driver, ==, DRIVER_SQLITE);
        g_assert_cmpuint(c->max_size.bytes, ==, 10 * G);
        g_assert_cmpuint(c->max_size.permille, ==, UINT64_MAX);
        g_assert_true(c->enforce_max_size);
        g_assert_cmpuint(c->keep_free.bytes, ==, UINT64_MAX);
        g_assert_cmpuint(c->keep_free.permille, ==, 100);
        g_assert_cmpuint(c->stall_time, ==, 24 * 3600 * USEC_PER_SEC);
        g_assert_cmpuint(c->free_space_check, ==, 10 * USEC_PER_SEC);
        g_assert_true(c->prefetch_on_queue);
        g_assert_cmpint(c->upstream_kind, ==, UPSTREAM_GENERIC);
        g_assert_null(c->upstream_url);
        g_assert_null(c->token_file);
        g_assert_null(c->ca_file);
        g_assert_cmpuint(c->max_parallel_fetches, ==, 4);
        g_assert_cmpuint(c->connect_timeout, ==, 30 * USEC_PER_SEC);
        g_assert_cmpuint(c->low_speed_timeout, ==, 60 * USEC_PER_SEC);
        g_assert_cmpuint(c->retry_initial, ==, 30 * USEC_PER_SEC);
        g_assert_cmpuint(c->retry_max, ==, 3600 * USEC_PER_SEC);
        g_assert_cmpstr(c->listen, ==, "127.0.0.1:9393");
        g_assert_false(c->management_api);
        g_assert_null(c->management_token_file);
        g_assert_cmpuint(c->max_connections, ==, 1024);
        g_assert_true(c->access_log);
        g_assert_cmpuint(c->access_log_interval, ==, USEC_PER_SEC);
        g_assert_cmpuint(c->access_log_burst, ==, 1000);
        g_assert_cmpuint(c->exit_on_idle, ==, 60 * USEC_PER_SEC);
}

static void test_defaults(void) {
        Config c;

        g_assert_cmpint(config_init(&c), ==, 0);
        assert_defaults(&c);
        config_done(&c);
        config_done(&c);  /* idempotent */
}

static void test_string_tables(void) {
        g_assert_cmpstr(driver_kind_to_string(DRIVER_SQLITE), ==, "sqlite");
        g_assert_cmpstr(driver_kind_to_string(DRIVER_XATTR), ==, "xattr");
        g_assert_null(driver_kind_to_string(_DRIVER_KIND_MAX));
        g_assert_null(driver_kind_to_string(_DRIVER_KIND_INVALID));
        g_assert_cmpint(driver_kind_from_string("sqlite"), ==, DRIVER_SQLITE);
        g_assert_cmpint(driver_kind_from_string("xattr"), ==, DRIVER_XATTR);
        g_assert_cmpint(driver_kind_from_string("SQLite"), ==, _DRIVER_KIND_INVALID);
        g_assert_cmpint(driver_kind_from_string(""), ==, _DRIVER_KIND_INVALID);
        g_assert_cmpint(driver_kind_from_string(NULL), ==, _DRIVER_KIND_INVALID);

        g_assert_cmpstr(upstream_kind_to_string(UPSTREAM_GENERIC), ==, "generic");
        g_assert_cmpstr(upstream_kind_to_string(UPSTREAM_GLANCE), ==, "glance");
        g_assert_null(upstream_kind_to_string(_UPSTREAM_KIND_MAX));
        g_assert_null(upstream_kind_to_string(_UPSTREAM_KIND_INVALID));
        g_assert_cmpint(upstream_kind_from_string("generic"), ==, UPSTREAM_GENERIC);
        g_assert_cmpint(upstream_kind_from_string("glance"), ==, UPSTREAM_GLANCE);
        g_assert_cmpint(upstream_kind_from_string("s3"), ==, _UPSTREAM_KIND_INVALID);
        g_assert_cmpint(upstream_kind_from_string(NULL), ==, _UPSTREAM_KIND_INVALID);

        /* Every value round-trips. */
        for (int i = 0; i < _DRIVER_KIND_MAX; i++)
                g_assert_cmpint(driver_kind_from_string(driver_kind_to_string(i)), ==, i);
        for (int i = 0; i < _UPSTREAM_KIND_MAX; i++)
                g_assert_cmpint(upstream_kind_from_string(upstream_kind_to_string(i)), ==, i);
}

static void test_size_limit_resolve(void) {
        SizeLimit bytes = { .bytes = 10 * G, .permille = UINT64_MAX };
        SizeLimit pct = { .bytes = UINT64_MAX, .permille = 100 };
        SizeLimit all = { .bytes = UINT64_MAX, .permille = 1000 };
        SizeLimit none = { .bytes = UINT64_MAX, .permille = 0 };
        SizeLimit frac = { .bytes = UINT64_MAX, .permille = 125 };

        g_assert_cmpuint(size_limit_resolve(&bytes, 1000 * G), ==, 10 * G);
        g_assert_cmpuint(size_limit_resolve(&bytes, 0), ==, 10 * G);
        g_assert_cmpuint(size_limit_resolve(&pct, 1000), ==, 100);
        g_assert_cmpuint(size_limit_resolve(&pct, 100 * G), ==, 10 * G);
        g_assert_cmpuint(size_limit_resolve(&frac, 8000), ==, 1000);
        g_assert_cmpuint(size_limit_resolve(&all, 12345), ==, 12345);
        g_assert_cmpuint(size_limit_resolve(&none, 12345), ==, 0);
        g_assert_cmpuint(size_limit_resolve(&pct, 0), ==, 0);
        /* No overflow near the top of the range. */
        g_assert_cmpuint(size_limit_resolve(&all, UINT64_MAX), ==, UINT64_MAX);
        g_assert_cmpuint(size_limit_resolve(&pct, UINT64_MAX), ==, UINT64_MAX / 10);
}

static void test_missing_everything(void) {
        TestDir t;
        Config c;

        test_dir_setup(&t);
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, NULL), ==, 0);
        assert_defaults(&c);
        g_assert_cmpuint(t.warnings->len, ==, 0);
        config_done(&c);
        test_dir_teardown(&t);
}

static void test_every_key(void) {
        TestDir t;
        Config c;
        char *error = NULL;

        test_dir_setup(&t);
        write_file(t.conf,
                   "# imgcached.conf\n"
                   "[Cache]\n"
                   "Directory=/srv/imgcache\n"
                   "Driver=xattr\n"
                   "MaxSize=1.5T\n"
                   "EnforceMaxSize=no\n"
                   "KeepFree=5G\n"
                   "StallTimeSec=1h 30min\n"
                   "PrefetchOnQueue=false\n"
                   "\n"
                   "[Upstream]\n"
                   "Kind=glance\n"
                   "URL=http://glance:9292\n"
                   "TokenFile=/etc/imgcache/token\n"
                   "CAFile=/etc/ssl/ca.pem\n"
                   "MaxParallelFetches=16\n"
                   "ConnectTimeoutSec=5\n"
                   "LowSpeedTimeoutSec=2min\n"
                   "RetryInitialSec=100ms\n"
                   "RetryMaxSec=infinity\n"
                   "\n"
                   "[HTTP]\n"
                   "Listen=[::1]:8080\n"
                   "ManagementAPI=yes\n"
                   "ManagementTokenFile=/etc/imgcache/mgmt-token\n"
                   "MaxConnections=200\n"
                   "AccessLog=no\n"
                   "AccessLogRateLimitIntervalSec=30s\n"
                   "AccessLogRateLimitBurst=50\n"
                   "\n"
                   "[Fleet]\n"
                   "Peers=http://10.0.0.1:9393 https://cache.example:443/\n"
                   "Self=http://10.0.0.1:9393\n"
                   "PeerTokenFile=/etc/imgcache/peer-token\n"
                   "Replicas=3\n"
                   "PeerTimeoutSec=2s\n"
                   "PeerResolveSec=5min\n"
                   "\n"
                   "[Daemon]\n"
                   "ExitOnIdleSec=infinity\n");

        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, 0);
        g_assert_null(error);
        g_assert_cmpuint(t.warnings->len, ==, 0);

        g_assert_cmpstr(c.directory, ==, "/srv/imgcache");
        g_assert_cmpint(c.driver, ==, DRIVER_XATTR);
        g_assert_cmpuint(c.max_size.bytes, ==, 1536 * G);
        g_assert_cmpuint(c.max_size.permille, ==, UINT64_MAX);
        g_assert_false(c.enforce_max_size);
        g_assert_cmpuint(c.keep_free.bytes, ==, 5 * G);
        g_assert_cmpuint(c.keep_free.permille, ==, UINT64_MAX);
        g_assert_cmpuint(c.stall_time, ==, 90 * 60 * USEC_PER_SEC);
        g_assert_false(c.prefetch_on_queue);
        g_assert_cmpint(c.upstream_kind, ==, UPSTREAM_GLANCE);
        g_assert_cmpstr(c.upstream_url, ==, "http://glance:9292");
        g_assert_cmpstr(c.token_file, ==, "/etc/imgcache/token");
        g_assert_cmpstr(c.ca_file, ==, "/etc/ssl/ca.pem");
        g_assert_cmpuint(c.max_parallel_fetches, ==, 16);
        g_assert_cmpuint(c.connect_timeout, ==, 5 * USEC_PER_SEC);
        g_assert_cmpuint(c.low_speed_timeout, ==, 120 * USEC_PER_SEC);
        g_assert_cmpuint(c.retry_initial, ==, 100 * USEC_PER_MSEC);
        g_assert_cmpuint(c.retry_max, ==, USEC_INFINITY);
        g_assert_cmpstr(c.listen, ==, "[::1]:8080");
        g_assert_true(c.management_api);
        g_assert_cmpstr(c.management_token_file, ==, "/etc/imgcache/mgmt-token");
        g_assert_cmpuint(c.max_connections, ==, 200);
        g_assert_false(c.access_log);
        g_assert_cmpuint(c.access_log_interval, ==, 30 * USEC_PER_SEC);
        g_assert_cmpuint(c.access_log_burst, ==, 50);
        g_assert_cmpstr(c.fleet_peers, ==, "http://10.0.0.1:9393 https://cache.example:443/");
        g_assert_cmpstr(c.fleet_self, ==, "http://10.0.0.1:9393");
        g_assert_cmpstr(c.peer_token_file, ==, "/etc/imgcache/peer-token");
        g_assert_cmpuint(c.fleet_replicas, ==, 3);
        g_assert_cmpuint(c.peer_timeout, ==, 2 * USEC_PER_SEC);
        g_assert_cmpuint(c.peer_resolve_interval, ==, 300 * USEC_PER_SEC);
        g_assert_cmpuint(c.exit_on_idle, ==, USEC_INFINITY);

        config_done(&c);
        test_dir_teardown(&t);
}

static void test_dropins_order(void) {
        TestDir t;
        Config c;
        char *error = NULL, *a, *b, *d;

        test_dir_setup(&t);
        write_file(t.conf,
                   "[Cache]\n"
                   "MaxSize=1G\n"
                   "Driver=xattr\n"
                   "StallTimeSec=1h\n"
                   "[HTTP]\n"
                   "Listen=0.0.0.0:9000\n");
        /* Written out of order, and "9-" sorts after "10-" lexically: 9-late.conf must win. */
        d = write_dropin(&t, "9-late.conf",
                         "[Cache]\n"
                         "MaxSize=3G\n");
        b = write_dropin(&t, "10-early.conf",
                         "[Cache]\n"
                         "MaxSize=2G\n"
                         "KeepFree=20%\n"
                         "[Upstream]\n"
                         "URL=https://mirror.example/images/{id}.raw\n");
        a = write_dropin(&t, "00-first.conf",
                         "[Cache]\n"
                         "KeepFree=1%\n"
                         "StallTimeSec=2h\n");

        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, 0);
        g_assert_null(error);

        g_assert_cmpuint(c.max_size.bytes, ==, 3 * G);          /* main < 10-early < 9-late */
        g_assert_cmpuint(c.keep_free.permille, ==, 200);        /* 00-first < 10-early */
        g_assert_cmpuint(c.keep_free.bytes, ==, UINT64_MAX);
        g_assert_cmpuint(c.stall_time, ==, 2 * 3600 * USEC_PER_SEC); /* main < 00-first */
        g_assert_cmpint(c.driver, ==, DRIVER_XATTR);            /* main only */
        g_assert_cmpstr(c.listen, ==, "0.0.0.0:9000");          /* main only */
        g_assert_cmpstr(c.upstream_url, ==, "https://mirror.example/images/{id}.raw");
        g_assert_cmpuint(c.max_parallel_fetches, ==, 4);        /* nobody */

        config_done(&c);
        g_free(a);
        g_free(b);
        g_free(d);
        test_dir_teardown(&t);
}

static void test_missing_main_with_dropins(void) {
        TestDir t;
        Config c;
        char *error = NULL, *p;

        test_dir_setup(&t);
        p = write_dropin(&t, "50-size.conf",
                         "[Cache]\n"
                         "MaxSize=25%\n"
                         "FreeSpaceCheckSec=0\n"
                         "[Daemon]\n"
                         "ExitOnIdleSec=0\n");
        g_assert_false(g_file_test(t.conf, G_FILE_TEST_EXISTS));

        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, 0);
        g_assert_null(error);
        g_assert_cmpuint(c.max_size.bytes, ==, UINT64_MAX);
        g_assert_cmpuint(c.max_size.permille, ==, 250);
        g_assert_cmpuint(c.exit_on_idle, ==, USEC_INFINITY);  /* 0 means never */
        g_assert_cmpuint(c.free_space_check, ==, USEC_INFINITY);
        g_assert_cmpint(c.driver, ==, DRIVER_SQLITE);

        config_done(&c);
        g_free(p);
        test_dir_teardown(&t);
}

static void test_unknown_warns(void) {
        TestDir t;
        Config c;
        char *error = NULL, *p, *expect;

        test_dir_setup(&t);
        write_file(t.conf,
                   "[Cache]\n"               /* 1 */
                   "MaxSize=2G\n"            /* 2 */
                   "MaxSise=3G\n"            /* 3: typo */
                   "\n"                      /* 4 */
                   "[Frobnicate]\n"          /* 5 */
                   "Enable=yes\n"            /* 6 */
                   "[HTTP]\n"                /* 7 */
                   "  Listen = 127.0.0.1:1\n" /* 8 */
                   "MaxSize[de]=1G\n");      /* 9: a translation is just another unknown key */
        p = write_dropin(&t, "x.conf",
                         "# comment\n"       /* 1 */
                         "[Upstream]\n"      /* 2 */
                         "url=http://x\n");  /* 3: keys are case-sensitive */

        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, 0);
        g_assert_null(error);

        /* Known keys are applied regardless. */
        g_assert_cmpuint(c.max_size.bytes, ==, 2 * G);
        g_assert_cmpstr(c.listen, ==, "127.0.0.1:1");
        g_assert_null(c.upstream_url);

        g_assert_cmpuint(t.warnings->len, ==, 4);

        expect = g_strdup_printf("%s:3: Unknown key MaxSise= in section [Cache]", t.conf);
        g_assert_true(warnings_contain(&t, expect));
        g_free(expect);

        expect = g_strdup_printf("%s:5: Unknown section [Frobnicate]", t.conf);
        g_assert_true(warnings_contain(&t, expect));
        g_free(expect);

        expect = g_strdup_printf("%s:9: Unknown key MaxSize[de]= in section [HTTP]", t.conf);
        g_assert_true(warnings_contain(&t, expect));
        g_free(expect);

        expect = g_strdup_printf("%s:3: Unknown key url= in section [Upstream]", p);
        g_assert_true(warnings_contain(&t, expect));
        g_free(expect);

        /* Keys of an unknown section are not warned about one by one. */
        g_assert_false(warnings_contain(&t, "Enable"));

        config_done(&c);
        g_free(p);
        test_dir_teardown(&t);
}

static void test_warn_to_stderr(void) {
        TestDir t;
        Config c;

        /* With no callback, warnings go to stderr; the load itself must not care. */
        test_dir_setup(&t);
        write_file(t.conf, "[Nope]\nX=1\n");
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(config_load(&c, t.conf, NULL, NULL, NULL), ==, 0);
        assert_defaults(&c);
        config_done(&c);
        test_dir_teardown(&t);
}

static const struct {
        const char *section;
        const char *key;
        const char *value;
        const char *why;  /* a fragment of the reason */
} bad_values[] = {
        { "Cache",    "MaxSize",             "ten gigs",          "invalid size"           },
        { "Cache",    "MaxSize",             "-1",                "invalid size"           },
        { "Cache",    "MaxSize",             "10G junk",          "invalid size"           },
        { "Cache",    "MaxSize",             "101%",              "out of range"           },
        { "Cache",    "MaxSize",             "16E",               "out of range"           },
        { "Cache",    "KeepFree",            "lots",              "invalid size"           },
        { "Cache",    "Directory",           "var/cache/imgcache", "absolute"              },
        { "Cache",    "Driver",              "btrfs",             "sqlite or xattr"        },
        { "Cache",    "Driver",              "SQLITE",            "sqlite or xattr"        },
        { "Cache",    "EnforceMaxSize",      "maybe",             "boolean"                },
        { "Cache",    "StallTimeSec",        "forever",           "time span"              },
        { "Cache",    "StallTimeSec",        "-5",                "time span"              },
        { "Cache",    "StallTimeSec",        "99999999999999999999", "out of range"        },
        { "Cache",    "PrefetchOnQueue",     "2",                 "boolean"                },
        { "Upstream", "Kind",                "s3",                "generic or glance"      },
        { "Upstream", "URL",                 "ftp://mirror/{id}", "http://, https:// or file://" },
        { "Upstream", "URL",                 "https://",          "http://, https:// or file://" },
        { "Upstream", "URL",                 "mirror/{id}",       "http://, https:// or file://" },
        { "Upstream", "URL",                 "http://a b/{id}",   "spaces"                 },
        { "Upstream", "URL",                 "https://mirror/images/", "{id}"              },
        { "Upstream", "TokenFile",           "token",             "absolute"               },
        { "Upstream", "CAFile",              "./ca.pem",          "absolute"               },
        { "Upstream", "MaxParallelFetches",  "0",                 "out of range"           },
        { "Upstream", "MaxParallelFetches",  "65",                "out of range"           },
        { "Upstream", "MaxParallelFetches",  "many",              "invalid number"         },
        { "Upstream", "MaxParallelFetches",  "-1",                "invalid number"         },
        { "Upstream", "ConnectTimeoutSec",   "1h 30",             "time span"              },
        { "Upstream", "LowSpeedTimeoutSec",  "1x",                "time span"              },
        { "Upstream", "RetryInitialSec",     "0",                 "more than 0"            },
        { "Upstream", "RetryInitialSec",     "soon",              "time span"              },
        { "Upstream", "RetryMaxSec",         "0s",                "more than 0"            },
        { "HTTP",     "Listen",              "9393",              "listen address"         },
        { "HTTP",     "Listen",              "localhost",         "listen address"         },
        { "HTTP",     "Listen",              ":9393",             "listen address"         },
        { "HTTP",     "Listen",              "127.0.0.1:",        "listen address"         },
        { "HTTP",     "Listen",              "127.0.0.1:0",       "listen address"         },
        { "HTTP",     "Listen",              "127.0.0.1:65536",   "listen address"         },
        { "HTTP",     "TrustedProxies",      "proxy.example",     "IP addresses or networks" },
        { "HTTP",     "TrustedProxies",      "10.0.0.1/8",        "IP addresses or networks" },
        { "HTTP",     "UpstreamRequestsPerIP", "-1",              "invalid number"         },
        { "HTTP",     "UpstreamBurstPerIP",  "0",                 "out of range"           },
        { "HTTP",     "Listen",              "127.0.0.1:http",    "listen address"         },
        { "HTTP",     "Listen",              "127.0.0.1:+80",     "listen address"         },
        { "HTTP",     "Listen",              "::1:9393",          "listen address"         },
        { "HTTP",     "Listen",              "[::1]9393",         "listen address"         },
        { "HTTP",     "Listen",              "[::1]",             "listen address"         },
        { "HTTP",     "Listen",              "[]:80",             "listen address"         },
        { "HTTP",     "Listen",              "[nothex]:80",       "listen address"         },
        { "HTTP",     "Listen",              "300.1.1.1:80",      "listen address"         },
        { "HTTP",     "Listen",              "1.2.3:80",          "listen address"         },
        { "HTTP",     "Listen",              "-bad.example:80",   "listen address"         },
        { "HTTP",     "Listen",              "bad-.example:80",   "listen address"         },
        { "HTTP",     "Listen",              "a..b:80",           "listen address"         },
        { "HTTP",     "Listen",              "host name:80",      "listen address"         },
        { "HTTP",     "Listen",              "host_name:80",      "listen address"         },
        { "HTTP",     "ManagementAPI",       "sure",              "boolean"                },
        { "HTTP",     "ManagementTokenFile", "mgmt-token",        "absolute"               },
        { "HTTP",     "MaxConnections",      "0",                 "out of range"           },
        { "HTTP",     "MaxConnections",      "65536",             "out of range"           },
        { "HTTP",     "MaxConnections",      "1e3",               "invalid number"         },
        { "HTTP",     "AccessLog",           "journal",           "boolean"                },
        { "HTTP",     "AccessLog",           "yes please",        "boolean"                },
        { "HTTP",     "AccessLogRateLimitIntervalSec", "0",       "more than 0"            },
        { "HTTP",     "AccessLogRateLimitIntervalSec", "often",   "time span"              },
        { "HTTP",     "AccessLogRateLimitBurst", "0",             "out of range"           },
        { "HTTP",     "AccessLogRateLimitBurst", "lots",          "invalid number"         },
        { "Fleet",    "Peers",               "10.0.0.1:9393",     "http:// or https://"    },
        { "Fleet",    "Peers",               "http://a:1 ftp://b:2", "http:// or https://" },
        { "Fleet",    "Peers",               "http://a:1/images", "not a path"             },
        { "Fleet",    "Self",                "http://a:1 http://b:2", "one URL"            },
        { "Fleet",    "PeerTokenFile",       "peer-token",        "absolute"               },
        { "Fleet",    "Replicas",            "0",                 "out of range"           },
        { "Fleet",    "Replicas",            "17",                "out of range"           },
        { "Fleet",    "PeerTimeoutSec",      "0",                 "more than 0"            },
        { "Fleet",    "PeerResolveSec",      "often",             "time span"              },
        { "Daemon",   "ExitOnIdleSec",       "soon",              "time span"              },
        { "Daemon",   "ExitOnIdleSec",       "10%",               "time span"              },
};

static void test_bad_values(void) {
        for (size_t i = 0; i < ELEMENTSOF(bad_values); i++) {
                TestDir t;
                Config c;
                char *contents, *error = NULL, *expect;
                int r;

                test_dir_setup(&t);
                /* Lines 1-4 are filler so that the line number has to be found, not guessed. */
                contents = g_strdup_printf("# imgcached.conf\n"
                                           "[Cache]\n"
                                           "EnforceMaxSize=yes\n"
                                           "\n"
                                           "[%s]\n"
                                           "%s=%s\n",
                                           bad_values[i].section, bad_values[i].key, bad_values[i].value);
                write_file(t.conf, contents);

                g_assert_cmpint(config_init(&c), ==, 0);
                r = load(&t, &c, &error);
                g_test_message("[%s] %s=%s -> %d: %s", bad_values[i].section, bad_values[i].key,
                               bad_values[i].value, r, error);
                g_assert_true(r == -EINVAL || r == -ERANGE);
                g_assert_nonnull(error);

                expect = g_strdup_printf("%s:6: [%s] %s=%s: ", t.conf, bad_values[i].section,
                                         bad_values[i].key, bad_values[i].value);
                g_assert_true(g_str_has_prefix(error, expect));
                g_assert_nonnull(strstr(error, bad_values[i].why));

                /* A failed load leaves the caller's config alone. */
                assert_defaults(&c);

                /* Without ret_error the failure is the same, just quieter. */
                g_assert_cmpint(load(&t, &c, NULL), ==, r);

                config_done(&c);
                free(error);
                g_free(expect);
                g_free(contents);
                test_dir_teardown(&t);
        }
}

static void test_bad_value_in_dropin(void) {
        TestDir t;
        Config c;
        char *error = NULL, *p, *expect;

        test_dir_setup(&t);
        write_file(t.conf, "[Cache]\nMaxSize=1G\n");
        p = write_dropin(&t, "20-oops.conf",
                         "[Cache]\n"
                         "\n"
                         "MaxSize = ten gigs  \n");

        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, -EINVAL);
        expect = g_strdup_printf("%s:3: [Cache] MaxSize=ten gigs: invalid size", p);
        g_assert_cmpstr(error, ==, expect);
        assert_defaults(&c);

        config_done(&c);
        free(error);
        g_free(expect);
        g_free(p);
        test_dir_teardown(&t);
}

static void test_good_values(void) {
        static const struct {
                const char *section;
                const char *key;
                const char *value;
        } good[] = {
                { "HTTP",   "Listen", "[::1]:9393"             },
                { "HTTP",   "Listen", "[::]:1"                 },
                { "HTTP",   "Listen", "[fe80::1%eth0]:80"      },
                { "HTTP",   "Listen", "0.0.0.0:80"             },
                { "HTTP",   "Listen", "localhost:8080"         },
                { "HTTP",   "Listen", "cache.example.com.:443" },
                { "HTTP",   "Listen", "cache-1:65535"          },
                { "HTTP",   "Listen", "10.0.0.1:9393"          },
                { "HTTP",   "Listen", "2host:1"                },
                { "Upstream", "URL",  "file:///srv/images/{id}" },
                { "Upstream", "URL",  "HTTPS://mirror/{id}.qcow2" },
                { "HTTP",   "MaxConnections", "65535"          },
                { "HTTP",   "MaxConnections", "1"              },
                { "Upstream", "MaxParallelFetches", "64"       },
                { "Upstream", "MaxParallelFetches", "1"        },
                { "Cache",  "Directory", "/"                   },
                { "Cache",  "MaxSize", "0"                     },
                { "Cache",  "MaxSize", "100%"                  },
                { "Cache",  "KeepFree", "0%"                   },
                { "Cache",  "EnforceMaxSize", "on"             },
                { "Daemon", "ExitOnIdleSec", "5min 30s"        },
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                TestDir t;
                Config c;
                char *contents, *error = NULL;

                test_dir_setup(&t);
                contents = g_strdup_printf("[%s]\n%s=%s\n", good[i].section, good[i].key, good[i].value);
                write_file(t.conf, contents);

                g_assert_cmpint(config_init(&c), ==, 0);
                g_test_message("[%s] %s=%s", good[i].section, good[i].key, good[i].value);
                g_assert_cmpint(load(&t, &c, &error), ==, 0);
                g_assert_null(error);
                g_assert_cmpuint(t.warnings->len, ==, 0);

                config_done(&c);
                g_free(contents);
                test_dir_teardown(&t);
        }
}

static void test_time_values(void) {
        static const struct {
                const char *value;
                usec_t idle;
        } cases[] = {
                { "90",       90 * USEC_PER_SEC      },  /* bare numbers are seconds in …Sec= keys */
                { "1.5",      1500 * USEC_PER_MSEC   },
                { "5min",     300 * USEC_PER_SEC     },
                { "250ms",    250 * USEC_PER_MSEC    },
                { "0",        USEC_INFINITY          },
                { "0s",       USEC_INFINITY          },
                { "infinity", USEC_INFINITY          },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                TestDir t;
                Config c;
                char *contents;

                test_dir_setup(&t);
                contents = g_strdup_printf("[Daemon]\nExitOnIdleSec=%s\n", cases[i].value);
                write_file(t.conf, contents);

                g_assert_cmpint(config_init(&c), ==, 0);
                g_assert_cmpint(load(&t, &c, NULL), ==, 0);
                g_assert_cmpuint(c.exit_on_idle, ==, cases[i].idle);

                config_done(&c);
                g_free(contents);
                test_dir_teardown(&t);
        }
}

static void test_empty_resets(void) {
        TestDir t;
        Config c;
        char *error = NULL, *p;

        test_dir_setup(&t);
        write_file(t.conf,
                   "[Cache]\n"
                   "Directory=/srv/cache\n"
                   "MaxSize=1G\n"
                   "KeepFree=1G\n"
                   "Driver=xattr\n"
                   "StallTimeSec=1h\n"
                   "[Upstream]\n"
                   "URL=https://mirror/{id}\n"
                   "MaxParallelFetches=9\n"
                   "RetryInitialSec=1s\n"
                   "RetryMaxSec=2s\n"
                   "[HTTP]\n"
                   "Listen=[::1]:1\n"
                   "ManagementAPI=yes\n"
                   "[Daemon]\n"
                   "ExitOnIdleSec=0\n");
        p = write_dropin(&t, "reset.conf",
                         "[Cache]\n"
                         "Directory=\n"
                         "MaxSize=\n"
                         "KeepFree =   \n"
                         "Driver=\n"
                         "StallTimeSec=\n"
                         "[Upstream]\n"
                         "URL=\n"
                         "MaxParallelFetches=\n"
                         "RetryInitialSec=\n"
                         "RetryMaxSec=\n"
                         "[HTTP]\n"
                         "Listen=\n"
                         "ManagementAPI=\n"
                         "[Daemon]\n"
                         "ExitOnIdleSec=\n");

        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, 0);
        g_assert_null(error);
        assert_defaults(&c);

        config_done(&c);
        g_free(p);
        test_dir_teardown(&t);
}

static void test_non_conf_ignored(void) {
        static const char *const ignored[] = {
                "README", "90-x.conf.bak", "90-x.conf~", ".hidden.conf", "90-x.CONF", "90-x.conf.d", "conf",
        };
        TestDir t;
        Config c;
        char *error = NULL, *p, *sub;

        test_dir_setup(&t);
        /* Each of these would fail the load if it were read. */
        for (size_t i = 0; i < ELEMENTSOF(ignored); i++) {
                p = write_dropin(&t, ignored[i], "[Cache]\nMaxSize=garbage\n");
                g_free(p);
        }
        /* A directory that looks like a drop-in. */
        sub = g_build_filename(t.dropins, "50-dir.conf", NULL);
        g_assert_cmpint(g_mkdir(sub, 0755), ==, 0);

        p = write_dropin(&t, "50-real.conf", "[Cache]\nMaxSize=7G\n");

        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, 0);
        g_assert_null(error);
        g_assert_cmpuint(c.max_size.bytes, ==, 7 * G);
        g_assert_cmpuint(t.warnings->len, ==, 0);

        config_done(&c);
        g_free(p);
        g_free(sub);
        test_dir_teardown(&t);
}

static void test_upstream_kind_and_url(void) {
        TestDir t;
        Config c;
        char *error = NULL, *p, *expect;

        /* URL in the main file is checked against a Kind= from a drop-in. */
        test_dir_setup(&t);
        write_file(t.conf,
                   "[Upstream]\n"
                   "URL=file:///srv/images/{id}\n");
        p = write_dropin(&t, "glance.conf", "[Upstream]\nKind=glance\n");
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, -EINVAL);
        expect = g_strdup_printf("%s:2: [Upstream] URL=file:///srv/images/{id}: ", t.conf);
        g_assert_true(g_str_has_prefix(error, expect));
        g_assert_nonnull(strstr(error, "Kind=glance"));
        assert_defaults(&c);
        config_done(&c);
        free(error);
        error = NULL;
        g_free(expect);
        g_free(p);
        test_dir_teardown(&t);

        /* A Glance endpoint needs no {id}, but a generic one does; Kind= may come after URL=. */
        test_dir_setup(&t);
        write_file(t.conf,
                   "[Upstream]\n"
                   "URL=http://glance:9292//\n"
                   "Kind=glance\n");
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, 0);
        g_assert_cmpint(c.upstream_kind, ==, UPSTREAM_GLANCE);
        g_assert_cmpstr(c.upstream_url, ==, "http://glance:9292");  /* trailing slashes dropped */
        config_done(&c);

        p = write_dropin(&t, "generic.conf", "[Upstream]\nKind=generic\n");
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, -EINVAL);
        expect = g_strdup_printf("%s:2: [Upstream] URL=http://glance:9292//: Kind=generic", t.conf);
        g_assert_true(g_str_has_prefix(error, expect));
        g_assert_nonnull(strstr(error, "{id}"));
        config_done(&c);
        free(error);
        g_free(expect);
        g_free(p);
        test_dir_teardown(&t);
}

/* Auth=keystone: what it needs is named; a complete section loads. */
static void assert_auth_refused(const char *text, const char *needle) {
        TestDir t;
        Config c;
        char *error = NULL;

        test_dir_setup(&t);
        write_file(t.conf, text);
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, -EINVAL);
        if (!error || !strstr(error, needle))
                g_error("'%s' does not say '%s'", error, needle);
        assert_defaults(&c);
        config_done(&c);
        free(error);
        test_dir_teardown(&t);
}

static void test_upstream_auth(void) {
        TestDir t;
        Config c;
        char *error = NULL;

        assert_auth_refused("[Upstream]\nAuth=kerberos\n", "expected token or keystone");
        assert_auth_refused("[Upstream]\nAuth=keystone\nAuthURL=http://ks:5000\nCredentialsFile=/c\n", "Kind=glance");
        assert_auth_refused("[Upstream]\nKind=glance\nAuth=keystone\nCredentialsFile=/c\n", "AuthURL=");
        assert_auth_refused("[Upstream]\nKind=glance\nAuth=keystone\nAuthURL=http://ks:5000\n", "CredentialsFile=");
        assert_auth_refused("[Upstream]\nKind=glance\nAuth=keystone\nAuthURL=http://ks\nCredentialsFile=/c\n"
                            "TokenFile=/t\n", "exclude");
        assert_auth_refused("[Upstream]\nInterface=private\n", "public, internal or admin");

        test_dir_setup(&t);
        write_file(t.conf, "[Upstream]\nKind=glance\nAuth=keystone\nAuthURL=https://ks:5000/v3\n"
                           "CredentialsFile=/etc/imgcache/keystone.conf\nInterface=internal\nRegion=RegionOne\n");
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(c.upstream_auth, ==, UPSTREAM_AUTH_TOKEN);
        g_assert_cmpstr(c.endpoint_interface, ==, "public");
        g_assert_cmpint(load(&t, &c, &error), ==, 0);
        g_assert_cmpint(c.upstream_auth, ==, UPSTREAM_AUTH_KEYSTONE);
        g_assert_null(c.upstream_url); /* the catalog names it */
        g_assert_cmpstr(c.auth_url, ==, "https://ks:5000/v3");
        g_assert_cmpstr(c.credentials_file, ==, "/etc/imgcache/keystone.conf");
        g_assert_cmpstr(c.endpoint_interface, ==, "internal");
        g_assert_cmpstr(c.endpoint_region, ==, "RegionOne");
        config_done(&c);
        test_dir_teardown(&t);
}

static void test_syntax_errors(void) {
        static const char *const broken[] = {
                "MaxSize=1G\n",                       /* key before any section */
                "[Cache]\nthis is not a key\n",
                "[Cache\nMaxSize=1G\n",
        };

        for (size_t i = 0; i < ELEMENTSOF(broken); i++) {
                TestDir t;
                Config c;
                char *error = NULL, *expect;

                test_dir_setup(&t);
                write_file(t.conf, broken[i]);
                g_assert_cmpint(config_init(&c), ==, 0);
                g_assert_cmpint(load(&t, &c, &error), ==, -EINVAL);
                g_test_message("%s", error);
                expect = g_strdup_printf("%s: ", t.conf);
                g_assert_true(g_str_has_prefix(error, expect));
                assert_defaults(&c);

                config_done(&c);
                free(error);
                g_free(expect);
                test_dir_teardown(&t);
        }
}

static void test_duplicates(void) {
        TestDir t;
        Config c;
        char *error = NULL, *expect;

        /* The last of repeated keys and repeated sections wins, as GKeyFile has it; an error names the
         * line whose value is used. */
        test_dir_setup(&t);
        write_file(t.conf,
                   "[Cache]\n"
                   "MaxSize=1G\n"
                   "MaxSize=2G\n"
                   "[HTTP]\n"
                   "[Cache]\n"
                   "MaxSize=3G\n");
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, 0);
        g_assert_cmpuint(c.max_size.bytes, ==, 3 * G);
        config_done(&c);

        write_file(t.conf,
                   "[Cache]\n"
                   "MaxSize=1G\n"
                   "[Cache]\n"
                   "MaxSize=huge\n");
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, -EINVAL);
        expect = g_strdup_printf("%s:4: [Cache] MaxSize=huge: invalid size", t.conf);
        g_assert_cmpstr(error, ==, expect);
        config_done(&c);
        free(error);
        g_free(expect);
        test_dir_teardown(&t);
}

static void test_reload_keeps_config_on_failure(void) {
        TestDir t;
        Config c;
        char *error = NULL;

        test_dir_setup(&t);
        write_file(t.conf, "[Cache]\nDirectory=/srv/a\nMaxSize=1G\n");
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, NULL), ==, 0);

        /* A second load builds on what is there (that is how the daemon layers its files)... */
        write_file(t.conf, "[Cache]\nDriver=xattr\n");
        g_assert_cmpint(load(&t, &c, NULL), ==, 0);
        g_assert_cmpstr(c.directory, ==, "/srv/a");
        g_assert_cmpint(c.driver, ==, DRIVER_XATTR);

        /* ...and a failing one, even late in the file, changes nothing. */
        write_file(t.conf, "[Cache]\nDirectory=/srv/b\nDriver=sqlite\nMaxSize=nope\n");
        g_assert_cmpint(load(&t, &c, &error), ==, -EINVAL);
        g_assert_nonnull(error);
        g_assert_cmpstr(c.directory, ==, "/srv/a");
        g_assert_cmpint(c.driver, ==, DRIVER_XATTR);
        g_assert_cmpuint(c.max_size.bytes, ==, G);

        config_done(&c);
        free(error);
        test_dir_teardown(&t);
}

static void test_main_not_a_file(void) {
        TestDir t;
        Config c;
        char *error = NULL;

        test_dir_setup(&t);
        g_assert_cmpint(g_mkdir(t.conf, 0755), ==, 0);
        g_assert_cmpint(config_init(&c), ==, 0);
        g_assert_cmpint(load(&t, &c, &error), ==, -EISDIR);
        g_assert_true(g_str_has_prefix(error, t.conf));
        config_done(&c);
        free(error);
        test_dir_teardown(&t);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/config/defaults", test_defaults);
        g_test_add_func("/config/string-tables", test_string_tables);
        g_test_add_func("/config/size-limit-resolve", test_size_limit_resolve);
        g_test_add_func("/config/missing-everything", test_missing_everything);
        g_test_add_func("/config/every-key", test_every_key);
        g_test_add_func("/config/upstream-auth", test_upstream_auth);
        g_test_add_func("/config/dropins-order", test_dropins_order);
        g_test_add_func("/config/missing-main-with-dropins", test_missing_main_with_dropins);
        g_test_add_func("/config/unknown-warns", test_unknown_warns);
        g_test_add_func("/config/warn-to-stderr", test_warn_to_stderr);
        g_test_add_func("/config/bad-values", test_bad_values);
        g_test_add_func("/config/bad-value-in-dropin", test_bad_value_in_dropin);
        g_test_add_func("/config/good-values", test_good_values);
        g_test_add_func("/config/time-values", test_time_values);
        g_test_add_func("/config/empty-resets", test_empty_resets);
        g_test_add_func("/config/non-conf-ignored", test_non_conf_ignored);
        g_test_add_func("/config/upstream-kind-and-url", test_upstream_kind_and_url);
        g_test_add_func("/config/syntax-errors", test_syntax_errors);
        g_test_add_func("/config/duplicates", test_duplicates);
        g_test_add_func("/config/reload-keeps-config-on-failure", test_reload_keeps_config_on_failure);
        g_test_add_func("/config/main-not-a-file", test_main_not_a_file);

        return g_test_run();
}
