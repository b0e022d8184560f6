/* SPDX-License-Identifier: MIT */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http-test.h"
#include "test-util.h"

static int on_wake(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        uint64_t v;
        (void) read(fd, &v, sizeof(v));
        return 0;
}

void test_server_start(TestServer *t, void (*setup)(Config *c, void *userdata), void *userdata,
                       unsigned timeout_sec) {
        char *error = NULL;
        int r;

        *t = (TestServer) { .wake_fd = -EBADF };

        g_assert_cmpint(sd_event_new(&t->event), >=, 0);
        t->dir = test_tmpdir_new();
        r = image_cache_open(t->dir, DRIVER_SQLITE, &t->cache, &error);
        if (r < 0)
                g_error("image_cache_open(%s): %s (%s)", t->dir, g_strerror(-r), error ?: "-");

        g_assert_cmpint(config_init(&t->config), ==, 0);
        g_assert_cmpint(free_and_strdup(&t->config.upstream_url, "http://127.0.0.1:9/images/{id}"), ==, 0);
        if (setup)
                setup(&t->config, userdata);

        g_assert_cmpint(fetcher_new(t->event, t->cache, &t->config, &t->fetcher), ==, 0);

        HttpServerOptions o = {
                .listen_fd = -EBADF,
                .listen = "127.0.0.1:0",
                .connection_timeout_sec = timeout_sec,
        };
        t->ops = (TestOps) { .cache = t->cache, .fetcher = t->fetcher, .config = &t->config };
        g_assert_cmpint(http_server_new(t->event, t->cache, t->fetcher, &t->config, &o, &test_http_operations, &t->ops,
                                        &t->server), ==, 0);
        g_assert_cmpuint(http_server_port(t->server), >, 0);
        t->base = g_strdup_printf("http://127.0.0.1:%u", http_server_port(t->server));

        t->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        g_assert_cmpint(t->wake_fd, >=, 0);
        g_assert_cmpint(sd_event_add_io(t->event, &t->wake_source, t->wake_fd, EPOLLIN, on_wake, t), >=, 0);
}

void test_server_stop(TestServer *t) {
        t->server = http_server_free(t->server);
        t->fetcher = fetcher_free(t->fetcher);
        t->cache = image_cache_close(t->cache);
        config_done(&t->config);
        t->wake_source = sd_event_source_disable_unref(t->wake_source);
        t->wake_fd = safe_close(t->wake_fd);
        t->event = sd_event_unref(t->event);
        test_tmpdir_remove(t->dir);
        g_free(t->dir);
        g_free(t->base);
}

void test_server_add_image(TestServer *t, const char *id, const void *data, size_t size) {
        CacheWrite *w = NULL;

        g_assert_cmpint(image_cache_begin_write(t->cache, id, NULL, &w), ==, 0);
        g_assert_cmpint(cache_write_append(w, data, size), ==, 0);
        g_assert_cmpint(image_cache_commit_write(t->cache, w), ==, 0);
        g_assert_true(image_cache_is_cached(t->cache, id));
}

char *test_server_url(TestServer *t, const char *path) {
        return g_strconcat(t->base, path, NULL);
}

char *test_sha256(const void *data, size_t size) {
        return g_compute_checksum_for_data(G_CHECKSUM_SHA256, data, size);
}

static void wake(TestClient *c) {
        uint64_t one = 1;
        (void) write(c->server->wake_fd, &one, sizeof(one));
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
        TestClient *c = userdata;
        size_t n = size * nmemb;

        if (c->abort_after > 0 && c->body->len + n >= c->abort_after) {
                g_byte_array_append(c->body, (const guint8 *) ptr, (guint) (c->abort_after - c->body->len));
                g_atomic_int_set(&c->received, (gint) c->body->len);
                return 0;  /* curl hangs up: CURLE_WRITE_ERROR */
        }

        g_byte_array_append(c->body, (const guint8 *) ptr, (guint) n);
        g_atomic_int_set(&c->received, (gint) c->body->len);
        wake(c);

        if (c->pause_after > 0 && c->body->len >= c->pause_after) {
                g_mutex_lock(&c->lock);
                if (!c->resume) {
                        g_atomic_int_set(&c->paused, 1);
                        wake(c);
                        while (!c->resume)
                                g_cond_wait(&c->cond, &c->lock);
                }
                g_mutex_unlock(&c->lock);
        }
        return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata) {
        TestClient *c = userdata;
        g_string_append_len(c->head, ptr, (gssize) (size * nmemb));
        return size * nmemb;
}

