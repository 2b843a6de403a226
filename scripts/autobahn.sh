#!/usr/bin/env bash
# RFC 6455 conformance: run the Autobahn|Testsuite fuzzing client against
# wschat's echo example and fail unless every case passes.
#
#   scripts/autobahn.sh                      build + start examples/echo, test it
#   AUTOBAHN_SERVER=127.0.0.1:9001 scripts/autobahn.sh
#                                            test an already running server instead
#
# Environment:
#   AUTOBAHN_SERVER=host:port       test this server; build and start nothing
#   AUTOBAHN_RUNNER=auto|wstest|kosoku
#                                   auto (default): wstest (the real Autobahn,
#                                   Python 2.7) when Python 2.7 is available,
#                                   else kosoku (Python 3 runner of the same cases)
#   AUTOBAHN_EXPECT_REFERENCE=1|0   1 (default): also require tungstenite 0.30's
#                                   exact NON-STRICT/INFORMATIONAL sets
#   AUTOBAHN_TIMEOUT=600            seconds before the test run is abandoned
#   AUTOBAHN_TLS=1                  over wss://: the echo example serves TLS with a throwaway
#                                   certificate (examples/tls_cert.rs), and the same result as
#                                   plain ws:// is required (wstest only)
#
# Everything downloaded or installed lives in .cache/autobahn/ (git-ignored),
# so only the first run installs (wstest: 30-75 s); a run takes 15-25 s.
# Reports: .cache/autobahn/reports/<runner>/index.html (<runner>-wss/ over TLS)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$REPO_ROOT/.cache/autobahn"
WSTEST_VENV="$CACHE/wstest-venv"        # Python 2.7: autobahntestsuite
BOOTSTRAP_VENV="$CACHE/virtualenv-venv" # Python 3: the virtualenv that makes it
KOSOKU_VENV="$CACHE/kosoku-venv"        # Python 3: kosoku
CHECKER="$REPO_ROOT/scripts/autobahn_check.py"

AUTOBAHNTESTSUITE_VERSION=25.10.1
KOSOKU_VERSION=0.1.0
# Number of cases each runner executes; a report with fewer was cut short.
WSTEST_CASES=517 # all of them, 12.*/13.* included
KOSOKU_CASES=301 # 12.*/13.* excluded

RUNNER="${AUTOBAHN_RUNNER:-auto}"
SERVER="${AUTOBAHN_SERVER:-}"
SERVER="${SERVER#ws://}" # accept ws://host:port too
SERVER="${SERVER#wss://}"
SERVER="${SERVER%/}"
EXPECT_REFERENCE="${AUTOBAHN_EXPECT_REFERENCE:-1}"
TLS="${AUTOBAHN_TLS:-0}"
SCHEME=ws
[[ "$TLS" == 1 ]] && SCHEME=wss
RUN_TIMEOUT="${AUTOBAHN_TIMEOUT:-600}"
SERVER_START_TIMEOUT=60

# Keep pip's and virtualenv's download caches inside .cache/autobahn too.
export PIP_CACHE_DIR="$CACHE/pip-cache"
export VIRTUALENV_OVERRIDE_APP_DATA="$CACHE/virtualenv-app-data"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_PYTHON_VERSION_WARNING=1

log() { printf 'autobahn: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
  "") ;;
  *)
    usage >&2
    exit 2
    ;;
esac

command -v python3 >/dev/null || die "python3 is required"

# --- installation -----------------------------------------------------------

# The tools are started through their venv's python rather than by their
# shebang lines, which hold absolute paths and break if the repo is moved.
WSTEST=("$WSTEST_VENV/bin/python" "$WSTEST_VENV/bin/wstest")
KOSOKU=("$KOSOKU_VENV/bin/python" "$KOSOKU_VENV/bin/kosoku")

# "Installed" means: it starts and is the pinned version (else reinstall).
wstest_works() {
  [[ -f "$WSTEST_VENV/bin/wstest" ]] &&
    "${WSTEST[@]}" --autobahnversion 2>/dev/null | grep -qx "AutobahnTestSuite $AUTOBAHNTESTSUITE_VERSION"
}

kosoku_works() {
  [[ -f "$KOSOKU_VENV/bin/kosoku" ]] && "${KOSOKU[@]}" --help >/dev/null 2>&1 &&
    "$KOSOKU_VENV/bin/python" -c 'import sys, importlib.metadata as m; sys.exit(m.version("kosoku") != sys.argv[1])' \
      "$KOSOKU_VERSION" 2>/dev/null
}

