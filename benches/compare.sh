#!/usr/bin/env bash
# Compares wschat with the tokio baseline (current_thread and multi_thread) on this machine.
#
#   benches/compare.sh                 # the full comparison (about 7-8 minutes on 2 cores)
#   REPS=1 QUICK=1 benches/compare.sh  # a smoke run (about a minute), results in /tmp
#
# Builds everything in release mode, then for each repetition, case and server in turn: starts
# the server pinned to core $SERVER_CPU, runs the load generator pinned to core $LOADGEN_CPU,
# stops the server. Every run gets a fresh server (so memory and CPU figures are its own).
# Prints a side-by-side table (medians, min-max), checks the targets of issue 7, and writes
# docs/bench-results.json (every run, raw) and docs/bench.svg (the fanout ramp).
#
# Servers: wschat with its defaults; wschat-eager, the same binary with --max-write-delay-ms 0
# (writes at the end of every loop iteration, never paced; run in fanout-1000 only);
# wschat-cluster, two wschat nodes sharing a redis-server (--redis), the fanout's receivers spread
# over both and the publisher on the first, all three processes on the server's core, and
# wschat-redis, one node through Redis with every member on it (what the Redis hop alone costs)
# (the cluster runs in the fanout cases, wschat-redis in fanout-1000; both need redis-server; each node's CPU per delivery of its own
# members, and Redis's CPU per message, are reported apart); tokio-ct
# and tokio-mt, the tokio baseline on the current-thread and multi-thread runtimes; and, only
# when asked for (SERVERS="... node-ws", about 2.5 more minutes), node-ws, the Node.js baseline
# on the `ws` package (benches/node-ws; needs node and npm), and uws, the uWebSockets baseline on
# socketify, uWS's Python binding, with uWS's pub/sub for the rooms (benches/uws-chat; needs
# python3; benches/uws-chat/install.sh makes its venv and installs libuv1 if missing). Ratios
# compare wschat with the best of the others.
#
# TLS=1 runs the TLS comparison instead (opt-in, about 6 minutes): wschat-tls, wschat serving
# wss:// itself (--tls-cert/--tls-key, a throwaway ECDSA P-256 certificate from
# examples/tls_cert.rs); nginx-tls, plain wschat behind nginx terminating TLS with deploy/nginx.conf
# and deploy/nginx-wschat.conf (only addresses and certificate paths changed; one nginx process,
# on the server's core beside wschat, its CPU and memory added to wschat's); and plain wschat. The
# cases: tls-handshakes (5,000 connections, each in its own room: TLS handshake, upgrade, welcome),
# tls-idle-5k (5,000 idle connections in rooms of 100; 10,000 would take nginx past the 20,000
# descriptors a process may hold here), fanout-60 and fanout-1000. Also rustls alone on this
# machine (loadgen tls-handshakes, in memory), to hold the handshake rate against. Writes
# docs/bench-tls.json and prints the table with the targets of issue 15. Needs nginx.
#
# Environment: REPS (default 3), SERVERS (default "wschat wschat-eager wschat-redis wschat-cluster tokio-ct tokio-mt"), QUICK=1 (short
# windows, results under /tmp unless OUT_DIR is set), OUT_DIR (default docs/), SERVER_CPU (0),
# LOADGEN_CPU (1), WSCHAT_FLAGS (extra wschat flags), TOKIO_FLAGS (extra tokio-chat flags),
# QUIET_WAIT (seconds, over the whole run, that it may wait for other processes to go quiet
# before a measurement; default 0: it only warns, and every run records the others' CPU as noise).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/benches/loadgen"
REPS=${REPS:-3}
QUICK=${QUICK:-0}
TLS=${TLS:-0}
if [[ $TLS == 1 ]]; then
    SERVERS=${SERVERS:-"wschat wschat-tls nginx-tls"}
else
    SERVERS=${SERVERS:-"wschat wschat-eager wschat-redis wschat-cluster tokio-ct tokio-mt"}
