//! The content pipeline of mail injected on this host (`send`, the
//! `sendmail` drop-in, the maildrop pick-up), run on the uncommitted
//! spool file as SMTP mail has it at the end of the data
//! (`session/message.rs`): the milters that serve `local` (Postfix's
//! `non_smtpd_milters`), then DKIM signing when `--dkim-sign-from` names
//! `local`, then the caller's commit. Nothing is promised before the
//! commit: a refusal leaves nothing queued.
//!
//! The milters see the message the way Postfix shows them non-SMTP mail
//! (MILTER_README, "Non-SMTP mail"): a client named `localhost` at
//! 127.0.0.1 that said HELO with our host name, then MAIL, each RCPT,
//! DATA and the message. OpenDKIM therefore counts it as internal (its
//! default `InternalHosts` is 127.0.0.1) and signs it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use super::{AdminError, EX_TEMPFAIL};
use crate::config::Config;
use crate::dkim::{KeyError, Signer, Source};
use crate::exit::Exit;
use crate::milter::spooled::{adjust_envelope, end_of_message, EndOfMessage};
use crate::milter::{Conversation, Macros, MilterConfig, Verdict};
use crate::smtp::Reply;
use crate::spool::{Envelope, Incoming};

/// What local injection runs before its commit: the signer and the
/// milters serving `local`.
#[derive(Default)]
pub struct Content {
    signer: Option<Arc<Signer>>,
    milters: Vec<MilterConfig>,
}

/// What became of the message.
#[derive(Debug)]
pub enum Outcome {
    /// Filtered and signed as configured: commit it.
    Commit,
    /// A milter discarded it: queue nothing (the submitter is not told,
    /// as with SMTP, where the client gets 250).
    Discard,
    /// A milter refused it: 4xx try again later, 5xx never; `by` names
    /// the milter.
    Refused { reply: Reply, by: String },
}

impl Content {
    /// The server's: the signer it loaded at start (or reload), and the
    /// milters of its configuration that serve `local`.
    pub fn new(signer: Option<Arc<Signer>>, milters: &[MilterConfig]) -> Content {
        Content {
            signer,
            milters: milters
                .iter()
                .filter(|m| m.serves_local())
                .cloned()
                .collect(),
        }
    }

    /// `send`'s: the keys are read in this process, now (it queues
    /// directly as root or as the spool's owner). A key it cannot read is
    /// 66 and one that is not a key 78, as for `serve`: mail the operator
    /// wants signed is not queued unsigned.
    pub fn load(config: &Config) -> Result<Content, AdminError> {
        let signer = Signer::load(&config.dkim).map_err(|(k, e)| {
            let key = format!("--dkim-key {}:{}: {}", k.domain, k.selector, k.path.display());
            match e {
                KeyError::Unreadable(e) => AdminError {
                    code: Exit::NoInput,
                    message: format!(
                        "{key}: {e} (send signs in its own process: run it as root, or let the spool's owner read the key)"
                    ),
                },
                KeyError::Invalid(why) => AdminError {
                    code: Exit::Config,
                    message: format!("{key}: {why}"),
                },
            }
        })?;
        Ok(Content::new(signer.map(Arc::new), &config.milters))
    }

    /// The milters, then the signature, on the uncommitted `incoming`;
    /// `env` takes the milters' envelope changes. An `Err` is the spool
    /// file that could not be read back or rewritten.
    pub fn run(
        &self,
        hostname: &str,
        max_size: u64,
        incoming: &mut Incoming,
        env: &mut Envelope,
    ) -> io::Result<Outcome> {
        if !self.milters.is_empty() {
            match self.filter(hostname, max_size, incoming, env)? {
                Outcome::Commit => {}
                other => return Ok(other),
            }
        }
        let local = Source {
            relay_net: false,
            auth: false,
            local: true,
        };
        if let Some(signer) = self.signer.as_deref().filter(|s| s.signs_for(local)) {
            let domain = env
                .from
                .mailbox()
                .and_then(|m| m.host().domain())
                .map(|d| d.as_str().to_string());
            signer.sign_incoming(incoming, domain.as_deref())?;
        }
        Ok(Outcome::Commit)
    }

    /// The milters' events, in an SMTP session's order; the first
    /// refusal ends it.
    fn filter(
        &self,
        hostname: &str,
        max_size: u64,
        incoming: &mut Incoming,
        env: &mut Envelope,
    ) -> io::Result<Outcome> {
        let mut conv = Conversation::local(&self.milters, hostname);
        let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let mut macros = local_macros(hostname);
        let refused = |conv: &mut Conversation, v: Verdict| match v {
            Verdict::Continue | Verdict::Discard => None,
            Verdict::Refuse(reply) | Verdict::Close(reply) => Some(Outcome::Refused {
                reply,
                by: conv.take_refuser(),
            }),
        };
        let v = conv.connect("localhost", client, &macros);
        if let Some(out) = refused(&mut conv, v) {
            return Ok(out);
        }
        let v = conv.helo(hostname, &macros);
        if let Some(out) = refused(&mut conv, v) {
            return Ok(out);
        }
        let from = env.from.to_string();
        macros.push(("{mail_addr}", bare(&from)));
        macros.push(("{mail_mailer}", "local".into()));
        let v = conv.mail(&[from], &macros);
        if let Some(out) = refused(&mut conv, v) {
            return Ok(out);
        }
        for r in &env.rcpts {
            let to = r.path.to_string();
            let mut m = macros.clone();
            m.push(("{rcpt_addr}", bare(&to)));
            let v = conv.rcpt(&[to], &m);
            if let Some(out) = refused(&mut conv, v) {
                return Ok(out);
            }
        }
        macros.push(("i", incoming.id().to_string()));
        let v = conv.data(&macros);
        if let Some(out) = refused(&mut conv, v) {
            return Ok(out);
        }
        let max = max_size.max(1).saturating_mul(2);
        Ok(match end_of_message(&mut conv, incoming, &macros, max)? {
            EndOfMessage::Commit(Some(c)) if !adjust_envelope(&c, env) => Outcome::Discard,
            EndOfMessage::Commit(_) => Outcome::Commit,
            EndOfMessage::Discard => Outcome::Discard,
            EndOfMessage::Refuse(reply) => Outcome::Refused {
                reply,
                by: conv.take_refuser(),
            },
        })
    }
}

fn bare(s: &str) -> String {
    s.trim_start_matches('<').trim_end_matches('>').to_string()
}

/// The macros of every event of local mail: ours, and the client
/// Postfix names for non-SMTP mail.
fn local_macros(hostname: &str) -> Macros {
    vec![
        ("j", hostname.to_string()),
        ("{daemon_name}", crate::milter::DAEMON_NAME.into()),
        ("v", format!("smtp-relay {}", env!("CARGO_PKG_VERSION"))),
        ("{client_addr}", "127.0.0.1".into()),
        ("{client_name}", "localhost".into()),
        ("_", "localhost [127.0.0.1]".into()),
    ]
}

/// A milter's refusal as `send`'s error: 69 for a 5xx (the message will
/// never be taken), 75 for a 4xx (try again), the reply in the text.
pub fn refusal_error(reply: &Reply, by: &str) -> AdminError {
    AdminError {
        code: if reply.code().is_permanent() {
            Exit::Unavailable
        } else {
            EX_TEMPFAIL
        },
        message: format!("refused by milter {by}: {reply}; not queued"),
    }
}
