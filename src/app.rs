//! The composition root: turns a plain [`Config`] into the live objects
//! a command runs with (TLS contexts, the resolver, the Router, the
//! Deliverer, the Spool, the Scheduler) for `serve`, `queue flush` and
//! `route` alike. Everything that reads a file an option names, resolves
//! a name or looks up a user happens here, at start, never in `cli.rs`.
//!
//! `cli.rs` reads the config file itself: that file is the command
//! line's other half (its lines are option values, checked by the same
//! code, and its errors are usage errors naming the line), so the parser
//! hands over one finished `Config`.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};

use crate::admin::AdminError;
use crate::cli::{self, Cli};
use crate::config::{Config, Endpoint, ListenMode};
use crate::delivery::{ConnCache, Deliverer, DestLimiter};
use crate::dns::Dns;
use crate::exit::Exit;
use crate::mta_sts::{cache::PolicyCache, MtaSts};
use crate::reload::Reloader;
use crate::route::Router;
use crate::scheduler;
use crate::secrets::{Secrets, SecretsError};
use crate::sender_map::{MapError, SenderMap};
use crate::server::{self, ServeError, Signals};
use crate::session::{self, Context};
use crate::spool::{QueueId, Spool};
use crate::swap::Swap;
use crate::tls::{ClientTls, TlsFileError};
use crate::tls_policy::TlsPolicies;

/// What turning a `Config` into live objects can fail with (exit codes:
/// `exit.rs`).
#[derive(Debug)]
pub enum SetupError {
    /// A file an option names cannot be read (EX_NOINPUT).
    Unreadable {
        option: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A file an option names was read but cannot be used (EX_CONFIG).
    Invalid { option: &'static str, why: String },
    /// A `--listen` or `--dns` host name that does not resolve (EX_CONFIG).
    Resolve {
        option: &'static str,
        value: String,
        why: String,
    },
    /// `--user` names no user (EX_CONFIG).
    User { name: String, source: io::Error },
    /// The resolver cannot be set up (EX_UNAVAILABLE).
    Dns(String),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Unreadable {
                option,
                path,
                source,
            } => write!(f, "{option}: cannot read {}: {source}", path.display()),
            SetupError::Invalid { option, why } => write!(f, "{option}: {why}"),
            SetupError::Resolve { option, value, why } => write!(f, "{option}: {value:?}: {why}"),
            SetupError::User { name, source } => write!(f, "--user: {name:?}: {source}"),
            SetupError::Dns(e) => write!(f, "cannot set up DNS: {e}"),
        }
    }
}

impl From<SetupError> for AdminError {
    fn from(e: SetupError) -> AdminError {
        AdminError {
            code: Exit::from(&e),
            message: e.to_string(),
        }
    }
}

fn tls_error(option: &'static str, e: TlsFileError) -> SetupError {
    match e {
        TlsFileError::Read { path, source } => SetupError::Unreadable {
            option,
            path,
            source,
        },
        TlsFileError::Invalid(why) => SetupError::Invalid { option, why },
    }
}

/// STARTTLS inbound: the certificate and key read and checked now.
pub fn server_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, SetupError> {
    config
        .tls
        .as_ref()
        .map(|f| {
            crate::tls::server_config(&f.cert, &f.key)
                .map_err(|e| tls_error("--tls-cert/--tls-key", e))
        })
        .transpose()
}

/// STARTTLS outbound: `--outbound-tls`, with `--ca-file`'s or the
/// system's roots loaded when it or a route's `tls =` is `verify`.
pub fn client_tls(config: &Config) -> Result<Arc<ClientTls>, SetupError> {
    Ok(Arc::new(if config.verifies() {
        ClientTls::verified(config.ca_file.as_deref())
            .map_err(|e| tls_error("--outbound-tls verify", e))?
            .with_mode(config.outbound_tls)
    } else {
        ClientTls::unverified(config.outbound_tls)
    }))
}

/// `--auth-file`: every line must be `user:hash` (read again at each
/// AUTH, so a changed file takes effect without a restart).
pub fn check_auth_file(config: &Config) -> Result<(), SetupError> {
    let Some(path) = &config.auth_file else {
        return Ok(());
    };
    crate::auth::check_file(path).map_err(|e| match e {
        crate::auth::AuthError::Io(source) => file_error("--auth-file", path, Ok(source)),
        other => file_error("--auth-file", path, Err(other.to_string())),
    })?;
    Ok(())
}

/// A file `option` names could not be read (`Ok(the error)`, EX_NOINPUT)
/// or was read and is unusable (`Err(why)`, EX_CONFIG).
fn file_error(
    option: &'static str,
    path: &std::path::Path,
    e: Result<io::Error, String>,
) -> SetupError {
    match e {
        Ok(source) => SetupError::Unreadable {
            option,
            path: path.to_path_buf(),
            source,
        },
        Err(why) => SetupError::Invalid {
            option,
            why: format!("{}: {why}", path.display()),
        },
    }
}

/// An `ADDR:PORT` option value as a socket address (the first a name
/// resolves to).
pub fn resolve(option: &'static str, e: &Endpoint) -> Result<SocketAddr, SetupError> {
    match e {
        Endpoint::Addr(a) => Ok(*a),
        Endpoint::Name { host, port } => (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|err| err.to_string())
            .and_then(|mut it| it.next().ok_or_else(|| "no address".to_string()))
            .map_err(|why| SetupError::Resolve {
                option,
                value: e.to_string(),
                why,
            }),
    }
}

