//! The milters' end of message on a message in the spool: the received
//! file read back for them, their content changes written into it and
//! their envelope changes applied, before the commit. Shared by SMTP
//! sessions (`session/milters.rs`) and local injection
//! (`admin/content.rs`).

use std::io::{self, Seek, SeekFrom};

use super::{Changes, Conversation, Macros, Verdict};
use crate::smtp::Reply;
use crate::spool::{Envelope, Incoming, RcptState, Recipient};

/// What the milters decided at the end of the message.
pub enum EndOfMessage {
    /// Commit, with the milters' changes (already in the file).
    Commit(Option<Changes>),
    Refuse(Reply),
    /// 250, and nothing queued.
    Discard,
}

/// The end of the message for `conversation`: the milters read the
/// received file, and their changes to its content are written back
/// into it, before the commit. An `Err` is the spool file that could not
/// be read back or rewritten (its message says which).
pub fn end_of_message(
    conversation: &mut Conversation,
    incoming: &mut Incoming,
    macros: &Macros,
    max: u64,
) -> io::Result<EndOfMessage> {
    let id = incoming.id();
    let context = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let (verdict, changes, mut file) = incoming
        .reader()
        .and_then(|mut f| {
            conversation
                .end_of_message(&mut f, macros, max)
                .map(|(v, c)| (v, c, f))
        })
        .map_err(|e| context("cannot read the message back for milters", e))?;
    match verdict {
        Verdict::Continue => {}
        Verdict::Discard => return Ok(EndOfMessage::Discard),
        Verdict::Refuse(r) | Verdict::Close(r) => return Ok(EndOfMessage::Refuse(r)),
    }
    if changes.content_changed() {
        incoming
            .rewrite(|out| {
                changes.headers.write(out)?;
                out.write_all(b"\r\n")?;
                match &changes.body {
                    Some(b) => out.write_all(&super::edit::crlf_body(b)),
                    None => {
                        file.seek(SeekFrom::Start(changes.body_at))?;
                        io::copy(&mut file, out).map(|_| ())
                    }
                }
            })
            .map_err(|e| context("cannot write the milters' changes", e))?;
        log::info!("{id} changed by milters size={}", incoming.written());
    }
    Ok(EndOfMessage::Commit(Some(changes)))
}

/// The milters' envelope changes: sender, recipients added and deleted,
/// quarantine (the message waits on hold for `queue release`). `false`
/// when no recipient is left (the message is then discarded, as
/// Sendmail does).
pub fn adjust_envelope(changes: &Changes, env: &mut Envelope) -> bool {
    let id = env.id;
    let angle = |s: &str| {
        if s.starts_with('<') {
            s.to_string()
        } else {
            format!("<{s}>")
        }
    };
    if let Some(s) = &changes.sender {
        match crate::smtp::ReversePath::parse_stored(&angle(s)) {
            Ok(p) => {
                log::info!("{id} milter changed sender {} -> {p}", env.from);
                env.from = p;
            }
            Err(e) => log::warn!("{id} milter sender {s:?} not taken: {e}"),
        }
    }
    for d in &changes.deleted {
        let gone = angle(d).to_ascii_lowercase();
        env.rcpts
            .retain(|r| r.path.to_string().to_ascii_lowercase() != gone);
        log::info!("{id} milter deleted recipient {}", crate::smtp::Escaped(d));
    }
    for a in &changes.added {
        match crate::smtp::Path::parse_stored(&angle(a)) {
            Ok(path) => {
                log::info!("{id} milter added recipient {path}");
                env.rcpts.push(Recipient {
                    path,
                    state: RcptState::Pending,
                    last_reply: None,
                    dsn: Default::default(),
                    tries: Default::default(),
                });
            }
            Err(e) => log::warn!("{id} milter recipient {a:?} not taken: {e}"),
        }
    }
    if let Some(reason) = &changes.quarantine {
        env.hold = Some(crate::spool::envelope::Hold::Forever);
        env.hold_reason = Some(format!("milter quarantine: {reason}"));
        log::info!(
            "{id} quarantined by milter: held reason=\"{}\"",
            crate::smtp::Escaped(reason)
        );
    }
    !env.rcpts.is_empty()
}
