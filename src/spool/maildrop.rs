//! `maildrop/`: how a user who cannot write the spool (a cron job, PHP,
//! anyone but root and the spool's owner) submits mail: Postfix's
//! postdrop idea, without a set-group-id program.
//!
//! ```text
//! SPOOL/               mode 0711: others may pass through, not list
//! SPOOL/maildrop/      mode 1733, the server's: anyone creates files,
//!                      nobody but the server lists them, the sticky bit
//!                      keeps users off each other's files
//! SPOOL/maildrop/NAME  one message: NAME is 32 random hex digits; written
//!                      as NAME.tmp, fsynced, renamed: the rename is the
//!                      submission
//! SPOOL/pickup/NAME    the server's marker while it queues NAME (below)
//! ```
//! A drop file (mode 0644, so the server's user can read it; its random
//! name in a folder only the server can list keeps it from other users)
//! holds a small header, then the raw message as the submitter gave it:
//! ```text
//! smtp-relay-maildrop 1
//! flags t          (t: recipients from To/Cc/Bcc)
//! from ADDRESS     (optional: -f; `<>` for the null sender)
//! name FULL NAME   (optional: -F)
//! rcpt ADDRESS     (repeated)
//! (empty line)
//! ```
//! Who submitted is what the kernel says, never what the file says: the
//! server takes the uid from `fstat` of the descriptor it reads (opened
//! `O_NOFOLLOW | O_NONBLOCK`), records it in the envelope's client
//! (`local uid=N`) and in its `Received: from local (uid N)`, and builds
//! the `From:` it adds and the default envelope sender from that uid's
//! login name. A drop that is not a plain file with one link, is larger
//! than `--max-size` allows, or does not parse is removed and logged:
//! a submitter can only ever lose their own message.
//!
//! Exactly once: the server queues the message *held*, with a marker
//! `pickup/NAME` naming the queue id written (fsynced) before the commit;
//! then removes the drop, releases the hold, and removes the marker. At
//! start-up a marker whose id is queued with `maildrop=NAME` in its
//! client means the commit happened: the drop (if still there) is
//! removed and the hold released, so a crash between commit and removal
//! never queues it twice; a marker without that message is dropped and
//! the drop file picked up again (the commit never happened).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::{fsutil, Hold, QueueId, Spool};
use crate::admin::content::Content;
use crate::admin::{AdminError, Queued, SendOpts, Submitter};
use crate::config::Config;
use crate::exit::Exit;
use crate::sys::{self, FileKind};

/// The folder's name in the spool.
pub const DIR: &str = "maildrop";
/// The server's markers, a spool folder (`SUBDIRS`).
pub const PICKUP: &str = "pickup";
const MAGIC: &str = "smtp-relay-maildrop 1";
/// Most octets of the header section of a drop file.
const MAX_HEADER: u64 = 64 * 1024;
/// Most recipients in one drop.
const MAX_RCPTS: usize = 1000;
/// How often the server looks into `maildrop/`.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// An unfinished `NAME.tmp` older than this is removed (its writer died).
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

/// The most octets a drop may hold: the raw message can grow by a CR per
/// line when made CRLF, so twice `--max-size`, plus the header.
fn max_drop(max_size: u64) -> u64 {
    max_size.saturating_mul(2).saturating_add(MAX_HEADER)
}

/// Whether `send` (or `sendmail`) must go through `maildrop/`: the caller
/// is neither root nor the spool's owner, so it cannot write the queue.
pub fn should_use(root: &Path) -> bool {
    let euid = sys::effective_uid();
    euid != 0 && fs::metadata(root).is_ok_and(|md| md.uid() != euid)
}

fn tempfail(m: impl Into<String>) -> AdminError {
    AdminError {
        code: Exit::TempFail,
        message: m.into(),
    }
}

fn usage(m: impl Into<String>) -> AdminError {
    AdminError {
        code: Exit::Usage,
        message: m.into(),
    }
}

