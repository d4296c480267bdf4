//! The few operating-system calls std does not offer: free space of the
//! spool's filesystem, the monotonic clock's value (sd_notify), dropping
//! root privileges after binding, renames
//! that never replace, and the `*at` calls that walk a directory by file
//! descriptor without following symbolic links. This is the only module
//! with `unsafe`; each block is a plain libc call on values we own.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `TCP_QUICKACK` (Linux tcp(7)): acknowledge at once rather than after
/// the delayed-ACK timer. The kernel clears it again on its own, so it
/// is set before each read that waits for a peer which writes its
/// answer in several small segments with Nagle's algorithm on (a
/// libmilter milter: a modification, then the final reply), where the
/// delayed ACK would hold the second segment back 40 ms.
pub fn quick_ack(sock: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc).map(|_| ())
}

/// Whether the peer of a connected socket has closed it (or reset it),
/// asked without waiting and without taking anything from it: a
/// `recv(MSG_PEEK | MSG_DONTWAIT)` of one octet that finds the end of the
/// stream (recv(2)). Pending data or nothing yet is open.
pub fn peer_closed(sock: &impl AsRawFd) -> bool {
    let mut b = [0u8; 1];
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(
            io::Error::last_os_error().kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}

/// Free space for unprivileged users on the filesystem holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    pub bytes: u64,
    /// `None` on filesystems that do not count inodes (btrfs, tmpfs with
    /// nr_inodes=0): they report zero total.
    pub inodes: Option<u64>,
}

pub fn free_space(path: &Path) -> io::Result<FreeSpace> {
    let c = cstr(path)?;
    // SAFETY: `c` is a valid NUL-terminated string and `st` a zeroed
    // statvfs that libc fills in; nothing is retained after the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FreeSpace {
        bytes: (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
        inodes: (st.f_files > 0).then_some(st.f_favail as u64),
    })
}

