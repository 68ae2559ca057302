//! A token bucket shared by every request to one provider.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Token bucket: `rate` tokens per second, at most `burst` stored. Each request takes one
/// token when it is let through; a request that finds none sleeps until one is due and
/// checks again. With `burst = 1` consecutive requests start at least `1/rate` apart, so no
/// one-second window (half-open) contains more than `rate` request starts.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A full bucket. `rate` must be positive (validated by the config); a non-positive rate
    /// is treated as 1 request/s.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        let rate = if rate_per_sec > 0.0 {
            rate_per_sec
        } else {
            1.0
        };
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits until a request may start. The token is taken at the moment the request is
    /// let through (after any sleep), so a late wake-up never lets a burst through: actual
    /// starts obey the limit, not just reservations.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = Instant::now();
                let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
                s.0 = (s.0 + elapsed * self.rate).min(self.burst);
                s.1 = now;
                // The epsilon absorbs float rounding after an exact sleep.
                if s.0 >= 1.0 - 1e-9 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spaces_requests_by_one_over_rate() {
        let rl = RateLimiter::new(100.0, 1);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..5 {
            rl.acquire().await;
            times.push(start.elapsed());
        }
        assert!(
            times[0] < Duration::from_millis(5),
            "first token is immediate"
        );
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_micros(9_500), "{times:?}");
        }
    }
}
