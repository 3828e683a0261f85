//! The dashboard of an `rsp serve` whose store is PostgreSQL, over plain
//! HTTP as a browser would use it: log in at the form with the token, read
//! the overview, the job list (tabs, search, pages) and a job's page (its
//! item results filtered by status, its stream tail), all read from a real
//! PostgreSQL server this binary starts.

mod dashboard_common;
mod jobs_common;
#[path = "../../runspace-server/tests/support/pg.rs"]
mod pg;

use dashboard_common::WebSession;
use jobs_common::Server;
use serde_json::json;

#[test]
fn a_postgres_backed_server_serves_the_whole_dashboard() {
    let Some(url) = pg::fresh_database("dash") else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--store", &url]);
    let script = "write_warning('item ' .. _) if _ % 3 == 0 then error('bad ' .. _) end return _ * 2";
    let body =
        json!({"name": "audit", "script": script, "script_name": "Audit.luau", "range": {"start": 1, "end": 30}});
    assert_eq!(server.call("POST", "/v1/jobs", Some(&body)).0, 201);
    for i in 0..55 {
        let body = json!({"name": format!("other-{i:02}"), "script": "return 1"});
        assert_eq!(server.call("POST", "/v1/jobs", Some(&body)).0, 201);
    }
    server.until("audit", |j| j["state"] == "CompletedWithErrors");
    server.until("other-54", |j| j["state"] == "Completed");

    let web = WebSession::login(&server.base, &server.token);
    let page = |path: &str| {
        let a = web.get(path);
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert!(a.content_type.starts_with("text/html"), "{path}");
        a.body
    };
    let overview = page("/");
    assert!(overview.contains("Overview") && overview.contains("Workers"), "{overview}");

    // The list: newest first, keyset pages, tabs with counts, search.
    let list = page("/jobs");
    assert!(list.contains("other-54") && !list.contains(">audit<"), "the first page is the newest jobs");
    assert!(list.contains("?below="), "a link to the next page");
    let below = list.split("?below=").nth(1).unwrap().split(['"', '&']).next().unwrap().to_string();
    let next = page(&format!("/jobs?below={below}"));
    assert!(next.contains("audit"), "the oldest job is on a later page");
    let found = page("/jobs?q=audit.LUAU");
    assert!(found.contains("audit") && !found.contains("other-"), "search by script name, any case");
    let tab = page("/jobs?state=CompletedWithErrors");
    assert!(tab.contains("audit") && !tab.contains("other-"), "a state tab");
    for (state, n) in [("Completed", 55), ("CompletedWithErrors", 1)] {
        assert!(list.contains(&format!("state={state}")), "a tab for {state}");
        assert!(list.contains(&format!(">{n}<")), "the {state} count {n} is shown");
    }

    // A job: its progress, failures, results by status, its stream's tail.
    let job = page("/jobs/audit");
    assert!(job.contains("30/30") || job.contains("30 / 30"), "progress: {job}");
    assert!(job.contains("Audit.luau"));
    assert!(job.contains("bad 3") && job.contains("item 30"), "results and the warning stream's tail");
    let failed = page("/jobs/audit?status=Failed");
    let (failed_item, completed_item) = ("data-state>Failed</span>", "data-state>Completed</span>");
    assert!(failed.contains(failed_item) && !failed.contains(completed_item), "only the failed items");
    assert!(failed.contains("bad 30"));
    let done = page("/jobs/audit?status=Completed");
    assert!(done.contains("<code>58</code>") && !done.contains(failed_item), "only the completed items");
    assert_eq!(web.get("/jobs/nope").status, 404);

    // The downloads read the store too.
    let results = web.get("/jobs/audit/results.jsonl");
    assert_eq!((results.status, results.body.lines().count()), (200, 30));
    let warnings = web.get("/jobs/audit/streams/warning");
    assert_eq!(warnings.status, 200);
    assert!(warnings.body.contains("item 17"));
}
