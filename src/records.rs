//! A byte-level reader and splice writer for Kafka RecordBatch v2.
//!
//! # Layout
//!
//! Bytes flow through this module in four steps:
//!
//! 1. [`Batches`] walks a partition's `records` bytes (a Fetch response may hold several
//!    batches and a truncated tail) and yields [`BatchItem`]s: zero-copy [`RawBatch`] slices
//!    with their parsed 61-byte [`BatchHeader`], opaque legacy (magic 0/1) entries, and the
//!    partial tail the broker is allowed to send.
//! 2. [`RawBatch::decode`] checks the CRC-32C, decompresses the payload once (with a bomb
//!    guard) and walks the records by their varint framing into a [`DecodedBatch`]: a
//!    compact span per record, no per-record allocation.
//! 3. [`RecordView`] reads one record out of those spans: key, value and headers as `Bytes`
//!    slices (zero-copy for uncompressed batches), headers parsed only when asked.
//! 4. [`DecodedBatch::splice`] / [`DecodedBatch::rewrite`] build a new batch that keeps some
//!    records and may append one header to each: unchanged record bodies are copied as raw
//!    bytes, the output is written into one pre-sized buffer (for a compressed batch, the
//!    worker thread's reused scratch buffer), recompressed with the same
//!    codec, and `batchLength` and the CRC are computed once, last.
//!
//! [`BatchBuilder`] makes batches from scratch for tests and tools.
//!
//! Records never round-trip through `kafka_protocol::records::Record`: its header map
//! collapses duplicate header keys, and its encoder can't keep `lastOffsetDelta`, the
//! LogAppendTime bit or an empty batch (see `shared/reference/kafka-wire-semantics.md` §8.4).
//!
//! Every error is a [`RecordsError`]; callers fail open by forwarding the original bytes.
//!
//! # Files
//!
//! - `records.rs`: constants, [`RecordsError`], [`Codec`], [`Attributes`], [`BatchHeader`],
//!   [`Batches`], [`RawBatch`] (step 1 and the entry to step 2).
//! - `records/varint.rs`: the bounds-checked `Cursor`, zigzag and varint writing.
//! - `records/compression.rs`: gzip, snappy (raw and xerial), lz4 and zstd, with the bomb guard.
//! - `records/batch.rs`: [`DecodedBatch`], the record walk, [`RecordView`], [`HeaderIter`]
//!   (steps 2 and 3).
//! - `records/splice.rs`: [`SpliceMode`], [`Action`], [`Spliced`] and the rewrite methods of
//!   [`DecodedBatch`] (step 4), [`emptied_marker`].
//! - `records/builder.rs`: [`Record`] and [`BatchBuilder`].

use std::fmt;

use bytes::{Bytes, BytesMut};

mod batch;
mod builder;
mod compression;
mod splice;
#[cfg(test)]
pub(crate) mod tests;
mod varint;

pub use batch::{DecodedBatch, HeaderIter, HeaderRef, RecordView};
pub use builder::{BatchBuilder, Record};
/// The codecs themselves, for the bench's codec floor (benches/produce.rs): the same
/// functions, contexts and settings a rewrite uses.
pub use compression::{compress_into, decompress};
pub use splice::{emptied_marker, Action, SpliceMode, Spliced};

use batch::walk_records;

/// `baseOffset` + `batchLength`: the part of a batch that `batchLength` does not count.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the v2 batch header (Java's `RECORD_BATCH_OVERHEAD`).
pub const BATCH_HEADER_LEN: usize = 61;
/// Smallest legal `batchLength` of a v2 batch: a header with no records.
pub const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32;
/// Default bound on the decompressed size of one batch's records.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;
/// The only magic this module decodes.
pub const MAGIC_V2: i8 = 2;

/// Smallest possible record: length, attributes, timestampDelta, offsetDelta, key length,
/// value length and header count, one byte each.
const MIN_RECORD_LEN: usize = 7;
/// Java's `LegacyRecord.RECORD_OVERHEAD_V0`: the iterator refuses any entry below it before it
/// even knows the magic, as `ByteBufferLogInputStream.nextBatchSize` does.
const MIN_LEGACY_LENGTH: i32 = 14;
/// Bytes up to and including the magic byte.
const HEADER_UP_TO_MAGIC: usize = 17;
/// The CRC covers everything from the attributes to the end of the batch.
const CRC_START: usize = 21;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;

