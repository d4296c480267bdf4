//! The inbound edge relay (issue 13), raw SMTP against the real binary:
//! access rules at connect, HELO, MAIL and RCPT with each action's exact
//! reply; recipient tables; address verification against a scripted next
//! hop (cache lifetimes, a hanging hop); `<Postmaster>`; double bounces.
//! A recipient refused in the dialogue is never queued, so no DSN exists
//! for it: checked on the spool.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// `CODE TEXT` of the reply to `line`.
fn said(t: &mut Talk, line: &str) -> String {
    t.send(line);
    let (code, text) = t.reply();
    format!("{code} {text}")
}

fn greeting(t: &mut Talk) -> String {
    let (code, text) = t.reply();
    format!("{code} {text}")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    write_file(dir, name, text.as_bytes()).display().to_string()
}

/// Messages in the queue and their envelopes, as text.
fn envelopes(spool: &Path) -> Vec<String> {
    queued_ids(spool)
        .iter()
        .map(|id| read_env(spool, id))
        .collect()
}

const ACCESS: &str = "\
# stage   match                 action
connect   127.0.0.3             reject 554 5.7.1 go away
connect   127.0.0.4             defer
connect   127.0.0.5             hold
connect   127.0.0.7             accept
helo      *.dynamic.example     defer
helo      bad.example           reject 550 5.7.1 no thanks
mail      vip@spam.example      accept
mail      @spam.example         reject
mail      .spam.example         reject 553 5.7.1 subdomain spam
mail      <>                    continue
rcpt      abuse@example.org     accept
rcpt      @hold.example.org     hold
rcpt      .sub.example          reject
rcpt      client:127.0.0.6      defer 451 4.7.1 slow down
rcpt      from:list@lists.example  reject 550 5.7.1 no lists here
";

