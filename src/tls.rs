//! TLS: the only file that uses rustls.
//!
//! To the brokers (`[upstream.tls]`): each broker's certificate is checked
//! against a CA bundle (or the system trust store) and its own host name (or
//! `server_name`), with an optional client certificate for brokers that
//! require mTLS.
//!
//! Clients may connect with TLS (`[listen.tls]`), optionally with a client
//! certificate (mTLS) whose subject becomes their principal. The certificate,
//! key and CA files are checked every `reload_interval` and loaded again when
//! they change: new connections get the new ones, open connections keep
//! theirs. A file that fails to load leaves the previous configuration in
//! place and says why. TLS 1.2 and 1.3 only, with rustls' safe defaults.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ListenTls, Problem, UpstreamTls};

/// The client-side TLS configuration, reloadable.
pub struct ServerTls {
    settings: ListenTls,
    current: RwLock<Arc<ServerConfig>>,
    /// Modification time and size of each file when last loaded.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl ServerTls {
    /// Loads the files; every problem comes back with its key path.
    pub fn load(settings: &ListenTls) -> Result<ServerTls, Vec<Problem>> {
        let config = build(settings)?;
        Ok(ServerTls {
            stamps: Mutex::new(stamps(settings)),
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The acceptor for a new connection, with the configuration of the moment.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().expect("tls lock").clone())
    }

    /// Loads the files again if any changed. `Ok(true)`: reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, Vec<Problem>> {
        let now = stamps(&self.settings);
        let mut last = self.stamps.lock().expect("tls lock");
        if *last == now {
            return Ok(false);
        }
        // Remember the attempt either way: a broken file is reported once,
        // not every interval, and fixed files are picked up when they change.
        *last = now;
        let config = build(&self.settings)?;
        *self.current.write().expect("tls lock") = Arc::new(config);
        Ok(true)
    }

    pub fn settings(&self) -> &ListenTls {
        &self.settings
    }
}

fn paths(settings: &ListenTls) -> Vec<&Path> {
    let mut p = vec![settings.cert.as_path(), settings.key.as_path()];
    if let Some(ca) = &settings.client_ca {
        p.push(ca);
    }
    p
}

fn stamps(settings: &ListenTls) -> Vec<Option<(SystemTime, u64)>> {
    paths(settings)
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Checks the TLS files of a config the way `run` would load them.
pub fn check(settings: &ListenTls) -> Vec<Problem> {
    build(settings).err().unwrap_or_default()
}

fn problem(settings: &ListenTls, key: &str, message: String) -> Problem {
    Problem {
        path: format!("{}.{key}", settings.section),
        message,
    }
}

fn build(settings: &ListenTls) -> Result<ServerConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    let certs = read_certs_at(
        &settings.cert,
        &format!("{}.cert", settings.section),
        &mut problems,
    );
    if let Some(leaf) = certs.first() {
        check_validity_at(leaf, &format!("{}.cert", settings.section), &mut problems);
    }
    let key = match PrivateKeyDer::from_pem_file(&settings.key) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(problem(
                settings,
                "key",
                format!(
                    "{}: no private key read: {}",
                    settings.key.display(),
                    pem_error(&e)
                ),
            ));
            None
        }
    };
    let verifier = settings.client_ca.as_ref().and_then(|ca| {
        let cas = read_certs_at(
            ca,
            &format!("{}.client_ca", settings.section),
            &mut problems,
        );
        let mut roots = RootCertStore::empty();
        for c in cas {
            if let Err(e) = roots.add(c) {
                problems.push(problem(
                    settings,
                    "client_ca",
                    format!("{}: {e}", ca.display()),
                ));
            }
        }
        if roots.is_empty() {
            return None;
        }
        match WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build() {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(problem(
                    settings,
                    "client_ca",
                    format!("{}: {e}", ca.display()),
                ));
                None
            }
        }
    });
    let (Some(key), false) = (key, certs.is_empty() || !problems.is_empty()) else {
        return Err(problems);
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            vec![problem(
                settings,
                "cert",
                format!("no usable TLS versions: {e}"),
            )]
        })?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        let message = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{} does not match the certificate in {}",
                settings.key.display(),
                settings.cert.display()
            ),
            other => format!("{}: {other}", settings.key.display()),
        };
        vec![problem(settings, "key", message)]
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM item of that kind in the file".into()
        }
        other => format!("{other:?}"),
    }
}

