//! A decoded batch: its records located by their varint framing (one [`RecordSpan`] each),
//! read on demand through [`RecordView`] and [`HeaderIter`]. Rewriting is in `splice.rs`.

use std::ops::Range;

use bytes::Bytes;

use super::builder::Record;
use super::varint::{nullable_len, Cursor, Fault};
use super::{BatchHeader, Codec, RecordsError};

// === Record walk ===

/// Where one record's fields sit in the decompressed payload. Offsets are u32 and the small
/// ones are relative u8s so a span is 32 bytes: a hostile batch of 7-byte records costs at
/// most ~4.6x its decompressed size here, and the decompression limit bounds that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecordSpan {
    /// Where the length varint begins.
    pub(super) start: u32,
    /// Where the headerCount varint begins.
    pub(super) headers_at: u32,
    /// One past the record's last byte.
    pub(super) end: u32,
    pub(super) header_count: u32,
    pub(super) timestamp_delta: i64,
    pub(super) offset_delta: i32,
    /// start -> attributes (width of the length varint, 1..=5).
    pub(super) body_off: u8,
    /// start -> offsetDelta varint.
    pub(super) od_off: u8,
    /// start -> key length varint (just after offsetDelta).
    pub(super) key_off: u8,
    /// Width of the headerCount varint as received (it may be non-minimal).
    pub(super) hc_width: u8,
}

impl RecordSpan {
    pub(super) fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    pub(super) fn first_header(&self) -> usize {
        self.headers_at as usize + usize::from(self.hc_width)
    }
}

pub(super) fn walk_records(payload: &[u8], count: usize) -> Result<Vec<RecordSpan>, RecordsError> {
    // why: count <= payload.len() / 7 was checked by the caller, so this reservation is
    // bounded by bytes we hold, never by the untrusted count alone.
    let mut spans = Vec::with_capacity(count);
    let mut pos = 0usize;
    for index in 0..count {
        let fault = |f: Fault| match f {
            Fault::Truncated => RecordsError::TruncatedRecord { index },
            Fault::Overflow => RecordsError::VarintOverflow { index },
        };
        let bad = |field: &'static str, value: i32| RecordsError::BadRecordField {
            index,
            field,
            value: i64::from(value),
        };
        let start = pos;
        let mut c = Cursor { buf: payload, pos };
        let length = c.varint().map_err(fault)?;
        if length < 0 {
            return Err(bad("length", length));
        }
        let body = c.pos;
        let end = body
            .checked_add(length as usize)
            .filter(|&e| e <= payload.len())
            .ok_or(RecordsError::TruncatedRecord { index })?;
        // why: a cursor bounded at the record's end turns a field that overruns the record
        // into "truncated" instead of silently reading the next record.
        let mut c = Cursor {
            buf: &payload[..end],
            pos: body,
        };
        c.u8().map_err(fault)?;
        let timestamp_delta = c.varlong().map_err(fault)?;
        let od_at = c.pos;
        let offset_delta = c.varint().map_err(fault)?;
        let key_at = c.pos;
        let key_len = c.varint().map_err(fault)?;
        if key_len < -1 {
            return Err(bad("key length", key_len));
        }
        c.skip(key_len.max(0) as usize).map_err(fault)?;
        let value_len = c.varint().map_err(fault)?;
        if value_len < -1 {
            return Err(bad("value length", value_len));
        }
        c.skip(value_len.max(0) as usize).map_err(fault)?;
        let headers_at = c.pos;
        let header_count = c.varint().map_err(fault)?;
        if header_count < 0 {
            return Err(bad("header count", header_count));
        }
        let hc_width = c.pos - headers_at;
        // why: each header takes at least 2 bytes; fail fast on an impossible count.
        if header_count as usize > (end - c.pos) / 2 {
            return Err(RecordsError::TruncatedRecord { index });
        }
        for _ in 0..header_count {
            let hk = c.varint().map_err(fault)?;
            // why: Java refuses a null header key ("Invalid negative header key size").
            if hk < 0 {
                return Err(bad("header key length", hk));
            }
            c.skip(hk as usize).map_err(fault)?;
            let hv = c.varint().map_err(fault)?;
            if hv < -1 {
                return Err(bad("header value length", hv));
            }
            c.skip(hv.max(0) as usize).map_err(fault)?;
        }
        if c.pos != end {
            return Err(RecordsError::RecordLengthMismatch {
                index,
                declared: length as usize,
                actual: c.pos - body,
            });
        }
        // why: payload.len() <= u32::MAX (checked by the caller) and the relative offsets are
        // at most 5 + 1 + 10 + 5 bytes, so none of these casts truncate.
        spans.push(RecordSpan {
            start: start as u32,
            headers_at: headers_at as u32,
            end: end as u32,
            header_count: header_count as u32,
            timestamp_delta,
            offset_delta,
            body_off: (body - start) as u8,
            od_off: (od_at - start) as u8,
            key_off: (key_at - start) as u8,
            hc_width: hc_width as u8,
        });
        pos = end;
    }
    if pos != payload.len() {
        return Err(RecordsError::TrailingRecordBytes(payload.len() - pos));
    }
    Ok(spans)
}

