//! The filter stage of each verb (OpenSMTPD's check → filter → proceed):
//! after a command passed its order and syntax checks, and before it
//! takes effect, the access rules of its stage and, at RCPT, recipient
//! validation (`check::Gate`). Every refusal is handed to the reply
//! writer (`Session::refuse`), which logs it at INFO in one line with the
//! client address, the rule and the reply.
//!
//! A session without a gate (unit tests, `Session::new` alone) filters
//! nothing.

use crate::access::{Facts, Stage, Verdict};
use crate::check::Gate;
use crate::metrics::Reason;
use crate::smtp::{Path, Reply, ReversePath};

use super::Session;

impl<'a> Session<'a> {
    /// Puts the session behind `gate`'s rules and recipient checks.
    pub fn set_gate(&mut self, gate: &'a Gate) {
        self.gate = Some(gate);
    }

    /// Messages of this session or transaction go on hold (`hold` rule).
    pub fn held(&self) -> bool {
        self.hold_session || self.hold_tx
    }

    /// The connect stage: the greeting, or the refusal to send instead.
    /// RFC 5321 §3.1: a refused client gets 554 instead of 220, and the
    /// session then waits for QUIT, answering 503 to anything else; a
    /// deferral is 421, and the session closes.
    pub fn open(&mut self) -> Reply {
        match self.filter(Stage::Connect, None, None, None) {
            Some(r) => {
                self.refused = r.code().is_permanent();
                r
            }
            None => self.greeting(),
        }
    }

    pub(super) fn filter_helo(&mut self, helo: &str) -> Option<Reply> {
        self.filter(Stage::Helo, Some(helo), None, None)
    }

    pub(super) fn filter_mail(&mut self, helo: &str, from: &ReversePath) -> Option<Reply> {
        // a new transaction: only connect/HELO holds carry over
        self.hold_tx = false;
        let from = from.mailbox().map(|m| m.to_string());
        self.filter(Stage::Mail, Some(helo), Some(from.as_deref()), None)
    }

    /// Access rules, then (unless a rule accepted) recipient validation.
    pub(super) fn filter_rcpt(
        &mut self,
        helo: &str,
        from: &ReversePath,
        to: &Path,
    ) -> Option<Reply> {
        let gate = self.gate?;
        let from = from.mailbox().map(|m| m.to_string());
        let addr = to.mailbox().to_string();
        let verdict = self.verdict(Stage::Rcpt, Some(helo), Some(from.as_deref()), Some(&addr));
        if let Verdict::Accept { rule } = &verdict {
            log::info!(
                "{} rcpt=<{addr}> accepted by access rule ({rule})",
                self.client
            );
            return None;
        }
        // a hold takes effect only for a recipient that is accepted
        let hold = matches!(verdict, Verdict::Hold { .. });
        if !hold {
            if let Some(r) = self.apply(Stage::Rcpt, verdict.clone()) {
                return Some(r);
            }
        }
        if let Err(reply) = gate.validate(to) {
            self.refuse(
                Reason::RecipientValidation,
                Some("rcpt"),
                "recipient validation".into(),
                &reply,
            );
            return Some(reply);
        }
        if hold {
            self.apply(Stage::Rcpt, verdict);
        }
        None
    }

    fn filter(
        &mut self,
        stage: Stage,
        helo: Option<&str>,
        from: Option<Option<&str>>,
        to: Option<&str>,
    ) -> Option<Reply> {
        let verdict = self.verdict(stage, helo, from, to);
        self.apply(stage, verdict)
    }

    fn verdict(
        &self,
        stage: Stage,
        helo: Option<&str>,
        from: Option<Option<&str>>,
        to: Option<&str>,
    ) -> Verdict {
        let Some(gate) = self.gate else {
            return Verdict::Pass;
        };
        let client = self.client;
        let ptr = || self.ptr.get_or_init(|| gate.reverse_name(client)).clone();
        let facts = Facts {
            client,
            ptr: &ptr,
            helo,
            from,
            to,
        };
        gate.access(stage, &facts)
    }

    fn apply(&mut self, stage: Stage, verdict: Verdict) -> Option<Reply> {
        match verdict {
            Verdict::Pass | Verdict::Accept { .. } => None,
            Verdict::Hold { rule } => {
                log::info!(
                    "{} hold stage={} rule=\"{rule}\": the message will be queued on hold",
                    self.client,
                    stage.name()
                );
                match stage {
                    Stage::Connect | Stage::Helo => self.hold_session = true,
                    Stage::Mail | Stage::Rcpt => self.hold_tx = true,
                }
                None
            }
            Verdict::Refuse { rule, reply } => {
                self.refuse(Reason::AccessRule, Some(stage.name()), rule, &reply);
                Some(reply)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::session::tests::code;
    use crate::session::Session;

    /// RFC 5321 §4.5.1: bare `<Postmaster>` is accepted from anyone and
    /// recorded as the postmaster address, within the recipient limit.
    #[test]
    fn bare_postmaster() {
        let mut c = Config::new();
        c.hostname = "relay.test".into();
        c.max_recipients = 2;
        let mut s = Session::new(&c, "192.0.2.9".parse().unwrap());
        code(&mut s, "EHLO x");
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "RCPT TO:<u@elsewhere.example>"), 550);
        assert_eq!(code(&mut s, "RCPT TO:<Postmaster>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<POSTMASTER>"), 250, "once");
        let rcpts: Vec<String> = s
            .transaction()
            .unwrap()
            .1
            .rcpts
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(rcpts, ["<postmaster@relay.test>"]);
        c.postmaster = Some(crate::smtp::Mailbox::parse("pm@admin.example", false).unwrap());
        c.max_recipients = 1;
        c.relay_domains = vec![crate::smtp::Domain::parse("open.example", false).unwrap()];
        let mut s = Session::new(&c, "192.0.2.9".parse().unwrap());
        code(&mut s, "EHLO x");
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "RCPT TO:<u@open.example>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<Postmaster>"), 452);
        code(&mut s, "RSET");
        code(&mut s, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut s, "RCPT TO:<postmaster>"), 250);
        assert_eq!(
            s.transaction().unwrap().1.rcpts[0].0.to_string(),
            "<pm@admin.example>"
        );
    }
}
