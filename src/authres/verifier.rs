//! `Verifier`: mail-auth's checks behind blocking calls, each bounded by
//! `--auth-results-timeout`, on a private runtime (the pattern of
//! `dns.rs`: async never leaves this file, callers are session threads).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DkimResult, DmarcOutput, DmarcResult, Error,
    MessageAuthenticator, SpfOutput, SpfResult,
};

use super::header::{self, Outcome};
use super::AuthResConfig;
use crate::dns::DnsError;

/// The SPF checks of one transaction, done at MAIL (RFC 7208 §2.3 HELO,
/// §2.4 MAIL FROM).
#[derive(Debug, Clone)]
pub struct SpfResults {
    pub ip: IpAddr,
    /// The HELO name when it is a domain, and its result.
    pub helo: Option<(String, SpfOutput)>,
    /// The MAIL FROM identity (for the null reverse-path
    /// `postmaster@HELO`, RFC 7208 §2.4), its domain, and its result;
    /// `None` when there is no domain to check.
    pub mail_from: Option<(String, String, SpfOutput)>,
}

impl SpfResults {
    /// The MAIL FROM identity's result (`None` when it was not checked).
    pub fn mail_from_result(&self) -> SpfResult {
        self.mail_from
            .as_ref()
            .map_or(SpfResult::None, |(_, _, o)| o.result())
    }

    /// The sender's domain when SPF says `fail` for it (RFC 7208 §8.4).
    pub fn mail_from_failed(&self) -> Option<&str> {
        match &self.mail_from {
            Some((_, domain, out)) if out.result() == SpfResult::Fail => Some(domain),
            _ => None,
        }
    }

    fn has_temperror(&self) -> bool {
        let helo = self.helo.as_ref().map(|(_, o)| o.result());
        helo == Some(SpfResult::TempError) || self.mail_from_result() == SpfResult::TempError
    }
}

/// The DMARC verdict that may refuse or hold a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcFailure {
    /// The RFC5322.From domain.
    pub domain: String,
    /// Its policy (`sp=` for a subdomain, RFC 7489 §6.3).
    pub reject: bool,
}

/// What the checks of one message came to.
#[derive(Debug, Clone)]
pub struct MessageResults {
    /// The `Authentication-Results:` field, CRLF-ended.
    pub header: String,
    /// DMARC failed for a domain whose policy is quarantine or reject.
    pub dmarc_failure: Option<DmarcFailure>,
    /// A check ended in a DNS failure or ran out of time.
    pub temperror: bool,
}

/// A body that does not match its signature's `bh=` is a failed
/// verification (RFC 6376 §6.1.3 "PERMFAIL (body hash did not verify)"),
/// which RFC 8601 §2.7.1 calls `fail`; mail-auth says `neutral`, as
/// OpenDKIM does.
fn body_hash_fails<'x>(
    msg: &'x AuthenticatedMessage<'x>,
    outputs: Vec<DkimOutput<'x>>,
) -> Vec<DkimOutput<'x>> {
    outputs
        .into_iter()
        .map(|o| {
            let failed_body = matches!(
                o.result(),
                DkimResult::Neutral(Error::Dkim(DkimError::FailedBodyHashMatch))
            );
            // the same signature, borrowed from the message for 'x
            let sig = o.signature().and_then(|s| {
                msg.dkim_headers
                    .iter()
                    .map(|h| &h.header)
                    .find(|h| std::ptr::eq(*h, s))
            });
            match sig {
                Some(sig) if failed_body => {
                    DkimOutput::fail(Error::Dkim(DkimError::FailedBodyHashMatch))
                        .with_signature(sig)
                }
                _ => o,
            }
        })
        .collect()
}

/// A DNS failure in DKIM or DMARC, or either out of time (`None`).
fn any_temperror(dkim: Option<&[DkimOutput]>, dmarc: Option<&DmarcOutput>) -> bool {
    let dkim = dkim.is_none_or(|d| {
        d.iter()
            .any(|o| matches!(o.result(), DkimResult::TempError(_)))
    });
    dkim || dmarc.is_none_or(|d| {
        [d.result(), d.dkim_result().clone(), d.spf_result().clone()]
            .iter()
            .any(|r| matches!(r, DmarcResult::TempError(_)))
    })
}

/// A DMARC failure whose domain asks for quarantine or reject: RFC 7489
/// §6.6.2, the policy applies when no identifier passed aligned (a
/// temperror is not a failure: mail-auth ranks it above `fail`).
fn dmarc_failure(d: &DmarcOutput) -> Option<DmarcFailure> {
    let reject = match d.policy() {
        Policy::Reject => true,
        Policy::Quarantine => false,
        Policy::None | Policy::Unspecified => return None,
    };
    matches!(d.result(), DmarcResult::Fail(_)).then(|| DmarcFailure {
        domain: d.domain().to_string(),
        reject,
    })
}

