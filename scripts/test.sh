#!/usr/bin/env bash
# Runs every check and test of the workspace. Installs what is missing first
# (redis-server from Debian's packages), so a fresh machine needs nothing else.
# The tests start their own redis-server processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> redis-server not found: installing it from Debian's packages"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi
# The Cluster fixture (tests/support/cluster.rs) forms its cluster with redis-cli.
# Debian's redis-server depends on redis-tools, which has it; this covers a
# redis-server that came from elsewhere.
if ! command -v redis-cli >/dev/null 2>&1; then
    echo "==> redis-cli not found: installing redis-tools from Debian's packages"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-tools >/dev/null
fi
command -v redis-server >/dev/null 2>&1 || { echo "redis-server is still missing" >&2; exit 1; }
command -v redis-cli >/dev/null 2>&1 || { echo "redis-cli is still missing" >&2; exit 1; }
echo "==> $(redis-server --version)"

jobs="${CARGO_BUILD_JOBS:-2}"
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy -j "$jobs" --workspace --all-targets -- -D warnings
echo "==> cargo test"
cargo test -j "$jobs" --workspace
