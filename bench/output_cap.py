#!/usr/bin/env python3
"""rsp's own memory while scripts print, emit or warn without end.

Each item loops forever producing output; the per-item output cap
(`--max-output`, default 16 MB) fails it, and the run goes on. rsp's peak
resident set (VmHWM, polled from /proc) is printed next to the bound the
docs give: throttle x (memory limit + output cap), plus the process's own
baseline. Before the cap, one such item drove rsp past 1 GB.

    python3 bench/output_cap.py             # builds rsp in release first
    RSP=/path/to/rsp python3 bench/output_cap.py
"""
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1 << 20

SCRIPTS = {
    "print": "while true do print(string.rep('x', 1000)) end",
    "emit": "while true do emit(string.rep('x', 1000)) end",
    "write_warning": "while true do write_warning(string.rep('x', 1000)) end",
}


def rsp_path():
    if os.environ.get("RSP"):
        return os.environ["RSP"]
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "rsp")


def peak_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(rsp, code, throttle, memory_mb, cap_mb, items):
    cmd = [rsp, "run", "-e", code, "--range", f"1..{items}", "--throttle", str(throttle),
           "--memory-limit", f"{memory_mb}MB", "--max-output", f"{cap_mb}MB", "-f", "jsonl"]
    started = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while child.poll() is None:
        peak = max(peak, peak_kb(child.pid))
        time.sleep(0.002)
    return peak / 1024, time.monotonic() - started, child.returncode


def main():
    rsp = rsp_path()
    memory_mb, cap_mb, items = 16, 16, 16
    print(f"{items} items, each looping forever; --memory-limit {memory_mb}MB --max-output {cap_mb}MB\n")
    print("| script | throttle | rsp peak RSS MB | throttle x (limit + cap) MB | seconds | exit |")
    print("|---|---|---|---|---|---|")
    for name, code in SCRIPTS.items():
        for throttle in (1, 2, 4):
            peak, took, code_ = measure(rsp, code, throttle, memory_mb, cap_mb, items)
            bound = throttle * (memory_mb + cap_mb)
            print(f"| {name} | {throttle} | {peak:.0f} | {bound} | {took:.1f} | {code_} |")


if __name__ == "__main__":
    main()
