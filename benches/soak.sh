#!/usr/bin/env bash
# The soak: builds wschat and the load generator (release), then runs `loadgen soak`, which starts
# wschat itself and holds 19,900 connections on it for 10 minutes under churn, chatter, a 2 s
# heartbeat and bad actors, and exits non-zero if any check fails (see README, "Soak").
#
#   benches/soak.sh                                   # the default: 10 minutes, 19,900 connections
#   benches/soak.sh --duration 1800 --svg docs/soak-rss.svg
#   benches/soak.sh --duration 60 --connections 2000 --big-room 200 --churn-rate 100 --slowloris 50
#
# Every argument goes to `loadgen soak` (`--help` lists them). The JSON report goes to stdout and,
# with the server's log and the RSS plot, to --out-dir (default /tmp/wschat-soak).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/benches/loadgen"
echo "building wschat and loadgen (release)" >&2
(cd "$ROOT" && cargo build --release --quiet --bin wschat)
CARGO_TARGET_DIR="${LOADGEN_TARGET_DIR:-$BENCH/target}" \
    cargo build --release --quiet --manifest-path "$BENCH/Cargo.toml" --bin loadgen
LOADGEN="${LOADGEN_TARGET_DIR:-$BENCH/target}/release/loadgen"
WSCHAT="${CARGO_TARGET_DIR:-$ROOT/target}/release/wschat"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
status=0
"$LOADGEN" soak --server "$WSCHAT" "$@" || status=$?
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit "$status"