// === Errors ===

/// What was wrong with a batch. Every variant means "forward the original bytes".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// Fewer bytes than a 61-byte v2 header.
    #[error("{available} bytes cannot hold a {BATCH_HEADER_LEN}-byte batch header")]
    ShortHeader { available: usize },
    /// magic is not 2 (or, in the iterator, not 0..=2).
    #[error("unsupported magic {0}")]
    BadMagic(i8),
    /// A negative `batchLength`, or one below the minimum for its magic.
    #[error("invalid batchLength {0}")]
    BadBatchLength(i32),
    /// The buffer ends before the batch does.
    #[error("batch needs {declared} bytes but {available} are present")]
    TruncatedBatch { declared: usize, available: usize },
    /// Bytes after a batch where exactly one batch was expected.
    #[error("{0} bytes follow the batch")]
    TrailingBatchBytes(usize),
    /// The stored CRC-32C does not match bytes [21..end].
    #[error("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    /// Codec id 5..=7.
    #[error("unsupported compression codec id {0}")]
    UnsupportedCodec(u8),
    /// `recordsCount` is negative or can't fit in the bytes present.
    #[error("recordsCount {count} is impossible in {available} bytes of records")]
    BadRecordCount { count: i32, available: usize },
    /// A record runs past the end of the records (or a field past the record's length).
    #[error("record {index} is truncated")]
    TruncatedRecord { index: usize },
    /// A varint longer than 5 bytes (varlong: 10) or wider than its type.
    #[error("record {index}: varint overflow")]
    VarintOverflow { index: usize },
    /// A length or count field with an impossible value.
    #[error("record {index}: invalid {field} {value}")]
    BadRecordField {
        index: usize,
        field: &'static str,
        value: i64,
    },
    /// The record's fields end before its `length` says.
    #[error("record {index}: fields use {actual} bytes but its length is {declared}")]
    RecordLengthMismatch {
        index: usize,
        declared: usize,
        actual: usize,
    },
    /// `recordsCount` records were read and bytes remain.
    #[error("{0} bytes remain after the last record")]
    TrailingRecordBytes(usize),
    /// The decompressed records exceed the configured bound.
    #[error("decompressed records exceed the {limit}-byte limit")]
    TooLarge { limit: usize },
    /// The compressed payload could not be decompressed.
    #[error("{codec} payload is corrupt: {reason}")]
    Decompress { codec: Codec, reason: String },
    /// The codec failed to compress (only I/O-shaped failures inside the codec crates).
    #[error("{codec} compression failed: {reason}")]
    Compress { codec: Codec, reason: String },
    /// The keep-set / action list does not have one entry per record.
    #[error("{actions} actions given for {records} records")]
    PlanMismatch { actions: usize, records: usize },
    /// A rewritten length or count would not fit its wire type.
    #[error("rewritten {what} does not fit in an int32")]
    Overflow { what: &'static str },
}

// === impl Codec ===

/// Compression codec, attribute bits 0-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Codec {
    /// Every codec, in id order.
    pub const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    /// The codec for an attribute id, if Kafka defines one.
    pub fn from_id(id: u8) -> Option<Codec> {
        Codec::ALL.get(usize::from(id)).copied()
    }

    /// The attribute id (bits 0-2).
    pub fn id(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        })
    }
}

// === impl Attributes ===

/// The batch `attributes` int16, kept raw so unknown bits survive a rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Attributes(pub i16);

impl Attributes {
    pub const CODEC_MASK: i16 = 0x07;
    pub const TIMESTAMP_TYPE: i16 = 0x08;
    pub const TRANSACTIONAL: i16 = 0x10;
    pub const CONTROL: i16 = 0x20;
    pub const DELETE_HORIZON: i16 = 0x40;

