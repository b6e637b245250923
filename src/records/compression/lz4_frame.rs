//! Kafka's LZ4: the LZ4 frame format (lz4_Frame_format.md) around liblz4's block functions.
//!
//! What the clients write and read:
//! - Java (`Lz4BlockOutputStream`): one frame, version 01, **independent blocks** (its reader
//!   refuses dependent ones), 64 KiB blocks, no block or content checksum, no content size;
//!   a block that does not shrink is stored uncompressed (the size word's high bit). Its
//!   reader checks the header checksum (HC, the second byte of xxh32 over the descriptor)
//!   for magic v1 and later: KIP-57 fixed the broken HC of 0.8/0.9 clients, which only magic
//!   v0 batches may carry and which v2 batches never do. It verifies a content or block
//!   checksum when the flags say there is one, and reads one frame, ignoring what follows.
//! - librdkafka: liblz4's `LZ4F_compressBegin` with 64 KiB independent blocks, the
//!   configured level, no checksum, no content size.
//!
//! So this module writes exactly Java's shape, and reads that shape and its optional
//! checksums and content size itself, straight into the output buffer. Anything else (linked
//! blocks, a dictionary id, the legacy or a skippable frame, a header it does not know, a
//! header checksum that does not match) goes to lz4_flex's full frame decoder, which was the
//! only reader before, so it is read or refused exactly as it was.
//!
//! why not a frame library here: the crate forbids `unsafe`, so liblz4's frame contexts
//! (`LZ4F_*`, through lz4-sys) cannot be kept per thread; the `lz4` crate's safe
//! `Encoder`/`Decoder` make new ones per frame, and lz4_flex's frame types copy every block
//! through buffers of their own (its encoder, kept and reused, was no faster). Measured on this project's machine (bench-like
//! batches, one thread's CPU per GB; docs/performance.md, "lz4 and fetch dedup"): lz4_flex
//! frames 0.40-0.48 s to decompress and 1.33-1.43 to compress, lz4_flex without its safe-*
//! features or the `lz4` crate's frames in between, this framing over liblz4's blocks
//! 0.32-0.37 and 1.04-1.09: the fastest both ways, with no feature change. The frame
//! format is small and fixed, the block codec is liblz4's own (`LZ4_compress_default`,
//! `LZ4_decompress_safe`, through the `lz4` crate's safe wrappers), and the tests read every
//! frame written here with lz4_flex and with liblz4's frame decoder.

use xxhash_rust::xxh32::xxh32;

use super::{compress_err, decompress_err, read_bounded};
use crate::records::{Codec, RecordsError};

const MAGIC: u32 = 0x184D_2204;
const FLG_VERSION_MASK: u8 = 0xC0;
const FLG_VERSION_01: u8 = 0x40;
const FLG_BLOCK_INDEPENDENT: u8 = 0x20;
const FLG_BLOCK_CHECKSUM: u8 = 0x10;
const FLG_CONTENT_SIZE: u8 = 0x08;
const FLG_CONTENT_CHECKSUM: u8 = 0x04;
/// A reserved bit and the dictionary id flag: frames with either go to lz4_flex.
const FLG_OTHER: u8 = 0x03;
/// BD: bits 6-4 the block's maximum size; the rest reserved.
const BD_SIZE_SHIFT: u8 = 4;
const BD_RESERVED: u8 = 0x8F;
/// BD id 4: 64 KiB blocks, what Java and librdkafka write.
const BD_64KB: u8 = 4 << BD_SIZE_SHIFT;
const BLOCK_64KB: usize = 64 * 1024;
/// The size word's high bit: the block is stored uncompressed.
const UNCOMPRESSED: u32 = 0x8000_0000;

fn err(e: impl std::fmt::Display) -> RecordsError {
    decompress_err(Codec::Lz4, e)
}

/// A little-endian u32 at `pos`, or the frame is cut short.
fn le_u32(src: &[u8], pos: usize) -> Result<u32, RecordsError> {
    src.get(pos..pos + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| err("the frame is cut short"))
}

