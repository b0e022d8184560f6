/* SPDX-License-Identifier: MIT */
/* One blocking job on a thread of its own, completed on the event loop (worker.h). */

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util.h"
#include "worker.h"

struct Worker {
        WorkerRun run;
        WorkerDone done;
        void *userdata;
        int event_fd;            /* the thread's "returned" */
        sd_event_source *source;
        pthread_t thread;
        bool joined;
        int result;              /* written by the thread before event_fd, read on the loop after */
};

static void worker_free(Worker *w) {
        if (!w->joined)
                (void) pthread_join(w->thread, NULL);
        sd_event_source_disable_unref(w->source);
        safe_close(w->event_fd);
        free(w);
}

static void *worker_thread(void *userdata) {
        Worker *w = userdata;
        uint64_t one = 1;

        w->result = w->run(w->userdata);
        if (write(w->event_fd, &one, sizeof one) < 0)
                abort(); /* an eventfd write of 1 cannot fail short of a programming error */
        return NULL;
}

static void worker_finish(Worker *w) {
        WorkerDone done = w->done;
        void *userdata = w->userdata;
        int result = w->result;

        worker_free(w);
        done(result, userdata);
}

static int on_worker_returned(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        worker_finish(userdata);
        return 0;
}

int worker_start(sd_event *event, const char *name, WorkerRun run, WorkerDone done, void *userdata, Worker **ret) {
        Worker *w = calloc(1, sizeof(Worker));
        int r;

        if (!w)
                return -ENOMEM;
        *w = (Worker) { .run = run, .done = done, .userdata = userdata, .joined = true };
        w->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->event_fd < 0) {
                r = -errno;
                goto fail;
        }
        r = sd_event_add_io(event, &w->source, w->event_fd, EPOLLIN, on_worker_returned, w);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(w->source, name);
        r = -pthread_create(&w->thread, NULL, worker_thread, w);
        if (r < 0)
                goto fail;
        w->joined = false;
        *ret = w;
        return 0;

fail:
        worker_free(w);
        return r;
}

void worker_complete(Worker *w) {
        (void) pthread_join(w->thread, NULL);
        w->joined = true;
        worker_finish(w);
}

Worker *worker_abandon(Worker *w) {
        if (w)
                worker_free(w);
        return NULL;
}
