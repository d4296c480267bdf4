//! sd_notify(3) without libsystemd: one datagram per state change to the
//! Unix socket `$NOTIFY_SOCKET` names (a path, or `@name` for the
//! abstract namespace), as a unit with `Type=notify` expects: `READY=1`
//! once the listeners are open and the queue loaded, `STOPPING=1` when
//! the server begins to stop, and around a SIGHUP reload `RELOADING=1`
//! with `MONOTONIC_USEC=` in the same datagram (sd_notify(3): systemd
//! 253's `Type=notify-reload` needs the timestamp to match the reload to
//! its request), then `READY=1` when the reload is done, whether the new
//! configuration was taken or refused (the server is ready either way). Without the variable (not under systemd)
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

/// A reload begins: `RELOADING=1` and the CLOCK_MONOTONIC time in
/// microseconds, as one message (sd_notify(3), `MONOTONIC_USEC=`).
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        crate::sys::monotonic_usec()
    ));
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
