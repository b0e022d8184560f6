/* SPDX-License-Identifier: MIT */
/* The Manager (manager.h): the cache, the bus connection, the fetcher, the HTTP server and the fleet it
 * owns, their setup, reload and free, and the counters every front end reports. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/time.h>

#include <systemd/sd-daemon.h>

#include "fetch.h"
#include "http.h"
#include "imgcache-config.h"
#include "job.h"
#include "log.h"
#include "manager.h"
#include "parse-util.h"
#include "pin.h"
#include "polkit.h"
#include "verify.h"

/* How long a new daemon waits for the cache lock of one that is just exiting on idle: the bus may
 * activate us while the old process is still closing the cache. */
#define MANAGER_LOCK_WAIT_USEC (2 * USEC_PER_SEC)

static char *default_path(bool user, const char *xdg_var, const char *home_suffix, const char *system_path,
                          const char *leaf) {
        const char *base;
        char *p;

        if (!user)
                base = system_path;
        else {
                base = secure_getenv(xdg_var);
                if (isempty(base)) {
                        const char *home = secure_getenv("HOME");
                        if (isempty(home))
                                return NULL;
                        return asprintf(&p, "%s/%s/imgcache%s", home, home_suffix, leaf) < 0 ? NULL : p;
                }
        }
        return asprintf(&p, "%s/imgcache%s", base, leaf) < 0 ? NULL : p;
}

/* Raises the soft RLIMIT_NOFILE to the hard limit, as systemd recommends for daemons: the soft default of
 * 1024 only protects programs that use select(), and nothing here does (sd-event, MHD in epoll mode and
 * curl's socket callbacks all use epoll). Returns the soft limit in effect afterwards. */
static uint64_t raise_fd_limit(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
                log_warning_errno(errno, "Cannot read RLIMIT_NOFILE, assuming 1024: %m");
                return 1024;
        }
        if (rl.rlim_cur < rl.rlim_max) {
                struct rlimit raised = { .rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max };

                if (setrlimit(RLIMIT_NOFILE, &raised) >= 0)
                        rl = raised;
                else
                        log_debug_errno(errno, "Cannot raise RLIMIT_NOFILE from %llu to %llu, ignoring: %m",
                                        (unsigned long long) rl.rlim_cur, (unsigned long long) rl.rlim_max);
        }
        return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t) rl.rlim_cur;
}

/* The fds everything but pins and OpenImage may need at once under configuration c. */
static uint64_t fds_for_others(const Config *c) {
        return (uint64_t) MAX(c->max_connections, 1U) * MANAGER_FDS_PER_CONNECTION +
                (uint64_t) MAX(c->max_parallel_fetches, 1U) * MANAGER_FDS_PER_FILL +
                (uint64_t) MANAGER_VERIFY_MAX * MANAGER_FDS_PER_VERIFY + MANAGER_FDS_RESERVE;
}

/* Sizes the budget of pins and OpenImage: MANAGER_PINS_MAX when RLIMIT_NOFILE holds it next to the share
 * of connections, fills and the reserve, else what is left after that share (possibly nothing). Warns when
 * the budget shrinks to a new value, naming what is needed and what the limit is. */
static void manager_update_fd_budget(Manager *m) {
        uint64_t others = fds_for_others(&m->config), needed = others + MANAGER_PINS_MAX;
        unsigned budget;

        if (m->fd_limit >= needed)
                budget = MANAGER_PINS_MAX;
        else
                budget = m->fd_limit > others ? (unsigned) (m->fd_limit - others) : 0;

        if (budget < MANAGER_PINS_MAX && budget != m->fd_budget)
                log_warning("MaxConnections=%u, MaxParallelFetches=%u and %u pins need %" PRIu64 " file "
                            "descriptors, but RLIMIT_NOFILE is %" PRIu64 "; limiting pins and OpenImage to %u "
                            "file descriptors. Raise LimitNOFILE= of imgcached.service or lower MaxConnections=.",
                            m->config.max_connections, m->config.max_parallel_fetches, MANAGER_PINS_MAX, needed,
                            m->fd_limit, budget);
        else if (budget != m->fd_budget)
                log_debug("Budget of pins and OpenImage: %u file descriptors (RLIMIT_NOFILE %" PRIu64
                          ", %" PRIu64 " needed).", budget, m->fd_limit, needed);
        m->fd_budget = budget;
}

