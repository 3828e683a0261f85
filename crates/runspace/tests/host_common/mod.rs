//! Helpers shared by the host library tests.
#![allow(dead_code)]

use runspace::{Grants, InvocationResult, Runspace, Script, SessionState, Status};
use serde_json::Value;

/// A session granting `specs` (as `--allow` takes them).
pub fn session(specs: &[&str]) -> SessionState {
    let mut grants = Grants::default();
    for spec in specs {
        grants.grant_spec(spec).unwrap();
    }
    SessionState::new().grants_from(grants)
}

/// Runs `code` once in a fresh runspace of a session granting `specs`.
pub fn run(specs: &[&str], code: &str) -> InvocationResult {
    let mut rs = Runspace::open(&session(specs)).unwrap();
    rs.invoke(&Script::new(code).unwrap(), &[], &[])
}

/// Runs `code` and returns its result, failing the test if it did not complete.
pub fn ok(specs: &[&str], code: &str) -> Value {
    let r = run(specs, code);
    assert_eq!(r.status(), Status::Completed, "{code}: {:?}", r.error());
    r.result()
}

/// Runs `code` and returns its error, failing the test if it did not fail.
pub fn err(specs: &[&str], code: &str) -> String {
    let r = run(specs, code);
    assert_eq!(r.status(), Status::Failed, "{code} should fail, got {:?}", r.output());
    r.error().unwrap_or_default().to_string()
}

/// Asserts that `code` is refused for want of `capability`, naming it and
/// the library call that grants it.
pub fn refused(specs: &[&str], code: &str, capability: &str) {
    let e = err(specs, code);
    let named: runspace::Capability = capability.parse().unwrap();
    assert!(
        e.contains(&format!("'{capability}' capability"))
            && e.contains(&format!("(grant it with SessionState::allow(Capability::{named:?}))")),
        "{code}: {e}"
    );
}

/// A Luau string literal for `s`.
pub fn lit(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}
