//! What the queue commands print: `list` lines (tab-separated), `list
//! --json` objects (schema version 1, documented in README), `list
//! --summary` and `show`. Everything a peer wrote is escaped before it
//! reaches a terminal.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::bounce;
use crate::smtp::printable::is_unprintable;
use crate::smtp::{escape, Escaped, ReversePath};
use crate::spool::{Envelope, Hold, RcptState, Spool};
use crate::time::{format_duration, iso8601};

/// Minimal JSON string encoding (RFC 8259 §7).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // RFC 8259 §7: any character may be escaped; these are, so
            // that a terminal never shows them raw (UTF-16 for non-BMP)
            c if (c as u32) < 0x20 || is_unprintable(c) => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn opt_json(s: Option<&str>) -> String {
    s.map(json_str).unwrap_or_else(|| "null".into())
}

fn sender_text(from: &ReversePath) -> String {
    match from {
        ReversePath::Null => "<>".into(),
        ReversePath::Path(p) => escape(&p.mailbox().to_string()).into_owned(),
    }
}

fn hold_text(h: Option<Hold>, now: u64) -> Option<String> {
    match h {
        Some(Hold::Forever) => Some("forever".into()),
        Some(Hold::Until(t)) if t > now => Some(iso8601(t)),
        _ => None,
    }
}

/// One `list` line: id, arrival, size, sender, then one field per
/// recipient, all tab-separated.
pub fn list_line(env: &Envelope, now: u64) -> String {
    let mut s = format!(
        "{}\t{}\t{}\t{}",
        env.id,
        iso8601(env.arrived),
        env.size,
        sender_text(&env.from)
    );
    let held = hold_text(env.hold, now);
    for r in &env.rcpts {
        let state = match (&held, r.state) {
            (Some(_), RcptState::Pending | RcptState::Deferred) => "held",
            (_, st) => st.as_str(),
        };
        let _ = write!(s, "\t{state} {}", Escaped(&r.path.mailbox().to_string()));
        if let Some(h) = &held {
            let _ = write!(s, " until={h}");
        } else if r.state == RcptState::Deferred {
            let _ = write!(s, " next={}", iso8601(env.next_try));
        }
        if let Some(reply) = &r.last_reply {
            let _ = write!(
                s,
                " reply=\"{}\"",
                escape(&reply.to_string()).replace('"', "'")
            );
        }
    }
    s
}

/// One `list --json` object (schema version 1, documented in README).
pub fn list_json(env: &Envelope, now: u64) -> String {
    let mut s = format!(
        "{{\"v\":1,\"id\":\"{}\",\"arrived\":{},\"arrived_iso\":\"{}\",\"size\":{},\"from\":{},\"client\":{},\"helo\":{},\"attempts\":{},\"next_try\":{},\"held_until\":{},\"rcpts\":[",
        env.id,
        env.arrived,
        iso8601(env.arrived),
        env.size,
        json_str(&env.from.mailbox().map(|m| m.to_string()).unwrap_or_default()),
        json_str(&env.client),
        json_str(&env.helo),
        env.attempts,
        env.next_try,
        match env.hold {
            Some(Hold::Forever) => "\"forever\"".to_string(),
            Some(Hold::Until(t)) if t > now => t.to_string(),
            _ => "null".to_string(),
        },
    );
    for (i, r) in env.rcpts.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"to\":{},\"forward_path\":{},\"state\":\"{}\",\"last_reply\":{}}}",
            json_str(&r.path.mailbox().to_string()),
            json_str(&r.path.to_string()),
            r.state.as_str(),
            opt_json(r.last_reply.as_ref().map(|st| st.to_string()).as_deref())
        );
    }
    s.push_str("]}");
    s
}

/// Per destination domain: messages, oldest age, most common last error
/// (Postfix's qshape, flattened).
pub fn summary(envs: &[Envelope], now: u64, json: bool) -> String {
    let mut s = Summary::default();
    for env in envs {
        s.add(env, now);
    }
    s.render(json)
}

/// `queue list --summary` as it is gathered: per domain, its counts, the
/// oldest message and the errors. Envelopes are added one by one (and
/// dropped), on several threads, each with its own `Summary`, merged at
/// the end: a million envelopes are never in memory at once.
#[derive(Default)]
pub struct Summary {
    rows: HashMap<String, SummaryRow>,
}

#[derive(Default)]
struct SummaryRow {
    messages: usize,
    recipients: usize,
    oldest: u64,
    errors: HashMap<String, usize>,
}

impl Summary {
    pub fn add(&mut self, env: &Envelope, now: u64) {
        let mut seen = Vec::new();
        for r in env.rcpts.iter().filter(|r| !r.state.is_final()) {
            let d = r.path.mailbox().host().key();
            let row = self.rows.entry(d.clone()).or_default();
            row.recipients += 1;
            if !seen.contains(&d) {
                row.messages += 1;
                seen.push(d);
            }
            row.oldest = row.oldest.max(now.saturating_sub(env.arrived));
            if let Some(e) = &r.last_reply {
                *row.errors.entry(e.to_string()).or_default() += 1;
            }
        }
    }

