//! A server's state directory: what a client needs to find the server
//! (`server.json`: address and pid; `token`), the lock that makes one server
//! per directory, and the server's log.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::Value;

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
    /// The files of `dir`, or of the default state directory.
    pub fn new(dir: Option<&Path>) -> StatePaths {
        let dir = dir.map_or_else(default_state_dir, Path::to_path_buf);
        StatePaths {
            token: dir.join("token"),
            address: dir.join("server.json"),
            lock: dir.join("server.lock"),
            log: dir.join("server.log"),
            dir,
        }
    }

    /// Whether a server holds this directory's lock right now.
    pub fn server_running(&self) -> bool {
        match File::open(&self.lock) {
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
        let text = fs::read_to_string(&self.address).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        Some((v["addr"].as_str()?.parse().ok()?, v["pid"].as_u64()? as u32))
    }
}

fn default_state_dir() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".local/share")));
    data.unwrap_or_else(std::env::temp_dir).join("rsp")
}

pub(crate) fn create_state_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Takes the directory's lock: one server per state directory.
pub(crate) fn lock(paths: &StatePaths) -> Result<File, String> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&paths.lock)
        .map_err(|e| format!("cannot open {}: {e}", paths.lock.display()))?;
    // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let who = paths.address().map(|(a, pid)| format!(" (pid {pid}, http://{a})")).unwrap_or_default();
        return Err(format!("another job server is already running for {}{who}", paths.dir.display()));
    }
    Ok(file)
}

/// Reads the token, or makes one (32 random bytes, hex) readable only by the user.
pub(crate) fn token(paths: &StatePaths) -> Result<String, String> {
    if let Ok(text) = fs::read_to_string(&paths.token) {
        let _ = fs::set_permissions(&paths.token, fs::Permissions::from_mode(0o600));
        if !text.trim().is_empty() {
            return Ok(text.trim().to_string());
        }
    }
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&paths.token)
        .map_err(|e| format!("cannot write {}: {e}", paths.token.display()))?;
    writeln!(file, "{token}").map_err(|e| format!("cannot write {}: {e}", paths.token.display()))?;
    Ok(token)
}
