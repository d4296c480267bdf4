//! Resource exhaustion and privileges with the real binary: a spool on a
//! tiny tmpfs that really fills up (ENOSPC, not the `--min-free-space`
//! guess), `--user nobody`, and hundreds of idle connections.
//!
//! The tmpfs and `--user` tests need root (mount, setuid). Without it they
//! print SKIPPED, except in CI (`CI` set), where not being root fails.
//! The `--min-free-space` refusal at MAIL with an impossible threshold is
//! session.rs `spool_short_of_space_answers_452`; here the threshold is
//! just above a real filesystem's size.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Resident memory the relay may use.
const RSS_LIMIT_KB: u64 = 100 * 1024;

const BODY: &[u8] = b"Subject: resources\r\n\r\nsmall\r\n";

fn proc_status(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
}

/// The numbers after `key` in /proc/PID/status (`VmRSS:`, `Uid:` ...).
fn status_numbers(pid: u32, key: &str) -> Vec<u64> {
    let text = proc_status(pid);
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line[key.len()..]
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn rss_kb(pid: u32) -> u64 {
    status_numbers(pid, "VmRSS:")[0]
}

fn is_root() -> bool {
    status_numbers(std::process::id(), "Uid:").get(1) == Some(&0)
}

/// True when the test may go on as root; otherwise prints SKIPPED (or
/// panics in CI).
fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if in_ci() {
        panic!("{test}: needs root (CI is set)");
    }
    println!("SKIPPED {test}: needs root");
    false
}

/// A tmpfs mounted on a fresh temp dir; unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = TempDir::new("tmpfs");
        let r = run_tool(
            Command::new("mount").args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
                &dir.path().display().to_string(),
            ]),
            Duration::from_secs(10),
        );
        if r.code != Some(0) {
            return Err(format!("mount failed: {r:?}"));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Free bytes as statvfs tells unprivileged users.
    fn free(&self) -> u64 {
        let r = run_tool(
            Command::new("stat").args(["-f", "-c", "%a %S", &self.path().display().to_string()]),
            Duration::from_secs(10),
        );
        let v: Vec<u64> = r
            .stdout
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(v.len(), 2, "stat -f: {r:?}");
        v[0] * v[1]
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.path().display().to_string();
        let r = run_tool(Command::new("umount").arg(&p), Duration::from_secs(10));
        if r.code != Some(0) {
            // still busy (a relay not yet reaped): detach it
            let _ = run_tool(
                Command::new("umount").args(["-l", &p]),
                Duration::from_secs(10),
            );
        }
    }
}

