#!/usr/bin/env python3
"""How fast `rsp run` writes JSON Lines: trivial items (n -> n*n) at
--throttle 2, against the same run with --format values (the least output
there is), each written to the two destinations BENCHMARKS.md names for a
fair comparison: /dev/null, and a pipe into `wc -l` (which also checks that
every record came out). One warm-up, then RUNS interleaved runs of each;
medians, items/s and the ratio.

    python3 bench/jsonl.py                 # builds rsp in release first
    RSP=/path/to/rsp ITEMS=2000000 RUNS=7 python3 bench/jsonl.py
    BASE=/path/to/older/rsp python3 bench/jsonl.py   # side by side with an older build

The issue's target (issue 12): JSON Lines at >= 3,000,000 items/s on the
2-core test machine. The writer is rsp's own (crates/rsp/src/run/record.rs);
what the engine costs per item bounds it from above: --format values shows
that bound. Through a pipe the reader runs on the same two CPUs, so those
figures are lower by what `wc -l` and the pipe's copies cost.
"""
import os
import shlex
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "7"))
ITEMS = int(os.environ.get("ITEMS", "2000000"))


def timed(command):
    """Wall time of one shell command, and what it printed (the line count)."""
    started = time.perf_counter()
    out = subprocess.run(command, shell=True, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, out.stdout.decode().strip()


def main():
    rsp = os.environ.get("RSP")
    if not rsp:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
        rsp = os.path.join(ROOT, "target", "release", "rsp")
    builds = [("rsp", rsp)] + ([("base", os.environ["BASE"])] if os.environ.get("BASE") else [])
    cases = []
    for build, path in builds:
        for fmt, name in (("jsonl", "JSON Lines"), ("values", "--format values")):
            run = f"{shlex.quote(path)} run -e 'return _ * _' --range 1..{ITEMS} --throttle 2 --format {fmt}"
            cases.append((f"{build}: {name} > /dev/null", f"{run} > /dev/null"))
            cases.append((f"{build}: {name}, piped to wc -l", f"{run} | wc -l"))
    for name, command in cases:  # warm-up, and a check that every item came out
        _, printed = timed(command)
        assert "wc -l" not in command or printed == str(ITEMS), f"{name}: {printed} lines for {ITEMS} items"
    times = {name: [] for name, _ in cases}
    for _ in range(RUNS):
        for name, command in cases:
            times[name].append(timed(command)[0])
    print(f"{ITEMS:,} trivial items, --throttle 2, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {RUNS} runs")
    print("| Output | Median | Best | Items/s (median) | Items/s (best) |")
    print("|---|---:|---:|---:|---:|")
    for name, _ in cases:
        med, best = statistics.median(times[name]), min(times[name])
        print(f"| {name} | {med:.3f} s | {best:.3f} s | {ITEMS / med:,.0f} | {ITEMS / best:,.0f} |")
    if len(builds) > 1:
        print()
        for name, _ in cases:
            if name.startswith("rsp: "):
                base = "base: " + name[len("rsp: "):]
                ratio = statistics.median(times[base]) / statistics.median(times[name])
                print(f"- {name[len('rsp: '):]}: rsp is {ratio:.2f}x as fast as base")
    print(f"\nCommand: {cases[0][1]}")


if __name__ == "__main__":
    main()