bool manager_fd_budget_left(const Manager *m) {
        return (uint64_t) m->n_pins + m->n_open_fds < m->fd_budget;
}

int manager_new(const ManagerOptions *o, Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = calloc(1, sizeof(Manager));
        if (!m)
                return log_error_errno(ENOMEM, "Out of memory.");
        m->user = o->user;
        m->fd_limit = raise_fd_limit();
        m->fd_budget = UINT_MAX;
        m->retries = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, queue_retry_free_void);
        r = config_init(&m->config);
        if (r < 0)
                return log_error_errno(r, "Cannot initialize the configuration: %m");

        m->config_path = o->config_path ? strdup(o->config_path) :
                default_path(m->user, "XDG_CONFIG_HOME", ".config", SYSCONFDIR, "/imgcached.conf");
        if (!m->config_path)
                return log_error_errno(ENOMEM, "Cannot determine the configuration file (is $HOME set?).");
        if ((o->cache_dir && !(m->cache_dir = strdup(o->cache_dir))) ||
            (o->upstream && !(m->upstream_override = strdup(o->upstream))) ||
            (o->listen && !(m->listen_override = strdup(o->listen))))
                return log_error_errno(ENOMEM, "Out of memory.");
        m->cache_dir_from_command_line = o->cache_dir;

        r = sd_event_new(&m->event);
        if (r < 0)
                return log_error_errno(r, "Cannot allocate the event loop: %m");
        /* Under WatchdogSec= the loop pings systemd itself (WATCHDOG=1 at half the interval): a hung
         * loop is exactly what the watchdog is there to catch. A no-op without $WATCHDOG_USEC. */
        r = sd_event_set_watchdog(m->event, true);
        if (r < 0)
                log_warning_errno(r, "Cannot enable the service watchdog, ignoring: %m");

        if (!m->user) {
                r = polkit_registry_new(&m->polkit);
                if (r < 0)
                        return log_error_errno(r, "Out of memory.");
        }

        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        m->http = http_server_free(m->http); /* before the fetcher: its streams hold fills */
        while (m->nodes_calls) /* before the fetcher: their requests use its curl loop */
                manager_nodes_call_free(m->nodes_calls->data);
        manager_free_fetcher(m); /* cancels fills (partial files stay for a resume); JobRemoved still goes out */
        g_hash_table_destroy(m->retries); /* after the fetcher: its observer looks them up; timers before the loop */
        while (m->verify_jobs)
                verify_job_free(m->verify_jobs->data);
        while (m->pins)
                pin_free(m->pins->data);
        m->polkit = polkit_registry_free(m->polkit);

        sd_event_source_disable_unref(m->properties_timer);
        sd_event_source_disable_unref(m->flush_timer);
        sd_event_source_disable_unref(m->free_space_timer);
        if (m->bus) {
                (void) sd_bus_flush(m->bus);
                m->bus = sd_bus_close_unref(m->bus);
        }
        image_cache_close(m->cache); /* flushes batched hits */
        sd_event_unref(m->event);

        property_snapshot_done(&m->announced);
        config_done(&m->config);
        free(m->config_path);
        free(m->cache_dir);
        free(m->upstream_override);
        free(m->listen_override);
        free(m->restart_needed);
        free(m);
        return NULL;
}

static void on_config_warning(const char *message, void *userdata) {
        log_warning("%s", message);
}

/* Loads the file (and drop-ins) into *ret; logs and fails on a bad value. */
static int load_config_file(const char *path, Config *ret) {
        _cleanup_(freep) char *error = NULL;
        Config c;
        int r;

        r = config_init(&c);
        if (r < 0)
                return log_error_errno(r, "Cannot initialize the configuration: %m");
        r = config_load(&c, path, on_config_warning, NULL, &error);
        if (r < 0) {
                config_done(&c);
                if (error)
                        return log_error_errno(r, "%s", error);
                return log_error_errno(r, "Cannot load %s: %m", path);
        }
        *ret = c;
        return 0;
}

static void sigalrm_nop(int sig) {
}

/* Blocks until no process holds the lock of dir (or timeout passes). Used only after the store
 * reported -EBUSY, so an exiting predecessor can finish; a daemon that really runs keeps the lock and
 * the store's own message names it. */
