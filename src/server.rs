//! `serve`'s receiving side: bind the listeners, run the session pool,
//! and stop on SIGTERM/SIGINT. `app::serve` wires it to the spool, the
//! scheduler and the TLS and AUTH settings.
//!
//! Signals (README "Signals"): SIGTERM and SIGINT stop; SIGHUP reloads
//! the configuration (`reload.rs`); SIGUSR1 reopens the log file; SIGPIPE is
//! ignored (the Rust runtime sets SIG_IGN before `main`), so a write to a
//! closed socket is an `EPIPE` error on that one connection.
//!
//! Accepted sockets go to a fixed pool of session threads through a
//! bounded hand-off queue that gives each to the worker idle the shortest
//! time (`handoff.rs`). When every worker is busy and the backlog is full, the
//! new client gets `421 4.3.2` at once and is closed: never left hanging,
//! never given a new thread. A clean stop is a courtesy: every stop is
//! treated as a crash at the next start, so correctness never depends on it.

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::bounded;

use crate::app::SetupError;
use crate::config::{Config, ListenMode};
use crate::pool::Pool;
use crate::session::{self, Context};
use crate::smtp::Reply;
use crate::spool::SpoolError;
use crate::swap::Swap;

/// Why `serve` could not start (its exit code: `exit.rs`).
#[derive(Debug)]
pub enum ServeError {
    /// Building the parts (app.rs) failed.
    Setup(SetupError),
    Bind {
        addr: SocketAddr,
        source: io::Error,
    },
    Privileges(io::Error),
    /// `--auth-file` cannot be read as the user the server runs as.
    AuthFile {
        path: std::path::PathBuf,
        user: Option<String>,
        source: crate::auth::AuthError,
    },
    Spool(SpoolError),
    Thread(io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServeError::Setup(e) => write!(f, "{e}"),
            ServeError::Privileges(e) => write!(f, "cannot drop privileges: {e}"),
            ServeError::AuthFile {
                path,
                user: Some(user),
                source,
            } => write!(
                f,
                "--auth-file {}: {source}: the server runs as {user} and reads the file at each AUTH; give it to {user} with `smtp-relay passwd NAME --auth-file {} --user {user}` (or chown {user})",
                path.display(),
                path.display()
            ),
            ServeError::AuthFile {
                path,
                user: None,
                source,
            } => write!(f, "--auth-file {}: {source}", path.display()),
            ServeError::Spool(e) => write!(f, "spool: {e}"),
            ServeError::Thread(e) => write!(f, "cannot start threads: {e}"),
        }
    }
}

impl From<SetupError> for ServeError {
    fn from(e: SetupError) -> ServeError {
        ServeError::Setup(e)
    }
}

impl From<SpoolError> for ServeError {
    fn from(e: SpoolError) -> ServeError {
        ServeError::Spool(e)
    }
}

/// How long a stopping server waits for sessions in progress.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A bound listening socket: its real address (port 0 → the port
/// given) and its mode.
pub struct Bound {
    pub listener: TcpListener,
    pub local: SocketAddr,
    pub mode: ListenMode,
}

/// Binds every listener (before privileges are dropped: port 25 needs
/// root).
pub fn bind(addrs: &[(SocketAddr, ListenMode)]) -> Result<Vec<Bound>, ServeError> {
    let mut listeners = Vec::new();
    for (addr, mode) in addrs {
        let l = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
            addr: *addr,
            source,
        })?;
        let local = l.local_addr().map_err(|source| ServeError::Bind {
            addr: *addr,
            source,
        })?;
        listeners.push(Bound {
            listener: l,
            local,
            mode: *mode,
        });
    }
    Ok(listeners)
}

