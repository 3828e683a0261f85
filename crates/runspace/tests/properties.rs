//! Property tests for every parser a user or a file can feed, and for the
//! JSON ↔ Luau conversion: nothing panics, round trips hold, errors quote
//! the input. The scanner's own parsers (ports, targets) are tested in
//! `runspace-scan`. The same properties run far longer under
//! `fuzz/run.sh`; case counts here are bounded so the normal suite stays
//! fast.

use proptest::prelude::*;
use runspace::inputs::{Range, MAX_RANGE_LEN};
use runspace::joblog::{self, Line};
use runspace::json::{self, MAX_SAFE_INTEGER};
use runspace::units::{duration_from_secs, format_size, parse_duration, parse_size, MAX_DURATION, MAX_SIZE};
use runspace::{Halt, HaltRule, HaltWhen, Runspace, Script, SessionState, Status};
use serde_json::{Map, Value};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// Text that looks like what people type for durations and sizes, and noise.
fn unit_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-+]?[0-9]{0,25}(\\.[0-9]{0,5})?([eE][-+]?[0-9]{1,3})?",
        "[0-9]{1,22}(ns|us|ms|s|m|h|d|w|y|min|sec|days|B|K|KB|KiB|M|MB|G|GB|GiB|T|TB|PB)",
        "([0-9]{1,6}[a-z]{1,3} ?){1,4}",
        "\\PC{0,20}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn durations_never_panic_and_stay_within_the_maximum(text in unit_text(), secs in any::<f64>()) {
        match parse_duration(&text) {
            Ok(d) => prop_assert!(d <= MAX_DURATION),
            Err(e) => prop_assert!(text.trim().is_empty() || e.to_string().contains(text.trim()), "{e}"),
        }
        if let Ok(d) = duration_from_secs(secs) {
            prop_assert!(d <= MAX_DURATION);
        }
    }

    #[test]
    fn sizes_never_panic_stay_in_bounds_and_read_back_what_is_printed(text in unit_text(), n in 1..=MAX_SIZE) {
        match parse_size(&text) {
            Ok(bytes) => prop_assert!((1..=MAX_SIZE).contains(&bytes)),
            Err(e) => prop_assert!(e.to_string().contains(&format!("'{text}'")), "{e}"),
        }
        let shown = format_size(n);
        let back = parse_size(&shown.replace(' ', "").replace("bytes", "").replace("byte", "")).unwrap();
        prop_assert!(back.abs_diff(n) <= n / 10 + 1, "{n} -> {shown} -> {back}");
    }

    #[test]
    fn ranges_round_trip_and_count_their_items(start in any::<i64>(), span in 0..MAX_RANGE_LEN, down in any::<bool>()) {
        let end = if down { start.checked_sub(span as i64) } else { start.checked_add(span as i64) };
        let Some(end) = end else { return Ok(()) };
        let text = format!("{start}..{end}");
        let range: Range = text.parse().unwrap();
        prop_assert_eq!(range, Range { start, end });
        prop_assert_eq!(range.len(), span + 1);
        prop_assert_eq!(range.to_string(), text);
        let first: Vec<i64> = range.iter().take(3).collect();
        prop_assert_eq!(first[0], start);
    }

    #[test]
    fn range_text_never_panics_and_errors_quote_it(text in "-?[0-9]{0,20}\\.{1,3}=?-?[0-9]{0,20}|\\PC{0,12}") {
        match text.parse::<Range>() {
            Ok(r) => prop_assert!(r.len() <= MAX_RANGE_LEN),
            Err(e) => prop_assert!(e.contains(&format!("'{text}'")), "{e}"),
        }
    }

    #[test]
    fn halt_rules_round_trip(now in any::<bool>(), kind in 0..3u8, n in 1..u64::MAX, pct in 0.0001f64..=100.0) {
        let when = if now { HaltWhen::Now } else { HaltWhen::Soon };
        let rule = match kind { 0 => HaltRule::Failures(n), 1 => HaltRule::Successes(n), _ => HaltRule::FailurePercent(pct) };
        let halt = Halt { when, rule };
        prop_assert_eq!(halt.to_string().parse::<Halt>(), Ok(halt));
    }

    #[test]
    fn halt_text_never_panics(text in "(now|soon|later)?,?(fail|success|done)?=?[-0-9.eE%]{0,25}|\\PC{0,16}") {
        if let Err(e) = text.parse::<Halt>() {
            prop_assert!(e.contains(&format!("{text:?}")), "{e}");
        }
    }

    #[test]
    fn integers_beyond_two_to_the_53_arrive_as_their_digits(ints in prop::collection::vec(any::<i128>(), 0..8), pad in " {0,2}") {
        let text = format!("[{}]", ints.iter().map(|n| format!("{pad}{n}{pad}")).collect::<Vec<_>>().join(","));
        let value = json::parse(text.as_bytes()).unwrap();
        let items = value.as_array().unwrap();
        for (n, got) in ints.iter().zip(items) {
            if n.unsigned_abs() <= u128::from(MAX_SAFE_INTEGER) {
                prop_assert_eq!(got.as_f64(), Some(*n as f64));
            } else {
                prop_assert_eq!(got, &Value::String(n.to_string()));
            }
        }
    }

    #[test]
    fn the_big_integer_prescan_never_changes_validity(text in "[\\[\\]{}\",: 0-9.eE+\\-\\\\a-z]{0,60}") {
        let plain = serde_json::from_str::<Value>(&text).is_ok();
        prop_assert_eq!(json::parse(text.as_bytes()).is_ok(), plain, "{}", text);
    }

    #[test]
    fn job_log_lines_round_trip(seq in any::<u64>(), index in 0..1u64 << 32, start in 0.0f64..4e9, runtime in 0.0f64..1e9,
                                status in 0..4u8, attempts in any::<u32>(), digest in any::<u64>()) {
        let status = [Status::Completed, Status::CompletedWithErrors, Status::Failed, Status::TimedOut][status as usize];
        let line = Line { seq, index, start, runtime_ms: runtime, status, attempts, digest };
        let back = Line::parse(&line.to_string()).unwrap();
        prop_assert_eq!((back.seq, back.index, back.status, back.attempts, back.digest), (seq, index, status, attempts, digest));
        prop_assert!((back.start - start).abs() <= 0.0005 + start * 1e-15);
    }

    #[test]
    fn job_logs_never_panic_and_count_at_most_their_lines(text in "((Seq|[0-9]{1,12})\t[0-9]{1,11}\t[0-9.]{1,6}\t[0-9.]{1,6}\t(Completed|Failed|Stopped|x)\t[0-9]{1,3}\t[0-9a-f]{15,17}\r?\n|\\PC{0,20}\n?){0,6}") {
        let log = joblog::read(text.as_bytes(), "t").unwrap();
        prop_assert!(log.recorded.finished <= text.matches('\n').count() as u64);
        prop_assert!(log.recorded.failed <= log.recorded.finished);
        prop_assert!(log.good_len as usize <= text.len());
    }
}

