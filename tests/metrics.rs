//! `--metrics` (README "Metrics"): scrapes of the real relay during a
//! small load run move the counters by the right amounts, the exposition
//! passes `promtool check metrics`, a real Prometheus server scrapes it
//! on loopback, and `/healthz` answers 200 and 503.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DELIVERY: Duration = Duration::from_secs(30);
const MESSAGES: usize = 50;

fn relay_with_metrics(sink: &Sink, extra: &[&str]) -> Relay {
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let mut args = vec!["--no-dns", "--route", &route, "--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Relay::start(&args)
}

/// `promtool check metrics` on `text`; `None` when promtool is missing
/// outside CI.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            assert!(!in_ci(), "promtool missing in CI: {e}");
            eprintln!("SKIPPED promtool check: promtool not installed ({e})");
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), msg))
}

#[test]
fn a_load_run_moves_the_counters_by_the_right_amounts() {
    let sink = Sink::start();
    // 127.0.0.2 is not a relay network: its RCPT elsewhere is refused
    let relay = relay_with_metrics(&sink, &["--relay-net", "127.0.0.1/32"]);
    let m = metrics_addr(&relay);
    let (code, before) = http_get(m, "/metrics");
    assert_eq!(code, 200);
    let received = "smtp_relay_messages_received_total";
    let sent = "smtp_relay_deliveries_total{outcome=\"sent\",dest=\"route\"}";
    let denied = "smtp_relay_refused_total{reason=\"relay_denied\"}";
    let latency = "smtp_relay_delivery_seconds_count";
    let accepted = "smtp_relay_connections_accepted_total";
    for s in [received, sent, denied, latency, accepted] {
        assert_eq!(sample(&before, s), 0.0, "{s} before any mail");
    }

    let body = b"Subject: load\r\n\r\nsome text\r\n";
    let mut t = relay.session();
    for i in 0..MESSAGES {
        t.send_mail("a@origin.example", &[&format!("r{i}@dest.example")], body);
    }
    t.send("QUIT");
    relay_denied_from_far(relay.addr());
    assert!(sink.wait_for(MESSAGES, DELIVERY), "not all delivered");
    assert!(wait_until(DELIVERY, || queue_files(relay.spool()).is_empty()));

    // the sent counter moves after the envelope is written: poll briefly
    let mut after = String::new();
    wait_until(Duration::from_secs(10), || {
        after = http_get(m, "/metrics").1;
        sample(&after, sent) >= MESSAGES as f64
            && sample(&after, "smtp_relay_queue_messages{state=\"in_flight\"}") == 0.0
    });
    let n = MESSAGES as f64;
    assert_eq!(sample(&after, received), n);
    assert_eq!(sample(&after, sent), n);
    assert_eq!(sample(&after, latency), n);
    assert_eq!(sample(&after, denied), 1.0);
    assert_eq!(sample(&after, accepted), 2.0);
    // each stored message is the body plus our Received: header
    let bytes = sample(&after, "smtp_relay_received_bytes_total");
    assert!(bytes > n * body.len() as f64, "{bytes}");
    assert!(sample(&after, "smtp_relay_delivery_attempts_total") >= n);
    assert_eq!(
        sample(&after, "smtp_relay_queue_messages{state=\"pending\"}"),
        0.0
    );
    assert!(sample(&after, "smtp_relay_spool_free_bytes") > 0.0);
    // the refusal is in the log at the default level, with the client
    let log = relay.log();
    assert!(
        log.lines().any(|l| l.contains(" INFO ")
            && l.contains("127.0.0.2:")
            && l.contains("refused reason=relay_denied reply=\"550 5.7.1")),
        "no INFO refusal line in\n{log}"
    );

    if let Some((ok, msg)) = promtool_check(&after) {
        assert!(ok, "promtool check metrics failed:\n{msg}\n{after}");
    }
}

