//! The policy-service client (Postfix's policy delegation protocol,
//! SMTPD_POLICY_README): a scripted service (threads in this test) for
//! every action, a slow and a down service, TCP and Unix sockets, and
//! the real `postfix-policyd-spf-python` served on a Unix socket by
//! `socat`, its DNS pointed at a private dnsmasq.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::dnsmasq::Dnsmasq;
use common::*;

type Request = HashMap<String, String>;

/// A policy service answering by the recipient's local part (at RCPT) or
/// the sender's (at END-OF-MESSAGE); it records every request and counts
/// connections.
#[derive(Clone, Default)]
struct Scripted {
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<AtomicUsize>,
}

fn local_part(addr: &str) -> &str {
    addr.split('@').next().unwrap_or("")
}

fn action_for(req: &Request) -> (String, Duration) {
    let none = Duration::ZERO;
    if req.get("protocol_state").map(String::as_str) == Some("END-OF-MESSAGE") {
        let a = match local_part(&req["sender"]) {
            "eomreject" => "REJECT content refused",
            _ => "DUNNO",
        };
        return (a.into(), none);
    }
    let a = match local_part(req.get("recipient").map_or("", String::as_str)) {
        "reject" => "REJECT Recipient not wanted",
        "rejectbare" => "REJECT",
        "defer" => "DEFER come back later",
        "dip" => "DEFER_IF_PERMIT greylisted",
        "code5" => "550 5.7.9 Custom refusal",
        "code4" => "452 no room here",
        "hold" => "HOLD",
        "prepend" => "PREPEND X-Policy-Test: tagged",
        "ok" => "OK",
        "odd" => "FILTER smtp:[127.0.0.1]:10025",
        "slow" => return ("DUNNO".into(), Duration::from_secs(4)),
        _ => "DUNNO",
    };
    (a.into(), none)
}

