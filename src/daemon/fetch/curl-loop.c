/* SPDX-License-Identifier: MIT */
/* The libcurl multi handle on sd-event (curl-loop.h): sockets, the timer, completions. */

#include <errno.h>
#include <glib.h>
#include <pthread.h>
#include <stdlib.h>

#include "curl-loop.h"
#include "log.h"
#include "util.h"

/* Slack for curl timeouts of a second or more: curl re-arms on every read with its next check (a second
 * away while data flows), and an exact timer would reprogram the timerfd per read. */
#define CURL_TIMER_SLACK_USEC (50ULL * USEC_PER_MSEC)

struct CurlLoop {
        sd_event *event;
        CURLM *multi;
        sd_event_source *timer;
        GHashTable *sockets;      /* sd_event_source* of curl sockets (also curl_multi_assign()ed) */
        uint64_t turns;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init_once(void) {
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Completions are taken here, after curl_multi_socket_action() returned: a task may then remove and free
 * its handle, or start new transfers. */
void curl_loop_collect(CurlLoop *l) {
        CURLMsg *msg;
        int left;

        while ((msg = curl_multi_info_read(l->multi, &left))) {
                CurlTask *t = NULL;
                CURL *h = msg->easy_handle;
                CURLcode code = msg->data.result;

                if (msg->msg != CURLMSG_DONE)
                        continue;
                (void) curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **) &t);
                /* The message points into the handle: read it before anything removes the handle. */
                (void) curl_multi_remove_handle(l->multi, h);
                if (t)
                        t->on_done(t, h, code);
        }
}

static void curl_loop_action(CurlLoop *l, curl_socket_t fd, int action) {
        int running;

        l->turns++;
        (void) curl_multi_socket_action(l->multi, fd, action, &running);
        curl_loop_collect(l);
}

static int on_curl_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        int action = 0;

        if (revents & (EPOLLIN | EPOLLPRI))
                action |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                action |= CURL_CSELECT_OUT;
        if (revents & (EPOLLERR | EPOLLHUP))
                action |= CURL_CSELECT_ERR;
        curl_loop_action(userdata, fd, action);
        return 0;
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        CurlLoop *l = userp;
        sd_event_source *s = socketp;
        uint32_t events = 0;
        int r;

        if (what == CURL_POLL_REMOVE) {
                if (s) {
                        g_hash_table_remove(l->sockets, s); /* unrefs */
                        (void) curl_multi_assign(l->multi, fd, NULL);
                }
                return 0;
        }

        if (what & CURL_POLL_IN)
                events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
                events |= EPOLLOUT;

        if (s) {
                if (sd_event_source_set_io_events(s, events) < 0 ||
                    sd_event_source_set_enabled(s, SD_EVENT_ON) < 0)
                        return -1;
                return 0;
        }

        r = sd_event_add_io(l->event, &s, fd, events, on_curl_io, l);
        if (r < 0) {
                log_warning_errno(r, "Cannot watch a connection to the upstream: %m");
                return -1;
        }
        (void) sd_event_source_set_description(s, "curl-socket");
        g_hash_table_add(l->sockets, s);
        if (curl_multi_assign(l->multi, fd, s) != CURLM_OK) {
                g_hash_table_remove(l->sockets, s);
                return -1;
        }
        return 0;
}

static int on_curl_timer_elapsed(sd_event_source *s, uint64_t usec, void *userdata) {
        curl_loop_action(userdata, CURL_SOCKET_TIMEOUT, 0);
        return 0;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
        CurlLoop *l = userp;
        usec_t usec;
        int r;

        if (timeout_ms < 0) {
                if (l->timer)
                        (void) sd_event_source_set_enabled(l->timer, SD_EVENT_OFF);
                return 0;
        }

        /* Relative, in µs (the ms value curl gives is exact, so nothing to round), and exact for short
         * timeouts: sd-event's default accuracy of 250ms would coalesce them into long waits. */
        usec = (usec_t) timeout_ms * USEC_PER_MSEC;
        if (!l->timer) {
                r = sd_event_add_time_relative(l->event, &l->timer, CLOCK_MONOTONIC, usec, 1,
                                               on_curl_timer_elapsed, l);
                if (r >= 0)
                        (void) sd_event_source_set_description(l->timer, "curl-timer");
        } else {
                r = sd_event_source_set_time_relative(l->timer, usec);
                if (r >= 0)
                        r = sd_event_source_set_time_accuracy(l->timer, timeout_ms >= 1000 ? CURL_TIMER_SLACK_USEC : 1);
                if (r >= 0)
                        r = sd_event_source_set_enabled(l->timer, SD_EVENT_ONESHOT);
        }
        if (r < 0) {
                log_warning_errno(r, "Cannot arm the transfer timer: %m");
                return -1;
        }
        return 0;
}

static void source_unref_void(void *p) {
        sd_event_source_disable_unref(p);
}

int curl_loop_new(sd_event *event, CurlLoop **ret) {
        CurlLoop *l;

        (void) pthread_once(&curl_once, curl_init_once);
        if (curl_init_result != CURLE_OK)
                return -EIO;

        l = calloc(1, sizeof(CurlLoop));
        if (!l)
                return -ENOMEM;
        l->event = sd_event_ref(event);
        l->sockets = g_hash_table_new_full(g_direct_hash, g_direct_equal, source_unref_void, NULL);
        l->multi = curl_multi_init();
        if (!l->multi ||
            curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
            curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, l) != CURLM_OK ||
            curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
            curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, l) != CURLM_OK) {
                curl_loop_free(l);
                return -ENOMEM;
        }

        *ret = l;
        return 0;
}

CurlLoop *curl_loop_free(CurlLoop *l) {
        if (!l)
                return NULL;
        if (l->multi)
                (void) curl_multi_cleanup(l->multi);
        g_hash_table_destroy(l->sockets);
        sd_event_source_disable_unref(l->timer);
        sd_event_unref(l->event);
        free(l);
        return NULL;
}

int curl_loop_add(CurlLoop *l, CURL *easy) {
        if (curl_multi_add_handle(l->multi, easy) != CURLM_OK)
                return -ENOMEM;
        return 0;
}

void curl_loop_discard(CurlLoop *l, CURL **easy) {
        if (!*easy)
                return;
        if (l)
                (void) curl_multi_remove_handle(l->multi, *easy);
        curl_easy_cleanup(*easy);
        *easy = NULL;
}

uint64_t curl_loop_turns(const CurlLoop *l) {
        return l->turns;
}
