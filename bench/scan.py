#!/usr/bin/env python3
"""Side-by-side benchmark: `rsp scan` vs `nmap -sT` vs RustScan, on loopback.

Usage:  python3 bench/scan.py [--runs 5] [--skip-sweep]
        RSP=/path/to/rsp python3 bench/scan.py      # use a prebuilt binary

What it does:
  1. installs nmap (apt-get) and RustScan 2.4.1 (cargo install) if missing,
     and builds rsp in release mode unless $RSP points at a binary;
  2. plants listeners (with accept loops) on random ports of 127.0.0.1 and on
     fixed top-100 ports of a few other 127.0.0.x addresses;
  3. times, interleaved (A B C A B C ...), one warm-up and N runs of
       - a full 65535-port scan of 127.0.0.1,
       - a sweep of 127.0.0.1-254 over nmap's top-100 port set;
  4. checks every run's open ports against the truth: the planted listeners
     plus whatever already listens on the machine (read from /proc/net/tcp*);
  5. prints a Markdown table with machine info, medians, ratios and accuracy.

SAFETY: scans only 127.0.0.0/8. Never any other address.
"""

import argparse
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP100_FILE = os.path.join(ROOT, "crates", "runspace-scan", "data", "top-ports.txt")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def expand(spec):
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    return out


def top100():
    with open(TOP100_FILE) as f:
        for line in f:
            if line.startswith("tier 100:"):
                return expand(line.split(":", 1)[1].strip())
    raise SystemExit("top-100 tier not found in " + TOP100_FILE)


