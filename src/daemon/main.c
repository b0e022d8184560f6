/* SPDX-License-Identifier: MIT */
/* imgcached's entry point: the command line, the event loop and its signals, and the Manager's life. */

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include <systemd/sd-daemon.h>

#include "bus-error.h"
#include "imgcache-config.h"
#include "log.h"
#include "manager.h"

static ManagerOptions arg_options = {};

static void help(void) {
        printf("%s [OPTIONS...]\n\n"
               "The image cache daemon: org.imgcache.Manager on D-Bus.\n\n"
               "  -h --help             Show this help\n"
               "     --version          Show package version\n"
               "     --user             Serve the session bus, cache in $XDG_CACHE_HOME/imgcache\n"
               "     --config=PATH      Configuration file (default %s/imgcache/imgcached.conf,\n"
               "                        $XDG_CONFIG_HOME/imgcache/imgcached.conf with --user)\n"
               "     --cache-dir=PATH   Cache directory, overriding Directory=\n"
               "     --upstream=URL     Upstream URL, overriding URL=\n"
               "     --listen=ADDR      HTTP listen address, overriding Listen=\n",
               program_invocation_short_name, SYSCONFDIR);
}

/* 0: run; 1: done (help/version); negative: bad usage, logged. */
static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_USER,
                ARG_CONFIG,
                ARG_CACHE_DIR,
                ARG_UPSTREAM,
                ARG_LISTEN,
        };
        static const struct option options[] = {
                { "help",      no_argument,       NULL, 'h'           },
                { "version",   no_argument,       NULL, ARG_VERSION   },
                { "user",      no_argument,       NULL, ARG_USER      },
                { "config",    required_argument, NULL, ARG_CONFIG    },
                { "cache-dir", required_argument, NULL, ARG_CACHE_DIR },
                { "upstream",  required_argument, NULL, ARG_UPSTREAM  },
                { "listen",    required_argument, NULL, ARG_LISTEN    },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 1;
                case ARG_VERSION:
                        printf("imgcached %s\n", PROJECT_VERSION);
                        return 1;
                case ARG_USER:
                        arg_options.user = true;
                        break;
                case ARG_CONFIG:
                        arg_options.config_path = optarg;
                        break;
                case ARG_CACHE_DIR:
                        if (optarg[0] != '/')
                                return log_error_errno(EINVAL, "--cache-dir= must be an absolute path: %s", optarg);
                        arg_options.cache_dir = optarg;
                        break;
                case ARG_UPSTREAM:
                        arg_options.upstream = optarg;
                        break;
                case ARG_LISTEN:
                        arg_options.listen = optarg;
                        break;
                case '?':
                        return -EINVAL;
                default:
                        abort();
                }

        if (optind < argc)
                return log_error_errno(EINVAL, "%s takes no arguments.", program_invocation_short_name);
        return 0;
}

static int on_sigterm(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Shutting down.");
        log_debug("Received %s, exiting.", strsignal((int) si->ssi_signo));
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) manager_reload(userdata);
        return 0;
}

static int setup_signals(Manager *m) {
        sigset_t mask;
        int r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Cannot block signals: %m");

        r = sd_event_add_signal(m->event, NULL, SIGTERM, on_sigterm, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, on_sigterm, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGHUP, on_sighup, m);
        if (r < 0)
                return log_error_errno(r, "Cannot watch signals: %m");
        return 0;
}

static int run(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        log_setup("imgcached");

        r = parse_argv(argc, argv);
        if (r != 0)
                return r < 0 ? r : 0;

        r = imgcache_bus_error_register();
        if (r < 0)
                return log_error_errno(r, "Cannot register the bus errors: %m");

        r = manager_new(&arg_options, &m);
        if (r < 0)
                return r;
        r = setup_signals(m);
        if (r < 0)
                return r;
        r = manager_load(m);
        if (r < 0)
                return r;
        r = manager_start_http(m);
        if (r < 0)
                return r;
        r = manager_connect_bus(m);
        if (r < 0)
                return r;

        log_info("Serving %s (%zu images) on the %s bus.", m->cache_dir, image_cache_count(m->cache),
                 m->user ? "session" : "system");
        manager_fetch_queue_on_start(m); /* PrefetchOnQueue=yes: what was queued before is fetched now */
        manager_notify_status(m, "READY=1\n");

        r = manager_run(m);
        (void) sd_notify(false, "STOPPING=1");
        return r;
}

int main(int argc, char *argv[]) {
        return run(argc, argv) < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
