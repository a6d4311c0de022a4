#!/usr/bin/env bash
# A deployment of several nodes on this machine, to look at and to try things on:
#   - a Redis Cluster: 3 primaries + 3 replicas (redis-server, `redis-cli --cluster create`),
#   - three ticketgate nodes on it that share one data dir (so one server secret),
#   - HAProxy in front (HTTP and WebSocket, round robin, no sticky sessions, health
#     check on /readyz).
# Everything listens on 127.0.0.1 only. It prints the URLs, then runs until Ctrl-C; on
# any exit it stops every process it started.
#
#   scripts/local-cluster.sh            start, print the URLs, wait for Ctrl-C
#   scripts/local-cluster.sh --check    start, check /readyz, log in + mint + connect
#                                       20 times through HAProxy (flood handshake), stop
#
# Settings (environment): LOCAL_CLUSTER_REDIS_PORT (first Redis port, default 7100; the
# six nodes take it and the next five, and their cluster bus ports are +10000, so it must
# stay below 55530), LOCAL_CLUSTER_PORT (HAProxy, default 8180; the nodes take the next
# three, their admin APIs 9181..9183), LOCAL_CLUSTER_DIR (default: a new temp dir, removed
# at exit), TICKETGATE_BIN (default: target/release/ticketgate, built when missing), FLOOD_BIN
# (--check; default: flood next to ticketgate).
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
case "${1:-}" in
    --check) check=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

redis_port="${LOCAL_CLUSTER_REDIS_PORT:-7100}"
public_port="${LOCAL_CLUSTER_PORT:-8180}"
admin_first=9181
if [ "$redis_port" -gt 55529 ]; then
    echo "LOCAL_CLUSTER_REDIS_PORT must be below 55530 (cluster bus ports are port + 10000)" >&2
    exit 2
fi

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "$1 not found: $2" >&2
        exit 1
    fi
}
need redis-server "install it with: apt-get install redis-server"
need redis-cli "install it with: apt-get install redis-tools"
need curl "install it with: apt-get install curl"
if ! command -v haproxy >/dev/null 2>&1; then
    echo "==> haproxy not found: installing Debian's package (apt-get install haproxy)"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq haproxy >/dev/null; }; then
        echo "could not install haproxy: install it yourself (apt-get install haproxy) and run this again" >&2
        exit 1
    fi
fi

bin="${TICKETGATE_BIN:-target/release/ticketgate}"
if [ ! -x "$bin" ]; then
    echo "==> $bin not found: building it (cargo build --release -p ticketgate)"
    cargo build --release -j "${CARGO_BUILD_JOBS:-2}" -p ticketgate
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

if [ -n "${LOCAL_CLUSTER_DIR:-}" ]; then
    dir="$LOCAL_CLUSTER_DIR"
    mkdir -p "$dir"
    keep_dir=1
else
    dir="$(mktemp -d -t ticketgate-cluster.XXXXXX)"
    keep_dir=0
fi

