//! Values keep their meaning through `rsp run`: integers beyond ±2^53 as
//! strings, bytes that are not UTF-8 exactly, script and module files as
//! bytes. The real binary, real pipes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn rsp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rsp"));
    cmd.env("NO_COLOR", "1");
    cmd
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child =
        rsp().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn records(out: &Output) -> Vec<Value> {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let mut recs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    recs.sort_by_key(|r| r["index"].as_u64().unwrap());
    recs
}

const BIG: [&str; 4] = ["18446744073709551616", "-9223372036854775809", "9007199254740993", "-9007199254740993"];

#[test]
fn big_integers_in_json_input_arrive_as_strings_and_come_back_unchanged() {
    let text = BIG.join("\n");
    for format in ["jsonl", "json"] {
        let input = if format == "json" { format!("[{}]", BIG.join(",")) } else { text.clone() };
        let out = run_with_stdin(
            &["run", "--input-format", format, "--ordered", "-e", "return {type(_), _}"],
            input.as_bytes(),
        );
        let recs = records(&out);
        assert_eq!(recs.len(), 4, "{format}");
        for (rec, big) in recs.iter().zip(BIG) {
            assert_eq!(rec["input"], json!(big), "{format}");
            assert_eq!(rec["result"], json!(["string", big]), "{format}");
        }
    }
    // 2^53 itself is still a number.
    let out = run_with_stdin(&["run", "--input-format", "jsonl", "-e", "return type(_)"], b"9007199254740992\n");
    assert_eq!(records(&out)[0]["result"], json!("number"));
}

#[test]
fn big_integers_in_vars_and_params_arrive_as_strings() {
    let out = run_with_stdin(
        &[
            "run",
            "--var",
            "v=18446744073709551616",
            "--param",
            "p={\"id\": -9223372036854775809}",
            "-e",
            "return {v, type(v), p.id, type(p.id)}",
        ],
        b"x\n",
    );
    assert_eq!(records(&out)[0]["result"], json!(["18446744073709551616", "string", "-9223372036854775809", "string"]));
}

#[test]
fn input_lines_reach_the_script_as_their_exact_bytes() {
    let out =
        run_with_stdin(&["run", "--ordered", "-e", "return {#_, string.byte(_, 1, -1)}"], b"\xff\xfe\x00a\n\xc3\xa9\n");
    let recs = records(&out);
    assert_eq!(recs[0]["result"], json!([4, 255, 254, 0, 97]));
    assert_eq!(recs[0]["input"], json!({"$bytes": "//4AYQ=="}));
    assert_eq!(recs[1]["result"], json!([2, 0xc3, 0xa9]));
    assert_eq!(recs[1]["input"], json!("é"));
}

#[test]
fn script_bytes_survive_record_then_var_then_input_back_into_a_script() {
    // A script makes bytes that are not UTF-8; its record carries them losslessly.
    let out = run_with_stdin(&["run", "-e", "return string.char(255, 0, 128) .. 'z'"], b"x\n");
    let produced = records(&out)[0]["result"].clone();
    assert_eq!(produced, json!({"$bytes": "/wCAeg=="}));
    let check = "local s = ... or v return {#s, string.byte(s, 1, -1)}";
    let expect = json!([4, 255, 0, 128, 122]);
    // Back in as a --var ...
    let var = format!("v={produced}");
    let out = run_with_stdin(&["run", "--var", &var, "-e", "return {#v, string.byte(v, 1, -1)}"], b"x\n");
    assert_eq!(records(&out)[0]["result"], expect);
    // ... and as a JSON input line.
    let line = format!("{produced}\n");
    let out = run_with_stdin(&["run", "--input-format", "jsonl", "-e", check], line.as_bytes());
    assert_eq!(records(&out)[0]["result"], expect);
}

#[test]
fn script_and_module_files_that_are_not_utf8_run() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bytes.luau");
    let module = dir.path().join("raw.luau");
    std::fs::write(&script, b"-- \xff comment\nreturn {#'\xfe', #raw.s, string.byte(raw.s, 1, -1)}\n").unwrap();
    std::fs::write(&module, b"return { s = '\xc0\xff' }\n").unwrap();
    let out = run_with_stdin(&["run", script.to_str().unwrap(), "--module", module.to_str().unwrap()], b"x\n");
    assert_eq!(records(&out)[0]["result"], json!([1, 2, 0xc0, 0xff]));
}

#[test]
fn luau_conformance_files_with_raw_bytes_are_no_longer_refused() {
    // Luau's own test files, copied unchanged into shared/ beside the checkout.
    let beside = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/luau-conformance");
    let dir = if beside.exists() { beside } else { std::path::PathBuf::from("/work/shared/luau-conformance") };
    for name in ["literals.luau", "pm.luau", "sort.luau"] {
        let path = dir.join(name);
        if !path.exists() {
            eprintln!("skipping {name}: no conformance files here");
            continue;
        }
        let out = rsp()
            .args(["run", path.to_str().unwrap(), "--range", "1..1", "--timeout", "30s"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("UTF-8"), "{name}: {stderr}");
        assert_ne!(out.status.code(), Some(2), "{name} was refused: {stderr}");
    }
}

#[test]
fn json_decode_in_a_script_keeps_big_integers_and_bytes() {
    let code = r#"local v = json.decode('{"id": 18446744073709551616, "raw": {"$bytes": "/w=="}}')
        return {type(v.id), v.id, #v.raw, string.byte(v.raw), json.encode(string.char(254))}"#;
    let out = run_with_stdin(&["run", "-e", code], b"x\n");
    assert_eq!(records(&out)[0]["result"], json!(["string", "18446744073709551616", 1, 255, "{\"$bytes\":\"/g==\"}"]));
}

#[test]
fn values_format_writes_byte_results_raw() {
    let out = run_with_stdin(&["run", "-f", "values", "-e", "return string.char(255, 0, 10)"], b"x\n");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"\xff\x00\n\n");
}
