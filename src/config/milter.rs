//! `--milter` settings (issue 14): where a milter listens, its timeouts,
//! its default action and the listeners it serves. Plain data; the
//! per-session conversation lives in `milter/`, which re-exports these.

use std::time::Duration;

use super::edge::Target;
use super::ListenMode;

/// What a session does when a milter is down, slow or speaks garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultAction {
    /// `451 4.7.1` to the session's MAIL, RCPT, DATA and end of data
    /// (Postfix's `milter_default_action = tempfail`).
    #[default]
    Tempfail,
    /// Go on without the milter.
    Accept,
}

/// One `--milter`: where it listens, its timeouts, its default action,
/// and the listeners it serves. Plain data: sockets are made per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterConfig {
    pub target: Target,
    pub default_action: DefaultAction,
    /// Bounds the connect and the option negotiation.
    pub connect_timeout: Duration,
    /// Bounds each event but the end of message: the packets out and
    /// the reply in.
    pub command_timeout: Duration,
    /// Bounds the end of message, from `SMFIC_BODYEOB` to the final
    /// reply, `SMFIR_PROGRESS` included: a milter cannot stretch it.
    pub eom_timeout: Duration,
    /// The listener kinds it serves (`smtp`, `smtps`, `submission`,
    /// `submissions`, and `local` for mail injected on this host); empty:
    /// every SMTP kind, not `local`.
    pub listeners: Vec<String>,
}

const LISTENER_KINDS: [&str; 5] = ["smtp", "smtps", "submission", "submissions", "local"];

/// The kind of mail injected on this host (`send`, `sendmail`, the
/// maildrop pick-up): Postfix's `non_smtpd_milters`, named, never implied.
pub const LOCAL: &str = "local";

impl MilterConfig {
    /// Postfix's defaults: 30s to connect, 30s per command, 300s for
    /// the end of the message.
    pub fn new(target: Target) -> MilterConfig {
        MilterConfig {
            target,
            default_action: DefaultAction::Tempfail,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(30),
            eom_timeout: Duration::from_secs(300),
            listeners: Vec::new(),
        }
    }

    /// `inet:HOST:PORT` or `unix:PATH`, then `,KEY=VALUE` settings:
    /// `default=tempfail|accept`, `connect-timeout=`, `command-timeout=`,
    /// `eom-timeout=` (durations), `listeners=smtp+submission`.
    pub fn parse(
        s: &str,
        duration: impl Fn(&str) -> Result<Duration, String>,
    ) -> Result<MilterConfig, String> {
        let mut parts = s.split(',');
        let target = Target::parse(parts.next().unwrap_or_default())?;
        let mut m = MilterConfig::new(target);
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
            let dur = || {
                duration(value)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("{key}: {value:?} is not a duration above 0"))
            };
            match key {
                "default" => {
                    m.default_action = match value {
                        "tempfail" => DefaultAction::Tempfail,
                        "accept" => DefaultAction::Accept,
                        _ => return Err(format!("default: {value:?} is not tempfail or accept")),
                    }
                }
                "connect-timeout" => m.connect_timeout = dur()?,
                "command-timeout" => m.command_timeout = dur()?,
                "eom-timeout" => m.eom_timeout = dur()?,
                "listeners" => {
                    m.listeners = value.split('+').map(str::to_string).collect();
                    if let Some(bad) = m.listeners.iter().find(|l| !LISTENER_KINDS.contains(&l.as_str())) {
                        return Err(format!(
                            "listeners: {bad:?} is not smtp, smtps, submission, submissions or local"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown setting {key:?} (default, connect-timeout, command-timeout, eom-timeout, listeners)"
                    ))
                }
            }
        }
        Ok(m)
    }

    pub fn serves(&self, mode: ListenMode) -> bool {
        self.listeners.is_empty() || self.listeners.iter().any(|l| *l == mode.to_string())
    }

    /// Serves mail injected on this host: only when `listeners=` names
    /// `local` (as Postfix keeps `non_smtpd_milters` apart from
    /// `smtpd_milters`), so a filter set up for SMTP clients does not start
    /// judging cron's mail unasked.
    pub fn serves_local(&self) -> bool {
        self.listeners.iter().any(|l| l == LOCAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(s: &str) -> Result<Duration, String> {
        s.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .map(Duration::from_secs)
            .ok_or_else(|| "bad".to_string())
    }

    #[test]
    fn settings_parse() {
        let m = MilterConfig::parse("inet:127.0.0.1:8891", dur).unwrap();
        assert_eq!(
            m,
            MilterConfig::new(Target::parse("inet:127.0.0.1:8891").unwrap())
        );
        let m = MilterConfig::parse(
            "unix:/run/m.sock,default=accept,connect-timeout=2s,command-timeout=3s,eom-timeout=4s,listeners=smtp+submission",
            dur,
        )
        .unwrap();
        assert_eq!(m.default_action, DefaultAction::Accept);
        assert_eq!(
            (m.connect_timeout, m.command_timeout, m.eom_timeout),
            (
                Duration::from_secs(2),
                Duration::from_secs(3),
                Duration::from_secs(4)
            )
        );
        assert!(m.serves(ListenMode::PLAIN));
        assert!(!m.serves_local());
        let l = MilterConfig::parse("inet:h:1,listeners=smtp+local", dur).unwrap();
        assert!(l.serves_local() && l.serves(ListenMode::PLAIN));
        let none = MilterConfig::parse("inet:h:1", dur).unwrap();
        assert!(none.serves(ListenMode::PLAIN) && !none.serves_local());
        assert!(!m.serves(ListenMode {
            implicit_tls: true,
            ..ListenMode::PLAIN
        }));
        for bad in [
            "tcp:1:2",
            "inet:h:1,default=maybe",
            "inet:h:1,eom-timeout=0s",
            "inet:h:1,listeners=lmtp",
            "inet:h:1,colour=red",
            "inet:h:1,default",
        ] {
            assert!(MilterConfig::parse(bad, dur).is_err(), "{bad}");
        }
    }
}
