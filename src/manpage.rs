//! `smtp-relay --man`: the manual page in roff (man(7)), made from the
//! `--help` text, which `cli.rs` builds from its option tables: one
//! source, so the page cannot drift from the options. Install it with
//! `smtp-relay --man > /usr/local/share/man/man8/smtp-relay.8`.

/// Escapes text for roff: backslashes, and a leading `.` or `'` that
/// would read as a request.
fn esc(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// The page, from `help` (the `--help` text).
pub fn render(help: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        ".TH SMTP\\-RELAY 8 \"\" \"smtp\\-relay {}\" \"System Manager's Manual\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(
        ".SH NAME\nsmtp\\-relay, sendmail, mailq \\- a store\\-and\\-forward SMTP relay\n",
    );
    let mut lines = help.lines().peekable();
    // the first line is the name line, already given
    lines.next();
    let mut in_usage = false;
    for line in lines {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if !line.starts_with(' ') && t.ends_with(':') {
            let head = t.trim_end_matches(':');
            if head == "Usage" {
                out.push_str(".SH SYNOPSIS\n");
                in_usage = true;
            } else {
                if in_usage {
                    out.push_str(".SH OPTIONS\n");
                    in_usage = false;
                }
                out.push_str(&format!(".SS {}\n", esc(head)));
            }
            continue;
        }
        if in_usage {
            out.push_str(&format!(".nf\n{}\n.fi\n", esc(t)));
            continue;
        }
        if line.starts_with("  -") {
            // "  --name HINT    description": the option, then its text
            let (left, desc) = match t.find("   ") {
                Some(i) => (&t[..i], t[i..].trim()),
                None => (t, ""),
            };
            out.push_str(&format!(".TP\n.B {}\n{}\n", esc(left.trim()), esc(desc)));
        } else {
            out.push_str(&format!("{}\n", esc(t)));
        }
    }
    out.push_str(SENDMAIL);
    out
}

const SENDMAIL: &str = r#".SH SENDMAIL
Called as \fBsendmail\fR (a link to the binary), or as \fBsmtp\-relay sendmail\fR,
it takes sendmail's command line: \fB\-t\fR, \fB\-i\fR, \fB\-oi\fR, \fB\-f\fR \fIADDR\fR,
\fB\-r\fR \fIADDR\fR, \fB\-F\fR \fINAME\fR, \fB\-bm\fR, \fB\-bs\fR, \fB\-bp\fR, \fB\-bi\fR, \fB\-q\fR,
\fB\-B\fR \fI7BIT|8BITMIME\fR, \fB\-N\fR \fINOTIFY\fR, \fB\-v\fR, \fB\-C\fR \fIFILE\fR;
other \fB\-o\fR options are ignored. Called as \fBmailq\fR it lists the queue,
as \fBnewaliases\fR it does nothing. A user who cannot write the spool
submits through its \fImaildrop/\fR folder, picked up by the running server.
.SH FILES
.TP
.I /etc/smtp\-relay.conf
the configuration file (\fB$SMTP_RELAY_CONFIG\fR names another)
.SH SEE ALSO
The README of the project: the configuration, hardening and exit codes.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_tagged_paragraphs() {
        let help = "x: y\n\nUsage:\n  smtp-relay serve [OPTIONS]   run\n\nReceiving (serve):\n  --listen ADDR:PORT     address to listen on\n  --tls-cert FILE        a .pem\n";
        let page = render(help);
        assert!(page.starts_with(".TH SMTP\\-RELAY 8"), "{page}");
        assert!(page.contains(".SH SYNOPSIS\n.nf\nsmtp\\-relay serve [OPTIONS]   run\n.fi\n"));
        assert!(
            page.contains(".SH OPTIONS\n.SS Receiving (serve)\n"),
            "{page}"
        );
        assert!(page.contains(".TP\n.B \\-\\-listen ADDR:PORT\naddress to listen on\n"));
    }
}
