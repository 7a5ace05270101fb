//! The `chathub._rust_core` extension module: argument conversion and error
//! mapping only. Behaviour must match the pure-Python twins
//! `chathub/_compress_py.py` (gzip, raw deflate) and `chathub/_ratelimit_py.py`
//! (RateLimiter): same results, same exception types. The stub is
//! `chathub/_rust_core.pyi`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyMemoryView, PyString, PyTuple};
use pyo3::{ffi, Borrowed};

use crate::deflate::{self, DeflateError};
use crate::gzip::{self, GzipError};
use crate::ratelimit::{self, ConfigError};

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

fn deflate_error(err: DeflateError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

fn max_size_arg(max_size: IntArg) -> PyResult<usize> {
    let max_size = match max_size {
        IntArg::Negative => return Err(PyValueError::new_err("max_size must be >= 0")),
        IntArg::Value(v) => usize::try_from(v).unwrap_or(usize::MAX),
        IntArg::Huge => usize::MAX,
    };
    // Never ask for more than a Python bytes object can hold.
    Ok(max_size.min(isize::MAX as usize - 1))
}

// --- RateLimiter arguments ------------------------------------------------------------------
//
// Order of checks (shared with the twin): the type of every argument, left to
// right, then their values, left to right; so a TypeError wins over any
// ValueError. The hot path (int user < 2**63, str or int kind, finite float
// now) reads the objects directly and builds no Python object; anything else
// goes through `slow_args`, which also produces the errors.

enum ArgError {
    Type(String),
    Value(String),
}

impl ArgError {
    fn into_py(self) -> PyErr {
        match self {
            ArgError::Type(m) => PyTypeError::new_err(m),
            ArgError::Value(m) => PyValueError::new_err(m),
        }
    }
}

/// Raises the first TypeError of `results`, else the first ValueError.
fn first_error(results: [Option<ArgError>; 3]) -> PyErr {
    let mut value = None;
    for err in results.into_iter().flatten() {
        match err {
            ArgError::Type(_) => return err.into_py(),
            ArgError::Value(_) if value.is_none() => value = Some(err),
            ArgError::Value(_) => {}
        }
    }
    value.expect("called with an error").into_py()
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// An int user key, read without creating any Python object when it is below
/// 2**63 (every user id is); larger keys (`tenant << 64 | user`) take pyo3's
/// 128-bit conversion, which raises nothing when the value fits.
#[inline(always)]
fn fast_user(obj: &Bound<'_, PyAny>) -> Option<u128> {
    let p = obj.as_ptr();
    let mut overflow = 0;
    // SAFETY: `p` is a live object (borrowed for the call). For an int,
    // PyLong_AsLongLongAndOverflow reports overflow in `overflow` and sets no
    // exception.
    let v = unsafe {
        if ffi::PyLong_Check(p) == 0 {
            return None;
        }
        ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow)
    };
    match overflow {
        0 if v >= 0 => Some(v as u128),
        1 => obj.extract::<u128>().ok(),
        _ => None, // negative: slow_args reports it
    }
}

fn user_arg(obj: &Bound<'_, PyAny>) -> Result<u128, ArgError> {
    if !obj.is_instance_of::<PyInt>() {
        return Err(ArgError::Type(format!(
            "user must be int, not {}",
            type_name(obj)
        )));
    }
    obj.extract::<u128>()
        .map_err(|_| ArgError::Value("user must be an int in range(0, 2**128)".into()))
}

/// A kind name (unknown names are "other") or index, without allocating.
#[inline(always)]
fn fast_kind(obj: &Bound<'_, PyAny>) -> Option<usize> {
    if let Ok(s) = obj.cast::<PyString>() {
        // ASCII strings: UTF-8 is the string's own buffer, no copy.
        return Some(match s.to_str() {
            Ok(name) => ratelimit::kind_index(name.as_bytes()),
            Err(_) => ratelimit::OTHER, // lone surrogates: not one of ours
        });
    }
    if obj.is_instance_of::<PyInt>() {
        let mut overflow = 0;
        // SAFETY: `obj` is an int: overflow is reported in `overflow`, no exception is set.
        let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
        if overflow == 0 && (0..4).contains(&v) {
            return Some(v as usize);
        }
    }
    None
}

fn kind_arg(obj: &Bound<'_, PyAny>) -> Result<usize, ArgError> {
    if !obj.is_instance_of::<PyString>() && !obj.is_instance_of::<PyInt>() {
        return Err(ArgError::Type(format!(
            "kind must be str or int, not {}",
            type_name(obj)
        )));
    }
    fast_kind(obj).ok_or_else(|| ArgError::Value("kind index must be 0, 1, 2 or 3".into()))
}

#[inline(always)]
fn fast_now(obj: &Bound<'_, PyAny>) -> Option<f64> {
    let p = obj.as_ptr();
    // SAFETY: `p` is a live object; PyFloat_AS_DOUBLE only after the exact check.
    let now = unsafe {
        if ffi::PyFloat_CheckExact(p) == 0 {
            return None;
        }
        ffi::PyFloat_AS_DOUBLE(p)
    };
    now.is_finite().then_some(now)
}

/// A time or duration: float or int; an int too large for a float is +-inf.
fn float_arg(name: &str, obj: &Bound<'_, PyAny>) -> Result<f64, ArgError> {
    if obj.is_instance_of::<PyFloat>() {
        // SAFETY: a float (or subclass): read its value as float.__float__ would.
        return Ok(unsafe { ffi::PyFloat_AS_DOUBLE(obj.as_ptr()) });
    }
    if obj.is_instance_of::<PyInt>() {
        return Ok(match obj.extract::<f64>() {
            Ok(v) => v,
            Err(_) => {
                if obj.lt(0i32).unwrap_or(false) {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                }
            }
        });
    }
    Err(ArgError::Type(format!(
        "{name} must be float or int, not {}",
        type_name(obj)
    )))
}

fn now_arg(obj: &Bound<'_, PyAny>) -> Result<f64, ArgError> {
    let now = float_arg("now", obj)?;
    if now.is_finite() {
        Ok(now)
    } else {
        Err(ArgError::Value("now must be finite".into()))
    }
}

#[cold]
fn slow_args(
    user: &Bound<'_, PyAny>,
    kind: Option<&Bound<'_, PyAny>>,
    now: &Bound<'_, PyAny>,
) -> PyResult<(u128, usize, f64)> {
    let u = user_arg(user);
    let k = kind.map(kind_arg).unwrap_or(Ok(ratelimit::OTHER));
    let t = now_arg(now);
    match (u, k, t) {
        (Ok(u), Ok(k), Ok(t)) => Ok((u, k, t)),
        (u, k, t) => Err(first_error([u.err(), k.err(), t.err()])),
    }
}

/// A keyword argument taken as given (extraction never fails), so that the
/// method checks its type itself; `Omitted` when the caller left it out. An
/// explicit `None` is then a TypeError, as in the twin.
enum Given<'py> {
    Omitted,
    Value(Bound<'py, PyAny>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Given<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Given::Value(obj.to_owned()))
    }
}