fn edge_relay(dir: &TempDir, extra: &[&str]) -> Relay {
    let access = write(dir.path(), "access", ACCESS);
    let table = write(dir.path(), "recipients", "alice@example.org\n");
    let mut args = vec![
        "--relay-net",
        "127.0.0.1/32",
        "--relay-domain",
        "example.org",
        "--relay-domain",
        "hold.example.org",
        "--access",
        &access,
        "--recipients",
        &format!("example.org={table}"),
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Relay::receive_only(&args)
}

#[test]
fn access_rules_at_connect() {
    let dir = TempDir::new("edge");
    let relay = edge_relay(&dir, &[]);
    // reject: 554 instead of 220, then only QUIT (RFC 5321 §3.1)
    let mut t = Talk::connect_from("127.0.0.3", relay.addr());
    assert_eq!(greeting(&mut t), "554 5.7.1 go away");
    assert_eq!(
        said(&mut t, "EHLO x.example"),
        "503 5.5.1 Connection refused; send QUIT"
    );
    assert_eq!(
        said(&mut t, "MAIL FROM:<a@b.example>"),
        "503 5.5.1 Connection refused; send QUIT"
    );
    t.cmd("QUIT", 221);
    // defer: 421 and the connection closes
    let mut t = Talk::connect_from("127.0.0.4", relay.addr());
    assert_eq!(
        greeting(&mut t),
        "421 4.7.1 Client host rejected: Try again later"
    );
    t.expect_closed();
    // no rule: the ordinary greeting
    let mut t = Talk::connect_from("127.0.0.2", relay.addr());
    t.expect(220);
    // accept skips the connect rules, never relay control
    let mut t = Talk::connect_from("127.0.0.7", relay.addr());
    t.expect(220);
    t.cmd("EHLO client.example", 250);
    t.cmd("MAIL FROM:<a@b.example>", 250);
    assert_eq!(
        said(&mut t, "RCPT TO:<u@elsewhere.example>"),
        "550 5.7.1 Relaying denied"
    );
    let log = relay.log();
    // one line per refusal: client, reason, stage, rule and reply
    let refusals = refused_lines(&log, "127.0.0.3");
    let go_away = log.lines().filter(|l| l.contains("go away\"")).count();
    assert_eq!(go_away, 1, "the refusal logged once\n{log}");
    assert!(
        refusals[0].contains(" refused reason=access_rule stage=connect rule=\"line 2: connect 127.0.0.3 reject 554 5.7.1 go away\" reply=\"554 5.7.1 go away\""),
        "{log}"
    );
    assert!(
        refused_lines(&log, "127.0.0.4")[0].contains(" refused reason=access_rule stage=connect"),
        "{log}"
    );
    assert!(queued_ids(relay.spool()).is_empty());
}

#[test]
fn access_rules_at_helo_mail_rcpt() {
    let dir = TempDir::new("edge");
    let relay = edge_relay(&dir, &[]);
    let mut t = Talk::connect(relay.addr());
    t.expect(220);
    assert_eq!(
        said(&mut t, "EHLO a.b.dynamic.example"),
        "450 4.7.1 Helo command rejected: Try again later"
    );
    assert_eq!(said(&mut t, "HELO bad.example"), "550 5.7.1 no thanks");
    // refused HELO leaves the session without one
    assert_eq!(
        said(&mut t, "MAIL FROM:<a@b.example>"),
        "503 5.5.1 Send HELO/EHLO first"
    );
    t.cmd("EHLO dynamic.example", 250);
    // first match wins: vip@ is accepted before the @spam.example reject
    t.cmd("MAIL FROM:<vip@spam.example>", 250);
    t.cmd("RSET", 250);
    assert_eq!(
        said(&mut t, "MAIL FROM:<x@Spam.Example>"),
        "550 5.7.1 Sender address rejected: Access denied"
    );
    assert_eq!(
        said(&mut t, "MAIL FROM:<x@a.spam.example>"),
        "553 5.7.1 subdomain spam"
    );
    t.cmd("MAIL FROM:<>", 250);
    t.cmd("RSET", 250);
    t.cmd("MAIL FROM:<list@lists.example>", 250);
    assert_eq!(
        said(&mut t, "RCPT TO:<alice@example.org>"),
        "550 5.7.1 no lists here"
    );
    t.cmd("RSET", 250);
    t.cmd("MAIL FROM:<a@b.example>", 250);
    // relay-net client (127.0.0.1): relays, but .sub.example is refused
    assert_eq!(
        said(&mut t, "RCPT TO:<u@x.sub.example>"),
        "550 5.7.1 Recipient address rejected: Access denied"
    );
    // accept: abuse@ is not in the table, the rule lets it in
    t.cmd_enh("RCPT TO:<abuse@example.org>", 250, "2.1.5");
    t.cmd("QUIT", 221);
    // a client key at the RCPT stage
    let mut t = Talk::connect_from("127.0.0.6", relay.addr());
    t.expect(220);
    t.cmd("EHLO c.example", 250);
    t.cmd("MAIL FROM:<a@b.example>", 250);
    assert_eq!(
        said(&mut t, "RCPT TO:<alice@example.org>"),
        "451 4.7.1 slow down"
    );
    let log = relay.log();
    for (ip, needle) in [
        ("127.0.0.1", " refused reason=access_rule stage=helo rule=\"line 6: helo *.dynamic.example defer\" reply=\"450 4.7.1 Helo command rejected: Try again later\""),
        ("127.0.0.1", " refused reason=access_rule stage=mail rule=\"line 9: mail @spam.example reject\""),
        ("127.0.0.6", " refused reason=access_rule stage=rcpt rule=\"line 15: rcpt client:127.0.0.6 defer 451 4.7.1 slow down\" reply=\"451 4.7.1 slow down\""),
    ] {
        assert!(
            refused_lines(&log, ip).iter().any(|l| l.contains(needle)),
            "{needle}\n{log}"
        );
    }
}

#[test]
fn hold_rules_queue_on_hold() {
    let dir = TempDir::new("edge");
    let relay = edge_relay(&dir, &[]);
    let body = b"Subject: t\r\n\r\nbody\r\n";
    // hold at RCPT: the message is queued on hold
    let mut t = Talk::greet(relay.addr());
    let held = t.send_mail("a@b.example", &["u@hold.example.org"], body);
    // no rule: queued without hold
    let plain = t.send_mail("a@b.example", &["alice@example.org"], body);
    // hold at connect: every message of the session
    let mut t = Talk::connect_from("127.0.0.5", relay.addr());
    t.expect(220);
    t.cmd("EHLO c.example", 250);
    let held2 = t.send_mail("a@b.example", &["alice@example.org"], body);
    let spool = relay.spool();
    assert_eq!(EnvFile::load(spool, &held).get("hold"), "forever");
    assert_eq!(EnvFile::load(spool, &held2).get("hold"), "forever");
    assert!(
        !read_env(spool, &plain).contains("hold:"),
        "{}",
        read_env(spool, &plain)
    );
}

#[test]
fn recipient_table_hit_miss_catch_all() {
    let dir = TempDir::new("edge");
    let table = write(
        dir.path(),
        "r",
        "# known users\nalice@example.org\nbob+*@example.org\n@catch.example\n",
    );
    let relay = Relay::receive_only(&[
        "--relay-net",
        "127.0.0.1/32",
        "--relay-domain",
        "example.org",
        "--relay-domain",
        "catch.example",
        "--relay-domain",
        "open.example",
        "--recipients",
        &format!("example.org={table}"),
        "--recipients",
        &format!("catch.example={table}"),
    ]);
    // from outside the relay network: only the relay domains
    let mut t = Talk::connect_from("127.0.0.9", relay.addr());
    t.expect(220);
    t.cmd("EHLO c.example", 250);
    t.cmd("MAIL FROM:<innocent@victim.test>", 250);
    assert_eq!(
        said(&mut t, "RCPT TO:<nosuchuser@example.org>"),
        "550 5.1.1 <nosuchuser@example.org>: Recipient address rejected: user unknown"
    );
    assert_eq!(
        said(&mut t, "RCPT TO:<alice+x@example.org>"),
        "550 5.1.1 <alice+x@example.org>: Recipient address rejected: user unknown"
    );
    t.cmd_enh("RCPT TO:<Alice@EXAMPLE.org>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<bob+lists@example.org>", 250, "2.1.5");
    t.cmd_enh("RCPT TO:<anyone@catch.example>", 250, "2.1.5");
    // a relay domain without a table: as before, anyone
    t.cmd_enh("RCPT TO:<anyone@open.example>", 250, "2.1.5");
    t.cmd("DATA", 354);
    t.send_raw(b"Subject: t\r\n\r\nx\r\n.\r\n");
    let id = queued_id(&t.expect(250)).expect("queued");
    // the refused recipients were never queued: no DSN can follow
    let env = EnvFile::load(relay.spool(), &id);
    let rcpts: Vec<String> = env.rcpts().into_iter().map(|(_, p, _)| p).collect();
    assert_eq!(
        rcpts,
        [
            "<Alice@EXAMPLE.org>",
            "<bob+lists@example.org>",
            "<anyone@catch.example>",
            "<anyone@open.example>"
        ]
    );
    assert_eq!(queued_ids(relay.spool()).len(), 1);
    let log = relay.log();
    assert!(
        refused_lines(&log, "127.0.0.9").iter().any(|l| l.contains(
            " refused reason=recipient_validation stage=rcpt rule=\"recipient validation\" reply=\"550 5.1.1 <nosuchuser@example.org>"
        )),
        "{log}"
    );
}

/// The next hop for verification: accepts `known*`, 550s `gone*`, 450s
/// `busy*`; counts the RCPTs it saw.
fn verifying_sink(rcpts: Arc<AtomicUsize>) -> Sink {
    Sink::with(SinkConfig::default().rcpt(move |addr| {
        rcpts.fetch_add(1, Ordering::SeqCst);
        if addr.starts_with("gone") {
            Action::reply(550, "5.1.1 no such user here")
        } else if addr.starts_with("busy") {
            Action::reply(450, "4.2.1 try later")
        } else {
            Action::reply(250, "2.1.5 Ok")
        }
    }))
}

fn rcpt(relay: &Relay, addr: &str) -> String {
    let mut t = Talk::connect_from("127.0.0.9", relay.addr());
    t.expect(220);
    t.cmd("EHLO c.example", 250);
    t.cmd("MAIL FROM:<someone@sender.example>", 250);
    let r = said(&mut t, &format!("RCPT TO:<{addr}>"));
    t.cmd("QUIT", 221);
    r
}

#[test]
fn verification_by_probe_with_cache_lifetimes() {
    let probes = Arc::new(AtomicUsize::new(0));
    let sink = verifying_sink(probes.clone());
    let relay = Relay::receive_only(&[
        "--no-dns",
        "--relay-net",
        "127.0.0.1/32",
        "--relay-domain",
        "example.org",
        "--route",
        &format!("example.org=127.0.0.1:{}", sink.addr().port()),
        "--verify-recipients",
        "example.org",
        "--verify-positive-ttl",
        "6s",
        "--verify-negative-ttl",
        "3s",
    ]);
    let n = || probes.load(Ordering::SeqCst);
    assert_eq!(
        rcpt(&relay, "known@example.org").split(' ').next(),
        Some("250")
    );
    assert_eq!(n(), 1);
    let gone = "550 5.1.1 <gone@example.org>: Recipient address rejected: user unknown";
    assert_eq!(rcpt(&relay, "gone@example.org"), gone);
    assert_eq!(n(), 2);
    assert_eq!(
        rcpt(&relay, "busy@example.org"),
        "450 4.1.1 <busy@example.org>: Recipient address verification in progress or temporarily failed"
    );
    assert_eq!(n(), 3);
    // cached: no new probe for either answer
    let t0 = Instant::now();
    assert_eq!(
        rcpt(&relay, "KNOWN@example.org").split(' ').next(),
        Some("250")
    );
    assert_eq!(rcpt(&relay, "gone@example.org"), gone);
    assert_eq!(n(), 3, "answers came from the cache");
    // a 4xx is not cached
    rcpt(&relay, "busy@example.org");
    assert_eq!(n(), 4);
    // after the negative lifetime (3s) the refusal is asked again, while
    // the positive answer (6s) is still cached (checked only when the
    // machine was quick enough for it to still be)
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(t0.elapsed()));
    assert_eq!(rcpt(&relay, "gone@example.org"), gone);
    assert_eq!(n(), 5, "negative answer expired and probed again");
    if t0.elapsed() < Duration::from_millis(5000) {
        rcpt(&relay, "known@example.org");
        assert_eq!(n(), 5, "positive answer still cached");
    }
    std::thread::sleep(Duration::from_millis(6300).saturating_sub(t0.elapsed()));
    rcpt(&relay, "known@example.org");
    assert_eq!(n(), 6, "positive answer expired and probed again");
    // the probes never sent data
    assert_eq!(sink.count(), 0);
    assert!(queued_ids(relay.spool()).is_empty());
}

