//! Health and readiness probes: a command, an HTTP GET (2xx passes) or a TCP connect.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tend_api::{CheckSpec, ProbeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs one probe; true if it passed within the check's timeout.
pub async fn probe(check: &CheckSpec, sandbox: &Path, env: &BTreeMap<String, String>) -> bool {
    let timeout = Duration::from_secs(check.timeout_seconds.max(1));
    let fut = async {
        match check.kind {
            ProbeKind::Cmd => {
                let Some(cmd) = &check.cmd else { return false };
                let mut c = tokio::process::Command::new("/bin/sh");
                c.arg("-c")
                    .arg(cmd)
                    .current_dir(sandbox)
                    .envs(env)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .process_group(0)
                    .kill_on_drop(true);
                matches!(c.status().await, Ok(s) if s.success())
            }
            ProbeKind::Tcp => match check.port {
                Some(p) => tokio::net::TcpStream::connect(("127.0.0.1", p)).await.is_ok(),
                None => false,
            },
            ProbeKind::Http => {
                let Some(p) = check.port else { return false };
                let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", p)).await else { return false };
                let path = check.path.clone().unwrap_or_else(|| "/".into());
                let req =
                    format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{p}\r\nUser-Agent: tend-agent\r\n\r\n");
                if s.write_all(req.as_bytes()).await.is_err() {
                    return false;
                }
                let mut buf = [0u8; 64];
                let mut n = 0;
                while n < 12 {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                // "HTTP/1.x 2xx"
                let head = String::from_utf8_lossy(&buf[..n]);
                head.starts_with("HTTP/")
                    && head.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2'))
            }
            _ => false,
        }
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(false)
}
