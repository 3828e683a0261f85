#!/usr/bin/env python3
"""How long each kind of script runs past `--timeout 1s` under
`--memory-limit 64MB`: the stop latency of every class of work, and the
worst single library calls the interrupt cannot reach.

For each case, one item runs through `rsp run` (release build); printed are
the status, the item's own duration, the wall time of the whole command and
the latency past the 1 s deadline (duration - 1000 ms) for items that timed
out. A Markdown table goes to stdout.

    python3 bench/limits.py                 # builds rsp in release first
    RSP=/path/to/rsp python3 bench/limits.py
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BIG = 'local s=string.rep("a",2^24) local p=string.rep("a",2^16).."b" '
FILL = "local t = table.create(2^21, 1) for i = 1, #t do t[i] = -i end "

CASES = [
    ("endless loop", "while true do end"),
    ("pcall-wrapped endless loop", "while true do pcall(function() while true do end end) end"),
    ("sleep(3600)", "sleep(3600)"),
    ("plain string.find, 16 MB / 64 KB", BIG + "while true do string.find(s,p,1,true) end"),
    ("string.find without specials", BIG + "while true do s:find(p) end"),
    ("string.split, 16 MB / 64 KB", BIG + "while true do string.split(s,p) end"),
    ("table.move over 2^31 empty indices", "while true do table.move({}, -1073741824, 1073741822, -5, {}) end"),
    ("pattern backtracking (matcher)", 'local s=string.rep("a",2^16) while true do s:find(".-.-.-.-b") end'),
    ("string.gsub 4 MB", 'local s=string.rep("a",2^22) while true do s:gsub("a","bb") end'),
    ("string.rep to the limit", 'while true do local _ = string.rep("ab", 2^24) end'),
    ("string.format 2 x 16 MB", 'local s=string.rep("a",2^24) while true do local _ = string.format("%s%s", s, s) end'),
    ("table.concat 2^21 strings", 'local t=table.create(2^21,"abcdefgh") while true do local _ = table.concat(t) end'),
    ("table.sort 2^21 numbers", FILL + "while true do table.sort(t) end"),
    ("table.sort, C comparator (watchdog)", FILL + "table.sort(t, rawequal)"),
    ("table.foreachi, C function", FILL + "while true do table.foreachi(t, rawequal) end"),
    ("table.create(2^30)", "while true do local _ = table.create(2^30, 1) end"),
    ("table.unpack 1e7", "while true do pcall(table.unpack, {}, 1, 1e7) end"),
    ("buffer.fill 32 MB", "local b = buffer.create(2^25) while true do buffer.fill(b, 0, 7) end"),
    ("buffer.copy 32 MB", "local b = buffer.create(2^25) local c = buffer.create(2^25) while true do buffer.copy(c, 0, b) end"),
    ("utf8.len 16 MB", 'local s = string.rep("\\u{e9}", 2^23) while true do utf8.len(s) end'),
    ("string.pack 16 MB padding", 'while true do local _ = string.pack(string.rep("x", 2^24)) end'),
    ("json.encode 2^20 numbers", "local t = table.create(2^20, 1.5) while true do local _ = json.encode(t) end"),
]


def rsp_path():
    if os.environ.get("RSP"):
        return os.environ["RSP"]
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "rsp"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "rsp")


def main():
    rsp = rsp_path()
    print("| case | status | item ms | wall ms | past the deadline ms |")
    print("|---|---|---|---|---|")
    worst = (0.0, "")
    for name, code in CASES:
        cmd = [rsp, "run", "--timeout", "1s", "--memory-limit", "64MB", "-f", "jsonl", "-e", code, "--range", "1..1"]
        started = time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wall = (time.monotonic() - started) * 1e3
        rec = json.loads(out.stdout.splitlines()[0])
        status = rec["status"]
        if status == "Failed":
            status += ": " + rec["errors"][-1][:40]
        late = rec["duration_ms"] - 1000 if rec["status"] == "TimedOut" else None
        if late is not None and late > worst[0]:
            worst = (late, name)
        late_text = f"{late:.1f}" if late is not None else ""
        print(f"| {name} | {status} | {rec['duration_ms']:.1f} | {wall:.0f} | {late_text} |")
        sys.stdout.flush()
    print(f"\nworst latency past the deadline: {worst[0]:.1f} ms ({worst[1]})")


if __name__ == "__main__":
    main()
