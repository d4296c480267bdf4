//! The queue commands (`smtp-relay queue ...`) and `smtp-relay send`
//! against real spools: filled over SMTP by the real server, made deferred
//! by a real delivery attempt against a scripted `Sink`, and inspected or
//! changed by the real binary, with and without a server on the spool.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use smtp_relay::time::{iso8601, now_unix};

/// Deadline of every wait and CLI run unless said otherwise.
const T: Duration = Duration::from_secs(10);

fn mail(subject: &str) -> Vec<u8> {
    format!("From: <a@a.example>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n").into_bytes()
}

fn show_run(r: &CliRun) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        r.code, r.stdout, r.stderr
    )
}

/// Asserts exit 0 and returns stdout.
#[track_caller]
fn ok(r: &CliRun) -> String {
    assert_eq!(r.code, Some(0), "{}", show_run(r));
    r.stdout.clone()
}

/// `smtp-relay queue SUB --spool SPOOL ARGS...`
fn queue(spool: &Path, sub: &str, args: &[&str]) -> CliRun {
    let s = spool.display().to_string();
    let mut v = vec!["queue", sub, "--spool", &s];
    v.extend_from_slice(args);
    run_cli(&v, T)
}

/// Ids printed by `queue list ARGS` (first field of each line).
#[track_caller]
fn listed(spool: &Path, args: &[&str]) -> Vec<String> {
    ok(&queue(spool, "list", args))
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect()
}

fn ids(v: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Every file of the spool (but the lock) with its bytes.
fn snapshot(spool: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for dir in ["queue", "tmp", "flush.d", "corrupt"] {
        let Ok(rd) = fs::read_dir(spool.join(dir)) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let name = format!("{dir}/{}", e.file_name().to_string_lossy());
            m.insert(name, fs::read(e.path()).unwrap_or_default());
        }
    }
    m
}

fn unlocked(spool: &Path, id: &str) -> bool {
    match fs::File::open(msg_path(spool, id)) {
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => false,
    }
}

/// Waits until each message's recipients are all deferred and its
/// delivery attempt is over (next try set, body lock released).
#[track_caller]
fn wait_deferred(spool: &Path, ids: &[&String]) {
    let done = wait_until(T, || {
        ids.iter().all(|id| {
            let Ok(text) = fs::read_to_string(env_path(spool, id)) else {
                return false;
            };
            let e = EnvFile::parse(&text);
            let r = e.rcpts();
            !r.is_empty()
                && r.iter().all(|r| r.0 == "deferred")
                && e.get("next-try") > e.get("arrived")
                && unlocked(spool, id)
        })
    });
    assert!(done, "not all deferred: {:?}", snapshot_text(spool));
}

fn snapshot_text(spool: &Path) -> Vec<String> {
    snapshot(spool)
        .into_iter()
        .filter(|(k, _)| k.ends_with(".env"))
        .map(|(k, v)| format!("{k}:\n{}", String::from_utf8_lossy(&v)))
        .collect()
}

/// A relay that delivers everything to `sink`.
fn delivering(sink: &Sink, spool: Option<&Path>) -> Relay {
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let args = ["--no-dns", "--route", &route, "--delivery-timeout", "5s"];
    match spool {
        Some(s) => Relay::start_with_spool(s.to_path_buf(), &args),
        None => Relay::start(&args),
    }
}

/// A sink refusing every recipient for now: 452 for example.org, 451 for
/// the rest.
fn refusing() -> SinkConfig {
    SinkConfig::default().rcpt_table(&[
        ("example.org", Action::reply(452, "4.2.2 mailbox full")),
        ("", Action::reply(451, "4.3.0 net busy")),
    ])
}

/// A delivering relay whose three messages were tried once and deferred:
/// m1 alice@a.example → x@example.net + y@example.org,
/// m2 bob@b.example → z@example.net, m3 <> → w@example.org.
fn deferred_queue() -> (Sink, Relay, [String; 3]) {
    let sink = Sink::with(refusing());
    let relay = delivering(&sink, None);
    let mut s = relay.session();
    let m1 = s.send_mail(
        "alice@a.example",
        &["x@example.net", "y@example.org"],
        &mail("one"),
    );
    let m2 = s.send_mail("bob@b.example", &["z@example.net"], &mail("two"));
    let m3 = s.send_mail("", &["w@example.org"], &mail("three"));
    wait_deferred(relay.spool(), &[&m1, &m2, &m3]);
    (sink, relay, [m1, m2, m3])
}

// ---------------------------------------------------------------------
// A minimal JSON reader, enough to check `--json` output strictly
// ---------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    #[track_caller]
    fn parse(text: &str) -> Json {
        let mut p = JsonParser { s: text, i: 0 };
        let v = p.value().and_then(|v| {
            p.ws();
            if p.i == text.len() {
                Ok(v)
            } else {
                Err(format!("trailing text at {}", p.i))
            }
        });
        v.unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Json::Obj(m) => m.iter().map(|(k, _)| k.as_str()).collect(),
            other => panic!("not an object: {other:?}"),
        }
    }

    #[track_caller]
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(m) => m
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no {key:?} in {self:?}")),
            other => panic!("not an object: {other:?}"),
        }
    }

    #[track_caller]
    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    #[track_caller]
    fn num(&self) -> f64 {
        match self {
            Json::Num(n) => *n,
            other => panic!("not a number: {other:?}"),
        }
    }

    #[track_caller]
    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            other => panic!("not an array: {other:?}"),
        }
    }
}

struct JsonParser<'a> {
    s: &'a str,
    i: usize,
}

