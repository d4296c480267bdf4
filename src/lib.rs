//! smtp-relay: a store-and-forward SMTP relay.
//!
//! Data flow: `server` accepts a socket and hands it to a `session` worker;
//! the session speaks SMTP (`smtp::*` holds the protocol vocabulary without
//! I/O) and streams each message into the `spool`, answering 250 only once
//! the message is durable on disk.

pub mod cli;
pub mod config;
pub mod pool;
pub mod server;
pub mod session;
pub mod smtp;
pub mod spool;
pub mod time;
