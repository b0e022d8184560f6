/* SPDX-License-Identifier: MIT */
/* The Manager on the bus: org.imgcache.Manager's properties, methods and signals, each method going
 * through polkit and then the Manager's operations (manager-ops.c). */

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "bus-error.h"
#include "checksum.h"
#include "fetch.h"
#include "fleet.h"
#include "http.h"
#include "imgcache-config.h"
#include "job.h"
#include "log.h"
#include "manager.h"
#include "pin.h"
#include "verify.h"

#define ACTION_QUEUE "org.imgcache.queue"
#define ACTION_DELETE "org.imgcache.delete"
#define ACTION_MAINTAIN "org.imgcache.maintain"
#define ACTION_OPEN "org.imgcache.open"

#define PIN_WHY_MAX 256

/* ---- properties --------------------------------------------------------------------------------- */

#define DEFINE_PROPERTY_GET(name, type, expr)                                                          \
        static int property_get_##name(sd_bus *bus, const char *path, const char *interface,          \
                                       const char *property, sd_bus_message *reply, void *userdata,    \
                                       sd_bus_error *error) {                                          \
                Manager *m = userdata;                                                                 \
                return sd_bus_message_append(reply, type, expr);                                       \
        }

DEFINE_PROPERTY_GET(version, "s", ((void) m, PROJECT_VERSION))
DEFINE_PROPERTY_GET(driver, "s", strempty(driver_kind_to_string(manager_driver(m))))
DEFINE_PROPERTY_GET(cache_directory, "s", m->cache_dir)
/* Everyone on the bus may read it: never the credentials a URL may carry. */
static int property_get_upstream(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(freep) char *shown = url_redact_userinfo(manager_upstream(m));

        if (!shown)
                return -ENOMEM;
        return sd_bus_message_append(reply, "s", shown);
}

static int property_get_fleet_nodes(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        static char *const none[] = { NULL };
        return sd_bus_message_append_strv(reply, m->fleet ? (char **) fleet_nodes(m->fleet) : (char **) none);
}

static int property_get_fleet_self(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "s", m->fleet ? fleet_self(m->fleet) : "");
}

/* A share of a filesystem that cannot be examined has no value: the error, not a guess. */
static int append_limit(sd_bus_message *reply, sd_bus_error *error, const Manager *m, const char *name,
                        int (*resolve)(const Manager *m, uint64_t *ret)) {
        uint64_t v;
        int r;

        r = resolve(m, &v);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot resolve %s= against the filesystem of %s: %m", name,
                                               m->cache_dir);
        return sd_bus_message_append(reply, "t", v);
}

static int property_get_max_size(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return append_limit(reply, error, userdata, "MaxSize", manager_max_size);
}

static int property_get_keep_free(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return append_limit(reply, error, userdata, "KeepFree", manager_keep_free);
}

/* Read when asked (a statvfs), never announced: it changes with every byte written anywhere. */
static int property_get_free_space(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        uint64_t available;
        int r;

        r = image_cache_fs_space(m->cache, NULL, &available);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot examine the filesystem of %s: %m", m->cache_dir);
        return sd_bus_message_append(reply, "t", available);
}

/* HOST:PORT or [IPV6]:PORT of what the socket is bound to (the port the kernel picked for Listen=…:0, the
 * address of a socket systemd passed), or the path of an AF_UNIX one. */
static int format_socket_address(int fd, char *buf, size_t n) {
        char host[INET6_ADDRSTRLEN];
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);

        if (getsockname(fd, (struct sockaddr *) &ss, &len) < 0)
                return -errno;

        switch (ss.ss_family) {
        case AF_INET: {
                const struct sockaddr_in *in = (const struct sockaddr_in *) &ss;

                if (!inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host)))
                        return -errno;
                snprintf(buf, n, "%s:%u", host, ntohs(in->sin_port));
                return 0;
        }
        case AF_INET6: {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) &ss;

                if (!inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host)))
                        return -errno;
                snprintf(buf, n, "[%s]:%u", host, ntohs(in6->sin6_port));
                return 0;
        }
        case AF_UNIX:
                snprintf(buf, n, "%s", ((const struct sockaddr_un *) &ss)->sun_path);
                return 0;
        default:
                return -EAFNOSUPPORT;
        }
}

