//! The secrets file: SMTP AUTH credentials for next hops (smarthosts),
//! read once at start, never taken from the command line.
//!
//! The format follows Postfix's `smtp_sasl_password_maps` (sasl_passwd),
//! one entry a line:
//!
//! ```text
//! # KEY                        USER:PASSWORD
//! [smtp.provider.example]:587  relay-user:s3cret with spaces
//! smtp.provider.example        relay-user:s3cret
//! @shop.example                shop@provider.example:other-secret
//! ```
//!
//! A route picks its line with `auth = REF` ([`Secrets::resolve`]): the
//! line whose KEY is REF, else the first whose user is REF. KEY is free
//! text for people (a host, a route), unique in the file, except that a
//! KEY with an `@` is a sender key, `LOCAL@DOMAIN` or `@DOMAIN`, checked
//! at start: a route with `sender-auth = yes` looks the message's
//! envelope sender up by these ([`Secrets::for_sender`]). The
//! user name ends at the first `:`; the password is the rest of the line
//! (inner spaces kept, the line's trailing white space dropped). `#`
//! starts a comment only at the start of a line, so a password may
//! contain it.
//!
//! The file must be owned by the reading user (or root) and readable by
//! its owner only (mode 0600 or 0400): a password file others can read
//! is refused at start (exit 78, `EX_CONFIG`), as ssh refuses a readable
//! private key. The password travels in a [`Secret`], whose `Debug` and
//! `Display` print `***`, so no log line, `queue show` or `route` output
//! can show it by accident.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A password: printed as `***` by `Debug` and `Display`; only
/// [`Secret::expose`] gives the text, for the AUTH exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The password itself: for the SASL response only, never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A user name and its password (RFC 4616 authcid and passwd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
}

/// Why the secrets file cannot be used; the program exits with
/// `EX_CONFIG` (78) on any of these.
#[derive(Debug)]
pub enum SecretsError {
    Io(PathBuf, std::io::Error),
    /// Group- or world-accessible, or owned by someone else.
    Unsafe(PathBuf, String),
    /// A line that is not `KEY USER:PASSWORD` (1-based line number).
    Syntax(PathBuf, usize, String),
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretsError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            SecretsError::Unsafe(p, why) => write!(f, "{}: {why}", p.display()),
            SecretsError::Syntax(p, n, why) => write!(f, "{}:{n}: {why}", p.display()),
        }
    }
}

impl std::error::Error for SecretsError {}

/// The entries of a secrets file, in file order (the first match wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    entries: Vec<(String, Credentials)>,
}

/// Larger than any real credentials table; a bound on what is read.
const MAX_FILE: u64 = 1024 * 1024;

impl Secrets {
    /// Reads and checks the file. The ownership and mode are checked on
    /// the opened file (fstat), so a rename between check and read cannot
    /// slip another file in.
    pub fn load(path: &Path) -> Result<Secrets, SecretsError> {
        let io = |e| SecretsError::Io(path.to_path_buf(), e);
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        check_owner_and_mode(meta.uid(), meta.mode(), euid)
            .map_err(|why| SecretsError::Unsafe(path.to_path_buf(), why))?;
        if !meta.is_file() {
            return Err(SecretsError::Unsafe(
                path.to_path_buf(),
                "not a regular file".into(),
            ));
        }
        let mut text = String::new();
        file.take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_FILE {
            return Err(SecretsError::Syntax(
                path.to_path_buf(),
                0,
                format!("larger than {MAX_FILE} octets"),
            ));
        }
        Secrets::parse(&text).map_err(|(n, why)| SecretsError::Syntax(path.to_path_buf(), n, why))
    }

