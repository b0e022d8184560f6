/* SPDX-License-Identifier: MIT */
/* imgcached.conf (config.h): the one table of every key with its parser and default, the value parsers,
 * and the loader of the file and its drop-ins. About 1,000 lines in one file on purpose: a key, its
 * parser and its default are read and changed together. */

#include <arpa/inet.h>
#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/stat.h>

#include <glib.h>

#include "config.h"
#include "parse-util.h"

/* A config file is a few hundred bytes; anything this big is a mistake, not a config. */
#define CONFIG_FILE_SIZE_MAX (1024U * 1024U)
#define CONFIG_DROPINS_MAX 1024U

static void g_freep(void *p) {
        g_free(*(void **) p);
}

DEFINE_TRIVIAL_CLEANUP_FUNC(GKeyFile *, g_key_file_unref);
DEFINE_TRIVIAL_CLEANUP_FUNC(GError *, g_error_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(GPtrArray *, g_ptr_array_unref);
DEFINE_TRIVIAL_CLEANUP_FUNC(char **, g_strfreev);

static const char *const driver_kind_table[_DRIVER_KIND_MAX] = {
        [DRIVER_SQLITE] = "sqlite",
        [DRIVER_XATTR] = "xattr",
};

static const char *const upstream_kind_table[_UPSTREAM_KIND_MAX] = {
        [UPSTREAM_GENERIC] = "generic",
        [UPSTREAM_GLANCE] = "glance",
};

static const char *const read_access_table[_READ_ACCESS_MAX] = {
        [READ_ACCESS_AUTO] = "auto",
        [READ_ACCESS_UPSTREAM] = "upstream",
        [READ_ACCESS_TOKEN] = "token",
        [READ_ACCESS_OPEN] = "open",
};

static int string_table_lookup(const char *const *table, size_t n, const char *s) {
        if (!s)
                return -EINVAL;

        for (size_t i = 0; i < n; i++)
                if (table[i] && streq(table[i], s))
                        return (int) i;

        return -EINVAL;
}

const char *driver_kind_to_string(DriverKind k) {
        if (k < 0 || k >= _DRIVER_KIND_MAX)
                return NULL;
        return driver_kind_table[k];
}

DriverKind driver_kind_from_string(const char *s) {
        return (DriverKind) string_table_lookup(driver_kind_table, ELEMENTSOF(driver_kind_table), s);
}

ReadAccess read_access_from_string(const char *s) {
        return (ReadAccess) string_table_lookup(read_access_table, ELEMENTSOF(read_access_table), s);
}

const char *upstream_kind_to_string(UpstreamKind k) {
        if (k < 0 || k >= _UPSTREAM_KIND_MAX)
                return NULL;
        return upstream_kind_table[k];
}

static const char *const upstream_auth_table[_UPSTREAM_AUTH_MAX] = {
        [UPSTREAM_AUTH_TOKEN] = "token",
        [UPSTREAM_AUTH_KEYSTONE] = "keystone",
};

UpstreamAuth upstream_auth_from_string(const char *s) {
        return (UpstreamAuth) string_table_lookup(upstream_auth_table, ELEMENTSOF(upstream_auth_table), s);
}

UpstreamKind upstream_kind_from_string(const char *s) {
        return (UpstreamKind) string_table_lookup(upstream_kind_table, ELEMENTSOF(upstream_kind_table), s);
}

uint64_t size_limit_resolve(const SizeLimit *l, uint64_t fs_size) {
        assert(l);

        if (l->permille == UINT64_MAX)
                return l->bytes;

        /* fs_size * permille / 1000 without overflowing for filesystems near 2^64 bytes. */
        uint64_t permille = MIN(l->permille, (uint64_t) 1000);
        return fs_size / 1000 * permille + fs_size % 1000 * permille / 1000;
}

/* Value parsers. Each writes *field only on success; on failure it returns negative errno and points
 * *ret_reason at a phrase for the error message. A NULL value is only passed to parsers of keys whose
 * default is "unset", i.e. the string ones. */
typedef int (*ConfigParseFunc)(const char *value, void *field, const char **ret_reason);

static int reason(const char **ret_reason, const char *why, int r) {
        *ret_reason = why;
        return r;
}

static int config_parse_bool(const char *value, void *field, const char **ret_reason) {
        bool b;

        assert(value);

        if (parse_boolean(value, &b) < 0)
                return reason(ret_reason, "invalid boolean (expected yes or no)", -EINVAL);

        *(bool *) field = b;
        return 0;
}

static int config_parse_size_limit(const char *value, void *field, const char **ret_reason) {
        SizeLimit l;
        int r;

        assert(value);

        r = parse_size_or_percent(value, &l.bytes, &l.permille);
        if (r == -ERANGE)
                return reason(ret_reason, "size out of range (at most 100%, or less than 16E bytes)", r);
        if (r < 0)
                return reason(ret_reason, "invalid size", r);

        *(SizeLimit *) field = l;
        return 0;
}

static int config_parse_sec(const char *value, void *field, const char **ret_reason) {
        usec_t t;
        int r;

        assert(value);

        r = parse_timespan(value, USEC_PER_SEC, &t);
        if (r == -ERANGE)
                return reason(ret_reason, "time span out of range", r);
        if (r < 0)
                return reason(ret_reason, "invalid time span", r);

        *(usec_t *) field = t;
        return 0;
}

/* ExitOnIdleSec=0 and FreeSpaceCheckSec=0 read naturally as "don't", so they mean the same as "infinity". */
static int config_parse_idle_sec(const char *value, void *field, const char **ret_reason) {
        usec_t t;
        int r;

        r = config_parse_sec(value, &t, ret_reason);
        if (r < 0)
                return r;

        *(usec_t *) field = t == 0 ? USEC_INFINITY : t;
        return 0;
}

/* The bounds of the retry backoff: 0 would retry a failing upstream in a busy loop. */
static int config_parse_positive_sec(const char *value, void *field, const char **ret_reason) {
        usec_t t;
        int r;

        r = config_parse_sec(value, &t, ret_reason);
        if (r < 0)
                return r;
        if (t == 0)
                return reason(ret_reason, "must be more than 0", -ERANGE);

        *(usec_t *) field = t;
        return 0;
}

static int config_parse_driver(const char *value, void *field, const char **ret_reason) {
        DriverKind k;

        k = driver_kind_from_string(value);
        if (k < 0)
                return reason(ret_reason, "unknown driver (expected sqlite or xattr)", -EINVAL);

        *(DriverKind *) field = k;
        return 0;
}

static int config_parse_upstream(const char *value, void *field, const char **ret_reason) {
        UpstreamKind k;

        k = upstream_kind_from_string(value);
        if (k < 0)
                return reason(ret_reason, "unknown upstream kind (expected generic or glance)", -EINVAL);

        *(UpstreamKind *) field = k;
        return 0;
}

static int config_parse_auth(const char *value, void *field, const char **ret_reason) {
        UpstreamAuth a = upstream_auth_from_string(value);
        if (a < 0)
                return reason(ret_reason, "unknown authentication (expected token or keystone)", -EINVAL);

        *(UpstreamAuth *) field = a;
        return 0;
}

/* Interface=: the catalog's three interfaces. */
static int config_parse_interface(const char *value, void *field, const char **ret_reason) {
        if (!streq(value, "public") && !streq(value, "internal") && !streq(value, "admin"))
                return reason(ret_reason, "unknown interface (expected public, internal or admin)", -EINVAL);
        if (free_and_strdup(field, value) < 0)
                return reason(ret_reason, "out of memory", -ENOMEM);
        return 0;
}

static bool string_has_cntrl_or_space(const char *s);

/* Region=: a name as Keystone has it; unset matches any region. */
static int config_parse_region(const char *value, void *field, const char **ret_reason) {
        if (value && string_has_cntrl_or_space(value))
                return reason(ret_reason, "a region name has no spaces or control characters", -EINVAL);
        if (free_and_strdup(field, value) < 0)
                return reason(ret_reason, "out of memory", -ENOMEM);
        return 0;
}

static int config_parse_read_access(const char *value, void *field, const char **ret_reason) {
        ReadAccess a;

        a = read_access_from_string(value);
        if (a < 0)
                return reason(ret_reason, "unknown read access (expected auto, upstream, token or open)", -EINVAL);

        *(ReadAccess *) field = a;
        return 0;
}

static int config_parse_unsigned(const char *value, unsigned min, unsigned max, const char *range_reason,
                                 void *field, const char **ret_reason) {
        unsigned u;
        int r;

        assert(value);

        r = parse_unsigned(value, min, max, &u);
        if (r == -ERANGE)
                return reason(ret_reason, range_reason, r);
        if (r < 0)
                return reason(ret_reason, "invalid number", r);

        *(unsigned *) field = u;
        return 0;
}

static int config_parse_fetches(const char *value, void *field, const char **ret_reason) {
        return config_parse_unsigned(value, 1, 64, "number out of range (1-64)", field, ret_reason);
}

static int config_parse_connections(const char *value, void *field, const char **ret_reason) {
        return config_parse_unsigned(value, 1, 65535, "number out of range (1-65535)", field, ret_reason);
}

static int config_parse_connections_per_ip(const char *value, void *field, const char **ret_reason) {
        return config_parse_unsigned(value, 0, 65535, "number out of range (0-65535, 0: no limit)", field, ret_reason);
}

static int config_parse_fills_per_ip(const char *value, void *field, const char **ret_reason) {
        return config_parse_unsigned(value, 1, 64, "number out of range (1-64)", field, ret_reason);
}

static int config_parse_upstream_rate(const char *value, void *field, const char **ret_reason) {
        return config_parse_unsigned(value, 0, 100000, "number out of range (0-100000)", field, ret_reason);
}

static int config_parse_upstream_burst(const char *value, void *field, const char **ret_reason) {
        return config_parse_unsigned(value, 1, 1000000, "number out of range (1-1000000)", field, ret_reason);
}

static int config_parse_trusted_proxies(const char *value, void *field, const char **ret_reason) {
        if (value && parse_ip_prefix_list(value, NULL) < 0)
                return reason(ret_reason, "expected IP addresses or networks (192.0.2.1, 10.0.0.0/8, ::1, fd00::/8)",
                              -EINVAL);
        if (free_and_strdup(field, value) < 0)
                return reason(ret_reason, "out of memory", -ENOMEM);
        return 0;
}

static int config_parse_replicas(const char *value, void *field, const char **ret_reason) {
        return config_parse_unsigned(value, 1, 16, "number out of range (1-16)", field, ret_reason);
}

/* 0 would serve no peer at all; past 64 the tree is as flat as the owner serving everyone. */
static int config_parse_fanout(const char *value, void *field, const char **ret_reason) {
        return config_parse_unsigned(value, 1, 64, "number out of range (1-64)", field, ret_reason);
}

/* 0 would silence the log as AccessLog=no does, only less plainly. */
static int config_parse_access_log_burst(const char *value, void *field, const char **ret_reason) {
        return config_parse_unsigned(value, 1, 1000000, "number out of range (1-1000000)", field, ret_reason);
}

static bool string_has_cntrl_or_space(const char *s) {
        for (const char *p = s; *p; p++)
                if ((unsigned char) *p <= ' ' || *p == 0x7f)
                        return true;
        return false;
}

static int config_parse_path(const char *value, void *field, const char **ret_reason) {
        if (value && value[0] != '/')
                return reason(ret_reason, "not an absolute path", -EINVAL);

        if (free_and_strdup(field, value) < 0)
                return reason(ret_reason, "out of memory", -ENOMEM);
        return 0;
}

static bool url_has_scheme(const char *url, const char *scheme) {
        size_t n = strlen(scheme);

        /* Something must follow the scheme: "https://" alone names nothing. */
        return strncasecmp(url, scheme, n) == 0 && url[n] != 0;
}

static bool url_is_http(const char *url) {
        return url_has_scheme(url, "http://") || url_has_scheme(url, "https://");
}

/* Only what holds for both kinds is checked here; whether {id} is needed or file:// is allowed
 * depends on Kind=, which may be set later or in another file (see config_verify()). */
static int config_parse_url(const char *value, void *field, const char **ret_reason) {
        if (value) {
                if (!url_is_http(value) && !url_has_scheme(value, "file://"))
                        return reason(ret_reason, "URL must start with http://, https:// or file://",
                                      -EINVAL);
                if (string_has_cntrl_or_space(value))
                        return reason(ret_reason, "URL must not contain spaces or control characters",
                                      -EINVAL);
        }

        if (free_and_strdup(field, value) < 0)
                return reason(ret_reason, "out of memory", -ENOMEM);
        return 0;
}

/* RFC 1123 host names: dot-separated labels of letters, digits and '-', no label starting or ending
 * with '-'. A trailing dot (fully qualified) is fine. */
static bool hostname_is_valid(const char *s, size_t n) {
        size_t label = 0;

        if (n == 0 || n > 253)
                return false;

        for (size_t i = 0; i < n; i++) {
                char c = s[i];

                if (c == '.') {
                        if (label == 0 || s[i - 1] == '-')
                                return false;
                        label = 0;
                        continue;
                }

                if (!g_ascii_isalnum(c) && c != '-')
                        return false;
                if (c == '-' && label == 0)
                        return false;
                if (++label > 63)
                        return false;
        }

        return s[n - 1] != '-';
}

static bool listen_address_is_valid(const char *s) {
        char host[256];
        const char *colon;
        unsigned port;
        size_t n;

        if (s[0] == '[') {
                const char *close = strchr(s, ']');
                if (!close || close[1] != ':')
                        return false;

                n = (size_t) (close - s - 1);
                if (n == 0 || n >= sizeof(host))
                        return false;
                memcpy(host, s + 1, n);
                host[n] = 0;

                /* A link-local address may carry its interface: "[fe80::1%eth0]". */
                char *zone = strchr(host, '%');
                if (zone) {
                        *zone++ = 0;
                        if (isempty(zone) || strlen(zone) >= 16 || strchr(zone, '/') ||
                            string_has_cntrl_or_space(zone))
                                return false;
                }

                struct in6_addr a6;
                if (inet_pton(AF_INET6, host, &a6) != 1)
                        return false;
                colon = close + 1;
        } else {
                colon = strrchr(s, ':');
                if (!colon)
                        return false;

                n = (size_t) (colon - s);
                if (n == 0 || n >= sizeof(host))
                        return false;
                memcpy(host, s, n);
                host[n] = 0;

                /* Digits and dots only is meant as an IPv4 address, so "300.1.1.1" must not pass as a
                 * host name. A colon left in the host is an IPv6 address without brackets, which is
                 * ambiguous with the port. */
                if (strspn(host, "0123456789.") == n) {
                        struct in_addr a4;
                        if (inet_pton(AF_INET, host, &a4) != 1)
                                return false;
                } else if (!hostname_is_valid(host, n))
                        return false;
        }

        /* parse_unsigned() tolerates surrounding space; a listen address has none. */
        if (!g_ascii_isdigit(colon[1]) || string_has_cntrl_or_space(colon + 1))
                return false;

        return parse_unsigned(colon + 1, 1, 65535, &port) >= 0;
}

/* Peers=: URLs separated by spaces, each http:// or https:// with nothing after the authority but an
 * optional "/" (peers serve /images/<id> at their root). */
static int config_parse_peers(const char *value, void *field, const char **ret_reason) {
        _cleanup_(g_strfreevp) char **words = NULL;

        if (value) {
                words = g_strsplit_set(value, " \t", -1);
                for (char **w = words; *w; w++) {
                        if (isempty(*w))
                                continue;
                        if (!url_is_http(*w))
                                return reason(ret_reason, "every peer must be an http:// or https:// URL", -EINVAL);
                        const char *authority = strstr(*w, "://") + 3, *slash = strchr(authority, '/');
                        if (slash && slash[1] != 0)
                                return reason(ret_reason, "a peer URL names a node, not a path (http://HOST:PORT)",
                                              -EINVAL);
                        if (string_has_cntrl_or_space(*w))
                                return reason(ret_reason, "URL must not contain control characters", -EINVAL);
                }
        }

        if (free_and_strdup(field, value) < 0)
                return reason(ret_reason, "out of memory", -ENOMEM);
        return 0;
}

/* Self=: one URL of the same form. */
static int config_parse_self(const char *value, void *field, const char **ret_reason) {
        if (value && strpbrk(value, " \t"))
                return reason(ret_reason, "one URL, this node's", -EINVAL);
        return config_parse_peers(value, field, ret_reason);
}

static int config_parse_listen(const char *value, void *field, const char **ret_reason) {
        assert(value);

        if (!listen_address_is_valid(value))
                return reason(ret_reason,
                              "invalid listen address (expected HOST:PORT or [IPV6]:PORT, port 1-65535)",
                              -EINVAL);

        if (free_and_strdup(field, value) < 0)
                return reason(ret_reason, "out of memory", -ENOMEM);
        return 0;
}

/* The one table of keys. Defaults are kept here as text and put in place by the same parsers that read
 * the files, so config_init() and an empty "Key=" (reset to default) cannot drift apart. A NULL default
 * means "unset" and is only used for string fields. */
typedef struct ConfigKey {
        const char *section;
        const char *key;
        ConfigParseFunc parse;
        size_t offset;
        const char *default_value;
} ConfigKey;

#define KEY(s, k, p, f, d) { s, k, p, offsetof(Config, f), d }

static const ConfigKey config_keys[] = {
        KEY("Cache",    "Directory",           config_parse_path,        directory,             NULL),
        KEY("Cache",    "Driver",              config_parse_driver,      driver,                "sqlite"),
        KEY("Cache",    "MaxSize",             config_parse_size_limit,  max_size,              "10G"),
        KEY("Cache",    "EnforceMaxSize",      config_parse_bool,        enforce_max_size,      "yes"),
        KEY("Cache",    "KeepFree",            config_parse_size_limit,  keep_free,             "10%"),
        KEY("Cache",    "StallTimeSec",        config_parse_sec,         stall_time,            "24h"),
        KEY("Cache",    "FreeSpaceCheckSec",   config_parse_idle_sec,    free_space_check,      "10s"),
        KEY("Cache",    "PrefetchOnQueue",     config_parse_bool,        prefetch_on_queue,     "yes"),
        KEY("Upstream", "Kind",                config_parse_upstream,    upstream_kind,         "generic"),
        KEY("Upstream", "URL",                 config_parse_url,         upstream_url,          NULL),
        KEY("Upstream", "Auth",                config_parse_auth,        upstream_auth,         "token"),
        KEY("Upstream", "TokenFile",           config_parse_path,        token_file,            NULL),
        KEY("Upstream", "AuthURL",             config_parse_url,         auth_url,              NULL),
        KEY("Upstream", "CredentialsFile",     config_parse_path,        credentials_file,      NULL),
        KEY("Upstream", "Interface",           config_parse_interface,   endpoint_interface,    "public"),
        KEY("Upstream", "Region",              config_parse_region,      endpoint_region,       NULL),
        KEY("Upstream", "CAFile",              config_parse_path,        ca_file,               NULL),
        KEY("Upstream", "MaxParallelFetches",  config_parse_fetches,     max_parallel_fetches,  "4"),
        KEY("Upstream", "ConnectTimeoutSec",   config_parse_sec,         connect_timeout,       "30s"),
        KEY("Upstream", "LowSpeedTimeoutSec",  config_parse_sec,         low_speed_timeout,     "60s"),
        KEY("Upstream", "NotFoundCacheSec",    config_parse_sec,         not_found_cache,       "30s"),
        KEY("Upstream", "RetryInitialSec",     config_parse_positive_sec, retry_initial,        "30s"),
        KEY("Upstream", "RetryMaxSec",         config_parse_positive_sec, retry_max,            "1h"),
        KEY("HTTP",     "Listen",              config_parse_listen,      listen,
            "127.0.0.1:9393"),
        KEY("HTTP",     "ManagementAPI",       config_parse_bool,        management_api,        "no"),
        KEY("HTTP",     "ManagementTokenFile", config_parse_path,        management_token_file, NULL),
        KEY("HTTP",     "MaxConnections",      config_parse_connections, max_connections,       "1024"),
        KEY("HTTP",     "MaxConnectionsPerIP", config_parse_connections_per_ip, max_connections_per_ip, "32"),
        KEY("HTTP",     "HeaderTimeoutSec",    config_parse_sec,         header_timeout,        "10s"),
        KEY("HTTP",     "MaxFetchesPerIP",     config_parse_fills_per_ip, max_fills_per_ip,     "4"),
        KEY("HTTP",     "UpstreamRequestsPerIP", config_parse_upstream_rate, upstream_requests_per_ip, "20"),
        KEY("HTTP",     "UpstreamBurstPerIP",  config_parse_upstream_burst, upstream_burst_per_ip, "200"),
        KEY("HTTP",     "TrustedProxies",      config_parse_trusted_proxies, trusted_proxies,   NULL),
        KEY("HTTP",     "ReadAccess",          config_parse_read_access, read_access,           "auto"),
        KEY("HTTP",     "ReadTokenFile",       config_parse_path,        read_token_file,       NULL),
        KEY("HTTP",     "AcknowledgeOpenReadAccess", config_parse_bool,  acknowledge_open_read_access, "no"),
        KEY("HTTP",     "ReadAccessAllowCacheSec", config_parse_sec,     read_access_allow_cache, "60s"),
        KEY("HTTP",     "ReadAccessDenyCacheSec", config_parse_sec,      read_access_deny_cache, "10s"),
        KEY("HTTP",     "PassThrough",         config_parse_bool,        pass_through,          "yes"),
        KEY("HTTP",     "PublicURL",           config_parse_url,         public_url,            NULL),
        KEY("HTTP",     "IdleTimeoutSec",      config_parse_positive_sec, idle_timeout,         "60s"),
        KEY("HTTP",     "AccessLog",           config_parse_bool,        access_log,            "yes"),
        KEY("HTTP",     "AccessLogRateLimitIntervalSec", config_parse_positive_sec, access_log_interval, "1s"),
        KEY("HTTP",     "AccessLogRateLimitBurst", config_parse_access_log_burst, access_log_burst, "1000"),
        KEY("Fleet",    "Peers",               config_parse_peers,       fleet_peers,           NULL),
        KEY("Fleet",    "Self",                config_parse_self,        fleet_self,            NULL),
        KEY("Fleet",    "PeerTokenFile",       config_parse_path,        peer_token_file,       NULL),
        KEY("Fleet",    "Replicas",            config_parse_replicas,    fleet_replicas,        "2"),
        KEY("Fleet",    "FanOut",              config_parse_fanout,      fleet_fanout,          "2"),
        KEY("Fleet",    "PeerTimeoutSec",      config_parse_positive_sec, peer_timeout,         "5s"),
        KEY("Fleet",    "PeerResolveSec",      config_parse_positive_sec, peer_resolve_interval, "60s"),
        KEY("Daemon",   "ExitOnIdleSec",       config_parse_idle_sec,    exit_on_idle,          "60s"),
};

static const ConfigKey *config_key_find(const char *section, const char *key) {
        for (size_t i = 0; i < ELEMENTSOF(config_keys); i++)
                if (streq(config_keys[i].section, section) && streq(config_keys[i].key, key))
                        return config_keys + i;
        return NULL;
}

static bool config_section_known(const char *section) {
        for (size_t i = 0; i < ELEMENTSOF(config_keys); i++)
                if (streq(config_keys[i].section, section))
                        return true;
        return false;
}

static int config_key_apply(const ConfigKey *k, Config *c, const char *value, const char **ret_reason) {
        return k->parse(value, (uint8_t *) c + k->offset, ret_reason);
}

static void free_and_null(char **p) {
        free(*p);
        *p = NULL;
}

/* Leaves c as config_init() would before the defaults: calling it twice is fine. */
void config_done(Config *c) {
        assert(c);

        free_and_null(&c->directory);
        free_and_null(&c->upstream_url);
        free_and_null(&c->token_file);
        free_and_null(&c->auth_url);
        free_and_null(&c->credentials_file);
        free_and_null(&c->endpoint_interface);
        free_and_null(&c->endpoint_region);
        free_and_null(&c->ca_file);
        free_and_null(&c->listen);
        free_and_null(&c->management_token_file);
        free_and_null(&c->read_token_file);
        free_and_null(&c->trusted_proxies);
        free_and_null(&c->public_url);
        free_and_null(&c->fleet_peers);
        free_and_null(&c->fleet_self);
        free_and_null(&c->peer_token_file);
}

int config_init(Config *c) {
        assert(c);

        *c = (Config) {};

        for (size_t i = 0; i < ELEMENTSOF(config_keys); i++) {
                const char *why = NULL;
                int r;

                r = config_key_apply(config_keys + i, c, config_keys[i].default_value, &why);
                if (r < 0) {
                        /* The defaults are ours; only allocation can fail here. */
                        assert(r == -ENOMEM);
                        config_done(c);
                        return r;
                }
        }

        return 0;
}

/* Deep copy, so that config_load() can work on a scratch copy and leave the caller's Config untouched
 * when a file turns out to be bad. */
static int config_copy(const Config *src, Config *ret) {
        Config t = *src;

        t.directory = t.upstream_url = t.token_file = t.ca_file = t.listen = t.management_token_file = NULL;
        t.read_token_file = t.trusted_proxies = t.public_url = t.fleet_peers = t.fleet_self = t.peer_token_file = NULL;
        t.auth_url = t.credentials_file = t.endpoint_interface = t.endpoint_region = NULL;

        if (free_and_strdup(&t.directory, src->directory) < 0 ||
            free_and_strdup(&t.upstream_url, src->upstream_url) < 0 ||
            free_and_strdup(&t.token_file, src->token_file) < 0 ||
            free_and_strdup(&t.auth_url, src->auth_url) < 0 ||
            free_and_strdup(&t.credentials_file, src->credentials_file) < 0 ||
            free_and_strdup(&t.endpoint_interface, src->endpoint_interface) < 0 ||
            free_and_strdup(&t.endpoint_region, src->endpoint_region) < 0 ||
            free_and_strdup(&t.ca_file, src->ca_file) < 0 ||
            free_and_strdup(&t.listen, src->listen) < 0 ||
            free_and_strdup(&t.management_token_file, src->management_token_file) < 0 ||
            free_and_strdup(&t.read_token_file, src->read_token_file) < 0 ||
            free_and_strdup(&t.trusted_proxies, src->trusted_proxies) < 0 ||
            free_and_strdup(&t.public_url, src->public_url) < 0 ||
            free_and_strdup(&t.fleet_peers, src->fleet_peers) < 0 ||
            free_and_strdup(&t.fleet_self, src->fleet_self) < 0 ||
            free_and_strdup(&t.peer_token_file, src->peer_token_file) < 0) {
                config_done(&t);
                return -ENOMEM;
        }

        *ret = t;
        return 0;
}

_printf_(3, 4)
static int config_error(char **ret_error, int r, const char *fmt, ...) {
        va_list ap;

        if (!ret_error)
                return r;

        va_start(ap, fmt);
        if (vasprintf(ret_error, fmt, ap) < 0)
                *ret_error = NULL;
        va_end(ap);

        return r;
}

_printf_(3, 4)
static void config_warn(ConfigWarnFunc warn, void *userdata, const char *fmt, ...) {
        _cleanup_(freep) char *msg = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0)
                return;  /* a warning is not worth failing over */

        if (warn)
                warn(msg, userdata);
        else
                fprintf(stderr, "%s\n", msg);
}

