//! The sendmail command line: what the binary does when called as
//! `sendmail`, `mailq` or `newaliases` (a link to it), or as
//! `smtp-relay sendmail ARGS`. Each invocation is translated into the
//! `smtp-relay` command that does the work (`send`, `queue list`,
//! `queue flush`), so the configuration file (`/etc/smtp-relay.conf`, or
//! `$SMTP_RELAY_CONFIG`) and every check are the same as theirs.
//!
//! Understood, as sendmail(8) and Postfix's sendmail(1) define them:
//! `-t`, `-i`, `-oi`, `-f ADDR`, `-r ADDR`, `-F NAME`, `-bm` (the
//! default), `-bs` (SMTP on stdio: [`smtp_on_stdio`]), `-bp` (as `mailq`), `-bi` (as `newaliases`), `-q` (flush),
//! `-B 7BIT|8BITMIME`, `-N NOTIFY` (checked; the server's DSN defaults
//! apply), `-v`, `-C FILE` (the configuration file), and any other `-oX`
//! (ignored, as sendmail ignores options it does not know, with `-oem`,
//! `-oee`, `-odi`, `-odb` among them). A value may be glued to its letter
//! (`-FCronDaemon`, `-B8BITMIME`) or be the next argument. Anything else
//! is a usage error (exit 64).

use crate::cli::UsageError;
use crate::exit::Exit;

/// What a sendmail invocation becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Arguments for `smtp-relay` itself.
    Args(Vec<String>),
    /// `newaliases`: there is no alias database; says so, exit 0.
    Newaliases,
    /// `-bs`: SMTP on stdin/stdout, with `serve`'s arguments for the
    /// configuration (see [`smtp_on_stdio`]).
    Smtp(Vec<String>),
}

/// The whole command line (`argv[0]` first) as `smtp-relay` arguments:
/// translated when called by a sendmail name or as `smtp-relay sendmail
/// ARGS`, else as it is. `Err(code)`: done, exit with `code`
/// (`newaliases`, `-bs`).
pub fn command_line(mut argv: Vec<String>) -> Result<Result<Vec<String>, Exit>, UsageError> {
    let argv0 = if argv.is_empty() {
        String::new()
    } else {
        argv.remove(0)
    };
    let name = match personality(&argv0) {
        Some(n) => n,
        None if argv.first().is_some_and(|a| a == "sendmail") => {
            argv.remove(0);
            "sendmail"
        }
        None => return Ok(Ok(argv)),
    };
    match translate(name, &argv)? {
        Invocation::Args(a) => Ok(Ok(a)),
        Invocation::Newaliases => {
            eprintln!("newaliases: smtp-relay has no aliases database: nothing to do");
            Ok(Err(Exit::Ok))
        }
        Invocation::Smtp(serve_args) => Ok(Err(smtp_on_stdio(&serve_args))),
    }
}

/// `sendmail -bs`: an SMTP session on stdin/stdout. It is carried to the
/// running server's first plain listener (the configuration file's
/// `listen`), so the session is the server's own, with every check it
/// makes; the client it sees is the loopback address, not the local user
/// (Postfix runs its smtpd on the pipe instead). Line ends from stdin are
/// made CRLF (RFC 5321 §2.3.8), as programs talking to sendmail write LF.
/// Exit 0 when the server closed the session, 69 when no server answers,
/// 78 for a configuration that does not parse.
pub fn smtp_on_stdio(serve_args: &[String]) -> Exit {
    use std::io::{BufRead, Read, Write};
    let config = match crate::cli::parse(serve_args) {
        Ok(crate::cli::Cli::Serve(c)) => c,
        Ok(_) => return Exit::Usage,
        Err(e) => {
            eprintln!("sendmail -bs: {e}");
            return Exit::Config;
        }
    };
    let addr = match crate::app::listeners(&config) {
        Ok(l) => l
            .iter()
            .find(|(_, m)| !m.implicit_tls && !m.submission)
            .or_else(|| l.iter().find(|(_, m)| !m.implicit_tls))
            .map(|(a, _)| *a),
        Err(e) => {
            eprintln!("sendmail -bs: {e}");
            return Exit::Config;
        }
    };
    let Some(addr) = addr else {
        eprintln!("sendmail -bs: no plain listener in the configuration");
        return Exit::Config;
    };
    let sock = match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sendmail -bs: no server at {addr}: {e}");
            return Exit::Unavailable;
        }
    };
    let Ok(mut up) = sock.try_clone() else {
        return Exit::OsErr;
    };
    let pump = std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match input.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.ends_with(b"\n") && !line.ends_with(b"\r\n") {
                line.pop();
                line.extend_from_slice(b"\r\n");
            }
            if up.write_all(&line).is_err() {
                break;
            }
        }
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = sock;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    // the server closed the session: stdin's reader may still wait on a
    // terminal; it ends with the process
    drop(pump);
    Exit::Ok
}

