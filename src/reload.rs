//! SIGHUP: read the configuration again, with everything it names, and
//! make it current for new sessions and new delivery attempts (README
//! "Reload").
//!
//! All or nothing: the command line `serve` started with is parsed again
//! (so the config file is re-read and the command line still wins over
//! it), then every file is loaded through the same `app::load` the start
//! and `--check-config` use, then the parts are built (`app::assemble`).
//! Only when all of that succeeded are the two holders swapped (sessions
//! first, then deliveries); an error at any step leaves the running
//! generation as it was and is logged at ERROR with the file and line the
//! parser named. Sessions and attempts in flight keep the generation they
//! started with (`swap.rs`); nothing in the spool is touched, so nothing
//! queued or in flight can be lost by a reload.
//!
//! What a process can only do at start (bind, drop privileges, size its
//! thread pools, open the spool, the metrics endpoint, the log) keeps its
//! running value; a reload that changes one says so in a WARN line.

use std::sync::Arc;

use crate::app::{self, Generation, Shared};
use crate::config::Config;
use crate::delivery::Deliverer;
use crate::session::Context;
use crate::swap::Swap;

/// What a SIGHUP needs: serve's command line and the running holders.
pub struct Reloader {
    args: Vec<String>,
    shared: Shared,
    sessions: Arc<Swap<Context>>,
    deliveries: Arc<Swap<Deliverer>>,
}

impl Reloader {
    pub fn new(
        args: Vec<String>,
        shared: Shared,
        sessions: Arc<Swap<Context>>,
        deliveries: Arc<Swap<Deliverer>>,
    ) -> Reloader {
        Reloader {
            args,
            shared,
            sessions,
            deliveries,
        }
    }

    /// One reload, between `RELOADING=1` and `READY=1` (sd_notify): the
    /// server is ready again afterwards whatever the outcome.
    pub fn reload(&self) {
        crate::notify::reloading();
        log::info!("SIGHUP received: reloading the configuration");
        let old = self.sessions.load();
        match self.build(&old) {
            Ok((generation, summary)) => {
                self.sessions.store_arc(generation.session);
                self.deliveries.store_arc(generation.deliverer);
                log::info!("{summary}");
                crate::metrics::config_loaded(Some(true), crate::time::now_unix());
            }
            Err(e) => {
                log::error!("reload refused, the running configuration stays: {e}");
                crate::metrics::config_loaded(Some(false), crate::time::now_unix());
            }
        }
        crate::notify::notify("READY=1");
    }

    /// The new generation and the INFO line saying what changed.
    fn build(&self, old: &Context) -> Result<(Generation, String), String> {
        let mut config = match crate::cli::parse(&self.args) {
            Ok(crate::cli::Cli::Serve(c)) => c,
            Ok(_) => return Err("serve's command line no longer parses as serve".into()),
            Err(e) => return Err(e.0),
        };
        same_source(&old.config, &config)?;
        let kept = keep_restart_only(&mut config, &old.config);
        if !kept.is_empty() {
            log::warn!(
                "reload: {} changed: needs a restart; the running value stays until then",
                kept.join(", ")
            );
        }
        let changed = changed_settings(&old.config, &config);
        let file = source(&config);
        let loaded = app::load(config).map_err(|e| e.to_string())?;
        let generation =
            app::assemble(loaded, &self.shared, Some(old)).map_err(|e| e.to_string())?;
        let what = if changed.is_empty() {
            "settings as before; every file it names read again".to_string()
        } else {
            format!(
                "changed: {}; every file it names read again",
                changed.join(", ")
            )
        };
        Ok((
            generation,
            format!("configuration reloaded from {file}: {what}"),
        ))
    }
}

/// Where the settings come from, for log lines.
fn source(config: &Config) -> String {
    match &config.config_file {
        Some(p) => p.display().to_string(),
        None => "the command line (no config file)".into(),
    }
}

/// The default file (`/etc/smtp-relay.conf`) may be absent, and then
/// the built-in defaults apply: at start a choice, at a reload an
/// accident (a file moved away would silently reset every setting).
fn same_source(old: &Config, new: &Config) -> Result<(), String> {
    match (&old.config_file, &new.config_file) {
        (Some(was), None) => Err(format!(
            "{}: no longer there (the server was started with it; the built-in defaults are not taken on a reload)",
            was.display()
        )),
        _ => Ok(()),
    }
}

/// Settings only a start can apply: their running values are put back
/// into `new`; the names of those that differed are returned.
fn keep_restart_only(new: &mut Config, old: &Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident => $name:literal),* $(,)?) => {$(
            if new.$field != old.$field {
                kept.push($name);
                new.$field = old.$field.clone();
            }
        )*};
    }
    keep!(
        listen => "listen",
        listeners => "listen-tls/submission/submission-tls",
        spool => "spool",
        user => "user",
        workers => "workers",
        backlog => "backlog",
        worker_stack => "worker-stack",
        delivery_workers => "delivery-workers",
        sync => "sync",
        metrics => "metrics",
        log_format => "log-format",
        log_file => "log-file",
        verbosity => "-v",
    );
    // which listeners check their mail is part of the listeners: their
    // mode is fixed when they are bound (the checks' settings reload)
    if new.auth_results.on != old.auth_results.on {
        kept.push("auth-results");
        new.auth_results.on = old.auth_results.on.clone();
    }
    kept
}

/// The names of the top-level settings whose values differ, read from
/// `Config`'s `{:#?}` form (one `name: value` block per field at the
/// first indentation), so a new field needs nothing here.
fn changed_settings(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (fields(old), fields(new));
    a.iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.0.clone())
        .collect()
}

/// `(name, value text)` of each top-level field of `config`.
fn fields(config: &Config) -> Vec<(String, String)> {
    let text = format!("{config:#?}");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines().skip(1) {
        let top = line
            .strip_prefix("    ")
            .filter(|rest| !rest.starts_with(' '));
        match (top.and_then(|l| l.split_once(':')), out.last_mut()) {
            (Some((name, value)), _) => out.push((name.to_string(), value.to_string())),
            (None, Some(last)) => last.1.push_str(line),
            (None, None) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_settings_are_named() {
        let old = Config::new();
        let mut new = old.clone();
        assert!(changed_settings(&old, &new).is_empty());
        new.max_size = 1;
        new.relay_nets
            .push(crate::config::Cidr::parse("10.0.0.0/8").unwrap());
        assert_eq!(changed_settings(&old, &new), ["relay_nets", "max_size"]);
    }

    #[test]
    fn a_vanished_config_file_is_not_the_defaults() {
        let mut old = Config::new();
        old.config_file = Some("/etc/smtp-relay.conf".into());
        let new = Config::new();
        let e = same_source(&old, &new).unwrap_err();
        assert!(
            e.starts_with("/etc/smtp-relay.conf: no longer there"),
            "{e}"
        );
        assert!(same_source(&old, &old).is_ok());
        assert!(same_source(&new, &new).is_ok());
    }

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let old = Config::new();
        let mut new = old.clone();
        new.workers = 3;
        new.spool = "elsewhere".into();
        new.max_size = 1;
        assert_eq!(keep_restart_only(&mut new, &old), ["spool", "workers"]);
        assert_eq!(new.workers, old.workers);
        assert_eq!(new.spool, old.spool);
        assert_eq!(new.max_size, 1, "a reloadable setting is not touched");
    }
}
