//! The outbound TLS policy of one destination, and where it comes from:
//! a static route, DANE (RFC 7672), MTA-STS (RFC 8461), or nothing (the
//! global `--outbound-tls`).
//!
//! Precedence: a static route decides by itself (its `tls =`, else
//! `--outbound-tls`): its hosts are the operator's, not the domain's MX,
//! so the domain's DANE records and MTA-STS policy, which name MX hosts,
//! do not apply. DANE and MTA-STS are consulted for mail routed by MX
//! records only, and never for address literals.
//!
//! DANE over MTA-STS (RFC 8461 §2: a sender that does DANE uses it where
//! TLSA records exist): an MX host with usable TLSA records under a
//! secure MX RRset is reached by DANE whatever the MTA-STS policy says
//! of it; the other hosts of the same domain follow MTA-STS, if any.
//!
//! DANE is decided per hop ([`TlsPolicies::dane_hop`]): RFC 7672 §2.2
//! applies TLSA records only when the MX RRset (§2.2.1) and the host's
//! address records (§2.2.2) are DNSSEC-secure; usable records (§3.1.3:
//! DANE-EE and DANE-TA only) make STARTTLS and a matching certificate
//! mandatory; none (a secure or insecure denial, or only unusable ones)
//! leave the hop opportunistic; a bogus or failed lookup defers the
//! hop with 4.7.5 (§2.1: never delivered in the clear instead).
//!
//! Delivery asks one [`DestTls`] per destination: which MX hosts it may
//! use (§4.1), which TLS mode the connection needs (§4.2: STARTTLS with a
//! certificate valid for the MX name under `enforce`), and, for
//! REQUIRETLS (RFC 8689 §4.2.1), whether the hops' names are
//! authenticated at all.

use std::fmt;

use crate::dane::Tlsa;
use crate::dns::{Dns, DnsError};
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
    /// DANE's view of the MX RRset; `None` when DANE is off or does not
    /// apply (a static route, an insecure MX RRset, no MX records).
    pub dane: Option<DaneMx>,
    /// Why the domain's MTA-STS policy could not be fetched, when a fetch
    /// was due and failed (for TLS reports, RFC 8460 §4.3.2.2).
    pub sts_error: Option<String>,
}

/// The MX RRset as DANE sees it (RFC 7672 §2.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneMx {
    /// Secure: the next-hop domain (A-label) and its MX host names.
    Secure { domain: String, hosts: Vec<String> },
    /// Bogus, or the lookup failed: every hop defers.
    Failed(String),
}