# Autobahn|Testsuite only runs on Python 2.7. Debian 12 ships none, but pyenv
# may have built one.
find_python27() {
  local root candidate
  if command -v pyenv >/dev/null 2>&1; then
    root="$(pyenv root)"
  else
    root="${PYENV_ROOT:-$HOME/.pyenv}"
  fi
  for candidate in "$root/versions/2.7.18/bin/python2.7" "$root"/versions/2.7.*/bin/python2.7 \
    "$(command -v python2.7 || true)"; do
    if [[ -n "$candidate" && -x "$candidate" ]] &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

# The pin set that is known to install and work; CI has shared/ beside the
# clone, a copy is committed as the fallback.
find_constraints() {
  local candidate
  for candidate in "$REPO_ROOT/../shared/conformance/wstest-constraints.txt" \
    "$REPO_ROOT/scripts/wstest-constraints.txt"; do
    if [[ -f "$candidate" ]]; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

# Every step ends in `|| return 1`: these functions are called from `if`,
# where bash suspends `set -e`.
install_wstest() {
  local py27 constraints start=$SECONDS
  py27="$(find_python27)" || {
    log "no Python 2.7 found (looked in pyenv's versions/2.7.* and PATH)"
    return 1
  }
  constraints="$(find_constraints)" || {
    log "wstest-constraints.txt not found"
    return 1
  }
  log "installing wstest $AUTOBAHNTESTSUITE_VERSION with $py27 (30-75 s, first run only)"
  rm -rf "$WSTEST_VENV" "$BOOTSTRAP_VENV"
  mkdir -p "$CACHE" || return 1
  # virtualenv 20.22 dropped support for creating Python 2.7 environments.
  python3 -m venv "$BOOTSTRAP_VENV" || return 1
  "$BOOTSTRAP_VENV/bin/pip" install --quiet 'virtualenv<20.22' || return 1
  "$BOOTSTRAP_VENV/bin/virtualenv" --quiet --python "$py27" "$WSTEST_VENV" || return 1
  "$WSTEST_VENV/bin/pip" install --quiet -c "$constraints" \
    "autobahntestsuite==$AUTOBAHNTESTSUITE_VERSION" || return 1
  wstest_works || {
    log "wstest installed but does not start"
    return 1
  }
  log "wstest installed in $((SECONDS - start)) s"
}

install_kosoku() {
  local start=$SECONDS
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    log "kosoku needs Python >= 3.10"
    return 1
  }
  log "installing kosoku $KOSOKU_VERSION"
  rm -rf "$KOSOKU_VENV"
  mkdir -p "$CACHE" || return 1
  python3 -m venv "$KOSOKU_VENV" || return 1
  "$KOSOKU_VENV/bin/pip" install --quiet "kosoku==$KOSOKU_VERSION" || return 1
  kosoku_works || {
    log "kosoku installed but does not start"
    return 1
  }
  log "kosoku installed in $((SECONDS - start)) s"
}

ensure_wstest() { wstest_works || install_wstest; }
ensure_kosoku() { kosoku_works || install_kosoku; }

case "$RUNNER" in
  wstest) ensure_wstest || die "could not set up wstest (AUTOBAHN_RUNNER=wstest)" ;;
  kosoku) ensure_kosoku || die "could not set up kosoku (AUTOBAHN_RUNNER=kosoku)" ;;
  auto)
    if ensure_wstest; then
      RUNNER=wstest
    else
      # kosoku runs Autobahn's own cases, but it is the less strict judge:
      # 0.1.0 passed a server that leaves TCP open after answering an invalid
      # close frame (7.3.2, 7.3.6, 7.5.1), which wstest fails. Prefer wstest.
      log "wstest unavailable; falling back to kosoku (same cases, Python 3; skips 12.*/13.*)"
      ensure_kosoku || die "could not set up kosoku either"
      RUNNER=kosoku
    fi
    ;;
  *) die "AUTOBAHN_RUNNER must be auto, wstest or kosoku (got '$RUNNER')" ;;
esac

# --- the server under test ----------------------------------------------------

SERVER_PID=""
SERVER_LOG="$CACHE/echo-server.log"

stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n "$SERVER" ]]; then
  log "testing the running server at $SERVER (AUTOBAHN_SERVER)"
else
  log "building examples/echo (release)"
  # Ask cargo where the binary is (honours CARGO_TARGET_DIR and the like) and
  # run it directly, so that the PID we stop is the server's own.
  echo_bin="$(
    cd "$REPO_ROOT" &&
      cargo build --release --example echo --message-format=json-render-diagnostics |
      python3 -c '
import json, sys
exe = ""
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "echo" and msg.get("executable"):
        exe = msg["executable"]