static void wait_for_cache_lock(const char *dir, usec_t timeout) {
        struct sigaction sa = { .sa_handler = sigalrm_nop }, old_sa;
        struct itimerval it = { .it_value = { .tv_sec = (time_t) (timeout / USEC_PER_SEC),
                                              .tv_usec = (suseconds_t) (timeout % USEC_PER_SEC) } },
                         off = {};
        _cleanup_(closep) int dir_fd = -EBADF, fd = -EBADF;

        dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0)
                return;
        fd = openat(dir_fd, IMAGE_CACHE_LOCK_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return;

        /* No SA_RESTART: the alarm interrupts flock() with EINTR. */
        if (sigaction(SIGALRM, &sa, &old_sa) < 0)
                return;
        (void) setitimer(ITIMER_REAL, &it, NULL);
        if (flock(fd, LOCK_SH) >= 0)
                (void) flock(fd, LOCK_UN);
        (void) setitimer(ITIMER_REAL, &off, NULL);
        (void) sigaction(SIGALRM, &old_sa, NULL);
}

static int open_cache(Manager *m) {
        _cleanup_(freep) char *error = NULL;
        ReconcileStats s;
        int r;

        r = image_cache_open(m->cache_dir, m->config.driver, &m->cache, &error);
        if (r == -EBUSY) {
                log_debug("Cache directory %s is busy, waiting for its holder to exit.", m->cache_dir);
                wait_for_cache_lock(m->cache_dir, MANAGER_LOCK_WAIT_USEC);
                free(error);
                error = NULL;
                r = image_cache_open(m->cache_dir, m->config.driver, &m->cache, &error);
        }
        if (r < 0 && error)
                return log_error_errno(r, "%s", error); /* names the directory */
        if (r < 0)
                return log_error_errno(r, "Cannot open cache directory %s: %m", m->cache_dir);

        s = image_cache_reconcile_stats(m->cache);
        if (s.adopted + s.dropped + s.resized > 0)
                log_info("Reconciled %s: %u adopted, %u dropped, %u resized.", m->cache_dir, s.adopted,
                         s.dropped, s.resized);
        return 0;
}

static void on_image_added(ImageCache *c, const CacheEntry *e, void *userdata);
static void on_image_removed(ImageCache *c, const char *id, uint64_t size, RemoveReason reason, void *userdata);

int manager_load(Manager *m) {
        static const ImageCacheObserver observer_template = {
                .image_added = on_image_added,
                .image_removed = on_image_removed,
        };
        ImageCacheObserver observer = observer_template;
        int r;

        config_done(&m->config);
        r = load_config_file(m->config_path, &m->config);
        if (r < 0)
                return r;
        manager_update_fd_budget(m);

        if (!m->cache_dir) {
                m->cache_dir = m->config.directory ? strdup(m->config.directory) :
                        secure_getenv("CACHE_DIRECTORY") && !m->user ? strdup(secure_getenv("CACHE_DIRECTORY")) :
                        default_path(m->user, "XDG_CACHE_HOME", ".cache", LOCALSTATEDIR "/cache", "");
                if (!m->cache_dir)
                        return log_error_errno(ENOMEM, "Cannot determine the cache directory (is $HOME set?).");
        }
        if (m->user) {
                r = mkdir_parents_and_self(m->cache_dir, 0700);
                if (r < 0)
                        return log_error_errno(r, "Cannot create cache directory %s: %m", m->cache_dir);
        }

        r = open_cache(m);
        if (r < 0)
                return r;
        observer.userdata = m;
        image_cache_set_observer(m->cache, &observer);
        r = manager_setup_fetcher(m);
        if (r < 0)
                return r;
        manager_snapshot(m, &m->announced);
        manager_arm_free_space_check(m);
        return 0;
}

void manager_notify_status(Manager *m, const char *extra) {
        char size[FORMAT_SIZE_MAX], max[FORMAT_SIZE_MAX] = "unknown MaxSize", ratio[16] = "n/a";
        uint64_t requests = m->hits + m->misses, max_size;

        if (requests > 0)
                (void) snprintf(ratio, sizeof ratio, "%u%%", (unsigned) (m->hits * 100 / requests));
        if (manager_max_size(m, &max_size) >= 0)
                (void) format_size(max, sizeof max, max_size);
        (void) sd_notifyf(false, "%sSTATUS=%zu images, %s of %s, hit ratio %s%s%s", strempty(extra),
                          image_cache_count(m->cache), format_size(size, sizeof size, image_cache_size(m->cache)),
                          max, ratio, m->restart_needed ? "; restart to apply " : "", strempty(m->restart_needed));
}

