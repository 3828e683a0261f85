#!/usr/bin/env python3
"""Luau's own conformance tests, run through `rsp run`, as a Markdown report.

Each `*.luau` file of Luau's conformance suite is run once, as a user would
run a script file:

    rsp run FILE --range 1..1 --timeout 60s --memory-limit 512MB -f jsonl

A file passes when its single item completes and returns "OK" (Luau's own
harness, tests/Conformance.test.cpp, checks the same). Every failure is
classified from its first error message, by matching it against what
runspace deliberately leaves out:

- "deliberately unsupported": `loadstring`/`load`, `getfenv`/`setfenv`,
  `debug.*`, `os.*`, `collectgarbage` options other than "collect" and
  "count" (Luau's own), `require`
  of files, the C functions and helpers only Luau's C++ harness registers
  (`vec2`, `cYieldingIterator`, `makelud`, ...), and syntax behind Luau
  feature flags that are not enabled;
- "bug": everything else.

A first error says nothing about the rest of a file, so every failing file
is then run again, as a transformed copy in a temporary directory (the
upstream files are never touched): a prelude module (`--module`) replaces
each missing name with a stub whose error names it, bytes that are not valid
UTF-8 inside string literals become `\\ddd` escapes (the same string to
Luau), and each failing statement is blanked out in turn, up to a limit.
That walk lists every classified failure it meets and whether the file
passes once they are skipped. It is evidence for a human, not a verdict: a
skipped statement can make later ones fail.

    python3 bench/conformance.py                      # Markdown on stdout
    python3 bench/conformance.py --json > report.json
    python3 bench/conformance.py --dir DIR --rsp PATH pm.luau sort.luau

Python 3.11 standard library only; no network. Exits 0 whatever the tests
do (it is a report); 2 only when it cannot run at all (no rsp, no files).
"""
import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What runspace's sandbox removes or never loads (README, "Sandbox").
REMOVED_FUNCTIONS = ["loadstring", "load", "dofile", "loadfile", "getfenv", "setfenv"]
REMOVED_LIBRARIES = ["debug", "os", "io"]

# Globals only Luau's C++ harness (tests/Conformance.test.cpp) registers.
HARNESS_FUNCTIONS = [
    "vec2", "vertex", "int64", "makelud", "cYieldingIterator", "is_native", "is_native_if_supported",
    "getcoverage", "breakpoint", "setblockallocations", "cxxthrow", "resumeerror", "singleYield",
    "multipleYields", "multipleYieldsWithNestedCall", "passthroughCall", "passthroughCallMoreResults",
    "passthroughCallArgReuse", "passthroughCallVaradic", "passthroughCallWithState", "pcallThenCall",
    "pcallThenPcall",
]
HARNESS_TABLES = ["RTTI"]
# Members the harness's vector metatable answers (setupVectorHelpers).
HARNESS_VECTOR_MEMBERS = ["Magnitude", "Unit", "Dot", "Cross"]

# Syntax that only parses behind a Luau feature flag we do not enable:
# (pattern on the failing line, the flag).
FLAGGED_SYNTAX = [
    (re.compile(r"^\s*(export\s+)?class\b"), "DebugLuauUserDefinedClasses (class declarations)"),
    (re.compile(r"(?<![\w.])(0[xXbB][\w]+|\d[\d_]*)i\b"), "LuauIntegerType2 (integer literals like 123i)"),
]

# Errors whose cause is known and being fixed on another branch: (pattern on
# the error, pattern the failing line must match or None, the fix).
KNOWN_BUGS = [
    (re.compile(r"valid UTF-8"), None, "script files are bytes (values branch)"),
    (re.compile(r"attempt to modify a readonly table"), re.compile(r"\b_G\b"),
     "`_G` is the item's writable environment (engine branch)"),
]

