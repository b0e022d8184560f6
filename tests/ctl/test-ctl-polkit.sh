#!/bin/bash
# SPDX-License-Identifier: MIT
#
# imgcachectl's messages for calls refused by polkit, against imgcached on a private *system* bus with the
# real polkitd (see ../shared/SYSTEM-TESTS.md §3): a private mount and PID namespace, a tmpfs over
# /run/dbus, the project's polkit policy and bus policy bind-mounted over copies of the system
# directories. imgcached runs as root; imgcachectl runs as nobody (refused) and as root (allowed).
# Emits TAP; "1..0 # SKIP" where the namespace, polkitd or runuser is not available (a failure with
# IMGCACHE_TESTS_REQUIRE_ALL=1, as in CI).
#
# Usage: test-ctl-polkit.sh IMGCACHECTL IMGCACHED SOURCE_ROOT
set -euo pipefail

CTL=$1
DAEMON=$2
SRC=$3
WAIT=10

skip_all() {
        if [ "${IMGCACHE_TESTS_REQUIRE_ALL:-}" = 1 ]; then
                echo "Bail out! $* (IMGCACHE_TESTS_REQUIRE_ALL=1: a failure, not a skip)"
                exit 1
        fi
        echo "1..0 # SKIP $*"
        exit 0
}

if [ -z "${IMGCACHECTL_POLKIT_NS:-}" ]; then
        [ "$(id -u)" = 0 ] || skip_all "needs root for namespaces, mounts and runuser"
        for tool in unshare runuser dbus-daemon gdbus mount; do
                command -v "$tool" >/dev/null || skip_all "$tool is not installed"
        done
        [ -x /usr/lib/polkit-1/polkitd ] || skip_all "polkitd is not installed"
        id nobody >/dev/null 2>&1 || skip_all "there is no user nobody"
        runuser -u nobody -- test -x "$CTL" || skip_all "nobody cannot run $CTL"
        unshare --mount --propagation private --pid --fork --mount-proc true 2>/dev/null ||
                skip_all "cannot make a private mount and PID namespace here"
        export IMGCACHECTL_POLKIT_NS=1
        exec unshare --mount --propagation private --pid --fork --mount-proc --kill-child "$0" "$@"
fi

# PID 1 of our own PID namespace from here: every process started below dies with us.
dir=$(mktemp -d /tmp/imgcachectl-polkit-XXXXXX)
mount -t tmpfs -o mode=0755 tmpfs "$dir"
mount -t tmpfs -o mode=0755 tmpfs /run/dbus
started=()
teardown() {
        local pid
        for pid in "${started[@]}"; do
                kill "$pid" 2>/dev/null || true
        done
        for pid in "${started[@]}"; do
                wait "$pid" 2>/dev/null || true
        done
        umount -l "$dir" 2>/dev/null || true
        rmdir "$dir" 2>/dev/null || true
}
trap teardown EXIT

bail() {
        echo "Bail out! $*"
        sed 's/^/# imgcached: /' "$dir/imgcached.log" 2>/dev/null || true
        exit 1
}

# Bind-mounts a copy of system directory $1 with file $2 added over $1.
add_to_system_dir() {
        local target=$1 file=$2 copy
        copy=$dir/$(echo "$target" | tr / -)
        if [ -d "$target" ]; then cp -a "$target" "$copy"; else mkdir -p "$copy" "$target"; fi
        cp "$file" "$copy/"
        mount --bind "$copy" "$target"
}
add_to_system_dir /usr/share/polkit-1/actions "$SRC/polkit/org.imgcache.policy"
add_to_system_dir /usr/share/dbus-1/system.d "$SRC/dbus/org.imgcache.Manager.conf"

export DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket
unset DBUS_SESSION_BUS_ADDRESS NOTIFY_SOCKET JOURNAL_STREAM
export IMGCACHECTL_PAGER=