fi
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
if [[ $QUICK == 1 ]]; then OUT_DIR=${OUT_DIR:-/tmp/wschat-bench-quick}; else OUT_DIR=${OUT_DIR:-$ROOT/docs}; fi
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d /tmp/wschat-bench.XXXXXX)
RUNS="$WORK/runs.jsonl"
: >"$RUNS"
started_at=$(date +%s)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- build -------------------------------------------------------------------------------------
log "building wschat (release)"
(cd "$ROOT" && cargo build --release --quiet --bin wschat)
log "building loadgen and tokio-chat (release)"
# LOADGEN_TARGET_DIR: where the load generator is built (default benches/loadgen/target).
BENCH_TARGET=${LOADGEN_TARGET_DIR:-$BENCH/target}
CARGO_TARGET_DIR="$BENCH_TARGET" cargo build --release --quiet --manifest-path "$BENCH/Cargo.toml"
if [[ " $SERVERS " == *" node-ws "* ]]; then
    log "installing the Node.js baseline's packages"
    (cd "$ROOT/benches/node-ws" && npm ci --no-audit --no-fund --loglevel=error)
fi
UWS_PYTHON="$ROOT/benches/uws-chat/.venv/bin/python"
if [[ " $SERVERS " == *" uws "* ]]; then
    log "installing the uWebSockets baseline (libuv1, socketify in benches/uws-chat/.venv)"
    "$ROOT/benches/uws-chat/install.sh"
fi
WSCHAT="${CARGO_TARGET_DIR:-$ROOT/target}/release/wschat"
TOKIO_CHAT="$BENCH_TARGET/release/tokio-chat"
LOADGEN="$BENCH_TARGET/release/loadgen"
if [[ $TLS == 1 ]]; then
    log "making a throwaway certificate (examples/tls_cert.rs)"
    TLS_DIR="$WORK/tls"
    (cd "$ROOT" && cargo run --release --quiet --example tls_cert -- "$TLS_DIR")
    command -v nginx >/dev/null || { log "TLS=1 needs nginx (apt-get install nginx)"; exit 1; }
    # nginx holds two descriptors per client (the client's and wschat's).
    ulimit -n "$(ulimit -Hn)"
fi

# wschat flags: no history (the baseline keeps none), no heartbeat during a run, room for 10,000
# idle connections, no rate limit (if this version has one).
wschat_flags=(--bind 127.0.0.1:0 --history 0 --log-level info --ping-interval 3600 --max-connections 15000)
if "$WSCHAT" --help | grep -q -- '--rate-limit'; then wschat_flags+=(--rate-limit 0); fi
read -r -a extra_wschat <<<"${WSCHAT_FLAGS:-}"
read -r -a extra_tokio <<<"${TOKIO_FLAGS:-}"

