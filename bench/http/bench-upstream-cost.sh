#!/bin/bash
# SPDX-License-Identifier: MIT
# What one client address costs the upstream (issue 29): for SECONDS, one client asks imgcached for random
# ids that exist nowhere (HEADs over 4 keep-alive connections from Python's http.client, then GETs from
# wrk over 8), while another asks for a cached image over one connection (wrk): both from 127.0.0.1,
# where only the first costs the upstream anything. The upstream is Debian's nginx with an access log, so that every request that
# reaches it is counted. Prints, per method: requests the attacker made, requests the upstream got, and
# the other client's GETs served in the same time. Asserts nothing about time.
#   bench/http/bench-upstream-cost.sh BUILDDIR [SECONDS]
# Needs: nginx, wrk, curl, python3, dbus-run-session.
set -euo pipefail

build=$(realpath "${1:?usage: $0 BUILDDIR [SECONDS]}")
secs=${2:-10}
imgcached=$build/src/daemon/imgcached
for p in nginx wrk curl dbus-run-session "$imgcached"; do
        command -v "$p" >/dev/null || { echo "missing: $p" >&2; exit 1; }
done

work=$(mktemp -d /tmp/bench-upstream-cost.XXXXXX)
chmod 755 "$work"
pids=()
session=
cleanup() {
        [ -s "$work/imgcached.pid" ] && kill "$(cat "$work/imgcached.pid")" 2>/dev/null || true
        [ -n "$session" ] && wait "$session" 2>/dev/null || true
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
        rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=../lib.sh
. "$(dirname "$(readlink -f "$0")")/../lib.sh"

mkdir -p "$work/www/images" "$work/cache"
head -c 65536 /dev/urandom > "$work/www/images/cached"
up_port=$(free_port); img_port=$(free_port)
nginx_upstream "$work" "        access_log $work/upstream.log;
        server { listen 127.0.0.1:$up_port; root $work/www; }"
printf '[Daemon]\nExitOnIdleSec=infinity\n[HTTP]\nAccessLog=no\n' > "$work/imgcached.conf"
dbus-run-session -- sh -c 'echo $$ > "$0"; exec "$@"' "$work/imgcached.pid" "$imgcached" --user \
        --cache-dir="$work/cache" --listen="127.0.0.1:$img_port" --config="$work/imgcached.conf" \
        --upstream="http://127.0.0.1:$up_port/images/{id}" 2> "$work/imgcached.log" & session=$!
wait_http "http://127.0.0.1:$up_port/images/cached"
wait_http "http://127.0.0.1:$img_port/images/cached"   # cached from here on

cat > "$work/random.lua" <<EOF2
math.randomseed(os.time())
local method = os.getenv("METHOD")
request = function()
        return wrk.format(method, "/images/r" .. math.random(1, 1000000000))
end
EOF2

printf '%-6s %12s %12s %16s\n' method asked upstream other-client-GETs
for method in HEAD GET; do
        : > "$work/upstream.log"
        # The other client: one connection, the cached image, as fast as it goes.
        wrk -t1 -c1 -d"${secs}s" "http://127.0.0.1:$img_port/images/cached" > "$work/other.txt" 2>&1 &
        other=$!
        if [ "$method" = HEAD ]; then
                # wrk waits for the body a HEAD's Content-Length announces: http.client knows better.
                python3 - "$img_port" "$secs" > "$work/attack.txt" <<'EOF2'
import http.client, random, sys, threading, time
port, secs, counts = int(sys.argv[1]), float(sys.argv[2]), []
def run():
        c, n, end = http.client.HTTPConnection("127.0.0.1", port), 0, time.monotonic() + secs
        while time.monotonic() < end:
                c.request("HEAD", "/images/r%d" % random.randrange(10**9))
                c.getresponse().read()
                n += 1
        counts.append(n)
threads = [threading.Thread(target=run) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(counts), "requests in")
EOF2
        else
                METHOD=$method wrk -t1 -c8 -d"${secs}s" -s "$work/random.lua" "http://127.0.0.1:$img_port/" \
                        > "$work/attack.txt" 2>&1 || true
        fi
        wait "$other" || true
        asked=$(awk '/requests in/ { print $1 }' "$work/attack.txt")
        served=$(awk '/requests in/ { print $1 }' "$work/other.txt")
        printf '%-6s %12s %12s %16s\n' "$method" "$asked" "$(wc -l < "$work/upstream.log")" "$served"
done
