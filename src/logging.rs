//! Logging (README "Logs"): env_logger's filtering (`-v`, `RUST_LOG`),
//! one event per line, as text or JSON (`--log-format`), to stderr or
//! appended to `--log-file`, which SIGUSR1 reopens (for logrotate).
//!
//! JSON lines have stable fields: `ts` (RFC 3339, UTC, milliseconds),
//! `level`, `target`, `msg` (the text line's message), and, parsed out
//! of the message: `id` (a leading queue id), `client` (a leading client
//! address), `event` (the first bare word after them, e.g. `queued`,
//! `refused`; for a delivery line the value of `status`), and every
//! `key=value` pair of the message as a string field (`"…"` values
//! unquoted). A key never overrides the fields above.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use crate::config::limits::LogFormat;

/// The log file, when `--log-file` is set: its path and the open file.
static FILE: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reopens `--log-file` (SIGUSR1): after logrotate renamed it, new lines
/// go to a new file at the same path. Without a log file, nothing to do.
pub fn reopen() {
    let mut f = FILE.lock().unwrap_or_else(|p| p.into_inner());
    let Some((path, file)) = f.as_mut() else {
        drop(f);
        log::info!("SIGUSR1 received: logging to stderr, nothing to reopen");
        return;
    };
    match open(path) {
        Ok(new) => *file = new,
        Err(e) => {
            // keep writing to the old file rather than lose lines
            let _ = writeln!(file, "cannot reopen {}: {e}", path.display());
        }
    }
    drop(f);
    log::info!("SIGUSR1 received: log file reopened");
}

/// env_logger's pipe into the current log file.
struct FileTarget;

impl Write for FileTarget {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut f = FILE.lock().unwrap_or_else(|p| p.into_inner());
        match f.as_mut() {
            Some((_, file)) => file.write_all(buf).map(|()| buf.len()),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sets up the global logger. `default` is the level without `-v` or
/// `RUST_LOG`; `verbosity` (`-v` count) wins over `RUST_LOG` for this
/// crate. Fails only when `file` cannot be opened.
pub fn init(
    default: &str,
    verbosity: usize,
    format: LogFormat,
    file: Option<&Path>,
) -> io::Result<()> {
    let env = env_logger::Env::default().default_filter_or(default);
    let mut b = env_logger::Builder::from_env(env);
    if verbosity > 0 {
        b.filter_module(
            "smtp_relay",
            if verbosity == 1 {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Trace
            },
        );
    }
    if let Some(path) = file {
        let f = open(path)?;
        *FILE.lock().unwrap_or_else(|p| p.into_inner()) = Some((path.to_path_buf(), f));
        b.target(env_logger::Target::Pipe(Box::new(FileTarget)));
    }
    match format {
        LogFormat::Text => {
            b.format_timestamp_millis();
        }
        LogFormat::Json => {
            b.format(|buf, record| {
                let ts = buf.timestamp_millis().to_string();
                writeln!(
                    buf,
                    "{}",
                    json_line(
                        &ts,
                        record.level().as_str(),
                        record.target(),
                        &record.args().to_string()
                    )
                )
            });
        }
    }
    // a second init (tests) keeps the first logger
    let _ = b.try_init();
    Ok(())
}

/// One JSON object for one event (fields: module docs).
pub fn json_line(ts: &str, level: &str, target: &str, msg: &str) -> String {
    let mut fields: Vec<(String, String)> = vec![
        ("ts".into(), ts.into()),
        ("level".into(), level.into()),
        ("target".into(), target.into()),
        ("msg".into(), msg.into()),
    ];
    let mut event: Option<String> = None;
    let mut status: Option<String> = None;
    for (i, tok) in tokens(msg).into_iter().enumerate() {
        match tok {
            Token::Word(w) if i == 0 && crate::spool::QueueId::parse(&w).is_some() => {
                fields.push(("id".into(), w))
            }
            Token::Word(w) if i == 0 && w.parse::<std::net::SocketAddr>().is_ok() => {
                fields.push(("client".into(), w))
            }
            Token::Word(w) if event.is_none() && w.chars().all(|c| c.is_ascii_lowercase()) => {
                event = Some(w)
            }
            Token::Pair(k, v) => {
                if k == "status" {
                    status = Some(v.clone());
                }
                if !fields.iter().any(|(f, _)| *f == k) {
                    fields.push((k, v));
                }
            }
            Token::Word(_) => {}
        }
    }
    if let Some(e) = status.or(event) {
        if !fields.iter().any(|(f, _)| f == "event") {
            fields.push(("event".into(), e));
        }
    }
    let mut out = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&crate::admin::json_str(k));
        out.push(':');
        out.push_str(&crate::admin::json_str(v));
    }
    out.push('}');
    out
}

enum Token {
    Word(String),
    Pair(String, String),
}

/// Splits a message into bare words and `key=value` pairs (a value may
/// be `"quoted"`, with `\"` inside). Words in parentheses are skipped.
fn tokens(msg: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut rest = msg.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        let is_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if rest[key_end..].starts_with('=') && is_key {
            let after = &rest[key_end + 1..];
            let (value, used) = if let Some(q) = after.strip_prefix('"') {
                let mut v = String::new();
                let mut end = q.len();
                let mut chars = q.char_indices();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                v.push(n);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => v.push(c),
                    }
                }
                (v, 1 + end.min(q.len()))
            } else {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (after[..end].to_string(), end)
            };
            out.push(Token::Pair(key.to_string(), value));
            rest = after[used..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let word = &rest[..end];
            if !word.starts_with('(') {
                out.push(Token::Word(word.trim_end_matches(':').to_string()));
            }
            rest = rest[end..].trim_start();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_fields_are_parsed_out() {
        let l = json_line(
            "T",
            "INFO",
            "smtp_relay::x",
            "0123456789ABCDEF queued from=<a@b> size=12 nrcpt=1 client=[127.0.0.1] tls=none",
        );
        assert!(l.starts_with(r#"{"ts":"T","level":"INFO","target":"smtp_relay::x","msg":"#));
        assert!(l.contains(r#""id":"0123456789ABCDEF""#), "{l}");
        assert!(l.contains(r#""size":"12""#), "{l}");
        assert!(l.contains(r#""event":"queued""#), "{l}");
        let l = json_line(
            "T",
            "INFO",
            "t",
            r#"127.0.0.1:5 refused reason=relay_denied reply="550 5.7.1 Relaying \"denied\"""#,
        );
        assert!(l.contains(r#""client":"127.0.0.1:5""#), "{l}");
        assert!(
            l.contains(r#""reply":"550 5.7.1 Relaying \"denied\"""#),
            "{l}"
        );
        assert!(l.contains(r#""event":"refused""#), "{l}");
    }
}