// === impl DecodedBatch ===

/// A batch whose records have been located. Cheap to keep: the original bytes, the
/// (decompressed) records payload and one 32-byte span per record.
#[derive(Debug, Clone)]
pub struct DecodedBatch {
    pub(super) header: BatchHeader,
    /// The batch as received, for forwarding unchanged.
    pub(super) original: Bytes,
    pub(super) codec: Codec,
    /// The records section: a slice of `original` when uncompressed, else the decompressed
    /// copy.
    pub(super) payload: Bytes,
    pub(super) spans: Vec<RecordSpan>,
}

/// A header to append, borrowed from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRef<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

impl HeaderRef<'_> {
    pub(super) fn encoded_len(&self) -> Result<usize, RecordsError> {
        Ok(nullable_len(Some(self.key), "header key length")?
            + nullable_len(self.value, "header value length")?)
    }
}

impl DecodedBatch {
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The batch as received.
    pub fn original(&self) -> &Bytes {
        &self.original
    }

    /// The records section after decompression; [`RecordView::raw_range`] indexes into it.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn record(&self, index: usize) -> Option<RecordView<'_>> {
        self.spans.get(index).map(|span| RecordView {
            batch: self,
            span,
            index,
        })
    }

    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordView<'_>> + '_ {
        self.spans
            .iter()
            .enumerate()
            .map(move |(index, span)| RecordView {
                batch: self,
                span,
                index,
            })
    }
}

pub(super) fn has_header(payload: &[u8], span: &RecordSpan, key: &[u8]) -> bool {
    HeaderIter::new(payload, span).any(|h| h.key == key)
}

// === impl RecordView ===

/// One record of a [`DecodedBatch`], read on demand from its span.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    batch: &'a DecodedBatch,
    span: &'a RecordSpan,
    index: usize,
}

impl<'a> RecordView<'a> {
    /// Position in the batch (0-based, before any splice).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The record attributes byte (unused by Kafka today, kept as received).
    pub fn attributes(&self) -> i8 {
        self.batch.payload[self.span.start as usize + usize::from(self.span.body_off)] as i8
    }

    pub fn timestamp_delta(&self) -> i64 {
        self.span.timestamp_delta
    }

    pub fn offset_delta(&self) -> i32 {
        self.span.offset_delta
    }

    /// `baseOffset + offsetDelta`.
    pub fn offset(&self) -> i64 {
        self.batch
            .header
            .base_offset
            .wrapping_add(i64::from(self.span.offset_delta))
    }