impl JsonParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        let rest = &self.s[self.i..];
        for (lit, v) in [
            ("null", Json::Null),
            ("true", Json::Bool(true)),
            ("false", Json::Bool(false)),
        ] {
            if rest.starts_with(lit) {
                self.i += lit.len();
                return Ok(v);
            }
        }
        match self.peek() {
            Some(b'"') => self.string().map(Json::Str),
            Some(open @ (b'{' | b'[')) => {
                self.i += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(close) {
                    self.i += 1;
                } else {
                    loop {
                        let key = if open == b'{' {
                            self.ws();
                            let k = self.string()?;
                            self.eat(b':')?;
                            k
                        } else {
                            String::new()
                        };
                        items.push((key, self.value()?));
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(c) if c == close => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(format!("expected , or close at {}", self.i)),
                        }
                    }
                }
                Ok(if open == b'{' {
                    Json::Obj(items)
                } else {
                    Json::Arr(items.into_iter().map(|(_, v)| v).collect())
                })
            }
            Some(b'-' | b'0'..=b'9') => {
                let n = rest
                    .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
                    .unwrap_or(rest.len());
                self.i += n;
                rest[..n]
                    .parse()
                    .map(Json::Num)
                    .map_err(|e| format!("number {:?}: {e}", &rest[..n]))
            }
            _ => Err(format!("unexpected text at {}", self.i)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = String::new();
        let mut chars = self.s[self.i..].char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => {
                    self.i += at + 1;
                    return Ok(out);
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('u') => {
                        let hex: String =
                            (0..4).filter_map(|_| chars.next()).map(|x| x.1).collect();
                        let n = u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                        out.push(char::from_u32(n).ok_or("bad \\u escape")?);
                    }
                    Some(e) => out.push(match e {
                        '"' | '\\' | '/' => e,
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        _ => return Err(format!("bad escape \\{e}")),
                    }),
                    None => break,
                },
                c if (c as u32) < 0x20 => return Err("raw control character in string".into()),
                c => out.push(c),
            }
        }
        Err("unterminated string".into())
    }
}

const LIST_KEYS: [&str; 12] = [
    "v",
    "id",
    "arrived",
    "arrived_iso",
    "size",
    "from",
    "client",
    "helo",
    "attempts",
    "next_try",
    "held_until",
    "rcpts",
];
const RCPT_KEYS: [&str; 4] = ["to", "forward_path", "state", "last_reply"];
const SUMMARY_KEYS: [&str; 6] = [
    "v",
    "domain",
    "messages",
    "recipients",
    "oldest_seconds",
    "top_error",
];

// ---------------------------------------------------------------------
// list, show
// ---------------------------------------------------------------------

#[test]
fn list_prints_committed_messages_but_not_one_being_received() {
    let relay = Relay::receive_only(&[]);
    let spool = relay.spool();
    let mut s = relay.session();
    let a = s.send_mail(
        "alice@a.example",
        &["x@example.net", "y@example.org"],
        &mail("one"),
    );
    let b = s.send_mail("", &["z@example.net"], &mail("two"));
    // a third message is in the middle of its DATA
    let mut t = relay.session();
    t.cmd("MAIL FROM:<carol@c.example>", 250);
    t.cmd("RCPT TO:<w@example.net>", 250);
    t.cmd("DATA", 354);
    t.send_raw(b"Subject: unfinished\r\n\r\npartial line\r\n");
    assert!(
        wait_until(T, || tmp_count(spool) == 1),
        "{:?}",
        tmp_files(spool)
    );

    let out = ok(&queue(spool, "list", &[]));
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "only committed messages:\n{out}");
    for (f, id) in lines.iter().zip([&a, &b]) {
        let env = assert_complete(spool, id);
        assert_eq!(f[0], id.as_str(), "{out}");
        assert_eq!(f[1], iso8601(env.get("arrived").parse().unwrap()), "{out}");
        assert_eq!(f[2], env.size().to_string(), "{out}");
    }
    assert_eq!(
        lines[0][3..],
        [
            "alice@a.example",
            "pending x@example.net",
            "pending y@example.org"
        ],
        "{out}"
    );
    assert_eq!(lines[1][3..], ["<>", "pending z@example.net"], "{out}");

    t.send_raw(b".\r\n");
    let c = queued_id(&t.expect(250)).expect("queue id");
    assert_eq!(listed(spool, &[]), ids(&[&a, &b, &c]));
}

#[test]
fn list_json_and_summary() {
    let (_sink, relay, [m1, m2, m3]) = deferred_queue();
    let spool = relay.spool();

    let out = ok(&queue(spool, "list", &["--json"]));
    let objs: Vec<Json> = out.lines().map(Json::parse).collect();
    assert_eq!(objs.len(), 3, "{out}");
    for (o, id) in objs.iter().zip([&m1, &m2, &m3]) {
        assert_eq!(o.keys(), LIST_KEYS, "{out}");
        assert_eq!(o.get("v").num(), 1.0);
        assert_eq!(o.get("id").str(), id.as_str());
        let env = EnvFile::load(spool, id);
        let arrived: u64 = env.get("arrived").parse().unwrap();
        assert_eq!(o.get("arrived").num(), arrived as f64);
        assert_eq!(o.get("arrived_iso").str(), iso8601(arrived));
        assert_eq!(o.get("size").num(), env.size() as f64);
        assert_eq!(o.get("client").str(), "127.0.0.1");
        assert_eq!(o.get("helo").str(), "client.test");
        assert_eq!(o.get("attempts").num(), 1.0);
        assert!(o.get("next_try").num() > arrived as f64);
        assert_eq!(o.get("held_until"), &Json::Null);
        for r in o.get("rcpts").arr() {
            assert_eq!(r.keys(), RCPT_KEYS, "{out}");
            assert_eq!(r.get("state").str(), "deferred");
            assert_eq!(
                r.get("forward_path").str(),
                format!("<{}>", r.get("to").str())
            );
        }
    }
    assert_eq!(objs[0].get("from").str(), "alice@a.example");
    assert_eq!(objs[2].get("from").str(), "", "null sender");
    let r = objs[0].get("rcpts").arr();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].get("to").str(), "x@example.net");
    assert!(
        r[0].get("last_reply").str().contains("451 4.3.0 net busy"),
        "{out}"
    );
    assert_eq!(r[1].get("to").str(), "y@example.org");
    assert!(
        r[1].get("last_reply")
            .str()
            .contains("452 4.2.2 mailbox full"),
        "{out}"
    );

    // text summary: a header, then domains by message count
    let out = ok(&queue(spool, "list", &["--summary"]));
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(
        rows[0],
        ["domain", "messages", "recipients", "oldest", "top_error"]
    );
    assert_eq!(rows[1][..3], ["example.net", "2", "2"], "{out}");
    assert!(rows[1][4].contains("net busy"), "{out}");
    assert_eq!(rows[2][..3], ["example.org", "2", "2"], "{out}");
    assert!(rows[2][4].contains("mailbox full"), "{out}");

    let out = ok(&queue(spool, "list", &["--summary", "--json"]));
    let objs: Vec<Json> = out.lines().map(Json::parse).collect();
    assert_eq!(objs.len(), 2, "{out}");
    for (o, (domain, err)) in objs
        .iter()
        .zip([("example.net", "net busy"), ("example.org", "mailbox full")])
    {
        assert_eq!(o.keys(), SUMMARY_KEYS, "{out}");
        assert_eq!(o.get("v").num(), 1.0);
        assert_eq!(o.get("domain").str(), domain);
        assert_eq!(o.get("messages").num(), 2.0);
        assert_eq!(o.get("recipients").num(), 2.0);
        assert!(o.get("oldest_seconds").num() >= 0.0);
        assert!(o.get("top_error").str().contains(err), "{out}");
    }

    // the summary honours selectors
    let out = ok(&queue(
        spool,
        "list",
        &["--summary", "--json", "--from", "bob@b.example"],
    ));
    let objs: Vec<Json> = out.lines().map(Json::parse).collect();
    assert_eq!(objs.len(), 1, "{out}");
    assert_eq!(objs[0].get("domain").str(), "example.net");
    assert_eq!(objs[0].get("messages").num(), 1.0);
}