    /// Parses the text of a secrets file; `Err((line, why))`. The error
    /// never quotes a line (it may hold a password).
    pub fn parse(text: &str) -> Result<Secrets, (usize, String)> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end();
            let content = line.trim_start();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let Some((key, rest)) = content.split_once([' ', '\t']) else {
                return Err((n, "expected KEY USER:PASSWORD, found one word".into()));
            };
            let rest = rest.trim_start();
            let Some((user, password)) = rest.split_once(':') else {
                return Err((n, "expected USER:PASSWORD after the key (no ':')".into()));
            };
            if user.is_empty() || user.contains(char::is_whitespace) {
                return Err((n, "the user name is empty or contains white space".into()));
            }
            if password.is_empty() {
                return Err((n, format!("empty password for user {user}")));
            }
            check_sender_key(key).map_err(|why| (n, why))?;
            if entries
                .iter()
                .any(|(k, _): &(String, Credentials)| k.eq_ignore_ascii_case(key))
            {
                return Err((n, format!("key {key} is given twice")));
            }
            entries.push((
                key.to_string(),
                Credentials {
                    user: user.to_string(),
                    password: Secret::new(password),
                },
            ));
        }
        Ok(Secrets { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for KEY (case-insensitive: host names and domains are).
    pub fn lookup(&self, key: &str) -> Option<&Credentials> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, c)| c)
    }

    /// The first entry for user name USER (a route's `auth = USER`).
    pub fn by_user(&self, user: &str) -> Option<&Credentials> {
        self.entries
            .iter()
            .find(|(_, c)| c.user == user)
            .map(|(_, c)| c)
    }

    /// The credentials for a message from `sender` on a route with
    /// `sender-auth = yes` (Postfix's smtp_sender_dependent_authentication):
    /// the line whose key is the full address, else `@DOMAIN`, else the
    /// route's `auth = REF` (`fallback`). The null sender `<>` (DSNs) has
    /// no address to look up and takes the fallback. Keys only, never
    /// user names: a provider user that happens to be an address must
    /// not be picked for a sender of that name by accident.
    pub fn for_sender(&self, sender: Option<&str>, fallback: Option<&str>) -> Option<&Credentials> {
        let by_address = sender.and_then(|a| {
            let domain = a.rsplit_once('@').map(|(_, d)| d)?;
            self.lookup(a)
                .or_else(|| self.lookup(&format!("@{domain}")))
        });
        by_address.or_else(|| fallback.and_then(|f| self.resolve(f)))
    }

    /// What a route's `auth = REF` names: the entry whose key is REF,
    /// else the first whose user is REF.
    pub fn resolve(&self, reference: &str) -> Option<&Credentials> {
        self.lookup(reference).or_else(|| self.by_user(reference))
    }
}

/// A key with an `@` is a sender key: `LOCAL@DOMAIN` or `@DOMAIN` with a
/// valid domain; anything else (`billing@`, `@`, `a@b@c`) would never
/// match a sender and is refused at start rather than silently unused.
fn check_sender_key(key: &str) -> Result<(), String> {
    let Some((local, domain)) = key.rsplit_once('@') else {
        return Ok(());
    };
    if local.contains('@') || crate::smtp::Domain::parse(domain, true).is_err() {
        return Err(format!(
            "sender key {key} is not ADDRESS or @DOMAIN (a valid domain after the '@')"
        ));
    }
    Ok(())
}

