//! A private Postfix instance (scripts/postfix-instance.sh) on loopback,
//! as a next hop in the middle: shared by tests/interop_delivery.rs and
//! tests/dkim.rs.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::run_tool;

pub fn is_root() -> bool {
    let run = run_tool(Command::new("id").arg("-u"), Duration::from_secs(10));
    run.stdout.trim() == "0"
}

/// A port nothing listens on right now (another process may take it
/// before we use it; callers retry).
pub fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postfix-instance.sh")
}

/// A running instance of scripts/postfix-instance.sh; stopped (and its
/// directory removed) on drop.
pub struct PostfixInstance {
    pub dir: PathBuf,
    pub port: u16,
}

impl PostfixInstance {
    /// Starts an instance relaying to `relayhost_port`; retries with
    /// another port if the one picked was taken meanwhile.
    pub fn start(relayhost_port: u16) -> PostfixInstance {
        // short: Postfix's UNIX sockets live below it
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("srpf-{}-{n}", std::process::id()));
        let mut last = None;
        for _ in 0..3 {
            let port = unused_port();
            let run = run_tool(
                Command::new("bash").arg(script()).args([
                    "start",
                    &dir.display().to_string(),
                    &port.to_string(),
                    &relayhost_port.to_string(),
                ]),
                Duration::from_secs(90),
            );
            if run.code == Some(0) {
                return PostfixInstance { dir, port };
            }
            last = Some(run);
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("postfix-instance.sh start failed: {last:?}");
    }

    pub fn maillog(&self) -> String {
        fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        let run = run_tool(
            Command::new("bash")
                .arg(script())
                .args(["stop", &self.dir.display().to_string()]),
            Duration::from_secs(60),
        );
        if std::thread::panicking() {
            eprintln!("---- postfix maillog ----\n{}---- end ----", self.maillog());
        }
        if run.code == Some(0) {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "postfix-instance.sh stop failed, {} kept: {run:?}",
                self.dir.display()
            );
        }
    }
}
