//! Test harness shared by the integration tests: the real `smtp-relay`
//! binary on a fresh spool (`Relay`), a raw line-oriented SMTP client
//! (`Talk`), spool inspection helpers, and a scripted SMTP server (`Sink`)
//! standing in for the next hop in delivery tests.
//!
//! Every test gets its own relay process, spool and ports, so the tests
//! run in parallel. Nothing here sleeps to decide an outcome: waits poll
//! a condition against a deadline (`wait_until`).

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod dnsmasq;
pub mod nginx;
pub mod postfix;
pub mod tlsrpt;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The relay binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");

/// How long a relay may take to print its `listening on` lines.
pub const START_DEADLINE: Duration = Duration::from_secs(10);

/// Read timeout of `Talk`: no reply within this is a failure.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, unique per call (process
/// id, counter, clock, and the test's thread name), removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let test: String = thread::current()
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(60)
            .collect();
        let path = std::env::temp_dir().join(format!(
            "smtp-relay-it-{tag}-{test}-{}-{n}-{nanos}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------

/// Polls `f` every 20 ms until it returns true (→ true) or `deadline`
/// has passed (→ false, after one last try).
pub fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return f();
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// nobody's uid and gid, from the passwd database (tests of `--user`).
pub fn nobody() -> Option<(u32, u32)> {
    let r = run_tool(
        Command::new("getent").args(["passwd", "nobody"]),
        Duration::from_secs(10),
    );
    let f: Vec<&str> = r.stdout.trim().split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// True when the `CI` environment variable is set (to anything but empty
/// or `false`/`0`): missing interop tools are then failures, not skips.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false)
}

// ---------------------------------------------------------------------
// The relay process
// ---------------------------------------------------------------------

/// A running `smtp-relay serve` on a spool of its own (or one given),
/// listening on 127.0.0.1 with a kernel-chosen port. Killed on drop.
pub struct Relay {
    child: Option<Child>,
    addrs: Vec<SocketAddr>,
    /// Holds the log (and the spool, when we made it).
    base: TempDir,
    spool: PathBuf,
    args: Vec<String>,
    /// Extra environment variables for the process.
    env: Vec<(String, String)>,
    log_path: PathBuf,
    /// Length of the log when the current process started.
    log_mark: usize,
    /// stdout lines after the `listening on` ones, kept flowing.
    _stdout: Option<Receiver<String>>,
}

impl Relay {
    /// Starts a relay on a fresh spool with `--hostname relay.test` and the
    /// extra `args`.
    pub fn start(args: &[&str]) -> Relay {
        let base = TempDir::new("relay");
        let spool = base.path().join("spool");
        Relay::launch(base, spool, args)
    }

    /// Like `start`, with delivery off (`--delivery-workers 0`): messages
    /// stay in the queue exactly as received, so tests of the receiving
    /// side can inspect the spool without racing the scheduler.
    pub fn receive_only(args: &[&str]) -> Relay {
        Relay::start(&receive_only_args(args))
    }

    /// `start_with_spool` with delivery off, as `receive_only`.
    pub fn receive_only_with_spool(spool: PathBuf, args: &[&str]) -> Relay {
        Relay::start_with_spool(spool, &receive_only_args(args))
    }

    /// Starts a relay on an existing (or not yet existing) spool that the
    /// caller owns; it is not removed on drop.
    pub fn start_with_spool(spool: PathBuf, args: &[&str]) -> Relay {
        let base = TempDir::new("relay");
        Relay::launch(base, spool, args)
    }

    /// Like `start`, with extra environment variables (`SMTP_RELAY_FAULT`).
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Relay {
        let base = TempDir::new("relay");
        let spool = base.path().join("spool");
        let mut relay = Relay::new(base, spool, args);
        relay.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        relay.spawn();
        relay
    }

    /// `start_with_spool` with extra environment variables; `restart`
    /// keeps them unless `set_env` changes them.
    pub fn start_with_spool_env(spool: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Relay {
        let mut relay = Relay::new(TempDir::new("relay"), spool, args);
        relay.set_env(env);
        relay.spawn();
        relay
    }

    /// The extra environment variables of the next start.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    fn launch(base: TempDir, spool: PathBuf, args: &[&str]) -> Relay {
        let mut relay = Relay::new(base, spool, args);
        relay.spawn();
        relay
    }

    fn new(base: TempDir, spool: PathBuf, args: &[&str]) -> Relay {
        let log_path = base.path().join("relay.log");
        Relay {
            child: None,
            addrs: Vec::new(),
            base,
            spool,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            log_path,
            log_mark: 0,
            _stdout: None,
        }
    }

    /// The full argument list after the program name.
    fn command_line(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--spool".into(),
            self.spool.display().to_string(),
            "--hostname".into(),
            "relay.test".into(),
        ];
        v.extend(self.args.iter().cloned());
        v
    }

    fn spawn(&mut self) {
        self.log_mark = fs::metadata(&self.log_path).map_or(0, |m| m.len() as usize);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        let argv = self.command_line();
        let mut child = Command::new(BIN)
            .args(&argv)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // one `listening on` line per listener option: ours plus the
        // caller's; plain ones first, then --listen-tls, --submission,
        // --submission-tls (each in the order given)
        let want = argv
            .iter()
            .filter(|a| {
                matches!(
                    a.as_str(),
                    "--listen" | "--listen-tls" | "--submission" | "--submission-tls"
                )
            })
            .count();
        let end = Instant::now() + START_DEADLINE;
        let mut addrs = Vec::new();
        while addrs.len() < want {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening on ") {
                        let a: SocketAddr = a
                            .trim()
                            .parse()
                            .unwrap_or_else(|e| panic!("bad `listening on` line {line:?}: {e}"));
                        addrs.push(a);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "relay printed {} of {want} `listening on` lines within {START_DEADLINE:?}\nargs: {argv:?}\n(relay log below)",
                        addrs.len(),
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_exit(&mut child, Duration::from_secs(5));
                    panic!(
                        "relay exited before listening ({status:?})\nargs: {argv:?}\n(relay log below)"
                    );
                }
            }
        }
        self.addrs = addrs;
        self.child = Some(child);
        self._stdout = Some(rx);
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listener's address: `--listen` ones in order, then
    /// `--listen-tls`, `--submission`, `--submission-tls`.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn spool(&self) -> &Path {
        &self.spool
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.spool.join("queue")
    }

    /// The relay's stderr so far (all runs, restarts appended).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// The process id of the running relay.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("relay is running").id()
    }

    /// SIGKILL, and reap: the crash every durability claim is about.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (through `kill(1)`, std has no signal API): a clean stop.
    pub fn terminate(&mut self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`HUP`, `USR1` ...) through `kill(1)`.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill(1): {e}"));
        assert!(status.success(), "kill -{name} {pid}: {status}");
    }

    /// Waits up to `limit` for the process to exit; `None` if it still
    /// runs (it is left running).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(limit, || {
            status = self.exited();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        }
    }

    /// Kills the relay if it still runs and starts it again on the same
    /// spool with the same arguments (the port may change).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_recovered();
    }

    /// Waits until start-up recovery has read every queued envelope (the
    /// server accepts mail before that: `recovery read` in the log, once
    /// per start), so that what recovery does to the spool can be looked
    /// at. Needs the default log level.
    pub fn wait_recovered(&self) {
        let since_start = || self.log().get(self.log_mark..).unwrap_or("").to_string();
        let done = wait_until(START_DEADLINE, || since_start().contains(" recovery read "));
        assert!(
            done,
            "no `recovery read` line in the log within {START_DEADLINE:?}:\n{}",
            since_start()
        );
    }

    /// SIGTERM, wait for the exit, and start again on the same spool: a
    /// clean restart (what an upgrade does).
    pub fn restart_clean(&mut self) {
        self.terminate();
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(status.is_some(), "the relay did not stop on SIGTERM");
        self.spawn();
    }

    /// A raw client connected to the first listener.
    pub fn talk(&self) -> Talk {
        Talk::connect(self.addr())
    }

    /// Connected, greeted (220) and introduced (`EHLO client.test`).
    pub fn session(&self) -> Talk {
        Talk::greet(self.addr())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "---- relay log ({}) ----\n{}---- end of relay log ----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// `--delivery-workers 0` followed by `args`.
pub fn receive_only_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--delivery-workers", "0"];
    v.extend_from_slice(args);
    v
}

