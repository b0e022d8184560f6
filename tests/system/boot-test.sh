#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Boots an installed imgcache under a real systemd and runs a test script inside; returns its status.
#
#   boot-test.sh [OPTIONS] (-P BUILDDIR | -B BUILDDIR | -D DESTDIR) TEST_SCRIPT [ARGS...]
#
#   -P BUILDDIR   install the Debian packages tools/build-deb made for BUILDDIR (BUILDDIR/deb/*.deb, which
#                 must be of the tree as it is) with apt-get, before boot, as an image build would; the
#                 guest finds them in /boot-test/debs and apt-get's output in /boot-test/install.log
#   -B BUILDDIR   "meson install --destdir" BUILDDIR into the guest (the build must use prefix /usr)
#   -D DESTDIR    copy an already installed tree into the guest
#   -e UNIT       "systemctl enable" UNIT in the guest before boot (repeatable)
#   -p UNIT       "systemctl preset" UNIT in the guest before boot (repeatable)
#   -b HOST[:GUEST]  bind HOST read-only into the guest (at GUEST, default the same path; repeatable)
#   -t SECONDS    time limit of the whole run (default 300); the guest stops the test a little earlier
#                 so its journal is still collected
#   -o OUTDIR     keep test.log, console.log, journal.txt and rc there
#   -v            stream the guest's console to stderr
#
# Exit status: the test script's, 124 when it ran out of time, 77 (skip) when this machine cannot run
# the test (not root, tools missing, a build not for /usr: set IMGCACHE_SYSTEM_TEST=required, or
# IMGCACHE_TESTS_REQUIRE_ALL=1 as CI does for every test, to make those failures instead; a sanitizer
# build is always skipped), anything else for a harness failure
# (with a message).
#
# How (see ../../../shared/SYSTEM-TESTS.md for the facts this relies on): the root filesystem comes
# from make-rootfs.sh (cached, never modified). In private mount and PID namespaces, a tmpfs holds an
# overlayfs of it with the installed tree copied on top and a payload unit, boot-test.service, that
# waits for the boot to finish, runs TEST_SCRIPT, records its status and makes the guest's manager exit
# with it. systemd-nspawn boots that (no host systemd needed: --register=no --keep-unit, its own cgroup
# per run, loopback-only network). Everything this run creates is named by one run id: the tmpfs under
# the cache directory's run/ and a cgroup imgcache-boot-test/<id> in each hierarchy. Mounts and
# processes die with the namespaces even on SIGKILL; on SIGTERM/SIGINT (meson's timeout) the guest is
# killed and all of it removed at once. What a SIGKILLed run cannot remove (its empty directory and
# empty cgroups) is removed by its reaper, a process outside the run's process group that waits for the
# run's lock; failing that, by the next run.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_dir=${IMGCACHE_SYSTEM_TEST_CACHE:-/var/cache/imgcache-system-test}
cgroup_parent=imgcache-boot-test

# The cgroup hierarchies nspawn and the guest's systemd use: cgroup2 alone, or (hybrid, legacy) the
# name=systemd hierarchy plus cgroup2 at unified/ if present.
cgroup_roots=()
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        cgroup_roots=(/sys/fs/cgroup)
else
        for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
                [ -f "$h/cgroup.procs" ] && cgroup_roots+=("$h")
        done
fi

# Removes the cgroup subtree of run $1 in every hierarchy (deepest first; only empty ones can go).
remove_cgroups() {
        local root
        for root in "${cgroup_roots[@]}"; do
                [ -d "$root/$cgroup_parent/$1" ] || continue
                find "$root/$cgroup_parent/$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
                rmdir "$root/$cgroup_parent" 2>/dev/null || true # fails while other runs use it
        done
}

# Waits (at most 2 s) until no process is left in the cgroups of run $1.
wait_cgroups_empty() {
        local root busy
        for _ in $(seq 100); do
                busy=0
                for root in "${cgroup_roots[@]}"; do
                        [ -f "$root/$cgroup_parent/$1/cgroup.events" ] &&
                                grep -q '^populated 1' "$root/$cgroup_parent/$1/cgroup.events" && busy=1
                done
                [ $busy = 0 ] && return 0
                sleep 0.02
        done
        return 1
}