/// Whether this process runs the sendmail command line (called as
/// `sendmail`, or as `smtp-relay sendmail ARGS`), for the `queued`
/// line's `via=`.
pub fn called_as_sendmail() -> bool {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    personality(&argv0) == Some("sendmail") || args.next().is_some_and(|a| a == "sendmail")
}

/// The sendmail name `argv0` was called by, if it is one.
pub fn personality(argv0: &str) -> Option<&'static str> {
    let base = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(argv0);
    ["sendmail", "mailq", "newaliases"]
        .into_iter()
        .find(|p| *p == base)
}

fn usage(m: impl Into<String>) -> UsageError {
    UsageError(format!("sendmail: {}", m.into()))
}

/// Translates the arguments of `name` (`sendmail`, `mailq`, `newaliases`).
pub fn translate(name: &str, args: &[String]) -> Result<Invocation, UsageError> {
    let mut mode = match name {
        "mailq" => 'p',
        "newaliases" => 'i',
        _ => 'm',
    };
    let mut send: Vec<String> = Vec::new();
    let mut config: Option<String> = None;
    let mut verbose = 0;
    let mut rcpts: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            rcpts.extend(it.by_ref().cloned());
            break;
        }
        let Some(flag) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            rcpts.push(arg.clone());
            continue;
        };
        let letter = flag.chars().next().unwrap_or('-');
        let glued = &flag[letter.len_utf8()..];
        // the value of an option that takes one: glued, or the next word
        let mut value = |what: &str| -> Result<String, UsageError> {
            if !glued.is_empty() {
                return Ok(glued.to_string());
            }
            it.next()
                .cloned()
                .ok_or_else(|| usage(format!("-{letter} needs {what}")))
        };
        match letter {
            't' | 'i' if glued.is_empty() => send.push(format!("-{letter}")),
            'v' if glued.is_empty() => verbose += 1,
            'f' | 'r' => {
                let v = value("an address")?;
                send.push("-f".into());
                send.push(v);
            }
            'F' => {
                let v = value("a full name")?;
                send.push("-F".into());
                send.push(v);
            }
            'C' => config = Some(value("a configuration file")?),
            'B' => {
                let v = value("7BIT or 8BITMIME")?;
                // RFC 6152: the body type; ours is found from the octets
                if !v.eq_ignore_ascii_case("7bit") && !v.eq_ignore_ascii_case("8bitmime") {
                    return Err(usage(format!("-B {v}: 7BIT or 8BITMIME")));
                }
            }
            'N' => {
                let v = value("a DSN notify list")?;
                // RFC 3461 §4.1: NEVER, or a list of SUCCESS, FAILURE, DELAY
                let ok = v.eq_ignore_ascii_case("never")
                    || v.split(',').all(|w| {
                        ["success", "failure", "delay"]
                            .iter()
                            .any(|k| w.trim().eq_ignore_ascii_case(k))
                    });
                if !ok {
                    return Err(usage(format!("-N {v}: never, or success,failure,delay")));
                }
            }
            'o' => {
                let v = value("an option")?;
                // -oi is -i; every other -o option (-oem, -oee, -odi,
                // -odb, -oQ…) is ignored, as sendmail ignores those it
                // does not implement
                if v == "i" {
                    send.push("-i".into());
                }
            }
            'b' => match glued {
                "m" => mode = 'm',
                "p" => mode = 'p',
                "i" => mode = 'i',
                "s" => mode = 's',
                other => return Err(usage(format!("-b{other}: not supported"))),
            },
            'q' => {
                // -q, -q30m (sendmail's queue interval): one flush now
                if !glued.is_empty() && !glued.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(usage(format!("-q{glued}: not supported")));
                }
                mode = 'q';
            }
            _ => return Err(usage(format!("-{flag}: not supported"))),
        }
    }
    let mut out: Vec<String> = Vec::new();
    let common = |out: &mut Vec<String>| {
        if let Some(c) = &config {
            out.push("--config".into());
            out.push(c.clone());
        }
        out.extend(std::iter::repeat_n("-v".to_string(), verbose));
    };
    match mode {
        'i' => return Ok(Invocation::Newaliases),
        'p' | 'q' => {
            out.push("queue".into());
            out.push(if mode == 'p' { "list" } else { "flush" }.into());
            common(&mut out);
        }
        's' => {
            out.push("serve".into());
            common(&mut out);
            out.retain(|a| a != "-v");
            if !rcpts.is_empty() {
                return Err(usage(format!("unexpected argument {:?}", rcpts[0])));
            }
            return Ok(Invocation::Smtp(out));
        }
        _ => {
            out.push("send".into());
            common(&mut out);
            out.extend(send);
            out.push("--".into());
            out.extend(rcpts);
            return Ok(Invocation::Args(out));
        }
    }
    if !rcpts.is_empty() {
        return Err(usage(format!("unexpected argument {:?}", rcpts[0])));
    }
    Ok(Invocation::Args(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, args: &[&str]) -> Result<Invocation, UsageError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        translate(name, &args)
    }

    fn args(v: &[&str]) -> Invocation {
        Invocation::Args(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn names() {
        assert_eq!(personality("/usr/sbin/sendmail"), Some("sendmail"));
        assert_eq!(personality("mailq"), Some("mailq"));
        assert_eq!(personality("/usr/bin/newaliases"), Some("newaliases"));
        assert_eq!(personality("/usr/bin/smtp-relay"), None);
    }

    #[test]
    fn debian_cron_line() {
        assert_eq!(
            t(
                "sendmail",
                &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]
            )
            .unwrap(),
            args(&["send", "-F", "CronDaemon", "-i", "--", "root"])
        );
    }

    #[test]
    fn mailers() {
        // bsd-mailx: sendmail -i -- rcpt; s-nail: -oi -f and -t
        assert_eq!(
            t("sendmail", &["-i", "--", "a@b.example"]).unwrap(),
            args(&["send", "-i", "--", "a@b.example"])
        );
        assert_eq!(
            t(
                "sendmail",
                &["-oi", "-oem", "-odi", "-t", "-f", "x@y.example", "-v"]
            )
            .unwrap(),
            args(&["send", "-v", "-i", "-t", "-f", "x@y.example", "--"])
        );
        assert_eq!(
            t(
                "sendmail",
                &[
                    "-rx@y.example",
                    "-N",
                    "success,delay",
                    "-B",
                    "7BIT",
                    "-bm",
                    "u"
                ]
            )
            .unwrap(),
            args(&["send", "-f", "x@y.example", "--", "u"])
        );
        assert_eq!(t("mailq", &[]).unwrap(), args(&["queue", "list"]));
        assert_eq!(t("sendmail", &["-bp"]).unwrap(), args(&["queue", "list"]));
        assert_eq!(t("sendmail", &["-q"]).unwrap(), args(&["queue", "flush"]));
        assert_eq!(t("newaliases", &[]).unwrap(), Invocation::Newaliases);
        assert_eq!(
            t("sendmail", &["-C", "/x.conf", "-t"]).unwrap(),
            args(&["send", "--config", "/x.conf", "-t", "--"])
        );
    }

    #[test]
    fn refusals() {
        for bad in [
            &["-X", "log"][..],
            &["-bd"],
            &["-bs", "rcpt"],
            &["-B", "binarymime"],
            &["-N", "sometimes"],
            &["-f"],
            &["-tx"],
            &["-bp", "extra"],
        ] {
            assert!(t("sendmail", bad).is_err(), "{bad:?}");
        }
    }
}
