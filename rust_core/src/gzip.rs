//! gzip (RFC 1952) compression and size-bounded decompression.
//!
//! Pure Rust, no Python: the `#[pymodule]` layer in `python.rs` only converts
//! arguments and errors. The rules follow zlib's `inflate()` in gzip mode
//! (`windowBits = 31`), which is what the pure-Python twin
//! (`chathub/_compress_py.py`) uses, so both sides accept and reject the same
//! inputs:
//!
//! * exactly one gzip member; bytes after its trailer are an error,
//! * compression method 8 (deflate) only, reserved FLG bits must be clear,
//! * FEXTRA / FNAME / FCOMMENT are skipped, FHCRC is verified,
//! * the trailer's CRC-32 and ISIZE (length mod 2^32) are verified.
//!
//! Decompression never produces more than `max_size + 1` bytes of output: the
//! output buffer grows towards that bound and inflation stops as soon as the
//! bound is passed, so a small "decompression bomb" cannot make us allocate
//! its full expanded size.

use std::cell::RefCell;
use std::fmt;

use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};

/// zlib's default level, also the default of `gzip_compress`.
pub const DEFAULT_LEVEL: u32 = 6;
/// Payloads up to this many bytes are not worth compressing (`maybe_gzip`).
pub const DEFAULT_THRESHOLD: u64 = 1024;

const HEADER_LEN: usize = 10;
const TRAILER_LEN: usize = 8;
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;
/// First growth step of the output buffer when the input gives no better hint.
const MIN_CHUNK: usize = 32 * 1024;

/// Why a gzip operation failed. Every variant is a `ValueError` in Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GzipError {
    /// Compression level outside 0..=9.
    InvalidLevel,
    /// The 10-byte header (or its optional fields) is malformed.
    BadHeader(&'static str),
    /// The input ends before the gzip member does.
    Truncated,
    /// The deflate stream is invalid.
    Corrupt(String),
    /// The trailer's CRC-32 does not match the decompressed data.
    CrcMismatch,
    /// The trailer's ISIZE does not match the decompressed length.
    LengthMismatch,
    /// Bytes follow the gzip member.
    TrailingData(usize),
    /// The decompressed data would be longer than `max_size`.
    TooLarge(usize),
}

impl fmt::Display for GzipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GzipError::InvalidLevel => write!(f, "compression level must be between 0 and 9"),
            GzipError::BadHeader(why) => write!(f, "invalid gzip header: {why}"),
            GzipError::Truncated => write!(f, "truncated gzip stream"),
            GzipError::Corrupt(why) => write!(f, "invalid deflate data: {why}"),
            GzipError::CrcMismatch => write!(f, "gzip CRC-32 check failed"),
            GzipError::LengthMismatch => write!(f, "gzip length check failed"),
            GzipError::TrailingData(n) => {
                write!(f, "{n} bytes of trailing data after the gzip member")
            }
            GzipError::TooLarge(max) => {
                write!(f, "decompressed data exceeds max_size ({max} bytes)")
            }
        }
    }
}

impl std::error::Error for GzipError {}

/// Upper bound of the deflate output for `n` input bytes (zlib's `compressBound`).
pub(crate) fn deflate_bound(n: usize) -> usize {
    n + (n >> 12) + (n >> 14) + (n >> 25) + 13
}

thread_local! {
    /// One deflate state per thread, reused across calls: creating one costs
    /// more (allocating and clearing ~300 KiB) than compressing a typical chat
    /// payload of a few KiB.
    static DEFLATER: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// Runs `f` with a raw-deflate compressor at `level` that is reset to a fresh stream.
pub(crate) fn with_deflater<R>(level: u32, f: impl FnOnce(&mut Compress) -> R) -> R {
    DEFLATER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            match slot.as_mut() {
                Some((cached, deflater)) if *cached == level => deflater.reset(),
                _ => *slot = Some((level, Compress::new(Compression::new(level), false))),
            }
            let (_, deflater) = slot.as_mut().expect("just filled");
            f(deflater)
        }
        // Not reachable today (f never compresses again); stay correct if it ever is.
        Err(_) => f(&mut Compress::new(Compression::new(level), false)),
    })
}