# Failures diagnosed by reading the test and our code (docs/conformance.md
# has the reasoning): (file, pattern on the error, pattern on the failing
# line or None, kind, reason, fix). They are matched before the generic rules.
NOT_A_COROUTINE = "items do not run in a coroutine (new bug, docs/conformance.md)"
MAXCSTACK = "deliberate difference: mlua builds Luau with LUAI_MAXCSTACK=1000000 (upstream 8000); bounded by the memory limit"
DIAGNOSED = [
    ("coroutine.luau", r"assertion failed", r"assert\(coroutine\.isyieldable\(\)\)", "bug", "top level not yieldable",
     NOT_A_COROUTINE),
    ("coroutine.luau", r"assertion failed", r"assert\(main == nil\)", "unsupported",
     "harness: resumes the main thread itself, so `coroutine.running()` is nil", ""),
    ("pcall.luau", r"assertion failed", r"#res == 10000|count == 200", "bug", "pcall nests on the C stack",
     NOT_A_COROUTINE),
    ("pcall.luau", r"assertion failed|C stack overflow", r"regularadd\(2000", "bug", "pcall nests on the C stack",
     NOT_A_COROUTINE),
    ("pcall.luau", r"assertion failed", r"assert\(result\)", "bug", "pcall nests on the C stack", NOT_A_COROUTINE),
    ("pcall.luau", r"assertion failed", r"not enough memory", "unsupported",
     "harness: an allocator that refuses blocks over 8 MB (`table.create(1e6)` fits in our limit)", ""),
    ("vector.luau", r"assertion failed", r":Dot\(|:Cross\(|doDot", "unsupported",
     "harness: vector `__namecall` (`:Dot`, `:Cross`)", ""),
    ("cyield.luau", r"MAXCCALLS", None, "bug", "one C call level used before the script runs", NOT_A_COROUTINE),
    ("ndebug_upvalues.luau", r"yield across|yield from the top level|not \"OK\"", None, "unsupported",
     "harness: a yield callback inspects a yield from the main chunk", ""),
    ("iter.luau", r"assertion failed", r"assert\(ok and val == (i|10)\)", "unsupported",
     "harness: `cYieldingIterator` (missing inside a coroutine, so `resume` returns false)", ""),
    ("native_types.luau", r"assertion failed", r"assert\(ok\)", "unsupported",
     "harness: `is_native`, called inside `pcall`", ""),
    ("types.luau", r"type information|concatenate function", None, "unsupported",
     "harness: `RTTI` (the type checker's view of every global)", ""),
    ("types.luau", r"index boolean with '__index'", r"getmetatable\(_G\)", "unsupported",
     "harness: `RTTI`, reached through `getmetatable(_G).__index`, which is `false` here "
     "(the item's `_G` has a protected metatable)", ""),
    ("move.luau", r"timed out|killed", None, "bug", "`table.move` over a wide sparse range runs for minutes",
     "long C calls: enable `LuauTableMoveTimeoutFix` (timeouts branch)"),
    ("coroutine.luau", r"length of a nil value", r"#t1\b", "bug",
     "`eqtab(_G.x, ...)`: the coroutine could not write `_G.x`", "`_G` is the item's writable environment (engine branch)"),
    ("coroutine.luau", r"assertion failed", r"eqtab\(_G\.x", "bug", "the coroutine failed writing `_G.x`",
     "`_G` is the item's writable environment (engine branch)"),
    ("coroutine.luau", r"assertion failed", r"C\[1\] == undef", "unsupported",
     "needs the `collectgarbage()` just before it (removed)", ""),
    ("tables.luau", r"assertion failed", r"table\.create\(8000, 0\)", "unsupported",
     f"`table.unpack` of 8000 values succeeds ({MAXCSTACK})", ""),
    ("coroutine.luau", r"assertion failed|too many results to resume", r"lim = 1000000",
     "unsupported", f"a coroutine returns ~1,000,000 values ({MAXCSTACK})", ""),
]

# A write to `_G`, for errors that carry no line.
G_WRITE = re.compile(r"rawset\(\s*_G\b|\b_G\s*\[[^\]]*\]\s*=[^=]|\b_G\.\w+\s*=[^=]")

STUB_PREFIX = "conformance stub: "
ASSERT_PREFIX = "conformance assert failed at "
MAX_SKIPS = 60
KILL_GRACE = 10.0


@dataclass
class Run:
    """One `rsp run` of one file."""
    status: str  # pass, fail, timeout, error (rsp refused the file)
    seconds: float
    error: str = ""
    line: int | None = None
    result: object = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """Why a failure happened: `unsupported` or `bug`, with the evidence."""
    kind: str
    reason: str
    known_fix: str = ""


