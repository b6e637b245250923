//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/connections`,
//! `/connectors` (replays absorbed per connector; duplicates its sinks were
//! spared, `fetch_topics`),
//! `/window/lookup?topic=T&key=K` (was this record seen, when, at which
//! offset) and `POST /window/purge?topic=T` (forget a topic's keys);
//! `/quotas` (rules, pauses, each connector's rate, limit and throttle),
//! `PUT /quotas` (a TOML body of `[[quotas]]`, in force at once) and
//! `POST /connectors/{name}/pause` / `resume`.
//!
//! Routes on axum; tower-http checks the bearer token, caps the body and
//! times a request out; hyper serves each connection (one request per
//! connection, no keep-alive), plain or through `[admin.tls]`'s acceptor
//! (rustls stays in `tls.rs`). The bodies are in [`views`].
//!
//! Not a backdoor: it binds loopback by default. A call that changes state
//! needs `Authorization: Bearer <admin token>` whenever a token is set, and
//! is refused outright on a non-loopback listener without one;
//! `admin.token_for_reads` extends the token to every route but the probes.
//! `[admin.tls]` serves it over HTTPS.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use crate::config::Admin;
use crate::idempotency::Key;
use crate::shared::Shared;

mod views;

/// Requests larger than this are not admin requests (hyper's smallest
/// read buffer: a longer head is answered 431).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The largest body taken (PUT /quotas: a list of rules).
const MAX_REQUEST_BODY: usize = 256 * 1024;
/// A connection (TLS handshake, request and response) ends after this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = router(shared.clone());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (shared, app) = (shared.clone(), app.clone());
        tokio::spawn(async move {
            let served = tokio::time::timeout(CONNECTION_TIMEOUT, async {
                match &shared.admin_tls {
                    Some(tls) => match tls.acceptor().accept(stream).await {
                        Ok(stream) => connection(stream, app).await,
                        Err(e) => tracing::debug!(%peer, error = %e, "admin TLS handshake failed"),
                    },
                    None => connection(stream, app).await,
                }
            })
            .await;
            if served.is_err() {
                tracing::debug!(%peer, "admin request timed out");
            }
        });
    }
}

/// One HTTP/1.1 connection, one request.
async fn connection<S>(stream: S, app: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "admin connection failed");
    }
}

/// Every route, behind the token check, the body cap and the timeout.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { text(StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/connections", get(connections))
        .route("/connectors", get(connectors))
        // `{*rest}`, not `{name}/pause`: a name may hold an encoded `/`,
        // and an empty one is answered "bad connector name".
        .route("/connectors/{*rest}", post(pause_or_resume))
        .route("/quotas", get(quotas).put(set_quotas).post(set_quotas))
        .route("/window/lookup", get(window_lookup))
        .route("/window/purge", post(purge_topic))
        .fallback(no_such_path)
        .method_not_allowed_fallback(no_such_path)
        .layer(RequestBodyLimitLayer::new(MAX_REQUEST_BODY))
        .layer(ValidateRequestHeaderLayer::custom(Authorize(
            shared.clone(),
        )))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            CONNECTION_TIMEOUT,
        ))
        .with_state(shared)
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(CONTENT_TYPE, TEXT)], body.into()).into_response()
}

fn json(body: String) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, JSON)], body).into_response()
}

/// Unknown paths and methods: 404 with the routes to try, 405 for a
/// method no route takes.
async fn no_such_path(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    match method {
        Method::GET => text(
            StatusCode::NOT_FOUND,
            format!("no such path {path}; try /healthz, /readyz, /metrics, /connections, /connectors, /quotas, /window/lookup?topic=T&key=K\n"),
        ),
        Method::POST | Method::PUT => text(
            StatusCode::NOT_FOUND,
            format!("no such path {path} for {method}; try POST /window/purge?topic=T, PUT /quotas, POST /connectors/NAME/pause or /resume\n"),
        ),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path}\n"),
        ),
    }
}

// === impl Authorize ===

/// The token check, as a tower-http request validator.
#[derive(Clone)]
struct Authorize(Arc<Shared>);

