//! TLS reports (RFC 8460) as the tests read them: python3's `email`
//! package takes a report message apart, `base64` and `gzip` decode its
//! `application/tlsrpt+gzip` part, and serde_json reads the result.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{msg_path, queued_ids, read_env, run_tool, Relay};

/// python3: the headers, the report part's type and file name, and the
/// report itself, as one JSON object.
const PARSE: &str = r#"
import base64, email, email.policy, gzip, json, sys
raw = open(sys.argv[1], 'rb').read()
# the spool keeps the message after our Received line: whole
msg = email.message_from_bytes(raw, policy=email.policy.compat32)
out = {"headers": {k: str(v) for k, v in msg.items()},
       "content_type": msg.get_content_type(),
       "report_type": msg.get_param("report-type")}
for part in msg.walk():
    if part.get_content_type() == "application/tlsrpt+gzip":
        out["filename"] = part.get_filename()
        out["report"] = json.loads(gzip.decompress(part.get_payload(decode=True)))
print(json.dumps(out))
"#;

/// Every message the reports' MX holds, parsed; each must come from
/// `<tlsrpt@relay.test>` (the tests' `--tls-report-from`).
pub fn reports(rua_mx: &Relay) -> Vec<Value> {
    queued_ids(rua_mx.spool())
        .iter()
        .map(|id| {
            let path = msg_path(rua_mx.spool(), id);
            let run = run_tool(
                Command::new("python3").args(["-c", PARSE]).arg(&path),
                Duration::from_secs(30),
            );
            assert_eq!(run.code, Some(0), "python3 on {}: {run:?}", path.display());
            let v: Value = serde_json::from_str(&run.stdout).expect("python3 printed JSON");
            let env = read_env(rua_mx.spool(), id);
            assert!(env.contains("\nfrom: <tlsrpt@relay.test>\n"), "{env}");
            v
        })
        .collect()
}