#[test]
fn hanging_next_hop_gives_450_within_the_probe_timeout() {
    let sink = Sink::with(SinkConfig::default().rcpt(|_| Action::Hang(Duration::from_secs(30))));
    let relay = Relay::receive_only(&[
        "--no-dns",
        "--relay-domain",
        "example.org",
        "--route",
        &format!("example.org=127.0.0.1:{}", sink.addr().port()),
        "--verify-recipients",
        "example.org",
        "--verify-timeout",
        "2s",
    ]);
    let start = Instant::now();
    assert_eq!(
        rcpt(&relay, "who@example.org"),
        "450 4.1.1 <who@example.org>: Recipient address verification in progress or temporarily failed"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "took {took:?}"
    );
}

#[test]
fn bare_postmaster_goes_to_the_postmaster_address() {
    let sink = Sink::start();
    let relay = Relay::start(&[
        "--no-dns",
        "--relay-net",
        "127.0.0.1/32",
        "--route",
        &format!("admin.example=127.0.0.1:{}", sink.addr().port()),
        "--postmaster",
        "hostmaster@admin.example",
    ]);
    // from outside the relay network, no relay domain: still accepted
    let mut t = Talk::connect_from("127.0.0.9", relay.addr());
    t.expect(220);
    t.cmd("EHLO c.example", 250);
    t.cmd("MAIL FROM:<a@b.example>", 250);
    t.cmd_enh("RCPT TO:<Postmaster>", 250, "2.1.5");
    t.cmd("DATA", 354);
    t.send_raw(b"Subject: hello postmaster\r\n\r\nx\r\n.\r\n");
    t.expect(250);
    assert!(sink.wait_for(1, Duration::from_secs(15)), "{}", relay.log());
    assert_eq!(sink.messages()[0].rcpts, ["hostmaster@admin.example"]);
}