/// `src` decompressed, at most `limit` bytes: every frame in it, one after another.
pub(super) fn decompress(src: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    match read_frames(src, limit)? {
        Some(out) => Ok(out),
        None => read_bounded(
            Codec::Lz4,
            src.len(),
            lz4_flex::frame::FrameDecoder::new(src),
            limit,
        ),
    }
}

/// Every frame of `src` when all are the shape Kafka's clients write, else `None` (lz4_flex
/// reads them). Blocks decompress straight into the output, which is zeroed once as it grows,
/// never per block (a frame of many tiny blocks claiming 4 MiB each costs no more than its
/// output).
fn read_frames(src: &[u8], limit: usize) -> Result<Option<Vec<u8>>, RecordsError> {
    // why: a guess from the compressed size, capped by the limit; never from a size field
    // inside the stream, which an attacker controls.
    let mut out = Vec::with_capacity(src.len().saturating_mul(4).min(limit));
    // The bytes written so far; `out` past `end` is zeroed room for the next block.
    let mut end = 0;
    let mut pos = 0;
    while pos < src.len() {
        let Some(frame) = FrameHeader::parse(&src[pos..]) else {
            return Ok(None);
        };
        pos += frame.len;
        let start = end;
        loop {
            let word = le_u32(src, pos)?;
            pos += 4;
            if word == 0 {
                break;
            }
            let len = (word & !UNCOMPRESSED) as usize;
            if len > frame.max_block {
                return Err(err("a block is larger than the frame's block size"));
            }
            let data = src
                .get(pos..pos + len)
                .ok_or_else(|| err("the frame is cut short"))?;
            pos += len;
            if frame.block_checksum {
                if le_u32(src, pos)? != xxh32(data, 0) {
                    return Err(err("block checksum mismatch"));
                }
                pos += 4;
            }
            let room = if word & UNCOMPRESSED != 0 {
                len
            } else {
                frame.max_block
            };
            if out.len() < end + room {
                out.resize(end + room, 0);
            }
            end += if word & UNCOMPRESSED != 0 {
                out[end..end + len].copy_from_slice(data);
                len
            } else {
                // why: max_block <= 4 MiB, so the i32 never wraps.
                lz4::block::decompress_to_buffer(data, Some(room as i32), &mut out[end..end + room])
                    .map_err(err)?
            };
            if end > limit {
                return Err(RecordsError::TooLarge { limit });
            }
        }
        if let Some(size) = frame.content_size {
            if (end - start) as u64 != size {
                return Err(err("the frame's content size does not match its blocks"));
            }
        }
        if frame.content_checksum {
            if le_u32(src, pos)? != xxh32(&out[start..end], 0) {
                return Err(err("content checksum mismatch"));
            }
            pos += 4;
        }
    }
    out.truncate(end);
    Ok(Some(out))
}

/// A frame header of the shape read here.
struct FrameHeader {
    /// Bytes of the header: magic, descriptor, HC.
    len: usize,
    max_block: usize,
    block_checksum: bool,
    content_checksum: bool,
    content_size: Option<u64>,
}

