//! Raw SMTP against the real binary: the dialogue, every reply of the
//! README's table, what lands in the spool, and the command line.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::*;

const BODY: &[u8] = b"Subject: test\r\n\r\nHello.\r\n";

/// The stored message after our Received header.
fn stored_data(spool: &std::path::Path, id: &str) -> Vec<u8> {
    split_received(&read_msg(spool, id)).1
}

fn assert_nothing_stored(relay: &Relay) {
    assert!(
        queued_ids(relay.spool()).is_empty(),
        "queue should be empty: {:?}",
        queue_files(relay.spool())
    );
    assert!(
        queue_files(relay.spool()).is_empty(),
        "queue/ should hold no file: {:?}",
        queue_files(relay.spool())
    );
    assert_eq!(
        tmp_files(relay.spool()),
        Vec::<String>::new(),
        "tmp/ should be empty"
    );
}

// ---------------------------------------------------------------------
// greeting, EHLO, HELO
// ---------------------------------------------------------------------

#[test]
fn greeting_ehlo_and_helo() {
    let relay = Relay::receive_only(&["--max-size", "123456"]);
    let mut t = relay.talk();
    let greeting = t.expect(220);
    assert!(
        greeting.starts_with("relay.test ") && greeting.contains("ESMTP"),
        "greeting {greeting:?}"
    );

    let ehlo = t.cmd("EHLO client.test", 250);
    let lines: Vec<&str> = ehlo.lines().collect();
    assert!(
        lines[0].starts_with("relay.test"),
        "first EHLO line names us: {ehlo:?}"
    );
    for kw in [
        "PIPELINING",
        "SIZE 123456",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
    ] {
        assert!(lines[1..].contains(&kw), "EHLO lacks {kw:?}: {ehlo:?}");
    }
    // not offered without --tls-cert / --auth-file (tests/tls.rs, auth.rs)
    for kw in ["STARTTLS", "AUTH"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(kw)),
            "EHLO offers {kw}: {ehlo:?}"
        );
    }

    // HELO: a single line, and the session works
    let helo = t.cmd("HELO other.test", 250);
    assert!(!helo.contains('\n'), "HELO reply is one line: {helo:?}");
    assert!(helo.starts_with("relay.test"), "{helo:?}");
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    // parameters need EHLO (RFC 5321 §4.1.1.11)
    t.cmd_enh("RSET", 250, "2.0.0");
    t.cmd_enh("MAIL FROM:<a@example.org> SIZE=10", 555, "5.5.4");
    t.cmd_enh("QUIT", 221, "2.0.0");
    t.expect_closed();
}

#[test]
fn default_size_is_advertised() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.talk();
    t.expect(220);
    let ehlo = t.cmd("EHLO client.test", 250);
    assert!(ehlo.lines().any(|l| l == "SIZE 10485760"), "{ehlo:?}");
}

// ---------------------------------------------------------------------
// commands and replies
// ---------------------------------------------------------------------

#[test]
fn commands_out_of_order_get_503() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.talk();
    t.expect(220);
    t.cmd_enh("MAIL FROM:<a@example.org>", 503, "5.5.1");
    t.cmd_enh("RCPT TO:<b@example.net>", 503, "5.5.1");
    t.cmd_enh("DATA", 503, "5.5.1");
    t.cmd("EHLO client.test", 250);
    t.cmd_enh("RCPT TO:<b@example.net>", 503, "5.5.1");
    t.cmd_enh("DATA", 503, "5.5.1");
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("DATA", 503, "5.5.1"); // no recipient yet
    t.cmd_enh("MAIL FROM:<a@example.org>", 503, "5.5.1"); // nested
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("MAIL FROM:<c@example.org>", 503, "5.5.1"); // still nested
                                                          // RSET drops the transaction: DATA has no recipients again
    t.cmd_enh("RSET", 250, "2.0.0");
    t.cmd_enh("DATA", 503, "5.5.1");
    t.cmd_enh("RCPT TO:<b@example.net>", 503, "5.5.1");
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("DATA", 503, "5.5.1");
    // EHLO in the middle resets the transaction as RSET does
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd("EHLO client.test", 250);
    t.cmd_enh("DATA", 503, "5.5.1");
    t.cmd_enh("QUIT", 221, "2.0.0");
    assert_nothing_stored(&relay);
}

#[test]
fn every_other_command_and_reply() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.cmd_enh("FROBNICATE", 500, "5.5.2");
    t.cmd_enh("", 500, "5.5.2");

    // syntax errors carry the expected syntax
    let hint = t.cmd_enh("MAIL FROM:a@example.org", 501, "5.5.4");
    assert!(hint.contains("MAIL FROM:<"), "hint {hint:?}");
    let hint = t.cmd_enh("MAIL TO:<a@example.org>", 501, "5.5.4");
    assert!(hint.contains("MAIL FROM:<"), "hint {hint:?}");
    t.cmd_enh("MAIL FROM:<a@example.org> SIZE=lots", 501, "5.5.4");
    t.cmd_enh("MAIL FROM:<a@example.org> BODY=BINARYMIME", 501, "5.5.4");
    t.cmd_enh("EHLO", 501, "5.5.4");
    t.cmd_enh("DATA now", 501, "5.5.4");
    t.cmd_enh("VRFY", 501, "5.5.4");
    // bad address → 501 5.1.3
    t.cmd_enh("MAIL FROM:<a@@example.org>", 501, "5.1.3");
    t.cmd_enh("MAIL FROM:<a@example..org>", 501, "5.1.3");
    // unsupported parameters → 555 5.5.4
    // (RET, NOTIFY ...: tests/dsn.rs; MT-PRIORITY and RRVS are not offered)
    t.cmd_enh("MAIL FROM:<a@example.org> MT-PRIORITY=3", 555, "5.5.4");
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    let hint = t.cmd_enh("RCPT TO:b@example.net", 501, "5.5.4");
    assert!(hint.contains("RCPT TO:<"), "hint {hint:?}");
    t.cmd_enh("RCPT TO:<b@@example.net>", 501, "5.1.3");
    t.cmd_enh(
        "RCPT TO:<b@example.net> RRVS=2030-01-01T00:00:00Z",
        555,
        "5.5.4",
    );
    // RFC 5321 §4.5.1: bare <Postmaster> is accepted (tests/edge.rs
    // follows it to the postmaster address)
    t.cmd_enh("RCPT TO:<Postmaster>", 250, "2.1.5");
    // non-ASCII address without SMTPUTF8
    t.cmd_enh("RCPT TO:<jörg@example.net>", 553, "5.6.7");
    t.cmd_enh("RSET", 250, "2.0.0");

    // a fresh connection: the error counter above is near its limit
    let mut t = relay.session();
    // known but not offered → 502 5.5.1
    for verb in ["STARTTLS", "AUTH PLAIN AGFiYwBkZWY=", "EXPN staff"] {
        t.cmd_enh(verb, 502, "5.5.1");
    }
    let v = t.cmd("VRFY postmaster", 252);
    assert!(v.starts_with("2."), "VRFY has an enhanced code: {v:?}");
    let help = t.cmd_enh("HELP", 214, "2.0.0");
    assert!(help.contains("EHLO") && help.contains("MAIL"), "{help:?}");
    t.cmd_enh("NOOP", 250, "2.0.0");
    t.cmd_enh("NOOP with an ignored argument", 250, "2.0.0");
    t.cmd_enh("RSET", 250, "2.0.0");
    let bye = t.cmd_enh("QUIT", 221, "2.0.0");
    assert!(bye.contains("relay.test"), "{bye:?}");
    t.expect_closed();
    assert_nothing_stored(&relay);
}