/* Settings that the running daemon took at start and keeps: a reload names them rather than pretending.
 * Adds to what earlier reloads found (they still wait for the restart). */
static int note_restart_needed(Manager *m, const Config *old, const Config *new) {
        const struct {
                bool changed;
                const char *name;
        } keys[] = {
                { !m->cache_dir_from_command_line && !streq_ptr(old->directory, new->directory), "Directory=" },
                { old->driver != new->driver, "Driver=" },
                { !m->listen_override && !m->listen_from_systemd && !streq_ptr(old->listen, new->listen), "Listen=" },
                { old->max_connections != new->max_connections, "MaxConnections=" },
                /* The fleet is set up once: fills hold their sources, peers their view of us. */
                { !streq_ptr(old->fleet_peers, new->fleet_peers) || !streq_ptr(old->fleet_self, new->fleet_self) ||
                  !streq_ptr(old->peer_token_file, new->peer_token_file) || old->fleet_replicas != new->fleet_replicas ||
                  old->fleet_fanout != new->fleet_fanout ||
                  old->peer_timeout != new->peer_timeout || old->peer_resolve_interval != new->peer_resolve_interval,
                  "[Fleet]" },
        };
        bool any = false;

        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                if (!keys[i].changed || (m->restart_needed && strstr(m->restart_needed, keys[i].name)))
                        continue;
                char *joined = NULL;
                if (asprintf(&joined, "%s%s%s", strempty(m->restart_needed), m->restart_needed ? ", " : "",
                             keys[i].name) < 0)
                        return -ENOMEM;
                free_and_replace(m->restart_needed, joined);
                any = true;
        }
        if (any)
                log_notice("Reloaded %s, but the running daemon keeps its %s until it is restarted.", m->config_path,
                           m->restart_needed);
        return any;
}

/* The parts that take settings at a reload, from m->config; the first refusal (logged, naming the
 * setting) ends it, the parts before it having taken the settings. */
static int manager_apply_config(Manager *m) {
        int r = manager_reconfigure_fetcher(m);
        if (r >= 0 && m->http)
                r = http_server_reconfigure(m->http, &m->config);
        return r;
}

/* All or nothing: a configuration a part refuses (a world-readable CredentialsFile=, a ReadTokenFile=
 * gone) leaves every part on the previous one, and the log says so rather than "Reloaded". */
int manager_reload(Manager *m) {
        Config c, old;
        int r;

        (void) sd_notify(false, "RELOADING=1\nSTATUS=Reloading configuration...");
        r = load_config_file(m->config_path, &c);
        if (r >= 0) {
                old = m->config;
                m->config = c;
                r = manager_apply_config(m);
                if (r < 0) {
                        m->config = old;
                        (void) manager_apply_config(m);
                        config_done(&c);
                } else {
                        (void) note_restart_needed(m, &old, &m->config);
                        config_done(&old);
                        manager_update_fd_budget(m);
                        manager_arm_free_space_check(m);
                        log_info("Reloaded %s.", m->config_path);
                }
        }
        if (r < 0)
                log_warning("Keeping the previous configuration of %s.", m->config_path);
        manager_notify_status(m, "READY=1\n");
        manager_properties_changed(m);
        return r;
}

/* ---- the observer: every image entering or leaving the cache ----------------------------------- */

static void on_image_added(ImageCache *c, const CacheEntry *e, void *userdata) {
        Manager *m = userdata;

        log_image(LOG_INFO, IMGCACHE_MESSAGE_IMAGE_CACHED, e->id, "Cached image %s (%" PRIu64 " bytes).", e->id,
                  e->size);
        manager_forget_retry(m, e->id);
        if (m->bus)
                (void) sd_bus_emit_signal(m->bus, MANAGER_PATH, MANAGER_INTERFACE, "ImageCached", "st", e->id,
                                          e->size);
        manager_properties_changed(m);
}

