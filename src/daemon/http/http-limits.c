/* SPDX-License-Identifier: MIT */
/* What keeps one HTTP client from hurting the others (http-limits.h): header deadlines, per-address
 * counts, ambiguous framing. */

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <glib.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "http-limits.h"
#include "log.h"

/* ---- header deadlines ----------------------------------------------------------------------------- */

struct HeaderDeadlines {
        sd_event_source *timer;        /* armed while the list is not empty, or with a deadline since met */
        bool armed;
        HeaderDeadline *head, *tail;   /* in the order of their deadlines */
};

/* Deadlines met in time are only unlinked: the timer is not touched for each connection, and finds the
 * list as it is when it fires. */
static void header_deadlines_arm(HeaderDeadlines *h) {
        int r;

        h->armed = h->head;
        if (!h->head) {
                (void) sd_event_source_set_enabled(h->timer, SD_EVENT_OFF);
                return;
        }
        r = sd_event_source_set_time(h->timer, h->head->at);
        if (r >= 0)
                r = sd_event_source_set_enabled(h->timer, SD_EVENT_ONESHOT);
        if (r < 0) {
                h->armed = false;
                log_warning_errno(r, "Failed to arm the header timer, ignoring: %m");
        }
}

static void header_deadline_unlink(HeaderDeadlines *h, HeaderDeadline *d) {
        if (d->prev)
                d->prev->next = d->next;
        else
                h->head = d->next;
        if (d->next)
                d->next->prev = d->prev;
        else
                h->tail = d->prev;
        *d = (HeaderDeadline) {};
}

static int header_deadlines_on_timer(sd_event_source *es, uint64_t usec, void *userdata) {
        HeaderDeadlines *h = userdata;

        while (h->head && h->head->at <= usec) {
                HeaderDeadline *d = h->head;
                const union MHD_ConnectionInfo *info;

                /* The connection is reading (not suspended), so MHD sees the hang-up at once and closes it;
                 * the owner stops the deadline when MHD tells it the connection is gone. */
                info = MHD_get_connection_info(d->connection, MHD_CONNECTION_INFO_CONNECTION_FD);
                if (info)
                        (void) shutdown(info->connect_fd, SHUT_RDWR);
                header_deadline_unlink(h, d);
        }
        header_deadlines_arm(h);
        return 0;
}

int header_deadlines_new(sd_event *event, HeaderDeadlines **ret) {
        HeaderDeadlines *h;
        int r;

        h = calloc(1, sizeof(HeaderDeadlines));
        if (!h)
                return -ENOMEM;
        /* A second of slack: the deadline is a defence, not a promise. */
        r = sd_event_add_time(event, &h->timer, CLOCK_MONOTONIC, 0, USEC_PER_SEC, header_deadlines_on_timer, h);
        if (r < 0) {
                free(h);
                return r;
        }
        (void) sd_event_source_set_enabled(h->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(h->timer, "http-header-deadline");
        *ret = h;
        return 0;
}

HeaderDeadlines *header_deadlines_free(HeaderDeadlines *h) {
        if (!h)
                return NULL;
        while (h->head)
                header_deadline_unlink(h, h->head);
        sd_event_source_disable_unref(h->timer);
        free(h);
        return NULL;
}

void header_deadline_start(HeaderDeadlines *h, HeaderDeadline *d, struct MHD_Connection *c, usec_t timeout) {
        if (d->at != 0 || timeout == 0 || timeout == USEC_INFINITY)
                return;

        *d = (HeaderDeadline) {
                .connection = c,
                .at = usec_add(now_usec(CLOCK_MONOTONIC), timeout),
                .prev = h->tail,
        };
        if (h->tail)
                h->tail->next = d;
        else
                h->head = d;
        h->tail = d;
        /* An armed timer fires no later than this deadline: the list only grows later ones. */
        if (!h->armed)
                header_deadlines_arm(h);
}

void header_deadline_stop(HeaderDeadlines *h, HeaderDeadline *d) {
        if (d->at != 0)
                header_deadline_unlink(h, d);
}

/* ---- ambiguous requests ----------------------------------------------------------------------------- */

typedef struct FramingHeaders {
        unsigned content_length;
        unsigned transfer_encoding;
        bool body;
} FramingHeaders;

static enum MHD_Result count_framing_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                            const char *value) {
        FramingHeaders *f = cls;

