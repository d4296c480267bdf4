//! `Channel`: one SMTP connection, plain or TLS, as a single buffered
//! object that both reads and writes (RFC 3207 STARTTLS changes the
//! connection under a running dialogue, so reader and writer cannot be two
//! clones of the socket any more).
//!
//! Reads carry two limits, as the session's old `DeadlineReader` did: each
//! read waits at most the idle timeout, and all reads together end at the
//! deadline, if one is set (a slow-loris peer sending one byte just before
//! each idle timeout still meets the deadline). The socket's timeout is
//! set to what is left before every socket read, also each read of a TLS
//! record that arrives in pieces and each read of the handshake, so a peer
//! trickling bytes, in plaintext or under TLS, cannot stretch a deadline.
//! Writes are buffered until `flush`, so a pipelined group of replies
//! (RFC 2920 §3.1) leaves in one segment. No file is touched here and
//! nothing is ever logged: the callers own the dialogue.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::tls::TlsInfo;

pub struct Channel {
    sock: TcpStream,
    /// Set once STARTTLS completed; then every byte goes through it.
    tls: Option<Box<rustls::Connection>>,
    idle: Duration,
    deadline: Option<Instant>,
    /// The read timeout currently set on the socket (one setsockopt per
    /// change, not per read).
    applied: Option<Duration>,
    inbuf: Box<[u8]>,
    pos: usize,
    end: usize,
    out: Vec<u8>,
    /// Buffered output beyond this is written through before `flush`.
    out_limit: usize,
}

/// A dropped channel's input buffer and output buffer.
type Buffers = (Box<[u8]>, Vec<u8>);

thread_local! {
    /// The buffers of the last channel this thread dropped, for its next
    /// one. A session worker runs one connection after another, and each
    /// made a zeroed 32 KiB input buffer (a malloc and a memset per
    /// connection, then the free). Only `pos..end` of the input buffer is
    /// ever read, so nothing of an earlier connection shows.
    static SPARE: std::cell::Cell<Option<Buffers>> =
        const { std::cell::Cell::new(None) };
}

impl Channel {
    pub fn new(sock: TcpStream, idle: Duration, in_cap: usize, out_cap: usize) -> Channel {
        let in_cap = in_cap.max(1024);
        let (inbuf, out) = match SPARE.try_with(|s| s.take()).ok().flatten() {
            Some((i, mut o)) if i.len() == in_cap && o.capacity() >= out_cap => {
                o.clear();
                (i, o)
            }
            _ => (
                vec![0; in_cap].into_boxed_slice(),
                Vec::with_capacity(out_cap),
            ),
        };
        Channel {
            sock,
            tls: None,
            idle,
            deadline: None,
            applied: None,
            inbuf,
            pos: 0,
            end: 0,
            out,
            out_limit: out_cap.max(1024),
        }
    }

    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    pub fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Input received and not consumed yet.
    pub fn buffer(&self) -> &[u8] {
        &self.inbuf[self.pos..self.end]
    }

