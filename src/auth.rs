//! SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms,
//! against a password file of `user:hash` lines (Argon2id PHC strings).
//!
//! This module decodes what the client sent and checks it; the dialogue
//! (334 challenges, 235/535 replies, the slow-down after failures) is the
//! session's. Secrets never leave this module except as a yes or no, and
//! nothing here logs. Password checks run in a `Verifier`: a few slots of
//! reusable Argon2 memory, so memory stays bounded under an AUTH flood.
//! The file is read at every check, so `smtp-relay
//! passwd` takes effect without a restart; it is replaced whole (write a
//! temporary file with mode 0600, give it the old file's owner, fsync,
//! rename), so a crash leaves the old file or the new one, never a torn
//! one. Under `serve --user` the file is read as that user: `serve`
//! refuses to start when it cannot (server.rs).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// The SASL mechanisms we offer (EHLO `AUTH PLAIN LOGIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616: one message, `authzid NUL authcid NUL passwd`.
    Plain,
    /// draft-murchison-sasl-login: user name, then password, each a line.
    Login,
}

impl Mechanism {
    pub fn parse(s: &str) -> Option<Mechanism> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

#[derive(Debug)]
pub enum AuthError {
    Io(io::Error),
    /// A line of the password file that is not `user:hash`.
    BadLine(usize),
    Hash(String),
    /// Every verifier slot stayed busy until the deadline.
    Busy,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Io(e) => write!(f, "{e}"),
            AuthError::BadLine(n) => write!(f, "line {n} is not user:hash"),
            AuthError::Hash(e) => write!(f, "password hash: {e}"),
            AuthError::Busy => write!(f, "every password check slot is busy"),
        }
    }
}

impl std::error::Error for AuthError {}

