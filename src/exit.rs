//! The process exit codes, sysexits(3), in one enum, and the one place
//! where every module's error is mapped to one: `From<&ThatError>` below.
//! `main` turns whatever a command returns into an [`Exit`] and exits
//! with it; README ("Exit codes") lists the codes per command.

use std::process::ExitCode;

use crate::admin::AdminError;
use crate::app::SetupError;
use crate::cli::UsageError;
use crate::server::ServeError;
use crate::spool::SpoolError;

/// The sysexits(3) codes smtp-relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done (`route`: deliverable).
    Ok,
    /// 64 EX_USAGE: a bad option, argument or config file line.
    Usage,
    /// 65 EX_DATAERR: `send`'s message is larger than `--max-size`.
    DataErr,
    /// 66 EX_NOINPUT: a file an option names cannot be read (certificate,
    /// key, CA file, password file); `queue show` of an id not queued.
    NoInput,
    /// 69 EX_UNAVAILABLE: cannot listen, cannot set up DNS, the server
    /// holding the spool did not answer a flush; `route`: permanently
    /// undeliverable.
    Unavailable,
    /// 71 EX_OSERR: threads cannot be started.
    OsErr,
    /// 74 EX_IOERR: a spool or password file I/O error.
    IoErr,
    /// 75 EX_TEMPFAIL: the spool is locked by another server, messages
    /// are still deferred or busy; `route`: not deliverable now.
    TempFail,
    /// 77 EX_NOPERM: privileges cannot be dropped (`--user`, or a queue
    /// command acting as the spool's owner).
    NoPerm,
    /// 78 EX_CONFIG: a missing or unsafe spool; a file an option names
    /// is read but unusable (not a certificate, a key that does not fit,
    /// a bad password file line); `--user` or a `--listen`/`--dns` name
    /// that does not resolve.
    Config,
}

impl Exit {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Usage => 64,
            Exit::DataErr => 65,
            Exit::NoInput => 66,
            Exit::Unavailable => 69,
            Exit::OsErr => 71,
            Exit::IoErr => 74,
            Exit::TempFail => 75,
            Exit::NoPerm => 77,
            Exit::Config => 78,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

impl From<&UsageError> for Exit {
    fn from(_: &UsageError) -> Exit {
        Exit::Usage
    }
}

impl From<&SpoolError> for Exit {
    fn from(e: &SpoolError) -> Exit {
        match e {
            SpoolError::Locked(_) => Exit::TempFail,
            SpoolError::Unsafe { .. } | SpoolError::Missing(_) => Exit::Config,
            _ => Exit::IoErr,
        }
    }
}

impl From<&SetupError> for Exit {
    fn from(e: &SetupError) -> Exit {
        match e {
            SetupError::Unreadable { .. } => Exit::NoInput,
            SetupError::Invalid { .. } | SetupError::Resolve { .. } | SetupError::User { .. } => {
                Exit::Config
            }
            SetupError::Dns(_) => Exit::Unavailable,
        }
    }
}

impl From<&ServeError> for Exit {
    fn from(e: &ServeError) -> Exit {
        match e {
            ServeError::Setup(e) => e.into(),
            ServeError::Bind { .. } => Exit::Unavailable,
            ServeError::Privileges(_) => Exit::NoPerm,
            // the dropped user cannot read the password file it needs
            ServeError::AuthFile { .. } => Exit::NoPerm,
            ServeError::Spool(e) => e.into(),
            ServeError::Thread(_) => Exit::OsErr,
        }
    }
}

impl From<&AdminError> for Exit {
    fn from(e: &AdminError) -> Exit {
        e.code
    }
}

impl From<&crate::dkim::keygen::KeygenError> for Exit {
    fn from(e: &crate::dkim::keygen::KeygenError) -> Exit {
        use crate::dkim::keygen::KeygenError;
        match e {
            // the key file exists already, or cannot be created there
            KeygenError::Create(..) => Exit::IoErr,
            KeygenError::Generate(_) => Exit::OsErr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sysexits() {
        let all = [
            (Exit::Ok, 0),
            (Exit::Usage, 64),
            (Exit::DataErr, 65),
            (Exit::NoInput, 66),
            (Exit::Unavailable, 69),
            (Exit::OsErr, 71),
            (Exit::IoErr, 74),
            (Exit::TempFail, 75),
            (Exit::NoPerm, 77),
            (Exit::Config, 78),
        ];
        for (e, n) in all {
            assert_eq!(e.code(), n, "{e:?}");
        }
        let locked = SpoolError::Locked(std::path::PathBuf::from("/x"));
        assert_eq!(Exit::from(&locked), Exit::TempFail);
        assert_eq!(
            Exit::from(&ServeError::Spool(SpoolError::Missing("/x".into()))),
            Exit::Config
        );
    }
}