#[test]
fn selectors() {
    let (_sink, relay, [m1, m2, m3]) = deferred_queue();
    let spool = relay.spool();
    assert_eq!(ok(&queue(spool, "hold", &[&m2])), format!("hold {m2}\n"));

    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (vec![], ids(&[&m1, &m2, &m3])),
        (vec!["--from", "alice@a.example"], ids(&[&m1])),
        (vec!["--from", "<alice@a.example>"], ids(&[&m1])),
        (vec!["--from", "a.example"], ids(&[&m1])),
        (vec!["--from", "@b.example"], ids(&[&m2])),
        (vec!["--from", "*@B.EXAMPLE"], ids(&[&m2])),
        (vec!["--from", "<>"], ids(&[&m3])),
        (vec!["--from", "nobody@a.example"], vec![]),
        (vec!["--to", "example.org"], ids(&[&m1, &m3])),
        (vec!["--to", "*.net"], ids(&[&m1, &m2])),
        (vec!["--to", "z@example.net"], ids(&[&m2])),
        (vec!["--to", "?@example.*"], ids(&[&m1, &m2, &m3])),
        (vec!["--state", "deferred"], ids(&[&m1, &m3])),
        (vec!["--state", "held"], ids(&[&m2])),
        (vec!["--state", "pending"], vec![]),
        (vec!["--error", "MAILBOX full"], ids(&[&m1, &m3])),
        (vec!["--error", "net busy"], ids(&[&m1, &m2])),
        (vec!["--error", "550"], vec![]),
        (
            vec!["--from", "a.example", "--to", "example.org"],
            ids(&[&m1]),
        ),
        (vec!["--from", "b.example", "--to", "example.org"], vec![]),
        (
            vec!["--id", m1.as_str(), "--id", m3.as_str()],
            ids(&[&m1, &m3]),
        ),
        (vec![m2.as_str()], ids(&[&m2])),
        (vec![m3.as_str(), m1.as_str()], ids(&[&m1, &m3])),
        (vec!["--older-than", "1h"], vec![]),
        (vec!["--older-than", "0s"], ids(&[&m1, &m2, &m3])),
    ];
    for (args, want) in &cases {
        assert_eq!(&listed(spool, args), want, "queue list {args:?}");
    }

    // `-`: ids on standard input, one a line
    let s = spool.display().to_string();
    let r = run_stdin(
        &["queue", "list", "--spool", &s, "-"],
        format!("{m3}\n  {m1}  \n\n").as_bytes(),
        T,
    );
    let got: Vec<String> = ok(&r).lines().map(|l| l[..16].to_string()).collect();
    assert_eq!(got, ids(&[&m1, &m3]));
    let r = run_stdin(&["queue", "list", "--spool", &s, "-"], b"junk\n", T);
    assert_eq!(r.code, Some(64), "{}", show_run(&r));

    // --older-than: once the first three are 2 s old, a new one is not
    assert!(
        wait_until(T, || listed(spool, &["--older-than", "2s"]).len() == 3),
        "older-than never matched"
    );
    let m4 = relay
        .session()
        .send_mail("dave@d.example", &["v@example.net"], &mail("four"));
    assert_eq!(
        listed(spool, &["--older-than", "2s"]),
        ids(&[&m1, &m2, &m3])
    );
    assert!(listed(spool, &[]).contains(&m4));

    // bad selector values are usage errors
    for args in [
        &["--state", "frozen"][..],
        &["--older-than", "5x"],
        &["not-an-id"],
    ] {
        let r = queue(spool, "list", args);
        assert_eq!(r.code, Some(64), "{args:?}: {}", show_run(&r));
    }
}

