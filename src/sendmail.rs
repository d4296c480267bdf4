//! The sendmail command line: what the binary does when called as
//! `sendmail`, `mailq` or `newaliases` (a link to it), or as
//! `smtp-relay sendmail ARGS`. Each invocation is translated into the
//! `smtp-relay` command that does the work (`send`, `queue list`,
//! `queue flush`), so the configuration file (`/etc/smtp-relay.conf`, or
//! `$SMTP_RELAY_CONFIG`) and every check are the same as theirs.
//!
//! Understood, as sendmail(8) and Postfix's sendmail(1) define them:
//! `-t`, `-i`, `-oi`, `-f ADDR`, `-r ADDR`, `-F NAME`, `-bm` (the
//! default), `-bp` (as `mailq`), `-bi` (as `newaliases`), `-q` (flush),
//! `-B 7BIT|8BITMIME`, `-N NOTIFY` (checked; the server's DSN defaults
//! apply), `-v`, `-C FILE` (the configuration file), and any other `-oX`
//! (ignored, as sendmail ignores options it does not know, with `-oem`,
//! `-oee`, `-odi`, `-odb` among them). A value may be glued to its letter
//! (`-FCronDaemon`, `-B8BITMIME`) or be the next argument. Anything else
//! is a usage error (exit 64).

use crate::cli::UsageError;

/// What a sendmail invocation becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Arguments for `smtp-relay` itself.
    Args(Vec<String>),
    /// `newaliases`: there is no alias database; says so, exit 0.
    Newaliases,
}

/// The whole command line (`argv[0]` first) as `smtp-relay` arguments:
/// translated when called by a sendmail name or as `smtp-relay sendmail
/// ARGS`, else as it is. `None`: nothing left to do (`newaliases`).
pub fn command_line(mut argv: Vec<String>) -> Result<Option<Vec<String>>, UsageError> {
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
        None => return Ok(Some(argv)),
    };
    match translate(name, &argv)? {
        Invocation::Args(a) => Ok(Some(a)),
        Invocation::Newaliases => {
            eprintln!("newaliases: smtp-relay has no aliases database: nothing to do");
            Ok(None)
        }
    }
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
            return Err(usage(
                "-bs: not supported yet; speak SMTP to the server's listener",
            ))
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