/// Every listener (`--listen`, `--listen-tls`, `--submission`,
/// `--submission-tls`), resolved, with its mode.
pub fn listeners(config: &Config) -> Result<Vec<(SocketAddr, ListenMode)>, SetupError> {
    config
        .all_listeners()
        .iter()
        .map(|l| Ok((resolve(l.mode.option(), &l.endpoint)?, l.mode)))
        .collect()
}

/// Every listening address, resolved (our own, for loop detection).
pub fn listen_addrs(config: &Config) -> Result<Vec<SocketAddr>, SetupError> {
    Ok(listeners(config)?.into_iter().map(|(a, _)| a).collect())
}

/// `--sender-map`, read and checked now (README "Submission for
/// applications"). A submission listener without one gets the default
/// (a user owns the address that is its name), said once at start.
pub fn sender_map(config: &Config) -> Result<Option<SenderMap>, SetupError> {
    let Some(path) = &config.sender_map else {
        if config.listeners.iter().any(|l| l.mode.submission) {
            log::warn!(
                "submission without --sender-map: an authenticated user may only use the sender that is its user name (user names that are not addresses can send nothing but <>)"
            );
        }
        return Ok(None);
    };
    let map = SenderMap::load(path).map_err(|e| match e {
        MapError::Io(source) => file_error("--sender-map", path, Ok(source)),
        other => file_error("--sender-map", path, Err(other.to_string())),
    })?;
    log::info!(
        "sender map {}: {} users; every authenticated MAIL FROM is checked against it",
        path.display(),
        map.len()
    );
    Ok(Some(map))
}

/// `--dkim-key`: every key read and checked now (README "DKIM
/// signing"); a missing file is EX_NOINPUT, a file that holds no usable
/// key (or an RSA key under 2048 bits) EX_CONFIG.
pub fn dkim_signer(config: &Config) -> Result<Option<Arc<crate::dkim::Signer>>, SetupError> {
    use crate::dkim::{KeyError, Signer};
    let signer = Signer::load(&config.dkim).map_err(|(k, e)| match e {
        KeyError::Unreadable(source) => file_error("--dkim-key", &k.path, Ok(source)),
        KeyError::Invalid(why) => SetupError::Invalid {
            option: "--dkim-key",
            why: format!("{}:{}: {}: {why}", k.domain, k.selector, k.path.display()),
        },
    })?;
    if let Some(s) = &signer {
        log::info!("dkim signing for mail from {}", s.sources());
    }
    Ok(signer.map(Arc::new))
}

/// The router for a config: static routes, then DNS unless `--no-dns`.
/// `local` are our own listening addresses, for loop detection.
pub fn router(config: &Config, local: &[SocketAddr]) -> Result<Router, SetupError> {
    Ok(Router::new(
        config.routes.clone(),
        dns(config)?,
        config.smtp_port,
        vec![config.hostname.clone()],
        local.to_vec(),
    ))
}

/// `--dns` resolved to an address; `None`: the system's resolvers. Every
/// resolver the relay builds (MX routing, DNS lists, reverse names,
/// authentication checks) asks this server.
fn dns_server(config: &Config) -> Result<Option<SocketAddr>, SetupError> {
    config.dns.as_ref().map(|e| resolve("--dns", e)).transpose()
}

/// The resolver `--dns` names (or the system's); `None` under `--no-dns`.
fn dns(config: &Config) -> Result<Option<Dns>, SetupError> {
    if config.no_dns {
        return Ok(None);
    }
    let server = dns_server(config)?;
    let timeout = config.client_timeouts.connect.min(Duration::from_secs(30));
    Ok(Some(
        Dns::new(server, timeout).map_err(|e| SetupError::Dns(format!("{e:?}")))?,
    ))
}

/// The TLS policy sources (`tls_policy.rs`): under `--mta-sts` the
/// MTA-STS resolver (module `mta_sts`), under `--dane` the validating
/// resolver.
pub fn tls_policies(
    config: &Config,
    tls: &ClientTls,
    read_only: bool,
) -> Result<TlsPolicies, SetupError> {
    Ok(TlsPolicies {
        mta_sts: mta_sts(config, tls, read_only)?,
        dane: dane(config)?,
    })
}

/// `--dane`: a DNSSEC-validating resolver (RFC 7672 §2.1) asking the
/// `--dns` server (or the system's), from `--dnssec-trust-anchor` or the
/// root zone's keys. Validation is done here, in-process, not taken from
/// a resolver's AD bit: README "DANE".
fn dane(config: &Config) -> Result<Option<Dns>, SetupError> {
    if !config.dane {
        return Ok(None);
    }
    if config.no_dns {
        return Err(SetupError::Invalid {
            option: "--dane",
            why: "needs DNS: MX routing (not --no-dns)".into(),
        });
    }
    let server = dns_server(config)?;
    let timeout = config.client_timeouts.connect.min(Duration::from_secs(30));
    let dns =
        Dns::validating(server, timeout, config.dnssec_trust_anchor.as_deref()).map_err(|e| {
            SetupError::Invalid {
                option: "--dnssec-trust-anchor",
                why: e.to_string(),
            }
        })?;
    Ok(Some(dns))
}

