#!/usr/bin/env python3
"""Two rsp binaries side by side through one PostgreSQL: `rsp run --cluster`
of N trivial items (`return _`) at the default chunk size, with 1 and 2
`rsp worker`s of the same binary, alternating the binaries round by round
(each on its own database, as their schemas may differ), and the median
items/s of each. The machine's load average is printed with the figures:
on a shared machine only the ratio of one run means anything.

    A=/work/main/target/release/rsp B=target/release/rsp ROUNDS=5 python3 bench/cluster_ab.py

Extra arguments for `rsp run` (e.g. CHUNK=1000 for --chunk-size) apply to both.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import N, Postgres, stop_workers, timed, workers  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "5"))
WORKERS = [int(w) for w in os.environ.get("WORKERS", "1,2").split(",")]


def main():
    binaries = {"A": os.environ.get("A", "/work/main/target/release/rsp"),
                "B": os.environ.get("B", "target/release/rsp")}
    chunk = ["--chunk-size", os.environ["CHUNK"]] if os.environ.get("CHUNK") else []
    pg = Postgres()
    try:
        urls = {}
        for key in binaries:
            pg.psql(f"CREATE DATABASE bench_{key.lower()}")
            urls[key] = pg.url(f"bench_{key.lower()}")
        script = ["-e", "return _", "--range", f"1..{N}", "--format", "jsonl", "--no-progress", "--no-summary",
                  *chunk]
        rates = {(key, n): [] for key in binaries for n in WORKERS}
        loads = []
        for r in range(ROUNDS):
            order = list(binaries) if r % 2 == 0 else list(reversed(binaries))
            for n in WORKERS:
                for key in order:
                    procs = workers(binaries[key], urls[key], n)
                    time.sleep(1)
                    rates[(key, n)].append(N / timed([binaries[key], "run", *script, "--cluster", urls[key]]))
                    stop_workers(procs)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}: " + ", ".join(f"{k} {n}w {v[-1]:,.0f}/s" for (k, n), v in rates.items()),
                  flush=True)
        print(f"\n{N:,} items of `return _`, {'chunk ' + chunk[1] if chunk else 'default chunk'}, "
              f"{ROUNDS} rounds, load average (1 min) {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs")
        for key, path in binaries.items():
            print(f"  {key} = {path}")
        print("\n| workers | A items/s (median) | B items/s (median) | B / A |")
        print("|---:|---:|---:|---:|")
        for n in WORKERS:
            a, b = statistics.median(rates[("A", n)]), statistics.median(rates[("B", n)])
            print(f"| {n} | {a:,.0f} | {b:,.0f} | {b / a:.2f} |")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
