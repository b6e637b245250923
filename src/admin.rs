//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/connections`,
//! `/connectors` (replays absorbed per connector; duplicates its sinks were
//! spared, `fetch_topics`),
//! `/window/lookup?topic=T&key=K` (was this record seen, when, at which
//! offset) and `POST /window/purge?topic=T` (forget a topic's keys);
//! `/quotas` (rules, pauses, each connector's rate, limit and throttle),
//! `PUT /quotas` (a TOML body of `[[quotas]]`, in force at once) and
//! `POST /connectors/{name}/pause` / `resume`.
//!
//! A deliberately small HTTP/1.1 server (one request per connection, no
//! keep-alive): pulling in a web framework for a handful of routes would cost
//! more build time than the code below.
//!
//! Not a backdoor: it binds loopback by default. A call that changes state
//! needs `Authorization: Bearer <admin token>` whenever a token is set, and
//! is refused outright on a non-loopback listener without one;
//! `admin.token_for_reads` extends the token to every route but the probes.
//! `[admin.tls]` serves it over HTTPS.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::config::Admin;
use crate::idempotency::Key;
use crate::shared::Shared;

mod views;

/// Requests larger than this are not admin requests.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The largest body taken (PUT /quotas: a list of rules).
const MAX_REQUEST_BODY: usize = 256 * 1024;

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
            let served = tokio::time::timeout(Duration::from_secs(10), async {
                match &shared.admin_tls {
                    Some(tls) => match tls.acceptor().accept(stream).await {
                        Ok(stream) => handle(stream, &shared).await,
                        Err(e) => tracing::debug!(%peer, error = %e, "admin TLS handshake failed"),
                    },
                    None => handle(stream, &shared).await,
                }
            })
            .await;
            if served.is_err() {
                tracing::debug!(%peer, "admin request timed out");
            }
        });
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: &Shared) {
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
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |at| at + 4);
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let content_length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if content_length > MAX_REQUEST_BODY {
        let _ = respond(&mut stream, 413, TEXT, "request body too large\n").await;
        return;
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < content_length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(content_length);
    let body = String::from_utf8_lossy(&body);
    let mut lines = head.lines();
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let authorization = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_string());
    let (status, content_type, body) = match authorize(
        &shared.config.admin,
        need(method, path),
        authorization.as_deref(),
    ) {
        Ok(()) if method == "POST" || method == "PUT" => {
            change(method, path, query, &body, shared).await
        }
        Ok(()) => route(method, path, query, shared),
        Err((status, message)) => (status, TEXT, message),
    };
    let _ = respond(&mut stream, status, content_type, &body).await;
}

const TEXT: &str = "text/plain; charset=utf-8";

/// What a call may do, for [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// /healthz, /readyz: what orchestrators probe, always open.
    Probe,
    Read,
    Change,
}

fn need(method: &str, path: &str) -> Need {
    match (method, path) {
        ("GET", "/healthz" | "/readyz") => Need::Probe,
        ("GET", _) => Need::Read,
        _ => Need::Change,
    }
}

/// Who may call: the token when one is set (always for changes, for reads
/// with `token_for_reads`); without a token, changes only on loopback.
fn authorize(admin: &Admin, need: Need, authorization: Option<&str>) -> Result<(), (u16, String)> {
    let token_required = match need {
        Need::Probe => false,
        Need::Read => admin.token_for_reads,
        Need::Change => admin.token.is_some() || !admin.is_loopback(),
    };
    if !token_required {
        return Ok(());
    }
    let Some(token) = &admin.token else {
        return Err((
            403,
            "refused: this admin listener is not loopback and no admin token is set \
             (admin.token or $IDEMGATE_ADMIN_TOKEN)\n"
                .into(),
        ));
    };
    let given = authorization
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) => Ok(()),
        Some(_) => Err((401, "wrong bearer token\n".into())),
        None => Err((
            401,
            "this call needs `Authorization: Bearer <admin token>`\n".into(),
        )),
    }
}

/// Compares without stopping at the first difference (no timing hint of
/// how much of a guess was right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The calls that change state.
async fn change(
    method: &str,
    path: &str,
    query: &str,
    body: &str,
    shared: &Shared,
) -> (u16, &'static str, String) {
    if let Some(rest) = path.strip_prefix("/connectors/") {
        let pause = match rest.rsplit_once('/') {
            Some((name, "pause")) => Some((name, true)),
            Some((name, "resume")) => Some((name, false)),
            _ => None,
        };
        if let (Some((name, paused)), "POST") = (pause, method) {
            let Some(name) = percent_decode(name)
                .map(|n| String::from_utf8_lossy(&n).into_owned())
                .filter(|n| !n.is_empty())
            else {
                return (400, TEXT, "bad connector name\n".into());
            };
            let entities = shared.quotas.set_paused(&name, paused);
            tracing::warn!(connector = %name, entities, "connector {} (admin)", if paused { "paused" } else { "resumed" });
            return (
                200,
                "application/json",
                format!(
                    "{{\"connector\":{},\"paused\":{paused},\"entities\":{entities}}}\n",
                    views::json_string(Some(&name))
                ),
            );
        }
    }
    match (method, path) {
        ("POST", "/window/purge") => match purge_topic(query, shared).await {
            Ok(body) => (200, "application/json", body),
            Err(message) => (400, TEXT, format!("{message}\n")),
        },
        ("PUT" | "POST", "/quotas") => set_quotas(body, shared),
        _ => (
            404,
            TEXT,
            format!("no such path {path} for {method}; try POST /window/purge?topic=T, PUT /quotas, POST /connectors/NAME/pause or /resume\n"),
        ),
    }
}

