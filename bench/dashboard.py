#!/usr/bin/env python3
"""Benchmark of the web dashboard of `rsp serve`, on 127.0.0.1 only.

    python3 bench/dashboard.py              # builds rsp in release first
    RSP=/path/to/rsp python3 bench/dashboard.py

1. page load with JOBS (100,000) jobs in the store: the server's answer
   time (request sent to last byte, over a kept-alive loopback connection)
   of the overview, the job list (first page, a state tab, a page deep in
   the walk, a search by name and one by script name) and a job's page,
   RUNS times each, median and 95th percentile; then the same pages loaded
   in headless Chromium (navigation start to the load event), when
   chromedriver is installed. The jobs are written into the database
   directly (submitting 100,000 through the API would only measure the
   job runner), with mixed finished states and request documents like the
   API stores.
2. server CPU while WATCHERS (10) clients watch a busy job: a job of
   trivial items runs for WINDOW seconds; the server's CPU time (utime +
   stime from /proc) is measured with no watcher, then with WATCHERS event
   streams on the job's page and WATCHERS on the overview's stream. The
   difference is what watching costs.
3. SSE event rate: events received per second per stream during (2).
"""
import http.client
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = int(os.environ.get("JOBS", "100000"))
RUNS = int(os.environ.get("RUNS", "30"))
WATCHERS = int(os.environ.get("WATCHERS", "10"))
WINDOW = float(os.environ.get("WINDOW", "20"))
TICKS = os.sysconf("SC_CLK_TCK")


def rsp_binary():
    if os.environ.get("RSP"):
        return os.environ["RSP"]
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "rsp")