/// `--mta-sts`: the MTA-STS resolver, its own DNS client, the verifying
/// TLS config for the policy fetch, and the cache in `SPOOL/mta-sts/`
/// (read-only for `route`).
fn mta_sts(
    config: &Config,
    tls: &ClientTls,
    read_only: bool,
) -> Result<Option<MtaSts>, SetupError> {
    if !config.mta_sts {
        return Ok(None);
    }
    let invalid = |why: &str| SetupError::Invalid {
        option: "--mta-sts",
        why: why.to_string(),
    };
    let dns = dns(config)?.ok_or_else(|| invalid("needs DNS: MX routing (not --no-dns)"))?;
    let verified = tls
        .verified_config()
        .ok_or_else(|| invalid("no CA certificates were loaded"))?;
    let cache = PolicyCache::new(&config.spool.join("mta-sts"), read_only);
    // RFC 8461 §3.3 leaves the limit to the sender; one fetch must not
    // hold a delivery thread for long
    let timeout = config.client_timeouts.connect.min(Duration::from_secs(20));
    Ok(Some(MtaSts::new(
        dns,
        verified,
        cache,
        config.mta_sts_port,
        timeout,
        Arc::new(crate::time::SystemClock),
    )))
}

/// `--secrets-file`, read and checked now (owner and mode, syntax), and
/// every route's `auth =` found in it: a route whose credentials are
/// missing is a configuration error at start (EX_CONFIG), not a deferral
/// of each of its messages later.
pub fn secrets(config: &Config) -> Result<Secrets, SetupError> {
    const OPTION: &str = "--secrets-file";
    let secrets = match &config.secrets_file {
        None => Secrets::default(),
        Some(path) => Secrets::load(path).map_err(|e| match e {
            SecretsError::Io(path, source) => SetupError::Unreadable {
                option: OPTION,
                path,
                source,
            },
            other => SetupError::Invalid {
                option: OPTION,
                why: other.to_string(),
            },
        })?,
    };
    for route in &config.routes {
        let Some(auth) = route.auth() else { continue };
        let missing = match &auth.user {
            Some(user) => secrets.resolve(user).is_none().then_some(user.as_str()),
            // sender-auth without a fallback: the file may not be empty
            None => secrets.is_empty().then_some("any sender"),
        };
        if let Some(what) = missing {
            let why = match &config.secrets_file {
                Some(p) => format!("{} has no line for {what}", p.display()),
                None => "not given".into(),
            };
            return Err(SetupError::Invalid {
                option: OPTION,
                why: format!("route {route} uses auth = {}: {why}", auth.describe()),
            });
        }
    }
    Ok(secrets)
}

/// Routes' own limits (`max-connections`, rates ...), by destination key.
fn route_limits(config: &Config) -> std::collections::HashMap<String, crate::shaping::DestShaping> {
    config
        .routes
        .iter()
        .filter_map(|r| r.limit(config.smtp_port))
        .collect()
}

/// The delivery engine for a config (`serve`, and a `queue flush` that
/// runs without a server).
pub fn deliverer(
    config: &Config,
    tls: Arc<ClientTls>,
    secrets: Arc<Secrets>,
    spool: Arc<Spool>,
    local: &[SocketAddr],
    committed: Option<Sender<QueueId>>,
) -> Result<Deliverer, SetupError> {
    let clock: Arc<dyn crate::time::Clock> = Arc::new(crate::time::SystemClock);
    let limiter = dest_limiter(config, &spool, clock.clone());
    Ok(Deliverer {
        spool,
        router: router(config, local)?,
        hostname: config.hostname.clone(),
        timeouts: config.client_timeouts,
        retry: config.retry,
        cache: ConnCache::new(config.connection_idle),
        limiter,
        honor_source_routes: config.honor_source_routes,
        delay_warning: config.delay_warning,
        committed,
        secrets,
        clock,
        postmaster: config.postmaster(),
        tls_policies: Arc::new(tls_policies(config, &tls, false)?),
        tls,
        // `serve` sets the reporter it keeps across reloads (`Shared`)
        tls_reports: None,
    })
}

/// The per-destination limits (defaults, routes' own) with the throttles
/// a previous run left in the spool (README "Traffic shaping").
fn dest_limiter(config: &Config, spool: &Spool, clock: Arc<dyn crate::time::Clock>) -> DestLimiter {
    let limiter = DestLimiter::with_limits(config.shaping, route_limits(config), clock);
    limiter.restore(spool.read_throttled());
    limiter
}

/// `queue flush` without a server: how it builds its delivery engine,
/// handed to `admin::run_queue` so that the queue commands build nothing
/// themselves.
pub fn flush_deliverer(
    config: &Config,
) -> impl Fn(Arc<Spool>) -> Result<Deliverer, AdminError> + '_ {
    move |spool| {
        let secrets = Arc::new(secrets(config)?);
        Ok(deliverer(
            config,
            client_tls(config)?,
            secrets,
            spool,
            &[],
            None,
        )?)
    }
}

/// The files a configuration names, read and checked (certificates and
/// keys, the password, secrets and sender-map files, access and recipient
/// tables): what `serve` starts with, what SIGHUP swaps in, and what
/// `--check-config` validates, all through [`load`].
pub struct Loaded {
    pub config: Config,
    server_tls: Option<Arc<rustls::ServerConfig>>,
    /// Without its verifier yet (it needs our listening addresses).
    gate: crate::check::Gate,
    senders: Option<SenderMap>,
    client_tls: Arc<ClientTls>,
    secrets: Arc<Secrets>,
    dkim: Option<Arc<crate::dkim::Signer>>,
}