/// Waits (bounded) for a child to exit, killing it if it does not.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// What a finished run of the binary printed.
#[derive(Debug)]
pub struct CliRun {
    /// `None` when the process had to be killed at the deadline.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `input` on its standard input.
pub fn run_stdin(args: &[&str], input: &[u8], limit: Duration) -> CliRun {
    run_command_stdin(Command::new(BIN).args(args), input, limit)
}

/// `run_stdin` for a prepared command (environment, working folder).
pub fn run_command_stdin(cmd: &mut Command, input: &[u8], limit: Duration) -> CliRun {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin piped");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let reader = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).to_string()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout piped")));
    let err = reader(Box::new(child.stderr.take().expect("stderr piped")));
    let status = wait_exit(&mut child, limit);
    let _ = writer.join();
    CliRun {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs the binary with `args` to completion (killed after `limit`).
pub fn run_cli(args: &[&str], limit: Duration) -> CliRun {
    run_tool(Command::new(BIN).args(args), limit)
}

// ---------------------------------------------------------------------
// The raw SMTP client
// ---------------------------------------------------------------------

/// A line-oriented SMTP client over a plain socket: it sends exactly what
/// the test says and reads replies one at a time, so ordering, pipelining
/// and odd input can be exercised. Keeps a transcript for failures.
pub struct Talk {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    transcript: Vec<String>,
}

impl Talk {
    pub fn connect(addr: SocketAddr) -> Talk {
        let s = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Talk::from_stream(s)
    }

    /// Connects from a chosen local address (e.g. `127.0.0.2`), for relay
    /// control tests: std cannot bind before connecting, socket2 can.
    pub fn connect_from(local_ip: &str, addr: SocketAddr) -> Talk {
        use socket2::{Domain, Socket, Type};
        let ip: std::net::IpAddr = local_ip
            .parse()
            .unwrap_or_else(|e| panic!("bad local ip {local_ip:?}: {e}"));
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)
            .unwrap_or_else(|e| panic!("socket(): {e}"));
        sock.bind(&SocketAddr::new(ip, 0).into())
            .unwrap_or_else(|e| panic!("bind {local_ip}: {e}"));
        sock.connect_timeout(&addr.into(), REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {local_ip} → {addr}: {e}"));
        Talk::from_stream(sock.into())
    }

    fn from_stream(s: TcpStream) -> Talk {
        s.set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("set_read_timeout");
        s.set_write_timeout(Some(REPLY_TIMEOUT))
            .expect("set_write_timeout");
        let _ = s.set_nodelay(true);
        let writer = s.try_clone().expect("clone socket");
        Talk {
            reader: BufReader::new(s),
            writer,
            transcript: Vec::new(),
        }
    }

    /// Connect, expect the 220 greeting, and `EHLO client.test` → 250.
    pub fn greet(addr: SocketAddr) -> Talk {
        let mut t = Talk::connect(addr);
        t.expect(220);
        t.cmd("EHLO client.test", 250);
        t
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// What was said so far, for assertion messages.
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    /// Sends one line; CRLF is appended.
    pub fn send(&mut self, line: &str) {
        self.transcript.push(format!("C: {line}"));
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        self.write(&buf);
    }

    /// Sends bytes exactly as given.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let shown: String = String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            .escape_debug()
            .collect();
        self.transcript
            .push(format!("C: (raw {} octets) {shown}", bytes.len()));
        self.write(bytes);
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Err(e) = self.writer.write_all(bytes) {
            panic!("write failed: {e}\ntranscript:\n{}", self.transcript());
        }
    }

    /// Reads one complete (possibly multi-line) reply: `Ok(None)` at EOF.
    /// The text is each line after `ddd-`/`ddd `, joined by `\n`.
    pub fn try_reply(&mut self) -> io::Result<Option<(u16, String)>> {
        let mut code: Option<u16> = None;
        let mut lines: Vec<String> = Vec::new();
        // a reply of more than 1000 lines is a runaway: bounded loop
        for _ in 0..1000 {
            let mut raw = Vec::new();
            let n = self.reader.read_until(b'\n', &mut raw)?;
            if n == 0 {
                if code.is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a multi-line reply",
                    ));
                }
                return Ok(None);
            }
            let line = String::from_utf8_lossy(&raw).to_string();
            self.transcript.push(format!("S: {}", line.trim_end()));
            let Some(line) = line.strip_suffix("\r\n") else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("reply line not ended by CRLF: {line:?}"),
                ));
            };
            let b = line.as_bytes();
            if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed reply line {line:?}"),
                ));
            }
            let c: u16 = line[..3].parse().expect("three digits");
            if let Some(prev) = code {
                if prev != c {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("multi-line reply changes code {prev} → {c}"),
                    ));
                }
            }
            code = Some(c);
            match b.get(3) {
                None => {
                    lines.push(String::new());
                    return Ok(Some((c, lines.join("\n"))));
                }
                Some(b' ') => {
                    lines.push(line[4..].to_string());
                    return Ok(Some((c, lines.join("\n"))));
                }
                Some(b'-') => lines.push(line[4..].to_string()),
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed reply line {line:?}"),
                    ))
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "reply of more than 1000 lines",
        ))
    }

    /// Reads one reply; panics on EOF, timeout or garbage.
    pub fn reply(&mut self) -> (u16, String) {
        match self.try_reply() {
            Ok(Some(r)) => r,
            Ok(None) => panic!(
                "connection closed while waiting for a reply\ntranscript:\n{}",
                self.transcript()
            ),
            Err(e) => panic!("no reply: {e}\ntranscript:\n{}", self.transcript()),
        }
    }

    /// Reads one reply and asserts its code; returns the text.
    pub fn expect(&mut self, code: u16) -> String {
        let (c, text) = self.reply();
        assert_eq!(
            c,
            code,
            "expected {code}, got {c} {text:?}\ntranscript:\n{}",
            self.transcript()
        );
        text
    }

    /// Reads one reply and asserts its code and its enhanced status code
    /// (RFC 3463, the first word of the text); returns the text after it.
    pub fn expect_enh(&mut self, code: u16, enhanced: &str) -> String {
        let text = self.expect(code);
        let first = text.lines().next().unwrap_or("");
        match first.split_once(' ') {
            Some((e, _)) if e == enhanced => {}
            _ if first == enhanced => {}
            _ => panic!(
                "expected enhanced code {enhanced} in {code} reply, got {text:?}\ntranscript:\n{}",
                self.transcript()
            ),
        }
        text[enhanced.len()..].trim_start().to_string()
    }

    /// Sends a command and expects a reply code.
    pub fn cmd(&mut self, line: &str, code: u16) -> String {
        self.send(line);
        self.expect(code)
    }

    /// Sends a command and expects a reply code and enhanced code.
    pub fn cmd_enh(&mut self, line: &str, code: u16, enhanced: &str) -> String {
        self.send(line);
        self.expect_enh(code, enhanced)
    }

    /// Asserts the server closes the connection (EOF or reset) before
    /// sending anything more.
    pub fn expect_closed(&mut self) {
        match self.try_reply() {
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Ok(Some((c, t))) => panic!(
                "expected the connection to close, got {c} {t:?}\ntranscript:\n{}",
                self.transcript()
            ),
            Err(e) => panic!(
                "expected the connection to close, got error {e}\ntranscript:\n{}",
                self.transcript()
            ),
        }
    }

    /// A whole transaction: MAIL, RCPT each, DATA, `data` (already dot
    /// stuffed, CRLF lines) and the final dot. Returns the queue id of
    /// the `250 2.0.0 Ok: queued as ID` reply.
    pub fn send_mail(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> String {
        self.cmd_enh(&format!("MAIL FROM:<{from}>"), 250, "2.1.0");
        for r in rcpts {
            self.cmd_enh(&format!("RCPT TO:<{r}>"), 250, "2.1.5");
        }
        self.cmd_enh("DATA", 354, "2.0.0");
        self.send_raw(data);
        self.send_raw(b".\r\n");
        let text = self.expect_enh(250, "2.0.0");
        queued_id(&text).unwrap_or_else(|| panic!("no queue id in {text:?}\n{}", self.transcript()))
    }
}

