//! The SMTP vocabulary shared by the server session and the outbound
//! client: replies, commands, addresses and the DATA byte codecs.
//! No sockets and no files live here; everything is testable on buffers.

pub mod address;
pub mod command;
pub mod data;
pub mod printable;
pub mod reply;

pub use address::{Domain, Host, Mailbox, Path, ReversePath};
pub use command::{Body, Command, MailDsn, MailParams, Notify, RcptDsn, RcptTarget, Ret};
pub use printable::{escape, Escaped};
pub use reply::{Code, Enhanced, Reply, ReplyParser};
