//! Crash safety with the real binary: SIGKILL at the interesting moments,
//! then a restart on the same spool. `250` is a promise: what was
//! acknowledged survives whole; what was not leaves nothing behind.

mod common;

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

const BODY: &[u8] = b"Subject: durable\r\n\r\nThis must survive.\r\n";

#[test]
fn kill_during_data_leaves_nothing_after_restart() {
    let mut relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(b"Subject: cut short\r\n\r\nline one\r\nline two\r\n");
    // the message is being received into tmp/
    assert!(
        wait_until(Duration::from_secs(5), || tmp_count(relay.spool()) >= 1),
        "no tmp file while receiving"
    );
    relay.kill();
    assert!(
        queue_files(relay.spool()).is_empty(),
        "an unfinished message reached the queue: {:?}",
        queue_files(relay.spool())
    );
    // the client sees the connection go, never a 250
    match t.try_reply() {
        Ok(None) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("after the crash the client got {other:?}"),
    }

    relay.restart();
    assert_eq!(tmp_files(relay.spool()), Vec::<String>::new());
    assert!(queue_files(relay.spool()).is_empty());
    assert!(corrupt_files(relay.spool()).is_empty());
    // and the restarted relay takes mail
    let mut t = relay.session();
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    assert_eq!(queued_ids(relay.spool()), vec![id]);
}

#[test]
fn kill_right_after_250_keeps_the_message() {
    let mut relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    let id = t.send_mail("a@example.org", &["b@example.net", "c@example.net"], BODY);
    relay.kill();

    // both files are complete at the instant of the 250
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(env.get("from"), "<a@example.org>");
    assert_eq!(env.rcpts().len(), 2);
    let msg = read_msg(relay.spool(), &id);
    let (_, data) = split_received(&msg);
    assert_eq!(data, BODY);
    let env_text = env.text.clone();

    relay.restart();
    assert_eq!(queued_ids(relay.spool()), vec![id.clone()]);
    assert_eq!(read_msg(relay.spool(), &id), msg, "body changed by restart");
    assert_eq!(read_env(relay.spool(), &id), env_text, "envelope changed");
    assert!(corrupt_files(relay.spool()).is_empty());
    assert!(tmp_files(relay.spool()).is_empty());
}

#[test]
fn client_gone_mid_data_removes_the_tmp_file() {
    let relay = Relay::receive_only(&[]);
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(b"Subject: abandoned\r\n\r\nhalf a message\r\n");
    assert_eq!(tmp_count(relay.spool()), 1);
    drop(t);
    assert!(
        wait_until(Duration::from_secs(5), || tmp_count(relay.spool()) == 0),
        "tmp file left after the client vanished: {:?}",
        tmp_files(relay.spool())
    );
    assert!(queue_files(relay.spool()).is_empty());
}

/// The same with a file reused from `free/`: once a delivered message's
/// files are there, the next message is written into one of them where
/// it lies (nothing in `tmp/`), and a client gone mid-DATA unlinks it.
#[test]
fn client_gone_mid_data_removes_the_reused_file() {
    let dir = TempDir::new("spool");
    let spool = dir.path().join("spool");
    let sink = Sink::start();
    let relay = Relay::start_with_spool(
        spool.clone(),
        &[
            "--no-dns",
            "--route",
            &format!("*=127.0.0.1:{}", sink.addr().port()),
        ],
    );
    let mut t = relay.session();
    t.send_mail("a@example.org", &["b@example.net"], BODY);
    assert!(sink.wait_for(1, Duration::from_secs(20)), "not delivered");
    let free_count = || {
        fs::read_dir(spool.join("free"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(20), || queue_files(&spool).is_empty()
            && free_count() == 2),
        "the delivered message's files did not go to free/: {:?}",
        queue_files(&spool)
    );
    // reusable once the flush after the removal is done (about 50 ms)
    thread::sleep(Duration::from_millis(500));
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(b"Subject: abandoned\r\n\r\nhalf a message\r\n");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        tmp_count(&spool),
        0,
        "the body went to tmp/, not to a reused file"
    );
    assert_eq!(
        free_count(),
        2,
        "the reused file is still in free/ while written"
    );
    drop(t);
    assert!(
        wait_until(Duration::from_secs(5), || free_count() == 1),
        "the abandoned message's file was left in free/"
    );
    assert_eq!(tmp_count(&spool), 0);
    assert!(queue_files(&spool).is_empty(), "{:?}", queue_files(&spool));
    assert_eq!(sink.count(), 1);
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes)
        .unwrap_or_else(|e| panic!("plant {}: {e}", dir.join(name).display()));
}

