//! `serve`: bind the listeners, recover the spool, run the session pool,
//! and stop on SIGTERM/SIGINT.
//!
//! Accepted sockets go to a fixed pool of session threads through a
//! bounded channel. When every worker is busy and the backlog is full, the
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

use crossbeam_channel::{bounded, TrySendError};

use crate::config::Config;
use crate::delivery::{ConnCache, Deliverer, DestLimiter};
use crate::dns::Dns;
use crate::pool::Pool;
use crate::route::Router;
use crate::scheduler;
use crate::session::{self, Context};
use crate::smtp::Reply;
use crate::spool::{Spool, SpoolError};

#[derive(Debug)]
pub enum ServeError {
    Bind { addr: SocketAddr, source: io::Error },
    Dns(String),
    Spool(SpoolError),
    Thread(io::Error),
}

impl ServeError {
    /// sysexits(3) codes, as documented in `--help`.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::Bind { .. } => 69,
            ServeError::Dns(_) => 69,
            ServeError::Spool(SpoolError::Locked(_)) => 75,
            ServeError::Spool(_) => 74,
            ServeError::Thread(_) => 71,
        }
    }
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServeError::Dns(e) => write!(f, "cannot set up DNS: {e}"),
            ServeError::Spool(e) => write!(f, "spool: {e}"),
            ServeError::Thread(e) => write!(f, "cannot start threads: {e}"),
        }
    }
}

impl From<SpoolError> for ServeError {
    fn from(e: SpoolError) -> ServeError {
        ServeError::Spool(e)
    }
}

/// How long a stopping server waits for sessions in progress.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn serve(config: Config) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let spool = Arc::new(Spool::open(&config.spool)?);
    let lock = spool.lock()?;
    let (queued, rec) = spool.recover(&lock)?;
    log::info!(
        "spool {} recovered: {} queued, {} unfinished removed, {} orphan bodies removed, {} corrupt moved aside",
        spool.root().display(),
        queued.len(),
        rec.tmp_removed,
        rec.orphans_removed,
        rec.corrupt_moved
    );

    let mut listeners = Vec::new();
    for addr in &config.listen {
        let l = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
            addr: *addr,
            source,
        })?;
        let local = l.local_addr().map_err(|source| ServeError::Bind {
            addr: *addr,
            source,
        })?;
        listeners.push((l, local));
    }

    let local: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
    // sessions and delivery announce new messages to the scheduler; a
    // full channel only delays a message until the next rescan
    let (committed_tx, committed_rx) = bounded::<crate::spool::QueueId>(16 * 1024);
    let deliverer = Arc::new(deliverer(
        &config,
        spool.clone(),
        &local,
        Some(committed_tx.clone()),
    )?);
    let sched = if config.delivery_workers > 0 {
        Some(
            scheduler::start(deliverer, config.delivery_workers, queued, committed_rx)
                .map_err(ServeError::Thread)?,
        )
    } else {
        log::info!("delivery is off (--delivery-workers 0): mail is received and queued only");
        None
    };

    let ctx = Arc::new(Context {
        config: config.clone(),
        spool: spool.clone(),
        committed: Some(committed_tx),
    });
    let (tx, rx) = bounded::<(TcpStream, SocketAddr)>(config.backlog);
    let pool_ctx = ctx.clone();
    let pool = Pool::spawn(
        "session",
        config.workers,
        config.worker_stack,
        rx,
        move |(s, peer)| session::run(s, peer, &pool_ctx),
    )
    .map_err(ServeError::Thread)?;

    let stopping = Arc::new(AtomicBool::new(false));
    let mut acceptors = Vec::new();
    for (listener, local) in listeners {
        let tx = tx.clone();
        let stopping = stopping.clone();
        let hostname = config.hostname.clone();
        let h = thread::Builder::new()
            .name(format!("accept-{local}"))
            .spawn(move || accept_loop(listener, tx, &stopping, &hostname))
            .map_err(ServeError::Thread)?;
        acceptors.push((h, local));
        // A stable line that tests and scripts read (port 0 → real port).
        println!("listening on {local}");
        log::info!("listening on {local}");
    }
    drop(tx);
    let _ = io::stdout().flush();

    wait_for_signal();
    log::info!("stopping: no new connections, waiting up to {STOP_GRACE:?} for sessions");
    stopping.store(true, Ordering::SeqCst);
    for (h, local) in acceptors {
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
    // deliveries in flight get a moment; one cut short is retried at the
    // next start (a duplicate at worst, never a loss)
    if let Some(s) = sched {
        s.stop(Duration::from_secs(5));
    }
    drop(lock);
    log::info!("stopped");
    Ok(())
}

/// The delivery engine for a config (used by `serve` and by a `queue
/// flush` that runs without a server).
pub fn deliverer(
    config: &Config,
    spool: Arc<Spool>,
    local: &[SocketAddr],
    committed: Option<crossbeam_channel::Sender<crate::spool::QueueId>>,
) -> Result<Deliverer, ServeError> {
    Ok(Deliverer {
        spool,
        router: router(config, local)?,
        hostname: config.hostname.clone(),
        timeouts: config.client_timeouts,
        retry: config.retry,
        cache: ConnCache::new(config.connection_idle, config.connection_max_messages),
        limiter: DestLimiter::new(config.max_per_destination),
        honor_source_routes: config.honor_source_routes,
        delay_warning: config.delay_warning,
        committed,
    })
}

/// The router for a config: static routes, then DNS unless `--no-dns`.
/// `local` are our own listening addresses, for loop detection.
pub fn router(config: &Config, local: &[SocketAddr]) -> Result<Router, ServeError> {
    let dns = if config.no_dns {
        None
    } else {
        let timeout = config.client_timeouts.connect.min(Duration::from_secs(30));
        Some(Dns::new(config.dns, timeout).map_err(|e| ServeError::Dns(format!("{e:?}")))?)
    };
    Ok(Router::new(
        config.routes.clone(),
        dns,
        config.smtp_port,
        vec![config.hostname.clone()],
        local.to_vec(),
    ))
}

fn accept_loop(
    listener: TcpListener,
    tx: crossbeam_channel::Sender<(TcpStream, SocketAddr)>,
    stopping: &AtomicBool,
    hostname: &str,
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
        if stopping.load(Ordering::SeqCst) {
            let _ = reject(stream, &Reply::shutting_down(hostname));
            return;
        }
        match tx.try_send((stream, peer)) {
            Ok(()) => {}
            Err(TrySendError::Full((stream, peer))) => {
                log::warn!("{peer} rejected: all workers busy and backlog full");
                let _ = reject(stream, &Reply::too_busy(hostname));
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

/// Writes one reply to a connection we will not serve, and closes it.
fn reject(stream: TcpStream, reply: &Reply) -> io::Result<()> {
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

/// Blocks until SIGTERM or SIGINT.
fn wait_for_signal() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            if let Some(sig) = signals.forever().next() {
                log::info!("signal {sig} received");
            }
        }
        Err(e) => {
            // without a handler the default action still stops us
            log::error!("cannot install signal handlers: {e}");
            loop {
                thread::park();
            }
        }
    }
}