static void run_curl(TestClient *c) {
        struct curl_slist *headers = NULL;
        CURL *e = curl_easy_init();

        g_assert_nonnull(e);
        curl_easy_setopt(e, CURLOPT_URL, c->url);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms > 0 ? c->timeout_ms : (long) TEST_HTTP_TIMEOUT_MS);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
        /* Small receive buffer: pauses and slow readers push back on the server soon. */
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 16384L);
        if (c->http10)
                curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_0);
        if (c->method && streq(c->method, "HEAD"))
                curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        else if (c->method && !streq(c->method, "GET"))
                curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, c->method);
        for (size_t i = 0; i < ELEMENTSOF(c->headers) && c->headers[i]; i++)
                headers = curl_slist_append(headers, c->headers[i]);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);

        c->result = curl_easy_perform(e);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &c->status);
        curl_easy_cleanup(e);
        curl_slist_free_all(headers);
}

/* Whether buf holds a whole response with a Content-Length (the only kind keep_open waits for). */
static bool raw_response_complete(const GString *buf) {
        const char *sep = strstr(buf->str, "\r\n\r\n"), *cl;

        if (!sep)
                return false;
        cl = strcasestr(buf->str, "\r\nContent-Length:");
        if (!cl || cl > sep)
                return false;
        return (size_t) (buf->str + buf->len - (sep + 4)) >= strtoull(cl + strlen("\r\nContent-Length:"), NULL, 10);
}

static void run_raw(TestClient *c) {
        struct timeval tv = { .tv_sec = TEST_HTTP_TIMEOUT_MS / 1000 };
        char buf[4096];
        int fd;

        fd = test_connect_from(c->raw_bind, c->raw_port);
        g_assert_cmpint(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), ==, 0);

        for (size_t off = 0; off < c->raw_size;) {
                ssize_t k = send(fd, c->raw + off, c->raw_size - off, MSG_NOSIGNAL);
                if (k < 0)
                        break;  /* the server may answer and close before reading everything */
                off += (size_t) k;
        }

        for (;;) {
                ssize_t k = recv(fd, buf, sizeof(buf), 0);
                if (k <= 0)
                        break;
                g_string_append_len(c->head, buf, k);
                if (c->keep_open && raw_response_complete(c->head))
                        break;
        }
        if (c->keep_open)
                c->raw_fd = fd;
        else
                close(fd);

        c->result = CURLE_OK;
        c->status = 0;
        if (g_str_has_prefix(c->head->str, "HTTP/1.") && c->head->len >= 12)
                c->status = strtol(c->head->str + 9, NULL, 10);
        /* The body, for convenience: whatever follows the head. */
        const char *sep = strstr(c->head->str, "\r\n\r\n");
        if (sep)
                g_byte_array_append(c->body, (const guint8 *) sep + 4, (guint) (c->head->len - (size_t) (sep + 4 - c->head->str)));
}

static gpointer client_thread(gpointer userdata) {
        TestClient *c = userdata;

        if (c->raw)
                run_raw(c);
        else
                run_curl(c);

        g_atomic_int_set(&c->done, 1);
        wake(c);
        return NULL;
}

static TestClient *client_alloc(TestServer *t) {
        TestClient *c = g_new0(TestClient, 1);
        c->server = t;
        c->body = g_byte_array_new();
        c->head = g_string_new(NULL);
        c->raw_fd = -EBADF;
        g_mutex_init(&c->lock);
        g_cond_init(&c->cond);
        return c;
}

static TestClient *client_newv(TestServer *t, const char *method, const char *path, va_list ap) {
        TestClient *c = client_alloc(t);
        const char *h;
        size_t i = 0;

        c->url = test_server_url(t, path);
        c->method = g_strdup(method);
        while ((h = va_arg(ap, const char *))) {
                g_assert_cmpuint(i, <, ELEMENTSOF(c->headers));
                c->headers[i++] = g_strdup(h);
        }
        return c;
}

