//! Rewriting a [`DecodedBatch`]: keep some records, append a header, renumber or keep
//! offsets; unchanged record bodies are copied as raw bytes.

use std::cell::RefCell;

use bytes::Bytes;

use super::batch::{has_header, DecodedBatch, HeaderRef, RecordSpan};
use super::builder::{BatchBuilder, Record};
use super::compression::compress_into;
use super::varint::{put_nullable, put_varint, varint_len};
use super::{
    finish_batch, Attributes, BatchHeader, Codec, RecordsError, BATCH_HEADER_LEN, MAGIC_V2,
};

/// How a rewrite numbers records and fills the batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceMode {
    /// Produce path: offsetDelta renumbered 0..n-1, lastOffsetDelta = n-1, maxTimestamp
    /// recomputed for CreateTime. n = 0 gives [`Spliced::NoneKept`].
    Renumber,
    /// Fetch path, Kafka's `MemoryRecords.buildRetainedRecordsInto`: offsets, lastOffsetDelta,
    /// timestamps and every header field kept; n = 0 gives an empty batch as
    /// `DefaultRecordBatch.writeEmptyHeader` writes it.
    KeepOffsets,
}

/// What to do with one record in [`DecodedBatch::rewrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Drop,
    Keep,
    /// Keep, and append this header unless the record already has one with the same key.
    KeepAppend(HeaderRef<'a>),
}

/// The outcome of a rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spliced {
    /// Nothing would change: forward [`DecodedBatch::original`].
    Unchanged,
    /// The new batch.
    Rewritten(Bytes),
    /// Renumber mode kept no record: remove the partition from the request instead.
    NoneKept,
}

impl DecodedBatch {
    /// False when a splice with these arguments would return [`Spliced::Unchanged`]: every
    /// record kept and (if a header is given) every record already carries its key.
    pub fn would_change(&self, keep: &[bool], append: Option<HeaderRef<'_>>) -> bool {
        if keep.len() != self.spans.len() || keep.iter().any(|k| !k) {
            return true;
        }
        match append {
            None => false,
            Some(h) => self.records().any(|r| !r.has_header(h.key)),
        }
    }

    /// Keeps the records whose `keep` entry is true and appends `append` (if any) to each
    /// kept record that doesn't already carry a header with that key.
    pub fn splice(
        &self,
        keep: &[bool],
        append: Option<HeaderRef<'_>>,
        mode: SpliceMode,
    ) -> Result<Spliced, RecordsError> {
        self.check_plan(keep.len())?;
        if append.is_none() && keep.iter().all(|&k| k) {
            return Ok(Spliced::Unchanged);
        }
        self.rewrite_inner(mode, false, |i| match (keep[i], append) {
            (false, _) => Action::Drop,
            (true, None) => Action::Keep,
            (true, Some(h)) => Action::KeepAppend(h),
        })
    }

