//! `--auth-results` and its settings (README "Authentication
//! results"): plain data, read by `authres` (the checks) and `app.rs`.

use std::time::Duration;

use super::{Endpoint, ListenMode};

/// What to do with a message whose DMARC check failed, at most
/// (`--auth-results-dmarc`). The domain's own policy (RFC 7489 §6.3 `p=`)
/// is followed up to this: `reject` refuses `p=reject` failures and holds
/// `p=quarantine` ones, `quarantine` holds both, `none` only writes the
/// header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcAction {
    None,
    Quarantine,
    Reject,
}

impl DmarcAction {
    pub fn parse(s: &str) -> Option<DmarcAction> {
        match s {
            "none" => Some(DmarcAction::None),
            "quarantine" => Some(DmarcAction::Quarantine),
            "reject" => Some(DmarcAction::Reject),
            _ => None,
        }
    }
}

/// The listeners whose messages are checked (`--auth-results`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Listeners {
    #[default]
    None,
    /// `all`: every listener but the submission ones (their clients are
    /// our authenticated users, not other domains' servers).
    AllButSubmission,
    /// These, as written to `--listen`, `--listen-tls`, ...
    These(Vec<Endpoint>),
}

impl Listeners {
    /// Whether the listener at `endpoint`, of `mode`, checks its mail.
    pub fn applies(&self, endpoint: &Endpoint, mode: ListenMode) -> bool {
        match self {
            Listeners::None => false,
            Listeners::AllButSubmission => !mode.submission,
            Listeners::These(list) => list.contains(endpoint),
        }
    }
}

/// The settings of the checks, as the operator wrote them (plain data;
/// `app.rs` builds the `Verifier` from them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResConfig {
    /// `--auth-results`: where the checks run (marked in each listener's
    /// `ListenMode` by `Config::all_listeners`).
    pub on: Listeners,
    /// `--auth-results-dmarc`.
    pub dmarc_action: DmarcAction,
    /// `--auth-results-spf-reject`: SPF `fail` for MAIL FROM refuses the
    /// MAIL command (RFC 7208 §8.4).
    pub spf_reject: bool,
    /// `--auth-results-defer-temperror`: a DNS failure during a check
    /// defers the message (451) instead of writing `temperror`.
    pub defer_temperror: bool,
    /// `--auth-results-timeout`: the most the checks of one MAIL, and of
    /// one message, may take; what is not done by then is `temperror`.
    pub timeout: Duration,
}

impl Default for AuthResConfig {
    fn default() -> AuthResConfig {
        AuthResConfig {
            on: Listeners::None,
            dmarc_action: DmarcAction::None,
            spf_reject: false,
            defer_temperror: false,
            timeout: Duration::from_secs(20),
        }
    }
}
