#!/usr/bin/env python3
"""Waiting is free: items as Luau threads, side by side with the tools
people use for I/O-bound fan-out. Everything runs on this machine and
touches only 127.0.0.1.

    python3 bench/waiting.py              # builds rsp (release) first
    RSP=/path/to/rsp RUNS=5 python3 bench/waiting.py
    BASE=/path/to/main/rsp python3 bench/waiting.py   # adds that build to 1-3

Scenarios (medians of RUNS interleaved runs, default 3; ratios of medians):
  1. 10,000 x sleep(0.05) at throttle 10,000: rsp vs Python asyncio with a
     semaphore (wall time and peak RSS); ideal 0.05 s.
  2. 100,000 x sleep(0.05) at throttle 100,000 (and asyncio).
  3. 2,000 x sleep(0.05) at throttle 200 against the ideal 0.5 s.
  4. HTTP GETs to a local nginx (started here on 127.0.0.1) at concurrency
     500: rsp vs Python aiohttp, xargs -P 500 curl, GNU parallel -j 500 curl.
  5. net.probe over all 65,535 ports of 127.0.0.1 at throttle 5,000 vs
     `rsp scan -p-` on the same host.
  6. CPU-bound regression check: the engine's own figures (library trivial
     items/s at 2 threads, runspace open time, stop latency) from
     `examples/engine_bench` ($ENGINE_BENCH, else next to $RSP, else this
     workspace's release build).

Peers that are missing are installed when running as root (nginx from
Debian, aiohttp from PyPI); otherwise they are skipped with a message.
"""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "3"))
PY = sys.executable


def measure(cmd):
    """Wall time (s) and peak RSS (MB) of one run of `cmd`, its output discarded."""
    with tempfile.NamedTemporaryFile("r") as rss:
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, "/bin/sh", "-c", cmd + " > /dev/null"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"failed ({proc.returncode}): {cmd}\n{proc.stderr[-2000:]}")
        return wall, int(rss.read().strip().splitlines()[-1]) / 1024


def output(cmd):
    return subprocess.run(cmd, shell=True, check=True, text=True, capture_output=True).stdout


def compare(title, contenders, ideal=None, unit_items=None):
    """Runs every contender RUNS times, interleaved, after one warm-up; prints a table."""
    for _, cmd in contenders:
        measure(cmd)
    walls = {name: [] for name, _ in contenders}
    rss = {name: [] for name, _ in contenders}
    for _ in range(RUNS):
        for name, cmd in contenders:
            w, r = measure(cmd)
            walls[name].append(w)
            rss[name].append(r)
    first = contenders[0][0]
    base = statistics.median(walls[first])
    print(f"\n### {title}\n")
    head = "| Tool | Median wall | Peak RSS |" + (" Items/s |" if unit_items else "") + f" vs {first} |"
    if ideal:
        head += " vs ideal |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for name, _ in contenders:
        med = statistics.median(walls[name])
        row = f"| {name} | {med:.3f} s | {statistics.median(rss[name]):.0f} MB |"
        if unit_items:
            row += f" {unit_items[name] / med:,.0f} |"
        row += " — |" if name == first else f" {med / base:.2f}x slower |" if med >= base else f" {base / med:.2f}x faster |"
        if ideal:
            row += f" {100 * (med / ideal - 1):+.0f}% |"
        print(row)


ASYNCIO_SLEEP = """
import asyncio, sys
n, c = int(sys.argv[1]), int(sys.argv[2])
async def main():
    sem = asyncio.Semaphore(c)
    async def one(i):
        async with sem:
            await asyncio.sleep(0.05)
            return i
    print(len(await asyncio.gather(*(one(i) for i in range(n)))))
asyncio.run(main())
"""

AIOHTTP_GET = """
import asyncio, sys, aiohttp
url, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    sem = asyncio.Semaphore(c)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as s:
        async def one(i):
            async with sem:
                async with s.get(url) as r:
                    await r.read()
                    return r.status
        codes = await asyncio.gather(*(one(i) for i in range(n)))
    assert all(code == 200 for code in codes)
    print(len(codes))
asyncio.run(main())
"""


