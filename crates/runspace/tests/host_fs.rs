//! `fs` and `measure`: grants, refusals, path escapes, and the functions themselves.

mod host_common;

use host_common::{err, lit, ok, refused};
use serde_json::json;
use std::os::unix::fs::symlink;

fn tree() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("a.txt"), "hello").unwrap();
    std::fs::write(root.join("sub/b.bin"), [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    std::fs::write(root.join("sub/deeper/c.log"), "x".repeat(100)).unwrap();
    let path = root.display().to_string();
    (dir, path)
}

#[test]
fn every_fs_function_is_refused_without_its_grant() {
    let (_d, root) = tree();
    for call in ["fs.read(p)", "fs.read_bytes(p)", "fs.list(p)", "fs.stat(p)", "fs.exists(p)"] {
        refused(&[], &format!("local p = {} return {call}", lit(&root)), "fs");
        // fs-write does not grant reading.
        refused(&["fs-write"], &format!("local p = {} return {call}", lit(&root)), "fs");
    }
    for call in ["fs.write(p, 'x')", "fs.append(p, 'x')", "fs.remove(p)", "fs.mkdir(p)"] {
        let code = format!("local p = {} .. '/new' return {call}", lit(&root));
        refused(&[], &code, "fs-write");
        // fs does not grant writing.
        refused(&["fs"], &code, "fs-write");
    }
}

#[test]
fn read_list_stat_and_measure() {
    let (_d, root) = tree();
    let grant = format!("fs:{root}");
    let r = ok(&[&grant], &format!("return fs.read({})", lit(format!("{root}/a.txt"))));
    assert_eq!(r, json!("hello"));
    let r = ok(
        &[&grant],
        &format!(
            "local b = fs.read_bytes({}) return buffer.len(b), buffer.readu8(b, 9)",
            lit(format!("{root}/sub/b.bin"))
        ),
    );
    assert_eq!(r, json!([10, 9]));

    let code = format!(
        "local out = {{}} for _, e in fs.list({}, {{recursive = true}}) do table.insert(out, e.kind .. ':' .. e.name) end return out",
        lit(&root)
    );
    assert_eq!(ok(&[&grant], &code), json!(["file:a.txt", "dir:sub", "file:b.bin", "dir:deeper", "file:c.log"]));
    let flat = format!("return #fs.list({})", lit(&root));
    assert_eq!(ok(&[&grant], &flat), json!(2));

    // Get-ChildItem -Recurse | Measure-Object Length -Sum, files only.
    let code = format!(
        "local files = {{}} for _, e in fs.list({}, {{recursive = true}}) do if e.kind == 'file' then table.insert(files, e) end end return measure(files, 'size')",
        lit(&root)
    );
    assert_eq!(ok(&[&grant], &code), json!({"count": 3, "sum": 115, "average": 115.0 / 3.0, "min": 5, "max": 100}));

    let code = format!("local s = fs.stat({}) return s.kind, s.size, s.modified > 0", lit(format!("{root}/a.txt")));
    assert_eq!(ok(&[&grant], &code), json!(["file", 5, true]));
    let code = format!(
        "return fs.stat({}), fs.exists({}), fs.exists({})",
        lit(format!("{root}/nope")),
        lit(format!("{root}/nope")),
        lit(format!("{root}/sub"))
    );
    assert_eq!(ok(&[&grant], &code), json!([null, false, true]));
}

#[test]
fn measure_handles_numbers_records_and_gaps() {
    assert_eq!(ok(&[], "return measure({3, 1, 2})"), json!({"count": 3, "sum": 6, "average": 2, "min": 1, "max": 3}));
    assert_eq!(
        ok(&[], "return measure({{n = 4}, {m = 1}, {n = '6'}}, 'n')"),
        json!({"count": 2, "sum": 10, "average": 5, "min": 4, "max": 6})
    );
    assert_eq!(ok(&[], "return measure({})"), json!({"count": 0, "sum": 0}));
    assert!(err(&[], "return measure({'x'})").contains("not a number"));
}

#[test]
fn write_append_mkdir_remove() {
    let (_d, root) = tree();
    let grants = [format!("fs:{root}"), format!("fs-write:{root}")];
    let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
    let code = format!(
        "local d = {} .. '/out/nested'
         fs.mkdir(d)
         fs.write(d .. '/f.txt', 'one ')
         fs.append(d .. '/f.txt', 'two')
         local text = fs.read(d .. '/f.txt')
         local removed = fs.remove(d .. '/f.txt')
         local again = fs.remove(d .. '/f.txt')
         fs.write(d .. '/g.bin', buffer.fromstring('\\0\\1'))
         local n = #fs.read(d .. '/g.bin')
         fs.remove({} .. '/out', {{recursive = true}})
         return text, removed, again, n, fs.exists(d)",
        lit(&root),
        lit(&root)
    );
    assert_eq!(ok(&grants, &code), json!(["one two", true, false, 2, false]));
}

#[test]
fn paths_outside_the_granted_root_are_refused() {
    let (_d, root) = tree();
    let outside = tempfile::tempdir().unwrap();
    let outside_path = outside.path().canonicalize().unwrap();
    std::fs::write(outside_path.join("secret.txt"), "secret").unwrap();
    let granted = format!("{root}/sub");
    let grants = [format!("fs:{granted}"), format!("fs-write:{granted}")];
    let grants: Vec<&str> = grants.iter().map(String::as_str).collect();

    // `..` out of the root, plain and disguised.
    for path in
        [format!("{granted}/../a.txt"), format!("{granted}/deeper/../../a.txt"), root.clone(), "/etc/passwd".into()]
    {
        let e = err(&grants, &format!("return fs.read({})", lit(&path)));
        assert!(
            e.contains("outside the paths granted to 'fs'") && e.contains("grant_path(Capability::Fs, DIR)"),
            "{path}: {e}"
        );
    }
    let e = err(&grants, &format!("return fs.write({}, 'x')", lit(format!("{granted}/../evil.txt"))));
    assert!(e.contains("outside the paths granted to 'fs-write'"), "{e}");
    assert!(!std::path::Path::new(&root).join("evil.txt").exists());

    // A symbolic link inside the root that points out of it.
    symlink(&outside_path, format!("{granted}/link")).unwrap();
    symlink(outside_path.join("secret.txt"), format!("{granted}/secret-link")).unwrap();
    symlink(outside_path.join("new.txt"), format!("{granted}/dangling")).unwrap();
    for code in [
        format!("return fs.read({})", lit(format!("{granted}/link/secret.txt"))),
        format!("return fs.read({})", lit(format!("{granted}/secret-link"))),
        format!("return fs.list({})", lit(format!("{granted}/link"))),
        format!("return fs.write({}, 'x')", lit(format!("{granted}/link/new.txt"))),
        format!("return fs.write({}, 'x')", lit(format!("{granted}/secret-link"))),
    ] {
        let e = err(&grants, &code);
        assert!(e.contains("outside the paths granted"), "{code}: {e}");
    }
    // Writing through a dangling link would create a file outside: refused too.
    let e = err(&grants, &format!("return fs.write({}, 'x')", lit(format!("{granted}/dangling"))));
    assert!(e.contains("dangling"), "{e}");
    assert!(!outside_path.join("new.txt").exists());
    assert_eq!(std::fs::read_to_string(outside_path.join("secret.txt")).unwrap(), "secret");

    // Listing shows the link as a link and does not follow it.
    let code = format!(
        "local kinds = {{}} for _, e in fs.list({}, {{recursive = true}}) do kinds[e.name] = e.kind end return kinds",
        lit(&granted)
    );
    let kinds = ok(&grants, &code);
    assert_eq!(kinds["link"], json!("symlink"));
    assert!(kinds.get("secret.txt").is_none(), "{kinds}");

    // Removing a link removes the link, not its target.
    assert_eq!(ok(&grants, &format!("return fs.remove({})", lit(format!("{granted}/secret-link")))), json!(true));
    assert!(outside_path.join("secret.txt").exists());

    // Relative paths resolve against the working directory, so they are checked too.
    let e = err(&grants, "return fs.read('Cargo.toml')");
    assert!(e.contains("outside the paths granted"), "{e}");
}

#[test]
fn unrestricted_grant_reaches_anywhere_and_errors_name_the_path() {
    let (_d, root) = tree();
    assert_eq!(ok(&["fs"], &format!("return fs.exists({})", lit(format!("{root}/a.txt")))), json!(true));
    let e = err(&["fs"], &format!("return fs.read({})", lit(format!("{root}/missing.txt"))));
    assert!(e.contains("fs.read") && e.contains("missing.txt"), "{e}");
    let e = err(&["fs"], &format!("return fs.list({}, {{recursve = true}})", lit(&root)));
    assert!(e.contains("unknown field `recursve`"), "{e}");
}

/// Runs `code` in a pool under a 1 s timeout and returns its result, failing
/// the test (instead of hanging) when it is not over within 10 s.
fn bounded(grants: &[&str], code: &str) -> runspace::InvocationResult {
    let pool = runspace::RunspacePool::builder().max(1).session(host_common::session(grants)).open().unwrap();
    let script = runspace::Script::new(code).unwrap();
    let handle = pool.invocation(&script).timeout(std::time::Duration::from_secs(1)).begin().unwrap();
    if !handle.wait(std::time::Duration::from_secs(10)) {
        handle.stop();
        panic!("{code}: still running 10 s after a 1 s timeout");
    }
    handle.end()
}

fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

#[test]
fn fifos_and_devices_are_refused_at_once_and_never_block() {
    let (_d, root) = tree();
    let fifo = format!("{root}/fifo");
    mkfifo(std::path::Path::new(&fifo));
    let grants = [format!("fs:{root}"), format!("fs-write:{root}")];
    let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
    for call in ["fs.read(p)", "fs.read_bytes(p)", "fs.write(p, 'x')", "fs.append(p, 'x')"] {
        let code = format!("local p = {} return {call}", lit(&fifo));
        let r = bounded(&grants, &code);
        assert_eq!(r.status(), runspace::Status::Failed, "{call}: {:?}", r.output());
        let e = r.error().unwrap_or_default();
        assert!(e.contains("is a named pipe (FIFO), not a regular file") && e.contains(&fifo), "{call}: {e}");
    }
    // A reader holding the other end changes nothing: still refused.
    let reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap()
    };
    let r = bounded(&grants, &format!("return fs.write({}, 'x')", lit(&fifo)));
    assert!(r.error().unwrap_or_default().contains("not a regular file"), "{:?}", r.error());
    drop(reader);

    // Looking at a FIFO, listing next to one and removing it are fine.
    let code = format!(
        "local p = {} local kinds = {{}} for _, e in fs.list({}) do kinds[e.name] = e.kind end
         return fs.stat(p).kind, fs.exists(p), kinds.fifo, fs.remove(p), fs.exists(p)",
        lit(&fifo),
        lit(&root)
    );
    assert_eq!(bounded(&grants, &code).result(), json!(["other", true, "other", true, false]));

    // Devices are not files either (an unrestricted grant reaches /dev).
    for call in ["fs.read('/dev/null')", "fs.read_bytes('/dev/zero')", "fs.append('/dev/null', 'x')"] {
        let r = bounded(&["fs", "fs-write"], &format!("return {call}"));
        assert!(r.error().unwrap_or_default().contains("is a character device, not a regular file"), "{call}: {r:?}");
    }
}

