//! Bounds checks run before kafka-protocol decodes a message off the wire.
//!
//! kafka-protocol 0.18 decodes an array with `Vec::with_capacity(count)`, the
//! count as read off the wire, before it reads one element (and a compact
//! string or bytes value into a `Vec` of the claimed length). A frame of a
//! few bytes claiming 2^31 elements makes it ask for hundreds of GB, and the
//! failed allocation aborts the whole proxy: it is not a panic a task could
//! catch. We must not patch the crate, so [`check`] runs first.
//!
//! It reads a message the way the crate's decoder will, from a static
//! description of the message's fields per version, without allocating. The
//! field lists below are written from Kafka's message schemas
//! (`clients/src/main/resources/common/message/*.json`, Kafka 4.1, which
//! kafka-protocol 0.18 is generated from), with the version ranges the crate
//! decodes.
//!
//! # What it guarantees
//!
//! For a message [`check`] accepts:
//! - every array count, string and bytes length the decoder will read, it
//!   read first, at the same offset, with the same value, and what that
//!   claims fits in the bytes left (an array's elements at their smallest
//!   size; an element never takes less than one byte);
//! - every element those counts claim is in the frame, and the message ends
//!   within the frame; a known tagged field fills exactly the size it
//!   declares (the decoder reads it without looking at that size).
//!
//! So decoding it allocates in proportion to the bytes received, as for any
//! real message. It does not promise that the decode succeeds (a null where
//! the schema has none, invalid UTF-8): that fails in the decoder, cleanly.
//!
//! Only types with a schema here can be decoded from the wire:
//! [`super::Response::decode`] and [`super::decode_request`] require
//! [`Bounded`], so a new decode without the check does not compile.

use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsResponse,
    DescribeClusterResponse, DescribeConfigsResponse, EndTxnRequest, EndTxnResponse, FetchRequest,
    FetchResponse, FindCoordinatorResponse, JoinGroupRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    ShareAcknowledgeResponse, ShareFetchResponse,
};

use crate::codec::read_uvarint;

/// A kafka-protocol message type whose schema the bounds check knows. Only
/// these may be decoded off the wire.
pub trait Bounded {
    const SCHEMA: &'static Schema;
}

/// One message type: its fields, per version.
pub struct Schema {
    /// kafka-protocol's type name, for the refusal message.
    name: &'static str,
    /// The versions kafka-protocol decodes (its `Message::VERSIONS`).
    versions: (i16, i16),
    /// The first flexible version (compact lengths, tagged fields).
    flexible: i16,
    /// The top-level fields; the message's own tagged fields among them.
    fields: &'static [Field],
}

/// A field, in wire order; tagged fields wherever the schema lists them.
struct Field {
    /// Kafka's field name, for the refusal message.
    name: &'static str,
    /// The versions the field is on the wire (tagged: may be tagged).
    versions: (i16, i16),
    /// A tagged field's tag; `None` for a field always present.
    tag: Option<u32>,
    /// What its length on the wire depends on.
    ty: Ty,
}

impl Field {
    fn in_version(&self, version: i16) -> bool {
        (self.versions.0..=self.versions.1).contains(&version)
    }
}