def ensure(binary, install):
    """`binary` on PATH, installing it with `install` when running as root."""
    if shutil.which(binary) or os.path.exists(binary):
        return True
    if os.geteuid() == 0:
        subprocess.run(install, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return bool(shutil.which(binary) or os.path.exists(binary))


def have_aiohttp():
    probe = lambda: subprocess.run([PY, "-c", "import aiohttp"], capture_output=True).returncode == 0
    if not probe() and os.geteuid() == 0:
        subprocess.run(f"{PY} -m pip install -q aiohttp || {PY} -m pip install -q --break-system-packages aiohttp",
                       shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return probe()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(workdir):
    """nginx on 127.0.0.1 answering every GET with a 3-byte body; returns (process, url)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir};
    uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    proc = subprocess.Popen([nginx, "-c", conf, "-p", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start")


def main():
    rsp = os.environ.get("RSP")
    if not rsp:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "runspace", "--example", "engine_bench"],
                       cwd=ROOT, check=True)
        rsp = os.path.join(ROOT, "target", "release", "rsp")
    if not ensure("/usr/bin/time", "apt-get install -y -qq time"):
        sys.exit("GNU time (/usr/bin/time) is needed: apt-get install time")
    print(f"Machine: {os.cpu_count()} CPUs; {output(f'{rsp} --version').strip()}; RUNS={RUNS}")
    sleeper = "sleep(0.05) return _"
    # Another build of rsp (main's, say), measured in the same rounds.
    base = os.environ.get("BASE")

    def sleepers(n, throttle):
        runs = [(f"rsp run --throttle {throttle}",
                 f"{rsp} run -e '{sleeper}' --range 1..{n} --throttle {throttle} --format values")]
        if base:
            runs.append((f"BASE rsp run --throttle {throttle}",
                         f"{base} run -e '{sleeper}' --range 1..{n} --throttle {throttle} --format values"))
        return runs + [(f"Python asyncio, Semaphore({throttle})", f"{PY} -c '{ASYNCIO_SLEEP}' {n} {throttle}")]

    for n in (10_000, 100_000):
        compare(f"{n:,} x sleep(0.05), {n:,} in flight (ideal 0.05 s)", sleepers(n, n), ideal=0.05)

    compare("2,000 x sleep(0.05), 200 in flight (ideal 0.5 s)", sleepers(2000, 200), ideal=0.5)

    # HTTP: process-per-request peers get fewer requests (their rate is per request).
    have_nginx = ensure("nginx", "apt-get install -y -qq nginx-light || apt-get install -y -qq nginx")
    if not have_nginx:
        print("\nSKIPPED the HTTP comparison: nginx is not installed (apt-get install nginx-light)")
    else:
        workdir = tempfile.mkdtemp(prefix="rsp-bench-nginx-")
        nginx, url = start_nginx(workdir)
        try:
            n, per_process = 10_000, 2_000
            contenders = [(f"rsp run --throttle 500 (http.get)",
                           f"{rsp} run -e 'return http.get(\"{url}\").status' --range 1..{n} --throttle 500 "
                           f"--allow http --format values")]
            items = {contenders[0][0]: n}
            if have_aiohttp():
                contenders.append(("Python aiohttp, 500 at once", f"{PY} -c '{AIOHTTP_GET}' {url} {n} 500"))
                items[contenders[-1][0]] = n
            else:
                print("\n(aiohttp missing and not installable: skipped)")
            contenders.append((f"xargs -P 500 curl ({per_process:,} requests)",
                               f"seq {per_process} | xargs -P 500 -I{{}} curl -s -o /dev/null {url}"))
            items[contenders[-1][0]] = per_process
            if ensure("parallel", "apt-get install -y -qq parallel"):
                contenders.append((f"GNU parallel -j 500 curl ({per_process:,} requests)",
                                   f"seq {per_process} | parallel -j 500 curl -s -o /dev/null {url}"))
                items[contenders[-1][0]] = per_process
            else:
                print("\n(GNU parallel missing: skipped)")
            compare(f"HTTP GET to a local nginx, 500 at once", contenders, unit_items=items)
            print("\nPeak RSS of xargs/parallel is their largest process (each curl is separate).")
        finally:
            nginx.terminate()
            nginx.wait()
            shutil.rmtree(workdir, ignore_errors=True)

    compare("All 65,535 ports of 127.0.0.1", [
        ("rsp run net.probe --throttle 5000",
         f"{rsp} run -e 'return net.probe(\"127.0.0.1\", _).state' --range 1..65535 --throttle 5000 "
         f"--allow net --format values"),
        ("rsp scan -p-", f"{rsp} scan 127.0.0.1 -p- --format jsonl"),
    ])

    # Next to $RSP when it is a build's own binary; else this workspace's
    # (RSP=/tmp/rsp-copy used to skip this part); ENGINE_BENCH names one.
    candidates = [os.environ.get("ENGINE_BENCH"), os.path.join(os.path.dirname(rsp), "examples", "engine_bench"),
                  os.path.join(ROOT, "target", "release", "examples", "engine_bench")]
    bench = next((c for c in candidates if c and os.path.exists(c)), candidates[1])
    if os.path.exists(bench):
        runs = [dict(line.split("\t")[:2] for line in output(bench).splitlines() if "\t" in line) for _ in range(RUNS)]
        med = lambda key: statistics.median(float(r[key]) for r in runs)
        print("\n### CPU-bound regression check (engine_bench, medians)\n")
        print("| Figure | Median | Target |")
        print("|---|---:|---:|")
        print(f"| library trivial items/s, 2 threads | {med('library_items_per_s'):,.0f} | >= 2,500,000 |")
        print(f"| open a sandboxed runspace | {med('open_ms_per_runspace'):.3f} ms | <= 0.5 ms |")
        print(f"| stop() to end of `while true do end` | {med('stop_latency_ms'):.3f} ms | <= 1 ms |")
    else:
        print(f"\n(no {bench}: build it with cargo build --release -p runspace --example engine_bench)")


if __name__ == "__main__":
    main()