TestClient *test_client_new(TestServer *t, const char *method, const char *path, ...) {
        va_list ap;
        va_start(ap, path);
        TestClient *c = client_newv(t, method, path, ap);
        va_end(ap);
        return c;
}

TestClient *test_client_new_raw(TestServer *t, const char *request) {
        TestClient *c = client_alloc(t);
        c->raw = g_strdup(request);
        c->raw_size = strlen(request);
        c->raw_port = http_server_port(t->server);
        return c;
}

void test_client_start(TestClient *c) {
        c->thread = g_thread_new("http-client", client_thread, c);
}

void test_client_resume(TestClient *c) {
        g_mutex_lock(&c->lock);
        c->resume = true;
        g_cond_broadcast(&c->cond);
        g_mutex_unlock(&c->lock);
}

void test_client_free(TestClient *c) {
        if (!c)
                return;
        if (c->thread) {
                test_client_resume(c);
                g_thread_join(c->thread);
        }
        if (c->raw_fd >= 0)
                close(c->raw_fd);
        g_free(c->url);
        g_free(c->method);
        g_free(c->raw);
        for (size_t i = 0; i < ELEMENTSOF(c->headers); i++)
                g_free(c->headers[i]);
        g_byte_array_unref(c->body);
        g_string_free(c->head, TRUE);
        g_mutex_clear(&c->lock);
        g_cond_clear(&c->cond);
        g_free(c);
}

char *test_client_header(TestClient *c, const char *name) {
        g_auto(GStrv) lines = g_strsplit(c->head->str, "\r\n", -1);
        char *value = NULL;
        size_t n = strlen(name);

        for (char **l = lines; *l; l++) {
                if (!*l[0])
                        break;  /* end of the (first) head; raw responses carry a body after it */
                if (g_ascii_strncasecmp(*l, name, n) == 0 && (*l)[n] == ':') {
                        g_free(value);
                        value = g_strstrip(g_strdup(*l + n + 1));
                }
        }
        return value;
}

void test_run_until(TestServer *t, bool (*pred)(void *userdata), void *userdata) {
        uint64_t deadline = now_usec(CLOCK_MONOTONIC) + (uint64_t) TEST_HTTP_TIMEOUT_MS * USEC_PER_MSEC;

        while (!pred(userdata)) {
                uint64_t now = now_usec(CLOCK_MONOTONIC);
                if (now >= deadline)
                        g_error("timed out waiting for a condition of the test");
                g_assert_cmpint(sd_event_run(t->event, deadline - now), >=, 0);
        }
}

typedef struct Clients {
        TestClient **c;
        size_t n;
} Clients;

static bool all_done(void *userdata) {
        Clients *cs = userdata;
        for (size_t i = 0; i < cs->n; i++)
                if (!g_atomic_int_get(&cs->c[i]->done))
                        return false;
        return true;
}

void test_run_until_done(TestServer *t, TestClient **clients, size_t n) {
        Clients cs = { clients, n };
        test_run_until(t, all_done, &cs);
        for (size_t i = 0; i < n; i++) {
                g_thread_join(clients[i]->thread);
                clients[i]->thread = NULL;
        }
}

typedef struct Progress {
        TestClient *c;
        size_t n;
} Progress;

static bool received_enough(void *userdata) {
        Progress *p = userdata;
        return g_atomic_int_get(&p->c->done) || (size_t) g_atomic_int_get(&p->c->received) >= p->n;
}

void test_run_until_received(TestServer *t, TestClient *c, size_t n) {
        Progress p = { c, n };
        test_run_until(t, received_enough, &p);
}

static bool is_paused(void *userdata) {
        TestClient *c = userdata;
        return g_atomic_int_get(&c->paused) || g_atomic_int_get(&c->done);
}

void test_run_until_paused(TestServer *t, TestClient *c) {
        test_run_until(t, is_paused, c);
        g_assert_true(g_atomic_int_get(&c->paused));
}

void test_run_pending(TestServer *t) {
        while (sd_event_run(t->event, 0) > 0)
                ;
}

TestClient *test_request(TestServer *t, const char *method, const char *path, ...) {
        va_list ap;
        va_start(ap, path);
        TestClient *c = client_newv(t, method, path, ap);
        va_end(ap);

        test_client_start(c);
        test_run_until_done(t, &c, 1);
        return c;
}