#[test]
fn verbs_are_case_insensitive() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.talk();
    t.expect(220);
    t.cmd("eHlO client.test", 250);
    t.cmd_enh("noop", 250, "2.0.0");
    t.cmd_enh("mail from:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("Rcpt To:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("data", 354, "2.0.0");
    t.send_raw(BODY);
    t.send_raw(b".\r\n");
    let text = t.expect_enh(250, "2.0.0");
    let id = queued_id(&text).expect("queue id");
    t.cmd_enh("rset", 250, "2.0.0");
    t.cmd_enh("quit", 221, "2.0.0");
    assert_eq!(queued_ids(relay.spool()), vec![id]);
}

#[test]
fn twenty_errors_close_the_session() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    for _ in 0..20 {
        t.cmd_enh("BOGUS", 500, "5.5.2");
    }
    t.cmd_enh("BOGUS", 421, "4.7.0");
    t.expect_closed();
}

#[test]
fn long_command_lines() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    // exactly 512 octets with CRLF is allowed (RFC 5321 §4.5.3.1.4)
    let ok = format!("NOOP {}", "x".repeat(512 - 2 - 5));
    assert_eq!(ok.len() + 2, 512);
    t.cmd_enh(&ok, 250, "2.0.0");
    // one more is not
    let long = format!("NOOP {}", "x".repeat(512 - 2 - 5 + 1));
    t.cmd_enh(&long, 500, "5.5.2");
    t.cmd_enh("NOOP", 250, "2.0.0");
    // a huge line is discarded as it streams: one 500, then in step
    let huge = format!("MAIL FROM:<{}@example.org>", "a".repeat(200_000));
    t.cmd_enh(&huge, 500, "5.5.2");
    t.cmd_enh("NOOP", 250, "2.0.0");
    // and the session still carries a message
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    t.cmd_enh("QUIT", 221, "2.0.0");
    assert_eq!(queued_ids(relay.spool()), vec![id]);
}

// ---------------------------------------------------------------------
// pipelining and DATA
// ---------------------------------------------------------------------

#[test]
fn pipelined_transaction_and_quit() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.send_raw(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n",
    );
    t.expect_enh(250, "2.1.0");
    t.expect_enh(250, "2.1.5");
    t.expect_enh(250, "2.1.5");
    t.expect_enh(354, "2.0.0");
    let mut rest = BODY.to_vec();
    rest.extend_from_slice(b".\r\nQUIT\r\n");
    t.send_raw(&rest);
    let text = t.expect_enh(250, "2.0.0");
    let id = queued_id(&text).expect("queue id");
    t.expect_enh(221, "2.0.0");
    t.expect_closed();

    assert_eq!(queued_ids(relay.spool()), vec![id.clone()]);
    let env = assert_complete(relay.spool(), &id);
    let rcpts: Vec<String> = env.rcpts().into_iter().map(|r| r.1).collect();
    assert_eq!(rcpts, ["<b@example.net>", "<c@example.net>"]);
    assert_eq!(stored_data(relay.spool(), &id), BODY);
}

#[test]
fn pipelined_group_with_errors_answers_in_order() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.send_raw(
        b"NOOP\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:bad\r\nRCPT TO:<b@example.net>\r\nFROB\r\nRCPT TO:<c@example.net> X=1\r\nDATA\r\n",
    );
    t.expect_enh(250, "2.0.0");
    t.expect_enh(250, "2.1.0");
    t.expect_enh(501, "5.5.4");
    t.expect_enh(250, "2.1.5");
    t.expect_enh(500, "5.5.2");
    t.expect_enh(555, "5.5.4");
    t.expect_enh(354, "2.0.0");
    // two whole messages and QUIT in one write: the second transaction
    // is pipelined after the first one's final dot
    let mut rest = Vec::new();
    rest.extend_from_slice(BODY);
    rest.extend_from_slice(b".\r\nMAIL FROM:<>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n");
    rest.extend_from_slice(b"Subject: second\r\n\r\nx\r\n.\r\nQUIT\r\n");
    t.send_raw(&rest);
    let id1 = queued_id(&t.expect_enh(250, "2.0.0")).expect("first id");
    t.expect_enh(250, "2.1.0");
    t.expect_enh(250, "2.1.5");
    t.expect_enh(354, "2.0.0");
    let id2 = queued_id(&t.expect_enh(250, "2.0.0")).expect("second id");
    t.expect_enh(221, "2.0.0");
    t.expect_closed();
    assert!(id1 < id2, "ids sort by arrival: {id1} {id2}");
    assert_eq!(queued_ids(relay.spool()), vec![id1.clone(), id2.clone()]);
    let e1 = assert_complete(relay.spool(), &id1);
    assert_eq!(e1.rcpts().len(), 1);
    assert_eq!(e1.rcpts()[0].1, "<b@example.net>");
    let e2 = assert_complete(relay.spool(), &id2);
    assert_eq!(e2.get("from"), "<>");
    assert_eq!(
        stored_data(relay.spool(), &id2),
        b"Subject: second\r\n\r\nx\r\n"
    );
}