/// The id in `Ok: queued as ID` (with or without the enhanced code).
pub fn queued_id(text: &str) -> Option<String> {
    let id = text.split("queued as ").nth(1)?.split_whitespace().next()?;
    is_queue_id(id).then(|| id.to_string())
}

/// 16 upper-case hex digits.
pub fn is_queue_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

// ---------------------------------------------------------------------
// The spool on disk
// ---------------------------------------------------------------------

fn names_in(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            v.sort();
            v
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    }
}

/// Ids of the committed messages (`queue/*.env`), sorted.
pub fn queued_ids(spool: &Path) -> Vec<String> {
    names_in(&spool.join("queue"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".env").map(str::to_string))
        .collect()
}

/// Every file name in `queue/`, sorted.
pub fn queue_files(spool: &Path) -> Vec<String> {
    names_in(&spool.join("queue"))
}

/// Every file name in `tmp/`, sorted.
pub fn tmp_files(spool: &Path) -> Vec<String> {
    names_in(&spool.join("tmp"))
}

pub fn tmp_count(spool: &Path) -> usize {
    tmp_files(spool).len()
}

/// Every file name in `corrupt/`, sorted.
pub fn corrupt_files(spool: &Path) -> Vec<String> {
    names_in(&spool.join("corrupt"))
}

