/* SPDX-License-Identifier: MIT */
/* The listening socket: the one systemd passed, or one of our own on HOST:PORT. */

#include <assert.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include <systemd/sd-daemon.h>

#include "http-internal.h"

int http_listen_fd_from_systemd(int *ret_fd) {
        int n, r, fd, flags;

        assert(ret_fd);

        n = sd_listen_fds(/* unset_environment= */ 0);
        if (n < 0)
                return n;
        if (n == 0)
                return 0;
        if (n > 1)
                return -EINVAL;  /* exactly one socket: imgcached.socket has one ListenStream= */

        fd = SD_LISTEN_FDS_START;
        r = sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, /* listening= */ 1);
        if (r < 0)
                return r;
        if (r == 0)
                return -EINVAL;

        /* MHD expects a non-blocking listening socket in external-event mode. */
        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return negative_errno();
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
                return negative_errno();

        *ret_fd = fd;
        return 1;
}

int http_open_listen_socket(const char *address, int *ret_fd) {
        struct addrinfo hints = {
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
                .ai_flags = AI_NUMERICSERV | AI_PASSIVE,
        }, *ai = NULL;
        char host[256];
        const char *port, *h;
        size_t n;
        int fd, r;

        assert(address);
        assert(ret_fd);

        if (address[0] == '[') {
                const char *close = strchr(address, ']');
                if (!close || close[1] != ':')
                        return -EINVAL;
                h = address + 1;
                n = (size_t) (close - h);
                port = close + 2;
        } else {
                const char *colon = strrchr(address, ':');
                if (!colon)
                        return -EINVAL;
                h = address;
                n = (size_t) (colon - address);
                port = colon + 1;
        }
        if (n == 0 || n >= sizeof(host) || isempty(port))
                return -EINVAL;
        memcpy(host, h, n);
        host[n] = 0;

        /* Resolving a host name blocks; this runs once at start, before the loop. */
        r = getaddrinfo(host, port, &hints, &ai);
        if (r != 0)
                return r == EAI_SYSTEM ? negative_errno() : -EADDRNOTAVAIL;

        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
                r = negative_errno();
                freeaddrinfo(ai);
                return r;
        }

        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &(int) { 1 }, sizeof(int)) < 0 ||
            bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            listen(fd, SOMAXCONN) < 0) {
                r = negative_errno();
                freeaddrinfo(ai);
                safe_close(fd);
                return r;
        }

        freeaddrinfo(ai);
        *ret_fd = fd;
        return 0;
}

uint16_t http_socket_port(int fd) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);

        if (getsockname(fd, (struct sockaddr *) &ss, &len) < 0)
                return 0;
        if (ss.ss_family == AF_INET)
                return ntohs(((struct sockaddr_in *) &ss)->sin_port);
        if (ss.ss_family == AF_INET6)
                return ntohs(((struct sockaddr_in6 *) &ss)->sin6_port);
        return 0;
}

bool http_socket_is_loopback(int fd) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);

        if (getsockname(fd, (struct sockaddr *) &ss, &len) < 0)
                return false;
        switch (ss.ss_family) {
        case AF_INET:
                return (ntohl(((struct sockaddr_in *) &ss)->sin_addr.s_addr) >> 24) == 127;
        case AF_INET6: {
                const struct in6_addr *a = &((struct sockaddr_in6 *) &ss)->sin6_addr;
                return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
        }
        case AF_UNIX:
                return true;
        default:
                return false;
        }
}

/* ReadAccess=open serves every cached image to whoever reaches the listener fd: on anything but loopback
 * only with AcknowledgeOpenReadAccess=yes. */