#[test]
fn dot_transparency() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    // as a client sends it: every line starting with '.' gets one more
    let wire = b"Subject: dots\r\n\r\nfirst\r\n..\r\n..x\r\n...y\r\n. \r\n.\r\n";
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(wire);
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("id");
    assert_eq!(
        String::from_utf8_lossy(&stored_data(relay.spool(), &id)),
        "Subject: dots\r\n\r\nfirst\r\n.\r\n.x\r\n..y\r\n \r\n"
    );
}

#[test]
fn empty_message_and_no_final_newline_in_body() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    let id = t.send_mail("a@example.org", &["b@example.net"], b"");
    assert_eq!(stored_data(relay.spool(), &id), b"");
    assert_complete(relay.spool(), &id);
}

#[test]
fn long_text_lines_are_stored_intact() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    let line998 = "a".repeat(998);
    let line5000: String = (0..5000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let data = format!("Subject: long\r\n\r\n{line998}\r\n{line5000}\r\nend\r\n");
    let id = t.send_mail("a@example.org", &["b@example.net"], data.as_bytes());
    assert_eq!(stored_data(relay.spool(), &id), data.as_bytes());
    assert_complete(relay.spool(), &id);
}

#[test]
fn null_sender() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(b"Subject: bounce\r\n\r\nx\r\n.\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("id");
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(env.get("from"), "<>");
}

