//! Delivery status notifications (RFC 3464) sent back to the reverse-path.
//!
//! A DSN is an ordinary message queued from the null sender `<>` (RFC 5321
//! §4.5.5), so it is delivered, retried and recovered like any other. A
//! message whose reverse-path is already null never gets one: that is how
//! bounce loops are avoided (RFC 5321 §4.5.5, §6.1).
//!
//! The sender's RFC 3461 requests are honoured here: NOTIFY decides which
//! recipients a failure, delay or success report names (none: no DSN),
//! RET whether a failure returns the headers or the whole message, and
//! ENVID and ORCPT come back as Original-Envelope-Id and
//! Original-Recipient.

use std::io::{self, BufRead, BufReader, Write};

use crate::smtp::command::xtext_decode;
use crate::smtp::{Enhanced, Notify, Path, Ret, ReversePath};
use crate::spool::{Body, Claim, Envelope, QueueId, RcptState, Recipient, SpoolError};
use crate::time::rfc5322_date;

/// RFC 3464 §2.3.3 Action values we report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    /// RFC 3461 §5.2.2 / RFC 3464 §2.3.3: relayed to a server that does
    /// not support DSN, so no further report will come. A relay cannot say
    /// `delivered` (that is the final mailbox's word); `relayed` is what
    /// the RFC prescribes for NOTIFY=SUCCESS at a non-DSN next hop.
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
        }
    }

    /// RFC 3461 §4.1: whether a recipient's NOTIFY asks for this report.
    /// Without NOTIFY, failures and delays are reported (the traditional
    /// behaviour §4.1 allows), successes are not.
    pub fn wanted_by(self, notify: Option<Notify>) -> bool {
        match (self, notify) {
            (Action::Relayed, n) => n.is_some_and(|n| n.success),
            (_, None) => true,
            (Action::Failed, Some(n)) => n.failure,
            (Action::Delayed, Some(n)) => n.delay,
        }
    }
}

/// What the DSN says about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptReport {
    pub rcpt: Path,
    pub action: Action,
    pub status: Enhanced,
    /// The host that answered, if any (`Remote-MTA: dns; NAME`).
    pub remote_mta: Option<String>,
    /// The reply or local error, `smtp; 550 5.1.1 ...` when from a server.
    pub diagnostic: String,
    /// RFC 3461 NOTIFY of the recipient.
    pub notify: Option<Notify>,
    /// RFC 3461 ORCPT (`addr-type;xtext`), for Original-Recipient.
    pub orcpt: Option<String>,
}

/// A report for a recipient from its typed last status (RFC 3464 §2.3.4
/// Status, §2.3.5 Remote-MTA, §2.3.6 Diagnostic-Code).
pub fn report_for(r: &Recipient, action: Action) -> RcptReport {
    let (status, remote_mta, diagnostic) = match &r.last_reply {
        Some(st) => (
            st.dsn_code(),
            st.remote_mta().map(str::to_string),
            st.diagnostic(),
        ),
        None => (
            match action {
                Action::Failed => Enhanced::new(5, 0, 0),
                Action::Delayed => Enhanced::new(4, 0, 0),
                Action::Relayed => Enhanced::new(2, 0, 0),
            },
            None,
            "X-smtp-relay; no reply recorded".to_string(),
        ),
    };
    RcptReport {
        rcpt: r.path.clone(),
        action,
        status,
        remote_mta,
        diagnostic,
        notify: r.dsn.notify,
        orcpt: r.dsn.orcpt.clone(),
    }
}

/// RFC 3464 fields are ASCII lines: anything else is replaced.
pub(crate) fn ascii_field(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// RFC 6533 §3 utf-8-addr-xtext: printable ASCII except `+`, `=` and `\`
/// as is, everything else as `\x{HEX}`, so the field stays 7-bit.
fn utf8_addr_xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    out
}