/// A field's type, as far as its length on the wire goes.
enum Ty {
    /// int8/16/32/64, bool, uuid, float64: this many bytes.
    Fixed(usize),
    /// A (nullable) string: int16 length, or compact (uvarint length + 1).
    String,
    /// (Nullable) bytes or records: int32 length, or compact.
    Bytes,
    /// A (nullable) array: int32 count, or compact; then the elements.
    Array(&'static Ty),
    /// A struct: its own fields, and tagged fields in flexible versions.
    Struct(&'static [Field]),
}

/// Why a message was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused before decoding: {message} v{version}, {field} at byte {at} of the body: {why}")]
pub(super) struct Refused {
    /// The message type, as kafka-protocol names it.
    pub message: &'static str,
    pub version: i16,
    /// The field being read, as Kafka's schema names it.
    pub field: &'static str,
    /// Where the field starts, from the start of the message body.
    pub at: usize,
    pub why: Why,
}

/// What was wrong with the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Why {
    #[error("versions are {0}-{1}")]
    Version(i16, i16),
    #[error("runs past the end of the frame")]
    PastTheEnd,
    #[error("claims {count} elements of at least {min} bytes with {left} bytes left")]
    Count { count: u64, min: usize, left: usize },
    #[error("claims {len} bytes with {left} left")]
    Length { len: u64, left: usize },
    #[error("negative length {0}")]
    Negative(i32),
    #[error("a varint longer than 5 bytes")]
    Varint,
    #[error("tag {0} is not valid in this version")]
    Tag(u32),
    #[error("tagged field declares {declared} bytes and holds {held}")]
    TagSize { declared: usize, held: usize },
    #[error("tag {0} is 2^31 or above, which kafka-protocol cannot write back")]
    TagTooHigh(u32),
}

/// Checks a message body (after its header) against `schema`; returns where
/// the message ends. Bytes after it are not judged.
pub(super) fn check(schema: &Schema, version: i16, body: &[u8]) -> Result<usize, Refused> {
    walk(schema, version, body, None)
}

fn walk(
    schema: &Schema,
    version: i16,
    body: &[u8],
    trace: Option<&mut Vec<Prefix>>,
) -> Result<usize, Refused> {
    let refused = |why| Refused {
        message: schema.name,
        version,
        field: "(message)",
        at: 0,
        why,
    };
    let (min, max) = schema.versions;
    if !(min..=max).contains(&version) {
        return Err(refused(Why::Version(min, max)));
    }
    let mut walk = Walk {
        body,
        at: 0,
        end: body.len(),
        version,
        flexible: version >= schema.flexible,
        trace,
    };
    walk.fields(schema.fields)
        .map_err(|(field, at, why)| Refused {
            message: schema.name,
            version,
            field,
            at,
            why,
        })?;
    Ok(walk.at)
}

/// A length prefix the walk read: where, how wide, of what (for tests that
/// patch every one of them).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
struct Prefix {
    at: usize,
    width: usize,
    compact: bool,
    array: bool,
}

type Step<T = ()> = Result<T, (&'static str, usize, Why)>;

struct Walk<'a> {
    body: &'a [u8],
    /// Where the next value starts.
    at: usize,
    /// Where the value being read must end: the body's end, or inside a
    /// tagged field, the end its size declares.
    end: usize,
    version: i16,
    /// Whether this version has compact lengths and tagged fields.
    flexible: bool,
    /// Where tests collect every length prefix read.
    trace: Option<&'a mut Vec<Prefix>>,
}

impl<'a> Walk<'a> {
    fn fields(&mut self, fields: &'static [Field]) -> Step {
        for f in fields {
            if f.tag.is_none() && f.in_version(self.version) {
                self.value(f.name, &f.ty)?;
            }
        }
        if self.flexible {
            self.tagged_fields(fields)?;
        }
        Ok(())
    }

    fn value(&mut self, name: &'static str, ty: &'static Ty) -> Step {
        match ty {
            Ty::Fixed(n) => self.skip(name, *n),
            Ty::String => {
                let len = self.length(name, 2, false)?;
                self.skip(name, len)
            }
            Ty::Bytes => {
                let len = self.length(name, 4, false)?;
                self.skip(name, len)
            }
            Ty::Array(element) => {
                let at = self.at;
                let count = self.length(name, 4, true)?;
                let min = self.min_size(element).max(1);
                let left = self.end - self.at;
                if count.checked_mul(min).is_none_or(|need| need > left) {
                    let count = count as u64;
                    return Err((name, at, Why::Count { count, min, left }));
                }
                for _ in 0..count {
                    self.value(name, element)?;
                }
                Ok(())
            }
            Ty::Struct(fields) => self.fields(fields),
        }
    }