/* GKeyFile keeps no line numbers, so for messages we find the line again in the raw text: the header of
 * [section] when key is NULL (first occurrence), else the last "key=" inside any [section] block (the
 * last one is what GKeyFile returns). It follows GKeyFile's reading of a line: leading space ignored,
 * '#' comments, the group name between '[' and the last ']', the key up to '=' with trailing space
 * dropped. This only locates; GKeyFile has already parsed the file. Returns 0 when not found. */
static unsigned config_locate_line(const char *data, size_t size, const char *section, const char *key) {
        bool in_section = false;
        unsigned line = 0, found = 0;
        size_t section_len = strlen(section);
        size_t key_len = key ? strlen(key) : 0;

        for (size_t pos = 0; pos < size; ) {
                const char *start = data + pos, *end;
                const char *nl = memchr(start, '\n', size - pos);

                end = nl ?: data + size;
                pos = (size_t) (end - data) + 1;
                line++;

                while (start < end && g_ascii_isspace(*start))
                        start++;
                while (end > start && g_ascii_isspace(end[-1]))
                        end--;

                if (start == end || *start == '#')
                        continue;

                if (*start == '[') {
                        const char *close = end;

                        while (close > start && close[-1] != ']')
                                close--;
                        if (close == start)
                                continue;
                        close--;  /* at the ']' */

                        in_section = (size_t) (close - start - 1) == section_len &&
                                     memcmp(start + 1, section, section_len) == 0;
                        if (in_section && !key)
                                return line;
                        continue;
                }

                if (!in_section || !key)
                        continue;

                const char *eq = memchr(start, '=', (size_t) (end - start));
                if (!eq)
                        continue;
                while (eq > start && g_ascii_isspace(eq[-1]))
                        eq--;
                if ((size_t) (eq - start) == key_len && memcmp(start, key, key_len) == 0)
                        found = line;
        }

        return found;
}