#[test]
fn openmetrics_is_served_when_asked_for() {
    let sink = Sink::start();
    let relay = relay_with_metrics(&sink, &[]);
    let m = metrics_addr(&relay);
    let mut s = TcpStream::connect_timeout(&m, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.contains("Content-Type: application/openmetrics-text"),
        "{out}"
    );
    assert!(out.contains("# TYPE smtp_relay_messages_received counter"));
    assert!(out.ends_with("# EOF\n"), "{out}");
    // anything else: 404, and a method other than GET: 405
    assert_eq!(http_get(m, "/other").0, 404);
    let mut s = TcpStream::connect_timeout(&m, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

#[test]
fn healthz_is_503_while_the_spool_cannot_take_a_file() {
    let sink = Sink::start();
    let relay = relay_with_metrics(&sink, &[]);
    let m = metrics_addr(&relay);
    assert_eq!(http_get(m, "/healthz"), (200, "ok\n".to_string()));
    let spool = relay.spool().to_path_buf();
    let aside = spool.with_extension("aside");
    std::fs::rename(&spool, &aside).unwrap();
    let (code, body) = http_get(m, "/healthz");
    std::fs::rename(&aside, &spool).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("spool not writable"), "{body}");
    assert_eq!(http_get(m, "/healthz").0, 200);
}

/// A real Prometheus server (Debian's `prometheus`) scrapes the relay
/// on loopback; its HTTP API then has the series.
#[test]
fn a_prometheus_server_scrapes_the_relay() {
    let sink = Sink::start();
    let relay = relay_with_metrics(&sink, &[]);
    let m = metrics_addr(&relay);
    relay
        .session()
        .send_mail("a@origin.example", &["b@dest.example"], b"\r\nhi\r\n");
    let dir = TempDir::new("prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: relay\n    static_configs:\n      - targets: ['{m}']\n"
        ),
    )
    .unwrap();
    let web = listen_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("log")).unwrap(),
        ))
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(!in_ci(), "prometheus missing in CI: {e}");
            eprintln!("SKIPPED: prometheus not installed ({e})");
            return;
        }
    };
    let mut child = KillOnDrop(child);
    let api: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
    let query = "/api/v1/query?query=smtp_relay_messages_received_total";
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let found = loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&api, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(s, "GET {query} HTTP/1.0\r\n\r\n");
            last.clear();
            let _ = s.read_to_string(&mut last);
            if last.contains("\"job\":\"relay\"") && last.contains(",\"1\"]") {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = child.0.kill();
    let _ = child.0.wait();
    assert!(
        found,
        "prometheus has no smtp_relay_messages_received_total = 1; last answer:\n{last}\nlog:\n{}",
        std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port free on 127.0.0.1 now.
fn listen_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_connection_over_the_per_ip_limit_is_counted_and_logged() {
    let sink = Sink::start();
    // loopback is a relay network by default, and those are exempt
    let relay = relay_with_metrics(&sink, &["--max-per-ip", "1", "--relay-net", "10.0.0.0/8"]);
    let m = metrics_addr(&relay);
    let series = "smtp_relay_connections_refused_total{reason=\"per_ip_limit\"}";
    assert_eq!(sample(&http_get(m, "/metrics").1, series), 0.0);
    let mut first = Talk::greet(relay.addr());
    let mut second = Talk::connect(relay.addr());
    second.expect_enh(421, "4.7.0");
    first.cmd("NOOP", 250);
    assert_eq!(sample(&http_get(m, "/metrics").1, series), 1.0);
    assert_eq!(
        sample(
            &http_get(m, "/metrics").1,
            "smtp_relay_connections_accepted_total"
        ),
        1.0
    );
    let log = relay.log();
    assert!(
        log.contains("rejected reason=per_ip_limit reply=\"421 4.7.0"),
        "{log}"
    );
}

/// `smtp_relay_deliveries_in_flight{destination}` (issue 15): a series
/// while a delivery to its destination runs, gone when the last one
/// ends, so its labels are bounded by the delivery workers. The sink
/// holds the end of data until the test has seen the gauge: no timing.
#[test]
fn in_flight_deliveries_are_shown_per_destination_while_they_run() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let release = Arc::new(AtomicBool::new(false));
    let held = release.clone();
    let sink = Sink::with(SinkConfig {
        data_end: Arc::new(move |_| {
            let until = Instant::now() + DELIVERY;
            while !held.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            Action::reply(250, "2.0.0 Ok")
        }),
        ..SinkConfig::default()
    });
    let relay = relay_with_metrics(&sink, &["--relay-net", "127.0.0.1/32"]);
    let m = metrics_addr(&relay);
    let family = "smtp_relay_deliveries_in_flight{";
    let mut t = relay.session();
    t.send_mail(
        "a@origin.example",
        &["r@dest.example"],
        b"Subject: held\r\n\r\ntext\r\n",
    );
    t.send("QUIT");
    let mut text = String::new();
    let seen = wait_until(DELIVERY, || {
        text = http_get(m, "/metrics").1;
        text.lines()
            .any(|l| l.starts_with(family) && l.ends_with(" 1"))
    });
    release.store(true, Ordering::SeqCst);
    assert!(seen, "no in-flight series during the delivery:\n{text}");
    let line = text.lines().find(|l| l.starts_with(family)).unwrap_or("");
    assert!(line.contains("destination=\""), "{line}");
    if let Some((ok, msg)) = promtool_check(&text) {
        assert!(ok, "promtool check metrics failed:\n{msg}\n{text}");
    }
    assert!(sink.wait_for(1, DELIVERY), "not delivered");
    let gone = wait_until(Duration::from_secs(10), || {
        text = http_get(m, "/metrics").1;
        !text.lines().any(|l| l.starts_with(family))
    });
    assert!(gone, "the series outlived its delivery:\n{text}");
}

/// Sends SIGHUP and waits for the reload's outcome line; true when taken.
fn reload_taken(relay: &Relay) -> bool {
    let outcomes = |log: &str| {
        log.lines()
            .filter(|l| l.contains("configuration reloaded from") || l.contains("reload refused"))
            .map(|l| l.contains("configuration reloaded from"))
            .collect::<Vec<_>>()
    };
    let before = outcomes(&relay.log()).len();
    relay.signal("HUP");
    assert!(
        wait_until(DELIVERY, || outcomes(&relay.log()).len() > before),
        "no reload outcome logged:\n{}",
        relay.log()
    );
    outcomes(&relay.log())[before]
}

/// `config_reloads_total{result}`, `config_last_reload_successful` and
/// `config_last_reload_success_timestamp_seconds` (README "Metrics"):
/// the start sets the time, a good reload counts `ok` and moves it, a
/// bad one counts `failed`, says 0 and keeps the time of the running
/// configuration; the exposition passes promtool.
#[test]
fn reloads_are_counted_good_and_bad() {
    let dir = TempDir::new("metrics-reload");
    let conf = dir.path().join("relay.conf");
    std::fs::write(&conf, "no-dns = yes\n").unwrap();
    let conf = conf.to_str().expect("utf-8 path").to_string();
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as f64
    };
    let started = unix();
    let relay = Relay::start(&["--config", &conf, "--metrics", "127.0.0.1:0"]);
    let m = metrics_addr(&relay);
    let ok = "smtp_relay_config_reloads_total{result=\"ok\"}";
    let failed = "smtp_relay_config_reloads_total{result=\"failed\"}";
    let successful = "smtp_relay_config_last_reload_successful";
    let at = "smtp_relay_config_last_reload_success_timestamp_seconds";
    let text = http_get(m, "/metrics").1;
    assert_eq!((sample(&text, ok), sample(&text, failed)), (0.0, 0.0));
    assert_eq!(sample(&text, successful), 1.0);
    let loaded = sample(&text, at);
    assert!(loaded >= started && loaded <= unix(), "{loaded}");

    // a good reload, a second later so its time is a later second
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&conf, "no-dns = yes\nmax-size = 2M\n").unwrap();
    assert!(reload_taken(&relay), "{}", relay.log());
    let text = http_get(m, "/metrics").1;
    assert_eq!((sample(&text, ok), sample(&text, failed)), (1.0, 0.0));
    assert_eq!(sample(&text, successful), 1.0);
    let reloaded = sample(&text, at);
    assert!(reloaded > loaded, "{reloaded} after {loaded}");

    // a bad one: refused, counted, the running configuration's time stays
    std::fs::write(&conf, "no-dns = yes\nnot an option\n").unwrap();
    assert!(!reload_taken(&relay), "{}", relay.log());
    let text = http_get(m, "/metrics").1;
    assert_eq!((sample(&text, ok), sample(&text, failed)), (1.0, 1.0));
    assert_eq!(sample(&text, successful), 0.0);
    assert_eq!(sample(&text, at), reloaded);
    if let Some((good, msg)) = promtool_check(&text) {
        assert!(good, "promtool check metrics failed:\n{msg}\n{text}");
    }

    // fixed again: successful once more
    std::fs::write(&conf, "no-dns = yes\n").unwrap();
    assert!(reload_taken(&relay), "{}", relay.log());
    let text = http_get(m, "/metrics").1;
    assert_eq!((sample(&text, ok), sample(&text, failed)), (2.0, 1.0));
    assert_eq!(sample(&text, successful), 1.0);
}

