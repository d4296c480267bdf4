//! `serve --user` as root on a spool its unprivileged user has tampered
//! with (issue 10, item 3): the user owns the spool's folders, so it can
//! put symbolic links (or, where the kernel allows, hard links) in them.
//! Root must never act through them: each test plants one, starts the
//! real server as root with `--user nobody`, and checks that nothing
//! outside the spool changed.
//!
//! Needs root (to start as root and to become nobody); otherwise each
//! test prints SKIPPED (and fails in CI).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use smtp_relay::sys::{lookup_user, User};

const T: Duration = Duration::from_secs(10);

/// nobody, when we are root; else prints SKIPPED (panics in CI).
fn nobody_or_skip(test: &str) -> Option<User> {
    if !smtp_relay::sys::is_root() {
        if in_ci() {
            panic!("{test}: needs root (CI is set)");
        }
        println!("SKIPPED {test}: needs root");
        return None;
    }
    Some(lookup_user("nobody").unwrap_or_else(|e| panic!("{test}: no user nobody: {e}")))
}

/// A spool as a `--user nobody` server leaves it, and a folder outside it
/// holding `precious`, both under a parent nobody can traverse.
struct Scene {
    _base: TempDir,
    spool: PathBuf,
    outside: PathBuf,
    nobody: User,
}

impl Scene {
    fn new(nobody: User) -> Scene {
        let base = TempDir::new("spoolsec");
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let spool = base.path().join("spool");
        for d in ["", "tmp", "queue", "corrupt", "flush.d", "free"] {
            let p = spool.join(d);
            fs::create_dir_all(&p).expect("mkdir");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).expect("chmod");
            std::os::unix::fs::lchown(&p, Some(nobody.uid), Some(nobody.gid)).expect("chown");
        }
        let outside = base.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("precious"), b"root's file\n").expect("write");
        Scene {
            _base: base,
            spool,
            outside,
            nobody,
        }
    }

    /// Runs `cmd` as nobody (the spool's user planting its trap).
    fn as_nobody(&self, cmd: &[&str]) {
        let uid = format!("--reuid={}", self.nobody.uid);
        let gid = format!("--regid={}", self.nobody.gid);
        let mut c = Command::new("setpriv");
        c.args([uid.as_str(), gid.as_str(), "--clear-groups", "--"])
            .args(cmd);
        let r = run_tool(&mut c, T);
        assert_eq!(r.code, Some(0), "as nobody {cmd:?}: {}", r.stderr);
    }

    /// Replaces the spool's folder `name` by a link to `outside/`, as nobody.
    fn link_folder(&self, name: &str) {
        let p = self.spool.join(name);
        self.as_nobody(&["rmdir", &p.display().to_string()]);
        self.as_nobody(&[
            "ln",
            "-s",
            &self.outside.display().to_string(),
            &p.display().to_string(),
        ]);
        assert!(fs::symlink_metadata(&p)
            .expect("lstat")
            .file_type()
            .is_symlink());
    }

    /// `serve --user nobody` started as root; a server that starts is
    /// stopped after a few seconds (time enough for recovery).
    fn serve(&self) -> CliRun {
        let s = self.spool.display().to_string();
        run_cli(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--spool",
                &s,
                "--hostname",
                "relay.test",
                "--delivery-workers",
                "0",
                "--user",
                "nobody",
            ],
            Duration::from_secs(4),
        )
    }

    fn outside_names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.outside)
            .expect("read outside")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(self.outside_names(), ["precious"]);
        let p = self.outside.join("precious");
        let md = fs::metadata(&p).expect("precious is still there");
        assert_eq!((md.uid(), md.gid()), (0, 0), "precious changed owner");
        assert_eq!(fs::read(&p).expect("read"), b"root's file\n");
    }
}

#[track_caller]
fn assert_refused(r: &CliRun, names: &str) {
    assert_eq!(
        r.code,
        Some(78),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        r.code,
        r.stdout,
        r.stderr
    );
    assert!(
        r.stderr.contains(names) && r.stderr.contains("symbolic link"),
        "{}",
        r.stderr
    );
}

/// Attack 1: `tmp` or `free` → a folder of root's. Start-up empties
/// both: as root, through the link, that deleted `outside/precious`.
#[test]
fn symlinked_tmp_or_free_is_refused_and_nothing_outside_is_deleted() {
    let test = "symlinked_tmp_or_free_is_refused_and_nothing_outside_is_deleted";
    let Some(nobody) = nobody_or_skip(test) else {
        return;
    };
    for folder in ["tmp", "free"] {
        let scene = Scene::new(nobody);
        scene.link_folder(folder);
        let r = scene.serve();
        scene.assert_outside_untouched();
        assert_refused(&r, &format!("/{folder}:"));
    }
}

/// Attack 2: `lock` → a name outside the spool. The lock is opened with
/// O_CREAT: as root, through the link, that created a root file there.
#[test]
fn symlinked_lock_is_refused_and_nothing_is_created_outside() {
    let Some(nobody) = nobody_or_skip("symlinked_lock_is_refused_and_nothing_is_created_outside")
    else {
        return;
    };
    let scene = Scene::new(nobody);
    let target = scene.outside.join("created-by-root");
    scene.as_nobody(&[
        "ln",
        "-s",
        &target.display().to_string(),
        &scene.spool.join("lock").display().to_string(),
    ]);
    let r = scene.serve();
    assert!(!target.exists(), "root created {}", target.display());
    scene.assert_outside_untouched();
    assert_refused(&r, "/lock:");
}