impl<B> ValidateRequest<B> for Authorize {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response> {
        let authorization = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let need = need(request.method().as_str(), request.uri().path());
        if let Err((status, message)) = authorize(&self.0.config.admin, need, authorization) {
            let mut response = text(status, message);
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    "Bearer realm=\"idemgate admin\""
                        .parse()
                        .expect("a header value"),
                );
            }
            return Err(response);
        }
        // Only GET, POST and PUT are routes here: HEAD and the rest are
        // refused, as axum would otherwise answer HEAD from a GET route.
        if !matches!(*request.method(), Method::GET | Method::POST | Method::PUT) {
            let (method, path) = (request.method(), request.uri().path());
            return Err(text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} not allowed on {path}\n"),
            ));
        }
        Ok(())
    }
}

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
fn authorize(
    admin: &Admin,
    need: Need,
    authorization: Option<&str>,
) -> Result<(), (StatusCode, &'static str)> {
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
            StatusCode::FORBIDDEN,
            "refused: this admin listener is not loopback and no admin token is set \
             (admin.token or $IDEMGATE_ADMIN_TOKEN)\n",
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
        Some(_) => Err((StatusCode::UNAUTHORIZED, "wrong bearer token\n")),
        None => Err((
            StatusCode::UNAUTHORIZED,
            "this call needs `Authorization: Bearer <admin token>`\n",
        )),
    }
}

/// Compares without stopping at the first difference (no timing hint of
/// how much of a guess was right); only the length shows.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