/// Reads every file `config` names; the first that cannot be read or
/// used is the error, naming its option and file (and line, where the
/// file's parser gives one).
pub fn load(config: Config) -> Result<Loaded, SetupError> {
    let server_tls = server_tls(&config)?;
    check_auth_file(&config)?;
    let gate = gate(&config)?;
    let senders = sender_map(&config)?;
    let client_tls = client_tls(&config)?;
    let secrets = Arc::new(secrets(&config)?);
    // DKIM keys likewise: root-only key files stay root-only
    let dkim = dkim_signer(&config)?;
    Ok(Loaded {
        config,
        server_tls,
        gate,
        senders,
        client_tls,
        secrets,
        dkim,
    })
}

/// What `serve` builds once and every generation of settings shares:
/// the spool, the scheduler's channel, the per-destination counts, and
/// the pools whose state must outlive a reload.
pub struct Shared {
    spool: Arc<Spool>,
    committed: Sender<QueueId>,
    /// Our listening addresses (loop detection).
    local: Vec<SocketAddr>,
    space: Arc<session::SpaceCheck>,
    verifier: Arc<crate::auth::Verifier>,
    /// In-flight deliveries per destination: a reload changes the limits,
    /// never the counts.
    limiter: DestLimiter,
    /// `--tls-reports`: built at start; its counts outlive reloads (a
    /// reload does not turn reporting on or off).
    tls_reports: Option<Arc<crate::tlsrpt::Reporter>>,
}

/// Everything built from one configuration. A session runs with the
/// generation current when its worker took it, a delivery attempt with
/// the one current when it began; a reload makes a new one current and
/// the old is freed when its last session or attempt ends.
pub struct Generation {
    pub session: Arc<Context>,
    pub deliverer: Arc<Deliverer>,
}

/// Builds a generation from loaded files. `prev`: the generation it
/// replaces, whose AUTH failure counts and rate windows are kept when
/// their limits did not change (a reload is no way around them).
pub fn assemble(
    loaded: Loaded,
    shared: &Shared,
    prev: Option<&Context>,
) -> Result<Generation, SetupError> {
    let Loaded {
        config,
        server_tls,
        mut gate,
        senders,
        client_tls,
        secrets,
        dkim,
    } = loaded;
    let mut deliverer = deliverer(
        &config,
        client_tls,
        secrets,
        shared.spool.clone(),
        &shared.local,
        Some(shared.committed.clone()),
    )?;
    shared
        .limiter
        .set_limits(config.shaping, route_limits(&config));
    if prev.is_none() {
        // the throttles a previous run left (README "Traffic shaping")
        shared.limiter.restore(shared.spool.read_throttled());
    }
    deliverer.limiter = shared.limiter.clone();
    deliverer.tls_reports = shared.tls_reports.clone();
    gate.verifier = verifier(&config, &shared.local)?;
    let mut edge = edge(&config)?;
    let mut auth_failures = Arc::new(crate::auth_limit::FailureLimiter::new(config.auth_limits));
    if let Some(prev) = prev {
        if prev.config.edge.rates == config.edge.rates {
            edge.rates = prev.edge.rates.clone();
        }
        if prev.config.auth_limits == config.auth_limits {
            auth_failures = prev.auth_failures.clone();
        }
    }
    // the checks' resolver and runtime are kept while their settings are
    let authres = match prev {
        Some(p) if same_auth_results(&p.config, &config) => p.authres.clone(),
        _ => auth_results(&config)?,
    };
    let session = Context {
        authres,
        config: Arc::new(config),
        spool: shared.spool.clone(),
        committed: Some(shared.committed.clone()),
        space: shared.space.clone(),
        verifier: shared.verifier.clone(),
        auth_failures,
        tls: server_tls,
        edge,
        gate: Arc::new(gate),
        senders,
        dkim,
    };
    Ok(Generation {
        session: Arc::new(session),
        deliverer: Arc::new(deliverer),
    })
}

/// `serve --check-config`: [`load`] and every other part a reload
/// builds that can fail (routers, DNS lists), binding nothing and
/// touching no spool. Prints `OK` or the error.
pub fn check_config(config: Config) -> Exit {
    let file = config
        .config_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the command line".into());
    let checked = load(config).and_then(|loaded| {
        let local = listen_addrs(&loaded.config)?;
        router(&loaded.config, &local)?;
        verifier(&loaded.config, &local)?;
        edge(&loaded.config)?;
        auth_results(&loaded.config)?;
        Ok(())
    });
    match checked {
        Ok(()) => {
            println!("{file}: OK");
            Exit::Ok
        }
        Err(e) => {
            eprintln!("smtp-relay: {file}: {e}");
            Exit::Config
        }
    }
}

