#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Authorization of imgcached on a private *system* bus with the real polkitd (SYSTEM-TESTS.md §3):
# a private mount and PID namespace, a tmpfs over /run/dbus, the project's polkit policy and bus policy
# bind-mounted over temporary copies of the system directories, the distribution's own system.conf.
# The daemon runs as root (the bus policy lets root own the name); callers are root and nobody.
#
# Usage: test-polkit.sh IMGCACHED SOURCE_ROOT. Exit 77 (skip) where the namespace cannot be made; 1
# instead with IMGCACHE_TESTS_REQUIRE_ALL=1 (CI).
set -euo pipefail

IMGCACHED=$1
SRC=$2
NAME=org.imgcache.Manager
OBJ=/org/imgcache/Manager
TIMEOUT=10

# shellcheck source=../lib/skip.sh
. "$(dirname "$(readlink -f "$0")")/../lib/skip.sh"

if [ -z "${IMGCACHE_POLKIT_TEST_NS:-}" ]; then
        [ "$(id -u)" = 0 ] || skip "needs root (unshare, mounts, runuser)"
        for tool in unshare runuser dbus-daemon gdbus mount; do
                command -v "$tool" >/dev/null || skip "$tool is not installed"
        done
        [ -x /usr/lib/polkit-1/polkitd ] || skip "/usr/lib/polkit-1/polkitd is not installed"
        id nobody >/dev/null 2>&1 || skip "no user nobody"
        unshare --mount --propagation private --pid --fork --mount-proc true 2>/dev/null ||
                skip "unshare --mount --pid is not possible here"
        export IMGCACHE_POLKIT_TEST_NS=1
        exec unshare --mount --propagation private --pid --fork --mount-proc --kill-child "$0" "$@"
fi

# From here on we are PID 1 of a private PID namespace: whatever we leave behind dies with us.
work=$(mktemp -d /tmp/imgcache-polkit-XXXXXX)
mount -t tmpfs -o mode=0755 tmpfs "$work"
mount -t tmpfs -o mode=0755 tmpfs /run/dbus
pids=()
cleanup() {
        for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
                kill "${pids[i]}" 2>/dev/null || true
        done
        wait 2>/dev/null || true
        umount -l "$work" 2>/dev/null || true
        rmdir "$work" 2>/dev/null || true
}
trap cleanup EXIT

fail() {
        echo "FAIL: $*" >&2
        echo "--- imgcached log:" >&2
        cat "$work/daemon.log" >&2 || true
        exit 1
}

# A copy of a system directory plus our file, bind-mounted over the original (owner and mode kept).
overlay_dir() {
        local dir=$1 file=$2 copy
        copy="$work/overlay$(echo "$dir" | tr / _)"
        if [ -d "$dir" ]; then
                cp -a "$dir" "$copy"
        else
                mkdir -p "$copy" "$dir"
        fi
        cp "$file" "$copy/"
        mount --bind "$copy" "$dir"
}
overlay_dir /usr/share/polkit-1/actions "$SRC/polkit/org.imgcache.policy"
overlay_dir /usr/share/dbus-1/system.d "$SRC/dbus/org.imgcache.Manager.conf"
# A site rule refusing nobody one image under org.imgcache.open ("yes" by default).
cat >"$work/90-imgcache-test.rules" <<'RULES'
polkit.addRule(function(action, subject) {
        if (action.id == "org.imgcache.open" && subject.user == "nobody" &&
            action.lookup("imgcache.image-id") == "img-refused")
                return polkit.Result.NO;
});
RULES
overlay_dir /etc/polkit-1/rules.d "$work/90-imgcache-test.rules"

export DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket
unset DBUS_SESSION_BUS_ADDRESS NOTIFY_SOCKET

mkfifo "$work/address"
dbus-daemon --system --nofork --nopidfile --nosyslog --print-address=3 3>"$work/address" &
pids+=($!)
read -r -t "$TIMEOUT" address <"$work/address" || fail "dbus-daemon did not start"
echo "# system bus at $address"

/usr/lib/polkit-1/polkitd --no-debug >"$work/polkitd.log" 2>&1 &
pids+=($!)
gdbus wait --system --timeout "$TIMEOUT" org.freedesktop.PolicyKit1 || fail "polkitd did not appear on the bus"

mkdir "$work/cache"
printf 'one\n' >"$work/cache/img1"
printf 'two\n' >"$work/cache/img2"
printf '[Daemon]\nExitOnIdleSec=infinity\n' >"$work/imgcached.conf"
"$IMGCACHED" --cache-dir="$work/cache" --config="$work/imgcached.conf" 2>"$work/daemon.log" &
pids+=($!)
gdbus wait --system --timeout "$TIMEOUT" "$NAME" || fail "imgcached did not take $NAME"

