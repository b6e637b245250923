//! `idemgate admin …`: the admin API from the command line, so an operator
//! needs no curl. It reads the listener, the token and HTTPS from the
//! proxy's own config (`--config`), or takes `--url` and `--token`
//! (`$IDEMGATE_ADMIN_TOKEN`); JSON answers are printed pretty.
//!
//! ```text
//! idemgate admin -c /etc/idemgate/idemgate.toml connectors
//! idemgate admin --url http://10.0.0.7:9644 pause orders-source
//! idemgate admin -c idemgate.toml lookup --topic orders --record-key order-42
//! idemgate admin -c idemgate.toml quotas --set quotas.toml
//! ```
//!
//! Exit codes: 0 when the proxy answered 2xx, 1 when it answered an error
//! (its body on stderr) or could not be reached, 2 for a bad invocation.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::{defaults, Config};

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The proxy's config file: its admin listener, token and TLS.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The admin API's base URL (default: from --config, else
    /// http://127.0.0.1:9644).
    #[arg(long)]
    pub url: Option<String>,
    /// Bearer token (default: $IDEMGATE_ADMIN_TOKEN, else the config's).
    #[arg(long, env = "IDEMGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificates to trust for an HTTPS admin listener (default: the
    /// config's `[admin.tls] cert`, else the public web roots).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    #[command(subcommand)]
    pub call: AdminCall,
}

#[derive(Debug, Subcommand)]
pub enum AdminCall {
    /// Is the proxy ready (GET /readyz)?
    Ready,
    /// Every metric, Prometheus text (GET /metrics).
    Metrics,
    /// Open client connections (GET /connections).
    Connections,
    /// Connectors: replays absorbed, duplicates spared, pauses (GET /connectors).
    Connectors,
    /// Quotas in force and each connector's rate (GET /quotas); with --set,
    /// replace them with a TOML file of [[quotas]] (PUT /quotas).
    Quotas {
        #[arg(long)]
        set: Option<PathBuf>,
    },
    /// Hold a connector's requests (POST /connectors/NAME/pause).
    Pause { connector: String },
    /// Let a paused connector go on (POST /connectors/NAME/resume).
    Resume { connector: String },
    /// Was this record seen, where and when (GET /window/lookup)?
    Lookup {
        #[arg(long)]
        topic: String,
        /// The idempotency-key header's value (32 hex digits).
        #[arg(
            long,
            conflicts_with = "record_key",
            required_unless_present = "record_key"
        )]
        key: Option<String>,
        /// The record key, for topics keyed by `record-key`.
        #[arg(long)]
        record_key: Option<String>,
    },
    /// Forget every key of a topic (POST /window/purge), after deleting and
    /// recreating it.
    Purge {
        #[arg(long)]
        topic: String,
    },
}

/// Where to call, with what.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    base: String,
    token: Option<String>,
    cacert: Option<PathBuf>,
}

fn target(args: &AdminArgs) -> Result<Target, String> {
    let config = match &args.config {
        Some(path) => Some(Config::load(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => None,
    };
    let admin = config.as_ref().map(|c| &c.admin);
    let base = match (&args.url, admin) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(a)) => {
            let listen = a
                .listen
                .ok_or("the config has no admin listener (admin.listen = \"\")")?;
            let scheme = if a.tls.is_some() { "https" } else { "http" };
            // A wildcard listener is reached on loopback.
            let host = if listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else if listen.is_ipv6() {
                format!("[{}]", listen.ip())
            } else {
                listen.ip().to_string()
            };
            format!("{scheme}://{host}:{}", listen.port())
        }
        (None, None) => format!("http://{}", defaults::ADMIN_LISTEN),
    };
    let token = args.token.clone().or_else(|| {
        admin
            .and_then(|a| a.token.as_ref())
            .map(|t| t.expose().to_string())
    });
    let cacert = args
        .cacert
        .clone()
        .or_else(|| admin.and_then(|a| a.tls.as_ref()).map(|t| t.cert.clone()));
    Ok(Target {
        base,
        token,
        cacert,
    })
}

fn agent(target: &Target) -> Result<ureq::Agent, String> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)));
    if let Some(path) = &target.cacert {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in it", path.display()));
        }
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(config.build().into())
}

