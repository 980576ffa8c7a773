#!/usr/bin/env bash
# Makes sure the servers the test suite talks to are up on 127.0.0.1, installing them from
# Debian packages when they are missing:
#
#   PostgreSQL  :5432  user postgres, password "postgres" (also fine where auth is trust),
#                      database ess_test
#   RabbitMQ    :5672  guest/guest
#   S3          :8080  OpenStack Swift + s3api, access key test:tester, secret testing,
#                      region us-east-1, with memcached on :11211
#   XRootD      :1094  root://127.0.0.1:1094//PATH serves $ESS_STATE_DIR/xrootd/data/PATH,
#                      read-only, to this machine only
#   Prometheus         the `prometheus` binary (Debian's package); each test that needs one
#                      starts its own, with its own config, data directory and port
#   Chromium           /usr/bin/chromium (Debian's package), which Playwright drives headless
#                      for the dashboard's tests; never a browser download
#   STOMP       :61613 RabbitMQ's STOMP plugin (guest/guest, virtual host /)
#   Rucio       :8095  the `rucio` server package from PyPI in a venv of its own
#                      ($ESS_STATE_DIR/rucio) under gunicorn, on database `rucio` of the
#                      PostgreSQL above; root account, userpass ess/ess-rucio-test
#
# Idempotent: whatever already answers is left alone, so a warm run only probes. Everything it
# starts keeps running after it exits. Swift's configs, rings, data, logs and pid files live in
# $ESS_STATE_DIR/swift (default /var/tmp/ess/swift), never in /etc/swift.
#
# Environment: ESS_STATE_DIR, ESS_SERVICE_TIMEOUT (seconds to wait per service, default 90).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${ESS_STATE_DIR:-/var/tmp/ess}
TIMEOUT=${ESS_SERVICE_TIMEOUT:-90}

PG_PORT=5432
PG_PASSWORD=postgres
PG_DATABASE=ess_test
AMQP_PORT=5672
MEMCACHED_PORT=11211
PROXY_PORT=8080
# Not Swift's default 6200-6202: a packaged swift-*-server started by systemd would hold those.
OBJECT_PORT=6310
CONTAINER_PORT=6311
ACCOUNT_PORT=6312

SWIFT_DIR=$STATE_DIR/swift
SWIFT_ETC=$SWIFT_DIR/etc
SWIFT_DEVICES=$SWIFT_DIR/node
SWIFT_RUN=$SWIFT_DIR/run
SWIFT_LOG=$SWIFT_DIR/log

say() { printf '%-10s %s\n' "$1:" "$2"; }
die() {
    printf 'ensure-services: %s\n' "$*" >&2
    exit 1
}

SUDO=()
if [[ $(id -u) != 0 ]]; then
    SUDO=(sudo)
fi

