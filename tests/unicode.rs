//! SMTPUTF8 addresses (RFC 6531 §3.3): domains must be IDNA2008, local
//! parts may not hide or reorder text; refused with `553 5.1.3`. Whatever
//! a peer chose that still reaches a log or a listing (an allowed joiner,
//! a HELO name, a next hop's reply, an address queued by an older version)
//! is shown with its unprintable characters escaped as `\u{...}`.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);
const BODY: &[u8] = b"Subject: x\r\n\r\nhi\r\n";

fn queue(relay: &Relay, args: &[&str]) -> String {
    let spool = relay.spool().display().to_string();
    let mut v = vec!["queue"];
    v.extend_from_slice(args);
    v.extend_from_slice(&["--spool", &spool]);
    let run = run_cli(&v, T);
    assert_eq!(run.code, Some(0), "{v:?}: {run:?}");
    run.stdout
}

#[test]
fn refuses_what_idna2008_or_the_local_part_rules_disallow() {
    let relay = Relay::receive_only(&[]);
    let bad = [
        "u@x\u{2028}y.example",
        "u@\u{202e}elgoog.example",
        "u@a\u{200b}b.example",
        "u@ex\u{ad}ample.org",
        "u@\u{ff45}xample.org",
        "u@a\u{200d}b.example",
        "u@\u{5d0}a.example",
        "u\u{202e}gro.elpmaxe@example.org",
        "u\u{2066}x\u{2069}@example.org",
        "line\u{2028}sep@example.org",
        "\"quoted\u{202e}\"@example.org",
        // (C0, DEL and C1 never get this far: 501 5.5.4 for the command)
    ];
    for addr in bad {
        // a session each: twelve refusals would pass the error limit
        let mut t = relay.session();
        t.cmd_enh(&format!("MAIL FROM:<{addr}> SMTPUTF8"), 553, "5.1.3");
        t.cmd_enh("MAIL FROM:<a@client.test> SMTPUTF8", 250, "2.1.0");
        t.cmd_enh(&format!("RCPT TO:<{addr}>"), 553, "5.1.3");
        t.cmd("QUIT", 221);
    }
    // ordinary UTF-8 still travels
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<pelé@exämple.org> SMTPUTF8", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<jörg@bücher.example>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<用户@例子.广告>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(BODY);
    t.send_raw(b".\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("queue id");
    t.cmd("QUIT", 221);
    assert_eq!(queued_ids(relay.spool()), vec![id]);
}

#[test]
fn logs_and_listings_escape_what_a_peer_chose() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.talk();
    t.expect(220);
    t.cmd("EHLO evil\u{202e}lmth.example", 250);
    // a joiner is allowed in a local part (scripts need it) but invisible
    t.cmd_enh("MAIL FROM:<a@client.test> SMTPUTF8", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<a\u{200d}b@example.org>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(BODY);
    t.send_raw(b".\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("queue id");
    t.cmd("QUIT", 221);

    let list = queue(&relay, &["list"]);
    assert!(list.contains("a\\u{200d}b@example.org"), "{list}");
    assert!(!list.contains('\u{200d}'), "{list}");
    let json = queue(&relay, &["list", "--json"]);
    assert!(json.contains("a\\u200db@example.org"), "{json}");
    assert!(!json.contains('\u{200d}'), "{json}");
    let show = queue(&relay, &["show", &id]);
    assert!(show.contains("helo=evil\\u{202e}lmth.example"), "{show}");
    assert!(show.contains("a\\u{200d}b@example.org"), "{show}");
    assert!(
        !show.contains('\u{202e}') && !show.contains('\u{200d}'),
        "{show}"
    );
    let log = relay.log();
    assert!(
        log.contains(&format!("{id} queued")) && log.contains("helo=evil\\u{202e}lmth.example"),
        "{log}"
    );
    assert!(!log.contains('\u{202e}'), "{log}");
}

/// An envelope written before these checks (here: edited to hold what an
/// older version accepted) still loads, and is listed escaped.
#[test]
fn an_address_queued_by_an_older_version_is_listed_escaped() {
    let mut relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    let id = t.send_mail("a@client.test", &["bob@example.org"], BODY);
    t.cmd("QUIT", 221);
    relay.kill();
    let path = env_path(relay.spool(), &id);
    let text = fs::read_to_string(&path).expect("read envelope");
    assert!(text.contains("<bob@example.org>"), "{text}");
    // an older version wrote no integrity line (and an edited envelope
    // with one would no longer match it)
    let older: String = text
        .lines()
        .filter(|l| !l.starts_with("integrity: "))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(
        &path,
        older.replace("<bob@example.org>", "<bob\u{202e}gro@x\u{2028}y.example>"),
    )
    .expect("write envelope");
    let list = queue(&relay, &["list"]);
    assert!(list.contains(&id), "{list}");
    assert!(
        list.contains("bob\\u{202e}gro@x\\u{2028}y.example"),
        "{list}"
    );
    assert!(
        !list.contains('\u{202e}') && !list.contains('\u{2028}'),
        "{list}"
    );
}

/// A next hop's reply text reaches the log and `queue list` escaped.
#[test]
fn next_hop_reply_text_is_escaped() {
    let sink = Sink::with(
        SinkConfig::default().rcpt(|_| Action::reply(450, "4.2.0 busy\u{202e}yrter\u{7}")),
    );
    let route = format!("example.org=127.0.0.1:{}", sink.addr().port());
    let relay = Relay::start(&["--no-dns", "--route", &route, "--retry-min", "1h"]);
    let mut t = relay.session();
    let id = t.send_mail("a@client.test", &["x@example.org"], BODY);
    t.cmd("QUIT", 221);
    assert!(
        wait_until(T, || relay
            .log()
            .contains(&format!("{id} to=<x@example.org>"))
            || relay.log().contains(&format!("{id} to=x@example.org"))),
        "{}",
        relay.log()
    );
    let log = relay.log();
    assert!(log.contains("busy\\u{202e}yrter\\u{7}"), "{log}");
    assert!(!log.contains('\u{202e}'), "{log}");
    // the log line comes just before the envelope is stored
    let mut list = String::new();
    let listed = wait_until(T, || {
        list = queue(&relay, &["list"]);
        list.contains("busy\\u{202e}yrter\\u{7}")
    });
    assert!(listed, "{list}");
}

/// An AUTH user name is logged escaped.
#[test]
fn auth_user_name_is_logged_escaped() {
    let dir = TempDir::new("authesc");
    let file = dir.path().join("passwd");
    smtp_relay::auth::set_password(&file, "alice", "alice-secret-1", None).expect("passwd");
    let relay = Relay::receive_only(&["--auth-file", &file.display().to_string()]);
    let mut t = relay.session();
    let creds = smtp_relay::auth::encode_base64("\0evil\u{202e}resu\0wrong".as_bytes());
    t.cmd(&format!("AUTH PLAIN {creds}"), 535);
    t.cmd("QUIT", 221);
    assert!(
        wait_until(T, || relay.log().contains("user=evil\\u{202e}resu")),
        "{}",
        relay.log()
    );
    assert!(!relay.log().contains('\u{202e}'), "{}", relay.log());
}
