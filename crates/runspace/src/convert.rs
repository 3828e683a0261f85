//! Values crossing between Rust and Luau, as JSON values.
//!
//! Hand-written rather than going through `mlua`'s serde bridge: this runs
//! once or twice per item on the hot path, and the direct match is several
//! times cheaper. The rules (documented in the README):
//!
//! - numbers are doubles in Luau, so integers beyond ±2^53 travel as strings
//!   rather than being silently rounded;
//! - Luau strings are bytes: one that is not UTF-8 becomes
//!   `{"$bytes": "<base64>"}` and that object becomes the bytes again (see
//!   [`crate::json`]);
//! - a JSON `null` inside an array becomes `json.null` (so the array keeps its
//!   length); elsewhere it is `nil`;
//! - a table whose keys are exactly `1..n` is an array, an empty table is
//!   `[]`, anything else is an object with string keys;
//! - NaN and infinities, which JSON cannot hold, become the strings `"nan"`,
//!   `"inf"` and `"-inf"`;
//! - functions, threads and userdata become a descriptive string.

use std::borrow::Cow;

use mlua::{Lua, Value as LuaValue};
use serde_json::{Map, Number, Value};

use crate::json;

/// The largest integer a double holds exactly.
const MAX_SAFE_INTEGER: i64 = json::MAX_SAFE_INTEGER as i64;

/// Nesting depth past which a table is taken to be cyclic.
const MAX_DEPTH: usize = 128;

/// Converts a JSON value into a Luau value.
pub(crate) fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<LuaValue> {
    Ok(match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => match scalar(value) {
            Some(Scalar::Nil) | None => LuaValue::Nil,
            Some(Scalar::Boolean(b)) => LuaValue::Boolean(b),
            Some(Scalar::Number(n)) => LuaValue::Number(n),
            Some(Scalar::Text(text)) => LuaValue::String(lua.create_string(text.as_bytes())?),
        },
        Value::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                let v = match item {
                    Value::Null => LuaValue::NULL,
                    other => to_lua(lua, other)?,
                };
                table.raw_set(i + 1, v)?;
            }
            LuaValue::Table(table)
        }
        Value::Object(map) => {
            if let Some(bytes) = json::as_bytes(value) {
                return Ok(LuaValue::String(lua.create_string(bytes)?));
            }
            let table = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                if v.is_null() {
                    continue;
                }
                let v = to_lua(lua, v)?;
                match k.starts_with('$').then(|| json::key_bytes(k)).flatten() {
                    Some(bytes) => table.raw_set(lua.create_string(bytes)?, v)?,
                    None => table.raw_set(k.as_str(), v)?,
                }
            }
            LuaValue::Table(table)
        }
    })
}

/// A JSON scalar as Luau holds it. [`to_lua`] goes through this, and so
/// does the item set-up that pushes an argument straight onto a thread's
/// stack (`Runspace::start`): both must map a value the same way.
pub(crate) enum Scalar<'a> {
    Nil,
    Boolean(bool),
    Number(f64),
    /// Bytes Luau copies in (so pushing them allocates): a string, or an
    /// integer beyond ±2^53 as its digits.
    Text(Cow<'a, str>),
}

/// `value` as a Luau scalar; `None` for arrays and objects.
pub(crate) fn scalar(value: &Value) -> Option<Scalar<'_>> {
    Some(match value {
        Value::Null => Scalar::Nil,
        Value::Bool(b) => Scalar::Boolean(*b),
        Value::Number(n) => number_to_lua(n),
        Value::String(s) => Scalar::Text(Cow::Borrowed(s)),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

fn number_to_lua(n: &Number) -> Scalar<'static> {
    if let Some(i) = n.as_i64() {
        if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) {
            return Scalar::Number(i as f64);
        }
        return Scalar::Text(Cow::Owned(i.to_string()));
    }
    if n.as_u64().is_some() {
        // Only reached above i64::MAX: certainly beyond 2^53.
        return Scalar::Text(Cow::Owned(n.to_string()));
    }
    Scalar::Number(n.as_f64().unwrap_or(f64::NAN))
}

/// How much JSON a conversion may produce when the caller names no bound.
const DEFAULT_BUDGET: usize = 64 << 20;

/// Converts a Luau value into JSON. Fails on cyclic or absurdly deep
/// tables, and on values larger than 64 MB as JSON.
pub(crate) fn from_lua(value: &LuaValue) -> mlua::Result<Value> {
    from_lua_within(value, DEFAULT_BUDGET, || {
        format!(
            "value too large: more than {} as JSON (a table that shares sub-tables counts each time it appears)",
            crate::units::format_size(DEFAULT_BUDGET as u64)
        )
    })
}

