//! The binary as `sendmail` (issue 15): real programs that call it
//! (bsd-mailx, s-nail, git send-email, Debian cron's command line, a PHP-style `-t -i`
//! pipe), as root and as `nobody`, whose mail goes through `maildrop/`;
//! hostile maildrop files; a crash between a pick-up's commit and the
//! drop's removal.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{in_ci, nobody, wait_until, Relay, Sink, TempDir, BIN};

/// A spool served by a receive-only relay, a config file naming it, and
/// a `bin/` with `sendmail` and `mailq` links to the binary.
struct Setup {
    base: TempDir,
    relay: Relay,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_env(&[])
    }

    fn with_env(env: &[(&str, &str)]) -> Setup {
        Setup::with_args(&["--delivery-workers", "0"], env)
    }

    fn with_args(args: &[&str], env: &[(&str, &str)]) -> Setup {
        let base = TempDir::new("sendmail");
        // nobody must get through to the config file and the links
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let relay = Relay::start_env(args, env);
        Setup::finish(base, relay)
    }

    fn finish(base: TempDir, relay: Relay) -> Setup {
        let spool = relay.spool().to_path_buf();
        fs::write(
            base.path().join("conf"),
            format!(
                "spool = {}\nhostname = relay.test\nlisten = {}\n",
                spool.display(),
                relay.addr()
            ),
        )
        .unwrap();
        let bin = base.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        for name in ["sendmail", "mailq", "newaliases"] {
            let _ = std::os::unix::fs::symlink(BIN, bin.join(name));
        }
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        Setup { base, relay }
    }

    fn conf(&self) -> PathBuf {
        self.base.path().join("conf")
    }

    fn sendmail(&self) -> PathBuf {
        self.base.path().join("bin/sendmail")
    }

    fn queue(&self) -> PathBuf {
        self.relay.spool().join("queue")
    }

    /// Runs `prog args` (as `nobody` when `as_nobody`) with `input` on
    /// stdin and our config; its exit code and stderr.
    fn run(&self, as_nobody: bool, prog: &Path, args: &[&str], input: &str) -> (i32, String) {
        let (code, _, err) = self.run_out(as_nobody, prog, args, input);
        (code, err)
    }

    /// `run`, with stdout too.
    fn run_out(
        &self,
        as_nobody: bool,
        prog: &Path,
        args: &[&str],
        input: &str,
    ) -> (i32, String, String) {
        let mut cmd = if as_nobody {
            let (uid, gid) = nobody().expect("nobody exists");
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ]);
            c.arg(prog);
            c
        } else {
            Command::new(prog)
        };
        cmd.args(args)
            .env("SMTP_RELAY_CONFIG", self.conf())
            .env("HOME", self.base.path())
            .env("MAILRC", self.base.path().join("mailrc"))
            // git send-email wants an identity, and no repository around it
            .env("GIT_AUTHOR_NAME", "Dev")
            .env("GIT_AUTHOR_EMAIL", "dev@site.example")
            .env("GIT_COMMITTER_NAME", "Dev")
            .env("GIT_COMMITTER_EMAIL", "dev@site.example")
            .current_dir(self.base.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let mut status = None;
        wait_until(Duration::from_secs(30), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The queued message whose text contains `needle`, with its envelope
    /// (waits for the server's pick-up, bounded).
    fn queued(&self, needle: &str) -> (String, String) {
        let mut found = None;
        // a pick-up commits held, then releases: wait for the release
        wait_until(Duration::from_secs(15), || {
            found = self.find(needle);
            found
                .as_ref()
                .is_some_and(|(_, env)| !env.contains("hold:"))
        });
        found.unwrap_or_else(|| {
            panic!(
                "no queued message with {needle:?}; log:\n{}",
                self.relay.log()
            )
        })
    }

    fn find(&self, needle: &str) -> Option<(String, String)> {
        for e in fs::read_dir(self.queue()).ok()?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "env") {
                let msg = fs::read_to_string(p.with_extension("msg")).ok()?;
                if msg.contains(needle) {
                    return Some((msg, fs::read_to_string(&p).ok()?));
                }
            }
        }
        None
    }

    fn count(&self) -> usize {
        fs::read_dir(self.queue())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "env"))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Checks the fix-ups and who submitted.