/// A tmpfs, or `None` after saying SKIPPED (not root, or no mount).
fn tmpfs_or_skip(test: &str, size: &str) -> Option<Tmpfs> {
    if !root_or_skip(test) {
        return None;
    }
    match Tmpfs::mount(size) {
        Ok(t) => Some(t),
        Err(e) if in_ci() => panic!("{test}: cannot mount a tmpfs as root: {e}"),
        Err(e) => {
            println!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// A message of about `size` octets in 78-octet lines, tagged `n`.
fn big_message(n: usize, size: usize) -> Vec<u8> {
    let mut m = format!("Subject: big {n}\r\n\r\n").into_bytes();
    let mut i = 0;
    while m.len() < size {
        m.extend_from_slice(format!("{n:04} {i:08} {}\r\n", "x".repeat(62)).as_bytes());
        i += 1;
    }
    m
}

/// One transaction; the reply to DATA (when not 354) or to the final dot,
/// and which it was.
fn try_send(t: &mut Talk, body: &[u8]) -> (&'static str, u16, String) {
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.send("DATA");
    let (code, text) = t.reply();
    if code != 354 {
        t.cmd_enh("RSET", 250, "2.0.0");
        return ("DATA", code, text);
    }
    t.send_raw(body);
    t.send_raw(b".\r\n");
    let (code, text) = t.reply();
    ("end of data", code, text)
}

/// Sizes of the files in `dir`.
fn sizes(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().to_string(), len)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn full_disk_refuses_at_end_of_data_and_recovers_once_space_is_freed() {
    let test = "full_disk_refuses_at_end_of_data_and_recovers_once_space_is_freed";
    let Some(fs) = tmpfs_or_skip(test, "2m") else {
        return;
    };
    let spool = fs.path().join("spool");
    // --min-free-space 0: no guess, the writes themselves must hit ENOSPC
    let mut relay = Relay::receive_only_with_spool(spool.clone(), &["--min-free-space", "0"]);
    let mut t = relay.session();
    let mut acked = Vec::new();
    let mut refusal = None;
    // 2 MiB / 300 kB: the seventh cannot fit; 20 is a generous bound
    for n in 0..20 {
        let body = big_message(n, 300 * 1024);
        let (at, code, text) = try_send(&mut t, &body);
        println!(
            "message {n}: {at} → {code} {text} (free {} kB)",
            fs.free() / 1024
        );
        if code == 250 {
            acked.push(queued_id(&text).expect("queue id"));
            continue;
        }
        refusal = Some((at, code, text));
        break;
    }
    let (at, code, text) = refusal.expect("the 2 MiB spool never filled up");
    assert!(
        (code == 452 && text.starts_with("4.3.1 ")) || (code == 451 && text.starts_with("4.3.0 ")),
        "refused at {at} with {code} {text}"
    );
    assert!(
        !acked.is_empty(),
        "not a single message fit: {}",
        relay.log()
    );
    // every promise is kept: each 250 is a whole message; the refused one
    // left nothing behind
    for id in &acked {
        assert_complete(&spool, id);
    }
    assert_eq!(queued_ids(&spool), {
        let mut a = acked.clone();
        a.sort();
        a
    });
    assert_eq!(
        tmp_files(&spool),
        Vec::<String>::new(),
        "tmp/ after the refusal"
    );
    // the session is in step and the server alive
    t.cmd_enh("NOOP", 250, "2.0.0");
    assert!(relay.exited().is_none(), "the relay died");

    // exactly one free page left (a filler file takes the rest): a small
    // message's body fits, its envelope does not; then no page at all
    let filler = fs.path().join("filler");
    let left = fs.free();
    if left > 4096 {
        fs::write(&filler, vec![0u8; (left - 4096) as usize]).expect("write filler");
    }
    for free_pages in [1, 0] {
        if free_pages == 0 && fs.free() > 0 {
            let more = vec![0u8; fs.free() as usize];
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&filler)
                .expect("open filler");
            f.write_all(&more).expect("fill the last page");
        }
        let before = queue_files(&spool);
        let (at, code, text) = try_send(&mut t, &big_message(1000 + free_pages, 2000));
        println!(
            "small message with {} kB free: {at} → {code} {text}",
            free_pages * 4
        );
        assert!(
            (code == 452 && text.starts_with("4.3.1 "))
                || (code == 451 && text.starts_with("4.3.0 ")),
            "small message with {free_pages} free pages refused at {at} with {code} {text}"
        );
        assert_eq!(queue_files(&spool), before, "queue changed");
        assert_eq!(tmp_files(&spool), Vec::<String>::new(), "tmp/ after it");
        t.cmd_enh("NOOP", 250, "2.0.0");
    }
    fs::remove_file(&filler).expect("remove filler");

    // make room as delivery would: envelope first, then body
    for id in acked.iter().take(2) {
        fs::remove_file(env_path(&spool, id)).expect("remove envelope");
        fs::remove_file(msg_path(&spool, id)).expect("remove body");
    }
    println!("freed two messages: {} kB free", fs.free() / 1024);
    let body = big_message(99, 300 * 1024);
    let (at, code, text) = try_send(&mut t, &body);
    println!("after freeing space: {at} → {code} {text}");
    assert_eq!(code, 250, "{at}: {code} {text}");
    let id = queued_id(&text).expect("queue id");
    let env = assert_complete(&spool, &id);
    let stored = read_msg(&spool, &id);
    let (_, rest) = split_received(&stored);
    assert_eq!(rest, body, "the message after the refusal is stored whole");
    assert!(env.size() > 300 * 1024);
    assert_eq!(tmp_files(&spool), Vec::<String>::new());
    t.cmd_enh("QUIT", 221, "2.0.0");
    let files = sizes(&spool.join("queue"));
    println!(
        "queue: {} files, {} octets; how the relay saw the refusals:\n{}",
        files.len(),
        files.iter().map(|(_, n)| n).sum::<u64>(),
        relay
            .log()
            .lines()
            .filter(|l| l.contains("failed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    relay.kill();
}

#[test]
fn min_free_space_above_the_filesystem_refuses_at_mail() {
    let test = "min_free_space_above_the_filesystem_refuses_at_mail";
    let Some(fs) = tmpfs_or_skip(test, "2m") else {
        return;
    };
    let spool = fs.path().join("spool");
    // 3 MiB demanded on a 2 MiB filesystem
    let mut relay = Relay::receive_only_with_spool(spool.clone(), &["--min-free-space", "3M"]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@example.org>", 452, "4.3.1");
    t.cmd_enh("NOOP", 250, "2.0.0");
    t.cmd_enh("MAIL FROM:<>", 452, "4.3.1");
    t.cmd_enh("QUIT", 221, "2.0.0");
    assert!(queue_files(&spool).is_empty());
    assert!(relay.log().contains("short of space"), "{}", relay.log());
    relay.kill();

    // the same spool with a threshold it meets takes mail
    let mut relay = Relay::receive_only_with_spool(spool.clone(), &["--min-free-space", "1M"]);
    let mut t = relay.session();
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    assert_complete(&spool, &id);
    relay.kill();
}

#[test]
fn user_nobody_runs_unprivileged_with_a_private_spool() {
    let test = "user_nobody_runs_unprivileged_with_a_private_spool";
    if !root_or_skip(test) {
        return;
    }
    let Some((uid, gid)) = nobody() else {
        panic!("{test}: no user nobody");
    };
    // a parent folder nobody can traverse, whatever the umask
    let base = TempDir::new("user");
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let spool: PathBuf = base.path().join("spool");
    let relay = Relay::receive_only_with_spool(spool.clone(), &["--user", "nobody"]);
    let pid = relay.pid();
    let uids = status_numbers(pid, "Uid:");
    let gids = status_numbers(pid, "Gid:");
    let groups = proc_status(pid)
        .lines()
        .find(|l| l.starts_with("Groups:"))
        .map(|l| l.to_string())
        .unwrap_or_default();
    println!("relay {pid}: Uid {uids:?} Gid {gids:?} {groups:?} (nobody is {uid}:{gid})");
    assert_eq!(
        uids,
        vec![u64::from(uid); 4],
        "real, effective, saved, fs uid"
    );
    assert_eq!(
        gids,
        vec![u64::from(gid); 4],
        "real, effective, saved, fs gid"
    );
    assert_eq!(groups.trim(), "Groups:", "supplementary groups dropped");

    // mail is still accepted and queued
    let mut t = relay.session();
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    t.cmd_enh("QUIT", 221, "2.0.0");
    assert_complete(&spool, &id);

    // everything in the spool is nobody's and private
    let mut stack = vec![spool.clone()];
    let mut seen = Vec::new();
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).expect("metadata");
        let mode = md.mode() & 0o7777;
        let rel = p.strip_prefix(&spool).unwrap_or(&p).display().to_string();
        seen.push(format!("{rel:<28} {mode:04o} {}:{}", md.uid(), md.gid()));
        assert_eq!((md.uid(), md.gid()), (uid, gid), "{} owner", p.display());
        if md.is_dir() {
            // the root lets others through to maildrop/ (1733), for
            // users who cannot write the queue (README "sendmail")
            let want = if p == spool {
                0o711
            } else if p == spool.join("maildrop") {
                0o1733
            } else {
                0o700
            };
            assert_eq!(mode, want, "{} mode {mode:o}", p.display());
            for e in fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        } else {
            assert_eq!(mode, 0o600, "{} mode {mode:o}", p.display());
        }
    }
    seen.sort();
    println!("{}", seen.join("\n"));
    assert!(
        seen.iter()
            .any(|s| s.starts_with(&format!("queue/{id}.env"))),
        "{seen:?}"
    );
}

#[test]
fn three_hundred_idle_connections_keep_memory_bounded() {
    let relay = Relay::receive_only(&["--workers", "400"]);
    let pid = relay.pid();
    let before = rss_kb(pid);
    let threads_before = status_numbers(pid, "Threads:")[0];
    let start = Instant::now();
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect_timeout(&relay.addr(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // each one is greeted: it has a session thread of its own
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"\r\n") && got.len() < 4096 {
            let n = s
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("greeting {i}: {e}"));
            assert!(n > 0, "connection {i} closed before the greeting");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"220 "),
            "connection {i}: {:?}",
            String::from_utf8_lossy(&got)
        );
        idle.push(s);
    }
    let with_idle = rss_kb(pid);
    let threads = status_numbers(pid, "Threads:")[0];
    // a new client is still served in full
    let mut t = relay.session();
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    t.cmd_enh("QUIT", 221, "2.0.0");
    assert_complete(relay.spool(), &id);
    let peak = rss_kb(pid).max(with_idle);
    println!(
        "300 idle connections in {:?}: relay VmRSS {before} kB → {with_idle} kB (peak {peak} kB), {threads_before} → {threads} threads",
        start.elapsed()
    );
    assert!(peak < RSS_LIMIT_KB, "relay RSS {peak} kB");
    // close them all (QUIT from half, plain close from the others)
    for (i, mut s) in idle.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = s.write_all(b"QUIT\r\n");
        }
    }
    let mut u = relay.session();
    u.cmd_enh("NOOP", 250, "2.0.0");
    u.cmd_enh("QUIT", 221, "2.0.0");
}