#[test]
fn show_envelope_history_headers_and_body() {
    let (sink, relay, [m1, _, _]) = deferred_queue();
    let spool = relay.spool();
    let out = ok(&queue(spool, "show", &[&m1]));
    let lines: Vec<&str> = out.lines().collect();
    let has = |l: &str| lines.contains(&l);
    assert!(has(&format!("id:        {m1}")), "{out}");
    assert!(has("from:      <alice@a.example>"), "{out}");
    assert!(has("client:    [127.0.0.1] helo=client.test"), "{out}");
    assert!(
        has(&format!(
            "size:      {}",
            assert_complete(spool, &m1).size()
        )),
        "{out}"
    );
    assert!(has("attempts:  1"), "{out}");
    // each recipient, followed by its history line
    for (rcpt, reply) in [
        ("<x@example.net>", "451 4.3.0 net busy"),
        ("<y@example.org>", "452 4.2.2 mailbox full"),
    ] {
        let at = lines
            .iter()
            .position(|l| *l == format!("recipient: {rcpt} deferred"))
            .unwrap_or_else(|| panic!("no recipient line for {rcpt}:\n{out}"));
        let h = lines[at + 1];
        assert!(
            h.starts_with("  20") && h.contains(reply),
            "history {h:?}:\n{out}"
        );
        assert!(
            h.contains(&sink.addr().port().to_string()),
            "relay named: {h:?}"
        );
    }
    let hdr = lines.iter().position(|l| *l == "headers:").expect(&out);
    assert!(
        lines[hdr + 1].starts_with("  Received: from client.test"),
        "{out}"
    );
    assert!(lines[hdr..].contains(&"  Subject: one"), "{out}");
    assert!(!out.contains("body of one"), "headers only:\n{out}");

    // --body: the stored message, byte for byte
    let r = queue(spool, "show", &[&m1, "--body"]);
    assert_eq!(ok(&r).as_bytes(), read_msg(spool, &m1), "{}", show_run(&r));

    let o = Json::parse(ok(&queue(spool, "show", &[&m1, "--json"])).trim_end());
    assert_eq!(o.keys(), LIST_KEYS);
    assert_eq!(o.get("id").str(), m1);

    // unknown, malformed and missing ids
    let r = queue(spool, "show", &["0000000000000001"]);
    assert!(r.code.is_some_and(|c| c != 0), "{}", show_run(&r));
    assert!(
        r.stderr.contains("0000000000000001") && r.stderr.contains("no such message"),
        "{}",
        show_run(&r)
    );
    assert!(r.stdout.is_empty(), "{}", show_run(&r));
    for args in [&["bogus"][..], &[], &[m1.as_str(), m1.as_str()]] {
        let r = queue(spool, "show", args);
        assert_eq!(r.code, Some(64), "{args:?}: {}", show_run(&r));
    }
}

// ---------------------------------------------------------------------
// Changing commands
// ---------------------------------------------------------------------

#[test]
fn dry_run_changes_nothing() {
    let relay = Relay::receive_only(&[]);
    let spool = relay.spool();
    let mut s = relay.session();
    let m1 = s.send_mail("alice@a.example", &["x@example.net"], &mail("one"));
    let m2 = s.send_mail("bob@b.example", &["y@example.org"], &mail("two"));
    let before = snapshot(spool);
    assert_eq!(before.len(), 4, "{:?}", before.keys());

    for (sub, args, want) in [
        ("hold", vec!["--id", m1.as_str()], vec![&m1]),
        ("hold", vec!["--for", "1h"], vec![&m1, &m2]),
        ("delete", vec!["--from", "alice@a.example"], vec![&m1]),
        ("delete", vec!["--to", "example.*"], vec![&m1, &m2]),
        ("bounce", vec![m2.as_str()], vec![&m2]),
        ("bounce", vec!["--state", "pending"], vec![&m1, &m2]),
        ("release", vec![], vec![&m1, &m2]),
        ("requeue", vec![], vec![&m1, &m2]),
        ("flush", vec!["--wait"], vec![&m1, &m2]),
    ] {
        let mut a = args.clone();
        a.push("--dry-run");
        let out = ok(&queue(spool, sub, &a));
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got.len(), want.len(), "{sub} {a:?}:\n{out}");
        for (line, id) in got.iter().zip(want) {
            let prefix = format!("would {sub} {id}\t");
            assert!(line.starts_with(&prefix), "{sub} {a:?}: {line:?}");
        }
        assert!(snapshot(spool) == before, "{sub} {a:?} changed the spool");
    }
}

#[test]
fn hold_for_a_while_and_release() {
    let sink = Sink::start();
    let dir = TempDir::new("hold");
    let spool = dir.path().join("spool");
    let (m1, m2) = {
        let relay = Relay::receive_only_with_spool(spool.clone(), &[]);
        let mut s = relay.session();
        let m1 = s.send_mail("alice@a.example", &["x@example.net"], &mail("timed"));
        let m2 = s.send_mail("bob@b.example", &["y@example.net"], &mail("forever"));
        (m1, m2)
    };
    assert_eq!(ok(&queue(&spool, "hold", &[&m2])), format!("hold {m2}\n"));
    assert_eq!(
        ok(&queue(&spool, "hold", &["--for", "2s", "--id", &m1])),
        format!("hold {m1}\n")
    );
    // whole seconds: held for at least 1 s from now, at most 2
    let until: u64 = EnvFile::load(&spool, &m1).get("hold").parse().unwrap();
    assert!(until <= now_unix() + 2, "hold until {until}");
    assert_eq!(EnvFile::load(&spool, &m2).get("hold"), "forever");
    let out = ok(&queue(&spool, "list", &[]));
    assert!(out.contains("\theld x@example.net until="), "{out}");
    assert!(out.contains("\theld y@example.net until=forever"), "{out}");
    assert_eq!(listed(&spool, &["--state", "held"]), ids(&[&m1, &m2]));

    // a delivering server: the timed hold releases itself, the other stays
    let relay = delivering(&sink, Some(&spool));
    assert!(sink.wait_for(1, T), "timed hold never delivered");
    assert!(
        now_unix() >= until,
        "delivered before the hold ended at {until}"
    );
    assert_eq!(sink.messages()[0].rcpts, ["x@example.net"]);
    assert!(wait_until(T, || queued_ids(&spool) == [m2.as_str()]));
    assert_eq!(listed(&spool, &["--state", "held"]), [m2.as_str()]);

    // release: the running server delivers it at once
    assert_eq!(
        ok(&queue(&spool, "release", &[&m2])),
        format!("release {m2}\n")
    );
    assert!(sink.wait_for(2, T), "released message not delivered");
    assert_eq!(sink.messages()[1].rcpts, ["y@example.net"]);
    assert!(wait_until(T, || queued_ids(&spool).is_empty()));
    drop(relay);
}