static int read_config_file(const char *path, char **ret, size_t *ret_size) {
        _cleanup_(closep) int fd = -EBADF;
        _cleanup_(freep) char *buf = NULL;
        size_t size = 0, allocated = 0;
        struct stat st;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISDIR(st.st_mode))
                return -EISDIR;

        for (;;) {
                ssize_t k;

                if (size == allocated) {
                        char *p;

                        if (allocated > CONFIG_FILE_SIZE_MAX)
                                return -EFBIG;
                        allocated = allocated ? allocated * 2 : 4096;
                        p = realloc(buf, allocated + 1);
                        if (!p)
                                return -ENOMEM;
                        buf = p;
                }

                k = read(fd, buf + size, allocated - size);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                size += (size_t) k;
        }

        if (size > CONFIG_FILE_SIZE_MAX)
                return -EFBIG;

        buf[size] = 0;  /* the loop always allocates: there is room for the NUL */

        *ret = TAKE_PTR(buf);
        *ret_size = size;
        return 0;
}

/* Where each key was last set, for errors found only once all files are read. */
typedef struct ConfigOrigin {
        const char *file;
        unsigned line;
} ConfigOrigin;

static int config_load_file(
                Config *c,
                const char *path,
                bool missing_ok,
                ConfigOrigin *origins,
                ConfigWarnFunc warn,
                void *userdata,
                char **ret_error) {

        _cleanup_(g_key_file_unrefp) GKeyFile *kf = NULL;
        _cleanup_(g_error_freep) GError *error = NULL;
        _cleanup_(g_strfreevp) char **groups = NULL;
        _cleanup_(freep) char *data = NULL;
        size_t size = 0;
        int r;

        r = read_config_file(path, &data, &size);
        if (r == -ENOENT && missing_ok)
                return 0;
        if (r < 0)
                return config_error(ret_error, r, "%s: failed to read: %s", path, strerror(-r));

        kf = g_key_file_new();
        /* KEEP_TRANSLATIONS so that "Key[de]=" shows up as an unknown key rather than vanishing. */
        if (!g_key_file_load_from_data(kf, data, size, G_KEY_FILE_KEEP_TRANSLATIONS, &error))
                return config_error(ret_error, -EINVAL, "%s: %s", path, error->message);

        groups = g_key_file_get_groups(kf, NULL);
        for (size_t g = 0; groups && groups[g]; g++) {
                const char *section = groups[g];
                _cleanup_(g_strfreevp) char **keys = NULL;

                if (!config_section_known(section)) {
                        config_warn(warn, userdata, "%s:%u: Unknown section [%s], ignoring.",
                                    path, config_locate_line(data, size, section, NULL), section);
                        continue;
                }

                keys = g_key_file_get_keys(kf, section, NULL, NULL);
                for (size_t i = 0; keys && keys[i]; i++) {
                        _cleanup_(g_freep) char *raw = NULL;
                        const char *why = "invalid value", *value;
                        const ConfigKey *k;
                        unsigned line;
                        bool dup = false;

                        /* GKeyFile lists a key once per occurrence but returns only the last value;
                         * handle each key once. */
                        for (size_t j = 0; j < i; j++)
                                if (streq(keys[j], keys[i]))
                                        dup = true;
                        if (dup)
                                continue;

                        line = config_locate_line(data, size, section, keys[i]);

                        k = config_key_find(section, keys[i]);
                        if (!k) {
                                config_warn(warn, userdata,
                                            "%s:%u: Unknown key %s= in section [%s], ignoring.",
                                            path, line, keys[i], section);
                                continue;
                        }

                        /* The raw value: GKeyFile's string unescaping ("\s", "\\") has no business in
                         * paths and URLs. */
                        raw = g_key_file_get_value(kf, section, keys[i], NULL);
                        if (!raw)
                                continue;  /* cannot happen for a key GKeyFile just listed */
                        g_strstrip(raw);

                        /* "Key=" puts the default back, so a drop-in can undo what an earlier file set. */
                        value = isempty(raw) ? k->default_value : raw;

                        r = config_key_apply(k, c, value, &why);
                        if (r < 0)
                                return config_error(ret_error, r, "%s:%u: [%s] %s=%s: %s",
                                                    path, line, section, keys[i], raw, why);

                        origins[k - config_keys] = (ConfigOrigin) { .file = path, .line = line };
                }
        }

        return 0;
}