/// What of the original message a DSN returns (RFC 3462 §3, RFC 3461
/// §4.3).
#[derive(Debug, Clone, Copy)]
pub enum Returned<'a> {
    /// The header section, as `text/rfc822-headers`.
    Headers(&'a [u8]),
    /// The whole message, as `message/rfc822` (RET=FULL on a failure).
    Full(&'a [u8]),
}

/// Builds the DSN message.
pub fn compose(
    hostname: &str,
    id: QueueId,
    env: &Envelope,
    reports: &[RcptReport],
    returned: Returned,
    now: u64,
) -> Vec<u8> {
    let boundary = format!("{id}/{hostname}");
    let failed = reports.iter().any(|r| r.action == Action::Failed);
    let relayed = reports.iter().all(|r| r.action == Action::Relayed);
    let headers = match returned {
        Returned::Headers(h) | Returned::Full(h) => h,
    };
    let sender = env
        .from
        .mailbox()
        .map(|m| m.to_string())
        .unwrap_or_default();
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if relayed {
        "Successful Mail Relay Report"
    } else {
        "Delayed Mail (still being retried)"
    };
    let mut m = Vec::with_capacity(2048 + headers.len());
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         Content-Description: Notification\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\
         \r\n",
        date = rfc5322_date(now),
    );
    if failed {
        let _ = write!(
            m,
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. The details follow.\r\n\r\n"
        );
    } else if relayed {
        let _ = write!(
            m,
            "Your message was passed on to a mail server that does not send\r\n\
             delivery notifications, so this is the last report about it.\r\n\r\n"
        );
    } else {
        let _ = write!(
            m,
            "Your message could not be delivered yet. It is still being\r\n\
             retried; you need not send it again.\r\n\r\n"
        );
    }
    for r in reports {
        let _ = write!(
            m,
            "<{}>: {} ({})\r\n",
            ascii_field(&r.rcpt.mailbox().to_string()),
            ascii_field(&r.diagnostic),
            r.action.as_str()
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         Content-Description: Delivery report\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n",
    );
    // RFC 3464 §2.2.1, RFC 3461 §4.4: the ENVID, decoded from xtext
    if let Some(envid) = env.dsn.envid.as_deref().and_then(xtext_decode) {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", ascii_field(&envid));
    }
    let _ = write!(
        m,
        "X-Queue-ID: {orig}\r\n\
         Arrival-Date: {arrival}\r\n",
        orig = env.id,
        arrival = rfc5322_date(env.arrived),
    );
    for r in reports {
        // RFC 3464 §2.3.2 / RFC 6533: rfc822 for ASCII addresses, utf-8 otherwise
        let mailbox = r.rcpt.mailbox().to_string();
        let (kind, addr) = if mailbox.is_ascii() {
            ("rfc822", ascii_field(&mailbox))
        } else {
            ("utf-8", utf8_addr_xtext(&mailbox))
        };
        let _ = write!(m, "\r\n");
        // RFC 3464 §2.3.1 / RFC 3461 §4.2: the ORCPT as the client gave it
        if let Some((kind, addr)) = r.orcpt.as_deref().and_then(|o| o.split_once(';')) {
            if let Some(addr) = xtext_decode(addr) {
                let _ = write!(
                    m,
                    "Original-Recipient: {}; {}\r\n",
                    ascii_field(kind),
                    ascii_field(&addr)
                );
            }
        }
        let _ = write!(
            m,
            "Final-Recipient: {kind}; {addr}\r\nAction: {}\r\nStatus: {}\r\n",
            r.action.as_str(),
            r.status
        );
        if let Some(mta) = &r.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", ascii_field(mta));
        }
        let _ = write!(
            m,
            "Diagnostic-Code: {}\r\nLast-Attempt-Date: {}\r\n",
            ascii_field(&r.diagnostic),
            rfc5322_date(now)
        );
    }
    let (kind, what) = match returned {
        Returned::Full(_) => ("message/rfc822", "Undelivered Message"),
        Returned::Headers(_) if failed => ("text/rfc822-headers", "Undelivered Message Headers"),
        Returned::Headers(_) => ("text/rfc822-headers", "Message Headers"),
    };
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: {kind}\r\n\
         Content-Description: {what}\r\n\
         \r\n"
    );
    m.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        m.extend_from_slice(b"\r\n");
    }
    let _ = write!(m, "\r\n--{boundary}--\r\n");
    m
}

