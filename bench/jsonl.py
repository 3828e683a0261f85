#!/usr/bin/env python3
"""How fast `rsp run` writes JSON Lines: trivial items (n -> n*n) at
--throttle 2, stdout to a pipe that a reader drains and counts, against the
same run with --format values (the least output there is). One warm-up,
then RUNS interleaved runs each; medians, items/s and the ratio.

    python3 bench/jsonl.py                 # builds rsp in release first
    RSP=/path/to/rsp ITEMS=2000000 RUNS=7 python3 bench/jsonl.py

The issue's target (issue 12): JSON Lines at >= 3,000,000 items/s on the
2-core test machine. The writer is rsp's own (crates/rsp/src/run/record.rs);
what the engine costs per item bounds it from above: --format values shows
that bound.
"""
import os
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "7"))
ITEMS = int(os.environ.get("ITEMS", "2000000"))


def timed(cmd):
    """Wall time of one run and the bytes and lines it wrote (read through a pipe)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    size = lines = 0
    while True:
        chunk = proc.stdout.read(1 << 20)
        if not chunk:
            break
        size += len(chunk)
        lines += chunk.count(b"\n")
    proc.wait()
    return time.perf_counter() - started, size, lines


def main():
    rsp = os.environ.get("RSP")
    if not rsp:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
        rsp = os.path.join(ROOT, "target", "release", "rsp")
    base = [rsp, "run", "-e", "return _ * _", "--range", f"1..{ITEMS}", "--throttle", "2"]
    cases = [("JSON Lines", base + ["--format", "jsonl"]), ("--format values", base + ["--format", "values"])]
    for name, cmd in cases:  # warm-up, and a check that every item came out
        _, _, lines = timed(cmd)
        assert lines == ITEMS, f"{name}: {lines} lines for {ITEMS} items"
    times = {name: [] for name, _ in cases}
    for _ in range(RUNS):
        for name, cmd in cases:
            times[name].append(timed(cmd)[0])
    print(f"{ITEMS:,} trivial items, --throttle 2, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| Output | Median | Best | Items/s (median) | Items/s (best) |")
    print("|---|---:|---:|---:|---:|")
    for name, _ in cases:
        med, best = statistics.median(times[name]), min(times[name])
        print(f"| {name} | {med:.3f} s | {best:.3f} s | {ITEMS / med:,.0f} | {ITEMS / best:,.0f} |")
    ratio = statistics.median(times["JSON Lines"]) / statistics.median(times["--format values"])
    print(f"\nJSON Lines takes {ratio:.2f}x the time of --format values.")
    print(f"Command: {' '.join(cases[0][1])}")


if __name__ == "__main__":
    main()
