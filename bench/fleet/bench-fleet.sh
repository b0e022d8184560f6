#!/bin/bash
# SPDX-License-Identifier: MIT
# The fleet tier ([Fleet]) on one machine: N = 2, 4, 8 imgcached on loopback, each with its own cache
# directory and bus, one image requested from every node at once. For each N, with the tier and
# without it (the same nodes, no [Fleet]): the bytes the origin sent (the nodes' own counters: with the
# tier imgcache_fleet_fetched_from_origin_bytes_total, without it imgcache_bytes_fetched_total) and the
# time until every node holds the image (every client's download complete; a node's last byte waits
# for its verified commit).
# Run by hand:  bench/fleet/bench-fleet.sh BUILDDIR [SIZE_MIB] [NODE_COUNTS]
# Needs: curl, dbus-run-session. Asserts nothing about time.
set -euo pipefail

build=$(realpath "${1:?usage: $0 BUILDDIR [SIZE_MIB] [NODE_COUNTS]}")
size_mib=${2:-1024}
counts=${3:-"2 4 8"}
imgcached=$build/src/daemon/imgcached
upstream_server=$build/tests/fetch/upstream-server
for p in curl dbus-run-session "$imgcached" "$upstream_server"; do
        command -v "$p" >/dev/null || { echo "missing: $p" >&2; exit 1; }
done

work=$(mktemp -d /tmp/bench-fleet.XXXXXX)
sessions=()
up_pid=
stop_daemons() {
        # The daemons first; each dbus-run-session then stops its own bus and exits.
        for f in "$work"/node-*.pid; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
        for p in "${sessions[@]}"; do wait "$p" 2>/dev/null || true; done
        rm -f "$work"/node-*.pid
        sessions=()
}
cleanup() {
        stop_daemons
        [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
        rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=../lib.sh
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
metric() { curl -s "$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'; }

mkdir -p "$work/upstream"
echo "# preparing a ${size_mib} MiB image"
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/upstream/big"
sha=$(sha256sum "$work/upstream/big" | cut -d' ' -f1)
up_port=$(free_port)
"$upstream_server" --dir="$work/upstream" --port="$up_port" & up_pid=$!
wait_http "http://127.0.0.1:$up_port/images/big"
cat "$work/upstream/big" > /dev/null
printf 'bench-peer-secret\n' > "$work/peer-token"
chmod 600 "$work/peer-token"

# run N TIER: starts N nodes (with [Fleet] when TIER=yes), GETs the image from all at once, prints a row.
run() {
        local n=$1 tier=$2 ports=() urls=() peers=""
        for i in $(seq "$n"); do ports+=("$(free_port)"); urls+=("http://127.0.0.1:${ports[-1]}"); done
        peers="${urls[*]}"
        for i in $(seq 0 $((n - 1))); do
                local dir=$work/node-$i
                rm -rf "$dir"; mkdir -p "$dir/cache"
                printf '[Cache]\nMaxSize=100G\nKeepFree=0\n[Daemon]\nExitOnIdleSec=infinity\n[HTTP]\nMaxConnectionsPerIP=0\n' > "$dir/conf"
                [ "$tier" = yes ] && printf '[Fleet]\nPeers=%s\nSelf=%s\nPeerTokenFile=%s\n' "$peers" "${urls[$i]}" "$work/peer-token" >> "$dir/conf"
                dbus-run-session -- sh -c 'echo $$ > "$0"; exec "$@"' "$work/node-$i.pid" "$imgcached" --user \
                        --cache-dir="$dir/cache" --config="$dir/conf" --listen="127.0.0.1:${ports[$i]}" \
                        --upstream="http://127.0.0.1:$up_port/images/{id}" 2> "$dir/log" & sessions+=($!)
        done
        for u in "${urls[@]}"; do wait_http "$u/healthcheck"; done

        local t0 t1 clients=()
        t0=$(date +%s.%N)
        for i in $(seq 0 $((n - 1))); do
                curl -sSf -o /dev/null "${urls[$i]}/images/big" & clients+=($!)
        done
        for p in "${clients[@]}"; do wait "$p"; done
        t1=$(date +%s.%N)

        local origin=0 held=0
        for i in $(seq 0 $((n - 1))); do
                if [ "$tier" = yes ]; then
                        origin=$((origin + $(metric "${urls[$i]}" imgcache_fleet_fetched_from_origin_bytes_total)))
                else
                        origin=$((origin + $(metric "${urls[$i]}" imgcache_bytes_fetched_total)))
                fi
                [ "$(sha256sum < "$work/node-$i/cache/big" | cut -d' ' -f1)" = "$sha" ] && held=$((held + 1))
        done
        printf '%-3s %-5s %8.2f x %10.2f s %8.0f MiB/s %6s\n' "$n" "$tier" \
                "$(echo "$origin / ($size_mib * 1048576)" | bc -l)" "$(echo "$t1 - $t0" | bc -l)" \
                "$(echo "$n * $size_mib / ($t1 - $t0)" | bc -l)" "$held/$n"
        stop_daemons
        rm -rf "$work"/node-*
}

echo "# N   tier  origin bytes (× the image)  time until every node holds it  bytes delivered/s  byte-exact copies"
for n in $counts; do
        run "$n" no
        run "$n" yes
done
