//! A private Postfix instance (scripts/postfix-instance.sh) on loopback,
//! as a next hop: shared by the interop, DKIM, TLS, DSN, REQUIRETLS and
//! smarthost tests (tlsutil re-exports it).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{in_ci, require_tool, run_tool};

pub fn is_root() -> bool {
    let run = run_tool(Command::new("id").arg("-u"), Duration::from_secs(10));
    run.stdout.trim() == "0"
}

/// A port nothing listens on right now.
pub fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether a test that needs a private Postfix can run here: the tools,
/// and root (Postfix's master starts as root). Skips or fails (in CI).
pub fn postfix_usable(test: &str) -> bool {
    if require_tool("postfix", test).is_none() {
        return false;
    }
    if !is_root() {
        if in_ci() {
            panic!("{test}: Postfix's master must start as root (CI is set)");
        }
        println!("SKIPPED {test}: not root (Postfix's master starts as root)");
        return false;
    }
    true
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postfix-instance.sh")
}

/// scripts/postfix-instance.sh with extra main.cf lines; stopped and
/// removed on drop.
pub struct PostfixInstance {
    pub dir: PathBuf,
    pub port: u16,
}

impl PostfixInstance {
    pub fn start(relayhost_port: u16, extra_main_cf: &str) -> PostfixInstance {
        PostfixInstance::start_with(relayhost_port, extra_main_cf, "", &[])
    }

    /// `start` with master.cf lines (MASTER_CF_EXTRA) and more of the
    /// script's environment (e.g. SASLDB).
    pub fn start_with(
        relayhost_port: u16,
        extra_main_cf: &str,
        extra_master_cf: &str,
        env: &[(&str, &str)],
    ) -> PostfixInstance {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // short: Postfix's UNIX sockets live below it
        let dir = std::env::temp_dir().join(format!("srtls-{}-{n}", std::process::id()));
        let extra = std::env::temp_dir().join(format!("srtls-{}-{n}.cf", std::process::id()));
        fs::write(&extra, extra_main_cf).expect("write extra main.cf");
        let master = std::env::temp_dir().join(format!("srtls-{}-{n}.master", std::process::id()));
        fs::write(&master, extra_master_cf).expect("write extra master.cf");
        let mut last = None;
        for _ in 0..3 {
            let port = unused_port();
            let run = run_tool(
                Command::new("bash")
                    .arg(script())
                    .args([
                        "start",
                        &dir.display().to_string(),
                        &port.to_string(),
                        &relayhost_port.to_string(),
                    ])
                    .env("MAIN_CF_EXTRA", &extra)
                    .env("MASTER_CF_EXTRA", &master)
                    .envs(env.iter().copied()),
                Duration::from_secs(90),
            );
            if run.code == Some(0) {
                let _ = fs::remove_file(&extra);
                let _ = fs::remove_file(&master);
                return PostfixInstance { dir, port };
            }
            last = Some(run);
        }
        let _ = fs::remove_file(&extra);
        let _ = fs::remove_file(&master);
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
