//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/connections`.
//!
//! A deliberately small HTTP/1.1 server (one request per connection, no
//! keep-alive): it has three read-only routes today, and pulling in a web
//! framework for them would cost more build time than the code below.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::Shared;

/// Requests larger than this are not admin requests.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) =
                tokio::time::timeout(Duration::from_secs(10), handle(stream, &shared)).await
            {
                tracing::debug!(%peer, error = %e, "admin request timed out");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX_REQUEST_HEAD {
            let _ = respond(&mut stream, 431, "text/plain", "request head too large\n").await;
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = route(method, path, shared);
    let _ = respond(&mut stream, status, content_type, &body).await;
}

fn route(method: &str, path: &str, shared: &Shared) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return (405, TEXT, format!("{method} not allowed on {path}\n"));
    }
    match path {
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/readyz" => match shared.readiness() {
            Ok(()) => (200, TEXT, "ready\n".into()),
            Err(why) => (503, TEXT, format!("not ready: {}\n", why.join(", "))),
        },
        "/connections" => (200, "application/json", connections_json(shared)),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        _ => (
            404,
            TEXT,
            format!("no such path {path}; try /healthz, /readyz, /metrics\n"),
        ),
    }
}

/// Open client connections as a JSON array, oldest first.
fn connections_json(shared: &Shared) -> String {
    let registry = shared.registry.lock().expect("registry lock");
    let rows: Vec<String> = registry
        .iter()
        .map(|(id, v)| {
            let since = v.since.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            format!(
                "{{\"conn_id\":{id},\"client_addr\":{},\"node_id\":{},\"client_id\":{},\"principal\":{},\"since_unix\":{since}}}",
                json_string(Some(&v.client_addr.to_string())),
                v.node_id,
                json_string(v.client_id.as_deref()),
                json_string(v.principal.as_deref()),
            )
        })
        .collect();
    format!("[{}]\n", rows.join(",\n"))
}

/// A JSON string literal (or null).
fn json_string(s: Option<&str>) -> String {
    let Some(s) = s else { return "null".into() };
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::json_string;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string(None), "null");
        assert_eq!(
            json_string(Some("CN=a\\,O=\"x\"\n")),
            r#""CN=a\\,O=\"x\"\u000a""#
        );
    }
}
