#!/usr/bin/env bash
# Runs every cargo-fuzz target for a short fixed time (FUZZ_SECONDS each, default 30), starting
# from the corpus kept in the repository (fuzz/corpus/<target>, grown and minimized by earlier runs)
# and the hand-written seeds, and fails on any crash, panic, sanitizer report or model mismatch.
# scripts/test.sh runs it on every submission.
#
#   scripts/fuzz.sh                    # every target, 30 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh   # longer, by hand
#   FUZZ_MERGE=1 scripts/fuzz.sh       # then fold what the run found into fuzz/corpus, minimized
#
# Only stable Rust is installed here: RUSTC_BOOTSTRAP=1 lets it accept the -Z flags cargo-fuzz
# passes (AddressSanitizer, coverage instrumentation).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
SECONDS_EACH=${FUZZ_SECONDS:-30}
TARGETS=(http_head chat_frame chat_session token forwarded resp)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi
# Release with debug assertions and overflow checks (cargo-fuzz's default), AddressSanitizer.
cargo fuzz build

max_len() {
    case $1 in
        http_head) echo 17408 ;;
        *) echo 4096 ;;
    esac
}

for target in "${TARGETS[@]}"; do
    corpus="fuzz/corpus/$target"
    work=$(mktemp -d "/tmp/wschat-fuzz-$target.XXXXXX")
    mkdir -p "$corpus"
    dict=()
    [[ -f fuzz/$target.dict ]] && dict=(-dict="fuzz/$target.dict")
    echo "fuzz: $target for ${SECONDS_EACH} s from $(find "$corpus" -type f | wc -l) corpus inputs"
    # New inputs go to a scratch directory first: the corpus in git changes only by a merge.
    log="$work.log"
    status=0
    cargo fuzz run "$target" "$work" "$corpus" "fuzz/seeds/$target" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 -max_len="$(max_len "$target")" \
        -seed=1 "${dict[@]}" >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+: *DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" | sed "s/^/fuzz: $target: /" || true
    if [[ $status -ne 0 ]]; then
        tail -40 "$log" >&2
        echo "fuzz: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    if [[ ${FUZZ_MERGE:-0} == 1 ]]; then
        merged=$(mktemp -d "/tmp/wschat-fuzz-merged-$target.XXXXXX")
        cargo fuzz run "$target" "$merged" "$corpus" "$work" -- -merge=1 -max_len="$(max_len "$target")" >/dev/null 2>&1
        rm -rf "$corpus" && mv "$merged" "$corpus"
        echo "fuzz: $target corpus now $(find "$corpus" -type f | wc -l) inputs"
    fi
    rm -rf "$work" "$log"
done
echo "fuzz: every target ran ${SECONDS_EACH} s without a crash"