pub fn env_path(spool: &Path, id: &str) -> PathBuf {
    spool.join("queue").join(format!("{id}.env"))
}

/// Waits up to `limit` until `id`'s first recipient is in `state`
/// (`pending`, `deferred`, ...); returns it as (state, path, last reply).
pub fn wait_rcpt_state(
    relay: &Relay,
    id: &str,
    state: &str,
    limit: Duration,
) -> (String, String, String) {
    let mut last = None;
    let ok = wait_until(limit, || {
        if !env_path(relay.spool(), id).exists() {
            return false;
        }
        let r = EnvFile::load(relay.spool(), id).rcpts();
        let hit = r.first().is_some_and(|r| r.0 == state);
        last = r.into_iter().next();
        hit
    });
    assert!(ok, "{id} not {state}: {last:?}\n{}", relay.log());
    last.expect("a recipient")
}

pub fn msg_path(spool: &Path, id: &str) -> PathBuf {
    spool.join("queue").join(format!("{id}.msg"))
}

pub fn read_env(spool: &Path, id: &str) -> String {
    let p = env_path(spool, id);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn read_msg(spool: &Path, id: &str) -> Vec<u8> {
    let p = msg_path(spool, id);
    fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// An envelope file read as `key: value` lines.
#[derive(Debug, Clone)]
pub struct EnvFile {
    pub text: String,
    pub fields: Vec<(String, String)>,
    /// The last line is `end` (the file is not torn).
    pub ended: bool,
}

impl EnvFile {
    pub fn parse(text: &str) -> EnvFile {
        let mut fields = Vec::new();
        let mut ended = false;
        for line in text.lines() {
            if line == "end" {
                ended = true;
                continue;
            }
            ended = false;
            if let Some((k, v)) = line.split_once(": ") {
                fields.push((k.to_string(), v.to_string()));
            }
        }
        EnvFile {
            text: text.to_string(),
            fields,
            ended: ended && text.ends_with("end\n"),
        }
    }

    pub fn load(spool: &Path, id: &str) -> EnvFile {
        EnvFile::parse(&read_env(spool, id))
    }

    /// The value of the single field `key`; panics if absent.
    pub fn get(&self, key: &str) -> &str {
        let all = self.all(key);
        assert_eq!(all.len(), 1, "field {key:?} in envelope:\n{}", self.text);
        all[0]
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `rcpt:` fields split at tabs: (state, forward-path, last reply).
    pub fn rcpts(&self) -> Vec<(String, String, String)> {
        self.all("rcpt")
            .into_iter()
            .map(|v| {
                let f: Vec<&str> = v.splitn(3, '\t').collect();
                assert_eq!(f.len(), 3, "rcpt field {v:?}");
                (f[0].to_string(), f[1].to_string(), f[2].to_string())
            })
            .collect()
    }

    pub fn size(&self) -> u64 {
        self.get("size")
            .parse()
            .unwrap_or_else(|e| panic!("size field: {e}\n{}", self.text))
    }
}

/// Checks that a queued message is whole: both files, the envelope ends
/// in `end`, names its id, and its size is the body file's length.
pub fn assert_complete(spool: &Path, id: &str) -> EnvFile {
    let env = EnvFile::load(spool, id);
    assert!(env.ended, "{id}: envelope not ended:\n{}", env.text);
    assert_eq!(env.get("id"), id, "{id}: envelope names another id");
    let len = fs::metadata(msg_path(spool, id))
        .unwrap_or_else(|e| panic!("{id}: body: {e}"))
        .len();
    assert_eq!(env.size(), len, "{id}: size field vs body length");
    env
}

/// Splits a stored message into our `Received:` header (first field,
/// continuation lines included, CRLFs kept) and the rest as the client
/// sent it.
pub fn split_received(msg: &[u8]) -> (String, Vec<u8>) {
    assert!(
        msg.starts_with(b"Received: "),
        "message does not start with Received: {:?}",
        String::from_utf8_lossy(&msg[..msg.len().min(200)])
    );
    let mut end = 0;
    loop {
        let nl = msg[end..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| end + i + 1)
            .expect("header line ends");
        end = nl;
        if end >= msg.len() || !(msg[end] == b'\t' || msg[end] == b' ') {
            break;
        }
    }
    (
        String::from_utf8_lossy(&msg[..end]).to_string(),
        msg[end..].to_vec(),
    )
}

// ---------------------------------------------------------------------
// The scripted next hop
// ---------------------------------------------------------------------

/// What the sink does at one point of the dialogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `code text` (text usually starts with an enhanced code).
    Reply(u16, String),
    /// Close the connection without a word.
    Close,
    /// Say nothing for this long (or until the sink stops), then close.
    Hang(Duration),
}

impl Action {
    pub fn reply(code: u16, text: &str) -> Action {
        Action::Reply(code, text.to_string())
    }

    fn is_positive(&self) -> bool {
        matches!(self, Action::Reply(c, _) if *c < 400)
    }
}

/// One transaction the sink saw through to the end of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub peer: SocketAddr,
    pub helo: String,
    /// The reverse-path without brackets: empty for the null sender.
    pub mail_from: String,
    /// MAIL parameters as sent (`SIZE=123`, `BODY=8BITMIME` ...).
    pub mail_params: Vec<String>,
    /// Accepted forward-paths, without brackets, in order.
    pub rcpts: Vec<String>,
    /// The message after dot-unstuffing, CRLF line ends, without the
    /// final `.CRLF`.
    pub data: Vec<u8>,
    /// The code the sink answered at end of data (`None`: closed/hung).
    pub reply: Option<u16>,
}

/// Queue ids the default sink hands out (`queued as ...`).
static SINK_IDS: AtomicU64 = AtomicU64::new(1);

type RcptFn = Arc<dyn Fn(&str) -> Action + Send + Sync>;
type DataFn = Arc<dyn Fn(&Received) -> Action + Send + Sync>;

/// How a `Sink` behaves; the default accepts everything.
#[derive(Clone)]
pub struct SinkConfig {
    pub hostname: String,
    /// The greeting: 220 by default; e.g. `Action::reply(554, "...")`.
    pub greeting: Action,
    pub pipelining: bool,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    /// Advertised `SIZE` (without a value when `Some(0)`); `None`: none.
    pub size: Option<u64>,
    /// Reply to MAIL, given the reverse-path without brackets.
    pub mail: RcptFn,
    /// Reply to RCPT, given the forward-path without brackets.
    pub rcpt: RcptFn,
    /// Reply to the DATA command itself (354 continues).
    pub data_cmd: Action,
    /// After 354, read the first data line and then drop the connection.
    pub close_mid_data: bool,
    /// Reply at end of data.
    pub data_end: DataFn,
}

impl Default for SinkConfig {
    fn default() -> SinkConfig {
        SinkConfig {
            hostname: "sink.test".into(),
            greeting: Action::reply(220, "sink.test ESMTP test sink"),
            pipelining: true,
            eightbitmime: true,
            smtputf8: false,
            size: Some(0),
            mail: Arc::new(|_| Action::reply(250, "2.1.0 Ok")),
            rcpt: Arc::new(|_| Action::reply(250, "2.1.5 Ok")),
            data_cmd: Action::reply(354, "2.0.0 End data with <CR><LF>.<CR><LF>"),
            close_mid_data: false,
            data_end: Arc::new(|_| {
                let n = SINK_IDS.fetch_add(1, Ordering::SeqCst);
                Action::Reply(250, format!("2.0.0 Ok: queued as {n:016X}"))
            }),
        }
    }
}

impl SinkConfig {
    pub fn greeting(mut self, a: Action) -> SinkConfig {
        self.greeting = a;
        self
    }

    pub fn pipelining(mut self, on: bool) -> SinkConfig {
        self.pipelining = on;
        self
    }

    pub fn eightbitmime(mut self, on: bool) -> SinkConfig {
        self.eightbitmime = on;
        self
    }

    pub fn smtputf8(mut self, on: bool) -> SinkConfig {
        self.smtputf8 = on;
        self
    }

    pub fn size(mut self, size: Option<u64>) -> SinkConfig {
        self.size = size;
        self
    }

    pub fn mail(mut self, f: impl Fn(&str) -> Action + Send + Sync + 'static) -> SinkConfig {
        self.mail = Arc::new(f);
        self
    }

    pub fn rcpt(mut self, f: impl Fn(&str) -> Action + Send + Sync + 'static) -> SinkConfig {
        self.rcpt = Arc::new(f);
        self
    }

    /// RCPT replies by table: the first pattern contained in the address
    /// (case-insensitive) decides; no match → 250.
    pub fn rcpt_table(self, table: &[(&str, Action)]) -> SinkConfig {
        let table: Vec<(String, Action)> = table
            .iter()
            .map(|(p, a)| (p.to_ascii_lowercase(), a.clone()))
            .collect();
        self.rcpt(move |addr| {
            let addr = addr.to_ascii_lowercase();
            table
                .iter()
                .find(|(p, _)| addr.contains(p.as_str()))
                .map(|(_, a)| a.clone())
                .unwrap_or_else(|| Action::reply(250, "2.1.5 Ok"))
        })
    }

    pub fn data_cmd(mut self, a: Action) -> SinkConfig {
        self.data_cmd = a;
        self
    }

    pub fn close_mid_data(mut self) -> SinkConfig {
        self.close_mid_data = true;
        self
    }

    /// The same end-of-data reply for every message.
    pub fn data_end(self, a: Action) -> SinkConfig {
        self.data_end_fn(move |_| a.clone())
    }

    pub fn data_end_fn(
        mut self,
        f: impl Fn(&Received) -> Action + Send + Sync + 'static,
    ) -> SinkConfig {
        self.data_end = Arc::new(f);
        self
    }
}

struct SinkShared {
    config: Mutex<SinkConfig>,
    log: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    /// Bumped by every stop: connection threads of an older epoch quit.
    epoch: AtomicUsize,
    running: AtomicBool,
    /// Open connections by number, so `stop` can drop them.
    streams: Mutex<HashMap<usize, TcpStream>>,
}

/// An in-process SMTP server on 127.0.0.1 that records what it receives
/// and answers as its `SinkConfig` says; a thread per connection. It can
/// be stopped (port closed, connections dropped) and restarted on the
/// same port.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<SinkShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Sink {
    /// A sink that accepts everything.
    pub fn start() -> Sink {
        Sink::with(SinkConfig::default())
    }

    pub fn with(config: SinkConfig) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink on 127.0.0.1:0");
        let addr = listener.local_addr().expect("sink local_addr");
        let shared = Arc::new(SinkShared {
            config: Mutex::new(config),
            log: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            epoch: AtomicUsize::new(0),
            running: AtomicBool::new(true),
            streams: Mutex::new(HashMap::new()),
        });
        let mut sink = Sink {
            addr,
            shared,
            acceptor: None,
        };
        sink.run(listener);
        sink
    }

    fn run(&mut self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("sink listener nonblocking");
        self.shared.running.store(true, Ordering::SeqCst);
        let shared = self.shared.clone();
        let epoch = shared.epoch.load(Ordering::SeqCst);
        self.acceptor = Some(thread::spawn(move || {
            while shared.running.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        let n = shared.connections.fetch_add(1, Ordering::SeqCst);
                        if let Ok(c) = s.try_clone() {
                            shared.streams.lock().expect("sink lock").insert(n, c);
                        }
                        let shared = shared.clone();
                        thread::spawn(move || {
                            let _ = sink_session(s, peer, &shared, epoch);
                            shared.streams.lock().expect("sink lock").remove(&n);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
            // the listener is dropped here: the port is closed
        }));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Messages answered 2xx at end of data, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.attempts()
            .into_iter()
            .filter(|r| matches!(r.reply, Some(c) if c < 400))
            .collect()
    }

    /// Every transaction that reached the end of its data, whatever the
    /// sink answered.
    pub fn attempts(&self) -> Vec<Received> {
        self.shared.log.lock().expect("sink lock").clone()
    }

    /// Number of accepted messages.
    pub fn count(&self) -> usize {
        self.messages().len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages were accepted.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.count() >= n)
    }

    /// Changes the behaviour for new commands from now on.
    pub fn set_config(&self, config: SinkConfig) {
        *self.shared.config.lock().expect("sink lock") = config;
    }

    /// Down: closes the port and drops every open connection.
    pub fn stop(&mut self) {
        self.shared.running.store(false, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        for (_, s) in self.shared.streams.lock().expect("sink lock").drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Up again on the same port (retrying the bind for up to 5 s).
    pub fn restart(&mut self) {
        self.stop();
        let mut listener = None;
        let mut last_err = None;
        wait_until(Duration::from_secs(5), || {
            match TcpListener::bind(self.addr) {
                Ok(l) => {
                    listener = Some(l);
                    true
                }
                Err(e) => {
                    last_err = Some(e);
                    false
                }
            }
        });
        let listener =
            listener.unwrap_or_else(|| panic!("sink cannot rebind {}: {last_err:?}", self.addr));
        self.run(listener);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn send_action(out: &mut TcpStream, a: &Action, shared: &SinkShared, epoch: usize) -> bool {
    match a {
        Action::Reply(code, text) => out
            .write_all(format!("{code} {text}\r\n").as_bytes())
            .is_ok(),
        Action::Close => {
            let _ = out.shutdown(Shutdown::Both);
            false
        }
        Action::Hang(d) => {
            wait_until(*d, || shared.epoch.load(Ordering::SeqCst) != epoch);
            let _ = out.shutdown(Shutdown::Both);
            false
        }
    }
}

/// The address between `<` and `>`, and the parameters after it.
fn sink_path(arg: &str) -> Option<(String, Vec<String>)> {
    let open = arg.find('<')?;
    let close = open + arg[open..].find('>')?;
    let path = arg[open + 1..close].to_string();
    let params = arg[close + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((path, params))
}

fn sink_session(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &SinkShared,
    epoch: usize,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    let cfg = shared.config.lock().expect("sink lock").clone();
    let host = cfg.hostname.clone();
    if !send_action(&mut out, &cfg.greeting, shared, epoch) {
        return Ok(());
    }
    // RFC 5321 §3.1: after a 554 greeting only QUIT is served.
    let refusing = !cfg.greeting.is_positive();
    let mut helo: Option<String> = None;
    let mut tx: Option<(String, Vec<String>, Vec<String>)> = None;
    let mut line = Vec::new();
    loop {
        if shared.epoch.load(Ordering::SeqCst) != epoch {
            return Ok(());
        }
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let cfg = shared.config.lock().expect("sink lock").clone();
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
            None => (text.to_ascii_uppercase(), String::new()),
        };
        let reply = |code: u16, t: &str| Action::Reply(code, t.to_string());
        let action = match verb.as_str() {
            "QUIT" => {
                let _ = out.write_all(format!("221 2.0.0 {host} bye\r\n").as_bytes());
                return Ok(());
            }
            _ if refusing => reply(503, "5.5.1 no service here, send QUIT"),
            "EHLO" => {
                helo = Some(arg.clone());
                tx = None;
                let mut lines = vec![format!("{host} hello {arg}")];
                if cfg.pipelining {
                    lines.push("PIPELINING".into());
                }
                if cfg.eightbitmime {
                    lines.push("8BITMIME".into());
                }
                if cfg.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                match cfg.size {
                    Some(0) => lines.push("SIZE".into()),
                    Some(n) => lines.push(format!("SIZE {n}")),
                    None => {}
                }
                lines.push("ENHANCEDSTATUSCODES".into());
                let last = lines.len() - 1;
                let mut s = String::new();
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    s.push_str(&format!("250{sep}{l}\r\n"));
                }
                out.write_all(s.as_bytes())?;
                continue;
            }
            "HELO" => {
                helo = Some(arg.clone());
                tx = None;
                reply(250, &host)
            }
            "MAIL" if helo.is_none() => reply(503, "5.5.1 HELO first"),
            "MAIL" if tx.is_some() => reply(503, "5.5.1 nested MAIL"),
            "MAIL" => match sink_path(&arg) {
                None => reply(501, "5.5.4 MAIL FROM:<path>"),
                Some((from, params)) => {
                    let a = (cfg.mail)(&from);
                    if a.is_positive() {
                        tx = Some((from, params, Vec::new()));
                    }
                    a
                }
            },
            "RCPT" if tx.is_none() => reply(503, "5.5.1 MAIL first"),
            "RCPT" => match sink_path(&arg) {
                None => reply(501, "5.5.4 RCPT TO:<path>"),
                Some((to, _)) => {
                    let a = (cfg.rcpt)(&to);
                    if a.is_positive() {
                        if let Some((_, _, rcpts)) = tx.as_mut() {
                            rcpts.push(to);
                        }
                    }
                    a
                }
            },
            "DATA" => match tx.take() {
                None => reply(503, "5.5.1 MAIL first"),
                Some((_, _, r)) if r.is_empty() => reply(554, "5.5.1 no valid recipients"),
                Some((from, params, rcpts)) => {
                    if !send_action(&mut out, &cfg.data_cmd, shared, epoch) {
                        return Ok(());
                    }
                    if !matches!(cfg.data_cmd, Action::Reply(354, _)) {
                        continue;
                    }
                    if cfg.close_mid_data {
                        let mut first = Vec::new();
                        input.read_until(b'\n', &mut first)?;
                        let _ = out.shutdown(Shutdown::Both);
                        return Ok(());
                    }
                    let data = read_data(&mut input)?;
                    let mut rec = Received {
                        peer,
                        helo: helo.clone().unwrap_or_default(),
                        mail_from: from,
                        mail_params: params,
                        rcpts,
                        data,
                        reply: None,
                    };
                    let a = (cfg.data_end)(&rec);
                    if let Action::Reply(c, _) = &a {
                        rec.reply = Some(*c);
                    }
                    shared.log.lock().expect("sink lock").push(rec);
                    a
                }
            },
            "RSET" => {
                tx = None;
                reply(250, "2.0.0 Ok")
            }
            "NOOP" => reply(250, "2.0.0 Ok"),
            "VRFY" | "EXPN" | "HELP" | "STARTTLS" | "AUTH" | "BDAT" => {
                reply(502, "5.5.1 not implemented")
            }
            _ => reply(500, "5.5.2 command unrecognized"),
        };
        if !send_action(&mut out, &action, shared, epoch) {
            return Ok(());
        }
    }
}

/// Reads DATA to the `.` line, unstuffing leading dots.
fn read_data(input: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during DATA",
            ));
        }
        if line == b".\r\n" {
            return Ok(data);
        }
        let body = if line.first() == Some(&b'.') {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(body);
    }
}