listening() {
    (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null
}

# http_ok PORT PATH: whether GET PATH answers 200; pure bash so a warm run stays fast.
http_ok() {
    local status
    status=$(
        exec 2>/dev/null
        exec 3<>/dev/tcp/127.0.0.1/"$1" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
        IFS= read -r -t 2 line <&3 && printf '%s' "$line"
    ) || return 1
    [[ $status == *" 200 "* ]]
}

# Swift's healthcheck answers "200 OK" on every server.
healthy() {
    http_ok "$1" /healthcheck
}

# wait_for COMMAND...: polls COMMAND until it succeeds or TIMEOUT seconds pass.
wait_for() {
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

APT_UPDATED=0
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "need ${missing[*]} but apt-get is not available"
    say apt "installing ${missing[*]}"
    if ((!APT_UPDATED)); then
        "${SUDO[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# --- PostgreSQL -----------------------------------------------------------------------------

pg_psql() {
    PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -p "$PG_PORT" -U postgres \
        -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

newest_entry() {
    find "$1" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1 || true
}

ensure_postgres() {
    local started=0 version
    if ! listening "$PG_PORT"; then
        apt_install postgresql
        version=$(newest_entry /etc/postgresql)
        if [[ -z $version ]]; then
            version=$(newest_entry /usr/lib/postgresql)
            [[ -n $version ]] || die "postgresql is installed but no server version found"
            "${SUDO[@]}" pg_createcluster "$version" main >/dev/null
        fi
        "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$version" main start 9>&- ||
            die "pg_ctlcluster $version main start failed (see /var/log/postgresql/)"
        started=1
    fi
    command -v psql >/dev/null || apt_install postgresql-client
    wait_for pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 1 ||
        die "postgresql did not accept connections on 127.0.0.1:$PG_PORT within ${TIMEOUT}s"

    # A fresh Debian cluster uses scram for TCP logins; a known password works there and under
    # trust alike, without rewriting pg_hba.conf. It is set only when the login fails.
    if ! pg_psql -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
        if ! command -v runuser >/dev/null || ! id postgres >/dev/null 2>&1; then
            die "cannot log in as postgres/$PG_PASSWORD on 127.0.0.1:$PG_PORT"
        fi
        "${SUDO[@]}" runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" \
            -c "ALTER ROLE postgres PASSWORD '$PG_PASSWORD'" >/dev/null ||
            die "cannot set the password of role postgres through the local socket"
        pg_psql -d postgres -c 'SELECT 1' >/dev/null ||
            die "cannot log in as postgres/$PG_PASSWORD on 127.0.0.1:$PG_PORT (check pg_hba.conf)"
    fi
    if [[ -z $(pg_psql -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'") ]]
    then
        pg_psql -d postgres -c "CREATE DATABASE $PG_DATABASE" >/dev/null
    fi
    if ((started)); then
        say postgres "started (127.0.0.1:$PG_PORT, database $PG_DATABASE)"
    else
        say postgres "already up (127.0.0.1:$PG_PORT, database $PG_DATABASE)"
    fi
}

# --- RabbitMQ -------------------------------------------------------------------------------

rabbitmq_booted() {
    "${SUDO[@]}" timeout 30 rabbitmqctl -q --timeout 25 await_startup >/dev/null 2>&1
}

ensure_rabbitmq() {
    if listening "$AMQP_PORT"; then
        say rabbitmq "already up (127.0.0.1:$AMQP_PORT)"
        return
    fi
    apt_install rabbitmq-server
    # The postinst may already have started it; a second start would fail on the node name.
    if ! "${SUDO[@]}" rabbitmqctl -q status >/dev/null 2>&1; then
        "${SUDO[@]}" rabbitmq-server -detached >/dev/null 2>&1 9>&- ||
            die "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
    fi
    # await_startup fails at once while the Erlang node itself is still booting, so retry it.
    wait_for rabbitmq_booted || die "rabbitmq did not finish starting within ${TIMEOUT}s"
    wait_for listening "$AMQP_PORT" ||
        die "rabbitmq is running but nothing listens on 127.0.0.1:$AMQP_PORT"
    say rabbitmq "started (127.0.0.1:$AMQP_PORT)"
}

# The cluster tests (tests/e2e/test_rabbitmq_cluster.py) start three nodes of their own with
# scripts/rabbitmq-cluster.sh: the server's own scripts (not Debian's wrapper, which would run
# them as the rabbitmq user with its environment) and the Erlang port mapper the machine's node
# started.
check_rabbitmq_cluster() {
    local bin=${RABBITMQ_SERVER_BIN:-/usr/lib/rabbitmq/bin}
    [[ -x $bin/rabbitmq-server && -x $bin/rabbitmqctl ]] ||
        die "no rabbitmq-server scripts in $bin (Debian's rabbitmq-server package)"
    local epmd
    epmd=$(command -v epmd || ls /usr/lib/erlang/erts-*/bin/epmd 2>/dev/null | head -n 1 || true)
    [[ -n $epmd ]] && "$epmd" -names >/dev/null 2>&1 ||
        die "the Erlang port mapper (epmd) does not answer; the cluster tests need it"
    say rabbitmq "cluster tests can start nodes ($bin)"
}

# --- Swift + s3api --------------------------------------------------------------------------

# put_config PATH: writes stdin to PATH, noting in SWIFT_CONFIG_CHANGED whether it differed.
SWIFT_CONFIG_CHANGED=0
put_config() {
    cat >"$1.new"
    if cmp -s "$1.new" "$1"; then
        rm -f "$1.new"
    else
        mv -f "$1.new" "$1"
        SWIFT_CONFIG_CHANGED=1
    fi
}

write_swift_configs() {
    local user
    user=$(id -un)
    mkdir -p "$SWIFT_ETC" "$SWIFT_DEVICES/d1" "$SWIFT_RUN" "$SWIFT_LOG"

    # Swift reads swift.conf from a fixed path; the launcher points it here instead.
    put_config "$SWIFT_ETC/swift.conf" <<EOF
[swift-hash]
swift_hash_path_prefix = ess-dev
swift_hash_path_suffix = ess-dev

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
# S3's own single-PUT limit; bigger objects go through multipart uploads.
max_file_size = 5368709122
EOF

    # The proxy and the object server, which do most of the work of every PUT and GET (a few ms
    # of CPU each per request), run one worker process per core (workers = auto); the account
    # and container servers, which see a container update per PUT, one process (workers = 0).
    # A server started with workers forks them from its first process, which stops them on
    # SIGTERM; each server is a process group of its own (setsid), stopped as one.
    local name port workers
    for name in account container object; do
        workers=0
        case $name in
            account) port=$ACCOUNT_PORT ;;
            container) port=$CONTAINER_PORT ;;
            object) port=$OBJECT_PORT workers=auto ;;
        esac
        put_config "$SWIFT_ETC/$name-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
workers = $workers
user = $user
swift_dir = $SWIFT_ETC
devices = $SWIFT_DEVICES
mount_check = false
disable_fallocate = true
log_name = $name-server
log_level = WARNING

[pipeline:main]
pipeline = healthcheck $name-server

[app:$name-server]
use = egg:swift#$name

[filter:healthcheck]
use = egg:swift#healthcheck
EOF
    done

    put_config "$SWIFT_ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PROXY_PORT
workers = auto
user = $user
swift_dir = $SWIFT_ETC
log_name = proxy-server
log_level = WARNING

[pipeline:main]
# s3api must precede the auth middleware; slo is what it builds multipart uploads on.
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl s3api tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1
# S3's part limit, so that multi-GB files upload with ordinary part sizes; slo must match.
max_upload_part_num = 10000

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:tempurl]
use = egg:swift#tempurl

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo
max_manifest_segments = 10000

[filter:dlo]
use = egg:swift#dlo

[filter:versioned_writes]
use = egg:swift#versioned_writes

[filter:symlink]
use = egg:swift#symlink
EOF

    # The stock /usr/bin/swift-*-server scripts would read /etc/swift/swift.conf, so they run
    # through this launcher, which repoints swift before any module reads that file.
    put_config "$SWIFT_ETC/run-server.py" <<'EOF'
import os
import sys

import swift.common.utils as utils

utils.SWIFT_CONF_FILE = os.environ["ESS_SWIFT_CONF"]

from swift.common.wsgi import run_wsgi  # noqa: E402

server = sys.argv.pop(1)
conf_file, options = utils.parse_options()
kwargs = {}
if server == "object-server":
    from swift.obj import server as object_server

    kwargs["global_conf_callback"] = object_server.global_conf_callback
sys.exit(run_wsgi(conf_file, server, **options, **kwargs))
EOF
}

build_rings() {
    local name port rc
    for name in account container object; do
        [[ -s $SWIFT_ETC/$name.ring.gz ]] && continue
        case $name in
            account) port=$ACCOUNT_PORT ;;
            container) port=$CONTAINER_PORT ;;
            object) port=$OBJECT_PORT ;;
        esac
        rm -f "$SWIFT_ETC/$name.builder"
        swift-ring-builder "$SWIFT_ETC/$name.builder" create 10 1 1 >/dev/null
        swift-ring-builder "$SWIFT_ETC/$name.builder" add --region 1 --zone 1 \
            --ip 127.0.0.1 --port "$port" --device d1 --weight 100 >/dev/null
        # Exit status 1 only warns (e.g. about balance); 2 is a real failure.
        rc=0
        swift-ring-builder "$SWIFT_ETC/$name.builder" rebalance >/dev/null || rc=$?
        ((rc <= 1)) || die "swift-ring-builder rebalance of the $name ring failed"
    done
}

