//! One milter's socket: connect within a timeout, write a packet and
//! read one before a deadline. Every wait is bounded by the deadline it
//! is given, so a milter that is slow, silent or dribbling octets cannot
//! hold a session longer than its configured timeouts.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::protocol::{Garbage, MAX_PACKET};
use super::Target;

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connected milter.
pub struct Link {
    stream: Stream,
}

/// Why a packet could not be exchanged.
#[derive(Debug)]
pub enum LinkError {
    Io(io::Error),
    Timeout,
    Garbage(Garbage),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "{e}"),
            LinkError::Timeout => f.write_str("timed out"),
            LinkError::Garbage(g) => write!(f, "protocol error: {g}"),
        }
    }
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> LinkError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LinkError::Timeout,
            _ => LinkError::Io(e),
        }
    }
}

impl From<Garbage> for LinkError {
    fn from(g: Garbage) -> LinkError {
        LinkError::Garbage(g)
    }
}

/// The time left before `deadline`, or a timeout when none is.
fn left(deadline: Instant) -> Result<Duration, LinkError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(LinkError::Timeout)
}

impl Link {
    /// The milter closed its end (seen between transactions, before an
    /// event is written into a dead socket).
    pub fn peer_closed(&self) -> bool {
        match &self.stream {
            Stream::Tcp(s) => crate::sys::peer_closed(s),
            Stream::Unix(s) => crate::sys::peer_closed(s),
        }
    }

    /// Connects within `timeout` (each address of an `inet:` name in
    /// turn, all within the one timeout).
    pub fn open(target: &Target, timeout: Duration) -> Result<Link, LinkError> {
        let deadline = Instant::now() + timeout;
        let stream = match target {
            Target::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
            Target::Inet { host, port } => {
                let mut last = io::Error::other("no address");
                let mut found = None;
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, left(deadline)?) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        Ok(Link { stream })
    }

    fn set_timeouts(&self, d: Duration) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(d))?;
                s.set_write_timeout(Some(d))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(d))?;
                s.set_write_timeout(Some(d))
            }
        }
    }

    /// Writes a whole packet before `deadline`.
    pub fn send(&mut self, packet: &[u8], deadline: Instant) -> Result<(), LinkError> {
        let mut rest = packet;
        while !rest.is_empty() {
            self.set_timeouts(left(deadline)?)?;
            let n = match &mut self.stream {
                Stream::Tcp(s) => s.write(rest),
                Stream::Unix(s) => s.write(rest),
            };
            match n {
                Ok(0) => return Err(LinkError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn read_full(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), LinkError> {
        let mut got = 0;
        while got < buf.len() {
            self.set_timeouts(left(deadline)?)?;
            let n = match &mut self.stream {
                Stream::Tcp(s) => {
                    // best effort: only a delay is at stake
                    let _ = crate::sys::quick_ack(s);
                    s.read(&mut buf[got..])
                }
                Stream::Unix(s) => s.read(&mut buf[got..]),
            };
            match n {
                Ok(0) => return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads one packet, its command and data, before `deadline`; a
    /// length of zero or over [`MAX_PACKET`] is garbage.
    pub fn recv(&mut self, deadline: Instant) -> Result<(u8, Vec<u8>), LinkError> {
        let mut len = [0u8; 4];
        self.read_full(&mut len, deadline)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(Garbage(format!("packet length {len}")).into());
        }
        let mut data = vec![0u8; len];
        self.read_full(&mut data, deadline)?;
        let command = data.remove(0);
        Ok((command, data))
    }
}