// ---------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------

/// Looks for an executable by absolute path or on PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    for dir in
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
    {
        let c = dir.join(name);
        if c.is_file() {
            return Some(c);
        }
    }
    None
}

/// A tool the test needs: its path, or `None` after printing SKIPPED
/// (outside CI). In CI a missing tool fails the test.
pub fn require_tool(name: &str, test: &str) -> Option<PathBuf> {
    match find_tool(name) {
        Some(p) => Some(p),
        None if in_ci() => {
            panic!("{test}: required tool {name} is missing (CI is set); run scripts/ci-deps.sh")
        }
        None => {
            println!("SKIPPED {test}: {name} not installed (run scripts/ci-deps.sh)");
            None
        }
    }
}

/// Runs a command to completion with a deadline; returns (exit code,
/// stdout, stderr). The child is killed at the deadline.
pub fn run_tool(cmd: &mut Command, limit: Duration) -> CliRun {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout was piped");
    let mut err = child.stderr.take().expect("stderr was piped");
    let t_out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).to_string()
    });
    let t_err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).to_string()
    });
    let status = wait_exit(&mut child, limit);
    CliRun {
        code: status.and_then(|s| s.code()),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Writes `text` to a new file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let mut f = File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(text)
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

/// Counts of each value, for "exactly once" checks.
pub fn tally<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i.clone()).or_insert(0) += 1;
    }
    m
}

