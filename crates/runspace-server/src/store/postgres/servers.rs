//! Servers sharing a store, on leases: each `rsp serve` on PostgreSQL has a
//! row in `servers` whose `lease_until` its heartbeat keeps in the future
//! (on the database's clock), and every job it accepts names it
//! (`jobs.server_id`). A server that dies (kill -9, its host lost) stops
//! beating; once its lease has run out, any other server of the store (or
//! the same one started again) marks its Queued and Running jobs
//! Interrupted, as a SQLite-backed server does for its own state folder
//! when it starts.
//!
//! Fencing: a server's jobs are touched only when its lease has expired,
//! so two live servers never take each other's jobs; and an interruption
//! is final: the writer moves a job on (Running, an output, its end) only
//! while it is Queued or Running, so a server that was merely late (paused
//! past its lease) cannot bring an interrupted job back.

use std::time::Duration;

use super::{PgStore, StoreError};

/// One server's identity in the store: unique across hosts and restarts.
pub(super) fn server_id() -> String {
    let host = nix_hostname();
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{host}/{}/{started:x}", std::process::id())
}

fn nix_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

/// The jobs of servers whose lease ran out (or whose row is gone) become
/// Interrupted, with their history; the expired rows go.
const SWEEP: &str = "
WITH gone AS (
    UPDATE jobs SET state = 'Interrupted', ended_at = extract(epoch FROM now()),
        error = coalesce(error, CASE state
            WHEN 'Running' THEN 'the server running the job stopped answering (' || server_id || ')'
            ELSE 'the server holding the job stopped answering before it started (' || server_id || ')' END)
    WHERE state IN ('Queued', 'Running') AND server_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM servers s WHERE s.id = jobs.server_id AND s.lease_until >= now())
    RETURNING id, ended_at)
INSERT INTO history (job_id, state, at) SELECT id, 'Interrupted', ended_at FROM gone";

impl PgStore {
    /// Makes this store a server's: the jobs inserted from now on name
    /// this server, and [`PgStore::server_heartbeat`] keeps its lease of
    /// `lease` alive. Call once, before the first job.
    pub fn register_server(&self, lease: Duration) -> Result<(), StoreError> {
        let id = self.owner.get_or_init(server_id).clone();
        self.lease.set(lease).ok();
        self.beat(id, lease)
    }

    /// Extends this server's lease, then interrupts the jobs of every
    /// server whose lease has run out; how many it interrupted.
    pub fn server_heartbeat(&self) -> Result<u64, StoreError> {
        let (Some(id), Some(lease)) = (self.owner.get().cloned(), self.lease.get().copied()) else {
            return Ok(0);
        };
        self.beat(id, lease)?;
        self.read(|mut c| async move {
            let tx = c.transaction().await?;
            let interrupted = tx.execute(SWEEP, &[]).await?;
            tx.execute("DELETE FROM servers WHERE lease_until < now()", &[]).await?;
            tx.commit().await?;
            Ok(interrupted)
        })
    }

    /// Gives up this server's lease (a clean stop, its jobs ended).
    pub fn unregister_server(&self) {
        if let Some(id) = self.owner.get().cloned() {
            let _ = self.read(move |c| async move { c.execute("DELETE FROM servers WHERE id = $1", &[&id]).await });
        }
    }

    fn beat(&self, id: String, lease: Duration) -> Result<(), StoreError> {
        let (host, pid) = (nix_hostname(), i32::try_from(std::process::id()).unwrap_or(i32::MAX));
        let lease = lease.as_secs_f64();
        self.read(move |c| async move {
            c.execute(
                "INSERT INTO servers (id, host, pid, lease_until) \
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8)) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), lease_until = excluded.lease_until",
                &[&id, &host, &pid, &lease],
            )
            .await
        })
        .map(|_| ())
    }
}