#[test]
fn size_limits() {
    let relay = Relay::receive_only(&["--max-size", "1000"]);
    let mut t = relay.session();
    // declared at MAIL
    let text = t.cmd_enh("MAIL FROM:<a@example.org> SIZE=1001", 552, "5.3.4");
    assert!(text.contains("1000"), "names the limit: {text:?}");
    t.cmd_enh(
        "MAIL FROM:<a@example.org> SIZE=99999999999999999999",
        552,
        "5.3.4",
    );
    // exactly the limit is fine
    let exact = {
        let head = b"Subject: s\r\n\r\n".to_vec();
        let mut d = head.clone();
        let fill = 1000 - head.len() - 2;
        d.extend(std::iter::repeat_n(b'x', fill));
        d.extend_from_slice(b"\r\n");
        assert_eq!(d.len(), 1000);
        d
    };
    t.cmd_enh("MAIL FROM:<a@example.org> SIZE=1000", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(&exact);
    t.send_raw(b".\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("id");
    assert_eq!(stored_data(relay.spool(), &id), exact);

    // one octet more, undeclared: 552 after the data, nothing kept
    let mut over = exact.clone();
    over.insert(over.len() - 2, b'y');
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(&over);
    t.send_raw(b".\r\n");
    t.expect_enh(552, "5.3.4");
    // far too big: still read to the end, still refused
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    let big = "0123456789abcdef".repeat(4).repeat(1000);
    for _ in 0..10 {
        t.send_raw(big.as_bytes());
        t.send_raw(b"\r\n");
    }
    t.send_raw(b".\r\n");
    t.expect_enh(552, "5.3.4");
    assert_eq!(queued_ids(relay.spool()), vec![id.clone()]);
    assert_eq!(
        queue_files(relay.spool()).len(),
        2,
        "only the first message"
    );
    assert_eq!(tmp_files(relay.spool()), Vec::<String>::new());
    // the session goes on: the refused transaction is over
    t.cmd_enh("RCPT TO:<b@example.net>", 503, "5.5.1");
    let id2 = t.send_mail("a@example.org", &["b@example.net"], BODY);
    assert_eq!(queued_ids(relay.spool()), vec![id, id2]);
}

#[test]
fn too_many_recipients() {
    let relay = Relay::receive_only(&["--max-recipients", "2"]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<r1@example.net>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<r2@example.net>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<r3@example.net>", 452, "4.5.3");
    t.cmd_enh("RCPT TO:<r4@example.net>", 452, "4.5.3");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(BODY);
    t.send_raw(b".\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("id");
    let env = assert_complete(relay.spool(), &id);
    let rcpts: Vec<String> = env.rcpts().into_iter().map(|r| r.1).collect();
    assert_eq!(rcpts, ["<r1@example.net>", "<r2@example.net>"]);
    // the next transaction starts counting again
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<r3@example.net>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<r4@example.net>", 250, "2.1.5");
}

#[test]
fn duplicate_recipient_is_kept_once() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    let id = t.send_mail(
        "a@example.org",
        &["b@example.net", "c@example.net", "b@example.net"],
        BODY,
    );
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(env.rcpts().len(), 2, "{}", env.text);
}

// ---------------------------------------------------------------------
// relay control
// ---------------------------------------------------------------------

#[test]
fn relay_denied_outside_relay_net() {
    let relay = Relay::receive_only(&[
        "--relay-net",
        "127.0.0.1/32",
        "--relay-domain",
        "dest.example",
    ]);
    let mut t = Talk::connect_from("127.0.0.2", relay.addr());
    t.expect(220);
    t.cmd("EHLO outsider.test", 250);
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<u@elsewhere.example>", 550, "5.7.1");
    // the relay domain is open to anyone, in any case
    t.cmd_enh("RCPT TO:<u@dest.example>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<v@DEST.Example>", 250, "2.1.5");
    // but not its subdomains
    t.cmd_enh("RCPT TO:<u@sub.dest.example>", 550, "5.7.1");
    // the classic relay tests: dest.example appears, but the mailbox's
    // domain is other.example, which is no relay domain
    for rcpt in [
        "<user%dest.example@other.example>",
        "<\"user@dest.example\"@other.example>",
        "<@dest.example:user@other.example>",
        "<@other.example,@dest.example:user@other.example>",
        "<dest.example!user@other.example>",
        "<user@[127.0.0.1]>",
    ] {
        t.cmd_enh(&format!("RCPT TO:{rcpt}"), 550, "5.7.1");
    }
    // forms whose final domain is the relay domain are its own business
    t.cmd_enh("RCPT TO:<user%other.example@dest.example>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<other.example!user@dest.example>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<@other.example:user@dest.example>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(BODY);
    t.send_raw(b".\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("id");
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(env.get("client"), "127.0.0.2");
    assert_eq!(env.get("helo"), "outsider.test");
    let rcpts: Vec<String> = env.rcpts().into_iter().map(|r| r.1).collect();
    assert_eq!(
        rcpts,
        [
            "<u@dest.example>",
            "<v@DEST.Example>",
            "<user%other.example@dest.example>",
            "<other.example!user@dest.example>",
            "<@other.example:user@dest.example>",
        ]
    );

    // the same client inside the relay net may relay anywhere
    let mut inside = relay.session();
    inside.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    inside.cmd_enh("RCPT TO:<u@elsewhere.example>", 250, "2.1.5");
}

#[test]
fn relay_denied_without_relay_domains() {
    let relay = Relay::receive_only(&["--relay-net", "127.0.0.1/32"]);
    let mut t = Talk::connect_from("127.0.0.2", relay.addr());
    t.expect(220);
    t.cmd("EHLO outsider.test", 250);
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    for rcpt in [
        "<u@relay.test>",
        "<user%dest.example@relay.test>",
        "<\"user@dest.example\"@relay.test>",
        "<@relay.test:user@dest.example>",
        "<dest.example!user@relay.test>",
    ] {
        t.cmd_enh(&format!("RCPT TO:{rcpt}"), 550, "5.7.1");
    }
    t.cmd_enh("DATA", 503, "5.5.1");
    assert_nothing_stored(&relay);
}

#[test]
fn default_relay_net_is_loopback() {
    let relay = Relay::receive_only(&[]);
    let mut t = Talk::connect_from("127.0.0.2", relay.addr());
    t.expect(220);
    t.cmd("EHLO client.test", 250);
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<u@anywhere.example>", 250, "2.1.5");
}

#[test]
fn source_route_is_kept_in_the_envelope() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<@hop.example:a@example.org>", 250, "2.1.0");
    t.cmd_enh(
        "RCPT TO:<@hosta.example,@hostb.example:user@final.example>",
        250,
        "2.1.5",
    );
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(BODY);
    t.send_raw(b".\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("id");
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(
        env.rcpts(),
        vec![(
            "pending".to_string(),
            "<@hosta.example,@hostb.example:user@final.example>".to_string(),
            "-".to_string()
        )]
    );
    assert_eq!(env.get("from"), "<@hop.example:a@example.org>");
}

// ---------------------------------------------------------------------
// what is stored
// ---------------------------------------------------------------------

/// `Sat, 28 Nov 2026 17:20:10 +0000`
fn assert_rfc5322_date(s: &str) {
    let parts: Vec<&str> = s.split(' ').collect();
    assert_eq!(parts.len(), 6, "date {s:?}");
    assert!(
        ["Mon,", "Tue,", "Wed,", "Thu,", "Fri,", "Sat,", "Sun,"].contains(&parts[0]),
        "weekday in {s:?}"
    );
    let day: u32 = parts[1].parse().expect("day number");
    assert!((1..=31).contains(&day), "{s:?}");
    assert!(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            .contains(&parts[2]),
        "month in {s:?}"
    );
    let year: u32 = parts[3].parse().expect("year");
    assert!(year >= 2024, "{s:?}");
    let hms: Vec<u32> = parts[4]
        .split(':')
        .map(|x| x.parse().expect("time digits"))
        .collect();
    assert!(
        hms.len() == 3 && hms[0] < 24 && hms[1] < 60 && hms[2] < 61,
        "{s:?}"
    );
    assert_eq!(parts[5], "+0000", "{s:?}");
}

#[test]
fn received_header_shape() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    let (header, rest) = split_received(&read_msg(relay.spool(), &id));
    assert_eq!(rest, BODY);
    let lines: Vec<&str> = header
        .strip_suffix("\r\n")
        .expect("header ends in CRLF")
        .split("\r\n")
        .collect();
    assert_eq!(lines.len(), 4, "{header:?}");
    assert_eq!(lines[0], "Received: from client.test ([127.0.0.1])");
    assert_eq!(
        lines[1],
        format!("\tby relay.test (smtp-relay) with ESMTP id {id}")
    );
    assert_eq!(lines[2], "\tfor <b@example.net>;");
    assert!(lines[3].starts_with('\t'), "{header:?}");
    assert_rfc5322_date(&lines[3][1..]);

    // two recipients: no `for`; HELO: `with SMTP`
    let mut t = relay.talk();
    t.expect(220);
    t.cmd("HELO [127.0.0.1]", 250);
    let id2 = t.send_mail("a@example.org", &["b@example.net", "c@example.net"], BODY);
    let (header, _) = split_received(&read_msg(relay.spool(), &id2));
    let lines: Vec<&str> = header.trim_end().split("\r\n").collect();
    assert_eq!(lines.len(), 3, "{header:?}");
    assert_eq!(lines[0], "Received: from [127.0.0.1] ([127.0.0.1])");
    assert_eq!(
        lines[1],
        format!("\tby relay.test (smtp-relay) with SMTP id {id2};")
    );
    assert_rfc5322_date(&lines[2][1..]);
}

#[test]
fn envelope_file_contents() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.cmd_enh(
        "MAIL FROM:<a@example.org> BODY=8BITMIME SIZE=100",
        250,
        "2.1.0",
    );
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<c@example.com>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw("Subject: 8bit\r\n\r\nGrüße\r\n.\r\n".as_bytes());
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("id");

    let env = assert_complete(relay.spool(), &id);
    assert!(
        env.text.starts_with("smtp-relay-envelope: 2\n"),
        "{}",
        env.text
    );
    assert!(env.text.ends_with("\nend\n"), "{}", env.text);
    assert_eq!(env.get("id"), id);
    assert_eq!(env.get("client"), "127.0.0.1");
    assert_eq!(env.get("helo"), "client.test");
    assert_eq!(env.get("from"), "<a@example.org>");
    assert_eq!(env.get("body"), "8BITMIME");
    assert_eq!(env.get("smtputf8"), "no");
    assert_eq!(env.get("attempts"), "0");
    let arrived: u64 = env.get("arrived").parse().expect("arrived is a number");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(arrived <= now && now - arrived < 600, "arrived {arrived}");
    let next: u64 = env.get("next-try").parse().expect("next-try is a number");
    assert!(next >= arrived);
    assert_eq!(
        env.rcpts(),
        vec![
            ("pending".into(), "<b@example.net>".into(), "-".into()),
            ("pending".into(), "<c@example.com>".into(), "-".into()),
        ]
    );
    let msg = read_msg(relay.spool(), &id);
    assert_eq!(env.size(), msg.len() as u64);
    assert!(msg.ends_with("Grüße\r\n".as_bytes()));

    // without BODY=: `body: -`
    let id2 = t.send_mail("a@example.org", &["b@example.net"], BODY);
    assert_eq!(assert_complete(relay.spool(), &id2).get("body"), "-");
}

#[test]
fn smtputf8_transaction() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<jörg@exämple.org> SMTPUTF8", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<ünïcode@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw("Subject: ü\r\n\r\nx\r\n.\r\n".as_bytes());
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("id");
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(env.get("smtputf8"), "yes");
    assert_eq!(env.get("from"), "<jörg@exämple.org>");
    assert_eq!(env.rcpts()[0].1, "<ünïcode@example.net>");
    let (header, _) = split_received(&read_msg(relay.spool(), &id));
    assert!(header.contains(" with UTF8SMTP id "), "{header:?}");
}

#[test]
fn mail_loop_is_refused() {
    let relay = Relay::receive_only(&["--max-hops", "3"]);
    let mut t = relay.session();
    let hops = "Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n";
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(format!("{}Subject: loop\r\n\r\nx\r\n.\r\n", hops.repeat(3)).as_bytes());
    t.expect_enh(554, "5.4.6");
    assert_nothing_stored(&relay);
    // two hops (plus ours makes three) pass
    let data = format!("{}Subject: ok\r\n\r\nx\r\n", hops.repeat(2));
    t.send_mail("a@example.org", &["b@example.net"], data.as_bytes());
}

#[test]
fn spool_failure_answers_451() {
    let relay = Relay::receive_only(&[]);
    let tmp = relay.spool().join("tmp");
    let mut t = relay.session();
    // tmp/ replaced by a plain file: the message cannot be stored
    std::fs::remove_dir(&tmp).expect("remove tmp/");
    std::fs::write(&tmp, b"not a directory").expect("write tmp file");
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.send("DATA");
    let (code, text) = t.reply();
    // refused before 354 (or after the data): either way 451 4.3.0
    if code == 354 {
        t.send_raw(BODY);
        t.send_raw(b".\r\n");
        t.expect_enh(451, "4.3.0");
    } else {
        assert_eq!(code, 451, "{text:?}");
        assert!(text.starts_with("4.3.0 "), "{text:?}");
    }
    assert!(queued_ids(relay.spool()).is_empty());
    // repaired: the same session goes on
    std::fs::remove_file(&tmp).expect("remove tmp file");
    std::fs::create_dir(&tmp).expect("recreate tmp/");
    t.send_mail("a@example.org", &["b@example.net"], BODY);
    assert_eq!(queued_ids(relay.spool()).len(), 1);
}

#[test]
fn spool_short_of_space_answers_452() {
    // far more free space demanded than any disk has
    let relay = Relay::receive_only(&["--min-free-space", "1000000G"]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@example.org>", 452, "4.3.1");
    // the session goes on, and still refuses new mail
    t.cmd_enh("NOOP", 250, "2.0.0");
    t.cmd_enh("MAIL FROM:<>", 452, "4.3.1");
    t.cmd_enh("QUIT", 221, "2.0.0");
    assert_nothing_stored(&relay);
}

// ---------------------------------------------------------------------
// bare line endings and smuggling
// ---------------------------------------------------------------------

fn data_exchange(t: &mut Talk, data: &[u8]) -> (u16, String) {
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(data);
    t.reply()
}

#[test]
fn bare_lf_is_rejected() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    for data in [
        &b"Subject: x\r\n\r\nline\nbare\r\n.\r\n"[..],
        b"Subject: x\r\n\r\nline\rbare\r\n.\r\n",
        b"Subject: x\nFrom: y\r\n\r\nbody\r\n.\r\n",
    ] {
        let (code, text) = data_exchange(&mut t, data);
        assert_eq!(code, 550, "{text:?} for {data:?}");
        assert!(text.starts_with("5.6.11 "), "{text:?}");
        assert_nothing_stored(&relay);
    }
    // still in step
    t.cmd_enh("NOOP", 250, "2.0.0");
}

#[test]
fn smuggling_does_not_start_a_second_transaction() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    for end in [
        &b"\n.\n"[..],
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
    ] {
        let mut data = b"Subject: x\r\n\r\nhello".to_vec();
        data.extend_from_slice(end);
        data.extend_from_slice(
            b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n",
        );
        let (code, text) = data_exchange(&mut t, &data);
        assert_eq!(code, 550, "{end:?}: {text:?}\n{}", t.transcript());
        assert!(text.starts_with("5.6.11 "), "{text:?}");
        // the next reply belongs to our NOOP, not to a smuggled command
        t.cmd_enh("NOOP", 250, "2.0.0");
        assert_nothing_stored(&relay);
    }
}

#[test]
fn bare_lf_normalized_when_asked() {
    let relay = Relay::receive_only(&["--bare-lf", "normalize"]);
    let mut t = relay.session();
    let (code, text) = data_exchange(
        &mut t,
        b"Subject: x\nFrom: y\r\n\r\nline\nbare\rcr\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text:?}");
    let id = queued_id(&text).expect("id");
    assert_eq!(
        stored_data(relay.spool(), &id),
        b"Subject: x\r\nFrom: y\r\n\r\nline\r\nbare\r\ncr\r\n"
    );
    assert_complete(relay.spool(), &id);

    // a smuggling attempt is one message, its "commands" mere text
    let (code, text) = data_exchange(
        &mut t,
        b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text:?}");
    let id2 = queued_id(&text).expect("id");
    t.cmd_enh("NOOP", 250, "2.0.0");
    assert_eq!(queued_ids(relay.spool()), vec![id, id2.clone()]);
    let stored = String::from_utf8_lossy(&stored_data(relay.spool(), &id2)).to_string();
    assert!(
        stored.contains("hello\r\n.\r\nMAIL FROM:<evil@example.org>\r\n"),
        "{stored:?}"
    );
    let env = assert_complete(relay.spool(), &id2);
    assert_eq!(env.rcpts().len(), 1);
    assert_eq!(env.rcpts()[0].1, "<b@example.net>");
}

// ---------------------------------------------------------------------
// timeouts and load
// ---------------------------------------------------------------------

#[test]
fn silent_client_times_out() {
    let relay = Relay::receive_only(&["--timeout", "1s"]);
    let mut t = relay.talk();
    t.expect(220);
    let start = Instant::now();
    let text = t.expect_enh(421, "4.4.2");
    let waited = start.elapsed();
    assert!(text.contains("relay.test"), "{text:?}");
    assert!(
        waited >= Duration::from_millis(500),
        "421 came after only {waited:?}"
    );
    t.expect_closed();
}

#[test]
fn timeout_during_data_keeps_nothing() {
    let relay = Relay::receive_only(&["--timeout", "1s"]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(b"Subject: slow\r\n\r\npart of a body\r\n");
    assert_eq!(tmp_count(relay.spool()), 1, "the message is being received");
    t.expect_enh(421, "4.4.2");
    t.expect_closed();
    assert!(
        wait_until(Duration::from_secs(5), || tmp_count(relay.spool()) == 0),
        "tmp/ not emptied: {:?}",
        tmp_files(relay.spool())
    );
    assert!(queue_files(relay.spool()).is_empty());
}

#[test]
fn busy_server_answers_421_at_connect() {
    let relay = Relay::receive_only(&["--workers", "1", "--backlog", "1"]);
    // A holds the only worker
    let mut a = relay.talk();
    a.expect(220);
    // B is accepted and waits in the backlog: no greeting yet
    let mut b = relay.talk();
    // C finds worker and backlog full
    let mut c = relay.talk();
    c.expect_enh(421, "4.3.2");
    c.expect_closed();
    b.stream().set_nonblocking(true).expect("nonblocking");
    let mut probe = [0u8; 1];
    match b.stream().peek(&mut probe) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("B should still wait in the backlog, got {other:?}"),
    }
    b.stream().set_nonblocking(false).expect("blocking");
    // A leaves; B is served
    a.cmd_enh("QUIT", 221, "2.0.0");
    b.expect(220);
    b.cmd("EHLO client.test", 250);
    let id = b.send_mail("a@example.org", &["b@example.net"], BODY);
    b.cmd_enh("QUIT", 221, "2.0.0");
    assert_eq!(queued_ids(relay.spool()), vec![id]);
    // and the worker is free again
    let mut d = relay.talk();
    d.expect(220);
}

/// Sends `bytes` one at a time, `gap` apart, from another thread, until
/// done, a write fails, or `stop` is set.
fn trickle(
    stream: &std::net::TcpStream,
    bytes: &'static [u8],
    gap: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use std::io::Write;
    let mut w = stream.try_clone().expect("clone socket");
    std::thread::spawn(move || {
        let mut sent = 0;
        for b in bytes {
            if stop.load(std::sync::atomic::Ordering::SeqCst) || w.write_all(&[*b]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(gap);
        }
        sent
    })
}

#[test]
fn slow_command_line_times_out() {
    // each byte comes well within --timeout, the whole line does not
    let relay = Relay::receive_only(&["--timeout", "1s"]);
    let mut t = relay.session();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = trickle(
        t.stream(),
        b"NOOP xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n",
        Duration::from_millis(100),
        stop.clone(),
    );
    t.expect_enh(421, "4.4.2");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = writer.join().expect("writer thread");
    assert!(
        sent < 60,
        "the whole slow line was accepted ({sent} octets)"
    );
}

#[test]
fn slow_data_hits_the_data_deadline() {
    let relay = Relay::receive_only(&["--timeout", "5s", "--data-timeout", "1s"]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body: &'static [u8] = b"Subject: slow loris\r\n\r\none byte at a time, never finishing in time......................................................\r\n.\r\n";
    let writer = trickle(t.stream(), body, Duration::from_millis(50), stop.clone());
    t.expect_enh(421, "4.4.2");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = writer.join().expect("writer thread");
    assert!(sent < body.len(), "the slow message was read to its end");
    assert!(
        wait_until(Duration::from_secs(5), || tmp_count(relay.spool()) == 0),
        "tmp/ not emptied"
    );
    assert!(queue_files(relay.spool()).is_empty());
}

#[test]
fn connections_per_client_address_are_limited() {
    // loopback must not be a relay network here: those are exempt
    let relay = Relay::receive_only(&[
        "--max-per-ip",
        "2",
        "--relay-net",
        "192.0.2.0/24",
        "--relay-domain",
        "example.net",
    ]);
    let mut a = relay.talk();
    a.expect(220);
    let mut b = relay.talk();
    b.expect(220);
    let mut c = relay.talk();
    c.expect_enh(421, "4.7.0");
    c.expect_closed();
    // another address has its own count
    let mut other = Talk::connect_from("127.0.0.2", relay.addr());
    other.expect(220);
    // a session that ends frees its place
    a.cmd_enh("QUIT", 221, "2.0.0");
    a.expect_closed();
    let mut served = None;
    let freed = wait_until(Duration::from_secs(5), || {
        let mut d = relay.talk();
        match d.reply() {
            (220, _) => {
                served = Some(d);
                true
            }
            (421, _) => false,
            (code, text) => panic!("unexpected {code} {text}"),
        }
    });
    assert!(freed, "the place of a finished session was not freed");
    let mut d = served.expect("served connection");
    d.cmd("EHLO client.test", 250);
    d.send_mail("a@example.org", &["b@example.net"], BODY);
    b.cmd_enh("NOOP", 250, "2.0.0");
}

#[test]
fn many_concurrent_sessions() {
    let relay = Relay::receive_only(&[]);
    let addr = relay.addr();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut t = Talk::greet(addr);
                let mut ids = Vec::new();
                for j in 0..5 {
                    let data = format!("Subject: {i}-{j}\r\n\r\nbody {i} {j}\r\n");
                    ids.push(t.send_mail("a@example.org", &["b@example.net"], data.as_bytes()));
                }
                t.cmd_enh("QUIT", 221, "2.0.0");
                ids
            })
        })
        .collect();
    let mut ids: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "queue ids are unique");
    assert_eq!(queued_ids(relay.spool()), ids);
    for id in &ids {
        assert_complete(relay.spool(), id);
    }
}