# --reap RUN_ID: started in a session of its own before the run, it waits for the run's lock, i.e. for
# every process of the run to be gone however it ended, and removes what the run could not.
if [ "${1:-}" = --reap ]; then
        wait_cgroups_empty "$2" || true
        remove_cgroups "$2"
        rmdir "$cache_dir/run/$2" 2>/dev/null || true
        rm -f "$cache_dir/run/$2.lock"
        exit 0
fi

orig_args=("$@")
builddir='' destdir='' debbuild='' outdir='' verbose=0 time_limit=300
enable_units=() preset_units=() binds=()

usage() { sed -n '4,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
log() { echo "boot-test: $*" >&2; }
skip() {
        if [ "${IMGCACHE_SYSTEM_TEST:-}" = required ] || [ "${IMGCACHE_TESTS_REQUIRE_ALL:-}" = 1 ]; then
                log "FAIL (IMGCACHE_SYSTEM_TEST=required or IMGCACHE_TESTS_REQUIRE_ALL=1): $*"
                exit 1
        fi
        log "SKIP: $*"
        echo "SKIP: $*"
        exit 77
}

while getopts "P:B:D:e:p:b:t:o:vh" opt; do
        case $opt in
        P) debbuild=$(cd "$OPTARG" && pwd) ;;
        B) builddir=$(cd "$OPTARG" && pwd) ;;
        D) destdir=$(cd "$OPTARG" && pwd) ;;
        e) enable_units+=("$OPTARG") ;;
        p) preset_units+=("$OPTARG") ;;
        b) binds+=("$OPTARG") ;;
        t) time_limit=$OPTARG ;;
        o) outdir=$OPTARG ;;
        v) verbose=1 ;;
        *) usage ;;
        esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
n_trees=0
for t in "$debbuild" "$builddir" "$destdir"; do [ -z "$t" ] || n_trees=$((n_trees + 1)); done
if [ $n_trees != 1 ]; then
        log "exactly one of -P BUILDDIR, -B BUILDDIR and -D DESTDIR is needed"
        usage
fi
test_script=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift
[[ $time_limit =~ ^[0-9]+$ ]] && [ "$time_limit" -ge 30 ] || { log "-t needs at least 30 seconds"; exit 2; }
[ -n "$outdir" ] && { mkdir -p "$outdir"; outdir=$(cd "$outdir" && pwd); }