ensure_memcached() {
    listening "$MEMCACHED_PORT" && return
    local user
    user=$(id -un)
    memcached -d -u "$user" -l 127.0.0.1 -p "$MEMCACHED_PORT" -m 64 \
        -P "$SWIFT_RUN/memcached.pid" 9>&- || die "memcached failed to start"
    wait_for listening "$MEMCACHED_PORT" ||
        die "memcached did not listen on 127.0.0.1:$MEMCACHED_PORT within ${TIMEOUT}s"
}

is_our_server() {
    [[ -r /proc/$1/cmdline ]] &&
        tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "run-server.py $2 "
}

# stop_swift_server NAME PORT: stops NAME if this script started it. The pid file may be from
# before a reboot, so the pid must still be this server before it is signalled. The pid leads
# the server's process group (setsid): the group is signalled, its workers with it.
stop_swift_server() {
    local name=$1 port=$2 pidfile=$SWIFT_RUN/$1.pid pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    is_our_server "$pid" "$name" || return 0
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in {1..25}; do
        is_our_server "$pid" "$name" || break
        sleep 0.2
    done
    if is_our_server "$pid" "$name"; then
        kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    fi
    for _ in {1..25}; do
        listening "$port" || break
        sleep 0.2
    done
}

# start_swift_server NAME PORT: starts NAME unless its healthcheck already answers.
start_swift_server() {
    local name=$1 port=$2
    healthy "$port" && return 1
    # A hung server would keep the port from the new one.
    stop_swift_server "$name" "$port"
    listening "$port" && die "127.0.0.1:$port is taken by something that is not swift $name"
    ESS_SWIFT_CONF=$SWIFT_ETC/swift.conf setsid /usr/bin/python3 "$SWIFT_ETC/run-server.py" \
        "$name" "$SWIFT_ETC/$name.conf" --verbose </dev/null >>"$SWIFT_LOG/$name.log" 2>&1 9>&- &
    echo $! >"$SWIFT_RUN/$name.pid"
    return 0
}