pub struct Verifier {
    // Declared before `rt`: dropped while the runtime still exists.
    auth: MessageAuthenticator,
    rt: tokio::runtime::Runtime,
    hostname: String,
    config: AuthResConfig,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// `server`: `--dns` (`None`: the system's resolv.conf). Each DNS
    /// query may take a quarter of the time budget (two tries).
    pub fn new(
        config: &AuthResConfig,
        hostname: &str,
        server: Option<SocketAddr>,
    ) -> Result<Verifier, DnsError> {
        let rt = crate::dns::small_runtime("authres")?;
        let per_query = (config.timeout / 2).min(Duration::from_secs(10));
        let (resolver, opts) = crate::dns::resolver_setup(server, per_query)?;
        let enter = rt.enter();
        let auth = MessageAuthenticator::new(resolver, opts)
            .map_err(|e| DnsError::Temporary(format!("cannot build the resolver: {e}")))?;
        drop(enter);
        Ok(Verifier {
            auth,
            rt,
            hostname: hostname.to_string(),
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &AuthResConfig {
        &self.config
    }

    /// SPF for the client `ip`: the HELO identity when it is a domain,
    /// and the MAIL FROM identity (`sender`: `None` for `<>`). Within the
    /// time budget; what is not done by then is `temperror`.
    pub fn spf(&self, ip: IpAddr, helo: Option<&str>, sender: Option<&str>) -> SpfResults {
        // RFC 7208 §2.4: for the null reverse-path, postmaster@HELO
        let identity = match (sender, helo) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(h)) => Some(format!("postmaster@{h}")),
            (None, None) => None,
        };
        let domain = identity
            .as_deref()
            .and_then(|i| i.rsplit_once('@'))
            .map(|(_, d)| d.to_string())
            .filter(|d| crate::smtp::Domain::parse(d, true).is_ok());
        let host = self.hostname.as_str();
        let helo_name = helo.unwrap_or_default();
        let budget = self.config.timeout;
        let timed_out =
            |domain: &str| SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError);
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + budget;
            let helo_out =
                match helo {
                    Some(h) => {
                        let check = self.auth.verify_spf(
                            mail_auth::spf::verify::SpfParameters::verify_ehlo(ip, h, host),
                        );
                        let out = tokio::time::timeout_at(deadline, check).await;
                        Some((h.to_string(), out.unwrap_or_else(|_| timed_out(h))))
                    }
                    None => None,
                };
            let mail_from = match (identity, domain) {
                (Some(id), Some(d)) => {
                    let check = self.auth.verify_spf(
                        mail_auth::spf::verify::SpfParameters::verify_mail_from(
                            ip, helo_name, host, &id,
                        ),
                    );
                    let out = tokio::time::timeout_at(deadline, check).await;
                    let out = out.unwrap_or_else(|_| timed_out(&d));
                    Some((id, d, out))
                }
                _ => None,
            };
            SpfResults {
                ip,
                helo: helo_out,
                mail_from,
            }
        })
    }

    /// DKIM (every signature) and DMARC for `raw`, the message as the
    /// client sent it, and the header that says so with `spf`.
    pub fn message(&self, raw: &[u8], spf: &SpfResults) -> MessageResults {
        let Some(msg) = AuthenticatedMessage::parse(raw) else {
            // no header section to check: say so rather than guess
            return MessageResults {
                header: header::field(&self.hostname, spf, Outcome::Skipped, Outcome::Skipped, ""),
                dmarc_failure: None,
                temperror: spf.has_temperror(),
            };
        };
        let budget = self.config.timeout;
        let mail_from_domain = spf
            .mail_from
            .as_ref()
            .map(|(_, d, _)| d.as_str())
            .unwrap_or_default();
        let no_spf = SpfOutput::new(String::new());
        let spf_out = spf.mail_from.as_ref().map_or(&no_spf, |(_, _, o)| o);
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + budget;
            let dkim = tokio::time::timeout_at(deadline, self.auth.verify_dkim(&msg))
                .await
                .ok()
                .map(|d| body_hash_fails(&msg, d));
            // DMARC needs the DKIM results: without them (out of time) it
            // is not evaluated, never failed for our slowness
            let dmarc = match &dkim {
                Some(dkim) => {
                    let params = mail_auth::dmarc::verify::DmarcParameters::new(
                        &msg,
                        dkim,
                        mail_from_domain,
                        spf_out,
                    );
                    tokio::time::timeout_at(deadline, self.auth.verify_dmarc(params))
                        .await
                        .ok()
                }
                None => None,
            };
            let temperror = spf.has_temperror() || any_temperror(dkim.as_deref(), dmarc.as_ref());
            let dmarc_failure = dmarc.as_ref().and_then(dmarc_failure);
            MessageResults {
                header: header::field(
                    &self.hostname,
                    spf,
                    Outcome::of(dkim.as_deref()),
                    Outcome::of(dmarc.as_ref()),
                    msg.from(),
                ),
                dmarc_failure,
                temperror,
            }
        })
    }
}
