#!/usr/bin/env bash
# The browser end-to-end tests: headless Chromium (Debian's package, driven by playwright-core
# from npm) opens the chat page twice and chats against the release binary, over ws:// and then
# over https:// and wss:// (a throwaway certificate from examples/tls_cert.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "Chromium is missing: apt-get install chromium (as root), or set CHROMIUM=/path" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release --bin wschat
target="${CARGO_TARGET_DIR:-$PWD/target}"
WSCHAT_BIN="$target/release/wschat" node --test tests/browser/chat.e2e.mjs
tls_dir="$(mktemp -d)"
trap 'rm -rf "$tls_dir"' EXIT
cargo run --quiet --release --example tls_cert -- "$tls_dir"
WSCHAT_BIN="$target/release/wschat" TLS_DIR="$tls_dir" node --test tests/browser/tls.e2e.mjs