/// Compress `data` into one gzip member with MTIME 0 and OS 255 ("unknown"),
/// the header Python's `gzip.compress(data, level, mtime=0)` writes.
pub fn compress(data: &[u8], level: u32) -> Result<Vec<u8>, GzipError> {
    if level > 9 {
        return Err(GzipError::InvalidLevel);
    }
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + deflate_bound(data.len()) + TRAILER_LEN);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]);

    with_deflater(level, |deflater| loop {
        let consumed = deflater.total_in() as usize;
        let status = deflater
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)
            .map_err(|e| GzipError::Corrupt(e.to_string()))?;
        match status {
            Status::StreamEnd => return Ok(()),
            // The bound above should make this unreachable; grow and go on.
            Status::Ok | Status::BufError => out.reserve(out.capacity().max(64)),
        }
    })?;

    let mut crc = Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the input length modulo 2^32: the truncating cast is the spec.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

/// Returns `None` when `data.len() <= threshold`, else `compress(data, DEFAULT_LEVEL)`.
pub fn maybe_compress(data: &[u8], threshold: u64) -> Option<Vec<u8>> {
    if data.len() as u64 <= threshold {
        return None;
    }
    Some(compress(data, DEFAULT_LEVEL).expect("DEFAULT_LEVEL is a valid level"))
}

fn need(data: &[u8], end: usize) -> Result<(), GzipError> {
    if data.len() < end {
        Err(GzipError::Truncated)
    } else {
        Ok(())
    }
}

/// Skips a zero-terminated header field starting at `pos`; returns the index after the NUL.
fn skip_zero_terminated(data: &[u8], pos: usize) -> Result<usize, GzipError> {
    match data[pos..].iter().position(|&b| b == 0) {
        Some(i) => Ok(pos + i + 1),
        None => Err(GzipError::Truncated),
    }
}

/// Validates the gzip header and returns its length (where the deflate data starts).
pub fn parse_header(data: &[u8]) -> Result<usize, GzipError> {
    need(data, 2)?;
    if data[0] != 0x1f || data[1] != 0x8b {
        return Err(GzipError::BadHeader("not a gzip stream (bad magic)"));
    }
    need(data, 4)?;
    if data[2] != 8 {
        return Err(GzipError::BadHeader("unknown compression method"));
    }
    let flags = data[3];
    if flags & FRESERVED != 0 {
        return Err(GzipError::BadHeader("reserved flag bits set"));
    }
    need(data, HEADER_LEN)?;
    let mut pos = HEADER_LEN;
    if flags & FEXTRA != 0 {
        need(data, pos + 2)?;
        let xlen = u16::from_le_bytes([data[pos], data[pos + 1]]) as usize;
        pos += 2;
        need(data, pos + xlen)?;
        pos += xlen;
    }
    if flags & FNAME != 0 {
        pos = skip_zero_terminated(data, pos)?;
    }
    if flags & FCOMMENT != 0 {
        pos = skip_zero_terminated(data, pos)?;
    }
    if flags & FHCRC != 0 {
        need(data, pos + 2)?;
        let expected = u16::from_le_bytes([data[pos], data[pos + 1]]);
        let mut crc = Crc::new();
        crc.update(&data[..pos]);
        if (crc.sum() & 0xffff) as u16 != expected {
            return Err(GzipError::BadHeader("header CRC mismatch"));
        }
        pos += 2;
    }
    Ok(pos)
}