/// Converts a Luau value into JSON of at most about `budget` bytes.
///
/// The bound matters because a small table can stand for a huge value: 40
/// levels that each hold the level below twice take a few kilobytes in the
/// VM and 2^40 nodes as JSON. Without a budget the conversion would run (and
/// allocate) for ever, outside the reach of the interrupt.
/// `too_large` says what went wrong when the budget runs out.
pub(crate) fn from_lua_within(
    value: &LuaValue,
    budget: usize,
    too_large: impl FnOnce() -> String,
) -> mlua::Result<Value> {
    let mut left = budget;
    from_lua_depth(value, 0, &mut left).map_err(|e| match e {
        Budget::Exceeded => mlua::Error::runtime(too_large()),
        Budget::Lua(e) => e,
    })
}

/// Why a conversion stopped.
enum Budget {
    Exceeded,
    Lua(mlua::Error),
}

impl From<mlua::Error> for Budget {
    fn from(e: mlua::Error) -> Budget {
        Budget::Lua(e)
    }
}

/// Takes `cost` bytes from the budget.
fn spend(left: &mut usize, cost: usize) -> Result<(), Budget> {
    *left = left.checked_sub(cost).ok_or(Budget::Exceeded)?;
    Ok(())
}

fn from_lua_depth(value: &LuaValue, depth: usize, left: &mut usize) -> Result<Value, Budget> {
    spend(
        left,
        match value {
            LuaValue::String(s) => s.as_bytes().len() + 2,
            _ => 8,
        },
    )?;
    Ok(match value {
        LuaValue::Nil => Value::Null,
        LuaValue::Boolean(b) => Value::Bool(*b),
        // mlua hands integral doubles over as integers; beyond 2^53 they
        // are still doubles (perhaps already rounded), so they are written
        // as floats, exactly as the `Number` case writes them.
        LuaValue::Integer(i) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i) => Value::Number((*i).into()),
        LuaValue::Integer(i) => float_to_json(*i as f64),
        LuaValue::Number(f) => float_to_json(*f),
        LuaValue::String(s) => json::bytes_value(&s.as_bytes()),
        LuaValue::Table(t) => {
            if depth >= MAX_DEPTH {
                return Err(Budget::Lua(mlua::Error::runtime(
                    "cannot convert table to JSON: nested too deeply (is it cyclic?)",
                )));
            }
            table_to_json(t, depth + 1, left)?
        }
        LuaValue::LightUserData(p) if p.0.is_null() => Value::Null,
        LuaValue::Vector(v) => Value::Array([v.x(), v.y(), v.z()].iter().map(|c| float_to_json(*c as f64)).collect()),
        LuaValue::Function(_) => Value::String("<function>".into()),
        LuaValue::Thread(_) => Value::String("<thread>".into()),
        LuaValue::Buffer(b) => json::bytes_value(&b.to_vec()),
        other => Value::String(format!("<{}>", other.type_name())),
    })
}