        if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
                f->content_length++;
                f->body = f->body || !streq_ptr(value, "0");
        } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
                f->transfer_encoding++;
                f->body = true;
        }
        return MHD_YES;
}

const char *http_request_framing(struct MHD_Connection *c, bool *ret_body) {
        FramingHeaders f = {};

        (void) MHD_get_connection_values(c, MHD_HEADER_KIND, count_framing_header, &f);
        *ret_body = f.body;
        if (f.content_length > 0 && f.transfer_encoding > 0)
                return "both Content-Length and Transfer-Encoding";
        if (f.content_length > 1)
                return "more than one Content-Length";
        return NULL;
}

/* ---- fills per client address ------------------------------------------------------------------------ */

struct PeerCounts {
        GHashTable *counts;   /* char* key → GUINT_TO_POINTER(n), entries with n > 0 only */
};

int peer_counts_new(PeerCounts **ret) {
        PeerCounts *p = calloc(1, sizeof(PeerCounts));
        if (!p)
                return -ENOMEM;
        p->counts = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
        *ret = p;
        return 0;
}

PeerCounts *peer_counts_free(PeerCounts *p) {
        if (!p)
                return NULL;
        g_hash_table_unref(p->counts);
        free(p);
        return NULL;
}

static const struct sockaddr *connection_address(struct MHD_Connection *c) {
        const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        return info ? info->client_addr : NULL;
}

bool peer_key(struct MHD_Connection *c, char key[static PEER_KEY_MAX]) {
        return sockaddr_key(connection_address(c), key);
}

bool sockaddr_key(const struct sockaddr *sa, char key[static PEER_KEY_MAX]) {
        if (!sa)
                return false;
        if (sa->sa_family == AF_INET)
                return inet_ntop(AF_INET, &((const struct sockaddr_in *) sa)->sin_addr, key, PEER_KEY_MAX);
        if (sa->sa_family == AF_INET6)
                return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *) sa)->sin6_addr, key, PEER_KEY_MAX);
        return false;
}

unsigned peer_counts_get(PeerCounts *p, const char *key) {
        return GPOINTER_TO_UINT(g_hash_table_lookup(p->counts, key));
}

void peer_counts_add(PeerCounts *p, const char *key, int delta) {
        unsigned n = peer_counts_get(p, key);

        assert(delta >= 0 || n >= (unsigned) -delta);
        n = (unsigned) ((int) n + delta);
        if (n == 0)
                g_hash_table_remove(p->counts, key);
        else
                g_hash_table_insert(p->counts, g_strdup(key), GUINT_TO_POINTER(n));
}

/* ---- the upstream cost of a client address --------------------------------------------------------- */

/* Buckets beyond this many are dropped once full (a full bucket is what an absent one means), or else
 * whichever the table yields: memory stays bounded however many addresses come. */
#define UPSTREAM_BUDGET_KEYS_MAX 65536U

typedef struct Bucket {
        double tokens;
        usec_t at;      /* when tokens was computed */
} Bucket;

struct UpstreamBudget {
        GHashTable *buckets;   /* char* key → Bucket* */
        unsigned rate, burst;  /* rate 0: no limit */
};

int upstream_budget_new(unsigned rate, unsigned burst, UpstreamBudget **ret) {
        UpstreamBudget *b = calloc(1, sizeof(UpstreamBudget));
        if (!b)
                return -ENOMEM;
        b->buckets = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
        upstream_budget_configure(b, rate, burst);
        *ret = b;
        return 0;
}

UpstreamBudget *upstream_budget_free(UpstreamBudget *b) {
        if (!b)
                return NULL;
        g_hash_table_unref(b->buckets);
        free(b);
        return NULL;
}

void upstream_budget_configure(UpstreamBudget *b, unsigned rate, unsigned burst) {
        b->rate = rate;
        b->burst = MAX(burst, 1U);
        g_hash_table_remove_all(b->buckets);
}

static double bucket_tokens(const UpstreamBudget *b, const Bucket *k, usec_t now) {
        double refill = now > k->at ? (double) (now - k->at) * b->rate / USEC_PER_SEC : 0;
        return MIN(k->tokens + refill, (double) b->burst);
}

static gboolean bucket_full(gpointer key, gpointer value, gpointer userdata) {
        const UpstreamBudget *b = ((void **) userdata)[0];
        usec_t now = *(usec_t *) ((void **) userdata)[1];
        return bucket_tokens(b, value, now) >= b->burst;
}

