//! The only place that creates, fsyncs and renames spool files.
//!
//! Durability rule: data is fsynced before the rename that publishes it,
//! and the directory holding the new name is fsynced after, so a crash at
//! any instant leaves the old state or the new one, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Spool files are private to the relay's user (0600).
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Creates a spool folder (0700) if missing.
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsync a directory so the names created or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `bytes` atomically: write `tmp_dir/name.tmp`
/// (fresh), fsync, rename over the target, fsync `dir`.
pub fn write_atomic(tmp_dir: &Path, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_dir.join(format!("{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, dir.join(name))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Publishes a message's fsynced tmp files into `queue/`: body first,
/// then envelope (the envelope's appearance is the commit). Neither
/// rename ever replaces a file: a queue file already there under that
/// name (another process made the same id) gives `AlreadyExists` with
/// both files back at their tmp names, and the caller picks a new id.
/// Any other failure of the envelope's rename also brings the body back.
pub fn publish(
    msg_tmp: &Path,
    env_tmp: &Path,
    msg_final: &Path,
    env_final: &Path,
) -> io::Result<()> {
    crate::sys::rename_noreplace(msg_tmp, msg_final)?;
    if let Err(e) = crate::sys::rename_noreplace(env_tmp, env_final) {
        // the body under its final name is ours (nothing was replaced)
        if fs::rename(msg_final, msg_tmp).is_err() {
            let _ = fs::remove_file(msg_final);
        }
        return Err(e);
    }
    Ok(())
}

/// True when a commit found its queue id taken (see `publish`).
pub fn is_collision(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AlreadyExists
}

/// True for errors that mean "no room": answered 452 4.3.1, not 451.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