/// A receive-only relay for the inbound-edge tests (DNS lists, policy
/// service, rate limits): only 127.0.0.1 is trusted (`--relay-net`), so
/// clients from 127.0.0.2 and up are ordinary ones; mail to example.org
/// is accepted from anyone.
pub fn edge_relay(extra: &[&str]) -> Relay {
    let mut args = vec![
        "--relay-net",
        "127.0.0.1/32",
        "--relay-domain",
        "example.org",
    ];
    args.extend_from_slice(extra);
    Relay::receive_only(&args)
}

/// `smtp-relay passwd USER --auth-file FILE` with `stdin`.
pub fn passwd(file: &Path, user: &str, stdin: &str) -> (Option<i32>, String) {
    let file = file.to_str().expect("utf-8 path");
    passwd_with(&[user, "--auth-file", file], stdin)
}

/// `smtp-relay passwd ARGS...` with `stdin`: exit code and stderr.
pub fn passwd_with(args: &[&str], stdin: &str) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(BIN)
        .arg("passwd")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn passwd");
    // a usage error (`a:b`) exits before reading stdin: the write may
    // then meet a closed pipe, which is that outcome, not a test failure
    if let Err(e) = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
    {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write password: {e}"
        );
    }
    let out = child.wait_with_output().expect("passwd output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// One relay-denied RCPT (`550 5.7.1`) from 127.0.0.2, for a relay
/// whose `--relay-net` leaves 127.0.0.2 out (tests/metrics.rs, logs.rs).
pub fn relay_denied_from_far(addr: SocketAddr) {
    let mut far = Talk::connect_from("127.0.0.2", addr);
    far.expect(220);
    far.cmd("EHLO far.example", 250);
    far.cmd("MAIL FROM:<x@far.example>", 250);
    far.cmd_enh("RCPT TO:<y@elsewhere.example>", 550, "5.7.1");
    far.send("QUIT");
}

/// The first ```FENCE block of README.md after `marker` (the README's
/// recipes are run as written).
pub fn readme_block(marker: &str, fence: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let at = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no {marker:?}"));
    let open = format!("```{fence}\n");
    let start = at + readme[at..].find(&open).expect("the block") + open.len();
    let len = readme[start..].find("```").expect("the block's end");
    readme[start..start + len].to_string()
}

/// `$PATH` with the binary under test's folder first, so a recipe's
/// `smtp-relay` is this build.
pub fn path_with_binary_first() -> String {
    let bin_dir = Path::new(BIN).parent().expect("the binary's folder");
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

// --- metrics (`--metrics 127.0.0.1:0`) ---

/// The `metrics on ADDR` log line's address.
pub fn metrics_addr(relay: &Relay) -> SocketAddr {
    let mut addr = None;
    wait_until(Duration::from_secs(10), || {
        addr = relay.log().lines().find_map(|l| {
            l.split("metrics on ")
                .nth(1)
                .and_then(|a| a.trim().parse().ok())
        });
        addr.is_some()
    });
    addr.unwrap_or_else(|| panic!("no `metrics on` line in\n{}", relay.log()))
}

/// One HTTP GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    let (head, body) = out.split_once("\r\n\r\n").expect("a header block");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (code, body.to_string())
}

/// The value of the sample `series` (name and labels, exactly as
/// exposed), or panics.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

/// The INFO lines of refusals of clients from `ip` (any port): the one
/// line each refusal gets, written by the session's reply writer.
pub fn refused_lines<'a>(log: &'a str, ip: &str) -> Vec<&'a str> {
    let who = format!("] {ip}:");
    log.lines()
        .filter(|l| l.contains(&who) && l.contains(" refused "))
        .collect()
}

/// One message from `s@origin.test` to `rcpt` in its own session; its id.
pub fn send_one(relay: &Relay, rcpt: &str) -> String {
    let mut t = relay.session();
    let id = t.send_mail(
        "s@origin.test",
        &[rcpt],
        format!("Subject: to {rcpt}\r\n\r\nhello\r\n").as_bytes(),
    );
    t.cmd("QUIT", 221);
    id
}

/// Waits (bounded by `limit`) for `id`'s `status=sent` line.
pub fn wait_sent(relay: &Relay, id: &str, limit: Duration) {
    let ok = wait_until(limit, || {
        relay
            .log()
            .lines()
            .any(|l| l.contains(id) && l.contains("status=sent"))
    });
    assert!(ok, "{id} not sent:\n{}", relay.log());
}
