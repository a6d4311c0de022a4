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

# The browser client's unit tests and the pages' browser tests (tests/browser): Node,
# and Debian's Chromium driven by playwright-core. No browser is ever downloaded.
install_debian() {
    echo "==> $1 not found: installing $2 from Debian's packages"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}
command -v node >/dev/null 2>&1 || install_debian node "nodejs npm"
command -v npm >/dev/null 2>&1 || install_debian npm npm
command -v chromium >/dev/null 2>&1 || install_debian chromium chromium
command -v chromium >/dev/null 2>&1 || { echo "chromium is still missing: apt-get install -y chromium" >&2; exit 1; }
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
    echo "Node $node_major is too old for the browser tests: Node 20 or newer is needed" >&2
    exit 1
fi
echo "==> node $(node --version), $(chromium --version 2>/dev/null | head -n 1)"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
echo "==> client-sdk/js: npm ci && npm test"
(cd client-sdk/js && npm ci --no-audit --no-fund --loglevel=error && npm test)
echo "==> tests/browser: npm ci && npm test"
# The browser tests run the binary `cargo test` just built. Ask for it the same way
# (a no-op when it is there): a plain `cargo build --bin ticketgate` resolves features
# without the dev-dependencies and would rebuild half the dependency tree.
cargo test -j "$jobs" --workspace --no-run --quiet
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && npm test)
