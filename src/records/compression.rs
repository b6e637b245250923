//! The five codecs in the framing Java clients read and write, with a bound on the
//! decompressed size (the bomb guard).

use std::cell::RefCell;
use std::fmt;
use std::io::{Read, Write};

use zstd::zstd_safe::{
    self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective,
};

use super::{be_i32, Codec, RecordsError};

mod lz4_frame;

/// xerial snappy-java stream header: magic, version 1, compatible version 1.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
pub(super) const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// snappy-java's default block size, which Kafka's Java client uses.
const XERIAL_BLOCK: usize = 32 * 1024;
/// The largest expansion a zstd frame's own content size is believed for, when the first
/// output buffer is sized (record batches of text expand 5-10x; a frame that expands more
/// still decompresses, into a buffer that grows).
const ZSTD_PLAUSIBLE_RATIO: usize = 32;
/// Kafka's default zstd level (`CompressionType.ZSTD` / `ZstdCompression.DEFAULT_LEVEL`).
const ZSTD_LEVEL: i32 = 3;

fn decompress_err(codec: Codec, e: impl fmt::Display) -> RecordsError {
    RecordsError::Decompress {
        codec,
        reason: e.to_string(),
    }
}

fn compress_err(codec: Codec, e: impl fmt::Display) -> RecordsError {
    RecordsError::Compress {
        codec,
        reason: e.to_string(),
    }
}

/// Reads a streaming decoder to the end, refusing more than `limit` bytes.
fn read_bounded(
    codec: Codec,
    src_len: usize,
    reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, RecordsError> {
    // why: a guess from the compressed size, capped by the limit; never from a size field
    // inside the stream, which an attacker controls.
    let mut out = Vec::with_capacity(src_len.saturating_mul(4).min(limit));
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| decompress_err(codec, e))?;
    if out.len() > limit {
        return Err(RecordsError::TooLarge { limit });
    }
    Ok(out)
}

/// `src` decompressed with `codec`, at most `limit` bytes (the bomb guard).
pub fn decompress(codec: Codec, src: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    match codec {
        Codec::None => Ok(src.to_vec()),
        // why: Multi: Java's GZIPInputStream reads concatenated members too.
        Codec::Gzip => read_bounded(
            codec,
            src.len(),
            flate2::read::MultiGzDecoder::new(src),
            limit,
        ),
        Codec::Lz4 => lz4_frame::decompress(src, limit),
        Codec::Zstd => zstd_decompress(src, limit),
        Codec::Snappy => snappy_decompress(src, limit),
    }
}

thread_local! {
    /// why: a zstd context allocates and clears its tables and window when it is created
    /// (the profile in docs/performance.md had that per batch); one per worker thread,
    /// reused for every batch it compresses.
    static ZSTD_CCTX: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    /// The same for decompression.
    static ZSTD_DCTX: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

fn zstd_err(code: usize) -> &'static str {
    zstd_safe::get_error_name(code)
}

/// One zstd frame of `src` at Kafka's default level, with this thread's context: the
/// content size is known, so the frame says it and the context sizes its tables to it.
fn zstd_compress(src: &[u8], out: &mut Vec<u8>) -> Result<(), RecordsError> {
    let codec = Codec::Zstd;
    ZSTD_CCTX.with(|slot| {
        let mut slot = slot.borrow_mut();
        let cctx = match slot.as_mut() {
            Some(cctx) => cctx,
            None => {
                let mut cctx = CCtx::try_create()
                    .ok_or_else(|| compress_err(codec, "no memory for a context"))?;
                cctx.set_parameter(CParameter::CompressionLevel(ZSTD_LEVEL))
                    .map_err(|c| compress_err(codec, zstd_err(c)))?;
                slot.insert(cctx)
            }
        };
        out.reserve(zstd_safe::compress_bound(src.len()));
        let at = out.len();
        let mut tail = std::io::Cursor::new(&mut *out);
        tail.set_position(at as u64);
        if let Err(code) = cctx.compress2(&mut tail, src) {
            // why: a failed compress2 leaves the context mid-frame; the next batch gets a
            // fresh one.
            *slot = None;
            return Err(compress_err(codec, zstd_err(code)));
        }
        Ok(())
    })
}