    /// Bits 0-2, whether or not Kafka defines that codec.
    pub fn codec_id(self) -> u8 {
        (self.0 & Self::CODEC_MASK) as u8
    }

    /// The codec, or `UnsupportedCodec` for ids 5..=7.
    pub fn codec(self) -> Result<Codec, RecordsError> {
        let id = self.codec_id();
        Codec::from_id(id).ok_or(RecordsError::UnsupportedCodec(id))
    }

    /// Bit 3: timestamps are LogAppendTime (the batch `maxTimestamp` is every record's time).
    pub fn is_log_append_time(self) -> bool {
        self.0 & Self::TIMESTAMP_TYPE != 0
    }

    /// Bit 4.
    pub fn is_transactional(self) -> bool {
        self.0 & Self::TRANSACTIONAL != 0
    }

    /// Bit 5: a control batch (transaction markers).
    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }

    /// Bit 6 (KIP-534): `baseTimestamp` holds the delete horizon.
    pub fn has_delete_horizon(self) -> bool {
        self.0 & Self::DELETE_HORIZON != 0
    }
}

// === impl BatchHeader ===

/// The 61-byte v2 batch header, field names as in Kafka's `DefaultRecordBatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of offsetDelta 0; 0 from producers, assigned by the broker.
    pub base_offset: i64,
    /// Bytes after this field: total size - 12.
    pub batch_length: i32,
    /// Not covered by the CRC: the broker stamps it in place.
    pub partition_leader_epoch: i32,
    /// Always 2 once parsed.
    pub magic: i8,
    /// CRC-32C of bytes [21..end], as stored.
    pub crc: u32,
    pub attributes: Attributes,
    /// lastOffset - baseOffset; also the last sequence delta, so the fetch path keeps it.
    pub last_offset_delta: i32,
    /// Records store timestamps as deltas from this (the delete horizon when bit 6 is set).
    pub base_timestamp: i64,
    /// Largest record timestamp, or the append time for LogAppendTime batches.
    pub max_timestamp: i64,
    /// -1 when the producer is not idempotent.
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence of offsetDelta 0; the broker checks it against the last one it saw.
    pub base_sequence: i32,
    /// Untrusted until decode: bounded by the bytes present before anything is reserved.
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the first 61 bytes of `buf`. Checks magic == 2 and `batchLength` >= 49; it does
    /// not check that `buf` holds the whole batch.
    pub fn parse(buf: &[u8]) -> Result<Self, RecordsError> {
        let Some(h) = buf.get(..BATCH_HEADER_LEN) else {
            return Err(RecordsError::ShortHeader {
                available: buf.len(),
            });
        };
        let magic = h[MAGIC_OFFSET] as i8;
        if magic != MAGIC_V2 {
            return Err(RecordsError::BadMagic(magic));
        }
        let batch_length = be_i32(h, 8);
        if batch_length < MIN_BATCH_LENGTH {
            return Err(RecordsError::BadBatchLength(batch_length));
        }
        Ok(BatchHeader {
            base_offset: be_i64(h, 0),
            batch_length,
            partition_leader_epoch: be_i32(h, 12),
            magic,
            crc: be_i32(h, CRC_OFFSET) as u32,
            attributes: Attributes(be_i16(h, 21)),
            last_offset_delta: be_i32(h, 23),
            base_timestamp: be_i64(h, 27),
            max_timestamp: be_i64(h, 35),
            producer_id: be_i64(h, 43),
            producer_epoch: be_i16(h, 51),
            base_sequence: be_i32(h, 53),
            records_count: be_i32(h, 57),
        })
    }

    /// Total size of the batch on the wire: `batchLength` + 12.
    pub fn total_size(&self) -> usize {
        // why: parse() guarantees batch_length >= 49, so the cast can't wrap.
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// `baseOffset + lastOffsetDelta`: what consumers resume after.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .wrapping_add(i64::from(self.last_offset_delta))
    }

    /// Writes all 61 bytes (including `crc` as stored in `self`) into `out[..61]`.
    fn write_into(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.base_offset.to_be_bytes());
        out[8..12].copy_from_slice(&self.batch_length.to_be_bytes());
        out[12..16].copy_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out[16] = self.magic as u8;
        out[17..21].copy_from_slice(&self.crc.to_be_bytes());
        out[21..23].copy_from_slice(&self.attributes.0.to_be_bytes());
        out[23..27].copy_from_slice(&self.last_offset_delta.to_be_bytes());
        out[27..35].copy_from_slice(&self.base_timestamp.to_be_bytes());
        out[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[43..51].copy_from_slice(&self.producer_id.to_be_bytes());
        out[51..53].copy_from_slice(&self.producer_epoch.to_be_bytes());
        out[53..57].copy_from_slice(&self.base_sequence.to_be_bytes());
        out[57..61].copy_from_slice(&self.records_count.to_be_bytes());
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

// === impl Batches ===

/// One item of a partition's `records` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchItem {
    /// A complete v2 batch.
    Batch(RawBatch),
    /// A complete magic 0 or 1 entry, passed on as opaque bytes.
    Legacy { magic: i8, bytes: Bytes },
    /// The truncated trailing bytes a broker may send (`LogSegment.read` slices bytes).
    /// Always the last item.
    PartialTail(Bytes),
}