/// Runs one call; the exit code.
pub fn run(args: &AdminArgs) -> std::process::ExitCode {
    let result = target(args).and_then(|t| call(&t, &args.call));
    match result {
        Ok((status, body)) if (200..300).contains(&status) => {
            print!("{}", pretty(&body));
            std::process::ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("idemgate admin: HTTP {status}: {}", body.trim_end());
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("idemgate admin: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn call(target: &Target, what: &AdminCall) -> Result<(u16, String), String> {
    let agent = agent(target)?;
    let url = |path: &str| format!("{}{path}", target.base);
    let token = target.token.as_deref();
    let response = match what {
        AdminCall::Ready => with_token(agent.get(url("/readyz")), token).call(),
        AdminCall::Metrics => with_token(agent.get(url("/metrics")), token).call(),
        AdminCall::Connections => with_token(agent.get(url("/connections")), token).call(),
        AdminCall::Connectors => with_token(agent.get(url("/connectors")), token).call(),
        AdminCall::Quotas { set: None } => with_token(agent.get(url("/quotas")), token).call(),
        AdminCall::Quotas { set: Some(file) } => {
            let body = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            with_token(agent.put(url("/quotas")), token)
                .header("Content-Type", "application/toml")
                .send(&body[..])
        }
        AdminCall::Pause { connector } | AdminCall::Resume { connector } => {
            let verb = if matches!(what, AdminCall::Pause { .. }) {
                "pause"
            } else {
                "resume"
            };
            let name = utf8_percent_encode(connector);
            with_token(
                agent.post(url(&format!("/connectors/{name}/{verb}"))),
                token,
            )
            .send_empty()
        }
        AdminCall::Lookup {
            topic,
            key,
            record_key,
        } => {
            let r = with_token(agent.get(url("/window/lookup")), token).query("topic", topic);
            match (key, record_key) {
                (Some(k), _) => r.query("key", k),
                (None, Some(k)) => r.query("record_key", k),
                (None, None) => r,
            }
            .call()
        }
        AdminCall::Purge { topic } => with_token(agent.post(url("/window/purge")), token)
            .query("topic", topic)
            .send_empty(),
    };
    let mut response = response.map_err(|e| format!("{}: {e}", target.base))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{}: reading the answer: {e}", target.base))?;
    Ok((status, body))
}

/// The bearer token, when there is one, on any request.
fn with_token<B>(r: ureq::RequestBuilder<B>, token: Option<&str>) -> ureq::RequestBuilder<B> {
    match token {
        Some(t) => r.header("Authorization", format!("Bearer {t}")),
        None => r,
    }
}

/// A path segment, percent-encoded (connector names may hold anything).
fn utf8_percent_encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// JSON pretty-printed; anything else as it came.
fn pretty(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => serde_json::to_string_pretty(&v).map_or_else(|_| body.to_string(), |s| s + "\n"),
        Err(_) => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        admin: AdminArgs,
    }

    fn args(line: &[&str]) -> AdminArgs {
        Cli::try_parse_from(std::iter::once("admin").chain(line.iter().copied()))
            .unwrap()
            .admin
    }

    #[test]
    fn the_config_names_the_listener_token_and_tls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idemgate.toml");
        std::fs::write(
            &path,
            "[admin]\nlisten = \"0.0.0.0:9700\"\ntoken = \"s3cret-token-of-some-length\"\n",
        )
        .unwrap();
        let t = target(&args(&["-c", path.to_str().unwrap(), "connectors"])).unwrap();
        assert_eq!(
            t.base, "http://127.0.0.1:9700",
            "a wildcard is reached on loopback"
        );
        assert_eq!(t.token.as_deref(), Some("s3cret-token-of-some-length"));
        let t = target(&args(&[
            "-c",
            path.to_str().unwrap(),
            "--url",
            "http://h:1/",
            "--token",
            "other",
            "ready",
        ]))
        .unwrap();
        assert_eq!(
            (t.base.as_str(), t.token.as_deref()),
            ("http://h:1", Some("other"))
        );
    }

    #[test]
    fn without_a_config_the_default_listener() {
        let t = target(&args(&["ready"])).unwrap();
        assert_eq!(t.base, "http://127.0.0.1:9644");
    }

    #[test]
    fn a_lookup_needs_a_key_of_one_kind() {
        let parsed = Cli::try_parse_from(["admin", "lookup", "--topic", "t"]).map(|c| c.admin.call);
        assert!(parsed.is_err(), "a key or a record key is required");
        let parsed = Cli::try_parse_from([
            "admin",
            "lookup",
            "--topic",
            "t",
            "--key",
            "k",
            "--record-key",
            "r",
        ]);
        assert!(parsed.is_err(), "not both");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(
            utf8_percent_encode("orders source/1"),
            "orders%20source%2F1"
        );
    }
}