/// `queue release --state held` re-selects with `--state held` after the
/// release (src/admin.rs, the `QueueCmd::Release` arm): nothing matches any
/// more, so no flush request is written and the server only finds the
/// message at its next 60 s rescan.
#[test]
fn release_by_state_wakes_the_server() {
    let sink = Sink::start();
    let dir = TempDir::new("release");
    let spool = dir.path().join("spool");
    let (held, _other) = {
        let relay = Relay::receive_only_with_spool(spool.clone(), &[]);
        let mut s = relay.session();
        let held = s.send_mail("alice@a.example", &["x@example.net"], &mail("held"));
        let other = s.send_mail("bob@b.example", &["y@example.net"], &mail("other"));
        (held, other)
    };
    ok(&queue(&spool, "hold", &[&held]));
    // the server tries the held message (first in line) and sets it aside,
    // then delivers the other one
    let _relay = delivering(&sink, Some(&spool));
    assert!(sink.wait_for(1, T));
    assert!(wait_until(T, || unlocked(&spool, &held)));
    assert_eq!(
        ok(&queue(&spool, "release", &["--state", "held"])),
        format!("release {held}\n")
    );
    assert!(
        sink.wait_for(2, T),
        "message released with --state held was not delivered within {T:?}"
    );
    assert_eq!(sink.messages()[1].rcpts, ["x@example.net"]);
}

#[test]
fn delete() {
    let relay = Relay::receive_only(&[]);
    let spool = relay.spool();
    let mut s = relay.session();
    let m1 = s.send_mail("alice@a.example", &["x@example.net"], &mail("one"));
    let m2 = s.send_mail("bob@b.example", &["y@example.org"], &mail("two"));
    let m3 = s.send_mail("carol@c.example", &["z@example.org"], &mail("three"));

    assert_eq!(
        ok(&queue(spool, "delete", &["--id", &m1])),
        format!("deleted {m1}\n")
    );
    assert!(!env_path(spool, &m1).exists() && !msg_path(spool, &m1).exists());
    assert_eq!(queued_ids(spool), ids(&[&m2, &m3]));

    // destructive commands refuse to run on the whole queue
    for sub in ["delete", "bounce"] {
        let r = queue(spool, sub, &[]);
        assert_eq!(r.code, Some(64), "{sub}: {}", show_run(&r));
        assert!(r.stderr.contains("selector"), "{sub}: {}", show_run(&r));
    }
    // a selector that matches nothing is fine
    assert_eq!(
        ok(&queue(spool, "delete", &["--from", "nobody@x.example"])),
        ""
    );
    assert_eq!(queued_ids(spool), ids(&[&m2, &m3]));

    let s = spool.display().to_string();
    let r = run_stdin(
        &["queue", "delete", "--spool", &s, "-"],
        format!("{m3}\n").as_bytes(),
        T,
    );
    assert_eq!(ok(&r), format!("deleted {m3}\n"));
    assert_eq!(
        queue_files(spool),
        [format!("{m2}.env"), format!("{m2}.msg")]
    );
}

#[test]
fn bounce_without_delivery_queues_a_dsn() {
    let relay = Relay::receive_only(&[]);
    let spool = relay.spool();
    let mut s = relay.session();
    let m1 = s.send_mail(
        "alice@a.example",
        &["x@example.net", "y@example.org"],
        &mail("one"),
    );
    let m2 = s.send_mail("", &["z@example.net"], &mail("null sender"));

    assert_eq!(
        ok(&queue(spool, "bounce", &[&m1])),
        format!("bounce {m1}\n")
    );
    assert!(!msg_path(spool, &m1).exists());
    let left = queued_ids(spool);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&m2));
    let dsn = left.iter().find(|i| **i != m2).unwrap();
    let env = assert_complete(spool, dsn);
    assert_eq!(env.get("from"), "<>");
    assert_eq!(
        env.rcpts(),
        [(
            "pending".to_string(),
            "<alice@a.example>".to_string(),
            "-".to_string()
        )]
    );
    let body = String::from_utf8_lossy(&read_msg(spool, dsn)).to_string();
    for needle in [
        "Undelivered Mail Returned to Sender",
        "x@example.net",
        "y@example.org",
        "returned to sender by the operator",
        "Subject: one",
    ] {
        assert!(body.contains(needle), "DSN lacks {needle:?}:\n{body}");
    }
    assert_eq!(listed(spool, &["--from", "<>"]), ids(&[dsn, &m2]));

    // a bounce of a bounce goes nowhere: removed, no new DSN
    assert_eq!(
        ok(&queue(
            spool,
            "bounce",
            &["--from", "<>", "--to", "example.net"]
        )),
        format!("bounce {m2}\n")
    );
    assert_eq!(queued_ids(spool), [dsn.as_str()]);
}

#[test]
fn bounce_with_a_server_delivers_the_dsn() {
    let sink = Sink::with(SinkConfig::default().rcpt_table(&[
        ("a.example", Action::reply(250, "2.1.5 Ok")),
        ("", Action::reply(451, "4.3.0 net busy")),
    ]));
    let relay = delivering(&sink, None);
    let spool = relay.spool();
    let m1 = relay.session().send_mail(
        "alice@a.example",
        &["x@example.net", "y@example.net"],
        &mail("one"),
    );
    wait_deferred(spool, &[&m1]);
    assert_eq!(
        ok(&queue(spool, "bounce", &["--error", "net busy"])),
        format!("bounce {m1}\n")
    );
    assert!(sink.wait_for(1, T), "no DSN at the sink");
    let dsn = &sink.messages()[0];
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.rcpts, ["alice@a.example"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("x@example.net") && text.contains("y@example.net"),
        "{text}"
    );
    assert!(
        text.contains("451 4.3.0 net busy"),
        "last error reported:\n{text}"
    );
    assert!(wait_until(T, || queued_ids(spool).is_empty()));
}

#[test]
fn requeue_makes_deferred_messages_due() {
    let (sink, mut relay, [m1, m2, m3]) = deferred_queue();
    let spool = relay.spool().to_path_buf();
    relay.kill();
    assert_eq!(
        ok(&queue(&spool, "requeue", &["--id", &m1])),
        format!("requeue {m1}\n")
    );
    let env = EnvFile::load(&spool, &m1);
    assert!(env.rcpts().iter().all(|r| r.0 == "pending"), "{}", env.text);
    assert!(env.get("next-try").parse::<u64>().unwrap() <= now_unix());
    assert_eq!(listed(&spool, &["--state", "pending"]), [m1.as_str()]);
    assert_eq!(listed(&spool, &["--state", "deferred"]), ids(&[&m2, &m3]));

    // now the next hop takes mail: only the requeued message is due
    sink.set_config(SinkConfig::default());
    relay.restart();
    assert!(sink.wait_for(1, T), "requeued message not delivered");
    assert!(wait_until(T, || !env_path(&spool, &m1).exists()));
    assert_eq!(sink.messages()[0].mail_from, "alice@a.example");
    assert_eq!(queued_ids(&spool), ids(&[&m2, &m3]));
    assert_eq!(sink.count(), 1);
}

