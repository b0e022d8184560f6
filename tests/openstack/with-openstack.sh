#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Runs a command against the real Keystone and the real Glance: Debian's keystone (under uwsgi, no Apache)
# and glance-api, started on 127.0.0.1 with this run's own state (sqlite databases in WAL mode, fernet
# keys, users, projects, roles, an application credential, the catalog, images), and stopped by pid when
# the command ends, however it ends. Services start once per run; several test programs may share them.
#
# Usage: with-openstack.sh [--token-expiration=SECONDS] [--dir=DIR] [--tap] [--] COMMAND [ARG...]
#   --token-expiration  Keystone's [token] expiration (default 3600): the lifetime of every token.
#   --dir               the state directory, emptied first and kept afterwards (logs); default: a
#                       temporary directory, removed afterwards.
#   --tap               COMMAND speaks TAP: a skip is "1..0 # SKIP reason" on stdout and status 0, which
#                       is what meson's TAP protocol takes for a skip (it counts 77 as an error there).
# Exits with COMMAND's status; 77 (skip) when a package is missing, 1 instead with
# IMGCACHE_TESTS_REQUIRE_ALL=1 (CI). Only stderr is ours: COMMAND's stdout (TAP) passes through untouched.
#
# The environment COMMAND gets (every name starts with IMGCACHE_OS_):
#   DIR                 the state directory; KEYSTONE_LOG, GLANCE_LOG: the services' logs in it
#   AUTH_URL            Keystone's identity endpoint, http://127.0.0.1:PORT/v3 (AuthURL=, auth_url)
#   GLANCE_URL          Glance's endpoint, http://127.0.0.1:PORT (URL=); the catalog's image endpoint
#                       (public, internal and admin) in REGION (RegionOne)
#   TOKEN_EXPIRATION    the tokens' lifetime in seconds, as passed
#   For each user X in ALICE, BOB, SERVICE, GLANCE, and ADMIN (the last without _USER_ID, _PROJECT_ID):
#     X_USER, X_USER_ID, X_PASSWORD, X_PROJECT, X_PROJECT_ID   (domain Default for all)
#     ALICE: member of project alpha; BOB: member of project beta (he sees none of alpha's private
#     images); SERVICE: imgcache, the daemon's service user, admin in project service (Glance's default
#     policies let only admin read other projects' private images); GLANCE: keystonemiddleware's user;
#     ADMIN: Keystone's bootstrap admin, project admin
#   ALICE_TOKEN, BOB_TOKEN  project-scoped tokens issued at start (they expire after TOKEN_EXPIRATION)
#   APP_CRED_ID, APP_CRED_SECRET  an application credential of SERVICE (with its admin role)
#   CREDENTIALS_FILE    that credential as imgcached's CredentialsFile= (mode 0600)
#   CLOUDS_YAML         clouds.yaml with one cloud per user (alice, bob, imgcache, admin) for openstacksdk
#                       and keystoneauth (OS_CLIENT_CONFIG_FILE points to it as well)
#   IMAGE_PRIVATE       id of alice's private image (project alpha), active
#   IMAGE_PUBLIC        id of a public image (project admin), active
#   IMAGE_DEACTIVATED   id of alice's private image, deactivated after its upload
#   IMAGE_X_FILE        each image's bytes as uploaded
# COMMAND may add users, credentials and images of its own; it should not change those above, which
# other programs of the same run may use.
set -euo pipefail

expiration=3600
dir=
tap=0
while [ $# -gt 0 ]; do
        case $1 in
        --token-expiration=*) expiration=${1#*=} ;;
        --dir=*) dir=${1#*=} ;;
        --tap) tap=1 ;;
        --) shift; break ;;
        *) break ;;
        esac
        shift
