//! What restart and rerun-failed read from the database (clean's delete
//! is a write: [`super::writer`]).

use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

use crate::limits::MAX_ITEMS;
use crate::store::StoredRequest;

pub(super) fn stored_request(c: &Connection, name: &str) -> rusqlite::Result<Option<StoredRequest>> {
    let row = c
        .query_row("SELECT request, inputs FROM jobs WHERE name = ?1", [name], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .optional()?;
    Ok(row.map(|(request, inputs)| StoredRequest {
        request: serde_json::from_str(&request).unwrap_or(Value::Null),
        inputs: inputs.and_then(|i| serde_json::from_str(&i).ok()),
    }))
}

/// Marks the items whose record says they completed, then walks the rest.
pub(super) fn unfinished_items(
    c: &Connection,
    name: &str,
    total: u64,
    limit: usize,
) -> rusqlite::Result<(u64, Vec<u64>)> {
    // The API refuses more items: a bound on the bit set kept here.
    let total = total.min(MAX_ITEMS);
    let mut completed = vec![0u64; total.div_ceil(64) as usize];
    let mut stmt = c.prepare_cached(
        "SELECT json_extract(o.record, '$.index') FROM outputs o JOIN jobs j ON j.id = o.job_id \
         WHERE j.name = ?1 AND json_extract(o.record, '$.status') IN ('Completed', 'CompletedWithErrors')",
    )?;
    let mut rows = stmt.query([name])?;
    while let Some(row) = rows.next()? {
        if let Some(index) = row.get::<_, Option<i64>>(0)?.and_then(|i| u64::try_from(i).ok()).filter(|&i| i < total) {
            completed[(index / 64) as usize] |= 1 << (index % 64);
        }
    }
    let mut count = 0;
    let mut first = Vec::new();
    for index in (0..total).filter(|&i| completed[(i / 64) as usize] & (1 << (i % 64)) == 0) {
        count += 1;
        if first.len() < limit {
            first.push(index);
        }
    }
    Ok((count, first))
}
