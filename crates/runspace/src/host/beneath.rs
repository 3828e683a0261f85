//! Opening files *beneath* a granted root, so that what was checked is what
//! is used.
//!
//! [`super::paths`] resolves a script's path and checks it against the
//! granted roots; a process swapping a directory for a symbolic link right
//! after that check could still send the operation elsewhere. So every
//! operation starts again from a descriptor of the root and asks the kernel
//! to stay under it: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` on
//! Linux 5.6 and later, which refuses any step (`..`, an absolute or
//! escaping symbolic link, a `/proc` magic link) that would leave the root.
//! Where the kernel lacks `openat2` (ENOSYS, or a seccomp filter that
//! refuses it), the path is walked one component at a time with
//! `openat(O_NOFOLLOW)`: the checked path is already fully resolved, so a
//! symbolic link met on the way can only be one swapped in since the check,
//! and it is refused.
//!
//! Directory walks (`fs.list`, a recursive `fs.remove`) go from descriptor
//! to descriptor with `O_NOFOLLOW` and `*at` calls, never back through a path.
//!
//! Only regular files are read or written: a FIFO, a device or a socket can
//! block forever or never end, outside the reach of the stop switch. Files
//! are opened with `O_NONBLOCK` (so opening a FIFO cannot block either) and
//! their type is checked on the opened descriptor, not on the path.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// A checked path: the resolved path, and the granted root it lies under
/// (`None` for an unrestricted grant, where there is nothing to stay under).
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    /// The resolved, absolute path.
    pub(crate) path: PathBuf,
    /// The canonical root `path` lies under.
    pub(crate) root: Option<PathBuf>,
}

/// What a file's type is, from `fstat` on its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl Kind {
    fn of(mode: libc::mode_t) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => Kind::Socket,
        }
    }

    /// The name scripts see in `fs.list` and `fs.stat` records.
    pub(crate) fn script_name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            _ => "other",
        }
    }

    fn described(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Fifo => "a named pipe (FIFO)",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Socket => "a socket",
        }
    }
}

/// What `fs.stat` and `fs.list` report of a file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) kind: Kind,
    pub(crate) size: u64,
    /// Unix time in seconds.
    pub(crate) modified: f64,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        Stat {
            kind: Kind::of(st.st_mode),
            size: u64::try_from(st.st_size).unwrap_or(0),
            modified: st.st_mtime as f64 + st.st_mtime_nsec as f64 / 1e9,
        }
    }
}

/// Opens `target` with `flags` (`O_CLOEXEC` is added), staying beneath its root.
pub(crate) fn open(target: &Checked, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC;
    let Some(root) = &target.root else {
        return openat(libc::AT_FDCWD, target.path.as_os_str(), flags, mode);
    };
    let root_fd = openat(libc::AT_FDCWD, root.as_os_str(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
    let below = target.path.strip_prefix(root).map_err(|_| changed())?;
    open_beneath(root_fd.as_raw_fd(), below, flags, mode)
}

/// Opens a regular file for reading.
pub(crate) fn open_read(target: &Checked) -> io::Result<File> {
    open_regular(target, libc::O_RDONLY, 0)
}

/// Opens (creating it if needed) a regular file for writing: truncated, or
/// positioned at its end for `append`.
pub(crate) fn open_write(target: &Checked, append: bool) -> io::Result<File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | if append { libc::O_APPEND } else { 0 };
    let file = open_regular(target, flags, 0o666)?;
    if !append {
        // Truncated only now that it is known to be a regular file.
        file.set_len(0)?;
    }
    Ok(file)
}

/// Opens `target` without blocking and refuses anything but a regular file.
fn open_regular(target: &Checked, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let fd = match open(target, flags | libc::O_NONBLOCK | libc::O_NOCTTY, mode) {
        Ok(fd) => fd,
        // A FIFO with no reader (or a socket) cannot be opened for writing:
        // find out what it is, to say so.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            let kind = fstat(&open(target, libc::O_PATH, 0)?)?.kind;
            return Err(not_regular(kind));
        }
        Err(e) => return Err(e),
    };
    let kind = fstat(&fd)?.kind;
    if kind != Kind::File {
        return Err(not_regular(kind));
    }
    // A regular file: back to blocking reads and writes (a FUSE file may
    // honour O_NONBLOCK and answer EAGAIN).
    // SAFETY: `fd` is open; F_GETFL/F_SETFL only read and set its status flags.
    unsafe {
        let status = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if status >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, status & !libc::O_NONBLOCK);
        }
    }
    Ok(File::from(fd))
}