/* What is actually served, not what Listen= asks for: empty when the HTTP server is not running (the
 * address was taken, say), and const, since the listening socket lives as long as the daemon. */
static int property_get_listen_address(sd_bus *bus, const char *path, const char *interface, const char *property,
                                       sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        char address[INET6_ADDRSTRLEN + sizeof(struct sockaddr_un)] = "";

        if (m->http && format_socket_address(http_server_listen_fd(m->http), address, sizeof(address)) < 0)
                address[0] = 0;
        return sd_bus_message_append(reply, "s", address);
}

DEFINE_PROPERTY_GET(stall_time, "t", (uint64_t) m->config.stall_time)
DEFINE_PROPERTY_GET(current_size, "t", image_cache_size(m->cache))
DEFINE_PROPERTY_GET(image_count, "u", (uint32_t) image_cache_count(m->cache))
DEFINE_PROPERTY_GET(queued_count, "u", manager_queued_count(m))
DEFINE_PROPERTY_GET(hits, "t", m->hits)
DEFINE_PROPERTY_GET(misses, "t", m->misses)
DEFINE_PROPERTY_GET(bytes_served, "t", m->bytes_served)
DEFINE_PROPERTY_GET(pin_count, "u", (uint32_t) m->n_pins)

/* ---- helpers ------------------------------------------------------------------------------------ */

static int append_entry(sd_bus_message *reply, const CacheEntry *e) {
        return sd_bus_message_append(reply, "(stttts)", e->id, e->size, e->hits, (uint64_t) e->last_accessed,
                                     (uint64_t) e->last_modified, strempty(e->checksum));
}

static int not_cached(sd_bus_error *error, const char *id) {
        return sd_bus_error_setf(error, IMGCACHE_ERROR_NO_SUCH_IMAGE, "Image %s is not cached.", id);
}

/* Reads one id argument and validates it. */
static int read_image_id(sd_bus_message *message, const char **ret, sd_bus_error *error) {
        int r;

        r = sd_bus_message_read(message, "s", ret);
        if (r < 0)
                return r;
        return bus_error_check_image_id(error, *ret);
}

/* Parses a caller's checksum ("" = none) into ret (NULL allowed). */
static int parse_caller_checksum(const char *s, const char *id, Checksum *ret, sd_bus_error *error) {
        Checksum c;

        if (isempty(s))
                return 0;
        if (checksum_from_string(s, &c) < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Invalid checksum '%s' for image %s: expected \"md5:\", \"sha256:\" or "
                                         "\"sha512:\" followed by the hex digest, or a bare hex digest.",
                                         s, id);
        if (ret)
                *ret = c;
        return 1;
}

static int no_upstream(Manager *m, sd_bus_error *error) {
        if (isempty(manager_upstream(m)))
                return sd_bus_error_set(error, IMGCACHE_ERROR_NO_UPSTREAM,
                                        "No upstream is configured (set URL= in [Upstream] or --upstream=).");
        return sd_bus_error_setf(error, IMGCACHE_ERROR_NO_UPSTREAM,
                                 "Fetching from the upstream %s is not supported by this version of imgcached.",
                                 manager_upstream(m));
}

/* Pins and OpenImage refused because their fds would come out of the share of HTTP connections, fills
 * and sqlite (manager_fd_budget_left()); the caller can retry once a pin ends. */
static int fd_budget_spent(const Manager *m, sd_bus_error *error, const char *id) {
        return sd_bus_error_setf(error, IMGCACHE_ERROR_TOO_MANY_OPEN_FILES,
                                 "Cannot open or pin image %s: the budget of %u file descriptors for pins and "
                                 "OpenImage is used up (%u pins held; RLIMIT_NOFILE is %" PRIu64 ").",
                                 id, m->fd_budget, m->n_pins, m->fd_limit);
}

/* ---- read-only methods -------------------------------------------------------------------------- */