impl Scripted {
    /// Serves one connection until EOF: one request, one reply.
    fn serve(&self, stream: impl std::io::Read + Write) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        let mut r = BufReader::new(stream);
        loop {
            let mut req = Request::new();
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = line.trim_end_matches('\n');
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once('=') {
                    req.insert(k.to_string(), v.to_string());
                }
            }
            let (action, delay) = action_for(&req);
            self.requests.lock().unwrap().push(req);
            thread::sleep(delay);
            if write!(r.get_mut(), "action={action}\n\n").is_err() {
                return;
            }
        }
    }

    /// Serves every connection `accept` returns, each on a thread.
    fn spawn<S: std::io::Read + Write + Send + 'static>(
        &self,
        mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
    ) {
        let s = self.clone();
        thread::spawn(move || {
            while let Ok(c) = accept() {
                let s = s.clone();
                thread::spawn(move || s.serve(c));
            }
        });
    }

    fn tcp() -> (Scripted, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = format!("inet:{}", l.local_addr().unwrap());
        let s = Scripted::default();
        s.spawn(move || l.accept().map(|(c, _)| c));
        (s, target)
    }

    fn unix(path: &Path) -> (Scripted, String) {
        let l = UnixListener::bind(path).unwrap();
        let s = Scripted::default();
        s.spawn(move || l.accept().map(|(c, _)| c));
        (s, format!("unix:{}", path.display()))
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn relay(target: &str, extra: &[&str]) -> Relay {
    let mut args = vec!["--policy-service", target];
    args.extend_from_slice(extra);
    edge_relay(&args)
}

fn rcpt(t: &mut Talk, local: &str) -> (u16, String) {
    t.send(&format!("RCPT TO:<{local}@example.org>"));
    t.reply()
}

#[test]
fn every_action_at_rcpt_on_one_reused_connection() {
    let (svc, target) = Scripted::tcp();
    let r = relay(&target, &[]);
    let mut t = Talk::connect_from("127.0.0.2", r.addr());
    t.expect(220);
    t.cmd("EHLO client.test", 250);
    t.cmd("MAIL FROM:<a@sender.test> SIZE=100", 250);
    let refusals = [
        ("reject", 554, "5.7.1 Recipient not wanted"),
        ("rejectbare", 554, "5.7.1 Access denied"),
        ("defer", 450, "4.7.1 come back later"),
        ("dip", 450, "4.7.1 greylisted"),
        ("code5", 550, "5.7.9 Custom refusal"),
        ("code4", 452, "4.7.1 no room here"),
    ];
    for (local, code, text) in refusals {
        assert_eq!(rcpt(&mut t, local), (code, text.to_string()), "{local}");
    }
    for local in ["ok", "dunno", "odd", "prepend", "hold"] {
        assert_eq!(rcpt(&mut t, local).0, 250, "{local}");
    }
    t.cmd("DATA", 354);
    t.send_raw(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    let id = queued_id(&t.expect(250)).expect("queued");
    // only the accepted recipients are in the envelope, and HOLD held it
    let env = EnvFile::load(r.spool(), &id);
    let rcpts: Vec<String> = env.rcpts().into_iter().map(|(_, a, _)| a).collect();
    assert_eq!(
        rcpts,
        ["ok", "dunno", "odd", "prepend", "hold"].map(|l| format!("<{l}@example.org>")),
        "{}",
        env.text
    );
    assert_eq!(env.get("hold"), "forever", "{}", env.text);
    // PREPEND: on top of the message, above our Received header
    let msg = String::from_utf8(read_msg(r.spool(), &id)).unwrap();
    assert!(
        msg.starts_with("X-Policy-Test: tagged\r\nReceived: from client.test"),
        "{msg}"
    );
    // the request, as the protocol has it
    let reqs = svc.requests();
    assert_eq!(reqs.len(), 11);
    let first = &reqs[0];
    for (k, v) in [
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        ("protocol_name", "ESMTP"),
        ("client_address", "127.0.0.2"),
        ("helo_name", "client.test"),
        ("sender", "a@sender.test"),
        ("recipient", "reject@example.org"),
        ("size", "100"),
    ] {
        assert_eq!(first.get(k).map(String::as_str), Some(v), "{k}: {first:?}");
    }
    assert!(
        reqs.iter().all(|q| q["instance"] == first["instance"]),
        "one instance per transaction"
    );
    assert_eq!(
        svc.connections.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
    let log = r.log();
    let refusals = refused_lines(&log, "127.0.0.2");
    assert!(
        refusals
            .iter()
            .any(|l| l.contains(" refused reason=policy_service rule=\"policy inet:127.0.0.1:")),
        "{log}"
    );
    assert!(
        log.contains(
            "action=REJECT Recipient not wanted\" reply=\"554 5.7.1 Recipient not wanted\""
        ),
        "{log}"
    );
    assert!(
        log.contains("action=FILTER smtp:[127.0.0.1]:10025 not supported: taken as DUNNO"),
        "{log}"
    );
}

#[test]
fn a_slow_service_times_out_into_the_default_action() {
    let (svc, target) = Scripted::tcp();
    let r = relay(&target, &["--policy-timeout", "1s"]);
    let mut t = Talk::greet(r.addr());
    t.cmd("MAIL FROM:<a@sender.test>", 250);
    let start = Instant::now();
    assert_eq!(
        rcpt(&mut t, "slow"),
        (451, "4.3.5 Server configuration problem".to_string())
    );
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "bounded by the timeout: {took:?}"
    );
    // the next request opens a new connection and is answered
    assert_eq!(rcpt(&mut t, "ok").0, 250);
    assert_eq!(svc.connections.load(Ordering::SeqCst), 2);
    assert!(r.log().contains("not answered"), "{}", r.log());

    let r = relay(
        &target,
        &["--policy-timeout", "1s", "--policy-default-action", "dunno"],
    );
    let mut t = Talk::greet(r.addr());
    t.cmd("MAIL FROM:<a@sender.test>", 250);
    assert_eq!(rcpt(&mut t, "slow").0, 250);
}

#[test]
fn a_service_that_is_down_gets_the_default_action() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("inet:127.0.0.1:{port}");
    let r = relay(&target, &[]);
    let mut t = Talk::greet(r.addr());
    t.cmd("MAIL FROM:<a@sender.test>", 250);
    assert_eq!(
        rcpt(&mut t, "ok"),
        (451, "4.3.5 Server configuration problem".to_string())
    );
    assert!(
        r.log()
            .contains("refused reason=policy_service rule=\"policy-default"),
        "{}",
        r.log()
    );
    let r = relay(&target, &["--policy-default-action", "dunno"]);
    let mut t = Talk::greet(r.addr());
    t.cmd("MAIL FROM:<a@sender.test>", 250);
    assert_eq!(rcpt(&mut t, "ok").0, 250);
}

#[test]
fn end_of_message_requests_over_a_unix_socket() {
    let dir = TempDir::new("policy-unix");
    let (svc, target) = Scripted::unix(&dir.path().join("policy.sock"));
    let r = relay(&target, &["--policy-at", "both"]);
    let mut t = Talk::greet(r.addr());
    t.cmd("MAIL FROM:<eomreject@sender.test>", 250);
    t.cmd("RCPT TO:<prepend@example.org>", 250);
    t.cmd("DATA", 354);
    t.send_raw(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!(t.expect_enh(554, "5.7.1"), "content refused");
    assert!(queued_ids(r.spool()).is_empty(), "nothing queued");
    let id = t.send_mail(
        "a@sender.test",
        &["x@example.org"],
        b"Subject: y\r\n\r\nbody\r\n",
    );
    assert!(queued_ids(r.spool()).contains(&id));
    let eom: Vec<Request> = svc
        .requests()
        .into_iter()
        .filter(|q| q["protocol_state"] == "END-OF-MESSAGE")
        .collect();
    assert_eq!(eom.len(), 2);
    assert_eq!(eom[1]["queue_id"], id);
    assert_eq!(eom[1]["recipient_count"], "1");
    assert_eq!(eom[1]["recipient"], "");
    assert!(eom[1]["size"].parse::<u64>().unwrap() > 0);
    assert_eq!(svc.connections.load(Ordering::SeqCst), 1);
    // --policy-at data: no RCPT requests
    let (svc, target) = Scripted::unix(&dir.path().join("p2.sock"));
    let r = relay(&target, &["--policy-at", "data"]);
    let mut t = Talk::greet(r.addr());
    t.send_mail(
        "a@sender.test",
        &["reject@example.org"],
        b"Subject: y\r\n\r\nb\r\n",
    );
    let states: Vec<String> = svc
        .requests()
        .iter()
        .map(|q| q["protocol_state"].clone())
        .collect();
    assert_eq!(states, ["END-OF-MESSAGE"]);
}

// ---------------------------------------------------------------------
// The real postfix-policyd-spf-python
// ---------------------------------------------------------------------

/// `socat` serving `policyd-spf CONFIG` on a Unix socket, one process per
/// connection; killed on drop.
struct SpfPolicy {
    child: Child,
    socket: PathBuf,
}

impl Drop for SpfPolicy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pyspf resolves through dnspython when it is installed
/// (python3-dnspython, which other packages pull in), else through pydns
/// (python3-dns); both read /etc/resolv.conf and have no environment
/// override. This sitecustomize, found first on PYTHONPATH, points both
/// at the test's dnsmasq before policyd-spf imports them.
const SITECUSTOMIZE: &str = "import os\n\
if os.environ.get('SPF_TEST_DNS_PORT'):\n\
\x20   port = int(os.environ['SPF_TEST_DNS_PORT'])\n\
\x20   try:\n\
\x20       import DNS\n\
\x20       DNS.Base.defaults['server'] = ['127.0.0.1']\n\
\x20       DNS.Base.defaults['port'] = port\n\
\x20   except ImportError:\n\
\x20       pass\n\
\x20   try:\n\
\x20       import dns.resolver\n\
\x20       r = dns.resolver.Resolver(configure=False)\n\
\x20       r.nameservers = ['127.0.0.1']\n\
\x20       r.port = port\n\
\x20       dns.resolver.default_resolver = r\n\
\x20   except ImportError:\n\
\x20       pass\n";

/// policyd-spf's configuration: no address skipped (the default skips
/// 127.0.0.0/8), HELO not checked, a MAIL FROM fail rejected.
const SPF_CONF: &str = "debugLevel = 1\nTestOnly = 1\nHELO_reject = No_Check\n\
Mail_From_reject = Fail\nPermError_reject = False\nTempError_Defer = False\n\
skip_addresses = 192.0.2.0/24\nLookup_Time = 5\n";

fn spf_policy(test: &str, dir: &Path, dns_port: u16) -> Option<SpfPolicy> {
    let policyd = Path::new("/usr/bin/policyd-spf");
    let socat = Path::new("/usr/bin/socat");
    if !policyd.exists() || !socat.exists() {
        if in_ci() {
            panic!("{test}: policyd-spf or socat missing (scripts/ci-deps.sh installs them)");
        }
        println!("SKIPPED {test}: postfix-policyd-spf-python or socat not installed");
        return None;
    }
    let py = dir.join("py");
    std::fs::create_dir_all(&py).unwrap();
    std::fs::write(py.join("sitecustomize.py"), SITECUSTOMIZE).unwrap();
    let conf = dir.join("policyd-spf.conf");
    std::fs::write(&conf, SPF_CONF).unwrap();
    let socket = dir.join("spf.sock");
    let child = Command::new(socat)
        .arg(format!("UNIX-LISTEN:{},fork", socket.display()))
        .arg(format!("EXEC:{} {}", policyd.display(), conf.display()))
        .env("PYTHONPATH", &py)
        .env("SPF_TEST_DNS_PORT", dns_port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn socat");
    let p = SpfPolicy { child, socket };
    assert!(
        wait_until(Duration::from_secs(10), || p.socket.exists()),
        "socat did not listen"
    );
    Some(p)
}

#[test]
fn spf_results_from_the_real_policyd_spf() {
    let test = "spf_results_from_the_real_policyd_spf";
    let Some(dns) = Dnsmasq::start(
        test,
        &[
            "--local=/test/",
            "--txt-record=pass.test,v=spf1 ip4:127.0.0.2 -all",
            "--txt-record=fail.test,v=spf1 -all",
            "--host-record=norecord.test,127.0.0.9",
        ],
    ) else {
        return;
    };
    let dir = TempDir::new("spf");
    let Some(spf) = spf_policy(test, dir.path(), dns.addr.port()) else {
        return;
    };
    let target = format!("unix:{}", spf.socket.display());
    let r = relay(&target, &["--policy-timeout", "20s"]);
    let mut t = Talk::connect_from("127.0.0.2", r.addr());
    t.expect(220);
    t.cmd("EHLO client.test", 250);
    // pass: the header as policyd-spf writes it, on top of the message,
    // once for the two recipients of the message
    let id = t.send_mail(
        "alice@pass.test",
        &["x@example.org", "y@example.org"],
        b"Subject: spf\r\n\r\nbody\r\n",
    );
    let msg = String::from_utf8(read_msg(r.spool(), &id)).unwrap();
    let first = msg.lines().next().unwrap();
    assert!(
        first.starts_with("Received-SPF: Pass (mailfrom) identity=mailfrom; client-ip=127.0.0.2; helo=client.test; envelope-from=alice@pass.test;"),
        "{msg}"
    );
    assert_eq!(msg.matches("Received-SPF:").count(), 1, "{msg}");
    assert!(msg.contains("\r\nReceived: from client.test"), "{msg}");
    // fail: refused at RCPT with policyd-spf's own reply
    t.cmd("MAIL FROM:<bob@fail.test>", 250);
    let (code, text) = rcpt(&mut t, "x");
    assert_eq!(code, 550, "{text}");
    assert!(
        text.starts_with("5.7.23 Message rejected due to: SPF fail"),
        "{text}"
    );
    t.cmd("RSET", 250);
    // a domain without an SPF record: None
    let id = t.send_mail(
        "carol@norecord.test",
        &["x@example.org"],
        b"Subject: n\r\n\r\nb\r\n",
    );
    let msg = String::from_utf8(read_msg(r.spool(), &id)).unwrap();
    assert!(
        msg.starts_with("Received-SPF: None (mailfrom) identity=mailfrom;"),
        "{msg}"
    );
}