static void on_image_removed(ImageCache *c, const char *id, uint64_t size, RemoveReason reason, void *userdata) {
        Manager *m = userdata;

        if (reason == REMOVE_PRUNED)
                m->evictions++;

        if (reason == REMOVE_INVALID)
                log_image(LOG_WARNING, IMGCACHE_MESSAGE_IMAGE_INVALID, id,
                          "Image %s is invalid and was moved to invalid/.", id);
        else
                log_image(LOG_INFO, IMGCACHE_MESSAGE_IMAGE_REMOVED, id, "Image %s %s (%" PRIu64 " bytes).", id,
                          remove_reason_to_string(reason), size);
        pins_end_for_image(m, id); /* deleted while pinned, or invalid: nothing left to keep */
        http_server_forget_image(m->http, id); /* the file it held open for hits */
        if (m->bus)
                (void) sd_bus_emit_signal(m->bus, MANAGER_PATH, MANAGER_INTERFACE, "ImageRemoved", "ss", id,
                                          remove_reason_to_string(reason));
        manager_properties_changed(m);
}

/* ---- properties: values, snapshots, coalesced PropertiesChanged ------------------------------- */

uint32_t manager_queued_count(const Manager *m) {
        size_t n = m->cache ? image_cache_queued_count(m->cache) : 0;
        return (uint32_t) MIN(n, (size_t) UINT32_MAX);
}

const char *manager_upstream(const Manager *m) {
        return m->upstream_override ?: strempty(m->config.upstream_url);
}

void property_snapshot_done(PropertySnapshot *s) {
        free(s->driver);
        free(s->cache_directory);
        free(s->upstream);
        *s = (PropertySnapshot) {};
}

void manager_snapshot(const Manager *m, PropertySnapshot *ret) {
        uint64_t max_size = 0, keep_free = 0;
        int max_size_error = manager_max_size(m, &max_size), keep_free_error = manager_keep_free(m, &keep_free);

        *ret = (PropertySnapshot) {
                .driver = strdup(strempty(driver_kind_to_string(manager_driver(m)))),
                .cache_directory = strdup(strempty(m->cache_dir)),
                .upstream = url_redact_userinfo(manager_upstream(m)),
                .max_size = max_size,
                .max_size_error = max_size_error,
                .keep_free = keep_free,
                .keep_free_error = keep_free_error,
                .stall_time = m->config.stall_time,
                .current_size = m->cache ? image_cache_size(m->cache) : 0,
                .image_count = m->cache ? (uint32_t) image_cache_count(m->cache) : 0,
                .queued_count = manager_queued_count(m),
                .hits = m->hits,
                .misses = m->misses,
                .bytes_served = m->bytes_served,
        };
}

static void snapshot_diff(const PropertySnapshot *a, const PropertySnapshot *b, const char **names, size_t *n) {
#define DIFF_STR(field, name) if (!streq_ptr(a->field, b->field)) names[(*n)++] = name
#define DIFF_NUM(field, name) if (a->field != b->field) names[(*n)++] = name
        DIFF_STR(driver, "Driver");
        DIFF_STR(cache_directory, "CacheDirectory");
        DIFF_STR(upstream, "Upstream");
        /* An unresolvable MaxSize has no value to send (and its failing getter would fail the whole
         * signal): it is announced once it resolves again. */
        if (b->max_size_error == 0 && (a->max_size != b->max_size || a->max_size_error != 0))
                names[(*n)++] = "MaxSize";
        if (b->keep_free_error == 0 && (a->keep_free != b->keep_free || a->keep_free_error != 0))
                names[(*n)++] = "KeepFree";
        DIFF_NUM(stall_time, "StallTimeUSec");
        DIFF_NUM(current_size, "CurrentSize");
        DIFF_NUM(image_count, "ImageCount");
        DIFF_NUM(queued_count, "QueuedCount");
        DIFF_NUM(hits, "Hits");
        DIFF_NUM(misses, "Misses");
        DIFF_NUM(bytes_served, "BytesServed");
#undef DIFF_STR
#undef DIFF_NUM
        names[*n] = NULL;
}

static int on_properties_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        PropertySnapshot now;
        const char *names[16];
        size_t n = 0;

        manager_snapshot(m, &now);
        snapshot_diff(&m->announced, &now, names, &n);
        property_snapshot_done(&m->announced);
        m->announced = now;

        if (n > 0 && m->bus) {
                int r = sd_bus_emit_properties_changed_strv(m->bus, MANAGER_PATH, MANAGER_INTERFACE,
                                                            (char **) names);
                if (r < 0)
                        log_debug_errno(r, "Cannot emit PropertiesChanged, ignoring: %m");
        }
        manager_notify_status(m, NULL);
        return 0;
}