/// Most header bytes returned in a DSN.
const MAX_RETURNED_HEADERS: usize = 64 * 1024;

/// Largest message returned whole for RET=FULL; a bigger one comes back
/// as headers only (RFC 3461 §4.3 leaves truncation to the MTA).
const MAX_RETURNED_MESSAGE: u64 = 4 * 1024 * 1024;

/// The whole stored message, when RET=FULL asks and it is not too big.
fn read_full(body: Body) -> io::Result<Option<Vec<u8>>> {
    if body.len()? > MAX_RETURNED_MESSAGE {
        return Ok(None);
    }
    let mut out = Vec::new();
    io::Read::read_to_end(
        &mut io::Read::take(body, MAX_RETURNED_MESSAGE + 1),
        &mut out,
    )?;
    Ok(Some(out))
}

/// The header section of a stored message (up to the blank line).
pub fn read_headers(body: Body) -> io::Result<Vec<u8>> {
    let mut r = BufReader::new(body);
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line == b"\r\n" || line == b"\n" {
            break;
        }
        if out.len() + line.len() > MAX_RETURNED_HEADERS {
            break;
        }
        out.extend_from_slice(&line);
    }
    Ok(out)
}

/// A failure report for each recipient that is bouncing.
fn bouncing_reports(env: &Envelope) -> Vec<RcptReport> {
    env.rcpts
        .iter()
        .filter(|r| r.state == RcptState::Bouncing)
        .map(|r| report_for(r, Action::Failed))
        .collect()
}

/// The `client` of a double bounce's envelope: its own failure is
/// dropped and logged, never reported again (no loop).
pub const DOUBLE_BOUNCE_CLIENT: &str = "local-double-bounce";

/// A message from the null sender (a DSN, ours or relayed) failed for
/// good: its failed recipients are reported to the postmaster instead
/// (Postfix's double bounce), once. A failed double bounce, or one with
/// no postmaster address, is logged and dropped. Call before
/// `report_bouncing`, which marks the recipients failed.
pub fn double_bounce(
    original: &Claim,
    hostname: &str,
    postmaster: Option<&Path>,
    env: &Envelope,
    now: u64,
    notify: Option<&crossbeam_channel::Sender<QueueId>>,
) -> Result<Option<QueueId>, SpoolError> {
    let reports = bouncing_reports(env);
    if !env.from.is_null() || reports.is_empty() {
        return Ok(None);
    }
    let Some(postmaster) = postmaster.filter(|_| env.client != DOUBLE_BOUNCE_CLIENT) else {
        log::info!(
            "{} undeliverable double bounce dropped: {} recipient(s) failed",
            env.id,
            reports.len()
        );
        return Ok(None);
    };
    let mut to_postmaster = env.clone();
    to_postmaster.from = ReversePath::Path(postmaster.clone());
    let id = enqueue_as(
        original,
        hostname,
        &to_postmaster,
        &reports,
        now,
        DOUBLE_BOUNCE_CLIENT,
    )?;
    if let Some(id) = id {
        log::info!("{} double bounce {id} to the postmaster", env.id);
        if let Some(tx) = notify {
            let _ = tx.try_send(id);
        }
    }
    Ok(id)
}

/// Queues a DSN for `reports` to the sender of `env`, the message held
/// by `original`. Returns `None` (and logs) when the sender is null:
/// never bounce a bounce.
pub fn enqueue(
    original: &Claim,
    hostname: &str,
    env: &Envelope,
    reports: &[RcptReport],
    now: u64,
) -> Result<Option<QueueId>, SpoolError> {
    enqueue_as(original, hostname, env, reports, now, "local")
}