/// `serve`'s steps as root (when started as root): look up `--user`,
/// bind every listener (port 25 needs root) and the metrics endpoint,
/// then hand the spool to `--user` and drop privileges; then check that
/// the user we now are can read `--auth-file`.
fn bind_as_root(config: &Config) -> Result<Vec<server::Bound>, ServeError> {
    let user = config
        .user
        .as_deref()
        .map(|name| {
            crate::sys::lookup_user(name).map_err(|source| SetupError::User {
                name: name.to_string(),
                source,
            })
        })
        .transpose()?;
    // Root binds (port 25), and with --user hands the spool over by file
    // descriptor (spool/owner.rs), then drops privileges. Everything that
    // walks the spool (lock, recovery, cleaning tmp/ and free/) runs
    // after that, as the spool's user.
    let bound = server::bind(&listeners(config)?)?;
    if let Some(addr) = config.metrics {
        let local = crate::metrics::serve(addr, config.spool.clone())
            .map_err(|source| ServeError::Bind { addr, source })?;
        log::info!("metrics on {local}");
    }
    if let (Some(name), Some(user)) = (&config.user, user) {
        server::become_user(name, user, &config.spool)?;
    }
    // the password file is read at each AUTH, as the user we now are: a
    // file only root can read (what `passwd` run as root used to leave)
    // would fail every AUTH with 454, so refuse to start instead
    if let Some(path) = &config.auth_file {
        crate::auth::check_file(path).map_err(|source| ServeError::AuthFile {
            path: path.clone(),
            user: config.user.clone(),
            source,
        })?;
    }
    Ok(bound)
}

/// Opens and locks the spool, does the quick part of recovery (as the
/// spool's user), starts the committer: the ids of the queued messages,
/// whose envelopes [`recover_in_background`] reads.
fn open_spool(
    config: &Config,
) -> Result<(Arc<Spool>, crate::spool::SpoolLock, Vec<QueueId>), ServeError> {
    let mut spool = Spool::open(&config.spool)?;
    let lock = spool.lock()?;
    crate::spool::maildrop::recover(&spool);
    spool.start_committer(config.sync == crate::config::SyncMode::Syncfs)?;
    let spool = Arc::new(spool);
    let (ids, rec) = spool.recover_names(&lock)?;
    log::info!(
        "spool {} recovered: {} queued, {} unfinished removed, {} orphan files removed, {} corrupt moved aside",
        spool.root().display(),
        ids.len(),
        rec.tmp_removed,
        rec.orphans_removed,
        rec.corrupt_moved
    );
    Ok((spool, lock, ids))
}

/// Reads the queued messages' envelopes on threads of its own and hands
/// them to the scheduler as it goes, so that a big spool (a million
/// messages) does not keep the server from accepting mail for the time
/// it takes (README "At scale"). Safe because new mail never takes an id
/// of `ids` and recovery only reads; a message it fails to read is found
/// by the scheduler's next rescan.
fn recover_in_background(
    spool: Arc<Spool>,
    ids: Vec<QueueId>,
    to_scheduler: Option<Sender<Vec<crate::spool::Queued>>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("recovery".into())
        .spawn(move || {
            crate::fault::stall_recovery(&spool.root().join("recovery-go"));
            let started = std::time::Instant::now();
            // no scheduler (--delivery-workers 0): read anyway, to move
            // corrupt envelopes aside; a scheduler gone: the server stops
            let loaded = spool.load_recovered(&ids, &|batch| {
                to_scheduler
                    .as_ref()
                    .is_none_or(|tx| tx.send(batch).is_ok())
            });
            log::info!(
                "recovery read {} queued message(s) in {:.1} s, {} corrupt moved aside{}",
                loaded.queued,
                started.elapsed().as_secs_f64(),
                loaded.corrupt_moved,
                if loaded.error.is_some() {
                    ", some unreadable (left for the rescan)"
                } else {
                    ""
                }
            );
        })
        .map(drop)
}

/// Freed memory each malloc arena of the server keeps for reuse.
const KEEP_FREED_MEMORY: usize = 2 * 1024 * 1024;