#[test]
fn double_bounce_goes_to_the_postmaster_once() {
    let pm_rcpts = Arc::new(AtomicUsize::new(0));
    let count = pm_rcpts.clone();
    let pm_ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let ok = pm_ok.clone();
    let sink = Sink::with(SinkConfig::default().rcpt(move |addr| {
        if addr.starts_with("pm@") {
            count.fetch_add(1, Ordering::SeqCst);
            if ok.load(Ordering::SeqCst) {
                return Action::reply(250, "2.1.5 Ok");
            }
            return Action::reply(550, "5.1.1 postmaster gone too");
        }
        Action::reply(550, "5.1.1 no such user")
    }));
    let relay = Relay::start(&[
        "--no-dns",
        "--retry-min",
        "1s",
        "--retry-max",
        "1s",
        "--route",
        &format!("dest.example=127.0.0.1:{}", sink.addr().port()),
        "--route",
        &format!("admin.example=127.0.0.1:{}", sink.addr().port()),
        "--postmaster",
        "pm@admin.example",
    ]);
    let body = b"Subject: a bounce\r\n\r\nx\r\n";
    // a bounce (null sender) that cannot be delivered: to the postmaster
    let mut t = Talk::greet(relay.addr());
    t.send_mail("", &["x@dest.example"], body);
    assert!(sink.wait_for(1, Duration::from_secs(15)), "{}", relay.log());
    let m = &sink.messages()[0];
    assert_eq!(
        (m.mail_from.as_str(), &m.rcpts[..]),
        ("", &["pm@admin.example".to_string()][..])
    );
    let text = String::from_utf8_lossy(&m.data);
    assert!(text.contains("x@dest.example"), "{text}");
    assert!(wait_until(Duration::from_secs(10), || queue_files(
        relay.spool()
    )
    .is_empty()));
    assert_eq!(pm_rcpts.load(Ordering::SeqCst), 1);
    // the postmaster refuses too: the double bounce is dropped, no loop
    pm_ok.store(false, Ordering::SeqCst);
    t.send_mail("", &["y@dest.example"], body);
    assert!(
        wait_until(Duration::from_secs(15), || queue_files(relay.spool())
            .is_empty()),
        "{:?}\n{}",
        envelopes(relay.spool()),
        relay.log()
    );
    assert_eq!(
        pm_rcpts.load(Ordering::SeqCst),
        2,
        "one try for the second double bounce"
    );
    assert!(
        relay.log().contains("undeliverable double bounce dropped"),
        "{}",
        relay.log()
    );
    // a little later: still nothing new
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pm_rcpts.load(Ordering::SeqCst), 2);
    assert_eq!(sink.count(), 1);
}

