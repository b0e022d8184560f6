#!/bin/bash
# SPDX-License-Identifier: MIT
#
# The system test proper: runs as root inside the booted guest (boot-test.sh), against the installed
# imgcache, a real systemd, a real dbus-daemon and a real polkitd.
#
#   in-guest.sh [--upstream-server=PATH] [--debs=DIR]
#
# imgcache was installed from its Debian package before boot (boot-test.sh -P; the packages are in DIR,
# default /boot-test/debs, apt-get's output in /boot-test/install.log). After the checks of the installed
# service, the last ones upgrade it to a repacked package of a higher version, remove it, purge it and
# install it again on the running system.
#
# Each check prints PASS, FAIL or SKIP with its duration and the time since the test started; a SKIP
# names the part of imgcache it waits for. Exit status: 0 when nothing failed, 1 otherwise.
#
# The state the checks share, in order: the cache is seeded with three 1 MiB images before anything
# starts the daemon, and a configuration drop-in sets MaxSize= to 1.5 MiB (so a prune has work) and
# ExitOnIdleSec=2; timers and the watchdog get test-only unit drop-ins in /etc/systemd/system.
set -uo pipefail

upstream_server=
debs_dir=/boot-test/debs
for arg; do
        case $arg in
        --upstream-server=*) upstream_server=${arg#*=} ;;
        --debs=*) debs_dir=${arg#*=} ;;
        *) echo "in-guest.sh: unknown argument $arg" >&2; exit 2 ;;
        esac
done

export SYSTEMD_COLORS=0 SYSTEMD_PAGER='' SYSTEMD_LOG_COLOR=0 LC_ALL=C.UTF-8

readonly BUS_NAME=org.imgcache.Manager
readonly BUS_PATH=/org/imgcache/Manager
readonly CACHE=/var/cache/imgcache
readonly CONF_D=/etc/imgcache/imgcached.conf.d
readonly SERVICE=imgcached.service
readonly SOCKET=imgcached.socket
readonly PORT=9393
readonly UPSTREAM_PORT=8099
readonly IMAGES=(img-a img-b img-c)     # seeded, 1 MiB each; img-a least recently used
readonly MAX_SIZE=$((1536 * 1024))
# The daemon binary, wherever the build's libexecdir put it.
DAEMON=$(systemctl show -P ExecStart "$SERVICE" | sed -n 's/.*path=\([^ ;]*\).*/\1/p')
readonly DAEMON=${DAEMON:-/usr/libexec/imgcached}

t0=$EPOCHREALTIME
elapsed() { awk "BEGIN { printf \"%.3f\", $EPOCHREALTIME - $1 }"; }

n_pass=0 n_fail=0 n_skip=0
results=()

# run_check NAME FUNCTION: the function prints what it sees; "skip REASON" ends it as skipped, a
# non-zero return (or "fail REASON") as failed.
run_check() {
        local name=$1 fn=$2 start out rc dur status reason
        start=$EPOCHREALTIME
        out=$( "$fn" 2>&1 )
        rc=$?
        dur=$(elapsed "$start")
        reason=$(sed -n 's/^\(SKIP\|FAIL\): //p' <<<"$out" | tail -n1)
        case $rc in
        0)  status=PASS; n_pass=$((n_pass + 1)) ;;
        77) status=SKIP; n_skip=$((n_skip + 1)) ;;
        *)  status=FAIL; n_fail=$((n_fail + 1)) ;;
        esac
        printf '%-4s %7ss  [at %7ss]  %s%s\n' "$status" "$dur" "$(elapsed "$t0")" "$name" \
                "${reason:+ — $reason}"
        # The details: always the "info:" lines, everything on failure.
        if [ $status = FAIL ]; then
                sed 's/^/        | /' <<<"$out" | grep -v '^        | FAIL: '
        else
                sed -n 's/^info: /        info: /p' <<<"$out"
        fi
        results+=("$status $dur $name${reason:+ — $reason}")
}
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
info() { echo "info: $*"; }

# wait_for SECONDS COMMAND...: polls every 50 ms until COMMAND succeeds; non-zero on timeout.
wait_for() {
        local deadline
        deadline=$(awk "BEGIN { printf \"%.6f\", $EPOCHREALTIME + $1 }"); shift
        while :; do
                "$@" >/dev/null 2>&1 && return 0
                awk "BEGIN { exit !($EPOCHREALTIME > $deadline) }" && return 1
                sleep 0.05
        done
}

unit_prop() { systemctl show -P "$2" "$1"; }
is_active() { [ "$(systemctl is-active "$1")" = active ]; }
is_inactive() { [ "$(unit_prop "$1" ActiveState)" = inactive ]; }
# systemctl stop, without the warning that the socket can start the service again.
stop_service() { systemctl stop "$SERVICE" 2> >(grep -v -e '^Warning: Stopping' -e "^  $SOCKET\$" >&2); }
call() { busctl call "$BUS_NAME" "$BUS_PATH" "$BUS_NAME" "$@"; }
gcall() { gdbus call --system --dest "$BUS_NAME" --object-path "$BUS_PATH" --method "$BUS_NAME.$1" "${@:2}"; }
journal_since() { journalctl --no-pager -o cat --since "@${1%.*}" "${@:2}"; }

# What HTTP serving looks like in the binary: libmicrohttpd linked and the socket taken from systemd.
http_landed() {
        ldd "$DAEMON" 2>/dev/null | grep -q libmicrohttpd && grep -aq sd_listen_fds "$DAEMON"
}
need_http() {
        http_landed || fail "$DAEMON does not serve the socket systemd passes (no libmicrohttpd/sd_listen_fds" \
                "in it)"
}

cache_images() { find "$CACHE" -maxdepth 1 -type f -regex '.*/[A-Za-z0-9][A-Za-z0-9._-]*' ! -name cache.db \
                         ! -name '*.db-*' -printf '%f %s\n' | sort; }

# Waits until SERVICE has stopped on its own after the idle timeout; prints how long that took.
wait_idle_exit() {
        local start=$EPOCHREALTIME
        wait_for 15 is_inactive "$SERVICE" ||
                fail "$SERVICE still $(unit_prop $SERVICE ActiveState) 15 s after the last call (ExitOnIdleSec=2)"
        [ "$(unit_prop $SERVICE Result)" = success ] ||
                fail "$SERVICE stopped with Result=$(unit_prop $SERVICE Result)"
        info "exited on idle $(elapsed "$start") s after the last request (Result=success)"
}

# ---------------------------------------------------------------------------------------------------
# Setup, before anything can start the daemon.
setup() {
        is_inactive "$SERVICE" || fail "$SERVICE is $(unit_prop $SERVICE ActiveState) before the test started it"
        mkdir -p "$CACHE" "$CONF_D"
        local age=300
        for id in "${IMAGES[@]}"; do
                head -c 1048576 /dev/urandom > "$CACHE/$id"
                touch -d "@$(( $(date +%s) - age ))" "$CACHE/$id"
                age=$((age - 60))
        done
        cat > "$CONF_D/50-system-test.conf" <<EOF
# The system test: a cache over its size limit that only an explicit prune shrinks, no free-space
# pruning, a quick idle exit, and a local upstream.
[Cache]
MaxSize=$MAX_SIZE
EnforceMaxSize=no
KeepFree=0
[Upstream]
URL=http://127.0.0.1:$UPSTREAM_PORT/images/{id}
[Daemon]
ExitOnIdleSec=2
EOF
        info "seeded $CACHE: $(cache_images | tr '\n' ' ')"
}

