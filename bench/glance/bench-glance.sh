#!/bin/bash
# SPDX-License-Identifier: MIT
# imgcached as a drop-in Glance endpoint (issue 28), against the same upstream asked directly, in one run:
#   1. a boot storm: N = 1, 8, 32 concurrent Nova-style downloads (curl, X-Auth-Token) of one uncached
#      image of SIZE MiB; the time until all finish, and the bytes the upstream sent;
#   2. pass-through overhead: GET /v2/images/<id> (the record) from wrk over one keep-alive connection,
#      p50 and p99 through imgcached and direct;
#   3. upload: PUT of SIZE MiB (what Nova's snapshot does), through imgcached and direct, as throughput.
# The upstream is the test fixture's upstream-server --glance (sendfile) for 1 and 2, and Debian's nginx
# with WebDAV PUT into a tmpfs for 3. ROUNDS rounds each; prints every round, the median ratio and its
# spread. Asserts nothing about time.
#   bench/glance/bench-glance.sh BUILDDIR [SIZE_MIB] [ROUNDS]       PARTS="1 2 3" (default) picks the parts.
# Needs: nginx, wrk, curl, python3, dbus-run-session.
set -euo pipefail

build=$(realpath "${1:?usage: $0 BUILDDIR [SIZE_MIB] [ROUNDS]}")
size_mib=${2:-1024}
rounds=${3:-3}
imgcached=$build/src/daemon/imgcached
upstream_server=$build/tests/fetch/upstream-server
for p in nginx wrk curl python3 dbus-run-session "$imgcached" "$upstream_server"; do
        command -v "$p" >/dev/null || { echo "missing: $p" >&2; exit 1; }
done

work=$(mktemp -d /tmp/bench-glance.XXXXXX)
chmod 755 "$work"
mount -t tmpfs -o size=$((size_mib * 6 + 256))m tmpfs "$work" 2>/dev/null || true
chmod 755 "$work"
pids=()
sessions=()
cleanup() {
        for f in "$work"/imgcached*.pid; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
        for p in "${sessions[@]}"; do wait "$p" 2>/dev/null || true; done
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
        umount -l "$work" 2>/dev/null || true
        rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=../lib.sh
. "$(dirname "$(readlink -f "$0")")/../lib.sh"

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
spread() { sort -g | awk 'NR==1{min=$1} {max=$1} END {printf "%.3g–%.3g", min, max}'; }

mkdir -p "$work/www" "$work/dav" "$work/cache"
head -c $((size_mib << 20)) /dev/urandom > "$work/image"
up_port=$(free_port); dav_port=$(free_port)
"$upstream_server" --dir="$work/www" --port="$up_port" --glance > "$work/upstream.log" 2>&1 & pids+=($!)
mkdir -p "$work/dav-tmp"
chmod 777 "$work/dav" "$work/dav-tmp"   # nginx's workers run as www-data
nginx_upstream "$work" "        access_log off;
        client_body_temp_path $work/dav-tmp;
        server {
                listen 127.0.0.1:$dav_port;
                root $work/dav;
                client_max_body_size 0;
                dav_methods PUT;
                create_full_put_path on;
        }"

# start_daemon NAME UPSTREAM_URL: imgcached (Kind=glance) on a port of its own, in $daemon_port.
start_daemon() {
        local name=$1 url=$2
        daemon_port=$(free_port)
        mkdir -p "$work/cache-$name"
        # MaxSize= keeps one round's image and the next: the older ones are pruned.
        printf '[Cache]\nMaxSize=%dM\nKeepFree=0\n[Upstream]\nKind=glance\nURL=%s\n[HTTP]\nAccessLog=no\nUpstreamRequestsPerIP=0\n[Daemon]\nExitOnIdleSec=infinity\n' \
                $((size_mib * 2 + 64)) "$url" > "$work/imgcached-$name.conf"
        dbus-run-session -- sh -c 'echo $$ > "$0"; exec "$@"' "$work/imgcached-$name.pid" "$imgcached" --user \
                --cache-dir="$work/cache-$name" --listen="127.0.0.1:$daemon_port" --config="$work/imgcached-$name.conf" \
                > "$work/imgcached-$name.log" 2>&1 & sessions+=($!)
        wait_http "http://127.0.0.1:$daemon_port/healthcheck"
}
fetched() { curl -s "http://127.0.0.1:$1/metrics" | awk '$1 == "imgcache_bytes_fetched_total" {print $2}'; }

wait_http "http://127.0.0.1:$dav_port/"
start_daemon pass "http://127.0.0.1:$up_port"; img_port=$daemon_port
start_daemon dav "http://127.0.0.1:$dav_port"; dav_img_port=$daemon_port
wait_http "http://127.0.0.1:$up_port/v2/images/none"

# storm URL N: N concurrent downloads of URL; prints the seconds until all finished.
storm() {
        local url=$1 n=$2 t0 cpids=()
        t0=$(now)
        for _ in $(seq "$n"); do
                curl -sf -o /dev/null -H "X-Auth-Token: user" "$url" & cpids+=($!)
        done
        for p in "${cpids[@]}"; do wait "$p" || { echo "a download failed: $url" >&2; exit 1; }; done
        echo "$(now) - $t0" | bc -l
}

parts=${PARTS:-1 2 3}
part() { [[ " $parts " == *" $1 "* ]]; }

if part 1; then
echo "== 1. boot storm: N concurrent downloads of one uncached ${size_mib} MiB image =="
printf '%4s %5s  %12s %12s  %14s %14s\n' N round direct_s through_s upstream_MiB_direct upstream_MiB_through
for n in 1 8 32; do
        ratios=()
        for r in $(seq "$rounds"); do
                id=$(python3 -c 'import uuid; print(uuid.uuid4())')
                ln "$work/image" "$work/www/$id"
                curl -sf -o /dev/null "http://127.0.0.1:$up_port/v2/images/$id"   # the record, hashed once
                direct=$(storm "http://127.0.0.1:$up_port/v2/images/$id/file" "$n")
                before=$(fetched "$img_port")
                through=$(storm "http://127.0.0.1:$img_port/v2/images/$id/file" "$n")
                up=$(( ($(fetched "$img_port") - before) >> 20 ))
                printf '%4d %5d  %12.3f %12.3f  %14d %14d\n' "$n" "$r" "$direct" "$through" $((n * size_mib)) "$up"
                ratios+=("$(echo "$through / $direct" | bc -l)")
                rm -f "$work/www/$id"
        done
        printf '     N=%d: time through/direct median %.3f (spread %s)\n' "$n" \
                "$(printf '%s\n' "${ratios[@]}" | median)" "$(printf '%s\n' "${ratios[@]}" | spread)"
done

fi

if part 2; then
echo "== 2. pass-through overhead: GET /v2/images/<id> over one keep-alive connection (wrk, 5 s) =="
id=$(python3 -c 'import uuid; print(uuid.uuid4())')
head -c 4096 /dev/urandom > "$work/www/$id"
curl -sf -o /dev/null "http://127.0.0.1:$up_port/v2/images/$id"
# lat URL: "p50_us p99_us" from wrk's latency distribution.
lat() {
        wrk -t1 -c1 -d5s --latency -H "X-Auth-Token: user" "$1" | awk '
                function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; return v * 1000000 }
                $1 == "50%" { p50 = us($2) } $1 == "99%" { p99 = us($2) } END { print p50, p99 }'
}
printf '%5s  %10s %10s  %10s %10s  %10s %10s\n' round direct_p50 direct_p99 through_p50 through_p99 added_p50 added_p99
added50=(); added99=()
for r in $(seq "$rounds"); do
        read -r d50 d99 < <(lat "http://127.0.0.1:$up_port/v2/images/$id")
        read -r t50 t99 < <(lat "http://127.0.0.1:$img_port/v2/images/$id")
        a50=$(echo "$t50 - $d50" | bc -l); a99=$(echo "$t99 - $d99" | bc -l)
        printf '%5d  %8.0fus %8.0fus  %8.0fus %8.0fus  %8.0fus %8.0fus\n' "$r" "$d50" "$d99" "$t50" "$t99" "$a50" "$a99"
        added50+=("$a50"); added99+=("$a99")
