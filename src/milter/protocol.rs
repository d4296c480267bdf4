//! The Sendmail/Postfix milter protocol, version 6, without I/O: the
//! packets the MTA sends and the responses a milter may give.
//!
//! Facts from libmilter's `mfdef.h` (the protocol's only definition) and
//! Postfix's `MILTER_README`: every packet is a 4-octet network-order
//! length (counting the command octet), a command octet, and its data;
//! strings are NUL-terminated; numbers are 32-bit network order.

use std::net::SocketAddr;

/// The protocol version we speak (`SMFI_PROT_VERSION`).
pub const VERSION: u32 = 6;

/// A body chunk holds at most this many octets (`MILTER_CHUNK_SIZE`).
pub const CHUNK: usize = 65535;

/// The largest packet we accept from a milter. Without the MDS
/// negotiation flags a milter's data is at most 65535 octets
/// (`MILTER_MAX_DATA_SIZE`); libmilter with `SMFIP_MDS_1M` may send up
/// to 1 MiB, so that is the bound, and anything larger is garbage.
pub const MAX_PACKET: usize = 1024 * 1024;

/// Commands, MTA → milter (`SMFIC_*`).
pub mod cmd {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
}

/// Modification actions a milter may ask for (`SMFIF_*`).
pub mod act {
    pub const ADDHDRS: u32 = 0x01;
    pub const CHGBODY: u32 = 0x02;
    pub const ADDRCPT: u32 = 0x04;
    pub const DELRCPT: u32 = 0x08;
    pub const CHGHDRS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    pub const CHGFROM: u32 = 0x40;
    pub const ADDRCPT_PAR: u32 = 0x80;
    pub const SETSYMLIST: u32 = 0x100;
    /// Everything we can carry out, offered at negotiation.
    pub const ALL: u32 = 0x1FF;
}

/// Protocol steps (`SMFIP_*`): events a milter does not want, events it
/// will not answer, and protocol features.
pub mod step {
    pub const NOCONNECT: u32 = 0x1;
    pub const NOHELO: u32 = 0x2;
    pub const NOMAIL: u32 = 0x4;
    pub const NORCPT: u32 = 0x8;
    pub const NOBODY: u32 = 0x10;
    pub const NOHDRS: u32 = 0x20;
    pub const NOEOH: u32 = 0x40;
    pub const NR_HDR: u32 = 0x80;
    pub const NOUNKNOWN: u32 = 0x100;
    pub const NODATA: u32 = 0x200;
    pub const SKIP: u32 = 0x400;
    pub const NR_CONN: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    pub const HDR_LEADSPC: u32 = 0x100000;
    /// The data-size flags (`SMFIP_MDS_256K`, `SMFIP_MDS_1M`): a milter
    /// may set them; they only raise what it may send, which
    /// [`super::MAX_PACKET`] already allows.
    pub const MDS: u32 = 0x3000_0000;
    /// What we offer: every skip and no-reply step, SKIP and the
    /// leading-space form of headers. Not offered: `SMFIP_RCPT_REJ`
    /// (a refused recipient is not shown to milters) and the unknown
    /// command event (never sent).
    pub const OFFERED: u32 = NOCONNECT
        | NOHELO
        | NOMAIL
        | NORCPT
        | NOBODY
        | NOHDRS
        | NOEOH
        | NR_HDR
        | NOUNKNOWN
        | NODATA
        | SKIP
        | NR_CONN
        | NR_HELO
        | NR_MAIL
        | NR_RCPT
        | NR_DATA
        | NR_UNKN
        | NR_EOH
        | NR_BODY
        | HDR_LEADSPC;
}

/// One event of the conversation: which command carries it, the step
/// flag that says "do not send it" and the one that says "no reply".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    Eom,
}

impl Event {
    pub fn command(self) -> u8 {
        match self {
            Event::Connect => cmd::CONNECT,
            Event::Helo => cmd::HELO,
            Event::Mail => cmd::MAIL,
            Event::Rcpt => cmd::RCPT,
            Event::Data => cmd::DATA,
            Event::Header => cmd::HEADER,
            Event::Eoh => cmd::EOH,
            Event::Body => cmd::BODY,
            Event::Eom => cmd::BODYEOB,
        }
    }

