#!/usr/bin/env python3
"""Command mode side by side: `rsp run --cmd` against GNU parallel, xargs -P
and rust-parallel (when installed), running a real command per input.

Workloads: 10,000 x `true`, and 1,000 x `gzip -k` on small files, each at
-j 2 and -j 8. One warm-up, then RUNS interleaved rounds; medians of
commands/s and ratios to rsp are printed as a Markdown table. Answers are
checked: every tool must exit 0 (each exits non-zero when a command
failed), and every gzip run must leave one .gz file per input (50 of them
decompressed and compared), removed before the next run.

    python3 bench/cmd.py                  # builds rsp in release first
    RSP=/path/to/rsp RUNS=5 python3 bench/cmd.py
    RSP_BASE=/path/to/main/rsp python3 bench/cmd.py   # also an older rsp, side by side
    PATH=/tmp/rp/bin:$PATH python3 bench/cmd.py   # rust-parallel from cargo install --root /tmp/rp
"""
import gzip
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "5"))
# Fewer commands for a quick look on a loaded machine (GNU parallel runs ~100 `true`s a second there).
N_TRUE = int(os.environ.get("N_TRUE", "10000"))
N_GZIP = int(os.environ.get("N_GZIP", "1000"))


def sh(cmd):
    return subprocess.run(cmd, shell=True, text=True, capture_output=True).stdout.strip()


def timed(cmd, cwd):
    started = time.perf_counter()
    proc = subprocess.run(cmd, shell=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {cmd}\n{proc.stderr[-2000:]}")
    return elapsed


def tools(rsp, j, inputs):
    """(name, shell command) per tool; each reads the inputs from a file, one per line."""
    out = [
        ("rsp run --cmd", lambda c: f"{rsp} run -j {j} --no-summary --no-progress --cmd '{c} {{}}' < {inputs}"),
        ("xargs -P", lambda c: f"xargs -P {j} -n 1 -d '\\n' {c} < {inputs}"),
    ]
    base = os.environ.get("RSP_BASE")
    if base:
        out.insert(1, ("rsp (RSP_BASE)",
                       lambda c: f"{base} run -j {j} --no-summary --no-progress --cmd '{c} {{}}' < {inputs}"))
    if shutil.which("parallel"):
        out.append(("GNU parallel", lambda c: f"parallel --will-cite -j {j} {c} {{}} < {inputs}"))
    if shutil.which("rust-parallel"):
        out.append(("rust-parallel", lambda c: f"rust-parallel -j {j} {c} < {inputs}"))
    return out


def check_gzip(folder, n):
    names = [f for f in os.listdir(folder) if f.endswith(".gz")]
    assert len(names) == n, f"{len(names)} .gz files, expected {n}"
    for name in names[:50]:
        with gzip.open(os.path.join(folder, name)) as f:
            assert f.read() == f"line of {name[:-3]}\n".encode() * 20
    for name in names:
        os.remove(os.path.join(folder, name))


def main():
    rsp = os.environ.get("RSP")
    if not rsp:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
        rsp = os.path.join(ROOT, "target", "release", "rsp")
    work = tempfile.mkdtemp(prefix="rsp-cmd-bench-")
    true_inputs = os.path.join(work, "true.txt")
    with open(true_inputs, "w") as f:
        f.writelines(f"{i}\n" for i in range(N_TRUE))
    files = os.path.join(work, "files")
    os.mkdir(files)
    for i in range(N_GZIP):
        with open(os.path.join(files, f"f{i}.txt"), "w") as f:
            f.write(f"line of f{i}.txt\n" * 20)
    gz_inputs = os.path.join(work, "gz.txt")
    with open(gz_inputs, "w") as f:
        f.writelines(f"f{i}.txt\n" for i in range(N_GZIP))

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"rsp: {sh(rsp + ' --version')}; xargs: {sh('xargs --version | head -1')}")
    print(f"GNU parallel: {sh('parallel --version 2>/dev/null | head -1') or 'not installed'}; "
          f"rust-parallel: {sh('rust-parallel --version 2>/dev/null') or 'not installed'}")
    print(f"{RUNS} interleaved rounds after one warm-up; medians; load average {os.getloadavg()[0]:.1f}\n")
    print("| workload | -j | tool | median s | commands/s | rsp's rate / tool's |")
    print("|---|---|---|---|---|---|")
    for label, command, inputs, n, folder in [
        (f"{N_TRUE:,} x true", "true", true_inputs, N_TRUE, work),
        (f"{N_GZIP:,} x gzip -k", "gzip -k", gz_inputs, N_GZIP, files),
    ]:
        for j in (2, 8):
            runs = tools(rsp, j, inputs)
            times = {name: [] for name, _ in runs}
            for round_ in range(RUNS + 1):
                for name, make in runs:
                    elapsed = timed(make(command), folder)
                    if command.startswith("gzip"):
                        check_gzip(folder, n)
                    if round_ > 0:
                        times[name].append(elapsed)
            rsp_rate = n / statistics.median(times["rsp run --cmd"])
            for name, _ in runs:
                median = statistics.median(times[name])
                rate = n / median
                print(f"| {label} | {j} | {name} | {median:.3f} | {rate:,.0f} | {rsp_rate / rate:.2f}x |")
    # The machine may be shared: the load at the end too, not only at the start.
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
