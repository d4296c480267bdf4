//! The milter client (issue 14) against a scripted milter: a test thread
//! speaking the milter protocol (version 6) on a loopback port, answering
//! each event as the test's script says, recording every packet it was
//! sent. One test per action and per fault; the delivered message is
//! checked at a sink where the milter changed it.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

const DELIVERY: Duration = Duration::from_secs(10);

/// Everything but `SMFIF_SETSYMLIST` (0x100): every modification.
const ALL_ACTIONS: u32 = 0xFF;

/// Packets a milter received: command and data.
type Packets = Vec<(u8, Vec<u8>)>;

type Script = dyn Fn(u8, &[u8]) -> Vec<Vec<u8>> + Send + Sync;

/// A milter's packet: length, command, data.
fn pkt(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

fn cont() -> Vec<Vec<u8>> {
    vec![pkt(b'c', b"")]
}

/// NUL-terminated strings.
fn nul(items: &[&[u8]]) -> Vec<u8> {
    let mut d = Vec::new();
    for i in items {
        d.extend_from_slice(i);
        d.push(0);
    }
    d
}

struct Milter {
    /// `inet:127.0.0.1:PORT` or `unix:PATH`, as `--milter` takes it.
    spec: String,
    /// Every packet received, in order, over all connections.
    seen: Arc<Mutex<Packets>>,
}

impl Milter {
    /// A milter negotiating `actions` and protocol `steps`, answering
    /// each event (not OPTNEG, macros, abort, quit) with `script`.
    fn start(
        actions: u32,
        steps: u32,
        script: impl Fn(u8, &[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static,
    ) -> Milter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = format!("inet:{}", listener.local_addr().unwrap());
        let conns = std::iter::from_fn(move || Some(listener.accept().map(|(c, _)| c)));
        Milter::serving(spec, conns, actions, steps, Vec::new(), script)
    }

    /// `start`, with `tail` after the option negotiation's three numbers
    /// (macro lists).
    fn start_asking(
        actions: u32,
        steps: u32,
        tail: Vec<u8>,
        script: impl Fn(u8, &[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static,
    ) -> Milter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = format!("inet:{}", listener.local_addr().unwrap());
        let conns = std::iter::from_fn(move || Some(listener.accept().map(|(c, _)| c)));
        Milter::serving(spec, conns, actions, steps, tail, script)
    }

    /// The same on a unix socket at `path`.
    fn start_unix(
        path: &std::path::Path,
        actions: u32,
        steps: u32,
        script: impl Fn(u8, &[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static,
    ) -> Milter {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let spec = format!("unix:{}", path.display());
        let conns = std::iter::from_fn(move || Some(listener.accept().map(|(c, _)| c)));
        Milter::serving(spec, conns, actions, steps, Vec::new(), script)
    }

    /// Serves each connection `conns` yields on its own thread.
    fn serving<C: Read + Write + Send + 'static>(
        spec: String,
        conns: impl Iterator<Item = std::io::Result<C>> + Send + 'static,
        actions: u32,
        steps: u32,
        tail: Vec<u8>,
        script: impl Fn(u8, &[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static,
    ) -> Milter {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::new(tail);
        let script: Arc<Script> = Arc::new(script);
        let s2 = seen.clone();
        thread::spawn(move || {
            for conn in conns {
                let Ok(conn) = conn else { return };
                let (seen, script, tail) = (s2.clone(), script.clone(), tail.clone());
                thread::spawn(move || serve(conn, (actions, steps, &tail), &seen, &*script));
            }
        });
        Milter { spec, seen }
    }

    fn spec(&self) -> String {
        self.spec.clone()
    }

    fn seen(&self) -> Packets {
        self.seen.lock().unwrap().clone()
    }

    fn commands(&self) -> String {
        self.seen().iter().map(|(c, _)| *c as char).collect()
    }
}

/// One connection: `(actions, steps, tail)` is the option negotiation.
fn serve(
    mut conn: impl Read + Write,
    (actions, steps, tail): (u32, u32, &[u8]),
    seen: &Mutex<Packets>,
    script: &Script,
) {
    loop {
        let mut len = [0u8; 4];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut data = vec![0u8; u32::from_be_bytes(len) as usize];
        if conn.read_exact(&mut data).is_err() || data.is_empty() {
            return;
        }
        let cmd = data.remove(0);
        seen.lock().unwrap().push((cmd, data.clone()));
        let out = match cmd {
            b'O' => {
                let mut d = 6u32.to_be_bytes().to_vec();
                d.extend_from_slice(&actions.to_be_bytes());
                d.extend_from_slice(&steps.to_be_bytes());
                d.extend_from_slice(tail);
                vec![pkt(b'O', &d)]
            }
            b'D' | b'A' => vec![],
            b'Q' => return,
            _ => script(cmd, &data),
        };
        for p in out {
            // an empty packet is the script's way to drop the connection
            if p.is_empty() || conn.write_all(&p).is_err() {
                return;
            }
        }
    }
}

fn relay_with(milters: &[String], extra: &[&str]) -> Relay {
    let mut args: Vec<&str> = Vec::new();
    for m in milters {
        args.push("--milter");
        args.push(m);
    }
    args.extend_from_slice(extra);
    Relay::receive_only(&args)
}

const MSG: &[u8] = b"From: a@origin.test\r\nTo: b@dest.test\r\nSubject: Hello\r\nX-Old: 1\r\nX-Old: 2\r\n\r\nBody line\r\n";

/// The relay's log says `needle` (the whole log shown if not).
fn assert_logged(relay: &Relay, needle: &str) {
    let log = relay.log();
    assert!(log.contains(needle), "no {needle:?} in the log:\n{log}");
}

/// `msg` from a@origin.test to `rcpt` through a relay with `milter`,
/// as the sink it was forwarded to received it.
fn relayed(milter: &str, rcpt: &str, msg: &[u8]) -> Received {
    let sink = Sink::start();
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let relay = Relay::start(&["--no-dns", "--route", &route, "--milter", milter]);
    relay.session().send_mail("a@origin.test", &[rcpt], msg);
    assert!(sink.wait_for(1, DELIVERY), "nothing delivered");
    sink.messages().remove(0)
}

fn stored(relay: &Relay, id: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(msg_path(relay.spool(), id)).unwrap()).into_owned()
}

fn envelope(relay: &Relay, id: &str) -> String {
    std::fs::read_to_string(env_path(relay.spool(), id)).unwrap()
}

/// The reply to DATA's end after sending MSG (MAIL and RCPT accepted).
fn end_of_data(t: &mut Talk) -> (u16, String) {
    t.cmd("MAIL FROM:<a@origin.test>", 250);
    t.cmd("RCPT TO:<b@dest.test>", 250);
    t.cmd("DATA", 354);
    t.send_raw(MSG);
    t.send_raw(b".\r\n");
    t.reply()
}

#[test]
fn continue_everywhere_queues_the_message_and_the_milter_sees_every_event() {
    let m = Milter::start(ALL_ACTIONS, 0, |_, _| cont());
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    let id = t.send_mail("a@origin.test", &["b@dest.test"], MSG);
    t.cmd("QUIT", 221);
    assert!(stored(&relay, &id).ends_with("\r\n\r\nBody line\r\n"));
    // negotiation, connect, HELO, MAIL, RCPT, DATA, 6 headers (ours
    // first), end of headers, body, end of message, each after macros
    let cmds = m.commands();
    assert!(cmds.starts_with("ODCDH"), "{cmds}");
    assert!(cmds.contains("DMDRDTLLLLLLDNBDE"), "{cmds}");
    let seen = m.seen();
    let macros = |stage: u8| -> String {
        seen.iter()
            .filter(|(c, d)| *c == b'D' && d[0] == stage)
            .map(|(_, d)| String::from_utf8_lossy(&d[1..]).replace('\0', "|"))
            .collect()
    };
    assert!(macros(b'C').contains("j|relay.test|"), "{}", macros(b'C'));
    assert!(macros(b'C').contains("{client_addr}|127.0.0.1|"));
    assert!(macros(b'M').contains("{mail_addr}|a@origin.test|"));
    assert!(macros(b'R').contains("{rcpt_addr}|b@dest.test|"));
    assert!(macros(b'T').contains(&format!("i|{id}|")));
    assert!(macros(b'E').contains(&format!("i|{id}|")));
    let headers: Vec<String> = seen
        .iter()
        .filter(|(c, _)| *c == b'L')
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert!(headers[0].starts_with("Received\0from "), "{headers:?}");
    assert_eq!(headers[3], "Subject\0Hello\0", "no leading space");
    let body: Vec<u8> = seen
        .iter()
        .filter(|(c, _)| *c == b'B')
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(body, b"Body line\r\n");
}

#[test]
fn body_goes_in_chunks_of_at_most_65535_octets() {
    let m = Milter::start(ALL_ACTIONS, 0, |_, _| cont());
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    let line = "x".repeat(998) + "\r\n";
    let body = line.repeat(200);
    let msg = format!("Subject: big\r\n\r\n{body}");
    t.send_mail("a@origin.test", &["b@dest.test"], msg.as_bytes());
    let chunks: Vec<Vec<u8>> = m
        .seen()
        .into_iter()
        .filter(|(c, _)| *c == b'B')
        .map(|(_, d)| d)
        .collect();
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.len() <= 65535));
    assert_eq!(chunks.concat(), body.as_bytes());
}

#[test]
fn accept_at_mail_skips_the_rest_of_the_message() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'M' => vec![pkt(b'a', b"")],
        b'E' => vec![pkt(b'r', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    // queued, though the milter would have rejected at the end
    t.send_mail("a@origin.test", &["b@dest.test"], MSG);
    let cmds = m.commands();
    assert!(cmds.contains('M'), "{cmds}");
    assert!(!cmds.contains('E') && !cmds.contains('R'), "{cmds}");
}

#[test]
fn reject_at_connect_is_a_554_greeting() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'C' => vec![pkt(b'r', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.talk();
    let (code, text) = t.reply();
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.7.1"), "{text}");
    assert_logged(&relay, "refused reason=milter stage=connect");
}

#[test]
fn reject_at_mail_and_rcpt() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, d| match c {
        b'M' if d.starts_with(b"<bad@") => vec![pkt(b'r', b"")],
        b'R' if d.starts_with(b"<no@") => vec![pkt(b'r', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<bad@origin.test>", 550, "5.7.1");
    // the refused MAIL did not start a transaction
    t.cmd("RCPT TO:<b@dest.test>", 503);
    t.cmd("MAIL FROM:<a@origin.test>", 250);
    t.cmd_enh("RCPT TO:<no@dest.test>", 550, "5.7.1");
    t.cmd("RCPT TO:<b@dest.test>", 250);
    t.cmd("DATA", 354);
    t.send_raw(MSG);
    t.send_raw(b".\r\n");
    let text = t.expect(250);
    let id = queued_id(&text).unwrap();
    let env = envelope(&relay, &id);
    assert!(!env.contains("no@dest.test"), "{env}");
    // one refusal line each, naming the milter
    assert_logged(
        &relay,
        "refused reason=milter stage=mail rule=\"milter inet:127.0.0.1:",
    );
    assert_logged(
        &relay,
        "refused reason=milter stage=rcpt rule=\"milter inet:127.0.0.1:",
    );
    // the milter saw an abort before the second MAIL
    assert!(m.commands().contains("ADM"), "{}", m.commands());
}

#[test]
fn reject_and_tempfail_at_end_of_message_queue_nothing() {
    for (answer, code) in [(b'r', 550), (b't', 451)] {
        let m = Milter::start(ALL_ACTIONS, 0, move |c, _| match c {
            b'E' => vec![pkt(answer, b"")],
            _ => cont(),
        });
        let relay = relay_with(&[m.spec()], &[]);
        let mut t = relay.session();
        let (got, text) = end_of_data(&mut t);
        assert_eq!(got, code, "{text}");
        assert!(queued_ids(relay.spool()).is_empty());
        assert_eq!(tmp_count(relay.spool()), 0);
    }
}

#[test]
fn tempfail_at_rcpt() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'R' => vec![pkt(b't', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    t.cmd("MAIL FROM:<a@origin.test>", 250);
    t.cmd_enh("RCPT TO:<b@dest.test>", 451, "4.7.1");
}

#[test]
fn discard_answers_250_and_queues_nothing() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'E' => vec![pkt(b'd', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    let (code, _) = end_of_data(&mut t);
    assert_eq!(code, 250);
    assert!(queued_ids(relay.spool()).is_empty());
    assert_logged(&relay, "discarded by milter");
}

#[test]
fn reply_codes_pass_multi_line_and_sanitized() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'R' => vec![pkt(
            b'y',
            b"554 5.7.1 first line\r\n554 5.7.1 second\x07line\0",
        )],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    t.cmd("MAIL FROM:<a@origin.test>", 250);
    t.send("RCPT TO:<b@dest.test>");
    let (code, text) = t.reply();
    assert_eq!(code, 554);
    assert_eq!(text, "5.7.1 first line\n5.7.1 second?line");
    assert!(t
        .transcript()
        .contains("S: 554-5.7.1 first line\nS: 554 5.7.1 second?line"));
}

#[test]
fn quarantine_holds_the_message() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'E' => vec![pkt(b'q', b"looks odd\0"), pkt(b'a', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    let id = t.send_mail("a@origin.test", &["b@dest.test"], MSG);
    let env = envelope(&relay, &id);
    assert!(
        env.contains("hold: forever\nhold-reason: milter quarantine: looks odd\n"),
        "{env}"
    );
    let s = relay.spool().to_string_lossy().into_owned();
    let list = run_cli(&["queue", "list", "--spool", &s], DELIVERY);
    assert!(list.stdout.contains("held"), "{}", list.stdout);
    let show = run_cli(&["queue", "show", "--spool", &s, &id], DELIVERY);
    assert!(
        show.stdout
            .contains("reason:    milter quarantine: looks odd"),
        "{}",
        show.stdout
    );
    let release = run_cli(&["queue", "release", "--spool", &s, &id], DELIVERY);
    assert_eq!(release.code, Some(0), "{release:?}");
    assert!(
        !envelope(&relay, &id).contains("hold"),
        "released: the reason goes too"
    );
}

#[test]
fn header_changes_are_stored_and_delivered() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'E' => vec![
            pkt(b'h', &nul(&[b"X-Added", b"yes"])),
            pkt(b'p', b""),
            pkt(
                b'i',
                &[
                    &0u32.to_be_bytes()[..],
                    &nul(&[b"X-First", b"top\n\tfolded"]),
                ]
                .concat(),
            ),
            pkt(
                b'm',
                &[&2u32.to_be_bytes()[..], &nul(&[b"X-Old", b"two"])].concat(),
            ),
            pkt(
                b'm',
                &[&1u32.to_be_bytes()[..], &nul(&[b"Subject", b""])].concat(),
            ),
            pkt(b'c', b""),
        ],
        _ => cont(),
    });
    let got = relayed(&m.spec(), "b@dest.test", MSG);
    let got = String::from_utf8_lossy(&got.data).into_owned();
    assert!(
        got.starts_with("X-First: top\r\n\tfolded\r\nReceived: from "),
        "{got}"
    );
    assert!(
        got.contains("\r\nX-Old: 1\r\nX-Old: two\r\nX-Added: yes\r\n\r\nBody line\r\n"),
        "{got}"
    );
    assert!(!got.contains("Subject:"), "{got}");
}

#[test]
fn envelope_and_body_changes_are_delivered() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'E' => vec![
            pkt(b'e', &nul(&[b"<new@origin.test>"])),
            pkt(b'+', &nul(&[b"<added@dest.test>"])),
            pkt(b'2', &nul(&[b"<param@dest.test>", b""])),
            pkt(b'-', &nul(&[b"<b@dest.test>"])),
            pkt(b'b', b"Replaced "),
            pkt(b'b', b"body\nsecond line\n"),
            pkt(b'c', b""),
        ],
        _ => cont(),
    });
    let got = &relayed(&m.spec(), "b@dest.test", MSG);
    assert_eq!(got.mail_from, "new@origin.test");
    let mut rcpts = got.rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["added@dest.test", "param@dest.test"]);
    let data = String::from_utf8_lossy(&got.data).into_owned();
    assert!(
        data.ends_with("\r\n\r\nReplaced body\r\nsecond line\r\n"),
        "{data}"
    );
    assert!(data.contains("Subject: Hello\r\n"));
}

#[test]
fn modifications_not_negotiated_are_garbage() {
    // ADDHDRS only: a CHGFROM is a protocol error; default accept
    let m = Milter::start(0x01, 0, |c, _| match c {
        b'E' => vec![pkt(b'e', &nul(&[b"<x@y.test>"])), pkt(b'c', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[format!("{},default=accept", m.spec())], &[]);
    let mut t = relay.session();
    let id = t.send_mail("a@origin.test", &["b@dest.test"], MSG);
    assert!(envelope(&relay, &id).contains("from: <a@origin.test>"));
    assert_logged(&relay, "not negotiated");
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn milter_down_tempfails_by_default() {
    let spec = format!("inet:127.0.0.1:{}", closed_port());
    let relay = relay_with(&[spec], &[]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@origin.test>", 451, "4.7.1");
    assert_logged(&relay, "default action Tempfail");
}

#[test]
fn milter_down_with_default_accept_lets_mail_through() {
    let spec = format!("inet:127.0.0.1:{},default=accept", closed_port());
    let relay = relay_with(&[spec], &[]);
    let mut t = relay.session();
    t.send_mail("a@origin.test", &["b@dest.test"], MSG);
    assert_logged(&relay, "default action Accept");
}

#[test]
fn slow_milter_is_left_after_its_timeout() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| {
        if c == b'M' {
            thread::sleep(Duration::from_secs(8));
        }
        cont()
    });
    let relay = relay_with(&[format!("{},command-timeout=1s", m.spec())], &[]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@origin.test>", 451, "4.7.1");
    assert_logged(&relay, "at mail: timed out");
}

#[test]
fn slow_end_of_message_with_progress_is_bounded() {
    // PROGRESS every half second, forever: the eom timeout still ends it
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| {
        if c == b'E' {
            return (0..20)
                .map(|_| {
                    thread::sleep(Duration::from_millis(500));
                    pkt(b'p', b"")
                })
                .collect();
        }
        cont()
    });
    let relay = relay_with(
        &[format!("{},eom-timeout=2s,default=accept", m.spec())],
        &[],
    );
    let mut t = relay.session();
    let (code, text) = end_of_data(&mut t);
    assert_eq!(code, 250, "{text}");
    assert_logged(&relay, "at eom: timed out");
}

#[test]
fn garbage_from_a_milter_takes_the_default_action() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'R' => vec![b"\xff\xff\xff\xffjunk".to_vec()],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    t.cmd("MAIL FROM:<a@origin.test>", 250);
    t.cmd_enh("RCPT TO:<b@dest.test>", 451, "4.7.1");
    assert_logged(&relay, "packet length");
}

#[test]
fn milters_are_called_in_order_and_no_reply_steps_are_not_waited_for() {
    // the first milter answers no headers (SMFIP_NR_HDR) and adds one;
    // the second sees the added header and rejects because of it
    let first = Milter::start(ALL_ACTIONS, 0x80, |c, _| match c {
        b'L' => vec![],
        b'E' => vec![pkt(b'h', &nul(&[b"X-Spam", b"yes"])), pkt(b'c', b"")],
        _ => cont(),
    });
    let second = Milter::start(ALL_ACTIONS, 0, |c, d| match c {
        b'L' if d.starts_with(b"X-Spam\0") => vec![pkt(b'y', b"550 5.7.0 spam\0")],
        _ => cont(),
    });
    let relay = relay_with(&[first.spec(), second.spec()], &[]);
    let mut t = relay.session();
    let (code, text) = end_of_data(&mut t);
    assert_eq!((code, text.contains("5.7.0 spam")), (550, true), "{text}");
}

// ---- real milters from Debian's packages ----

/// A child process killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether every tool is there; outside CI a missing one skips the test
/// with a reason, in CI it fails it (scripts/ci-deps.sh installs them).
fn have(test: &str, tools: &[(&str, &str)]) -> bool {
    for (path, package) in tools {
        if !std::path::Path::new(path).exists() {
            if in_ci() {
                panic!("{test}: {path} missing (package {package}; scripts/ci-deps.sh)");
            }
            println!("SKIPPED {test}: {path} missing (package {package}; run scripts/ci-deps.sh)");
            return false;
        }
    }
    true
}

/// The DNS TXT record opendkim-genkey wrote (`SEL.txt`, a zone-file
/// line with the record in quoted pieces), as one string.
fn genkey_record(txt: &str) -> String {
    txt.split('"').skip(1).step_by(2).collect()
}

fn wait_listening(port: u16) -> bool {
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

#[test]
fn opendkim_signs_and_dkimpy_verifies_against_dnsmasq() {
    let test = "opendkim_signs_and_dkimpy_verifies_against_dnsmasq";
    let tools = [
        ("/usr/sbin/opendkim", "opendkim"),
        ("/usr/sbin/opendkim-genkey", "opendkim-tools"),
        (
            "/usr/lib/python3/dist-packages/dkim/__init__.py",
            "python3-dkim",
        ),
    ];
    if !have(test, &tools) {
        return;
    }
    // README "OpenDKIM", run as written but for the key's folder, the
    // domain, the port and logging
    let dir = TempDir::new("opendkim");
    let d = dir.path();
    let keys = d.display().to_string();
    let fit = |s: &str| {
        s.replace("/etc/opendkim/keys", &keys)
            .replace("example.org", "example.test")
    };
    let gen = std::process::Command::new("sh")
        .arg("-ec")
        .arg(fit(&readme_block("### OpenDKIM", "sh")))
        .output()
        .unwrap();
    assert!(gen.status.success(), "{gen:?}");
    let record = genkey_record(&std::fs::read_to_string(d.join("mail.txt")).unwrap());
    assert!(
        record.starts_with("v=DKIM1;") && record.contains("p="),
        "{record}"
    );
    // a TXT string holds at most 255 octets: give dnsmasq pieces
    let pieces: Vec<String> = record
        .as_bytes()
        .chunks(200)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let txt = format!(
        "--txt-record=mail._domainkey.example.test,{}",
        pieces.join(",")
    );
    let Some(dns) = dnsmasq::Dnsmasq::start(test, &[&txt]) else {
        return;
    };

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = d.join("opendkim.conf");
    let text = fit(&readme_block("### OpenDKIM", "text"))
        .replace("8891", &port.to_string())
        .replace("Syslog yes\n", "Syslog no\nBackground no\n")
        // the key sits under /tmp, which is everyone's
        + "RequireSafeKeys no\n";
    std::fs::write(&conf, text).unwrap();
    let _opendkim = Child(
        std::process::Command::new("/usr/sbin/opendkim")
            .args(["-f", "-x", &conf.to_string_lossy()])
            .spawn()
            .unwrap(),
    );
    assert!(wait_listening(port), "opendkim did not listen on {port}");

    let ini = readme_block("### OpenDKIM", "ini");
    let milter = ini
        .trim()
        .strip_prefix("milter = ")
        .expect("a milter line")
        .replace("8891", &port.to_string());
    let msg = b"From: Alice <alice@example.test>\r\nTo: bob@dest.test\r\nSubject: signed by a milter\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nHello,\r\n\r\nthis is signed.\r\n";
    let data = relayed(&milter, "bob@dest.test", msg).data;
    let text = String::from_utf8_lossy(&data).into_owned();
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert!(
        text.contains("d=example.test") && text.contains("s=mail"),
        "{text}"
    );

    let verify = |bytes: &[u8]| {
        let file = d.join("delivered.eml");
        std::fs::write(&file, bytes).unwrap();
        let out = std::process::Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/dkim_verify.py"
            ))
            .arg(dns.addr.port().to_string())
            .arg(&file)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    };
    let (ok, said) = verify(&data);
    assert!(ok, "dkimpy: {said}\n{text}");
    // positive control: the verifier does fail a changed body
    let tampered = text.replace("this is signed.", "this is forged.");
    let (ok, said) = verify(tampered.as_bytes());
    assert!(!ok, "a tampered message verified: {said}");

    // mail injected by `send`, the milter serving `local`: OpenDKIM sees
    // localhost at 127.0.0.1 (its InternalHosts) and signs it too
    let relay = relay_with(&[], &[]);
    let spool = relay.spool().display().to_string();
    let local = format!("{milter},listeners=local");
    let run = run_stdin(
        &[
            "send",
            "--spool",
            &spool,
            "--hostname",
            "relay.test",
            "--milter",
            &local,
            "-t",
        ],
        b"From: Cron <cron@example.test>\nTo: ops@dest.test\nSubject: nightly\n\nall fine\n",
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let id = queued_ids(relay.spool()).remove(0);
    let stored = std::fs::read(msg_path(relay.spool(), &id)).unwrap();
    let text = String::from_utf8_lossy(&stored).into_owned();
    assert!(
        text.contains("DKIM-Signature: ") && text.contains("d=example.test"),
        "{text}"
    );
    let (ok, said) = verify(&stored);
    assert!(ok, "dkimpy, injected: {said}\n{text}");
}

/// rspamd's main process, stopped with SIGTERM on drop (it stops its
/// workers), killed if it does not go within 10 s.
struct Rspamd(std::process::Child);

impl Drop for Rspamd {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn rspamd_milter_proxy_rejects_gtube_with_its_code() {
    let test = "rspamd_milter_proxy_rejects_gtube_with_its_code";
    if !have(
        test,
        &[
            ("/usr/bin/rspamd", "rspamd"),
            ("/etc/rspamd/rspamd.conf", "rspamd"),
        ],
    ) {
        return;
    }
    // README "rspamd": its worker-proxy.inc, on a free port; the other
    // workers off, every folder rspamd writes in the test's own
    let dir = TempDir::new("rspamd");
    let d = dir.path();
    for sub in ["local.d", "override.d", "db", "run", "log"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = readme_block("### rspamd", "text").replace("11332", &port.to_string());
    std::fs::write(d.join("local.d/worker-proxy.inc"), proxy).unwrap();
    for w in [
        "worker-normal.inc",
        "worker-controller.inc",
        "worker-fuzzy.inc",
    ] {
        std::fs::write(d.join("override.d").join(w), "enabled = false;\n").unwrap();
    }
    let var = |k: &str, v: &std::path::Path| format!("{k}={}", v.display());
    let _rspamd = Rspamd(
        std::process::Command::new("/usr/bin/rspamd")
            .args(["-f", "-i", "-c", "/etc/rspamd/rspamd.conf"])
            .args(["--var", &var("LOCAL_CONFDIR", d)])
            .args(["--var", &var("DBDIR", &d.join("db"))])
            .args(["--var", &var("RUNDIR", &d.join("run"))])
            .args(["--var", &var("LOGDIR", &d.join("log"))])
            .stdout(std::fs::File::create(d.join("rspamd.out")).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // the regular expressions are compiled before the proxy listens
    let up = wait_until(Duration::from_secs(240), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "rspamd's proxy did not listen on {port}");

    let relay = relay_with(&[format!("inet:127.0.0.1:{port}")], &[]);
    // its workers may still be starting behind the socket: until the
    // milter negotiates, the relay's default action answers MAIL 451
    let mut ready = None;
    for _ in 0..30 {
        let mut t = relay.session();
        t.send("MAIL FROM:<a@origin.test>");
        if t.reply().0 == 250 {
            ready = Some(t);
            break;
        }
        thread::sleep(Duration::from_secs(2));
    }
    let Some(mut t) = ready else {
        let out = std::fs::read_to_string(d.join("rspamd.out")).unwrap_or_default();
        let tail: String = out.lines().rev().take(30).collect::<Vec<_>>().join("\n");
        panic!(
            "rspamd's proxy never negotiated\n{}\nrspamd (last lines, reversed):\n{tail}",
            relay.log()
        );
    };
    t.cmd("RCPT TO:<b@dest.test>", 250);
    t.cmd("DATA", 354);
    t.send_raw(b"From: a@origin.test\r\nTo: b@dest.test\r\nSubject: gtube\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n.\r\n");
    let (code, text) = t.reply();
    assert_eq!(code, 554, "{text}\n{}", relay.log());
    assert!(text.contains("Gtube pattern"), "{text}");
    assert!(queued_ids(relay.spool()).is_empty());
    // a plain message goes through
    t.send_mail(
        "a@origin.test",
        &["b@dest.test"],
        b"Subject: hello\r\n\r\nJust a note.\r\n",
    );
}

#[test]
fn bdat_messages_go_through_milters_too() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'E' => vec![pkt(b'h', &nul(&[b"X-Filtered", b"bdat"])), pkt(b'c', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    t.cmd("MAIL FROM:<a@origin.test>", 250);
    t.cmd("RCPT TO:<b@dest.test>", 250);
    // bare LF line ends, as BDAT allows
    let part1 = b"Subject: chunks\nX-A: 1\n\n";
    let part2 = b"body\n";
    t.send_raw(format!("BDAT {}\r\n", part1.len()).as_bytes());
    t.send_raw(part1);
    t.expect(250);
    t.send_raw(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
    t.send_raw(part2);
    let id = queued_id(&t.expect(250)).unwrap();
    let msg = stored(&relay, &id);
    assert!(
        msg.contains("Subject: chunks\nX-A: 1\nX-Filtered: bdat\r\n\r\nbody\n"),
        "{msg:?}"
    );
    let cmds = m.commands();
    assert!(cmds.contains("DTLLLDNBDE"), "{cmds}");
}

#[test]
fn helo_refused_by_a_milter_is_not_taken() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, d| match c {
        b'H' if d.starts_with(b"bad.") => vec![pkt(b'y', b"550 5.7.1 not you\0")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.talk();
    t.expect(220);
    t.cmd_enh("EHLO bad.test", 550, "5.7.1");
    t.cmd("MAIL FROM:<a@origin.test>", 503);
    t.cmd("EHLO good.test", 250);
    t.cmd("MAIL FROM:<a@origin.test>", 250);
}

#[test]
fn data_refused_by_a_milter_gets_no_354() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'T' => vec![pkt(b't', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    t.cmd("MAIL FROM:<a@origin.test>", 250);
    t.cmd("RCPT TO:<b@dest.test>", 250);
    t.cmd_enh("DATA", 451, "4.7.1");
    assert_eq!(tmp_count(relay.spool()), 0);
    // the transaction is over
    t.cmd("RCPT TO:<b@dest.test>", 503);
}

#[test]
fn skip_ends_the_body_and_a_unix_socket_milter_works() {
    let dir = TempDir::new("miltersock");
    // SMFIP_SKIP: the milter has seen enough after the first chunk
    let m = Milter::start_unix(
        &dir.path().join("m.sock"),
        ALL_ACTIONS,
        0x400,
        |c, _| match c {
            b'B' => vec![pkt(b's', b"")],
            b'E' => vec![pkt(b'h', &nul(&[b"X-Seen", b"part"])), pkt(b'c', b"")],
            _ => cont(),
        },
    );
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    let body = "y".repeat(998) + "\r\n";
    let msg = format!("Subject: long\r\n\r\n{}", body.repeat(200));
    let id = t.send_mail("a@origin.test", &["b@dest.test"], msg.as_bytes());
    let cmds = m.commands();
    assert_eq!(cmds.matches('B').count(), 1, "{cmds}");
    assert!(cmds.ends_with("BDE"), "{cmds}");
    assert!(stored(&relay, &id).contains("X-Seen: part\r\n"));
}

#[test]
fn skip_not_negotiated_is_garbage() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'B' => vec![pkt(b's', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    let (code, _) = end_of_data(&mut t);
    assert_eq!(code, 451);
    assert_logged(&relay, "Skip in reply to body");
}

#[test]
fn shutdown_at_end_of_message_is_421_and_closes() {
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'E' => vec![pkt(b'4', b"")],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    let (code, text) = end_of_data(&mut t);
    assert_eq!(code, 421, "{text}");
    t.expect_closed();
    assert!(queued_ids(relay.spool()).is_empty());
}

// ---------------------------------------------------------------------
// A milter that drops its connection: reconnected at the next MAIL
// ---------------------------------------------------------------------

#[test]
fn a_milter_that_drops_its_connection_is_reconnected_at_the_next_mail() {
    // every connection's first end of message is answered (with a header
    // naming the connection), then the connection is dropped
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = conns.clone();
    let m = Milter::start(ALL_ACTIONS, 0, move |c, _| match c {
        b'C' => {
            c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            cont()
        }
        b'E' => {
            let n = c2.load(std::sync::atomic::Ordering::SeqCst).to_string();
            vec![
                pkt(b'h', &nul(&[b"X-Conn", n.as_bytes()])),
                pkt(b'c', b""),
                Vec::new(),
            ]
        }
        _ => cont(),
    });
    // default=tempfail: without the reconnect the second MAIL gets 451
    let relay = relay_with(&[format!("{},default=tempfail", m.spec())], &[]);
    let mut t = relay.session();
    let first = t.send_mail("a@origin.test", &["b@dest.test"], MSG);
    // the milter is gone by the time the client sends the next MAIL
    assert!(wait_until(Duration::from_secs(5), || m
        .commands()
        .ends_with('E')));
    std::thread::sleep(Duration::from_millis(100));
    let second = t.send_mail("a@origin.test", &["b@dest.test"], MSG);
    t.cmd("QUIT", 221);
    assert!(stored(&relay, &first).contains("X-Conn: 1\r\n"));
    assert!(
        stored(&relay, &second).contains("X-Conn: 2\r\n"),
        "the second message was not filtered by a new connection"
    );
    // the new connection heard connect and HELO again, then the message
    let cmds = m.commands();
    let again = &cmds[cmds.find('E').expect("a first end of message") + 1..];
    assert!(again.starts_with("ODCDHDM"), "{cmds}");
    assert_logged(&relay, "reconnected, connect and HELO replayed");
}

#[test]
fn a_milter_that_keeps_failing_is_tried_once_per_transaction() {
    // drops every connection at MAIL: each transaction reconnects once,
    // then takes the default action (451), and tries no more
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'M' => vec![Vec::new()],
        _ => cont(),
    });
    let relay = relay_with(&[m.spec()], &[]);
    let mut t = relay.session();
    for _ in 0..3 {
        t.cmd_enh("MAIL FROM:<a@origin.test>", 451, "4.7.1");
    }
    t.cmd("QUIT", 221);
    // the session's first connection, then one per later MAIL
    let cmds = m.commands();
    assert_eq!(cmds.matches('O').count(), 3, "{cmds}");
    assert_eq!(cmds.matches('M').count(), 3, "{cmds}");
}

// ---------------------------------------------------------------------
// Mail injected on this host: send, sendmail, the maildrop pick-up
// ---------------------------------------------------------------------

/// `smtp-relay send -f a@origin.test ARGS b@dest.test` into `relay`'s
/// spool, MSG on its standard input.
fn send_local(relay: &Relay, args: &[&str]) -> CliRun {
    let spool = relay.spool().display().to_string();
    let mut v = vec![
        "send",
        "--spool",
        &spool,
        "--hostname",
        "relay.test",
        "-f",
        "a@origin.test",
    ];
    v.extend_from_slice(args);
    v.push("b@dest.test");
    run_stdin(&v, MSG, Duration::from_secs(30))
}

#[test]
fn send_goes_through_the_local_milters_only_and_keeps_their_changes() {
    let local = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'E' => vec![pkt(b'h', &nul(&[b"X-Local", b"seen"])), pkt(b'c', b"")],
        _ => cont(),
    });
    let smtp_only = Milter::start(ALL_ACTIONS, 0, |_, _| cont());
    let relay = relay_with(&[], &[]);
    let local_spec = format!("{},listeners=local", local.spec());
    let run = send_local(
        &relay,
        &["--milter", &smtp_only.spec(), "--milter", &local_spec],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let ids = queued_ids(relay.spool());
    assert_eq!(ids.len(), 1, "{run:?}");
    assert!(stored(&relay, &ids[0]).contains("\r\nX-Local: seen\r\n\r\nBody line"));
    assert_eq!(
        smtp_only.commands(),
        "",
        "a milter without listeners=local was asked"
    );
    // Postfix's non-SMTP mail: localhost at 127.0.0.1, HELO our name
    let cmds = local.commands();
    assert!(cmds.starts_with("ODCDHDMDRDTLLLLLL"), "{cmds}");
    let seen = local.seen();
    let event = |cmd: u8| {
        seen.iter()
            .find(|(c, _)| *c == cmd)
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_default()
    };
    assert!(event(b'C').starts_with("localhost\0"), "{:?}", event(b'C'));
    assert!(event(b'C').contains("127.0.0.1"), "{:?}", event(b'C'));
    assert_eq!(event(b'H'), "relay.test\0");
    assert_eq!(event(b'M'), "<a@origin.test>\0");
    assert_eq!(event(b'R'), "<b@dest.test>\0");
}

#[test]
fn a_local_milters_refusal_fails_send_69_for_5xx_and_75_for_4xx() {
    let down = format!("inet:127.0.0.1:{},listeners=local", closed_port());
    for (answer, code, said) in [
        (b'r', 69, "550 5.7.1"),
        (b't', 75, "451 4.7.1"),
        (0, 75, "451 4.7.1"),
    ] {
        let m = Milter::start(ALL_ACTIONS, 0, move |c, _| match c {
            b'E' => vec![pkt(answer, b"")],
            _ => cont(),
        });
        let spec = if answer == 0 {
            down.clone()
        } else {
            format!("{},listeners=local", m.spec())
        };
        let relay = relay_with(&[], &[]);
        let run = send_local(&relay, &["--milter", &spec]);
        assert_eq!(run.code, Some(code), "{run:?}");
        let refused = if answer == 0 {
            "milter inet:"
        } else {
            "refused by milter inet:"
        };
        assert!(
            run.stderr.contains(refused) && run.stderr.contains(said),
            "{run:?}"
        );
        assert!(queued_ids(relay.spool()).is_empty(), "queued: {run:?}");
        assert_eq!(tmp_count(relay.spool()), 0);
    }
}

/// `sendmail -t -i` as nobody (so through the maildrop) on `relay`'s
/// spool; `None` (SKIPPED) when the test cannot run as root.
fn sendmail_as_nobody(test: &str, relay: &Relay, input: &[u8]) -> Option<CliRun> {
    let Some((uid, gid)) = nobody().filter(|_| unsafe { libc::geteuid() } == 0) else {
        assert!(!in_ci(), "{test}: needs root and the user nobody");
        println!("SKIPPED {test}: needs root (to run sendmail as nobody)");
        return None;
    };
    let base = TempDir::new("maildrop-milter");
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let conf = write_file(
        base.path(),
        "conf",
        format!(
            "spool = {}\nhostname = relay.test\n",
            relay.spool().display()
        )
        .as_bytes(),
    );
    let run = run_command_stdin(
        std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
                BIN,
                "sendmail",
                "-t",
                "-i",
            ])
            .env("SMTP_RELAY_CONFIG", &conf),
        input,
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "the drop is the server's now: {run:?}");
    Some(run)
}

const CRON: &[u8] = b"To: b@dest.test\nSubject: nightly\n\nthe report\n";

#[test]
fn sendmail_t_through_the_maildrop_refused_by_a_local_milter_bounces_to_its_submitter() {
    let test = "sendmail_t_through_the_maildrop_refused_by_a_local_milter_bounces_to_its_submitter";
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'E' => vec![pkt(b'y', b"550 5.7.1 no cron spam here\0")],
        _ => cont(),
    });
    let sink = Sink::start();
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let spec = format!("{},listeners=local", m.spec());
    let relay = Relay::start(&["--no-dns", "--route", &route, "--milter", &spec]);
    if sendmail_as_nobody(test, &relay, CRON).is_none() {
        return;
    }
    assert!(
        sink.wait_for(1, DELIVERY),
        "no bounce; log:\n{}",
        relay.log()
    );
    let got = sink.messages().remove(0);
    let text = String::from_utf8_lossy(&got.data);
    assert_eq!(got.rcpts, ["nobody@relay.test"], "{text}");
    assert_eq!(got.mail_from, "", "a DSN has the null sender");
    assert!(text.contains("no cron spam here"), "{text}");
    assert!(text.contains("Subject: nightly"), "{text}");
    // the refused message itself went nowhere, and nothing is left
    assert!(sink.messages().iter().all(|r| r.rcpts != ["b@dest.test"]));
    assert!(wait_until(Duration::from_secs(10), || queued_ids(
        relay.spool()
    )
    .is_empty()));
    assert_logged(&relay, "returned to the sender");
}

#[test]
fn a_maildrop_message_a_local_milter_quarantines_stays_held() {
    let test = "a_maildrop_message_a_local_milter_quarantines_stays_held";
    let m = Milter::start(ALL_ACTIONS, 0, |c, _| match c {
        b'E' => vec![pkt(b'q', b"looks odd\0"), pkt(b'c', b"")],
        _ => cont(),
    });
    let spec = format!("{},listeners=local", m.spec());
    let relay = relay_with(&[], &["--milter", &spec]);
    if sendmail_as_nobody(test, &relay, CRON).is_none() {
        return;
    }
    // picked up (the drop gone), and still held with the milter's reason
    // (the pick-up's last line comes after the hold would be released)
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .log()
            .contains("from maildrop/")),
        "not picked up; log:\n{}",
        relay.log()
    );
    let id = queued_ids(relay.spool()).remove(0);
    let env = envelope(&relay, &id);
    assert!(env.contains("hold:"), "the quarantine was released: {env}");
    assert!(env.contains("looks odd"), "{env}");
}

#[test]
fn readme_local_milter_line_works_as_written() {
    let m = Milter::start(ALL_ACTIONS, 0, |_, _| cont());
    let relay = relay_with(&[], &[]);
    let addr = m.spec().trim_start_matches("inet:").to_string();
    let line =
        readme_block("### Mail injected on this host", "ini").replace("127.0.0.1:8891", &addr);
    let dir = TempDir::new("readmelocal");
    let conf = write_file(
        dir.path(),
        "conf",
        format!(
            "spool = {}\nhostname = relay.test\n{line}",
            relay.spool().display()
        )
        .as_bytes(),
    );
    let conf = conf.display().to_string();
    let run = run_stdin(
        &[
            "send",
            "--config",
            &conf,
            "-f",
            "a@origin.test",
            "b@dest.test",
        ],
        MSG,
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(m.commands().contains('E'), "{}", m.commands());
    // and serve takes the same line
    let run = run_cli(
        &["check-config", "--config", &conf],
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn macro_lists_a_milter_asks_for_are_what_it_gets() {
    // SMFIF_SETSYMLIST: at MAIL only {mail_addr} and {auth_type} (which
    // this session lacks), at the end of message only i and client_addr
    // (asked without braces); the other stages keep the default set
    let mut tail = 2u32.to_be_bytes().to_vec();
    tail.extend_from_slice(b"{mail_addr} {auth_type}\0");
    tail.extend_from_slice(&5u32.to_be_bytes());
    tail.extend_from_slice(b"i client_addr\0");
    let m = Milter::start_asking(ALL_ACTIONS | 0x100, 0, tail, |_, _| cont());
    let relay = relay_with(&[m.spec()], &[]);
    let id = relay
        .session()
        .send_mail("a@origin.test", &["b@dest.test"], MSG);
    let seen = m.seen();
    let macros = |stage: u8| -> String {
        seen.iter()
            .filter(|(c, d)| *c == b'D' && d[0] == stage)
            .map(|(_, d)| String::from_utf8_lossy(&d[1..]).replace('\0', "|"))
            .collect()
    };
    assert_eq!(macros(b'M'), "{mail_addr}|a@origin.test|");
    assert_eq!(macros(b'E'), format!("{{client_addr}}|127.0.0.1|i|{id}|"));
    assert!(macros(b'R').contains("{rcpt_addr}|b@dest.test|"));
    assert!(macros(b'C').contains("j|relay.test|"));
    // lists without SMFIF_SETSYMLIST are not honoured
    let mut tail = 2u32.to_be_bytes().to_vec();
    tail.extend_from_slice(b"i\0");
    let m = Milter::start_asking(ALL_ACTIONS, 0, tail, |_, _| cont());
    let relay = relay_with(&[m.spec()], &[]);
    relay
        .session()
        .send_mail("a@origin.test", &["b@dest.test"], MSG);
    let mail: String = m
        .seen()
        .iter()
        .filter(|(c, d)| *c == b'D' && d[0] == b'M')
        .map(|(_, d)| String::from_utf8_lossy(&d[1..]).into_owned())
        .collect();
    assert!(mail.contains("{mail_addr}"), "{mail:?}");
}
