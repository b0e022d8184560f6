/* SPDX-License-Identifier: MIT */

/* upstream-server: the test fixture's upstream as a program, for demos and shell tests.
 *
 *   upstream-server --dir=/srv/images --port=8080 [--glance] [knobs…]
 *
 * serves every regular file NAME of the directory as /NAME and /images/NAME (and, with --glance, the
 * Glance record /v2/images/NAME and the data /v2/images/NAME/file) on 127.0.0.1 until SIGTERM or SIGINT.
 * --port=0 picks a free port; --port-file=PATH writes it there once the server listens (written to a
 * temporary name and renamed, so a reader never sees half of it). Knobs apply to every file; see --help. */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream-fixture.h"

static void help(void) {
        printf("upstream-server --dir=DIR [OPTIONS]\n\n"
               "Serves the files of DIR on 127.0.0.1 as /NAME and /images/NAME until SIGTERM.\n\n"
               "  --dir=DIR              directory of images (required)\n"
               "  --port=N               port (default 0: any free one)\n"
               "  --port-file=PATH       write the port to PATH once listening\n"
               "  --glance               also serve /v2/images/NAME (record JSON) and /v2/images/NAME/file\n"
               "  --token=T              require X-Auth-Token: T (else 401)\n"
               "  --status=N             answer every image request with status N (404, 500, 401…)\n"
               "  --no-content-length    chunked transfer encoding\n"
               "  --digest=KIND          md5-hex, md5-base64, sha256, sha512, repr-sha256, repr-sha512\n"
               "  --etag=E               ETag for every file (default: per file from inode/size/mtime; '' none)\n"
               "  --range=MODE           honour (default), ignore, ignore-if-range\n"
               "  --stall-after=N        stop sending after N body bytes (until SIGUSR1 releases)\n"
               "  --reset-after=N        TCP RST after N body bytes\n"
               "  --close-after=N        close after N body bytes, short of Content-Length\n"
               "  --wrong-body           flip one byte of the body (the digest stays the true one)\n"
               "  --short-by=N           serve N bytes less than the file\n"
               "  --long-by=N            serve N extra bytes\n"
               "  --rate=BYTES           limit each response to BYTES per second\n");
}

static int parse_u64(const char *s, uint64_t *ret) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || end == s || *end || *s == '-')
                return -EINVAL;
        *ret = v;
        return 0;
}