    /// The `SMFIM_*` stage whose macros precede the event, if any.
    pub fn macro_stage(self) -> Option<u32> {
        match self {
            Event::Connect => Some(0),
            Event::Helo => Some(1),
            Event::Mail => Some(2),
            Event::Rcpt => Some(3),
            Event::Data => Some(4),
            Event::Eom => Some(5),
            Event::Eoh => Some(6),
            Event::Header | Event::Body => None,
        }
    }

    /// The `SMFIP_NO*` flag of the event (end of message has none).
    pub fn not_wanted(self) -> u32 {
        match self {
            Event::Connect => step::NOCONNECT,
            Event::Helo => step::NOHELO,
            Event::Mail => step::NOMAIL,
            Event::Rcpt => step::NORCPT,
            Event::Data => step::NODATA,
            Event::Header => step::NOHDRS,
            Event::Eoh => step::NOEOH,
            Event::Body => step::NOBODY,
            Event::Eom => 0,
        }
    }

    /// The `SMFIP_NR_*` flag of the event (end of message has none).
    pub fn no_reply(self) -> u32 {
        match self {
            Event::Connect => step::NR_CONN,
            Event::Helo => step::NR_HELO,
            Event::Mail => step::NR_MAIL,
            Event::Rcpt => step::NR_RCPT,
            Event::Data => step::NR_DATA,
            Event::Header => step::NR_HDR,
            Event::Eoh => step::NR_EOH,
            Event::Body => step::NR_BODY,
            Event::Eom => 0,
        }
    }

    /// Connect and HELO concern the connection; the others the message
    /// (libmilter's "connection-oriented" and "message-oriented"
    /// callbacks, which differ in what ACCEPT and DISCARD mean).
    pub fn is_message(self) -> bool {
        !matches!(self, Event::Connect | Event::Helo)
    }

    pub fn name(self) -> &'static str {
        match self {
            Event::Connect => "connect",
            Event::Helo => "helo",
            Event::Mail => "mail",
            Event::Rcpt => "rcpt",
            Event::Data => "data",
            Event::Header => "header",
            Event::Eoh => "eoh",
            Event::Body => "body",
            Event::Eom => "eom",
        }
    }
}

/// A packet: length, command, data.
pub fn packet(command: u8, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + data.len());
    p.extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
    p.push(command);
    p.extend_from_slice(data);
    p
}

/// NUL-terminated strings, one after another.
fn strings<S: AsRef<[u8]>>(items: &[S]) -> Vec<u8> {
    let mut d = Vec::new();
    for s in items {
        // a NUL inside a string would end it early on the other side
        d.extend(s.as_ref().iter().map(|&b| if b == 0 { b' ' } else { b }));
        d.push(0);
    }
    d
}

/// `SMFIC_OPTNEG`: our version, the actions and the steps we offer.
pub fn optneg(actions: u32, steps: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&VERSION.to_be_bytes());
    d.extend_from_slice(&actions.to_be_bytes());
    d.extend_from_slice(&steps.to_be_bytes());
    packet(cmd::OPTNEG, &d)
}

/// `SMFIC_MACRO`: the macros of the event `command` that follows.
pub fn macros(command: u8, pairs: &[(&str, String)]) -> Vec<u8> {
    let mut d = vec![command];
    for (name, value) in pairs {
        d.extend(strings(&[name.as_bytes(), value.as_bytes()]));
    }
    packet(cmd::MACRO, &d)
}

/// `SMFIC_CONNECT`: the client's name, family, port and address.
pub fn connect(name: &str, client: Option<SocketAddr>) -> Vec<u8> {
    let mut d = strings(&[name]);
    match client {
        Some(a) => {
            d.push(if a.is_ipv4() { b'4' } else { b'6' });
            d.extend_from_slice(&a.port().to_be_bytes());
            d.extend(strings(&[a.ip().to_string()]));
        }
        None => d.push(b'U'),
    }
    packet(cmd::CONNECT, &d)
}

