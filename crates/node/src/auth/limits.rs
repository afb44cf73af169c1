//! Admission: token buckets per caller (its token, client certificate, or source address) on
//! requests per second and on bytes written per second, and a cap on concurrent requests.
//!
//! The write-bytes bucket may go into debt by one request (its size is only known once it has
//! arrived): the next request of that caller waits until the debt is paid back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits; `0` turns one off.
#[derive(Clone, Debug)]
pub struct Rates {
    /// Requests per second per caller (the burst is one second's worth).
    pub requests_per_s: u64,
    /// Bytes of mutating requests per second per caller (the burst is one second's worth).
    pub write_bytes_per_s: u64,
    /// Requests being served at once, all callers together.
    pub max_concurrent: usize,
}

impl Default for Rates {
    /// Far above what `scripts/bench/raft-vs-etcd.sh` sends (all its clients share one source
    /// address): a guard against floods, not a quota.
    fn default() -> Self {
        Rates { requests_per_s: 200_000, write_bytes_per_s: 1 << 30, max_concurrent: 8192 }
    }
}

/// Buckets kept at most (idle ones are dropped first; beyond, callers share one bucket).
const MAX_BUCKETS: usize = 10_000;
const OVERFLOW: &str = "(overflow)";

#[derive(Debug)]
struct Bucket {
    requests: f64,
    bytes: f64,
    at: Instant,
}

pub struct Limiter {
    rates: Rates,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(rates: Rates) -> Self {
        Limiter { rates, buckets: Mutex::new(HashMap::new()) }
    }

    pub fn rates(&self) -> &Rates {
        &self.rates
    }

    /// Admits one request of `caller` carrying `bytes` written bytes at `now`, or says how long
    /// to wait and which limit was hit.
    pub fn admit(&self, caller: &str, bytes: u64, now: Instant) -> Result<(), (Duration, &'static str)> {
        let (rq, rb) = (self.rates.requests_per_s as f64, self.rates.write_bytes_per_s as f64);
        if rq == 0.0 && rb == 0.0 {
            return Ok(());
        }
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(caller) && all.len() >= MAX_BUCKETS {
            // Drop the buckets that refilled completely: they hold no state worth keeping.
            all.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(1));
        }
        let key = if all.contains_key(caller) || all.len() < MAX_BUCKETS { caller } else { OVERFLOW };
        // The key is copied only for a new bucket, never per request.
        if !all.contains_key(key) {
            all.insert(key.to_string(), Bucket { requests: rq, bytes: rb, at: now });
        }
        let Some(b) = all.get_mut(key) else { return Ok(()) };
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now;
        b.requests = (b.requests + dt * rq).min(rq);
        b.bytes = (b.bytes + dt * rb).min(rb);
        if rq > 0.0 && b.requests < 1.0 {
            return Err((Duration::from_secs_f64((1.0 - b.requests) / rq), "requests per second"));
        }
        if rb > 0.0 && b.bytes < 0.0 {
            return Err((Duration::from_secs_f64(-b.bytes / rb), "written bytes per second"));
        }
        if rq > 0.0 {
            b.requests -= 1.0;
        }
        if rb > 0.0 {
            b.bytes -= bytes as f64;
        }
        Ok(())
    }

    /// Charges `bytes` written to `caller`'s bucket after [`Self::admit`] let its request in
    /// (a request body is counted as it streams by, not read whole first): the debt makes the
    /// caller's next requests wait, as bytes given to `admit` do.
    pub fn charge(&self, caller: &str, bytes: u64) {
        if self.rates.write_bytes_per_s == 0 || bytes == 0 {
            return;
        }
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = if all.contains_key(caller) { caller } else { OVERFLOW };
        if let Some(b) = all.get_mut(key) {
            b.bytes -= bytes as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_beyond_the_rate_wait_for_the_refill() {
        let l = Limiter::new(Rates { requests_per_s: 10, write_bytes_per_s: 0, max_concurrent: 0 });
        let t = Instant::now();
        for _ in 0..10 {
            l.admit("a", 0, t).unwrap();
        }
        let (wait, what) = l.admit("a", 0, t).unwrap_err();
        assert_eq!(what, "requests per second");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        // Another caller has a bucket of its own.
        l.admit("b", 0, t).unwrap();
        l.admit("a", 0, t + Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn written_bytes_go_into_debt_once() {
        let l = Limiter::new(Rates { requests_per_s: 0, write_bytes_per_s: 1000, max_concurrent: 0 });
        let t = Instant::now();
        l.admit("a", 3000, t).unwrap(); // a big write is admitted, leaving a debt of 2000
        let (wait, what) = l.admit("a", 1, t).unwrap_err();
        assert_eq!(what, "written bytes per second");
        assert_eq!(wait, Duration::from_secs(2));
        l.admit("a", 1, t + Duration::from_secs(2)).unwrap();
        // Bytes counted after admission are a debt the same way.
        l.admit("b", 0, t).unwrap();
        l.charge("b", 3000);
        assert_eq!(l.admit("b", 0, t).unwrap_err(), (Duration::from_secs(2), "written bytes per second"));
    }

    #[test]
    fn zero_turns_the_limits_off_and_memory_stays_bounded() {
        let off = Limiter::new(Rates { requests_per_s: 0, write_bytes_per_s: 0, max_concurrent: 0 });
        let t = Instant::now();
        for _ in 0..1000 {
            off.admit("a", u64::MAX, t).unwrap();
        }
        let l = Limiter::new(Rates { requests_per_s: 1, write_bytes_per_s: 0, max_concurrent: 0 });
        for i in 0..(MAX_BUCKETS + 10) {
            let _ = l.admit(&format!("ip:{i}"), 0, t);
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_BUCKETS + 1);
    }
}