fn check(msg: &str, env: &str, from: &str, uid: Option<u32>) {
    assert!(msg.contains(&format!("\r\nFrom: {from}\r\n")), "{msg}");
    assert!(msg.contains("\r\nDate: "), "{msg}");
    assert!(msg.contains("\r\nMessage-ID: <"), "{msg}");
    match uid {
        Some(u) => {
            assert!(
                msg.starts_with(&format!("Received: from local (uid {u}) by relay.test")),
                "{msg}"
            );
            assert!(
                env.contains(&format!("client: local uid={u} user=")),
                "{env}"
            );
            assert!(env.contains(" via=maildrop maildrop="), "{env}");
            assert!(!env.contains("hold:"), "released: {env}");
        }
        // root: straight into the queue, by the sendmail command line
        None => assert!(
            env.contains("client: local uid=0 user=root via=sendmail\n"),
            "{env}"
        ),
    }
}

/// The users to try: root, and nobody when we can become it.
fn users() -> Vec<bool> {
    if is_root() {
        vec![false, true]
    } else {
        eprintln!("not root: the nobody half is skipped");
        vec![false]
    }
}

#[test]
fn cron_line_and_a_pipe_as_root_and_as_nobody() {
    let s = Setup::new();
    let nobody_uid = nobody().map(|n| n.0);
    for as_nobody in users() {
        let (who, uid) = if as_nobody {
            ("nobody", nobody_uid)
        } else {
            (if is_root() { "root" } else { "" }, None)
        };
        let login = if who.is_empty() {
            String::new()
        } else {
            who.to_string()
        };
        // Debian cron: sendmail -FCronDaemon -i -B8BITMIME -oem USER
        let tag = format!("cron-{as_nobody}");
        let (code, err) = s.run(
            as_nobody,
            &s.sendmail(),
            &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
            &format!("Subject: {tag}\n\noutput of the job\n.\nmore\n"),
        );
        assert_eq!(code, 0, "{err}");
        let (msg, env) = s.queued(&tag);
        if !login.is_empty() {
            check(
                &msg,
                &env,
                &format!("\"CronDaemon\" <{login}@relay.test>"),
                uid,
            );
            assert!(
                env.contains(&format!("from: <{login}@relay.test>")),
                "{env}"
            );
        }
        assert!(env.contains("<root@relay.test>"), "qualified: {env}");
        // -i: a lone dot is data
        assert!(
            msg.ends_with("output of the job\r\n.\r\nmore\r\n"),
            "{msg:?}"
        );

        // PHP's mail(): sendmail -t -i, recipients from the header
        let tag = format!("php-{as_nobody}");
        let (code, err) = s.run(
            as_nobody,
            &s.sendmail(),
            &["-t", "-i", "-f", "web@site.example"],
            &format!(
                "To: Someone <to@dest.example>\nBcc: hidden@dest.example\nSubject: {tag}\n\nhi\n"
            ),
        );
        assert_eq!(code, 0, "{err}");
        let (msg, env) = s.queued(&tag);
        assert!(env.contains("from: <web@site.example>"), "{env}");
        assert!(env.contains("<to@dest.example>") && env.contains("<hidden@dest.example>"));
        assert!(!msg.contains("hidden@"), "Bcc removed: {msg}");
        if !login.is_empty() {
            check(&msg, &env, &format!("{login}@relay.test"), uid);
        }

        // without -i a lone dot ends the message, the rest is not read
        let tag = format!("dot-{as_nobody}");
        let (code, err) = s.run(
            as_nobody,
            &s.sendmail(),
            &["x@dest.example"],
            &format!("Subject: {tag}\n\nbefore\n.\nafter\n"),
        );
        assert_eq!(code, 0, "{err}");
        let (msg, _) = s.queued(&tag);
        assert!(msg.ends_with("before\r\n"), "{msg:?}");
    }
    // mailq (and -bp) list the queue; newaliases has nothing to do
    let mailq = s.base.path().join("bin/mailq");
    let (code, _) = s.run(false, &mailq, &[], "");
    assert_eq!(code, 0);
    let (code, err) = s.run(false, &s.base.path().join("bin/newaliases"), &[], "");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to do"), "{err}");
    // an option sendmail has and we do not: a clear usage error
    let (code, err) = s.run(false, &s.sendmail(), &["-bd"], "");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("-bd"), "{err}");
}