static gint compare_strings(gconstpointer a, gconstpointer b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/* The *.conf files in dir, sorted by name, as full paths. A missing directory is the usual case.
 * Hidden files and anything that is not a regular file (directories, /dev/null symlinks) are
 * skipped. */
static int config_list_dropins(const char *dir, GPtrArray **ret, char **ret_error) {
        _cleanup_(g_ptr_array_unrefp) GPtrArray *files = NULL;
        _cleanup_(closedirp) DIR *d = NULL;
        struct dirent *de;

        files = g_ptr_array_new_with_free_func(g_free);

        d = opendir(dir);
        if (!d) {
                if (errno != ENOENT)
                        return config_error(ret_error, -errno, "%s: failed to open directory: %s", dir,
                                            strerror(errno));

                *ret = TAKE_PTR(files);
                return 0;
        }

        for (;;) {
                struct stat st;
                char *p;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                return config_error(ret_error, -errno, "%s: failed to read directory: %s",
                                                    dir, strerror(errno));
                        break;
                }

                if (de->d_name[0] == '.' || !g_str_has_suffix(de->d_name, ".conf"))
                        continue;

                p = g_build_filename(dir, de->d_name, NULL);
                if (stat(p, &st) < 0 || !S_ISREG(st.st_mode)) {
                        g_free(p);
                        continue;
                }

                if (files->len >= CONFIG_DROPINS_MAX) {
                        g_free(p);
                        return config_error(ret_error, -E2BIG, "%s: more than %u drop-in files.",
                                            dir, CONFIG_DROPINS_MAX);
                }

                g_ptr_array_add(files, p);
        }

        g_ptr_array_sort(files, compare_strings);

        *ret = TAKE_PTR(files);
        return 0;
}

