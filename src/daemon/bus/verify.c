/* SPDX-License-Identifier: MIT */
/* Verify(id) (verify.h): the file opened on the loop, hashed by a worker, the verdict applied on the loop. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus-error.h"
#include "checksum.h"
#include "log.h"
#include "verify.h"
#include "worker.h"

struct VerifyJob {
        Manager *manager;
        sd_bus_message *request;
        char *image_id;
        int fd;              /* the image, read by the worker */
        ChecksumAlgo algo;
        Worker *worker;
        Checksum actual;     /* written by the worker, read by the loop after it returned */
};

VerifyJob *verify_job_free(VerifyJob *j) {
        if (!j)
                return NULL;
        j->worker = worker_abandon(j->worker);
        if (j->manager) {
                j->manager->verify_jobs = g_list_remove(j->manager->verify_jobs, j);
                j->manager->n_verify_jobs--;
        }
        sd_bus_message_unref(j->request);
        safe_close(j->fd);
        free(j->image_id);
        free(j);
        return NULL;
}

int verify_hash(int fd, ChecksumAlgo algo, Checksum *ret) {
        _cleanup_(hasher_freep) Hasher *h = NULL;

        int r = checksum_fd(fd, algo, UINT64_MAX, &h);
        if (r < 0)
                return r;
        return hasher_finish(h, ret);
}

static int verify_run(void *userdata) {
        VerifyJob *j = userdata;

        return verify_hash(j->fd, j->algo, &j->actual);
}

static int verify_job_reply(VerifyJob *j, int r) {
        Manager *m = j->manager;

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

static void on_verify_done(int result, void *userdata) {
        VerifyJob *j = userdata;

        j->worker = NULL; /* freed by the helper */
        /* Hashed: the file is not held past the answer (a bad one is moved to invalid/ by it, and whoever
         * asked may look at once). */
        j->fd = safe_close(j->fd);
        int r = verify_job_reply(j, result);
        if (r < 0)
                log_debug_errno(r, "Cannot reply to Verify(%s), ignoring: %m", j->image_id);
        verify_job_free(j);
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
        *j = (VerifyJob) { .fd = -EBADF, .image_id = strdup(id) };
        if (!j->image_id) {
                verify_job_free(j);
                return -ENOMEM;
        }

        r = image_cache_verify_begin(m->cache, id, &j->fd, &j->algo);
        if (r == -ENOENT) {
                verify_job_free(j);
                return sd_bus_error_setf(error, IMGCACHE_ERROR_NO_SUCH_IMAGE, "Image %s is not cached.", id);
        }
        if (r >= 0)
                r = worker_start(m->event, "verify", verify_run, on_verify_done, j, &j->worker);
        if (r < 0) {
                verify_job_free(j);
                return r;
        }

        j->request = sd_bus_message_ref(message);
        j->manager = m;
        m->verify_jobs = g_list_prepend(m->verify_jobs, j);
        m->n_verify_jobs++;
        return 0;
}