fn enqueue_as(
    original: &Claim,
    hostname: &str,
    env: &Envelope,
    reports: &[RcptReport],
    now: u64,
    client: &str,
) -> Result<Option<QueueId>, SpoolError> {
    let ReversePath::Path(sender) = &env.from else {
        log::info!(
            "{} no DSN for {} recipient(s): the sender is null <>",
            env.id,
            reports.len()
        );
        return Ok(None);
    };
    // RFC 3461 §4.1: only the recipients whose NOTIFY asks for it
    let (reports, unwanted): (Vec<RcptReport>, Vec<RcptReport>) = reports
        .iter()
        .cloned()
        .partition(|r| r.action.wanted_by(r.notify));
    if !unwanted.is_empty() {
        log::info!(
            "{} no DSN for {} recipient(s): their NOTIFY does not ask for it",
            env.id,
            unwanted.len()
        );
    }
    if reports.is_empty() {
        return Ok(None);
    }
    let reports = &reports[..];
    let spool = original.spool();
    let headers = read_headers(original.body()).unwrap_or_else(|e| {
        log::warn!("{} original headers unreadable for the DSN: {e}", env.id);
        Vec::new()
    });
    // RFC 3461 §4.3: RET=FULL returns the message with a failure report
    let failed = reports.iter().any(|r| r.action == Action::Failed);
    // RFC 8689 §5: a report on a REQUIRETLS message returns its headers
    // only, so the content never travels where the sender forbade it
    let full = if failed && env.dsn.ret == Some(Ret::Full) && !env.requiretls {
        read_full(original.body()).unwrap_or_else(|e| {
            log::warn!("{} original message unreadable for the DSN: {e}", env.id);
            None
        })
    } else {
        None
    };
    let returned = match &full {
        Some(m) => Returned::Full(m),
        None => Returned::Headers(&headers),
    };
    let mut incoming = spool.incoming()?;
    let id = incoming.id();
    let body = compose(hostname, id, env, reports, returned, now);
    incoming
        .write_all(&body)
        .map_err(|e| SpoolError::io(spool.tmp_dir(), e))?;
    let eight_bit = body.iter().any(|&b| b >= 0x80);
    let to = sender.without_route();
    let dsn = Envelope {
        id,
        arrived: now,
        client: client.into(),
        helo: hostname.to_string(),
        auth: None,
        from: ReversePath::Null,
        size: body.len() as u64,
        body: eight_bit.then_some(crate::smtp::Body::EightBitMime),
        smtputf8: to.mailbox().is_utf8(),
        // RFC 8689 §5: the report on a REQUIRETLS message is one too
        requiretls: env.requiretls,
        attempts: 0,
        next_try: now,
        integrity: None,
        hold: None,
        dsn: Default::default(),
        rcpts: vec![Recipient::new(to, Default::default())],
        hold_reason: None,
        delay_warned: None,
    };
    let id = incoming.commit(&dsn)?;
    let what = if failed {
        "non-delivery"
    } else if reports[0].action == Action::Relayed {
        "relay (success)"
    } else {
        "delay"
    };
    crate::metrics::dsn(if failed {
        crate::metrics::Dsn::Failure
    } else if reports[0].action == Action::Relayed {
        crate::metrics::Dsn::Success
    } else {
        crate::metrics::Dsn::Delay
    });
    log::info!(
        "{} sender {what} notification: {id} to={}",
        env.id,
        crate::smtp::Escaped(&sender.mailbox().to_string())
    );
    Ok(Some(id))
}

