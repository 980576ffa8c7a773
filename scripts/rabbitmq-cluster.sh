#!/usr/bin/env bash
# A RabbitMQ cluster of three nodes on this machine, from Debian's rabbitmq-server, for the
# tests that lose a node (tests/e2e/test_rabbitmq_cluster.py). Nothing is installed here
# (scripts/ensure-services.sh checks the server is); the machine's own RabbitMQ is not touched.
#
#   scripts/rabbitmq-cluster.sh start DIR BASE_PORT [KEY=VALUE ...]
#       Nodes ess-<tag>-1..3@localhost, AMQP on 127.0.0.1:BASE_PORT+1..3, Erlang distribution
#       on BASE_PORT+11..13, state and logs under DIR, one Erlang cookie; nodes 2 and 3 join
#       node 1. KEY=VALUE lines are added to each node's rabbitmq.conf (e.g.
#       consumer_timeout=5000). Prints one line per node: NAME AMQP_URL PID_FILE.
#   scripts/rabbitmq-cluster.sh stop DIR
#       Stops every node started in DIR (kill -9 of those still running afterwards).
set -euo pipefail

SERVER_BIN=${RABBITMQ_SERVER_BIN:-/usr/lib/rabbitmq/bin}
NODES=(1 2 3)
say() { printf 'rabbitmq-cluster: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

[[ -x $SERVER_BIN/rabbitmq-server && -x $SERVER_BIN/rabbitmqctl ]] ||
    die "no rabbitmq-server in $SERVER_BIN (Debian's rabbitmq-server package; see scripts/ensure-services.sh)"

node_env() { # DIR I -> environment of node I
    local dir=$1 i=$2 base
    base=$(cat "$dir/base_port")
    printf '%s\n' \
        "HOME=$dir" \
        "RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf" \
        "RABBITMQ_NODENAME=$(cat "$dir/tag")-$i@localhost" \
        "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1" \
        "RABBITMQ_NODE_PORT=$((base + i))" \
        "RABBITMQ_DIST_PORT=$((base + 10 + i))" \
        "RABBITMQ_MNESIA_BASE=$dir/node-$i/mnesia" \
        "RABBITMQ_LOG_BASE=$dir/node-$i/log" \
        "RABBITMQ_PID_FILE=$dir/node-$i/pid" \
        "RABBITMQ_CONFIG_FILE=$dir/node-$i/rabbitmq.conf" \
        "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins" \
        "RABBITMQ_ADVANCED_CONFIG_FILE=$dir/node-$i/advanced.config" \
        "ERL_EPMD_ADDRESS=127.0.0.1"
}

ctl() { # DIR I ARGS... -> rabbitmqctl against node I
    local dir=$1 i=$2
    shift 2
    env $(node_env "$dir" "$i") "$SERVER_BIN/rabbitmqctl" -q "$@"
}

start() {
    local dir=$1 base=$2
    shift 2
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    printf '%s\n' "$base" >"$dir/base_port"
    printf 'ess-%s\n' "$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')" >"$dir/tag"
    # One cookie for the three nodes and for rabbitmqctl (HOME is $dir for both).
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
    : >"$dir/rabbitmq-env.conf"
    printf '[].\n' >"$dir/enabled_plugins"
    for i in "${NODES[@]}"; do
        mkdir -p "$dir/node-$i/log"
        {
            printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$((base + i))"
            printf 'loopback_users = none\n'
            printf '%s\n' "$@"
        } >"$dir/node-$i/rabbitmq.conf"
        # A channel's deliveries are checked against consumer_timeout at each tick: once a
        # second, so that a short timeout of a test takes effect when it should.
        printf '[{rabbit, [{channel_tick_interval, 1000}]}].\n' >"$dir/node-$i/advanced.config"
        (
            cd "$dir/node-$i"
            exec env $(node_env "$dir" "$i") ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}" \
                "$SERVER_BIN/rabbitmq-server" >"$dir/node-$i/server.out" 2>&1 9>&- </dev/null
        ) &
        printf '%s\n' "$!" >"$dir/node-$i/launcher.pid"
    done
    for i in "${NODES[@]}"; do
        # `wait` waits for the node's pid file, then for the node to have booted.
        ctl "$dir" "$i" --timeout 120 wait "$dir/node-$i/pid" >/dev/null ||
            die "node $i did not start: $(tail -n 20 "$dir/node-$i/server.out")"
    done
    local first
    first="$(cat "$dir/tag")-1@localhost"
    for i in 2 3; do
        ctl "$dir" "$i" stop_app >/dev/null
        ctl "$dir" "$i" join_cluster "$first" >/dev/null || die "node $i could not join $first"
        ctl "$dir" "$i" start_app >/dev/null
    done
    for i in "${NODES[@]}"; do
        ctl "$dir" "$i" --timeout 60 await_startup >/dev/null || die "node $i did not come back"
        printf '%s amqp://guest:guest@127.0.0.1:%s/ %s\n' \
            "$(cat "$dir/tag")-$i@localhost" "$((base + i))" "$dir/node-$i/pid"
    done
}

stop() {
    local dir
    dir=$(cd "$1" && pwd)
    [[ -f $dir/tag ]] || return 0
    for i in "${NODES[@]}"; do
        ctl "$dir" "$i" --timeout 20 shutdown >/dev/null 2>&1 || true
    done
    for i in "${NODES[@]}"; do
        local pid
        for pid in "$(cat "$dir/node-$i/pid" 2>/dev/null)" "$(cat "$dir/node-$i/launcher.pid" 2>/dev/null)"; do
            if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
                kill -9 "$pid" 2>/dev/null || true
            fi
        done
    done
}

case ${1:-} in
start)
    [[ $# -ge 3 ]] || die "usage: $0 start DIR BASE_PORT [KEY=VALUE ...]"
    shift
    start "$@"
    ;;
stop)
    [[ $# -eq 2 ]] || die "usage: $0 stop DIR"
    stop "$2"
    ;;
*) die "usage: $0 start DIR BASE_PORT [KEY=VALUE ...] | stop DIR" ;;
esac
