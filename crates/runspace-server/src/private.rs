//! Files only we may touch: the state directory and everything the server
//! keeps in it (token, address, lock, log, database).
//!
//! The server may run as root while others can write near it, so it trusts
//! nothing it did not create: a directory must be ours and not writable by
//! anyone else, files are opened without following symbolic links
//! (`O_NOFOLLOW`), must be regular files we own with one link, and are made
//! mode 0600 through their descriptor, whatever the umask.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every file the server creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// The mode of a state directory the server creates.
const DIR_MODE: u32 = 0o700;

/// The effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (0700) if missing and checks that it is ours and that
/// no one else can write in it or replace it.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    if fs::symlink_metadata(dir).is_err() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
            Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    }
    check_dir(dir, false)?;
    // Whoever can write the parent can swap our directory for theirs.
    let parent = fs::canonicalize(dir)
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?
        .parent()
        .map(Path::to_path_buf);
    match parent {
        Some(parent) => check_dir(&parent, true),
        None => Ok(()),
    }
}

/// `dir` must be a directory owned by us (or, for a parent, by root) and
/// not writable by group or others (a parent may be, with the sticky bit,
/// as /tmp is: then no one else can rename what is in it).
pub(crate) fn check_dir(dir: &Path, is_parent: bool) -> Result<(), String> {
    let meta = fs::metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    let what = if is_parent { "the parent directory" } else { "the directory" };
    if !meta.is_dir() {
        return Err(format!("{what} {} is not a directory", dir.display()));
    }
    let me = euid();
    if meta.uid() != me && !(is_parent && meta.uid() == 0) {
        return Err(format!(
            "refusing {what} {}: it belongs to uid {}, not to us (uid {me}); anyone who owns it could read the \
             token or plant files",
            dir.display(),
            meta.uid()
        ));
    }
    let sticky = meta.mode() & libc::S_ISVTX != 0;
    if meta.mode() & 0o022 != 0 && !(is_parent && sticky) {
        return Err(format!(
            "refusing {what} {}: others can write in it (mode {:04o}); make it private (chmod 700)",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// How a private file is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read an existing file.
    Read,
    /// Read and write, creating it if missing, never truncating.
    ReadWrite,
    /// Append, creating it if missing.
    Append,
}

/// Opens `path` without following a symbolic link, and checks it is a
/// regular file we own with a single link; a file we may write is made
/// mode 0600 through its descriptor.
pub(crate) fn open_private(path: &Path, access: Access) -> Result<File, String> {
    let mut options = OpenOptions::new();
    match access {
        Access::Read => options.read(true),
        Access::ReadWrite => options.read(true).write(true).create(true),
        Access::Append => options.append(true).create(true),
    };
    let file = options
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(path, &e))?;
    check_file(&file, path)?;
    if access != Access::Read {
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    }
    Ok(file)
}

/// Makes an existing file private (or leaves a missing one missing):
/// for files another program creates next to ours (SQLite's `-wal`, `-shm`).
pub(crate) fn tighten_if_present(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => open_private(path, Access::ReadWrite).map(drop),
    }
}

fn open_error(path: &Path, e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ELOOP) {
        format!("refusing {}: it is a symbolic link (not followed; remove it)", path.display())
    } else {
        format!("cannot open {}: {e}", path.display())
    }
}

fn check_file(file: &File, path: &Path) -> Result<(), String> {
    let meta = file.metadata().map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    let refuse = |why: String| Err(format!("refusing {}: {why}", path.display()));
    if !meta.file_type().is_file() {
        return refuse("it is not a regular file".into());
    }
    if meta.uid() != euid() {
        return refuse(format!("it belongs to uid {}, not to us (uid {})", meta.uid(), euid()));
    }
    if meta.nlink() != 1 {
        return refuse(format!("it has {} hard links (expected 1)", meta.nlink()));
    }
    Ok(())
}

/// The mode bits of an open file.
pub(crate) fn mode_of(file: &File) -> io::Result<u32> {
    Ok(file.metadata()?.mode() & 0o7777)
}

/// Replaces `path` with `contents` at once (write a new private file, then
/// rename it over): readers never see half a file, and a symbolic link
/// planted at `path` is replaced, not followed.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// The current user's home directory from the password database (not from
/// the environment), if it has one.
pub(crate) fn home_from_passwd() -> Option<PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for an out-parameter.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live memory we own, and buf's length
    // is passed, so getpwuid_r writes only within it.
    let rc = unsafe { libc::getpwuid_r(euid(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: on success pw_dir points to a NUL-terminated string inside buf, which is alive.
    let dir = unsafe { CStr::from_ptr(pwd.pw_dir) };
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    dir.is_absolute().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_is_not_followed_and_its_target_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        fs::write(&target, "secret").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("token");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for access in [Access::Read, Access::ReadWrite, Access::Append] {
            let e = open_private(&link, access).unwrap_err();
            assert!(e.contains("symbolic link"), "{e}");
        }
        assert_eq!(fs::read_to_string(&target).unwrap(), "secret");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o644);
        write_atomically(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_file());
        assert_eq!(fs::read_to_string(&target).unwrap(), "secret");
    }

    #[test]
    fn a_hard_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), "x").unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let e = open_private(&dir.path().join("b"), Access::ReadWrite).unwrap_err();
        assert!(e.contains("hard links"), "{e}");
    }

    #[test]
    fn files_are_made_private_whatever_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let file = open_private(&path, Access::Append).unwrap();
        assert_eq!(mode_of(&file).unwrap(), 0o600);
        write_atomically(&dir.path().join("server.json"), b"{}").unwrap();
        assert_eq!(fs::metadata(dir.path().join("server.json")).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_world_writable_directory_is_refused_and_a_new_one_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(&open).unwrap_err();
        assert!(e.contains("others can write") && e.contains("0777"), "{e}");
        let new = dir.path().join("new/rsp");
        ensure_private_dir(&new).unwrap();
        assert_eq!(fs::metadata(&new).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn the_home_directory_comes_from_the_password_database() {
        assert!(home_from_passwd().is_some_and(|h| h.is_absolute()));
    }
}
