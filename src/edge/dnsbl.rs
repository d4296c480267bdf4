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
//!
//! The lists are asked at once, the allowlists together and then the
//! blocklists together, within one deadline for the whole check (the
//! resolver's timeout): a slow list delays a connection by that much at
//! most, whatever the number of lists.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::dns::{Dns, DnsError};

pub use crate::config::edge::{parse_zone, Blocklist, DnsblConfig, RejectAt};

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

    /// What each of `zones` says about `ip`, asked concurrently, all by
    /// `deadline`.
    fn ask_all<'z>(
        &self,
        ip: IpAddr,
        zones: impl Iterator<Item = &'z str>,
        deadline: Instant,
    ) -> Vec<Answer> {
        let names: Vec<String> = zones.map(|z| query_name(ip, z)).collect();
        self.dns
            .a_all(&names, deadline)
            .into_iter()
            .map(|answer| match answer {
                Ok(addrs) => classify(&addrs),
                Err(DnsError::NxDomain) | Err(DnsError::NoRecords) => Answer::NotListed,
                Err(e) => Answer::Ignored(e.to_string()),
            })
            .collect()
    }

    /// Asks the allowlists, then (unless one lists the client) the
    /// blocklists, each set concurrently; the whole check ends within
    /// the resolver's timeout.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        if !self.config.is_on() {
            return Verdict::Pass;
        }
        let deadline = Instant::now() + self.dns.timeout();
        let allow = &self.config.allowlists;
        let answers = self.ask_all(ip, allow.iter().map(String::as_str), deadline);
        for (zone, answer) in allow.iter().zip(answers) {
            match answer {
                Answer::Listed => return Verdict::Allowed(zone.clone()),
                Answer::NotListed => {}
                Answer::Ignored(why) => log::warn!("{ip} dnswl {zone} ignored: {why}"),
            }
        }
        let block = &self.config.blocklists;
        let answers = self.ask_all(ip, block.iter().map(|b| b.zone.as_str()), deadline);
        let mut score = 0u32;
        let mut first = None;
        for (bl, answer) in block.iter().zip(answers) {
            match answer {
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

    /// A DNS server on loopback that answers every A query with
    /// 127.0.0.2, but answers none before it has been asked `names`
    /// different names: lists asked one after the other would each wait
    /// for the others (and time out); asked at once, all are answered.
    fn barrier_dns(names: usize) -> std::net::SocketAddr {
        use std::collections::HashSet;
        use std::net::UdpSocket;
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut waiting = Vec::new();
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let Some(q) = question(&buf[..n]) else {
                    continue;
                };
                seen.insert(buf[12..q].to_ascii_lowercase());
                waiting.push((buf[..n].to_vec(), q, peer));
                if seen.len() >= names {
                    for (query, q, peer) in waiting.drain(..) {
                        let _ = sock.send_to(&listed(&query, q), peer);
                    }
                }
            }
        });
        addr
    }

    /// The end of the question's name (RFC 1035 §4.1.2), if well formed.
    fn question(query: &[u8]) -> Option<usize> {
        let mut i = 12;
        while *query.get(i)? != 0 {
            i += 1 + *query.get(i)? as usize;
        }
        (query.len() >= i + 5).then_some(i + 1)
    }

    /// The answer `127.0.0.2` to `query` (RFC 1035 §4.1): the header with
    /// QR, RD and RA set, the question, one A record by pointer.
    fn listed(query: &[u8], name_end: usize) -> Vec<u8> {
        let mut r = query[..2].to_vec();
        r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
        r.extend_from_slice(&query[12..name_end + 4]);
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 2]);
        r
    }

    /// Three blocklists whose weights only add up to the threshold when
    /// all three answer, served by a DNS server that answers only once
    /// all three names were asked: the lists are asked at once. (Asked one
    /// after the other, each lookup but the last times out, the client
    /// scores 1 and passes.)
    #[test]
    fn the_lists_are_asked_at_once() {
        let server = barrier_dns(3);
        let dns = Dns::new(Some(server), std::time::Duration::from_secs(5)).unwrap();
        let zones = ["one.test", "two.test", "three.test"];
        let config = DnsblConfig {
            blocklists: zones
                .iter()
                .map(|z| Blocklist {
                    zone: z.to_string(),
                    weight: 1,
                })
                .collect(),
            threshold: 3,
            ..DnsblConfig::default()
        };
        let lists = Dnsbl::new(config, Arc::new(dns));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(lists.check(ip), Verdict::Blocked("one.test".into()));
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