# ---------------------------------------------------------------------------------------------------
check_verify() {
        local units=() u out
        mapfile -t units < <(systemctl list-unit-files --no-legend 'imgcache*' | awk '{ print $1 }')
        [ ${#units[@]} -ge 8 ] || fail "expected 8 installed units, found: ${units[*]}"
        local paths=()
        for u in "${units[@]}"; do paths+=("$(unit_prop "$u" FragmentPath)"); done
        info "units: ${paths[*]}"
        out=$(systemd-analyze verify "${paths[@]}" 2>&1) || { echo "$out"; fail "systemd-analyze verify failed"; }
        [ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify printed warnings"; }
}

check_sysusers() {
        local entry uid home
        entry=$(getent passwd imgcache) || fail "no user imgcache"
        IFS=: read -r _ _ uid _ _ home _ <<<"$entry"
        info "$entry"
        [ "$uid" -lt 1000 ] || fail "imgcache is not a system user (uid $uid)"
        [ "$home" = "$CACHE" ] || fail "home is $home, not $CACHE"
        getent group imgcache >/dev/null || fail "no group imgcache"
        # The package's postinst ran systemd-sysusers before boot (apt-get's output), else the boot did.
        { cat /boot-test/install.log 2>/dev/null; journalctl -b --no-pager -o cat -t systemd-sysusers; } |
                grep -F "Creating user 'imgcache'" ||
                fail "systemd-sysusers did not say it created imgcache (was it in the base image?)"
}

check_enablement() {
        local u want
        for u in "$SOCKET:enabled" imgcache-prune.timer:enabled imgcache-clean.timer:enabled \
                 imgcache-prefetch.timer:disabled; do
                want=${u#*:} u=${u%%:*}
                [ "$(systemctl is-enabled "$u")" = "$want" ] || fail "$u is $(systemctl is-enabled "$u"), not $want"
        done
        is_active "$SOCKET" || fail "$SOCKET is not active after boot"
        is_active imgcache-prune.timer && is_active imgcache-clean.timer || fail "a maintenance timer is not active"
        is_active imgcache-prefetch.timer && fail "imgcache-prefetch.timer runs though shipped disabled"
        is_inactive "$SERVICE" || fail "$SERVICE was started at boot"
        ss -Hltnp "sport = :$PORT" | grep -q '"systemd",pid=1,' || { ss -ltnp; fail "PID 1 does not listen on $PORT"; }
        info "$SOCKET listening on $(ss -Hltn "sport = :$PORT" | awk '{ print $4 }' | tr '\n' ' ')"
        for u in imgcache-prune.timer imgcache-clean.timer; do
                info "$u: next elapse $(unit_prop $u NextElapseUSecRealtime)"
        done
}

check_security() {
        local out level
        out=$(systemd-analyze security --no-pager "$SERVICE" 2>&1) || { echo "$out"; fail "systemd-analyze security failed"; }
        level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
        [ -n "$level" ] || { echo "$out"; fail "no exposure level in the output"; }
        info "exposure level $level ($(grep -o 'Overall exposure.*' <<<"$out" | awk '{ print $NF, $(NF-1) }'))"
        grep '✗' <<<"$out" | sed 's/^/info:   /'
        awk "BEGIN { exit !($level <= 1.5) }" || fail "exposure $level > 1.5"
}

check_dbus_activation() {
        local since=$EPOCHREALTIME out
        is_inactive "$SERVICE" || fail "$SERVICE is already $(unit_prop $SERVICE ActiveState)"
        out=$(call ListImages 2>&1) || { echo "$out"; fail "busctl call ListImages failed"; }
        info "ListImages → ${out:0:120}"
        is_active "$SERVICE" || fail "$SERVICE is $(unit_prop $SERVICE ActiveState) after the call"
        journal_since "$since" -u dbus.service |
                grep -F "Activating via systemd: service name='$BUS_NAME' unit='$SERVICE'" ||
                fail "dbus-daemon did not log activating $SERVICE via systemd"
        [ "$(unit_prop $SERVICE Type)" = notify ] || fail "Type=$(unit_prop $SERVICE Type)"
        info "StatusText: $(unit_prop $SERVICE StatusText)"
        local n
        n=$(awk '{ print $2 }' <<<"$out")
        [ "$n" -ge ${#IMAGES[@]} ] 2>/dev/null || fail "ListImages shows $n images; the ${#IMAGES[@]} seeded ones were not adopted"
}

check_idle_exit() {
        is_active "$SERVICE" || call ListImages >/dev/null || fail "cannot start $SERVICE"
        wait_idle_exit
        call ListImages >/dev/null || fail "second D-Bus activation failed"
        is_active "$SERVICE" || fail "$SERVICE not active after the second D-Bus activation"
        info "D-Bus activation works again"
        wait_idle_exit
}

# LimitNOFILE= of the installed service reaches the daemon, and holds the defaults (MaxConnections=1024,
# 4096 pins): no warning about RLIMIT_NOFILE, so pins and OpenImage have their full budget.
check_fd_limit() {
        local pid since=$EPOCHREALTIME limits
        stop_service
        call ListImages >/dev/null || fail "cannot start $SERVICE"
        pid=$(unit_prop "$SERVICE" MainPID)
        [ "$pid" -gt 0 ] || fail "no MainPID"
        limits=$(awk '/^Max open files/ { print $4, $5 }' "/proc/$pid/limits")
        info "LimitNOFILE=$(unit_prop "$SERVICE" LimitNOFILE), the daemon's soft/hard limit: $limits"
        [ "$limits" = "8192 8192" ] || fail "the daemon runs with RLIMIT_NOFILE $limits, not 8192 8192"
        journal_since "$since" -u "$SERVICE" | grep 'RLIMIT_NOFILE' && fail "the daemon warned about its fd limit"
        wait_idle_exit
}

# ProtectSystem=strict and friends, seen from the running daemon: its mount namespace has / read-only
# and the cache directory writable; a write elsewhere fails even where the user could write; every file
# the imgcache user owns is in the cache directory (or its private /tmp).
check_sandbox() {
        local pid uid gid out stray
        call ListImages >/dev/null || fail "cannot start $SERVICE"
        pid=$(unit_prop "$SERVICE" MainPID)
        [ "$pid" -gt 0 ] || fail "no MainPID"
        uid=$(id -u imgcache) gid=$(id -g imgcache)
        out=$(awk '$5 ~ "^/(|run|run/lock|var/cache/imgcache|etc|usr|home|tmp|var/tmp)$" { print $5, $6 }' "/proc/$pid/mountinfo")
        info "mounts: $(tr '\n' ';' <<<"$out")"
        grep -q '^/ ro' <<<"$out" || fail "/ is not read-only for the daemon"
        grep -q '^/run ro' <<<"$out" || fail "/run is not read-only for the daemon"
        grep -q '^/var/cache/imgcache rw' <<<"$out" || fail "$CACHE is not writable for the daemon"
        grep -q '^/etc rw\|^/usr rw' <<<"$out" && fail "/etc or /usr writable for the daemon"
        # Writes as the daemon's user inside its namespaces: /run/lock is world-writable outside.
        runuser -u imgcache -- sh -c 'echo x > /run/lock/imgcache-probe' ||
                fail "the probe is broken: imgcache cannot write /run/lock even outside the sandbox"
        rm -f /run/lock/imgcache-probe
        out=$(nsenter -t "$pid" -m -S "$uid" -G "$gid" sh -c 'echo x > /run/lock/imgcache-escape' 2>&1) &&
                fail "the daemon's user could write /run/lock inside the sandbox"
        info "write to /run/lock inside the sandbox: ${out##*: }"
        [ -e /run/lock/imgcache-escape ] && fail "/run/lock/imgcache-escape exists"
        nsenter -t "$pid" -m -S "$uid" -G "$gid" sh -c "echo x > $CACHE/.sandbox-probe && rm $CACHE/.sandbox-probe" ||
                fail "the daemon's user cannot write its cache directory inside the sandbox"
        # All files of the imgcache user, anywhere (the private /tmp excepted).
        stray=$(find / -xdev \( -user imgcache -o -group imgcache \) ! -path "$CACHE" ! -path "$CACHE/*" \
                ! -path '/tmp/systemd-private-*' ! -path '/var/tmp/systemd-private-*' 2>/dev/null)
        stray+=$(find /run /dev/shm -xdev \( -user imgcache -o -group imgcache \) 2>/dev/null)
        [ -z "$stray" ] || { echo "$stray"; fail "files owned by imgcache outside $CACHE"; }
        info "imgcache owns $(find "$CACHE" | wc -l) paths, all under $CACHE"
        wait_idle_exit
}

# WatchdogSec= (3min shipped; 2s here) needs WATCHDOG=1 from the daemon; kept busy with calls so it
# cannot exit on idle meanwhile.
check_watchdog() {
        local d=/etc/systemd/system/$SERVICE.d pid
        # A running service keeps its watchdog setting over a reload: apply it to a fresh start.
        stop_service
        mkdir -p "$d"
        printf '[Service]\nWatchdogSec=2s\n' > "$d/50-test-watchdog.conf"
        systemctl daemon-reload
        call ListImages >/dev/null || fail "cannot start $SERVICE"
        pid=$(unit_prop "$SERVICE" MainPID)
        [ "$(unit_prop $SERVICE WatchdogUSec)" = 2s ] ||
                { rm -f "$d/50-test-watchdog.conf"; fail "drop-in not applied: WatchdogUSec=$(unit_prop $SERVICE WatchdogUSec)"; }
        for _ in $(seq 50); do call ListImages >/dev/null 2>&1; sleep 0.1; done
        local result now_pid
        result=$(unit_prop $SERVICE Result) now_pid=$(unit_prop $SERVICE MainPID)
        # Back to the shipped setting before judging, so that no later check meets a 2 s watchdog.
        rm -f "$d/50-test-watchdog.conf"
        systemctl daemon-reload
        stop_service
        systemctl reset-failed "$SERVICE" 2>/dev/null
        info "after 5 s with WatchdogSec=2s: Result=$result, MainPID $pid → $now_pid"
        if [ "$result" = watchdog ] || [ "$now_pid" != "$pid" ]; then
                grep -q WATCHDOG=1 "$DAEMON" ||
                        fail "the daemon was killed by the watchdog: it never sends WATCHDOG=1 (issue 3:" \
                             "sd_event_set_watchdog() in src/daemon)"
                fail "the daemon was killed by the watchdog"
        fi
}

check_socket_activation() {
        need_http
        local since=$EPOCHREALTIME out
        stop_service
        is_active "$SOCKET" || fail "$SOCKET not active"
        out=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthcheck") ||
                fail "curl /healthcheck failed ($out)"
        [ "$out" = 200 ] || fail "/healthcheck answered $out"
        is_active "$SERVICE" || fail "$SERVICE not active after the connection"
        journal_since "$since" -u "$SERVICE" | grep -q . || fail "no journal from $SERVICE"
        # The daemon serves the socket PID 1 listens on (it could not bind the port itself).
        ss -Hltnp "sport = :$PORT" | grep -q '"imgcached"' || { ss -ltnp; fail "imgcached does not hold the listening socket"; }
        info "/healthcheck → 200, $(ss -Hltnp "sport = :$PORT" | grep -o 'users:.*' | head -n1)"
        # An image: a hit, byte for byte.
        local id=${IMAGES[2]}
        out=$(curl -sS --max-time 10 -w '%{http_code}' -o /tmp/got "http://127.0.0.1:$PORT/images/$id") ||
                fail "curl /images/$id failed"
        [ "$out" = 200 ] || fail "/images/$id answered $out"
        cmp -s /tmp/got "$CACHE/$id" || fail "/images/$id differs from the cached file"
        info "GET /images/$id → 200, $(stat -c %s /tmp/got) bytes, identical"
        echo "$id" > /run/imgcache-test-hit
        rm -f /tmp/got
        wait_idle_exit
        out=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthcheck") ||
                fail "second socket activation: curl failed"
        [ "$out" = 200 ] || fail "second socket activation: /healthcheck answered $out"
        info "socket activation works again"
        wait_idle_exit
}

# The guest has only lo (--private-network); a non-loopback address to connect to, and a second one to
# connect from.
readonly OTHER_ADDR=10.23.0.1 OTHER_ADDR2=10.23.0.2
add_other_addrs() {
        ip addr replace "$OTHER_ADDR/32" dev lo && ip addr replace "$OTHER_ADDR2/32" dev lo ||
                fail "cannot add $OTHER_ADDR and $OTHER_ADDR2 to lo"
}
del_other_addrs() { ip addr del "$OTHER_ADDR/32" dev lo; ip addr del "$OTHER_ADDR2/32" dev lo; } 2>/dev/null
# curl's exit status for URL (7: connection refused, 28: timed out); prints the HTTP code.
curl_rc() { curl -sS --max-time "${2:-5}" -o /dev/null -w '%{http_code}' "${@:3}" "$1" 2>/dev/null; }
socket_listen() { systemctl show -P Listen "$SOCKET"; }

# Safe exposure by default: the shipped socket listens on 127.0.0.1:9393 and nothing else, so a
# connection to any other address of the guest, even 127.0.0.2 or ::1, is refused and starts nothing.
check_loopback_only() {
        local listen addrs rc target
        listen=$(socket_listen)
        info "Listen=$listen"
        [ "$listen" = "127.0.0.1:$PORT (Stream)" ] || fail "$SOCKET listens on '$listen', not only 127.0.0.1:$PORT"
        addrs=$(ss -Hltn "sport = :$PORT" | awk '{ print $4 }' | sort -u | tr '\n' ' ')
        [ "$addrs" = "127.0.0.1:$PORT " ] || { ss -ltn; fail "listening on :$PORT at: $addrs"; }
        is_inactive "$SERVICE" || fail "$SERVICE is $(unit_prop $SERVICE ActiveState) before the probes"
        add_other_addrs
        local targets=("$OTHER_ADDR" 127.0.0.2)
        ip -6 addr show dev lo | grep -q 'inet6 ::1/' && targets+=("[::1]")
        for target in "${targets[@]}"; do
                curl_rc "http://$target:$PORT/healthcheck" 5 >/dev/null
                rc=$?
                [ $rc = 7 ] || { del_other_addrs; fail "connecting to $target:$PORT: curl exit $rc, not 7 (refused)"; }
                info "connection to $target:$PORT refused"
        done
        del_other_addrs
        is_inactive "$SERVICE" || fail "a refused connection started $SERVICE"
}

# The drop-in imgcached.socket and imgcached(8) document for serving other hosts: ListenStream= reset, a
# new address, IPAddressDeny=any plus IPAddressAllow=. widen_socket applies it (to OTHER_ADDR, allowing
# only OTHER_ADDR itself), unwiden_socket goes back to the shipped socket.
# As documented, read authorization comes first: ReadAccess=token with a read token file
# (widen_socket open leaves it out, to see the daemon refuse).
readonly WIDEN_DROPIN=/etc/systemd/system/$SOCKET.d/50-test-widen.conf
readonly READ_DROPIN=$CONF_D/50-test-read-access.conf READ_TOKENS=/etc/imgcache/read-tokens
widen_socket() {
        stop_service
        add_other_addrs
        if [ "${1:-}" != open ]; then
                printf 'test-read-token\n' > "$READ_TOKENS"
                chown root:imgcache "$READ_TOKENS"; chmod 0640 "$READ_TOKENS"
                printf '[HTTP]\nReadAccess=token\nReadTokenFile=%s\n' "$READ_TOKENS" > "$READ_DROPIN"
        fi
        mkdir -p "${WIDEN_DROPIN%/*}"
        printf '[Socket]\nListenStream=\nListenStream=%s:%s\nIPAddressDeny=any\nIPAddressAllow=%s/32\n' \
                "$OTHER_ADDR" "$PORT" "$OTHER_ADDR" > "$WIDEN_DROPIN"
        systemctl daemon-reload
        systemctl restart "$SOCKET"
}
unwiden_socket() {
        rm -f "$WIDEN_DROPIN" "$READ_DROPIN" "$READ_TOKENS"
        systemctl daemon-reload
        stop_service
        systemctl restart "$SOCKET"
        del_other_addrs
        [ "$(socket_listen)" = "127.0.0.1:$PORT (Stream)" ] || fail "the socket did not return to 127.0.0.1:$PORT"
}

# With the drop-in the old address stops listening and the new one serves.
check_widening_dropin() {
        need_http
        local listen out rc old_rc
        widen_socket
        listen=$(socket_listen)
        out=$(curl_rc "http://$OTHER_ADDR:$PORT/healthcheck" 10); rc=$?
        curl_rc "http://127.0.0.1:$PORT/healthcheck" 5 >/dev/null; old_rc=$?
        # Back to the shipped socket before judging, so that later checks find it as installed.
        unwiden_socket
        info "with the drop-in: Listen=$listen"
        [ "$listen" = "$OTHER_ADDR:$PORT (Stream)" ] || fail "the drop-in gave Listen=$listen"
        [ $rc = 0 ] && [ "$out" = 200 ] || fail "/healthcheck on $OTHER_ADDR:$PORT: curl exit $rc, HTTP $out"
        info "/healthcheck on $OTHER_ADDR:$PORT → 200"
        [ $old_rc = 7 ] || fail "127.0.0.1:$PORT still answers with the drop-in (curl exit $old_rc)"
        info "127.0.0.1:$PORT refused"
}

# Widened without read authorization, ReadAccess=open (the default with a generic upstream) would serve
# every image to the network: the daemon refuses to start, saying so in one line.
check_open_refused_on_network() {
        need_http
        local since rc line
        since=$(date +%s.%N)
        widen_socket open
        curl_rc "http://$OTHER_ADDR:$PORT/healthcheck" 10 >/dev/null; rc=$?
        line=$(journal_since "$since" -u "$SERVICE" | grep -F "ReadAccess=open on a listener that is not loopback" | head -n 1)
        systemctl reset-failed "$SERVICE" 2>/dev/null || true
        unwiden_socket
        [ $rc != 0 ] || fail "/healthcheck on $OTHER_ADDR:$PORT answered with ReadAccess=open"
        [ -n "$line" ] || fail "no journal line saying why the daemon refused to start"
        info "curl exit $rc; journal: $line"
}

# With the drop-in a peer outside IPAddressAllow= gets nothing: its packets are dropped, so curl times out.
# systemd enforces IPAddressAllow= with BPF programs on cgroup2; on a legacy or hybrid hierarchy (this
# nspawn guest on a hybrid host) it accepts the setting and enforces nothing, like MemoryMax=.
check_ip_address_allow() {
        need_http
        [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] ||
                skip "IPAddressAllow= is not enforced on this cgroup hierarchy ($(stat -fc %T /sys/fs/cgroup) at" \
                     "/sys/fs/cgroup: systemd's BPF firewall needs the unified one)"
        local denied_rc allowed
        widen_socket
        allowed=$(curl_rc "http://$OTHER_ADDR:$PORT/healthcheck" 10)
        curl_rc "http://$OTHER_ADDR:$PORT/healthcheck" 2 --interface "$OTHER_ADDR2" >/dev/null; denied_rc=$?
        unwiden_socket
        [ "$allowed" = 200 ] || fail "/healthcheck from $OTHER_ADDR (allowed) answered '$allowed'"
        [ $denied_rc = 28 ] ||
                fail "a connection from $OTHER_ADDR2, outside IPAddressAllow=, got curl exit $denied_rc, not 28 (dropped)"
        info "from $OTHER_ADDR2 (not allowed): dropped, curl timed out"
}

# Starts the local upstream (test-upstream.service) serving a fresh 1000000-byte image ID.
start_upstream() {
        mkdir -p /srv/upstream
        head -c 1000000 /dev/urandom > "/srv/upstream/$1"
        chmod -R a+rX /srv/upstream
        systemd-run -q --unit=test-upstream -p DynamicUser=yes "$upstream_server" \
                --dir=/srv/upstream --port=$UPSTREAM_PORT --digest=sha256 || fail "cannot start upstream-server"
        wait_for 5 curl -sf -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/images/$1" ||
                { systemctl stop test-upstream; fail "upstream-server does not answer"; }
}

# A miss through the socket-activated daemon: fetched from a local upstream while streamed to curl.
check_http_miss() {
        need_http
        [ -n "$upstream_server" ] && [ -x "$upstream_server" ] ||
                fail "no upstream-server test program (tests/fetch) was passed to the guest"
        start_upstream img-miss
        stop_service
        local out
        out=$(curl -sS --max-time 30 -w '%{http_code}' -o /tmp/got "http://127.0.0.1:$PORT/images/img-miss")
        local rc=$?
        systemctl stop test-upstream
        [ $rc = 0 ] || fail "curl /images/img-miss failed"
        [ "$out" = 200 ] || fail "/images/img-miss answered $out"
        cmp -s /tmp/got /srv/upstream/img-miss || fail "the miss returned other bytes than the upstream's"
        wait_for 5 test -f "$CACHE/img-miss" || fail "img-miss was served but not cached"
        info "miss → 200, $(stat -c %s /tmp/got) bytes from the upstream, now cached"
        rm -f /tmp/got
        # Out of the way of the prune check: MaxSize counts only the seeded images.
        call DeleteImage s img-miss >/dev/null || fail "cannot delete img-miss"
        wait_idle_exit
}

# The access log (docs/DESIGN.md): one journal entry per request, found by its MESSAGE_ID.
readonly ACCESS_MESSAGE_ID=8f0d2e0c51d94b53a3ab8a2a1f0e7c64
# The value of FIELD in one line of journalctl -o json (values of ours hold no quote or backslash).
json_field() { grep -o "\"$1\":\"[^\"]*\"" <<<"$2" | head -n1 | sed 's/^"[^"]*":"\(.*\)"$/\1/'; }
# The JSON of the access log entry for PATH since SINCE, or nothing yet.
access_entry() {
        journalctl --no-pager -o json --since "@${1%.*}" MESSAGE_ID=$ACCESS_MESSAGE_ID IMGCACHE_HTTP_PATH="$2" |
                tail -n1
}
# Checks FIELD=VALUE in the entry JSON; names the field on failure.
expect_field() {
        local got
        got=$(json_field "$2" "$1")
        [ "$got" = "$3" ] || fail "${4:-entry}: $2 is '$got', not '$3': $1"
}

check_access_log() {
        need_http
        [ -n "$upstream_server" ] && [ -x "$upstream_server" ] ||
                fail "no upstream-server test program (tests/fetch) was passed to the guest"
        local since=$EPOCHREALTIME id=${IMAGES[2]} out hit miss health
        start_upstream img-log
        out=$(curl -sS --max-time 10 -w '%{http_code}' -o /tmp/got -H 'X-Auth-Token: SECRET-IN-HEADER' \
                "http://127.0.0.1:$PORT/images/$id?token=SECRET-IN-QUERY") || fail "curl /images/$id failed"
        [ "$out" = 200 ] || fail "/images/$id answered $out"
        out=$(curl -sS --max-time 30 -w '%{http_code}' -o /tmp/got "http://127.0.0.1:$PORT/images/img-log")
        [ "$out" = 200 ] || { systemctl stop test-upstream; fail "/images/img-log answered $out"; }
        systemctl stop test-upstream
        curl -sS --max-time 10 -o /dev/null "http://127.0.0.1:$PORT/healthcheck" || fail "curl /healthcheck failed"
        rm -f /tmp/got

        wait_for 5 sh -c "journalctl -o json --since @${since%.*} MESSAGE_ID=$ACCESS_MESSAGE_ID | grep -q /healthcheck" ||
                fail "no access log entry for /healthcheck in the journal"
        hit=$(access_entry "$since" "/images/$id")
        miss=$(access_entry "$since" /images/img-log)
        health=$(access_entry "$since" /healthcheck)
        [ -n "$hit" ] || fail "no access log entry for the hit /images/$id"
        [ -n "$miss" ] || fail "no access log entry for the miss /images/img-log"
        info "hit: $hit"

        expect_field "$hit" IMGCACHE_HTTP_METHOD GET hit
        expect_field "$hit" IMGCACHE_HTTP_STATUS 200 hit
        expect_field "$hit" IMGCACHE_HTTP_BYTES "$(stat -c %s "$CACHE/$id")" hit
        expect_field "$hit" IMGCACHE_CACHE hit hit
        expect_field "$hit" IMGCACHE_CLIENT_ADDRESS 127.0.0.1 hit
        expect_field "$hit" IMGCACHE_IMAGE_ID "$id" hit
        expect_field "$hit" PRIORITY 6 hit
        expect_field "$hit" _SYSTEMD_UNIT "$SERVICE" hit
        [[ $(json_field IMGCACHE_HTTP_DURATION_USEC "$hit") =~ ^[0-9]+$ ]] || fail "hit: no duration: $hit"
        [[ $(json_field IMGCACHE_CLIENT_PORT "$hit") =~ ^[0-9]+$ ]] || fail "hit: no client port: $hit"
        expect_field "$miss" IMGCACHE_HTTP_STATUS 200 miss
        expect_field "$miss" IMGCACHE_HTTP_BYTES 1000000 miss
        expect_field "$miss" IMGCACHE_CACHE miss miss
        expect_field "$miss" IMGCACHE_IMAGE_ID img-log miss
        expect_field "$health" IMGCACHE_CACHE none healthcheck
        [ -z "$(json_field IMGCACHE_IMAGE_ID "$health")" ] || fail "/healthcheck names an image: $health"
        info "miss: $(json_field MESSAGE "$miss"); /healthcheck: $(json_field MESSAGE "$health")"

        # Neither the query nor a header's token reaches the journal.
        out=$(journalctl --no-pager -o json --since "@${since%.*}" | grep -c SECRET)
        [ "$out" = 0 ] || fail "a token from the request reached the journal ($out entries)"

        call DeleteImage s img-log >/dev/null || fail "cannot delete img-log"
        wait_idle_exit
}

# Fires TIMER at once with a test-only drop-in and waits for its service to finish.
fire_timer() {
        local timer=$1 service=${1%.timer}.service d=/etc/systemd/system/$1.d before start
        mkdir -p "$d"
        printf '[Timer]\nOnCalendar=\nOnActiveSec=1s\nAccuracySec=100ms\nRandomizedDelaySec=0\n' > "$d/50-test.conf"
        systemctl daemon-reload
        before=$(unit_prop "$service" ExecMainExitTimestampMonotonic)
        start=$EPOCHREALTIME
        systemctl restart "$timer"
        wait_for 15 sh -c "[ \"\$(systemctl show -P ExecMainExitTimestampMonotonic $service)\" != '$before' ] &&
                           [ \"\$(systemctl show -P ActiveState $service)\" != activating ]"
        local ok=$?
        rm -f "$d/50-test.conf"
        systemctl daemon-reload
        [ $ok = 0 ] || fail "$service did not run within 15 s of restarting $timer"
        info "$timer fired, $service finished $(elapsed "$start") s after the timer started" \
             "(Result=$(unit_prop "$service" Result), status $(unit_prop "$service" ExecMainStatus))"
        [ "$(unit_prop "$service" Result)" = success ] || {
                journalctl -b --no-pager -o cat -u "$service" | tail -n 5
                fail "$service failed"
        }
}

check_prune_timer() {
        local before after total
        before=$(cache_images)
        total=$(awk '{ s += $2 } END { print s + 0 }' <<<"$before")
        [ "$total" -gt $MAX_SIZE ] || fail "the seeded cache ($total bytes) is not over MaxSize=$MAX_SIZE"
        fire_timer imgcache-prune.timer
        after=$(cache_images)
        total=$(awk '{ s += $2 } END { print s + 0 }' <<<"$after")
        info "before: $(tr '\n' ' ' <<<"$before")"
        info "after:  $(tr '\n' ' ' <<<"$after") ($total bytes, MaxSize=$MAX_SIZE)"
        [ "$total" -le $MAX_SIZE ] || fail "the cache is still over MaxSize= after the prune"
        [ -n "$after" ] || fail "the prune removed every image"
        # The image the socket check fetched is the most recently used one.
        if [ -e /run/imgcache-test-hit ]; then
                grep -q "^$(cat /run/imgcache-test-hit) " <<<"$after" ||
                        fail "the most recently used image $(cat /run/imgcache-test-hit) was pruned"
        fi
        wait_idle_exit
}

check_clean_timer() {
        local id=img-stalled bad=img-invalid
        mkdir -p "$CACHE/incomplete" "$CACHE/invalid"
        head -c 4096 /dev/urandom > "$CACHE/incomplete/$id"
        head -c 4096 /dev/urandom > "$CACHE/invalid/$bad"
        head -c 4096 /dev/urandom > "$CACHE/incomplete/img-fresh"
        touch -d '2 days ago' "$CACHE/incomplete/$id"
        chown -R imgcache:imgcache "$CACHE/incomplete" "$CACHE/invalid"
        fire_timer imgcache-clean.timer
        [ -e "$CACHE/incomplete/$id" ] && fail "the stalled incomplete/$id (2 days old) is still there"
        [ -e "$CACHE/invalid/$bad" ] && fail "invalid/$bad is still there"
        [ -e "$CACHE/incomplete/img-fresh" ] || fail "the fresh incomplete/img-fresh was removed too"
        info "incomplete/$id and invalid/$bad removed, the fresh incomplete/img-fresh kept"
        rm -f "$CACHE/incomplete/img-fresh"
        wait_idle_exit
}

# The real polkitd decides for an unprivileged caller (denied: auth_admin, no agent), root is allowed.
check_polkit() {
        local id out
        id=$(cache_images | awk 'NR == 1 { print $1 }')
        [ -n "$id" ] || fail "no cached image left to delete"
        pkaction --action-id org.imgcache.delete >/dev/null || fail "polkitd does not know org.imgcache.delete"
        out=$(runuser -u testuser -- gdbus call --system --dest "$BUS_NAME" --object-path "$BUS_PATH" \
                --method "$BUS_NAME.ListImages" 2>&1) || { echo "$out"; fail "testuser cannot even ListImages"; }
        [ "$(id -u testuser)" = 1000 ] || fail "no testuser with uid 1000"
        # Without --interactive the daemon must not wait for an agent; with it, polkitd finds no agent
        # for testuser and says no.
        for m in DeleteImage Prune; do
                local args=() mode want
                [ $m = DeleteImage ] && args=("'$id'")
                for mode in "" --interactive; do
                        want=org.freedesktop.DBus.Error.InteractiveAuthorizationRequired
                        [ -n "$mode" ] && want=org.freedesktop.DBus.Error.AccessDenied
                        out=$(runuser -u testuser -- gdbus call --system $mode --dest "$BUS_NAME" \
                                --object-path "$BUS_PATH" --method "$BUS_NAME.$m" "${args[@]}" 2>&1 </dev/null) &&
                                { echo "$out"; fail "testuser may $m"; }
                        grep -q "$want" <<<"$out" || { echo "$out"; fail "testuser's $m ${mode:-(non-interactive)} failed, but not with $want"; }
                        info "testuser $m ${mode:-(non-interactive)}: $(sed 's/^.*GDBus.Error://' <<<"$out" | head -n1)"
                done
        done
        [ -e "$CACHE/$id" ] || fail "$id vanished though testuser was denied"
        out=$(gcall DeleteImage "'$id'" 2>&1) || { echo "$out"; fail "root may not DeleteImage"; }
        [ -e "$CACHE/$id" ] && fail "root's DeleteImage left $CACHE/$id"
        out=$(gcall Prune 2>&1) || { echo "$out"; fail "root may not Prune"; }
        info "root DeleteImage $id: ok; root Prune → $out"
        wait_idle_exit
}

# SIGHUP through ExecReload=: the daemon re-reads its configuration and keeps running.
check_reload() {
        local pid since=$EPOCHREALTIME
        call ListImages >/dev/null || fail "cannot start $SERVICE"
        pid=$(unit_prop "$SERVICE" MainPID)
        systemctl reload "$SERVICE" || fail "systemctl reload failed"
        is_active "$SERVICE" || fail "$SERVICE is $(unit_prop $SERVICE ActiveState) after the reload"
        [ "$(unit_prop "$SERVICE" MainPID)" = "$pid" ] || fail "the daemon was restarted instead of reloaded"
        info "reloaded, MainPID $pid kept, StatusText: $(unit_prop $SERVICE StatusText)"
        journal_since "$since" -u "$SERVICE" | sed 's/^/info:   /' | tail -n 4
        wait_idle_exit
}

# The shipped default configuration (every key commented out) and the test's drop-in are read
# without a warning.
check_config() {
        local conf=/etc/imgcache/imgcached.conf keys warnings
        [ -f "$conf" ] || fail "$conf is not installed"
        grep -Ev '^(#|;|\[[A-Za-z]+\]$|$)' "$conf" && fail "$conf sets keys; its keys should all be commented out"
        keys=$(grep -c '^#[A-Za-z]*=' "$conf")
        info "$conf: $keys keys, all commented out"
        warnings=$(journalctl -b --no-pager -o cat -u "$SERVICE" -p warning | grep -i 'imgcached.conf\|unknown\|ignoring')
        [ -z "$warnings" ] || { echo "$warnings"; fail "the daemon warned about its configuration"; }
}

# The prefetch timer is shipped disabled; its service must still work when started.
check_prefetch_service() {
        local since=$EPOCHREALTIME
        if ! systemctl start imgcache-prefetch.service; then
                if journal_since "$since" -u imgcache-prefetch.service | grep -q 'not supported by this version'; then
                        systemctl reset-failed imgcache-prefetch.service
                        fail "no fetching: $(journal_since "$since" -u imgcache-prefetch.service |
                                grep -m1 'not supported by this version')"
                fi
                journal_since "$since" -u imgcache-prefetch.service | tail -n 5
                fail "imgcache-prefetch.service failed"
        fi
        info "imgcache-prefetch.service: Result=$(unit_prop imgcache-prefetch.service Result)," \
             "status $(unit_prop imgcache-prefetch.service ExecMainStatus)"
        wait_idle_exit
}

# DESIGN: root's calls are allowed without asking polkit, so the timers work where no polkitd runs.
check_root_without_polkitd() {
        local out rc
        systemctl mask --runtime --now polkit.service >/dev/null 2>&1 || fail "cannot stop polkitd"
        out=$(call Clean t 0 2>&1)
        rc=$?
        systemctl unmask --runtime polkit.service >/dev/null 2>&1
        [ $rc = 0 ] || { echo "$out"; fail "root's Clean failed while polkitd was down"; }
        info "polkitd masked and stopped: root Clean → $out"
        wait_idle_exit
}

# The Cockpit page's files; the manifest parsed by the guest's one JSON parser, sd-json, which
# systemd-analyze runs on a --security-policy file before anything else (it fails on invalid JSON only).
check_cockpit_page() {
        local d=/usr/share/cockpit/imgcache f out
        for f in manifest.json index.html imgcache.js image-id.js imgcache.css; do [ -s "$d/$f" ] || fail "no $d/$f"; done
        systemd-analyze security --offline=yes --security-policy="$d/manifest.json" "$SERVICE" >/dev/null ||
                fail "$d/manifest.json is not valid JSON"
        cockpit-bridge --packages 2>/dev/null | grep -q '^imgcache ' || fail "cockpit-bridge does not list the page"

        # What the page does, through the same bridge (cockpit.dbus() is its dbus-json3 channel), on the
        # guest's system bus with its polkit: root reads the count, testuser's Prune is refused.
        out=$(bridge_call root '"org.freedesktop.DBus.Properties","Get",["'"$BUS_NAME"'","ImageCount"]')
        grep -q '"reply":\[\[{"t":"u","v":'"$(cache_images | wc -l)"'}\]\]' <<<"$out" ||
                fail "the bridge's ImageCount: $out"
        out=$(bridge_call testuser '"'"$BUS_NAME"'","Prune",[]')
        grep -q '"error":\["org.freedesktop.DBus.Error.AccessDenied"' <<<"$out" || fail "testuser's Prune: $out"
        info "through cockpit-bridge: ImageCount as root; testuser's Prune refused: $(cut -c1-120 <<<"$out")"
}

# One D-Bus method call as user through cockpit-bridge's raw protocol, on the system bus: prints the
# channel's answer to it (a reply or an error). The bridge exits when its input closes.
bridge_call() {
        local user=$1 call=$2 line
        coproc BRIDGE { runuser -u "$user" -- cockpit-bridge --interact=--- 2>/dev/null; }
        printf '\n{"command":"open","channel":"a","payload":"dbus-json3","name":"%s","bus":"system"}\n---\na\n{"call":["%s",%s],"id":"1"}\n---\n' \
                "$BUS_NAME" "$BUS_PATH" "$call" >&"${BRIDGE[1]}"
        while IFS= read -r -t 30 line <&"${BRIDGE[0]}"; do
                case $line in *'"id":"1"'*) echo "$line"; break ;; esac
        done
        exec {BRIDGE[1]}>&-
        wait "$BRIDGE_PID" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------------
# The Debian package: installed, upgraded, removed, purged and installed again on the running system.
readonly PKG=imgcache CONF=/etc/imgcache/imgcached.conf
readonly SAVED=/run/imgcache-test-saved        # what the checks below keep between them
pkg_deb() { compgen -G "$debs_dir/${PKG}_*.deb" | head -n1; }
pkg_status() { dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$PKG" 2>/dev/null | tr -s ' '; }
# apt-get as an operator runs it, on a guest without network; its output goes to LOG.
apt_get() {
        local log=$1; shift
        DEBIAN_FRONTEND=noninteractive apt-get -y -q "$@" </dev/null >"$log" 2>&1 ||
                { tail -n 30 "$log"; fail "apt-get $* failed"; }
        info "apt-get $*: $(grep -c . "$log") lines of output"
}
# Files of the package's kind left on the system: units, enablement links, drop-in directories, the
# bus and polkit files, deb-systemd-helper's state.
pkg_leftovers() {
        find /etc/systemd /lib/systemd /usr/lib/systemd /run/systemd/system /run/systemd/generator* \
             /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked \
             /usr/share/dbus-1 /usr/share/polkit-1 /usr/lib/sysusers.d \
             -name '*imgcache*' 2>/dev/null
}
# Files anywhere owned by the imgcache user or group (a private /tmp of a unit included).
user_files() {
        find / /run /tmp /var/tmp /dev/shm -xdev \( -user imgcache -o -group imgcache \) 2>/dev/null | sort -u
}

check_package_installed() {
        local deb want out u path
        deb=$(pkg_deb) || fail "no ${PKG}_*.deb in $debs_dir (boot-test.sh -P)"
        want=$(dpkg-deb -f "$deb" Version)
        [ "$(pkg_status)" = "ii $want" ] || fail "dpkg says '$(pkg_status)', not 'ii $want'"
        dpkg-query -W -f='${Conffiles}\n' "$PKG" | grep -q "^ $CONF " || fail "$CONF is not a conffile"
        for u in $(systemctl list-unit-files --no-legend 'imgcache*' | awk '{ print $1 }'); do
                path=$(unit_prop "$u" FragmentPath)
                dpkg -S "$path" >/dev/null 2>&1 || fail "$u ($path) does not belong to a package"
        done
        info "$PKG $want installed (apt-get, before boot); $CONF is a conffile; every unit comes from it"
        out=$(imgcachectl status 2>&1) || { echo "$out"; fail "imgcachectl status failed as root"; }
        grep -q "Directory: $CACHE\$" <<<"$out" || { echo "$out"; fail "imgcachectl status names no $CACHE"; }
        info "imgcachectl status: $(tr -s ' \n' ' ' <<<"$out" | cut -c1-150)"
        wait_idle_exit
}

# An upgrade to a higher version (the same package repacked, so only the maintainer scripts act) with
# the daemon running: it is restarted, the socket never stops listening (same unit invocation, same
# listening socket), the cache and a locally changed conffile stay as they were.
check_upgrade() {
        local deb version new tree sums sock_inv sock_ino pid out
        deb=$(pkg_deb) || fail "no ${PKG}_*.deb in $debs_dir"
        version=$(dpkg-deb -f "$deb" Version) new=$(dpkg-deb -f "$deb" Version)+systemtest1
        mkdir -p "$SAVED"
        tree=$(mktemp -d)
        dpkg-deb -R "$deb" "$tree/pkg" && sed -i "s/^Version: .*/Version: $new/" "$tree/pkg/DEBIAN/control" &&
                dpkg-deb -Zgzip -b "$tree/pkg" "$SAVED/${PKG}_${new}.deb" >/dev/null || fail "cannot repack $deb as $new"
        rm -rf "$tree"
        dpkg --compare-versions "$new" gt "$version" || fail "$new is not higher than $version"

        printf '\n# A local change that upgrades keep (the system test).\n' >> "$CONF"
        cp "$CONF" "$SAVED/conf"
        # An image of its own in the cache (the daemon adopts it), served after the upgrade.
        head -c 65536 /dev/urandom > "$CACHE/img-upgrade"
        chown imgcache:imgcache "$CACHE/img-upgrade"
        sums=$(cd "$CACHE" && cache_images | awk '{ print $1 }' | xargs -r sha256sum)
        # The daemon must be running when the package is upgraded: no idle exit meanwhile.
        stop_service
        printf '[Daemon]\nExitOnIdleSec=0\n' > "$CONF_D/60-test-upgrade.conf"
        trap 'rm -f "$CONF_D/60-test-upgrade.conf"; stop_service' EXIT
        call ListImages >/dev/null || fail "cannot start $SERVICE"
        pid=$(unit_prop "$SERVICE" MainPID)
        sock_inv=$(unit_prop "$SOCKET" InvocationID)
        sock_ino=$(ss -Hltne "sport = :$PORT" | grep -o 'ino:[0-9]*')
        [ -n "$sock_ino" ] || fail "nothing listens on :$PORT before the upgrade"

        apt_get "$SAVED/upgrade.log" install "$SAVED/${PKG}_${new}.deb"
        [ "$(pkg_status)" = "ii $new" ] || fail "after the upgrade dpkg says '$(pkg_status)'"
        info "upgraded $version → $new"
        is_active "$SERVICE" || fail "$SERVICE is $(unit_prop $SERVICE ActiveState) after the upgrade"
        [ "$(unit_prop "$SERVICE" MainPID)" != "$pid" ] || fail "the daemon (pid $pid) was not restarted"
        info "daemon restarted: MainPID $pid → $(unit_prop "$SERVICE" MainPID)"
        [ "$(unit_prop "$SOCKET" InvocationID)" = "$sock_inv" ] && is_active "$SOCKET" ||
                fail "$SOCKET was stopped or restarted by the upgrade"
        [ "$(ss -Hltne "sport = :$PORT" | grep -o 'ino:[0-9]*')" = "$sock_ino" ] ||
                fail "the listening socket changed ($sock_ino → $(ss -Hltne "sport = :$PORT" | grep -o 'ino:[0-9]*'))"
        info "$SOCKET kept its invocation and its listening socket ($sock_ino)"
        out=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthcheck") ||
                fail "curl /healthcheck failed after the upgrade"
        [ "$out" = 200 ] || fail "/healthcheck answered $out after the upgrade"
        cmp -s "$CONF" "$SAVED/conf" || { diff "$SAVED/conf" "$CONF"; fail "the upgrade changed $CONF"; }
        compgen -G "$CONF.dpkg-*" >/dev/null && fail "the upgrade left $(echo "$CONF".dpkg-*)"
        [ "$(cd "$CACHE" && cache_images | awk '{ print $1 }' | xargs -r sha256sum)" = "$sums" ] ||
                fail "the cached images changed in the upgrade"
        out=$(curl -sS --max-time 10 -w '%{http_code}' -o "$SAVED/got" "http://127.0.0.1:$PORT/images/img-upgrade") ||
                fail "curl /images/img-upgrade failed after the upgrade"
        [ "$out" = 200 ] && cmp -s "$SAVED/got" "$CACHE/img-upgrade" ||
                fail "/images/img-upgrade answered $out, or other bytes, after the upgrade"
        rm -f "$SAVED/got"
        info "$CONF (changed locally) and $(wc -l <<<"$sums") cached images kept"

}

# Removal stops everything and takes the units, and keeps the cache and /etc/imgcache.
check_remove() {
        local images rc out
        images=$(cache_images)
        cp -a "$CONF_D" "$SAVED/conf.d"
        apt_get "$SAVED/remove.log" remove "$PKG"
        [ "$(pkg_status)" = "rc $(dpkg-query -W -f='${Version}' "$PKG")" ] ||
                fail "after the removal dpkg says '$(pkg_status)', not rc (config-files)"
        [ -z "$(systemctl list-unit-files --no-legend 'imgcache*')" ] ||
                fail "units left: $(systemctl list-unit-files --no-legend 'imgcache*' | tr '\n' ' ')"
        # Their enablement links stay until the purge, so timers.target may still name the timers (not-found).
        out=$(systemctl list-units --all --no-legend --plain 'imgcache*' | awk '$3 != "inactive"')
        [ -z "$out" ] || fail "units not stopped: $(tr '\n' ' ' <<<"$out")"
        [ -z "$(ss -Hltn "sport = :$PORT")" ] || fail "something still listens on :$PORT"
        curl_rc "http://127.0.0.1:$PORT/healthcheck" 5 >/dev/null; rc=$?
        [ $rc = 7 ] || fail "127.0.0.1:$PORT: curl exit $rc, not 7 (refused)"
        pgrep -u imgcache >/dev/null && fail "processes of imgcache left: $(pgrep -a -u imgcache)"
        info "units gone and stopped, :$PORT refused, no process of imgcache"
        [ "$(cache_images)" = "$images" ] || fail "the removal changed $CACHE"
        [ -f "$CONF" ] && cmp -s "$CONF" "$SAVED/conf" || fail "the removal changed or removed $CONF"
        [ -f "$CONF_D/50-system-test.conf" ] || fail "the removal took $CONF_D"
        info "kept: $CACHE (images: $(awk '{ print $1 }' <<<"$images" | tr '\n' ' ')), $CONF, $CONF_D"
}

# Purge takes the cache, /etc/imgcache and every unit and link; the imgcache user stays, owning nothing.
check_purge() {
        local left
        # The drop-in directories this test made (empty now) are not the package's to remove.
        rmdir /etc/systemd/system/imgcache*.d 2>/dev/null
        apt_get "$SAVED/purge.log" purge "$PKG"
        dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null | grep -q '^ii\|^rc' &&
                fail "after the purge dpkg says '$(pkg_status)'"
        [ -e "$CACHE" ] && fail "$CACHE is still there: $(ls -A "$CACHE" | tr '\n' ' ')"
        [ -e /etc/imgcache ] && fail "/etc/imgcache is still there: $(find /etc/imgcache | tr '\n' ' ')"
        left=$(pkg_leftovers)
        [ -z "$left" ] || { echo "$left"; fail "files of the package left after the purge"; }
        left=$(user_files)
        [ -z "$left" ] || { echo "$left"; fail "files of the imgcache user left after the purge"; }
        pkaction --action-id org.imgcache.delete >/dev/null 2>&1 && fail "polkitd still knows org.imgcache.delete"
        info "$CACHE, /etc/imgcache, units, links, bus and polkit files gone; no file owned by imgcache"
        getent passwd imgcache >/dev/null && info "the imgcache user stays (Debian removes no system user)"
        return 0
}

# Installed on the running system (the purge above left no trace), the postinst enables and starts the
# socket and the timers as the preset says; the daemon answers HTTP and the bus (dbus-daemon has the
# new policy), and polkit still refuses an unprivileged caller.
check_install_running() {
        local deb out u want
        deb=$(pkg_deb) || fail "no ${PKG}_*.deb in $debs_dir"
        apt_get "$SAVED/install.log" install "$deb"
        [ "$(pkg_status)" = "ii $(dpkg-deb -f "$deb" Version)" ] || fail "dpkg says '$(pkg_status)'"
        for u in "$SOCKET:enabled" imgcache-prune.timer:enabled imgcache-clean.timer:enabled \
                 imgcache-prefetch.timer:disabled; do
                want=${u#*:} u=${u%%:*}
                [ "$(systemctl is-enabled "$u")" = "$want" ] || fail "$u is $(systemctl is-enabled "$u"), not $want"
                [ $want = enabled ] && { is_active "$u" || fail "$u was not started by the installation"; }
                [ $want = disabled ] && { is_active "$u" && fail "$u was started by the installation"; }
        done
        is_inactive "$SERVICE" || fail "the installation started $SERVICE"
        ss -Hltnp "sport = :$PORT" | grep -q '"systemd",pid=1,' || { ss -ltnp; fail "PID 1 does not listen on $PORT"; }
        info "socket and prune/clean timers enabled and active, prefetch timer off, daemon not started"
        # The test's configuration again (the purge took it), before anything starts the daemon.
        mkdir -p "$CONF_D" && cp "$SAVED/conf.d/50-system-test.conf" "$CONF_D/" || fail "cannot restore $CONF_D"
        out=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthcheck") ||
                fail "curl /healthcheck failed"
        [ "$out" = 200 ] || fail "/healthcheck answered $out"
        out=$(imgcachectl status 2>&1) || { echo "$out"; fail "imgcachectl status failed as root"; }
        info "/healthcheck → 200, imgcachectl status works"
        [ "$(stat -c %U "$CACHE")" = imgcache ] || fail "$CACHE is owned by $(stat -c %U "$CACHE")"
        out=$(runuser -u testuser -- gdbus call --system --interactive --dest "$BUS_NAME" --object-path "$BUS_PATH" \
                --method "$BUS_NAME.Prune" 2>&1 </dev/null) && { echo "$out"; fail "testuser may Prune"; }
        grep -q org.freedesktop.DBus.Error.AccessDenied <<<"$out" || { echo "$out"; fail "testuser's Prune failed otherwise"; }
        info "testuser Prune: $(sed 's/^.*GDBus.Error://' <<<"$out" | head -n1)"
        wait_idle_exit
}

check_no_failures() {
        local failed
        failed=$(systemctl --failed --no-legend --plain | awk '{ print $1 }')
        journalctl -b --no-pager -o cat -u "$SERVICE" -p warning | sed 's/^/info: imgcached: /' | tail -n 10
        [ -z "$failed" ] || fail "failed units: $(tr '\n' ' ' <<<"$failed")"
}

# ---------------------------------------------------------------------------------------------------
echo "imgcache system test: $(systemctl --version | head -n1), $(uname -r)"
run_check "setup: seed the cache, configuration drop-in" setup
run_check "systemd-analyze verify of every installed unit" check_verify
run_check "sysusers created the imgcache user" check_sysusers
run_check "socket and timers enabled by the preset, socket listening" check_enablement
run_check "the shipped socket listens on 127.0.0.1 only; other addresses are refused" check_loopback_only
run_check "systemd-analyze security imgcached.service ≤ 1.5" check_security
run_check "D-Bus activation: busctl ListImages starts imgcached.service" check_dbus_activation
run_check "exit on idle, then D-Bus activation again" check_idle_exit
run_check "LimitNOFILE=8192 reaches the daemon and holds the default fd budget" check_fd_limit
run_check "sandbox: writes only in $CACHE (ProtectSystem=strict)" check_sandbox
run_check "watchdog: daemon sends WATCHDOG=1 (WatchdogSec=2s)" check_watchdog
run_check "systemctl reload: SIGHUP re-reads the configuration" check_reload
run_check "default imgcached.conf: all keys commented, read without warnings" check_config
run_check "socket activation: curl :$PORT starts it and gets an image; again after idle exit" check_socket_activation
run_check "socket activation with a miss: fetched from the upstream while served" check_http_miss
run_check "access log: journal entries with the request's fields (journalctl -o json MESSAGE_ID=)" check_access_log
run_check "the documented drop-in moves the socket to another address" check_widening_dropin
run_check "the documented drop-in's IPAddressAllow= drops other peers" check_ip_address_allow
run_check "widened without read authorization, the daemon refuses ReadAccess=open" check_open_refused_on_network
run_check "imgcache-prune.timer fires and prunes the over-size cache" check_prune_timer
run_check "imgcache-clean.timer fires and cleans incomplete/ and invalid/" check_clean_timer
run_check "imgcache-prefetch.service (timer shipped disabled) runs" check_prefetch_service
run_check "polkit: testuser denied DeleteImage/Prune, root allowed" check_polkit
run_check "root needs no polkitd (timers work without it)" check_root_without_polkitd
run_check "the Cockpit page: installed, listed by cockpit-bridge, which reaches the daemon (polkit included)" check_cockpit_page
run_check "the package: installed by apt-get, conffile, imgcachectl status as root" check_package_installed
run_check "upgrade to a higher version: daemon restarted, socket kept, cache and changed conffile kept" check_upgrade
run_check "apt-get remove: units stopped and gone, cache and /etc/imgcache kept" check_remove
run_check "apt-get purge: no unit, cache, configuration or file of the imgcache user left" check_purge
run_check "apt-get install on the running system: socket and timers started, HTTP, bus and polkit work" check_install_running
run_check "no failed units" check_no_failures

echo
echo "Summary:"
printf '  %s\n' "${results[@]}"
echo "$n_pass passed, $n_fail failed, $n_skip skipped ($(elapsed "$t0") s)"
[ $n_fail = 0 ]