/// `SMFIC_HELO`, `SMFIC_MAIL`, `SMFIC_RCPT`: NUL-terminated arguments
/// (for MAIL and RCPT the address in `<>`, then the ESMTP parameters).
pub fn args(command: u8, items: &[String]) -> Vec<u8> {
    packet(command, &strings(items))
}

/// `SMFIC_HEADER`: name and value.
pub fn header(name: &[u8], value: &[u8]) -> Vec<u8> {
    packet(cmd::HEADER, &strings(&[name, value]))
}

/// Why a milter's words were not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garbage(pub String);

impl std::fmt::Display for Garbage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a milter may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    OptNeg {
        version: u32,
        actions: u32,
        steps: u32,
        /// The macro lists it asks for, per stage (`SMFIM_*`, 0 to 6):
        /// the names as written, `{mail_addr}` or `i`.
        macro_lists: Vec<(u32, Vec<String>)>,
    },
    Accept,
    Continue,
    Reject,
    Tempfail,
    Discard,
    Skip,
    Progress,
    /// `SMFIR_REPLYCODE`: a 4xx/5xx reply, as the milter wrote it.
    ReplyCode(String),
    /// `SMFIR_SHUTDOWN` and `SMFIR_CONN_FAIL`: 421, and the session ends.
    Shutdown,
    AddHeader {
        name: Vec<u8>,
        value: Vec<u8>,
    },
    InsHeader {
        index: u32,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    ChgHeader {
        index: u32,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    ChgFrom {
        sender: String,
        args: Option<String>,
    },
    AddRcpt {
        rcpt: String,
        args: Option<String>,
    },
    DelRcpt(String),
    ReplBody(Vec<u8>),
    Quarantine(String),
}

impl Response {
    /// The modification's `SMFIF_*` action, which it needs to have been
    /// negotiated; 0 for responses that are not modifications.
    pub fn action(&self) -> u32 {
        match self {
            Response::AddHeader { .. } => act::ADDHDRS,
            Response::InsHeader { .. } | Response::ChgHeader { .. } => act::CHGHDRS,
            Response::ChgFrom { .. } => act::CHGFROM,
            Response::AddRcpt { args: None, .. } => act::ADDRCPT,
            Response::AddRcpt { args: Some(_), .. } => act::ADDRCPT_PAR,
            Response::DelRcpt(_) => act::DELRCPT,
            Response::ReplBody(_) => act::CHGBODY,
            Response::Quarantine(_) => act::QUARANTINE,
            _ => 0,
        }
    }
}

/// The stages a milter may ask macros for (libmilter's `SMFIM_CONNECT`
/// to `SMFIM_EOH`).
pub const MACRO_STAGES: u32 = 7;

/// The macro lists after the option negotiation's three numbers
/// (libmilter's `smfi_setsymlist`, sent with `SMFIF_SETSYMLIST`): each a
/// stage number, then one NUL-terminated string of names separated by
/// spaces.
fn macro_lists(mut data: &[u8]) -> Result<Vec<(u32, Vec<String>)>, Garbage> {
    let mut lists = Vec::new();
    while !data.is_empty() {
        let stage = be32(data)?;
        if stage >= MACRO_STAGES {
            return Err(Garbage(format!("macro list for stage {stage}")));
        }
        let rest = &data[4..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| Garbage("macro list not NUL-terminated".into()))?;
        let names = text(&rest[..end])?
            .split_whitespace()
            .map(str::to_string)
            .collect();
        lists.push((stage, names));
        data = &rest[end + 1..];
    }
    Ok(lists)
}

/// Splits NUL-terminated strings; the data must end with a NUL.
fn split_strings(data: &[u8]) -> Result<Vec<&[u8]>, Garbage> {
    let Some(body) = data.strip_suffix(&[0]) else {
        return Err(Garbage("string not NUL-terminated".into()));
    };
    Ok(body.split(|&b| b == 0).collect())
}

fn text(b: &[u8]) -> Result<String, Garbage> {
    String::from_utf8(b.to_vec()).map_err(|_| Garbage("string not UTF-8".into()))
}

fn be32(data: &[u8]) -> Result<u32, Garbage> {
    data.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| Garbage("packet too short for a number".into()))
}