/// Serves SMTP on `listeners` with a fixed pool of session threads until
/// SIGTERM or SIGINT, then stops accepting and gives the sessions in
/// progress [`STOP_GRACE`] to end. `app::serve` built everything
/// `sessions` holds; each session runs with the context current when its
/// worker takes it, for its whole life. SIGHUP calls `reload`, which may
/// make a new context current.
pub fn run(
    listeners: Vec<Bound>,
    sessions: Arc<Swap<Context>>,
    signals: Signals,
    reload: &mut dyn FnMut(),
) -> Result<(), ServeError> {
    let config = sessions.load().config.clone();
    let (tx, rx) = crate::handoff::bounded::<Accepted>(config.backlog);
    let tracker = Arc::new(ConnTracker {
        per_ip: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    let pool_sessions = sessions.clone();
    let pool_tracker = tracker.clone();
    let pool = Pool::spawn(
        "session",
        config.workers,
        config.worker_stack,
        rx,
        move |(s, peer, mode, ticket): Accepted| {
            // a panic ends this connection (unwinding closes the socket,
            // and a TLS stream cannot take a plain 421), never the worker
            let what = format_args!("{peer} session (connection dropped, worker continues)");
            let _active = crate::metrics::session();
            crate::pool::catch(what, || {
                let ctx = pool_sessions.load();
                let (s, client, ticket) = match ticket {
                    Some(t) => (s, peer, t),
                    None => match proxied(s, peer, mode, &pool_tracker, &ctx.config) {
                        Some(c) => c,
                        None => return,
                    },
                };
                session::run(s, client, mode, &ctx);
                drop(ticket);
            });
        },
    )
    .map_err(ServeError::Thread)?;

    let stopping = Arc::new(AtomicBool::new(false));
    let mut acceptors = Vec::new();
    for Bound {
        listener,
        local,
        mode,
    } in listeners
    {
        let tx = tx.clone();
        let stopping = stopping.clone();
        let sessions = sessions.clone();
        let tracker = tracker.clone();
        let h = thread::Builder::new()
            .name(format!("accept-{local}"))
            .spawn(move || {
                crate::pool::or_abort(format_args!("listener {local}"), || {
                    accept_loop(listener, mode, tx, &stopping, &sessions, &tracker)
                })
            })
            .map_err(ServeError::Thread)?;
        acceptors.push((h, local, mode));
    }
    drop(tx);
    // healthy before the first `listening on` line: a script (or test)
    // that waits for that line may ask /healthz at once
    crate::metrics::set_listening(true);
    for (_, local, mode) in &acceptors {
        // A stable line that tests and scripts read (port 0 → real port).
        println!("listening on {local}");
        log::info!("listening on {local} ({mode})");
    }
    let _ = io::stdout().flush();
    crate::notify::notify("READY=1");

    signals.wait_for_stop(reload);
    crate::notify::notify("STOPPING=1");
    log::info!("stopping: no new connections, waiting up to {STOP_GRACE:?} for sessions");
    stopping.store(true, Ordering::SeqCst);
    crate::metrics::set_listening(false);
    for (h, local, _) in acceptors {
        wake(local);
        let _ = h.join();
    }
    // the acceptors held the last senders: the pool drains and ends
    let (done_tx, done_rx) = bounded::<()>(1);
    thread::spawn(move || {
        pool.join();
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(STOP_GRACE).is_err() {
        log::warn!("sessions still open after {STOP_GRACE:?}; stopping anyway (nothing they sent was acknowledged)");
    }
    Ok(())
}

/// `--user`: started as root to bind a low port, continue as `user`
/// (`name`, looked up by app.rs), giving it the spool first (without
/// following links, see `spool/owner.rs`).
pub fn become_user(
    name: &str,
    user: crate::sys::User,
    spool: &std::path::Path,
) -> Result<(), ServeError> {
    if !crate::sys::is_root() {
        log::warn!("--user {name} ignored: not running as root");
        return Ok(());
    }
    crate::spool::owner::give_to(spool, user)?;
    crate::sys::drop_privileges(user).map_err(ServeError::Privileges)?;
    log::info!(
        "running as user {name} (uid {}, gid {})",
        user.uid,
        user.gid
    );
    Ok(())
}

/// An accepted connection on its way to a session worker, with its
/// ticket; `None` from a trusted proxy: the ticket is taken for the client
/// its PROXY header names.
type Accepted = (TcpStream, SocketAddr, ListenMode, Option<Ticket>);

/// Counts connections per client address; the limits are read from the
/// configuration current at each connection (a reload changes them, the
/// counts stay).
struct ConnTracker {
    per_ip: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// Why the accept loop turns a connection away.
enum Refusal {
    TooMany,
    /// A PROXY listener, and the peer is not a trusted proxy.
    Untrusted,
}

/// One counted connection; dropping it uncounts it.
struct Ticket {
    tracker: Option<Arc<ConnTracker>>,
    ip: IpAddr,
}

impl ConnTracker {
    /// At accept: a ticket for the peer, or for a trusted proxy `None`
    /// (the proxy is not one client; its clients are counted by
    /// [`proxied`] once their addresses are known).
    /// `--proxy-protocol`'s `--proxy-from` are the only peers served
    /// then.
    fn at_accept(
        self: &Arc<Self>,
        peer: SocketAddr,
        cfg: &Config,
    ) -> Result<Option<Ticket>, Refusal> {
        match &cfg.proxy_protocol {
            None => self.admit(peer.ip(), cfg).map(Some).ok_or(Refusal::TooMany),
            Some(p) if p.iter().any(|n| n.contains(peer.ip())) => Ok(None),
            Some(_) => Err(Refusal::Untrusted),
        }
    }

    /// Relay networks are our own MTAs: exempt from `--max-per-ip`, as
    /// Postfix exempts $mynetworks from its connection count limit.
    fn admit(self: &Arc<Self>, ip: IpAddr, cfg: &Config) -> Option<Ticket> {
        let ip = ip.to_canonical();
        if cfg.is_relay_client(ip) {
            return Some(Ticket { tracker: None, ip });
        }
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= cfg.max_per_ip {
            return None;
        }
        *n += 1;
        Some(Ticket {
            tracker: Some(self.clone()),
            ip,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(tracker) = &self.tracker else { return };
        let mut m = tracker.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    mode: ListenMode,
    tx: crate::handoff::Sender<Accepted>,
    stopping: &AtomicBool,
    sessions: &Swap<Context>,
    tracker: &Arc<ConnTracker>,
) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                // EMFILE and friends: back off instead of spinning
                log::error!("accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let ctx = sessions.load();
        let (cfg, hostname) = (&ctx.config, &ctx.config.hostname);
        if stopping.load(Ordering::SeqCst) {
            let reply = Reply::shutting_down(hostname);
            crate::metrics::conn_refused(&peer, crate::metrics::ConnReason::ShuttingDown, &reply);
            let _ = reject(stream, mode, &reply);
            return;
        }
        let ticket = match tracker.at_accept(peer, cfg) {
            Ok(t) => t,
            Err(Refusal::TooMany) => {
                let reply = Reply::too_many_connections(hostname);
                crate::metrics::conn_refused(&peer, crate::metrics::ConnReason::PerIpLimit, &reply);
                let _ = reject(stream, mode, &reply);
                continue;
            }
            Err(Refusal::Untrusted) => {
                // nothing is read: an untrusted header never names a client
                log::info!("{peer} refused: not in --proxy-from on a PROXY protocol listener; closed unread, no reply");
                continue;
            }
        };
        match tx.try_send((stream, peer, mode, ticket)) {
            Ok(()) => crate::metrics::conn_accepted(),
            Err(crate::handoff::TrySendError::Full((stream, peer, _, _))) => {
                let reply = Reply::too_busy(hostname);
                crate::metrics::conn_refused(&peer, crate::metrics::ConnReason::Busy, &reply);
                let _ = reject(stream, mode, &reply);
            }
            Err(crate::handoff::TrySendError::Disconnected(_)) => return,
        }
    }
}

/// A connection from a trusted proxy: reads its PROXY header, then counts
/// the client it names against `--max-per-ip`. `None`: refused and closed
/// (a health check's connect-and-close, a bad or late header, too many).
fn proxied(
    mut stream: TcpStream,
    proxy: SocketAddr,
    mode: ListenMode,
    tracker: &Arc<ConnTracker>,
    cfg: &crate::config::Config,
) -> Option<(TcpStream, SocketAddr, Ticket)> {
    use crate::proxy::{read_header, Header, ReadError, HEADER_DEADLINE};
    let deadline = std::time::Instant::now() + cfg.timeout.min(HEADER_DEADLINE);
    let (client, ticket) = match read_header(&mut stream, deadline) {
        Ok(Header::Proxied { source, .. }) => (source, tracker.admit(source.ip(), cfg)),
        // LOCAL / UNKNOWN: the proxy's own connection, not a client's
        Ok(Header::Local) => (
            proxy,
            Some(Ticket {
                tracker: None,
                ip: proxy.ip(),
            }),
        ),
        Err(ReadError::Closed) => {
            log::debug!("{proxy} closed before a PROXY header (a health check)");
            return None;
        }
        Err(e) => {
            log::info!("{proxy} PROXY header refused: {e}; connection closed, no reply");
            return None;
        }
    };
    log::debug!("{client} connected through proxy {proxy}");
    let Some(ticket) = ticket else {
        let reply = Reply::too_many_connections(&cfg.hostname);
        log::info!("{client} over --max-per-ip (through proxy {proxy})");
        crate::metrics::conn_refused(&client, crate::metrics::ConnReason::PerIpLimit, &reply);
        let _ = reject(stream, mode, &reply);
        return None;
    };
    Some((stream, client, ticket))
}

/// Writes one reply to a connection we will not serve, and closes it.
/// On an implicit-TLS listener a plaintext reply would be garbage to a
/// client expecting a ServerHello: it is only closed (RFC 8314 §3.3).
fn reject(stream: TcpStream, mode: ListenMode, reply: &Reply) -> io::Result<()> {
    if mode.implicit_tls {
        return Ok(());
    }
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut s = stream;
    reply.write_to(&mut s)?;
    s.flush()
}

/// Unblocks a listener's `accept` by connecting to it.
fn wake(local: SocketAddr) {
    let ip = match local.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let _ = TcpStream::connect_timeout(&SocketAddr::new(ip, local.port()), Duration::from_secs(1));
}

/// The signals `serve` handles, registered once at start-up.
pub struct Signals(Option<signal_hook::iterator::Signals>);

impl Signals {
    pub fn install() -> Signals {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]) {
            Ok(s) => Signals(Some(s)),
            Err(e) => {
                // without a handler the default action still stops us
                log::error!("cannot install signal handlers: {e}");
                Signals(None)
            }
        }
    }

    /// Blocks until SIGTERM or SIGINT; SIGHUP calls `reload`, SIGUSR1
    /// reopens the log file.
    fn wait_for_stop(mut self, reload: &mut dyn FnMut()) {
        use signal_hook::consts::{SIGHUP, SIGUSR1};
        let Some(signals) = self.0.as_mut() else {
            loop {
                thread::park();
            }
        };
        for sig in signals.forever() {
            match sig {
                SIGHUP => reload(),
                SIGUSR1 => crate::logging::reopen(),
                _ => {
                    log::info!("signal {sig} received");
                    return;
                }
            }
        }
    }
}
