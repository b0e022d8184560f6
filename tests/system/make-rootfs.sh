#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Builds the Debian root filesystem the system test boots, or finds it already built, and prints its
# path on stdout (progress goes to stderr).
#
#   make-rootfs.sh [-c CACHEDIR] [-p PKG,PKG,...] [-s DEPENDS]...
#
# -s DEPENDS is a dependency field (e.g. a package's Depends:, with alternatives and versions) that
# apt-get satisfy installs into the tree: the system test passes those of the imgcache package, which
# the guest then installs with apt-get and no network.
#
# The tree is made with mmdebstrap from this machine's own apt sources and suite, so it matches the
# host's archive snapshot (the binaries under test are built on the host and run unchanged in it).
# It lives in CACHEDIR (default $IMGCACHE_SYSTEM_TEST_CACHE, else /var/cache/imgcache-system-test),
# outside the source tree and outside any build directory, as rootfs-<hash>: the hash covers the
# package list, the apt sources, the suite, the architecture and RECIPE below, so changing any of
# them builds a new tree and a rerun with the same inputs costs nothing. The tree is built under a
# temporary name and renamed into place only when complete; builders are serialized with a lock;
# older trees and leftovers of killed builds are removed. The build runs in private mount and PID
# namespaces, so a killed build leaves no mounts or processes on the host.
#
# The tree is never modified after it is built: boot-test.sh boots an overlay of it, holding
# rootfs-<hash>.lock shared meanwhile so that no rebuild removes it under a running test.
set -euo pipefail

# Bump when the customization below changes.
RECIPE=4

# What the system test needs: systemd as PID 1, the system bus, polkit, the runtime libraries imgcached
# and imgcachectl link, and the clients the in-guest test uses (man-db: systemd-analyze verify checks
# that the units' Documentation= man pages are installed).
PACKAGES=(
        systemd systemd-sysv libpam-systemd dbus polkitd pkexec
        libsystemd0 libsqlite3-0 libcurl4 libssl3 libmicrohttpd12 libglib2.0-0 libjansson4
        libglib2.0-bin curl iproute2 procps util-linux
        man-db
)

cache_dir=${IMGCACHE_SYSTEM_TEST_CACHE:-/var/cache/imgcache-system-test}
satisfy=()
orig_args=("$@")

while getopts "c:p:s:h" opt; do
        case $opt in
        c) cache_dir=$OPTARG ;;
        p) IFS=, read -r -a extra <<<"$OPTARG"; PACKAGES+=("${extra[@]}") ;;
        s) [[ $OPTARG != *\'* ]] || { echo "make-rootfs.sh: a quote in -s" >&2; exit 2; }; satisfy+=("$OPTARG") ;;
        h) sed -n '3,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) exit 2 ;;
        esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || { echo "make-rootfs.sh: no arguments expected" >&2; exit 2; }

log() { echo "make-rootfs: $*" >&2; }

# The private namespaces: mmdebstrap's --mode=root bind-mounts /proc, /sys and /dev into the tree;
# if we are killed those mounts must die with us instead of staying on the host.
if [ -z "${IMGCACHE_MAKE_ROOTFS_INNER:-}" ]; then
        export IMGCACHE_MAKE_ROOTFS_INNER=1
        exec unshare --mount --propagation private --pid --fork --mount-proc --kill-child -- "$0" "${orig_args[@]}"
fi

[ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }
command -v mmdebstrap >/dev/null || { log "mmdebstrap is not installed"; exit 1; }

# The host's own apt sources: deb822 if present, else the classic list. Never a hard-coded mirror.
sources=
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [ -s "$f" ]; then sources=$f; break; fi
done
[ -n "$sources" ] || { log "no apt sources found on this machine"; exit 1; }
# shellcheck disable=SC1091
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || { log "VERSION_CODENAME missing in /etc/os-release"; exit 1; }
arch=$(dpkg --print-architecture)

mapfile -t packages < <(printf '%s\n' "${PACKAGES[@]}" | sort -u)
# One field for apt-get satisfy, each group of alternatives once, in a stable order.
depends=$(printf '%s\n' "${satisfy[@]}" | tr ',' '\n' | sed 's/^ *//; s/ *$//' | sed '/^$/d' | sort -u |
          paste -sd, - | sed 's/,/, /g')
key=$( { echo "recipe $RECIPE"; echo "suite $suite"; echo "arch $arch"; printf '%s\n' "${packages[@]}";
         echo "satisfy $depends"; cat "$sources"; } | sha256sum | cut -c1-16)
rootfs=$cache_dir/rootfs-$key

mkdir -p "$cache_dir"
exec 9>"$cache_dir/lock"
flock 9

if [ -f "$rootfs/.imgcache-rootfs-complete" ]; then
        touch "$rootfs.lock"
        echo "$rootfs"
        exit 0
fi

# Leftovers: trees of other keys that no boot-test.sh is using (it holds their .lock shared), and
# half-built trees of killed runs (we hold the lock).
for old in "$cache_dir"/rootfs-* "$cache_dir"/tmp-*; do
        [ -d "$old" ] || continue
        [ "$old" = "$rootfs" ] && [ -f "$old/.imgcache-rootfs-complete" ] && continue
        if [ -e "$old.lock" ]; then
                exec 8<"$old.lock"
                flock -n -x 8 || { exec 8<&-; continue; }
        fi
        log "removing $old"
        rm -rf --one-file-system "$old"
        rm -f "$old.lock"
        exec 8<&- 2>/dev/null || true
done

tmp=$(mktemp -d "$cache_dir/tmp-XXXXXX")
log "building $rootfs ($suite/$arch from $sources; ${#packages[@]} packages)"
start=$(date +%s)

# Customization inside the tree:
#  - testuser (uid 1000): the unprivileged caller of the polkit checks;
#  - an empty machine-id, so each boot gets a fresh one;
#  - no gettys and no timers of other packages: the guest boots only what the test needs, and
#    timer tests see only our timers fire.
mmdebstrap --mode=root --variant=minbase --format=directory \
        --include="$(IFS=,; echo "${packages[*]}")" \
        --customize-hook='chroot "$1" useradd --uid 1000 --create-home --shell /bin/bash testuser' \
        --customize-hook='echo imgcache-test > "$1/etc/hostname"' \
        --customize-hook=': > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"' \
        --customize-hook='systemctl --root="$1" mask getty@.service serial-getty@.service \
                console-getty.service container-getty@.service systemd-firstboot.service \
                apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
                e2scrub_reap.service fstrim.timer man-db.timer' \
        ${depends:+--customize-hook="chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get satisfy -y -q '$depends'"} \
        --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*_Packages' \
        "$suite" "$tmp" "$sources" >&2

{ printf '%s\n' "${packages[@]}"; [ -z "$depends" ] || echo "satisfy: $depends"; } > "$tmp/.imgcache-rootfs-packages"
touch "$tmp/.imgcache-rootfs-complete"
touch "$rootfs.lock"
mv -T "$tmp" "$rootfs"
log "built in $(( $(date +%s) - start )) s"
echo "$rootfs"
