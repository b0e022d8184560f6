/* SPDX-License-Identifier: MIT */
/* An HTTP exchange passed through to the upstream (upstream-exchange.h): curl on the daemon's CurlLoop,
 * with a bounded buffer each way and curl paused whenever one side is ahead of the other. */

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "log.h"
#include "upstream-exchange.h"

/* A bounded byte queue: what one side wrote and the other did not read yet. */
typedef struct ByteQueue {
        char *data;
        size_t start, end;  /* the bytes queued are data[start..end) */
} ByteQueue;

static size_t byte_queue_size(const ByteQueue *q) {
        return q->end - q->start;
}

static size_t byte_queue_push(ByteQueue *q, const void *p, size_t n) {
        if (!q->data && !(q->data = malloc(UPSTREAM_EXCHANGE_BUFFER)))
                return 0;
        if (q->start > 0 && UPSTREAM_EXCHANGE_BUFFER - q->end < n) {
                memmove(q->data, q->data + q->start, byte_queue_size(q));
                q->end -= q->start;
                q->start = 0;
        }
        n = MIN(n, UPSTREAM_EXCHANGE_BUFFER - q->end);
        memcpy(q->data + q->end, p, n);
        q->end += n;
        return n;
}

static size_t byte_queue_pop(ByteQueue *q, void *buf, size_t max) {
        size_t n = MIN(max, byte_queue_size(q));

        if (n == 0)
                return 0;  /* also before the first push, with no buffer yet */
        memcpy(buf, q->data + q->start, n);
        q->start += n;
        if (q->start == q->end)
                q->start = q->end = 0;
        return n;
}

static size_t byte_queue_room(const ByteQueue *q) {
        return UPSTREAM_EXCHANGE_BUFFER - byte_queue_size(q);
}

/* Each side is told of the other's progress in batches of this much (or at the end), not once per network
 * read of a few KiB: every such news resumes a connection or a transfer, a turn of the loop each. */
#define EXCHANGE_BATCH (UPSTREAM_EXCHANGE_BUFFER / 4)

struct UpstreamExchange {
        CurlLoop *loop;
        CURL *curl;
        CurlTask task;
        char *method, *target;
        struct curl_slist *headers;
        bool has_body;
        uint64_t body_size;
        void (*on_event)(UpstreamExchange *x, void *userdata);
        void *userdata;

        ByteQueue up;           /* the client's body, not yet taken by curl */
        bool up_end;            /* the client's body is complete */
        bool send_paused;       /* curl waits for more of it */

        long status;            /* of the final response (1xx are skipped); 0 until its status line */
        GPtrArray *head;        /* its header lines, "Name: value" */
        size_t head_size;
        bool has_head;          /* its empty line was seen */
        ByteQueue down;         /* its body, not yet read */
        bool recv_paused;       /* curl holds bytes that did not fit */

        bool ended;
        int error;
};

static void exchange_notify(UpstreamExchange *x) {
        x->on_event(x, x->userdata);
}

static void exchange_update_pause(UpstreamExchange *x) {
        if (!x->curl || x->ended)
                return;
        (void) curl_easy_pause(x->curl, (x->recv_paused ? CURLPAUSE_RECV : 0) | (x->send_paused ? CURLPAUSE_SEND : 0));
        /* Unpausing may have let the transfer finish: deliver that now, not at curl's next event. */
        curl_loop_collect(x->loop);
}

static size_t on_exchange_header(char *p, size_t size, size_t n, void *userdata) {
        UpstreamExchange *x = userdata;
        size_t len = size * n;

        x->head_size += len;
        if (x->head_size > UPSTREAM_EXCHANGE_HEAD_MAX) {
                x->error = -EMSGSIZE;
                return 0;  /* aborts */
        }
        while (len > 0 && (p[len - 1] == '\n' || p[len - 1] == '\r'))
                len--;
        if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
                /* A status line: a new response (after a 100 Continue) starts over. */
                const char *sp = memchr(p, ' ', len);
                x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
                g_ptr_array_set_size(x->head, 0);
                return size * n;
        }
        if (len == 0) {
                if (x->status >= 200) {
                        x->has_head = true;
                        exchange_notify(x);
                }
                return size * n;
        }
        g_ptr_array_add(x->head, g_strndup(p, len));
        return size * n;
}

static size_t on_exchange_body(char *p, size_t size, size_t n, void *userdata) {
        UpstreamExchange *x = userdata;
        size_t len = size * n;

        /* All or nothing: curl hands the same bytes again once unpaused. */
        if (byte_queue_room(&x->down) < len) {
                x->recv_paused = true;
                return CURL_WRITEFUNC_PAUSE;
        }
        if (byte_queue_push(&x->down, p, len) < len)
                return 0;  /* no memory: aborts */
        if (byte_queue_size(&x->down) >= EXCHANGE_BATCH || byte_queue_size(&x->down) == len)
                exchange_notify(x); /* a batch, or the first bytes after the reader emptied it */
        return len;
}

static size_t on_exchange_upload(char *buf, size_t size, size_t n, void *userdata) {
        UpstreamExchange *x = userdata;
        size_t k;

        k = byte_queue_pop(&x->up, buf, size * n);
        if (k > 0) {
                if (byte_queue_room(&x->up) >= 2 * EXCHANGE_BATCH)
                        exchange_notify(x); /* room for more of the client's body */
                return k;
        }
        if (x->up_end)
                return 0;
        x->send_paused = true;
        return CURL_READFUNC_PAUSE;
}

