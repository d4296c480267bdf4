//! `SPOOL/throttled`: the destinations backing off after a throttling
//! reply (`shaping`), written by the server whenever that set changes and
//! read by `queue list --summary` (a separate process) and by the next
//! start (so a restart does not knock at once where "later" was said).
//!
//! One line per destination: `KEY<TAB>UNTIL_MS<TAB>LEVEL<TAB>REPLY`.
//! Written to a temporary file and renamed over the old one, so a reader
//! sees the old set or the new one. Not fsynced: after a crash an older
//! set (or none) costs one early knock, never mail.

use std::fs;
use std::io;

use super::{Spool, SpoolError};
use crate::shaping::Throttle;

const FILE: &str = "throttled";

impl Spool {
    /// Replaces the saved set with `throttles`.
    pub fn write_throttled(&self, throttles: &[(String, Throttle)]) -> Result<(), SpoolError> {
        let mut text = String::new();
        for (key, t) in throttles {
            // keys and replies are one line each (status text is made
            // single-line when built); tabs would break the fields
            let clean = |s: &str| s.replace(['\t', '\r', '\n'], " ");
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                clean(key),
                t.until_ms,
                t.level,
                clean(&t.reply)
            ));
        }
        let path = self.root().join(FILE);
        let tmp = self.tmp_dir().join(FILE);
        fs::write(&tmp, text).map_err(|e| SpoolError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| SpoolError::io(&path, e))
    }

    /// The saved set; empty when there is none. Lines that do not parse
    /// are skipped (the file is advisory).
    pub fn read_throttled(&self) -> Vec<(String, Throttle)> {
        let path = self.root().join(FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                log::warn!("{}: {e}", path.display());
                return Vec::new();
            }
        };
        text.lines().filter_map(parse_line).collect()
    }
}

fn parse_line(line: &str) -> Option<(String, Throttle)> {
    let mut f = line.splitn(4, '\t');
    let key = f.next()?.to_string();
    let until_ms = f.next()?.parse().ok()?;
    let level = f.next()?.parse().ok()?;
    let reply = f.next()?.to_string();
    Some((
        key,
        Throttle {
            until_ms,
            level,
            reply,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_round_trip_and_bad_lines_are_skipped() {
        let dir = std::env::temp_dir().join(format!("smtp-relay-throttled-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir).unwrap();
        assert!(spool.read_throttled().is_empty());
        let t = Throttle {
            until_ms: 1_000_000_000_123,
            level: 2,
            reply: "421 4.7.0 Try\tagain later".into(),
        };
        spool
            .write_throttled(&[("mx.a:25".into(), t.clone())])
            .unwrap();
        let back = spool.read_throttled();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, "mx.a:25");
        assert_eq!(back[0].1.until_ms, t.until_ms);
        assert_eq!(back[0].1.reply, "421 4.7.0 Try again later");
        fs::write(dir.join(FILE), "garbage\nmx.b:25\tx\t1\tr\n").unwrap();
        assert!(spool.read_throttled().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