#[test]
fn mailq_lists_what_sendmail_queued() {
    let s = Setup::new();
    let (code, err) = s.run(
        false,
        &s.sendmail(),
        &["-i", "list@dest.example"],
        "Subject: q\n\nx\n",
    );
    assert_eq!(code, 0, "{err}");
    let out = Command::new(s.base.path().join("bin/mailq"))
        .env("SMTP_RELAY_CONFIG", s.conf())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("list@dest.example"), "{text}");
    let out = Command::new(BIN)
        .args(["sendmail", "-bp"])
        .env("SMTP_RELAY_CONFIG", s.conf())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("list@dest.example"));
}

/// A tool from Debian's packages, or a skip (a failure in CI).
fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!in_ci(), "{tool} missing in CI (scripts/ci-deps.sh)");
        eprintln!("{tool} not installed: skipped");
    }
    ok
}

#[test]
fn bsd_mailx_and_s_nail_as_root_and_as_nobody() {
    let s = Setup::new();
    // bsd-mailx reads its `sendmail` variable from $MAILRC
    fs::write(
        s.base.path().join("mailrc"),
        format!("set sendmail={}\n", s.sendmail().display()),
    )
    .unwrap();
    let nobody_uid = nobody().map(|n| n.0);
    for as_nobody in users() {
        let uid = as_nobody.then_some(nobody_uid).flatten();
        let login = if as_nobody { "nobody" } else { "root" };
        if have("bsd-mailx") {
            let subject = format!("mailx-{as_nobody}");
            let (code, err) = s.run(
                as_nobody,
                Path::new("bsd-mailx"),
                &["-s", &subject, "mx@dest.example"],
                "sent with bsd-mailx\n",
            );
            assert_eq!(code, 0, "{err}");
            let (msg, env) = s.queued(&subject);
            if is_root() {
                check(&msg, &env, &format!("{login}@relay.test"), uid);
            }
            assert!(env.contains("<mx@dest.example>"), "{env}");
        }
        if have("s-nail") {
            let subject = format!("snail-{as_nobody}");
            let mta = format!("mta={}", s.sendmail().display());
            let (code, err) = s.run(
                as_nobody,
                Path::new("s-nail"),
                &["-:/", "-S", &mta, "-s", &subject, "sn@dest.example"],
                "sent with s-nail\n",
            );
            assert_eq!(code, 0, "{err}");
            let (msg, env) = s.queued(&subject);
            if is_root() {
                check(&msg, &env, &format!("{login}@relay.test"), uid);
            }
            assert!(env.contains("<sn@dest.example>"), "{env}");
        }
    }
}

/// Debian's git-email, which pipes each patch to `--sendmail-cmd`.
fn git_send_email() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/lib/git-core/git-send-email");
    if debian.exists() {
        return Some(debian);
    }
    assert!(!in_ci(), "git-email missing in CI (scripts/ci-deps.sh)");
    eprintln!("git-email not installed: skipped");
    None
}

#[test]
fn git_send_email_as_root_and_as_nobody() {
    let s = Setup::new();
    let Some(git_send_email) = git_send_email() else {
        return;
    };
    let nobody_uid = nobody().map(|n| n.0);
    for as_nobody in users() {
        let uid = as_nobody.then_some(nobody_uid).flatten();
        let subject = format!("gitsend-{as_nobody}");
        let patch = s.base.path().join(format!("{subject}.patch"));
        fs::write(
            &patch,
            format!(
                "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n\
                 From: Dev <dev@site.example>\n\
                 Date: Mon, 30 Nov 2026 04:00:00 +0000\n\
                 Subject: [PATCH] {subject}\n\n\
                 the change\n---\n a | 1 +\n"
            ),
        )
        .unwrap();
        fs::set_permissions(&patch, fs::Permissions::from_mode(0o644)).unwrap();
        let cmd = format!("--sendmail-cmd={}", s.sendmail().display());
        let patch = patch.display().to_string();
        let (code, err) = s.run(
            as_nobody,
            &git_send_email,
            &[
                &cmd,
                "--to=gs@dest.example",
                "--from=Dev <dev@site.example>",
                "--envelope-sender=dev@site.example",
                "--confirm=never",
                "--suppress-cc=all",
                "--no-validate",
                &patch,
            ],
            "",
        );
        assert_eq!(code, 0, "{err}");
        let (msg, env) = s.queued(&subject);
        assert!(env.contains("<gs@dest.example>"), "{env}");
        assert!(env.contains("from: <dev@site.example>"), "{env}");
        // git writes `Message-Id`: a field name in any case is the same
        // field (RFC 5322 §1.2.2), so none is added beside it
        let ids = msg
            .split("\r\n")
            .filter(|l| l.to_ascii_lowercase().starts_with("message-id:"))
            .count();
        assert_eq!(ids, 1, "{msg}");
        assert!(msg.contains("\r\nthe change\r\n"), "{msg}");
        if let Some(u) = uid {
            assert!(
                env.contains(&format!("client: local uid={u} user=")),
                "{env}"
            );
        }
    }
}

