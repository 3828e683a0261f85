//! A server's state directory: what a client needs to find the server
//! (`server.json`: address and pid; `token`), the lock that makes one server
//! per directory, and the server's log.
//!
//! The directory must be the user's own and private (see [`crate::private`]);
//! there is no fallback to a shared temporary directory.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::private::{self, Access};

/// The most bytes of a token or address file read.
const SMALL_FILE: u64 = 4096;

/// The files of a state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// The directory.
    pub dir: PathBuf,
    /// The token file.
    pub token: PathBuf,
    /// `server.json`: the server's address and pid.
    pub address: PathBuf,
    /// `server.lock`: held while a server runs.
    pub lock: PathBuf,
    /// `server.log`: the output of a server started in the background.
    pub log: PathBuf,
}

impl StatePaths {
    /// The files of `dir`, or of the default state directory:
    /// `$XDG_DATA_HOME/rsp`, else `$HOME/.local/share/rsp`, else the same
    /// under the home directory of the password database; an error when
    /// none is known (never a shared temporary directory).
    pub fn new(dir: Option<&Path>) -> Result<StatePaths, String> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => default_state_dir()?,
        };
        Ok(StatePaths {
            token: dir.join("token"),
            address: dir.join("server.json"),
            lock: dir.join("server.lock"),
            log: dir.join("server.log"),
            dir,
        })
    }

    /// Whether a server holds this directory's lock right now.
    pub fn server_running(&self) -> bool {
        match private::open_private(&self.lock, Access::Read) {
            // SAFETY: flock on a descriptor we own; a shared probe is released at once.
            Ok(f) => unsafe {
                if libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 {
                    libc::flock(f.as_raw_fd(), libc::LOCK_UN);
                    false
                } else {
                    true
                }
            },
            Err(_) => false,
        }
    }

    /// The address and pid in `server.json`, if present.
    pub fn address(&self) -> Option<(SocketAddr, u32)> {
        let text = read_small(&self.address).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        Some((v["addr"].as_str()?.parse().ok()?, u32::try_from(v["pid"].as_u64()?).ok()?))
    }

    /// The server's token, read without following links from a file we own.
    pub fn read_token(&self) -> Result<String, String> {
        let token = read_small(&self.token)?.trim().to_string();
        if token.is_empty() {
            return Err(format!("{} is empty", self.token.display()));
        }
        Ok(token)
    }
}

fn read_small(path: &Path) -> Result<String, String> {
    let file = private::open_private(path, Access::Read)?;
    let mut text = String::new();
    file.take(SMALL_FILE).read_to_string(&mut text).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text)
}

fn default_state_dir() -> Result<PathBuf, String> {
    let from_env = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_absolute());
    let data = from_env("XDG_DATA_HOME")
        .or_else(|| from_env("HOME").map(|h| h.join(".local/share")))
        .or_else(|| private::home_from_passwd().map(|h| h.join(".local/share")))
        .ok_or(
            "no state directory: HOME and XDG_DATA_HOME are unset and the user has no home directory; \
                give one explicitly",
        )?;
    Ok(data.join("rsp"))
}

/// Creates the state directory if needed, and checks it is private.
pub(crate) fn create_state_dir(dir: &Path) -> Result<(), String> {
    private::ensure_private_dir(dir)
}

/// Takes the directory's lock: one server per state directory.
pub(crate) fn lock(paths: &StatePaths) -> Result<File, String> {
    let file = private::open_private(&paths.lock, Access::ReadWrite)?;
    // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let who = paths.address().map(|(a, pid)| format!(" (pid {pid}, http://{a})")).unwrap_or_default();
        return Err(format!("another job server is already running for {}{who}", paths.dir.display()));
    }
    Ok(file)
}

fn valid_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The token to serve with: the stored one if it is a private regular file
/// of ours holding a token, a new one (32 random bytes, hex) otherwise.
///
/// A token file that is a symbolic link, not a regular file, or not ours is
/// refused: someone else put it there. One that others could read (mode not
/// 0600) or that holds no token is replaced, with a line in the log.
pub(crate) fn token(paths: &StatePaths) -> Result<String, String> {
    match private::open_private(&paths.token, Access::Read) {
        Ok(file) => {
            let mode = private::mode_of(&file).map_err(|e| format!("cannot inspect {}: {e}", paths.token.display()))?;
            let mut text = String::new();
            let _ = file.take(SMALL_FILE).read_to_string(&mut text);
            let stored = text.trim();
            if mode == private::FILE_MODE && valid_token(stored) {
                return Ok(stored.to_string());
            }
            let why = if mode == private::FILE_MODE {
                "it holds no token".to_string()
            } else {
                format!("its mode was {mode:04o}")
            };
            crate::server::log(&format!("replacing the token in {}: {why}", paths.token.display()));
        }
        Err(_) if std::fs::symlink_metadata(&paths.token).is_err() => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    private::write_atomically(&paths.token, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// Appends to the state directory's log (for a server started in the background).
pub(crate) fn open_log(paths: &StatePaths) -> Result<File, String> {
    private::open_private(&paths.log, Access::Append)
}