    pub fn merge(&mut self, other: Summary) {
        for (domain, theirs) in other.rows {
            let row = self.rows.entry(domain).or_default();
            row.messages += theirs.messages;
            row.recipients += theirs.recipients;
            row.oldest = row.oldest.max(theirs.oldest);
            for (e, n) in theirs.errors {
                *row.errors.entry(e).or_default() += n;
            }
        }
    }

    pub fn render(self, json: bool) -> String {
        render_summary(self.rows, json)
    }
}

fn render_summary(rows: HashMap<String, SummaryRow>, json: bool) -> String {
    let mut rows: Vec<(String, SummaryRow)> = rows.into_iter().collect();
    rows.sort_by(|a, b| b.1.messages.cmp(&a.1.messages).then(a.0.cmp(&b.0)));
    let mut out = String::new();
    if !json {
        out.push_str("domain\tmessages\trecipients\toldest\ttop_error\n");
    }
    for (domain, row) in rows {
        let top = row
            .errors
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(e, _)| e.clone());
        if json {
            let _ = writeln!(
                out,
                "{{\"v\":1,\"domain\":{},\"messages\":{},\"recipients\":{},\"oldest_seconds\":{},\"top_error\":{}}}",
                json_str(&domain),
                row.messages,
                row.recipients,
                row.oldest,
                opt_json(top.as_deref())
            );
        } else {
            let _ = writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}",
                Escaped(&domain),
                row.messages,
                row.recipients,
                format_duration(Duration::from_secs(row.oldest)),
                escape(top.as_deref().unwrap_or("-"))
            );
        }
    }
    out
}

/// The destinations backing off after a throttling reply, as the server
/// saved them in `SPOOL/throttled` (README "Traffic shaping"): one line
/// each after the summary table, `throttled DEST until HH:MM:SS (REPLY)`
/// (UTC), or a JSON object per line. Nothing when none is.
pub fn throttled_summary(
    throttled: &[(String, crate::shaping::Throttle)],
    now: u64,
    json: bool,
) -> String {
    let mut out = String::new();
    for (dest, t) in throttled {
        let until = t.until_ms.div_ceil(1000);
        if until <= now {
            continue;
        }
        if json {
            let _ = writeln!(
                out,
                "{{\"v\":1,\"throttled\":{},\"until\":{},\"level\":{},\"reply\":{}}}",
                json_str(dest),
                until,
                t.level,
                json_str(&t.reply)
            );
        } else {
            let hms = &iso8601(until)[11..19];
            let _ = writeln!(
                out,
                "throttled {} until {hms} ({})",
                Escaped(dest),
                escape(&t.reply)
            );
        }
    }
    out
}

/// `queue show`: the envelope, each recipient with its history, headers.
pub(super) fn show_text(spool: &Spool, env: &Envelope, now: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "id:        {}", env.id);
    let _ = writeln!(
        s,
        "arrived:   {} ({} ago)",
        iso8601(env.arrived),
        format_duration(Duration::from_secs(now.saturating_sub(env.arrived)))
    );
    let _ = writeln!(s, "from:      {}", Escaped(&env.from.to_string()));
    let _ = writeln!(s, "client:    [{}] helo={}", env.client, Escaped(&env.helo));
    if let Some(user) = &env.auth {
        let _ = writeln!(s, "auth:      {}", Escaped(user));
    }
    let _ = writeln!(s, "size:      {}", env.size);
    match spool.body_differs(env) {
        Ok(None) => {}
        Ok(Some(differs)) => {
            let _ = writeln!(
                s,
                "damaged:   {differs}; the server moves it to corrupt/ unsent"
            );
        }
        Err(e) => {
            let _ = writeln!(s, "damaged:   (body unreadable: {e})");
        }
    }
    let _ = writeln!(s, "attempts:  {}", env.attempts);
    let _ = writeln!(s, "next try:  {}", iso8601(env.next_try));
    if let Some(h) = hold_text(env.hold, now) {
        let _ = writeln!(s, "held:      until {h}");
        if let Some(r) = &env.hold_reason {
            let _ = writeln!(s, "reason:    {}", Escaped(r));
        }
    }
    for r in &env.rcpts {
        let path = r.path.to_string();
        let _ = writeln!(s, "recipient: {} {}", Escaped(&path), r.state.as_str());
        let t = &r.tries;
        if t.total > t.recent.len() as u32 {
            let _ = writeln!(
                s,
                "  {} attempts since {}; the last {}:",
                t.total,
                iso8601(t.first),
                t.recent.len()
            );
        }
        for a in &t.recent {
            let (relay, status) = (Escaped(&a.relay), Escaped(&a.status.to_string()));
            let _ = writeln!(s, "  {} {relay} {status}", iso8601(a.time));
        }
    }
    let _ = writeln!(s, "headers:");
    match spool
        .read_body(env.id)
        .map_err(|e| e.to_string())
        .and_then(|b| bounce::read_headers(b).map_err(|e| e.to_string()))
    {
        Ok(h) => {
            for line in String::from_utf8_lossy(&h).lines() {
                // folding keeps its tabs; everything else unprintable is escaped
                let parts: Vec<_> = line.split('\t').map(escape).collect();
                let _ = writeln!(s, "  {}", parts.join("\t"));
            }
        }
        Err(e) => {
            let _ = writeln!(s, "  (unreadable: {e})");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escaping() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