/// Iterator over the batches in a `Bytes` buffer, zero-copy.
///
/// Mirrors Java's `ByteBufferLogInputStream`: a truncated tail is an item, not an error; a
/// length below the minimum or an unknown magic is an error, after which iteration stops.
#[derive(Debug, Clone)]
pub struct Batches {
    /// The whole buffer; items are slices of it.
    buf: Bytes,
    /// Start of the next item.
    pos: usize,
    /// Set after an error or the partial tail, so the iterator is fused.
    done: bool,
}

impl Batches {
    pub fn new(buf: Bytes) -> Self {
        Batches {
            buf,
            pos: 0,
            done: false,
        }
    }

    /// Offset in the buffer of the next item.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn tail(&mut self) -> BatchItem {
        self.done = true;
        BatchItem::PartialTail(self.buf.slice(self.pos..))
    }

    fn fail(&mut self, e: RecordsError) -> Option<Result<BatchItem, RecordsError>> {
        self.done = true;
        Some(Err(e))
    }
}

impl Iterator for Batches {
    type Item = Result<BatchItem, RecordsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        if rest.len() < LOG_OVERHEAD {
            return Some(Ok(self.tail()));
        }
        let length = be_i32(rest, 8);
        // why: checked before the magic, like Java, so a garbage length is an error even in a
        // short tail rather than a silently accepted "partial" item.
        if length < MIN_LEGACY_LENGTH {
            return self.fail(RecordsError::BadBatchLength(length));
        }
        if rest.len() < HEADER_UP_TO_MAGIC {
            return Some(Ok(self.tail()));
        }
        let magic = rest[MAGIC_OFFSET] as i8;
        if !(0..=MAGIC_V2).contains(&magic) {
            return self.fail(RecordsError::BadMagic(magic));
        }
        if magic == MAGIC_V2 && length < MIN_BATCH_LENGTH {
            return self.fail(RecordsError::BadBatchLength(length));
        }
        // why: length >= 14 here, so the cast is exact; no allocation depends on it, it only
        // bounds a slice of bytes we already hold.
        let total = length as usize + LOG_OVERHEAD;
        if rest.len() < total {
            return Some(Ok(self.tail()));
        }
        let bytes = self.buf.slice(self.pos..self.pos + total);
        self.pos += total;
        if magic < MAGIC_V2 {
            return Some(Ok(BatchItem::Legacy { magic, bytes }));
        }
        match BatchHeader::parse(&bytes) {
            Ok(header) => Some(Ok(BatchItem::Batch(RawBatch { header, bytes }))),
            Err(e) => self.fail(e),
        }
    }
}

impl std::iter::FusedIterator for Batches {}

// === impl RawBatch ===

/// One complete v2 batch: its header and its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    header: BatchHeader,
    /// Exactly `header.total_size()` bytes, a slice of the caller's buffer.
    bytes: Bytes,
}

