//! CHUNKING / BDAT (RFC 3030) against the real binary with a raw client:
//! exact octets (no dot-unstuffing), the same spool commit as DATA, the
//! same size and hop limits, refused chunks read and thrown away (never
//! executed as commands), no mixing with DATA. No Debian peer sends BDAT
//! (swaks, Postfix's smtp client and Python's smtplib use DATA), so the
//! client here is ours.

mod common;

use std::time::Duration;

use common::*;

fn bdat(t: &mut Talk, data: &[u8], last: bool) {
    let mut cmd = format!("BDAT {}", data.len()).into_bytes();
    if last {
        cmd.extend_from_slice(b" LAST");
    }
    cmd.extend_from_slice(b"\r\n");
    cmd.extend_from_slice(data);
    t.send_raw(&cmd);
}

#[test]
fn chunks_make_the_message_octet_for_octet() {
    let relay = Relay::receive_only(&[]);
    let mut t = Talk::connect(relay.addr());
    t.expect(220);
    let ehlo = t.cmd("EHLO client.test", 250);
    assert!(ehlo.lines().any(|l| l == "CHUNKING"), "{ehlo}");
    assert!(!ehlo.contains("BINARYMIME"), "{ehlo}");
    t.cmd_enh("MAIL FROM:<a@origin.example>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@dest.example>", 250, "2.1.5");
    let part1 = b"Subject: chunks\r\n\r\nline one\r\n.\r\n..two dots\r\n";
    let part2 = b"QUIT\r\n.\r\nlast line\r\n";
    bdat(&mut t, part1, false);
    let r = t.expect_enh(250, "2.0.0");
    assert!(r.contains(&format!("{} octets", part1.len())), "{r}");
    bdat(&mut t, part2, true);
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("queued");
    t.cmd("NOOP", 250);
    t.cmd("QUIT", 221);
    let (received, body) = split_received(&read_msg(relay.spool(), &id));
    assert!(received.contains("for <b@dest.example>"), "{received}");
    let mut want = part1.to_vec();
    want.extend_from_slice(part2);
    assert_eq!(body, want, "no unstuffing, no end mark");
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(env.size(), read_msg(relay.spool(), &id).len() as u64);
}

#[test]
fn pipelined_chunks_and_an_empty_last_chunk() {
    let relay = Relay::receive_only(&[]);
    let mut t = Talk::greet(relay.addr());
    let mut all = b"MAIL FROM:<a@origin.example>\r\nRCPT TO:<b@dest.example>\r\n".to_vec();
    all.extend_from_slice(b"BDAT 14\r\nSubject: p\r\n\r\nBDAT 5\r\nbody\nBDAT 0 LAST\r\n");
    t.send_raw(&all);
    t.expect(250);
    t.expect(250);
    t.expect(250);
    t.expect(250);
    let id = queued_id(&t.expect(250)).expect("queued");
    let (_, body) = split_received(&read_msg(relay.spool(), &id));
    assert_eq!(body, b"Subject: p\r\n\r\nbody\n");
}

#[test]
fn refused_chunks_are_read_and_thrown_away() {
    let relay = Relay::receive_only(&[]);
    let mut t = Talk::greet(relay.addr());
    // no transaction: 503, and "QUIT" inside the chunk is data, not a command
    bdat(&mut t, b"QUIT\r\n", true);
    t.expect_enh(503, "5.5.1");
    t.cmd("MAIL FROM:<a@origin.example>", 250);
    bdat(&mut t, b"RSET\r\nQUIT\r\n", false);
    t.expect_enh(503, "5.5.1"); // no recipients yet
    t.cmd("NOOP", 250);
    t.cmd("RCPT TO:<b@dest.example>", 250);
    bdat(&mut t, b"Subject: x\r\n\r\n", false);
    t.expect(250);
    // RFC 3030 §3: no DATA, and no more RCPT, once BDAT has begun
    t.cmd_enh("DATA", 503, "5.5.1");
    t.cmd_enh("RCPT TO:<c@dest.example>", 503, "5.5.1");
    bdat(&mut t, b"end\r\n", true);
    let id = queued_id(&t.expect(250)).expect("queued");
    let (_, body) = split_received(&read_msg(relay.spool(), &id));
    assert_eq!(body, b"Subject: x\r\n\r\nend\r\n");
    assert_eq!(queued_ids(relay.spool()).len(), 1);
    t.cmd("QUIT", 221);
}