fn random_name() -> io::Result<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn is_drop_name(n: &str) -> bool {
    n.len() == 32
        && n.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// An address as the server will qualify it (a bare local part gets the
/// server's host name; any valid domain checks the same).
fn qualify(a: &str) -> String {
    crate::admin::qualify(a, "localhost")
}

/// The header section for `opts`; a value with a control character is a
/// usage error (it could end its line).
fn header(opts: &SendOpts) -> Result<String, AdminError> {
    let mut h = format!("{MAGIC}\nflags {}\n", if opts.extract { "t" } else { "-" });
    let mut line = |key: &str, v: &str| -> Result<(), AdminError> {
        if v.chars().any(char::is_control) {
            return Err(usage(format!("{key} {v:?}: control characters")));
        }
        h.push_str(&format!("{key} {v}\n"));
        Ok(())
    };
    if let Some(f) = &opts.from {
        let f = if f.is_empty() { "<>" } else { f };
        if f != "<>" {
            crate::admin::parse_mailbox(&qualify(f)).map_err(usage)?;
        }
        line("from", f)?;
    }
    if let Some(n) = &opts.full_name {
        line("name", n)?;
    }
    for r in &opts.rcpts {
        crate::admin::parse_mailbox(&qualify(r)).map_err(usage)?;
        line("rcpt", r)?;
    }
    if opts.rcpts.len() > MAX_RCPTS {
        return Err(usage(format!("more than {MAX_RCPTS} recipients")));
    }
    h.push('\n');
    Ok(h)
}

/// The submitter's side: writes the message into `maildrop/` and returns
/// its name. Without `-i` a line with a lone `.` ends the input, as
/// sendmail's; what follows it is not read.
pub fn submit(
    root: &Path,
    opts: &SendOpts,
    max_size: u64,
    input: &mut impl Read,
) -> Result<String, AdminError> {
    let dir = root.join(DIR);
    let md = fs::symlink_metadata(&dir).map_err(|e| {
        tempfail(format!(
            "{}: {e} (the server creates it: is `smtp-relay serve` running on this spool?)",
            dir.display()
        ))
    })?;
    let spool_owner = fs::metadata(root).map(|m| m.uid()).unwrap_or(u32::MAX);
    if !md.is_dir() || md.uid() != spool_owner || md.mode() & 0o1000 == 0 {
        return Err(AdminError {
            code: Exit::Config,
            message: format!(
                "{}: not the server's sticky maildrop folder (mode 1733, owned by the spool's owner)",
                dir.display()
            ),
        });
    }
    let head = header(opts)?;
    let name = random_name().map_err(|e| tempfail(format!("/dev/urandom: {e}")))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let io_err = |e: io::Error| tempfail(format!("{}: {e}", tmp.display()));
    // create_new is O_EXCL: never a link someone planted
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_err)?;
    let result = (|| {
        // readable by the server's user whatever our umask
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err)?;
        f.write_all(head.as_bytes()).map_err(io_err)?;
        // the raw message only grows when made CRLF: more than
        // --max-size of it is too big whatever its line ends
        let limit = (head.len() as u64).saturating_add(max_size);
        let mut w = io::BufWriter::new(&mut f);
        let mut r = BufReader::new(input);
        let mut written = head.len() as u64;
        let mut line = Vec::new();
        let mut line_start = true;
        loop {
            line.clear();
            let n = r
                .by_ref()
                .take(64 * 1024)
                .read_until(b'\n', &mut line)
                .map_err(|e| tempfail(format!("reading the message: {e}")))?;
            if n == 0 {
                break;
            }
            let ended = line.last() == Some(&b'\n');
            if line_start && !opts.ignore_dots && ended {
                let t: &[u8] = line.strip_suffix(b"\n").unwrap_or(&line);
                if t.strip_suffix(b"\r").unwrap_or(t) == b"." {
                    break;
                }
            }
            line_start = ended;
            written += n as u64;
            if written > limit {
                return Err(AdminError {
                    code: Exit::DataErr,
                    message: format!(
                        "message larger than --max-size ({max_size} octets): not queued"
                    ),
                });
            }
            w.write_all(&line).map_err(io_err)?;
        }
        w.flush().map_err(io_err)?;
        drop(w);
        f.sync_all().map_err(io_err)?;
        fs::rename(&tmp, dir.join(&name)).map_err(io_err)?;
        // the rename is the submission; we may not open the folder (no
        // read permission) to fsync it, so syncfs on the file, which
        // flushes the folder's entry as well
        if let Err(e) = sys::syncfs(&f) {
            log::warn!("{}: syncfs: {e}", dir.display());
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| name)
}

/// Server start-up, as the spool's user: creates `maildrop/` (1733) and
/// lets others through the spool's root (0711: they can reach
/// `maildrop/` by name, and list nothing; every other folder stays 0700).
pub fn prepare(root: &Path) -> io::Result<()> {
    let dir = root.join(DIR);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = fs::symlink_metadata(&dir)?;
    if !md.is_dir() || md.uid() != sys::effective_uid() {
        return Err(io::Error::other(format!(
            "{} is not a folder of ours (uid {}): remove it, the server recreates it",
            dir.display(),
            md.uid()
        )));
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1733))?;
    let rmd = fs::metadata(root)?;
    if rmd.mode() & 0o011 != 0o011 {
        fs::set_permissions(
            root,
            fs::Permissions::from_mode((rmd.mode() & 0o7777) | 0o011),
        )?;
    }
    Ok(())
}