const NAME: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn hostile_maildrop_files_are_removed_and_harm_nothing() {
    let s = Setup::new();
    let drop = s.relay.spool().join("maildrop");
    assert!(wait_until(Duration::from_secs(10), || drop.is_dir()));
    let md = fs::metadata(&drop).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o1733);
    assert_eq!(
        fs::metadata(s.relay.spool()).unwrap().permissions().mode() & 0o777,
        0o711
    );
    // a secret a link points at: never read, never removed
    let secret = s.base.path().join("secret");
    let valid = "smtp-relay-maildrop 1\nflags -\nrcpt v@dest.example\n\nSubject: secret\n\nx\n";
    fs::write(&secret, valid).unwrap();
    std::os::unix::fs::symlink(&secret, drop.join(NAME)).unwrap();
    let hard = NAME.replace('0', "1");
    fs::hard_link(&secret, drop.join(&hard)).unwrap();
    let garbage = NAME.replace('0', "2");
    fs::write(drop.join(&garbage), "GET / HTTP/1.0\n\n").unwrap();
    let big = NAME.replace('0', "3");
    // more than twice the default --max-size
    let f = fs::File::create(drop.join(&big)).unwrap();
    f.set_len(200 * 1024 * 1024).unwrap();
    fs::write(drop.join("not-a-name"), valid).unwrap();
    let fifo = NAME.replace('0', "4");
    let c = std::ffi::CString::new(drop.join(&fifo).display().to_string()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let ok = wait_until(Duration::from_secs(15), || {
        fs::read_dir(&drop).unwrap().count() == 0
    });
    let left: Vec<_> = fs::read_dir(&drop)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(ok, "left in maildrop/: {left:?}; log:\n{}", s.relay.log());
    assert_eq!(s.count(), 0, "nothing hostile was queued");
    assert_eq!(fs::read_to_string(&secret).unwrap(), valid);
    let log = s.relay.log();
    assert!(log.contains("a symbolic link"), "{log}");
    assert!(log.contains("(links: 2)"), "{log}");
    assert!(log.contains("not a maildrop file"), "{log}");
    // the server still takes a good drop afterwards
    fs::write(drop.join(NAME.replace('0', "5")), valid).unwrap();
    let (msg, _) = s.queued("Subject: secret");
    assert!(msg.contains("From: root@relay.test") || !is_root(), "{msg}");
}

#[test]
fn a_crash_between_commit_and_the_drops_removal_queues_it_once() {
    if !is_root() {
        eprintln!("not root: needs setpriv to submit as nobody; skipped");
        return;
    }
    let s = Setup::with_env(&[("SMTP_RELAY_MAILDROP_ABORT", "1")]);
    let (code, err) = s.run(
        true,
        &s.sendmail(),
        &["-i", "once@dest.example"],
        "Subject: once\n\nx\n",
    );
    assert_eq!(code, 0, "{err}");
    // the server dies right after the commit
    let (_, env) = s.queued("Subject: once");
    assert!(
        env.contains("hold: forever"),
        "held until the drop is gone: {env}"
    );
    let mut s = s;
    assert!(
        s.relay.wait_exit(Duration::from_secs(15)).is_some(),
        "the abort fault stops the server"
    );
    let drop = s.relay.spool().join("maildrop");
    assert_eq!(
        fs::read_dir(&drop).unwrap().count(),
        1,
        "the drop is still there"
    );
    assert_eq!(
        fs::read_dir(s.relay.spool().join("pickup"))
            .unwrap()
            .count(),
        1,
        "with its marker"
    );
    // a restart without the fault: the commit is recognised
    let spool = s.relay.spool().to_path_buf();
    let base = TempDir::new("sendmail-restart");
    let relay = Relay::receive_only_with_spool(spool.clone(), &[]);
    let s2 = Setup::finish(base, relay);
    assert!(wait_until(Duration::from_secs(10), || {
        fs::read_dir(spool.join("maildrop")).is_ok_and(|d| d.count() == 0)
    }));
    // a few scans later still one message, released
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s2.count(), 1, "queued once; log:\n{}", s2.relay.log());
    let (_, env) = s2.queued("Subject: once");
    assert!(!env.contains("hold:"), "{env}");
    assert_eq!(fs::read_dir(spool.join("pickup")).unwrap().count(), 0);
}

