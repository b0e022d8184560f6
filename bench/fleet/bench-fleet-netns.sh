#!/bin/bash
# SPDX-License-Identifier: MIT
# The fan-out of the fleet tier ([Fleet] FanOut=) with real bandwidth limits: N imgcached, each in a
# network namespace of its own, joined by veth pairs to a bridge in another namespace, each node's
# upload shaped with tc (tbf, RATE), and an origin (nginx, sending Repr-Digest) behind the same kind of
# link. Every node is asked for one image at once. For each N, the owner serving everyone (FanOut=N,
# what the tier did before the fan-out) against FanOut=2 and FanOut=4: the time until every node holds
# the image (every client's download complete; a node's last byte waits for its verified commit), that
# time over one node's transfer time (one download of the image from the origin over one such link),
# and each node's upload (imgcache_fleet_served_to_peers_bytes_total, in images).
#
# Run by hand, as root, never beside another benchmark:
#   flock /work/heavy.lock bench/fleet/bench-fleet-netns.sh BUILDDIR [SIZE_MIB] [NODE_COUNTS] [RATE] [FANOUTS]
# Defaults: 256 MiB, "4 8 16", 200mbit, "N 2 4" (N: the number of nodes, the owner serving all). Needs ip, tc, nginx, curl, dbus-run-session, openssl.
# Everything it makes (namespaces, veths, the bridge, processes, files) goes in a trap on exit, also
# when it fails; traffic never leaves its namespaces. Asserts nothing about time.
set -euo pipefail

build=$(realpath "${1:?usage: $0 BUILDDIR [SIZE_MIB] [NODE_COUNTS] [RATE] [FANOUTS]}")
size_mib=${2:-256}
counts=${3:-"4 8 16"}
rate=${4:-200mbit}
fanouts=${5:-"N 2 4"}
imgcached=$build/src/daemon/imgcached
for p in ip tc nginx curl dbus-run-session openssl "$imgcached"; do
        command -v "$p" >/dev/null || { echo "missing: $p" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }

tag=imgf$$                       # every namespace of this run starts with it
sw=$tag-sw                       # the bridge's namespace
origin_ns=$tag-origin
origin_ip=10.77.255.254
port=9393
work=$(mktemp -d /tmp/bench-fleet-netns.XXXXXX)
chmod 755 "$work" # nginx's workers (nobody) read the image