#[test]
fn rset_drops_a_half_received_message() {
    let relay = Relay::receive_only(&[]);
    let mut t = Talk::greet(relay.addr());
    t.cmd("MAIL FROM:<a@origin.example>", 250);
    t.cmd("RCPT TO:<b@dest.example>", 250);
    bdat(&mut t, b"Subject: half\r\n", false);
    t.expect(250);
    assert_eq!(
        tmp_count(relay.spool()),
        1,
        "{:?}",
        tmp_files(relay.spool())
    );
    t.cmd("RSET", 250);
    t.cmd("NOOP", 250);
    assert!(
        wait_until(Duration::from_secs(5), || tmp_count(relay.spool()) == 0),
        "{:?}",
        tmp_files(relay.spool())
    );
    // a new transaction on the same connection works
    t.cmd("MAIL FROM:<a@origin.example>", 250);
    t.cmd("RCPT TO:<b@dest.example>", 250);
    bdat(&mut t, b"Subject: whole\r\n\r\nx\r\n", true);
    t.expect(250);
    assert_eq!(queued_ids(relay.spool()).len(), 1);
}

#[test]
fn too_big_is_552_and_nothing_is_stored() {
    let relay = Relay::receive_only(&["--max-size", "100"]);
    let mut t = Talk::greet(relay.addr());
    t.cmd("MAIL FROM:<a@origin.example>", 250);
    t.cmd("RCPT TO:<b@dest.example>", 250);
    bdat(&mut t, &[b'a'; 60], false);
    t.expect(250);
    bdat(&mut t, &[b'b'; 60], false);
    t.expect_enh(552, "5.3.4");
    // the rest of the message finds no transaction
    bdat(&mut t, &[b'c'; 10], true);
    t.expect_enh(503, "5.5.1");
    t.cmd("NOOP", 250);
    assert!(queued_ids(relay.spool()).is_empty());
    assert!(wait_until(Duration::from_secs(5), || tmp_count(
        relay.spool()
    ) == 0));
    // the declared size is checked at MAIL as for DATA
    t.cmd_enh("MAIL FROM:<a@origin.example> SIZE=101", 552, "5.3.4");
}

#[test]
fn too_many_hops_is_554() {
    let relay = Relay::receive_only(&["--max-hops", "3"]);
    let mut t = Talk::greet(relay.addr());
    t.cmd("MAIL FROM:<a@origin.example>", 250);
    t.cmd("RCPT TO:<b@dest.example>", 250);
    bdat(&mut t, b"Received: from a\r\nReceived: from b\r\n", false);
    t.expect(250);
    bdat(&mut t, b"Received: from c\r\n\r\nbody\r\n", true);
    t.expect_enh(554, "5.4.6");
    assert!(queued_ids(relay.spool()).is_empty());
}

#[test]
fn an_unreadable_chunk_size_ends_the_session() {
    let relay = Relay::receive_only(&[]);
    let mut t = Talk::greet(relay.addr());
    t.cmd("MAIL FROM:<a@origin.example>", 250);
    t.cmd("RCPT TO:<b@dest.example>", 250);
    t.send_raw(b"BDAT many\r\nRSET\r\n");
    t.expect_enh(501, "5.5.4");
    t.expect_enh(421, "4.5.0");
    t.expect_closed();
}

#[test]
fn binarymime_is_not_offered() {
    let relay = Relay::receive_only(&[]);
    let mut t = Talk::greet(relay.addr());
    t.cmd_enh("MAIL FROM:<a@origin.example> BODY=BINARYMIME", 501, "5.5.4");
}

#[test]
fn a_client_gone_inside_a_chunk_leaves_nothing() {
    let relay = Relay::receive_only(&[]);
    let mut t = Talk::greet(relay.addr());
    t.cmd("MAIL FROM:<a@origin.example>", 250);
    t.cmd("RCPT TO:<b@dest.example>", 250);
    t.send_raw(b"BDAT 1000 LAST\r\nonly a little");
    drop(t);
    assert!(wait_until(Duration::from_secs(5), || tmp_count(
        relay.spool()
    ) == 0));
    assert!(queued_ids(relay.spool()).is_empty());
}