/// `queue requeue` with a server running writes a `*` flush request
/// (`spool.request_flush(&[])` in the `QueueCmd::Requeue` arm of
/// src/admin.rs): every waiting message is made due, not only the
/// selected ones.
#[test]
fn requeue_with_a_server_touches_only_the_selection() {
    let (sink, relay, [m1, m2, m3]) = deferred_queue();
    let spool = relay.spool();
    sink.set_config(SinkConfig::default());
    ok(&queue(spool, "requeue", &["--id", &m1]));
    assert!(sink.wait_for(1, T), "requeued message not delivered");
    assert!(wait_until(T, || !env_path(spool, &m1).exists()));
    // the unselected messages keep their retry time (minutes away)
    for id in [&m2, &m3] {
        assert!(
            env_path(spool, id).exists(),
            "{id} (not selected) was delivered too"
        );
        assert_eq!(
            EnvFile::load(spool, id).get("attempts"),
            "1",
            "{id} tried again"
        );
    }
    assert_eq!(sink.count(), 1);
}

// ---------------------------------------------------------------------
// flush
// ---------------------------------------------------------------------

/// Three messages deferred because their next hop (a sink, stopped)
/// did not answer; restart the sink to let them go.
fn deferred_behind_a_stopped_sink() -> (Sink, Relay, Vec<String>) {
    let mut sink = Sink::start();
    sink.stop(); // nothing listens on its port
    let relay = delivering(&sink, None);
    let mut s = relay.session();
    let ms: Vec<String> = (0..3)
        .map(|i| {
            s.send_mail(
                "alice@a.example",
                &["x@example.net"],
                &mail(&format!("m{i}")),
            )
        })
        .collect();
    wait_deferred(relay.spool(), &ms.iter().collect::<Vec<_>>());
    (sink, relay, ms)
}

#[test]
fn flush_wait_after_the_next_hop_came_back() {
    let (mut sink, relay, _) = deferred_behind_a_stopped_sink();
    let spool = relay.spool();
    sink.restart();
    let started = Instant::now();
    let r = queue(spool, "flush", &["--wait", "--wait-limit", "20s"]);
    assert_eq!(r.code, Some(0), "{}", show_run(&r));
    assert!(
        r.stdout.contains("3 done, 0 still deferred"),
        "{}",
        show_run(&r)
    );
    assert!(started.elapsed() < T, "flush took {:?}", started.elapsed());
    assert_eq!(sink.count(), 3);
    assert!(queued_ids(spool).is_empty());
}

/// `queue flush` of everything with a server running asks it for all
/// waiting messages in one request, as `touch SPOOL/flush` does, without
/// naming (and so reading) each: the waiting ones go, a held one stays.
#[test]
fn flush_of_everything_asks_the_server_for_all_waiting_messages() {
    let (mut sink, relay, ms) = deferred_behind_a_stopped_sink();
    let spool = relay.spool();
    let held = queue(spool, "hold", &[&ms[2]]);
    assert_eq!(held.code, Some(0), "{}", show_run(&held));
    sink.restart();
    let r = queue(spool, "flush", &[]);
    assert_eq!(r.code, Some(0), "{}", show_run(&r));
    assert_eq!(
        r.stdout,
        "flush: asked the server to attempt every waiting message now (3 queued)\n",
        "{}",
        show_run(&r)
    );
    assert!(sink.wait_for(2, T), "the waiting two were not delivered");
    assert!(
        wait_until(T, || queued_ids(spool) == vec![ms[2].clone()]),
        "left: {:?}",
        queued_ids(spool)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.count(), 2, "the held one was delivered");
}

#[test]
fn flush_wait_when_still_refused_exits_75() {
    let (sink, relay, [m1, m2, m3]) = deferred_queue();
    let spool = relay.spool();
    let r = queue(
        spool,
        "flush",
        &["--wait", "--wait-limit", "15s", "--quiet"],
    );
    assert_eq!(r.code, Some(75), "{}", show_run(&r));
    assert_eq!(r.stdout, "", "--quiet");
    for id in [&m1, &m2, &m3] {
        assert_eq!(
            EnvFile::load(spool, id).get("attempts"),
            "2",
            "{id} tried again"
        );
    }
    assert_eq!(sink.count(), 0);
    // only the selected messages
    let r = queue(
        spool,
        "flush",
        &["--wait", "--wait-limit", "15s", "--id", &m2],
    );
    assert_eq!(r.code, Some(75), "{}", show_run(&r));
    assert_eq!(EnvFile::load(spool, &m2).get("attempts"), "3");
    assert_eq!(EnvFile::load(spool, &m1).get("attempts"), "2");
}

#[test]
fn flush_without_a_server_delivers_in_the_foreground() {
    let sink = Sink::start();
    let dir = TempDir::new("fg");
    let spool = dir.path().join("spool");
    let (m1, m2) = {
        let relay = Relay::receive_only_with_spool(spool.clone(), &[]);
        let mut s = relay.session();
        (
            s.send_mail("alice@a.example", &["x@example.net"], &mail("one")),
            s.send_mail(
                "bob@b.example",
                &["y@example.org", "z@example.org"],
                &mail("two"),
            ),
        )
    };
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let r = queue(
        &spool,
        "flush",
        &["--no-dns", "--route", &route, "--delivery-timeout", "5s"],
    );
    assert_eq!(r.code, Some(0), "{}", show_run(&r));
    assert!(r.stdout.contains("2 done"), "{}", show_run(&r));
    assert_eq!(sink.count(), 2);
    let froms: Vec<String> = sink.messages().into_iter().map(|m| m.mail_from).collect();
    assert!(
        froms.contains(&"alice@a.example".to_string())
            && froms.contains(&"bob@b.example".to_string())
    );
    assert!(queued_ids(&spool).is_empty(), "{m1} {m2} still queued");
    // the lock was given back
    let again = queue(&spool, "flush", &["--no-dns", "--route", &route]);
    assert_eq!(ok(&again), "flush: nothing selected\n");
}

