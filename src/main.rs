//! The `smtp-relay` binary: parse the command line (`cli`), set up
//! logging, run one command (built by `app`, the composition root), and
//! turn its outcome into a sysexits(3) exit code (`exit`).

use std::process::ExitCode;

use smtp_relay::app;
use smtp_relay::cli::{self, Cli};
use smtp_relay::exit::Exit;

/// Prints `e` as the one line a failed command leaves on stderr, and
/// gives its exit code: every error reaches the process's exit status
/// here, through its `From<&E> for Exit` in exit.rs.
fn fail<E: std::fmt::Display>(e: &E) -> ExitCode
where
    for<'a> Exit: From<&'a E>,
{
    eprintln!("smtp-relay: {e}");
    Exit::from(e).into()
}

/// `quiet_default`: commands for scripts log only warnings unless asked.
fn init_logging(verbosity: usize, quiet_default: bool) {
    let _ = init_logging_to(verbosity, quiet_default, Default::default(), None);
}

/// `init_logging` with `--log-format` and `--log-file` (logging.rs).
fn init_logging_to(
    verbosity: usize,
    quiet_default: bool,
    format: smtp_relay::logging::LogFormat,
    file: Option<&std::path::Path>,
) -> std::io::Result<()> {
    let default = match verbosity {
        0 if quiet_default => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    smtp_relay::logging::init(default, verbosity, format, file)
}

fn main() -> ExitCode {
    // called as `sendmail`, `mailq`, `newaliases`: their command lines
    let args = match smtp_relay::sendmail::command_line(std::env::args().collect()) {
        Ok(Ok(args)) => args,
        Ok(Err(done)) => return done.into(),
        Err(e) => return fail(&e),
    };
    let cli = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match cli {
        Cli::Help(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Cli::Version => {
            println!("smtp-relay {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Cli::Queue {
            config,
            cmd,
            mut sel,
            dry_run,
            ids_from_stdin,
            warnings,
        } => {
            init_logging(config.verbosity, true);
            for w in warnings {
                eprintln!("smtp-relay: warning: {w}");
            }
            if ids_from_stdin {
                match smtp_relay::admin::read_ids(&mut std::io::stdin().lock()) {
                    Ok(ids) => sel.ids.extend(ids),
                    Err(e) => return fail(&e),
                }
                if sel.ids.is_empty() {
                    eprintln!("smtp-relay: no queue ids on standard input");
                    return Exit::Ok.into();
                }
            }
            let deliverer = app::flush_deliverer(&config);
            match smtp_relay::admin::run_queue(&config, &cmd, &sel, dry_run, &deliverer) {
                Ok(code) => code.into(),
                Err(e) => fail(&e),
            }
        }
        Cli::Send { config, opts } => {
            init_logging(config.verbosity, true);
            match smtp_relay::admin::run_send(&config, &opts, &mut std::io::stdin().lock()) {
                Ok(id) => {
                    if config.verbosity > 0 {
                        eprintln!("queued as {id}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Cli::Passwd { file, user, owner } => passwd(&file, &user, owner),
        Cli::DkimKeygen(k) => match smtp_relay::dkim::keygen::run(&k) {
            Ok(record) => {
                eprintln!("smtp-relay: private key written to {}", k.out.display());
                println!("{record}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Cli::Route { config, address } => {
            init_logging(config.verbosity, true);
            match app::route(&config, &address) {
                Ok(code) => code.into(),
                Err(e) => fail(&e),
            }
        }
        Cli::Serve(config) => {
            let file = config.log_file.as_deref();
            if let Err(e) = init_logging_to(config.verbosity, false, config.log_format, file) {
                eprintln!("smtp-relay: --log-file: {e}");
                return Exit::IoErr.into();
            }
            match app::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    fail(&e)
                }
            }
        }
    }
}

/// `smtp-relay passwd USER`: the first line of stdin is the password.
/// Exit 0 set, 64 no password given, 74 the file cannot be written.
fn passwd(file: &std::path::Path, user: &str, owner: Option<smtp_relay::sys::User>) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("smtp-relay: cannot read the password on stdin: {e}");
        return Exit::IoErr.into();
    }
    let pass = line.strip_suffix('\n').unwrap_or(&line);
    let pass = pass.strip_suffix('\r').unwrap_or(pass);
    if pass.is_empty() {
        eprintln!("smtp-relay: no password on stdin (one line)");
        return Exit::Usage.into();
    }
    match smtp_relay::auth::set_password(file, user, pass, owner) {
        Ok(replaced) => {
            let what = if replaced { "replaced" } else { "added" };
            eprintln!("smtp-relay: {user} {what} in {}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtp-relay: {}: {e}", file.display());
            Exit::IoErr.into()
        }
    }
}
