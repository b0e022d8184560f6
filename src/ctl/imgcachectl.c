/* SPDX-License-Identifier: MIT */

/* imgcachectl: the command line of imgcached. It talks only D-Bus (org.imgcache.Manager, see
 * dbus/org.imgcache.Manager.xml), on the system bus by default, the session bus with --user, a remote
 * host's system bus with -H, or a container's with -M.
 *
 * This file holds the options, --help and the verb table. The verbs live by what they do: ctl-list.c
 * (looking), ctl-cache.c (changing the cache and the queue), ctl-jobs.c with ctl-watch.c (fetch jobs),
 * ctl-pins.c (pins); ctl-bus.c and ctl-output.c are what they all share. */

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>

#include <systemd/sd-bus.h>

#include "bus-error.h"
#include "checksum.h"
#include "ctl-cache.h"
#include "ctl-jobs.h"
#include "ctl-list.h"
#include "ctl-fleet.h"
#include "ctl-pins.h"
#include "ctl-util.h"
#include "imgcache-config.h"
#include "imgcachectl.h"
#include "log.h"
#include "parse-util.h"
#include "util.h"

Transport arg_transport = TRANSPORT_LOCAL;
const char *arg_host = NULL;
bool arg_user = false;
JsonMode arg_json = JSON_MODE_OFF;
bool arg_pager = true;
bool arg_legend = true;
bool arg_quiet = false;
bool arg_ask_password = true;
bool arg_force = false;
bool arg_ignore_pins = false;
bool arg_no_block = false;
SortKey arg_sort = SORT_ACCESSED;
const char *arg_checksum = NULL;
usec_t arg_stall_time = 0;
const char *arg_why = NULL;

static const char *const json_mode_table[_JSON_MODE_MAX] = {
        [JSON_MODE_OFF] = "off",
        [JSON_MODE_SHORT] = "short",
        [JSON_MODE_PRETTY] = "pretty",
};

static const char *const sort_key_table[_SORT_KEY_MAX] = {
        [SORT_ACCESSED] = "accessed",
        [SORT_ID] = "id",
        [SORT_SIZE] = "size",
        [SORT_HITS] = "hits",
        [SORT_MODIFIED] = "modified",
};

static int string_table_lookup(const char *const *table, size_t n, const char *s) {
        for (size_t i = 0; i < n; i++)
                if (table[i] && streq(table[i], s))
                        return (int) i;
        return -EINVAL;
}

typedef enum VerbFlags {
        VERB_DEFAULT = 1 << 0,  /* run when no verb is given */
} VerbFlags;

#define ARGS_ANY UINT_MAX

typedef struct Verb {
        const char *name;
        unsigned min_args;      /* counting the verb itself */
        unsigned max_args;
        VerbFlags flags;
        VerbFunction dispatch;
} Verb;

static const Verb verbs[] = {
        { "status",                   1, 1,        VERB_DEFAULT, verb_status      },
        { "list",                     1, 1,        0,            verb_list        },
        { "list-cached",              1, 1,        0,            verb_list        },
        { "list-queued",              1, 1,        0,            verb_list_queued },
        { "show",                     2, 2,        0,            verb_show        },
        { "queue",                    2, ARGS_ANY, 0,            verb_queue       },
        { "queue-image",              2, ARGS_ANY, 0,            verb_queue       },
        { "dequeue",                  2, ARGS_ANY, 0,            verb_dequeue     },
        { "delete-queued-image",      2, ARGS_ANY, 0,            verb_dequeue     },
        { "dequeue-all",              1, 1,        0,            verb_dequeue_all },
        { "delete-all-queued-images", 1, 1,        0,            verb_dequeue_all },
        { "delete",                   2, ARGS_ANY, 0,            verb_delete      },
        { "delete-cached-image",      2, ARGS_ANY, 0,            verb_delete      },
        { "delete-all",               1, 1,        0,            verb_delete_all  },
        { "delete-all-cached-images", 1, 1,        0,            verb_delete_all  },
        { "prune",                    1, 1,        0,            verb_prune       },
        { "clean",                    1, 1,        0,            verb_clean       },
        { "prefetch",                 1, 1,        0,            verb_prefetch    },
        { "fetch",                    2, ARGS_ANY, 0,            verb_fetch       },
        { "verify",                   1, ARGS_ANY, 0,            verb_verify      },
        { "jobs",                     1, 1,        0,            verb_jobs        },
        { "cancel",                   2, ARGS_ANY, 0,            verb_cancel      },
        { "pins",                     1, 1,        0,            verb_pins        },
        { "pin",                      3, ARGS_ANY, 0,            verb_pin         },
        { "fleet",                    1, ARGS_ANY, 0,            verb_fleet       },
};

