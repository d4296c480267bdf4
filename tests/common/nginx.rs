//! nginx (Debian's package) serving MTA-STS policies over HTTPS on
//! loopback, for the MTA-STS and TLS-reporting tests.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::postfix::unused_port;
use super::{require_tool, wait_until, write_file};

const LIMIT: Duration = Duration::from_secs(30);

/// nginx serving `www/.well-known/mta-sts.txt` over HTTPS on
/// 127.0.0.1:`port`, one process (`master_process off`), killed on drop.
pub struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
}

impl Nginx {
    pub fn start(test: &str, dir: &Path, cert: &Path, key: &Path) -> Option<Nginx> {
        let bin = require_tool("nginx", test)?;
        std::fs::create_dir_all(dir.join("www/.well-known")).expect("mkdir www");
        std::fs::create_dir_all(dir.join("tmp")).expect("mkdir tmp");
        let port = unused_port();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
             types {{ text/plain txt; }}\n default_type application/octet-stream;\n\
             server {{\n  listen 127.0.0.1:{port} ssl;\n  ssl_certificate {};\n  ssl_certificate_key {};\n  root {d}/www;\n }}\n}}\n",
            cert.display(),
            key.display(),
        );
        let conf = write_file(dir, "nginx.conf", conf.as_bytes());
        let child = Command::new(bin)
            .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let nginx = Nginx {
            child: Some(child),
            dir: dir.to_path_buf(),
            port,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let up = wait_until(LIMIT, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(up, "nginx did not listen: {}", nginx.error_log());
        Some(nginx)
    }

    pub fn set_policy(&self, text: &str) {
        let p = self.dir.join("www/.well-known/mta-sts.txt");
        std::fs::write(p, text).expect("write the policy");
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