/// A foreground flush with one slot for the destination and four
/// workers: the workers that find the slot taken wait for its release
/// (no message is deferred for a limit) and every message is delivered,
/// one transaction at a time.
#[test]
fn foreground_flush_waits_for_the_destinations_slot() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (busy, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sink = Sink::with(SinkConfig::default().data_end_fn({
        let (busy, peak) = (busy.clone(), peak.clone());
        move |_| {
            let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(200));
            busy.fetch_sub(1, Ordering::SeqCst);
            Action::reply(250, "2.0.0 Ok")
        }
    }));
    let dir = TempDir::new("fg-slot");
    let spool = dir.path().join("spool");
    {
        let relay = Relay::receive_only_with_spool(spool.clone(), &[]);
        for i in 0..4 {
            let to = format!("r{i}@example.net");
            relay
                .session()
                .send_mail("alice@a.example", &[&to], &mail("slot"));
        }
    }
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let r = queue(
        &spool,
        "flush",
        &[
            "--no-dns",
            "--route",
            &route,
            "--delivery-workers",
            "4",
            "--max-per-destination",
            "1",
        ],
    );
    assert_eq!(r.code, Some(0), "{}", show_run(&r));
    assert!(
        r.stdout.contains("4 done, 0 still deferred"),
        "{}",
        show_run(&r)
    );
    assert_eq!(sink.count(), 4);
    assert_eq!(peak.load(Ordering::SeqCst), 1, "the limit was exceeded");
    assert!(queued_ids(&spool).is_empty());
}

#[test]
fn flush_wait_with_a_server_that_never_picks_up_exits_69() {
    let relay = Relay::receive_only(&[]);
    let spool = relay.spool();
    relay
        .session()
        .send_mail("alice@a.example", &["x@example.net"], &mail("one"));
    let started = Instant::now();
    let s = spool.display().to_string();
    let r = run_cli(
        &[
            "queue",
            "flush",
            "--spool",
            &s,
            "--wait",
            "--timeout",
            "15s",
        ],
        Duration::from_secs(20),
    );
    let took = started.elapsed();
    assert_eq!(r.code, Some(69), "{}", show_run(&r));
    assert!(r.stderr.contains("did not pick up"), "{}", show_run(&r));
    // the old name of --wait-limit still works, with a warning
    assert!(
        r.stderr
            .contains("warning: queue flush --timeout is deprecated: use --wait-limit"),
        "{}",
        show_run(&r)
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(16),
        "took {took:?}"
    );
    // the unanswered request is withdrawn
    assert_eq!(fs::read_dir(spool.join("flush.d")).unwrap().count(), 0);
}

// ---------------------------------------------------------------------
// send
// ---------------------------------------------------------------------

fn send(spool: &Path, args: &[&str], input: &[u8]) -> CliRun {
    let s = spool.display().to_string();
    let mut v = vec!["send", "--spool", &s, "--hostname", "relay.test"];
    v.extend_from_slice(args);
    run_stdin(&v, input, T)
}

/// An empty spool in `dir`, as a server leaves it (`send` and the queue
/// commands never create one).
fn empty_spool(dir: &TempDir) -> std::path::PathBuf {
    let spool = dir.path().join("spool");
    fs::create_dir_all(spool.join("queue")).expect("mkdir spool");
    spool
}

#[test]
fn send_queues_with_envelope_and_added_headers() {
    let dir = TempDir::new("send");
    let spool = empty_spool(&dir);
    let r = send(
        &spool,
        &["-f", "sender@x.example", "a@example.net", "<b@example.org>"],
        b"Subject: hi\nTo: a@example.net\n\nhello\n",
    );
    ok(&r);
    let q = queued_ids(&spool);
    assert_eq!(q.len(), 1, "{}", show_run(&r));
    let id = &q[0];
    let env = assert_complete(&spool, id);
    assert_eq!(env.get("from"), "<sender@x.example>");
    // who queued it and how (README "Logs": the server's `queued` line)
    let uid = unsafe { libc::getuid() };
    let client = env.get("client");
    assert!(
        client.starts_with(&format!("local uid={uid} user=")) && client.ends_with(" via=send"),
        "{client}"
    );
    assert_eq!(
        env.rcpts(),
        [
            (
                "pending".to_string(),
                "<a@example.net>".to_string(),
                "-".to_string()
            ),
            (
                "pending".to_string(),
                "<b@example.org>".to_string(),
                "-".to_string()
            ),
        ]
    );
    let msg = String::from_utf8(read_msg(&spool, id)).unwrap();
    assert!(msg.starts_with("Received: by relay.test"), "{msg}");
    assert!(msg.contains("\r\nDate: "), "{msg}");
    assert!(
        msg.contains(&format!("\r\nMessage-ID: <{id}@relay.test>\r\n")),
        "{msg}"
    );
    assert!(
        msg.contains("\r\nSubject: hi\r\n") && msg.ends_with("\r\n\r\nhello\r\n"),
        "{msg:?}"
    );
    // it shows up as a local message
    let line = ok(&queue(&spool, "list", &[]));
    assert!(
        line.contains("\tsender@x.example\tpending a@example.net\tpending b@example.org"),
        "{line}"
    );
}

#[test]
fn send_t_takes_recipients_from_headers_and_drops_bcc() {
    let dir = TempDir::new("send-t");
    let spool = empty_spool(&dir);
    let input = b"From: me@x.example\nDate: Sat, 1 Jan 2000 00:00:00 +0000\nTo: Ann <ann@example.net>\nCc: bob@example.org (Bob)\nBcc: secret@hidden.example\nSubject: t\n\nbody\n";
    ok(&send(&spool, &["-t", "-f", "me@x.example"], input));
    let q = queued_ids(&spool);
    assert_eq!(q.len(), 1);
    let rcpts: Vec<String> = EnvFile::load(&spool, &q[0])
        .rcpts()
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(
        rcpts,
        [
            "<ann@example.net>",
            "<bob@example.org>",
            "<secret@hidden.example>"
        ]
    );
    let msg = String::from_utf8(read_msg(&spool, &q[0])).unwrap();
    assert!(!msg.contains("Bcc") && !msg.contains("secret"), "{msg}");
    assert_eq!(
        msg.matches("\r\nDate: ").count(),
        1,
        "Date kept, not added:\n{msg}"
    );
    assert!(msg.contains("\r\nTo: Ann <ann@example.net>\r\n"), "{msg}");

    // no recipients at all: a usage error, nothing queued
    for args in [&["-f", "me@x.example"][..], &["-t"]] {
        let r = send(&spool, args, b"Subject: none\n\nx\n");
        assert_eq!(r.code, Some(64), "{args:?}: {}", show_run(&r));
        assert!(r.stderr.contains("recipients"), "{}", show_run(&r));
    }
    assert_eq!(queued_ids(&spool).len(), 1);
}