/// The README's alert rules (the reload alert among them) name series
/// the relay exposes and pass `promtool check rules`.
#[test]
fn readme_alert_rules_pass_promtool_and_name_real_series() {
    let rules = readme_block("Useful queries and alerts", "yaml");
    let sink = Sink::start();
    let relay = relay_with_metrics(&sink, &[]);
    let text = http_get(metrics_addr(&relay), "/metrics").1;
    for name in rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("smtp_relay_"))
    {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "README alert names {name}, which /metrics does not have"
        );
    }
    let dir = TempDir::new("metrics-rules");
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, &rules).unwrap();
    match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules:\n{}{}\n{rules}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(!in_ci(), "promtool missing in CI: {e}");
            eprintln!("SKIPPED promtool check rules: promtool not installed ({e})");
        }
    }
}

/// The README's metric table names exactly the families `/metrics`
/// exposes (README "Metrics": a new metric is documented there).
#[test]
fn the_readme_metric_table_is_the_exposed_set() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("### Metrics\n")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("README has ### Metrics");
    let mut documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|n| n.starts_with("smtp_relay_"))
        .collect();
    let sink = Sink::start();
    let relay = relay_with_metrics(&sink, &[]);
    let text = http_get(metrics_addr(&relay), "/metrics").1;
    let mut exposed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    // deliveries_in_flight has no series (and no TYPE line) while no
    // delivery runs (in_flight_deliveries_are_shown_... sees it busy)
    documented.retain(|n| *n != "smtp_relay_deliveries_in_flight");
    documented.sort_unstable();
    exposed.sort_unstable();
    assert_eq!(documented, exposed, "README metric table vs /metrics");
}

