//! Varints as RecordBatch v2 writes them: a bounds-checked read [`Cursor`], zigzag, and the
//! `put_*` writers with their encoded widths.

use std::ops::Range;

use super::RecordsError;

/// Why a cursor read stopped; mapped to an error with the record index by the caller.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    Truncated,
    Overflow,
}

/// A read position in a slice; every read is bounds-checked, nothing panics.
pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
}

impl Cursor<'_> {
    #[inline]
    pub(super) fn u8(&mut self) -> Result<u8, Fault> {
        let b = *self.buf.get(self.pos).ok_or(Fault::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub(super) fn uvarint(&mut self, max_bytes: usize) -> Result<u64, Fault> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let b = self.u8()?;
            // why: the 10th byte of a varlong may only carry bit 63; more would be dropped
            // silently by the shift.
            if i == 9 && b > 1 {
                return Err(Fault::Overflow);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(Fault::Overflow)
    }

    /// Zigzag varint (int32). Stricter than Java, which ignores spare bits in the 5th byte:
    /// such input fails here and is forwarded untouched.
    #[inline]
    pub(super) fn varint(&mut self) -> Result<i32, Fault> {
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(unzigzag32(u32::from(b)));
            }
        }
        let v = u32::try_from(self.uvarint(5)?).map_err(|_| Fault::Overflow)?;
        Ok(unzigzag32(v))
    }

    /// Zigzag varlong (int64).
    #[inline]
    pub(super) fn varlong(&mut self) -> Result<i64, Fault> {
        Ok(unzigzag64(self.uvarint(10)?))
    }

    #[inline]
    pub(super) fn skip(&mut self, n: usize) -> Result<(), Fault> {
        let end = self.pos.checked_add(n).ok_or(Fault::Truncated)?;
        if end > self.buf.len() {
            return Err(Fault::Truncated);
        }
        self.pos = end;
        Ok(())
    }

    /// A nullable byte field (length varint, -1 = null): returns its data range.
    #[inline]
    pub(super) fn nullable(&mut self) -> Result<Option<Range<usize>>, Fault> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let start = self.pos;
        self.skip(len as usize)?;
        Ok(Some(start..self.pos))
    }
}

#[inline]
pub(super) fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

#[inline]
pub(super) fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub(super) fn unzigzag32(u: u32) -> i32 {
    ((u >> 1) as i32) ^ -((u & 1) as i32)
}

#[inline]
pub(super) fn unzigzag64(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Encoded width of an unsigned varint: 1..=10.
#[inline]
pub(super) fn uvarint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[inline]
pub(super) fn varint_len(v: i32) -> usize {
    uvarint_len(u64::from(zigzag32(v)))
}

#[inline]
pub(super) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    // why: one extend_from_slice instead of a capacity check per byte.
    let mut buf = [0u8; 10];
    let mut i = 0;
    while v >= 0x80 {
        buf[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    buf[i] = v as u8;
    out.extend_from_slice(&buf[..=i]);
}

#[inline]
pub(super) fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_uvarint(out, u64::from(zigzag32(v)));
}

#[inline]
pub(super) fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag64(v));
}

/// Length of a nullable field as written: varint length plus data.
pub(super) fn nullable_len(
    field: Option<&[u8]>,
    what: &'static str,
) -> Result<usize, RecordsError> {
    match field {
        None => Ok(1),
        Some(d) => {
            let len = i32::try_from(d.len()).map_err(|_| RecordsError::Overflow { what })?;
            Ok(varint_len(len) + d.len())
        }
    }
}

pub(super) fn put_nullable(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        // why: lengths were checked by nullable_len() before anything was written.
        Some(d) => {
            put_varint(out, d.len() as i32);
            out.extend_from_slice(d);
        }
        None => put_varint(out, -1),
    }
}
