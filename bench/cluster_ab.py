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
import subprocess  # noqa: E402

from cluster import N, Postgres, stop_workers, workers  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "5"))
# A run that has not ended by then is counted as hung (and killed), not waited for.
HANG = float(os.environ.get("HANG", "180"))


def timed(cmd):
    """Seconds the command took, or None if it failed or hung."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=HANG)
    except subprocess.TimeoutExpired:
        print(f"HUNG (> {HANG:g} s): {' '.join(cmd)}", flush=True)
        return None
    if proc.returncode != 0:
        print(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}", flush=True)
        return None
    return time.perf_counter() - started
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
        hung = {key: 0 for key in binaries}
        for r in range(ROUNDS):
            order = list(binaries) if r % 2 == 0 else list(reversed(binaries))
            for n in WORKERS:
                for key in order:
                    procs = workers(binaries[key], urls[key], n)
                    time.sleep(1)
                    took = timed([binaries[key], "run", *script, "--cluster", urls[key]])
                    stop_workers(procs)
                    if took is None:
                        # A new database, so that the next round starts clean.
                        hung[key] += 1
                        db = f"bench_{key.lower()}_{r}_{n}"
                        pg.psql(f"CREATE DATABASE {db}")
                        urls[key] = pg.url(db)
                    else:
                        rates[(key, n)].append(N / took)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}: " + ", ".join(f"{k} {n}w {v[-1]:,.0f}/s" for (k, n), v in rates.items() if v),
                  flush=True)
        print(f"\n{N:,} items of `return _`, {'chunk ' + chunk[1] if chunk else 'default chunk'}, "
              f"{ROUNDS} rounds, load average (1 min) {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs")
        for key, path in binaries.items():
            print(f"  {key} = {path}")
        print("\n| workers | A items/s (median) | B items/s (median) | B / A |")
        print("|---:|---:|---:|---:|")
        for n in WORKERS:
            a, b = statistics.median(rates[("A", n)] or [0]), statistics.median(rates[("B", n)] or [0])
            print(f"| {n} | {a:,.0f} | {b:,.0f} | {b / a if a else float('nan'):.2f} |")
        print(f"\nruns that failed or hung: A {hung['A']}, B {hung['B']}")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
