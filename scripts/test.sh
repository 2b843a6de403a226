#!/usr/bin/env bash
# The one command that checks everything: formatting, lints, unit and integration tests, the
# deployment files, the Autobahn conformance suite (ws:// and wss://) and the browser end-to-end
# tests. It installs
# what is missing, so a fresh machine needs nothing else (as root, for the Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "formatting"
cargo fmt --check

step "lints"
cargo clippy --all-targets -- -D warnings

step "packages for tests/proxies.rs (nginx, Caddy), tests/cluster.rs (Redis) and the unit check (systemd-analyze)"
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v caddy >/dev/null || missing+=(caddy)
# Debian's redis-server brings redis-cli with it (redis-tools), for looking at a test's Redis by hand.
command -v redis-server >/dev/null || missing+=(redis-server)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

step "unit and integration tests"
# tests/metrics.rs reads /metrics with the Prometheus client library's own parser.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    python3 -m pip install --quiet prometheus-client
fi
# tests/tls.rs chats over wss:// with Python's ssl module and the websockets package.
if ! python3 -c 'import websockets.sync.client' 2>/dev/null; then
    python3 -m pip install --quiet websockets
fi
cargo test --release

step "fuzzing: every cargo-fuzz target for 30 s from the corpus in fuzz/corpus"
scripts/fuzz.sh

step "deployment files: systemd units, nginx's TLS site, the Caddyfile (deploy/)"
scripts/verify-deploy.sh

step "no async runtime in the server's dependency tree"
if cargo tree -e normal --prefix none | grep -Eq '^(tokio|async-std|smol|futures-executor) '; then
    echo "an async runtime is in the normal dependency tree" >&2
    exit 1
fi

step "benchmark tools: the load generator and the tokio, Node and uWebSockets baselines speak the protocol"
cargo build --release --bin wschat
(cd benches/node-ws && npm ci --no-audit --no-fund --loglevel=error)
# libuv1 (apt-get) and socketify in benches/uws-chat/.venv, where tests/protocol.rs looks for it.
benches/uws-chat/install.sh
cargo test --release --manifest-path benches/loadgen/Cargo.toml

step "RFC 6455 conformance (Autobahn fuzzing client against examples/echo)"
scripts/autobahn.sh

step "the same over wss:// (examples/echo with --tls-cert and --tls-key), the same result required"
AUTOBAHN_TLS=1 scripts/autobahn.sh

step "browser end-to-end test"
scripts/browser-test.sh