#[test]
fn restart_recovers_a_messy_spool() {
    let dir = TempDir::new("spool");
    let spool = dir.path().join("spool");
    let mut relay = Relay::receive_only_with_spool(spool.clone(), &[]);
    let mut t = relay.session();
    let good = t.send_mail("a@example.org", &["b@example.net"], BODY);
    relay.kill();
    let good_env = read_env(&spool, &good);
    let good_msg = read_msg(&spool, &good);

    // what crashes at each step leave, and worse
    let tmp = spool.join("tmp");
    let queue = spool.join("queue");
    write(&tmp, "0000000000000001.msg", b"Received: partial\r\n");
    write(&tmp, "0000000000000001.env", b"smtp-relay-envelope: 1\n");
    write(&tmp, "not-an-id.tmp", b"junk");
    // a body whose envelope never made it: removed
    write(&queue, "0000000000000002.msg", b"Subject: orphan\r\n\r\n");
    // a torn envelope (everything but `end`): moved aside with its body
    let torn = good_env
        .replace(&good, "0000000000000003")
        .replace("end\n", "");
    assert!(!torn.contains("\nend"), "{torn}");
    write(&queue, "0000000000000003.env", torn.as_bytes());
    write(&queue, "0000000000000003.msg", &good_msg);
    // not an envelope at all
    write(&queue, "0000000000000004.env", b"garbage\n");
    // a complete envelope naming another id
    write(&queue, "0000000000000005.env", good_env.as_bytes());
    write(&queue, "0000000000000005.msg", &good_msg);

    relay.restart();
    assert_eq!(tmp_files(&spool), Vec::<String>::new(), "tmp/ emptied");
    assert_eq!(
        queue_files(&spool),
        vec![format!("{good}.env"), format!("{good}.msg")],
        "only the good message stays queued"
    );
    assert_eq!(read_env(&spool, &good), good_env);
    assert_eq!(read_msg(&spool, &good), good_msg);
    assert_eq!(
        corrupt_files(&spool),
        vec![
            "0000000000000003.env".to_string(),
            "0000000000000003.msg".to_string(),
            "0000000000000004.env".to_string(),
            "0000000000000005.env".to_string(),
            "0000000000000005.msg".to_string(),
        ],
        "unreadable envelopes are kept aside, never deleted"
    );
    // corrupt files are kept byte for byte
    assert_eq!(
        fs::read(spool.join("corrupt/0000000000000003.env")).expect("read corrupt env"),
        torn.as_bytes()
    );

    // a second restart finds nothing more to do
    relay.restart();
    assert_eq!(queued_ids(&spool), vec![good.clone()]);
    assert_eq!(corrupt_files(&spool).len(), 5);
    let mut t = relay.session();
    let next = t.send_mail("a@example.org", &["b@example.net"], BODY);
    assert!(next > good, "ids keep increasing across restarts");
}