/* Auth=keystone needs Kind=glance, AuthURL= (http or https) and CredentialsFile=. */
static int config_verify_auth(const Config *c, char **ret_error) {
        if (c->upstream_auth != UPSTREAM_AUTH_KEYSTONE)
                return 0;
        if (c->upstream_kind != UPSTREAM_GLANCE)
                return config_error(ret_error, -EINVAL, "[Upstream] Auth=keystone needs Kind=glance");
        if (!c->auth_url || !url_is_http(c->auth_url))
                return config_error(ret_error, -EINVAL, "[Upstream] Auth=keystone needs AuthURL=, an http:// or https:// "
                                    "Keystone endpoint");
        if (!c->credentials_file)
                return config_error(ret_error, -EINVAL, "[Upstream] Auth=keystone needs CredentialsFile=");
        if (c->token_file)
                return config_error(ret_error, -EINVAL, "[Upstream] TokenFile= and Auth=keystone exclude each other");
        return 0;
}

/* Checks that need the whole configuration: how URL= must look depends on Kind=. */
static int config_verify(Config *c, const ConfigOrigin *origins, char **ret_error) {
        const ConfigKey *k = config_key_find("Upstream", "URL");
        const ConfigOrigin *o;
        const char *why = NULL;

        assert(k);
        o = origins + (k - config_keys);

        int r = config_verify_auth(c, ret_error);
        if (r < 0)
                return r;
        if (!c->upstream_url)
                return 0;

        switch (c->upstream_kind) {

        case UPSTREAM_GENERIC:
                if (!strstr(c->upstream_url, "{id}"))
                        why = "Kind=generic needs a URL template containing {id}";
                break;

        case UPSTREAM_GLANCE:
                if (!url_is_http(c->upstream_url))
                        why = "Kind=glance needs an http:// or https:// endpoint";
                else {
                        /* The daemon appends "/v2/images/…"; a trailing slash would double it. */
                        size_t n = strlen(c->upstream_url);
                        while (n > 0 && c->upstream_url[n - 1] == '/')
                                c->upstream_url[--n] = 0;
                }
                break;

        default:
                assert(false);
        }

        if (why) {
                if (o->file)
                        return config_error(ret_error, -EINVAL, "%s:%u: [Upstream] URL=%s: %s",
                                            o->file, o->line, c->upstream_url, why);
                return config_error(ret_error, -EINVAL, "[Upstream] URL=%s: %s", c->upstream_url, why);
        }

        return 0;
}

