#!/usr/bin/env bash
# Runs every example with `rsp` and checks its output, so the examples keep
# working (the test suite runs this: crates/rsp/tests/host_cli.rs).
#
#   examples/run_examples.sh               # uses $RSP, else `rsp` on PATH, else builds it
#   RSP=target/release/rsp examples/run_examples.sh
#
# Network use: loopback (127.0.0.1) only.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${RSP:-}" ]]; then
    if command -v rsp >/dev/null 2>&1; then
        RSP=rsp
    else
        (cd "$here/.." && cargo build --quiet -p rsp)
        RSP="${CARGO_TARGET_DIR:-$here/../target}/debug/rsp"
    fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

step() {
    echo "== $*" >&2
}

# 1. Basic parallel processing: the squares of 1..100, 10 at a time.
step "squares"
"$RSP" run "$here/squares.luau" --range 1..100 --throttle 10 --ordered --format values --no-summary >"$work/squares"
[[ "$(wc -l <"$work/squares")" -eq 100 ]] || fail "squares: expected 100 lines"
[[ "$(head -n 1 "$work/squares")" == 1 && "$(tail -n 1 "$work/squares")" == 10000 ]] || fail "squares: wrong values"
sum=0
while read -r n; do sum=$((sum + n)); done <"$work/squares"
[[ "$sum" -eq 338350 ]] || fail "squares: sum is $sum, expected 338350"

# 2. Network scanning, as a script: ports 1..1024 of 127.0.0.1.
step "port sweep of 127.0.0.1"
"$RSP" run "$here/port_sweep.luau" --range 1..1024 --allow net --throttle 64 --param host=127.0.0.1 \
    --format values --no-summary >"$work/sweep"
[[ "$(wc -l <"$work/sweep")" -eq 1024 ]] || fail "port sweep: expected 1024 records"
if grep -v -E '"state":"(open|closed|filtered)"' "$work/sweep" >&2; then
    fail "port sweep: a record without a port state"
fi
echo "open ports on 127.0.0.1 (1-1024): $(grep -c '"state":"open"' "$work/sweep" || true)" >&2

# Without the grant, the script is refused with the flag to use.
if "$RSP" run "$here/port_sweep.luau" --range 1..1 --no-summary --format values 2>"$work/refused" >/dev/null; then
    fail "port sweep without --allow net should fail"
fi
grep -q -- "--allow net" "$work/refused" || fail "port sweep: the refusal does not name --allow net"

# 3. Background job management: the original's three jobs.
step "job: sleep"
out="$("$RSP" run "$here/jobs/sleep.luau" --range 1..1 --param seconds=0.2 --format values --no-summary)"
[[ "$out" == "Slept for 0.2 seconds" ]] || fail "sleep job: got '$out'"

step "job: processes by CPU time"
out="$("$RSP" run "$here/jobs/busy_processes.luau" --range 1..1 --allow proc --param threshold=0 \
    --format values --no-summary)"
[[ "$out" == '['*'"name":'* ]] || fail "process job: got '$out'"

step "job: directory size"
mkdir -p "$work/tree/a/b"
printf '%0100d' 0 >"$work/tree/one"
printf '%0250d' 0 >"$work/tree/a/two"
printf '%0650d' 0 >"$work/tree/a/b/three"
out="$("$RSP" run "$here/jobs/dir_size.luau" --range 1..1 --allow "fs:$work/tree" --param "path=$work/tree" \
    --format values --no-summary)"
[[ "$out" == *'"bytes":1000'* && "$out" == *'"files":3'* && "$out" == *'"largest":650'* ]] ||
    fail "directory size job: got '$out'"
# Granted a different directory, the job is refused.
if "$RSP" run "$here/jobs/dir_size.luau" --range 1..1 --allow "fs:$work/tree/a" --param "path=$work/tree" \
    --format values --no-summary 2>"$work/refused" >/dev/null; then
    fail "directory size job outside its grant should fail"
fi
grep -q "outside the paths granted" "$work/refused" || fail "directory size job: wrong refusal"

# 4. Batch processing, scaled down: 200 items that each sleep 10 ms, 20 at a time.
step "batch"
start=$(date +%s%N)
"$RSP" run "$here/batch.luau" --range 1..200 --throttle 20 --format values --no-summary >"$work/batch"
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
[[ "$(wc -l <"$work/batch")" -eq 200 ]] || fail "batch: expected 200 results"
sum=0
while read -r n; do sum=$((sum + n)); done <"$work/batch"
[[ "$sum" -eq 40200 ]] || fail "batch: sum is $sum, expected 40200"
echo "batch: 200 items x 10 ms with 20 runspaces in ${elapsed_ms} ms (serially: 2000 ms)" >&2

echo "all examples passed" >&2
