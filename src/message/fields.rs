//! Request fields read in place, and response fields patched in place.
//!
//! A few requests carry a wait of their own, or a flag the proxy must honour
//! (acks=0 has no response). They are read straight from the bytes, so a
//! 1 MiB Produce is never decoded just to learn its acks.

use bytes::BytesMut;
use kafka_protocol::messages::ApiKey;

use super::{codec_error, response_body_offset, ResponseFrame};
use crate::error::Error;

/// Reads a nullable string (classic or compact) and returns the offset after it.
fn skip_string(buf: &[u8], offset: usize, compact: bool) -> Option<usize> {
    if compact {
        let (len_plus_one, next) = crate::codec::read_uvarint(buf, offset)?;
        let len = (len_plus_one as usize).saturating_sub(1);
        let end = next.checked_add(len)?;
        (end <= buf.len()).then_some(end)
    } else {
        let raw = i16::from_be_bytes(buf.get(offset..offset + 2)?.try_into().ok()?);
        let len = usize::try_from(raw.max(0)).ok()?;
        let end = offset + 2 + len;
        (end <= buf.len()).then_some(end)
    }
}

fn read_i16(buf: &[u8], offset: usize) -> Option<i16> {
    Some(i16::from_be_bytes(
        buf.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

fn read_i32(buf: &[u8], offset: usize) -> Option<i32> {
    Some(i32::from_be_bytes(
        buf.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

/// Produce: `(acks, timeout_ms)`. `transactional_id` (v3+) comes first.
pub fn produce_acks_and_timeout(
    frame: &[u8],
    body_offset: usize,
    version: i16,
) -> Option<(i16, i32)> {
    let offset = if version >= 3 {
        skip_string(frame, body_offset, version >= 9)?
    } else {
        body_offset
    };
    Some((read_i16(frame, offset)?, read_i32(frame, offset + 2)?))
}

/// Fetch: `max_wait_ms`. Before v15 a `replica_id` comes first.
pub fn fetch_max_wait(frame: &[u8], body_offset: usize, version: i16) -> Option<i32> {
    read_i32(frame, body_offset + if version >= 15 { 0 } else { 4 })
}

/// Fetch: `isolation_level` (v4+; 1 = read_committed), after max_wait_ms,
/// min_bytes and max_bytes (and replica_id before v15).
pub fn fetch_isolation_level(frame: &[u8], body_offset: usize, version: i16) -> Option<i8> {
    let at = body_offset + if version >= 15 { 12 } else { 16 };
    frame.get(at).map(|b| *b as i8)
}

/// JoinGroup: `rebalance_timeout_ms` (v1+), after `group_id` and `session_timeout_ms`.
pub fn join_group_rebalance_timeout(frame: &[u8], body_offset: usize, version: i16) -> Option<i32> {
    let offset = skip_string(frame, body_offset, version >= 6)?;
    if version >= 1 {
        read_i32(frame, offset + 4)
    } else {
        read_i32(frame, offset)
    }
}

/// Fetch v3+: where `max_bytes` sits (after replica_id before v15,
/// max_wait_ms and min_bytes).
fn fetch_max_bytes_offset(body_offset: usize, version: i16) -> Option<usize> {
    (version >= 3).then_some(body_offset + if version >= 15 { 8 } else { 12 })
}

/// Fetch: lowers `max_bytes` to `cap` in place (a per-request value, safe
/// with fetch sessions). Returns the value the client asked for, if lowered.
/// The broker still returns at least one batch whatever the cap (KIP-74).
pub fn cap_fetch_max_bytes(
    frame: &mut [u8],
    body_offset: usize,
    version: i16,
    cap: i32,
) -> Option<i32> {
    let at = fetch_max_bytes_offset(body_offset, version)?;
    let asked = read_i32(frame, at)?;
    if asked <= cap {
        return None;
    }
    frame[at..at + 4].copy_from_slice(&cap.to_be_bytes());
    Some(asked)
}

/// Produce and Fetch responses: `throttle_time_ms` raised to `ms` if the
/// broker's is lower (KIP-219: the client sees the larger of the two). Fetch
/// v1+ has it first; Produce v1-8 last: patched in place. Flexible Produce
/// (v9+) has tagged fields after it, so its message is changed (decoded
/// once, with the other filters that read it). Left as is otherwise.
pub fn raise_throttle_time(
    api: ApiKey,
    version: i16,
    frame: &mut ResponseFrame,
    ms: i32,
) -> Result<(), Error> {
    use kafka_protocol::messages::ProduceResponse;
    // Flexible Produce first: through the decoded message, so a response
    // another filter changed is not encoded here only to be changed again.
    if api == ApiKey::Produce && version >= 9 {
        if frame
            .message::<ProduceResponse>(api, version)?
            .throttle_time_ms
            < ms
        {
            frame
                .message_mut::<ProduceResponse>(api, version)?
                .throttle_time_ms = ms;
        }
        return Ok(());
    }
    let at = match (api, version) {
        (ApiKey::Fetch, v) if v >= 1 => response_body_offset(api, version, frame.bytes()?),
        (ApiKey::Produce, 1..=8) => frame.bytes()?.len().checked_sub(4),
        _ => None,
    };
    let bytes = frame.bytes()?;
    let Some(at) = at else { return Ok(()) };
    match read_i32(bytes, at) {
        Some(broker) if broker < ms => {
            let mut out = BytesMut::from(&bytes[..]);
            out[at..at + 4].copy_from_slice(&ms.to_be_bytes());
            frame.set_bytes(out.freeze());
            Ok(())
        }
        Some(_) => Ok(()),
        None => Err(codec_error(
            api,
            version,
            "response too short for throttle_time_ms",
        )),
    }
}