/// Reverse names. Every client here is on loopback, and the resolver
/// answers a loopback PTR itself with `localhost` (RFC 6761 §6.3) without
/// asking a server, so a zone served by dnsmasq cannot name 127.0.0.x:
/// the lookup is exercised through that answer, and `ptr:unknown` with
/// DNS off (`--no-dns`: no name).
#[test]
fn reverse_name_rules() {
    let dir = TempDir::new("edge");
    let access = write(
        dir.path(),
        "access",
        "connect ptr:*.dynamic.example reject 554 5.7.1 dynamic address\n\
         connect ptr:unknown defer\n\
         connect 127.0.0.3 continue\n\
         rcpt ptr:localhost hold\n",
    );
    let relay = Relay::receive_only(&["--access", &access]);
    let mut t = Talk::connect_from("127.0.0.3", relay.addr());
    t.expect(220);
    t.cmd("EHLO c.example", 250);
    let id = t.send_mail("a@b.example", &["u@c.example"], b"Subject: t\r\n\r\nx\r\n");
    assert_eq!(EnvFile::load(relay.spool(), &id).get("hold"), "forever");
    let dynamic = write(
        dir.path(),
        "access2",
        "connect ptr:.localhost reject\nconnect ptr:LOCALHOST reject 554 5.7.1 named\n",
    );
    let relay = Relay::receive_only(&["--access", &dynamic]);
    let mut t = Talk::connect_from("127.0.0.3", relay.addr());
    assert_eq!(greeting(&mut t), "554 5.7.1 named");
    let relay = Relay::receive_only(&["--no-dns", "--access", &access]);
    let mut t = Talk::connect_from("127.0.0.5", relay.addr());
    assert_eq!(
        greeting(&mut t),
        "421 4.7.1 Client host rejected: Try again later"
    );
}