#[test]
fn a_running_server_delivers_what_sendmail_queued_to_a_sink() {
    let sink = Sink::start();
    let route = format!("*={}", sink.addr());
    let s = Setup::with_args(&["--no-dns", "--route", &route], &[]);
    let mut n = 0;
    for as_nobody in users() {
        let (code, err) = s.run(
            as_nobody,
            &s.sendmail(),
            &["-t", "-i", "-F", "Job"],
            &format!("To: out@dest.example\nSubject: delivered-{as_nobody}\n\nx\n"),
        );
        assert_eq!(code, 0, "{err}");
        n += 1;
    }
    assert!(
        sink.wait_for(n, Duration::from_secs(20)),
        "delivered; log:\n{}",
        s.relay.log()
    );
    for m in sink.messages() {
        let text = String::from_utf8_lossy(&m.data);
        assert_eq!(m.rcpts, ["out@dest.example"]);
        assert!(text.contains("\r\nFrom: \"Job\" <"), "{text}");
        assert!(text.contains("\r\nDate: ") && text.contains("\r\nMessage-ID: <"));
        if text.contains("delivered-true") {
            assert!(text.contains("Received: from local (uid "), "{text}");
            assert_eq!(m.mail_from, "nobody@relay.test");
        }
    }
}

#[test]
fn bs_speaks_smtp_on_stdin_and_stdout() {
    let s = Setup::new();
    for as_nobody in users() {
        let subject = format!("bs-{as_nobody}");
        // LF line ends, as a program writing to a pipe does
        let input = format!(
            "EHLO me\nMAIL FROM:<a@b.example>\nRCPT TO:<c@d.example>\nDATA\nSubject: {subject}\n\nhi\n.\nQUIT\n"
        );
        let (code, out, err) = s.run_out(as_nobody, &s.sendmail(), &["-bs"], &input);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("220 "), "{out}");
        assert!(out.contains("\r\n250 2.0.0 Ok: queued as "), "{out}");
        assert!(
            out.ends_with("221 2.0.0 relay.test closing connection\r\n"),
            "{out}"
        );
        let (_, env) = s.queued(&subject);
        assert!(env.contains("<c@d.example>"), "{env}");
    }
    // no server: exit 69, said on stderr
    let dead = s.base.path().join("dead.conf");
    fs::write(&dead, "listen = 127.0.0.1:1\n").unwrap();
    let out = Command::new(s.sendmail())
        .args(["-C", &dead.display().to_string(), "-bs"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
}

#[test]
fn serve_user_takes_over_a_maildrop_made_by_root() {
    if !is_root() {
        eprintln!("not root: --user needs root; skipped");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let (uid, _) = nobody().expect("nobody exists");
    let base = TempDir::new("maildrop-user");
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let spool = base.path().join("spool");
    let mut first = Relay::receive_only_with_spool(spool.clone(), &[]);
    let drop = spool.join("maildrop");
    assert!(wait_until(Duration::from_secs(10), || drop.is_dir()));
    first.terminate();
    assert!(first.wait_exit(Duration::from_secs(20)).is_some());
    assert_eq!(fs::metadata(&drop).unwrap().uid(), 0);
    let second = Relay::receive_only_with_spool(spool.clone(), &["--user", "nobody"]);
    assert!(wait_until(Duration::from_secs(10), || {
        fs::metadata(&drop).is_ok_and(|m| m.uid() == uid && m.mode() & 0o7777 == 0o1733)
    }));
    assert!(
        !second.log().contains("submission is off"),
        "{}",
        second.log()
    );
}

#[test]
fn a_message_over_max_size_is_refused_before_the_maildrop() {
    if !is_root() {
        eprintln!("not root: needs setpriv to submit as nobody; skipped");
        return;
    }
    let s = Setup::new();
    let conf = fs::read_to_string(s.conf()).unwrap();
    fs::write(s.conf(), format!("{conf}max-size = 1000\n")).unwrap();
    let big = format!("Subject: big\n\n{}\n", "x".repeat(1500));
    let (code, err) = s.run(true, &s.sendmail(), &["-i", "big@dest.example"], &big);
    assert_eq!(code, 65, "EX_DATAERR: {err}");
    assert!(err.contains("max-size"), "{err}");
    let drop = s.relay.spool().join("maildrop");
    assert_eq!(
        fs::read_dir(&drop).unwrap().count(),
        0,
        "nothing left behind"
    );
}

/// The `ID` of our `Received: ... id ID;` field in a delivered message.
fn received_id(text: &str) -> String {
    text.split(" id ")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .unwrap_or_else(|| panic!("no Received id in {text}"))
        .to_string()
}

/// A message's whole life is one grep of the server's log (README
/// "Logs"), for mail queued by `smtp-relay send` and by `sendmail` as
/// root (straight into the queue: before, its `queued` line went to the
/// sender's own stderr only) and by `sendmail` as nobody (the maildrop
/// pick-up): the server's `queued` line with the size, the recipients,
/// who queued it and how, then its `status=sent` line.
#[test]
fn the_server_log_has_the_whole_life_of_local_mail() {
    let sink = Sink::start();
    let route = format!("*={}", sink.addr());
    let s = Setup::with_args(&["--no-dns", "--route", &route], &[]);
    let conf = s.conf();
    let conf = conf.to_str().expect("utf-8 path");
    let mut cases: Vec<(&str, &str)> = Vec::new();
    let (code, err) = s.run(
        false,
        Path::new(BIN),
        &[
            "send",
            "--config",
            conf,
            "-f",
            "ops@relay.test",
            "out@dest.example",
        ],
        "Subject: by-send\n\nx\n",
    );
    assert_eq!(code, 0, "{err}");
    cases.push(("by-send", "client=local uid=0 user=root via=send"));
    for as_nobody in users() {
        let subject = if as_nobody { "by-drop" } else { "by-sendmail" };
        let (code, err) = s.run(
            as_nobody,
            &s.sendmail(),
            &["-t", "-i", "-f", "ops@relay.test"],
            &format!("To: out@dest.example\nSubject: {subject}\n\nx\n"),
        );
        assert_eq!(code, 0, "{err}");
        cases.push(match as_nobody {
            true => (subject, " user=nobody via=maildrop maildrop="),
            false => (subject, "client=local uid=0 user=root via=sendmail"),
        });
    }
    assert!(
        sink.wait_for(cases.len(), Duration::from_secs(20)),
        "delivered; log:\n{}",
        s.relay.log()
    );
    for (subject, who) in cases {
        let m = sink
            .messages()
            .into_iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(&format!("Subject: {subject}\r\n")))
            .unwrap_or_else(|| panic!("{subject} not delivered"));
        let text = String::from_utf8_lossy(&m.data).into_owned();
        let id = received_id(&text);
        let mut life = String::new();
        // the sent line is written after the delivery: wait for it
        wait_until(Duration::from_secs(10), || {
            life = s
                .relay
                .log()
                .lines()
                .filter(|l| l.contains(&id))
                .collect::<Vec<_>>()
                .join("\n");
            life.contains("status=sent")
        });
        let mark = format!("{id} queued ");
        let queued: Vec<&str> = life.lines().filter(|l| l.contains(&mark)).collect();
        assert_eq!(queued.len(), 1, "one queued line for {subject}:\n{life}");
        let q = queued[0];
        assert!(
            q.contains(&format!("{id} queued from=<ops@relay.test> size="))
                && q.contains(" nrcpt=1 ")
                && q.contains(who),
            "{subject}: {q}"
        );
        let sent = life
            .lines()
            .position(|l| l.contains("to=out@dest.example ") && l.contains("status=sent"));
        let at = life.lines().position(|l| l.contains(&mark));
        assert!(
            sent.is_some() && at < sent,
            "{subject}: queued, then sent, in the server's log:\n{life}"
        );
    }
}
