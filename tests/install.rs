//! README "Install", run as written: the shell block is run whole, in a
//! mount namespace of its own (`unshare --mount`, util-linux) where
//! `/usr/local`, `/usr/sbin`, `/etc` and `/var` are overlays on the real
//! ones, so what it installs, the user it adds and the files it writes
//! land in the overlays' upper folders in a temporary folder, and the
//! machine is untouched. `useradd`, `install`, `ln` and `cargo` are the
//! real ones; only `systemctl` is a stand-in (there is no systemd to talk
//! to): it records what it was asked and, for `enable --now`, checks the
//! unit with `systemd-analyze verify` (its ExecStart binary and its man
//! page must exist). Then the test checks each file's place, mode and
//! owner, and runs the installed binary's `check-config` on the installed
//! config in the same namespace.
//!
//! Root only (it mounts and adds a user): skipped with a reason when not
//! root, a failure in CI. The block's `cargo build --release` uses this
//! checkout's `target/`: one release build in CI (a few minutes), none
//! when it is up to date.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

/// The folders the block writes under, each an overlay in the namespace.
const OVERLAID: [&str; 4] = ["/usr/local", "/usr/sbin", "/etc", "/var"];

/// The `systemctl` stand-in: records its arguments in `$SYSTEMCTL_LOG`,
/// accepts what the README asks (`daemon-reload`, `enable --now
/// smtp-relay`), and verifies the unit before enabling it.
const SYSTEMCTL: &str = r#"#!/bin/sh
# stand-in for systemctl in tests/install.rs (no systemd in the namespace)
echo "$*" >> "$SYSTEMCTL_LOG"
case "$*" in
daemon-reload) ;;
"enable --now smtp-relay")
    unit=/etc/systemd/system/smtp-relay.service
    [ -f "$unit" ] || { echo "systemctl stand-in: no $unit" >&2; exit 1; }
    if command -v systemd-analyze >/dev/null 2>&1; then
        systemd-analyze verify "$unit" || exit 1
        echo verified >> "$SYSTEMCTL_LOG"
    fi ;;