static void on_exchange_done(CurlTask *t, CURL *easy, CURLcode code) {
        UpstreamExchange *x = container_of(t, UpstreamExchange, task);

        if (x->error == 0)
                x->error = transport_result_errno(code);
        if (x->error == 0 && !x->has_head)
                x->error = -EPROTO;
        x->ended = true;
        curl_loop_discard(x->loop, &x->curl);
        exchange_notify(x);
}

int upstream_exchange_new(UpstreamExchangeRequest *r, void (*on_event)(UpstreamExchange *x, void *userdata),
                          void *userdata, UpstreamExchange **ret) {
        UpstreamExchange *x;

        x = calloc(1, sizeof(UpstreamExchange));
        if (!x)
                return -ENOMEM;
        *x = (UpstreamExchange) {
                .task.on_done = on_exchange_done,
                .method = strdup(r->method),
                .target = strdup(r->target),
                .headers = r->headers,
                .has_body = r->body,
                .body_size = r->body_size,
                .on_event = on_event,
                .userdata = userdata,
                .head = g_ptr_array_new_with_free_func(g_free),
        };
        r->headers = NULL;
        if (!x->method || !x->target) {
                upstream_exchange_free(x);
                return -ENOMEM;
        }
        *ret = x;
        return 0;
}

UpstreamExchange *upstream_exchange_free(UpstreamExchange *x) {
        if (!x)
                return NULL;
        curl_loop_discard(x->loop, &x->curl);
        free(x->method);
        free(x->target);
        transport_headers_free(x->headers);
        free(x->up.data);
        free(x->down.data);
        g_ptr_array_unref(x->head);
        free(x);
        return NULL;
}

int upstream_exchange_launch(UpstreamExchange *x, CurlLoop *l, const TransportSettings *t, const char *base_url) {
        _cleanup_(freep) char *url = NULL;
        size_t n = strlen(base_url);
        int r;

        assert(!x->curl && !x->ended);
        /* base_url may end with a slash; the target always starts with one. */
        while (n > 0 && base_url[n - 1] == '/')
                n--;
        if (asprintf(&url, "%.*s%s", (int) n, base_url, x->target) < 0)
                return -ENOMEM;

        TransportRequest req = {
                .url = url,
                .task = &x->task,
                /* No timeout of the whole: an upload or a download of an image takes what it takes; a stall
                 * (LowSpeedTimeoutSec=) ends it. */
                .headers = x->headers,
                .on_header = on_exchange_header,
                .on_body = on_exchange_body,
                .userdata = x,
                .no_body = strcmp(x->method, "HEAD") == 0,
                .method = strcmp(x->method, "GET") == 0 || strcmp(x->method, "HEAD") == 0 ? NULL : x->method,
                .on_upload = x->has_body ? on_exchange_upload : NULL,
                .upload_size = x->body_size == UINT64_MAX ? -1 : (int64_t) x->body_size,
        };
        r = transport_easy_new(t, &req, &x->curl);
        if (r < 0)
                return r;
        x->loop = l;
        r = curl_loop_add(l, x->curl);
        if (r < 0)
                curl_loop_discard(l, &x->curl);
        return r;
}

void upstream_exchange_fail(UpstreamExchange *x, int error) {
        assert(error < 0);
        x->error = error;
        x->ended = true;
        exchange_notify(x);
}

size_t upstream_exchange_write(UpstreamExchange *x, const void *p, size_t n) {
        size_t k;

        if (x->ended)
                return n; /* nobody will read it: swallow it */
        k = byte_queue_push(&x->up, p, n);
        if (x->send_paused && byte_queue_size(&x->up) >= EXCHANGE_BATCH) {
                x->send_paused = false;
                exchange_update_pause(x);
        }
        return k;
}

void upstream_exchange_write_end(UpstreamExchange *x) {
        x->up_end = true;
        if (x->send_paused) {
                x->send_paused = false;
                exchange_update_pause(x);
        }
}

bool upstream_exchange_has_head(const UpstreamExchange *x) {
        return x->has_head;
}

long upstream_exchange_status(const UpstreamExchange *x) {
        return x->status;
}

size_t upstream_exchange_n_headers(const UpstreamExchange *x) {
        return x->head->len;
}

const char *upstream_exchange_header(const UpstreamExchange *x, size_t i) {
        return i < x->head->len ? g_ptr_array_index(x->head, i) : NULL;
}

size_t upstream_exchange_read(UpstreamExchange *x, void *buf, size_t max) {
        size_t k = byte_queue_pop(&x->down, buf, max);

        /* Resume curl once there is room for its largest write again. */
        if (x->recv_paused && byte_queue_room(&x->down) >= CURL_MAX_WRITE_SIZE) {
                x->recv_paused = false;
                exchange_update_pause(x);
        }
        return k;
}

size_t upstream_exchange_available(const UpstreamExchange *x) {
        return byte_queue_size(&x->down);
}

bool upstream_exchange_ended(const UpstreamExchange *x, int *ret_error) {
        if (ret_error)
                *ret_error = x->error;
        return x->ended;
}
