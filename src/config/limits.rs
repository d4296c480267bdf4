//! Limits and formats of the session side, as written in the
//! configuration: plain data that `check.rs`, `auth_limit.rs` and
//! `logging.rs` act on.

use std::time::Duration;

/// Address verification settings (`--verify-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySettings {
    /// How long a probe may take in all, connection included.
    pub timeout: Duration,
    /// How long a 2xx answer is trusted.
    pub positive_ttl: Duration,
    /// How long a 5xx answer is trusted.
    pub negative_ttl: Duration,
    /// Most cached answers.
    pub cache_size: usize,
    /// Most probes running at once, across sessions (a probe thread can
    /// outlive the session's wait by a few timeouts); beyond, `450`.
    pub max_probes: usize,
}

impl Default for VerifySettings {
    fn default() -> VerifySettings {
        VerifySettings {
            timeout: Duration::from_secs(10),
            positive_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(600),
            cache_size: 10_000,
            max_probes: 64,
        }
    }
}

/// The limits, from `--auth-max-failures`, `--auth-max-user-failures`
/// and `--auth-failure-window`; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimits {
    /// Failed AUTHs from one client address (an IPv6 /64) per window.
    pub per_address: usize,
    /// Failed AUTHs for one user name, from anywhere, per window.
    pub per_user: usize,
    pub window: Duration,
}

impl Default for AuthLimits {
    /// 10 per address and 30 per user in 5 minutes: a user who mistypes a
    /// few times is never stopped; a guesser gets 2 guesses a minute.
    fn default() -> AuthLimits {
        AuthLimits {
            per_address: 10,
            per_user: 30,
            window: Duration::from_secs(300),
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}