/// Decompress exactly one gzip member, refusing output longer than `max_size`.
///
/// Inflation stops as soon as the output passes `max_size`, so memory use is
/// bounded by `max_size` (plus the input), whatever the compression ratio.
pub fn decompress(data: &[u8], max_size: usize) -> Result<Vec<u8>, GzipError> {
    let header_len = parse_header(data)?;
    let mut input = &data[header_len..];
    // One byte past the limit proves "too large" without inflating further.
    let limit = max_size.saturating_add(1);
    let first = data.len().saturating_mul(4).max(MIN_CHUNK).min(limit);
    let mut out: Vec<u8> = Vec::with_capacity(first);
    let mut inflater = Decompress::new(false);

    loop {
        if out.len() == out.capacity() {
            // out.len() <= max_size here (checked below), so limit > out.len().
            let step = out.len().max(MIN_CHUNK).min(limit - out.len());
            out.reserve_exact(step);
        }
        let in_before = inflater.total_in();
        let out_before = out.len();
        let status = inflater
            .decompress_vec(input, &mut out, FlushDecompress::None)
            .map_err(|e| GzipError::Corrupt(e.to_string()))?;
        let consumed = (inflater.total_in() - in_before) as usize;
        input = &input[consumed..];
        if out.len() > max_size {
            return Err(GzipError::TooLarge(max_size));
        }
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError => {
                let progressed = consumed > 0 || out.len() > out_before;
                if !progressed && out.len() < out.capacity() {
                    // Room to write but nothing happened: the input ran out.
                    return Err(GzipError::Truncated);
                }
            }
        }
    }

    if input.len() < TRAILER_LEN {
        return Err(GzipError::Truncated);
    }
    let expected_crc = u32::from_le_bytes([input[0], input[1], input[2], input[3]]);
    let expected_len = u32::from_le_bytes([input[4], input[5], input[6], input[7]]);
    let mut crc = Crc::new();
    crc.update(&out);
    if crc.sum() != expected_crc {
        return Err(GzipError::CrcMismatch);
    }
    if out.len() as u32 != expected_len {
        return Err(GzipError::LengthMismatch);
    }
    if input.len() > TRAILER_LEN {
        return Err(GzipError::TrailingData(input.len() - TRAILER_LEN));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn sample(n: usize) -> Vec<u8> {
        // Compressible but not trivial: a repeating text with a counter.
        let mut v = Vec::with_capacity(n);
        let mut i: u32 = 0;
        while v.len() < n {
            v.extend_from_slice(format!("message {i} in room #general; ").as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    #[test]
    fn round_trip_sizes_and_levels() {
        for &n in &[0usize, 1, 125, 1024, 1025, 65_536, 300_000] {
            let data = sample(n);
            for level in 0..=9 {
                let gz = compress(&data, level).unwrap();
                assert_eq!(decompress(&gz, n).unwrap(), data, "n={n} level={level}");
            }
        }
    }

    #[test]
    fn reused_deflater_gives_identical_output() {
        let data = sample(20_000);
        let first = compress(&data, 6).unwrap();
        let _ = compress(&sample(777), 1);
        let _ = compress(&sample(5), 6);
        assert_eq!(compress(&data, 6).unwrap(), first);
        // From another thread (its own deflater) too.
        let again = std::thread::spawn(move || compress(&data, 6).unwrap())
            .join()
            .unwrap();
        assert_eq!(again, first);
    }

    #[test]
    fn header_has_mtime_zero() {
        let gz = compress(b"hello", 6).unwrap();
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[9], 255);
        assert_eq!(compress(b"hello", 9).unwrap()[8], 2);
        assert_eq!(compress(b"hello", 1).unwrap()[8], 4);
    }

    #[test]
    fn invalid_level() {
        assert_eq!(compress(b"x", 10), Err(GzipError::InvalidLevel));
    }

    #[test]
    fn interoperates_with_flate2_gz_streams() {
        let data = sample(10_000);
        // Ours -> flate2's reader.
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&compress(&data, 6).unwrap()[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, data);
        // flate2's writer, with every optional header field -> ours.
        let mut enc = flate2::GzBuilder::new()
            .filename("room.log")
            .comment("chathub")
            .extra(vec![1, 2, 3])
            .mtime(1_700_000_000)
            .write(Vec::new(), flate2::Compression::best());
        enc.write_all(&data).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(decompress(&gz, data.len()).unwrap(), data);
    }

    #[test]
    fn header_crc_is_checked() {
        // Header with FHCRC and a correct CRC16, then an empty deflate block.
        let body = compress(b"", 6).unwrap();
        let mut hdr = vec![0x1f, 0x8b, 8, FHCRC, 0, 0, 0, 0, 0, 255];
        let mut crc = Crc::new();
        crc.update(&hdr);
        let crc16 = (crc.sum() & 0xffff) as u16;
        hdr.extend_from_slice(&crc16.to_le_bytes());
        let mut good = hdr.clone();
        good.extend_from_slice(&body[HEADER_LEN..]);
        assert_eq!(decompress(&good, 0).unwrap(), b"");
        let mut bad = good.clone();
        bad[HEADER_LEN] ^= 0xff;
        assert_eq!(
            decompress(&bad, 0),
            Err(GzipError::BadHeader("header CRC mismatch"))
        );
    }

    #[test]
    fn max_size_boundary() {
        let data = sample(5000);
        let gz = compress(&data, 6).unwrap();
        assert_eq!(decompress(&gz, 5000).unwrap(), data);
        assert_eq!(decompress(&gz, 4999), Err(GzipError::TooLarge(4999)));
        assert_eq!(decompress(&gz, 0), Err(GzipError::TooLarge(0)));
        assert_eq!(decompress(&compress(b"", 6).unwrap(), 0).unwrap(), b"");
    }

    #[test]
    fn bomb_stops_early() {
        // 64 MiB of zeros compresses to ~64 KiB; a 1 MiB limit must not
        // allocate anywhere near the expanded size.
        let zeros = vec![0u8; 64 << 20];
        let gz = compress(&zeros, 9).unwrap();
        drop(zeros);
        assert!(gz.len() < 128 << 10);
        assert_eq!(decompress(&gz, 1 << 20), Err(GzipError::TooLarge(1 << 20)));
    }

    #[test]
    fn corrupt_inputs_are_errors() {
        let gz = compress(&sample(2000), 6).unwrap();
        assert_eq!(decompress(b"", 100), Err(GzipError::Truncated));
        assert_eq!(decompress(b"\x1f", 100), Err(GzipError::Truncated));
        assert!(matches!(
            decompress(b"hello world", 100),
            Err(GzipError::BadHeader(_))
        ));
        for cut in [5, HEADER_LEN, HEADER_LEN + 3, gz.len() - 8, gz.len() - 1] {
            assert_eq!(
                decompress(&gz[..cut], 10_000),
                Err(GzipError::Truncated),
                "cut={cut}"
            );
        }
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert_eq!(decompress(&bad_crc, 10_000), Err(GzipError::CrcMismatch));
        let mut bad_len = gz.clone();
        bad_len[n - 1] ^= 1;
        assert_eq!(decompress(&bad_len, 10_000), Err(GzipError::LengthMismatch));
        let mut trailing = gz.clone();
        trailing.extend_from_slice(&gz);
        assert_eq!(
            decompress(&trailing, 10_000),
            Err(GzipError::TrailingData(gz.len()))
        );
        let mut method = gz.clone();
        method[2] = 7;
        assert!(matches!(
            decompress(&method, 10_000),
            Err(GzipError::BadHeader(_))
        ));
        let mut reserved = gz.clone();
        reserved[3] = 0x20;
        assert!(matches!(
            decompress(&reserved, 10_000),
            Err(GzipError::BadHeader(_))
        ));
        // A stored block whose LEN/NLEN do not match.
        let mut stored = gz[..HEADER_LEN].to_vec();
        stored.extend_from_slice(&[0x01, 0x05, 0x00, 0x00, 0x00]);
        assert!(matches!(
            decompress(&stored, 10_000),
            Err(GzipError::Corrupt(_))
        ));
    }

    #[test]
    fn maybe_compress_threshold() {
        assert_eq!(maybe_compress(&sample(1024), DEFAULT_THRESHOLD), None);
        let data = sample(1025);
        let gz = maybe_compress(&data, DEFAULT_THRESHOLD).unwrap();
        assert_eq!(decompress(&gz, 1025).unwrap(), data);
        assert_eq!(maybe_compress(b"", 0), None);
        assert!(maybe_compress(b"x", 0).is_some());
        assert_eq!(maybe_compress(&data, u64::MAX), None);
    }
}