/// Reads a PEM certificate file; problems are filed under `key_path`.
fn read_certs_at(
    path: &Path,
    key_path: &str,
    problems: &mut Vec<Problem>,
) -> Vec<CertificateDer<'static>> {
    let mut fail = |message: String| {
        problems.push(Problem {
            path: key_path.to_string(),
            message: format!("{}: {message}", path.display()),
        })
    };
    let iter = match CertificateDer::pem_file_iter(path) {
        Ok(i) => i,
        Err(e) => {
            fail(pem_error(&e));
            return Vec::new();
        }
    };
    let mut certs = Vec::new();
    for c in iter {
        match c {
            Ok(c) => certs.push(c),
            Err(e) => {
                fail(pem_error(&e));
                return Vec::new();
            }
        }
    }
    if certs.is_empty() {
        fail("no certificate in the file".into());
    }
    certs
}

fn check_validity_at(cert: &CertificateDer<'_>, key_path: &str, problems: &mut Vec<Problem>) {
    let mut fail = |message: String| {
        problems.push(Problem {
            path: key_path.to_string(),
            message,
        })
    };
    let Some((not_before, not_after)) = der::validity(cert) else {
        fail("the certificate cannot be read (not X.509 DER inside the PEM)".into());
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if now > not_after {
        fail(format!(
            "the certificate expired on {}",
            der::format_time(not_after)
        ));
    } else if now < not_before {
        fail(format!(
            "the certificate is not valid before {}",
            der::format_time(not_before)
        ));
    }
}

// === TLS to the brokers ===

/// The proxy's TLS client configuration for its broker connections.
#[derive(Clone)]
pub struct UpstreamTlsConnector {
    connector: tokio_rustls::TlsConnector,
    /// Overrides each broker's own host name for verification and SNI.
    server_name: Option<String>,
}

/// A broker connection over TLS.
pub type UpstreamTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

impl UpstreamTlsConnector {
    pub fn load(settings: &UpstreamTls) -> Result<UpstreamTlsConnector, Vec<Problem>> {
        let mut problems = Vec::new();
        let up = |key: &str, message: String| Problem {
            path: format!("upstream.tls.{key}"),
            message,
        };
        let mut roots = RootCertStore::empty();
        match &settings.ca {
            Some(ca) => {
                for c in read_certs_at(ca, "upstream.tls.ca", &mut problems) {
                    if let Err(e) = roots.add(c) {
                        problems.push(up("ca", format!("{}: {e}", ca.display())));
                    }
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for c in native.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    problems.push(up(
                        "ca",
                        "no CA given and the system trust store is empty: set upstream.tls.ca"
                            .into(),
                    ));
                }
            }
        }
        let client_auth = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                let certs = read_certs_at(cert, "upstream.tls.cert", &mut problems);
                if let Some(leaf) = certs.first() {
                    check_validity_at(leaf, "upstream.tls.cert", &mut problems);
                }
                match PrivateKeyDer::from_pem_file(key) {
                    Ok(k) => Some((certs, k)),
                    Err(e) => {
                        problems.push(up(
                            "key",
                            format!("{}: no private key read: {}", key.display(), pem_error(&e)),
                        ));
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(name) = &settings.server_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                problems.push(up(
                    "server_name",
                    format!("{name:?} is not a DNS name or IP address"),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| vec![up("ca", format!("no usable TLS versions: {e}"))])?
            .with_root_certificates(roots);
        let config = match client_auth {
            Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
                let message = match e {
                    rustls::Error::InconsistentKeys(_) => {
                        "does not match the certificate in upstream.tls.cert".to_string()
                    }
                    other => other.to_string(),
                };
                vec![up("key", message)]
            })?,
            None => builder.with_no_client_auth(),
        };
        Ok(UpstreamTlsConnector {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: settings.server_name.clone(),
        })
    }

    /// The rustls configuration, for a client that makes its own handshakes
    /// (the shared window's).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.connector.config().clone()
    }

    /// The TLS handshake with a broker at `host` (the host part of its address).
    pub async fn connect(&self, host: &str, tcp: TcpStream) -> std::io::Result<UpstreamTlsStream> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|_| {
            std::io::Error::other(format!("{name:?} is not a valid TLS server name"))
        })?;
        self.connector.connect(name, tcp).await
    }
}

/// Checks the upstream TLS files the way `run` would load them.
pub fn check_upstream(settings: &UpstreamTls) -> Vec<Problem> {
    UpstreamTlsConnector::load(settings)
        .err()
        .unwrap_or_default()
}

/// A client's TLS stream, after the handshake.
pub type ClientTlsStream = TlsStream<TcpStream>;

/// The client certificate's subject, RFC 2253 style as Kafka's default
/// principal builder writes it (`CN=alice,O=Acme`), if the client sent one.
pub fn peer_principal(stream: &ClientTlsStream) -> Option<String> {
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates()?.first()?;
    der::subject(leaf)
}