# --- servers -----------------------------------------------------------------------------------
SERVER_PID=""
SERVER_ADDR=""
# A cluster's other processes: the second node and Redis, and what the load generator is told of them.
CLUSTER_PIDS=()
cluster_args=()
# Waits for "listening on ADDR" in a log; prints ADDR.
listening_on() {
    local logfile=$1 pid=$2 addr
    for _ in $(seq 100); do
        addr=$(grep -a -o 'listening on [0-9.]*:[0-9]*' "$logfile" | head -1 | cut -d' ' -f3 || true)
        [[ -n $addr ]] && { echo "$addr"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    return 1
}
# $1 wschat nodes (1 or 2) sharing a fresh redis-server, all on the server's core; $2 names the logs.
start_cluster() {
    local nodes=$1 name=$2
    local port prefix="bench-$$-$RANDOM" redis_log="$WORK/redis.log" b_log="$WORK/$2-b.log"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    taskset -c "$SERVER_CPU" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        >"$redis_log" 2>&1 &
    local redis_pid=$!
    for _ in $(seq 100); do
        [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && break
        sleep 0.05
    done
    local node_flags=(--redis "redis://127.0.0.1:$port/" --redis-prefix "$prefix")
    : >"$WORK/$name.log"
    taskset -c "$SERVER_CPU" "$WSCHAT" "${wschat_flags[@]}" "${node_flags[@]}" --node-id a "${extra_wschat[@]}" \
        2>>"$WORK/$name.log" >/dev/null &
    SERVER_PID=$!
    CLUSTER_PIDS=("$redis_pid")
    SERVER_ADDR=$(listening_on "$WORK/$name.log" "$SERVER_PID") || { log "$name node a did not start"; exit 1; }
    local addrs=("$SERVER_ADDR")
    cluster_args=(--cpu-pid "redis=$redis_pid")
    if ((nodes == 2)); then
        : >"$b_log"
        taskset -c "$SERVER_CPU" "$WSCHAT" "${wschat_flags[@]}" "${node_flags[@]}" --node-id b "${extra_wschat[@]}" \
            2>>"$b_log" >/dev/null &
        local b_pid=$! b_addr
        CLUSTER_PIDS+=("$b_pid")
        b_addr=$(listening_on "$b_log" "$b_pid") || { log "$name node b did not start"; exit 1; }
        addrs+=("$b_addr")
        cluster_args+=(--also-url "ws://$b_addr/" --also-pid "$b_pid")
    fi
    # Ready once every node reaches Redis.
    for addr in "${addrs[@]}"; do
        for _ in $(seq 100); do
            curl -fs "http://$addr/healthz" >/dev/null 2>&1 && break
            sleep 0.05
        done
    done
}
# nginx terminating TLS in front of plain wschat: deploy/nginx.conf and deploy/nginx-wschat.conf as
# they are, but for the addresses (a free loopback port, no IPv6, no port 80) and the certificate.
start_nginx_tls() {
    local dir="$WORK/nginx" port redirect_port upstream=$1
    rm -rf "$dir"; mkdir -p "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redirect_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    sed -e "s|server 127.0.0.1:9001;|server $upstream;|" \
        -e "s|listen 80;|listen 127.0.0.1:$redirect_port;|" -e "s|listen 443 ssl;|listen 127.0.0.1:$port ssl;|" \
        -e '/listen \[::\]/d' \
        -e "s|/etc/ssl/wschat/fullchain.pem|$TLS_DIR/cert.pem|" -e "s|/etc/ssl/wschat/privkey.pem|$TLS_DIR/key.pem|" \
        -e "s|include /etc/nginx/snippets/wschat.conf;|include $ROOT/deploy/nginx-wschat.conf;|" \
        "$ROOT/deploy/nginx.conf" >"$dir/site.conf"
    cat >"$dir/nginx.conf" <<NGINX
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 19000;
events { worker_connections 18000; }
http {
access_log off;
client_body_temp_path $dir/client_body;
proxy_temp_path $dir/proxy;
fastcgi_temp_path $dir/fastcgi;
uwsgi_temp_path $dir/uwsgi;
scgi_temp_path $dir/scgi;
include $dir/site.conf;
}
NGINX
    # One process (no master, one worker's work), on the server's core beside wschat.
    taskset -c "$SERVER_CPU" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        -g 'daemon off; master_process off;' >"$dir/output.log" 2>&1 &
    local nginx_pid=$!
    for _ in $(seq 100); do
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$nginx_pid" 2>/dev/null || { log "nginx did not start:"; cat "$dir/error.log" "$dir/output.log" >&2; exit 1; }
        sleep 0.05
    done
    CLUSTER_PIDS=("$nginx_pid")
    SERVER_URL="wss://127.0.0.1:$port/"
    cluster_args=(--tls-ca "$TLS_DIR/ca.pem" --cpu-pid "nginx=$nginx_pid")
}
start_server() {
    local name=$1 logfile="$WORK/$1.log"
    local cmd
    cluster_args=()
    SERVER_URL=""
    case $name in
        wschat) cmd=("$WSCHAT" "${wschat_flags[@]}" "${extra_wschat[@]}") ;;
        wschat-eager) cmd=("$WSCHAT" "${wschat_flags[@]}" --max-write-delay-ms 0 "${extra_wschat[@]}") ;;
        wschat-tls) cmd=("$WSCHAT" "${wschat_flags[@]}" --tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem" "${extra_wschat[@]}") ;;
        nginx-tls) cmd=("$WSCHAT" "${wschat_flags[@]}" --trusted-proxy 127.0.0.1/32 "${extra_wschat[@]}") ;;
        wschat-redis) start_cluster 1 "$name"; return 0 ;;
        wschat-cluster) start_cluster 2 "$name"; return 0 ;;
        tokio-ct) cmd=("$TOKIO_CHAT" --bind 127.0.0.1:0 --runtime current-thread --max-connections 15000 "${extra_tokio[@]}") ;;
        tokio-mt) cmd=("$TOKIO_CHAT" --bind 127.0.0.1:0 --runtime multi-thread --max-connections 15000 "${extra_tokio[@]}") ;;
        # node cannot raise its own open-files limit; the shell does, then becomes node (same pid).
        node-ws) cmd=(bash -c 'ulimit -n "$(ulimit -Hn)" && exec node "$@"' node-ws \
            "$ROOT/benches/node-ws/server.mjs" --bind 127.0.0.1:0 --max-connections 15000) ;;
        # server.py raises its own open-files limit to the hard limit.
        uws) cmd=("$UWS_PYTHON" "$ROOT/benches/uws-chat/server.py" --bind 127.0.0.1:0 --max-connections 15000) ;;
        *) log "unknown server $name"; exit 2 ;;
    esac
    : >"$logfile"
    taskset -c "$SERVER_CPU" "${cmd[@]}" 2>>"$logfile" >/dev/null &
    SERVER_PID=$!
    if ! SERVER_ADDR=$(listening_on "$logfile" "$SERVER_PID"); then
        log "$name did not start:"; cat "$logfile" >&2; exit 1
    fi
    case $name in
        wschat-tls) SERVER_URL="wss://$SERVER_ADDR/"; cluster_args=(--tls-ca "$TLS_DIR/ca.pem") ;;
        nginx-tls) start_nginx_tls "$SERVER_ADDR" ;;
    esac
    return 0
}
stop_server() {
    local pid
    for pid in $SERVER_PID "${CLUSTER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PID=""
    CLUSTER_PIDS=()
}
trap 'stop_server; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# --- cases -------------------------------------------------------------------------------------
if [[ $QUICK == 1 ]]; then
    fixed=(--warmup 1 --duration 2 --drain-timeout 2)
    ramp=(--ramp --warmup 1 --step-warmup 0.3 --step-duration 1 --refine 1)
