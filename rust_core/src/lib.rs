//! Rust hot path of chathub.
//!
//! The logic lives in plain Rust modules (tested by `cargo test`, no Python
//! needed); `python.rs` is the thin `#[pymodule]` layer compiled only with the
//! `python` feature, which maturin enables when it builds
//! `chathub._rust_core`.

pub mod deflate;
pub mod gzip;
pub mod ratelimit;

#[cfg(feature = "python")]
mod python;
