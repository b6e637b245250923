//! Errors that say whose fault they are.
//!
//! Every error that ends a connection is logged once with its [`Side`], so an
//! operator can tell a misbehaving client from a sick broker from our own bug.

use std::fmt;

/// A typed error kept as the source of one of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we must refuse (bad frame, unknown API...).
    Client,
    /// The broker failed us (unreachable, closed, answered out of order, too slow).
    Upstream,
    /// Our own failure (store, a bug).
    Internal,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        })
    }
}

/// Why a frame from a client was refused. Each ends only that connection.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {0} is negative")]
    NegativeLength(i32),
    #[error("frame length {len} is over the limit of {max} bytes (listen.max_frame_bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error("unknown api_key {0}")]
    UnknownApiKey(i16),
    #[error("api_key {api_key} ({name}) has no version {version}")]
    ImpossibleVersion {
        api_key: i16,
        name: &'static str,
        version: i16,
    },
    /// A version the proxy does not advertise (Produce v13, SaslHandshake
    /// v0): the connection closes, as Kafka closes it for a version it does
    /// not enable.
    #[error(
        "api_key {api_key} ({name}) v{version} is outside what the proxy advertises ({min}-{max})"
    )]
    UnadvertisedVersion {
        api_key: i16,
        name: &'static str,
        version: i16,
        min: i16,
        max: i16,
    },
    #[error("malformed request header: {0}")]
    BadHeader(&'static str),
}

/// The error type of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("client i/o: {0}")]
    ClientIo(#[source] std::io::Error),
    #[error("upstream {addr}: {source}")]
    UpstreamIo {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {addr}: {message}")]
    Upstream { addr: String, message: String },
    /// The broker closed the connection (a restart, its idle timeout) just as
    /// the client sent a request: the client's connection closes too and the
    /// client retries, as it would have without the proxy.
    #[error("upstream {addr} closed the connection")]
    UpstreamClosed { addr: String },
    /// A message that would not decode or encode; `side` says whose bytes
    /// they were (a response from upstream, or our own encoding).
    #[error("{api} v{version}: {source}")]
    Codec {
        api: &'static str,
        version: i16,
        side: Side,
        #[source]
        source: anyhow::Error,
    },
    /// A client's TLS handshake failed or timed out.
    #[error("tls: {0}")]
    Tls(String),
    /// The store failed: what was being done, and the error behind it (sled's,
    /// an I/O error) when there is one.
    #[error("store: {message}")]
    Store {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Whose fault this is.
    pub fn side(&self) -> Side {
        match self {
            Error::Frame(_) | Error::ClientIo(_) | Error::Tls(_) => Side::Client,
            Error::UpstreamIo { .. } | Error::Upstream { .. } | Error::UpstreamClosed { .. } => {
                Side::Upstream
            }
            Error::Codec { side, .. } => *side,
            Error::Store { .. } | Error::Internal(_) => Side::Internal,
        }
    }

    /// A store failure with no error behind it.
    pub fn store(message: impl Into<String>) -> Self {
        Error::Store {
            message: message.into(),
            source: None,
        }
    }

    /// A store failure caused by `source`; `message` says what was being
    /// done (the log line reads as before, the cause stays reachable).
    pub fn store_caused(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Store {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}
