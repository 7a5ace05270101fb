//! Raw DEFLATE (RFC 1951) of one WebSocket message for permessage-deflate
//! (RFC 7692 §7), without context takeover in either direction.
//!
//! * [`compress_raw`]: a fresh deflate stream per message, ended with a sync
//!   flush (`Z_SYNC_FLUSH`) whose trailing empty stored block `00 00 ff ff` is
//!   removed (RFC 7692 §7.2.1). What the server sends under
//!   `server_no_context_takeover`.
//! * [`decompress_raw`]: appends `00 00 ff ff` and inflates with a fresh
//!   context (RFC 7692 §7.2.2). Correct because the server negotiates
//!   `client_no_context_takeover`, so no client message refers to an earlier
//!   one. Inflation stops as soon as the output passes `max_size`
//!   (decompression-bomb limit). Data after a final block (`BFINAL` = 1) is
//!   ignored, as zlib's `inflate()` does; a message that ends inside a block
//!   gives the output decoded so far. Only invalid DEFLATE data is an error.
//!
//! The pure-Python twin (`chathub/_compress_py.py`) does the same on stdlib
//! zlib (`wbits = -15`); both accept and reject the same inputs, but the
//! compressed bytes may differ (zlib-rs vs zlib).

use std::cell::RefCell;
use std::fmt;

use flate2::{Decompress, FlushCompress, FlushDecompress, Status};

use crate::gzip::{deflate_bound, with_deflater};

/// The empty stored block a sync flush ends with (RFC 7692 §7.2.1).
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// First output buffer for inflation when the input gives no better hint.
const MIN_OUT: usize = 256;

/// Why a deflate operation failed. Every variant is a `ValueError` in Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeflateError {
    /// Compression level outside 0..=9.
    InvalidLevel,
    /// The DEFLATE data is invalid.
    Corrupt(String),
    /// The decompressed data would be longer than `max_size`.
    TooLarge(usize),
}

impl fmt::Display for DeflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeflateError::InvalidLevel => write!(f, "compression level must be between 0 and 9"),
            DeflateError::Corrupt(why) => write!(f, "invalid deflate data: {why}"),
            DeflateError::TooLarge(max) => {
                write!(f, "decompressed data exceeds max_size ({max} bytes)")
            }
        }
    }
}

impl std::error::Error for DeflateError {}

/// Compress one message: raw DEFLATE, fresh context, sync flush, without the
/// trailing `00 00 ff ff`. The empty message gives `[0x00]`.
pub fn compress_raw(data: &[u8], level: u32) -> Result<Vec<u8>, DeflateError> {
    if level > 9 {
        return Err(DeflateError::InvalidLevel);
    }
    // The sync flush adds at most an empty stored block (5 bytes) and the
    // bits of the last block: the margin keeps it to one deflate() call.
    let mut out = Vec::with_capacity(deflate_bound(data.len()) + 16);
    with_deflater(level, |deflater| loop {
        let consumed = deflater.total_in() as usize;
        deflater
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .map_err(|e| DeflateError::Corrupt(e.to_string()))?;
        // Room left in the buffer after a sync flush: all input is consumed
        // and the flush is complete (zlib's contract).
        if out.len() < out.capacity() {
            return Ok(());
        }
        out.reserve(out.capacity().max(64));
    })?;
    if !out.ends_with(&SYNC_TAIL) {
        // zlib always ends a sync flush on a byte boundary with this block.
        return Err(DeflateError::Corrupt(
            "sync flush did not end with 00 00 ff ff".into(),
        ));
    }
    out.truncate(out.len() - SYNC_TAIL.len());
    Ok(out)
}

thread_local! {
    /// One raw inflate state per thread, reset per message (its 32 KiB window
    /// is allocated once, not per message).
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

fn with_inflater<R>(f: impl FnOnce(&mut Decompress) -> R) -> R {
    INFLATER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            let inflater = match slot.as_mut() {
                Some(inflater) => {
                    inflater.reset(false);
                    inflater
                }
                None => slot.insert(Decompress::new(false)),
            };
            f(inflater)
        }
        Err(_) => f(&mut Decompress::new(false)),
    })
}