/// `serve`: read what the options name, bind, drop privileges, recover
/// the spool, start delivery and the sessions; returns on SIGTERM/SIGINT.
/// `args` is serve's command line, parsed again by each SIGHUP
/// (`reload.rs`).
pub fn serve(config: Config, args: Vec<String>) -> Result<(), ServeError> {
    // before any thread starts (see there)
    crate::sys::keep_freed_memory(KEEP_FREED_MEMORY);
    // before anything else: a SIGHUP during start-up is not fatal either
    let signals = Signals::install();
    // Files an option names are read now, as root when started as root
    // (a key file is often readable by root only), before privileges
    // drop; a bad one stops the start before anything is bound.
    let loaded = load(config)?;
    let config = &loaded.config;
    let listeners = bind_as_root(config)?;
    let (spool, lock, queued_ids) = open_spool(config)?;
    // users who cannot write the queue submit through maildrop/
    let maildrop_ready = crate::spool::maildrop::prepare(spool.root())
        .map_err(|e| log::warn!("maildrop/: {e}: non-root submission is off"))
        .is_ok();
    // sessions and delivery announce new messages to the scheduler; a
    // full channel only delays a message until the next rescan
    let (committed_tx, committed_rx) = bounded::<QueueId>(16 * 1024);
    let tls_reports = tls_reporter(config, &spool, loaded.dkim.clone())?;
    let shared = Shared {
        spool: spool.clone(),
        committed: committed_tx,
        local: listeners.iter().map(|b| b.local).collect(),
        space: Arc::default(),
        verifier: Arc::new(crate::auth::Verifier::per_cpu()),
        limiter: DestLimiter::new(1),
        tls_reports,
    };
    let delivery_workers = config.delivery_workers;
    // a batch waits here while the scheduler is busy: a few hundred
    // thousand ids at most, never whole envelopes
    let (recovered_tx, recovered_rx) = bounded::<Vec<crate::spool::Queued>>(256);
    let to_scheduler = (delivery_workers > 0).then_some(recovered_tx);
    recover_in_background(shared.spool.clone(), queued_ids, to_scheduler)
        .map_err(ServeError::Thread)?;
    let reporter = shared
        .tls_reports
        .clone()
        .map(|r| r.start(shared.spool.clone(), Some(shared.committed.clone())))
        .transpose()
        .map_err(ServeError::Thread)?;
    let first = assemble(loaded, &shared, None)?;
    crate::metrics::config_loaded(None, crate::time::now_unix());
    let sessions = Arc::new(Swap::from_arc(first.session));
    let deliveries = Arc::new(Swap::from_arc(first.deliverer));
    let sched = if delivery_workers > 0 {
        Some(
            scheduler::start(
                deliveries.clone(),
                delivery_workers,
                recovered_rx,
                committed_rx,
            )
            .map_err(ServeError::Thread)?,
        )
    } else {
        drop(recovered_rx);
        log::info!("delivery is off (--delivery-workers 0): mail is received and queued only");
        None
    };
    let pickup = maildrop_ready
        .then(|| {
            let ctx = sessions.load();
            let current = sessions.clone();
            crate::spool::maildrop::Pickup::start(
                ctx.spool.clone(),
                move || {
                    let ctx = current.load();
                    let content =
                        crate::admin::content::Content::new(ctx.dkim.clone(), &ctx.config.milters);
                    (ctx.config.clone(), content)
                },
                ctx.committed.clone(),
            )
        })
        .transpose()
        .map_err(ServeError::Thread)?;
    let reloader = Reloader::new(args, shared, sessions.clone(), deliveries);
    server::run(listeners, sessions, signals, &mut || reloader.reload())?;
    if let Some(p) = pickup {
        p.stop();
    }
    // deliveries in flight get a moment; one cut short is retried at the
    // next start (a duplicate at worst, never a loss)
    if let Some(s) = sched {
        s.stop(Duration::from_secs(5));
    }
    // the last counts to the spool: a restart reads them back
    if let Some(r) = reporter {
        r.stop();
    }
    // the last deliveries' removals, answered before their flush
    if let Err(e) = spool.flush_removals() {
        log::error!("flushing the last removals: {e}");
    }
    drop(lock);
    log::info!("stopped");
    Ok(())
}

/// `--tls-reports`: the reporter on `SPOOL/tlsrpt/` (module `tlsrpt`),
/// with the counts a previous run left; reports are DKIM-signed with
/// `--dkim-key` when one covers the sender's domain (RFC 8460 §5.3).
fn tls_reporter(
    config: &Config,
    spool: &Spool,
    dkim: Option<Arc<crate::dkim::Signer>>,
) -> Result<Option<Arc<crate::tlsrpt::Reporter>>, SetupError> {
    if !config.tls_reports {
        return Ok(None);
    }
    let invalid = |why: String| SetupError::Invalid {
        option: "--tls-reports",
        why,
    };
    let dns = dns(config)?.ok_or_else(|| invalid("needs DNS (not --no-dns)".into()))?;
    let from = config.tls_report_from().ok_or_else(|| {
        invalid(format!(
            "tlsrpt-noreply@{} is not an address: set --tls-report-from",
            config.hostname
        ))
    })?;
    let settings = crate::tlsrpt::Settings {
        submitter: crate::tlsrpt::Submitter {
            org: config
                .tls_report_org
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
            contact: config
                .tls_report_contact
                .clone()
                .unwrap_or_else(|| from.mailbox().to_string()),
            from: from.mailbox().to_string(),
            hostname: config.hostname.clone(),
        },
        from,
        period: config.tls_report_period,
    };
    let clock = Arc::new(crate::time::SystemClock);
    let r = crate::tlsrpt::Reporter::open(spool.root(), dns, settings, clock, dkim);
    Ok(Some(Arc::new(r)))
}

/// The inbound edge's shared objects (issue 13): the DNS lists get a
/// resolver of their own, on `--dns` when set.
fn edge(config: &Config) -> Result<crate::edge::Edge, SetupError> {
    let server = dns_server(config)?;
    crate::edge::Edge::build(&config.edge, server).map_err(|e| SetupError::Dns(format!("{e}")))
}

/// Whether a reload leaves the authentication checks as they were: their
/// settings, the host name they write, the nameserver they ask.
fn same_auth_results(a: &Config, b: &Config) -> bool {
    (&a.auth_results, &a.hostname, &a.dns, a.no_dns)
        == (&b.auth_results, &b.hostname, &b.dns, b.no_dns)
}

/// `--auth-results`: the SPF/DKIM/DMARC verifier, asking `--dns` when
/// set; `None` when no listener checks its mail. Which listeners check
/// is fixed when they are bound, at start (a reload changes the
/// settings, not the listeners).
fn auth_results(config: &Config) -> Result<Option<Arc<crate::authres::Verifier>>, SetupError> {
    if !config.all_listeners().iter().any(|l| l.mode.auth_results) {
        return Ok(None);
    }
    let server = dns_server(config)?;
    crate::authres::Verifier::new(&config.auth_results, &config.hostname, server)
        .map(|v| Some(Arc::new(v)))
        .map_err(|e| SetupError::Dns(format!("{e}")))
}