pub(crate) fn float_to_json(f: f64) -> Value {
    if f.is_finite() {
        if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64 {
            Value::Number((f as i64).into())
        } else {
            Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
    } else if f.is_nan() {
        Value::String("nan".into())
    } else if f > 0.0 {
        Value::String("inf".into())
    } else {
        Value::String("-inf".into())
    }
}

fn table_to_json(t: &mlua::Table, depth: usize, left: &mut usize) -> Result<Value, Budget> {
    let len = t.raw_len();
    // A pure sequence: keys are exactly 1..len.
    let mut count = 0usize;
    let mut is_sequence = true;
    t.for_each::<LuaValue, LuaValue>(|k, _| {
        count += 1;
        if is_sequence {
            is_sequence = matches!(k, LuaValue::Integer(i) if i >= 1 && (i as usize) <= len);
        }
        Ok(())
    })?;
    if is_sequence && count == len {
        let mut items = Vec::with_capacity(len);
        for i in 1..=len {
            items.push(from_lua_depth(&t.raw_get::<LuaValue>(i)?, depth, left)?);
        }
        return Ok(Value::Array(items));
    }
    let mut map = Map::new();
    // `for_each` wants an mlua error; an exhausted budget is remembered here.
    let mut exceeded = false;
    let walked = t.for_each::<LuaValue, LuaValue>(|k, v| {
        let mut entry = || -> Result<(), Budget> {
            let key = match &k {
                LuaValue::String(s) => {
                    spend(left, s.as_bytes().len() + 3)?;
                    json::bytes_key(&s.as_bytes())
                }
                other => match from_lua_depth(other, depth, left)? {
                    Value::String(s) => s,
                    v => v.to_string(),
                },
            };
            map.insert(key, from_lua_depth(&v, depth, left)?);
            Ok(())
        };
        entry().map_err(|e| match e {
            Budget::Exceeded => {
                exceeded = true;
                mlua::Error::runtime("value too large")
            }
            Budget::Lua(e) => e,
        })
    });
    if exceeded {
        return Err(Budget::Exceeded);
    }
    walked?;
    Ok(Value::Object(map))
}

/// Renders a value the way the stream functions show it: strings as they
/// are, everything else as compact JSON.
pub(crate) fn display(value: &LuaValue) -> String {
    match value {
        LuaValue::String(s) => s.to_string_lossy(),
        LuaValue::Nil => "nil".into(),
        other => match from_lua(other) {
            Ok(Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(e) => format!("<{e}>"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(v: Value) -> Value {
        let lua = Lua::new();
        from_lua(&to_lua(&lua, &v).unwrap()).unwrap()
    }

    #[test]
    fn scalars_and_nesting_round_trip() {
        let v = json!({"a": 1, "b": [1, 2.5, "x", true], "c": {"d": "e"}});
        assert_eq!(round_trip(v.clone()), v);
    }

    #[test]
    fn big_integers_travel_as_strings() {
        assert_eq!(round_trip(json!(9007199254740993u64)), json!("9007199254740993"));
        assert_eq!(round_trip(json!(-9007199254740993i64)), json!("-9007199254740993"));
        assert_eq!(round_trip(json!(9007199254740992u64)), json!(9007199254740992u64));
    }

    #[test]
    fn big_integer_text_comes_back_as_the_same_string() {
        let v = json!(["18446744073709551616", "-9223372036854775809"]);
        assert_eq!(round_trip(v.clone()), v);
    }

    #[test]
    fn bytes_that_are_not_utf8_round_trip_exactly() {
        let lua = Lua::new();
        let v: LuaValue =
            lua.load(r#"return {s = "\255\0a", ["\254k"] = "é", b = buffer.fromstring("\200")}"#).eval().unwrap();
        let j = from_lua(&v).unwrap();
        assert_eq!(j, json!({"s": {"$bytes": "/wBh"}, "$bytes:/ms=": "é", "b": {"$bytes": "yA=="}}));
        let back = to_lua(&lua, &j).unwrap();
        lua.globals().set("t", back).unwrap();
        let ok: bool = lua.load(r#"return t.s == "\255\0a" and t["\254k"] == "é" and t.b == "\200""#).eval().unwrap();
        assert!(ok);
        // An object that merely looks similar stays an object.
        assert_eq!(round_trip(json!({"$bytes": "!!"})), json!({"$bytes": "!!"}));
        assert_eq!(round_trip(json!({"$bytes:x": 1})), json!({"$bytes:x": 1}));
    }

    #[test]
    fn luau_numbers_beyond_two_to_the_53_are_floats_however_mlua_hands_them_over() {
        // Found by the convert fuzz target: 2e16 came back as the integer
        // 20000000000000000, 2.5e16 as a float.
        let lua = Lua::new();
        for code in ["return 2e16", "return 2^60", "return -2^53 - 2", "return 2.5e16"] {
            let v: LuaValue = lua.load(code).eval().unwrap();
            assert!(from_lua(&v).unwrap().is_f64(), "{code}");
        }
        let v: LuaValue = lua.load("return 2^53").eval().unwrap();
        assert_eq!(from_lua(&v).unwrap(), json!(9007199254740992u64));
    }

    #[test]
    fn nulls_keep_array_length() {
        assert_eq!(round_trip(json!([1, null, 3])), json!([1, null, 3]));
        assert_eq!(round_trip(json!({"a": null, "b": 1})), json!({"b": 1}));
    }

    #[test]
    fn empty_table_is_an_array_and_mixed_tables_are_objects() {
        let lua = Lua::new();
        let v: LuaValue = lua.load("return {}").eval().unwrap();
        assert_eq!(from_lua(&v).unwrap(), json!([]));
        let v: LuaValue = lua.load("return {1, 2, x = 3}").eval().unwrap();
        assert_eq!(from_lua(&v).unwrap(), json!({"1": 1, "2": 2, "x": 3}));
        let v: LuaValue = lua.load("return {[1] = 'a', [3] = 'c'}").eval().unwrap();
        assert_eq!(from_lua(&v).unwrap(), json!({"1": "a", "3": "c"}));
    }

    #[test]
    fn non_finite_numbers_become_strings() {
        let lua = Lua::new();
        let v: LuaValue =
            lua.load("return 0/0, 1/0, -1/0").eval::<mlua::MultiValue>().unwrap().into_iter().next().unwrap();
        assert_eq!(from_lua(&v).unwrap(), json!("nan"));
        assert_eq!(float_to_json(f64::INFINITY), json!("inf"));
        assert_eq!(float_to_json(f64::NEG_INFINITY), json!("-inf"));
        assert_eq!(float_to_json(2.5), json!(2.5));
    }

    #[test]
    fn cyclic_tables_are_an_error_not_a_crash() {
        let lua = Lua::new();
        let v: LuaValue = lua.load("local t = {} t.self = t return t").eval().unwrap();
        let err = from_lua(&v).unwrap_err().to_string();
        assert!(err.contains("nested too deeply"), "{err}");
    }
}
