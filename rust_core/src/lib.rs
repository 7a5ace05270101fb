//! Rust hot path of chathub.
//!
//! The logic lives in plain Rust modules (tested by `cargo test`, no Python
//! needed); `python.rs` is the thin `#[pymodule]` layer compiled only with the
//! `python` feature, which maturin enables when it builds
//! `chathub._rust_core`.

pub mod gzip;

#[cfg(feature = "python")]
mod python;
