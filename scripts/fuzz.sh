#!/usr/bin/env bash
# Fuzz the parsers for a bounded time each, with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [SECONDS per target, default 60] [TARGET ...]
#
# Targets live in fuzz/fuzz_targets (command, address, data, reply,
# envelope); fuzz/seeds/TARGET starts each corpus, fuzz/corpus/TARGET keeps
# what the runs found (not committed). Installs cargo-fuzz when missing.
# cargo-fuzz needs nightly -Z flags (sanitizers); on a stable toolchain
# RUSTC_BOOTSTRAP=1 allows them. Exits non-zero if any target crashed;
# the crashing input is in fuzz/artifacts/TARGET/ and its log next to it.
set -uo pipefail

secs="${1:-60}"
shift || true
case "$secs" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS per target] [TARGET ...]" >&2
    exit 64
    ;;
esac
cd "$(dirname "$0")/.."
root="$(pwd)"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked || exit 1
fi
export RUSTC_BOOTSTRAP=1

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build || exit 1

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus="$root/fuzz/corpus/$t"
    mkdir -p "$corpus" "$root/fuzz/artifacts/$t"
    log="$root/fuzz/artifacts/$t/run.log"
    seeds=()
    [ -d "$root/fuzz/seeds/$t" ] && seeds=("$root/fuzz/seeds/$t")
    echo "== $t: ${secs}s"
    cargo fuzz run "$t" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$secs" -dict="$root/fuzz/dict/smtp.dict" \
        -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1
    rc=$?
    execs=$(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        summary+=("$t: CRASH after ${execs:-?} executions (log $log)")
        grep -a -E '^(thread|==[0-9]+==|SUMMARY|Test unit written|Base64)' "$log" | head -20
    else
        summary+=("$t: ok, ${execs:-?} executions in ${secs}s")
    fi
done
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