/// The parsed header of a drop.
fn read_header(r: &mut impl BufRead) -> Result<SendOpts, String> {
    let mut opts = SendOpts {
        ignore_dots: true,
        ..SendOpts::default()
    };
    let mut lines = r.take(MAX_HEADER);
    let mut first = true;
    let mut line = String::new();
    loop {
        line.clear();
        let n = lines
            .read_line(&mut line)
            .map_err(|e| format!("header: {e}"))?;
        if n == 0 || !line.ends_with('\n') {
            return Err("header section does not end".into());
        }
        let l = line.trim_end_matches('\n');
        if first {
            if l != MAGIC {
                return Err("not a maildrop file".into());
            }
            first = false;
            continue;
        }
        if l.is_empty() {
            return Ok(opts);
        }
        let (k, v) = l.split_once(' ').unwrap_or((l, ""));
        match k {
            "flags" => opts.extract = v.contains('t'),
            "from" => opts.from = Some(v.to_string()),
            "name" => opts.full_name = Some(v.to_string()),
            "rcpt" if opts.rcpts.len() < MAX_RCPTS => opts.rcpts.push(v.to_string()),
            _ => return Err(format!("bad header line {l:?}")),
        }
    }
}

/// What became of one drop file.
#[derive(Debug, PartialEq, Eq)]
pub enum Picked {
    Queued(QueueId),
    /// Removed: hostile or unusable (logged).
    Removed,
    /// Left for the next scan (a temporary failure, or not finished).
    Left,
}

/// Takes one drop file into the queue.
fn pick(
    spool: &Spool,
    config: &Config,
    content: &Content,
    dirfd: &std::os::fd::OwnedFd,
    name: &str,
) -> Result<Picked, String> {
    let dir = spool.root().join(DIR);
    let path = dir.join(name);
    let remove = |why: String| {
        log::warn!("{}: removed: {why}", path.display());
        // unlink never follows a link: it removes only the name
        let _ = fs::remove_file(&path);
        Ok(Picked::Removed)
    };
    if let Some(stem) = name.strip_suffix(".tmp") {
        let old = fs::symlink_metadata(&path)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TMP);
        return if !is_drop_name(stem) || old {
            remove("unfinished or misnamed".into())
        } else {
            Ok(Picked::Left)
        };
    }
    if !is_drop_name(name) {
        return remove("not a maildrop name".into());
    }
    let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    let fd = match sys::open_file_nofollow(dirfd, &c) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return remove("a symbolic link".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Picked::Left),
        Err(e) => return remove(format!("cannot open: {e}")),
    };
    let st = sys::stat_fd(&fd).map_err(|e| e.to_string())?;
    if st.kind != FileKind::File || st.nlink != 1 {
        return remove(format!(
            "not a plain file with one link (links: {})",
            st.nlink
        ));
    }
    let file = File::from(fd);
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size > max_drop(config.max_size) {
        return remove(format!(
            "{size} octets, more than --max-size allows (uid {})",
            st.uid
        ));
    }
    let uid = st.uid;
    let mut r = BufReader::new(file.take(max_drop(config.max_size)));
    let mut opts = match read_header(&mut r) {
        Ok(o) => o,
        Err(why) => return remove(format!("{why} (uid {uid})")),
    };
    let login = sys::user_name(uid).unwrap_or_else(|| format!("uid{uid}"));
    opts.author = Some(crate::admin::author_field(
        &login,
        &config.hostname,
        opts.full_name.as_deref(),
    ));
    // `maildrop=NAME` last: the start-up check finds it there
    let sub = Submitter {
        client: format!(
            "{} maildrop={name}",
            crate::admin::local_client(uid, &login, crate::admin::Via::Maildrop)
        ),
        login,
        received: format!("local (uid {uid})"),
        hold: Some(Hold::Forever),
        content,
        bounce_refused: true,
    };
    let marker = spool.root().join(PICKUP);
    let queued = crate::admin::queue_message(config, spool, &opts, &sub, &mut r, |id| {
        fsutil::write_atomic(spool.tmp_dir(), &marker, name, id.to_string().as_bytes())
    });
    let env = match queued {
        Ok(Queued::Committed(env)) => env,
        Ok(Queued::Discarded(id)) => {
            // a milter's decision, logged with the id; the submitter
            // learns nothing, as an SMTP client would not
            let _ = fs::remove_file(marker.join(name));
            let _ = fs::remove_file(&path);
            log::info!("{id} from maildrop/{name} (uid {uid}) discarded by milter");
            return Ok(Picked::Removed);
        }
        Err(e) if e.code == Exit::TempFail => {
            let _ = fs::remove_file(marker.join(name));
            log::warn!("{}: left for later: {e}", path.display());
            return Ok(Picked::Left);
        }
        Err(e) => return remove(format!("{e} (uid {uid})")),
    };
    if env.id.to_string() != read_marker(&marker.join(name)).unwrap_or_default() {
        // the commit moved to a fresh id (spool/incoming.rs): say so first
        fsutil::write_atomic(
            spool.tmp_dir(),
            &marker,
            name,
            env.id.to_string().as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    }
    // tests: die as kill -9 would, between the commit and the drop's
    // removal (tests/sendmail.rs shows no message is queued twice)
    #[cfg(debug_assertions)]
    if std::env::var_os("SMTP_RELAY_MAILDROP_ABORT").is_some() {
        std::process::abort();
    }
    finish(spool, name, env.id)?;
    log::info!("{} from maildrop/{name} (uid {uid})", env.id);
    Ok(Picked::Queued(env.id))
}

