#!/usr/bin/env python3
"""Side-by-side benchmark of `rsp run` against the tools users pick instead.

Same trivial map (n -> n*n), same concurrency (2 workers), output counted
with the answers checked. One warm-up, then 5 interleaved runs per tool;
medians and ratios of medians are printed as a Markdown table.

    python3 bench/run.py            # builds rsp in release first
    RSP=/path/to/rsp python3 bench/run.py

Installs GNU parallel with apt-get when missing and running as root.
"""
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "5"))


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, text=True, capture_output=True, **kw).stdout


def timed(cmd):
    """Wall time and stdout of one run."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out, _ = proc.communicate()
    elapsed = time.perf_counter() - started
    return elapsed, out


def peak_rss_kb(cmd):
    """Peak RSS of the command itself, by GNU time (a forked child's own
    ru_maxrss would start from this Python process's size)."""
    out = subprocess.run(["/usr/bin/time", "-f", "%M", "/bin/sh", "-c", cmd + " > /dev/null"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    return int(out.stderr.strip().splitlines()[-1])


def ensure_tools():
    """GNU parallel (a peer) and GNU time (for peak RSS), from Debian."""
    missing = [pkg for pkg, path in (("parallel", "parallel"), ("time", "/usr/bin/time")) if not shutil.which(path)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq " + " ".join(missing), shell=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not shutil.which("/usr/bin/time"):
        sys.exit("GNU time (/usr/bin/time) is needed: apt-get install time")
    return shutil.which("parallel") is not None


def squares_ok(out, n, parse):
    got = sorted(parse(line) for line in out.splitlines() if line.strip())
    return got == [i * i for i in range(1, n + 1)]


def main():
    rsp = os.environ.get("RSP")
    if not rsp:
        # Two builds: target-selection flags like --example would skip the binary.
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "runspace", "--example", "engine_bench"],
                       cwd=ROOT, check=True)
        rsp = os.path.join(ROOT, "target", "release", "rsp")
    have_parallel = ensure_tools()
    py = sys.executable

    # (name, items, command, parser of one output line)
    tools = [
        ("rsp run (JSON Lines out)", 1_000_000,
         f"{rsp} run -e 'return _ * _' --range 1..1000000 --throttle 2",
         lambda l: int(l.split('"result":')[1].split(",")[0])),
        ("rsp run --format values", 1_000_000,
         f"{rsp} run -e 'return _ * _' --range 1..1000000 --throttle 2 --format values", int),
        ("xargs -P2 sh -c", 2_000,
         "seq 1 2000 | xargs -P2 -I{} sh -c 'echo $(({}*{}))'", int),
        ("Python ThreadPoolExecutor(2)", 100_000,
         f"{py} -c 'import concurrent.futures as f; e=f.ThreadPoolExecutor(2); "
         f"print(\"\\n\".join(str(x) for x in e.map(lambda x: x*x, range(1, 100001))))'", int),
        ("Python ProcessPoolExecutor(2), chunks of 1000", 1_000_000,
         f"{py} -c 'import concurrent.futures as f, operator\n"
         f"if __name__ == \"__main__\":\n"
         f" e=f.ProcessPoolExecutor(2); r=range(1, 1000001)\n"
         f" print(\"\\n\".join(str(x) for x in e.map(operator.mul, r, r, chunksize=1000)))'", int),
    ]
    if have_parallel:
        tools.insert(3, ("GNU parallel -j2", 500, "seq 1 500 | parallel -j2 'echo $(({}*{}))'", int))

    for name, n, cmd, parse in tools:  # warm-up, and check the answers
        _, out = timed(cmd)
        if not squares_ok(out, n, parse):
            sys.exit(f"wrong answer from {name}")
    times = {name: [] for name, *_ in tools}
    for _ in range(RUNS):  # interleaved: A B C A B C ...
        for name, n, cmd, _ in tools:
            times[name].append(timed(cmd)[0])

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} CPUs, {cpu}, Linux {platform.release()}")
    print(f"Versions: {sh(f'{rsp} --version').strip()}; Python {platform.python_version()}"
          + (f"; {sh('parallel --version').splitlines()[0]}" if have_parallel else "; GNU parallel not installed"))
    print()
    print("| Tool (trivial map n -> n*n, 2 workers) | Items | Median time | Items/s | rsp (JSON Lines) is faster by |")
    print("|---|---:|---:|---:|---:|")
    rsp_rate = 1_000_000 / statistics.median(times[tools[0][0]])
    for name, n, _, _ in tools:
        med = statistics.median(times[name])
        rate = n / med
        ratio = "—" if name.startswith("rsp") else f"{rsp_rate / rate:,.1f}x"
        print(f"| {name} | {n:,} | {med:.3f} s | {rate:,.0f} | {ratio} |")

    # I/O-bound: 2,000 items sleeping 50 ms at throttle 200 (ideal 0.5 s).
    sleeps = [timed(f"{rsp} run -e 'sleep(0.05)' --range 1..2000 --throttle 200")[0] for _ in range(RUNS)]
    med = statistics.median(sleeps)
    print()
    print("| Scenario | Median | Ideal | Overhead |")
    print("|---|---:|---:|---:|")
    print(f"| 2,000 x sleep(0.05), throttle 200 | {med:.3f} s | 0.500 s | {100 * (med / 0.5 - 1):.0f}% |")

    # Memory for long streams stays flat.
    print()
    print("| Streamed items (throttle 2, output to /dev/null) | Peak RSS |")
    print("|---|---:|")
    for n in (100_000, 1_000_000, 10_000_000):
        kb = peak_rss_kb(f"{rsp} run -e 'return _ * _' --range 1..{n} --throttle 2")
        print(f"| {n:,} | {kb / 1024:.1f} MB |")

    # Engine figures only the library can measure.
    bench = os.path.join(os.path.dirname(rsp), "examples", "engine_bench")
    if os.path.exists(bench):
        figures = dict(line.split("\t") for line in sh(bench).splitlines() if "\t" in line)
        print()
        print("| Engine (library) | Figure |")
        print("|---|---:|")
        print(f"| open a sandboxed runspace | {figures['open_ms_per_runspace']} ms |")
        print(f"| memory per open runspace (RSS / VM heap) | {figures['rss_kb_per_runspace']} KB / "
              f"{figures['vm_heap_kb_per_runspace']} KB |")
        print(f"| library throughput, trivial script, throttle 2 | {int(figures['library_items_per_s']):,} items/s |")
        print(f"| stop() to end of `while true do end` | {figures['stop_latency_ms']} ms |")


if __name__ == "__main__":
    main()