else
    fixed=(--warmup 1.5 --duration 4 --drain-timeout 2)
    ramp=(--ramp --warmup 1 --step-warmup 0.5 --step-duration 2 --refine 3)
fi
case_args() {
    case $1 in
        fanout-60) echo fanout --receivers 1000 --publishers 1 --rate 60 "${fixed[@]}" ;;
        fanout-300) echo fanout --receivers 1000 --publishers 1 --rate 300 "${fixed[@]}" ;;
        fanout-1000) echo fanout --receivers 1000 --publishers 1 --rate 1000 "${fixed[@]}" ;;
        fanout-ramp) echo fanout --receivers 1000 --publishers 1 "${ramp[@]}" --rates 100,200,400,800,1600,3200,6400,12800,25600,51200 ;;
        chat-100) echo chat --clients 100 --rate 500 "${fixed[@]}" ;;
        idle-10k) echo idle --connections 10000 --room-size 100 --concurrency 200 --hold 1 ;;
        tls-handshakes) echo idle --connections 5000 --room-size 1 --concurrency 200 --hold 0.5 ;;
        tls-idle-5k) echo idle --connections 5000 --room-size 100 --concurrency 200 --hold 1 ;;
    esac
}
if [[ $TLS == 1 ]]; then
    CASES=${CASES:-"tls-handshakes tls-idle-5k fanout-60 fanout-1000"}
