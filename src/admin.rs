//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/connections`,
//! `/connectors` (replays absorbed per connector) and
//! `/window/lookup?topic=T&key=K` (was this record seen, when, at which offset).
//!
//! A deliberately small HTTP/1.1 server (one request per connection, no
//! keep-alive): its routes are all read-only, and pulling in a web framework
//! for them would cost more build time than the code below.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::idempotency::Key;
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
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, content_type, body) = route(method, path, query, shared);
    let _ = respond(&mut stream, status, content_type, &body).await;
}

fn route(method: &str, path: &str, query: &str, shared: &Shared) -> (u16, &'static str, String) {
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
        "/connectors" => (200, "application/json", connectors_json(shared)),
        "/window/lookup" => match window_lookup(query, shared) {
            Ok(body) => (200, "application/json", body),
            Err(message) => (400, TEXT, format!("{message}\n")),
        },
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        _ => (
            404,
            TEXT,
            format!("no such path {path}; try /healthz, /readyz, /metrics, /connections, /connectors, /window/lookup?topic=T&key=K\n"),
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

/// Per connector: the replays it absorbed, and its records per topic.
fn connectors_json(shared: &Shared) -> String {
    let dedup = &shared.metrics.dedup;
    let replays = dedup.replays();
    let topics = dedup.topics();
    let mut names: Vec<&String> = replays.keys().collect();
    names.extend(topics.keys().map(|(c, _)| c));
    names.sort();
    names.dedup();
    let rows: Vec<String> = names
        .into_iter()
        .map(|name| {
            let r = replays.get(name).copied().unwrap_or_default();
            let per_topic: Vec<String> = topics
                .iter()
                .filter(|((c, _), _)| c == name)
                .map(|((_, t), c)| {
                    format!(
                        "{{\"topic\":{},\"records\":{},\"dropped\":{},\"observed\":{}}}",
                        json_string(Some(t)),
                        c.records,
                        c.dropped,
                        c.observed
                    )
                })
                .collect();
            format!(
                "{{\"connector\":{},\"producer_sessions\":{},\"sessions_with_replays\":{},\"records_dropped\":{},\"largest_replay\":{},\"topics\":[{}]}}",
                json_string(Some(name)),
                r.sessions,
                r.sessions_with_replays,
                r.records_dropped,
                r.largest_replay,
                per_topic.join(",")
            )
        })
        .collect();
    format!("[{}]\n", rows.join(",\n"))
}

/// `topic=T&key=K`: K is an idempotency key as the tag header carries it
/// (32 hex digits), or, with `record_key=K` instead, a record key (for rules
/// with `key = "record-key"`).
fn window_lookup(query: &str, shared: &Shared) -> Result<String, String> {
    let mut topic = None;
    let mut key = None;
    let mut record_key = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| format!("{name}: bad percent-encoding"))?;
        match name {
            "topic" => topic = Some(String::from_utf8_lossy(&value).into_owned()),
            "key" => key = Some(value),
            "record_key" => record_key = Some(value),
            other => {
                return Err(format!(
                    "unknown parameter {other:?} (topic, key, record_key)"
                ))
            }
        }
    }
    let topic = topic.ok_or("topic= is required")?;
    let key = match (key, record_key) {
        (Some(hex), None) => Key::parse_hex(&hex)
            .ok_or("key= must be 32 hex digits, as in the idempotency-key header")?,
        (None, Some(rk)) => crate::idempotency::key::record_key(&topic, &rk),
        _ => return Err("give exactly one of key= or record_key=".into()),
    };
    let window = &shared.window;
    let mut position = window.position(key).map_err(|e| e.to_string())?;
    if position.is_none() {
        // A record that arrived already tagged is kept under its key scoped to the topic.
        let scoped = crate::idempotency::key::scoped(&topic, key);
        position = window.position(scoped).map_err(|e| e.to_string())?;
    }
    let body = match position.filter(|p| p.topic == topic) {
        Some(p) => format!(
            "{{\"topic\":{},\"key\":\"{key}\",\"seen\":true,\"partition\":{},\"offset\":{},\"acked_at_ms\":{}}}\n",
            json_string(Some(&topic)),
            p.partition,
            if p.offset >= 0 { p.offset.to_string() } else { "null".into() },
            p.acked_ms
        ),
        None => format!(
            "{{\"topic\":{},\"key\":\"{key}\",\"seen\":false,\"window_loaded\":{}}}\n",
            json_string(Some(&topic)),
            window.is_loaded()
        ),
    };
    Ok(body)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
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
        400 => "Bad Request",
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
    use super::{json_string, percent_decode};

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c").unwrap(), b"a/b c");
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string(None), "null");
        assert_eq!(
            json_string(Some("CN=a\\,O=\"x\"\n")),
            r#""CN=a\\,O=\"x\"\u000a""#
        );
    }
}