# call AS METHOD [ARGS...]: prints stdout, and stderr to $work/err; returns gdbus' status.
call() {
        local as=$1 method=$2
        shift 2
        local cmd=(gdbus call --system --dest "$NAME" --object-path "$OBJ" --method "$NAME.$method" "$@")
        if [ "$as" = root ]; then
                "${cmd[@]}" 2>"$work/err"
        else
                runuser -u "$as" -- "${cmd[@]}" 2>"$work/err"
        fi
}

expect_ok() {
        local out
        out=$(call "$@") || fail "$* failed: $(cat "$work/err")"
        echo "ok - $* -> $out" >&2
        printf '%s' "$out"
}

expect_error() {
        local error=$1
        shift
        if out=$(call "$@"); then
                fail "$* succeeded ($out), expected $error"
        fi
        grep -q "GDBus.Error:$error:" "$work/err" || fail "$*: expected $error, got: $(cat "$work/err")"
        echo "ok - $* -> $error: $(sed 's/.*GDBus.Error:[^:]*: //' "$work/err")"
}

# Unprivileged reads need no authorization.
out=$(expect_ok nobody ListImages)
grep -q "'img1'" <<<"$out" || fail "ListImages as nobody does not list img1: $out"
out=$(expect_ok nobody GetImage "'img2'")
grep -q "'img2', uint64 4" <<<"$out" || fail "GetImage as nobody: $out"

# org.imgcache.open is "yes": polkit answers asynchronously and the call is dispatched again.
expect_ok nobody OpenImage "'img1'" >/dev/null

# A refused OpenImage is no miss (nor does it say whether the image is cached); an authorized one is.
misses() {
        gdbus call --system --dest "$NAME" --object-path "$OBJ" --method org.freedesktop.DBus.Properties.Get \
                "$NAME" Misses 2>"$work/err" || fail "cannot read Misses: $(cat "$work/err")"
}
misses_before=$(misses)
call nobody OpenImage "'img-refused'" >/dev/null && fail "OpenImage of img-refused as nobody succeeded"
refusal=$(cat "$work/err")
[ "$(misses)" = "$misses_before" ] || fail "a refused OpenImage counted a miss: $misses_before, then $(misses)"
grep -q "GDBus.Error:org.freedesktop.DBus.Error.AccessDenied:" <<<"$refusal" ||
        fail "OpenImage of img-refused as nobody: expected AccessDenied, got: $refusal"
echo "ok - nobody OpenImage 'img-refused' -> AccessDenied, Misses unchanged"
expect_error org.imgcache.Error.NoSuchImage root OpenImage "'img-refused'"
[ "$(misses)" != "$misses_before" ] || fail "an authorized OpenImage of an uncached image counted no miss"

# auth_admin actions for an unprivileged caller without an agent: denied. Without the
# allow-interactive-authorization flag polkit asks for a challenge, which the daemon reports as
# InteractiveAuthorizationRequired; with it (gdbus -i) there is no agent to ask, so AccessDenied.
for as_flag in "" "--interactive"; do
        denied=org.freedesktop.DBus.Error.AccessDenied
        [ -z "$as_flag" ] && denied=org.freedesktop.DBus.Error.InteractiveAuthorizationRequired
        expect_error "$denied" nobody DeleteImage $as_flag "'img1'"
        expect_error "$denied" nobody DeleteImageWithFlags $as_flag "'img1'" "uint64 1"
        expect_error "$denied" nobody Prune $as_flag
        expect_error "$denied" nobody QueueImage $as_flag "'img9'" "''"
done
expect_error org.freedesktop.DBus.Error.AccessDenied nobody DeleteAllImages --interactive
expect_error org.freedesktop.DBus.Error.AccessDenied nobody Clean --interactive "uint64 0"
expect_error org.freedesktop.DBus.Error.AccessDenied nobody DequeueAll --interactive

# Nothing changed by the denied calls.
expect_ok root GetImage "'img1'" >/dev/null
out=$(expect_ok root ListQueued)
grep -q img9 <<<"$out" && fail "img9 was queued by a denied call"

# Root passes without polkit.
out=$(expect_ok root QueueImage "'img9'" "''")
[ "$out" = "(true,)" ] || fail "QueueImage as root: $out"
out=$(expect_ok root Prune)
grep -q "uint32 0" <<<"$out" || fail "Prune as root: $out"
expect_ok root DeleteImage "'img1'" >/dev/null
expect_error org.imgcache.Error.NoSuchImage root GetImage "'img1'"

echo "# all polkit checks passed"