# ---------------------------------------------------------------------------------------------------
# Outside the namespaces: can this machine run the test at all, and is the root filesystem there?
if [ -z "${IMGCACHE_BOOT_TEST_INNER:-}" ]; then
        [ "$(id -u)" -eq 0 ] || skip "the system test boots a container and must run as root"
        for tool in systemd-nspawn mmdebstrap unshare flock timeout; do
                command -v "$tool" >/dev/null ||
                        skip "$tool is missing (host packages: systemd-container mmdebstrap util-linux coreutils)"
        done
        [ -d /sys/fs/cgroup/unified ] || [ -f /sys/fs/cgroup/cgroup.controllers ] ||
                skip "no cgroup2 hierarchy on this machine"

        if [ -n "$builddir$debbuild" ]; then
                # The guest's dbus-daemon and polkitd read only /usr/share and /etc: a /usr/local build
                # would install fine and then be invisible to them (the package is configured by
                # debian/rules, whatever BUILDDIR's prefix).
                opts=$(meson introspect --buildoptions "$builddir$debbuild")
                opt() { python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]==sys.argv[1]))' "$1" <<<"$opts"; }
                prefix=$(opt prefix) sysconfdir=$(opt sysconfdir) sanitize=$(opt b_sanitize)
                [ -n "$debbuild" ] || { [ "$prefix" = /usr ] && [ "$sysconfdir" = /etc ]; } ||
                        skip "the build uses prefix=$prefix sysconfdir=$sysconfdir; the system test installs into a" \
                             "Debian guest, whose dbus-daemon and polkitd look only in /usr/share and /etc:" \
                             "configure with --prefix=/usr (sysconfdir then defaults to /etc)"
                # Not a failure even when required: by design, the suite runs on the plain build.
                if [ "$sanitize" != none ]; then
                        echo "SKIP: sanitizer build (b_sanitize=$sanitize): the guest has no sanitizer runtimes, and" \
                             "LeakSanitizer needs ptrace(), which the daemon's SystemCallFilter= denies; the system" \
                             "suite runs on the plain build"
                        exit 77
                fi
        fi

        # The packages: built from the tree as it is, and their dependencies (those apt-get would fetch,
        # less the packages themselves) carried by the root filesystem, since the guest has no network.
        rootfs_args=()
        if [ -n "$debbuild" ]; then
                why=$("$here/../../tools/build-deb" --check "$debbuild") || skip "$why"
                debs=()
                for deb in "$debbuild"/deb/*.deb; do
                        [[ $deb == *-dbgsym_* ]] || debs+=("$deb")
                done
                names=$(for deb in "${debs[@]}"; do dpkg-deb -f "$deb" Package; done | paste -sd'|' -)
                for deb in "${debs[@]}"; do
                        for field in Pre-Depends Depends Recommends; do
                                deps=$(dpkg-deb -f "$deb" "$field" | tr ',' '\n' |
                                       { grep -Ev "(^|\|) *($names)( |\(|\||\$)" || true; } | paste -sd, -)
                                [ -z "$deps" ] || rootfs_args+=(-s "$deps")
                        done
                done
                export IMGCACHE_BOOT_TEST_DEBS
                IMGCACHE_BOOT_TEST_DEBS=$(printf '%s\n' "${debs[@]}")
        fi

        mkdir -p "$cache_dir/run"
        rootfs=$("$here/make-rootfs.sh" -c "$cache_dir" "${rootfs_args[@]}")

        # Leftovers of runs whose reaper did not finish either: their lock is free.
        for lock in "$cache_dir"/run/bt-*.lock; do
                [ -e "$lock" ] || continue
                exec 7<>"$lock"
                if flock -n 7; then
                        old=$(basename "$lock" .lock)
                        log "removing leftovers of $old"
                        remove_cgroups "$old"
                        rmdir "$cache_dir/run/$old" 2>/dev/null || true
                        rm -f "$lock"
                fi
                exec 7>&-
        done

        # This run: everything it creates is named by its id, and its lock is held by every process
        # of it (the descriptor is inherited). The reaper, in its own session so that a kill of our
        # process group spares it, gets the lock when the last of them is gone.
        run_id=bt-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
        exec 8<>"$cache_dir/run/$run_id.lock"
        flock 8
        setsid -f flock "$cache_dir/run/$run_id.lock" "$here/$(basename "$0")" --reap "$run_id" 8>&- </dev/null >/dev/null 2>&1
        export IMGCACHE_BOOT_TEST_RUN=$run_id

        export IMGCACHE_BOOT_TEST_INNER=$rootfs
        exec unshare --mount --propagation private --pid --fork --mount-proc --kill-child -- \
                "$0" "${orig_args[@]}"
fi

# ---------------------------------------------------------------------------------------------------
# Inside: we are PID 1 of a private PID namespace with private mounts.
rootfs=$IMGCACHE_BOOT_TEST_INNER run_id=$IMGCACHE_BOOT_TEST_RUN
mapfile -t debs <<<"${IMGCACHE_BOOT_TEST_DEBS:-}"
unset IMGCACHE_BOOT_TEST_INNER IMGCACHE_BOOT_TEST_RUN IMGCACHE_BOOT_TEST_DEBS
work=$cache_dir/run/$run_id
mkdir "$work"

# The rootfs must not be removed by a concurrent make-rootfs.sh while it is our lower layer.
{ exec 9<"$rootfs.lock"; } 2>/dev/null || { log "rootfs lock $rootfs.lock is missing"; exit 1; }
flock -s 9
[ -f "$rootfs/.imgcache-rootfs-complete" ] || { log "$rootfs vanished; run again"; exit 1; }

nspawn_pid=
cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
                # Our time is short (meson follows SIGTERM with SIGKILL after half a second): kill the
                # guest outright rather than wait for a clean shutdown.
                for root in "${cgroup_roots[@]}"; do
                        [ -f "$root/$cgroup_parent/$run_id/cgroup.kill" ] &&
                                echo 1 > "$root/$cgroup_parent/$run_id/cgroup.kill" 2>/dev/null || true
                done
                kill -KILL "$nspawn_pid" 2>/dev/null || true
                wait "$nspawn_pid" 2>/dev/null || true
        fi
        wait_cgroups_empty "$run_id" || true
        remove_cgroups "$run_id"
        umount -R "$work" 2>/dev/null || umount -R -l "$work" 2>/dev/null || true
        rmdir "$work" 2>/dev/null || true
        rm -f "$cache_dir/run/$run_id.lock"
        exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted, stopping the guest"; exit 130' INT
trap 'log "terminated, stopping the guest"; exit 143' TERM

mount -t tmpfs -o mode=0755 "imgcache-boot-test" "$work"
mkdir "$work"/{upper,ovl,root,bt,bt/out}
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/ovl" "$work/root"
root=$work/root

# The packages, installed with apt-get in the guest's tree before it boots, as an image build would (no
# systemd runs: the maintainer scripts create the user and enable the units, and start nothing). A
# mount namespace of its own gives apt-get a /proc that goes away with it.
if [ -n "$debbuild" ]; then
        mkdir "$work/bt/debs" "$root/var/tmp/imgcache-debs"
        cp "${debs[@]}" "$work/bt/debs/"
        cp "${debs[@]}" "$root/var/tmp/imgcache-debs/"
        guest_debs=()
        for deb in "${debs[@]}"; do guest_debs+=("/var/tmp/imgcache-debs/$(basename "$deb")"); done
        if ! unshare --mount --propagation private -- sh -c 'mount -t proc proc "$1/proc" &&
                        mount -t devpts -o newinstance,ptmxmode=0666 devpts "$1/dev/pts" && shift && exec chroot "$@"' \
                sh "$root" "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                "${guest_debs[@]}" >"$work/bt/install.log" 2>&1; then
                cat "$work/bt/install.log" >&2
                log "apt-get install of the packages failed"
                exit 1
        fi
        rm -rf "$root/var/tmp/imgcache-debs"
        log "installed $(cd "$work/bt/debs" && echo *.deb) with apt-get"
fi

# The installed tree. --keep-directory-symlink keeps the rootfs's merged-/usr symlinks (/lib -> usr/lib).
install_tree=$destdir
if [ -n "$builddir" ]; then
        install_tree=$work/destdir
        meson install -C "$builddir" --destdir "$install_tree" --no-rebuild --quiet >"$work/install.log" 2>&1 ||
                { cat "$work/install.log" >&2; log "meson install failed"; exit 1; }
fi
[ -z "$install_tree" ] ||
        tar -C "$install_tree" -cf - . | tar -C "$root" -xf - --keep-directory-symlink --no-overwrite-dir --no-same-owner

# Every ELF file installed must find its libraries in the guest (the packages' Depends see to theirs).
missing=
[ -z "$install_tree" ] || missing=$(cd "$install_tree" && find . -type f -perm -u+x -print0 | while IFS= read -r -d '' f; do
        head -c4 "$f" | grep -q $'\x7fELF' || continue
        chroot "$root" ldd "/${f#./}" 2>/dev/null | sed -n "s|^\s*\(\S*\) => not found|/${f#./}: \1|p"
done)
if [ -n "$missing" ]; then
        log "libraries missing in the guest (add their packages to make-rootfs.sh):"
        echo "$missing" >&2
        exit 1
fi

for u in "${enable_units[@]}"; do systemctl --root="$root" enable "$u" 2>&1 | sed 's/^/boot-test: /' >&2; done
for u in "${preset_units[@]}"; do systemctl --root="$root" preset "$u" 2>&1 | sed 's/^/boot-test: /' >&2; done

# The payload.
install -m 0755 "$test_script" "$work/bt/test"
{ [ $# -eq 0 ] || printf '%q ' "$@"; } > "$work/bt/args"
guest_limit=$(( time_limit - (time_limit / 10 > 5 ? time_limit / 10 : 5) ))
cat > "$work/bt/run" <<'EOF'
#!/bin/bash
# Runs the test once the boot is done; its output goes to the console, the journal and out/test.log.
state=$(systemctl is-system-running --wait 2>&1)
echo "boot finished: system $state ($(cut -d' ' -f1 /proc/uptime) s after boot)"
[ "$state" = running ] || systemctl --failed --no-legend --no-pager
cd /boot-test
eval "set -- $(cat args)"
set -o pipefail
./test "$@" 2>&1 | tee out/test.log
rc=$?
echo $rc > out/rc
exit $rc
EOF
chmod 0755 "$work/bt/run"
cat > "$root/etc/systemd/system/boot-test.service" <<EOF
[Unit]
Description=imgcache system test payload
After=multi-user.target
SuccessAction=exit
FailureAction=exit

[Service]
Type=exec
ExecStart=/boot-test/run
ExecStopPost=/bin/sh -c '[ -e /boot-test/out/rc ] || { [ "\$\$SERVICE_RESULT" = timeout ] && echo 124 || echo 1; } > /boot-test/out/rc; journalctl -b -o short-monotonic --no-pager > /boot-test/out/journal.txt'
RuntimeMaxSec=$guest_limit
StandardOutput=journal+console
StandardError=inherit
Environment=SYSTEMD_COLORS=0 SYSTEMD_PAGER=
EOF
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../boot-test.service "$root/etc/systemd/system/multi-user.target.wants/boot-test.service"

bind_args=()
for b in "${binds[@]}"; do
        bind_args+=("--bind-ro=${b%%:*}:$( [[ $b == *:* ]] && echo "${b#*:}" || echo "$b")")
done

# A cgroup of our own for nspawn and the guest in each hierarchy: without a host systemd nspawn would
# put the guest under the root cgroup, shared with any other run.
for r in "${cgroup_roots[@]}"; do mkdir -p "$r/$cgroup_parent/$run_id"; done

start=$(date +%s.%N)
(
        for r in "${cgroup_roots[@]}"; do echo 0 > "$r/$cgroup_parent/$run_id/cgroup.procs"; done
        exec timeout -k 15 "$time_limit" systemd-nspawn -q -D "$root" --boot --register=no --keep-unit \
                --private-network --machine="$run_id" --console=read-only \
                --setenv=SYSTEMD_COLORS=0 --bind="$work/bt:/boot-test" "${bind_args[@]}" </dev/null
) > >(tr -d '\r' > "$work/console.log") 2>&1 &
nspawn_pid=$!
# The test's output as it comes (the guest writes it to the bound directory), so that a run killed
# from outside still shows how far it got.
touch "$work/bt/out/test.log"
tail -s 0.1 -n +1 -F --pid=$nspawn_pid "$work/bt/out/test.log" 2>/dev/null &
tail_pids=($!)
if [ $verbose = 1 ]; then
        tail -s 0.1 -n +1 -F --pid=$nspawn_pid "$work/console.log" >&2 2>/dev/null &
        tail_pids+=($!)
fi
set +e
wait $nspawn_pid
nspawn_rc=$?
wait "${tail_pids[@]}"
set -e
nspawn_pid=
end=$(date +%s.%N)

rc=$(cat "$work/bt/out/rc" 2>/dev/null || true)
if [ -z "$rc" ]; then
        # The payload never ran to its end: the boot hung (host timeout) or nspawn failed.
        rc=$nspawn_rc
        [ "$rc" = 0 ] && rc=1
        log "the test did not complete (systemd-nspawn exited with $nspawn_rc)"
fi

sleep 0.1 # let the console pipe drain
if [ "$rc" != 0 ]; then
        log "test failed (rc=$rc); guest console (filtered):"
        grep -v -e 'Failed to create symlink /sys/fs/cgroup' -e 'tainted: cgroupsv1' \
                -e 'capabilities will not be set' -e 'Failed to set fd limit' "$work/console.log" |
                tail -n 80 >&2 || true
fi
if [ -n "$outdir" ]; then
        cp "$work/console.log" "$outdir/"
        cp "$work/bt/out/"* "$outdir/" 2>/dev/null || true
        echo "$rc" > "$outdir/rc"
fi
log "guest ran $(awk "BEGIN { printf \"%.2f\", $end - $start }") s, rc=$rc"
exit "$rc"