    /// Like [`splice`](Self::splice) with one [`Action`] per record (e.g. a different header
    /// value per record). A header is never appended twice: a record that already has the
    /// key is kept as it is.
    pub fn rewrite(
        &self,
        actions: &[Action<'_>],
        mode: SpliceMode,
    ) -> Result<Spliced, RecordsError> {
        self.check_plan(actions.len())?;
        if actions.iter().all(|a| *a == Action::Keep) {
            return Ok(Spliced::Unchanged);
        }
        self.rewrite_inner(mode, false, |i| actions[i])
    }

    /// Writes every record through the writer in [`SpliceMode::KeepOffsets`] (never
    /// [`Spliced::Unchanged`]). Unchanged records are copied verbatim, so for an uncompressed
    /// batch `reencode(decode(bytes)) == bytes`; compressed batches come back recompressed by
    /// this module's codecs.
    pub fn reencode(&self) -> Result<Bytes, RecordsError> {
        match self.rewrite_inner(SpliceMode::KeepOffsets, true, |_| Action::Keep)? {
            Spliced::Rewritten(b) => Ok(b),
            // why: KeepOffsets with force never yields the other variants.
            Spliced::Unchanged | Spliced::NoneKept => Ok(self.original.clone()),
        }
    }

    fn check_plan(&self, actions: usize) -> Result<(), RecordsError> {
        if actions == self.spans.len() {
            Ok(())
        } else {
            Err(RecordsError::PlanMismatch {
                actions,
                records: self.spans.len(),
            })
        }
    }

    /// One pass: unchanged records are copied as raw bytes, changed ones are re-framed from
    /// raw slices around the fields that change (length, offsetDelta, headerCount).
    pub(super) fn rewrite_inner<'h>(
        &self,
        mode: SpliceMode,
        force: bool,
        action_at: impl Fn(usize) -> Action<'h>,
    ) -> Result<Spliced, RecordsError> {
        // why: a batch with no records has nothing to drop or mark; rebuilding it would
        // normalise its header as an emptied one, which is not a re-encoding.
        if self.spans.is_empty() && mode == SpliceMode::KeepOffsets {
            return Ok(if force {
                Spliced::Rewritten(self.original.clone())
            } else {
                Spliced::Unchanged
            });
        }
        // why: room for, per record, a small appended header plus varint growth; records
        // that need more grow the buffer once via reserve().
        let estimate = self.payload.len() + self.spans.len() * 24;
        if self.codec == Codec::None {
            // why: uncompressed records are written straight after the header.
            let mut out = Vec::with_capacity(BATCH_HEADER_LEN + estimate);
            out.resize(BATCH_HEADER_LEN, 0);
            let Some(walk) = self.write_records(mode, force, &action_at, &mut out)? else {
                return Ok(Spliced::Unchanged);
            };
            return self.finish(mode, walk, out);
        }
        SCRATCH.with(|scratch| {
            let mut recs = scratch.borrow_mut();
            recs.clear();
            recs.reserve(estimate);
            let written = self.write_records(mode, force, &action_at, &mut recs);
            let out = match written {
                Ok(Some(walk)) if walk.kept > 0 => {
                    // why: a guess at the compressed size; the codec grows it if it must.
                    let mut out = Vec::with_capacity(BATCH_HEADER_LEN + recs.len() / 2 + 64);
                    out.resize(BATCH_HEADER_LEN, 0);
                    compress_into(self.codec, &recs, &mut out).map(|()| Some((walk, out)))
                }
                Ok(Some(walk)) => Ok(Some((walk, Vec::new()))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            // why: one huge batch must not pin its size on this thread for good.
            if recs.capacity() > SCRATCH_KEEP {
                *recs = Vec::new();
            }
            match out? {
                None => Ok(Spliced::Unchanged),
                Some((walk, out)) => self.finish(mode, walk, out),
            }
        })
    }

    /// The kept records, each copied as raw bytes or re-framed, appended to `recs`; `None`
    /// when nothing would change (and `force` is off).
    fn write_records<'h>(
        &self,
        mode: SpliceMode,
        force: bool,
        action_at: &impl Fn(usize) -> Action<'h>,
        recs: &mut Vec<u8>,
    ) -> Result<Option<Walk>, RecordsError> {
        let payload: &[u8] = &self.payload;
        let mut kept = 0usize;
        let mut changed = false;
        let mut max_ts_delta = i64::MIN;
        for (i, span) in self.spans.iter().enumerate() {
            let append = match action_at(i) {
                Action::Drop => {
                    changed = true;
                    continue;
                }
                Action::Keep => None,
                Action::KeepAppend(h) if has_header(payload, span, h.key) => None,
                Action::KeepAppend(h) => Some(h),
            };
            let new_od = match mode {
                SpliceMode::Renumber => {
                    i32::try_from(kept).map_err(|_| RecordsError::Overflow {
                        what: "offsetDelta",
                    })?
                }
                SpliceMode::KeepOffsets => span.offset_delta,
            };
            kept += 1;
            max_ts_delta = max_ts_delta.max(span.timestamp_delta);
            changed |= append.is_some();
            if append.is_none() && new_od == span.offset_delta {
                recs.extend_from_slice(&payload[span.range()]);
            } else {
                write_changed_record(recs, payload, span, new_od, append)?;
            }
        }
        Ok((changed || force).then_some(Walk { kept, max_ts_delta }))
    }

    /// The header of the rewritten batch, and the batch: `out` holds the header's room and
    /// the (compressed) records.
    fn finish(&self, mode: SpliceMode, walk: Walk, out: Vec<u8>) -> Result<Spliced, RecordsError> {
        let Walk { kept, max_ts_delta } = walk;
        let mut header = self.header;
        header.magic = MAGIC_V2;
        if kept == 0 {
            return match mode {
                SpliceMode::Renumber => Ok(Spliced::NoneKept),
                SpliceMode::KeepOffsets => Ok(Spliced::Rewritten(empty_batch(&self.header)?)),
            };
        }
        // why: kept <= spans.len() <= i32::MAX (recordsCount was an i32).
        header.records_count = kept as i32;
        if mode == SpliceMode::Renumber {
            header.last_offset_delta = kept as i32 - 1;
            if !header.attributes.is_log_append_time() {
                header.max_timestamp = header.base_timestamp.wrapping_add(max_ts_delta);
            }
        }
        finish_batch(out, header).map(Spliced::Rewritten)
    }
}

/// What [`DecodedBatch::write_records`] wrote: how many records, and the largest
/// timestampDelta among them.
#[derive(Debug, Clone, Copy)]
struct Walk {
    kept: usize,
    max_ts_delta: i64,
}

/// Above this, the scratch buffer is let go after the batch instead of kept for the next.
const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    /// The records of a compressed batch before they are compressed: one buffer per worker
    /// thread, reused, instead of an allocation per batch.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A 61-byte batch with no records, as `DefaultRecordBatch.writeEmptyHeader` writes it from
/// `MemoryRecords.filterTo` (RETAIN_EMPTY): codec none, only the timestamp-type,
/// transactional and control bits, baseTimestamp = -1 (NO_TIMESTAMP), maxTimestamp and
/// lastOffsetDelta kept, so consumers still advance past lastOffset.
fn empty_batch(original: &BatchHeader) -> Result<Bytes, RecordsError> {
    let mut header = *original;
    header.magic = MAGIC_V2;
    header.attributes = Attributes(
        original.attributes.0
            & (Attributes::TIMESTAMP_TYPE | Attributes::TRANSACTIONAL | Attributes::CONTROL),
    );
    header.base_timestamp = -1;
    header.records_count = 0;
    finish_batch(vec![0u8; BATCH_HEADER_LEN], header)
}

/// What the fetch path sends in place of a batch it emptied: a control batch
/// over the same offsets whose one record, a COMMIT marker (key: version 0,
/// type 1; value: version 0, coordinator epoch 0), sits at the batch's last
/// offset. Consumers skip control records and move past them: Java's
/// CompletedFetch, librdkafka, aiokafka, kafka-python and franz-go as past an
/// empty batch (by its last offset), and kafkajs too, which never moves past
/// a batch with no records at all (runner.js resolves an offset only for a
/// batch whose records were all filtered out, control records among them).
/// A COMMIT marker is ignored by every read_committed consumer (they track
/// aborted producers only).
pub fn emptied_marker(original: &BatchHeader) -> Result<Bytes, RecordsError> {
    let builder = BatchBuilder {
        base_offset: original.base_offset,
        partition_leader_epoch: original.partition_leader_epoch,
        codec: Codec::None,
        log_append_time: original.attributes.is_log_append_time(),
        transactional: original.attributes.is_transactional(),
        control: true,
        delete_horizon: false,
        base_timestamp: original.max_timestamp,
        max_timestamp: Some(original.max_timestamp),
        last_offset_delta: Some(original.last_offset_delta),
        producer_id: original.producer_id,
        producer_epoch: original.producer_epoch,
        base_sequence: -1,
    };
    builder.build(&[Record {
        attributes: 0,
        timestamp_delta: 0,
        offset_delta: original.last_offset_delta,
        key: Some(Bytes::from_static(&[0, 0, 0, 1])),
        value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
        headers: Vec::new(),
    }])
}

fn write_changed_record(
    out: &mut Vec<u8>,
    payload: &[u8],
    span: &RecordSpan,
    new_od: i32,
    append: Option<HeaderRef<'_>>,
) -> Result<(), RecordsError> {
    let start = span.start as usize;
    let body = start + usize::from(span.body_off);
    let od_at = start + usize::from(span.od_off);
    let key_at = start + usize::from(span.key_off);
    let end = span.end as usize;
    // why: widths as received, which may be non-minimal; everything else is copied verbatim.
    let mut new_body = end - body - (key_at - od_at) + varint_len(new_od);
    let mut new_hc = 0i32;
    if let Some(h) = append {
        new_hc = i32::try_from(span.header_count)
            .ok()
            .and_then(|c| c.checked_add(1))
            .ok_or(RecordsError::Overflow {
                what: "headerCount",
            })?;
        new_body = new_body - usize::from(span.hc_width) + varint_len(new_hc) + h.encoded_len()?;
    }
    let new_len = i32::try_from(new_body).map_err(|_| RecordsError::Overflow {
        what: "record length",
    })?;
    out.reserve(new_body + 5);
    put_varint(out, new_len);
    out.extend_from_slice(&payload[body..od_at]);
    put_varint(out, new_od);
    match append {
        None => out.extend_from_slice(&payload[key_at..end]),
        Some(h) => {
            out.extend_from_slice(&payload[key_at..span.headers_at as usize]);
            put_varint(out, new_hc);
            out.extend_from_slice(&payload[span.first_header()..end]);
            put_nullable(out, Some(h.key));
            put_nullable(out, h.value);
        }
    }
    Ok(())
}
