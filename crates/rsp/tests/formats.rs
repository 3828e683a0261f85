//! Table, values and CSV as a person (or a spreadsheet) reads them: streams
//! on stderr prefixed by their item (hidden by --quiet-streams), object
//! results as columns, control characters that cannot break a row.

use std::process::{Command, Output};

fn rsp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rsp")).args(args).env("NO_COLOR", "1").output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SCRIPT: &str = "print('hello ' .. _) write_warning('low\\ndisk') write_verbose('v') write_debug('d') return _";

#[test]
fn print_warning_and_verbose_reach_stderr_prefixed_by_their_item() {
    for format in ["table", "values"] {
        let o = rsp(&["run", "-e", SCRIPT, "--range", "1..2", "--format", format, "-k"]);
        let err = stderr(&o);
        for line in ["rsp: item 0 (1): hello 1", "rsp: item 0 (1): WARNING: low", "rsp: item 0 (1): WARNING: disk"] {
            assert!(err.contains(line), "{format}: {line:?} missing in {err}");
        }
        assert!(err.contains("rsp: item 1 (2): VERBOSE: v"), "{format}: {err}");
        assert!(!err.contains(": d\n"), "debug records stay in the record: {err}");
        let quiet = rsp(&["run", "-e", SCRIPT, "--range", "1..2", "--format", format, "--quiet-streams"]);
        assert_eq!(stderr(&quiet), "", "{format}");
    }
    // JSON Lines keeps them in the record, and stderr stays quiet.
    let o = rsp(&["run", "-e", SCRIPT, "--range", "1..1", "--format", "jsonl"]);
    assert_eq!(stderr(&o), "");
    assert!(stdout(&o).contains("\"warning\":[\"low\\ndisk\"]"));
}

#[test]
fn object_results_become_columns_in_table_and_csv() {
    let script = "return {host = 'h' .. _, open = _ % 2 == 0}";
    let o = rsp(&["run", "-e", script, "--range", "1..2", "--format", "table", "-k"]);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("INPUT") && lines[0].contains("HOST") && lines[0].contains("OPEN"), "{out}");
    assert!(lines[1].contains("h1") && lines[1].contains("false"), "{out}");
    let o = rsp(&["run", "-e", script, "--range", "1..2", "--format", "csv", "-k"]);
    assert_eq!(
        stdout(&o).lines().next().unwrap(),
        "index,input,result.host,result.open,result,status,errors,duration_ms"
    );
    let rows: Vec<Vec<String>> = csv::Reader::from_reader(o.stdout.as_slice())
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    assert_eq!(rows[0][..5], ["0", "1", "h1", "false", ""]);
    assert_eq!(rows[1][..5], ["1", "2", "h2", "true", ""]);
}

#[test]
fn control_characters_never_break_a_table_row() {
    let o = rsp(&["run", "-e", "return 'a\\nb\\r\\27[2J'", "--range", "1..3", "--format", "table"]);
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 4, "a header and one line per item: {out}");
    assert!(!out.contains('\u{1b}'), "{out}");
    assert!(out.contains("a\\nb\\r\\x1b[2J"), "{out}");
}

/// Each `emit(v)` and each returned value is one output value; a returned
/// table is one value. `values` prints a line per output value, and the
/// record tells several values (`outputs`) from one array.
#[test]
fn values_print_a_line_per_output_value_and_records_tell_them_from_an_array() {
    let values = |script: &str| stdout(&rsp(&["run", "-e", script, "--range", "1..1", "--format", "values"]));
    assert_eq!(values("emit('a') emit({1, 2}) emit({k = 'v'})"), "a\n[1,2]\n{\"k\":\"v\"}\n");
    assert_eq!(values("emit('a') return 'b', 'c'"), "a\nb\nc\n");
    assert_eq!(values("return {'a', 'b'}"), "[\"a\",\"b\"]\n");
    assert_eq!(values("emit({'a', 'b'})"), "[\"a\",\"b\"]\n");
    assert_eq!(values("for i = 1, 3 do emit(i) end"), "1\n2\n3\n");
    assert_eq!(values("emit(nil) emit(1)"), "1\n", "a null value prints nothing");

    let record = |script: &str| -> serde_json::Value {
        let o = rsp(&["run", "-e", script, "--range", "1..1", "--format", "jsonl"]);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let emitted = record("emit('a') emit('b')");
    assert_eq!((&emitted["result"], &emitted["outputs"]), (&serde_json::json!(["a", "b"]), &serde_json::json!(2)));
    let returned = record("return {'a', 'b'}");
    assert_eq!(returned["result"], serde_json::json!(["a", "b"]));
    assert!(returned.get("outputs").is_none(), "{returned}");
    assert!(record("return 1").get("outputs").is_none());

    // The record formats keep one row per item: several values are its array.
    let o = rsp(&["run", "-e", "emit(1) emit(2)", "--range", "1..1", "--format", "csv"]);
    assert_eq!(stdout(&o).lines().nth(1).unwrap().split(',').take(3).collect::<Vec<_>>(), ["0", "1", "\"[1"]);
}
