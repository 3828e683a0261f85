//! `net.probe` and `net.resolve`, behind the `net` capability.
//!
//! A probe is one TCP connect, answered with the same states and reasons as
//! `rsp scan` (it runs the scanner's own probe, see
//! [`runspace_scan::probe_one`]): `open`/`syn-ack`, `closed`/`conn-refused`,
//! `filtered`/`no-response` and the ICMP reasons. The item's thread yields
//! while the connect is in flight, so thousands of probes share one
//! runspace; a stop drops the probe, which closes its socket.
//!
//! Name resolution goes through the system resolver (`getaddrinfo`), which
//! cannot be interrupted. It runs on the event loop's blocking pool; a
//! stopped script stops waiting for it at once, and the lookup ends when
//! the resolver gives up.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mlua::{Lua, Table, Value as LuaValue};
use runspace_scan::{probe_async, PortState, Reason};
use serde::Deserialize;

use super::gate::{self, fail, record};
use super::HostContext;
use crate::capability::Capability;
use crate::control::Switch;

/// `rsp scan`'s default probe timeout.
const DEFAULT_TIMEOUT: f64 = 1.0;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProbeOptions {
    /// Seconds to wait for an answer (default 1, as `rsp scan`).
    timeout: Option<f64>,
    /// Probes to send again while there is no answer (default 0).
    #[serde(default)]
    retries: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResolveOptions {
    /// Seconds to wait for the resolver (default: as long as it takes).
    timeout: Option<f64>,
}

/// Installs the `net` table.
pub(crate) fn install(lua: &Lua, globals: &Table, ctx: &HostContext) -> mlua::Result<()> {
    let net = lua.create_table()?;

    let c = ctx.clone();
    net.raw_set(
        "probe",
        super::waiting_function(lua, move |lua, (host, port, opts): (String, u16, Option<LuaValue>)| {
            let (c, switch, here) = (c.clone(), c.switch(), c.waits_here(&lua, "net.probe"));
            async move {
                here?;
                let what = "net.probe";
                gate::require(&c, Capability::Net, "net.probe()")?;
                let opts: ProbeOptions = gate::options(what, opts)?;
                let timeout = gate::seconds(what, opts.timeout.unwrap_or(DEFAULT_TIMEOUT))?;
                let address = *resolve(&switch, what, &host, None)
                    .await?
                    .first()
                    .ok_or_else(|| fail(what, format!("{host}: the name has no address")))?;
                probe(&lua, &switch, &host, SocketAddr::new(address, port), timeout, opts.retries).await
            }
        })?,
    )?;

    let c = ctx.clone();
    net.raw_set(
        "resolve",
        super::waiting_function(lua, move |lua, (name, opts): (String, Option<LuaValue>)| {
            let (c, switch, here) = (c.clone(), c.switch(), c.waits_here(&lua, "net.resolve"));
            async move {
                here?;
                let what = "net.resolve";
                gate::require(&c, Capability::Net, "net.resolve()")?;
                let opts: ResolveOptions = gate::options(what, opts)?;
                let timeout = opts.timeout.map(|t| gate::seconds(what, t)).transpose()?;
                let out = lua.create_table()?;
                for address in resolve(&switch, what, &name, timeout).await? {
                    out.raw_push(address.to_string())?;
                }
                Ok(out)
            }
        })?,
    )?;

    globals.raw_set("net", net)
}

/// The addresses of `name` (an address resolves to itself), in the
/// resolver's order, without repeats. The system resolver cannot be
/// interrupted: it runs on the event loop's blocking pool, and a stopped
/// item stops waiting for it at once.
async fn resolve(switch: &Switch, what: &str, name: &str, timeout: Option<Duration>) -> mlua::Result<Vec<IpAddr>> {
    let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let lookup = tokio::net::lookup_host((name, 0));
    let answer = match timeout {
        Some(t) => gate::guard(switch, tokio::time::timeout(t, lookup)).await?.ok(),
        None => Some(gate::guard(switch, lookup).await?),
    };
    match answer {
        None => Err(fail(what, format!("{name}: the name did not resolve in time"))),
        Some(Err(e)) => Err(fail(what, format!("{name}: {e}"))),
        Some(Ok(addrs)) => {
            let mut seen = HashSet::new();
            Ok(addrs.map(|a| a.ip()).filter(|ip| seen.insert(*ip)).collect())
        }
    }
}

/// Probes `addr` up to `1 + retries` times while it does not answer.
async fn probe(
    lua: &Lua,
    switch: &Switch,
    host: &str,
    addr: SocketAddr,
    timeout: Duration,
    retries: u32,
) -> mlua::Result<Table> {
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        let outcome = gate::guard(switch, probe_async(addr, timeout)).await?;
        if outcome.reason != Reason::NoResponse || attempts > retries {
            break outcome;
        }
    };
    let text = |s: &str| lua.create_string(s).map(LuaValue::String);
    record(
        lua,
        [
            ("host", text(host)?),
            ("address", text(&addr.ip().to_string())?),
            ("port", LuaValue::Number(addr.port() as f64)),
            ("state", text(outcome.state.as_str())?),
            ("reason", text(outcome.reason.as_str())?),
            ("rtt_ms", outcome.rtt.map_or(LuaValue::Nil, |d| LuaValue::Number(d.as_micros() as f64 / 1000.0))),
            ("attempts", LuaValue::Number(attempts as f64)),
            ("open", LuaValue::Boolean(outcome.state == PortState::Open)),
            ("error", outcome.error.as_deref().map_or(Ok(LuaValue::Nil), text)?),
        ],
    )
}
