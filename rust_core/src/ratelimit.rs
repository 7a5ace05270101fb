//! Per-user token buckets (one per user and kind of command) and abuse detection.
//!
//! Pure Rust, sans-I/O: the caller passes the time in (seconds, any monotonic
//! origin). The pure-Python twin `chathub/_ratelimit_py.py` does the same float
//! arithmetic in the same order, so both give *identical* results for the same
//! call sequence; keep them in step.
//!
//! # Buckets
//!
//! Kind `k` has a limit of `N` commands per `window_s` seconds: a bucket of
//! capacity `N` that refills at `N / window_s` tokens per second, so a user may
//! burst `N` commands and then sustain `N` per window. A bucket is created full
//! on a user's first command of that kind. [`RateLimiter::check`]:
//!
//! ```text
//! if now > last:  tokens = min(cap, tokens + (now - last) * rate);  last = now
//! if tokens >= 1: tokens -= 1; allowed (0)
//! else:           refused, retry_after_ms = max(1, ceil((1 - tokens) / rate * 1000))
//! ```
//!
//! `retry_after_ms` is the exact wait until one token is available, rounded up
//! to the millisecond, at least 1. A clock that goes backwards refills nothing.
//!
//! # Abuse
//!
//! Every refusal is recorded per user in a ring of the last `abuse_threshold`
//! refusal times; [`RateLimiter::abusive`] is true when the oldest of them (the
//! `abuse_threshold`-th most recent refusal) happened less than
//! `abuse_window_s` ago, i.e. when the user was refused at least
//! `abuse_threshold` times within the last `abuse_window_s` seconds.
//!
//! # Memory
//!
//! A bucket that has refilled completely behaves exactly like a missing one
//! (both give a full bucket at the next check), and a refusal ring whose newest
//! entry is `abuse_window_s` old can no longer make `abusive` true, so
//! [`RateLimiter::sweep`] drops both without changing any result. `check`
//! sweeps by itself when the number of users held reaches `sweep_at` (at least
//! [`MIN_SWEEP_AT`], then twice the number left after the last sweep), so the
//! table stays within about twice the users active in the last window, at an
//! amortised O(1) per new user. [`RateLimiter::forget`] drops a user at once.

use std::collections::HashMap;
use std::fmt;

/// The kinds of command with a limit of their own, in index order.
pub const KINDS: [&str; 4] = ["message", "typing", "reaction", "other"];
pub const MESSAGE: usize = 0;
pub const TYPING: usize = 1;
pub const REACTION: usize = 2;
/// Every kind name not in [`KINDS`] counts as this one.
pub const OTHER: usize = 3;
/// Commands per window when `limits` does not name the kind.
pub const DEFAULT_LIMITS: [u32; 4] = [30, 60, 100, 50];
pub const DEFAULT_WINDOW_S: f64 = 60.0;
pub const DEFAULT_ABUSE_THRESHOLD: u32 = 20;
pub const DEFAULT_ABUSE_WINDOW_S: f64 = 10.0;
/// Largest accepted limit (commands per window).
pub const MAX_LIMIT: u32 = 1_000_000_000;
/// Largest accepted `abuse_threshold` (it sizes a per-user ring of f64).
pub const MAX_ABUSE_THRESHOLD: u32 = 100_000;
/// No automatic sweep while fewer users than this are held.
pub const MIN_SWEEP_AT: usize = 1024;

/// A user key: any integer in `0..2**128` (e.g. `tenant << 64 | user`).
pub type UserKey = u128;

/// The kind index of a kind name; unknown names are [`OTHER`].
#[inline]
pub fn kind_index(name: &[u8]) -> usize {
    match name {
        b"message" => MESSAGE,
        b"typing" => TYPING,
        b"reaction" => REACTION,
        _ => OTHER,
    }
}