static int dispatch_verb(int argc, char *argv[], Context *c) {
        static char *default_argv[2] = {};
        const Verb *verb = NULL;
        unsigned n;

        if (argc <= 0) {
                for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                        if (verbs[i].flags & VERB_DEFAULT) {
                                default_argv[0] = (char *) verbs[i].name;
                                return verbs[i].dispatch(1, default_argv, c);
                        }
                return log_error_errno(EINVAL, "Command verb required.");
        }

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (streq(verbs[i].name, argv[0])) {
                        verb = &verbs[i];
                        break;
                }
        if (!verb)
                return log_error_errno(EINVAL, "Unknown command verb '%s', see --help.", argv[0]);

        n = (unsigned) argc;
        if (n < verb->min_args)
                return log_error_errno(EINVAL, "Too few arguments for '%s', see --help.", argv[0]);
        if (verb->max_args != ARGS_ANY && n > verb->max_args)
                return log_error_errno(EINVAL, "Too many arguments for '%s', see --help.", argv[0]);

        return verb->dispatch(argc, argv, c);
}

static void help(void) {
        printf("%1$s [OPTIONS...] COMMAND ...\n"
               "\n"
               "Control the image cache daemon imgcached.\n"
               "\n"
               "Cache commands:\n"
               "  status                   Show the daemon's state at a glance (default)\n"
               "  list                     List cached images (alias: list-cached)\n"
               "  list-queued              List images queued for prefetching\n"
               "  show ID                  Show one cached image\n"
               "  queue ID...              Queue images for prefetching (alias: queue-image)\n"
               "  dequeue ID...            Remove images from the queue\n"
               "                           (alias: delete-queued-image)\n"
               "  dequeue-all              Empty the queue (alias: delete-all-queued-images)\n"
               "  delete ID...             Delete cached images (alias: delete-cached-image)\n"
               "  delete-all               Delete all cached images\n"
               "                           (alias: delete-all-cached-images)\n"
               "  prune                    Remove least recently used images until the cache\n"
               "                           fits its maximum size\n"
               "  clean                    Remove invalid images and stalled downloads\n"
               "  verify [ID...]           Re-hash cached images, all when no ID is given\n"
               "\n"
               "Transfer commands:\n"
               "  prefetch                 Fetch every queued image\n"
               "  fetch ID...              Fetch images now\n"
               "  jobs                     List fetch jobs\n"
               "  cancel JOB...            Cancel fetch jobs\n"
               "\n"
               "Pin commands:\n"
               "  pins                     List pinned images and who holds them\n"
               "  fleet [ID...]            List the nodes of the fleet, or those holding images\n"
               "  pin ID [--why=TEXT] -- CMD [ARGS...]\n"
               "                           Keep an image from being pruned or deleted\n"
               "                           while a command runs\n"
               "\n"
               "Options:\n"
               "  -h --help                Show this help\n"
               "     --version             Show the package version\n"
               "  -H --host=[USER@]HOST    Operate on a remote host (over ssh)\n"
               "  -M --machine=CONTAINER   Operate on a local container\n"
               "     --user                Talk to imgcached --user on the session bus\n"
               "     --json=pretty|short|off\n"
               "                           Print JSON instead of text\n"
               "     --no-pager            Do not pipe output into a pager\n"
               "     --no-legend           Do not show headers and footers\n"
               "  -q --quiet               Print only errors and requested listings\n"
               "     --no-ask-password     Do not ask for a password for privileged calls\n"
               "  -f --force               Do not ask before destructive commands\n"
               "     --ignore-pins         Let 'delete' delete pinned images too\n"
               "     --sort=id|size|hits|accessed|modified\n"
               "                           Order of 'list' (default: accessed)\n"
               "     --checksum=ALGO:HEX   Expected checksum for 'queue' and 'fetch' of one image\n"
               "     --stall-time=TIMESPAN Age of stalled downloads for 'clean'\n"
               "     --no-block            Do not wait for 'fetch' and 'prefetch' jobs\n"
               "     --why=TEXT            Reason shown by 'pins' for a 'pin'\n"
               "\n"
               "See the imgcachectl(1) man page for details.\n",
               program_invocation_short_name);
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_USER,
                ARG_JSON,
                ARG_NO_PAGER,
                ARG_NO_LEGEND,
                ARG_NO_ASK_PASSWORD,
                ARG_SORT,
                ARG_CHECKSUM,
                ARG_STALL_TIME,
                ARG_NO_BLOCK,
                ARG_IGNORE_PINS,
                ARG_WHY,
        };

        static const struct option options[] = {
                { "help",            no_argument,       NULL, 'h'                 },
                { "version",         no_argument,       NULL, ARG_VERSION         },
                { "host",            required_argument, NULL, 'H'                 },
                { "machine",         required_argument, NULL, 'M'                 },
                { "user",            no_argument,       NULL, ARG_USER            },
                { "json",            required_argument, NULL, ARG_JSON            },
                { "no-pager",        no_argument,       NULL, ARG_NO_PAGER        },
                { "no-legend",       no_argument,       NULL, ARG_NO_LEGEND       },
                { "quiet",           no_argument,       NULL, 'q'                 },
                { "no-ask-password", no_argument,       NULL, ARG_NO_ASK_PASSWORD },
                { "force",           no_argument,       NULL, 'f'                 },
                { "sort",            required_argument, NULL, ARG_SORT            },
                { "checksum",        required_argument, NULL, ARG_CHECKSUM        },
                { "stall-time",      required_argument, NULL, ARG_STALL_TIME      },
                { "no-block",        no_argument,       NULL, ARG_NO_BLOCK        },
                { "ignore-pins",     no_argument,       NULL, ARG_IGNORE_PINS     },
                { "why",             required_argument, NULL, ARG_WHY             },
                {}
        };

        int c, r;

        /* GNU getopt permutes: options may follow the verb; "--" ends them (for ids starting with '-'). */
        while ((c = getopt_long(argc, argv, "hH:M:qf", options, NULL)) >= 0) {
                switch (c) {

                case 'h':
                        help();
                        return 0;

                case ARG_VERSION:
                        printf("imgcachectl %s\n", PROJECT_VERSION);
                        return 0;

                case 'H':
                        arg_transport = TRANSPORT_REMOTE;
                        arg_host = optarg;
                        break;

                case 'M':
                        arg_transport = TRANSPORT_MACHINE;
                        arg_host = optarg;
                        break;

                case ARG_USER:
                        arg_user = true;
                        break;

                case ARG_JSON:
                        r = string_table_lookup(json_mode_table, ELEMENTSOF(json_mode_table), optarg);
                        if (r < 0)
                                return log_error_errno(EINVAL, "Invalid --json= mode '%s': expected pretty, short or off.",
                                                       optarg);
                        arg_json = (JsonMode) r;
                        break;

                case ARG_NO_PAGER:
                        arg_pager = false;
                        break;

                case ARG_NO_LEGEND:
                        arg_legend = false;
                        break;

                case 'q':
                        arg_quiet = true;
                        break;

                case ARG_NO_ASK_PASSWORD:
                        arg_ask_password = false;
                        break;

                case 'f':
                        arg_force = true;
                        break;

                case ARG_SORT:
                        r = string_table_lookup(sort_key_table, ELEMENTSOF(sort_key_table), optarg);
                        if (r < 0)
                                return log_error_errno(EINVAL, "Invalid --sort= key '%s': expected id, size, hits, "
                                                       "accessed or modified.", optarg);
                        arg_sort = (SortKey) r;
                        break;

                case ARG_CHECKSUM: {
                        Checksum sum;

                        if (checksum_from_string(optarg, &sum) < 0)
                                return log_error_errno(EINVAL, "Invalid checksum '%s': expected sha512:HEX, sha256:HEX, "
                                                       "md5:HEX or bare hex digits.", optarg);
                        arg_checksum = optarg;
                        break;
                }

                case ARG_STALL_TIME:
                        r = parse_timespan(optarg, USEC_PER_SEC, &arg_stall_time);
                        if (r < 0 || arg_stall_time == 0 || arg_stall_time == USEC_INFINITY)
                                return log_error_errno(EINVAL, "Invalid --stall-time= '%s': expected a positive "
                                                       "time span such as 3600, 90min or 1d.", optarg);
                        break;

                case ARG_NO_BLOCK:
                        arg_no_block = true;
                        break;

                case ARG_IGNORE_PINS:
                        arg_ignore_pins = true;
                        break;

                case ARG_WHY:
                        arg_why = optarg;
                        break;

                case '?':
                        return -EINVAL;

                default:
                        abort();
                }
        }

        if (arg_user && arg_transport == TRANSPORT_REMOTE)
                return log_error_errno(EINVAL, "--user cannot be combined with --host=: only the remote system "
                                       "bus is reachable over ssh.");

        return 1;
}

int main(int argc, char *argv[]) {
        Context c = {};
        int r;

        setlocale(LC_ALL, "");
        log_setup("imgcachectl");

        r = imgcache_bus_error_register();
        if (r < 0)
                log_debug_errno(r, "Failed to register the imgcache error map, ignoring: %m");

        r = parse_argv(argc, argv);
        if (r <= 0)
                goto finish;

        r = dispatch_verb(argc - optind, argv + optind, &c);

finish:
        pager_close();
        polkit_agent_close();
        sd_bus_flush_close_unref(c.bus);
        return r < 0 ? EXIT_FAILURE : c.exit_status;
}
