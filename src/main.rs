//! The `smtp-relay` binary: parse the command line, set up logging, run one
//! command, and turn its outcome into a sysexits(3) exit code.

use std::process::ExitCode;

use smtp_relay::cli::{self, Cli};

fn init_logging(verbosity: usize) {
    let default = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let env = env_logger::Env::default().default_filter_or(default);
    let mut b = env_logger::Builder::from_env(env);
    if verbosity > 0 {
        // -v wins over RUST_LOG for our own crate
        b.filter_module(
            "smtp_relay",
            if verbosity == 1 {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Trace
            },
        );
    }
    b.format_timestamp_millis().init();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smtp-relay: {e}");
            return ExitCode::from(64);
        }
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
        Cli::Serve(config) => {
            init_logging(config.verbosity);
            match smtp_relay::server::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    eprintln!("smtp-relay: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
    }
}