/// `PUT /quotas`: a TOML body of `[[quotas]]` entries (and `[quota]`
/// settings, optional) as in the config file, put in force for every
/// connection at once. It replaces every rule: send the whole list. A
/// SIGHUP later reloads the file's rules over it.
fn set_quotas(body: &str, shared: &Shared) -> (u16, &'static str, String) {
    use std::sync::atomic::Ordering::Relaxed;
    match crate::config::parse_quotas(body) {
        Ok((settings, rules)) => {
            let n = rules.len();
            let changes = shared.quotas.apply(settings, rules);
            shared.quotas.reloads.fetch_add(1, Relaxed);
            for c in &changes {
                tracing::info!(change = %c, "quota changed (admin)");
            }
            tracing::info!(rules = n, changed = changes.len(), "quotas set (admin)");
            let listed: Vec<String> = changes
                .iter()
                .map(|c| views::json_string(Some(c)))
                .collect();
            (
                200,
                "application/json",
                format!("{{\"rules\":{n},\"changed\":[{}]}}\n", listed.join(",")),
            )
        }
        Err(problems) => {
            shared.quotas.reload_failures.fetch_add(1, Relaxed);
            (400, TEXT, format!("{problems}\n"))
        }
    }
}

/// `topic=T`: forgets every key the window holds for topic T (a topic
/// deleted and created again must not see its new records dropped as
/// replays of the old ones).
async fn purge_topic(query: &str, shared: &Shared) -> Result<String, String> {
    let mut topic = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| format!("{name}: bad percent-encoding"))?;
        match name {
            "topic" => topic = Some(String::from_utf8_lossy(&value).into_owned()),
            other => return Err(format!("unknown parameter {other:?} (topic)")),
        }
    }
    let topic = topic
        .filter(|t| !t.is_empty())
        .ok_or("topic= is required")?;
    let window = shared.window.clone();
    let name = topic.clone();
    let purged = tokio::task::spawn_blocking(move || window.purge_topic(&name))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    tracing::info!(
        topic,
        keys = purged.keys,
        segments = purged.segments,
        "window purged for a topic (admin)"
    );
    Ok(format!(
        "{{\"topic\":{},\"keys_forgotten\":{},\"segments_removed\":{}}}\n",
        views::json_string(Some(&topic)),
        purged.keys,
        purged.segments
    ))
}

