//! Slows down a peer that keeps presenting wrong admin credentials: after
//! [`FREE_FAILURES`] failed authentications (no token, or an unknown one)
//! within [`WINDOW`] of each other, every further Admin call from that IP
//! waits before it is answered, [`BASE_DELAY`] doubling with each failure,
//! at most [`MAX_DELAY`]. A success resets the peer. Guessing a token (a
//! 256-bit secret is out of reach anyway) or probing token names becomes a
//! few calls a second per address.
//!
//! The table is bounded ([`CAPACITY`] peers): when full, the peer whose last
//! failure is oldest is forgotten. Each method has an `_at` form taking the
//! instant, so tests choose the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

/// Failures a peer may have before it is slowed down.
pub const FREE_FAILURES: u32 = 5;
/// A peer's failures are forgotten this long after its last one.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The wait after the first failure beyond the free ones; doubles each time.
pub const BASE_DELAY: Duration = Duration::from_millis(100);
/// The longest wait.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// Most peers remembered.
pub const CAPACITY: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failed authentications per peer IP.
#[derive(Debug, Default)]
pub struct FailureThrottle {
    peers: Mutex<HashMap<IpAddr, Failures>>,
}

impl FailureThrottle {
    /// How long a call from `ip` waits before it is answered, if at all.
    pub fn delay(&self, ip: IpAddr) -> Option<Duration> {
        self.delay_at(ip, Instant::now())
    }

    /// [`delay`](Self::delay) at `now`.
    pub fn delay_at(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let f = peers.get(&ip)?;
        if now.saturating_duration_since(f.last) >= WINDOW || f.count < FREE_FAILURES {
            return None;
        }
        let doublings = (f.count - FREE_FAILURES).min(16);
        Some(BASE_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY))
    }

    /// Counts a failed authentication of `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.failed_at(ip, Instant::now())
    }

    /// [`failed`](Self::failed) at `now`.
    pub fn failed_at(&self, ip: IpAddr, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(&ip) && peers.len() >= CAPACITY {
            peers.retain(|_, f| now.saturating_duration_since(f.last) < WINDOW);
            if peers.len() >= CAPACITY {
                if let Some(oldest) = peers.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip) {
                    peers.remove(&oldest);
                }
            }
        }
        let f = peers.entry(ip).or_insert(Failures { count: 0, last: now });
        if now.saturating_duration_since(f.last) >= WINDOW {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
    }

    /// Forgets the failures of `ip` (it authenticated).
    pub fn succeeded(&self, ip: IpAddr) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.remove(&ip);
    }

    /// How many peers are remembered.
    pub fn len(&self) -> usize {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn grows_caps_and_forgets() {
        let t = FailureThrottle::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            t.failed_at(ip(1), t0);
        }
        assert_eq!(t.delay_at(ip(1), t0), Some(BASE_DELAY));
        t.failed_at(ip(1), t0);
        assert_eq!(t.delay_at(ip(1), t0), Some(BASE_DELAY * 2));
        for _ in 0..40 {
            t.failed_at(ip(1), t0);
        }
        assert_eq!(t.delay_at(ip(1), t0), Some(MAX_DELAY));
        let later = t0 + WINDOW;
        assert_eq!(t.delay_at(ip(1), later), None, "forgotten after the window");
        t.failed_at(ip(1), later);
        assert_eq!(t.delay_at(ip(1), later), None, "counting starts again");
    }

    #[test]
    fn memory_is_bounded() {
        let t = FailureThrottle::default();
        let t0 = Instant::now();
        for n in 0..(CAPACITY as u32 + 100) {
            t.failed_at(ip(n), t0 + Duration::from_micros(n as u64));
        }
        assert_eq!(t.len(), CAPACITY);
        assert!(t.peers.lock().unwrap().get(&ip(0)).is_none(), "the oldest went first");
        assert!(t.peers.lock().unwrap().get(&ip(CAPACITY as u32 + 99)).is_some());
    }
}