@dataclass
class Finding:
    """One failure met while walking a file past its first error."""
    line: int | None
    error: str
    kind: str
    reason: str
    known_fix: str = ""
    action: str = ""  # what the walk did about it


@dataclass
class FileReport:
    file: str
    result: str
    seconds: float
    first_error: str = ""
    kind: str = ""  # unsupported / bug, for failures
    reason: str = ""
    known_fix: str = ""
    walk: list[Finding] = field(default_factory=list)
    walk_end: str = ""  # how the walk ended


def fail(message):
    print(f"conformance: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    args = parse_args()
    rsp = Path(args.rsp)
    if not (rsp.is_file() and os.access(rsp, os.X_OK)):
        fail(f"no rsp binary at {rsp} (build it: cargo build --release -p rsp, or pass --rsp)")
    directory = Path(args.dir)
    files = select_files(directory, args.files)
    if not files:
        fail(f"no .luau files in {directory} (pass --dir)")
    runner = Runner(rsp, args.timeout, args.memory_limit)
    reports = []
    with tempfile.TemporaryDirectory(prefix="rsp-conformance-") as scratch:
        stubs = write_stub_module(Path(scratch))
        for path in files:
            report = check_file(runner, path, Path(scratch), stubs, walk=not args.no_walk)
            reports.append(report)
            print(f"{report.file}: {report.result} {report.kind}", file=sys.stderr, flush=True)
    meta = metadata(rsp, directory, args)
    if args.json:
        json.dump({"meta": meta, "summary": summary(reports), "files": [asdict(r) for r in reports]},
                  sys.stdout, indent=2)
        print()
    else:
        print(markdown(meta, reports))


def parse_args():
    p = argparse.ArgumentParser(description="Run Luau's conformance tests through `rsp run` and report.")
    p.add_argument("files", nargs="*", help="only these files (names inside --dir)")
    p.add_argument("--dir", default=str(default_dir()),
                   help="directory of the conformance .luau files (default: ../shared/luau-conformance "
                        "next to the repository)")
    p.add_argument("--rsp", default=str(ROOT / "target" / "release" / "rsp"),
                   help="the rsp binary (default: target/release/rsp)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-file timeout in seconds (default 60)")
    p.add_argument("--memory-limit", default="512MB", help="per-runspace memory limit (default 512MB)")
    p.add_argument("--no-walk", action="store_true", help="only the first error of each file")
    p.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    return p.parse_args()


def default_dir():
    """`../shared/luau-conformance` from the repository root; from a linked git
    worktree, the same path next to the main checkout."""
    here = ROOT.parent / "shared" / "luau-conformance"
    if here.is_dir():
        return here
    try:
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=ROOT,
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return here
    main = Path(common).parent.parent / "shared" / "luau-conformance" if common else here
    return main if main.is_dir() else here


def select_files(directory, names):
    if names:
        files = [directory / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            fail(f"no such file: {', '.join(missing)}")
        return files
    return sorted(directory.glob("*.luau"))


class Runner:
    """Runs `rsp run` on one file, never for longer than the timeout plus a grace."""

    def __init__(self, rsp, timeout, memory_limit):
        self.rsp = rsp
        self.timeout = timeout
        self.memory_limit = memory_limit

    def run(self, script, modules=()):
        cmd = [str(self.rsp), "run", str(script), "--range", "1..1", "--timeout", f"{self.timeout:g}s",
               "--memory-limit", self.memory_limit, "-f", "jsonl", "--no-summary", "--no-progress"]
        for m in modules:
            cmd += ["--module", str(m)]
        started = time.monotonic()
        # Its own session, so a kill reaches rsp and anything it started.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=self.timeout + KILL_GRACE)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it ended just now
            proc.communicate()
            return Run("timeout", time.monotonic() - started,
                       f"still running {self.timeout + KILL_GRACE:g} s after start: killed")
        seconds = time.monotonic() - started
        return interpret(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), seconds)


def interpret(code, out, err, seconds):
    """Turns rsp's record (or its refusal on stderr) into a Run."""
    record = None
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if record is None:
        message = " ".join(err.split()) or f"no record, exit code {code}"
        message = message.removeprefix("rsp: error: ")
        m = re.search(r"at line (\d+)", message)
        return Run("error", seconds, message, int(m.group(1)) if m else None)
    status = record.get("status")
    if status == "Completed" and record.get("result") == "OK":
        return Run("pass", seconds, result="OK")
    errors = record.get("errors") or []
    if status == "TimedOut":
        return Run("timeout", seconds, errors[0] if errors else "timed out")
    if status == "Completed":
        return Run("fail", seconds, f"returned {json.dumps(record.get('result'))}, not \"OK\"",
                   result=record.get("result"))
    message = errors[0] if errors else f"status {status}"
    m = re.match(r"[^:\s]+\.luau:(\d+):", message)
    return Run("fail", seconds, message, int(m.group(1)) if m else None, warnings=record.get("warning") or [])


def check_file(runner, path, scratch, stubs, walk):
    """The plain run decides the result; a walk over a copy looks past the first error."""
    plain = runner.run(path)
    report = FileReport(path.name, plain.status, plain.seconds)
    if plain.status == "pass":
        return report
    source = path.read_bytes()
    verdict = classify(plain, source, path.name)
    report.first_error = plain.error
    report.kind, report.reason, report.known_fix = verdict.kind, verdict.reason, verdict.known_fix
    if walk and plain.status == "timeout":
        report.walk_end = "not walked: a copy would time out the same way"
    elif walk:
        report.walk, report.walk_end = walk_file(runner, path.name, source, scratch, stubs)
    return report


def classify(run, source, name="", callers=()):
    """Matches an error against what runspace leaves out; anything else is a bug.

    `callers` are the lines that led to the failing one (when known): a
    diagnosis may name the call site rather than a line inside a helper.
    """
    error = run.error
    line = source_line(source, run.line)
    context = [line] + [source_line(source, n) for n in callers]
    # A diagnosis may also name the statement a few lines above (the call whose
    # result the failing assert checks).
    nearby = context + [source_line(source, n) for n in range((run.line or 0) - 1, (run.line or 0) - 13, -1)]
    for file, error_pattern, line_pattern, kind, reason, fix in DIAGNOSED:
        if file == name and re.search(error_pattern, error) and (
                line_pattern is None or any(re.search(line_pattern, text) for text in nearby)):
            return Verdict(kind, reason, fix)
    if run.status == "timeout":
        return Verdict("bug", "timed out")
    m = re.search(re.escape(STUB_PREFIX) + r"(\S+)", error)
    if m:
        return Verdict("unsupported", describe_missing(m.group(1)))
    if re.search(r"collectgarbage called with invalid option|collectgarbage must be called with", error):
        opt = re.search(r"collectgarbage\s*\(\s*([\"'])(\w+)\1", line)
        return Verdict("unsupported", f"collectgarbage(\"{opt.group(2) if opt else 'collect'}\")")
    m = re.search(r"attempt to index vector with '(\w+)'", error)
    if m and m.group(1) in HARNESS_VECTOR_MEMBERS:
        return Verdict("unsupported", f"harness: vector metatable member `{m.group(1)}`")
    if "syntax error" in error:
        for pattern, flag in FLAGGED_SYNTAX:
            if pattern.search(line):
                return Verdict("unsupported", f"feature flag {flag}")
    for pattern, line_pattern, fix in KNOWN_BUGS:
        if pattern.search(error) and (line_pattern is None or line_pattern.search(line)):
            return Verdict("bug", first_words(error), fix)
    if "attempt to modify a readonly table" in error and not line and G_WRITE.search(source.decode("latin-1")):
        # Raised inside a C function (rawset, table.insert...): no line to look at.
        return Verdict("bug", "readonly table, raised without a line; the file writes to `_G`",
                       "`_G` is the item's writable environment (engine branch), probably")
    if re.search(r"\bnil\b|assertion failed", error):
        # Without a stub the message does not name the global: look for one on
        # the failing line, then on the lines that called it.
        for text in context:
            names = [n for n in missing_names() if re.search(rf"(?<![\w.:]){re.escape(n)}\b", text)]
            if names:
                return Verdict("unsupported", describe_missing(names[0]))
    return Verdict("bug", first_words(error))


def missing_names():
    return REMOVED_FUNCTIONS + REMOVED_LIBRARIES + HARNESS_FUNCTIONS + HARNESS_TABLES


def describe_missing(name):
    base = name.split(".")[0].split("(")[0]
    if base in HARNESS_FUNCTIONS or base in HARNESS_TABLES:
        return f"harness: `{name}`"
    return f"removed: `{name}`"


def first_words(error):
    return error if len(error) <= 120 else error[:117] + "..."


def source_line(source, number):
    if not number:
        return ""
    lines = source.split(b"\n")
    return lines[number - 1].decode("utf-8", "replace") if 0 < number <= len(lines) else ""


# ---------------------------------------------------------------------------
# Past the first error


def write_stub_module(scratch):
    """A prelude module: every missing name becomes a stub whose error names it.

    A module body runs before the sandbox is sealed, so its global writes
    reach the table scripts read from. Names that exist are left alone, so
    once runspace provides one, its real behaviour is what gets tested.
    """
    lines = [
        "-- Generated by bench/conformance.py: stand-ins that name what is missing.",
        "-- `callers` lists the line of every Lua frame above the stub (there is",
        "-- no debug library to ask), so the walk can blank the outermost call.",
        "-- Recursion repeats a position: each is listed once, and only the 12",
        "-- outermost are kept (the walk wants the outermost).",
        "local function callers()",
        "  local at = {}",
        "  for level = 3, 200 do",
        "    local _, message = pcall(error, '', level)",
        "    local position = string.match(message, '^(.-:%d+): $')",
        "    if position and not string.find(position, '^conformance_stubs:') and at[#at] ~= position then",
        "      table.insert(at, position)",
        "    end",
        "  end",
        "  return table.concat(at, ' < ', math.max(1, #at - 11))",
        "end",
        "local function fail(name)",
        f"  error(\"{STUB_PREFIX}\" .. name .. ' [called at ' .. callers() .. ']', 3)",
        "end",
        "local function stub(name)",
        "  return function() fail(name) end",
        "end",
        "local function stubtable(name)",
        "  return setmetatable({}, { __index = function(_, k) return stub(name .. '.' .. tostring(k)) end })",
        "end",
    ]
    for name in REMOVED_FUNCTIONS + HARNESS_FUNCTIONS:
        lines.append(f"if {name} == nil then {name} = stub(\"{name}\") end")
    for name in REMOVED_LIBRARIES + HARNESS_TABLES:
        lines.append(f"if {name} == nil then {name} = stubtable(\"{name}\") end")
    lines += [
        "-- A failing assert reports its call chain as a warning record (its",
        "-- message stays Luau's, as tests compare messages), so the walk can",
        "-- blank the outermost call rather than a line inside a helper.",
        "do",
        "  assert = function(v, ...)",
        "    if v then return v, ... end",
        f"    write_warning('{ASSERT_PREFIX}' .. callers())",
        "    if select('#', ...) == 0 then error('assertion failed!', 2) end",
        "    error((...), 0)",
        "  end",
        "end",
        "do",
        "  local real = collectgarbage",
        "  collectgarbage = function(option, ...)",
        "    local ok, result = pcall(real, option, ...)",
        "    if ok then return result end",
        "    fail('collectgarbage(\"' .. tostring(option or 'collect') .. '\")')",
        "  end",
        "end",
        "return true",
    ]
    path = scratch / "conformance_stubs.luau"
    path.write_text("\n".join(lines) + "\n")
    return path


def walk_file(runner, name, source, scratch, stubs):
    """Runs a copy with stubs, blanking each failing statement, to list every failure met."""
    findings = []
    copy = scratch / name
    text = source
    if not is_utf8(text):
        # rsp reads script files as bytes; escaping keeps the walk's line
        # edits on text and changes nothing for Luau.
        text = escape_non_utf8(text)
    lines = text.split(b"\n")
    seen = set()
    blanked_names = {}  # name assigned on a blanked line -> that line
    for _ in range(MAX_SKIPS):
        current = b"\n".join(lines)
        copy.write_bytes(current)
        run = runner.run(copy, [stubs])
        if run.status == "pass":
            return findings, "passes once these are skipped" if findings else "passes"
        chain = stub_callers(run.error, name) or assert_callers(run.warnings, name, run.line)
        verdict = classify(run, current, name, chain)
        finding = Finding(run.line, run.error, verdict.kind, verdict.reason, verdict.known_fix)
        if verdict.kind == "bug" and not verdict.known_fix:
            cause = next(filter(None, (consequence_of(source_line(current, n), blanked_names)
                                       for n in [run.line, *chain])), "")
            if cause:
                finding.kind, finding.reason = "consequence", cause
        findings.append(finding)
        if run.status == "timeout":
            return findings, "stopped: timed out"
        if run.status == "error":
            return findings, "stopped: the copy does not compile"
        # The outermost call in this file first: blanking a line inside a
        # helper would break every later use of the helper.
        targets = [n for n in chain if n not in seen] or [run.line]
        if targets[0] is None or targets[0] in seen:
            return findings, "stopped: no line to skip"
        blanked = None
        for target in targets:
            blanked = blank_statement(runner, copy, lines, target)
            if blanked is not None:
                break
        if blanked is None:
            finding.action = "could not blank the statement alone"
            return findings, f"stopped at line {targets[0]}: multi-line statement"
        for number in range(blanked[1][0], blanked[1][1] + 1):
            for assigned in assigned_names(lines[number - 1].decode("utf-8", "replace")):
                blanked_names.setdefault(assigned, number)
        lines, (first, last) = blanked
        seen.update(range(first, last + 1))
        finding.line = first
        finding.action = f"blanked line {first}" if first == last else f"blanked lines {first}-{last}"
    return findings, f"stopped: more than {MAX_SKIPS} failures"


def assigned_names(code):
    """Names a line defines or assigns: what a later line misses once it is blanked."""
    names = re.findall(r"\bfunction\s+([A-Za-z_]\w*)", code)
    m = re.match(r"\s*(?:local\s+)?([A-Za-z_][\w\s,.:<>|?]*?)\s*=[^=]", code)
    if m:
        names += re.findall(r"(?<![.:])\b([A-Za-z_]\w*)\b", re.sub(r":\s*[\w<>|?]+", "", m.group(1)))
    return [n for n in names if n != "local"]


def consequence_of(line, blanked_names):
    """The blanked line a failing line depends on, if it uses a name that line assigned."""
    for name, number in blanked_names.items():
        if re.search(rf"(?<![\w.:]){re.escape(name)}\b", line):
            return f"uses `{name}`, assigned on blanked line {number}"
    return ""


def stub_callers(error, name):
    """Lines of `name` on a stub's call chain, outermost first."""
    m = re.search(r"\[called at ([^\]]*)\]", error)
    return chain_lines(m.group(1), name) if m else []


def assert_callers(warnings, name, line):
    """The call chain of the failed assert that ended the run, outermost first."""
    for warning in reversed(warnings):
        if warning.startswith(ASSERT_PREFIX):
            chain = chain_lines(warning.removeprefix(ASSERT_PREFIX), name)
            # An assert with a message raises it without a position: take the last one.
            if chain and (line is None or chain[-1] == line):
                return chain
    return []


def chain_lines(chain, name):
    """`a.luau:3 < a.luau:9` (innermost first) -> [9, 3] for a.luau."""
    found = []
    for position in chain.split(" < "):
        chunk, _, number = position.rpartition(":")
        if chunk == name and number.isdigit():
            found.append(int(number))
    return found[::-1]


def blank_statement(runner, copy, lines, number):
    """Blanks the smallest run of lines around `number` that leaves the file compiling.

    Lines are emptied, not removed, so line numbers keep matching the
    upstream file. Candidate runs must balance brackets and block keywords,
    so a blank never swallows half a block.
    """
    candidates = sorted(((a, b) for a in range(number, max(0, number - 8), -1)
                         for b in range(number, min(len(lines), number + 8) + 1)),
                        key=lambda r: (r[1] - r[0], -r[0]))
    for first, last in candidates:
        chunk = b"\n".join(lines[first - 1:last]).decode("utf-8", "replace")
        if not balanced(chunk):
            continue
        trial = lines[:first - 1] + [b""] * (last - first + 1) + lines[last:]
        copy.write_bytes(b"\n".join(trial))
        if compiles(runner, copy):
            return trial, (first, last)
    return None


def balanced(code):
    code = re.sub(r"--\[(=*)\[.*?\]\1\]|--[^\n]*", "", code, flags=re.S)
    code = re.sub(r"\[(=*)\[.*?\]\1\]|\"(\\.|[^\"\\])*\"|'(\\.|[^'\\])*'|`(\\.|[^`\\])*`", "s", code, flags=re.S)
    words = re.findall(r"\b(function|do|then|repeat|end|until|elseif)\b", code)
    # `while/for ... do` and `if ... then` open one block each; `elseif ... then` opens none.
    opens = words.count("function") + words.count("do") + words.count("then") - words.count("elseif")
    opens += words.count("repeat")
    closes = words.count("end") + words.count("until")
    return opens == closes and all(code.count(a) == code.count(b) for a, b in ("()", "{}", "[]"))


def compiles(runner, copy):
    # No input: rsp compiles the script (exit 2 on a syntax error) and runs nothing.
    try:
        result = subprocess.run([str(runner.rsp), "run", str(copy), "--input", os.devnull, "-f", "jsonl",
                                 "--no-summary", "--no-progress"], stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def is_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def escape_non_utf8(src):
    """The same program with every byte >= 0x80 in a string literal as a `\\ddd` escape.

    A long string holding such bytes becomes a quoted one (`\\` before each
    newline keeps the line numbers); bytes in comments become `?`.
    """
    out = bytearray()
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith(b"--", i):
            level = long_bracket(src, i + 2)
            end = find_close(src, i + 2, level) if level is not None else src.find(b"\n", i)
            end = n if end < 0 else end
            out += bytes(b if b < 0x80 else ord("?") for b in src[i:end])
            i = end
        elif c == ord("[") and long_bracket(src, i) is not None:
            level = long_bracket(src, i)
            start = i + level + 2
            end = find_close(src, i, level)
            end = n if end < 0 else end
            body = src[start:end - level - 2]
            if all(b < 0x80 for b in body):
                out += src[i:end]
            else:
                if body.startswith(b"\r\n"):
                    body = body[2:]
                elif body.startswith(b"\n"):
                    body = body[1:]
                    out += b"\n"  # the skipped newline still counts as a line: keep it, outside the string
                out += b'"' + escape_bytes(body) + b'"'
            i = end
        elif c in b"\"'`":
            j = i + 1
            out.append(c)
            while j < n and src[j] != c and src[j] != ord("\n"):
                if src[j] == ord("\\") and j + 1 < n:
                    out += src[j:j + 2]
                    j += 2
                    continue
                out += b"\\%03d" % src[j] if src[j] >= 0x80 else bytes([src[j]])
                j += 1
            if j < n:
                out.append(src[j])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


def escape_bytes(body):
    out = bytearray()
    for b in body:
        if b == ord("\n"):
            out += b"\\\n"
        elif b in b'"\\' or b >= 0x80 or b < 0x20:
            out += b"\\%03d" % b
        else:
            out.append(b)
    return bytes(out)


def long_bracket(src, i):
    """The level of a long bracket `[==[` opening at i, or None."""
    m = re.compile(rb"\[(=*)\[").match(src, i)
    return len(m.group(1)) if m else None


def find_close(src, i, level):
    """The index just past the `]==]` closing the long bracket opened at i, or -1."""
    close = b"]" + b"=" * level + b"]"
    j = src.find(close, i + level + 2)
    return j + len(close) if j >= 0 else -1


# ---------------------------------------------------------------------------
# Output


def summary(reports):
    counts = {"files": len(reports), "pass": 0, "unsupported": 0, "bug": 0, "timeout": 0,
              "unsupported_with_later_bugs": 0, "undiagnosed_later_failures": 0}
    for r in reports:
        if r.result == "pass":
            counts["pass"] += 1
            continue
        counts[r.kind] += 1
        counts["timeout"] += r.result == "timeout"
        if r.kind == "unsupported" and any(f.kind == "bug" and f.known_fix for f in r.walk):
            counts["unsupported_with_later_bugs"] += 1
        counts["undiagnosed_later_failures"] += sum(f.kind == "bug" and not f.known_fix for f in r.walk)
    return counts


def metadata(rsp, directory, args):
    def capture(cmd, cwd=None):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": capture(["git", "log", "-1", "--format=%h %s"], cwd=ROOT),
        "rsp": f"{rsp} ({capture([str(rsp), '--version'])})",
        "dir": str(directory),
        "timeout_s": args.timeout,
        "memory_limit": args.memory_limit,
    }


def markdown(meta, reports):
    out = [
        "## Luau conformance through `rsp run`",
        "",
        f"Date: {meta['date']}; commit: {meta['commit']}; rsp: {meta['rsp']}",
        f"Files: {meta['dir']}; per file: `--timeout {meta['timeout_s']:g}s --memory-limit {meta['memory_limit']}`",
        "",
        "| File | Result | Wall time | Classification | First error | Past the first error |",
        "|---|---|---:|---|---|---|",
    ]
    for r in reports:
        cls = "" if r.result == "pass" else ("deliberately unsupported" if r.kind == "unsupported" else "**bug**")
        reason = f": {r.reason}" if r.reason and r.reason != first_words(r.first_error) and not r.known_fix else ""
        fix = f" — {r.known_fix}" if r.known_fix else ""
        out.append(f"| {r.file} | {r.result} | {r.seconds:.2f} s | {cls}{reason}{fix} | "
                   f"{cell(r.first_error)} | {cell(walk_summary(r))} |")
    s = summary(reports)
    out += [
        "",
        f"**{s['files']} files: {s['pass']} pass, {s['unsupported']} deliberately unsupported, "
        f"{s['bug']} bug** (of which {s['timeout']} timed out); "
        f"{s['unsupported_with_later_bugs']} of the unsupported files also show a diagnosed bug past their first "
        f"error; the walks met {s['undiagnosed_later_failures']} undiagnosed failures (read them below: most are "
        "consequences of a stub or a blanked statement).",
    ]
    walked = [r for r in reports if r.walk]
    if walked:
        out += ["", "### Past the first error", "",
                "Each failing file again, as a copy: missing names stubbed, non-UTF-8 bytes escaped, "
                "each failing statement blanked in turn. Evidence to read, not a verdict.", ""]
        for r in walked:
            out.append(f"- **{r.file}** ({r.walk_end}):")
            out += [f"  - {line}" for line in walk_lines(r.walk)]
    return "\n".join(out)


def walk_lines(findings):
    """Findings grouped: one line per missing name, per known fix, for all
    consequences of blanking; one line per other bug."""
    groups = {}
    singles = []
    for f in findings:
        where = str(f.line) if f.line else ""
        if f.kind == "unsupported":
            groups.setdefault(f"unsupported, {f.reason}", []).append(where)
        elif f.known_fix:
            groups.setdefault(f"bug — {f.known_fix}", []).append(where)
        elif f.kind == "consequence":
            groups.setdefault("consequences of blanking (the line uses a name a blanked line assigned)",
                              []).append(where)
        else:
            singles.append(f"**BUG** at {'line ' + where if f.line else 'file level'}: `{short(f.error)}`")
    grouped = [f"{label}: {where_text(at)}" for label, at in groups.items()]
    return grouped + singles


def where_text(lines):
    numbers = [n for n in lines if n]
    text = f"{'lines' if len(numbers) > 1 else 'line'} {', '.join(numbers)}" if numbers else ""
    if len(numbers) < len(lines):
        text = f"{text} and the whole file" if text else "the whole file"
    return text


def walk_summary(r):
    if not r.walk:
        return ""
    counts = {kind: sum(f.kind == kind for f in r.walk) for kind in ("unsupported", "bug", "consequence")}
    return (f"{counts['unsupported']} unsupported, {counts['bug']} bug, {counts['consequence']} consequence; "
            f"{r.walk_end}")


def short(text, limit=160):
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def cell(text):
    return short(text, 100).replace("|", "\\|")


if __name__ == "__main__":
    main()