/// Every frame of `src`, at most `limit` bytes, with this thread's context.
fn zstd_decompress(src: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    let codec = Codec::Zstd;
    let err = |code: usize| decompress_err(codec, zstd_err(code));
    if src.is_empty() {
        return Ok(Vec::new());
    }
    // why: the frame's content size (when the producer wrote one) sizes the buffer so zstd
    // decodes straight into it. It is attacker-controlled: it is taken only up to what the
    // bytes we hold could plausibly expand to (and the limit), never beyond, and the decoder
    // checks it against what the frame really holds; past that the buffer grows as data comes.
    let plausible = src.len().saturating_mul(ZSTD_PLAUSIBLE_RATIO).min(limit);
    let first = match zstd_safe::get_frame_content_size(src) {
        Ok(Some(n)) => usize::try_from(n).unwrap_or(usize::MAX).min(plausible),
        _ => src.len().saturating_mul(4).min(limit),
    };
    // why: the frame header picks the window the decoder allocates; cap it to what the
    // output limit could ever need (and zstd's own default ceiling, 2^27).
    let window_log = (usize::BITS - limit.max(1).leading_zeros()).clamp(10, 27);
    ZSTD_DCTX.with(|slot| {
        let mut slot = slot.borrow_mut();
        let dctx = match slot.as_mut() {
            Some(dctx) => dctx,
            None => slot.insert(
                DCtx::try_create()
                    .ok_or_else(|| decompress_err(codec, "no memory for a context"))?,
            ),
        };
        dctx.reset(ResetDirective::SessionOnly).map_err(err)?;
        dctx.set_parameter(DParameter::WindowLogMax(window_log))
            .map_err(err)?;
        let mut out = Vec::with_capacity(first.max(1));
        let mut input = InBuffer::around(src);
        loop {
            if out.len() == out.capacity() {
                let room = out
                    .len()
                    .max(4096)
                    .min((limit + 1).saturating_sub(out.len()));
                if room == 0 {
                    return Err(RecordsError::TooLarge { limit });
                }
                out.reserve_exact(room);
            }
            let at = out.len();
            let hint = dctx
                .decompress_stream(&mut OutBuffer::around_pos(&mut out, at), &mut input)
                .map_err(err)?;
            if out.len() > limit {
                return Err(RecordsError::TooLarge { limit });
            }
            let consumed = input.pos() == src.len();
            match hint {
                // A frame ended and is flushed: the end, or the next frame.
                0 if consumed => return Ok(out),
                0 => {}
                // More input wanted, none left, and room to write: cut short.
                _ if consumed && out.len() < out.capacity() => {
                    return Err(decompress_err(codec, "the frame is cut short"));
                }
                _ => {}
            }
        }
    })
}

/// Kafka/xerial framing (`\x82SNAPPY\0`, version ints, blocks with a 4-byte BE length); raw
/// snappy is accepted too, as snappy-java's `SnappyInputStream` does.
pub(super) fn snappy_decompress(src: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    let codec = Codec::Snappy;
    let mut decoder = snap::raw::Decoder::new();
    let mut out = Vec::new();
    let mut block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), RecordsError> {
        let len = snap::raw::decompress_len(block).map_err(|e| decompress_err(codec, e))?;
        // why: the block preamble is attacker-controlled; check it before allocating.
        if len > limit.saturating_sub(out.len()) {
            return Err(RecordsError::TooLarge { limit });
        }
        let at = out.len();
        out.resize(at + len, 0);
        let n = decoder
            .decompress(block, &mut out[at..])
            .map_err(|e| decompress_err(codec, e))?;
        out.truncate(at + n);
        Ok(())
    };
    if !src.starts_with(XERIAL_MAGIC) {
        block(src, &mut out)?;
        return Ok(out);
    }
    let mut pos = 0;
    while pos < src.len() {
        // why: snappy-java accepts concatenated streams, each with its own header.
        if src[pos..].starts_with(XERIAL_MAGIC) {
            if src.len() - pos < XERIAL_HEADER.len() {
                return Err(decompress_err(codec, "short xerial header"));
            }
            pos += XERIAL_HEADER.len();
            continue;
        }
        let len_bytes = src
            .get(pos..pos + 4)
            .ok_or_else(|| decompress_err(codec, "short block length"))?;
        let len = be_i32(len_bytes, 0) as u32 as usize;
        pos += 4;
        let data = pos
            .checked_add(len)
            .and_then(|end| src.get(pos..end))
            .ok_or_else(|| decompress_err(codec, "block runs past the payload"))?;
        pos += len;
        block(data, &mut out)?;
    }
    Ok(out)
}

/// Appends `src` compressed with `codec` to `out`, in the framing Java clients read.
pub fn compress_into(codec: Codec, src: &[u8], out: &mut Vec<u8>) -> Result<(), RecordsError> {
    match codec {
        Codec::None => out.extend_from_slice(src),
        Codec::Gzip => {
            // why: level 6 is Java's Deflater.DEFAULT_COMPRESSION, Kafka's gzip default.
            let mut enc = flate2::write::GzEncoder::new(&mut *out, flate2::Compression::default());
            enc.write_all(src).map_err(|e| compress_err(codec, e))?;
            enc.finish().map_err(|e| compress_err(codec, e))?;
        }
        // why: Java's KafkaLZ4BlockInputStream refuses dependent blocks, and BD block sizes
        // other than 64 KiB..4 MiB; lz4_frame writes its exact shape.
        Codec::Lz4 => lz4_frame::compress_into(src, out)?,
        Codec::Zstd => zstd_compress(src, out)?,
        Codec::Snappy => {
            // why: xerial framing, not raw snappy: Java can't read raw snappy batches
            // (kafka-protocol <= 0.16 shipped that bug).
            out.extend_from_slice(XERIAL_HEADER);
            let mut enc = snap::raw::Encoder::new();
            for chunk in src.chunks(XERIAL_BLOCK) {
                let len_at = out.len();
                out.resize(len_at + 4 + snap::raw::max_compress_len(chunk.len()), 0);
                let n = enc
                    .compress(chunk, &mut out[len_at + 4..])
                    .map_err(|e| compress_err(codec, e))?;
                out.truncate(len_at + 4 + n);
                // why: n <= max_compress_len(32 KiB), far below u32::MAX.
                out[len_at..len_at + 4].copy_from_slice(&(n as u32).to_be_bytes());
            }
        }
    }
    Ok(())
}