/// The filter stage of `serve`: `--access`'s rules and the recipient
/// checks of `--recipients`/`--verify-recipients`, their files read now
/// (before privileges drop, as the TLS key is). The verifier, which needs
/// our listening addresses, is added by `verifier`.
pub fn gate(config: &Config) -> Result<crate::check::Gate, SetupError> {
    use crate::access::{AccessRules, Swap};
    use crate::check::{DomainCheck, Gate, RecipientTable};
    let read = |option: &'static str, path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| SetupError::Unreadable {
            option,
            path: path.clone(),
            source,
        })
    };
    let mut gate = Gate::default();
    if let Some(path) = &config.access_file {
        let rules =
            AccessRules::parse(&read("--access", path)?).map_err(|why| SetupError::Invalid {
                option: "--access",
                why: format!("{}: {why}", path.display()),
            })?;
        if rules.needs_ptr() && !config.no_dns {
            let server = dns_server(config)?;
            // a short timeout: the client waits for it
            gate.dns = Some(
                crate::dns::Dns::new(server, Duration::from_secs(5))
                    .map_err(|e| SetupError::Dns(format!("{e:?}")))?,
            );
        }
        gate.access = Swap::new(rules);
    }
    for (domain, path) in &config.recipient_tables {
        let table = RecipientTable::parse(&read("--recipients", path)?).map_err(|why| {
            SetupError::Invalid {
                option: "--recipients",
                why: format!("{}: {why}", path.display()),
            }
        })?;
        log::info!(
            "recipients of {domain}: {} entries from {}",
            table.len(),
            path.display()
        );
        gate.domains
            .insert(domain.key(), DomainCheck::Table(Swap::new(table)));
    }
    for domain in &config.verify_domains {
        let check = match gate.domains.remove(&domain.key()) {
            Some(DomainCheck::Table(t)) | Some(DomainCheck::Both(t)) => DomainCheck::Both(t),
            _ => DomainCheck::Verify,
        };
        gate.domains.insert(domain.key(), check);
    }
    Ok(gate)
}

/// `--verify-recipients`: probes go where delivery would (`local` are
/// our listening addresses, for loop detection).
pub fn verifier(
    config: &Config,
    local: &[SocketAddr],
) -> Result<Option<crate::check::Verifier>, SetupError> {
    if config.verify_domains.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::check::Verifier::new(
        router(config, local)?,
        config.hostname.clone(),
        config.verify,
    )))
}

/// `route`: DANE's decision for each MX host (RFC 7672 §2.2).
fn print_dane_hops(
    policies: &TlsPolicies,
    dest: &crate::tls_policy::DestTls,
    hops: &[crate::route::Hop],
) {
    use crate::tls_policy::HopDane;
    for hop in hops {
        match policies.dane_hop(dest, hop) {
            HopDane::Usable { tlsa, .. } => {
                println!("  {} port {}: DANE, TLSA records:", hop.name, hop.port);
                for t in tlsa {
                    println!("    {t}");
                }
            }
            HopDane::None => println!(
                "  {} port {}: no usable TLSA records (opportunistic, or MTA-STS)",
                hop.name, hop.port
            ),
            HopDane::Failed(why) => {
                println!(
                    "  {} port {}: DANE deferral (4.7.5): {why}",
                    hop.name, hop.port
                )
            }
        }
    }
}

/// `route` under `--tls-reports`: where the domain's TLS reports would
/// go (its `_smtp._tls` record, RFC 8460 §3), or why none.
fn print_tls_report(config: &Config, host: &crate::smtp::Host) -> Result<(), AdminError> {
    let crate::smtp::Host::Name(d) = host else {
        return Ok(());
    };
    if !config.tls_reports {
        return Ok(());
    }
    let Some(dns) = dns(config)? else {
        return Ok(());
    };
    let ascii = idna::domain_to_ascii(d.as_str()).unwrap_or_else(|_| d.as_str().to_string());
    match crate::tlsrpt::lookup(&dns, &ascii) {
        Ok(r) => {
            let mut uris = Vec::new();
            for u in &r.rua {
                uris.push(match u {
                    crate::tlsrpt::record::Rua::Mailto(p) => format!("mailto:{}", p.mailbox()),
                    crate::tlsrpt::record::Rua::Https(u) => format!("{u} (not supported)"),
                });
            }
            println!("tls reports: {}", uris.join(", "));
        }
        Err(why) => println!("tls reports: none ({why})"),
    }
    Ok(())
}

/// `route ADDRESS`: where a recipient would go, sending nothing. Prints
/// the decision; 0 deliverable, 69 permanently not, 75 not now.
pub fn route(config: &Config, address: &str) -> Result<Exit, AdminError> {
    let text = if address.starts_with('<') {
        address.to_string()
    } else {
        format!("<{address}>")
    };
    let path = crate::smtp::Path::parse(&text, true).map_err(|e| AdminError {
        code: Exit::Usage,
        message: format!("{address:?} is not a mailbox: {e}"),
    })?;
    let router = router(config, &listen_addrs(config)?)?;
    let host = path.mailbox().host();
    let (explanation, _) = router.explain(host);
    println!("recipient: {}", path.mailbox());
    print!("{explanation}");
    if !explanation.ends_with('\n') {
        println!();
    }
    if router.route(host).is_ok() {
        let policies = tls_policies(config, &*client_tls(config)?, true)?;
        let dest = policies.for_destination(host, router.has_static_route(host));
        println!("tls policy: {}", dest.describe());
        print_tls_report(config, host)?;
        if let (Ok(hops), Some(_)) = (router.route(host), &dest.dane) {
            print_dane_hops(&policies, &dest, &hops);
        }
    }
    Ok(match router.route(host) {
        Ok(_) => Exit::Ok,
        Err(e) if e.is_permanent() => Exit::Unavailable,
        Err(_) => Exit::TempFail,
    })
}

