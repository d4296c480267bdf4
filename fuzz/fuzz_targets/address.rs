//! `Path::parse` with and without SMTPUTF8: never panics; UTF-8 mode
//! accepts everything ASCII mode accepts, identically; ASCII input parses
//! the same in both modes; a parsed path prints to text that parses back
//! to the same path; the final domain is what follows the mailbox's `@`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_relay::smtp::{Path, ReversePath};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let ascii = Path::parse(s, false);
    let utf8 = Path::parse(s, true);
    if let Ok(p) = &ascii {
        assert_eq!(utf8.as_ref(), Ok(p), "{s:?}: UTF-8 mode disagrees");
        assert!(!p.mailbox().is_utf8(), "{s:?}: non-ASCII without SMTPUTF8");
    }
    if s.is_ascii() {
        assert_eq!(ascii, utf8, "{s:?}: ASCII input, different results");
    }
    for (parsed, mode) in [(&ascii, false), (&utf8, true)] {
        let Ok(p) = parsed else { continue };
        let text = p.to_string();
        assert_eq!(
            Path::parse_stored(&text).as_ref(),
            Ok(p),
            "{s:?} (utf8={mode}) prints as {text:?}, which does not parse back"
        );
        // the domain relay control looks at is the text after the '@'
        // that ends the local part
        let mailbox = p.mailbox().to_string();
        let host = p.mailbox().host().to_string();
        assert!(mailbox.ends_with(&format!("@{host}")), "{mailbox} / {host}");
        assert_eq!(
            ReversePath::parse(s, mode).map(|r| r.to_string()),
            Ok(text.clone())
        );
    }
});
