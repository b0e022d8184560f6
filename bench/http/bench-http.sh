#!/bin/bash
# SPDX-License-Identifier: MIT
# imgcached's HTTP side against nginx (1 worker, sendfile on) on the same file, in one run, on loopback:
#   hit: GET throughput of a big image with 1 and 4 clients; 4 KiB random Range requests/s and p99 at 1,
#        16 and 128 connections (wrk + Lua); HEAD/s.
#   miss: time to first byte and throughput of a first GET through imgcached vs curl straight from the
#        upstream (tests/fetch's upstream-server), with the ratio to curl storing the file, the TTFB over
#        the upstream's, and the daemon's CPU seconds per GiB.
#   read access: 4 KiB Range hits at one connection with ReadAccess=open, ReadAccess=upstream with the
#        verdict cached, and ReadAccess=upstream asking the (Glance-mode) upstream on every request.
#   range ahead: a miss filling from an upstream limited to 2 MB/s; time to first byte of 1 KiB at 15 MB
#        and of the last 512 bytes through imgcached (asked of the origin directly) vs the same ranges
#        straight from the upstream.
# nginx runs with one worker (the reference, "ratio") and with two (for reference, "ngx-2w"); imgcached
# serves HTTP on one thread. Both without an access log.
# Run by hand:  bench/http/bench-http.sh BUILDDIR [SIZE_MIB] [SECONDS]
# Needs: nginx (nginx-light), wrk, curl, dbus-daemon (dbus-run-session); ab (apache2-utils) for HEAD/s. Asserts nothing about time.
set -euo pipefail

build=$(realpath "${1:?usage: $0 BUILDDIR [SIZE_MIB] [SECONDS]}")
size_mib=${2:-1024}
secs=${3:-5}
imgcached=$build/src/daemon/imgcached
upstream_server=$build/tests/fetch/upstream-server
for p in nginx wrk curl dbus-run-session "$imgcached"; do
        command -v "$p" >/dev/null || { echo "missing: $p" >&2; exit 1; }
done