/// RFC 3461 §5.2.2: recipients (by index) just relayed to a next hop
/// without DSN support get a `relayed` report when their NOTIFY has
/// SUCCESS. Queued before the envelope records them as sent, so a crash
/// in between repeats the report rather than losing it.
pub fn report_relayed(
    original: &Claim,
    hostname: &str,
    env: &Envelope,
    relayed: &[usize],
    now: u64,
    notify: Option<&crossbeam_channel::Sender<QueueId>>,
) -> Result<Option<QueueId>, SpoolError> {
    let reports: Vec<RcptReport> = relayed
        .iter()
        .filter_map(|&i| env.rcpts.get(i))
        .filter(|r| Action::Relayed.wanted_by(r.dsn.notify))
        .map(|r| report_for(r, Action::Relayed))
        .collect();
    if reports.is_empty() {
        return Ok(None);
    }
    let dsn = enqueue(original, hostname, env, &reports, now)?;
    if let (Some(id), Some(tx)) = (dsn, notify) {
        let _ = tx.try_send(id);
    }
    Ok(dsn)
}

/// Queues one DSN for every `bouncing` recipient of `env`, then marks them
/// `failed` and stores the envelope. The order matters for crash safety:
/// a crash after the DSN is queued but before the envelope is stored sends
/// the DSN twice, never zero times.
pub fn report_bouncing(
    original: &Claim,
    hostname: &str,
    env: &mut Envelope,
    now: u64,
    notify: Option<&crossbeam_channel::Sender<QueueId>>,
) -> Result<Option<QueueId>, SpoolError> {
    let reports = bouncing_reports(env);
    if reports.is_empty() {
        return Ok(None);
    }
    let dsn = enqueue(original, hostname, env, &reports, now)?;
    if let (Some(id), Some(tx)) = (dsn, notify) {
        let _ = tx.try_send(id);
    }
    crate::delivery::outcome::failure_reported(env);
    original.store(env)?;
    Ok(dsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext() {
        assert_eq!(
            utf8_addr_xtext("jos\u{e9}+x@d.example"),
            "jos\\x{E9}\\x{2B}x@d.example"
        );
    }

    #[test]
    fn dsn_shape() {
        let env = Envelope {
            id: QueueId::parse("0006464A1B2C3D4E").unwrap(),
            arrived: 1_795_886_410,
            client: "127.0.0.1".into(),
            helo: "c".into(),
            auth: None,
            from: ReversePath::parse("<s@a.example>", false).unwrap(),
            size: 10,
            body: None,
            smtputf8: false,
            requiretls: false,
            attempts: 1,
            integrity: None,
            next_try: 0,
            hold: None,
            dsn: Default::default(),
            rcpts: vec![],
            hold_reason: None,
            delay_warned: None,
        };
        let report = RcptReport {
            rcpt: Path::parse("<u@b.example>", false).unwrap(),
            action: Action::Failed,
            status: Enhanced::new(5, 1, 1),
            remote_mta: Some("mx.b.example".into()),
            diagnostic: "smtp; 550 5.1.1 no such user".into(),
            notify: None,
            orcpt: None,
        };
        let id = QueueId::parse("0006464A1B2C3D4F").unwrap();
        let m = String::from_utf8(compose(
            "relay.test",
            id,
            &env,
            &[report],
            Returned::Headers(b"Subject: hi\r\n"),
            1_795_886_500,
        ))
        .unwrap();
        for needle in [
            "To: <s@a.example>\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\nReporting-MTA: dns; relay.test\r\n",
            "Arrival-Date: Sat, 28 Nov 2026 17:20:10 +0000\r\n",
            "\r\nFinal-Recipient: rfc822; u@b.example\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.b.example\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n",
            "Content-Type: text/rfc822-headers\r\nContent-Description: Undelivered Message Headers\r\n\r\nSubject: hi\r\n",
            "--0006464A1B2C3D4F/relay.test--\r\n",
        ] {
            assert!(m.contains(needle), "missing {needle:?} in\n{m}");
        }
        assert!(
            !m.contains("\n\n") && !m.replace("\r\n", "").contains('\n'),
            "CRLF only"
        );
    }
}