fn config_error(err: ConfigError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

/// Token buckets keyed by (user, kind) with abuse detection; see
/// `rust_core/src/ratelimit.rs`. Not thread-safe by design: one per event loop.
#[pyclass(module = "chathub._rust_core", name = "RateLimiter")]
pub struct PyRateLimiter {
    inner: ratelimit::RateLimiter,
}

#[pymethods]
impl PyRateLimiter {
    /// The kind names, in index order: `check` takes a name or its index.
    #[classattr]
    #[allow(non_snake_case)]
    fn KINDS<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, ratelimit::KINDS)
    }

    #[new]
    #[pyo3(
        signature = (limits, window_s, *, abuse_threshold = Given::Omitted, abuse_window_s = Given::Omitted),
        text_signature = "(limits, window_s, *, abuse_threshold=20, abuse_window_s=10.0)"
    )]
    fn new(
        limits: &Bound<'_, PyAny>,
        window_s: &Bound<'_, PyAny>,
        abuse_threshold: Given<'_>,
        abuse_window_s: Given<'_>,
    ) -> PyResult<Self> {
        // Types first (left to right), then values.
        let dict = limits.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err(format!("limits must be a dict, not {}", type_name(limits)))
        })?;
        let mut pairs: Vec<(String, Option<u32>)> = Vec::with_capacity(dict.len());
        for (key, value) in dict.iter() {
            let name = key.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!("limits keys must be str, not {}", type_name(&key)))
            })?;
            if !value.is_instance_of::<PyInt>() {
                return Err(PyTypeError::new_err(format!(
                    "limits values must be int, not {}",
                    type_name(&value)
                )));
            }
            let n = value.extract::<u32>().ok();
            // A name that is not valid UTF-8 (lone surrogates) is no kind of ours.
            let name = name
                .to_cow()
                .map_or_else(|_| "\u{fffd}".into(), |c| c.into_owned());
            pairs.push((name, n));
        }
        let window_s = float_arg("window_s", window_s).map_err(ArgError::into_py)?;
        let abuse_threshold = match abuse_threshold {
            Given::Omitted => Some(ratelimit::DEFAULT_ABUSE_THRESHOLD),
            Given::Value(obj) if obj.is_instance_of::<PyInt>() => obj.extract::<u32>().ok(),
            Given::Value(obj) => {
                return Err(PyTypeError::new_err(format!(
                    "abuse_threshold must be int, not {}",
                    type_name(&obj)
                )))
            }
        };
        let abuse_window_s = match abuse_window_s {
            Given::Omitted => ratelimit::DEFAULT_ABUSE_WINDOW_S,
            Given::Value(obj) => float_arg("abuse_window_s", &obj).map_err(ArgError::into_py)?,
        };
        let mut named = Vec::with_capacity(pairs.len());
        for (name, n) in &pairs {
            let i = ratelimit::KINDS
                .iter()
                .position(|k| k == name)
                .ok_or_else(|| config_error(ConfigError::UnknownKind(name.clone())))?;
            // 0 and out-of-range values are refused by RateLimiter::new.
            let n = n.filter(|n| *n <= ratelimit::MAX_LIMIT).unwrap_or(0);
            named.push((ratelimit::KINDS[i], n));
        }
        let limits = ratelimit::RateLimiter::limits_from(named).map_err(config_error)?;
        let inner = ratelimit::RateLimiter::new(
            limits,
            window_s,
            abuse_threshold.unwrap_or(0),
            abuse_window_s,
        )
        .map_err(config_error)?;
        Ok(PyRateLimiter { inner })
    }

    /// Take one token of `kind` for `user` at time `now` (seconds, monotonic).
    ///
    /// Returns 0 when allowed, else the milliseconds (>= 1) until a token is
    /// available; the command must then be refused (nothing was taken).
    #[pyo3(text_signature = "(self, user, kind, now)")]
    fn check(
        &mut self,
        user: &Bound<'_, PyAny>,
        kind: &Bound<'_, PyAny>,
        now: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let (u, k, t) = match (fast_user(user), fast_kind(kind), fast_now(now)) {
            (Some(u), Some(k), Some(t)) => (u, k, t),
            _ => slow_args(user, Some(kind), now)?,
        };
        Ok(self.inner.check(u, k, t))
    }

    /// True when `user` was refused at least `abuse_threshold` times within
    /// the last `abuse_window_s` seconds (the hub then closes with 4008).
    #[pyo3(text_signature = "(self, user, now)")]
    fn abusive(&self, user: &Bound<'_, PyAny>, now: &Bound<'_, PyAny>) -> PyResult<bool> {
        let (u, _, t) = match (fast_user(user), fast_now(now)) {
            (Some(u), Some(t)) => (u, 0, t),
            _ => slow_args(user, None, now)?,
        };
        Ok(self.inner.abusive(u, t))
    }

    /// Drop everything held for `user` (buckets and refusals).
    #[pyo3(text_signature = "(self, user)")]
    fn forget(&mut self, user: &Bound<'_, PyAny>) -> PyResult<()> {
        let u = match fast_user(user) {
            Some(u) => u,
            None => user_arg(user).map_err(ArgError::into_py)?,
        };
        self.inner.forget(u);
        Ok(())
    }

    /// Drop the buckets that are full again at `now` and refusal records too
    /// old to matter; changes no later result. Returns the buckets dropped.
    #[pyo3(text_signature = "(self, now)")]
    fn sweep(&mut self, now: &Bound<'_, PyAny>) -> PyResult<usize> {
        let t = now_arg(now).map_err(ArgError::into_py)?;
        Ok(self.inner.sweep(t))
    }

    /// Number of buckets held.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Number of users held (with a bucket or recent refusals).
    #[getter]
    fn users(&self) -> usize {
        self.inner.users()
    }

    /// Commands per window of every kind, e.g. {"message": 30, ...}.
    #[getter]
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, n) in ratelimit::KINDS.iter().zip(self.inner.limits()) {
            d.set_item(name, n)?;
        }
        Ok(d)
    }

    #[getter]
    fn window_s(&self) -> f64 {
        self.inner.window_s()
    }

    #[getter]
    fn abuse_threshold(&self) -> u32 {
        self.inner.abuse_threshold()
    }

    #[getter]
    fn abuse_window_s(&self) -> f64 {
        self.inner.abuse_window_s()
    }

    fn __repr__(&self) -> String {
        let l = self.inner.limits();
        format!(
            "RateLimiter({{'message': {}, 'typing': {}, 'reaction': {}, 'other': {}}}, {:?}, \
             abuse_threshold={}, abuse_window_s={:?})",
            l[0],
            l[1],
            l[2],
            l[3],
            self.inner.window_s(),
            self.inner.abuse_threshold(),
            self.inner.abuse_window_s()
        )
    }
}