    /// The tagged-field section: known tags are walked within the size they
    /// declare, unknown ones skipped. Every entry takes at least two bytes,
    /// so a huge entry count runs out of frame, not time.
    fn tagged_fields(&mut self, fields: &'static [Field]) -> Step {
        let count = self.uvarint("(tagged fields)")?;
        for _ in 0..count {
            let at = self.at;
            let tag = self.uvarint("(tag)")?;
            // kafka-protocol keeps such a tag as a negative i32 and, on
            // encode, counts it but never writes it: a response the proxy
            // re-encoded would announce a field it does not carry, and the
            // client would read what follows as one. No Kafka schema uses
            // tags anywhere near this, so refusing costs nothing real.
            if tag > i32::MAX as u32 {
                return Err(("(tag)", at, Why::TagTooHigh(tag)));
            }
            let size = self.uvarint("(tag size)")? as usize;
            let end = match self.at.checked_add(size) {
                Some(end) if end <= self.end => end,
                _ => {
                    let left = self.end - self.at;
                    let len = size as u64;
                    return Err(("(tagged field)", at, Why::Length { len, left }));
                }
            };
            match fields.iter().find(|f| f.tag == Some(tag)) {
                None => self.at = end,
                Some(f) if !f.in_version(self.version) => return Err((f.name, at, Why::Tag(tag))),
                Some(f) => {
                    let outer = std::mem::replace(&mut self.end, end);
                    let start = self.at;
                    self.value(f.name, &f.ty)?;
                    self.end = outer;
                    if self.at != end {
                        let held = self.at - start;
                        return Err((
                            f.name,
                            at,
                            Why::TagSize {
                                declared: size,
                                held,
                            },
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// A string's or bytes' length, or an array's count: classic (`width`
    /// bytes, -1 for null) or compact (uvarint, 0 for null). Null is 0.
    /// Checked against the bytes left here only for strings and bytes; an
    /// array's count against its elements' smallest size, by the caller.
    fn length(&mut self, name: &'static str, width: usize, array: bool) -> Step<usize> {
        let at = self.at;
        let (len, compact) = if self.flexible {
            let n = self.uvarint(name)?;
            (n.saturating_sub(1) as usize, true)
        } else {
            let raw = self.fixed(name, width)?;
            let n = if width == 2 {
                i32::from(i16::from_be_bytes([raw[0], raw[1]]))
            } else {
                i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]])
            };
            match n {
                -1 => (0, false),
                n if n < 0 => return Err((name, at, Why::Negative(n))),
                n => (n as usize, false),
            }
        };
        if let Some(trace) = self.trace.as_deref_mut() {
            trace.push(Prefix {
                at,
                width: self.at - at,
                compact,
                array,
            });
        }
        let left = self.end - self.at;
        if !array && len > left {
            let len = len as u64;
            return Err((name, at, Why::Length { len, left }));
        }
        Ok(len)
    }

    /// The fewest bytes a value of this type takes in this version.
    fn min_size(&self, ty: &'static Ty) -> usize {
        match ty {
            Ty::Fixed(n) => *n,
            Ty::String if !self.flexible => 2,
            Ty::Bytes | Ty::Array(_) if !self.flexible => 4,
            Ty::String | Ty::Bytes | Ty::Array(_) => 1,
            Ty::Struct(fields) => {
                let untagged: usize = fields
                    .iter()
                    .filter(|f| f.tag.is_none() && f.in_version(self.version))
                    .map(|f| self.min_size(&f.ty))
                    .sum();
                untagged + usize::from(self.flexible)
            }
        }
    }

    fn skip(&mut self, name: &'static str, n: usize) -> Step {
        self.fixed(name, n).map(drop)
    }

    fn fixed(&mut self, name: &'static str, n: usize) -> Step<&'a [u8]> {
        let at = self.at;
        match at.checked_add(n) {
            Some(next) if next <= self.end => {
                self.at = next;
                Ok(&self.body[at..next])
            }
            _ => Err((name, at, Why::PastTheEnd)),
        }
    }

    /// An unsigned varint as kafka-protocol reads it (at most 5 bytes; a
    /// longer one, which Kafka refuses too, is refused).
    fn uvarint(&mut self, name: &'static str) -> Step<u32> {
        let at = self.at;
        match read_uvarint(&self.body[..self.end], at) {
            Some((n, next)) => {
                self.at = next;
                Ok(n)
            }
            None if self.end - at >= 5 => Err((name, at, Why::Varint)),
            None => Err((name, at, Why::PastTheEnd)),
        }
    }
}

// === Schemas ===
//
// Field order and version ranges as kafka-protocol 0.18 decodes them (which
// follows Kafka's JSON schemas). `N`: no upper bound.

const N: i16 = i16::MAX;
/// Never flexible.
const NEVER: i16 = i16::MAX;

const INT8: Ty = Ty::Fixed(1);
const INT16: Ty = Ty::Fixed(2);
const INT32: Ty = Ty::Fixed(4);
const INT64: Ty = Ty::Fixed(8);
const BOOL: Ty = Ty::Fixed(1);
const UUID: Ty = Ty::Fixed(16);
const STRING: Ty = Ty::String;
const BYTES: Ty = Ty::Bytes;
const RECORDS: Ty = Ty::Bytes;
const INT32S: Ty = Ty::Array(&INT32);

const fn f(name: &'static str, min: i16, max: i16, ty: Ty) -> Field {
    Field {
        name,
        versions: (min, max),
        tag: None,
        ty,
    }
}

const fn tagged(tag: u32, name: &'static str, min: i16, max: i16, ty: Ty) -> Field {
    Field {
        name,
        versions: (min, max),
        tag: Some(tag),
        ty,
    }
}

// --- Produce (api 0) ---

const PRODUCE_REQUEST: Schema = Schema {
    name: "ProduceRequest",
    versions: (3, 13),
    flexible: 9,
    fields: &[
        f("transactional_id", 3, N, STRING),
        f("acks", 0, N, INT16),
        f("timeout_ms", 0, N, INT32),
        f(
            "topic_data",
            0,
            N,
            Ty::Array(&Ty::Struct(&[
                f("name", 0, 12, STRING),
                f("topic_id", 13, N, UUID),
                f(
                    "partition_data",
                    0,
                    N,
                    Ty::Array(&Ty::Struct(&[
                        f("index", 0, N, INT32),
                        f("records", 0, N, RECORDS),
                    ])),
                ),
            ])),
        ),
    ],
};

const PRODUCE_RESPONSE: Schema = Schema {
    name: "ProduceResponse",
    versions: (3, 13),
    flexible: 9,
    fields: &[
        f(
            "responses",
            0,
            N,
            Ty::Array(&Ty::Struct(&[
                f("name", 0, 12, STRING),
                f("topic_id", 13, N, UUID),
                f(
                    "partition_responses",
                    0,
                    N,
                    Ty::Array(&Ty::Struct(&[
                        f("index", 0, N, INT32),
                        f("error_code", 0, N, INT16),
                        f("base_offset", 0, N, INT64),
                        f("log_append_time_ms", 2, N, INT64),
                        f("log_start_offset", 5, N, INT64),
                        f(
                            "record_errors",
                            8,
                            N,
                            Ty::Array(&Ty::Struct(&[
                                f("batch_index", 8, N, INT32),
                                f("batch_index_error_message", 8, N, STRING),
                            ])),
                        ),
                        f("error_message", 8, N, STRING),
                        tagged(
                            0,
                            "current_leader",
                            10,
                            N,
                            Ty::Struct(&[
                                f("leader_id", 10, N, INT32),
                                f("leader_epoch", 10, N, INT32),
                            ]),
                        ),
                    ])),
                ),
            ])),
        ),
        f("throttle_time_ms", 1, N, INT32),
        tagged(
            0,
            "node_endpoints",
            10,
            N,
            Ty::Array(&Ty::Struct(&[
                f("node_id", 10, N, INT32),
                f("host", 10, N, STRING),
                f("port", 10, N, INT32),
                f("rack", 10, N, STRING),
            ])),
        ),
    ],
};

// --- Fetch (api 1) ---

const FETCH_REQUEST: Schema = Schema {
    name: "FetchRequest",
    versions: (4, 18),
    flexible: 12,
    fields: &[
        tagged(0, "cluster_id", 12, N, STRING),
        f("replica_id", 0, 14, INT32),
        tagged(
            1,
            "replica_state",
            15,
            N,
            Ty::Struct(&[
                f("replica_id", 15, N, INT32),
                f("replica_epoch", 15, N, INT64),
            ]),
        ),
        f("max_wait_ms", 0, N, INT32),
        f("min_bytes", 0, N, INT32),
        f("max_bytes", 3, N, INT32),
        f("isolation_level", 4, N, INT8),
        f("session_id", 7, N, INT32),
        f("session_epoch", 7, N, INT32),
        f(
            "topics",
            0,
            N,
            Ty::Array(&Ty::Struct(&[
                f("topic", 0, 12, STRING),
                f("topic_id", 13, N, UUID),
                f(
                    "partitions",
                    0,
                    N,
                    Ty::Array(&Ty::Struct(&[
                        f("partition", 0, N, INT32),
                        f("current_leader_epoch", 9, N, INT32),
                        f("fetch_offset", 0, N, INT64),
                        f("last_fetched_epoch", 12, N, INT32),
                        f("log_start_offset", 5, N, INT64),
                        f("partition_max_bytes", 0, N, INT32),
                        tagged(0, "replica_directory_id", 17, N, UUID),
                        tagged(1, "high_watermark", 18, N, INT64),
                    ])),
                ),
            ])),
        ),
        f(
            "forgotten_topics_data",
            7,
            N,
            Ty::Array(&Ty::Struct(&[
                f("topic", 7, 12, STRING),
                f("topic_id", 13, N, UUID),
                f("partitions", 7, N, INT32S),
            ])),
        ),
        f("rack_id", 11, N, STRING),
    ],
};

const FETCH_RESPONSE: Schema = Schema {
    name: "FetchResponse",
    versions: (4, 18),
    flexible: 12,
    fields: &[
        f("throttle_time_ms", 1, N, INT32),
        f("error_code", 7, N, INT16),
        f("session_id", 7, N, INT32),
        f(
            "responses",
            0,
            N,
            Ty::Array(&Ty::Struct(&[
                f("topic", 0, 12, STRING),
                f("topic_id", 13, N, UUID),
                f(
                    "partitions",
                    0,
                    N,
                    Ty::Array(&Ty::Struct(&[
                        f("partition_index", 0, N, INT32),
                        f("error_code", 0, N, INT16),
                        f("high_watermark", 0, N, INT64),
                        f("last_stable_offset", 4, N, INT64),
                        f("log_start_offset", 5, N, INT64),
                        tagged(
                            0,
                            "diverging_epoch",
                            12,
                            N,
                            Ty::Struct(&[f("epoch", 12, N, INT32), f("end_offset", 12, N, INT64)]),
                        ),
                        tagged(
                            1,
                            "current_leader",
                            12,
                            N,
                            Ty::Struct(&[
                                f("leader_id", 12, N, INT32),
                                f("leader_epoch", 12, N, INT32),
                            ]),
                        ),
                        tagged(
                            2,
                            "snapshot_id",
                            12,
                            N,
                            Ty::Struct(&[f("end_offset", 0, N, INT64), f("epoch", 0, N, INT32)]),
                        ),
                        f(
                            "aborted_transactions",
                            4,
                            N,
                            Ty::Array(&Ty::Struct(&[
                                f("producer_id", 4, N, INT64),
                                f("first_offset", 4, N, INT64),
                            ])),
                        ),
                        f("preferred_read_replica", 11, N, INT32),
                        f("records", 0, N, RECORDS),
                    ])),
                ),
            ])),
        ),
        tagged(
            0,
            "node_endpoints",
            16,
            N,
            Ty::Array(&Ty::Struct(&[
                f("node_id", 16, N, INT32),
                f("host", 16, N, STRING),
                f("port", 16, N, INT32),
                f("rack", 16, N, STRING),
            ])),
        ),
    ],
};

// --- Metadata (api 3) ---

const METADATA_RESPONSE: Schema = Schema {
    name: "MetadataResponse",
    versions: (0, 13),
    flexible: 9,
    fields: &[
        f("throttle_time_ms", 3, N, INT32),
        f(
            "brokers",
            0,
            N,
            Ty::Array(&Ty::Struct(&[
                f("node_id", 0, N, INT32),
                f("host", 0, N, STRING),
                f("port", 0, N, INT32),
                f("rack", 1, N, STRING),
            ])),
        ),
        f("cluster_id", 2, N, STRING),
        f("controller_id", 1, N, INT32),
        f(
            "topics",
            0,
            N,
            Ty::Array(&Ty::Struct(&[
                f("error_code", 0, N, INT16),
                f("name", 0, N, STRING),
                f("topic_id", 10, N, UUID),
                f("is_internal", 1, N, BOOL),
                f(
                    "partitions",
                    0,
                    N,
                    Ty::Array(&Ty::Struct(&[
                        f("error_code", 0, N, INT16),
                        f("partition_index", 0, N, INT32),
                        f("leader_id", 0, N, INT32),
                        f("leader_epoch", 7, N, INT32),
                        f("replica_nodes", 0, N, INT32S),
                        f("isr_nodes", 0, N, INT32S),
                        f("offline_replicas", 5, N, INT32S),
                    ])),
                ),
                f("topic_authorized_operations", 8, N, INT32),
            ])),
        ),
        f("cluster_authorized_operations", 8, 10, INT32),
        f("error_code", 13, N, INT16),
    ],
};

// --- FindCoordinator (api 10) ---

const FIND_COORDINATOR_RESPONSE: Schema = Schema {
    name: "FindCoordinatorResponse",
    versions: (0, 6),
    flexible: 3,
    fields: &[
        f("throttle_time_ms", 1, N, INT32),
        f("error_code", 0, 3, INT16),
        f("error_message", 1, 3, STRING),
        f("node_id", 0, 3, INT32),
        f("host", 0, 3, STRING),
        f("port", 0, 3, INT32),
        f(
            "coordinators",
            4,
            N,
            Ty::Array(&Ty::Struct(&[
                f("key", 4, N, STRING),
                f("node_id", 4, N, INT32),
                f("host", 4, N, STRING),
                f("port", 4, N, INT32),
                f("error_code", 4, N, INT16),
                f("error_message", 4, N, STRING),
            ])),
        ),
    ],
};

// --- SaslHandshake (api 17) ---

const SASL_HANDSHAKE_REQUEST: Schema = Schema {
    name: "SaslHandshakeRequest",
    versions: (0, 1),
    flexible: NEVER,
    fields: &[f("mechanism", 0, N, STRING)],
};

// --- ApiVersions (api 18) ---

const API_VERSIONS_REQUEST: Schema = Schema {
    name: "ApiVersionsRequest",
    versions: (0, 4),
    flexible: 3,
    fields: &[
        f("client_software_name", 3, N, STRING),
        f("client_software_version", 3, N, STRING),
    ],
};

const API_VERSIONS_RESPONSE: Schema = Schema {
    name: "ApiVersionsResponse",
    versions: (0, 4),
    flexible: 3,
    fields: &[
        f("error_code", 0, N, INT16),
        f(
            "api_keys",
            0,
            N,
            Ty::Array(&Ty::Struct(&[
                f("api_key", 0, N, INT16),
                f("min_version", 0, N, INT16),
                f("max_version", 0, N, INT16),
            ])),
        ),
        f("throttle_time_ms", 1, N, INT32),
        tagged(
            0,
            "supported_features",
            3,
            N,
            Ty::Array(&Ty::Struct(&[
                f("name", 3, N, STRING),
                f("min_version", 3, N, INT16),
                f("max_version", 3, N, INT16),
            ])),
        ),
        tagged(1, "finalized_features_epoch", 3, N, INT64),
        tagged(
            2,
            "finalized_features",
            3,
            N,
            Ty::Array(&Ty::Struct(&[
                f("name", 3, N, STRING),
                f("max_version_level", 3, N, INT16),
                f("min_version_level", 3, N, INT16),
            ])),
        ),
        tagged(3, "zk_migration_ready", 3, N, BOOL),
    ],
};

// --- AddPartitionsToTxn (api 24) ---
// Decoded in v0-v3 (a client's); v4+ (a broker's batch) is checked too.

const ADD_PARTITIONS_TO_TXN_TOPIC: Ty =
    Ty::Struct(&[f("name", 0, N, STRING), f("partitions", 0, N, INT32S)]);

const ADD_PARTITIONS_TO_TXN_REQUEST: Schema = Schema {
    name: "AddPartitionsToTxnRequest",
    versions: (0, 5),
    flexible: 3,
    fields: &[
        f(
            "transactions",
            4,
            N,
            Ty::Array(&Ty::Struct(&[
                f("transactional_id", 4, N, STRING),
                f("producer_id", 4, N, INT64),
                f("producer_epoch", 4, N, INT16),
                f("verify_only", 4, N, BOOL),
                f("topics", 4, N, Ty::Array(&ADD_PARTITIONS_TO_TXN_TOPIC)),
            ])),
        ),
        f("v3_and_below_transactional_id", 0, 3, STRING),
        f("v3_and_below_producer_id", 0, 3, INT64),
        f("v3_and_below_producer_epoch", 0, 3, INT16),
        f(
            "v3_and_below_topics",
            0,
            3,
            Ty::Array(&ADD_PARTITIONS_TO_TXN_TOPIC),
        ),
    ],
};

// --- EndTxn (api 26) ---

const END_TXN_REQUEST: Schema = Schema {
    name: "EndTxnRequest",
    versions: (0, 5),
    flexible: 3,
    fields: &[
        f("transactional_id", 0, N, STRING),
        f("producer_id", 0, N, INT64),
        f("producer_epoch", 0, N, INT16),
        f("committed", 0, N, BOOL),
    ],
};

const END_TXN_RESPONSE: Schema = Schema {
    name: "EndTxnResponse",
    versions: (0, 5),
    flexible: 3,
    fields: &[
        f("throttle_time_ms", 0, N, INT32),
        f("error_code", 0, N, INT16),
        f("producer_id", 5, N, INT64),
        f("producer_epoch", 5, N, INT16),
    ],
};

// --- JoinGroup (api 11) ---
// Decoded only by the header-peek fuzz check, as the model its in-place
// rebalance-timeout reader is held to; fuzz input must not abort it either.

const JOIN_GROUP_REQUEST: Schema = Schema {
    name: "JoinGroupRequest",
    versions: (0, 9),
    flexible: 6,
    fields: &[
        f("group_id", 0, N, STRING),
        f("session_timeout_ms", 0, N, INT32),
        f("rebalance_timeout_ms", 1, N, INT32),
        f("member_id", 0, N, STRING),
        f("group_instance_id", 5, N, STRING),
        f("protocol_type", 0, N, STRING),
        f(
            "protocols",
            0,
            N,
            Ty::Array(&Ty::Struct(&[
                f("name", 0, N, STRING),
                f("metadata", 0, N, BYTES),
            ])),
        ),
        f("reason", 8, N, STRING),
    ],
};

// --- SaslAuthenticate (api 36) ---

const SASL_AUTHENTICATE_REQUEST: Schema = Schema {
    name: "SaslAuthenticateRequest",
    versions: (0, 2),
    flexible: 2,
    fields: &[f("auth_bytes", 0, N, BYTES)],
};

const SASL_AUTHENTICATE_RESPONSE: Schema = Schema {
    name: "SaslAuthenticateResponse",
    versions: (0, 2),
    flexible: 2,
    fields: &[
        f("error_code", 0, N, INT16),
        f("error_message", 0, N, STRING),
        f("auth_bytes", 0, N, BYTES),
        f("session_lifetime_ms", 1, N, INT64),
    ],
};

// --- DescribeCluster (api 60) ---

const DESCRIBE_CLUSTER_RESPONSE: Schema = Schema {
    name: "DescribeClusterResponse",
    versions: (0, 2),
    flexible: 0,
    fields: &[
        f("throttle_time_ms", 0, N, INT32),
        f("error_code", 0, N, INT16),
        f("error_message", 0, N, STRING),
        f("endpoint_type", 1, N, INT8),
        f("cluster_id", 0, N, STRING),
        f("controller_id", 0, N, INT32),
        f(
            "brokers",
            0,
            N,
            Ty::Array(&Ty::Struct(&[
                f("broker_id", 0, N, INT32),
                f("host", 0, N, STRING),
                f("port", 0, N, INT32),
                f("rack", 0, N, STRING),
                f("is_fenced", 2, N, BOOL),
            ])),
        ),
        f("cluster_authorized_operations", 0, N, INT32),
    ],
};

// --- DescribeConfigs (api 32): the proxy's own topic-config lookups ---

const DESCRIBE_CONFIGS_RESPONSE: Schema = Schema {
    name: "DescribeConfigsResponse",
    versions: (1, 4),
    flexible: 4,
    fields: &[
        f("throttle_time_ms", 1, N, INT32),
        f(
            "results",
            1,
            N,
            Ty::Array(&Ty::Struct(&[
                f("error_code", 1, N, INT16),
                f("error_message", 1, N, STRING),
                f("resource_type", 1, N, INT8),
                f("resource_name", 1, N, STRING),
                f(
                    "configs",
                    1,
                    N,
                    Ty::Array(&Ty::Struct(&[
                        f("name", 1, N, STRING),
                        f("value", 1, N, STRING),
                        f("read_only", 1, N, BOOL),
                        f("config_source", 1, N, INT8),
                        f("is_sensitive", 1, N, BOOL),
                        f(
                            "synonyms",
                            1,
                            N,
                            Ty::Array(&Ty::Struct(&[
                                f("name", 1, N, STRING),
                                f("value", 1, N, STRING),
                                f("source", 1, N, INT8),
                            ])),
                        ),
                        f("config_type", 3, N, INT8),
                        f("documentation", 3, N, STRING),
                    ])),
                ),
            ])),
        ),
    ],
};

// --- CreateTopics (api 19): the shared window's topic ---

const CREATE_TOPICS_RESPONSE: Schema = Schema {
    name: "CreateTopicsResponse",
    versions: (2, 7),
    flexible: 5,
    fields: &[
        f("throttle_time_ms", 2, N, INT32),
        f(
            "topics",
            2,
            N,
            Ty::Array(&Ty::Struct(&[
                f("name", 2, N, STRING),
                f("topic_id", 7, N, UUID),
                f("error_code", 2, N, INT16),
                f("error_message", 2, N, STRING),
                tagged(0, "topic_config_error_code", 5, N, INT16),
                f("num_partitions", 5, N, INT32),
                f("replication_factor", 5, N, INT16),
                f(
                    "configs",
                    5,
                    N,
                    Ty::Array(&Ty::Struct(&[
                        f("name", 5, N, STRING),
                        f("value", 5, N, STRING),
                        f("read_only", 5, N, BOOL),
                        f("config_source", 5, N, INT8),
                        f("is_sensitive", 5, N, BOOL),
                    ])),
                ),
            ])),
        ),
    ],
};

// --- ShareFetch (api 78), ShareAcknowledge (api 79): KIP-932, v1 only ---

/// The KIP-932 responses' `node_endpoints` (a plain field, not tagged).
const SHARE_NODE_ENDPOINTS: Field = f(
    "node_endpoints",
    1,
    N,
    Ty::Array(&Ty::Struct(&[
        f("node_id", 1, N, INT32),
        f("host", 1, N, STRING),
        f("port", 1, N, INT32),
        f("rack", 1, N, STRING),
    ])),
);

const SHARE_CURRENT_LEADER: Ty =
    Ty::Struct(&[f("leader_id", 1, N, INT32), f("leader_epoch", 1, N, INT32)]);

const SHARE_FETCH_RESPONSE: Schema = Schema {
    name: "ShareFetchResponse",
    versions: (1, 1),
    flexible: 0,
    fields: &[
        f("throttle_time_ms", 1, N, INT32),
        f("error_code", 1, N, INT16),
        f("error_message", 1, N, STRING),
        f("acquisition_lock_timeout_ms", 1, N, INT32),
        f(
            "responses",
            1,
            N,
            Ty::Array(&Ty::Struct(&[
                f("topic_id", 1, N, UUID),
                f(
                    "partitions",
                    1,
                    N,
                    Ty::Array(&Ty::Struct(&[
                        f("partition_index", 1, N, INT32),
                        f("error_code", 1, N, INT16),
                        f("error_message", 1, N, STRING),
                        f("acknowledge_error_code", 1, N, INT16),
                        f("acknowledge_error_message", 1, N, STRING),
                        f("current_leader", 1, N, SHARE_CURRENT_LEADER),
                        f("records", 1, N, RECORDS),
                        f(
                            "acquired_records",
                            1,
                            N,
                            Ty::Array(&Ty::Struct(&[
                                f("first_offset", 1, N, INT64),
                                f("last_offset", 1, N, INT64),
                                f("delivery_count", 1, N, INT16),
                            ])),
                        ),
                    ])),
                ),
            ])),
        ),
        SHARE_NODE_ENDPOINTS,
    ],
};

const SHARE_ACKNOWLEDGE_RESPONSE: Schema = Schema {
    name: "ShareAcknowledgeResponse",
    versions: (1, 1),
    flexible: 0,
    fields: &[
        f("throttle_time_ms", 1, N, INT32),
        f("error_code", 1, N, INT16),
        f("error_message", 1, N, STRING),
        f(
            "responses",
            1,
            N,
            Ty::Array(&Ty::Struct(&[
                f("topic_id", 1, N, UUID),
                f(
                    "partitions",
                    1,
                    N,
                    Ty::Array(&Ty::Struct(&[
                        f("partition_index", 1, N, INT32),
                        f("error_code", 1, N, INT16),
                        f("error_message", 1, N, STRING),
                        f("current_leader", 1, N, SHARE_CURRENT_LEADER),
                    ])),
                ),
            ])),
        ),
        SHARE_NODE_ENDPOINTS,
    ],
};

macro_rules! bounded {
    ($($ty:ty => $schema:ident),* $(,)?) => {
        $(impl Bounded for $ty {
            const SCHEMA: &'static Schema = &$schema;
        })*
    };
}

bounded! {
    ProduceRequest => PRODUCE_REQUEST,
    ProduceResponse => PRODUCE_RESPONSE,
    FetchRequest => FETCH_REQUEST,
    FetchResponse => FETCH_RESPONSE,
    MetadataResponse => METADATA_RESPONSE,
    FindCoordinatorResponse => FIND_COORDINATOR_RESPONSE,
    SaslHandshakeRequest => SASL_HANDSHAKE_REQUEST,
    ApiVersionsRequest => API_VERSIONS_REQUEST,
    ApiVersionsResponse => API_VERSIONS_RESPONSE,
    EndTxnRequest => END_TXN_REQUEST,
    AddPartitionsToTxnRequest => ADD_PARTITIONS_TO_TXN_REQUEST,
    EndTxnResponse => END_TXN_RESPONSE,
    SaslAuthenticateRequest => SASL_AUTHENTICATE_REQUEST,
    SaslAuthenticateResponse => SASL_AUTHENTICATE_RESPONSE,
    DescribeClusterResponse => DESCRIBE_CLUSTER_RESPONSE,
    DescribeConfigsResponse => DESCRIBE_CONFIGS_RESPONSE,
    CreateTopicsResponse => CREATE_TOPICS_RESPONSE,
    JoinGroupRequest => JOIN_GROUP_REQUEST,
    ShareFetchResponse => SHARE_FETCH_RESPONSE,
    ShareAcknowledgeResponse => SHARE_ACKNOWLEDGE_RESPONSE,
}

#[cfg(test)]
mod tests;