else
    CASES=${CASES:-"fanout-60 fanout-300 fanout-1000 fanout-ramp chat-100 idle-10k"}
fi

# Busy jiffies (user, nice, system, irq, softirq) of the whole machine.
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }
QUIET_WAIT=${QUIET_WAIT:-0}
quiet_budget=$QUIET_WAIT
wait_quiet() {
    # Waits while the machine (with no server or loadgen of ours running) uses over 25% of a core.
    while ((quiet_budget > 0)); do
        local before after
        before=$(busy_ticks); sleep 0.5; after=$(busy_ticks)
        # Over half a second: 25% of a core is an eighth of a second of ticks.
        (((after - before) * 800 / $(getconf CLK_TCK) <= 100)) && return 0
        sleep 0.5
        quiet_budget=$((quiet_budget - 1))
        ((quiet_budget % 15 == 0)) && log "waiting for the machine to go quiet (${quiet_budget}s of waiting left)"
    done
    return 0
}

busy=$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 > 20 {printf "%s%s (%s%%)", sep, $2, $1; sep=", "}')
[[ -n $busy ]] && log "warning: other processes are busy and will add noise: $busy"

# wschat-eager shows what write pacing buys where it matters most; elsewhere it would only
# lengthen the run (at 60 msg/s no write is held back; the ramp's top steps are past the delay).
# The cluster is measured in the fanout cases, beside the standalone server.
runs_case() {
    case $1 in
        wschat-eager) [[ $2 == fanout-1000 ]] ;;
        wschat-tls | nginx-tls) [[ $2 == tls-* || $2 == fanout-60 || $2 == fanout-1000 ]] ;;
        wschat-redis) [[ $2 == fanout-1000 ]] ;;
        wschat-cluster) [[ $2 == fanout-* ]] ;;
        *) true ;;
    esac
}
total=0
for case_name in $CASES; do
    for server in $SERVERS; do
        if runs_case "$server" "$case_name"; then total=$((total + REPS)); fi
    done
done
n=0
for rep in $(seq "$REPS"); do
    for case_name in $CASES; do
        read -r -a args <<<"$(case_args "$case_name")"
        for server in $SERVERS; do
            runs_case "$server" "$case_name" || continue
            n=$((n + 1))
            wait_quiet
            start_server "$server"
            log "[$n/$total] rep $rep, $case_name, $server (pid $SERVER_PID, $SERVER_ADDR)"
            if ! taskset -c "$LOADGEN_CPU" "$LOADGEN" "${args[@]}" --url "${SERVER_URL:-ws://$SERVER_ADDR/}" "${cluster_args[@]}" \
                --server-pid "$SERVER_PID" --label "$server" --case "$case_name" --rep "$rep" --quiet >>"$RUNS"; then
                log "run failed: $case_name against $server (server log below)"
                tail -5 "$WORK/$server.log" >&2
            fi
            stop_server
        done
    done
done
elapsed=$(($(date +%s) - started_at))

if [[ $TLS == 1 ]]; then
    log "rustls alone on this machine (in memory, server side)"
    taskset -c "$SERVER_CPU" "$LOADGEN" tls-handshakes --cert "$TLS_DIR/cert.pem" --key "$TLS_DIR/key.pem" \
        --ca "$TLS_DIR/ca.pem" --seconds 3 >"$WORK/rustls.json"
    python3 "$ROOT/benches/tls_report.py" "$RUNS" "$WORK/rustls.json" "$OUT_DIR/bench-tls.json" \
        "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ); $(rustc --version); wschat $(git -C "$ROOT" rev-parse --short HEAD)"
    echo "runs: $total in $((elapsed / 60)) min $((elapsed % 60)) s"
    exit 0
fi