/// Lets glibc keep up to `bytes` of freed memory at the top of each
/// malloc arena instead of returning it at once. Its default (128 KiB)
/// made every session's end give its buffers back with `madvise`, whose
/// TLB shoot-down interrupts every core running the relay's threads:
/// 3.4 % of the server's CPU at 50 sessions (issue 16). The cost is at
/// most `bytes` of resident memory per arena (at most 8 per core). Call
/// before any thread starts (mallopt is not meant to race allocations).
pub fn keep_freed_memory(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: a plain libc call with integer arguments; glibc ignores a
    // value it cannot use (the return value only says so).
    unsafe {
        libc::mallopt(
            libc::M_TRIM_THRESHOLD,
            bytes.try_into().unwrap_or(libc::c_int::MAX),
        );
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// Fills `buf` from the kernel's random source (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of
        // `buf`, which lives for the whole call.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// Whether `dir` is on ext4 (or ext3) with a journal: then one syncfs
/// after a commit's renames makes the files and the names durable, in
/// that order (spool/committer.rs `Order`): syncfs writes and waits for
/// the data, then commits the journal transaction holding the renames
/// and new sizes with a device flush after it, or, when that transaction
/// was already committed, flushes the device itself. Found by the
/// filesystem's magic number and the mount's entry in `/proc/fs/jbd2/`
/// (named after the block device, as in /sys/dev/block). Anything not
/// shown to be so (ext4 without a journal, XFS, an unknown device) is
/// false.
pub fn journaled_ext4(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    let Ok(c) = cstr(dir) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid
    // NUL-terminated path for the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != EXT4_SUPER_MAGIC {
        return false;
    }
    let Ok(md) = std::fs::metadata(dir) else {
        return false;
    };
    let dev = md.dev();
    let link = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    let Some(name) = std::fs::read_link(link)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    else {
        return false;
    };
    let prefix = format!("{name}-");
    std::fs::read_dir("/proc/fs/jbd2").is_ok_and(|d| {
        d.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    })
}

/// Writes back every dirty page and inode of the filesystem holding `f`
/// and flushes the device: one flush for all the files a commit needs.
pub fn syncfs(f: &std::fs::File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `f` keeps open for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A user to run as: its ids, looked up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

pub fn lookup_user(name: &str) -> io::Result<User> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pwd` and `buf`, both owned here and
    // large enough (buf length passed); `result` points at `pwd` or is null.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such user {name:?}"),
        ));
    }
    Ok(User {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`, and
/// nothing changed): `renameat2(RENAME_NOREPLACE)`, one syscall like
/// `rename`. Where the filesystem or kernel lacks it, `link` + `unlink`,
/// which refuses an existing target the same way.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: two valid NUL-terminated paths, read only during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// What `fstatat(AT_SYMLINK_NOFOLLOW)` or `fstat` says about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: FileKind,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub dev: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
    Other,
}

// nlink is u32 on some targets, u64 on others
#[allow(clippy::useless_conversion)]
fn stat_of(st: &libc::stat) -> Stat {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFREG => FileKind::File,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    Stat {
        kind,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: u64::from(st.st_nlink),
        dev: u64::from(st.st_dev),
    }
}

/// `name` inside the directory `dir`, never following a symbolic link.
pub fn stat_at(dir: &OwnedFd, name: &CStr) -> io::Result<Stat> {
    // SAFETY: `st` is zeroed and filled by the kernel; `name` is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(stat_of(&st))
}

/// What an open descriptor is (no path lookup: no race).
pub fn stat_fd(fd: &impl AsRawFd) -> io::Result<Stat> {
    // SAFETY: as in `stat_at`, on a descriptor we hold open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(stat_of(&st))
}

fn open_at(dir: Option<&OwnedFd>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let base = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `name` is valid; a descriptor returned by openat is ours.
    let fd = check(unsafe { libc::openat(base, name.as_ptr(), flags | libc::O_CLOEXEC) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory (`dir`-relative, or `path` itself when `dir` is
/// `None`), refusing a symbolic link as the last component (`ELOOP`).
pub fn open_dir_nofollow(dir: Option<&OwnedFd>, name: &Path) -> io::Result<OwnedFd> {
    open_at(
        dir,
        &cstr(name)?,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )
}

/// Opens a file inside `dir` read-only without following a link and
/// without blocking on a FIFO, only to look at it and change its owner.
pub fn open_file_nofollow(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    open_at(
        Some(dir),
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
}

/// `mkdirat`: a new directory in `dir`.
pub fn mkdir_at(dir: &OwnedFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold and a valid name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// Gives the open file or directory `fd` to `user`: the object we hold,
/// whatever its name points to by now.
pub fn fchown(fd: &impl AsRawFd, user: User) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we hold.
    check(unsafe { libc::fchown(fd.as_raw_fd(), user.uid, user.gid) })?;
    Ok(())
}

/// The names in the open directory `dir` (without `.` and `..`).
pub fn read_dir_fd(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    // fdopendir takes the descriptor: give it its own copy
    let dup = dir.try_clone()?;
    // SAFETY: fdopendir owns `raw` from here (closedir closes it); the
    // entries are copied out before the next readdir call.
    let raw = dup.as_raw_fd();
    let d = unsafe { libc::fdopendir(raw) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    // rewind: the copy shares its offset with `dir`
    unsafe { libc::rewinddir(d) };
    let mut names = Vec::new();
    loop {
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            break;
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    unsafe { libc::closedir(d) };
    Ok(names)
}

/// Drops to `user` for good: supplementary groups, then group, then user
/// (the order matters: after setuid we could no longer change groups).
pub fn drop_privileges(user: User) -> io::Result<()> {
    // SAFETY: plain syscalls with integer arguments; an empty group list
    // is a null pointer with length 0, which setgroups accepts.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setgid(user.gid) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setuid(user.uid) != 0 {
            return Err(io::Error::last_os_error());
        }
        // no way back to root
        if libc::setuid(0) == 0 {
            return Err(io::Error::other(
                "could regain root after dropping privileges",
            ));
        }
    }
    Ok(())
}

/// The name of user `uid` in the password database, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in `lookup_user`: getpwuid_r fills `pwd` and `buf`,
    // both owned here, and sets `result` to `pwd` or null.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The real user id (who ran us).
pub fn real_uid() -> u32 {
    // SAFETY: getuid has no arguments and cannot fail.
    unsafe { libc::getuid() }
}

/// The effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// The login name of whoever runs us: the password database's name for
/// the real uid (the kernel's word, not the environment's), else `$USER`,
/// else `uidN`.
pub fn login_name() -> String {
    let uid = real_uid();
    user_name(uid)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid{uid}"))
}

/// CLOCK_MONOTONIC in microseconds (std's `Instant` hides its value;
/// sd_notify's `MONOTONIC_USEC=` wants it).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // CLOCK_MONOTONIC always exists on Linux and `ts` is ours: the call
    // cannot fail
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// This process's id, asked of the kernel once (a getpid per queue id and
/// per recycled file name was a syscall per message, two per removal; the
/// server never forks).
pub fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_tmp() {
        let f = free_space(&std::env::temp_dir()).unwrap();
        assert!(f.bytes > 0);
    }

    #[test]
    fn root_user_exists() {
        assert_eq!(lookup_user("root").unwrap().uid, 0);
        assert!(lookup_user("no-such-user-here").is_err());
    }
}
