//! A changed Produce request written by splicing its frame, not by encoding
//! the whole message again.
//!
//! Produce dedup replaces the records of some partitions (the tag, dropped
//! replays) and takes out the partitions it answers itself. Encoding the
//! decoded request again copies every partition's records, changed or not,
//! through kafka-protocol's encoder. Here the frame is walked once for where
//! each topic, partition and records field sits, and the new frame is the
//! original's bytes with only what changed written anew: a replaced records
//! field and its length prefix, and the counts of arrays that lost elements.
//! An untouched partition is one copy of its bytes.
//!
//! The bytes are the ones kafka-protocol's encoder writes for the same
//! message (the tests check it for every version): lengths and counts are
//! written with the crate's own encoders; what is copied is what the client
//! sent, which for any encoder that writes the shortest varints (every
//! client does) is what the crate would write for it too.
//!
//! ```text
//! ProduceRequest v3-v12 (v9+ flexible: compact lengths, tagged fields)
//!   transactional_id  acks  timeout_ms
//!   [topic_data]  name (v13: topic_id)
//!                 [partition_data]  index  records (nullable bytes)  {tags}
//!                 {tags}
//!   {tags}
//! ```

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{read_uvarint, skip_tagged_fields};

/// What becomes of one partition of the request.
#[derive(Debug, Clone)]
pub enum PartitionEdit {
    /// Copied as it came.
    Keep,
    /// Its records replaced by these.
    Replace(Bytes),
    /// Taken out of the request (a topic left with no partition goes too).
    Remove,
}

/// Where one partition sits in the frame.
struct PartitionAt {
    /// The partition from its `index` to its end (its tagged fields included).
    span: Range<usize>,
    /// The records field, its length prefix included.
    records: Range<usize>,
}

/// Where one topic sits in the frame.
struct TopicAt {
    /// Its name (v13: topic id), before the partitions' count.
    name: Range<usize>,
    partitions: Vec<PartitionAt>,
    /// After the last partition: the topic's tagged fields (v9+).
    tail: Range<usize>,
}

/// Where the parts of a Produce request sit in its frame.
struct Layout {
    /// The header and the body up to the topics' count.
    head: Range<usize>,
    topics: Vec<TopicAt>,
    /// After the last topic: the request's tagged fields (v9+).
    tail: Range<usize>,
}

/// The frame (header included) of the Produce request `frame` with `edits`
/// applied: `edits[t][p]` for partition `p` of topic `t`, in the request's
/// order. `None` when the frame does not read as a Produce request of this
/// version, or the edits do not match its shape (the caller encodes then).
pub fn splice_produce(
    frame: &[u8],
    body_offset: usize,
    version: i16,
    edits: &[Vec<PartitionEdit>],
) -> Option<BytesMut> {
    let layout = walk(frame, body_offset, version)?;
    if layout.topics.len() != edits.len()
        || layout
            .topics
            .iter()
            .zip(edits)
            .any(|(t, e)| t.partitions.len() != e.len())
    {
        return None;
    }
    let flexible = version >= 9;
    let kept = |e: &[PartitionEdit]| {
        e.iter()
            .filter(|e| !matches!(e, PartitionEdit::Remove))
            .count()
    };
    let mut size = layout.head.len() + layout.tail.len() + 5;
    for (topic, edits) in layout.topics.iter().zip(edits) {
        size += topic.name.len() + topic.tail.len() + 5;
        for (p, edit) in topic.partitions.iter().zip(edits) {
            size += match edit {
                PartitionEdit::Keep => p.span.len(),
                PartitionEdit::Replace(new) => p.span.len() - p.records.len() + 5 + new.len(),
                PartitionEdit::Remove => 0,
            };
        }
    }
    let mut out = BytesMut::with_capacity(size);
    out.extend_from_slice(&frame[layout.head]);
    let topics = edits.iter().filter(|e| kept(e) > 0).count();
    put_count(&mut out, topics, flexible)?;
    for (topic, edits) in layout.topics.iter().zip(edits) {
        let partitions = kept(edits);
        if partitions == 0 {
            continue;
        }
        out.extend_from_slice(&frame[topic.name.clone()]);
        put_count(&mut out, partitions, flexible)?;
        for (p, edit) in topic.partitions.iter().zip(edits) {
            match edit {
                PartitionEdit::Keep => out.extend_from_slice(&frame[p.span.clone()]),
                PartitionEdit::Replace(new) => {
                    out.extend_from_slice(&frame[p.span.start..p.records.start]);
                    // A bytes length is written as an array count is.
                    put_count(&mut out, new.len(), flexible)?;
                    out.extend_from_slice(new);
                    out.extend_from_slice(&frame[p.records.end..p.span.end]);
                }
                PartitionEdit::Remove => {}
            }
        }
        out.extend_from_slice(&frame[topic.tail.clone()]);
    }
    out.extend_from_slice(&frame[layout.tail]);
    Some(out)
}

