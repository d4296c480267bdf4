//! `smtp::command::parse` on any line: never panics; a rejection is a
//! 5xx with an enhanced code of its class on one wire line; an accepted
//! MAIL/RCPT path prints to text that parses back to the same path (that
//! text is what the envelope stores and what goes to the next hop).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_relay::smtp::command::{self, Command, RcptTarget};
use smtp_relay::smtp::{Path, ReversePath};

fn check_path(p: &Path, utf8: bool, line: &[u8]) {
    let text = p.to_string();
    assert_eq!(
        Path::parse_stored(&text).as_ref(),
        Ok(p),
        "accepted path does not survive printing: {:?} → {text:?}",
        String::from_utf8_lossy(line)
    );
}

fuzz_target!(|line: &[u8]| {
    match command::parse(line) {
        Err(reply) => {
            let code = reply.code().value();
            assert!(
                matches!(code, 500 | 501 | 502 | 553 | 555),
                "unexpected rejection {code} for {line:?}"
            );
            let e = reply
                .enhanced()
                .expect("every rejection has an enhanced code");
            assert_eq!(u16::from(e.class), code / 100, "{reply}");
            let mut wire = Vec::new();
            reply.write_to(&mut wire).expect("write to a Vec");
            assert!(wire.ends_with(b"\r\n"), "{wire:?}");
            let body = &wire[..wire.len() - 2];
            assert!(
                !body.contains(&b'\r') && !body.contains(&b'\n'),
                "reply text breaks the line: {wire:?}"
            );
        }
        Ok(Command::Mail {
            from: ReversePath::Path(p),
            params,
        }) => check_path(&p, params.smtputf8, line),
        Ok(Command::Rcpt(RcptTarget::Path(p))) => check_path(&p, true, line),
        Ok(Command::Ehlo(name)) | Ok(Command::Helo(name)) => {
            assert!(!name.is_empty() && !name.contains(' '), "{name:?}");
            assert!(!name.chars().any(char::is_control), "{name:?}");
        }
        Ok(_) => {}
    }
});
