//! Test helpers for TLS and AUTH tests: certificates made by `openssl` in
//! a temp dir (a CA and a leaf for `relay.test`, `localhost` and
//! 127.0.0.1), a line-oriented SMTP client that can switch to TLS in the
//! middle of the dialogue (`Smtp`, built on rustls), and a private Postfix
//! instance with extra main.cf lines (scripts/postfix-instance.sh with
//! MAIN_CF_EXTRA).

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

pub const LIMIT: Duration = Duration::from_secs(30);

/// A CA and a server certificate signed by it, as PEM files.
pub struct Certs {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// `None` (and a SKIPPED line) without openssl, outside CI.
    pub fn make(test: &str) -> Option<Certs> {
        Certs::make_for(test, "DNS:relay.test,DNS:localhost,IP:127.0.0.1")
    }

    /// `make` with the leaf's subjectAltName given (`DNS:a.test,IP:...`).
    pub fn make_for(test: &str, san: &str) -> Option<Certs> {
        let openssl = require_tool("openssl", test)?;
        let dir = TempDir::new("certs");
        let d = dir.path();
        let ext = write_file(
            d,
            "leaf.ext",
            format!(
                "subjectAltName={san}\n\
                 basicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\n"
            )
            .as_bytes(),
        );
        let steps: Vec<Vec<String>> = vec![
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=smtp-relay-test-CA -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
            "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out leaf.csr -subj /CN=relay.test",
            "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2",
        ]
        .into_iter()
        .map(|s| s.split(' ').map(String::from).collect())
        .collect();
        for (i, args) in steps.iter().enumerate() {
            let mut cmd = Command::new(&openssl);
            cmd.current_dir(d).args(args);
            if i == 2 {
                cmd.arg("-extfile").arg(&ext);
            }
            let run = run_tool(&mut cmd, LIMIT);
            assert_eq!(run.code, Some(0), "openssl {args:?}: {run:?}");
        }
        // Postfix's smtpd reads its key as root, our relay as whoever
        // runs the test; both are fine with 0644 in a private temp dir
        Some(Certs {
            ca: d.join("ca.pem"),
            cert: d.join("cert.pem"),
            key: d.join("key.pem"),
            dir,
        })
    }

    pub fn relay_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// A rustls client config that trusts only our CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&self.ca)
            .expect("read ca.pem")
            .map(|c| c.expect("parse ca.pem"))
        {
            roots.add(c).expect("add CA");
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Gone,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
            Conn::Gone => Ok(0),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
            Conn::Gone => Err(io::Error::other("closed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
            Conn::Gone => Ok(()),
        }
    }
}

/// A raw SMTP client that can start TLS mid-dialogue.
pub struct Smtp {
    conn: Conn,
    buf: Vec<u8>,
    pub transcript: Vec<String>,
}

impl Smtp {
    pub fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
        Smtp {
            conn: Conn::Plain(s),
            buf: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// Connects, expects 220, says EHLO and returns its reply text.
    pub fn greet(addr: SocketAddr) -> (Smtp, String) {
        let mut s = Smtp::connect(addr);
        s.expect(220);
        let ehlo = s.cmd("EHLO client.test", 250);
        (s, ehlo)
    }

    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string();
        self.transcript.push(format!("C: {}", shown.trim_end()));
        let r = self.conn.write_all(bytes).and_then(|_| self.conn.flush());
        if let Err(e) = r {
            panic!("write: {e}\n{}", self.transcript());
        }
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes());
    }

    fn line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=i).collect();
                let s = String::from_utf8_lossy(&l).trim_end().to_string();
                self.transcript.push(format!("S: {s}"));
                return Ok(Some(s));
            }
            let mut chunk = [0u8; 4096];
            let n = match self.conn.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One reply: `None` at EOF.
    pub fn try_reply(&mut self) -> io::Result<Option<(u16, String)>> {
        let mut lines = Vec::new();
        loop {
            let Some(l) = self.line()? else {
                return Ok(None);
            };
            let code: u16 = l
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad reply line {l:?}")))?;
            lines.push(l.get(4..).unwrap_or("").to_string());
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(Some((code, lines.join("\n"))));
            }
        }
    }

    pub fn reply(&mut self) -> (u16, String) {
        match self.try_reply() {
            Ok(Some(r)) => r,
            Ok(None) => panic!("connection closed\n{}", self.transcript()),
            Err(e) => panic!("no reply: {e}\n{}", self.transcript()),
        }
    }

    pub fn expect(&mut self, code: u16) -> String {
        let (c, t) = self.reply();
        assert_eq!(c, code, "got {c} {t:?}\n{}", self.transcript());
        t
    }

    pub fn cmd(&mut self, line: &str, code: u16) -> String {
        self.send(line);
        self.expect(code)
    }

    /// Whether bytes are waiting to be read (replies nobody asked for).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Runs the TLS handshake now (after a 220 to STARTTLS), checking
    /// the server's certificate for `name` against the test CA.
    pub fn handshake(&mut self, certs: &Certs, name: &str) {
        assert!(
            self.buf.is_empty(),
            "plaintext left before TLS: {:?}",
            self.buf
        );
        let Conn::Plain(sock) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            panic!("TLS already active");
        };
        let server_name =
            rustls::pki_types::ServerName::try_from(name.to_string()).expect("server name");
        let mut conn = rustls::ClientConnection::new(certs.client_config(), server_name)
            .expect("client connection");
        let mut sock = sock;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                panic!("TLS handshake: {e}\n{}", self.transcript());
            }
        }
        self.transcript.push("-- TLS --".into());
        self.conn = Conn::Tls(Box::new(rustls::StreamOwned::new(conn, sock)));
    }

    /// STARTTLS → 220 → handshake → EHLO; returns the new EHLO text.
    pub fn starttls(&mut self, certs: &Certs) -> String {
        self.cmd("STARTTLS", 220);
        self.handshake(certs, "relay.test");
        self.cmd("EHLO client.test", 250)
    }

    /// A whole transaction; returns the queue id.
    pub fn send_mail(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250);
        for r in rcpts {
            self.cmd(&format!("RCPT TO:<{r}>"), 250);
        }
        self.cmd("DATA", 354);
        self.send_raw(data);
        self.send_raw(b".\r\n");
        let text = self.expect(250);
        queued_id(&text).unwrap_or_else(|| panic!("no id in {text:?}"))
    }
}

/// The TLS part of a `queued ... tls=` log line for `id`.
pub fn tls_in_log(log: &str, id: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(&format!("{id} queued")))
        .and_then(|l| l.split(" tls=").nth(1))
        .map(|s| s.trim().to_string())
}

// not every test that includes tlsutil starts a Postfix
#[allow(unused_imports)]
pub use crate::common::postfix::{is_root, postfix_usable, unused_port, PostfixInstance};
