//! The delivery side's settings as plain data: outbound timeouts, the
//! retry schedule, the STARTTLS mode. The code that uses them (`client`,
//! `delivery`, `tls`) adds its methods where it lives.

use std::time::Duration;

/// Client timeouts, named after RFC 5321 §4.5.3.2 (defaults are its
/// minimums; connect is ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// §4.5.3.2.1: initial 220, 5 minutes (also used for EHLO/HELO).
    pub greeting: Duration,
    /// §4.5.3.2.2: MAIL, 5 minutes.
    pub mail: Duration,
    /// §4.5.3.2.3: RCPT, 5 minutes.
    pub rcpt: Duration,
    /// §4.5.3.2.4: DATA initiation, 2 minutes.
    pub data_init: Duration,
    /// §4.5.3.2.5: each data block sent, 3 minutes.
    pub data_block: Duration,
    /// §4.5.3.2.6: reply to the final ".", 10 minutes.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            mail: Duration::from_secs(300),
            rcpt: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
        }
    }
}

impl Timeouts {
    /// Every phase bounded by `t` (tests shrink timers this way).
    pub fn all(t: Duration) -> Timeouts {
        Timeouts {
            connect: t,
            greeting: t,
            mail: t,
            rcpt: t,
            data_init: t,
            data_block: t,
            data_end: t,
        }
    }
}

/// Retry schedule (`--retry-min`, `--retry-max`, `--max-queue-age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min: Duration,
    pub max: Duration,
    pub lifetime: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            min: Duration::from_secs(300),
            max: Duration::from_secs(4000),
            lifetime: Duration::from_secs(5 * 86_400),
        }
    }
}

/// `--outbound-tls`: what the delivery side does with STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboundTls {
    /// Opportunistic (RFC 7435 §1.3): STARTTLS when offered, any
    /// certificate; a failed handshake falls back to plaintext.
    May,
    /// TLS or nothing, any certificate.
    Encrypt,
    /// TLS with a certificate valid for the next hop's name, against the
    /// system roots or `--ca-file`.
    Verify,
    /// RFC 8314 §3: TLS from the first byte (submissions port 465), no
    /// STARTTLS; the certificate checked as under `Verify`. A route's
    /// policy only (`tls = implicit`): never for MX delivery on port 25.
    Implicit,
}

impl OutboundTls {
    pub fn parse(s: &str) -> Option<OutboundTls> {
        Some(match s {
            "may" => OutboundTls::May,
            "encrypt" => OutboundTls::Encrypt,
            "verify" => OutboundTls::Verify,
            _ => return None,
        })
    }
}
