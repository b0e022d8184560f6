#!/bin/bash
# SPDX-License-Identifier: MIT
#
# The Cockpit page (cockpit/) in a real browser against imgcached on a private system bus with the real
# polkitd (SYSTEM-TESTS.md §3 and §4): private mount, PID and network namespaces (only lo, so every socket
# is on 127.0.0.0/8 and every process dies with us), a tmpfs over /run/dbus, the project's bus and polkit
# policies bind-mounted over temporary copies of the system directories. imgcached is not started here:
# the bus activates it (as root) when the page first calls it, as it would for any client. cockpit-ws
# serves the page to chromium (driven by puppeteer-core, browser-test.js) with a bridge running as nobody,
# whom a site rule authorizes for everything but deleting protected.img.
#
# Usage: test-cockpit.sh IMGCACHED UPSTREAM_SERVER SOURCE_ROOT OUTDIR. OUTDIR (in the build directory) gets
# node_modules (npm ci of tests/cockpit/package-lock.json, pinned puppeteer-core; it downloads no browser),
# the screenshots and the logs. Exit 77 (skip) when a tool is missing; 1 instead with
# IMGCACHE_TESTS_REQUIRE_ALL=1 (CI).
set -euo pipefail

IMGCACHED=$1
UPSTREAM_SERVER=$2
SRC=$3
OUT=$4
TIMEOUT=15
PORT=9090 # in our own network namespace
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
COCKPIT_WS=/usr/lib/cockpit/cockpit-ws

# shellcheck source=../lib/skip.sh
. "$(dirname "$(readlink -f "$0")")/../lib/skip.sh"

if [ -z "${IMGCACHE_COCKPIT_TEST_NS:-}" ]; then
        [ "$(id -u)" = 0 ] || skip "needs root (unshare, mounts, setpriv)"
        for tool in unshare setpriv dbus-daemon gdbus mount ip node npm; do
                command -v "$tool" >/dev/null || skip "$tool is not installed"
        done
        [ -x /usr/lib/polkit-1/polkitd ] || skip "/usr/lib/polkit-1/polkitd is not installed (polkitd)"
        [ -x "$CHROMIUM" ] || skip "$CHROMIUM is not installed (chromium)"
        [ -x "$COCKPIT_WS" ] || skip "$COCKPIT_WS is not installed (cockpit-ws)"
        command -v cockpit-bridge >/dev/null || skip "cockpit-bridge is not installed"
        id nobody >/dev/null 2>&1 || skip "no user nobody"
        unshare --mount --propagation private --pid --net --fork --mount-proc true 2>/dev/null ||
                skip "unshare --mount --pid --net is not possible here"

        # puppeteer-core, pinned by the lock file, into the build directory; again only when the lock changed.
        mkdir -p "$OUT"
        if ! cmp -s "$SRC/tests/cockpit/package-lock.json" "$OUT/package-lock.json" ||
           [ ! -d "$OUT/node_modules/puppeteer-core" ]; then
                cp "$SRC/tests/cockpit/package.json" "$SRC/tests/cockpit/package-lock.json" "$OUT/"
                echo "# npm ci in $OUT"
                (cd "$OUT" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund \
                        >"$OUT/npm.log" 2>&1) || {
                        rm -f "$OUT/package-lock.json"
                        skip "npm ci of puppeteer-core failed (no registry?): $(tail -3 "$OUT/npm.log")"
                }
        fi
        export IMGCACHE_COCKPIT_TEST_NS=1
        exec unshare --mount --propagation private --pid --net --fork --mount-proc --kill-child "$0" "$@"
fi

