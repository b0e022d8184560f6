# SPDX-License-Identifier: MIT
# Sourced by the benchmark scripts: what they share.

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Until URL answers (any status), for up to 10 s; a benchmark that never gets an answer stops.
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }

# nginx_upstream DIR HTTP_BODY: Debian's nginx with one worker in the foreground as an upstream, its
# files under DIR (nginx.conf, pid, error log), HTTP_BODY inside http { }; its pid is added to pids.
nginx_upstream() {
        cat > "$1/nginx.conf" <<EOF2
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/nginx-error.log;
events { worker_connections 1024; }
http {
$2
}
EOF2
        nginx -c "$1/nginx.conf" -p "$1" & pids+=($!)
}
