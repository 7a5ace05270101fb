//! The `chathub._rust_core` extension module: argument conversion and error
//! mapping only. Behaviour must match the pure-Python twin
//! `chathub/_compress_py.py` (same results, same exception types); the stub is
//! `chathub/_rust_core.pyi`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyInt, PyMemoryView};
use pyo3::Borrowed;

use crate::gzip::{self, GzipError};

/// Inputs at least this long are (de)compressed with the GIL released.
const DETACH_THRESHOLD: usize = 16 * 1024;

fn value_error(err: GzipError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

/// An `int` argument without a fixed C width, so that out-of-range values give
/// the same `ValueError` as the twin instead of an `OverflowError`.
///
/// Order of checks (shared with the twin): pyo3 extracts these first (type
/// errors), then `bytes_arg` (type errors), then the value checks, so every
/// `TypeError` wins over every `ValueError`.
#[derive(Clone, Copy)]
enum IntArg {
    Negative,
    Value(u64),
    Huge,
}

impl<'a, 'py> FromPyObject<'a, 'py> for IntArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if !obj.is_instance_of::<PyInt>() {
            return Err(PyTypeError::new_err(format!(
                "must be int, not {}",
                obj.get_type().name()?
            )));
        }
        match obj.extract::<i64>() {
            Ok(v) if v < 0 => Ok(IntArg::Negative),
            Ok(v) => Ok(IntArg::Value(v as u64)),
            Err(_) => {
                if obj.lt(0i32)? {
                    Ok(IntArg::Negative)
                } else {
                    Ok(IntArg::Huge)
                }
            }
        }
    }
}

/// A bytes-like argument as `bytes`: `bytes` (and subclasses) as is,
/// `bytearray` and `memoryview` copied by `bytes(obj)` exactly as the twin
/// does, anything else a `TypeError`.
fn bytes_arg<'py>(name: &str, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(b.clone());
    }
    if obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>() {
        return Ok(obj
            .py()
            .get_type::<PyBytes>()
            .call1((obj,))?
            .cast_into::<PyBytes>()?);
    }
    Err(PyTypeError::new_err(format!(
        "{name} must be bytes, bytearray or memoryview, not {}",
        obj.get_type().name()?
    )))
}

/// Runs `f` on the contents of `bytes`, with the GIL released for large
/// inputs (a `bytes` object is immutable, so this is sound).
fn run_on<R: Send>(bytes: &Bound<'_, PyBytes>, f: impl FnOnce(&[u8]) -> R + Send) -> R {
    let slice = bytes.as_bytes();
    if slice.len() >= DETACH_THRESHOLD {
        bytes.py().detach(|| f(slice))
    } else {
        f(slice)
    }
}

fn check_level(level: IntArg) -> PyResult<u32> {
    match level {
        IntArg::Value(v) if v <= 9 => Ok(v as u32),
        _ => Err(value_error(GzipError::InvalidLevel)),
    }
}

/// Rust hot path of chathub: gzip helpers. Import through chathub.speedups.
#[pymodule]
mod _rust_core {
    use super::*;

    /// Compress `data` into one gzip member (MTIME 0). `level` is 0..9.
    #[pyfunction]
    #[pyo3(signature = (data, level = IntArg::Value(gzip::DEFAULT_LEVEL as u64)), text_signature = "(data, level=6)")]
    fn gzip_compress<'py>(
        data: &Bound<'py, PyAny>,
        level: IntArg,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = bytes_arg("data", data)?;
        let level = check_level(level)?;
        let out = run_on(&data, |d| gzip::compress(d, level)).map_err(value_error)?;
        Ok(PyBytes::new(data.py(), &out))
    }

    /// Decompress exactly one gzip member.
    ///
    /// Raises ValueError if `data` is not a valid gzip member or if the output
    /// would exceed `max_size` bytes; inflation stops at that bound.
    #[pyfunction]
    #[pyo3(signature = (data, max_size), text_signature = "(data, max_size)")]
    fn gzip_decompress<'py>(
        data: &Bound<'py, PyAny>,
        max_size: IntArg,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = bytes_arg("data", data)?;
        let max_size = match max_size {
            IntArg::Negative => return Err(PyValueError::new_err("max_size must be >= 0")),
            IntArg::Value(v) => usize::try_from(v).unwrap_or(usize::MAX),
            IntArg::Huge => usize::MAX,
        };
        // Never ask for more than a Python bytes object can hold.
        let max_size = max_size.min(isize::MAX as usize - 1);
        let out = run_on(&data, |d| gzip::decompress(d, max_size)).map_err(value_error)?;
        Ok(PyBytes::new(data.py(), &out))
    }

    /// None if `len(payload) <= threshold`, else `gzip_compress(payload)`.
    #[pyfunction]
    #[pyo3(
        signature = (payload, threshold = IntArg::Value(gzip::DEFAULT_THRESHOLD)),
        text_signature = "(payload, threshold=1024)"
    )]
    fn maybe_gzip<'py>(
        payload: &Bound<'py, PyAny>,
        threshold: IntArg,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let threshold = match threshold {
            IntArg::Negative => None,
            IntArg::Value(v) => Some(v),
            IntArg::Huge => Some(u64::MAX),
        };
        let payload = bytes_arg("payload", payload)?;
        let out = run_on(&payload, |d| match threshold {
            // A negative threshold: every payload is longer than it.
            None => Some(gzip::compress(d, gzip::DEFAULT_LEVEL).expect("valid level")),
            Some(t) => gzip::maybe_compress(d, t),
        });
        Ok(out.map(|v| PyBytes::new(payload.py(), &v)))
    }
}
