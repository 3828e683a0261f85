//! The JSON ↔ Luau round trip: any JSON value given to a script that returns
//! it comes back as the documented conventions say (see `expected`), and
//! nothing panics.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use runspace::json::{as_bytes, bytes_value, key_bytes, parse};
use runspace::{Runspace, Script, SessionState, Status};
use serde_json::{Map, Value};

thread_local! {
    static RUNSPACE: RefCell<(Runspace, Script)> = RefCell::new((
        Runspace::open(&SessionState::new()).expect("open a runspace"),
        Script::new("return _").expect("compile"),
    ));
}

/// What a value becomes after a trip through Luau, or `None` when the
/// conventions leave it ambiguous (two keys naming the same bytes) or the
/// value is nested past the conversion's depth limit.
fn expected(v: &Value, depth: usize) -> Option<Value> {
    if depth > 100 {
        return None;
    }
    Some(match v {
        // Luau numbers are doubles; integral ones come back as integers.
        Value::Number(n) => {
            let f = n.as_f64()?;
            if f.fract() == 0.0 && f.abs() <= 9007199254740992.0 {
                Value::from(f as i64)
            } else {
                Value::from(f)
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| expected(i, depth + 1)).collect::<Option<_>>()?),
        Value::Object(map) => {
            if let Some(bytes) = as_bytes(v) {
                return Some(bytes_value(&bytes));
            }
            let mut out = Map::new();
            for (k, item) in map {
                if item.is_null() {
                    continue; // nil in a table: the key is gone
                }
                let key = match key_bytes(k) {
                    Some(bytes) => runspace::json::bytes_key(&bytes),
                    None => k.clone(),
                };
                if out.insert(key, expected(item, depth + 1)?).is_some() {
                    return None;
                }
            }
            if out.is_empty() {
                Value::Array(Vec::new()) // an empty table is []
            } else {
                Value::Object(out)
            }
        }
        other => other.clone(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = parse(data) else { return };
    let Some(want) = expected(&value, 0) else { return };
    RUNSPACE.with(|cell| {
        let (runspace, script) = &mut *cell.borrow_mut();
        let result = runspace.invoke(script, &[value.clone()], &[]);
        assert_eq!(result.status(), Status::Completed, "{value}: {:?}", result.error());
        assert_eq!(result.result(), want, "input {value}");
    });
});