fn route(method: &str, path: &str, query: &str, shared: &Shared) -> (u16, &'static str, String) {
    if method != "GET" {
        return (405, TEXT, format!("{method} not allowed on {path}\n"));
    }
    match path {
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/readyz" => match shared.readiness() {
            // Still ready: failing open (forwarding unrecorded) keeps the
            // Kafka path up, where a 503 would take every replica of a
            // central tier with the same full disk out of its Service.
            Ok(()) => match shared.store.write_failure() {
                Some(e) => (
                    200,
                    TEXT,
                    format!("ready, degraded: the store refuses writes ({e}); records pass unrecorded until idemgate restarts\n"),
                ),
                None => (200, TEXT, "ready\n".into()),
            },
            Err(why) => (503, TEXT, format!("not ready: {}\n", why.join(", "))),
        },
        "/connections" => (200, "application/json", views::connections_json(shared)),
        "/connectors" => (200, "application/json", views::connectors_json(shared)),
        "/quotas" => (200, "application/json", views::quotas(&shared.quotas)),
        "/window/lookup" => match window_lookup(query, shared) {
            Ok(body) => (200, "application/json", body),
            Err(message) => (400, TEXT, format!("{message}\n")),
        },
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            {
                shared.metrics.store_writable.store(
                    i64::from(shared.store.write_failure().is_none()),
                    std::sync::atomic::Ordering::Relaxed,
                );
                let mut text = shared.metrics.render();
                crate::telemetry::prometheus::quotas(&shared.quotas, &mut text);
                text
            },
        ),
        _ => (
            404,
            TEXT,
            format!("no such path {path}; try /healthz, /readyz, /metrics, /connections, /connectors, /quotas, /window/lookup?topic=T&key=K\n"),
        ),
    }
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
    let secret = shared.config.dedup.key_secret.as_ref();
    let key = match (key, record_key) {
        (Some(hex), None) => Key::parse_hex(&hex).ok_or(
            "key= must be 32 lowercase hex digits, as the proxy writes the idempotency-key header",
        )?,
        (None, Some(rk)) => crate::idempotency::key::record_key(secret, &topic, &rk),
        _ => return Err("give exactly one of key= or record_key=".into()),
    };
    let window = &shared.window;
    // A record's window key is its tag scoped to the topic; before that was
    // so on the produce path, its untagged records were kept under the tag
    // itself, and those keys stay until they expire.
    let scoped = crate::idempotency::key::scoped(secret, &topic, key);
    let mut position = window.position(scoped).map_err(|e| e.to_string())?;
    if position.is_none() {
        position = window.position(key).map_err(|e| e.to_string())?;
    }
    let body = match position.filter(|p| p.topic == topic) {
        Some(p) => format!(
            "{{\"topic\":{},\"key\":\"{key}\",\"seen\":true,\"partition\":{},\"offset\":{},\"acked_at_ms\":{}}}\n",
            views::json_string(Some(&topic)),
            p.partition,
            if p.offset >= 0 { p.offset.to_string() } else { "null".into() },
            p.acked_ms
        ),
        None => format!(
            "{{\"topic\":{},\"key\":\"{key}\",\"seen\":false,\"window_loaded\":{}}}\n",
            views::json_string(Some(&topic)),
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

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let challenge = if status == 401 {
        "www-authenticate: Bearer realm=\"idemgate admin\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{challenge}connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::views::json_string;
    use super::{authorize, need, percent_decode, Need};
    use crate::config::Config;

    fn admin(text: &str) -> crate::config::Admin {
        Config::parse(text).unwrap().admin
    }

    const TOKEN: &str = "0123456789abcdef-token";

    #[test]
    fn changes_need_the_token_reads_and_probes_do_not() {
        let a = admin(&format!("[admin]\ntoken = \"{TOKEN}\"\n"));
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(authorize(&a, Need::Probe, None), Ok(()));
        assert_eq!(authorize(&a, Need::Read, None), Ok(()));
        assert_eq!(authorize(&a, Need::Change, Some(&bearer)), Ok(()));
        assert_eq!(authorize(&a, Need::Change, None).unwrap_err().0, 401);
        let wrong = format!("Bearer {TOKEN}x");
        assert_eq!(
            authorize(&a, Need::Change, Some(&wrong)).unwrap_err().0,
            401
        );
        assert_eq!(
            authorize(&a, Need::Change, Some(TOKEN)).unwrap_err().0,
            401,
            "no scheme"
        );
    }

    #[test]
    fn without_a_token_changes_are_for_loopback_only() {
        let local = admin("[admin]\nlisten = \"127.0.0.1:9644\"\n");
        assert_eq!(authorize(&local, Need::Change, None), Ok(()));
        let open = admin("[admin]\nlisten = \"0.0.0.0:9644\"\n");
        assert_eq!(authorize(&open, Need::Change, None).unwrap_err().0, 403);
        assert_eq!(
            authorize(&open, Need::Change, Some("Bearer anything-at-all-here"))
                .unwrap_err()
                .0,
            403
        );
        assert_eq!(authorize(&open, Need::Read, None), Ok(()));
        assert_eq!(authorize(&open, Need::Probe, None), Ok(()));
    }

    #[test]
    fn token_for_reads_covers_everything_but_the_probes() {
        let a = admin(&format!(
            "[admin]\nlisten = \"0.0.0.0:9644\"\ntoken = \"{TOKEN}\"\ntoken_for_reads = true\n"
        ));
        assert_eq!(authorize(&a, Need::Read, None).unwrap_err().0, 401);
        assert_eq!(
            authorize(&a, Need::Read, Some(&format!("Bearer {TOKEN}"))),
            Ok(())
        );
        assert_eq!(authorize(&a, Need::Probe, None), Ok(()));
        assert_eq!(need("GET", "/readyz"), Need::Probe);
        assert_eq!(need("GET", "/metrics"), Need::Read);
        assert_eq!(need("POST", "/readyz"), Need::Change);
        assert_eq!(need("DELETE", "/window/lookup"), Need::Change);
    }

    #[test]
    fn bad_admin_settings_are_listed_with_their_keys() {
        let err = Config::parse("[admin]\ntoken = \"short\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.token"), "{err}");
        let err = Config::parse("[admin]\ntoken_for_reads = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.token_for_reads"), "{err}");
        let err = Config::parse("[admin.tls]\ncert = \"/x.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.tls.key"), "{err}");
        // Never printed, whatever prints the config.
        let a = admin(&format!("[admin]\ntoken = \"{TOKEN}\"\n"));
        assert!(!format!("{a:?}").contains(TOKEN));
    }

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