/* Arms a disabled one-shot timer source, creating it the first time. */
static void arm_timer(Manager *m, sd_event_source **s, usec_t delay, sd_event_time_handler_t handler,
                      const char *description) {
        int enabled = SD_EVENT_OFF, r;

        if (*s) {
                r = sd_event_source_get_enabled(*s, &enabled);
                if (r >= 0 && enabled != SD_EVENT_OFF)
                        return; /* already pending: coalesce */
                r = sd_event_source_set_time_relative(*s, delay);
                if (r >= 0)
                        r = sd_event_source_set_enabled(*s, SD_EVENT_ONESHOT);
        } else {
                r = sd_event_add_time_relative(m->event, s, CLOCK_MONOTONIC, delay, 0, handler, m);
                if (r >= 0)
                        (void) sd_event_source_set_description(*s, description);
        }
        if (r < 0)
                log_warning_errno(r, "Cannot arm the %s timer, ignoring: %m", description);
}

void manager_properties_changed(Manager *m) {
        arm_timer(m, &m->properties_timer, MANAGER_PROPERTIES_INTERVAL_USEC, on_properties_timer, "properties");
}

static int on_flush_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        int r;

        r = image_cache_flush(m->cache);
        if (r < 0)
                log_warning_errno(r, "Cannot write hit counters of %s, will retry: %m", m->cache_dir);
        if (image_cache_has_unflushed_hits(m->cache))
                arm_timer(m, &m->flush_timer, MANAGER_HIT_FLUSH_USEC, on_flush_timer, "hit-flush");
        return 0;
}

/* ---- KeepFree= while running: a statvfs every FreeSpaceCheckSec= ------------------------------- */

/* Whatever filled the filesystem (another program, a log, images written concurrently), unpinned images
 * make way until KeepFree= holds again. What pins keep from it is logged once, until it changes. */
static void manager_check_free_space(Manager *m) {
        uint64_t keep_free;
        SpaceResult res;
        int r;

        if (!m->cache || manager_keep_free(m, &keep_free) < 0 || keep_free == 0)
                return;
        /* A no-op (one statvfs) while KeepFree= holds. */
        r = image_cache_make_room(m->cache, 0, UINT64_MAX, keep_free, &res);
        if (r < 0)
                log_warning_errno(r, "Cannot free space in %s for KeepFree=: %m", m->cache_dir);
        if (res.files > 0 || (res.keep_free_missing > 0 && !m->keep_free_short))
                manager_log_space("Free space fell below KeepFree=: pruned", &res, UINT64_MAX, keep_free);
        m->keep_free_short = res.keep_free_missing > 0;
}

static int on_free_space_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        manager_check_free_space(m);
        manager_arm_free_space_check(m);
        return 0;
}

void manager_arm_free_space_check(Manager *m) {
        usec_t every = m->config.free_space_check;

        if (every == 0 || every == USEC_INFINITY) {
                (void) sd_event_source_set_enabled(m->free_space_timer, SD_EVENT_OFF);
                return;
        }
        arm_timer(m, &m->free_space_timer, every, on_free_space_timer, "free-space");
}

/* The driver the open cache uses (a reloaded Driver= takes effect at restart). */
DriverKind manager_driver(const Manager *m) {
        return m->cache ? image_cache_driver(m->cache) : m->config.driver;
}

void manager_count_hit(Manager *m, const char *id) {
        m->hits++;
        arm_timer(m, &m->flush_timer, MANAGER_HIT_FLUSH_USEC, on_flush_timer, "hit-flush");
        manager_properties_changed(m);
}

void manager_count_miss(Manager *m, const char *id) {
        m->misses++;
        manager_properties_changed(m);
}

void manager_count_bytes_served(Manager *m, uint64_t n) {
        m->bytes_served += n;
        manager_properties_changed(m);
}

/* ---- the HTTP server (http.h) ------------------------------------------------------------------ */

