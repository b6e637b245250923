//! SASL passes through; the proxy only learns who authenticated.
//!
//! SaslHandshake names the mechanism; each SaslAuthenticate carries the
//! client's token. The user name is read from the token (never the password
//! or the token itself, which are neither kept nor logged) and becomes the
//! connection's principal only when the broker answers the exchange's last
//! SaslAuthenticate with no error. A new handshake on the same connection
//! (KIP-368 re-authentication) starts over.
//!
//! - PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`; the principal is
//!   authcid, as Kafka's PlainSaslServer has it. One round.
//! - SCRAM-SHA-256/512 (RFC 5802): client-first `gs2-header,n=user,r=nonce`,
//!   with `=2C` and `=3D` unescaped. Bound after the second round (the
//!   client-final message) succeeds.
//! - OAUTHBEARER (RFC 7628): `n,a=...,\x01auth=Bearer <jwt>\x01\x01`; the
//!   principal is the JWT's `sub` claim (the broker validated the token; the
//!   proxy only reads it). One round.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
};

use super::{on_response, Call, Exchange, Filter};
use crate::message;

/// Who authenticated on a connection: the mTLS subject from the start, or
/// the SASL principal once the broker accepts it.
#[derive(Debug, Default)]
pub struct Principal {
    name: Mutex<Option<String>>,
    /// Bumped on every change: the quota filter re-keys its entity.
    changes: AtomicU64,
}

// === impl Principal ===

impl Principal {
    pub fn new(name: Option<String>) -> Self {
        Principal {
            name: Mutex::new(name),
            changes: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> Option<String> {
        self.name.lock().expect("principal lock").clone()
    }

    /// How many times the principal changed since the connection opened.
    pub fn changes(&self) -> u64 {
        self.changes.load(Relaxed)
    }

    fn bind(&self, name: String) {
        *self.name.lock().expect("principal lock") = Some(name);
        self.changes.fetch_add(1, Relaxed);
    }
}

/// One connection's SASL exchange, and what a bound principal changes.
pub struct Binding<'a> {
    state: Mutex<SaslState>,
    principal: &'a Principal,
    /// The connection's span, whose `principal` field is recorded.
    conn_span: tracing::Span,
    /// Shows the principal elsewhere (the connection registry).
    on_bind: Box<dyn Fn(&str) + Send + Sync + 'a>,
}

impl<'a> Binding<'a> {
    pub fn new(
        principal: &'a Principal,
        conn_span: tracing::Span,
        on_bind: impl Fn(&str) + Send + Sync + 'a,
    ) -> Self {
        Binding {
            state: Mutex::new(SaslState::default()),
            principal,
            conn_span,
            on_bind: Box::new(on_bind),
        }
    }

    fn bind(&self, principal: String) {
        self.conn_span.record("principal", principal.as_str());
        tracing::info!(%principal, "SASL authentication accepted by the broker");
        (self.on_bind)(&principal);
        self.principal.bind(principal);
    }
}

/// For a SaslAuthenticate response: did the broker accept?
fn accepted(api_version: i16, frame: &Bytes) -> bool {
    message::decode_response::<SaslAuthenticateResponse>(
        ApiKey::SaslAuthenticate,
        api_version,
        frame,
    )
    // SCRAM: a server-final message "e=..." is a refusal (RFC 5802), and
    // tansu sends it with error code 0.
    .is_ok_and(|r| r.error_code == 0 && !r.auth_bytes.starts_with(b"e="))
}

/// The SASL filter: learns the principal from the exchange, binds it when
/// the broker accepts.
#[derive(Clone)]
pub struct Sasl<'a> {
    binding: &'a Binding<'a>,
}

// === impl Sasl ===

impl<'a> Sasl<'a> {
    pub fn new(binding: &'a Binding<'a>) -> Self {
        Sasl { binding }
    }
}

impl<'a> Filter<'a> for Sasl<'a> {
    const NAME: &'static str = "sasl";

    fn call(&self, ex: Exchange, next: impl FnOnce(Exchange) -> Call<'a> + Send + 'a) -> Call<'a> {
        let binding = self.binding;
        let (head, frame) = (&ex.head, &ex.frame);
        let mut authenticates = None;
        match head.api_key {
            ApiKey::SaslHandshake => {
                if let Some(req) = message::decode_request::<SaslHandshakeRequest>(frame, head) {
                    binding
                        .state
                        .lock()
                        .expect("sasl lock")
                        .handshake(req.mechanism.as_str());
                }
            }
            ApiKey::SaslAuthenticate => {
                if let Some(req) = message::decode_request::<SaslAuthenticateRequest>(frame, head) {
                    authenticates = binding
                        .state
                        .lock()
                        .expect("sasl lock")
                        .authenticate(&req.auth_bytes);
                }
            }
            _ => {}
        }
        let version = head.api_version;
        let call = next(ex);
        let Some(principal) = authenticates else {
            return call;
        };
        on_response(call, move |mut reply| async move {
            if accepted(version, reply.frame.bytes()?) {
                binding.bind(principal);
            }
            Ok(reply)
        })
    }
}

