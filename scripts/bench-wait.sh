#!/usr/bin/env bash
# The cost of TICKETGATE_REDIS_WAIT_REPLICAS: `flood handshake` against one node on a
# Redis primary + replica, with the wait off (0) and on (1), in alternating rounds so
# that a drift of the machine reaches both. Build first:
#   cargo build --release -j 2 -p ticketgate -p ticketgate-loadtest
# Usage: bash scripts/bench-wait.sh   (DUR=8s CONC=32 ROUNDS=3; BIN=dir of the binaries)
set -euo pipefail
BIN=$(cd "${BIN:-${CARGO_TARGET_DIR:-target}/release}" && pwd)
D=$(mktemp -d /tmp/tg-bench-wait.XXXX)
# Redis writes its replication snapshot (dump.rdb) to the working directory.
cd "$D"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port)
redis-server --port $P1 --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null 2>&1 & PIDS+=($!)
redis-server --port $P2 --bind 127.0.0.1 --save '' --appendonly no --daemonize no --replicaof 127.0.0.1 $P1 >/dev/null 2>&1 & PIDS+=($!)
sleep 1
USERS=8
for i in $(seq 0 $((USERS-1))); do
  echo -n "pw-bench-0123" | env -i PATH=$PATH TICKETGATE_USERS_FILE=$D/users.toml TICKETGATE_DATA_DIR=$D/data $BIN/ticketgate user add lt$i --password-stdin >/dev/null
done
until redis-cli -p $P2 info replication | grep -q "master_link_status:up"; do sleep 0.1; done
run_node() { # $1 = wait replicas
  NP=$(port); AP=$(port)
  env -i PATH=$PATH TICKETGATE_REDIS_URL=redis://127.0.0.1:$P1 TICKETGATE_DATA_DIR=$D/data TICKETGATE_USERS_FILE=$D/users.toml \
    TICKETGATE_LISTEN=127.0.0.1:$NP TICKETGATE_ADMIN_LISTEN=127.0.0.1:$AP TICKETGATE_STORE=memory \
    TICKETGATE_REDIS_WAIT_REPLICAS=$1 TICKETGATE_REDIS_WAIT_TIMEOUT=100ms \
    TICKETGATE_RATE_LOGIN_IP=1000000/s TICKETGATE_RATE_LOGIN_USER=1000000/s TICKETGATE_RATE_LOGIN_DEVICE=1000000/s \
    TICKETGATE_RATE_FAIL_IP=1000000/s TICKETGATE_RATE_MINT_DEVICE=1000000/s TICKETGATE_RATE_CONNECT_DEVICE=1000000/s \
    TICKETGATE_RATE_CONNECT_IP=1000000/s TICKETGATE_RATE_SESSION=1000000/s \
    TICKETGATE_MAX_HTTP_CONNECTIONS=1000000 TICKETGATE_MAX_HTTP_CONNECTIONS_PER_IP=1000000 \
    TICKETGATE_MAX_SOCKETS_PER_SESSION=1000000 TICKETGATE_MAX_SOCKETS_PER_USER=1000000 TICKETGATE_SESSIONS_PER_TYPE=1000 \
    $BIN/ticketgate serve >$D/node-$1.log 2>&1 &
  NODE=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$NP/healthz && break; sleep 0.1; done
  FLOOD_PASSWORD=pw-bench-0123 $BIN/flood handshake --target http://127.0.0.1:$NP --users-prefix lt --users $USERS \
    --duration ${DUR:-8s} --concurrency ${CONC:-32} --json $D/wait-$1-$2.json > $D/flood-$1-$2.txt 2>&1 || true
  kill $NODE; wait $NODE 2>/dev/null || true
  grep -E "^ +handshake" "$D/flood-$1-$2.txt" | awk -v w="$1" -v r="$2" '{print "round " r ", wait " w ": " $0}'
}
for round in $(seq "${ROUNDS:-3}"); do
  run_node 0 $round
  run_node 1 $round
done
echo "logs and JSON: $D"
