//! The on-disk policy cache (RFC 8461 §5.1): one file per policy domain
//! under `SPOOL/mta-sts/`, so a restart keeps what was fetched (a policy
//! whose host is down is still applied until `max_age` runs out).
//!
//! A file is `smtp-relay-mta-sts: 1`, `id:`, `fetched:` (Unix seconds),
//! a blank line, then the policy text as served. Written to a temporary
//! name, synced and renamed over the old one: a crash leaves the old
//! policy or the new one, never half of one. A file that does not parse
//! is treated as absent (and replaced at the next fetch).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::policy::Policy;

const MAGIC: &str = "smtp-relay-mta-sts: 1";

/// A policy as cached: its TXT id, when it was fetched, the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub id: String,
    pub fetched: u64,
    pub policy: Policy,
    pub text: String,
}

impl Cached {
    /// §5.1: usable until `fetched + max_age`.
    pub fn fresh(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.policy.max_age)
    }
}

#[derive(Debug)]
pub struct PolicyCache {
    dir: PathBuf,
    /// `smtp-relay route` reads the cache and never writes it (it may
    /// run as another user than the server, and sends nothing).
    read_only: bool,
}

impl PolicyCache {
    /// The cache in `dir` (made at the first store).
    pub fn new(dir: &Path, read_only: bool) -> PolicyCache {
        PolicyCache {
            dir: dir.to_path_buf(),
            read_only,
        }
    }

    /// The file for `domain`; `None` for a name that is not plain LDH
    /// text (it is never cached rather than turned into a path).
    fn file(&self, domain: &str) -> Option<PathBuf> {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        let plain = !d.is_empty()
            && !d.starts_with('.')
            && d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        plain.then(|| self.dir.join(d))
    }

    pub fn load(&self, domain: &str) -> Option<Cached> {
        let text = fs::read_to_string(self.file(domain)?).ok()?;
        let (head, policy_text) = text.split_once("\n\n")?;
        let mut lines = head.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut id = None;
        let mut fetched = None;
        for l in lines {
            match l.split_once(": ") {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("fetched", v)) => fetched = v.parse().ok(),
                _ => {}
            }
        }
        Some(Cached {
            id: id?,
            fetched: fetched?,
            policy: Policy::parse(policy_text).ok()?,
            text: policy_text.to_string(),
        })
    }

    pub fn store(&self, domain: &str, c: &Cached) -> std::io::Result<()> {
        let Some(path) = self.file(domain).filter(|_| !self.read_only) else {
            return Ok(());
        };
        fs::create_dir_all(&self.dir)?;
        // unique per process and call: two delivery threads may store
        // the same domain's policy at once
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        write!(
            f,
            "{MAGIC}\nid: {}\nfetched: {}\n\n{}",
            c.id, c.fetched, c.text
        )?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        // the rename itself survives a crash once the directory is synced
        fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_load() {
        let dir = std::env::temp_dir().join(format!("mta-sts-cache-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let cache = PolicyCache::new(&dir, false);
        let text = "version: STSv1\nmode: testing\nmx: *.example.org\nmax_age: 100\n";
        let c = Cached {
            id: "abc1".into(),
            fetched: 1000,
            policy: Policy::parse(text).unwrap(),
            text: text.into(),
        };
        cache.store("Example.ORG.", &c).unwrap();
        assert_eq!(cache.load("example.org"), Some(c.clone()));
        assert!(c.fresh(1099) && !c.fresh(1100));
        assert_eq!(cache.load("other.example"), None);
        // a name that is not a plain domain is never a path
        for bad in ["../x", "..", "a/b", ""] {
            assert!(cache.file(bad).is_none(), "{bad:?}");
        }
        fs::write(dir.join("broken.example"), "junk").unwrap();
        assert_eq!(cache.load("broken.example"), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
