//! Handing the spool to `serve --user`, as root, without following
//! anything the spool user could have planted.
//!
//! The spool user owns the spool's folders, so it can replace any name in
//! them at any moment: `tmp` by a symbolic link to `/etc`, `lock` by a
//! link to a file root should not create, a queue file by a hard link to
//! `/etc/shadow`. Root therefore does as little as possible here, and
//! only by file descriptor: the spool's root is opened with `O_NOFOLLOW`,
//! each folder with `openat(O_DIRECTORY | O_NOFOLLOW)` relative to it, and
//! ownership is changed with `fchown` on the descriptor that was checked,
//! so there is no check-then-`chown` race. A folder that is a symbolic
//! link refuses the start ([`SpoolError::Unsafe`]); a file that is a link,
//! or has a second hard link, keeps its owner. Everything else (the lock,
//! recovery, cleaning `tmp/` and `free/`) happens after the privilege
//! drop, as the spool user, who can then only harm what it owns.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{fsutil, SpoolError, SUBDIRS};
use crate::sys::{self, FileKind, User};

/// Creates the spool under `root` if needed and gives its root, its
/// folders and the plain files in them to `user`. Call as root, before
/// dropping privileges.
pub fn give_to(root: &Path, user: User) -> Result<(), SpoolError> {
    // the path up to the spool is the administrator's; its last component
    // may be replaced by whoever owns the parent, so it is not followed
    fsutil::ensure_dir(root).map_err(|e| SpoolError::io(root, e))?;
    let top = sys::open_dir_nofollow(None, root).map_err(|e| unsafe_or_io(root, e))?;
    give_fd(&top, root, user)?;
    for name in SUBDIRS {
        let path = root.join(name);
        let c = c_name(OsStr::new(name));
        match sys::stat_at(&top, &c) {
            Ok(st) => check_dir_kind(&path, st.kind)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match sys::mkdir_at(&top, &c, 0o700) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(SpoolError::io(&path, e)),
            },
            Err(e) => return Err(SpoolError::io(&path, e)),
        }
        // O_NOFOLLOW again: the name may have changed since the stat
        let dir = sys::open_dir_nofollow(Some(&top), Path::new(name))
            .map_err(|e| unsafe_or_io(&path, e))?;
        give_fd(&dir, &path, user)?;
        give_files(&dir, &path, user)?;
    }
    // maildrop/ itself (made by an earlier run as root), not the files
    // in it: those are their submitters' (spool/maildrop.rs)
    match sys::open_dir_nofollow(Some(&top), Path::new(super::maildrop::DIR)) {
        Ok(dir) => give_fd(&dir, &root.join(super::maildrop::DIR), user)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(unsafe_or_io(&root.join(super::maildrop::DIR), e)),
    }
    // the lock and the `flush` trigger
    give_files(&top, root, user)
}

/// A spool folder must be a real folder.
pub(super) fn check_dir_kind(path: &Path, kind: FileKind) -> Result<(), SpoolError> {
    match kind {
        FileKind::Dir => Ok(()),
        FileKind::Symlink => Err(SpoolError::Unsafe {
            path: path.to_path_buf(),
            why: "is a symbolic link; spool folders must be real folders".into(),
        }),
        _ => Err(SpoolError::Unsafe {
            path: path.to_path_buf(),
            why: "is not a folder".into(),
        }),
    }
}

/// `ELOOP` (a symbolic link under `O_NOFOLLOW`) and `ENOTDIR` are a
/// tampered spool, not an I/O error.
pub(super) fn unsafe_or_io(path: &Path, e: io::Error) -> SpoolError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => SpoolError::Unsafe {
            path: path.to_path_buf(),
            why: "is a symbolic link; give the spool's real path, and keep links out of it".into(),
        },
        Some(libc::ENOTDIR) => SpoolError::Unsafe {
            path: path.to_path_buf(),
            why: "is not a folder".into(),
        },
        _ => SpoolError::io(path, e),
    }
}

fn c_name(name: &OsStr) -> CString {
    // names from readdir and our constants never hold a NUL
    CString::new(name.as_bytes()).unwrap_or_default()
}

fn give_fd(fd: &OwnedFd, path: &Path, user: User) -> Result<(), SpoolError> {
    let st = sys::stat_fd(fd).map_err(|e| SpoolError::io(path, e))?;
    if (st.uid, st.gid) != (user.uid, user.gid) {
        sys::fchown(fd, user).map_err(|e| SpoolError::io(path, e))?;
    }
    Ok(())
}

/// Gives the plain files directly in `dir` to `user`. Folders and links
/// in it are left alone (the spool has no deeper folders), and so is a
/// file with more than one link: it may be someone else's file, hard
/// linked here.
fn give_files(dir: &OwnedFd, path: &Path, user: User) -> Result<(), SpoolError> {
    for name in sys::read_dir_fd(dir).map_err(|e| SpoolError::io(path, e))? {
        let c = c_name(&name);
        let Ok(st) = sys::stat_at(dir, &c) else {
            continue; // gone meanwhile
        };
        if st.kind != FileKind::File || (st.uid, st.gid) == (user.uid, user.gid) {
            continue;
        }
        let file_path = path.join(&name);
        // the name may have become a link since the stat: O_NOFOLLOW,
        // and what counts is what the descriptor shows
        let fd = match sys::open_file_nofollow(dir, &c) {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!("{}: left alone: {e}", file_path.display());
                continue;
            }
        };
        let st = sys::stat_fd(&fd).map_err(|e| SpoolError::io(&file_path, e))?;
        if st.kind != FileKind::File || st.nlink != 1 {
            log::warn!(
                "{}: left alone: not a plain file with one link (links: {})",
                file_path.display(),
                st.nlink
            );
            continue;
        }
        sys::fchown(&fd, user).map_err(|e| SpoolError::io(&file_path, e))?;
    }
    Ok(())
}
