//! `measure(list [, field])`: count, sum, average, minimum and maximum of a
//! list of numbers or of one field of a list of records — PowerShell's
//! `Measure-Object`. Pure computation, so it needs no capability.

use mlua::{Lua, Table, Value as LuaValue};

use super::gate::{fail, record};

/// Creates the `measure` function.
pub(crate) fn function(lua: &Lua) -> mlua::Result<mlua::Function> {
    lua.create_function(|lua, (list, field): (Table, Option<String>)| {
        let mut stats = Stats::default();
        for i in 1..=list.raw_len() {
            let item: LuaValue = list.raw_get(i)?;
            let value = match (&field, &item) {
                (Some(f), LuaValue::Table(t)) => t.get::<LuaValue>(f.as_str())?,
                (Some(f), other) => {
                    return Err(fail(
                        "measure",
                        format!("item {i} is a {}, not a record with '{f}'", other.type_name()),
                    ))
                }
                (None, v) => v.clone(),
            };
            match value {
                // Like Measure-Object, records without the field are not counted.
                LuaValue::Nil => {}
                LuaValue::Number(n) => stats.add(n),
                LuaValue::Integer(n) => stats.add(n as f64),
                LuaValue::String(s) => match s.to_str().ok().and_then(|s| s.trim().parse::<f64>().ok()) {
                    Some(n) => stats.add(n),
                    None => {
                        return Err(fail("measure", format!("item {i}: '{}' is not a number", s.to_string_lossy())))
                    }
                },
                other => return Err(fail("measure", format!("item {i} is a {}, not a number", other.type_name()))),
            }
        }
        stats.into_table(lua)
    })
}

#[derive(Default)]
struct Stats {
    count: usize,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
}

impl Stats {
    fn add(&mut self, n: f64) {
        self.count += 1;
        self.sum += n;
        self.min = Some(self.min.map_or(n, |m| m.min(n)));
        self.max = Some(self.max.map_or(n, |m| m.max(n)));
    }

    /// `{count, sum, average, min, max}`; the last three are nil when nothing was counted.
    fn into_table(self, lua: &Lua) -> mlua::Result<Table> {
        let num = |n: Option<f64>| n.map_or(LuaValue::Nil, LuaValue::Number);
        let average = (self.count > 0).then(|| self.sum / self.count as f64);
        record(
            lua,
            [
                ("count", LuaValue::Number(self.count as f64)),
                ("sum", LuaValue::Number(self.sum)),
                ("average", num(average)),
                ("min", num(self.min)),
                ("max", num(self.max)),
            ],
        )
    }
}