done
printf '      added latency median p50 %.0f us (spread %s), p99 %.0f us (spread %s)\n' \
        "$(printf '%s\n' "${added50[@]}" | median)" "$(printf '%s\n' "${added50[@]}" | spread)" \
        "$(printf '%s\n' "${added99[@]}" | median)" "$(printf '%s\n' "${added99[@]}" | spread)"

fi

if part 3; then
echo "== 3. upload: PUT of ${size_mib} MiB (nginx WebDAV into tmpfs as the upstream) =="
printf '%5s  %12s %12s  %8s\n' round direct_MiB/s through_MiB/s ratio
ratios=()
for r in $(seq "$rounds"); do
        id=$(python3 -c 'import uuid; print(uuid.uuid4())')
        t0=$(now); curl -sf -T "$work/image" -H "X-Auth-Token: user" "http://127.0.0.1:$dav_port/v2/images/$id/file"
        direct=$(echo "$size_mib / ($(now) - $t0)" | bc -l)
        rm -rf "$work/dav/v2"
        t0=$(now); curl -sf -T "$work/image" -H "X-Auth-Token: user" "http://127.0.0.1:$dav_img_port/v2/images/$id/file"
        through=$(echo "$size_mib / ($(now) - $t0)" | bc -l)
        cmp -s "$work/image" "$work/dav/v2/images/$id/file" || { echo "the upload through imgcached arrived damaged" >&2; exit 1; }
        rm -rf "$work/dav/v2"
        ratio=$(echo "$through / $direct" | bc -l)
        printf '%5d  %12.0f %12.0f  %8.3f\n' "$r" "$direct" "$through" "$ratio"
        ratios+=("$ratio")
done
printf '      upload throughput through/direct median %.3f (spread %s)\n' \
        "$(printf '%s\n' "${ratios[@]}" | median)" "$(printf '%s\n' "${ratios[@]}" | spread)"
fi
