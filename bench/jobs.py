#!/usr/bin/env python3
"""Benchmark of `rsp serve`: submit-to-start latency, jobs/s submitted
through the HTTP API, and the server's memory, on 127.0.0.1 only.

    python3 bench/jobs.py               # builds rsp in release first
    RSP=/path/to/rsp python3 bench/jobs.py

- latency: one job at a time (nothing queued); the client notes the time
  just before POST /v1/jobs, the job returns `now()` as its first act; the
  difference is submit-to-start (HTTP, SQLite commit, queue, runspace).
- throughput: THREADS client threads, each with a keep-alive connection,
  submit TOTAL trivial jobs as fast as the server accepts them (each
  submission is committed to SQLite before the 201); then the time until
  all have finished is measured too.
- memory: VmRSS of the server idle after start, and idle again after the
  throughput run (finished jobs are dropped from memory after 10 s; they
  stay in the database).
- big jobs: the server's peak RSS (VmHWM, reset before each) while it runs
  a BIG_ITEMS-item trivial job, a run over PRINT_ITEMS items that print
  1 KB each (PRINT_ITEMS KB of streams), and one invocation printing
  SINGLE_PRINT_MB MB; then the database size before and after deleting
  them (deleted jobs give their pages back).
"""
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATENCY_RUNS = int(os.environ.get("LATENCY_RUNS", "300"))
TOTAL = int(os.environ.get("TOTAL", "5000"))
THREADS = int(os.environ.get("THREADS", "8"))
BIG_ITEMS = int(os.environ.get("BIG_ITEMS", "1000000"))
PRINT_ITEMS = int(os.environ.get("PRINT_ITEMS", "200000"))
SINGLE_PRINT_MB = int(os.environ.get("SINGLE_PRINT_MB", "200"))


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pid):
    """Resets VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def db_mib(state):
    return sum(os.path.getsize(os.path.join(state, f)) for f in os.listdir(state) if f.startswith("jobs.db")) / 2**20


def big_job(api, pid, name, body):
    """Runs one job to its end; returns (peak RSS MiB, seconds, job)."""
    reset_peak(pid)
    t0 = time.time()
    status, created = api.call("POST", "/v1/jobs", dict(body, name=name))
    assert status == 201, created
    while True:
        status, waited = api.call("POST", f"/v1/jobs/{name}/wait?timeout=60s")
        if waited["finished"]:
            break
    return rss_kib(pid, "VmHWM") / 1024, time.time() - t0, waited["job"]


class Api:
    def __init__(self, addr, token):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=self.headers)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data else None)


def main():
    rsp = os.environ.get("RSP")
    if not rsp:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        rsp = os.path.join(target, "release", "rsp")
    state = tempfile.mkdtemp(prefix="rsp-bench-jobs-")
    log = open(os.path.join(state, "bench.log"), "w")
    server = subprocess.Popen([rsp, "serve", "--port", "0", "--state-dir", state, "--max-jobs", "5"],
                              stdout=log, stderr=log)
    try:
        deadline = time.time() + 15
        while True:
            try:
                info = json.load(open(os.path.join(state, "server.json")))
                if info["pid"] == server.pid:
                    break
            except (OSError, ValueError):
                pass
            if time.time() > deadline:
                sys.exit("server did not start")
            time.sleep(0.01)
        token = open(os.path.join(state, "token")).read().strip()
        addr = info["addr"]
        time.sleep(1.0)
        idle_start = rss_kib(server.pid)

        api = Api(addr, token)
        lat = []
        for i in range(LATENCY_RUNS):
            t0 = time.time()
            status, created = api.call("POST", "/v1/jobs", {"script": "return now()", "name": f"lat{i}"})
            assert status == 201, created
            status, waited = api.call("POST", f"/v1/jobs/lat{i}/wait?timeout=10s")
            assert waited["finished"], waited
            status, out = api.call("GET", f"/v1/jobs/lat{i}/output")
            lat.append((out["records"][0]["value"] - t0) * 1000)
        lat.sort()

        done = [0] * THREADS
        per = TOTAL // THREADS

        def submit(t):
            c = Api(addr, token)
            for i in range(per):
                status, body = c.call("POST", "/v1/jobs", {"script": "return n", "params": {"n": i}})
                assert status == 201, body
                done[t] += 1

        t0 = time.time()
        threads = [threading.Thread(target=submit, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        submit_s = time.time() - t0
        status, waited = api.call("POST", "/v1/wait?timeout=300s")
        assert waited["finished"], waited
        all_s = time.time() - t0
        status, page = api.call("GET", "/v1/jobs?state=Completed&limit=1")
        completed = page["total"] - LATENCY_RUNS
        n = sum(done)
        assert completed == n, (completed, n)
        time.sleep(11)  # finished jobs leave memory after 10 s
        idle_after = rss_kib(server.pid)
        db_kib = sum(os.path.getsize(os.path.join(state, f)) for f in os.listdir(state) if f.startswith("jobs.db")) // 1024

        big = []
        api = Api(addr, token)  # the server closes connections idle for 10 s
        peak, secs, job = big_job(api, server.pid, "big", {"script": "return _", "range": {"start": 1, "end": BIG_ITEMS}})
        assert job["state"] == "Completed" and job["output_count"] == BIG_ITEMS, job
        big.append((f"{BIG_ITEMS:,}-item trivial job ({BIG_ITEMS / secs:,.0f} items/s)", peak))
        peak, secs, job = big_job(api, server.pid, "prints", {
            "script": "print(string.rep('p', 1000)) return _", "range": {"start": 1, "end": PRINT_ITEMS}})
        assert job["state"] == "Completed", job
        big.append((f"{PRINT_ITEMS:,} items printing 1 KB each ({PRINT_ITEMS / 1024:,.0f} MB of streams)", peak))
        peak, secs, job = big_job(api, server.pid, "print1", {
            "script": f"for i = 1, {SINGLE_PRINT_MB * 1024} do print(string.rep('p', 1000)) end return 1"})
        big.append((f"one invocation printing {SINGLE_PRINT_MB} MB ({job['state']})", peak))
        db_full = db_mib(state)
        for name in ["big", "prints", "print1"]:
            status, _ = api.call("DELETE", f"/v1/jobs/{name}")
            assert status == 204, status
        db_after_delete = db_mib(state)

        cpu = platform.processor() or platform.machine()
        print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}")
        print()
        print("| figure | value |")
        print("|---|---|")
        print(f"| submit-to-start latency, median ({LATENCY_RUNS} jobs, one at a time) | {statistics.median(lat):.2f} ms |")
        print(f"| submit-to-start latency, p95 / p99 | {lat[int(len(lat) * 0.95)]:.2f} ms / {lat[int(len(lat) * 0.99)]:.2f} ms |")
        print(f"| jobs submitted through the API ({n} jobs, {THREADS} client threads) | {n / submit_s:,.0f} jobs/s |")
        print(f"| submitted and finished ({n} trivial jobs, --max-jobs 5) | {n / all_s:,.0f} jobs/s |")
        print(f"| server RSS, idle after start | {idle_start / 1024:.1f} MiB |")
        print(f"| server RSS, idle after {n + LATENCY_RUNS} jobs | {idle_after / 1024:.1f} MiB |")
        print(f"| database size after {n + LATENCY_RUNS} jobs | {db_kib / 1024:.1f} MiB |")
        for what, peak in big:
            print(f"| server peak RSS (VmHWM), {what} | {peak:.1f} MiB |")
        print(f"| database size with the big jobs / after deleting them | {db_full:.1f} MiB / {db_after_delete:.1f} MiB |")
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
