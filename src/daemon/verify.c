/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "bus-error.h"
#include "checksum.h"
#include "log.h"
#include "verify.h"

struct VerifyJob {
        Manager *manager;
        sd_bus_message *request;
        char *image_id;
        int fd;              /* the image, read by the worker */
        ChecksumAlgo algo;
        int event_fd;        /* the worker's "done" */
        sd_event_source *source;
        GThread *thread;

        /* Written by the worker before it signals event_fd, read by the loop after. */
        int result;
        Checksum actual;
};

VerifyJob *verify_job_free(VerifyJob *j) {
        if (!j)
                return NULL;
        if (j->thread)
                g_thread_join(j->thread);
        if (j->manager) {
                j->manager->verify_jobs = g_list_remove(j->manager->verify_jobs, j);
                j->manager->n_verify_jobs--;
        }
        sd_event_source_disable_unref(j->source);
        sd_bus_message_unref(j->request);
        safe_close(j->fd);
        safe_close(j->event_fd);
        free(j->image_id);
        free(j);
        return NULL;
}

static gpointer verify_worker(gpointer userdata) {
        VerifyJob *j = userdata;
        _cleanup_(hasher_freep) Hasher *h = NULL;
        uint64_t one = 1;

        j->result = checksum_fd(j->fd, j->algo, UINT64_MAX, &h);
        if (j->result >= 0)
                j->result = hasher_finish(h, &j->actual);
        if (write(j->event_fd, &one, sizeof one) < 0)
                abort(); /* an eventfd write of 1 cannot fail short of a programming error */
        return NULL;
}

static int verify_job_reply(VerifyJob *j) {
        Manager *m = j->manager;
        int r = j->result;

        if (r >= 0)
                r = image_cache_verify_end(m->cache, j->image_id, &j->actual);
        if (r == -ENOENT)
                return sd_bus_reply_method_errorf(j->request, IMGCACHE_ERROR_NO_SUCH_IMAGE,
                                                  "Image %s was removed while it was being verified.",
                                                  j->image_id);
        if (r < 0) {
                log_image_errno(LOG_ERR, r, NULL, j->image_id, "Cannot verify image %s: %m", j->image_id);
                return sd_bus_reply_method_errnof(j->request, r, "Cannot verify image %s: %m", j->image_id);
        }
        /* A bad image was logged by the cache observer as it moved to invalid/. */
        if (r > 0)
                log_image(LOG_INFO, NULL, j->image_id, "Image %s verified.", j->image_id);
        return sd_bus_reply_method_return(j->request, "b", r > 0);
}

static int on_verify_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        VerifyJob *j = userdata;
        int r;

        g_thread_join(j->thread);
        j->thread = NULL;
        r = verify_job_reply(j);
        if (r < 0)
                log_debug_errno(r, "Cannot reply to Verify(%s), ignoring: %m", j->image_id);
        verify_job_free(j);
        return 0;
}

int verify_job_start(Manager *m, sd_bus_message *message, const char *id, sd_bus_error *error) {
        VerifyJob *j;
        int r;

        if (m->n_verify_jobs >= MANAGER_VERIFY_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                         "Too many verifications running (%u), try again later.",
                                         MANAGER_VERIFY_MAX);

        j = calloc(1, sizeof(VerifyJob));
        if (!j)
                return -ENOMEM;
        *j = (VerifyJob) { .fd = -EBADF, .event_fd = -EBADF, .image_id = strdup(id) };
        if (!j->image_id) {
                verify_job_free(j);
                return -ENOMEM;
        }

        r = image_cache_verify_begin(m->cache, id, &j->fd, &j->algo);
        if (r == -ENOENT) {
                verify_job_free(j);
                return sd_bus_error_setf(error, IMGCACHE_ERROR_NO_SUCH_IMAGE, "Image %s is not cached.", id);
        }
        if (r >= 0) {
                j->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                if (j->event_fd < 0)
                        r = -errno;
        }
        if (r >= 0)
                r = sd_event_add_io(m->event, &j->source, j->event_fd, EPOLLIN, on_verify_done, j);
        if (r < 0) {
                verify_job_free(j);
                return r;
        }
        (void) sd_event_source_set_description(j->source, "verify");

        j->request = sd_bus_message_ref(message);
        j->manager = m;
        m->verify_jobs = g_list_prepend(m->verify_jobs, j);
        m->n_verify_jobs++;
        j->thread = g_thread_new("verify", verify_worker, j);
        return 0;
}