/// On ext4 with a journal a power loss during a commit's one flush (the
/// syncfs that makes the files and their names in `queue/` durable
/// together) can leave a name over bytes that never reached the disk,
/// such as a recycled file's earlier message. That message never had its
/// 250. The next server run checks the body against the length and
/// CRC-32 its envelope recorded before anything reads it, and a body that
/// does not match goes to `corrupt/` unsent: another message's text must
/// never leave. So does an envelope that is not the text that was written
/// (another envelope's blocks spliced in), at start-up. Each run trusts
/// only what it wrote, so a restart after `kill -9` plays the reboot; a
/// message of the earlier run that is whole is delivered as usual.
#[test]
fn after_a_reboot_a_body_that_never_reached_the_disk_is_never_sent() {
    let dir = TempDir::new("spool");
    let spool = dir.path().join("spool");
    let queue = spool.join("queue");
    let mut relay = Relay::receive_only_with_spool(spool.clone(), &[]);
    let mut t = relay.session();
    let whole = t.send_mail("a@example.org", &["b@whole.example"], BODY);
    let torn = t.send_mail(
        "a@example.org",
        &["b@torn.example"],
        b"Subject: new\r\n\r\nthe new message\r\n",
    );
    let spliced = t.send_mail("a@example.org", &["b@spliced.example"], BODY);
    drop(t);
    // a clean stop checkpoints the commit log, which then no longer holds
    // these messages to repair them (a power loss that damages files
    // before the checkpoint is what the log repairs: the test after this
    // one); the files are then damaged as a power loss during a batch's
    // single syncfs could leave them
    relay.terminate();
    assert!(relay.wait_exit(Duration::from_secs(30)).is_some());
    for id in [&whole, &torn, &spliced] {
        let env = read_env(&spool, id);
        let line = env
            .lines()
            .find(|l| l.starts_with("integrity: "))
            .unwrap_or_else(|| panic!("no integrity line in\n{env}"));
        let run = line["integrity: ".len()..]
            .split('\t')
            .next()
            .unwrap_or_default();
        assert!(
            run.len() == 32 && run.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
    }
    // the same length, another message's bytes
    let msg = read_msg(&spool, &torn);
    let stale = String::from_utf8_lossy(&msg).replace("the new message", "an OLD message!");
    assert_eq!(stale.len(), msg.len());
    write(&queue, &format!("{torn}.msg"), stale.as_bytes());
    // another recipient of the same length, everything else as written
    let env = read_env(&spool, &spliced).replace("<b@spliced.example>", "<x@spliced.example>");
    write(&queue, &format!("{spliced}.env"), env.as_bytes());

    // an operator looking first is told, and not shown the bytes
    let s = spool.to_string_lossy().into_owned();
    let show = |args: &[&str]| {
        let args = [&["queue", "show", "--spool", &s][..], args].concat();
        run_cli(&args, Duration::from_secs(20))
    };
    let text = show(&[&torn]);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    let damaged = "body is not what its envelope recorded";
    assert!(
        text.stdout.contains(&format!("damaged:   {damaged}")),
        "{}",
        text.stdout
    );
    let body = show(&["--body", &torn]);
    assert_eq!(body.code, Some(65), "{}", body.stdout);
    assert!(!body.stdout.contains("OLD"), "{}", body.stdout);
    assert!(body.stderr.contains(damaged), "{}", body.stderr);
    let whole_body = show(&["--body", &whole]);
    assert_eq!(whole_body.code, Some(0), "{}", whole_body.stderr);

    let sink = Sink::start();
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let relay = Relay::start_with_spool(spool.clone(), &["--no-dns", "--route", &route]);
    assert!(
        sink.wait_for(1, Duration::from_secs(20)),
        "the whole message was not delivered"
    );
    assert!(
        wait_until(Duration::from_secs(20), || queue_files(&spool).is_empty()),
        "{:?}",
        queue_files(&spool)
    );
    let mut quarantined = vec![
        format!("{torn}.env"),
        format!("{torn}.msg"),
        format!("{spliced}.env"),
        format!("{spliced}.msg"),
    ];
    quarantined.sort();
    assert_eq!(corrupt_files(&spool), quarantined);
    assert_eq!(
        fs::read(spool.join("corrupt").join(format!("{torn}.msg"))).expect("corrupt body"),
        stale.as_bytes(),
        "kept byte for byte"
    );
    let sent = sink.messages();
    assert_eq!(sent.len(), 1, "only the whole message left");
    assert!(String::from_utf8_lossy(&sent[0].data).contains("This must survive."));
    let log = relay.log();
    for expected in [
        format!("{torn} body is not what its envelope recorded"),
        format!("{spliced} corrupt envelope moved to corrupt/: not the text that was written"),
    ] {
        assert!(log.contains(&expected), "no {expected:?} in\n{log}");
    }
}

#[test]
fn second_server_on_one_spool_exits_75() {
    let mut relay = Relay::receive_only(&[]);
    let spool = relay.spool().to_str().expect("utf-8 path").to_string();
    let run = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--spool",
            &spool,
            "--delivery-workers",
            "0",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(75), "{run:?}");
    assert!(run.stderr.contains("lock"), "{run:?}");
    assert!(
        !run.stdout.contains("listening on"),
        "the second server must not listen: {run:?}"
    );
    // the first one is unharmed
    let mut t = relay.session();
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    assert_eq!(queued_ids(relay.spool()), vec![id.clone()]);

    // a crash releases the lock: the next server starts
    relay.kill();
    relay.restart();
    assert_eq!(queued_ids(relay.spool()), vec![id]);
}