static int method_list_images(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(freep) const CacheEntry **entries = NULL;
        Manager *m = userdata;
        size_t n;
        int r;

        r = image_cache_list(m->cache, &entries, &n);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_return(message, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(stttts)");
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                r = append_entry(reply, entries[i]);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_get_image(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        const CacheEntry *e;
        const char *id;
        int r;

        r = read_image_id(message, &id, error);
        if (r < 0)
                return r;
        e = image_cache_get(m->cache, id);
        if (!e)
                return not_cached(error, id);

        r = sd_bus_message_new_method_return(message, &reply);
        if (r < 0)
                return r;
        r = append_entry(reply, e);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* GetImageNodes, GetImageSources: ask the fleet (fleet_query_holders), answer when every node did or timed
 * out. */
typedef struct NodesCall {
        Manager *manager;
        sd_bus_message *message;
        FleetQuery *query;
        bool sources;        /* GetImageSources: each holder with the path its copy came through */
} NodesCall;

void manager_nodes_call_free(NodesCall *call) {
        call->manager->nodes_calls = g_list_remove(call->manager->nodes_calls, call);
        fleet_query_free(call->query);
        sd_bus_message_unref(call->message);
        free(call);
}

/* (node, the nodes its copy came through, parent first: "" from the origin, "?" when it did not say). */
static int append_sources(sd_bus_message *reply, char *const *holders, char *const *paths) {
        int r = sd_bus_message_open_container(reply, 'a', "(ss)");
        for (size_t i = 0; r >= 0 && holders[i]; i++) {
                const char *rest = strchr(paths[i], ' ');
                r = sd_bus_message_append(reply, "(ss)", holders[i], rest ? rest + 1 : *paths[i] ? "" : "?");
        }
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

static void on_image_nodes(char *const *holders, char *const *paths, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        NodesCall *call = userdata;

        int r = sd_bus_message_new_method_return(call->message, &reply);
        if (r >= 0 && call->sources)
                r = append_sources(reply, holders, paths);
        else if (r >= 0)
                r = sd_bus_message_append_strv(reply, (char **) holders);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0)
                log_warning_errno(r, "Cannot answer %s: %m", sd_bus_message_get_member(call->message));
        manager_nodes_call_free(call);
}

static int method_get_image_nodes(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *id;
        int r;

        r = read_image_id(message, &id, error);
        if (r < 0)
                return r;
        if (!m->fleet || !m->fetcher)
                return sd_bus_error_set(error, SD_BUS_ERROR_NOT_SUPPORTED, "No [Fleet] is configured on this node.");

        NodesCall *call = calloc(1, sizeof(NodesCall));
        if (!call)
                return -ENOMEM;
        *call = (NodesCall) { .manager = m, .message = sd_bus_message_ref(message),
                              .sources = streq(sd_bus_message_get_member(message), "GetImageSources") };
        m->nodes_calls = g_list_prepend(m->nodes_calls, call);
        r = fleet_query_holders(m->fleet, fetcher_curl(m->fetcher), m->cache, id, on_image_nodes, call, &call->query);
        if (r < 0) {
                manager_nodes_call_free(call);
                return r;
        }
        return 1; /* answered by on_image_nodes() */
}

static int append_queued_details(sd_bus_message *reply, const Manager *m, const QueuedImage *q) {
        _cleanup_(freep) char *checksum = q->has_checksum ? checksum_to_string(&q->checksum) : NULL;
        const QueueRetry *retry = manager_queue_retry(m, q->id);

        if (q->has_checksum && !checksum)
                return -ENOMEM;
        return sd_bus_message_append(reply, "(stsst)", q->id, (uint64_t) q->queued_at, strempty(checksum),
                                     retry ? strempty(retry->last_error) : "",
                                     retry ? (uint64_t) retry->next_attempt : UINT64_C(0));
}

/* ListQueued (a(st)) and, with details, ListQueuedDetails (a(stsst)). */
static int reply_queued(sd_bus_message *message, Manager *m, bool details) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        QueuedImage *q = NULL;
        size_t n = 0;
        int r;

        r = image_cache_list_queued(m->cache, &q, &n);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_return(message, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', details ? "(stsst)" : "(st)");
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = details ? append_queued_details(reply, m, q + i)
                            : sd_bus_message_append(reply, "(st)", q[i].id, (uint64_t) q[i].queued_at);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        queued_images_free(q, n);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_list_queued(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return reply_queued(message, userdata, /* details= */ false);
}

static int method_list_queued_details(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        return reply_queued(message, userdata, /* details= */ true);
}

static int method_list_pins(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        int r;

        r = sd_bus_message_new_method_return(message, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(sus)");
        if (r < 0)
                return r;
        for (GList *l = g_list_last(m->pins); l; l = l->prev) { /* oldest first */
                Pin *p = l->data;
                r = sd_bus_message_append(reply, "(sus)", p->image_id, (uint32_t) p->pid, p->why);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* ---- the queue ---------------------------------------------------------------------------------- */

static int method_queue_image(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *id, *checksum;
        Checksum c;
        int r, has_checksum;

        r = sd_bus_message_read(message, "ss", &id, &checksum);
        if (r < 0)
                return r;
        r = bus_error_check_image_id(error, id);
        if (r < 0)
                return r;
        has_checksum = parse_caller_checksum(checksum, id, &c, error);
        if (has_checksum < 0)
                return has_checksum;
        if (image_cache_is_cached(m->cache, id) || image_cache_is_queued(m->cache, id))
                return sd_bus_reply_method_return(message, "b", false);

        r = manager_authorize(m, message, ACTION_QUEUE, id, error);
        if (r <= 0)
                return r == 0 ? 1 : r; /* 0: polkit will call us again */

        r = manager_queue_image(m, id, has_checksum ? &c : NULL);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot queue image %s: %m", id);
        return sd_bus_reply_method_return(message, "b", r > 0);
}

static int method_dequeue_image(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *id;
        int r;

        r = read_image_id(message, &id, error);
        if (r < 0)
                return r;
        if (!image_cache_is_queued(m->cache, id))
                return sd_bus_error_setf(error, IMGCACHE_ERROR_NO_SUCH_IMAGE, "Image %s is not queued.", id);

        r = manager_authorize(m, message, ACTION_QUEUE, id, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = manager_dequeue_image(m, id);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot dequeue image %s: %m", id);
        return sd_bus_reply_method_return(message, NULL);
}

static int method_dequeue_all(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        unsigned n = 0;
        int r;

        r = manager_authorize(m, message, ACTION_QUEUE, NULL, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = manager_dequeue_all(m, &n);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot empty the queue: %m");
        return sd_bus_reply_method_return(message, "u", (uint32_t) n);
}

/* ---- removal and maintenance -------------------------------------------------------------------- */

/* Names the oldest holder, so the caller knows whom to ask (ListPins lists them all). */
static int image_pinned(const Manager *m, sd_bus_error *error, const char *id) {
        const Pin *p = pin_find(m, id);

        if (!p)
                return sd_bus_error_setf(error, IMGCACHE_ERROR_IMAGE_PINNED, "Image %s is pinned.", id);
        return sd_bus_error_setf(error, IMGCACHE_ERROR_IMAGE_PINNED, "Image %s is pinned by pid %d: %s", id,
                                 (int) p->pid, isempty(p->why) ? "(no reason given)" : p->why);
}

/* DeleteImage and DeleteImageWithFlags, with the id read. A pinned image is refused before polkit is asked
 * (nobody is asked for a password for a call that would fail), and again by the operation itself. */
static int delete_image(Manager *m, sd_bus_message *message, const char *id, bool ignore_pins,
                        sd_bus_error *error) {
        int r;

        if (!image_cache_is_cached(m->cache, id))
                return not_cached(error, id);
        if (!ignore_pins && image_cache_is_pinned(m->cache, id))
                return image_pinned(m, error, id);

        r = manager_authorize(m, message, ACTION_DELETE, id, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = manager_delete_image(m, id, ignore_pins);
        if (r == -ENOENT)
                return not_cached(error, id);
        if (r == -EBUSY)
                return image_pinned(m, error, id);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot delete image %s: %m", id);
        return sd_bus_reply_method_return(message, NULL);
}

static int method_delete_image(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        const char *id;
        int r;

        r = read_image_id(message, &id, error);
        if (r < 0)
                return r;
        return delete_image(userdata, message, id, /* ignore_pins= */ false, error);
}

static int method_delete_image_with_flags(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        const char *id;
        uint64_t flags;
        int r;

        r = sd_bus_message_read(message, "st", &id, &flags);
        if (r < 0)
                return r;
        r = bus_error_check_image_id(error, id);
        if (r < 0)
                return r;
        /* Unknown bits are refused, not ignored: a later flag must not be taken for a no-op by this version. */
        if (flags & ~IMGCACHE_DELETE_IMAGE_FLAGS_ALL)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Unknown flags 0x%" PRIx64 ".",
                                         flags & ~IMGCACHE_DELETE_IMAGE_FLAGS_ALL);
        return delete_image(userdata, message, id, flags & IMGCACHE_DELETE_IMAGE_IGNORE_PINS, error);
}

static int method_delete_all_images(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        unsigned n = 0;
        int r;

        r = manager_authorize(m, message, ACTION_DELETE, NULL, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = manager_delete_all_images(m, &n);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot delete all images (%u deleted): %m", n);
        return sd_bus_reply_method_return(message, "u", (uint32_t) n);
}

static int method_prune(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        bool limit_failed;
        SpaceResult res;
        int r;

        r = manager_authorize(m, message, ACTION_MAINTAIN, NULL, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = manager_prune(m, &res, &limit_failed);
        if (r < 0 && limit_failed)
                return sd_bus_error_set_errnof(error, r,
                                               "Cannot prune %s: MaxSize= or KeepFree= is a share of its filesystem, "
                                               "which cannot be examined: %m", m->cache_dir);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot prune %s: %m", m->cache_dir);
        return sd_bus_reply_method_return(message, "ut", (uint32_t) res.files, res.bytes);
}

static int method_clean(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        unsigned stalled = 0, invalid = 0;
        uint64_t stall;
        int r;

        r = sd_bus_message_read(message, "t", &stall);
        if (r < 0)
                return r;

        r = manager_authorize(m, message, ACTION_MAINTAIN, NULL, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = manager_clean(m, stall, &stalled, &invalid);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot clean %s: %m", m->cache_dir);
        return sd_bus_reply_method_return(message, "uu", (uint32_t) stalled, (uint32_t) invalid);
}

static int method_verify(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *id;
        int r;

        r = read_image_id(message, &id, error);
        if (r < 0)
                return r;
        if (!image_cache_is_cached(m->cache, id))
                return not_cached(error, id);

        r = manager_authorize(m, message, ACTION_MAINTAIN, id, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = verify_job_start(m, message, id, error);
        if (r < 0)
                return r;
        return 1; /* the job replies */
}

/* ---- fetching (job.c) --------------------------------------------------------------------------- */

static int fetch_error(sd_bus_error *error, int r, const char *id) {
        if (r == -E2BIG)
                return sd_bus_error_setf(error, SD_BUS_ERROR_LIMITS_EXCEEDED, "Too many jobs (%u).", JOB_REGISTRY_MAX);
        return sd_bus_error_set_errnof(error, r, "Cannot fetch image %s: %m", id);
}

static int method_prefetch(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        int r;

        if (!manager_has_upstream(m))
                return no_upstream(m, error);

        r = manager_authorize(m, message, ACTION_QUEUE, NULL, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = sd_bus_message_new_method_return(message, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "o");
        if (r >= 0)
                r = manager_prefetch(m, reply);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot prefetch: %m");
        return sd_bus_send(NULL, reply, NULL);
}

static int method_fetch_image(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *id, *checksum;
        Checksum c;
        Job *j;
        int r, has_checksum;

        r = sd_bus_message_read(message, "ss", &id, &checksum);
        if (r < 0)
                return r;
        r = bus_error_check_image_id(error, id);
        if (r < 0)
                return r;
        has_checksum = parse_caller_checksum(checksum, id, &c, error);
        if (has_checksum < 0)
                return has_checksum;
        if (!manager_has_upstream(m))
                return no_upstream(m, error);

        r = manager_authorize(m, message, ACTION_QUEUE, id, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = manager_fetch(m, id, has_checksum ? &c : NULL, &j);
        if (r < 0)
                return fetch_error(error, r, id);
        return sd_bus_reply_method_return(message, "o", job_path(j));
}

static int method_list_jobs(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        int r;

        if (!manager_has_upstream(m))
                return no_upstream(m, error);
        r = sd_bus_message_new_method_return(message, &reply);
        if (r >= 0)
                r = job_registry_append(m->jobs, reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* ---- local readers ------------------------------------------------------------------------------ */

/* Opens a cached image and replies with the fd; the fd counts against the fd budget from the open until
 * our copy is closed, after sd-bus queued the reply with its own. */
static int open_image_reply(Manager *m, sd_bus_message *message, const char *id, sd_bus_error *error) {
        _cleanup_(closep) int fd = -EBADF;
        int r;

        r = image_cache_open_for_read(m->cache, id, &fd);
        if (r == -ENOENT)
                return not_cached(error, id);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot open image %s: %m", id);
        manager_count_hit(m, id);
        return sd_bus_reply_method_return(message, "h", fd); /* sd-bus sends a copy; ours closes */
}

static int method_open_image(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *id;
        int r;

        r = read_image_id(message, &id, error);
        if (r < 0)
                return r;
        /* Authorized first: polkit answers later and the call comes here again, so only that second pass
         * may count a miss; and a caller refused the image learns nothing of it, not even whether it is
         * cached. */
        r = manager_authorize(m, message, ACTION_OPEN, id, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        if (!image_cache_is_cached(m->cache, id)) {
                manager_count_miss(m, id);
                return not_cached(error, id);
        }
        if (!manager_fd_budget_left(m))
                return fd_budget_spent(m, error, id);

        m->n_open_fds++;
        r = open_image_reply(m, message, id, error);
        m->n_open_fds--;
        return r;
}

static int method_pin_image(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(closep) int fd = -EBADF;
        const char *id, *why;
        int r;

        r = sd_bus_message_read(message, "ss", &id, &why);
        if (r < 0)
                return r;
        r = bus_error_check_image_id(error, id);
        if (r < 0)
                return r;
        if (strlen(why) > PIN_WHY_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "The reason for pinning %s is longer than %u characters.", id,
                                         PIN_WHY_MAX);
        if (!image_cache_is_cached(m->cache, id))
                return not_cached(error, id);
        if (m->n_pins >= MANAGER_PINS_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_LIMITS_EXCEEDED, "Too many pins (%u).",
                                         MANAGER_PINS_MAX);
        if (!manager_fd_budget_left(m))
                return fd_budget_spent(m, error, id);

        r = manager_authorize(m, message, ACTION_OPEN, id, error);
        if (r <= 0)
                return r == 0 ? 1 : r;

        r = pin_new(m, message, id, why, &fd);
        if (r == -ENOENT)
                return not_cached(error, id);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot pin image %s: %m", id);
        return sd_bus_reply_method_return(message, "h", fd);
}

/* ---- the object --------------------------------------------------------------------------------- */

const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),

        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Driver", "s", property_get_driver, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("CacheDirectory", "s", property_get_cache_directory, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Upstream", "s", property_get_upstream, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("FleetNodes", "as", property_get_fleet_nodes, 0, 0),
        SD_BUS_PROPERTY("FleetSelf", "s", property_get_fleet_self, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxSize", "t", property_get_max_size, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("KeepFree", "t", property_get_keep_free, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("FreeSpace", "t", property_get_free_space, 0, 0),
        SD_BUS_PROPERTY("StallTimeUSec", "t", property_get_stall_time, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("CurrentSize", "t", property_get_current_size, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ImageCount", "u", property_get_image_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("QueuedCount", "u", property_get_queued_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Hits", "t", property_get_hits, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Misses", "t", property_get_misses, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BytesServed", "t", property_get_bytes_served, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ListenAddress", "s", property_get_listen_address, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("PinCount", "u", property_get_pin_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),

        SD_BUS_METHOD_WITH_ARGS("ListImages", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(stttts)", images),
                                method_list_images, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetImage", SD_BUS_ARGS("s", id), SD_BUS_RESULT("(stttts)", image),
                                method_get_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListQueued", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(st)", images),
                                method_list_queued, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListQueuedDetails", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(stsst)", images),
                                method_list_queued_details, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("QueueImage", SD_BUS_ARGS("s", id, "s", checksum), SD_BUS_RESULT("b", queued),
                                method_queue_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DequeueImage", SD_BUS_ARGS("s", id), SD_BUS_NO_RESULT,
                                method_dequeue_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DequeueAll", SD_BUS_NO_ARGS, SD_BUS_RESULT("u", count),
                                method_dequeue_all, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteImage", SD_BUS_ARGS("s", id), SD_BUS_NO_RESULT,
                                method_delete_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteImageWithFlags", SD_BUS_ARGS("s", id, "t", flags), SD_BUS_NO_RESULT,
                                method_delete_image_with_flags, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteAllImages", SD_BUS_NO_ARGS, SD_BUS_RESULT("u", count),
                                method_delete_all_images, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Prune", SD_BUS_NO_ARGS, SD_BUS_RESULT("u", files, "t", bytes),
                                method_prune, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Clean", SD_BUS_ARGS("t", stall_usec), SD_BUS_RESULT("u", stalled, "u", invalid),
                                method_clean, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Prefetch", SD_BUS_NO_ARGS, SD_BUS_RESULT("ao", jobs),
                                method_prefetch, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("FetchImage", SD_BUS_ARGS("s", id, "s", checksum), SD_BUS_RESULT("o", job),
                                method_fetch_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Verify", SD_BUS_ARGS("s", id), SD_BUS_RESULT("b", good),
                                method_verify, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListJobs", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(ussdo)", jobs),
                                method_list_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("OpenImage", SD_BUS_ARGS("s", id), SD_BUS_RESULT("h", fd),
                                method_open_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("PinImage", SD_BUS_ARGS("s", id, "s", why), SD_BUS_RESULT("h", fd),
                                method_pin_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListPins", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(sus)", pins),
                                method_list_pins, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetImageNodes", SD_BUS_ARGS("s", id), SD_BUS_RESULT("as", nodes),
                                method_get_image_nodes, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetImageSources", SD_BUS_ARGS("s", id), SD_BUS_RESULT("a(ss)", sources),
                                method_get_image_nodes, SD_BUS_VTABLE_UNPRIVILEGED),

        SD_BUS_SIGNAL_WITH_ARGS("ImageCached", SD_BUS_ARGS("s", id, "t", size), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ImageRemoved", SD_BUS_ARGS("s", id, "s", reason), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ImageQueued", SD_BUS_ARGS("s", id), 0),
        SD_BUS_SIGNAL_WITH_ARGS("JobNew", SD_BUS_ARGS("u", id, "o", path), 0),
        SD_BUS_SIGNAL_WITH_ARGS("JobRemoved", SD_BUS_ARGS("u", id, "o", path, "s", result), 0),

        SD_BUS_VTABLE_END
};

/* "No medium found" alone does not tell that the environment has no bus: say which one was looked for
 * and how to get one (the words imgcachectl uses too). */
static int log_bus_connect_error(Manager *m, int r) {
        _cleanup_(freep) char *hint = NULL;
        const char *which = m->user ? "session" : "system";

        if (bus_connect_hint(m->user, r, &hint) < 0 || !hint)
                return log_error_errno(r, "Cannot connect to the %s bus: %m", which);
        return log_error_errno(r, "Cannot connect to the %s bus: %m (%s)", which, hint);
}

int manager_connect_bus(Manager *m) {
        int r;

        r = m->user ? sd_bus_open_user(&m->bus) : sd_bus_open_system(&m->bus);
        if (r < 0)
                return log_bus_connect_error(m, r);

        r = sd_bus_add_object_vtable(m->bus, NULL, MANAGER_PATH, MANAGER_INTERFACE, manager_vtable, m);
        if (r < 0)
                return log_error_errno(r, "Cannot export %s: %m", MANAGER_PATH);
        r = job_registry_attach_bus(m->jobs, m->bus, MANAGER_PATH, MANAGER_INTERFACE);
        if (r < 0)
                return r;
        r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Cannot attach the bus to the event loop: %m");
        r = sd_bus_set_exit_on_disconnect(m->bus, true);
        if (r < 0)
                return log_error_errno(r, "Cannot set exit on disconnect: %m");

        r = sd_bus_request_name(m->bus, MANAGER_BUS_NAME, 0);
        if (r == -EEXIST)
                return log_error_errno(r, "%s is already owned by another process.", MANAGER_BUS_NAME);
        if (r < 0)
                return log_error_errno(r, "Cannot own %s on the %s bus: %m", MANAGER_BUS_NAME,
                                       m->user ? "session" : "system");
        return 0;
}