/// DANE's decision for one hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopDane {
    /// DANE does not apply: opportunistic or other policies.
    None,
    /// Usable TLSA records, and the names DANE-TA checks (§3.2.2).
    Usable { tlsa: Vec<Tlsa>, names: Vec<String> },
    /// Defer 4.7.5: why.
    Failed(String),
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
            dane: None,
            sts_error: None,
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
    pub fn hop_tls(
        &self,
        hop: &Hop,
        dane: &HopDane,
        global: OutboundTls,
        requiretls: bool,
    ) -> RouteTls {
        if let Some(t) = hop.tls {
            return t;
        }
        if matches!(dane, HopDane::Usable { .. }) {
            return RouteTls::Dane;
        }
        if self.mode(requiretls) == Some(Mode::Enforce) {
            return RouteTls::Starttls(OutboundTls::Verify);
        }
        RouteTls::Starttls(global)
    }

    /// RFC 8689 §4.2.1: a REQUIRETLS message needs the hop's name to be
    /// authenticated (an MTA-STS policy listing it, or a static route's
    /// configured host, or DANE: a secure MX RRset and usable TLSA
    /// records) and its certificate verified for that name.
    pub fn authenticates(&self, hop: &Hop, dane: &HopDane, global: OutboundTls) -> bool {
        let tls = self.hop_tls(hop, dane, global, true);
        if tls == RouteTls::Dane {
            return true;
        }
        let verified = matches!(
            tls,
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
        let mut s = match &self.dane {
            Some(DaneMx::Secure { hosts, .. }) => {
                format!(
                    "DANE (secure MX RRset: {}); hosts without usable TLSA: {self}",
                    hosts.join(",")
                )
            }
            Some(DaneMx::Failed(why)) => format!("DANE: {why}"),
            None => self.to_string(),
        };
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
    /// `--dane`: the DNSSEC-validating resolver; `None` when off.
    pub dane: Option<Dns>,
}

impl TlsPolicies {
    /// The policy for mail to `dest` that routing sent `by_static_route`
    /// or not (module doc for the precedence).
    pub fn for_destination(&self, dest: &Host, by_static_route: bool) -> DestTls {
        if by_static_route {
            return DestTls {
                source: Source::Route,
                ignore_failures: false,
                dane: None,
                sts_error: None,
            };
        }
        let Host::Name(domain) = dest else {
            return DestTls::none();
        };
        // DNS, the policy host's TLS name and the cache file use the
        // A-label form (RFC 5891); a name that has none has no policy
        let Ok(ascii) = idna::domain_to_ascii(domain.as_str()) else {
            return DestTls::none();
        };
        let (found, sts_error) = match &self.mta_sts {
            Some(sts) => sts.lookup_noting(&ascii),
            None => (None, None),
        };
        let source = match found {
            Some(found) => Source::MtaSts(found),
            None => Source::None,
        };
        DestTls {
            source,
            ignore_failures: false,
            dane: self.dane_mx(&ascii),
            sts_error,
        }
    }

    /// RFC 7672 §2.2.1: DANE applies to the MX hosts of a secure MX
    /// RRset; an insecure one (or none: the implicit MX of RFC 5321 §5.1
    /// is not covered here) leaves the domain to other policies; a bogus
    /// one, or a failed lookup, defers.
    fn dane_mx(&self, domain: &str) -> Option<DaneMx> {
        let dns = self.dane.as_ref()?;
        match dns.mx_validated(domain) {
            Ok(v) if v.secure => Some(DaneMx::Secure {
                domain: domain.to_string(),
                hosts: v.value.into_iter().map(|m| m.exchange).collect(),
            }),
            Ok(_) | Err(DnsError::NoRecords | DnsError::NxDomain) => None,
            Err(e) => Some(DaneMx::Failed(format!("MX lookup for {domain}: {e}"))),
        }
    }

    /// DANE's decision for `hop` of a destination (module doc): TLSA
    /// records at `_PORT._tcp.HOST` (RFC 7672 §2.2.3) when the MX RRset
    /// and the host's addresses are secure.
    pub fn dane_hop(&self, dest: &DestTls, hop: &Hop) -> HopDane {
        let (Some(dns), Some(mx)) = (&self.dane, &dest.dane) else {
            return HopDane::None;
        };
        let (domain, hosts) = match mx {
            DaneMx::Failed(why) => return HopDane::Failed(why.clone()),
            DaneMx::Secure { domain, hosts } => (domain, hosts),
        };
        let host = hop.name.to_ascii_lowercase();
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            // routing's (unvalidated) MX answer named a host the secure
            // RRset does not: spoofed, or the records just changed
            return HopDane::Failed(format!("MX {host} is not in the secure MX RRset"));
        }
        match dns.addrs_secure(&host) {
            Ok(true) => {}
            Ok(false) | Err(DnsError::NoRecords | DnsError::NxDomain) => return HopDane::None,
            Err(e) => return HopDane::Failed(format!("address lookup for {host}: {e}")),
        }
        match dns.tlsa(&host, hop.port) {
            Ok(v) if v.secure => {
                let tlsa: Vec<Tlsa> = v.value.into_iter().filter(Tlsa::usable).collect();
                if tlsa.is_empty() {
                    return HopDane::None;
                }
                HopDane::Usable {
                    tlsa,
                    names: vec![host, domain.clone()],
                }
            }
            Ok(_) | Err(DnsError::NoRecords | DnsError::NxDomain) => HopDane::None,
            Err(e) => HopDane::Failed(format!("TLSA lookup for {host}: {e}")),
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
            dane: None,
            sts_error: None,
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
        assert_eq!(
            e.hop_tls(&hop("mx.good.example", None), &HopDane::None, may, false),
            verify
        );
        let t = sts("testing");
        assert_eq!(t.mx("mx.bad.example", false), MxVerdict::WouldFail);
        assert_eq!(
            t.hop_tls(&hop("mx.good.example", None), &HopDane::None, may, false),
            RouteTls::Starttls(may)
        );
        // RFC 8689 §4.2.1: testing is enforce for REQUIRETLS
        assert_eq!(t.mx("mx.bad.example", true), MxVerdict::Refused);
        assert_eq!(
            t.hop_tls(&hop("mx.good.example", None), &HopDane::None, may, true),
            verify
        );
        let n = sts("none");
        assert_eq!(n.mx("mx.bad.example", true), MxVerdict::Allowed);
        assert!(!n.authenticates(&hop("mx.good.example", None), &HopDane::None, may));
        // TLS-Required: No makes enforce a test
        let mut relaxed = sts("enforce");
        relaxed.ignore_failures = true;
        assert_eq!(relaxed.mx("mx.bad.example", false), MxVerdict::WouldFail);
    }

    #[test]
    fn requiretls_needs_authenticated_names() {
        let may = OutboundTls::May;
        let e = sts("enforce");
        assert!(e.authenticates(&hop("mx.good.example", None), &HopDane::None, may));
        assert!(!e.authenticates(&hop("mx.bad.example", None), &HopDane::None, may));
        // a route's host counts only with its certificate verified
        let route = DestTls {
            source: Source::Route,
            ignore_failures: false,
            dane: None,
            sts_error: None,
        };
        assert!(!route.authenticates(&hop("smarthost.example", None), &HopDane::None, may));
        assert!(route.authenticates(
            &hop("smarthost.example", None),
            &HopDane::None,
            OutboundTls::Verify
        ));
        assert!(route.authenticates(
            &hop("s.example", Some(RouteTls::Implicit)),
            &HopDane::None,
            may
        ));
        // an MX without any policy: its name came from plain DNS
        assert!(!DestTls::none().authenticates(
            &hop("mx.example", None),
            &HopDane::None,
            OutboundTls::Verify
        ));
    }

    #[test]
    fn dane_wins_over_mta_sts_and_counts_for_requiretls() {
        let may = OutboundTls::May;
        let usable = HopDane::Usable {
            tlsa: vec![Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![0; 32],
            }],
            names: vec!["mx.bad.example".into()],
        };
        // an MX host outside the enforced MTA-STS policy, with TLSA records
        let e = sts("enforce");
        let h = hop("mx.bad.example", None);
        assert_eq!(e.hop_tls(&h, &usable, may, false), RouteTls::Dane);
        assert!(e.authenticates(&h, &usable, may));
        assert!(!e.authenticates(&h, &HopDane::None, may));
        // a route's own tls = still wins
        let pinned = hop("mx.bad.example", Some(RouteTls::None));
        assert_eq!(e.hop_tls(&pinned, &usable, may, false), RouteTls::None);
    }
}