/// A client that sends messages until the server goes away, recording
/// every id acknowledged with 250. Never panics: the crash is expected.
fn pump(
    addr: SocketAddr,
    n: usize,
    acked: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) -> io::Result<()> {
    fn reply(r: &mut impl BufRead) -> io::Result<(u16, String)> {
        let mut last = String::new();
        for _ in 0..100 {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if line.len() < 4 {
                return Err(io::ErrorKind::InvalidData.into());
            }
            last = line.clone();
            if line.as_bytes()[3] == b' ' {
                let code = line[..3]
                    .parse()
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
                return Ok((code, last));
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, last))
    }
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let expect = |r: &mut BufReader<TcpStream>, code: u16| -> io::Result<String> {
        let (c, text) = reply(r)?;
        if c != code {
            return Err(io::Error::other(format!("expected {code}, got {text}")));
        }
        Ok(text)
    };
    expect(&mut r, 220)?;
    w.write_all(b"EHLO pump.test\r\n")?;
    expect(&mut r, 250)?;
    for i in 0..n {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        w.write_all(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")?;
        expect(&mut r, 250)?;
        expect(&mut r, 250)?;
        expect(&mut r, 354)?;
        w.write_all(format!("Subject: {i}\r\n\r\nmessage {i}\r\n.\r\n").as_bytes())?;
        let text = expect(&mut r, 250)?;
        let id = queued_id(&text).ok_or_else(|| io::Error::other(format!("no id in {text}")))?;
        acked.lock().expect("acked lock").push(id);
    }
    Ok(())
}

#[test]
fn every_acknowledged_message_survives_a_crash_under_load() {
    let mut relay = Relay::receive_only(&[]);
    let addr = relay.addr();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let acked = acked.clone();
            let stop = stop.clone();
            thread::spawn(move || pump(addr, 500, &acked, &stop))
        })
        .collect();
    // crash while messages are in flight
    let busy = wait_until(Duration::from_secs(30), || {
        acked.lock().expect("acked lock").len() >= 40
    });
    relay.kill();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        // each client ends with an error (the crash) or, if very fast, Ok
        let _ = c.join().expect("client thread");
    }
    let acked = acked.lock().expect("acked lock").clone();
    assert!(busy, "only {} messages acknowledged in 30 s", acked.len());
    println!(
        "{} acknowledged before the crash, {} queued after it",
        acked.len(),
        queued_ids(relay.spool()).len()
    );

    // everything acknowledged is whole on disk right after the crash
    for id in &acked {
        assert_complete(relay.spool(), id);
    }
    relay.restart();
    let queued = queued_ids(relay.spool());
    for id in &acked {
        assert!(queued.contains(id), "acknowledged {id} lost in the crash");
        assert_complete(relay.spool(), id);
    }
    // committed but unacknowledged (the 250 was lost in the crash) is
    // allowed: at most one per client
    assert!(
        queued.len() <= acked.len() + 4,
        "{} queued for {} acknowledged",
        queued.len(),
        acked.len()
    );
    // no leftovers: every body has its envelope, tmp/ is empty
    for name in queue_files(relay.spool()) {
        let (id, ext) = name.split_once('.').expect("id.ext");
        assert!(queued.contains(&id.to_string()), "stray {name}");
        assert!(ext == "env" || ext == "msg", "stray {name}");
    }
    assert_eq!(queue_files(relay.spool()).len(), 2 * queued.len());
    assert_eq!(tmp_files(relay.spool()), Vec::<String>::new());
    assert!(corrupt_files(relay.spool()).is_empty());
}

