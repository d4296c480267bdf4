//! `ReplyParser::feed`, line by line as the client reads them: never
//! panics; a finished reply has a 2xx-5xx code, one text line per line
//! fed, an enhanced code of its class if any, and survives being written
//! (`Reply::write_to`) and parsed again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_relay::smtp::{Reply, ReplyParser};

fn check(r: &Reply, fed: usize) {
    let code = r.code().value();
    assert!((200..600).contains(&code), "{code}");
    assert_eq!(r.lines().len(), fed, "{r:?}");
    if let Some(e) = r.enhanced() {
        assert_eq!(u16::from(e.class), code / 100, "{r:?}");
    }
    let mut wire = Vec::new();
    r.write_to(&mut wire).expect("write to a Vec");
    let wire = String::from_utf8(wire).expect("replies are UTF-8");
    let parts: Vec<&str> = wire.split("\r\n").collect();
    assert_eq!(parts.last(), Some(&""), "{wire:?}");
    let lines = &parts[..parts.len() - 1];
    let mut p = ReplyParser::new();
    let mut again = None;
    for (i, l) in lines.iter().enumerate() {
        match p.feed(l) {
            Ok(Some(r2)) => {
                assert_eq!(i + 1, lines.len(), "reply ended early: {wire:?}");
                again = Some(r2);
            }
            Ok(None) => {}
            Err(e) => panic!("our own rendering {wire:?} does not parse: {e}"),
        }
    }
    assert_eq!(again.as_ref(), Some(r), "{wire:?}");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut p = ReplyParser::new();
    let mut fed = 0;
    for line in text.split('\n').take(200) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        fed += 1;
        match p.feed(line) {
            Ok(Some(r)) => {
                check(&r, fed);
                fed = 0;
            }
            Ok(None) => {}
            // the client drops such a connection: start over
            Err(_) => {
                p = ReplyParser::new();
                fed = 0;
            }
        }
    }
});