// === the routes ===

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.readiness() {
        // Still ready: failing open (forwarding unrecorded) keeps the
        // Kafka path up, where a 503 would take every replica of a
        // central tier with the same full disk out of its Service.
        Ok(()) => match shared.degraded() {
            why if why.is_empty() => text(StatusCode::OK, "ready\n"),
            why => text(
                StatusCode::OK,
                format!("ready, degraded: {}\n", why.join("; ")),
            ),
        },
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join(", ")),
        ),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let store_writable = shared.store.write_failure().is_none();
    let body =
        crate::telemetry::prometheus::render(&shared.metrics, &shared.quotas, store_writable);
    (
        StatusCode::OK,
        [(CONTENT_TYPE, crate::telemetry::prometheus::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

async fn connections(State(shared): State<Arc<Shared>>) -> Response {
    json(views::connections(&shared))
}

async fn connectors(State(shared): State<Arc<Shared>>) -> Response {
    json(views::connectors(&shared.metrics.dedup))
}

async fn quotas(State(shared): State<Arc<Shared>>) -> Response {
    json(views::quotas(&shared.quotas))
}

/// `POST /connectors/{name}/pause` and `/resume`.
async fn pause_or_resume(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
) -> Response {
    let (name, paused) = match rest.rsplit_once('/') {
        Some((name, "pause")) => (name, true),
        Some((name, "resume")) => (name, false),
        _ => return no_such_path(method, uri).await,
    };
    if name.is_empty() {
        return text(StatusCode::BAD_REQUEST, "bad connector name\n");
    }
    let (entities, tier) = shared.quotas.pause(name, paused);
    tracing::warn!(connector = %name, entities, tier, "connector {} (admin)", if paused { "paused" } else { "resumed" });
    json(views::paused(name, paused, entities, tier))
}

/// `PUT /quotas`: a TOML body of `[[quotas]]` entries (and `[quota]`
/// settings, optional) as in the config file, put in force for every
/// connection at once. It replaces every rule: send the whole list. A
/// SIGHUP later reloads the file's rules over it.
async fn set_quotas(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    match crate::config::parse_quotas(&String::from_utf8_lossy(&body)) {
        Ok((settings, rules)) => {
            let n = rules.len();
            let changes = shared.quotas.apply(settings, rules);
            shared.quotas.reloads.fetch_add(1, Relaxed);
            for c in &changes {
                tracing::info!(change = %c, "quota changed (admin)");
            }
            tracing::info!(rules = n, changed = changes.len(), "quotas set (admin)");
            json(views::quotas_set(n, &changes))
        }
        Err(problems) => {
            shared.quotas.reload_failures.fetch_add(1, Relaxed);
            text(StatusCode::BAD_REQUEST, format!("{problems}\n"))
        }
    }
}

/// The query parameters of `/window/purge` and `/window/lookup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeQuery {
    topic: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupQuery {
    topic: Option<String>,
    key: Option<String>,
    record_key: Option<String>,
}

/// A query string that did not parse: 400 with serde's reason.
fn bad_query(rejection: QueryRejection) -> Response {
    text(
        StatusCode::BAD_REQUEST,
        format!("{}\n", rejection.body_text()),
    )
}

/// `topic=T`: forgets every key the window holds for topic T (a topic
/// deleted and created again must not see its new records dropped as
/// replays of the old ones).
async fn purge_topic(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<PurgeQuery>, QueryRejection>,
) -> Response {
    let topic = match query {
        Ok(Query(PurgeQuery { topic: Some(t) })) if !t.is_empty() => t,
        Ok(_) => return text(StatusCode::BAD_REQUEST, "topic= is required\n"),
        Err(rejection) => return bad_query(rejection),
    };
    let window = shared.window.clone();
    let name = topic.clone();
    let purged = match tokio::task::spawn_blocking(move || window.purge_topic(&name)).await {
        Ok(Ok(purged)) => purged,
        Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    tracing::info!(
        topic,
        keys = purged.keys,
        segments = purged.segments,
        "window purged for a topic (admin)"
    );
    json(views::purged(&topic, purged.keys, purged.segments))
}

/// `topic=T&key=K`: K is an idempotency key as the tag header carries it
/// (32 hex digits), or, with `record_key=K` instead, a record key (for rules
/// with `key = "record-key"`).
async fn window_lookup(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(query)) => match lookup(query, &shared) {
            Ok(body) => json(body),
            Err(message) => text(StatusCode::BAD_REQUEST, format!("{message}\n")),
        },
        Err(rejection) => bad_query(rejection),
    }
}

fn lookup(query: LookupQuery, shared: &Shared) -> Result<String, String> {
    let topic = query.topic.ok_or("topic= is required")?;
    let secret = shared.config.dedup.key_secret.as_ref();
    let key = match (query.key, query.record_key) {
        (Some(hex), None) => Key::parse_hex(hex.as_bytes()).ok_or(
            "key= must be 32 lowercase hex digits, as the proxy writes the idempotency-key header",
        )?,
        (None, Some(rk)) => crate::idempotency::key::record_key(secret, &topic, rk.as_bytes()),
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
    Ok(views::lookup(
        &topic,
        key,
        position.filter(|p| p.topic == topic).as_ref(),
        window.is_loaded(),
    ))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::{authorize, need, Need};
    use crate::config::Config;

    fn admin(text: &str) -> crate::config::Admin {
        Config::parse(text).unwrap().admin
    }

    const TOKEN: &str = "0123456789abcdef-token";
    const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;
    const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;

    #[test]
    fn changes_need_the_token_reads_and_probes_do_not() {
        let a = admin(&format!("[admin]\ntoken = \"{TOKEN}\"\n"));
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(authorize(&a, Need::Probe, None), Ok(()));
        assert_eq!(authorize(&a, Need::Read, None), Ok(()));
        assert_eq!(authorize(&a, Need::Change, Some(&bearer)), Ok(()));
        assert_eq!(
            authorize(&a, Need::Change, None).unwrap_err().0,
            UNAUTHORIZED
        );
        let same_length = format!("Bearer {}", "x".repeat(TOKEN.len()));
        assert_eq!(
            authorize(&a, Need::Change, Some(&same_length))
                .unwrap_err()
                .0,
            UNAUTHORIZED
        );
        let wrong = format!("Bearer {TOKEN}x");
        assert_eq!(
            authorize(&a, Need::Change, Some(&wrong)).unwrap_err().0,
            UNAUTHORIZED
        );
        assert_eq!(
            authorize(&a, Need::Change, Some(TOKEN)).unwrap_err().0,
            UNAUTHORIZED,
            "no scheme"
        );
    }

    #[test]
    fn without_a_token_changes_are_for_loopback_only() {
        let local = admin("[admin]\nlisten = \"127.0.0.1:9644\"\n");
        assert_eq!(authorize(&local, Need::Change, None), Ok(()));
        let open = admin("[admin]\nlisten = \"0.0.0.0:9644\"\n");
        assert_eq!(
            authorize(&open, Need::Change, None).unwrap_err().0,
            FORBIDDEN
        );
        assert_eq!(
            authorize(&open, Need::Change, Some("Bearer anything-at-all-here"))
                .unwrap_err()
                .0,
            FORBIDDEN
        );
        assert_eq!(authorize(&open, Need::Read, None), Ok(()));
        assert_eq!(authorize(&open, Need::Probe, None), Ok(()));
    }

    #[test]
    fn token_for_reads_covers_everything_but_the_probes() {
        let a = admin(&format!(
            "[admin]\nlisten = \"0.0.0.0:9644\"\ntoken = \"{TOKEN}\"\ntoken_for_reads = true\n"
        ));
        assert_eq!(authorize(&a, Need::Read, None).unwrap_err().0, UNAUTHORIZED);
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
    fn query_strings_are_percent_decoded() {
        use axum::extract::Query;
        let uri = "/window/purge?topic=a%2Fb+c".parse().unwrap();
        let Query(q) = Query::<super::PurgeQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(q.topic.as_deref(), Some("a/b c"));
        let uri = "/window/lookup?topic=t&nope=1".parse().unwrap();
        assert!(Query::<super::LookupQuery>::try_from_uri(&uri).is_err());
    }
}
