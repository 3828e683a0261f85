#!/usr/bin/env bash
# Batch-mode figures for docs/batch.md, printed as Markdown tables:
#   1. peak RSS for 10,000,000 streamed items at throttle 2 and 200;
#   2. the original's fourth example scaled down: 10,000 items of
#      sleep(0.01), batch size 100, at 4 and 100 concurrent batches, vs ideal;
#   3. the cost of --joblog on a trivial 1,000,000-item run.
# Usage: bench/batch.sh [path/to/rsp]   (default: builds and uses target/release/rsp)
# Needs GNU time (/usr/bin/time -v). Takes about a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

RSP=${1:-}
if [ -z "$RSP" ]; then
    cargo build --release -q -p rsp
    RSP=${CARGO_TARGET_DIR:-target}/release/rsp
fi
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# run LABEL ARGS... : runs rsp with stdout to /dev/null; sets WALL (s) and RSS (MB).
run() {
    /usr/bin/time -v -o "$TMP/time" "$RSP" run "$@" > /dev/null 2> "$TMP/err" || true
    WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$TMP/time")
    RSS=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$TMP/time")
}

echo "## Peak RSS, 10,000,000 streamed items (\`return _ * _\`, JSON Lines to /dev/null)"
echo
echo "| throttle | wall (s) | items/s | peak RSS (MB) |"
echo "|---:|---:|---:|---:|"
for t in 2 200; do
    run -e 'return _ * _' --range 1..10000000 --throttle "$t"
    printf "| %s | %.2f | %s | %s |\n" "$t" "$WALL" "$(awk -v w="$WALL" 'BEGIN { printf "%.0f", 10000000 / w }')" "$RSS"
done
echo

echo "## 10,000 items of sleep(0.01), batch size 100 (the original's example 4, scaled)"
echo
echo "| concurrent batches | wall (s) | ideal (s) | overhead | peak RSS (MB) |"
echo "|---:|---:|---:|---:|---:|"
for b in 4 100; do
    run -e 'sleep(0.01) return _ * 2' --range 1..10000 --batch-size 100 --max-concurrent-batches "$b"
    # Ideal: 100 batches, b at a time, 100 × 10 ms each.
    ideal=$(awk -v b="$b" 'BEGIN { printf "%.2f", int((100 + b - 1) / b) * 1.0 }')
    printf "| %s | %.2f | %s | %s | %s |\n" "$b" "$WALL" "$ideal" \
        "$(awk -v w="$WALL" -v i="$ideal" 'BEGIN { printf "%+.0f%%", (w / i - 1) * 100 }')" "$RSS"
done
echo

echo "## --joblog overhead, 1,000,000 trivial items, throttle 2 (best of 3)"
echo
echo "| run | wall (s) | items/s | peak RSS (MB) |"
echo "|---|---:|---:|---:|"
for mode in plain joblog; do
    best=
    for _ in 1 2 3; do
        if [ "$mode" = joblog ]; then
            run -e 'return _ * _' --range 1..1000000 --throttle 2 --joblog "$TMP/log.tsv"
        else
            run -e 'return _ * _' --range 1..1000000 --throttle 2
        fi
        if [ -z "$best" ] || awk -v a="$WALL" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$WALL; brss=$RSS; fi
    done
    printf "| %s | %.2f | %s | %s |\n" "$mode" "$best" "$(awk -v w="$best" 'BEGIN { printf "%.0f", 1000000 / w }')" "$brss"
done