fn fs_names(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// The queue gauges by state, as one scrape has them.
fn queue_states(m: SocketAddr) -> [f64; 5] {
    let text = http_get(m, "/metrics").1;
    ["pending", "deferred", "in_flight", "waiting_slot", "held"].map(|s| {
        sample(
            &text,
            &format!("smtp_relay_queue_messages{{state=\"{s}\"}}"),
        )
    })
}

/// After `queue hold`, `release`, `delete` the very next scrape counts the
/// message in its new state (before, `held` waited for the minute's
/// rescan, and a deleted message stayed `deferred` until its retry).
#[test]
fn queue_gauges_follow_an_operator_change_at_the_next_scrape() {
    // a next hop that refuses connections: the message stays deferred
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let route = format!("*=127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let relay = Relay::start(&["--no-dns", "--route", &route, "--metrics", "127.0.0.1:0"]);
    let m = metrics_addr(&relay);
    // one message from a@origin.example, deferred by the closed next hop
    let queue_one = || {
        let mut t = relay.session();
        let id = t.send_mail(
            "a@origin.example",
            &["r@dest.example"],
            b"Subject: x\r\n\r\ny\r\n",
        );
        t.send("QUIT");
        id
    };
    let id = queue_one();
    let deferred = [0.0, 1.0, 0.0, 0.0, 0.0];
    assert!(
        wait_until(DELIVERY, || queue_states(m) == deferred),
        "{:?}\n{}",
        queue_states(m),
        relay.log()
    );
    let spool = relay.spool().to_str().expect("utf-8 path").to_string();
    let queue = |cmd: &str, id: &str| {
        let run = run_cli(&["queue", cmd, "--spool", &spool, id], DELIVERY);
        assert_eq!(run.code, Some(0), "queue {cmd}: {}", run.stderr);
    };
    // `queue flush` returns once the server has taken its request in
    queue("flush", &id);
    let requests = fs_names(&relay.spool().join("flush.d"));
    assert!(requests.is_empty(), "left in flush.d: {requests:?}");
    assert!(wait_until(DELIVERY, || queue_states(m) == deferred));
    queue("hold", &id);
    assert_eq!(queue_states(m), [0.0, 0.0, 0.0, 0.0, 1.0], "after hold");
    queue("release", &id);
    // due again: pending, in flight or deferred, but not held
    let s = queue_states(m);
    assert_eq!(
        (s[4], s.iter().sum::<f64>()),
        (0.0, 1.0),
        "after release: {s:?}"
    );
    assert!(wait_until(DELIVERY, || queue_states(m) == deferred));
    queue("hold", &id);
    assert_eq!(queue_states(m)[4], 1.0, "held again");
    queue("delete", &id);
    assert_eq!(queue_states(m), [0.0; 5], "after delete");
    // the message's last line is in the server's log, not only the
    // command's (which logs at INFO only with -v)
    let log = relay.log();
    assert!(
        log.contains(&format!("{id} deleted by the operator")),
        "{log}"
    );

    // `queue bounce`: the message goes, its DSN (to a@origin.example,
    // deferred by the same closed next hop) comes, and the server says so
    let id = queue_one();
    assert!(wait_until(DELIVERY, || queue_states(m) == deferred));
    queue("bounce", &id);
    let line = relay
        .log()
        .lines()
        .find(|l| l.contains(&format!("{id} returned to sender by the operator (DSN ")))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no returned line:\n{}", relay.log()));
    let dsn = line.rsplit("(DSN ").next().unwrap().trim_end_matches(')');
    assert!(
        wait_until(DELIVERY, || relay
            .log()
            .contains(&format!("{dsn} to=a@origin.example"))),
        "the DSN's life follows in the server's log:\n{}",
        relay.log()
    );
}