SWIFT_SERVERS=(
    "account-server:$ACCOUNT_PORT"
    "container-server:$CONTAINER_PORT"
    "object-server:$OBJECT_PORT"
    "proxy-server:$PROXY_PORT"
)

ensure_swift() {
    local entry started=()
    write_swift_configs
    # Servers read their configs only at start, and the rings name the ports.
    if ((SWIFT_CONFIG_CHANGED)); then
        rm -f "$SWIFT_ETC"/*.ring.gz
        for entry in "${SWIFT_SERVERS[@]}"; do
            stop_swift_server "${entry%:*}" "${entry#*:}"
        done
    fi
    if ! { healthy "$PROXY_PORT" && healthy "$ACCOUNT_PORT" && healthy "$CONTAINER_PORT" &&
        healthy "$OBJECT_PORT" && listening "$MEMCACHED_PORT"; }; then
        apt_install swift-proxy swift-account swift-container swift-object memcached
        build_rings
        ensure_memcached
        for entry in "${SWIFT_SERVERS[@]}"; do
            if start_swift_server "${entry%:*}" "${entry#*:}"; then
                started+=("${entry%:*}")
            fi
        done
        for entry in "${SWIFT_SERVERS[@]}"; do
            wait_for healthy "${entry#*:}" ||
                die "swift ${entry%:*} not healthy on 127.0.0.1:${entry#*:} within ${TIMEOUT}s;" \
                    "see $SWIFT_LOG/${entry%:*}.log"
        done
    fi
    if ((${#started[@]})); then
        say s3 "started swift ${started[*]} (http://127.0.0.1:$PROXY_PORT, state $SWIFT_DIR)"
    else
        say s3 "already up (http://127.0.0.1:$PROXY_PORT)"
    fi
}

check_s3() {
    local python=$ROOT/.venv/bin/python
    if [[ ! -x $python ]]; then
        say s3 "round-trip check skipped: no .venv yet (scripts/bootstrap.sh creates it)"
        return
    fi
    "$python" "$ROOT/scripts/check-s3.py" --endpoint-url "http://127.0.0.1:$PROXY_PORT" \
        --access-key test:tester --secret-key testing --region us-east-1 --wait "$TIMEOUT" ||
        die "S3 round-trip check against http://127.0.0.1:$PROXY_PORT failed; see $SWIFT_LOG/"
}

# --- XRootD ---------------------------------------------------------------------------------

XROOTD_PORT=1094
XROOTD_DIR=$STATE_DIR/xrootd

ensure_xrootd() {
    local as=()
    if listening "$XROOTD_PORT"; then
        say xrootd "already up (root://127.0.0.1:$XROOTD_PORT)"
        return
    fi
    apt_install xrootd-server
    mkdir -p "$XROOTD_DIR/data" "$XROOTD_DIR/run"
    chmod 755 "$XROOTD_DIR" "$XROOTD_DIR/data"
    if [[ $(id -u) == 0 ]]; then
        # xrootd refuses to run as root; the package's own user runs it.
        id xrootd >/dev/null 2>&1 || die "xrootd-server is installed but there is no xrootd user"
        chown xrootd: "$XROOTD_DIR/run"
        as=(-R xrootd)
    fi
    cat >"$XROOTD_DIR/xrootd.cfg" <<CONFIG
all.export / r/o
oss.localroot $XROOTD_DIR/data
xrd.port $XROOTD_PORT
xrd.allow host localhost
xrd.network nodnr
all.adminpath $XROOTD_DIR/run
all.pidpath $XROOTD_DIR/run
CONFIG
    xrootd -b -c "$XROOTD_DIR/xrootd.cfg" -l "$XROOTD_DIR/run/xrootd.log" "${as[@]}" \
        </dev/null >/dev/null 2>&1 9>&- || die "xrootd failed to start; see $XROOTD_DIR/run/"
    wait_for listening "$XROOTD_PORT" ||
        die "xrootd did not listen on 127.0.0.1:$XROOTD_PORT within ${TIMEOUT}s; see $XROOTD_DIR/run/"
    say xrootd "started (root://127.0.0.1:$XROOTD_PORT, serving $XROOTD_DIR/data)"
}

# A file written under the data directory must be readable through root://.
check_xrootd() {
    local python=$ROOT/.venv/bin/python canary=.ess-canary-$$ status=0
    if [[ ! -x $python ]]; then
        say xrootd "read check skipped: no .venv yet (scripts/bootstrap.sh creates it)"
        return
    fi
    printf 'ess' >"$XROOTD_DIR/data/$canary"
    "$python" - "root://127.0.0.1:$XROOTD_PORT" "/$canary" <<'PYTHON' || status=$?
import sys

from XRootD import client

status, info = client.FileSystem(sys.argv[1]).stat(sys.argv[2], timeout=10)
sys.exit(0 if status.ok and info.size == 3 else f"stat {sys.argv[2]}: {status.message}")
PYTHON
    rm -f "$XROOTD_DIR/data/$canary"
    ((status == 0)) || die "root://127.0.0.1:$XROOTD_PORT does not serve $XROOTD_DIR/data"
}

# --- Prometheus and Chromium ---------------------------------------------------------------

ensure_prometheus() {
    command -v prometheus >/dev/null || apt_install prometheus
    # The package may also run a server of its own (on :9090, where an init system starts it);
    # the tests never use it: each starts one with its own config on a free port.
    say prometheus "$(prometheus --version 2>&1 | head -n1)"
}

ensure_chromium() {
    [[ -x /usr/bin/chromium ]] || apt_install chromium
    say chromium "$(/usr/bin/chromium --version 2>/dev/null | head -n1)"
}

# --- STOMP (RabbitMQ's plugin) --------------------------------------------------------------

STOMP_PORT=61613

# PanDA's message clients speak STOMP 1.2: the plugin serves it on the same broker. Enabling an
# enabled plugin changes nothing, and a running node starts the plugin without a restart.
ensure_stomp() {
    if listening "$STOMP_PORT"; then
        say stomp "already up (127.0.0.1:$STOMP_PORT)"
        return
    fi
    "${SUDO[@]}" rabbitmq-plugins enable --quiet rabbitmq_stomp >/dev/null 9>&- ||
        die "rabbitmq-plugins enable rabbitmq_stomp failed"
    wait_for listening "$STOMP_PORT" ||
        die "the STOMP plugin is enabled but nothing listens on 127.0.0.1:$STOMP_PORT"
    say stomp "started (127.0.0.1:$STOMP_PORT)"
}

# --- Rucio ----------------------------------------------------------------------------------

RUCIO_VERSION=41.5.1
RUCIO_PORT=8095
RUCIO_DIR=$STATE_DIR/rucio
RUCIO_DATABASE=rucio
RUCIO_USER=ess
RUCIO_PASSWORD=ess-rucio-test

rucio_answers() {
    http_ok "$RUCIO_PORT" /ping
}

# The server package and the project's client package both provide the `rucio` module: the
# server lives in a venv of its own, installed once per version.
install_rucio() {
    local stamp=$RUCIO_DIR/venv/.ess-rucio-$RUCIO_VERSION
    [[ -f $stamp ]] && return
    say rucio "installing rucio $RUCIO_VERSION into $RUCIO_DIR/venv"
    rm -rf "$RUCIO_DIR/venv"
    mkdir -p "$RUCIO_DIR"
    python3 -m venv "$RUCIO_DIR/venv" || die "python3 -m venv $RUCIO_DIR/venv failed"
    "$RUCIO_DIR/venv/bin/python" -m pip install -q --disable-pip-version-check \
        "rucio[postgresql]==$RUCIO_VERSION" gunicorn >"$RUCIO_DIR/pip.log" 2>&1 ||
        die "pip install rucio==$RUCIO_VERSION failed; see $RUCIO_DIR/pip.log"
    touch "$stamp"
}

write_rucio_configs() {
    local package
    package=$("$RUCIO_DIR/venv/bin/python" -c \
        'import os, rucio; print(os.path.dirname(rucio.__file__))') ||
        die "the rucio package does not import from $RUCIO_DIR/venv"
    mkdir -p "$RUCIO_DIR/etc" "$RUCIO_DIR/log" "$RUCIO_DIR/run"
    # psycopg 3: the server's connect hook fails with psycopg2. The cache points at a port
    # nobody serves: a memcached that answers (Swift's) would keep answers across databases.
    cat >"$RUCIO_DIR/etc/rucio.cfg" <<CONFIG
[common]
logdir = $RUCIO_DIR/log
loglevel = WARNING

[database]
default = postgresql+psycopg://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/$RUCIO_DATABASE
pool_size = 10
max_overflow = 20

[bootstrap]
userpass_identity = $RUCIO_USER
userpass_pwd = $RUCIO_PASSWORD
userpass_email = ess@localhost

[alembic]
cfg = $RUCIO_DIR/etc/alembic.ini

[cache]
url = 127.0.0.1:1

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash

[monitor]
enable_metrics = False
CONFIG
    cat >"$RUCIO_DIR/etc/alembic.ini" <<CONFIG
[alembic]
script_location = $package/db/sqla/migrate_repo
sqlalchemy.url = postgresql+psycopg://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/$RUCIO_DATABASE

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = %(levelname)s %(name)s %(message)s
CONFIG
}

# Schema, base VO and root account, once per database.
bootstrap_rucio() {
    if [[ -z $(pg_psql -d postgres -c \
        "SELECT 1 FROM pg_database WHERE datname = '$RUCIO_DATABASE'") ]]; then
        pg_psql -d postgres -c "CREATE DATABASE $RUCIO_DATABASE" >/dev/null
    fi
    [[ -n $(pg_psql -d "$RUCIO_DATABASE" -c "SELECT to_regclass('alembic_version')") ]] && return
    RUCIO_CONFIG=$RUCIO_DIR/etc/rucio.cfg "$RUCIO_DIR/venv/bin/python" - \
        >>"$RUCIO_DIR/log/bootstrap.log" 2>&1 <<'PYTHON' ||
from rucio.db.sqla.util import build_database, create_base_vo, create_root_account

build_database()
create_base_vo()
create_root_account()
PYTHON
        die "building the Rucio database failed; see $RUCIO_DIR/log/bootstrap.log"
}

is_our_rucio() {
    [[ -r /proc/$1/cmdline ]] &&
        tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "gunicorn.*127.0.0.1:$RUCIO_PORT"
}

ensure_rucio() {
    local pidfile=$RUCIO_DIR/run/gunicorn.pid pid
    if rucio_answers; then
        say rucio "already up (http://127.0.0.1:$RUCIO_PORT)"
        return
    fi
    install_rucio
    write_rucio_configs
    bootstrap_rucio
    # A hung server would keep the port from the new one.
    if [[ -s $pidfile ]] && pid=$(<"$pidfile") && is_our_rucio "$pid"; then
        kill "$pid" 2>/dev/null || true
        for _ in {1..50}; do
            listening "$RUCIO_PORT" || break
            sleep 0.2
        done
    fi
    listening "$RUCIO_PORT" && die "127.0.0.1:$RUCIO_PORT is taken by something that is not Rucio"
    RUCIO_CONFIG=$RUCIO_DIR/etc/rucio.cfg setsid "$RUCIO_DIR/venv/bin/gunicorn" \
        --bind "127.0.0.1:$RUCIO_PORT" --workers 2 --threads 4 --timeout 120 --keep-alive 75 \
        --pid "$pidfile" rucio.web.rest.flaskapi.v1.main:application \
        </dev/null >>"$RUCIO_DIR/log/gunicorn.log" 2>&1 9>&- &
    wait_for rucio_answers ||
        die "rucio did not answer on 127.0.0.1:$RUCIO_PORT within ${TIMEOUT}s; see $RUCIO_DIR/log/"
    say rucio "started (http://127.0.0.1:$RUCIO_PORT, state $RUCIO_DIR)"
}

# Two test runs at once would race to start the same servers. Whatever starts a server closes
# fd 9 for it, or the lock would live as long as the server does.
mkdir -p "$STATE_DIR"
exec 9>"$STATE_DIR/ensure-services.lock"
flock -w "$TIMEOUT" 9 || die "another ensure-services.sh held $STATE_DIR/ensure-services.lock"

ensure_postgres
ensure_rabbitmq
check_rabbitmq_cluster
ensure_stomp
ensure_swift
check_s3
ensure_xrootd
check_xrootd
ensure_prometheus
ensure_chromium
ensure_rucio