// ---------------------------------------------------------------------
// command line
// ---------------------------------------------------------------------

fn one_line(s: &str) -> &str {
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line, got {s:?}");
    lines[0]
}

#[test]
fn cli_errors_exit_64_naming_the_option() {
    let limit = Duration::from_secs(10);
    for (args, needle) in [
        (&["serve", "--bogus"][..], "bogus"),
        (&["serve", "--workers", "0"][..], "--workers"),
        (&["serve", "--timeout", "5x"][..], "--timeout"),
        (&["serve", "--max-size", "lots"][..], "--max-size"),
        (&["serve", "--bare-lf", "maybe"][..], "--bare-lf"),
        (&["serve", "--listen", "nowhere"][..], "--listen"),
        (&["serve", "--relay-net", "1.2.3.4/99"][..], "--relay-net"),
        (&["serve", "stray"][..], "stray"),
        (&["frobnicate"][..], "frobnicate"),
        (&[][..], "command"),
    ] {
        let run = run_cli(args, limit);
        assert_eq!(run.code, Some(64), "{args:?}: {run:?}");
        let line = one_line(&run.stderr);
        assert!(line.contains(needle), "{args:?}: {line:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
}

#[test]
fn cli_config_file() {
    let dir = TempDir::new("cfg");
    let bad = write_file(
        dir.path(),
        "bad.conf",
        b"# comment\nmax-size = 2k\nnonsense = 1\n",
    );
    let run = run_cli(
        &["serve", "--config", bad.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(64), "{run:?}");
    let line = one_line(&run.stderr);
    assert!(
        line.contains("nonsense") && line.contains("bad.conf:3: "),
        "{line:?}"
    );

    let missing = dir.path().join("missing.conf");
    let run = run_cli(
        &["serve", "--config", missing.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(64), "{run:?}");
    one_line(&run.stderr);

    // a good file is used, and the command line wins over it
    let good = write_file(
        dir.path(),
        "good.conf",
        b"# sizes\nmax-size = 2k\nmax-recipients = 1\n",
    );
    let good = good.to_str().expect("utf-8 path");
    let relay = Relay::receive_only(&["--config", good, "--max-recipients", "2"]);
    let mut t = relay.talk();
    t.expect(220);
    let ehlo = t.cmd("EHLO client.test", 250);
    assert!(ehlo.lines().any(|l| l == "SIZE 2048"), "{ehlo:?}");
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<c@example.net>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<d@example.net>", 452, "4.5.3");
}

/// Issue 11 item 8: a trailing comment is a comment, a bad value names
/// the file and line, and a flag the file sets is turned off with
/// `--FLAG=no`.
#[test]
fn cli_config_file_comments_lines_and_flags() {
    let dir = TempDir::new("cfg8");
    let bad = write_file(
        dir.path(),
        "bad.conf",
        b"workers = 4   # four\n\nmax-size = 12Q # oops\n",
    );
    let bad = bad.to_str().expect("utf-8 path");
    let run = run_cli(&["serve", "--config", bad], Duration::from_secs(10));
    assert_eq!(run.code, Some(64), "{run:?}");
    let line = one_line(&run.stderr);
    assert!(
        line.contains(&format!("{bad}:3: --max-size: ")) && line.contains("12Q"),
        "{line:?}"
    );

    // require-tls without a certificate cannot start...
    let conf = write_file(
        dir.path(),
        "flags.conf",
        b"max-size = 2k  # two KiB\nrequire-tls = yes # needs tls-cert\n",
    );
    let conf = conf.to_str().expect("utf-8 path");
    let run = run_cli(&["serve", "--config", conf], Duration::from_secs(10));
    assert_eq!(run.code, Some(64), "{run:?}");
    assert!(one_line(&run.stderr).contains("--require-tls"), "{run:?}");
    // ...and the command line turns it off; the commented size holds
    let relay = Relay::receive_only(&["--config", conf, "--require-tls=no"]);
    let mut t = relay.talk();
    t.expect(220);
    let ehlo = t.cmd("EHLO client.test", 250);
    assert!(ehlo.lines().any(|l| l == "SIZE 2048"), "{ehlo:?}");
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
}

/// `--user` naming no user stops the start with EX_CONFIG (78), before
/// anything is bound (app.rs looks the user up; the parser does not).
#[test]
fn cli_unknown_user_exits_78() {
    let dir = TempDir::new("nouser");
    let spool = dir.path().join("spool");
    let run = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--spool",
            spool.to_str().expect("utf-8 path"),
            "--user",
            "no-such-user-here",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(78), "{run:?}");
    assert!(run.stderr.contains("--user"), "{run:?}");
    assert!(!run.stdout.contains("listening"), "{run:?}");
}

#[test]
fn cli_help_and_version() {
    let limit = Duration::from_secs(10);
    let run = run_cli(&["--version"], limit);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        format!("smtp-relay {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let run = run_cli(args, limit);
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
        for word in ["serve", "--listen", "--spool", "--max-size", "--bare-lf"] {
            assert!(run.stdout.contains(word), "{args:?} help lacks {word}");
        }
    }
}

#[test]
fn cli_cannot_listen_exits_69() {
    let relay = Relay::receive_only(&[]);
    let dir = TempDir::new("spool2");
    let addr = relay.addr().to_string();
    let spool = dir.path().join("spool");
    let run = run_cli(
        &[
            "serve",
            "--listen",
            &addr,
            "--spool",
            spool.to_str().expect("utf-8 path"),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(69), "{run:?}");
    assert!(run.stderr.contains(&addr), "{run:?}");
}

#[test]
fn cli_spool_io_error_exits_74() {
    let dir = TempDir::new("notadir");
    // the spool would have to live under a plain file
    let file = write_file(dir.path(), "plain-file", b"x");
    let spool = file.join("spool");
    let run = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--spool",
            spool.to_str().expect("utf-8 path"),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(74), "{run:?}");
    assert!(run.stderr.contains("plain-file"), "names the path: {run:?}");
    assert!(!run.stdout.contains("listening on"), "{run:?}");
}

#[test]
fn two_listeners_including_ipv6() {
    let v6 = TcpListener::bind("[::1]:0").is_ok();
    let second = if v6 { "[::1]:0" } else { "127.0.0.1:0" };
    if !v6 {
        println!("(::1 cannot be bound here: second listener on 127.0.0.1 instead)");
    }
    let relay = Relay::receive_only(&["--listen", second]);
    let addrs: Vec<SocketAddr> = relay.addrs().to_vec();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs[0].ip().is_loopback() && addrs[0].is_ipv4());
    assert_eq!(addrs[1].is_ipv6(), v6);
    assert_ne!(addrs[1].port(), 0);
    for a in &addrs {
        let mut t = Talk::greet(*a);
        let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
        let env = assert_complete(relay.spool(), &id);
        let want = if a.is_ipv6() { "::1" } else { "127.0.0.1" };
        assert_eq!(env.get("client"), want);
        if a.is_ipv6() {
            let (header, _) = split_received(&read_msg(relay.spool(), &id));
            assert!(
                header.starts_with("Received: from client.test ([IPv6:::1])"),
                "{header:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------
// the test sink itself (used by delivery tests)
// ---------------------------------------------------------------------

#[test]
fn sink_self_test() {
    // default: accept all, several transactions, pipelined
    let mut sink = Sink::start();
    let mut t = Talk::connect(sink.addr());
    t.expect(220);
    let ehlo = t.cmd("EHLO relay.test", 250);
    assert!(
        ehlo.contains("PIPELINING") && ehlo.contains("8BITMIME"),
        "{ehlo:?}"
    );
    t.send_raw(b"MAIL FROM:<> BODY=8BITMIME\r\nRCPT TO:<x@example.net>\r\nRCPT TO:<y@example.net>\r\nDATA\r\n");
    t.expect(250);
    t.expect(250);
    t.expect(250);
    t.expect(354);
    t.send_raw(b"Subject: s\r\n\r\n..dot\r\n.\r\nRSET\r\nNOOP\r\n");
    t.expect(250);
    t.expect(250);
    t.expect(250);
    t.send_mail("a@example.org", &["z@example.net"], b"second\r\n");
    t.cmd("QUIT", 221);
    assert!(sink.wait_for(2, Duration::from_secs(5)));
    let m = sink.messages();
    assert_eq!(m[0].mail_from, "");
    assert_eq!(m[0].mail_params, ["BODY=8BITMIME"]);
    assert_eq!(m[0].rcpts, ["x@example.net", "y@example.net"]);
    assert_eq!(m[0].data, b"Subject: s\r\n\r\n.dot\r\n");
    assert_eq!(m[0].helo, "relay.test");
    assert_eq!(m[1].mail_from, "a@example.org");
    assert_eq!(m[1].data, b"second\r\n");

    // scripted replies per recipient and at end of data
    sink.set_config(
        SinkConfig::default()
            .pipelining(false)
            .size(Some(5000))
            .rcpt_table(&[
                ("defer@", Action::reply(451, "4.2.0 try later")),
                ("bounce@", Action::reply(550, "5.1.1 no such user")),
            ])
            .data_end(Action::reply(452, "4.3.1 full")),
    );
    let mut t = Talk::connect(sink.addr());
    t.expect(220);
    let ehlo = t.cmd("EHLO relay.test", 250);
    assert!(
        !ehlo.contains("PIPELINING") && ehlo.contains("SIZE 5000"),
        "{ehlo:?}"
    );
    t.cmd("MAIL FROM:<a@example.org>", 250);
    t.cmd("RCPT TO:<defer@example.net>", 451);
    t.cmd("RCPT TO:<bounce@example.net>", 550);
    t.cmd("RCPT TO:<ok@example.net>", 250);
    t.cmd("DATA", 354);
    t.send_raw(b"x\r\n.\r\n");
    t.expect(452);
    assert_eq!(sink.count(), 2, "a 4xx at end of data is no message");
    assert_eq!(sink.attempts().len(), 3);
    assert_eq!(sink.attempts()[2].rcpts, ["ok@example.net"]);

    // mid-DATA close, and a hang
    sink.set_config(SinkConfig::default().close_mid_data());
    let mut t = Talk::greet(sink.addr());
    t.cmd("MAIL FROM:<a@example.org>", 250);
    t.cmd("RCPT TO:<b@example.net>", 250);
    t.cmd("DATA", 354);
    t.send_raw(b"first line\r\n");
    t.expect_closed();
    sink.set_config(SinkConfig::default().data_end(Action::Hang(Duration::from_millis(300))));
    let mut t = Talk::greet(sink.addr());
    t.cmd("MAIL FROM:<a@example.org>", 250);
    t.cmd("RCPT TO:<b@example.net>", 250);
    t.cmd("DATA", 354);
    t.send_raw(b"x\r\n.\r\n");
    t.expect_closed();

    // 554 greeting: only QUIT is served
    sink.set_config(SinkConfig::default().greeting(Action::reply(554, "5.3.2 not now")));
    let mut t = Talk::connect(sink.addr());
    t.expect(554);
    t.cmd("EHLO relay.test", 503);
    t.cmd("QUIT", 221);

    // down, then up again on the same port
    let addr = sink.addr();
    let before = sink.connections();
    sink.stop();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "a stopped sink refuses connections"
    );
    sink.set_config(SinkConfig::default());
    sink.restart();
    assert_eq!(sink.addr(), addr);
    let mut t = Talk::greet(sink.addr());
    t.send_mail("a@example.org", &["b@example.net"], b"again\r\n");
    assert_eq!(sink.connections(), before + 1);
    assert_eq!(sink.count(), 3);
}

#[test]
fn relay_networks_are_exempt_from_the_per_address_limit() {
    let relay = Relay::receive_only(&["--max-per-ip", "1"]);
    let mut a = relay.talk();
    a.expect(220);
    let mut b = relay.talk();
    b.expect(220);
    b.cmd("QUIT", 221);
    a.cmd("QUIT", 221);
}
