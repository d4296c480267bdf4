//! Inbound authentication results (issue 14): SPF (RFC 7208) for the
//! client, DKIM verification (RFC 6376) and DMARC (RFC 7489) for the
//! received message, written as one `Authentication-Results:` header
//! (RFC 8601). The checks themselves are mail-auth's; this module gives
//! them our resolver configuration, a blocking face with a deadline, and
//! classifies their outcome once for the session (`session/authres.rs`):
//! what to write, and whether to refuse or hold.
//!
//! Nothing here touches the spool: no crash story beyond "a message is
//! checked again if the client sends it again".

pub mod header;
mod verifier;

pub use crate::config::{AuthResConfig, DmarcAction, Listeners};
pub use verifier::{MessageResults, SpfResults, Verifier};
