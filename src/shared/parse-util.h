/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

/* Parsers for the value syntaxes of imgcached.conf and the command line. All return 0 or -EINVAL (-ERANGE
 * on overflow) and write *ret only on success. */

/* "yes/no/true/false/on/off/1/0", any case. */
int parse_boolean(const char *s, bool *ret);

/* Bytes with an optional binary suffix: "4096", "512K", "10G", "1.5T", "10GiB", "10GB" (all powers of 1024). */
int parse_size(const char *s, uint64_t *ret);

/* A size or a percentage of something ("10%", "12.5%"): exactly one of *ret_bytes / *ret_permille is set,
 * the other is UINT64_MAX. Percentages are kept in per-mille (0..1000). */
int parse_size_or_percent(const char *s, uint64_t *ret_bytes, uint64_t *ret_permille);

/* systemd-style time spans: "60", "500ms", "30s", "30min", "24h", "2d", "1w", "1h 30min", "infinity".
 * A bare number is in default_unit µs (USEC_PER_SEC for …Sec= keys). */
int parse_timespan(const char *s, usec_t default_unit, usec_t *ret);

/* An unsigned integer in [min, max]. */
int parse_unsigned(const char *s, unsigned min, unsigned max, unsigned *ret);

/* An IP address or network: "192.0.2.7", "10.0.0.0/8", "::1", "fd00::/8" (a bare address is its own /32
 * or /128). Bits past the prefix must be 0. */
typedef struct IpPrefix {
        int family;          /* AF_INET or AF_INET6 */
        uint8_t addr[16];    /* network byte order; the first 4 for AF_INET */
        unsigned prefixlen;
} IpPrefix;

int parse_ip_prefix(const char *s, IpPrefix *ret);
/* Whether addr (4 or 16 bytes of family) lies in p. An IPv4-mapped IPv6 address is matched as IPv4. */
bool ip_prefix_contains(const IpPrefix *p, int family, const void *addr);
/* A space- or tab-separated list of parse_ip_prefix() (NULL or empty: none). Returns how many, or a
 * negative error; *ret (may be NULL to only validate) is an array the caller frees. */
int parse_ip_prefix_list(const char *s, IpPrefix **ret);

/* Human-friendly formatting, into buf: "1.5G", "512B"; "1h 30min", "250ms". Return buf. */
char *format_size(char *buf, size_t n, uint64_t bytes);
char *format_timespan(char *buf, size_t n, usec_t t);
#define FORMAT_SIZE_MAX 16
#define FORMAT_TIMESPAN_MAX 64
