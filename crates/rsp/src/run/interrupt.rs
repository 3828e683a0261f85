//! Ctrl-C during `rsp run`: first take no new items and let running ones
//! finish, then stop them, then leave at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use runspace::RunControl;

use crate::common::diag::diag;

/// Installs the handler for the run `control` steers; the returned counter
/// says how many times Ctrl-C was pressed.
pub fn install_ctrl_c(control: RunControl) -> Arc<AtomicUsize> {
    static STATE: OnceLock<(Arc<AtomicUsize>, RunControl)> = OnceLock::new();
    let count = Arc::new(AtomicUsize::new(0));
    if STATE.set((count.clone(), control)).is_ok() {
        let _ = ctrlc::set_handler(|| {
            let Some((count, control)) = STATE.get() else { return };
            match count.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    diag!("\nrsp: interrupted: finishing running items (Ctrl-C again to stop them)");
                    control.drain();
                }
                1 => {
                    diag!("\nrsp: stopping running items");
                    control.stop();
                }
                _ => std::process::exit(130),
            }
        });
    }
    count
}
