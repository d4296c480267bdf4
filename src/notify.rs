//! sd_notify(3) without libsystemd: one datagram per state change to the
//! Unix socket `$NOTIFY_SOCKET` names (a path, or `@name` for the
//! abstract namespace), as a unit with `Type=notify` expects: `READY=1`
//! once the listeners are open and the queue loaded, `STOPPING=1` when
//! the server begins to stop. Without the variable (not under systemd)
//! nothing is sent. A failure to send is logged, never fatal.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (`READY=1`, `STOPPING=1`, …) to the service manager.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    if let Err(e) = send(&target, state) {
        log::warn!("sd_notify {state} to {target}: {e}");
    }
}

fn send(target: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(target)?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}