/// Exactly `n` strings (`opt`: and optionally one more).
fn n_strings(data: &[u8], n: usize, opt: bool) -> Result<Vec<&[u8]>, Garbage> {
    let s = split_strings(data)?;
    if s.len() == n || (opt && s.len() == n + 1) {
        Ok(s)
    } else {
        Err(Garbage(format!("expected {n} strings, got {}", s.len())))
    }
}

/// Reads a milter's packet (command octet and data).
pub fn parse(command: u8, data: &[u8]) -> Result<Response, Garbage> {
    let empty = |r: Response| {
        if data.is_empty() {
            Ok(r)
        } else {
            Err(Garbage(format!("'{}' with data", command as char)))
        }
    };
    match command {
        b'O' => {
            if data.len() < 12 {
                return Err(Garbage("option negotiation too short".into()));
            }
            Ok(Response::OptNeg {
                version: be32(data)?,
                actions: be32(&data[4..])?,
                steps: be32(&data[8..])?,
                macro_lists: macro_lists(&data[12..])?,
            })
        }
        b'a' => empty(Response::Accept),
        b'c' => empty(Response::Continue),
        b'r' => empty(Response::Reject),
        b't' => empty(Response::Tempfail),
        b'd' => empty(Response::Discard),
        b's' => empty(Response::Skip),
        b'p' => empty(Response::Progress),
        b'4' | b'f' => Ok(Response::Shutdown),
        b'y' => Ok(Response::ReplyCode(text(n_strings(data, 1, false)?[0])?)),
        b'h' => {
            let s = n_strings(data, 2, false)?;
            Ok(Response::AddHeader {
                name: s[0].to_vec(),
                value: s[1].to_vec(),
            })
        }
        b'i' | b'm' => {
            let index = be32(data)?;
            let s = n_strings(&data[4..], 2, false)?;
            let (name, value) = (s[0].to_vec(), s[1].to_vec());
            Ok(if command == b'i' {
                Response::InsHeader { index, name, value }
            } else {
                Response::ChgHeader { index, name, value }
            })
        }
        b'e' | b'2' | b'+' => {
            let s = n_strings(data, 1, command != b'+')?;
            let first = text(s[0])?;
            let args = s.get(1).map(|a| text(a)).transpose()?;
            Ok(if command == b'e' {
                Response::ChgFrom {
                    sender: first,
                    args,
                }
            } else {
                Response::AddRcpt {
                    rcpt: first,
                    args: Some(args.unwrap_or_default()).filter(|_| command == b'2'),
                }
            })
        }
        b'-' => Ok(Response::DelRcpt(text(n_strings(data, 1, false)?[0])?)),
        b'b' => Ok(Response::ReplBody(data.to_vec())),
        b'q' => Ok(Response::Quarantine(text(n_strings(data, 1, false)?[0])?)),
        other => Err(Garbage(format!("unknown response 0x{other:02x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_carry_length_command_and_nul_terminated_strings() {
        assert_eq!(packet(b'A', b""), vec![0, 0, 0, 1, b'A']);
        assert_eq!(
            args(cmd::MAIL, &["<a@b>".into(), "SIZE=5".into()]),
            b"\0\0\0\x0eM<a@b>\0SIZE=5\0".to_vec()
        );
        // a NUL inside a value cannot cut it short
        assert_eq!(header(b"X", b"a\0b"), b"\0\0\0\x07LX\0a b\0".to_vec());
        assert_eq!(
            optneg(act::ALL, step::OFFERED),
            [
                &[0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 1, 0xff][..],
                &0x1F_F7FFu32.to_be_bytes()
            ]
            .concat()
        );
        assert_eq!(
            macros(cmd::MAIL, &[("{mail_addr}", "a@b".into())]),
            b"\0\0\0\x12DM{mail_addr}\0a@b\0".to_vec()
        );
    }

    #[test]
    fn connect_names_family_port_and_address() {
        let a: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        assert_eq!(
            connect("host.test", Some(a)),
            b"\0\0\0\x18Chost.test\x004\x09\xdd127.0.0.1\0".to_vec()
        );
        let v6: SocketAddr = "[::1]:25".parse().unwrap();
        assert_eq!(&connect("h", Some(v6))[7..], b"6\0\x19::1\0");
        assert_eq!(&connect("h", None)[5..], b"h\0U");
    }

    #[test]
    fn responses_parse() {
        assert_eq!(parse(b'c', b""), Ok(Response::Continue));
        assert_eq!(parse(b'a', b""), Ok(Response::Accept));
        assert!(parse(b'a', b"x").is_err(), "accept carries no data");
        assert_eq!(
            parse(b'y', b"550 5.7.1 no\0"),
            Ok(Response::ReplyCode("550 5.7.1 no".into()))
        );
        assert_eq!(
            parse(b'h', b"X-A\0v\0"),
            Ok(Response::AddHeader {
                name: b"X-A".to_vec(),
                value: b"v".to_vec()
            })
        );
        assert_eq!(
            parse(b'm', b"\0\0\0\x02Subject\0\0"),
            Ok(Response::ChgHeader {
                index: 2,
                name: b"Subject".to_vec(),
                value: vec![]
            })
        );
        assert_eq!(
            parse(b'i', b"\0\0\0\0X\0y\0"),
            Ok(Response::InsHeader {
                index: 0,
                name: b"X".to_vec(),
                value: b"y".to_vec()
            })
        );
        assert_eq!(
            parse(b'e', b"<n@x>\0"),
            Ok(Response::ChgFrom {
                sender: "<n@x>".into(),
                args: None
            })
        );
        assert_eq!(
            parse(b'2', b"<r@x>\0NOTIFY=NEVER\0"),
            Ok(Response::AddRcpt {
                rcpt: "<r@x>".into(),
                args: Some("NOTIFY=NEVER".into())
            })
        );
        let add = parse(b'+', b"<r@x>\0").unwrap();
        assert_eq!(add.action(), act::ADDRCPT);
        assert_eq!(
            parse(b'-', b"<r@x>\0"),
            Ok(Response::DelRcpt("<r@x>".into()))
        );
        assert_eq!(
            parse(b'b', b"new\r\n"),
            Ok(Response::ReplBody(b"new\r\n".to_vec()))
        );
        assert_eq!(
            parse(b'q', b"spam\0"),
            Ok(Response::Quarantine("spam".into()))
        );
        assert_eq!(
            parse(b'O', &[0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0x80]),
            Ok(Response::OptNeg {
                version: 6,
                actions: 1,
                steps: 0x80,
                macro_lists: Vec::new(),
            })
        );
        let mut asked = vec![0, 0, 0, 6, 0, 0, 1, 0, 0, 0, 0, 0];
        asked.extend_from_slice(b"\0\0\0\x02{mail_addr} {auth_type}\0\0\0\0\x05i\0");
        assert_eq!(
            parse(b'O', &asked),
            Ok(Response::OptNeg {
                version: 6,
                actions: 0x100,
                steps: 0,
                macro_lists: vec![
                    (2, vec!["{mail_addr}".into(), "{auth_type}".into()]),
                    (5, vec!["i".into()])
                ],
            })
        );
        assert!(parse(b'O', &[&asked[..12], b"\0\0\0\x07i\0"].concat()).is_err());
        assert!(parse(b'O', &[&asked[..12], b"\0\0\0\x01i"].concat()).is_err());
    }

    #[test]
    fn garbage_is_named() {
        assert!(parse(b'Z', b"").is_err());
        assert!(parse(b'h', b"X\0v").is_err(), "unterminated");
        assert!(parse(b'h', b"X\0").is_err(), "one string short");
        assert!(parse(b'm', b"\0\0").is_err(), "no index");
        assert!(parse(b'O', b"\0\0\0\x06").is_err());
        assert!(parse(b'y', b"\xff\0").is_err(), "not UTF-8");
    }
}