/// What a connection's SASL exchange has shown so far.
#[derive(Debug, Default)]
pub struct SaslState {
    mechanism: Option<String>,
    round: u32,
    /// The user named in SCRAM's first message, until the second succeeds.
    scram_user: Option<String>,
}

impl SaslState {
    /// A SaslHandshake: a new exchange with `mechanism` begins.
    pub fn handshake(&mut self, mechanism: &str) {
        *self = SaslState {
            mechanism: Some(mechanism.to_ascii_uppercase()),
            ..SaslState::default()
        };
    }

    /// A SaslAuthenticate carrying `token`: the principal to bind if the
    /// broker accepts this round, when this round completes the exchange.
    pub fn authenticate(&mut self, token: &Bytes) -> Option<String> {
        self.round += 1;
        match self.mechanism.as_deref()? {
            "PLAIN" => plain_user(token),
            "SCRAM-SHA-256" | "SCRAM-SHA-512" => {
                if self.round == 1 {
                    self.scram_user = scram_user(token);
                    None
                } else {
                    self.scram_user.take()
                }
            }
            "OAUTHBEARER" => oauth_subject(token),
            _ => None,
        }
    }
}

fn plain_user(token: &[u8]) -> Option<String> {
    let mut parts = token.splitn(3, |b| *b == 0);
    let _authzid = parts.next()?;
    let authcid = parts.next()?;
    parts.next()?; // a password must follow
    let user = std::str::from_utf8(authcid).ok()?;
    (!user.is_empty()).then(|| user.to_string())
}

fn scram_user(token: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(token).ok()?;
    // gs2-header is "n,," or "y,," or "p=...,", optionally with "a=authzid".
    let bare = text.splitn(3, ',').nth(2)?;
    let user = bare.split(',').find_map(|attr| attr.strip_prefix("n="))?;
    let user = user.replace("=2C", ",").replace("=3D", "=");
    (!user.is_empty()).then_some(user)
}

fn oauth_subject(token: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(token).ok()?;
    let bearer = text
        .split('\x01')
        .find_map(|kv| kv.strip_prefix("auth="))?
        .trim();
    let jwt = bearer
        .strip_prefix("Bearer ")
        .or_else(|| bearer.strip_prefix("bearer "))?;
    let payload = jwt.split('.').nth(1)?;
    let json = base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get("sub")?.as_str().map(str::to_string)
}

/// Unpadded base64url (RFC 4648 §5), as JWTs use.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn plain_binds_authcid_in_one_round() {
        let mut s = SaslState::default();
        s.handshake("PLAIN");
        assert_eq!(
            s.authenticate(&b(b"\0alice\0secret")).as_deref(),
            Some("alice")
        );
        s.handshake("plain");
        assert_eq!(
            s.authenticate(&b(b"admin\0bob\0pw")).as_deref(),
            Some("bob")
        );
        s.handshake("PLAIN");
        assert_eq!(s.authenticate(&b(b"nonsense")), None);
    }

    #[test]
    fn scram_binds_the_user_after_the_second_round() {
        let mut s = SaslState::default();
        s.handshake("SCRAM-SHA-512");
        assert_eq!(
            s.authenticate(&b(b"n,,n=al=2Cice=3D,r=fyko+d2lbbFgONRv9qkxdawL")),
            None
        );
        let user = s.authenticate(&b(b"c=biws,r=fyko...,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="));
        assert_eq!(user.as_deref(), Some("al,ice="));
        // A third round (none in SCRAM) binds nothing.
        assert_eq!(s.authenticate(&b(b"x")), None);
    }

    #[test]
    fn oauthbearer_binds_the_jwt_subject() {
        // {"alg":"none"} . {"sub":"svc-connect","scope":"kafka"} . (no signature)
        let jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzdmMtY29ubmVjdCIsInNjb3BlIjoia2Fma2EifQ.";
        let token = format!("n,a=svc-connect,\x01auth=Bearer {jwt}\x01\x01");
        let mut s = SaslState::default();
        s.handshake("OAUTHBEARER");
        assert_eq!(
            s.authenticate(&b(token.as_bytes())).as_deref(),
            Some("svc-connect")
        );
        s.handshake("OAUTHBEARER");
        assert_eq!(
            s.authenticate(&b(b"n,,\x01auth=Bearer not.a-jwt!\x01\x01")),
            None
        );
    }

    #[test]
    fn no_handshake_no_principal() {
        let mut s = SaslState::default();
        assert_eq!(s.authenticate(&b(b"\0alice\0secret")), None);
        s.handshake("GSSAPI");
        assert_eq!(s.authenticate(&b(b"\0alice\0secret")), None);
    }
}