    /// Throws away buffered input; returns how many octets it was.
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.end - self.pos;
        self.pos = 0;
        self.end = 0;
        n
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Version and cipher of the TLS session, once there is one.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.tls.as_deref().and_then(TlsInfo::of)
    }

    /// The peer's certificate chain (leaf first), once TLS is up.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.tls.as_deref()?.peer_certificates()
    }

    /// Runs the TLS handshake on this connection (either side, by the kind
    /// of `conn`), bounded by `timeout` as a whole. Buffered output is sent
    /// first. Buffered input is plaintext that came before the handshake
    /// and is thrown away, never read as if it came over TLS (RFC 3207
    /// §5): the session discards (and logs) it itself; on the client side
    /// this is the defence against a server that injects replies after its
    /// 220 to STARTTLS (CVE-2011-1575 and kin).
    pub fn start_tls(&mut self, conn: rustls::Connection, timeout: Duration) -> io::Result<()> {
        if self.tls.is_some() {
            return Err(io::Error::other("TLS is already active"));
        }
        self.flush()?;
        self.discard_buffered();
        let mut conn = Box::new(conn);
        // one deadline for the whole handshake, set again before every
        // socket read: a peer trickling a ClientHello (or a ServerHello)
        // one byte at a time cannot stretch it
        let deadline = Some(Instant::now() + timeout);
        while conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(&mut self.sock)?;
            }
            if !conn.is_handshaking() {
                break;
            }
            if conn.wants_read() {
                apply_timeout(&self.sock, timeout, deadline, &mut self.applied)?;
                if conn.read_tls(&mut self.sock)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed during the TLS handshake",
                    ));
                }
                if let Err(e) = conn.process_new_packets() {
                    // tell the peer why (the alert), then give up
                    let _ = conn.write_tls(&mut self.sock);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut self.sock)?;
        }
        self.tls = Some(conn);
        Ok(())
    }

    /// Sends a TLS close_notify, if in TLS, and shuts the socket down.
    pub fn shutdown(&mut self) {
        if let Some(conn) = self.tls.as_deref_mut() {
            conn.send_close_notify();
            while conn.wants_write() {
                if conn.write_tls(&mut self.sock).is_err() {
                    break;
                }
            }
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    /// One read from the connection into `buf`: 0 means the peer closed.
    /// Under TLS one call may take many socket reads (a record arriving
    /// in pieces yields no plaintext until it is whole); the timeout is
    /// set again before each of them, so the deadline holds however
    /// slowly a record trickles in.
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Channel {
            sock,
            tls,
            idle,
            deadline,
            applied,
            ..
        } = self;
        let Some(conn) = tls.as_deref_mut() else {
            apply_timeout(sock, *idle, *deadline, applied)?;
            return sock.read(buf);
        };
        loop {
            match conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // closed without close_notify: an end all the same
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            while conn.wants_write() {
                conn.write_tls(sock)?;
            }
            apply_timeout(sock, *idle, *deadline, applied)?;
            if conn.read_tls(sock)? == 0 {
                return Ok(0);
            }
            if let Err(e) = conn.process_new_packets() {
                let _ = conn.write_tls(sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    fn write_through(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = match self.tls.as_deref_mut() {
            None => self.sock.write_all(&self.out),
            Some(conn) => {
                let mut rest = &self.out[..];
                let mut r = Ok(());
                while !rest.is_empty() {
                    match conn.writer().write(rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                    while conn.wants_write() {
                        if let Err(e) = conn.write_tls(&mut self.sock) {
                            r = Err(e);
                            break;
                        }
                    }
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
        };
        self.out.clear();
        r
    }
}

/// Sets the socket's read timeout for the next read: `idle`, or the time
/// left until `deadline` if that is sooner; an expired deadline is a
/// `TimedOut` error, never one more wait. `applied` remembers the value
/// on the socket: it is set again only when it is off by more than
/// `slack` (a deadline set at each command is a few microseconds shorter
/// at each read, which cost a setsockopt per read: 11 per message), so a
/// read waits at most that much longer or shorter than exact.
fn apply_timeout(
    sock: &TcpStream,
    idle: Duration,
    deadline: Option<Instant>,
    applied: &mut Option<Duration>,
) -> io::Result<()> {
    let t = match deadline {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
            }
            left.min(idle)
        }
        None => idle,
    };
    let off = |a: Duration| a.abs_diff(t) > slack(t);
    if applied.is_none_or(off) {
        sock.set_read_timeout(Some(t.max(Duration::from_millis(1))))?;
        *applied = Some(t);
    }
    Ok(())
}

/// How far a socket's timeout may be from the exact one: 1/64 of it, at
/// most a second (5 minutes: 1 s; a test's 2 s: 31 ms).
fn slack(t: Duration) -> Duration {
    (t / 64).min(Duration::from_secs(1))
}

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end && buf.len() >= self.inbuf.len() {
            return self.read_some(buf);
        }
        let n = {
            let avail = self.fill_buf()?;
            let n = avail.len().min(buf.len());
            buf[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Channel {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end {
            let mut buf = std::mem::take(&mut self.inbuf);
            let r = self.read_some(&mut buf);
            self.inbuf = buf;
            self.pos = 0;
            self.end = r?;
        }
        Ok(&self.inbuf[self.pos..self.end])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.end);
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len() + buf.len() > self.out_limit {
            self.write_through()?;
        }
        if buf.len() >= self.out_limit {
            self.out.extend_from_slice(buf);
            self.write_through()?;
        } else {
            self.out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_through()?;
        self.sock.flush()
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.sock.peer_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let spare = (
            std::mem::take(&mut self.inbuf),
            std::mem::take(&mut self.out),
        );
        // after the thread's locals are gone (at its exit) they are freed
        let _ = SPARE.try_with(|s| s.set(Some(spare)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A deadline a few microseconds shorter at each read (set anew at
    /// each command) leaves the socket's timeout alone; one off by more
    /// than the slack sets it again; a passed deadline is an error, not
    /// one more wait.
    #[test]
    fn the_read_timeout_is_set_again_only_when_it_is_off_by_more_than_the_slack() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // the kernel keeps the timeout in its own units
        let on_socket = |want: Duration| {
            let got = sock.read_timeout().unwrap().unwrap();
            assert!(
                got.abs_diff(want) < Duration::from_millis(5),
                "{got:?} {want:?}"
            );
        };
        let idle = Duration::from_secs(300);
        let mut applied = None;
        apply_timeout(&sock, idle, Some(Instant::now() + idle), &mut applied).unwrap();
        let first = applied.unwrap();
        assert!(first <= idle && first > idle - Duration::from_secs(1));
        on_socket(first);
        std::thread::sleep(Duration::from_millis(5));
        apply_timeout(&sock, idle, Some(Instant::now() + idle), &mut applied).unwrap();
        assert_eq!(applied, Some(first), "set again for a 5 ms difference");
        let later = Instant::now() + Duration::from_secs(60);
        apply_timeout(&sock, idle, Some(later), &mut applied).unwrap();
        let second = applied.unwrap();
        assert!(second <= Duration::from_secs(60));
        on_socket(second);
        apply_timeout(&sock, idle, None, &mut applied).unwrap();
        on_socket(idle);
        let passed = Instant::now() - Duration::from_millis(1);
        let e = apply_timeout(&sock, idle, Some(passed), &mut applied).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