# From here on we are PID 1 of a private PID namespace: whatever we leave behind dies with us.
ip link set lo up
work=$(mktemp -d /tmp/imgcache-cockpit-XXXXXX)
mount -t tmpfs -o mode=0755 tmpfs "$work"
mount -t tmpfs -o mode=0755 tmpfs /run/dbus
mkdir -p "$OUT/screenshots"
rm -f "$OUT"/screenshots/*.png "$OUT"/*.log.txt
pids=()
cleanup() {
        local rc=$?
        # imgcached was started by the bus: its pid is known once the page activated it.
        [ -s "$work/imgcached.pid" ] && pids+=("$(cat "$work/imgcached.pid")")
        for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
                kill "${pids[i]}" 2>/dev/null || true
        done
        wait 2>/dev/null || true
        for log in dbus cockpit-ws upstream; do
                cp "$work/$log.log" "$OUT/$log.log.txt" 2>/dev/null || true
        done
        umount -l "$work" 2>/dev/null || true
        rmdir "$work" 2>/dev/null || true
        exit "$rc"
}
trap cleanup EXIT

fail() {
        echo "FAIL: $*" >&2
        exit 1
}

# A copy of a system directory plus our file, bind-mounted over the original (owner and mode kept).
overlay_dir() {
        local dir=$1 file=$2 copy
        copy="$work/overlay$(echo "$dir" | tr / _)"
        if [ ! -d "$copy" ]; then
                if [ -d "$dir" ]; then
                        cp -a "$dir" "$copy"
                else
                        mkdir -p "$copy" "$dir"
                fi
                mount --bind "$copy" "$dir"
        fi
        cp "$file" "$copy/"
}

# The cache: three images the daemon adopts at start, their last access (their mtime) in a known order so
# that Prune removes alpha.img, the least recently used, and nothing else.
mkdir "$work/cache" "$work/upstream"
head -c $((1024 * 1024)) /dev/urandom >"$work/cache/alpha.img"
head -c $((512 * 1024)) /dev/urandom >"$work/cache/beta.img"
head -c $((256 * 1024)) /dev/urandom >"$work/cache/protected.img"
touch -d 2024-01-01 "$work/cache/alpha.img"
touch -d 2024-02-01 "$work/cache/beta.img"
touch -d 2024-03-01 "$work/cache/protected.img"
head -c $((4 * 1024 * 1024)) /dev/urandom >"$work/upstream/big.img"

# The upstream stalls every response after 1 MiB until SIGUSR1: the page shows a transfer in flight. It
# writes its port to PORT_FILE.tmp, a fifo here, and renames it: reading the fifo waits for the server.
mkfifo "$work/upstream.port.tmp"
"$UPSTREAM_SERVER" --dir="$work/upstream" --port=0 --port-file="$work/upstream.port" \
        --stall-after=$((1024 * 1024)) 2>"$work/upstream.log" &
pids+=($!)

export DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket
unset DBUS_SESSION_BUS_ADDRESS NOTIFY_SOCKET

# Activation as root of the daemon under test; the first config is broken, so that the page first meets a
# daemon that fails to start. browser-test.js puts the good one in place and retries.
cat >"$work/org.imgcache.Manager.service" <<EOF
[D-BUS Service]
Name=org.imgcache.Manager
Exec=$IMGCACHED --cache-dir=$work/cache --config=$work/imgcached.conf
User=root
EOF
overlay_dir /usr/share/polkit-1/actions "$SRC/polkit/org.imgcache.policy"
overlay_dir /usr/share/dbus-1/system.d "$SRC/dbus/org.imgcache.Manager.conf"
overlay_dir /usr/share/dbus-1/system-services "$work/org.imgcache.Manager.service"
# The admin (the bridge runs as nobody) may do everything but delete protected.img.
cat >"$work/90-imgcache-cockpit-test.rules" <<'RULES'
polkit.addRule(function(action, subject) {
        if (subject.user != "nobody" || action.id.indexOf("org.imgcache.") != 0)
                return polkit.Result.NOT_HANDLED;
        if (action.id == "org.imgcache.delete" && action.lookup("imgcache.image-id") == "protected.img")
                return polkit.Result.NO;
        return polkit.Result.YES;
});
RULES
overlay_dir /etc/polkit-1/rules.d "$work/90-imgcache-cockpit-test.rules"

mkfifo "$work/address"
dbus-daemon --system --nofork --nopidfile --nosyslog --print-address=3 3>"$work/address" 2>"$work/dbus.log" &
pids+=($!)
dbus_pid=$!
read -r -t "$TIMEOUT" address <"$work/address" || fail "dbus-daemon did not start"
echo "# system bus at $address"

/usr/lib/polkit-1/polkitd --no-debug >"$work/polkitd.log" 2>&1 &
pids+=($!)
gdbus wait --system --timeout "$TIMEOUT" org.freedesktop.PolicyKit1 || fail "polkitd did not appear on the bus"

read -r -t "$TIMEOUT" upstream_port <"$work/upstream.port.tmp" ||
        fail "upstream-server did not start: $(cat "$work/upstream.log")"
printf '[Cache]\nMaxSize=not-a-size\n' >"$work/imgcached.conf"
printf '[Cache]\nMaxSize=5M\nEnforceMaxSize=no\nPrefetchOnQueue=no\n[Upstream]\nURL=http://127.0.0.1:%s/{id}\n[HTTP]\nListen=127.0.0.1:9393\n[Daemon]\nExitOnIdleSec=infinity\n' \
        "$upstream_port" >"$work/imgcached.conf.good"

# cockpit-ws with the package as a user package of nobody (the installed files: cockpit/meson.build
# installs every other file of the directory as it is). cockpit-ws listens before it starts the bridge
# (--local-session), so the bridge's start, announced through a fifo by a wrapper, means it is listening.
home=$work/home
mkdir -p "$home/share/cockpit/imgcache"
find "$SRC/cockpit" -maxdepth 1 -type f ! -name meson.build -exec cp {} "$home/share/cockpit/imgcache/" \;
mkfifo "$work/bridge-started"
cat >"$work/bridge" <<EOF
#!/bin/sh
echo started >$work/bridge-started
exec cockpit-bridge "\$@"
EOF
chmod 755 "$work/bridge"
chown -R nobody:nogroup "$home" "$work/bridge-started"
setpriv --reuid=nobody --regid=nogroup --clear-groups --reset-env \
        env HOME="$home" XDG_DATA_HOME="$home/share" XDG_CONFIG_HOME="$home/config" \
        XDG_RUNTIME_DIR="$home" DBUS_SYSTEM_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" \
        DBUS_SESSION_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" \
        "$COCKPIT_WS" --no-tls --local-session="$work/bridge" --port "$PORT" --address 127.0.0.1 \
        >"$work/cockpit-ws.log" 2>&1 &
pids+=($!)
read -r -t "$TIMEOUT" _ <"$work/bridge-started" || fail "cockpit-ws did not start: $(cat "$work/cockpit-ws.log")"

status=0
TEST_URL="http://127.0.0.1:$PORT/cockpit/@localhost/imgcache/index.html" \
TEST_CACHE_DIR="$work/cache" \
TEST_CONFIG="$work/imgcached.conf" \
TEST_CONFIG_GOOD="$work/imgcached.conf.good" \
TEST_DAEMON_PIDFILE="$work/imgcached.pid" \
TEST_UPSTREAM_PID="${pids[0]}" \
TEST_DBUS_PID="$dbus_pid" \
TEST_CHROMIUM="$CHROMIUM" \
TEST_SCREENSHOTS="$OUT/screenshots" \
TEST_USER_DATA_DIR="$work/chromium" \
NODE_PATH="$OUT/node_modules" \
        timeout 150 node "$SRC/tests/cockpit/browser-test.js" || status=$?
if [ "$status" != 0 ]; then
        echo "--- bus and imgcached log:" >&2
        tail -n 40 "$work/dbus.log" >&2 || true
fi
echo "# screenshots in $OUT/screenshots"
exit "$status"