/// Runs one command line (without the program name): parse it, set up
/// logging, build what the command needs and run it; its outcome is the
/// process's exit code (sysexits, `exit.rs`).
pub fn run(args: Vec<String>) -> ExitCode {
    let cli = match cli::parse(&args) {
        Ok(c) => c,
        // the configuration's own error, as --check-config promises
        Err(e)
            if args.iter().any(|a| a == "--check-config")
                || args.first().is_some_and(|a| a == "check-config") =>
        {
            eprintln!("smtp-relay: {e}");
            return Exit::Config.into();
        }
        Err(e) => return fail(&e),
    };
    match cli {
        Cli::Help(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Cli::Version => {
            println!("smtp-relay {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Cli::Queue {
            config,
            cmd,
            sel,
            dry_run,
            ids_from_stdin,
            warnings,
        } => queue_command(&config, &cmd, sel, dry_run, ids_from_stdin, &warnings),
        Cli::Send { config, mut opts } => {
            init_logging(config.verbosity, true);
            if crate::sendmail::called_as_sendmail() {
                opts.via = crate::admin::Via::Sendmail;
            }
            match crate::admin::run_send(&config, &opts, &mut std::io::stdin().lock()) {
                Ok(id) => {
                    if config.verbosity > 0 {
                        eprintln!("queued as {id}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Cli::Passwd { file, user, owner } => passwd(&file, &user, owner),
        Cli::DkimKeygen(k) => match crate::dkim::keygen::run(&k) {
            Ok(record) => {
                eprintln!("smtp-relay: private key written to {}", k.out.display());
                println!("{record}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Cli::CheckConfig(config) => {
            init_logging(config.verbosity, true);
            check_config(config).into()
        }
        Cli::Route { config, address } => {
            init_logging(config.verbosity, true);
            match route(&config, &address) {
                Ok(code) => code.into(),
                Err(e) => fail(&e),
            }
        }
        Cli::Serve(config) => {
            let file = config.log_file.as_deref();
            if let Err(e) = init_logging_to(config.verbosity, false, config.log_format, file) {
                eprintln!("smtp-relay: --log-file: {e}");
                return Exit::IoErr.into();
            }
            match serve(config, args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    fail(&e)
                }
            }
        }
    }
}

/// `queue …`: ids from stdin when asked, then `admin::run_queue` with
/// this module's way to build a delivery engine for a foreground flush.
fn queue_command(
    config: &Config,
    cmd: &crate::admin::QueueCmd,
    mut sel: crate::admin::Selector,
    dry_run: bool,
    ids_from_stdin: bool,
    warnings: &[String],
) -> ExitCode {
    init_logging(config.verbosity, true);
    for w in warnings {
        eprintln!("smtp-relay: warning: {w}");
    }
    if ids_from_stdin {
        match crate::admin::read_ids(&mut std::io::stdin().lock()) {
            Ok(ids) => sel.ids.extend(ids),
            Err(e) => return fail(&e),
        }
        if sel.ids.is_empty() {
            eprintln!("smtp-relay: no queue ids on standard input");
            return Exit::Ok.into();
        }
    }
    let deliverer = flush_deliverer(config);
    match crate::admin::run_queue(config, cmd, &sel, dry_run, &deliverer) {
        Ok(code) => code.into(),
        Err(e) => fail(&e),
    }
}

/// Prints `e` as the one line a failed command leaves on stderr, and
/// gives its exit code: every error reaches the process's exit status
/// here, through its `From<&E> for Exit` in exit.rs.
pub fn fail<E: std::fmt::Display>(e: &E) -> ExitCode
where
    for<'a> Exit: From<&'a E>,
{
    eprintln!("smtp-relay: {e}");
    Exit::from(e).into()
}

/// `quiet_default`: commands for scripts log only warnings unless asked.
fn init_logging(verbosity: usize, quiet_default: bool) {
    let _ = init_logging_to(verbosity, quiet_default, Default::default(), None);
}

/// `init_logging` with `--log-format` and `--log-file` (logging.rs).
fn init_logging_to(
    verbosity: usize,
    quiet_default: bool,
    format: crate::logging::LogFormat,
    file: Option<&std::path::Path>,
) -> std::io::Result<()> {
    let default = match verbosity {
        0 if quiet_default => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    crate::logging::init(default, verbosity, format, file)
}

/// `smtp-relay passwd USER`: the first line of stdin is the password.
/// Exit 0 set, 64 no password given, 74 the file cannot be written.
fn passwd(file: &std::path::Path, user: &str, owner: Option<crate::sys::User>) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("smtp-relay: cannot read the password on stdin: {e}");
        return Exit::IoErr.into();
    }
    let pass = line.strip_suffix('\n').unwrap_or(&line);
    let pass = pass.strip_suffix('\r').unwrap_or(pass);
    if pass.is_empty() {
        eprintln!("smtp-relay: no password on stdin (one line)");
        return Exit::Usage.into();
    }
    match crate::auth::set_password(file, user, pass, owner) {
        Ok(replaced) => {
            let what = if replaced { "replaced" } else { "added" };
            eprintln!("smtp-relay: {user} {what} in {}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtp-relay: {}: {e}", file.display());
            Exit::IoErr.into()
        }
    }
}