int main(int argc, char *argv[]) {
        enum {
                ARG_DIR = 0x100, ARG_PORT, ARG_PORT_FILE, ARG_GLANCE, ARG_TOKEN, ARG_STATUS, ARG_NO_CL,
                ARG_DIGEST, ARG_ETAG, ARG_RANGE, ARG_STALL, ARG_RESET, ARG_CLOSE, ARG_WRONG, ARG_SHORT,
                ARG_LONG, ARG_RATE,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "dir", required_argument, NULL, ARG_DIR },
                { "port", required_argument, NULL, ARG_PORT },
                { "port-file", required_argument, NULL, ARG_PORT_FILE },
                { "glance", no_argument, NULL, ARG_GLANCE },
                { "token", required_argument, NULL, ARG_TOKEN },
                { "status", required_argument, NULL, ARG_STATUS },
                { "no-content-length", no_argument, NULL, ARG_NO_CL },
                { "digest", required_argument, NULL, ARG_DIGEST },
                { "etag", required_argument, NULL, ARG_ETAG },
                { "range", required_argument, NULL, ARG_RANGE },
                { "stall-after", required_argument, NULL, ARG_STALL },
                { "reset-after", required_argument, NULL, ARG_RESET },
                { "close-after", required_argument, NULL, ARG_CLOSE },
                { "wrong-body", no_argument, NULL, ARG_WRONG },
                { "short-by", required_argument, NULL, ARG_SHORT },
                { "long-by", required_argument, NULL, ARG_LONG },
                { "rate", required_argument, NULL, ARG_RATE },
                {}
        };
        static const char *const digests[_UPSTREAM_DIGEST_MAX] = {
                [UPSTREAM_DIGEST_NONE] = "none",
                [UPSTREAM_DIGEST_CONTENT_MD5_HEX] = "md5-hex",
                [UPSTREAM_DIGEST_CONTENT_MD5_BASE64] = "md5-base64",
                [UPSTREAM_DIGEST_SHA256] = "sha256",
                [UPSTREAM_DIGEST_SHA512] = "sha512",
                [UPSTREAM_DIGEST_REPR_SHA256] = "repr-sha256",
                [UPSTREAM_DIGEST_REPR_SHA512] = "repr-sha512",
        };
        static const char *const ranges[_UPSTREAM_RANGE_MAX] = {
                [UPSTREAM_RANGE_HONOUR] = "honour",
                [UPSTREAM_RANGE_IGNORE] = "ignore",
                [UPSTREAM_RANGE_IGNORE_IF_RANGE] = "ignore-if-range",
        };

        UpstreamImageOptions o = {};
        const char *dir = NULL, *port_file = NULL, *token = NULL;
        uint64_t port = 0, v;
        bool glance = false;
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                uint64_t *target = NULL;
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_DIR: dir = optarg; break;
                case ARG_PORT_FILE: port_file = optarg; break;
                case ARG_GLANCE: glance = true; break;
                case ARG_TOKEN: token = optarg; break;
                case ARG_NO_CL: o.no_content_length = true; break;
                case ARG_WRONG: o.wrong_body = true; break;
                case ARG_ETAG: o.etag = optarg; break;
                case ARG_PORT: target = &port; break;
                case ARG_STALL: target = &o.stall_after; break;
                case ARG_RESET: target = &o.reset_after; break;
                case ARG_CLOSE: target = &o.close_after; break;
                case ARG_SHORT: target = &o.short_by; break;
                case ARG_LONG: target = &o.long_by; break;
                case ARG_RATE: target = &o.rate; break;
                case ARG_STATUS:
                        if (parse_u64(optarg, &v) < 0 || v < 100 || v > 599) {
                                fprintf(stderr, "upstream-server: bad --status: %s\n", optarg);
                                return 2;
                        }
                        o.status = (unsigned) v;
                        break;
                case ARG_DIGEST:
                case ARG_RANGE: {
                        const char *const *table = c == ARG_DIGEST ? digests : ranges;
                        size_t n = c == ARG_DIGEST ? _UPSTREAM_DIGEST_MAX : _UPSTREAM_RANGE_MAX;
                        size_t i;
                        for (i = 0; i < n && strcmp(table[i], optarg) != 0; i++)
                                ;
                        if (i == n) {
                                fprintf(stderr, "upstream-server: unknown value: %s\n", optarg);
                                return 2;
                        }
                        if (c == ARG_DIGEST)
                                o.digest = (UpstreamDigest) i;
                        else
                                o.range = (UpstreamRange) i;
                        break;
                }
                default:
                        return 2;
                }
                if (target && parse_u64(optarg, target) < 0) {
                        fprintf(stderr, "upstream-server: not a number: %s\n", optarg);
                        return 2;
                }
        }
        if (!dir || optind < argc || port > 65535) {
                fprintf(stderr, "upstream-server: --dir=DIR is required (and a port ≤ 65535); see --help\n");
                return 2;
        }

        /* Signals are taken with sigwait(), so block them before any thread exists. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGUSR1);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);

        UpstreamFixture *fx;
        int r = upstream_fixture_new((uint16_t) port, &fx);
        if (r < 0) {
                fprintf(stderr, "upstream-server: cannot listen on 127.0.0.1:%" PRIu64 ": %s\n", port, strerror(-r));
                return 1;
        }
        if (upstream_fixture_serve_directory(fx, dir, glance, &o) < 0 ||
            (token && upstream_fixture_set_token(fx, token) < 0)) {
                fprintf(stderr, "upstream-server: out of memory\n");
                upstream_fixture_free(fx);
                return 1;
        }

        if (port_file) {
                char tmp[4096];
                snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
                FILE *f = fopen(tmp, "we");
                if (!f || fprintf(f, "%u\n", upstream_fixture_port(fx)) < 0 || fclose(f) != 0 ||
                    rename(tmp, port_file) < 0) {
                        fprintf(stderr, "upstream-server: cannot write %s: %m\n", port_file);
                        upstream_fixture_free(fx);
                        return 1;
                }
        }
        fprintf(stderr, "upstream-server: serving %s on http://127.0.0.1:%u/\n", dir, upstream_fixture_port(fx));

        for (;;) {
                int sig;
                if (sigwait(&mask, &sig) != 0)
                        continue;
                if (sig == SIGUSR1) {
                        upstream_fixture_release(fx);
                        continue;
                }
                break;
        }

        upstream_fixture_free(fx);
        return 0;
}
