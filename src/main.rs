//! The `smtp-relay` binary: its command line (or, called as `sendmail`,
//! `mailq`, `newaliases`, theirs) handed to `app::run`, the composition
//! root, whose outcome is the exit code (sysexits, `exit.rs`).

use std::process::ExitCode;

use smtp_relay::app;

fn main() -> ExitCode {
    match smtp_relay::sendmail::command_line(std::env::args().collect()) {
        Ok(Ok(args)) => app::run(args),
        Ok(Err(done)) => done.into(),
        Err(e) => app::fail(&e),
    }
}