impl From<io::Error> for AuthError {
    fn from(e: io::Error) -> AuthError {
        AuthError::Io(e)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// RFC 4648 §4 base64, padding required when the length asks for it
/// (RFC 4954 §4: the responses are base64); `None` for anything else.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, chunk) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut v: u32 = 0;
        for &c in &chunk[..4 - pad] {
            let d = B64.iter().position(|&b| b == c)? as u32;
            v = (v << 6) | d;
        }
        v <<= 6 * pad as u32;
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

pub fn encode_base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let mut v: u32 = 0;
        for (i, &b) in chunk.iter().enumerate() {
            v |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`. An authorization
/// identity other than the user itself is refused (no proxy logins).
pub fn parse_plain(msg: &[u8]) -> Option<(String, String)> {
    let mut parts = msg.split(|&b| b == 0);
    let authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return None;
    }
    Some((user.to_string(), pass.to_string()))
}

/// A user name as the file can hold it: no `:`, no white space or
/// control characters, at most 256 octets.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 256
        && !user
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Checks the password file: readable, every line `user:hash`.
pub fn check_file(path: &Path) -> Result<usize, AuthError> {
    let text = fs::read_to_string(path)?;
    let mut n = 0;
    for (no, line) in lines(&text) {
        let Some((user, hash)) = line.split_once(':') else {
            return Err(AuthError::BadLine(no));
        };
        let checkable = PasswordHash::new(hash).is_ok_and(|h| argon2_for(&h).is_some());
        if !valid_user(user) || !checkable {
            return Err(AuthError::BadLine(no));
        }
        n += 1;
    }
    Ok(n)
}

/// A hash to verify against when the user does not exist, so an unknown
/// user costs the same time and memory as a wrong password. The library's
/// default parameters, as `hash_password` writes them; the password is
/// "no such user", which no login can match because `known` is false.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$qK2XBAezExLr19c+1hzAAQ$qYLJCUF6RMAswkn0QlPYhQAhxgLbMasg5DtLyD+1rTI";

/// The most Argon2 memory one stored hash may ask for (256 MiB, in 1 KiB
/// blocks): a file entry beyond it is refused by `check_file`, and never
/// gets a buffer that big.
const MAX_BLOCKS: usize = 256 * 1024;

/// The Argon2 instance a stored PHC string describes, and the 1 KiB
/// blocks of memory it needs; `None` for anything we cannot check.
fn argon2_for(hash: &PasswordHash) -> Option<(Argon2<'static>, usize)> {
    let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(hash).ok()?;
    let blocks = params.block_count();
    if blocks > MAX_BLOCKS {
        return None;
    }
    Some((Argon2::new(algorithm, version, params), blocks))
}

/// Checks `pass` against `hash` in `memory` (grown to the size the hash
/// asks for and kept): the library's `verify_password` allocates its
/// 19 MiB afresh on every call, and glibc keeps such blocks in the
/// calling thread's arena, so hundreds of session threads each hold one
/// (issue 10: 24 GB). Here the memory belongs to a verifier slot.
fn argon2_matches(pass: &[u8], hash: &PasswordHash, memory: &mut Vec<Block>) -> bool {
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let Some((argon2, blocks)) = argon2_for(hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    if argon2
        .hash_password_into_with_memory(pass, salt, out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    // `Output` compares in constant time
    Output::new(out).is_ok_and(|o| o == expected)
}

/// Password checks: at most `slots` run at once, each in Argon2 memory of
/// its own that is allocated once and reused, so AUTH costs at most
/// `slots` × 19 MiB (the default parameters) however many sessions try.
/// A check that finds every slot busy waits, until the session's deadline.
pub struct Verifier {
    /// The free slots' memory; a slot in use is out of the list.
    free: Mutex<Vec<Vec<Block>>>,
    returned: Condvar,
    slots: usize,
}

/// A slot taken from a `Verifier`; dropping it gives it back, even when
/// the check panicked.
struct Slot<'a> {
    verifier: &'a Verifier,
    memory: Vec<Block>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        let mut free = self.verifier.free.lock().unwrap_or_else(|p| p.into_inner());
        free.push(memory);
        self.verifier.returned.notify_one();
    }
}

impl Verifier {
    /// `slots` concurrent checks (at least one); their memory is only
    /// allocated by the first checks that use them.
    pub fn new(slots: usize) -> Verifier {
        let slots = slots.max(1);
        Verifier {
            free: Mutex::new((0..slots).map(|_| Vec::new()).collect()),
            returned: Condvar::new(),
            slots,
        }
    }

    /// One slot per CPU: a check is CPU-bound, so more would only share
    /// the cores and hold more memory. At most `MAX_SLOTS`: on a large
    /// machine a slot per core would hold gigabytes of Argon2 blocks for
    /// a flood that only AUTH guessers send.
    pub fn per_cpu() -> Verifier {
        const MAX_SLOTS: usize = 8;
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Verifier::new(cpus.min(MAX_SLOTS))
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    fn take(&self, deadline: Instant) -> Result<Slot<'_>, AuthError> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(memory) = free.pop() {
                return Ok(Slot {
                    verifier: self,
                    memory,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(AuthError::Busy);
            }
            free = self
                .returned
                .wait_timeout(free, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether `user` has `pass` in the file at `path`. Waits for a free
    /// slot until `deadline` (`AuthError::Busy` after it).
    pub fn verify(
        &self,
        path: &Path,
        user: &str,
        pass: &str,
        deadline: Instant,
    ) -> Result<bool, AuthError> {
        let text = fs::read_to_string(path)?;
        let stored = lines(&text)
            .filter_map(|(_, l)| l.split_once(':'))
            .find(|(u, _)| *u == user)
            .map(|(_, h)| h.to_string());
        let (hash, known) = match stored {
            Some(h) => (h, true),
            None => (DUMMY_HASH.to_string(), false),
        };
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return Ok(false);
        };
        let mut slot = self.take(deadline)?;
        let ok = argon2_matches(pass.as_bytes(), &parsed, &mut slot.memory);
        Ok(ok && known)
    }
}

fn random_salt() -> Result<SaltString, AuthError> {
    let mut bytes = [0u8; 16];
    crate::sys::random_bytes(&mut bytes).map_err(AuthError::Io)?;
    SaltString::encode_b64(&bytes).map_err(|e| AuthError::Hash(e.to_string()))
}

/// An Argon2id PHC string for `pass`, with a fresh random salt.
pub fn hash_password(pass: &str) -> Result<String, AuthError> {
    let salt = random_salt()?;
    Argon2::default()
        .hash_password(pass.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Who owns a rewritten password file, and its mode.
fn new_file_owner(
    path: &Path,
    owner: Option<crate::sys::User>,
) -> io::Result<(Option<(u32, u32)>, u32)> {
    use std::os::unix::fs::MetadataExt;
    if let Some(u) = owner {
        return Ok((Some((u.uid, u.gid)), 0o600));
    }
    match fs::metadata(path) {
        // keep the owner and group (so a file given to the server's user
        // stays readable by it) and the mode, never readable by others
        Ok(md) => Ok((Some((md.uid(), md.gid())), (md.mode() & 0o660) | 0o600)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((None, 0o600)),
        Err(e) => Err(e),
    }
}

/// Adds or replaces `user`'s entry: the file is rewritten whole through a
/// temporary file and a rename; other lines are kept as they are. The new
/// file belongs to `owner` with mode 0600 when one is given (`passwd
/// --user`, the user `serve --user` runs as); otherwise it keeps the
/// owner, group and mode of the file it replaces (0600 and ours for a new
/// file). Returns true when an entry was replaced.
pub fn set_password(
    path: &Path,
    user: &str,
    pass: &str,
    owner: Option<crate::sys::User>,
) -> Result<bool, AuthError> {
    let old = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let entry = format!("{user}:{}", hash_password(pass)?);
    let mut replaced = false;
    let mut out = String::with_capacity(old.len() + entry.len() + 1);
    for line in old.lines() {
        let is_user = line.trim().split_once(':').is_some_and(|(u, _)| u == user);
        if is_user {
            if !replaced {
                out.push_str(&entry);
                out.push('\n');
            }
            replaced = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&entry);
        out.push('\n');
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "passwd".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let (ids, mode) = new_file_owner(path, owner)?;
    let result = (|| -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // an existing tmp file keeps its old mode: force it (before any
        // chown, which may give the file away)
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\0user\0pass"] {
            let e = encode_base64(s);
            assert_eq!(decode_base64(&e).as_deref(), Some(s), "{e}");
        }
        assert_eq!(encode_base64(b"Username:"), "VXNlcm5hbWU6");
        assert_eq!(decode_base64("AHVAAHA="), Some(b"\0u@\0p".to_vec()));
        for bad in ["A", "AB=C", "====", "AB==AB==", "a b=", "AA*A"] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_messages() {
        assert_eq!(
            parse_plain(b"\0alice\0secret"),
            Some(("alice".into(), "secret".into()))
        );
        assert_eq!(
            parse_plain(b"alice\0alice\0secret"),
            Some(("alice".into(), "secret".into()))
        );
        assert_eq!(parse_plain(b"bob\0alice\0secret"), None, "proxy login");
        assert_eq!(parse_plain(b"\0\0secret"), None);
        assert_eq!(parse_plain(b"alice\0secret"), None);
        assert_eq!(parse_plain(b"\0a\0b\0c"), None);
    }

    #[test]
    fn users() {
        assert!(valid_user("alice@example.org"));
        for bad in ["", "a:b", "a b", "a\nb"] {
            assert!(!valid_user(bad), "{bad:?}");
        }
    }

    #[test]
    fn file_set_verify_replace() {
        let dir = std::env::temp_dir().join(format!("smtp-relay-auth-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let path = dir.join("passwd");
        let _ = fs::remove_file(&path);
        assert!(!set_password(&path, "alice", "one", None).unwrap());
        assert!(!set_password(&path, "bob", "two", None).unwrap());
        let v = Verifier::new(1);
        let soon = || Instant::now() + std::time::Duration::from_secs(60);
        let verify = |p: &Path, u: &str, w: &str| v.verify(p, u, w, soon());
        assert!(verify(&path, "alice", "one").unwrap());
        assert!(!verify(&path, "alice", "two").unwrap());
        assert!(!verify(&path, "carol", "one").unwrap());
        assert!(set_password(&path, "alice", "three", None).unwrap());
        assert!(verify(&path, "alice", "three").unwrap());
        assert!(verify(&path, "bob", "two").unwrap());
        assert_eq!(check_file(&path).unwrap(), 2);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // a rewrite keeps the mode, except for others' bits
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(set_password(&path, "bob", "four", None).unwrap());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        fs::write(&path, "alice\n").unwrap();
        assert!(check_file(&path).is_err());
        // a hash asking for more memory than a slot may have (1 GiB)
        let greedy = "a:$argon2id$v=19$m=1048576,t=2,p=1$qK2XBAezExLr19c+1hzAAQ$qYLJCUF6RMAswkn0QlPYhQAhxgLbMasg5DtLyD+1rTI\n";
        fs::write(&path, greedy).unwrap();
        assert!(check_file(&path).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_dummy_hash_is_checked_in_slot_memory_that_is_kept() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        let mut memory = Vec::new();
        assert!(argon2_matches(b"no such user", &parsed, &mut memory));
        assert_eq!(memory.len(), 19456, "19 MiB in 1 KiB blocks");
        let at = memory.as_ptr();
        assert!(!argon2_matches(b"guess", &parsed, &mut memory));
        assert_eq!(memory.as_ptr(), at, "the same memory, not a new block");
    }

    #[test]
    fn a_check_waits_for_a_slot_until_its_deadline() {
        let dir = std::env::temp_dir().join(format!("smtp-relay-slots-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let path = dir.join("passwd");
        fs::write(&path, format!("dummy:{DUMMY_HASH}\n")).unwrap();
        let v = Verifier::new(1);
        assert_eq!(v.slots(), 1);
        let held = v.take(Instant::now()).unwrap();
        let start = Instant::now();
        let wait = std::time::Duration::from_millis(200);
        let r = v.verify(&path, "dummy", "no such user", start + wait);
        assert!(matches!(r, Err(AuthError::Busy)), "{r:?}");
        assert!(start.elapsed() >= wait);
        // a slot given back wakes a waiting check
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                v.verify(
                    &path,
                    "dummy",
                    "no such user",
                    Instant::now() + std::time::Duration::from_secs(60),
                )
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(held);
            assert!(waiter.join().unwrap().unwrap());
        });
        let _ = fs::remove_dir_all(&dir);
    }
}