#[test]
fn sigterm_lets_a_session_finish_its_message() {
    let mut relay = Relay::receive_only(&[]);
    let addr = relay.addr();
    let mut t = relay.session();
    t.cmd_enh("MAIL FROM:<a@example.org>", 250, "2.1.0");
    t.cmd_enh("RCPT TO:<b@example.net>", 250, "2.1.5");
    t.cmd_enh("DATA", 354, "2.0.0");
    t.send_raw(b"Subject: stopping\r\n\r\nfirst half\r\n");
    relay.terminate();
    // new clients are turned away: refused, or 421 4.3.2 while stopping
    let turned_away = wait_until(
        Duration::from_secs(10),
        || match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(_) => true,
            Ok(s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                let _ = BufReader::new(s).read_line(&mut line);
                line.starts_with("421 4.3.2")
            }
        },
    );
    assert!(turned_away, "new connections still served after SIGTERM");
    // the session in progress still gets its 250
    t.send_raw(b"second half\r\n.\r\n");
    let id = queued_id(&t.expect_enh(250, "2.0.0")).expect("id");
    t.cmd_enh("QUIT", 221, "2.0.0");
    let status = relay.wait_exit(Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit after SIGTERM");
    let env = assert_complete(relay.spool(), &id);
    assert_eq!(env.rcpts().len(), 1);
    assert!(tmp_files(relay.spool()).is_empty());
    // the lock went with the process
    relay.restart();
    assert_eq!(queued_ids(relay.spool()), vec![id]);
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Mount {
    dir: TempDir,
    /// The loop device's image, removed after the unmount.
    _image: Option<TempDir>,
}

impl Mount {
    /// `None` when this machine does not let us mount (not root, or no
    /// CAP_SYS_ADMIN in the sandbox).
    fn tmpfs(options: &str) -> Option<Mount> {
        let dir = TempDir::new("mnt");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Mount { dir, _image: None })
    }

    /// A fresh 64 MiB ext4 on a loop device, with or without a journal.
    fn ext4(journal: bool) -> Option<Mount> {
        let image = TempDir::new("img");
        let img = image.path().join("ext4.img");
        let sized = fs::File::create(&img).and_then(|f| f.set_len(64 << 20));
        let mut mkfs = std::process::Command::new("mkfs.ext4");
        mkfs.args(["-q", "-F"]);
        if !journal {
            mkfs.args(["-O", "^has_journal"]);
        }
        let made = sized.is_ok()
            && mkfs
                .arg(&img)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        let dir = TempDir::new("mnt");
        let ok = made
            && std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        ok.then_some(Mount {
            dir,
            _image: Some(image),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// How a commit is flushed follows the spool's filesystem: on ext4 with
/// a journal one syncfs after the renames (the journal orders the names
/// behind the data); without one, the files are flushed before their
/// renames and `queue/` after (syncfs alone would flush the device before
/// writing the folder). Either way what got its 250 survives `kill -9`
/// whole and is queued after the restart.
#[test]
fn the_commit_order_follows_the_spools_filesystem() {
    for (journal, said) in [
        (
            true,
            "ext4 with a journal: one syncfs per group commit, after the renames",
        ),
        (
            false,
            "one syncfs per group commit before the renames, one fsync of queue/ after",
        ),
    ] {
        let Some(mount) = Mount::ext4(journal) else {
            println!("SKIPPED: cannot mount an ext4 image here");
            return;
        };
        let spool = mount.dir.path().join("spool");
        let mut relay = Relay::receive_only_with_spool(spool.clone(), &["--min-free-space", "1M"]);
        let mut t = relay.session();
        let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
        relay.kill();
        assert_complete(&spool, &id);
        let log = relay.log();
        assert!(log.contains(said), "journal {journal}: {log}");
        relay.restart();
        assert_eq!(queued_ids(&spool), vec![id]);
        relay.kill();
    }
}

#[test]
fn spool_on_a_filesystem_without_inode_counts_takes_mail() {
    // tmpfs with nr_inodes=0 has no inode limit and reports 0 inodes, as
    // btrfs does; 256 MiB of room is plenty for --min-free-space 1M
    let Some(mount) = Mount::tmpfs("size=256m,nr_inodes=0") else {
        println!("SKIPPED: cannot mount a tmpfs here");
        return;
    };
    let spool = mount.dir.path().join("spool");
    let mut relay = Relay::receive_only_with_spool(spool.clone(), &["--min-free-space", "1M"]);
    let mut t = relay.session();
    let id = t.send_mail("a@example.org", &["b@example.net"], BODY);
    assert_complete(&spool, &id);
    // the relay must be gone before the unmount
    relay.kill();
}

// ---------------------------------------------------------------------
// A big queue is read after the server starts taking mail
// ---------------------------------------------------------------------

/// Plants `n` queued messages older than the one `relay` (receive-only)
/// queues now, copies of it with their own ids (in the envelope and in the
/// body's Received header, so the sink can tell them apart), due now.
/// Edited copies, so without the `integrity:` line (as README says to
/// edit an envelope by hand): the next run would quarantine them.
/// Returns the ids: the copies and the original.
fn plant_copies(relay: &mut Relay, n: u64) -> Vec<String> {
    let mut t = relay.session();
    let original = t.send_mail("a@example.org", &["b@planted.example"], BODY);
    relay.kill();
    let spool = relay.spool().to_path_buf();
    let env: String = read_env(&spool, &original)
        .lines()
        .filter(|l| !l.starts_with("integrity: "))
        .map(|l| format!("{l}\n"))
        .collect();
    let msg = read_msg(&spool, &original);
    let first = u64::from_str_radix(&original, 16).expect("hex queue id");
    let mut ids = vec![original.clone()];
    for i in 1..=n {
        let id = format!("{:016X}", first - i * 4096);
        let body = String::from_utf8_lossy(&msg).replace(&original, &id);
        write(&spool.join("queue"), &format!("{id}.msg"), body.as_bytes());
        write(
            &spool.join("queue"),
            &format!("{id}.env"),
            env.replace(&original, &id).as_bytes(),
        );
        ids.push(id);
    }
    ids
}

/// Which planted id each delivered message carries.
fn delivered_ids(sink: &Sink, ids: &[String]) -> Vec<String> {
    let known: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    sink.messages()
        .iter()
        .filter_map(|m| {
            let text = String::from_utf8_lossy(&m.data);
            let at = text.find("with ESMTP id ")? + "with ESMTP id ".len();
            let id = text.get(at..at + 16)?;
            known.contains(id).then(|| id.to_string())
        })
        .collect()
}

const PLANTED: u64 = 400;

/// The server takes and delivers new mail before start-up recovery has
/// read the queue (here held back by the debug-only `recovery-stall`),
/// gives new mail ids after every queued one, then schedules every queued
/// message once, and still moves a corrupt envelope aside.
#[test]
fn mail_is_taken_while_recovery_reads_the_queue() {
    let dir = TempDir::new("spool");
    let spool = dir.path().join("spool");
    let mut relay = Relay::receive_only_with_spool(spool.clone(), &[]);
    let planted = plant_copies(&mut relay, PLANTED);
    let torn = format!("{:016X}", u64::from_str_radix(&planted[0], 16).unwrap() - 1);
    write(
        &spool.join("queue"),
        &format!("{torn}.env"),
        b"smtp-relay-envelope: 2\nid: ",
    );
    write(
        &spool.join("queue"),
        &format!("{torn}.msg"),
        b"Subject: torn\r\n\r\n",
    );

    let sink = Sink::start();
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    let relay = Relay::start_with_spool_env(
        spool.clone(),
        &["--no-dns", "--route", &route],
        &[("SMTP_RELAY_FAULT", "recovery-stall")],
    );
    let mut t = relay.session();
    let new = t.send_mail("a@example.org", &["c@fresh.example"], BODY);
    assert!(
        new > planted[0],
        "new id {new} not after the queued {}",
        planted[0]
    );
    assert!(
        sink.wait_for(1, Duration::from_secs(20)),
        "new mail not delivered"
    );
    assert!(!relay.log().contains(" recovery read "), "{}", relay.log());
    assert!(
        delivered_ids(&sink, &planted).is_empty(),
        "queued mail went before recovery read it"
    );

    write(&spool, "recovery-go", b"");
    relay.wait_recovered();
    let all = PLANTED as usize + 2;
    assert!(
        sink.wait_for(all, Duration::from_secs(120)),
        "{} of {all} delivered",
        sink.count()
    );
    let got = delivered_ids(&sink, &planted);
    let tally = tally(&got);
    assert_eq!(tally.len(), planted.len(), "every queued message delivered");
    assert!(
        tally.values().all(|&n| n == 1),
        "delivered twice: {tally:?}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || queue_files(&spool).is_empty()),
        "{:?}",
        queue_files(&spool)
    );
    assert_eq!(
        corrupt_files(&spool),
        vec![format!("{torn}.env"), format!("{torn}.msg")]
    );
}

/// `kill -9` while recovery has not read the queue yet (and after a new
/// message's 250): the next start delivers every queued message, the
/// planted ones exactly once (none was in flight).
#[test]
fn kill_9_before_recovery_read_the_queue_loses_nothing() {
    let dir = TempDir::new("spool");
    let spool = dir.path().join("spool");
    let mut relay = Relay::receive_only_with_spool(spool.clone(), &[]);
    let planted = plant_copies(&mut relay, PLANTED);
    let mut sink = Sink::start();
    let route = format!("*=127.0.0.1:{}", sink.addr().port());
    sink.stop();
    let mut relay = Relay::start_with_spool_env(
        spool.clone(),
        &["--no-dns", "--route", &route],
        &[("SMTP_RELAY_FAULT", "recovery-stall")],
    );
    let new = relay
        .session()
        .send_mail("a@example.org", &["c@fresh.example"], BODY);
    relay.kill();
    assert!(!relay.log().contains(" recovery read "), "{}", relay.log());
    assert_eq!(queued_ids(&spool).len(), planted.len() + 1);

    sink.restart();
    relay.set_env(&[]);
    relay.restart();
    let all = planted.len() + 1;
    assert!(
        sink.wait_for(all, Duration::from_secs(120)),
        "{} of {all} delivered",
        sink.count()
    );
    let tally = tally(&delivered_ids(&sink, &planted));
    assert_eq!(tally.len(), planted.len());
    assert!(
        tally.values().all(|&n| n == 1),
        "delivered twice: {tally:?}"
    );
    assert!(
        sink.messages()
            .iter()
            .any(|m| m.rcpts == ["c@fresh.example"]),
        "the new message {new} was not delivered"
    );
    assert!(
        wait_until(Duration::from_secs(20), || queue_files(&spool).is_empty()),
        "{:?}",
        queue_files(&spool)
    );
}

/// The commit log (`spool/commit_log.rs`): a lone message is acknowledged
/// after one flush of the log, and its files in `queue/` become durable
/// only at the checkpoint after. A crash before that checkpoint (here it
/// is held off) that loses the files, as a power loss can, does not
/// lose the message: the next start restores it from the log. A message
/// delivered before the crash is not brought back by the same replay.
#[test]
fn a_message_whose_queue_files_a_crash_lost_comes_back_from_the_commit_log() {
    let dir = TempDir::new("spool");
    let spool = dir.path().join("spool");
    let sink = Sink::start();
    let to_sink = format!("127.0.0.1:{}", sink.addr().port());
    let dead = format!("127.0.0.1:{}", dnsmasq::free_port());
    let mut relay = Relay::start_with_spool_env(
        spool.clone(),
        &[
            "--no-dns",
            "--route",
            &format!("delivered.example={to_sink}"),
            "--route",
            &format!("*={dead}"),
        ],
        &[("SMTP_RELAY_FAULT", "checkpoint-hold:1000000")],
    );
    let mut t = relay.session();
    let delivered = t.send_mail("a@example.org", &["b@delivered.example"], BODY);
    assert!(
        sink.wait_for(1, Duration::from_secs(20)),
        "the first message was not delivered"
    );
    assert!(
        wait_until(Duration::from_secs(20), || !queue_files(&spool)
            .iter()
            .any(|f| f.starts_with(&delivered))),
        "{:?}",
        queue_files(&spool)
    );
    let lost = t.send_mail(
        "a@example.org",
        &["b@lost.example"],
        b"Subject: lost\r\n\r\nkept by the commit log\r\n",
    );
    relay.kill();
    assert!(spool.join("commit.log").exists());
    for ext in ["env", "msg"] {
        fs::remove_file(spool.join("queue").join(format!("{lost}.{ext}"))).expect("queued file");
    }

    let relay = Relay::start_with_spool(
        spool.clone(),
        &["--no-dns", "--route", &format!("*={to_sink}")],
    );
    assert!(
        sink.wait_for(2, Duration::from_secs(20)),
        "the lost message was not restored and delivered: {}",
        relay.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || queue_files(&spool).is_empty()),
        "{:?}",
        queue_files(&spool)
    );
    // time for a wrongly replayed first message to be delivered again
    thread::sleep(Duration::from_millis(1500));
    let sent = sink.messages();
    assert_eq!(sent.len(), 2, "delivered once each");
    assert!(String::from_utf8_lossy(&sent[1].data).contains("kept by the commit log"));
    assert_eq!(sent[1].rcpts, vec!["b@lost.example".to_string()]);
    let log = relay.log();
    assert!(
        log.contains(&format!("{lost}: restored from the commit log")),
        "{log}"
    );
    assert!(!log.contains(&format!("{delivered}: restored")), "{log}");
}

/// A message the operator deletes (`queue delete`) after the commit log
/// took it and before the checkpoint after (held off here) stays deleted
/// through a kill -9 and the replay at the next start: with the server
/// running, the server writes a `done` record when it takes the request;
/// with none running (deleted after the crash), the request left in the
/// spool keeps the message out of the replay; with the server running but
/// its `done` record failing (`done-record-fail`), the server keeps the
/// request for the next start. Without each, the replay restores the
/// message and delivers it.
#[test]
fn a_message_the_operator_deleted_is_not_replayed_after_a_crash() {
    for (deleted_while_running, done_record_fails) in [(true, false), (false, false), (true, true)]
    {
        let faults = if done_record_fails {
            "checkpoint-hold:1000000,done-record-fail"
        } else {
            "checkpoint-hold:1000000"
        };
        let dir = TempDir::new("spool");
        let spool = dir.path().join("spool");
        let sink = Sink::start();
        // nothing listens there: the message is deferred and stays
        let dead = format!("127.0.0.1:{}", dnsmasq::free_port());
        let mut relay = Relay::start_with_spool_env(
            spool.clone(),
            &["--no-dns", "--route", &format!("*={dead}")],
            &[("SMTP_RELAY_FAULT", faults)],
        );
        let mut t = relay.session();
        let id = t.send_mail(
            "a@example.org",
            &["b@deleted.example"],
            b"Subject: deleted\r\n\r\nthe operator removed this\r\n",
        );
        t.cmd("QUIT", 221);
        let s = spool.display().to_string();
        let delete = || {
            run_cli(
                &["queue", "delete", "--spool", &s, "--id", &id],
                Duration::from_secs(30),
            )
        };
        let requests = || {
            fs::read_dir(spool.join("flush.d"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        if deleted_while_running {
            let r = delete();
            assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
            // the operator hears when the server has not taken it in
            assert_eq!(
                r.stderr.contains("has not taken in the change"),
                done_record_fails,
                "{}",
                r.stderr
            );
            if done_record_fails {
                // taken, but kept: the replay must still skip the message
                assert!(
                    wait_until(Duration::from_secs(10), || relay
                        .log()
                        .contains(&format!("{id} deleted by the operator"))),
                    "{}",
                    relay.log()
                );
                assert!(
                    relay.log().contains("its request stays in flush.d/"),
                    "{}",
                    relay.log()
                );
                assert_eq!(requests(), 1, "the request was not kept");
            } else {
                // the server took the request (and wrote the done record)
                assert_eq!(requests(), 0, "the running server did not take the request");
            }
            relay.kill();
        } else {
            relay.kill();
            let r = delete();
            assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        }
        assert!(spool.join("commit.log").exists());
        assert!(queue_files(&spool).is_empty(), "{:?}", queue_files(&spool));

        let to_sink = format!("127.0.0.1:{}", sink.addr().port());
        let relay = Relay::start_with_spool(
            spool.clone(),
            &["--no-dns", "--route", &format!("*={to_sink}")],
        );
        relay.wait_recovered();
        // time for a wrongly replayed message to be delivered
        thread::sleep(Duration::from_millis(1500));
        let log = relay.log();
        assert_eq!(
            sink.count(),
            0,
            "deleted while running: {deleted_while_running}, done record fails: {done_record_fails}; replayed and sent:\n{log}"
        );
        assert!(!log.contains(&format!("{id}: restored")), "{log}");
        assert!(queue_files(&spool).is_empty(), "{:?}", queue_files(&spool));
        // the new run takes a kept request (its epoch never held the id)
        assert!(
            wait_until(Duration::from_secs(10), || requests() == 0),
            "a request was left in flush.d/"
        );
    }
}