int manager_start_http(Manager *m) {
        HttpServerOptions o = { .listen_fd = -EBADF, .listen = m->listen_override };
        int r;

        r = http_listen_fd_from_systemd(&o.listen_fd);
        if (r < 0)
                return log_error_errno(r, "Expected exactly one listening stream socket from systemd: %m");

        r = http_server_new(m->event, m->cache, m->fetcher, &m->config, &o, &manager_http_operations, m, &m->http);
        if (r < 0) {
                /* Socket-activated, serving HTTP is the point. Otherwise (Listen= taken, say, by another
                 * instance) the bus API still works: say so and go on. */
                if (o.listen_fd >= 0)
                        return r;
                log_warning("Continuing without HTTP.");
                return 0;
        }

        http_server_set_fleet(m->http, m->fleet);
        m->listen_from_systemd = o.listen_fd >= 0;
        log_debug("HTTP server listening on port %u%s.", http_server_port(m->http),
                  o.listen_fd >= 0 ? " (socket from systemd)" : "");
        return 0;
}

/* ---- authorization, idleness, the loop -------------------------------------------------------- */

int manager_authorize(Manager *m, sd_bus_message *message, const char *action, const char *image_id,
                      sd_bus_error *error) {
        if (!m->polkit)
                return 1; /* --user: the session bus admits only our own user */
        return polkit_verify_async(m->polkit, message, action, image_id, error);
}

bool manager_is_busy(const Manager *m) {
        return polkit_registry_pending(m->polkit) > 0 || m->n_verify_jobs > 0 || m->n_pins > 0 ||
                (m->fetcher && fetcher_n_active(m->fetcher) > 0) || job_registry_size(m->jobs) > 0 ||
                (m->http && http_server_n_connections(m->http) > 0);
}

static int on_name_released(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;

        /* Every call the bus routed to us before the release is already in our queue, ahead of this
         * reply; calls after it wait for the next activation. */
        if (sd_bus_message_is_method_error(reply, NULL))
                log_warning("Cannot release %s: %s", MANAGER_BUS_NAME, sd_bus_message_get_error(reply)->message);
        m->name_released = true;
        return 0;
}

static int manager_release_name(Manager *m) {
        log_info("Idle for %s, exiting.", format_timespan((char[FORMAT_TIMESPAN_MAX]) {}, FORMAT_TIMESPAN_MAX,
                                                         m->config.exit_on_idle));
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Exiting on idle.");
        return sd_bus_release_name_async(m->bus, NULL, MANAGER_BUS_NAME, on_name_released, m);
}

/* When the daemon may exit on idle: ExitOnIdleSec after the last dispatched event with nothing in flight.
 * A wake-up that dispatches nothing (the watchdog ping sd-event sends by itself) is not activity. */
static usec_t next_idle_deadline(const Manager *m, usec_t deadline, bool had_activity) {
        /* A retry scheduled keeps the daemon: its state lives only here (manager-fetch.c). */
        if (m->config.exit_on_idle == USEC_INFINITY || manager_is_busy(m) || manager_retries_pending(m))
                return USEC_INFINITY;
        if (had_activity || deadline == USEC_INFINITY)
                return usec_add(now_usec(CLOCK_MONOTONIC), m->config.exit_on_idle);
        return deadline;
}

int manager_run(Manager *m) {
        usec_t idle_deadline = USEC_INFINITY;
        bool releasing = false, had_activity = true;
        int r, code = 0;

        for (;;) {
                if (sd_event_get_state(m->event) == SD_EVENT_FINISHED)
                        break;
                if (m->name_released && !manager_is_busy(m)) {
                        (void) sd_bus_flush(m->bus);
                        break;
                }

                idle_deadline = releasing ? USEC_INFINITY : next_idle_deadline(m, idle_deadline, had_activity);
                usec_t now = now_usec(CLOCK_MONOTONIC);
                if (idle_deadline != USEC_INFINITY && now >= idle_deadline) {
                        r = manager_release_name(m);
                        if (r < 0)
                                return log_error_errno(r, "Cannot release the bus name: %m");
                        releasing = true;
                        continue;
                }

                r = sd_event_run(m->event, idle_deadline == USEC_INFINITY ? UINT64_MAX : idle_deadline - now);
                if (r < 0)
                        return log_error_errno(r, "Event loop failed: %m");
                had_activity = r > 0;
        }

        if (sd_event_get_state(m->event) == SD_EVENT_FINISHED)
                (void) sd_event_get_exit_code(m->event, &code);
        return code;
}