/// An array's count, or a bytes value's length, as kafka-protocol writes
/// it: an `i32`, or (flexible versions) the unsigned varint of `n + 1`.
fn put_count(out: &mut BytesMut, n: usize, flexible: bool) -> Option<()> {
    if !flexible {
        out.put_i32(i32::try_from(n).ok()?);
        return Some(());
    }
    let mut v = u32::try_from(n).ok()?.checked_add(1)?;
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
    Some(())
}

/// Reads an array's count (`None` for a null or unreadable one: the
/// request's arrays are not nullable).
fn count(frame: &[u8], at: usize, flexible: bool) -> Option<(usize, usize)> {
    if flexible {
        let (n, next) = read_uvarint(frame, at)?;
        Some((usize::try_from(n.checked_sub(1)?).ok()?, next))
    } else {
        let n = i32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?);
        Some((usize::try_from(n).ok()?, at + 4))
    }
}

/// Skips a nullable string or bytes value.
fn skip_nullable(frame: &[u8], at: usize, flexible: bool, wide: bool) -> Option<usize> {
    let (len, next) = if flexible {
        let (n, next) = read_uvarint(frame, at)?;
        (n.checked_sub(1).map(|n| n as usize), next)
    } else if wide {
        let n = i32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?);
        (usize::try_from(n).ok(), at + 4)
    } else {
        let n = i16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
        (usize::try_from(n).ok(), at + 2)
    };
    let end = next.checked_add(len.unwrap_or(0))?;
    (end <= frame.len()).then_some(end)
}

fn walk(frame: &[u8], body_offset: usize, version: i16) -> Option<Layout> {
    if !(3..=13).contains(&version) {
        return None;
    }
    let flexible = version >= 9;
    // transactional_id, acks, timeout_ms
    let count_at = skip_nullable(frame, body_offset, flexible, false)? + 2 + 4;
    let head = 0..count_at;
    let (n_topics, mut at) = count(frame, count_at, flexible)?;
    // Each topic takes a few bytes at least: a count beyond the frame is a
    // lie, and must not size an allocation.
    let mut topics = Vec::with_capacity(n_topics.min(frame.len() - at));
    for _ in 0..n_topics {
        let start = at;
        at = if version >= 13 {
            at.checked_add(16)?
        } else {
            skip_nullable(frame, at, flexible, false)?
        };
        let name = start..at;
        let (n_parts, next) = count(frame, at, flexible)?;
        at = next;
        let mut partitions = Vec::with_capacity(n_parts.min(frame.len().saturating_sub(at)));
        for _ in 0..n_parts {
            let start = at;
            let records_at = start.checked_add(4)?;
            at = skip_nullable(frame, records_at, flexible, true)?;
            let records = records_at..at;
            if flexible {
                at = skip_tagged_fields(frame, at)?;
            }
            partitions.push(PartitionAt {
                span: start..at,
                records,
            });
        }
        let tail_start = at;
        if flexible {
            at = skip_tagged_fields(frame, at)?;
        }
        topics.push(TopicAt {
            name,
            partitions,
            tail: tail_start..at,
        });
    }
    let tail_start = at;
    if flexible {
        at = skip_tagged_fields(frame, at)?;
    }
    (at <= frame.len()).then_some(Layout {
        head,
        topics,
        tail: tail_start..at,
    })
}

#[cfg(test)]
mod tests;
