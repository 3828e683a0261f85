#!/usr/bin/env python3
"""Runs through PostgreSQL: `rsp run --cluster` with 1, 2 and 4 `rsp worker`s
against the same run on the local pool, against the floor (what COPY and a
batched INSERT of the same result rows reach on the same server), against
GNU parallel's --sqlmaster/--sqlworker on the same server, and the time
from a worker's death to its items being finished elsewhere, against the
configured lease. Ratios come from one run of this script, on one
PostgreSQL it starts itself (initdb + pg_ctl in a temporary folder, as the
`postgres` user when run as root; default durability settings).

    python3 bench/cluster.py                 # builds rsp in release first
    RSP=/path/to/rsp N=200000 python3 bench/cluster.py

Needs the Debian packages postgresql, parallel and libdbd-pg-perl (GNU
parallel's row is skipped, with a message, without the last two).
"""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(os.environ.get("N", "200000"))
N_PARALLEL = int(os.environ.get("N_PARALLEL", "2000"))
CHUNK = int(os.environ.get("CHUNK", "1000"))
LEASE = float(os.environ.get("LEASE", "3"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_pg(cmd):
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


class Postgres:
    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        if not bins:
            sys.exit("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bin = bins[-1]
        self.dir = tempfile.mkdtemp(prefix="rsp-bench-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self.port = free_port()
        data = os.path.join(self.dir, "data")
        subprocess.run(as_pg([f"{self.bin}/initdb", "-D", data, "-U", "rsp", "--auth=trust", "--no-sync"]),
                       check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\nmax_connections = 200\n")
        subprocess.run(as_pg([f"{self.bin}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"),
                              "-o", f"-p {self.port}", "-w", "start"]), check=True, stdout=subprocess.DEVNULL)

    def url(self, db="postgres"):
        return f"postgres://rsp@127.0.0.1:{self.port}/{db}"

    def psql(self, sql, db="postgres", stdin=None):
        out = subprocess.run([f"{self.bin}/psql", "-h", self.dir, "-p", str(self.port), "-U", "rsp", "-d", db,
                              "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             input=stdin, text=True, capture_output=True, check=True)
        return out.stdout.strip()

    def stop(self):
        subprocess.run(as_pg([f"{self.bin}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m", "immediate",
                              "stop"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


def rsp_binary():
    if os.environ.get("RSP"):
        return os.environ["RSP"]
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "rsp")


def timed(cmd, **kw):
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def workers(rsp, url, n, extra=()):
    return [subprocess.Popen([rsp, "worker", "--store", url, "--name", f"bench{i}", "--poll", "100ms", *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]


def stop_workers(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def floor(pg, db):
    """COPY and a batched INSERT of N result rows, as a worker's completions write them."""
    pg.psql("CREATE TABLE floor_rows (job_id BIGINT, seq BIGINT, record TEXT, PRIMARY KEY (job_id, seq))", db)
    rows = "".join(f'1\t{i}\t{{"index":{i},"input":{i + 1},"result":{i + 1},"status":"Completed","errors":[],'
                   f'"duration_ms":0.003}}\n' for i in range(N))
    started = time.perf_counter()
    pg.psql("COPY floor_rows FROM STDIN", db, stdin=rows)
    copy = N / (time.perf_counter() - started)
    pg.psql("TRUNCATE floor_rows", db)
    # One session, one transaction per chunk of CHUNK rows: the statements a worker's completions run.
    script = "".join(
        "BEGIN; INSERT INTO floor_rows SELECT 1, i, '{\"index\":' || i || ',\"input\":' || i + 1 || "
        "',\"result\":' || i + 1 || ',\"status\":\"Completed\",\"errors\":[],\"duration_ms\":0.003}' "
        f"FROM generate_series({first}, {min(first + CHUNK, N) - 1}) i; COMMIT;\n" for first in range(0, N, CHUNK))
    started = time.perf_counter()
    subprocess.run([f"{pg.bin}/psql", "-h", pg.dir, "-p", str(pg.port), "-U", "rsp", "-d", db, "-X", "-q",
                    "-v", "ON_ERROR_STOP=1", "-f", "-"], input=script, text=True, check=True,
                   stdout=subprocess.DEVNULL)
    batched = N / (time.perf_counter() - started)
    return copy, batched


def gnu_parallel(pg, db):
    if not shutil.which("parallel") or subprocess.run(["perl", "-MDBD::Pg", "-e", "1"],
                                                      capture_output=True).returncode != 0:
        print("GNU parallel --sqlworker: skipped (install parallel and libdbd-pg-perl)")
        return None
    dburl = f"pg://rsp@127.0.0.1:{pg.port}/{db}/parjobs"
    inputs = "\n".join(str(i) for i in range(N_PARALLEL)) + "\n"
    started = time.perf_counter()
    master = subprocess.run(["parallel", "--sqlmaster", dburl, "echo"], input=inputs, text=True,
                            capture_output=True)
    if master.returncode != 0:
        print(f"GNU parallel --sqlmaster failed: {master.stderr.strip()[:300]}")
        return None
    procs = [subprocess.Popen(["parallel", "--sqlworker", dburl], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - started
    done = int(pg.psql("SELECT count(*) FROM parjobs WHERE exitval = 0", db) or 0)
    return done / elapsed, done


def try_psql(pg, db, sql):
    """The answer, or "" while the workers have not made the schema yet."""
    try:
        return pg.psql(sql, db)
    except subprocess.CalledProcessError:
        return ""


def takeover(rsp, pg, db):
    """Kill -9 a worker mid-run; time until every chunk it held is finished elsewhere."""
    url = pg.url(db)
    procs = workers(rsp, url, 2, ["--lease", f"{LEASE}s", "--slots", "1"])
    try:
        return measure_takeover(rsp, pg, db, url, procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def measure_takeover(rsp, pg, db, url, procs):
    script = "local t = 0 for i = 1, 2000000 do t = t + i end return _"
    client = subprocess.Popen([rsp, "run", "-e", script, "--range", "1..400", "--chunk-size", "10", "--cluster", url,
                               "--format", "jsonl", "--no-progress", "--no-summary"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held = ""
    deadline = time.time() + 60
    while not held and time.time() < deadline:
        time.sleep(0.05)
        held = try_psql(pg, db,"SELECT string_agg(c.chunk::text, ',') FROM chunks c JOIN jobs j ON j.id = c.job_id "
                       "WHERE NOT c.done AND c.lease_owner LIKE 'bench0:%' AND j.name = "
                       "(SELECT name FROM jobs ORDER BY id DESC LIMIT 1)")
    procs[0].kill()
    killed = time.perf_counter()
    while True:
        left = pg.psql(f"SELECT count(*) FROM chunks WHERE NOT done AND chunk IN ({held}) "
                       "AND job_id = (SELECT max(id) FROM jobs)", db)
        if left == "0":
            break
        time.sleep(0.02)
    took = time.perf_counter() - killed
    client.wait(timeout=300)
    return took


def main():
    rsp = rsp_binary()
    pg = Postgres()
    try:
        pg.psql("CREATE DATABASE bench")
        url = pg.url("bench")
        script = ["-e", "return _", "--range", f"1..{N}", "--format", "jsonl", "--no-progress", "--no-summary"]
        local = N / timed([rsp, "run", *script])
        rows = [("local pool (rsp run)", local)]
        for n in (1, 2, 4):
            procs = workers(rsp, url, n)
            time.sleep(1)
            rate = N / timed([rsp, "run", *script, "--cluster", url, "--chunk-size", str(CHUNK)])
            stop_workers(procs)
            rows.append((f"--cluster, {n} worker(s)", rate))
        copy, batched = floor(pg, "bench")
        print(f"\n{N:,} trivial items (return _), chunks of {CHUNK}, PostgreSQL on 127.0.0.1, "
              f"{os.cpu_count()} CPUs\n")
        print("| run | items/s | overhead per item vs local | vs COPY floor |")
        print("|---|---:|---:|---:|")
        for name, rate in rows:
            over = (1 / rate - 1 / local) * 1e6
            print(f"| {name} | {rate:,.0f} | {over:+.1f} µs | {rate / copy:.2f} |")
        print(f"| floor: COPY of the result rows | {copy:,.0f} | | 1.00 |")
        print(f"| floor: a transaction with an INSERT … SELECT per chunk of {CHUNK} | {batched:,.0f} | | {batched / copy:.2f} |")
        pg.psql("CREATE DATABASE par")
        par = gnu_parallel(pg, "par")
        if par:
            two = dict(rows)["--cluster, 2 worker(s)"]
            print(f"\nGNU parallel --sqlmaster + 2 --sqlworker (echo, {par[1]:,} jobs): {par[0]:,.0f} items/s; "
                  f"rsp --cluster with 2 workers: {two:,.0f} items/s ({two / par[0]:,.0f}x)")
        pg.psql("CREATE DATABASE death")
        took = takeover(rsp, pg, "death")
        print(f"\nworker killed (-9) → its chunks finished elsewhere: {took:.2f} s with --lease {LEASE:g}s "
              f"({took / LEASE:.2f}x the lease)")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