#[test]
fn a_symlink_swapped_during_a_run_never_leads_outside_the_root() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let (_d, root) = tree();
    let outside = tempfile::tempdir().unwrap();
    let outside_path = outside.path().canonicalize().unwrap();
    std::fs::write(outside_path.join("f"), "SECRET").unwrap();
    // `d` is a real directory, `other` a link out; a thread exchanges them
    // (atomically, with renameat2) as fast as it can.
    std::fs::create_dir(format!("{root}/d")).unwrap();
    std::fs::write(format!("{root}/d/f"), "inside").unwrap();
    symlink(&outside_path, format!("{root}/other")).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let (done, root) = (done.clone(), root.clone());
        move || {
            let a = std::ffi::CString::new(format!("{root}/d")).unwrap();
            let b = std::ffi::CString::new(format!("{root}/other")).unwrap();
            let mut swaps = 0u64;
            while !done.load(Ordering::Relaxed) {
                // SAFETY: NUL-terminated paths.
                let rc = unsafe {
                    libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
                };
                assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
                swaps += 1;
            }
            swaps
        }
    });
    let grants = [format!("fs:{root}"), format!("fs-write:{root}")];
    let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
    let code = format!(
        "local dir = {} .. '/d'
         local inside, escaped, refused = 0, 0, 0
         for i = 1, 3000 do
             local ok, v = pcall(fs.read, dir .. '/f')
             if ok and v == 'inside' then inside += 1 elseif ok then escaped += 1 else refused += 1 end
             ok, v = pcall(fs.list, dir)
             if ok then for _, e in v do if e.name ~= 'f' and e.name ~= 'w' then escaped += 1 end end end
             pcall(fs.write, dir .. '/w', 'x')
             pcall(fs.stat, dir .. '/f')
         end
         return inside, escaped, refused",
        lit(&root)
    );
    let r = ok(&grants, &code);
    done.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let (inside, escaped) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
    eprintln!("rename race: [inside, escaped, refused] = {r} over {swaps} swaps");
    assert_eq!(escaped, 0, "{escaped} reads or listings reached outside the root ({r}, {swaps} swaps)");
    assert!(inside > 0 && swaps > 100, "the race did not run: {r}, {swaps} swaps");
    assert!(!outside_path.join("w").exists(), "a write landed outside the root");
    assert_eq!(std::fs::read(outside_path.join("f")).unwrap(), b"SECRET");
}

#[test]
fn mkdir_creates_a_granted_root_that_does_not_exist_yet() {
    let (_d, root) = tree();
    let out = format!("{root}/not-yet/out");
    let grant = format!("fs-write:{out}");
    let code =
        format!("fs.mkdir({}) fs.write({}, 'x') return true", lit(format!("{out}/a/b")), lit(format!("{out}/a/b/f")));
    assert_eq!(ok(&[&grant], &code), json!(true));
    assert_eq!(std::fs::read_to_string(format!("{out}/a/b/f")).unwrap(), "x");
}