static void upstream_budget_make_room(UpstreamBudget *b, usec_t now) {
        GHashTableIter it;

        if (g_hash_table_size(b->buckets) < UPSTREAM_BUDGET_KEYS_MAX)
                return;
        (void) g_hash_table_foreach_remove(b->buckets, bucket_full, (void *[]) { b, &now });
        g_hash_table_iter_init(&it, b->buckets);
        while (g_hash_table_size(b->buckets) >= UPSTREAM_BUDGET_KEYS_MAX && g_hash_table_iter_next(&it, NULL, NULL))
                g_hash_table_iter_remove(&it);
}

bool upstream_budget_take(UpstreamBudget *b, const char *key, usec_t now, unsigned *ret_retry_after) {
        Bucket *k;
        double tokens;

        if (b->rate == 0)
                return true;
        k = g_hash_table_lookup(b->buckets, key);
        if (!k) {
                upstream_budget_make_room(b, now);
                k = g_new(Bucket, 1);
                *k = (Bucket) { .tokens = b->burst, .at = now };
                g_hash_table_insert(b->buckets, g_strdup(key), k);
        }
        tokens = bucket_tokens(b, k, now);
        k->at = now;
        if (tokens < 1) {
                k->tokens = tokens;
                if (ret_retry_after)
                        *ret_retry_after = (unsigned) ((1 - tokens) / b->rate) + 1;
                return false;
        }
        k->tokens = tokens - 1;
        return true;
}

/* ---- trusted proxies ------------------------------------------------------------------------------- */

int trusted_proxies_set(TrustedProxies *t, const char *list) {
        IpPrefix *prefixes = NULL;
        int n = parse_ip_prefix_list(list, &prefixes);

        if (n < 0)
                return n;
        free(t->prefixes);
        t->prefixes = prefixes;
        t->n = (size_t) n;
        return 0;
}

void trusted_proxies_done(TrustedProxies *t) {
        t->prefixes = mfree(t->prefixes);
        t->n = 0;
}

static bool trusted_proxies_contain_addr(const TrustedProxies *t, int family, const void *addr) {
        for (size_t i = 0; i < t->n; i++)
                if (ip_prefix_contains(&t->prefixes[i], family, addr))
                        return true;
        return false;
}

bool trusted_proxies_contain(const TrustedProxies *t, const struct sockaddr *sa) {
        if (!sa || t->n == 0)
                return false;
        if (sa->sa_family == AF_INET)
                return trusted_proxies_contain_addr(t, AF_INET, &((const struct sockaddr_in *) sa)->sin_addr);
        if (sa->sa_family == AF_INET6)
                return trusted_proxies_contain_addr(t, AF_INET6, &((const struct sockaddr_in6 *) sa)->sin6_addr);
        return false;
}

bool trusted_proxies_connection(const TrustedProxies *t, struct MHD_Connection *c) {
        return trusted_proxies_contain(t, connection_address(c));
}

/* One element of X-Forwarded-For, trimmed, as an address: its canonical text in key. */
static bool forwarded_element(const char *s, size_t n, int *ret_family, uint8_t addr[static 16],
                              char key[static PEER_KEY_MAX]) {
        char buf[INET6_ADDRSTRLEN];

        while (n > 0 && (*s == ' ' || *s == '\t'))
                s++, n--;
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
                n--;
        if (n == 0 || n >= sizeof(buf))
                return false;
        memcpy(buf, s, n);
        buf[n] = 0;
        if (inet_pton(AF_INET, buf, addr) == 1)
                *ret_family = AF_INET;
        else if (inet_pton(AF_INET6, buf, addr) == 1)
                *ret_family = AF_INET6;
        else
                return false;
        return inet_ntop(*ret_family, addr, key, PEER_KEY_MAX);
}

bool forwarded_client(const TrustedProxies *t, const char *xff, char key[static PEER_KEY_MAX]) {
        const char *end;

        if (!xff)
                return false;
        /* From the right: each proxy appends the address it saw. The first that is not one of ours is
         * the client; what stands left of it was written by whoever the client is, and proves nothing. */
        end = xff + strlen(xff);
        for (;;) {
                const char *start = end;
                uint8_t addr[16];
                int family;

                while (start > xff && start[-1] != ',')
                        start--;
                if (!forwarded_element(start, (size_t) (end - start), &family, addr, key))
                        return false;
                if (!trusted_proxies_contain_addr(t, family, addr) || start == xff)
                        return true;
                end = start - 1;
        }
}