mkfifo "$dir/ready"
dbus-daemon --system --nofork --nopidfile --nosyslog --print-address=3 3>"$dir/ready" &
started+=($!)
read -r -t "$WAIT" _ <"$dir/ready" || bail "dbus-daemon did not start"

/usr/lib/polkit-1/polkitd --no-debug >"$dir/polkitd.log" 2>&1 &
started+=($!)
gdbus wait --system --timeout "$WAIT" org.freedesktop.PolicyKit1 || bail "polkitd did not appear"

mkdir "$dir/cache"
head -c 4096 /dev/zero >"$dir/cache/img1"
head -c 8192 /dev/zero >"$dir/cache/img2"
printf '[Daemon]\nExitOnIdleSec=infinity\n' >"$dir/imgcached.conf"
"$DAEMON" --cache-dir="$dir/cache" --config="$dir/imgcached.conf" 2>"$dir/imgcached.log" &
started+=($!)
gdbus wait --system --timeout "$WAIT" org.imgcache.Manager || bail "imgcached did not take its name"

n=0
echo "1..7"

# check NAME EXPECTED_STATUS EXPECTED_STDERR USER ARGS...: runs imgcachectl (stdin /dev/null, never a
# terminal) and compares exit status and stderr exactly.
check() {
        local name=$1 want_status=$2 want_err=$3 as=$4 status=0
        shift 4
        n=$((n + 1))
        if [ "$as" = root ]; then
                timeout "$WAIT" "$CTL" "$@" </dev/null >"$dir/out" 2>"$dir/err" || status=$?
        else
                timeout "$WAIT" runuser -u "$as" -- "$CTL" "$@" </dev/null >"$dir/out" 2>"$dir/err" || status=$?
        fi
        if [ "$status" = "$want_status" ] && [ "$(cat "$dir/err")" = "$want_err" ]; then
                echo "ok $n - $name"
        else
                echo "not ok $n - $name"
                echo "#   status $status, expected $want_status"
                sed 's/^/#   stderr: /' "$dir/err"
                echo "#   expected: $want_err"
                sed 's/^/#   stdout: /' "$dir/out"
        fi
}

# The daemon's own words for the refusals, to check that imgcachectl passes them on verbatim.
denied_msg() {
        local flag=$1 method=$2
        shift 2
        runuser -u nobody -- gdbus call --system $flag --dest org.imgcache.Manager --object-path /org/imgcache/Manager \
                --method "org.imgcache.Manager.$method" "$@" 2>&1 >/dev/null | sed 's/^.*GDBus\.Error:[^:]*: //' || true
}
msg_denied=$(denied_msg --interactive DeleteImage "'img1'")
msg_interactive=$(denied_msg "" Prune)
msg_queue=$(denied_msg --interactive QueueImage "'img9'" "''")

check "unprivileged reads need no authorization" 0 "" nobody --no-legend list
check "a refused delete says how to get access" 1 \
        "imgcachectl: Failed to delete image img1: ${msg_denied%.}. Run as root, or ask the administrator to allow the polkit action org.imgcache.delete (see polkit(8))." \
        nobody delete img1
check "--no-ask-password: authentication required, and how to get it" 1 \
        "imgcachectl: Failed to prune the cache: ${msg_interactive%.}. Authentication is required: retry without --no-ask-password, run as root, or configure polkit to allow the action org.imgcache.maintain." \
        nobody --no-ask-password prune
check "a refused queue names org.imgcache.queue" 1 \
        "imgcachectl: Failed to queue image img9: ${msg_queue%.}. Run as root, or ask the administrator to allow the polkit action org.imgcache.queue (see polkit(8))." \
        nobody queue img9
check "the refused delete changed nothing" 0 "" nobody show img1
check "root is allowed without polkit" 0 "" root delete img1
check "root's delete happened" 0 "" root --no-legend --sort=id list
grep -q '^img1 ' "$dir/out" && bail "img1 is still listed after root deleted it"
exit 0