    /// The record's timestamp as Java computes it: maxTimestamp for LogAppendTime batches,
    /// else baseTimestamp + timestampDelta.
    pub fn timestamp(&self) -> i64 {
        let h = &self.batch.header;
        if h.attributes.is_log_append_time() {
            h.max_timestamp
        } else {
            h.base_timestamp.wrapping_add(self.span.timestamp_delta)
        }
    }

    /// Byte range of the whole record (length varint included) in [`DecodedBatch::payload`].
    pub fn raw_range(&self) -> Range<usize> {
        self.span.range()
    }

    /// The record's exact bytes as received (decompressed).
    pub fn raw(&self) -> Bytes {
        self.batch.payload.slice(self.span.range())
    }

    fn key_value(&self) -> (Option<Range<usize>>, Option<Range<usize>>) {
        let mut c = Cursor {
            buf: &self.batch.payload[..self.span.end as usize],
            pos: self.span.start as usize + usize::from(self.span.key_off),
        };
        // why: decode validated this framing, so these reads can't fail; None is a harmless
        // fallback rather than a panic.
        let key = c.nullable().ok().flatten();
        let value = c.nullable().ok().flatten();
        (key, value)
    }

    pub fn key(&self) -> Option<Bytes> {
        self.key_value().0.map(|r| self.batch.payload.slice(r))
    }

    pub fn value(&self) -> Option<Bytes> {
        self.key_value().1.map(|r| self.batch.payload.slice(r))
    }

    pub fn key_slice(&self) -> Option<&'a [u8]> {
        let payload: &'a [u8] = &self.batch.payload;
        self.key_value().0.map(|r| &payload[r])
    }

    pub fn value_slice(&self) -> Option<&'a [u8]> {
        let payload: &'a [u8] = &self.batch.payload;
        self.key_value().1.map(|r| &payload[r])
    }

    pub fn header_count(&self) -> usize {
        self.span.header_count as usize
    }

    /// Headers in wire order, duplicates included, without allocating.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter::new(&self.batch.payload, self.span)
    }

    /// Headers as zero-copy `Bytes` slices, in order, duplicates included.
    pub fn header_list(&self) -> Vec<(Bytes, Option<Bytes>)> {
        let payload = &self.batch.payload;
        let base = payload.as_ptr() as usize;
        // why: HeaderIter yields sub-slices of payload; their address gives the range to
        // slice the refcounted Bytes without copying.
        let slice = |s: &[u8]| {
            let at = s.as_ptr() as usize - base;
            payload.slice(at..at + s.len())
        };
        self.headers()
            .map(|h| (slice(h.key), h.value.map(slice)))
            .collect()
    }

    /// Whether a header with this key is already present (makes appending idempotent).
    pub fn has_header(&self, key: &[u8]) -> bool {
        has_header(&self.batch.payload, self.span, key)
    }

    /// An owned copy of the record (Bytes slices, no data copy for uncompressed input).
    pub fn to_record(&self) -> Record {
        Record {
            attributes: self.attributes(),
            timestamp_delta: self.span.timestamp_delta,
            offset_delta: self.span.offset_delta,
            key: self.key(),
            value: self.value(),
            headers: self.header_list(),
        }
    }
}

/// Iterator over a record's headers, borrowing the payload.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    cursor_buf: &'a [u8],
    pos: usize,
    remaining: u32,
}

impl<'a> HeaderIter<'a> {
    pub(super) fn new(payload: &'a [u8], span: &RecordSpan) -> Self {
        HeaderIter {
            cursor_buf: &payload[..span.end as usize],
            pos: span.first_header(),
            remaining: span.header_count,
        }
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = HeaderRef<'a>;

    fn next(&mut self) -> Option<HeaderRef<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut c = Cursor {
            buf: self.cursor_buf,
            pos: self.pos,
        };
        let key = c.nullable().ok()??;
        let value = c.nullable().ok()?;
        self.pos = c.pos;
        let buf = self.cursor_buf;
        Some(HeaderRef {
            key: &buf[key],
            value: value.map(|r| &buf[r]),
        })
    }
}