*) echo "systemctl stand-in: not expected: $*" >&2; exit 1 ;;
esac
"#;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Mode bits and owner uid/gid of `path` (not following a link).
fn stat(path: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

/// The `/etc/passwd` line of `user` in the namespace's `/etc` (its
/// overlay's upper folder, where useradd wrote it).
fn passwd_entry(etc: &Path, user: &str) -> Vec<String> {
    let text = fs::read_to_string(etc.join("passwd")).expect("useradd wrote /etc/passwd");
    text.lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap_or_else(|| panic!("no {user} in the namespace's /etc/passwd:\n{text}"))
        .split(':')
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_install_block_runs_as_written() {
    let test = "readme_install_block_runs_as_written";
    if !is_root() {
        assert!(!in_ci(), "{test}: CI must run as root");
        eprintln!("SKIPPED {test}: not root (it mounts overlays and adds a user)");
        return;
    }
    let unshare = require_tool("unshare", test).expect("unshare (util-linux)");
    // outside CI these two may be missing: then their checks are skipped
    let verify = require_tool("systemd-analyze", test).is_some();
    let have_man = require_tool("man", test).is_some();
    let block = readme_block("## Install", "sh");
    let dir = TempDir::new("install");
    let standins = dir.path().join("standins");
    fs::create_dir_all(&standins).unwrap();
    fs::write(standins.join("systemctl"), SYSTEMCTL).unwrap();
    fs::set_permissions(
        standins.join("systemctl"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let log = dir.path().join("systemctl.log");
    let before = host();

    let mut script = String::from("set -eu\n");
    for (i, lower) in OVERLAID.iter().enumerate() {
        let (up, work) = (
            dir.path().join(format!("up{i}")),
            dir.path().join(format!("work{i}")),
        );
        fs::create_dir_all(&up).unwrap();
        fs::create_dir_all(&work).unwrap();
        script.push_str(&format!(
            "mount -t overlay overlay -o lowerdir={lower},upperdir={},workdir={} {lower}\n",
            up.display(),
            work.display()
        ));
    }
    // the block, as written, from the checkout's root
    script.push_str(&format!("cd {}\n", env!("CARGO_MANIFEST_DIR")));
    script.push_str(&block);
    // then, still in the namespace: the installed binary on the installed
    // config, and its man page as man reads it
    script.push_str(
        "echo '--- after the block'\n\
         /usr/local/bin/smtp-relay check-config --config /etc/smtp-relay.conf\n\
         if command -v man >/dev/null; then\n\
           man -l /usr/local/share/man/man8/smtp-relay.8 2>&1 | grep -c . | sed 's/^/man lines: /'\n\
         fi\n",
    );
    // no cargo build output into target/ of another folder, and this
    // test's own binary not first on PATH: the block's `smtp-relay` must
    // be the one it installed
    let cargo_dir = Path::new(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{cargo_dir}",
        standins.display()
    );
    let out = Command::new(unshare)
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("PATH", &path)
        .env("SYSTEMCTL_LOG", &log)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let show = format!("script:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "the Install block failed:\n{show}");

    let up = |lower: &str| {
        let i = OVERLAID.iter().position(|l| *l == lower).expect("overlaid");
        dir.path().join(format!("up{i}"))
    };
    let (local, sbin, etc, var) = (up("/usr/local"), up("/usr/sbin"), up("/etc"), up("/var"));

    // the binary: the release build, 0755 root
    let bin = local.join("bin/smtp-relay");
    assert_eq!(stat(&bin), (0o755, 0, 0), "{}", bin.display());
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/smtp-relay");
    assert!(
        fs::read(&bin).unwrap() == fs::read(&built).unwrap(),
        "the installed binary is the release build"
    );
    // sendmail is a link to it
    assert_eq!(
        fs::read_link(sbin.join("sendmail")).expect("/usr/sbin/sendmail is a link"),
        Path::new("/usr/local/bin/smtp-relay")
    );

    // the user: a system account, no home made, no login shell
    let user = passwd_entry(&etc, "smtp-relay");
    let (uid, gid): (u32, u32) = (user[2].parse().unwrap(), user[3].parse().unwrap());
    assert!(uid > 0 && uid < 1000, "a system uid: {user:?}");
    assert_eq!(user[6], "/usr/sbin/nologin", "{user:?}");
    assert!(!Path::new(&user[5]).exists(), "no home created: {user:?}");
    assert!(
        fs::read_to_string(etc.join("group"))
            .unwrap()
            .lines()
            .any(|l| l.starts_with(&format!("smtp-relay:x:{gid}:"))),
        "its group"
    );

    // the spool: 0711, the user's
    assert_eq!(stat(&var.join("spool/smtp-relay")), (0o711, uid, gid));
    // the config, the unit (the one in scripts/), the man page (the
    // same text as --help's table gives)
    let conf = etc.join("smtp-relay.conf");
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        "listen = 0.0.0.0:25\nspool = /var/spool/smtp-relay\n"
    );
    assert_eq!(stat(&conf).1, 0, "root's");
    let unit = etc.join("systemd/system/smtp-relay.service");
    assert_eq!(stat(&unit), (0o644, 0, 0));
    assert_eq!(
        fs::read(&unit).unwrap(),
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/smtp-relay.service")).unwrap()
    );
    let man = local.join("share/man/man8/smtp-relay.8");
    let page = fs::read_to_string(&man).unwrap();
    let expected = Command::new(BIN).arg("--man").output().expect("--man");
    assert_eq!(page.as_bytes(), &expected.stdout[..], "the man page");
    assert!(
        page.starts_with(".TH") || page.contains("\n.TH "),
        "roff: {page:.200}"
    );

    // systemctl was asked what the README says, in order, and the unit
    // verified (its binary and man page in place) where systemd-analyze is
    let asked = fs::read_to_string(&log).unwrap_or_default();
    let mut want = vec!["daemon-reload", "enable --now smtp-relay"];
    if verify {
        want.push("verified");
    }
    assert_eq!(asked.lines().collect::<Vec<_>>(), want, "{show}");

    // the installed binary accepts the installed config
    let after = stdout.split("--- after the block\n").nth(1).unwrap_or("");
    assert!(after.starts_with("/etc/smtp-relay.conf: OK\n"), "{show}");
    let man_lines: usize = after
        .lines()
        .find_map(|l| l.strip_prefix("man lines: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(!have_man || man_lines > 20, "man renders the page: {show}");

    // the machine itself is as it was
    assert_eq!(host(), before, "the host's files changed");
}

/// What the block would change on the host, as it is now.
fn host() -> Vec<String> {
    [
        "/usr/local/bin/smtp-relay",
        "/usr/sbin/sendmail",
        "/etc/smtp-relay.conf",
        "/etc/systemd/system/smtp-relay.service",
        "/var/spool/smtp-relay",
    ]
    .iter()
    .map(|p| match fs::symlink_metadata(p) {
        Ok(m) => format!("{p} {:o} {} {:?}", m.mode(), m.len(), fs::read_link(p).ok()),
        Err(_) => format!("{p} absent"),
    })
    .chain(std::iter::once(format!(
        "smtp-relay user: {}",
        fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("smtp-relay:"))
    )))
    .collect()
}
