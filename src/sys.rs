//! The few operating-system calls std does not offer: free space of the
//! spool's filesystem, and dropping root privileges after binding. This
//! is the only module with `unsafe`; each block is a plain libc call on
//! values we own.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Free space for unprivileged users on the filesystem holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    pub bytes: u64,
    /// `None` on filesystems that do not count inodes (btrfs, tmpfs with
    /// nr_inodes=0): they report zero total.
    pub inodes: Option<u64>,
}

pub fn free_space(path: &Path) -> io::Result<FreeSpace> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
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

/// Gives every file and folder under `root` to `user` (before dropping
/// privileges, so the relay can still read and replace its spool).
pub fn chown_tree(root: &Path, user: User) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        if md.uid() != user.uid || md.gid() != user.gid {
            std::os::unix::fs::lchown(&p, Some(user.uid), Some(user.gid))?;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
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