/// Just enough DER to read a certificate's validity and subject.
pub mod der {
    /// (tag, contents, rest)
    fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *buf.first()?;
        let first = *buf.get(1)?;
        let (len, header) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *buf.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        Some((tag, buf.get(header..end)?, &buf[end..]))
    }

    /// The fields of tbsCertificate up to and including the subject.
    fn tbs_fields(cert: &[u8]) -> Option<(&[u8], &[u8])> {
        let (_, cert, _) = tlv(cert)?; // Certificate SEQUENCE
        let (_, tbs, _) = tlv(cert)?; // tbsCertificate SEQUENCE
        let mut rest = tbs;
        let (tag, _, r) = tlv(rest)?;
        if tag == 0xa0 {
            rest = r; // [0] version
        }
        let (_, _, r) = tlv(rest)?; // serialNumber
        let (_, _, r) = tlv(r)?; // signature
        let (_, _, r) = tlv(r)?; // issuer
        let (_, validity, r) = tlv(r)?; // validity
        let (_, subject, _) = tlv(r)?; // subject
        Some((validity, subject))
    }

    /// (notBefore, notAfter) as Unix seconds.
    pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
        let (validity, _) = tbs_fields(cert)?;
        let (t1, b, rest) = tlv(validity)?;
        let (t2, a, _) = tlv(rest)?;
        Some((time(t1, b)?, time(t2, a)?))
    }

    /// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ).
    fn time(tag: u8, b: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(b).ok()?.strip_suffix('Z')?;
        let (year, rest) = match tag {
            0x17 => {
                let yy: i64 = s.get(..2)?.parse().ok()?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
            }
            0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
            _ => return None,
        };
        let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
        let (month, day, hour, min, sec) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
        Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
    }

    /// Days since 1970-01-01 (Howard Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// `YYYY-MM-DD HH:MM:SS UTC`, for messages.
    pub fn format_time(t: i64) -> String {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        // Inverse of days_from_civil.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        )
    }

    /// The subject as RFC 2253 text, most specific first (as Java's
    /// `X500Principal.getName()`, which Kafka's SSL principal uses).
    pub fn subject(cert: &[u8]) -> Option<String> {
        let (_, mut rdns) = tbs_fields(cert)?;
        let mut parts = Vec::new();
        while !rdns.is_empty() {
            let (_, set, rest) = tlv(rdns)?;
            rdns = rest;
            let mut atvs = set;
            let mut rdn = Vec::new();
            while !atvs.is_empty() {
                let (_, atv, rest) = tlv(atvs)?;
                atvs = rest;
                let (_, oid, r) = tlv(atv)?;
                let (_, value, _) = tlv(r)?;
                rdn.push(format!(
                    "{}={}",
                    oid_name(oid),
                    escape(&String::from_utf8_lossy(value))
                ));
            }
            parts.push(rdn.join("+"));
        }
        parts.reverse();
        Some(parts.join(","))
    }

    fn oid_name(oid: &[u8]) -> String {
        match oid {
            [0x55, 0x04, 0x03] => "CN".into(),
            [0x55, 0x04, 0x06] => "C".into(),
            [0x55, 0x04, 0x07] => "L".into(),
            [0x55, 0x04, 0x08] => "ST".into(),
            [0x55, 0x04, 0x0a] => "O".into(),
            [0x55, 0x04, 0x0b] => "OU".into(),
            [0x55, 0x04, 0x09] => "STREET".into(),
            [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
            [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
            _ => dotted(oid),
        }
    }

    fn dotted(oid: &[u8]) -> String {
        let mut parts = Vec::new();
        if let Some(first) = oid.first() {
            parts.push((first / 40) as u64);
            parts.push((first % 40) as u64);
        }
        let mut acc: u64 = 0;
        for b in oid.iter().skip(1) {
            acc = (acc << 7) | (b & 0x7f) as u64;
            if b & 0x80 == 0 {
                parts.push(acc);
                acc = 0;
            }
        }
        parts
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(".")
    }

    fn escape(v: &str) -> String {
        let mut out = String::with_capacity(v.len());
        for (i, c) in v.chars().enumerate() {
            let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                || (i == 0 && (c == '#' || c == ' '))
                || (i == v.len() - 1 && c == ' ');
            if special {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips() {
        for t in [0i64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let s = der::format_time(t);
            let y: i64 = s[..4].parse().unwrap();
            assert!(y >= 1970, "{s}");
        }
        assert_eq!(der::format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(der::format_time(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn subject_and_validity_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "orders-source");
        params.not_before = rcgen::date_time_ymd(2020, 1, 2);
        params.not_after = rcgen::date_time_ymd(2040, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der();
        assert_eq!(
            der::subject(der).unwrap(),
            "CN=orders-source,O=Acme\\, Inc."
        );
        let (nb, na) = der::validity(der).unwrap();
        assert_eq!(der::format_time(nb), "2020-01-02 00:00:00 UTC");
        assert_eq!(der::format_time(na), "2040-03-04 00:00:00 UTC");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(der::subject(&[0x30, 0x82, 0xff]).is_none());
        assert!(der::validity(&[]).is_none());
    }
}
