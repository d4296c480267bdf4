//! smtp-relay: a store-and-forward SMTP relay.
//!
//! Data flow: `server` accepts a socket and hands it to a `session` worker;
//! the session speaks SMTP (`smtp::*` holds the protocol vocabulary without
//! I/O) and streams each message into the `spool`, answering 250 only once
//! the message is durable on disk. The `scheduler` owns the timing of the
//! queue and hands due messages to `delivery` workers, which `route` each
//! recipient (static routes, then `dns` MX lookups), send it with the
//! outbound `client`, record the outcome in the envelope, and queue a
//! `bounce` (an RFC 3464 DSN) for permanent failures.
//!
//! Start-up: `cli` parses the command line and the config file into a
//! plain `config::Config`; `app`, the composition root, builds the live
//! objects from it; `exit` maps every error to a sysexits code.

pub mod access;
pub mod admin;
pub mod app;
pub mod auth;
pub mod auth_limit;
pub mod authres;
pub mod bounce;
pub mod channel;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod dane;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod edge;
pub mod exit;
pub mod fault;
pub mod handoff;
pub mod logging;
pub mod manpage;
pub mod metrics;
pub mod milter;
pub mod mta_sts;
pub mod notify;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod scheduler;
pub mod secrets;
pub mod sender_map;
pub mod sendmail;
pub mod server;
pub mod session;
pub mod shaping;
pub mod smtp;
pub mod spool;
pub mod status;
pub mod swap;
pub mod sys;
pub mod time;
pub mod tls;
pub mod tls_policy;
pub mod tlsrpt;
