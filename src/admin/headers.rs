//! Addresses in header fields (RFC 5322 §3.4 address lists), for `send
//! -t` and for the session's checks of a message's header.

/// Addresses in an RFC 5322 address-list header value: the `<...>` parts,
/// or bare `local@domain` words; group names and comments are skipped.
pub fn header_addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    // drop comments (...) first
    let mut clean = String::new();
    let mut depth = 0;
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' if depth == 0 => {
                quoted = !quoted;
                clean.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            _ => clean.push(c),
        }
    }
    for part in split_unquoted(&clean, ',') {
        let part = part.trim();
        // "group: a, b;" — the group name ends at ':' when no '<' precedes it
        let part = match (part.find(':'), part.find('<')) {
            (Some(c), None) | (Some(c), Some(_))
                if !part[..c].contains('@') && !part[..c].contains('<') =>
            {
                &part[c + 1..]
            }
            _ => part,
        };
        let part = part.trim().trim_end_matches(';').trim();
        if let (Some(a), Some(b)) = (part.rfind('<'), part.rfind('>')) {
            if a < b {
                let addr = part[a + 1..b].trim();
                if !addr.is_empty() {
                    out.push(addr.to_string());
                }
                continue;
            }
        }
        if part.contains('@') {
            out.push(part.to_string());
        }
    }
    out
}

fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut angle = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle += 1,
            '>' if !quoted && angle > 0 => angle -= 1,
            c if c == sep && !quoted && angle == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists() {
        assert_eq!(
            header_addresses(
                " \"Doe, J\" <j@x.example>, k@y.example (Kay), team: a@z.example, b@z.example;"
            ),
            vec!["j@x.example", "k@y.example", "a@z.example", "b@z.example"]
        );
    }
}