fn not_regular(kind: Kind) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is {}, not a regular file (only regular files are read or written)", kind.described()),
    )
}

/// The type, size and time of `target` (following a last symbolic link
/// that stays beneath the root), or `None` when it does not exist.
pub(crate) fn stat(target: &Checked) -> io::Result<Option<Stat>> {
    match open(target, libc::O_PATH, 0) {
        Ok(fd) => fstat(&fd).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `target` and its missing parents, one `mkdirat` at a time beneath the root.
pub(crate) fn mkdir_all(target: &Checked) -> io::Result<()> {
    let Some(root) = &target.root else {
        return std::fs::create_dir_all(&target.path);
    };
    // A granted root that does not exist yet is created as named: the
    // grant allows exactly that directory.
    if !root.exists() {
        std::fs::create_dir_all(root)?;
    }
    let mut dir = openat(libc::AT_FDCWD, root.as_os_str(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
    for name in names(target.path.strip_prefix(root).map_err(|_| changed())?)? {
        let c_name = cstring(name)?;
        // SAFETY: `dir` is an open descriptor and `c_name` a NUL-terminated string.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), c_name.as_ptr(), 0o777) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        dir = step(dir.as_raw_fd(), name, libc::O_PATH | libc::O_DIRECTORY)?;
    }
    Ok(())
}

/// Removes `target` itself (a file, a symbolic link, an empty directory, or
/// with `recursive` a whole tree without following links in it). `false`
/// when there was nothing to remove. `keep_going` is asked between entries
/// of a tree; when it says no, the removal stops with `Interrupted`.
pub(crate) fn remove(target: &Checked, recursive: bool, keep_going: &dyn Fn() -> bool) -> io::Result<bool> {
    // The parent's descriptor and the name in it; the root itself (or any
    // path of an unrestricted grant) is named by its absolute path.
    let (parent, name): (Option<OwnedFd>, &OsStr) = match (&target.root, target.path.parent(), target.path.file_name())
    {
        (Some(root), Some(parent), Some(name)) if target.path != *root => {
            let parent = Checked { path: parent.to_path_buf(), root: Some(root.clone()) };
            (Some(open(&parent, libc::O_PATH | libc::O_DIRECTORY, 0)?), name)
        }
        _ => (None, target.path.as_os_str()),
    };
    let dir = parent.as_ref().map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    let st = match fstatat(dir, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if st.kind != Kind::Dir {
        unlinkat(dir, name, 0)?;
    } else if recursive {
        remove_tree(dir, name, keep_going)?;
    } else {
        unlinkat(dir, name, libc::AT_REMOVEDIR)?;
    }
    Ok(true)
}

fn remove_tree(parent: RawFd, name: &OsStr, keep_going: &dyn Fn() -> bool) -> io::Result<()> {
    let dir = Dir::open_at(parent, name)?;
    for entry in dir.names()? {
        if !keep_going() {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        match fstatat(dir.fd(), &entry) {
            Ok(st) if st.kind == Kind::Dir => remove_tree(dir.fd(), &entry, keep_going)?,
            Ok(_) => unlinkat(dir.fd(), &entry, 0)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    unlinkat(parent, name, libc::AT_REMOVEDIR)
}

/// An open directory, read by descriptor.
pub(crate) struct Dir(OwnedFd);

impl Dir {
    /// Opens the directory `target`, beneath its root.
    pub(crate) fn open(target: &Checked) -> io::Result<Dir> {
        open(target, libc::O_RDONLY | libc::O_DIRECTORY, 0).map(Dir)
    }

    /// Opens the subdirectory `name`, never through a symbolic link.
    pub(crate) fn open_at(parent: RawFd, name: &OsStr) -> io::Result<Dir> {
        step(parent, name, libc::O_RDONLY | libc::O_DIRECTORY).map(Dir)
    }

    /// The raw descriptor, for `*at` calls relative to this directory.
    pub(crate) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// The type, size and time of entry `name`, not following a symbolic link.
    pub(crate) fn stat(&self, name: &OsStr) -> io::Result<Stat> {
        fstatat(self.fd(), name)
    }

    /// The names of the entries, without `.` and `..`, in the order read.
    pub(crate) fn names(&self) -> io::Result<Vec<OsString>> {
        // SAFETY: `dup` of an open descriptor; the copy is owned below.
        let copy = unsafe { libc::dup(self.fd()) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `copy` is an open descriptor of a directory that nothing
        // else owns; on success the stream owns it and `closedir` closes it.
        let stream = unsafe { libc::fdopendir(copy) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: `fdopendir` failed, so `copy` is still ours to close.
            unsafe { libc::close(copy) };
            return Err(e);
        }
        // The copy shares the offset with `self`: start from the beginning.
        // SAFETY: `stream` is a valid directory stream.
        unsafe { libc::rewinddir(stream) };
        let mut out = Vec::new();
        let result = loop {
            // `readdir` reports errors only through errno.
            // SAFETY: errno is thread-local; setting it is always sound.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is a valid, open directory stream.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error() == Some(0) { Ok(()) } else { Err(e) };
            }
            // SAFETY: `entry` points to a dirent valid until the next
            // `readdir` on this stream; `d_name` is NUL-terminated.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        };
        // SAFETY: `stream` is valid and closed exactly once.
        unsafe { libc::closedir(stream) };
        result.map(|()| out)
    }
}

/// Whether this kernel lets us use `openat2` with `RESOLVE_BENEATH`; the
/// tests turn it off to exercise the fallback.
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// Asks the kernel once: an old kernel says ENOSYS, a container's seccomp
/// filter may say EPERM or ENOSYS; either way the fallback is used.
fn openat2_available() -> bool {
    static PROBED: OnceLock<bool> = OnceLock::new();
    *PROBED.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            openat2(libc::AT_FDCWD, Path::new("."), libc::O_PATH | libc::O_DIRECTORY, 0).is_ok()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    })
}

fn open_beneath(root: RawFd, below: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    if OPENAT2.load(Ordering::Relaxed) && openat2_available() {
        let path = if below.as_os_str().is_empty() { Path::new(".") } else { below };
        return openat2(root, path, flags, mode).map_err(|e| match e.raw_os_error() {
            // EXDEV: a step would leave the root; ELOOP: a magic link.
            Some(libc::EXDEV | libc::ELOOP) => changed(),
            _ => e,
        });
    }
    walk(root, below, flags, mode)
}

#[cfg(target_os = "linux")]
fn openat2(dir: RawFd, path: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c_path = cstring(path.as_os_str())?;
    // SAFETY: `open_how` is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    // The kernel refuses a mode without O_CREAT/O_TMPFILE.
    how.mode = if flags & libc::O_CREAT != 0 { u64::from(mode) } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // A concurrent rename elsewhere can make a RESOLVE_BENEATH lookup fail
    // with EAGAIN; it is safe to try again.
    for _ in 0..16 {
        // SAFETY: `dir` is an open descriptor, `c_path` a NUL-terminated
        // string and `how` a valid `open_how` whose size is passed along.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Err(changed())
}

/// The fallback: one `openat(O_NOFOLLOW)` per component of the resolved path.
fn walk(root: RawFd, below: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let names = names(below)?;
    let Some((last, parents)) = names.split_last() else {
        return openat(root, OsStr::new("."), flags, mode);
    };
    let mut dir: Option<OwnedFd> = None;
    for name in parents {
        let at = dir.as_ref().map_or(root, AsRawFd::as_raw_fd);
        dir = Some(step(at, name, libc::O_PATH | libc::O_DIRECTORY)?);
    }
    let at = dir.as_ref().map_or(root, AsRawFd::as_raw_fd);
    // O_PATH|O_NOFOLLOW on a link opens the link itself; other opens refuse it.
    openat(at, last, flags | libc::O_NOFOLLOW, mode).map_err(refuse_links)
}

/// One step down, never through a symbolic link.
fn step(dir: RawFd, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat(dir, name, flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0).map_err(|e| {
        // `O_PATH | O_DIRECTORY | O_NOFOLLOW` on a link says ENOTDIR.
        if e.raw_os_error() == Some(libc::ENOTDIR) && fstatat(dir, name).is_ok_and(|s| s.kind == Kind::Symlink) {
            changed()
        } else {
            refuse_links(e)
        }
    })
}

/// A symbolic link met where the resolved path had none was swapped in
/// after the check.
fn refuse_links(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        changed()
    } else {
        e
    }
}

/// The plain names of a resolved relative path; anything else (`..`, a
/// root) means the path is not what was checked.
fn names(below: &Path) -> io::Result<Vec<&OsStr>> {
    below
        .components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(changed()),
        })
        .collect()
}

fn changed() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "changed while it was being opened (a symbolic link or '..' now leads elsewhere); refused, as it could lead outside the granted root",
    )
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn openat(dir: RawFd, path: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c_path = cstring(path)?;
    // SAFETY: `dir` is AT_FDCWD or an open descriptor and `c_path` a
    // NUL-terminated string; the mode argument is read only with O_CREAT.
    let fd = unsafe { libc::openat(dir, c_path.as_ptr(), flags | libc::O_CLOEXEC, libc::c_uint::from(mode)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> io::Result<Stat> {
    // SAFETY: `stat` is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid, writable `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Stat::from_raw(&st))
}

fn fstatat(dir: RawFd, name: &OsStr) -> io::Result<Stat> {
    let c_name = cstring(name)?;
    // SAFETY: `stat` is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is AT_FDCWD or open, `c_name` NUL-terminated, `st` writable.
    if unsafe { libc::fstatat(dir, c_name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Stat::from_raw(&st))
}

fn unlinkat(dir: RawFd, name: &OsStr, flags: libc::c_int) -> io::Result<()> {
    let c_name = cstring(name)?;
    // SAFETY: `dir` is AT_FDCWD or open and `c_name` NUL-terminated.
    if unsafe { libc::unlinkat(dir, c_name.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), "inside").unwrap();
        std::fs::write(base.join("secret"), "outside").unwrap();
        (dir, base, root)
    }

    fn read(target: &Checked) -> io::Result<String> {
        io::read_to_string(open_read(target)?)
    }

    fn both_ways(test: impl Fn()) {
        OPENAT2.store(true, Ordering::Relaxed);
        test();
        OPENAT2.store(false, Ordering::Relaxed);
        test();
        OPENAT2.store(true, Ordering::Relaxed);
    }

    #[test]
    fn a_link_swapped_in_after_the_check_is_refused_both_ways() {
        let (_d, base, root) = tree();
        // As if `sub` had been checked as a directory and then replaced by a link out.
        std::fs::rename(root.join("sub"), root.join("real")).unwrap();
        std::os::unix::fs::symlink(&base, root.join("sub")).unwrap();
        std::fs::write(base.join("f"), "outside").unwrap();
        let target = Checked { path: root.join("sub/f"), root: Some(root.clone()) };
        both_ways(|| {
            let e = read(&target).unwrap_err();
            assert!(e.to_string().contains("changed while it was being opened"), "{e}");
            assert!(open_write(&target, false).is_err());
            assert_eq!(std::fs::read_to_string(base.join("f")).unwrap(), "outside");
        });
        let inside = Checked { path: root.join("real/f"), root: Some(root.clone()) };
        both_ways(|| assert_eq!(read(&inside).unwrap(), "inside"));
    }

    #[test]
    fn only_regular_files_are_read_or_written() {
        let (_d, _base, root) = tree();
        let fifo = root.join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let target = Checked { path: fifo, root: Some(root.clone()) };
        both_ways(|| {
            for e in [read(&target).unwrap_err(), open_write(&target, true).unwrap_err()] {
                assert!(e.to_string().contains("is a named pipe (FIFO), not a regular file"), "{e}");
            }
        });
        let dev = Checked { path: "/dev/null".into(), root: None };
        assert!(read(&dev).unwrap_err().to_string().contains("character device"));
        let dir = Checked { path: root.join("sub"), root: Some(root) };
        assert!(read(&dir).unwrap_err().to_string().contains("a directory"));
    }

    #[test]
    fn mkdir_list_and_remove_stay_beneath() {
        let (_d, _base, root) = tree();
        both_ways(|| {
            let deep = Checked { path: root.join("a/b/c"), root: Some(root.clone()) };
            mkdir_all(&deep).unwrap();
            std::fs::write(root.join("a/b/c/x"), "x").unwrap();
            std::os::unix::fs::symlink("/", root.join("a/b/up")).unwrap();
            let dir = Dir::open(&Checked { path: root.join("a/b"), root: Some(root.clone()) }).unwrap();
            let mut names = dir.names().unwrap();
            names.sort();
            assert_eq!(names, ["c", "up"]);
            assert_eq!(dir.stat(OsStr::new("up")).unwrap().kind, Kind::Symlink);
            let a = Checked { path: root.join("a"), root: Some(root.clone()) };
            assert!(remove(&a, true, &|| true).unwrap());
            assert!(!root.join("a").exists() && Path::new("/etc").exists());
            assert!(!remove(&a, true, &|| true).unwrap());
        });
    }

    #[test]
    fn a_rename_race_never_reads_outside_either_way() {
        let (_d, base, root) = tree();
        std::fs::create_dir(base.join("out")).unwrap();
        std::fs::write(base.join("out/f"), "outside").unwrap();
        std::fs::rename(root.join("sub"), root.join("d")).unwrap();
        std::os::unix::fs::symlink(base.join("out"), root.join("other")).unwrap();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let swapper = std::thread::spawn({
            let (done, root) = (done.clone(), root.clone());
            move || {
                let a = CString::new(root.join("d").as_os_str().as_bytes()).unwrap();
                let b = CString::new(root.join("other").as_os_str().as_bytes()).unwrap();
                while !done.load(Ordering::Relaxed) {
                    // SAFETY: NUL-terminated paths.
                    let rc = unsafe {
                        libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
                    };
                    assert_eq!(rc, 0);
                }
            }
        });
        let target = Checked { path: root.join("d/f"), root: Some(root.clone()) };
        both_ways(|| {
            // At least 3000 tries, and on until one read succeeded (on a
            // busy machine the swapper can win every one of the first
            // 3000); 20 s bounds it.
            let (mut inside, mut tries) = (0, 0);
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while tries < 3000 || (inside == 0 && std::time::Instant::now() < until) {
                tries += 1;
                // A refusal is fine; a read must never come from outside.
                if let Ok(text) = read(&target) {
                    assert_eq!(text, "inside", "read outside the root");
                    inside += 1;
                }
            }
            assert!(inside > 0, "no read succeeded in {tries} tries");
        });
        done.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
    }
}