done
[ $# -gt 0 ] || { echo "usage: $0 [--token-expiration=SECONDS] [--dir=DIR] [--tap] [--] COMMAND [ARG...]" >&2; exit 2; }

here=$(dirname "$(readlink -f "$0")")
# shellcheck source=../lib/skip.sh
. "$here/../lib/skip.sh"
# skip.sh decides between skip (77) and failure (IMGCACHE_TESTS_REQUIRE_ALL=1); with --tap its 77 becomes
# TAP's skip.
missing() {
        local rc=0
        (skip "$@") || rc=$?
        [ "$tap" = 1 ] && [ "$rc" -eq 77 ] && { echo "1..0 # SKIP $*"; exit 0; }
        exit "$rc"
}

# The Debian scripts run /usr/bin/python3 (their shebang); so does ours, whatever python3 is first in PATH.
PY=/usr/bin/python3
UWSGI_PLUGIN=/usr/lib/uwsgi/plugins/python3_plugin.so
[ -x "$PY" ] || missing "$PY is not installed (python3)"
for tool in keystone-manage keystone-wsgi-public glance-manage glance-api uwsgi curl setpriv; do
        command -v "$tool" >/dev/null ||
                missing "$tool is not installed (packages keystone, glance-api, uwsgi, curl, util-linux)"
done
[ -f "$UWSGI_PLUGIN" ] || missing "$UWSGI_PLUGIN is not installed (uwsgi-plugin-python3)"

if [ -n "$dir" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        keep=1
else
        dir=$(mktemp -d "${TMPDIR:-/tmp}/imgcache-openstack-XXXXXX")
        keep=0
fi
dir=$(readlink -f "$dir")

pids=()
cleanup() {
        local rc=$? pid
        trap - EXIT INT TERM
        for pid in "${pids[@]}"; do
                kill -TERM "$pid" 2>/dev/null || true
        done
        # Each one gets 10 s to exit (uwsgi's master stops its workers first), then SIGKILL.
        for pid in "${pids[@]}"; do
                for _ in $(seq 100); do
                        kill -0 "$pid" 2>/dev/null || break
                        sleep 0.1
                done
                kill -KILL "$pid" 2>/dev/null || true
                wait "$pid" 2>/dev/null || true
        done
        if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
                for log in keystone.log glance-api.log setup.log; do
                        [ -s "$dir/$log" ] && { echo "== last lines of $dir/$log" >&2; tail -n 30 "$dir/$log" >&2; }
                done
        fi
        [ "$keep" = 1 ] || rm -rf "$dir"
        exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

fail() {
        echo "with-openstack: $*" >&2
        exit 1
}

# The services die with this script even when it cannot stop them itself (SIGKILL, say meson's timeout):
# setpriv sets their parent-death signal, which exec keeps.
orphan_guard=(setpriv --pdeathsig KILL --)

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits until url answers HTTP at all (any status), for at most 120 s, or until pid exits.
wait_http() {
        local url=$1 pid=$2 what=$3
        for _ in $(seq 1200); do
                curl -s -o /dev/null --max-time 5 "$url" && return 0
                kill -0 "$pid" 2>/dev/null || fail "$what exited before answering $url"
                sleep 0.1
        done
        fail "$what did not answer $url within 120 s"
}
# sqlite's default rollback journal makes Keystone's second write after a token request fail with
# "database is locked" (uwsgi's threads write concurrently); WAL lets readers and one writer coexist.
wal() { "$PY" -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode=WAL")' "$1"; }
# A fernet key repository as keystone-manage fernet_setup makes it (0 staged, 1 primary), without the
# three seconds each keystone-manage run costs.
fernet_keys() {
        mkdir -m 0700 "$1"
        for k in 0 1; do
                "$PY" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode(), end="")' >"$1/$k"
        done
}

keystone_port=$(free_port)
glance_port=$(free_port)
auth_url=http://127.0.0.1:$keystone_port/v3
glance_url=http://127.0.0.1:$glance_port
admin_password=admin-$RANDOM$RANDOM

# Keystone: a config directory of its own holding only keystone.conf (the WSGI script finds it through
# OS_KEYSTONE_CONFIG_DIR) and an empty policy.d: with policy_dirs empty, oslo.policy would read every
# file of the config directory as a policy file.
mkdir -p "$dir/keystone/policy.d" "$dir/glance/policy.d" "$dir/images" "$dir/staging" "$dir/tasks" "$dir/lock"
cat >"$dir/keystone/keystone.conf" <<EOF
[DEFAULT]
log_file = $dir/keystone-app.log
[database]
connection = sqlite:///$dir/keystone.db
[fernet_tokens]
key_repository = $dir/fernet-keys
[fernet_receipts]
key_repository = $dir/fernet-receipts
[credential]
key_repository = $dir/credential-keys
[token]
expiration = $expiration
[identity]
# bcrypt's minimum cost: every password check (each user's token) would take half a second by default.
password_hash_rounds = 4
[oslo_policy]
policy_dirs = $dir/keystone/policy.d
EOF
fernet_keys "$dir/fernet-keys"
fernet_keys "$dir/fernet-receipts"
fernet_keys "$dir/credential-keys"

# Glance: the keystone paste flavor (tokens validated by keystonemiddleware), one process (workers = 0),
# the file store. token_cache_time = -1: every request is validated with Keystone, so a revoked token
# (a deleted application credential) is refused at once, not after keystonemiddleware's 300 s cache.
cat >"$dir/glance/glance-api.conf" <<EOF
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $glance_port
workers = 0
log_file = $dir/glance-api.log
enabled_backends = fs:file
[database]
connection = sqlite:///$dir/glance.db
[paste_deploy]
flavor = keystone
config_file = /etc/glance/glance-api-paste.ini
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:$keystone_port
auth_url = http://127.0.0.1:$keystone_port
auth_type = password
username = glance
password = glance-password
project_name = service
user_domain_name = Default
project_domain_name = Default
token_cache_time = -1
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $dir/images
[os_glance_staging_store]
filesystem_store_datadir = $dir/staging
[os_glance_tasks_store]
filesystem_store_datadir = $dir/tasks
[oslo_concurrency]
lock_path = $dir/lock
[oslo_policy]
policy_dirs = $dir/glance/policy.d
EOF

start=$SECONDS
echo "with-openstack: state in $dir, Keystone on port $keystone_port, Glance on port $glance_port" >&2
# Glance's schema and start in the background, Keystone's schema and bootstrap meanwhile (each step is
# seconds of Python): the admin user, project and roles (admin, member, reader), and the identity
# endpoints (keystonemiddleware in Glance looks for the internal one). Glance needs Keystone only to
# validate tokens, so it may answer first. The subshell execs glance-api: its pid is Glance's.
(
        glance-manage --config-file "$dir/glance/glance-api.conf" db_sync >"$dir/glance-manage.log" 2>&1 ||
                fail "glance-manage db_sync failed: $(tail -n 5 "$dir/glance-manage.log")"
        wal "$dir/glance.db"
        exec "${orphan_guard[@]}" glance-api --config-file "$dir/glance/glance-api.conf" \
                >"$dir/glance-api.stderr" 2>&1
) &
glance_pid=$!
pids+=("$glance_pid")
keystone-manage --config-file "$dir/keystone/keystone.conf" db_sync >"$dir/keystone-manage.log" 2>&1 ||
        fail "keystone-manage db_sync failed: $(tail -n 5 "$dir/keystone-manage.log")"
wal "$dir/keystone.db"
keystone-manage --config-file "$dir/keystone/keystone.conf" bootstrap --bootstrap-password "$admin_password" \
        --bootstrap-public-url "$auth_url" --bootstrap-internal-url "$auth_url" --bootstrap-admin-url "$auth_url" \
        --bootstrap-region-id RegionOne >>"$dir/keystone-manage.log" 2>&1 ||
        fail "keystone-manage bootstrap failed: $(tail -n 5 "$dir/keystone-manage.log")"

# HTTP/1.1 with keep-alive: with --http-socket uwsgi closes every connection after its answer without
# saying so, and keystonemiddleware's next request on it fails ("Remote end closed connection").
OS_KEYSTONE_CONFIG_DIR=$dir/keystone "${orphan_guard[@]}" uwsgi --plugin "$UWSGI_PLUGIN" \
        --http11-socket "127.0.0.1:$keystone_port" --wsgi-file "$(command -v keystone-wsgi-public)" \
        --master --processes 1 --threads 8 --die-on-term --no-orphans --need-app --buffer-size 65535 >"$dir/keystone.log" 2>&1 &
pids+=($!)
wait_http "$auth_url" "${pids[-1]}" "Keystone (uwsgi)"
wait_http "$glance_url/" "$glance_pid" "glance-api (or glance-manage db_sync, $dir/glance-manage.log)"

"$PY" "$here/openstack-setup.py" "$auth_url" "$glance_url" "$admin_password" "$dir" \
        >"$dir/env.sh" 2>"$dir/setup.log" ||
        fail "openstack-setup.py failed: $(tail -n 5 "$dir/setup.log")"
# shellcheck source=/dev/null
. "$dir/env.sh"
export IMGCACHE_OS_DIR=$dir IMGCACHE_OS_AUTH_URL=$auth_url IMGCACHE_OS_GLANCE_URL=$glance_url \
        IMGCACHE_OS_TOKEN_EXPIRATION=$expiration IMGCACHE_OS_REGION=RegionOne \
        IMGCACHE_OS_KEYSTONE_LOG=$dir/keystone.log IMGCACHE_OS_GLANCE_LOG=$dir/glance-api.log
export OS_CLIENT_CONFIG_FILE=$IMGCACHE_OS_CLOUDS_YAML
echo "with-openstack: Keystone and Glance ready in $((SECONDS - start)) s" >&2

# Not exec: the trap stops the services when the command is done.
rc=0
"$@" || rc=$?
exit "$rc"