#[test]
fn send_with_a_running_server_is_delivered() {
    let sink = Sink::start();
    let relay = delivering(&sink, None);
    let r = send(
        relay.spool(),
        &["-f", "me@x.example", "you@example.net"],
        b"Subject: via send\n\nhello\n",
    );
    ok(&r);
    assert!(sink.wait_for(1, T), "not delivered");
    let m = &sink.messages()[0];
    assert_eq!(m.mail_from, "me@x.example");
    assert_eq!(m.rcpts, ["you@example.net"]);
    assert!(String::from_utf8_lossy(&m.data).contains("Subject: via send\r\n"));
    assert!(wait_until(T, || queued_ids(relay.spool()).is_empty()));
}

/// `send` in a folder without a spool, with `SMTP_RELAY_CONFIG` set to
/// `config` (a file with no spool line stands for "no configuration").
fn send_in(cwd: &Path, config: &Path, input: &[u8]) -> CliRun {
    run_command_stdin(
        Command::new(BIN)
            .args(["send", "-f", "me@x.example", "you@example.net"])
            .env("SMTP_RELAY_CONFIG", config)
            .current_dir(cwd),
        input,
        T,
    )
}

#[test]
fn send_and_queue_commands_never_create_a_spool() {
    let dir = TempDir::new("nospool");
    let missing = dir.path().join("spool");
    let r = send(
        &missing,
        &["-f", "me@x.example", "you@example.net"],
        b"x
",
    );
    assert_eq!(r.code, Some(78), "{}", show_run(&r));
    assert!(r.stderr.contains("no spool here"), "{}", show_run(&r));
    for sub in ["list", "flush", "hold", "release", "requeue"] {
        let r = queue(&missing, sub, &[]);
        assert_eq!(r.code, Some(78), "queue {sub}: {}", show_run(&r));
        assert!(r.stderr.contains("no spool here"), "{}", show_run(&r));
    }
    assert!(!missing.exists(), "a spool was created");

    // no --spool and no configuration: the default ./spool is not made
    // in whatever folder the command runs in
    let cwd = dir.path().join("cwd");
    fs::create_dir(&cwd).expect("mkdir");
    let config = write_file(dir.path(), "empty.conf", b"# nothing set\n");
    let r = send_in(&cwd, &config, b"Subject: lost\n\nx\n");
    assert_eq!(r.code, Some(78), "{}", show_run(&r));
    assert!(!cwd.join("spool").exists(), "./spool was created");
}

#[test]
fn send_without_spool_option_uses_the_config_file() {
    let dir = TempDir::new("confspool");
    let spool = empty_spool(&dir);
    let cwd = dir.path().join("cwd");
    fs::create_dir(&cwd).expect("mkdir");
    let config = write_file(
        dir.path(),
        "relay.conf",
        format!("spool = {}\n", spool.display()).as_bytes(),
    );
    ok(&send_in(&cwd, &config, b"Subject: found\n\nx\n"));
    assert_eq!(queued_ids(&spool).len(), 1);
    assert!(!cwd.join("spool").exists());
    // a named configuration file that is missing is an error, not defaults
    let r = send_in(&cwd, &dir.path().join("nonexistent.conf"), b"x\n");
    assert_eq!(r.code, Some(64), "{}", show_run(&r));
    assert!(r.stderr.contains("nonexistent.conf"), "{}", show_run(&r));
}

#[test]
fn send_over_max_size_exits_65_and_queues_nothing() {
    let dir = TempDir::new("send-big");
    let spool = empty_spool(&dir);
    let mut input = b"Subject: big\n\n".to_vec();
    input.extend(std::iter::repeat_n(b"0123456789abcdef\n".as_slice(), 300).flatten());
    let r = send(
        &spool,
        &["--max-size", "4k", "-f", "me@x.example", "you@example.net"],
        &input,
    );
    assert_eq!(r.code, Some(65), "{}", show_run(&r));
    assert!(r.stderr.contains("max-size"), "{}", show_run(&r));
    assert!(queued_ids(&spool).is_empty());
    assert_eq!(tmp_count(&spool), 0);
    // the same message fits under the default limit (serve's, 10 MiB)
    ok(&send(
        &spool,
        &["-f", "me@x.example", "you@example.net"],
        &input,
    ));
    assert_eq!(queued_ids(&spool).len(), 1);
}

/// `send` streams stdin to the spool: a 32 MiB message is queued under a
/// 48 MiB address-space limit (reading it all into memory, as before,
/// needed more than twice its size).
#[test]
fn send_streams_a_large_message_in_bounded_memory() {
    let dir = TempDir::new("send-stream");
    let spool = empty_spool(&dir);
    let line = [b'y'; 1023];
    let mut input = b"Subject: large\n\n".to_vec();
    for _ in 0..32 * 1024 {
        input.extend_from_slice(&line);
        input.push(b'\n');
    }
    let script = format!(
        "ulimit -v 49152 && exec {BIN} send --spool {} --max-size 100M -f me@x.example you@example.net",
        spool.display()
    );
    let r = run_command_stdin(
        Command::new("sh").args(["-c", &script]),
        &input,
        Duration::from_secs(60),
    );
    ok(&r);
    let q = queued_ids(&spool);
    assert_eq!(q.len(), 1);
    let msg = read_msg(&spool, &q[0]);
    // CRLF line ends: one more octet per line
    assert!(
        msg.len() > input.len() + 32 * 1024,
        "{} octets queued",
        msg.len()
    );
}