impl RawBatch {
    /// `bytes` must hold exactly one v2 batch (the produce path: one batch per partition).
    pub fn new(bytes: Bytes) -> Result<Self, RecordsError> {
        let header = BatchHeader::parse(&bytes)?;
        let total = header.total_size();
        match bytes.len().cmp(&total) {
            std::cmp::Ordering::Less => Err(RecordsError::TruncatedBatch {
                declared: total,
                available: bytes.len(),
            }),
            std::cmp::Ordering::Greater => {
                Err(RecordsError::TrailingBatchBytes(bytes.len() - total))
            }
            std::cmp::Ordering::Equal => Ok(RawBatch { header, bytes }),
        }
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch exactly as received: forward this when nothing changed.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// CRC-32C of bytes [21..end].
    pub fn computed_crc(&self) -> u32 {
        crc32c::crc32c(&self.bytes[CRC_START..])
    }

    pub fn verify_crc(&self) -> Result<(), RecordsError> {
        let computed = self.computed_crc();
        if computed == self.header.crc {
            Ok(())
        } else {
            Err(RecordsError::CrcMismatch {
                stored: self.header.crc,
                computed,
            })
        }
    }

    /// [`decode_with_limit`](Self::decode_with_limit) with [`DEFAULT_MAX_DECOMPRESSED`].
    pub fn decode(&self) -> Result<DecodedBatch, RecordsError> {
        self.decode_with_limit(DEFAULT_MAX_DECOMPRESSED)
    }

    /// Verifies the CRC, decompresses (at most `max_decompressed` bytes) and walks every
    /// record, validating all lengths, so later reads and rewrites can't fail on framing.
    pub fn decode_with_limit(&self, max_decompressed: usize) -> Result<DecodedBatch, RecordsError> {
        self.verify_crc()?;
        let codec = self.header.attributes.codec()?;
        let count = self.header.records_count;
        let bad_count = |available| RecordsError::BadRecordCount { count, available };
        let count = usize::try_from(count).map_err(|_| bad_count(0))?;
        let body = self.bytes.slice(BATCH_HEADER_LEN..);
        // why: record spans store u32 offsets; a v2 batch can't exceed i32::MAX anyway.
        let limit = max_decompressed.min(u32::MAX as usize);
        let payload = if codec == Codec::None || (body.is_empty() && count == 0) {
            body
        } else {
            // why: reject an impossible count before spending CPU on decompression.
            if count > limit / MIN_RECORD_LEN {
                return Err(bad_count(limit));
            }
            Bytes::from(decompress(codec, &body, limit)?)
        };
        if count > payload.len() / MIN_RECORD_LEN {
            return Err(bad_count(payload.len()));
        }
        let spans = walk_records(&payload, count)?;
        Ok(DecodedBatch {
            header: self.header,
            original: self.bytes.clone(),
            codec,
            payload,
            spans,
        })
    }
}

/// A copy of one whole v2 batch with `baseSequence` set to `seq` and the CRC
/// recomputed: the sequence translation for idempotent producers. Nothing
/// else changes (the records stay compressed as they are).
pub fn with_base_sequence(batch: &[u8], seq: i32) -> Result<Bytes, RecordsError> {
    let header = BatchHeader::parse(batch)?;
    if batch.len() != header.total_size() {
        return Err(RecordsError::ShortHeader {
            available: batch.len(),
        });
    }
    let mut out = BytesMut::from(batch);
    out[53..57].copy_from_slice(&seq.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// Decodes one whole batch held in `bytes` (see [`RawBatch::new`]).
pub fn decode_batch(bytes: Bytes) -> Result<DecodedBatch, RecordsError> {
    RawBatch::new(bytes)?.decode()
}

/// Fills `batchLength`, the header and, last, the CRC over [21..end].
fn finish_batch(mut out: Vec<u8>, mut header: BatchHeader) -> Result<Bytes, RecordsError> {
    header.batch_length =
        i32::try_from(out.len() - LOG_OVERHEAD).map_err(|_| RecordsError::Overflow {
            what: "batchLength",
        })?;
    header.crc = 0;
    header.write_into(&mut out[..BATCH_HEADER_LEN]);
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
    Ok(Bytes::from(out))
}