/// Attack 3: a queue file hard linked to a file of root's (nobody cannot
/// make it here, protected_hardlinks is on; on a kernel without that
/// protection it can, so root makes it for the test). Giving the spool to
/// nobody gave that file to nobody too. Now it keeps its owner, while the
/// spool's own root-owned files are still handed over.
#[test]
fn hard_linked_queue_file_keeps_its_owner() {
    let Some(nobody) = nobody_or_skip("hard_linked_queue_file_keeps_its_owner") else {
        return;
    };
    let scene = Scene::new(nobody);
    fs::set_permissions(
        scene.outside.join("precious"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    fs::hard_link(
        scene.outside.join("precious"),
        scene.spool.join("queue").join("0000000000000001.msg"),
    )
    .expect("link");
    // its envelope, left by an earlier server run as root (so recovery
    // keeps the message): must become nobody's
    let env = write_file(
        &scene.spool.join("queue"),
        "0000000000000001.env",
        b"smtp-relay-envelope: 1\nid: 0000000000000001\narrived: 1795886899\nclient: 127.0.0.1\nhelo: client.example\nfrom: <a@b.example>\nsize: 12\nbody: -\nsmtputf8: no\nattempts: 0\nnext-try: 1795886899\nrcpt: pending\t<user@example.org>\t-\nend\n",
    );
    let relay = Relay::receive_only_with_spool(scene.spool.clone(), &["--user", "nobody"]);
    let md = fs::metadata(&env).expect("envelope");
    assert_eq!((md.uid(), md.gid()), (nobody.uid, nobody.gid));
    drop(relay);
    scene.assert_outside_untouched();
}

/// Root without `--user` on a spool nobody owns would walk nobody's
/// folders as root: refused, nothing touched.
#[test]
fn root_without_user_refuses_a_spool_another_user_owns() {
    let Some(nobody) = nobody_or_skip("root_without_user_refuses_a_spool_another_user_owns") else {
        return;
    };
    let scene = Scene::new(nobody);
    let s = scene.spool.display().to_string();
    let r = run_cli(
        &["serve", "--listen", "127.0.0.1:0", "--spool", &s],
        Duration::from_secs(4),
    );
    assert_eq!(r.code, Some(78), "{}", r.stderr);
    assert!(r.stderr.contains("--user"), "{}", r.stderr);
    assert!(!scene.spool.join("lock").exists());
}

/// Every file and folder of `spool` belongs to `user` (so a server
/// running as `user` can read it).
#[track_caller]
fn assert_all_owned_by(spool: &std::path::Path, user: User, after: &str) {
    let mut stack = vec![spool.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).expect("lstat");
        assert_eq!(
            (md.uid(), md.gid()),
            (user.uid, user.gid),
            "after {after}: {} is not the server's",
            p.display()
        );
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
}

/// Item 7: `send` and the queue commands run as root on the spool of a
/// `serve --user nobody` act as nobody, so the server can read what they
/// write: the message sent is delivered, and after hold, release and
/// requeue it is still deliverable. (Before, root's 0600 files sat
/// `pending` with `Permission denied`.)
#[test]
fn root_run_commands_leave_files_the_server_can_read() {
    let Some(nobody) = nobody_or_skip("root_run_commands_leave_files_the_server_can_read") else {
        return;
    };
    let base = TempDir::new("rootcmd");
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let spool = base.path().join("spool");
    let sink = Sink::start();
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let _relay = Relay::start_with_spool(
        spool.clone(),
        &[
            "--user",
            "nobody",
            "--no-dns",
            "--route",
            &route,
            "--delivery-timeout",
            "5s",
            "--retry-min",
            "1h",
        ],
    );
    let s = spool.display().to_string();
    let send = |subject: &str| {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "printf 'Subject: {subject}\\n\\nhello\\n' | {BIN} send --spool {s} -f me@x.example you@example.net"
            ));
        let r = run_tool(&mut c, T);
        assert_eq!(r.code, Some(0), "send: {}", r.stderr);
    };
    send("first");
    assert!(
        sink.wait_for(1, T),
        "the server could not deliver what root sent"
    );
    assert_all_owned_by(&spool, nobody, "send");

    // a message that stays: the next hop defers it
    sink.set_config(SinkConfig::default().rcpt_table(&[("", Action::reply(451, "4.3.0 busy"))]));
    send("second");
    let deferred = || {
        queued_ids(&spool).first().is_some_and(|id| {
            EnvFile::load(&spool, id)
                .rcpts()
                .iter()
                .all(|r| r.0 == "deferred")
        })
    };
    assert!(wait_until(T, deferred), "never deferred");
    let id = queued_ids(&spool)[0].clone();
    for sub in ["hold", "release", "requeue"] {
        let r = run_cli(&["queue", sub, "--spool", &s, &id], T);
        assert_eq!(r.code, Some(0), "queue {sub}: {}", r.stderr);
        assert_all_owned_by(&spool, nobody, &format!("queue {sub}"));
    }
    // the server reads all of it: a flush from root delivers it
    sink.set_config(SinkConfig::default());
    let r = run_cli(&["queue", "flush", "--spool", &s, &id], T);
    assert_eq!(r.code, Some(0), "queue flush: {}", r.stderr);
    assert!(
        sink.wait_for(2, T),
        "not delivered after root's queue commands"
    );
    assert!(wait_until(T, || queued_ids(&spool).is_empty()));
}
