//! DNS blocklists and allowlists on the client address (RFC 5782).
//!
//! At connect, the client's address is looked up in every allowlist
//! (`--dnswl ZONE`) and, unless one lists it, in every blocklist
//! (`--dnsbl ZONE[=WEIGHT]`): the reversed octets (IPv4) or nibbles (IPv6)
//! under the zone, an A record in 127.0.0.0/8 meaning "listed" (RFC 5782
//! §2.1, §2.4). The weights of the blocklists that list the client are
//! added up; at `--dnsbl-threshold` or more the client is blocked, the
//! reply naming the first list that listed it. An answer in
//! 127.255.255.0/24 is a list refusing the query (Spamhaus's convention
//! for queries through public resolvers), and any answer outside
//! 127.0.0.0/8 is not a listing (RFC 5782 §2.1): both are logged and
//! ignored, as are lookups that fail or time out (a list that is down
//! never blocks mail).

use std::net::IpAddr;
use std::sync::Arc;

use crate::dns::{Dns, DnsError};

/// One `--dnsbl ZONE[=WEIGHT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocklist {
    pub zone: String,
    pub weight: u32,
}

/// Where a blocked client is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RejectAt {
    /// At the greeting: `554` and the connection closed.
    Connect,
    /// At every RCPT (Postfix's `smtpd_delay_reject = yes`): the client
    /// may still say who it is, and the refusal names the recipient.
    #[default]
    Rcpt,
}

/// The DNSBL settings, from `--dnsbl`, `--dnswl`, `--dnsbl-threshold`,
/// `--dnsbl-reject-at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblConfig {
    pub blocklists: Vec<Blocklist>,
    pub allowlists: Vec<String>,
    /// The summed weight at which a client is blocked (1: any list).
    pub threshold: u32,
    pub reject_at: RejectAt,
}

impl Default for DnsblConfig {
    fn default() -> DnsblConfig {
        DnsblConfig {
            blocklists: Vec::new(),
            allowlists: Vec::new(),
            threshold: 1,
            reject_at: RejectAt::Rcpt,
        }
    }
}

impl DnsblConfig {
    pub fn is_on(&self) -> bool {
        !self.blocklists.is_empty()
    }

    /// Parses `ZONE` or `ZONE=WEIGHT`.
    pub fn parse_blocklist(s: &str) -> Result<Blocklist, String> {
        let (zone, weight) = match s.split_once('=') {
            Some((z, w)) => (
                z,
                w.parse::<u32>()
                    .map_err(|_| format!("bad weight in {s:?} (use ZONE=N)"))?,
            ),
            None => (s, 1),
        };
        Ok(Blocklist {
            zone: parse_zone(zone)?,
            weight,
        })
    }
}

/// A zone name, without a trailing dot.
pub fn parse_zone(s: &str) -> Result<String, String> {
    let z = s.trim_end_matches('.');
    crate::smtp::Domain::parse(z, false).map_err(|e| format!("bad DNS list zone {s:?}: {e}"))?;
    Ok(z.to_ascii_lowercase())
}

/// RFC 5782 §2.1 (IPv4: the octets reversed) and §2.4 (IPv6: the 32
/// nibbles reversed), under `zone`.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::with_capacity(64 + zone.len());
            for n in (0..32).map(|i| (u128::from(a) >> (i * 4)) & 0xf) {
                s.push(char::from_digit(n as u32, 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str(zone);
            s
        }
    }
}

/// What one list said about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Listed,
    NotListed,
    /// Refused, failed or a malformed answer: logged, then ignored.
    Ignored(String),
}

/// The verdict on a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not listed enough (or no lists).
    Pass,
    /// An allowlist lists it: the blocklists were not asked.
    Allowed(String),
    /// Blocked; the first blocklist that listed it.
    Blocked(String),
}

/// The lists, asked through a resolver of their own.
pub struct Dnsbl {
    config: DnsblConfig,
    dns: Arc<Dns>,
}

impl Dnsbl {
    pub fn new(config: DnsblConfig, dns: Arc<Dns>) -> Dnsbl {
        Dnsbl { config, dns }
    }

    pub fn config(&self) -> &DnsblConfig {
        &self.config
    }

    fn ask(&self, ip: IpAddr, zone: &str) -> Answer {
        let name = query_name(ip, zone);
        match self.dns.a(&name) {
            Ok(addrs) => classify(&addrs),
            Err(DnsError::NxDomain) | Err(DnsError::NoRecords) => Answer::NotListed,
            Err(e) => Answer::Ignored(e.to_string()),
        }
    }

    /// Asks the allowlists, then the blocklists, one after the other;
    /// each lookup ends within the resolver's timeout.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        if !self.config.is_on() {
            return Verdict::Pass;
        }
        for zone in &self.config.allowlists {
            match self.ask(ip, zone) {
                Answer::Listed => return Verdict::Allowed(zone.clone()),
                Answer::NotListed => {}
                Answer::Ignored(why) => log::warn!("{ip} dnswl {zone} ignored: {why}"),
            }
        }
        let mut score = 0u32;
        let mut first = None;
        for bl in &self.config.blocklists {
            match self.ask(ip, &bl.zone) {
                Answer::Listed => {
                    score = score.saturating_add(bl.weight);
                    first.get_or_insert_with(|| bl.zone.clone());
                    log::debug!("{ip} listed in {} (weight {})", bl.zone, bl.weight);
                }
                Answer::NotListed => {}
                Answer::Ignored(why) => log::warn!("{ip} dnsbl {} ignored: {why}", bl.zone),
            }
        }
        match first {
            Some(zone) if score >= self.config.threshold => Verdict::Blocked(zone),
            _ => Verdict::Pass,
        }
    }
}

/// RFC 5782 §2.1: a listing is an A record in 127.0.0.0/8;
/// 127.255.255.0/24 is a list's refusal (an error code, not a listing).
fn classify(addrs: &[std::net::Ipv4Addr]) -> Answer {
    if let Some(a) = addrs.iter().find(|a| a.octets()[..3] == [127, 255, 255]) {
        return Answer::Ignored(format!("the list refused the query (answer {a})"));
    }
    if addrs.iter().any(|a| a.octets()[0] == 127) {
        return Answer::Listed;
    }
    Answer::Ignored(format!("answer outside 127.0.0.0/8: {addrs:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        let ip: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(query_name(ip, "bl.test"), "99.2.0.192.bl.test");
        let mapped: IpAddr = "::ffff:192.0.2.99".parse().unwrap();
        assert_eq!(query_name(mapped, "bl.test"), "99.2.0.192.bl.test");
        // RFC 5782 §2.4's example
        let v6: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
        assert_eq!(
            query_name(v6, "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
    }

    #[test]
    fn answers() {
        let a = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        assert_eq!(classify(&[a("127.0.0.2")]), Answer::Listed);
        assert_eq!(classify(&[a("127.0.0.10")]), Answer::Listed);
        assert!(matches!(
            classify(&[a("127.255.255.254")]),
            Answer::Ignored(_)
        ));
        assert!(matches!(classify(&[a("192.0.2.1")]), Answer::Ignored(_)));
    }

    #[test]
    fn blocklist_options() {
        assert_eq!(
            DnsblConfig::parse_blocklist("bl.test=3").unwrap(),
            Blocklist {
                zone: "bl.test".into(),
                weight: 3
            }
        );
        assert_eq!(DnsblConfig::parse_blocklist("BL.test.").unwrap().weight, 1);
        assert!(DnsblConfig::parse_blocklist("bl.test=x").is_err());
        assert!(DnsblConfig::parse_blocklist("not a zone").is_err());
    }
}