# --- report ------------------------------------------------------------------------------------
lock_version() { awk -v name="$2" '$0 == "name = \"" name "\"" {getline; gsub(/"/, "", $3); print $3; exit}' "$1"; }
json_string() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(GIT_OPTIONAL_LOCKS=0 git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    commit="$commit+uncommitted"
fi
tokio_workers=$(grep -a -o 'with [0-9]* worker' "$WORK/tokio-mt.log" 2>/dev/null | head -1 | cut -d' ' -f2 || true)
cat >"$WORK/meta.json" <<JSON
{
  "date": $(json_string "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),
  "nproc": $(nproc),
  "cpu_model": $(json_string "$cpu_model"),
  "kernel": $(json_string "$(uname -r)"),
  "rustc": $(json_string "$(rustc --version)"),
  "wschat_commit": $(json_string "$commit"),
  "reps": $REPS,
  "quick": $QUICK,
  "elapsed_secs": $elapsed,
  "busy_processes_at_start": $(json_string "$busy"),
  "versions": {
    "wschat": $(json_string "$commit"),
    "wschat mio": $(json_string "$(lock_version "$ROOT/Cargo.lock" mio)"),
    "wschat tungstenite": $(json_string "$(lock_version "$ROOT/Cargo.lock" tungstenite)"),
    "tokio": $(json_string "$(lock_version "$BENCH/Cargo.lock" tokio)"),
    "tokio-tungstenite": $(json_string "$(lock_version "$BENCH/Cargo.lock" tokio-tungstenite)"),
    "loadgen mio": $(json_string "$(lock_version "$BENCH/Cargo.lock" mio)"),
    "hdrhistogram": $(json_string "$(lock_version "$BENCH/Cargo.lock" hdrhistogram)"),
    "node": $(json_string "$(node --version 2>/dev/null || echo none)"),
    "ws (npm)": $(json_string "$(sed -n 's/.*"ws": "\(.*\)".*/\1/p' "$ROOT/benches/node-ws/package.json")"),
    "python (uws)": $(json_string "$("$UWS_PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo none)"),
    "socketify (PyPI)": $(json_string "$(sed -n 's/^socketify==//p' "$ROOT/benches/uws-chat/requirements.txt")")
  },
  "setup": $(json_string "server pinned to core $SERVER_CPU, loadgen to core $LOADGEN_CPU; wschat ${wschat_flags[*]} (wschat-eager adds --max-write-delay-ms 0); tokio-mt workers: ${tokio_workers:-?}; $REPS runs per server, medians")
}
JSON

# The plot is of the fanout ramp; a run without that case (CASES=fanout-60, say) draws none.
svg_args=()
if [[ " $CASES " == *" fanout-ramp "* ]]; then svg_args=(--svg "$OUT_DIR/bench.svg"); fi
"$LOADGEN" report --runs "$RUNS" --meta "$WORK/meta.json" --reference wschat \
    --variant wschat-eager --variant wschat-redis --variant wschat-cluster --out "$OUT_DIR/bench-results.json" "${svg_args[@]}" \
    --target fanout-60:server_cpu_us_per_delivery:ratio\<=0.8 \
    --target fanout-1000:server_cpu_us_per_delivery:ratio\<=0.8 \
    --target fanout-ramp:max_sustained_deliveries_per_sec:ratio\>=1.5 \
    --target idle-10k:rss_per_connection_bytes:value\<=1024 \
    --target idle-10k:connections_per_sec:ratio\>=1.0 \
    --target fanout-1000:server_cpu_us_per_delivery:wschat-redis/wschat\<=1.2 \
    --target fanout-60:server_cpu_us_per_delivery:wschat-cluster/wschat\<=1.2 \
    --target fanout-1000:server_cpu_us_per_delivery:wschat-cluster/wschat\<=1.2 \
    --target fanout-60:server_cpu_us_per_delivery:wschat/uws\<=1.0 \
    --target fanout-300:server_cpu_us_per_delivery:wschat/uws\<=0.6 \
    --target idle-10k:rss_per_connection_bytes:wschat/uws\<=1.0
echo
echo "machine: $(nproc) cores, $cpu_model; $(date -u +%Y-%m-%d); $(rustc --version); wschat $commit"
echo "runs: $total in $((elapsed / 60)) min $((elapsed % 60)) s (plus the report)"