/// A JSON value of the kinds scripts exchange, including big integers and
/// byte strings in their documented forms.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        // Integral doubles, most beyond 2^53 (the convert fuzzer's first find).
        prop::num::f64::NORMAL.prop_map(|f| Value::from(f.trunc())),
        ((1u64 << 53)..(1u64 << 63)).prop_map(|n| Value::from(n as f64)),
        "\\PC{0,8}".prop_map(Value::String),
        "-?[1-9][0-9]{16,25}".prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(|b| json::bytes_value(&b)),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z$]{1,4}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// What a value becomes after a trip through Luau (see `runspace::json`).
fn after_luau(v: &Value) -> Value {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap();
            if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64 {
                Value::from(f as i64)
            } else {
                Value::from(f)
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(after_luau).collect()),
        Value::Object(map) => {
            if let Some(bytes) = json::as_bytes(v) {
                return json::bytes_value(&bytes);
            }
            let out: Map<String, Value> =
                map.iter().filter(|(_, item)| !item.is_null()).map(|(k, item)| (k.clone(), after_luau(item))).collect();
            if out.is_empty() {
                Value::Array(Vec::new())
            } else {
                Value::Object(out)
            }
        }
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn values_round_trip_through_luau(value in json_value()) {
        thread_local! {
            static RS: std::cell::RefCell<(Runspace, Script)> = std::cell::RefCell::new(
                (Runspace::open(&SessionState::new()).unwrap(), Script::new("return _").unwrap()));
        }
        RS.with(|cell| {
            let (runspace, script) = &mut *cell.borrow_mut();
            let result = runspace.invoke(script, std::slice::from_ref(&value), &[]);
            prop_assert_eq!(result.status(), Status::Completed, "{:?}", result.error());
            prop_assert_eq!(result.result(), after_luau(&value), "input {}", value);
            Ok(())
        })?;
    }
}