int config_load(Config *c, const char *path, ConfigWarnFunc warn, void *userdata, char **ret_error) {
        _cleanup_(g_ptr_array_unrefp) GPtrArray *dropins = NULL;
        _cleanup_(g_freep) char *dropin_dir = NULL;
        ConfigOrigin origins[ELEMENTSOF(config_keys)] = {};
        _cleanup_(config_done) Config t = {};
        int r;

        assert(c);
        assert(path);

        r = config_copy(c, &t);
        if (r < 0)
                return config_error(ret_error, r, "Out of memory.");

        r = config_load_file(&t, path, /* missing_ok= */ true, origins, warn, userdata, ret_error);
        if (r < 0)
                return r;

        dropin_dir = g_strconcat(path, ".d", NULL);
        r = config_list_dropins(dropin_dir, &dropins, ret_error);
        if (r < 0)
                return r;

        for (guint i = 0; i < dropins->len; i++) {
                /* missing_ok: a drop-in removed since we listed the directory is simply gone. */
                r = config_load_file(&t, dropins->pdata[i], /* missing_ok= */ true, origins, warn, userdata,
                                     ret_error);
                if (r < 0)
                        return r;
        }

        r = config_verify(&t, origins, ret_error);
        if (r < 0)
                return r;

        config_done(c);
        *c = t;
        t = (Config) {};
        return 0;
}
