//! The outbound TLS policy of one destination, and where it comes from:
//! a static route, MTA-STS (RFC 8461), DANE (RFC 7672, not yet: it slots
//! in as another [`Source`] looked up in [`TlsPolicies::for_destination`]),
//! or nothing (the global `--outbound-tls`).
//!
//! Precedence: a static route decides by itself (its `tls =`, else
//! `--outbound-tls`): its hosts are the operator's, not the domain's MX,
//! so the domain's MTA-STS policy, which names MX hosts, does not apply.
//! MTA-STS is consulted for mail routed by MX records only, and never
//! for address literals.
//!
//! Delivery asks one [`DestTls`] per destination: which MX hosts it may
//! use (§4.1), which TLS mode the connection needs (§4.2: STARTTLS with a
//! certificate valid for the MX name under `enforce`), and, for
//! REQUIRETLS (RFC 8689 §4.2.1), whether the hops' names are
//! authenticated at all.

use std::fmt;

use crate::mta_sts::{Found, Mode, MtaSts};
use crate::route::{Hop, RouteTls};
use crate::smtp::Host;
use crate::tls::OutboundTls;

/// Where a destination's TLS policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A static route: its `tls =` (or the global `--outbound-tls`).
    Route,
    /// The domain's MTA-STS policy.
    MtaSts(Found),
    /// Nothing published or configured: `--outbound-tls`.
    None,
}

/// The TLS policy for one destination, as delivery applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestTls {
    pub source: Source,
    /// RFC 8689 §4.1 `TLS-Required: No`: recipient-domain policy failures
    /// are logged and ignored for this message.
    pub ignore_failures: bool,
}

/// What an MX host means under the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MxVerdict {
    /// Use it.
    Allowed,
    /// Not in the policy, but the policy is only tested: use it, log it.
    WouldFail,
    /// Not in an enforced policy: skip it.
    Refused,
}

impl DestTls {
    pub fn none() -> DestTls {
        DestTls {
            source: Source::None,
            ignore_failures: false,
        }
    }

    /// The MTA-STS policy with a mode that does something.
    fn sts(&self) -> Option<&Found> {
        match &self.source {
            Source::MtaSts(f) if f.policy.mode != Mode::None => Some(f),
            _ => None,
        }
    }

    /// The mode in force for a message: RFC 8689 §4.2.1 has a REQUIRETLS
    /// message treat a `testing` policy as `enforce`; `TLS-Required: No`
    /// (§4.1) turns `enforce` into a test (logged, not applied).
    pub fn mode(&self, requiretls: bool) -> Option<Mode> {
        let f = self.sts()?;
        Some(match f.policy.mode {
            Mode::Testing if requiretls => Mode::Enforce,
            Mode::Enforce if self.ignore_failures && !requiretls => Mode::Testing,
            m => m,
        })
    }

    /// RFC 8461 §4.1: whether the MX host `name` may be used.
    pub fn mx(&self, name: &str, requiretls: bool) -> MxVerdict {
        let Some(f) = self.sts() else {
            return MxVerdict::Allowed;
        };
        if f.policy.matches(name) {
            return MxVerdict::Allowed;
        }
        match self.mode(requiretls) {
            Some(Mode::Enforce) => MxVerdict::Refused,
            _ => MxVerdict::WouldFail,
        }
    }

    /// The TLS mode for `hop`: the route's own `tls =`; STARTTLS with the
    /// certificate verified for the MX name under an enforced MTA-STS
    /// policy (RFC 8461 §4.2); else `global`.
    pub fn hop_tls(&self, hop: &Hop, global: OutboundTls, requiretls: bool) -> RouteTls {
        if let Some(t) = hop.tls {
            return t;
        }
        if self.mode(requiretls) == Some(Mode::Enforce) {
            return RouteTls::Starttls(OutboundTls::Verify);
        }
        RouteTls::Starttls(global)
    }

    /// RFC 8689 §4.2.1: a REQUIRETLS message needs the hop's name to be
    /// authenticated (an MTA-STS policy listing it, or a static route's
    /// configured host) and its certificate verified for that name.
    pub fn authenticates(&self, hop: &Hop, global: OutboundTls) -> bool {
        let verified = matches!(
            self.hop_tls(hop, global, true),
            RouteTls::Starttls(OutboundTls::Verify) | RouteTls::Implicit
        );
        let named = match &self.source {
            Source::Route => true,
            Source::MtaSts(_) => self.sts().is_some_and(|f| f.policy.matches(&hop.name)),
            Source::None => false,
        };
        verified && named
    }