def ensure_tools():
    if not shutil.which("nmap"):
        log("installing nmap (apt-get)...")
        subprocess.run(["apt-get", "install", "-y", "-q", "nmap"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    rustscan = shutil.which("rustscan") or os.path.expanduser("~/.cargo/bin/rustscan")
    if not os.path.exists(rustscan):
        log("installing RustScan 2.4.1 (cargo install)...")
        subprocess.run(["cargo", "install", "rustscan", "--version", "2.4.1", "--locked"], check=True)
        rustscan = os.path.expanduser("~/.cargo/bin/rustscan")
    rsp = os.environ.get("RSP")
    if not rsp:
        log("building rsp (release)...")
        subprocess.run(["cargo", "build", "--release", "-p", "rsp"], cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        rsp = os.path.join(target, "release", "rsp")
    return rsp, rustscan


class Listener:
    """A listening socket with an accept loop, so repeated scans never fill
    its backlog (a full backlog drops SYNs and would look 'filtered')."""

    def __init__(self, addr, port=0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((addr, port))
        self.sock.listen(1024)
        self.addr, self.port = self.sock.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
                conn.close()
            except OSError:
                return


def system_listeners():
    """(address, port) pairs in LISTEN state, from /proc/net/tcp and tcp6."""
    out = set()
    for path, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 4 or f[3] != "0A":
                continue
            hexaddr, hexport = f[1].split(":")
            port = int(hexport, 16)
            raw = bytes.fromhex(hexaddr)
            # /proc prints each 32-bit word in host byte order.
            words = [raw[i:i + 4][::-1] if sys.byteorder == "little" else raw[i:i + 4]
                     for i in range(0, len(raw), 4)]
            b = b"".join(words)
            if width == 8:
                out.add((socket.inet_ntop(socket.AF_INET, b), port))
            else:
                a = socket.inet_ntop(socket.AF_INET6, b)
                out.add(("0.0.0.0" if a == "::" else a, port))
    return out


def truth_for(addrs, ports, planted):
    listening = system_listeners()
    want = set()
    for a in addrs:
        for p in ports:
            if (a, p) in planted or (a, p) in listening or ("0.0.0.0", p) in listening:
                want.add((a, p))
    return want


def parse_rsp(out):
    found = set()
    for line in out.splitlines():
        m = re.search(r'"address":"([^"]+)","port":(\d+),"state":"open"', line)
        if m:
            found.add((m.group(1), int(m.group(2))))
    return found


def parse_nmap(out):
    found = set()
    for line in out.splitlines():
        m = re.match(r"Host: (\S+) .*Ports: (.*)", line)
        if not m:
            continue
        for entry in m.group(2).split("\t")[0].split(", "):
            f = entry.strip().split("/")
            if len(f) > 1 and f[1] == "open":
                found.add((m.group(1), int(f[0])))
    return found


def parse_rustscan(out):
    found = set()
    for line in out.splitlines():
        m = re.match(r"^(\S+) -> \[(.*)\]", line.strip())
        if m:
            for p in m.group(2).split(","):
                if p.strip():
                    found.add((m.group(1), int(p)))
    return found


def timed(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        log(f"warning: {cmd[0]} exited {p.returncode}: {p.stderr.strip()[:300]}")
    return dt, p.stdout


def scenario(name, tools, truth, runs):
    """Runs every tool once as warm-up, then `runs` times interleaved."""
    log(f"== {name}: warm-up")
    for _, cmd, _ in tools:
        timed(cmd)
    times = {t[0]: [] for t in tools}
    acc = {t[0]: [] for t in tools}
    for i in range(runs):
        for tool, cmd, parse in tools:
            dt, out = timed(cmd)
            found = parse(out)
            times[tool].append(dt)
            acc[tool].append((len(found), len(truth - found), len(found - truth)))
            log(f"   run {i + 1} {tool:9} {dt:7.3f}s open={len(found)} "
                f"missed={len(truth - found)} extra={len(found - truth)}")
    return times, acc


def version(cmd):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
        return p.stdout.strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001 - report whatever went wrong
        return f"unknown ({e})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-sweep", action="store_true")
    args = ap.parse_args()

    rsp, rustscan = ensure_tools()
    ports100 = top100()
    keep = [Listener("127.0.0.1") for _ in range(5)]
    planted = {(l.addr, l.port) for l in keep}
    # Sweep listeners on top-100 ports of other loopback addresses.
    for addr, port in (("127.0.0.10", 8080), ("127.0.0.77", 3306), ("127.0.0.200", 5432),
                       ("127.0.0.254", 443)):
        try:
            keep.append(Listener(addr, port))
            planted.add((addr, port))
        except OSError as e:
            log(f"cannot plant {addr}:{port}: {e}")
    log(f"planted: {sorted(planted)}")

    rows = []
    full_truth = truth_for(["127.0.0.1"], range(1, 65536), planted)
    tools = [
        ("rsp", [rsp, "scan", "127.0.0.1", "-p-", "--format", "jsonl", "--show", "open"], parse_rsp),
        ("nmap -sT", ["nmap", "-sT", "-p-", "-n", "-Pn", "127.0.0.1", "-oG", "-"], parse_nmap),
        ("RustScan", [rustscan, "-a", "127.0.0.1", "-r", "1-65535", "-g", "--ulimit", "20000"],
         parse_rustscan),
    ]
    rows.append(("Full range, 127.0.0.1, 65535 ports", len(full_truth),
                 *scenario("full range", tools, full_truth, args.runs)))

    if not args.skip_sweep:
        addrs = [f"127.0.0.{i}" for i in range(1, 255)]
        sweep_truth = truth_for(addrs, ports100, planted)
        plist = ",".join(map(str, ports100))
        tools = [
            ("rsp", [rsp, "scan", "127.0.0.1-254", "-p", plist, "--format", "jsonl", "--show", "open"],
             parse_rsp),
            ("nmap -sT", ["nmap", "-sT", "-p", plist, "-n", "-Pn", "127.0.0.1-254", "-oG", "-"],
             parse_nmap),
            ("RustScan", [rustscan, "-a", "127.0.0.0/24", "-p", plist, "-g", "--ulimit", "20000"],
             lambda out: {hp for hp in parse_rustscan(out) if hp[0] not in ("127.0.0.0", "127.0.0.255")}),
        ]
        rows.append(("Sweep 127.0.0.1-254, top-100 ports (25,400 probes)", len(sweep_truth),
                     *scenario("sweep", tools, sweep_truth, args.runs)))

    cpu = "unknown"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"Machine: {os.cpu_count()} cores, {cpu}, Linux {platform.release()}  ")
    print(f"Tools: {version([rsp, '--version'])}; {version(['nmap', '--version'])}; "
          f"{version([rustscan, '--version'])}  ")
    print(f"Runs: 1 warm-up + {args.runs} interleaved runs per tool; median wall time.  ")
    print("Accuracy: open ports found vs truth (planted listeners + ports already listening), "
          "per run: missed / extra.\n")
    print("| Scenario | Tool | Median | Min–max | vs rsp | Open ports (truth) | Missed | Extra |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, truth_n, times, acc in rows:
        base = statistics.median(times["rsp"])
        for tool in times:
            med = statistics.median(times[tool])
            found = sorted({a[0] for a in acc[tool]})
            missed = max(a[1] for a in acc[tool])
            extra = max(a[2] for a in acc[tool])
            runs_extra = sum(1 for a in acc[tool] if a[2])
            runs_missed = sum(1 for a in acc[tool] if a[1])
            print(f"| {name} | {tool} | {med:.3f} s | {min(times[tool]):.2f}–{max(times[tool]):.2f} s "
                  f"| {med / base:.1f}× | {'/'.join(map(str, found))} ({truth_n}) "
                  f"| {missed} (in {runs_missed} runs) | {extra} (in {runs_extra} runs) |")


if __name__ == "__main__":
    main()