/// Why a limiter could not be built. Every variant is a `ValueError` in Python.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    UnknownKind(String),
    BadLimit(&'static str),
    BadWindow,
    BadAbuseThreshold,
    BadAbuseWindow,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownKind(k) => write!(
                f,
                "unknown rate-limit kind {k:?} (expected message, typing, reaction or other)"
            ),
            ConfigError::BadLimit(kind) => {
                write!(f, "limit of {kind:?} must be between 1 and {MAX_LIMIT}")
            }
            ConfigError::BadWindow => write!(f, "window_s must be a finite number > 0"),
            ConfigError::BadAbuseThreshold => write!(
                f,
                "abuse_threshold must be between 1 and {MAX_ABUSE_THRESHOLD}"
            ),
            ConfigError::BadAbuseWindow => {
                write!(f, "abuse_window_s must be a finite number > 0")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    tokens: f64,
    last: f64,
}

/// The last `threshold` refusal times of one user (a ring).
#[derive(Debug)]
struct Refusals {
    times: Box<[f64]>,
    /// Where the next refusal goes; when the ring is full, also the oldest entry.
    next: usize,
    count: usize,
}

impl Refusals {
    fn new(threshold: usize) -> Self {
        Refusals {
            times: vec![0.0; threshold].into_boxed_slice(),
            next: 0,
            count: 0,
        }
    }

    fn record(&mut self, now: f64) {
        let len = self.times.len();
        self.times[self.next] = now;
        self.next = if self.next + 1 == len {
            0
        } else {
            self.next + 1
        };
        if self.count < len {
            self.count += 1;
        }
    }

    fn newest(&self) -> f64 {
        let len = self.times.len();
        self.times[if self.next == 0 {
            len - 1
        } else {
            self.next - 1
        }]
    }
}

#[derive(Debug)]
struct UserState {
    buckets: [Bucket; 4],
    /// Bit k set: `buckets[k]` is in use.
    present: u8,
    refusals: Option<Box<Refusals>>,
}

/// Token buckets keyed by (user, kind), with abuse detection. See the module docs.
pub struct RateLimiter {
    limits: [u32; 4],
    cap: [f64; 4],
    rate: [f64; 4],
    window_s: f64,
    abuse_threshold: usize,
    abuse_window_s: f64,
    users: HashMap<UserKey, UserState, foldhash::fast::RandomState>,
    buckets: usize,
    sweep_at: usize,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .field("window_s", &self.window_s)
            .field("abuse_threshold", &self.abuse_threshold)
            .field("abuse_window_s", &self.abuse_window_s)
            .field("users", &self.users.len())
            .field("buckets", &self.buckets)
            .finish()
    }
}