    /// For logs and `smtp-relay route`.
    pub fn describe(&self) -> String {
        let mut s = self.to_string();
        if self.ignore_failures {
            s.push_str(" (TLS-Required: No: failures ignored)");
        }
        s
    }
}

impl fmt::Display for DestTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Route => f.write_str("route"),
            Source::MtaSts(found) => write!(
                f,
                "MTA-STS mode={} id={} mx={} max_age={}",
                found.policy.mode,
                found.id,
                found.policy.mx.join(","),
                found.policy.max_age
            ),
            Source::None => f.write_str("none"),
        }
    }
}

/// The policy sources, built once (`app.rs`) and shared by every
/// delivery thread.
#[derive(Debug, Default)]
pub struct TlsPolicies {
    /// `--mta-sts`: `None` when off.
    pub mta_sts: Option<MtaSts>,
}

impl TlsPolicies {
    /// The policy for mail to `dest` that routing sent `by_static_route`
    /// or not (module doc for the precedence).
    pub fn for_destination(&self, dest: &Host, by_static_route: bool) -> DestTls {
        if by_static_route {
            return DestTls {
                source: Source::Route,
                ignore_failures: false,
            };
        }
        let (Host::Name(domain), Some(sts)) = (dest, &self.mta_sts) else {
            return DestTls::none();
        };
        // DNS, the policy host's TLS name and the cache file use the
        // A-label form (RFC 5891); a name that has none has no policy
        let Ok(ascii) = idna::domain_to_ascii(domain.as_str()) else {
            return DestTls::none();
        };
        match sts.lookup(&ascii) {
            Some(found) => DestTls {
                source: Source::MtaSts(found),
                ignore_failures: false,
            },
            None => DestTls::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mta_sts::Policy;

    fn sts(mode: &str) -> DestTls {
        let text = format!("version: STSv1\nmode: {mode}\nmx: *.good.example\nmax_age: 60\n");
        DestTls {
            source: Source::MtaSts(Found {
                id: "1".into(),
                policy: Policy::parse(&text).unwrap(),
            }),
            ignore_failures: false,
        }
    }

    fn hop(name: &str, tls: Option<RouteTls>) -> Hop {
        Hop {
            name: name.into(),
            addrs: vec![],
            port: 25,
            tls,
            auth: None,
        }
    }

    #[test]
    fn enforce_testing_none() {
        let may = OutboundTls::May;
        let verify = RouteTls::Starttls(OutboundTls::Verify);
        let e = sts("enforce");
        assert_eq!(e.mx("mx.good.example", false), MxVerdict::Allowed);
        assert_eq!(e.mx("mx.bad.example", false), MxVerdict::Refused);
        assert_eq!(e.hop_tls(&hop("mx.good.example", None), may, false), verify);
        let t = sts("testing");
        assert_eq!(t.mx("mx.bad.example", false), MxVerdict::WouldFail);
        assert_eq!(
            t.hop_tls(&hop("mx.good.example", None), may, false),
            RouteTls::Starttls(may)
        );
        // RFC 8689 §4.2.1: testing is enforce for REQUIRETLS
        assert_eq!(t.mx("mx.bad.example", true), MxVerdict::Refused);
        assert_eq!(t.hop_tls(&hop("mx.good.example", None), may, true), verify);
        let n = sts("none");
        assert_eq!(n.mx("mx.bad.example", true), MxVerdict::Allowed);
        assert!(!n.authenticates(&hop("mx.good.example", None), may));
        // TLS-Required: No makes enforce a test
        let mut relaxed = sts("enforce");
        relaxed.ignore_failures = true;
        assert_eq!(relaxed.mx("mx.bad.example", false), MxVerdict::WouldFail);
    }

    #[test]
    fn requiretls_needs_authenticated_names() {
        let may = OutboundTls::May;
        let e = sts("enforce");
        assert!(e.authenticates(&hop("mx.good.example", None), may));
        assert!(!e.authenticates(&hop("mx.bad.example", None), may));
        // a route's host counts only with its certificate verified
        let route = DestTls {
            source: Source::Route,
            ignore_failures: false,
        };
        assert!(!route.authenticates(&hop("smarthost.example", None), may));
        assert!(route.authenticates(&hop("smarthost.example", None), OutboundTls::Verify));
        assert!(route.authenticates(&hop("s.example", Some(RouteTls::Implicit)), may));
        // an MX without any policy: its name came from plain DNS
        assert!(!DestTls::none().authenticates(&hop("mx.example", None), OutboundTls::Verify));
    }
}