fn read_marker(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// After the commit: the drop goes, then the hold, then the marker.
fn finish(spool: &Spool, name: &str, id: QueueId) -> Result<(), String> {
    let dir = spool.root().join(DIR);
    match fs::remove_file(dir.join(name)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", dir.join(name).display())),
    }
    fsutil::fsync_dir(&dir).map_err(|e| e.to_string())?;
    // the release goes through a claim, as the queue commands' changes do
    // (an operator's command on the held message meanwhile waits for it)
    match spool
        .claim_wait(id, Duration::from_secs(30))
        .map_err(|e| e.to_string())?
    {
        super::claim::Claimed::Mine(claim) => {
            if let Some(mut env) = claim.load().map_err(|e| e.to_string())? {
                // a milter's quarantine keeps its hold (`queue release`)
                if env.hold == Some(Hold::Forever) && env.hold_reason.is_none() {
                    env.hold = None;
                    claim.store(&env).map_err(|e| e.to_string())?;
                }
            }
        }
        super::claim::Claimed::Gone => {}
        super::claim::Claimed::Busy => return Err(format!("{id}: busy; hold left in place")),
    }
    let marker = spool.root().join(PICKUP);
    fs::remove_file(marker.join(name)).map_err(|e| e.to_string())?;
    Ok(())
}

/// Start-up, before the queue is loaded: finishes what a crash left
/// between a commit and the drop's removal (see the module header).
pub fn recover(spool: &Spool) -> usize {
    let marker_dir = spool.root().join(PICKUP);
    let Ok(names) = fs::read_dir(&marker_dir) else {
        return 0;
    };
    let mut finished = 0;
    for entry in names.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = marker_dir.join(&name);
        let committed = read_marker(&path)
            .and_then(|id| QueueId::parse(&id))
            .filter(|id| {
                spool
                    .load(*id)
                    .is_ok_and(|env| env.client.ends_with(&format!("maildrop={name}")))
            });
        match committed {
            Some(id) if is_drop_name(&name) => match finish(spool, &name, id) {
                Ok(()) => {
                    log::info!("{id}: maildrop/{name} was queued before a stop: drop removed");
                    finished += 1;
                }
                Err(e) => log::warn!("maildrop/{name}: {e}"),
            },
            _ => {
                // no commit: the drop (if any) is picked up again
                let _ = fs::remove_file(&path);
            }
        }
    }
    finished
}

/// One pass over `maildrop/`: what became of each file.
pub fn scan(spool: &Spool, config: &Config, content: &Content) -> Vec<Picked> {
    let dir = spool.root().join(DIR);
    let Ok(dirfd) = sys::open_dir_nofollow(None, &dir) else {
        return Vec::new();
    };
    let Ok(names) = sys::read_dir_fd(&dirfd) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in names {
        let name = n.to_string_lossy().into_owned();
        match pick(spool, config, content, &dirfd, &name) {
            Ok(p) => out.push(p),
            Err(e) => {
                log::warn!("maildrop/{name}: {e}");
                out.push(Picked::Left);
            }
        }
    }
    out
}

/// The server's pick-up thread: a scan every [`SCAN_INTERVAL`] (one
/// `readdir` of a usually empty folder); each queued id goes to
/// `committed` (the scheduler). Each scan runs with the configuration,
/// milters and DKIM keys `current` gives then (a reload may have replaced
/// them).
pub struct Pickup {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Pickup {
    pub fn start(
        spool: Arc<Spool>,
        current: impl Fn() -> (Arc<Config>, Content) + Send + 'static,
        committed: Option<crossbeam_channel::Sender<QueueId>>,
    ) -> io::Result<Pickup> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::Builder::new()
            .name("maildrop".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let (config, content) = current();
                    for p in scan(&spool, &config, &content) {
                        if let (Picked::Queued(id), Some(tx)) = (p, &committed) {
                            let _ = tx.try_send(id);
                        }
                    }
                    thread::sleep(SCAN_INTERVAL);
                }
            })?;
        Ok(Pickup {
            stop,
            handle: Some(handle),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