fn positive_finite(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

impl RateLimiter {
    /// A limiter with `limits[k]` commands of kind `k` per `window_s` seconds.
    pub fn new(
        limits: [u32; 4],
        window_s: f64,
        abuse_threshold: u32,
        abuse_window_s: f64,
    ) -> Result<Self, ConfigError> {
        for (k, &n) in limits.iter().enumerate() {
            if n == 0 || n > MAX_LIMIT {
                return Err(ConfigError::BadLimit(KINDS[k]));
            }
        }
        if !positive_finite(window_s) {
            return Err(ConfigError::BadWindow);
        }
        if abuse_threshold == 0 || abuse_threshold > MAX_ABUSE_THRESHOLD {
            return Err(ConfigError::BadAbuseThreshold);
        }
        if !positive_finite(abuse_window_s) {
            return Err(ConfigError::BadAbuseWindow);
        }
        let cap = limits.map(f64::from);
        // The twin computes `n / window_s` with n an int < 2**53: the same division.
        let rate = cap.map(|c| c / window_s);
        if rate.iter().any(|r| !positive_finite(*r)) {
            // A tiny window with a huge limit overflows; a huge window underflows.
            return Err(ConfigError::BadWindow);
        }
        Ok(RateLimiter {
            limits,
            cap,
            rate,
            window_s,
            abuse_threshold: abuse_threshold as usize,
            abuse_window_s,
            users: HashMap::default(),
            buckets: 0,
            sweep_at: MIN_SWEEP_AT,
        })
    }

    /// Builds the limits array from (name, n) pairs; kinds not named keep
    /// [`DEFAULT_LIMITS`]. Names must be in [`KINDS`].
    pub fn limits_from<'a>(
        pairs: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> Result<[u32; 4], ConfigError> {
        let mut limits = DEFAULT_LIMITS;
        for (name, n) in pairs {
            match KINDS.iter().position(|k| *k == name) {
                Some(i) => limits[i] = n,
                None => return Err(ConfigError::UnknownKind(name.to_owned())),
            }
        }
        Ok(limits)
    }

    pub fn limits(&self) -> [u32; 4] {
        self.limits
    }

    pub fn window_s(&self) -> f64 {
        self.window_s
    }

    pub fn abuse_threshold(&self) -> u32 {
        self.abuse_threshold as u32
    }

    pub fn abuse_window_s(&self) -> f64 {
        self.abuse_window_s
    }

    /// Number of buckets held.
    pub fn len(&self) -> usize {
        self.buckets
    }

    pub fn is_empty(&self) -> bool {
        self.buckets == 0
    }

    /// Number of users held (with a bucket or recent refusals).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Takes one token of `kind` (an index below 4) for `user` at time `now`
    /// (finite). Returns 0 when allowed, else the wait in ms (>= 1) before a
    /// token is available; a refusal is recorded for [`Self::abusive`].
    #[inline]
    pub fn check(&mut self, user: UserKey, kind: usize, now: f64) -> u64 {
        debug_assert!(kind < 4 && now.is_finite());
        let kind = kind & 3;
        match self.users.get_mut(&user) {
            Some(state) => {
                let bit = 1u8 << kind;
                let b = &mut state.buckets[kind];
                if state.present & bit == 0 {
                    state.present |= bit;
                    self.buckets += 1;
                    *b = Bucket {
                        tokens: self.cap[kind],
                        last: now,
                    };
                } else if now > b.last {
                    let t = b.tokens + (now - b.last) * self.rate[kind];
                    b.tokens = if t < self.cap[kind] {
                        t
                    } else {
                        self.cap[kind]
                    };
                    b.last = now;
                }
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    return 0;
                }
                let wait = ((1.0 - b.tokens) / self.rate[kind] * 1000.0).ceil();
                let threshold = self.abuse_threshold;
                state
                    .refusals
                    .get_or_insert_with(|| Box::new(Refusals::new(threshold)))
                    .record(now);
                if wait >= 1.0 {
                    wait as u64
                } else {
                    1
                }
            }
            None => {
                self.insert_user(user, kind, now);
                0
            }
        }
    }

    /// A user's first bucket: full, minus the token taken now (cap >= 1).
    #[cold]
    fn insert_user(&mut self, user: UserKey, kind: usize, now: f64) {
        if self.users.len() >= self.sweep_at {
            self.sweep(now);
            self.sweep_at = MIN_SWEEP_AT.max(2 * self.users.len());
        }
        let mut buckets = [Bucket::default(); 4];
        buckets[kind] = Bucket {
            tokens: self.cap[kind] - 1.0,
            last: now,
        };
        self.users.insert(
            user,
            UserState {
                buckets,
                present: 1 << kind,
                refusals: None,
            },
        );
        self.buckets += 1;
    }

    /// True when `user` was refused at least `abuse_threshold` times within
    /// the last `abuse_window_s` seconds before `now`.
    pub fn abusive(&self, user: UserKey, now: f64) -> bool {
        match self.users.get(&user).and_then(|s| s.refusals.as_deref()) {
            Some(r) => {
                r.count >= self.abuse_threshold && now - r.times[r.next] < self.abuse_window_s
            }
            None => false,
        }
    }

    /// Drops everything held for `user` (buckets and refusals).
    pub fn forget(&mut self, user: UserKey) {
        if let Some(state) = self.users.remove(&user) {
            self.buckets -= state.present.count_ones() as usize;
        }
    }

    /// Drops the buckets that are full again at `now` and the refusal records
    /// too old to matter, then users left with neither. Changes no result of
    /// `check` or `abusive` for times >= `now`. Returns the buckets dropped.
    pub fn sweep(&mut self, now: f64) -> usize {
        let before = self.buckets;
        let (cap, rate, window) = (self.cap, self.rate, self.abuse_window_s);
        let mut dropped = 0usize;
        self.users.retain(|_, state| {
            for k in 0..4 {
                let bit = 1u8 << k;
                if state.present & bit != 0 {
                    let b = &state.buckets[k];
                    let t = if now > b.last {
                        b.tokens + (now - b.last) * rate[k]
                    } else {
                        b.tokens
                    };
                    if t >= cap[k] {
                        state.present &= !bit;
                        dropped += 1;
                    }
                }
            }
            if let Some(r) = &state.refusals {
                if now - r.newest() >= window {
                    state.refusals = None;
                }
            }
            state.present != 0 || state.refusals.is_some()
        });
        self.buckets = before - dropped;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> RateLimiter {
        RateLimiter::new(DEFAULT_LIMITS, 60.0, 20, 10.0).unwrap()
    }

    #[test]
    fn burst_then_refused_then_refill() {
        let mut rl = limiter();
        for i in 0..30 {
            assert_eq!(rl.check(1, MESSAGE, 100.0), 0, "message {i}");
        }
        // 30 per 60 s: one token every 2 s.
        assert_eq!(rl.check(1, MESSAGE, 100.0), 2000);
        assert_eq!(rl.check(1, MESSAGE, 100.5), 1500);
        assert_eq!(rl.check(1, MESSAGE, 102.0), 0);
        assert_eq!(rl.check(1, MESSAGE, 102.0), 2000);
        // A full window refills the whole burst, never more.
        assert_eq!(rl.check(1, MESSAGE, 1000.0), 0);
        for _ in 0..29 {
            assert_eq!(rl.check(1, MESSAGE, 1000.0), 0);
        }
        assert!(rl.check(1, MESSAGE, 1000.0) > 0);
    }

    #[test]
    fn retry_after_is_rounded_up_and_at_least_one() {
        let mut rl = RateLimiter::new([1, 1, 1, 1], 1.0, 20, 10.0).unwrap();
        assert_eq!(rl.check(7, OTHER, 0.0), 0);
        assert_eq!(rl.check(7, OTHER, 0.0), 1000);
        assert_eq!(rl.check(7, OTHER, 0.9995), 1); // 0.5 ms left: rounds up to 1
        assert_eq!(rl.check(7, OTHER, 0.0001), 1); // clock went back: no refill, no change
        let mut rl = RateLimiter::new([3, 3, 3, 3], 1.0, 20, 10.0).unwrap();
        for _ in 0..3 {
            rl.check(7, OTHER, 0.0);
        }
        assert_eq!(rl.check(7, OTHER, 0.0), 334); // 333.33 ms
    }

    #[test]
    fn kinds_and_users_are_independent() {
        let mut rl = limiter();
        for _ in 0..30 {
            assert_eq!(rl.check(1, MESSAGE, 0.0), 0);
        }
        assert!(rl.check(1, MESSAGE, 0.0) > 0);
        assert_eq!(rl.check(1, TYPING, 0.0), 0);
        assert_eq!(rl.check(2, MESSAGE, 0.0), 0);
        assert_eq!(rl.check(u128::MAX, MESSAGE, 0.0), 0);
        for _ in 0..100 {
            assert_eq!(rl.check(1, REACTION, 0.0), 0);
        }
        assert_eq!(rl.check(1, REACTION, 0.0), 600); // 100 per 60 s
        assert_eq!(rl.len(), 5);
        assert_eq!(rl.users(), 3);
    }

    #[test]
    fn abuse_needs_threshold_refusals_within_window() {
        let mut rl = RateLimiter::new([1, 1, 1, 1], 60.0, 3, 10.0).unwrap();
        assert_eq!(rl.check(1, MESSAGE, 0.0), 0);
        assert!(!rl.abusive(1, 0.0));
        rl.check(1, MESSAGE, 0.0);
        rl.check(1, MESSAGE, 1.0);
        assert!(!rl.abusive(1, 1.0));
        rl.check(1, MESSAGE, 2.0);
        assert!(rl.abusive(1, 2.0));
        assert!(rl.abusive(1, 9.999));
        assert!(!rl.abusive(1, 10.0)); // the first refusal is 10 s old
        rl.check(1, MESSAGE, 10.5);
        assert!(rl.abusive(1, 10.5)); // refusals at 1, 2, 10.5
        assert!(!rl.abusive(2, 10.5));
    }

    #[test]
    fn forget_and_sweep() {
        let mut rl = limiter();
        rl.check(1, MESSAGE, 0.0);
        rl.check(1, TYPING, 0.0);
        rl.check(2, MESSAGE, 0.0);
        assert_eq!(rl.len(), 3);
        rl.forget(1);
        rl.forget(99);
        assert_eq!(rl.len(), 1);
        assert_eq!(rl.sweep(1.0), 0); // not full yet (1/30 of a token per... 0.5 per s)
        assert_eq!(rl.sweep(2.0), 1); // refilled
        assert_eq!((rl.len(), rl.users()), (0, 0));
    }

    #[test]
    fn sweep_keeps_recent_refusals() {
        let mut rl = RateLimiter::new([1, 1, 1, 1], 1.0, 2, 10.0).unwrap();
        rl.check(1, MESSAGE, 0.0);
        rl.check(1, MESSAGE, 0.0);
        rl.check(1, MESSAGE, 0.5);
        assert!(rl.abusive(1, 0.5));
        assert_eq!(rl.sweep(5.0), 1);
        assert_eq!((rl.len(), rl.users()), (0, 1));
        assert!(rl.abusive(1, 5.0));
        rl.sweep(10.5);
        assert_eq!(rl.users(), 0);
    }

    #[test]
    fn sweeping_changes_no_result() {
        let mut a = RateLimiter::new([5, 3, 7, 2], 4.0, 4, 3.0).unwrap();
        let mut b = RateLimiter::new([5, 3, 7, 2], 4.0, 4, 3.0).unwrap();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut now = 0.0;
        for i in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let user = (seed % 13) as u128;
            let kind = (seed >> 8) as usize % 4;
            now += ((seed >> 16) % 1000) as f64 / 1000.0;
            assert_eq!(
                a.check(user, kind, now),
                b.check(user, kind, now),
                "call {i}"
            );
            assert_eq!(a.abusive(user, now), b.abusive(user, now));
            if i % 7 == 0 {
                b.sweep(now);
            }
        }
    }

    #[test]
    fn automatic_sweep_bounds_memory() {
        let mut rl = RateLimiter::new([2, 2, 2, 2], 1.0, 20, 10.0).unwrap();
        let mut now = 0.0;
        for user in 0..1_000_000u128 {
            now += 0.001; // 1000 new users a second, each seen once
            rl.check(user, MESSAGE, now);
            assert!(rl.users() <= 4 * MIN_SWEEP_AT, "user {user}: {rl:?}");
        }
    }

    #[test]
    fn config_validation() {
        assert_eq!(
            RateLimiter::new([0, 1, 1, 1], 60.0, 20, 10.0).unwrap_err(),
            ConfigError::BadLimit("message")
        );
        assert!(RateLimiter::new([1, 1, 1, MAX_LIMIT + 1], 60.0, 20, 10.0).is_err());
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(
                RateLimiter::new(DEFAULT_LIMITS, w, 20, 10.0).is_err(),
                "{w}"
            );
            assert!(
                RateLimiter::new(DEFAULT_LIMITS, 60.0, 20, w).is_err(),
                "{w}"
            );
        }
        // n / window must stay a positive finite rate.
        assert!(RateLimiter::new(DEFAULT_LIMITS, 1e-320, 20, 10.0).is_err());
        assert!(RateLimiter::new(DEFAULT_LIMITS, 60.0, 0, 10.0).is_err());
        assert_eq!(
            RateLimiter::limits_from([("typing", 5), ("other", 9)]).unwrap(),
            [30, 5, 100, 9]
        );
        assert!(RateLimiter::limits_from([("send", 5)]).is_err());
        assert_eq!(kind_index(b"reaction"), REACTION);
        assert_eq!(kind_index(b"send"), OTHER);
        assert_eq!(kind_index(b""), OTHER);
    }
}