impl FrameHeader {
    /// The header at the start of `src`, or `None` for any other (or a short) one.
    fn parse(src: &[u8]) -> Option<FrameHeader> {
        if u32::from_le_bytes(src.get(..4)?.try_into().ok()?) != MAGIC {
            return None;
        }
        let (flg, bd) = (*src.get(4)?, *src.get(5)?);
        if flg & FLG_VERSION_MASK != FLG_VERSION_01
            || flg & FLG_BLOCK_INDEPENDENT == 0
            || flg & FLG_OTHER != 0
            || bd & BD_RESERVED != 0
            || bd >> BD_SIZE_SHIFT < 4
        {
            return None;
        }
        let descriptor_len = if flg & FLG_CONTENT_SIZE != 0 { 10 } else { 2 };
        let descriptor = src.get(4..4 + descriptor_len)?;
        if *src.get(4 + descriptor_len)? != header_checksum(descriptor) {
            return None;
        }
        let content_size = (flg & FLG_CONTENT_SIZE != 0)
            .then(|| u64::from_le_bytes(descriptor[2..10].try_into().unwrap_or_default()));
        Some(FrameHeader {
            len: 4 + descriptor_len + 1,
            // 4 → 64 KiB, 5 → 256 KiB, 6 → 1 MiB, 7 → 4 MiB
            max_block: 1 << (8 + 2 * usize::from(bd >> BD_SIZE_SHIFT)),
            block_checksum: flg & FLG_BLOCK_CHECKSUM != 0,
            content_checksum: flg & FLG_CONTENT_CHECKSUM != 0,
            content_size,
        })
    }
}

/// HC: the second byte of xxh32 over the descriptor (the correct one, as KIP-57 has it).
fn header_checksum(descriptor: &[u8]) -> u8 {
    (xxh32(descriptor, 0) >> 8) as u8
}

/// Appends one frame of `src` in Java's shape: 64 KiB independent blocks, no checksums, no
/// content size; a block that does not shrink is stored as it is.
pub(super) fn compress_into(src: &[u8], out: &mut Vec<u8>) -> Result<(), RecordsError> {
    let codec = Codec::Lz4;
    let descriptor = [FLG_VERSION_01 | FLG_BLOCK_INDEPENDENT, BD_64KB];
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&descriptor);
    out.push(header_checksum(&descriptor));
    let bound = lz4::block::compress_bound(BLOCK_64KB).map_err(|e| compress_err(codec, e))?;
    // why: like the reader, `out` past `end` is room already zeroed (or holding the last
    // block's leftovers), so each block does not clear its own.
    let mut end = out.len();
    for block in src.chunks(BLOCK_64KB) {
        if out.len() < end + 4 + bound {
            out.resize(end + 4 + bound, 0);
        }
        let n =
            lz4::block::compress_to_buffer(block, None, false, &mut out[end + 4..end + 4 + bound])
                .map_err(|e| compress_err(codec, e))?;
        let word = if n < block.len() {
            n as u32
        } else {
            out[end + 4..end + 4 + block.len()].copy_from_slice(block);
            block.len() as u32 | UNCOMPRESSED
        };
        out[end..end + 4].copy_from_slice(&word.to_le_bytes());
        end += 4 + (word & !UNCOMPRESSED) as usize;
    }
    out.truncate(end);
    out.extend_from_slice(&0u32.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn liblz4_frame(input: &[u8], mode: lz4::BlockMode) -> Vec<u8> {
        let mut enc = lz4::EncoderBuilder::new()
            .block_size(lz4::BlockSize::Max64KB)
            .block_mode(mode)
            .checksum(lz4::ContentChecksum::ChecksumEnabled)
            .build(Vec::new())
            .unwrap();
        enc.write_all(input).unwrap();
        enc.finish().0
    }

    /// The frames Java, librdkafka and idemgate write are read here, without lz4_flex; the
    /// shapes they never write are left to it.
    #[test]
    fn kafka_shaped_frames_take_the_direct_path() {
        let input = b"kafka records ".repeat(20_000);
        let mut ours = Vec::new();
        compress_into(&input, &mut ours).unwrap();
        assert_eq!(read_frames(&ours, 1 << 20).unwrap(), Some(input.clone()));
        let independent = liblz4_frame(&input, lz4::BlockMode::Independent);
        assert_eq!(
            read_frames(&independent, 1 << 20).unwrap(),
            Some(input.clone())
        );
        let linked = liblz4_frame(&input, lz4::BlockMode::Linked);
        assert_eq!(read_frames(&linked, 1 << 20).unwrap(), None);
        assert_eq!(decompress(&linked, 1 << 20).unwrap(), input);
    }
}