/// Rust hot path of chathub: gzip and raw-deflate helpers, the rate limiter.
/// Import through chathub.speedups.
#[pymodule]
mod _rust_core {
    use super::*;

    #[pymodule_export]
    use super::PyRateLimiter;

    /// Raw DEFLATE of one permessage-deflate message (RFC 7692 §7.2.1): fresh
    /// context, sync flush, trailing 00 00 ff ff removed. `level` is 0..9.
    #[pyfunction]
    #[pyo3(signature = (data, level = IntArg::Value(gzip::DEFAULT_LEVEL as u64)), text_signature = "(data, level=6)")]
    fn deflate_compress_raw<'py>(
        data: &Bound<'py, PyAny>,
        level: IntArg,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = bytes_arg("data", data)?;
        let level = match level {
            IntArg::Value(v) if v <= 9 => v as u32,
            _ => return Err(deflate_error(DeflateError::InvalidLevel)),
        };
        let out = run_on(&data, |d| deflate::compress_raw(d, level)).map_err(deflate_error)?;
        Ok(PyBytes::new(data.py(), &out))
    }

    /// Inflate one permessage-deflate message (RFC 7692 §7.2.2): appends
    /// 00 00 ff ff, fresh context. Raises ValueError on invalid data or if
    /// the output would exceed `max_size` bytes; inflation stops at that bound.
    #[pyfunction]
    #[pyo3(signature = (data, max_size), text_signature = "(data, max_size)")]
    fn deflate_decompress_raw<'py>(
        data: &Bound<'py, PyAny>,
        max_size: IntArg,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = bytes_arg("data", data)?;
        let max_size = max_size_arg(max_size)?;
        let out = run_on(&data, |d| deflate::decompress_raw(d, max_size)).map_err(deflate_error)?;
        Ok(PyBytes::new(data.py(), &out))
    }

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
        let max_size = max_size_arg(max_size)?;
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