/// Bad settings stop the start with the documented exit codes: a usage
/// error (64), a missing file (66), a bad line (78, naming the line).
#[test]
fn bad_settings_stop_the_start() {
    let dir = TempDir::new("edge");
    let spool = dir.path().join("spool").display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--spool",
            &spool,
            "--relay-domain",
            "example.org",
        ];
        args.extend_from_slice(extra);
        run_cli(&args, Duration::from_secs(10))
    };
    let r = run(&["--recipients", "other.example=/x"]);
    assert_eq!(r.code, Some(64), "{r:?}");
    assert!(r.stderr.contains("is not a --relay-domain"), "{r:?}");
    let r = run(&["--verify-recipients", "other.example"]);
    assert_eq!(r.code, Some(64), "{r:?}");
    let r = run(&["--recipients", "example.org"]);
    assert_eq!(r.code, Some(64), "{r:?}");
    let r = run(&["--postmaster", "not an address"]);
    assert_eq!(r.code, Some(64), "{r:?}");
    let missing = dir.path().join("missing").display().to_string();
    let r = run(&["--access", &missing]);
    assert_eq!(r.code, Some(66), "{r:?}");
    let bad = write(dir.path(), "access", "# ok\nmail @x.example reject 450\n");
    let r = run(&["--access", &bad]);
    assert_eq!(r.code, Some(78), "{r:?}");
    assert!(r.stderr.contains("line 2: 450 is not a 5xx code"), "{r:?}");
    let bad = write(dir.path(), "table", "alice@example.org\nbob\n");
    let r = run(&["--recipients", &format!("example.org={bad}")]);
    assert_eq!(r.code, Some(78), "{r:?}");
    assert!(r.stderr.contains("line 2:"), "{r:?}");
}

/// The issue's case, end to end with delivery on: a forged sender, one
/// unknown and one known recipient behind a verifying relay. The unknown
/// one is refused at RCPT; the next hop gets the message for the known
/// one only, and no DSN ever leaves (nothing to bounce).
#[test]
fn no_backscatter_for_a_refused_recipient() {
    let probes = Arc::new(AtomicUsize::new(0));
    let sink = verifying_sink(probes.clone());
    let relay = Relay::start(&[
        "--no-dns",
        "--relay-net",
        "127.0.0.1/32",
        "--relay-domain",
        "example.org",
        "--route",
        &format!("*=127.0.0.1:{}", sink.addr().port()),
        "--verify-recipients",
        "example.org",
    ]);
    let mut t = Talk::connect_from("127.0.0.9", relay.addr());
    t.expect(220);
    t.cmd("EHLO c.example", 250);
    t.cmd("MAIL FROM:<innocent@victim.test>", 250);
    assert_eq!(
        said(&mut t, "RCPT TO:<gone.user@example.org>"),
        "550 5.1.1 <gone.user@example.org>: Recipient address rejected: user unknown"
    );
    t.cmd_enh("RCPT TO:<known@example.org>", 250, "2.1.5");
    t.cmd("DATA", 354);
    t.send_raw(b"Subject: t\r\n\r\nx\r\n.\r\n");
    t.expect(250);
    assert!(sink.wait_for(1, Duration::from_secs(15)), "{}", relay.log());
    assert!(wait_until(Duration::from_secs(10), || queue_files(
        relay.spool()
    )
    .is_empty()));
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].rcpts, ["known@example.org"]);
    assert_eq!(got[0].mail_from, "innocent@victim.test");
    // two probes, then the delivery
    assert_eq!(probes.load(Ordering::SeqCst), 3);
}