pids=()
stop_all() {
    trap - EXIT INT TERM
    if [ "${#pids[@]}" -gt 0 ]; then
        echo "==> stopping ${#pids[@]} processes"
        kill "${pids[@]}" 2>/dev/null || true
        # Nodes drain their sockets (up to their shutdown grace), then exit.
        for pid in "${pids[@]}"; do
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        done
        wait 2>/dev/null || true
    fi
    if [ "$keep_dir" = 0 ]; then rm -rf "$dir"; fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_for() { # what, command...
    local what="$1"
    shift
    for _ in $(seq 1 200); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "$what did not come up; logs are in $dir" >&2
    keep_dir=1
    exit 1
}

# 1. Redis Cluster: six servers, then `--cluster create` with one replica per primary.
echo "==> Redis Cluster on 127.0.0.1:$redis_port..$((redis_port + 5)) (work dir $dir)"
redis_nodes=()
for i in 0 1 2 3 4 5; do
    port=$((redis_port + i))
    mkdir -p "$dir/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$dir/redis-$port/nodes.conf" --cluster-node-timeout 5000 \
        --save "" --appendonly no --dir "$dir/redis-$port" \
        --logfile "$dir/redis-$port/redis.log" --daemonize no &
    pids+=("$!")
    redis_nodes+=("127.0.0.1:$port")
done
for node in "${redis_nodes[@]}"; do
    wait_for "redis-server $node" redis-cli -h 127.0.0.1 -p "${node##*:}" ping
done
redis-cli --cluster create "${redis_nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/cluster-create.log" 2>&1 || {
    echo "redis-cli --cluster create failed:" >&2
    cat "$dir/cluster-create.log" >&2
    exit 1
}
cluster_ok() {
    for node in "${redis_nodes[@]}"; do
        redis-cli -h 127.0.0.1 -p "${node##*:}" cluster info | grep -q '^cluster_state:ok' || return 1
    done
}
wait_for "the Redis Cluster (cluster_state:ok)" cluster_ok
redis_url="redis-cluster://127.0.0.1:$redis_port?node=127.0.0.1:$((redis_port + 1))&node=127.0.0.1:$((redis_port + 2))"

# 2. Three ticketgate nodes, one data dir (one server secret) and one users file.
admin_key="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
password="${LOCAL_CLUSTER_PASSWORD:-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
export TICKETGATE_USERS_FILE="$dir/users.toml"
printf '%s' "$password" | "$bin" user add alice --password-stdin >/dev/null
start_node() { # n
    local n="$1"
    TICKETGATE_NODE_ID="node-$n" \
        TICKETGATE_LISTEN="127.0.0.1:$((public_port + n))" \
        TICKETGATE_ADMIN_LISTEN="127.0.0.1:$((admin_first + n - 1))" \
        TICKETGATE_ADMIN_KEY="$admin_key" \
        TICKETGATE_REDIS_URL="$redis_url" \
        TICKETGATE_DATA_DIR="$dir/data" \
        TICKETGATE_TRUSTED_PROXIES="127.0.0.1/32" \
        "$bin" serve >"$dir/node-$n.log" 2>&1 &
    pids+=("$!")
}
# The first node creates the secrets in the data dir; the others start once it is up.
start_node 1
wait_for "node-1" curl -fsS "http://127.0.0.1:$((public_port + 1))/readyz"
start_node 2
start_node 3
for n in 2 3; do
    wait_for "node-$n" curl -fsS "http://127.0.0.1:$((public_port + n))/readyz"
done

# 3. HAProxy: round robin, no stickiness, /readyz as the health check; WebSockets pass
#    through (tunnel timeout), X-Forwarded-For added (the nodes trust 127.0.0.1).
# Each proxied connection holds two descriptors: stay within this shell's limit.
maxconn=$(( ($(ulimit -n) - 100) / 2 ))
if [ "$maxconn" -gt 20000 ]; then maxconn=20000; fi
cat >"$dir/haproxy.cfg" <<EOF
global
    maxconn $maxconn
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option forwardfor
frontend public
    bind 127.0.0.1:$public_port
    default_backend ticketgate
backend ticketgate
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    server node-1 127.0.0.1:$((public_port + 1)) check inter 1s fall 2 rise 2
    server node-2 127.0.0.1:$((public_port + 2)) check inter 1s fall 2 rise 2
    server node-3 127.0.0.1:$((public_port + 3)) check inter 1s fall 2 rise 2
EOF
haproxy -f "$dir/haproxy.cfg" -db >"$dir/haproxy.log" 2>&1 &
pids+=("$!")
wait_for "HAProxy" curl -fsS "http://127.0.0.1:$public_port/readyz"

cat <<EOF

ticketgate, three nodes on a Redis Cluster, behind HAProxy:

  public (HAProxy)   http://127.0.0.1:$public_port       ws://127.0.0.1:$public_port/v1/connect
  node-1             http://127.0.0.1:$((public_port + 1))   admin http://127.0.0.1:$admin_first
  node-2             http://127.0.0.1:$((public_port + 2))   admin http://127.0.0.1:$((admin_first + 1))
  node-3             http://127.0.0.1:$((public_port + 3))   admin http://127.0.0.1:$((admin_first + 2))
  Redis Cluster      $redis_url
  admin key          $admin_key
  user               alice / $password   (add more: TICKETGATE_USERS_FILE=$dir/users.toml $bin user add NAME --password-stdin)
  logs               $dir

EOF

if [ "$check" = 1 ]; then
    echo "==> check: /readyz through HAProxy, three times (round robin)"
    for _ in 1 2 3; do curl -fsS "http://127.0.0.1:$public_port/readyz" >/dev/null; done
    echo "==> check: log in, then mint + connect + welcome 20 times through HAProxy (flood handshake)"
    flood="${FLOOD_BIN:-$(dirname "$bin")/flood}"
    if [ ! -x "$flood" ]; then
        echo "$flood not found: build it with cargo build --release -p ticketgate-loadtest" >&2
        exit 1
    fi
    printf '%s' "$password" | "$bin" user add check0 --password-stdin >/dev/null
    sleep 2 # the nodes reload the users file
    FLOOD_PASSWORD="$password" "$flood" handshake --target "http://127.0.0.1:$public_port" \
        --users-prefix check --users 1 --concurrency 1 --max-ops 20 --duration 10s \
        --json "$dir/check.json" >"$dir/check.txt" 2>&1 || { cat "$dir/check.txt" >&2; exit 1; }
    ok="$(grep -o '"ok": *[0-9]*' "$dir/check.json" | head -1 | grep -o '[0-9]*$')"
    if [ "$ok" != 20 ]; then
        echo "check failed: $ok of 20 handshakes succeeded through HAProxy" >&2
        cat "$dir/check.txt" >&2
        exit 1
    fi
    echo "    20 of 20 handshakes (tickets minted on one node, admitted on whichever HAProxy chose)"
    echo "==> check: the nodes' admin APIs answer"
    for n in 0 1 2; do
        curl -fsS "http://127.0.0.1:$((admin_first + n))/metrics" -H "Authorization: Bearer $admin_key" >/dev/null
    done
    echo "==> check passed"
    exit 0
fi

echo "Ctrl-C stops everything."
wait