print(exe)'
  )"
  [[ -n "$echo_bin" && -x "$echo_bin" ]] || die "cargo build produced no echo example binary"

  # Port 0: the kernel picks a free port, the server logs which one it got.
  mkdir -p "$CACHE"
  tls_flags=()
  if [[ "$TLS" == 1 ]]; then
    log "making a throwaway certificate (examples/tls_cert.rs)"
    (cd "$REPO_ROOT" && cargo run --quiet --release --example tls_cert -- "$CACHE/tls") ||
      die "could not make a certificate"
    tls_flags=(--tls-cert "$CACHE/tls/cert.pem" --tls-key "$CACHE/tls/key.pem")
  fi
  NO_COLOR=1 RUST_LOG="${RUST_LOG:-info}" "$echo_bin" --bind 127.0.0.1:0 "${tls_flags[@]}" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  port=""
  deadline=$((SECONDS + SERVER_START_TIMEOUT))
  while [[ -z "$port" ]]; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      tail -n 20 "$SERVER_LOG" >&2 || true
      die "echo server exited before it was listening (log: $SERVER_LOG)"
    fi
    ((SECONDS < deadline)) || die "no 'listening on 127.0.0.1:PORT' line from the echo server within ${SERVER_START_TIMEOUT} s (log: $SERVER_LOG)"
    # Strip colour codes in case the logger adds them despite NO_COLOR.
    port="$(sed -E 's/\x1b\[[0-9;]*m//g' "$SERVER_LOG" |
      grep -oE 'listening on (ws://)?127\.0\.0\.1:[0-9]+' | head -n 1 | grep -oE '[0-9]+$' || true)"
    [[ -n "$port" ]] || sleep 0.1
  done
  SERVER="127.0.0.1:$port"
  log "echo server (pid $SERVER_PID) listening on $SERVER"
fi

# --- run the suite ----------------------------------------------------------

REPORT_DIR="$CACHE/reports/$RUNNER"
[[ "$TLS" != 1 ]] || REPORT_DIR="$CACHE/reports/$RUNNER-wss"
# A stale index.json from an earlier run must never pass for this one.
rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"

runner_rc=0
run_start=$SECONDS
case "$RUNNER" in
  wstest)
    expected_cases=$WSTEST_CASES
    config="$CACHE/fuzzingclient.json"
    # All cases, 12.*/13.* included: they report UNIMPLEMENTED (no
    # permessage-deflate), which the checker allows for those two groups only.
    # failByDrop true (wstest's default, spelled out): dropping TCP without a
    # closing handshake where one is due fails the case.
    cat >"$config" <<EOF
{
  "options": {"failByDrop": true},
  "outdir": "$REPORT_DIR",
  "servers": [{"agent": "wschat", "url": "$SCHEME://$SERVER"}],
  "cases": ["*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
    log "running wstest fuzzingclient against $SCHEME://$SERVER (15-25 s)"
    (cd "$CACHE" && timeout --foreground --kill-after=10 "$RUN_TIMEOUT" \
      "${WSTEST[@]}" -m fuzzingclient -s "$config") >"$CACHE/wstest.log" 2>&1 ||
      runner_rc=$?
    ;;
  kosoku)
    [[ "$TLS" != 1 ]] || die "AUTOBAHN_TLS=1 needs wstest (kosoku speaks ws:// only)"
    expected_cases=$KOSOKU_CASES
    # 12.*/13.* (permessage-deflate, which we don't offer) are left out. Its
    # -s config-file option is not implemented yet: selection is by flags.
    log "running kosoku fuzzingclient against $SERVER (10-20 s)"
    timeout --foreground --kill-after=10 "$RUN_TIMEOUT" \
      "${KOSOKU[@]}" -m fuzzingclient -x '12.*' -x '13.*' -o "$REPORT_DIR" "$SERVER" \
      >"$CACHE/kosoku.log" 2>&1 || runner_rc=$?
    ;;
esac
log "$RUNNER finished in $((SECONDS - run_start)) s (exit $runner_rc; log: $CACHE/$RUNNER.log)"

server_died=0
if [[ -n "$SERVER_PID" ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
  server_died=1
fi
stop_server

# --- verdict ----------------------------------------------------------------

status=0
has_results=0
grep -qs '"behavior"' "$REPORT_DIR/index.json" && has_results=1
if ((server_died)); then
  tail -n 20 "$SERVER_LOG" >&2 || true
  log "error: the echo server exited during the run (log: $SERVER_LOG)"
  status=1
fi
if ((runner_rc != 0)); then
  # kosoku exits 1 when some case failed (the checker lists them below);
  # anything else (124: timeout, a crash) or no report at all is shown here.
  if [[ "$RUNNER" != kosoku || $runner_rc != 1 ]] || ((!has_results)); then
    tail -n 20 "$CACHE/$RUNNER.log" >&2 || true
  fi
  log "error: $RUNNER exited with status $runner_rc"
  status=1
elif ((!has_results)); then
  # No case ran; the runner's log says why (e.g. wstest's "Connection ... refused").
  log "no results; last lines of $CACHE/$RUNNER.log:"
  tail -n 5 "$CACHE/$RUNNER.log" >&2 || true
  echo >&2
fi
[[ ! -f "$REPORT_DIR/index.html" ]] || log "HTML report: $REPORT_DIR/index.html"

# wstest exits 0 whatever happened, so the report itself is judged, by the
# checker; its summary ends with the "N passed, N failed" line.
check_args=(--expect-cases "$expected_cases")
[[ "$EXPECT_REFERENCE" == 0 ]] || check_args+=(--expect-reference)
python3 "$CHECKER" "${check_args[@]}" "$REPORT_DIR" || status=1
exit "$status"