class Server:
    def __init__(self, rsp, state):
        self.state = state
        self.log = open(os.path.join(state, "bench-server.log"), "w")
        self.proc = subprocess.Popen([rsp, "serve", "--port", "0", "--state-dir", state, "--max-jobs", "4"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while True:
            try:
                info = json.load(open(os.path.join(state, "server.json")))
                if info["pid"] == self.proc.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.time() > deadline:
                sys.exit("the server did not start")
            time.sleep(0.02)
        self.host, self.port = info["addr"].rsplit(":", 1)
        self.base = "http://" + info["addr"]
        self.token = open(os.path.join(state, "token")).read().strip()

    def conn(self):
        return http.client.HTTPConnection(self.host, int(self.port), timeout=60)

    def api(self, method, path, body=None):
        c = self.conn()
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Authorization": "Bearer " + self.token, "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, (json.loads(data) if data else None)

    def login(self):
        c = self.conn()
        c.request("POST", "/login", body="token=" + self.token,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        r.read()
        cookie = r.getheader("Set-Cookie").split(";")[0]
        c.close()
        return cookie

    def cpu_seconds(self):
        fields = open("/proc/%d/stat" % self.proc.pid).read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def seed(db, n):
    """Writes n finished jobs (and their history) straight into the database."""
    states = ["Completed"] * 80 + ["CompletedWithErrors"] * 8 + ["Failed"] * 8 + ["Stopped"] * 2 + ["Interrupted"] * 2
    scripts = ["backup.luau", "audit.luau", "inventory.luau", "rotate.luau", "probe.luau"]
    rng = random.Random(7)
    conn = sqlite3.connect(db)
    now = time.time() - n
    rows, history = [], []
    for i in range(n):
        state = rng.choice(states)
        total = rng.choice([1, 10, 100, 1000, 20000])
        parallel = 1 if total > 1 else 0
        script = rng.choice(scripts)
        request = json.dumps({"script": "return _ * 2", "script_name": script, "params": {}, "variables": {},
                              "modules": [], "allow": [], "range": {"start": 1, "end": total} if parallel else None})
        start = now + i
        failed = rng.randint(1, 5) if state in ("CompletedWithErrors", "Failed") and parallel else 0
        rows.append(("seed-%06d" % i, state, parallel, request, start, start + 0.1, start + 2.5, total, total,
                     "script error" if state == "Failed" else None, failed))
    conn.executemany(
        "INSERT INTO jobs (name, state, parallel, request, submitted_at, started_at, ended_at, progress_done, "
        "progress_total, error, failed_items) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("INSERT INTO history (job_id, state, at) SELECT id, 'Queued', submitted_at FROM jobs")
    conn.execute("INSERT INTO history (job_id, state, at) SELECT id, state, ended_at FROM jobs")
    conn.commit()
    conn.close()


def timed_get(conn, path, cookie):
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Cookie": cookie})
    r = conn.getresponse()
    body = r.read()
    elapsed = time.perf_counter() - t0
    assert r.status == 200, (path, r.status, body[:200])
    return elapsed, len(body)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def page_loads(server, cookie, pages):
    print("## Page load, %d jobs in the store (server answer, %d runs)\n" % (JOBS, RUNS))
    print("| page | median (ms) | p95 (ms) | size (KB) |")
    print("|---|---:|---:|---:|")
    conn = server.conn()
    for label, path in pages:
        times = []
        size = 0
        for _ in range(RUNS):
            t, size = timed_get(conn, path, cookie)
            times.append(t * 1000)
        print("| %s `%s` | %.1f | %.1f | %.0f |" % (label, path, statistics.median(times), pct(times, 95), size / 1024))
    conn.close()
    print()


def browser_loads(server, pages):
    """Navigation start to load event in headless Chromium, through chromedriver."""
    driver = next((os.path.join(d, "chromedriver") for d in os.environ.get("PATH", "").split(":")
                   if os.path.isfile(os.path.join(d, "chromedriver"))), None)
    if not driver:
        print("(chromedriver not installed: no browser timings)\n")
        return
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([driver, "--port=%d" % port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp()

    def wd(method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        v = json.loads(c.getresponse().read())
        c.close()
        return v["value"]

    try:
        for _ in range(100):
            try:
                if wd("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--user-data-dir=" + profile, "--window-size=1280,800"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"args": args}}}}
        sid = wd("POST", "/session", caps)["sessionId"]
        s = "/session/" + sid
        wd("POST", s + "/url", {"url": server.base + "/login"})
        wd("POST", s + "/execute/sync", {"script": "document.getElementById('token').value = arguments[0]; "
                                                   "document.querySelector('.login').submit()",
                                         "args": [server.token]})
        time.sleep(1)
        print("## Page load in headless Chromium (navigation start to load event, %d runs)\n" % min(RUNS, 10))
        print("| page | median (ms) | max (ms) |")
        print("|---|---:|---:|")
        for label, path in pages:
            times = []
            for _ in range(min(RUNS, 10)):
                wd("POST", s + "/url", {"url": server.base + path})
                t = wd("POST", s + "/execute/sync", {
                    "script": "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime",
                    "args": []})
                times.append(t)
            print("| %s | %.0f | %.0f |" % (label, statistics.median(times), max(times)))
        print()
        wd("DELETE", s)
    finally:
        proc.terminate()
        proc.wait()


class Watcher(threading.Thread):
    """One event-stream client: counts the events it receives."""

    def __init__(self, server, cookie, path):
        super().__init__(daemon=True)
        self.server, self.cookie, self.path = server, cookie, path
        self.events = 0
        self.running = True

    def run(self):
        c = self.server.conn()
        c.request("GET", self.path, headers={"Cookie": self.cookie, "Accept": "text/event-stream"})
        r = c.getresponse()
        while self.running:
            line = r.fp.readline()
            if not line:
                break
            if line.startswith(b"event:"):
                self.events += 1
        c.close()


def watching(server, cookie):
    status, job = server.api("POST", "/v1/jobs", {"name": "busy", "script": "sleep(0.002) return _ * 2",
                                                  "range": {"start": 1, "end": 9000000}, "throttle": 8})
    assert status == 201, job
    time.sleep(2)
    print("## Server CPU while a busy job runs (%.0f s windows; 8 runspaces, items sleep 2 ms)\n" % WINDOW)
    print("| watchers | server CPU (% of one core) | events/s per job stream | events/s per overview stream | items/s of the job |")
    print("|---|---:|---:|---:|---:|")
    for n in (0, WATCHERS, 0):
        watchers = [Watcher(server, cookie, "/jobs/busy/events") for _ in range(n)]
        watchers += [Watcher(server, cookie, "/events") for _ in range(n)]
        for w in watchers:
            w.start()
        time.sleep(1)
        counts = [w.events for w in watchers]
        done0 = server.api("GET", "/v1/jobs/busy")[1]["progress"]["done"]
        cpu0, t0 = server.cpu_seconds(), time.time()
        time.sleep(WINDOW)
        cpu1, t1 = server.cpu_seconds(), time.time()
        done1 = server.api("GET", "/v1/jobs/busy")[1]["progress"]["done"]
        rates = [(w.events - c) / (t1 - t0) for w, c in zip(watchers, counts)]
        for w in watchers:
            w.running = False
        label = "none" if n == 0 else "%d on the job page + %d on the overview" % (n, n)
        job_rate = "—" if not n else "%.2f" % statistics.mean(rates[:n])
        summary_rate = "—" if not n else "%.2f" % statistics.mean(rates[n:])
        print("| %s | %.1f | %s | %s | %.0f |" % (label, 100 * (cpu1 - cpu0) / (t1 - t0), job_rate, summary_rate,
                                                  (done1 - done0) / (t1 - t0)))
        time.sleep(1)
    server.api("POST", "/v1/jobs/busy/stop")
    print()


def main():
    rsp = rsp_binary()
    state = tempfile.mkdtemp()
    os.chmod(state, 0o700)
    first = Server(rsp, state)  # creates the database and its schema
    first.stop()
    t0 = time.time()
    seed(os.path.join(state, "jobs.db"), JOBS)
    print("Seeded %d jobs in %.1f s.\n" % (JOBS, time.time() - t0))
    server = Server(rsp, state)
    try:
        cookie = server.login()
        status, _ = server.api("POST", "/v1/jobs", {"name": "one-job", "script": "return _",
                                                    "range": {"start": 1, "end": 2000}})
        assert status == 201
        time.sleep(2)
        middle = "seed-%06d" % (JOBS // 2)
        conn = sqlite3.connect(os.path.join(state, "jobs.db"))
        key = conn.execute("SELECT id FROM jobs WHERE name = ?", (middle,)).fetchone()[0]
        conn.close()
        pages = [
            ("overview", "/"),
            ("job list", "/jobs"),
            ("state tab", "/jobs?state=Failed"),
            ("deep page", "/jobs?below=%d" % key),
            ("search by name", "/jobs?q=" + urllib.parse.quote("seed-0999")),
            ("search by script", "/jobs?q=rotate"),
            ("job page (2,000 items)", "/jobs/one-job"),
        ]
        page_loads(server, cookie, pages)
        browser_loads(server, pages)
        watching(server, cookie)
    finally:
        server.stop()
    print("Machine: %d CPUs, %s" % (os.cpu_count(), open("/proc/loadavg").read().strip()))


if __name__ == "__main__":
    main()