/// The rule of [`Secrets::load`]: owned by us or root, no group or other
/// permission bits at all.
fn check_owner_and_mode(uid: u32, mode: u32, euid: u32) -> Result<(), String> {
    if uid != euid && uid != 0 {
        return Err(format!(
            "owned by uid {uid}, not by this user (uid {euid}) or root: refused"
        ));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {:04o} lets others read it: chmod 600 it (a password file must be private)",
            mode & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keys_users_and_passwords() {
        let s = Secrets::parse(
            "# comment\n\n[smtp.p.example]:587  relay-user:pa ss:word#1  \n\
             @shop.example\tshop@p.example:x\n  smtp.p.example relay-user:other\n",
        )
        .unwrap();
        let c = s.lookup("[SMTP.p.example]:587").unwrap();
        assert_eq!(c.user, "relay-user");
        assert_eq!(c.password.expose(), "pa ss:word#1");
        assert_eq!(s.by_user("shop@p.example").unwrap().password.expose(), "x");
        // resolve: a key first, then the first line of that user
        assert_eq!(
            s.resolve("smtp.p.example").unwrap().password.expose(),
            "other"
        );
        assert_eq!(
            s.resolve("relay-user").unwrap().password.expose(),
            "pa ss:word#1"
        );
        assert_eq!(s.resolve("@shop.example").unwrap().user, "shop@p.example");
        assert!(s.resolve("nobody").is_none());
    }

    #[test]
    fn bad_lines_name_the_line_not_the_secret() {
        for (text, line) in [
            ("a b:c\nlonely\n", 2),
            ("k user-without-colon\n", 1),
            ("k :pw\n", 1),
            ("k user:\n", 1),
            ("k u:p\nK u:q\n", 2),
        ] {
            let (n, why) = Secrets::parse(text).unwrap_err();
            assert_eq!(n, line, "{text:?}: {why}");
            assert!(!why.contains("pw") && !why.contains(":q"), "{why}");
        }
    }

    #[test]
    fn sender_keys_address_then_domain_then_fallback() {
        let s = Secrets::parse(
            "[smtp.p.example]:587 relay:r\nbilling@shop.example billing-user:b\n\
             @shop.example shop-user:s\n@other.example other-user:o\n",
        )
        .unwrap();
        let user = |sender, fallback| s.for_sender(sender, fallback).map(|c| c.user.as_str());
        let fb = Some("[smtp.p.example]:587");
        assert_eq!(user(Some("billing@shop.example"), fb), Some("billing-user"));
        assert_eq!(user(Some("Billing@SHOP.example"), fb), Some("billing-user"));
        assert_eq!(user(Some("info@shop.example"), fb), Some("shop-user"));
        assert_eq!(user(Some("x@other.example"), None), Some("other-user"));
        assert_eq!(user(Some("x@elsewhere.example"), fb), Some("relay"));
        assert_eq!(user(Some("x@elsewhere.example"), None), None);
        // the null sender takes the fallback
        assert_eq!(user(None, fb), Some("relay"));
        assert_eq!(user(None, None), None);
        // keys only: a user name that is the sender's address does not match
        assert_eq!(user(Some("shop-user@x.example"), None), None);
        let s = Secrets::parse("h billing@shop.example:p\n").unwrap();
        assert!(s.for_sender(Some("billing@shop.example"), None).is_none());
    }

    #[test]
    fn bad_sender_keys_are_refused() {
        for key in ["billing@", "@", "a@b@shop.example", "@bad..example", "x@-x"] {
            let (n, why) = Secrets::parse(&format!("ok u:p\n{key} u:secretpw\n")).unwrap_err();
            assert_eq!(n, 2, "{key}: {why}");
            assert!(
                why.contains("sender key") && !why.contains("secretpw"),
                "{why}"
            );
        }
        assert!(Secrets::parse("@shop.example u:p\nme@shop.example v:q\n").is_ok());
    }

    #[test]
    fn secret_never_prints() {
        let c = Credentials {
            user: "u".into(),
            password: Secret::new("hunter2"),
        };
        let shown = format!(
            "{c:?} {} {:?}",
            c.password,
            Secrets::parse("k u:hunter2").unwrap()
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn owner_and_mode_rule() {
        assert!(check_owner_and_mode(1000, 0o100600, 1000).is_ok());
        assert!(check_owner_and_mode(0, 0o100400, 1000).is_ok());
        assert!(check_owner_and_mode(1000, 0o100640, 1000).is_err());
        assert!(check_owner_and_mode(1000, 0o100604, 1000).is_err());
        assert!(check_owner_and_mode(1001, 0o100600, 1000).is_err());
    }

    #[test]
    fn load_refuses_a_readable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("secrets-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("secrets");
        std::fs::write(&p, "h u:p\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Secrets::load(&p).unwrap_err();
        assert!(matches!(e, SecretsError::Unsafe(..)), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Secrets::load(&p).unwrap().lookup("h").unwrap().user, "u");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
