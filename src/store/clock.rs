//! Time for the stores: the memory store reads a [`Clock`]; the Redis store
//! reads Redis's own `TIME` inside its scripts, except in builds with the
//! `test-clock` feature, where tests may give it a [`Clock`] too (so that
//! the model-based suite can pick every instant; see `RedisSettings`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A source of the current time, in microseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now, µs since the epoch.
    fn now_us(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
    }
}

/// A monotonic clock: µs since it was made (not since the epoch). What the
/// deny cache and the lease table measure their waits on, so that a system
/// clock stepped back or forward changes no wait.
#[derive(Debug, Clone, Copy)]
pub struct Monotonic(std::time::Instant);

impl Monotonic {
    /// A clock at 0 now.
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock for Monotonic {
    fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `us` µs since the epoch.
    pub fn new(us: u64) -> Self {
        Self(AtomicU64::new(us))
    }
    /// Moves the clock forward.
    pub fn advance(&self, d: std::time::Duration) {
        self.0.fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }
    /// Sets the clock.
    pub fn set_us(&self, us: u64) {
        self.0.store(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_us(&self) -> u64 {
        (**self).now_us()
    }
}