# Stops what runs in our namespaces (by pid, namespace by namespace), then deletes them: their veths
# and the bridge go with them.
cleanup() {
        local ns
        for ns in $(ip netns list | awk -v t="$tag-" 'index($1, t) == 1 { print $1 }'); do
                for pid in $(ip netns pids "$ns"); do kill "$pid" 2>/dev/null || true; done
        done
        sleep 0.5 # SIGTERM's cleanup (imgcached, nginx) before the namespaces go
        for ns in $(ip netns list | awk -v t="$tag-" 'index($1, t) == 1 { print $1 }'); do
                for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
                ip netns del "$ns" 2>/dev/null || true
        done
        rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

node_ip() { echo "10.77.$(($1 / 200)).$(($1 % 200 + 10))"; }

# ns NAME IP: a namespace on the bridge with its upload shaped to RATE.
add_host() {
        local ns=$1 ip=$2 if=v${1##*-}
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$sw" link add "$if" type veth peer name eth0 netns "$ns"
        ip -n "$sw" link set "$if" master br0 up
        ip -n "$ns" addr add "$ip/16" dev eth0
        ip -n "$ns" link set eth0 up
        # A burst of a few GSO segments: tbf drops a packet larger than its bucket.
        tc -n "$ns" qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 100ms
}

ip netns add "$sw"
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up

echo "# preparing a ${size_mib} MiB image"
mkdir -p "$work/origin/images" "$work/origin/logs"
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/origin/images/big"
sha=$(sha256sum "$work/origin/images/big" | cut -d' ' -f1)
digest=$(openssl dgst -sha256 -binary "$work/origin/images/big" | base64)
cat > "$work/origin/nginx.conf" <<EOF
daemon off;
pid $work/origin/nginx.pid;
error_log $work/origin/logs/error.log;
events { worker_connections 256; }
http {
        access_log $work/origin/logs/access.log;
        sendfile on;
        server {
                listen $origin_ip:8080;
                location /images/ {
                        root $work/origin;
                        add_header Repr-Digest "sha-256=:$digest:";
                }
        }
}
EOF
add_host "$origin_ns" "$origin_ip"
ip netns exec "$origin_ns" nginx -c "$work/origin/nginx.conf" -p "$work/origin" &
printf 'bench-peer-secret\n' > "$work/peer-token"
chmod 600 "$work/peer-token"

# Until URL answers from namespace NS, for up to 10 s.
wait_http_in() { for _ in $(seq 200); do ip netns exec "$1" curl -s -o /dev/null "$2" && return 0; sleep 0.05; done
                 echo "no answer from $2" >&2; tail -n 5 "$work"/node-*/log >&2 2>/dev/null; exit 1; }
metric() { ip netns exec "$1" curl -s "$2/metrics" | awk -v n="$3" '$1 == n { print $2 }'; }

max_n=0
for n in $counts; do [ "$n" -gt "$max_n" ] && max_n=$n; done
for i in $(seq 0 $((max_n - 1))); do add_host "$tag-n$i" "$(node_ip "$i")"; done
wait_http_in "$tag-n0" "http://$origin_ip:8080/images/big"

# One node's transfer time: the image from the origin over one link, nothing else running.
t0=$(date +%s.%N)
ip netns exec "$tag-n0" curl -sSf -o /dev/null "http://$origin_ip:8080/images/big"
single=$(echo "$(date +%s.%N) - $t0" | bc -l)
printf '# one node'"'"'s transfer time: %.2f s (%s MiB at %s)\n' "$single" "$size_mib" "$rate"

# run N K: N nodes with FanOut=K, every one asked for the image at once; prints a row.
run() {
        local n=$1 k=$2 urls=() peers i
        for i in $(seq 0 $((n - 1))); do urls+=("http://$(node_ip "$i"):$port"); done
        peers="${urls[*]}"
        for i in $(seq 0 $((n - 1))); do
                local dir=$work/node-$i
                rm -rf "$dir"; mkdir -p "$dir/cache"
                printf '[Cache]\nMaxSize=100G\nKeepFree=0\n[Daemon]\nExitOnIdleSec=infinity\n[HTTP]\nMaxConnectionsPerIP=0\nAccessLog=no\nAcknowledgeOpenReadAccess=yes\n' > "$dir/conf"
                printf '[Fleet]\nPeers=%s\nSelf=%s\nPeerTokenFile=%s\nFanOut=%s\n' "$peers" "${urls[$i]}" "$work/peer-token" "$k" >> "$dir/conf"
                ip netns exec "$tag-n$i" dbus-run-session -- "$imgcached" --user --cache-dir="$dir/cache" \
                        --config="$dir/conf" --listen="$(node_ip "$i"):$port" \
                        --upstream="http://$origin_ip:8080/images/{id}" 2> "$dir/log" &
        done
        for i in $(seq 0 $((n - 1))); do wait_http_in "$tag-n$i" "${urls[$i]}/healthcheck"; done

        local t0 clients=() done_at=()
        t0=$(date +%s.%N)
        for i in $(seq 0 $((n - 1))); do
                (ip netns exec "$tag-n$i" curl -sSf -o /dev/null "${urls[$i]}/images/big" && date +%s.%N > "$work/done-$i") &
                clients+=($!)
        done
        for p in "${clients[@]}"; do wait "$p"; done

        local last=0 origin=0 held=0 up_max=0 peak=0 depth=0 ups=""
        for i in $(seq 0 $((n - 1))); do
                local t up
                t=$(echo "$(cat "$work/done-$i") - $t0" | bc -l)
                [ "$(echo "$t > $last" | bc -l)" = 1 ] && last=$t
                origin=$((origin + $(metric "$tag-n$i" "${urls[$i]}" imgcache_fleet_fetched_from_origin_bytes_total)))
                up=$(metric "$tag-n$i" "${urls[$i]}" imgcache_fleet_served_to_peers_bytes_total)
                [ "$up" -gt "$up_max" ] && up_max=$up
                ups+=$(printf ' %.1f' "$(echo "$up / ($size_mib * 1048576)" | bc -l)")
                p=$(metric "$tag-n$i" "${urls[$i]}" imgcache_fleet_peer_streams_peak)
                [ "$p" -gt "$peak" ] && peak=$p
                d=$(metric "$tag-n$i" "${urls[$i]}" imgcache_fleet_tree_depth)
                [ "$d" -gt "$depth" ] && depth=$d
                [ "$(sha256sum < "$work/node-$i/cache/big" | cut -d' ' -f1)" = "$sha" ] && held=$((held + 1))
        done
        printf '%-3s %-4s %8.2f s %6.2f x %8.2f x %8.2f x %5s %5s %6s  %s\n' "$n" "$k" "$last" \
                "$(echo "$last / $single" | bc -l)" "$(echo "$origin / ($size_mib * 1048576)" | bc -l)" \
                "$(echo "$up_max / ($size_mib * 1048576)" | bc -l)" "$peak" "$depth" "$held/$n" "$ups"

        for i in $(seq 0 $((n - 1))); do
                for pid in $(ip netns pids "$tag-n$i"); do kill "$pid" 2>/dev/null || true; done
        done
        for i in $(seq 0 $((n - 1))); do
                for _ in $(seq 100); do [ -z "$(ip netns pids "$tag-n$i")" ] && break; sleep 0.05; done
        done
        rm -rf "$work"/node-* "$work"/done-*
}

echo "# N   k     time to all  /one     origin   max upload  peak  depth  exact  upload per node (images)"
for n in $counts; do
        seen=" "
        for k in $fanouts; do
                [ "$k" = N ] || [ "$k" -ge "$n" ] && k=$n # FanOut= of at least N: the owner serves all
                [[ $seen == *" $k "* ]] && continue
                seen+="$k "
                run "$n" "$k"
        done
done