/// Decompress one message: `data` + `00 00 ff ff`, inflated with a fresh
/// context, refusing output longer than `max_size` (inflation stops there).
pub fn decompress_raw(data: &[u8], max_size: usize) -> Result<Vec<u8>, DeflateError> {
    let mut input_buf = Vec::with_capacity(data.len() + SYNC_TAIL.len());
    input_buf.extend_from_slice(data);
    input_buf.extend_from_slice(&SYNC_TAIL);
    let mut input = &input_buf[..];
    // One byte past the limit proves "too large" without inflating further.
    let limit = max_size.saturating_add(1);
    let first = data.len().saturating_mul(4).max(MIN_OUT).min(limit);
    let mut out: Vec<u8> = Vec::with_capacity(first);

    with_inflater(|inflater| {
        loop {
            if out.len() == out.capacity() {
                // out.len() <= max_size here (checked below), so limit > out.len().
                let step = out.len().max(MIN_OUT).min(limit - out.len());
                out.reserve_exact(step);
            }
            let in_before = inflater.total_in();
            let out_before = out.len();
            let status = inflater
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|e| DeflateError::Corrupt(e.to_string()))?;
            let consumed = (inflater.total_in() - in_before) as usize;
            input = &input[consumed..];
            if out.len() > max_size {
                return Err(DeflateError::TooLarge(max_size));
            }
            match status {
                // A final block: what follows it is ignored.
                Status::StreamEnd => return Ok(()),
                Status::Ok | Status::BufError => {
                    let room = out.len() < out.capacity();
                    // Input used up with room to spare: every byte it holds is out.
                    if input.is_empty() && room {
                        return Ok(());
                    }
                    let progressed = consumed > 0 || out.len() > out_before;
                    if !progressed && room {
                        return Ok(()); // not reached with zlib's inflate; never spin
                    }
                }
            }
        }
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn chat_json(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 100);
        let mut i = 0u32;
        while v.len() < n {
            v.extend_from_slice(
                format!(
                    r#"{{"ev":"message","room":"general","seq":{i},"from":42,"text":"hi {i}"}}"#
                )
                .as_bytes(),
            );
            i += 1;
        }
        v.truncate(n);
        v
    }

    #[test]
    fn rfc7692_hello() {
        // RFC 7692 §7.2.3.1: "Hello" with a fresh context.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(compress_raw(b"Hello", 6).unwrap(), hello);
        assert_eq!(decompress_raw(&hello, 5).unwrap(), b"Hello");
        assert!(matches!(
            decompress_raw(&hello, 4),
            Err(DeflateError::TooLarge(4))
        ));
        // §7.2.3.4: the same in a block with BFINAL set.
        let final_block = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(decompress_raw(&final_block, 5).unwrap(), b"Hello");
        // §7.2.3.3: a block with no compression, then the start of the next block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(decompress_raw(&stored, 5).unwrap(), b"Hello");
        // §7.2.3.5: two blocks, each ending with a sync flush.
        let two = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        assert_eq!(decompress_raw(&two, 5).unwrap(), b"Hello");
    }

    #[test]
    fn empty_message_is_one_zero_byte() {
        // §7.2.3.6: an empty message is the single byte 0x00.
        assert_eq!(compress_raw(b"", 6).unwrap(), [0x00]);
        assert_eq!(decompress_raw(&[0x00], 0).unwrap(), b"");
        assert_eq!(decompress_raw(b"", 0).unwrap(), b""); // no data at all: nothing decoded
    }

    #[test]
    fn round_trip_sizes_and_levels() {
        for &n in &[0usize, 1, 200, 4096, 65_536, 300_000] {
            let data = chat_json(n);
            for level in 0..=9 {
                let packed = compress_raw(&data, level).unwrap();
                assert_eq!(
                    decompress_raw(&packed, n).unwrap(),
                    data,
                    "n={n} level={level}"
                );
                if n > 0 {
                    assert_eq!(
                        decompress_raw(&packed, n - 1),
                        Err(DeflateError::TooLarge(n - 1))
                    );
                }
            }
        }
    }

    #[test]
    fn fresh_context_per_message() {
        let data = chat_json(4096);
        let first = compress_raw(&data, 6).unwrap();
        let _ = compress_raw(&chat_json(777), 1);
        assert_eq!(compress_raw(&data, 6).unwrap(), first);
        // A message never refers to an earlier one, so any one decodes alone.
        let _ = decompress_raw(&compress_raw(&chat_json(999), 6).unwrap(), 999).unwrap();
        assert_eq!(decompress_raw(&first, 4096).unwrap(), data);
    }

    #[test]
    fn interoperates_with_flate2_streams() {
        let data = chat_json(10_000);
        // flate2's raw encoder with a sync flush, as a browser would send.
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&data).unwrap();
        enc.flush().unwrap();
        let mut wire = enc.get_ref().clone();
        assert!(wire.ends_with(&SYNC_TAIL));
        wire.truncate(wire.len() - 4);
        assert_eq!(decompress_raw(&wire, data.len()).unwrap(), data);
        // A complete stream (BFINAL) followed by junk: the junk is ignored.
        let mut full = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        full.write_all(&data).unwrap();
        let mut full = full.finish().unwrap();
        full.extend_from_slice(b"junk");
        assert_eq!(decompress_raw(&full, data.len()).unwrap(), data);
    }

    #[test]
    fn bomb_stops_at_max_size() {
        let zeros = vec![0u8; 64 << 20];
        let bomb = compress_raw(&zeros, 9).unwrap();
        assert!(bomb.len() < 100_000);
        assert_eq!(
            decompress_raw(&bomb, 1 << 20),
            Err(DeflateError::TooLarge(1 << 20))
        );
    }

    #[test]
    fn corrupt_inputs() {
        // BTYPE = 11 (reserved).
        assert!(matches!(
            decompress_raw(&[0x07], 100),
            Err(DeflateError::Corrupt(_))
        ));
        // A stored block whose LEN/NLEN do not match.
        assert!(matches!(
            decompress_raw(&[0x00, 0x05, 0x00, 0x00, 0x00], 100),
            Err(DeflateError::Corrupt(_))
        ));
        // A distance before the start of the message (fresh context): a
        // fixed-Huffman block whose first symbol is a match (length 3, distance 1).
        assert!(matches!(
            decompress_raw(&[0x03, 0x02, 0x00], 100),
            Err(DeflateError::Corrupt(_))
        ));
        assert_eq!(compress_raw(b"x", 10), Err(DeflateError::InvalidLevel));
    }
}