work=$(mktemp -d /tmp/bench-http.XXXXXX)
pids=()
sessions=()
cleanup() {
        # The daemons first; each dbus-run-session then stops its own bus and exits (killing it instead
        # would leave its dbus-daemon running, holding our stdout).
        for f in "$work"/*.pid; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
        for p in "${sessions[@]}"; do wait "$p" 2>/dev/null || true; done
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
        rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=../lib.sh
. "$(dirname "$(readlink -f "$0")")/../lib.sh"

mkdir -p "$work/cache" "$work/www" "$work/upstream"
echo "# preparing a ${size_mib} MiB image"
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/cache/big"
ln "$work/cache/big" "$work/www/big"

# nginx: sendfile, keep-alive without a request cap, no access log; one worker, and two for reference.
start_nginx() {
        local name=$1 workers=$2 port=$3
        mkdir -p "$work/$name"
        cat > "$work/$name/nginx.conf" <<EOF
user root;
worker_processes $workers;
daemon off;
pid $work/$name/nginx.pid;
error_log $work/$name/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    client_body_temp_path $work/$name; proxy_temp_path $work/$name; fastcgi_temp_path $work/$name;
    uwsgi_temp_path $work/$name; scgi_temp_path $work/$name;
    server { listen 127.0.0.1:$port; location /images/ { alias $work/www/; } }
}
EOF
        nginx -c "$work/$name/nginx.conf" & pids+=($!)
}
ngx_port=$(free_port)
ngx2_port=$(free_port)
start_nginx ngx 1 "$ngx_port"
start_nginx ngx2 2 "$ngx2_port"

# imgcached on a private session bus; the upstream for misses.
up_port=$(free_port)
if [ -x "$upstream_server" ]; then
        "$upstream_server" --dir="$work/upstream" --port="$up_port" & pids+=($!)
fi
img_port=$(free_port)
# The management API deletes each miss after it is measured (see below).
printf 'bench' > "$work/token"
# wrk opens up to 128 connections from one address: no per-address limit here. No access log, as nginx
# (a daemon from before AccessLog= existed has none).
access_log=
grep -q AccessLog "$imgcached" && access_log='AccessLog=no\n'
printf "[Cache]\nMaxSize=100G\nKeepFree=0\n[Daemon]\nExitOnIdleSec=infinity\n[HTTP]\nMaxConnections=4096\nMaxConnectionsPerIP=0\nManagementAPI=yes\nManagementTokenFile=%s\n$access_log" \
        "$work/token" > "$work/imgcached.conf"
# start_daemon NAME PORT CACHE_DIR ARGS...: imgcached on a private session bus of its own.
# The daemon's own pid (via exec) is killed at the end; its dbus-run-session then exits by itself.
start_daemon() {
        local name=$1 port=$2 dir=$3; shift 3
        dbus-run-session -- sh -c 'echo $$ > "$0"; exec "$@"' "$work/$name.pid" "$imgcached" --user --cache-dir="$dir" \
                --listen="127.0.0.1:$port" "$@" 2> "$work/$name.log" & sessions+=($!)
}
start_daemon imgcached "$img_port" "$work/cache" --config="$work/imgcached.conf" \
        --upstream="http://127.0.0.1:$up_port/images/{id}"

ngx=http://127.0.0.1:$ngx_port/images
ngx2=http://127.0.0.1:$ngx2_port/images
img=http://127.0.0.1:$img_port/images
wait_http "$ngx/big"
wait_http "$ngx2/big"
wait_http "$img/big"
cat "$work/big" > /dev/null 2>&1 || cat "$work/cache/big" > /dev/null  # page cache warm for both

cat > "$work/range.lua" <<EOF
local size = $((size_mib * 1024 * 1024))
math.randomseed(42)
request = function()
        local start = math.random(0, size / 4096 - 1) * 4096
        return wrk.format("GET", nil, { ["Range"] = "bytes=" .. start .. "-" .. (start + 4095) })
end
EOF

mib_s() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

# Throughput: n parallel curls downloading the whole image; the best of 3 runs, MiB/s summed.
throughput() {
        local url=$1 n=$2 best=0
        for _ in 1 2 3; do
                local start end total
                start=$(date +%s.%N)
                local cpids=()
                for _ in $(seq "$n"); do curl -s -o /dev/null "$url" & cpids+=($!); done
                wait "${cpids[@]}"
                end=$(date +%s.%N)
                total=$(awk -v s="$start" -v e="$end" -v n="$n" -v m="$size_mib" 'BEGIN { printf "%.0f", n * m / (e - s) }')
                [ "$total" -gt "$best" ] && best=$total
        done
        echo "$best"
}

wrk_run() {
        local url=$1 conns=$2 script=$3 out
        local threads=$(( conns < 2 ? 1 : 2 ))
        out=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$script" "$url")
        local rps p99
        rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
        p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
        echo "$rps $p99"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "# GET ${size_mib} MiB, MiB/s (best of 3)"
printf '%-22s %10s %10s %7s %10s\n' test imgcached nginx ratio ngx-2w
for n in 1 4; do
        a=$(throughput "$img/big" "$n"); b=$(throughput "$ngx/big" "$n"); b2=$(throughput "$ngx2/big" "$n")
        printf '%-22s %10s %10s %7s %10s\n' "get-${n}-clients" "$a" "$b" "$(ratio "$a" "$b")" "$b2"
done

echo "# 4 KiB random Range GETs, requests/s and p99 (wrk ${secs}s)"
printf '%-22s %10s %10s %10s %10s %7s %10s\n' test img-rps img-p99 ngx-rps ngx-p99 ratio ngx-2w
for c in 1 16 128; do
        read -r ar ap <<<"$(wrk_run "$img/big" "$c" "$work/range.lua")"
        read -r br bp <<<"$(wrk_run "$ngx/big" "$c" "$work/range.lua")"
        read -r cr _ <<<"$(wrk_run "$ngx2/big" "$c" "$work/range.lua")"
        printf '%-22s %10s %10s %10s %10s %7s %10s\n' "range-4k-c${c}" "$ar" "$ap" "$br" "$bp" "$(ratio "$ar" "$br")" "$cr"
done
# wrk cannot do HEAD (it waits for the body Content-Length announces); ab -i can.
if command -v ab >/dev/null; then
        head_rps() { ab -q -k -i -c "$2" -t "$secs" -n 10000000 "$1" 2>/dev/null | awk '/^Requests per second/ { printf "%.0f", $4 }'; }
        for c in 1 16 128; do
                ar=$(head_rps "$img/big" "$c"); br=$(head_rps "$ngx/big" "$c"); cr=$(head_rps "$ngx2/big" "$c")
                printf '%-22s %10s %10s %10s %10s %7s %10s\n' "head-c${c} (ab)" "$ar" "-" "$br" "-" "$(ratio "$ar" "$br")" "$cr"
        done
fi

if [ -x "$upstream_server" ]; then
        # upstream-to-file is curl storing the image (no digest): the least work a cache must do.
        # Each miss is deleted once measured, so that every run writes into page cache the kernel has
        # recycled, as on a host that has been up a while: on a fresh VM, memory touched for the first
        # time costs a hypervisor fault per page and would make whichever run comes first look slow.
        # ratio: the miss against upstream-to-file of the same round; +ttfb: its time to first byte over
        # upstream-direct's; cpu-s/GiB: the daemon's CPU (all its threads) per GiB of the miss, which on a
        # small host says how near the miss is to the CPU the client, the upstream and it share.
        echo "# miss: first GET through imgcached vs straight from the upstream (TTFB s, MiB/s)"
        printf '%-22s %10s %10s %7s %9s %10s\n' path ttfb MiB/s ratio +ttfb cpu-s/GiB
        daemon_cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$(cat "$work/imgcached.pid")/stat"; }
        for i in 1 2 3; do
                ln "$work/cache/big" "$work/upstream/m$i"
                read -r td sd <<<"$(curl -s -o /dev/null -w '%{time_starttransfer} %{speed_download}\n' "http://127.0.0.1:$up_port/images/m$i")"
                printf '%-22s %10s %10s\n' "upstream-direct-$i" "$td" "$(mib_s "$sd")"
                read -r tf sf <<<"$(curl -s -o "$work/dl" -w '%{time_starttransfer} %{speed_download}\n' "http://127.0.0.1:$up_port/images/m$i")"
                rm -f "$work/dl"
                printf '%-22s %10s %10s\n' "upstream-to-file-$i" "$tf" "$(mib_s "$sf")"
                c0=$(daemon_cpu_s)
                read -r t s <<<"$(curl -s -o /dev/null -w '%{time_starttransfer} %{speed_download}\n' "$img/m$i")"
                c1=$(daemon_cpu_s)
                printf '%-22s %10s %10s %7s %9s %10s\n' "imgcached-miss-$i" "$t" "$(mib_s "$s")" "$(ratio "$s" "$sf")" \
                        "$(awk -v a="$t" -v b="$td" 'BEGIN { printf "%.1f ms", (a - b) * 1000 }')" \
                        "$(awk -v a="$c0" -v b="$c1" -v m="$size_mib" 'BEGIN { printf "%.2f", (b - a) * 1024 / m }')"
                curl -s -o /dev/null -X DELETE -H 'X-Auth-Token: bench' "http://127.0.0.1:$img_port/v2/cache/m$i"
                rm -f "$work/upstream/m$i"
        done
fi

if [ -x "$upstream_server" ]; then
        # A Glance-mode upstream that wants a token; two more daemons in front of it with ReadAccess=upstream
        # (the auto default for Kind=glance), one believing a verdict for 60 s, one asking every time. Each
        # has the image cached (a hard link into its own cache directory); the client presents the token.
        mkdir -p "$work/glance" "$work/cache-ra" "$work/cache-ra0"
        ln "$work/cache/big" "$work/glance/big"
        ln "$work/cache/big" "$work/cache-ra/big"
        ln "$work/cache/big" "$work/cache-ra0/big"
        gl_port=$(free_port)
        "$upstream_server" --dir="$work/glance" --glance --token=bench-token --port="$gl_port" & pids+=($!)
        printf 'bench-token' > "$work/glance-token"
        for ttl in 60 0; do
                # UpstreamRequestsPerIP=0: the row measures what asking costs, not the bound on it.
                printf '[Upstream]\nKind=glance\nURL=http://127.0.0.1:%s\nTokenFile=%s\n[Daemon]\nExitOnIdleSec=infinity\n[HTTP]\nMaxConnectionsPerIP=0\nUpstreamRequestsPerIP=0\nReadAccessAllowCacheSec=%s\n' \
                        "$gl_port" "$work/glance-token" "$ttl" > "$work/ra$ttl.conf"
        done
        ra_port=$(free_port); ra0_port=$(free_port)
        start_daemon ra "$ra_port" "$work/cache-ra" --config="$work/ra60.conf"
        start_daemon ra0 "$ra0_port" "$work/cache-ra0" --config="$work/ra0.conf"
        wait_http "http://127.0.0.1:$ra_port/healthcheck"
        wait_http "http://127.0.0.1:$ra0_port/healthcheck"
        cat > "$work/range-token.lua" <<EOF2
local size = $((size_mib * 1024 * 1024))
math.randomseed(42)
request = function()
        local start = math.random(0, size / 4096 - 1) * 4096
        return wrk.format("GET", nil, { ["Range"] = "bytes=" .. start .. "-" .. (start + 4095),
                                        ["X-Auth-Token"] = "bench-token" })
end
EOF2
        # A request that is refused would count as fast: check each path answers 206 first.
        for u in "$img/big" "http://127.0.0.1:$ra_port/images/big" "http://127.0.0.1:$ra0_port/images/big"; do
                code=$(curl -s -o /dev/null -w '%{http_code}' -r 0-4095 -H 'X-Auth-Token: bench-token' "$u")
                [ "$code" = 206 ] || { echo "$u answered $code" >&2; exit 1; }
        done
        echo "# read access: 4 KiB Range hits, one connection (wrk ${secs}s): requests/s, avg and p99 latency"
        printf '%-26s %10s %10s %10s %7s\n' mode rps avg p99 ratio
        lat() { wrk -t1 -c1 -d"${secs}s" --latency -s "$2" "$1" | awk '/^Requests\/sec:/ { r = $2 } $1 == "Latency" && $2 != "Distribution" { a = $2 } $1 == "99%" { p = $2 } END { printf "%.0f %s %s", r, a, p }'; }
        read -r or oa op <<<"$(lat "$img/big" "$work/range.lua")"
        read -r cr ca cp <<<"$(lat "http://127.0.0.1:$ra_port/images/big" "$work/range-token.lua")"
        read -r ur ua up <<<"$(lat "http://127.0.0.1:$ra0_port/images/big" "$work/range-token.lua")"
        printf '%-26s %10s %10s %10s %7s\n' "open" "$or" "$oa" "$op" 1.00
        printf '%-26s %10s %10s %10s %7s\n' "upstream, verdict cached" "$cr" "$ca" "$cp" "$(awk -v a="$cr" -v b="$or" 'BEGIN { printf "%.2f", a / b }')"
        printf '%-26s %10s %10s %10s %7s\n' "upstream, asked each time" "$ur" "$ua" "$up" "$(awk -v a="$ur" -v b="$or" 'BEGIN { printf "%.2f", a / b }')"
fi

if [ -x "$upstream_server" ]; then
        # A miss from an upstream limited to 2 MB/s: the fill is near the start when the ranges are asked.
        mkdir -p "$work/slow" "$work/cache-slow"
        ln "$work/cache/big" "$work/slow/far"
        slow_port=$(free_port); far_port=$(free_port)
        "$upstream_server" --dir="$work/slow" --rate=2000000 --port="$slow_port" & pids+=($!)
        start_daemon far "$far_port" "$work/cache-slow" --config="$work/imgcached.conf" \
                --upstream="http://127.0.0.1:$slow_port/images/{id}"
        wait_http "http://127.0.0.1:$far_port/healthcheck"
        # The time until the range's last byte (curl's time_total; its time_starttransfer is the headers',
        # which come at once either way). At most 20 s each: without ranges ahead, the last bytes would
        # wait for the whole image. The upstream here knows no suffix ranges, so its "-512" is asked as
        # the explicit range imgcached asks for.
        timed() { curl -s -m 20 -o /dev/null -r "$2" -w '%{size_download} %{time_total}' "$1" || true; }
        # The ranges are asked once the fill's first bytes reached its client: from then on they are the
        # question, not the fill's start. (A HEAD would not do: asked before the GET is, it goes to the
        # upstream and returns before the fill has begun.)
        curl -s -o "$work/far-body" "http://127.0.0.1:$far_port/images/far" & fill_client=$!
        for _ in $(seq 200); do if [ -s "$work/far-body" ]; then break; fi; sleep 0.05; done
        echo "# range ahead of a fill at 2 MB/s: seconds until the range's last byte"
        size=$((size_mib * 1024 * 1024))
        printf '%-22s %10s %10s %12s\n' range imgcached upstream difference
        for r in "15000000-15001023" "$((size - 512))-$((size - 1))"; do
                want=$(( ${r#*-} - ${r%-*} + 1 ))
                read -r n_i t_i <<<"$(timed "http://127.0.0.1:$far_port/images/far" "$r")"
                read -r _ t_u <<<"$(timed "http://127.0.0.1:$slow_port/images/far" "$r")"
                if [ "$n_i" != "$want" ]; then
                        printf '%-22s %10s %10s\n' "$r" ">20" "$t_u"
                        continue
                fi
                printf '%-22s %10s %10s %9s ms\n' "$r" "$t_i" "$t_u" "$(awk -v a="$t_i" -v b="$t_u" 'BEGIN { printf "%.1f", (a - b) * 1000 }')"
        done
        kill "$fill_client" 2>/dev/null || true
fi
