//! A token bucket shared by every request to one provider.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Token bucket: `rate` tokens per second, at most `burst` stored. Each request takes one
/// token; a request that finds none reserves the next one and sleeps until it is due, so
/// waiting requests are spaced exactly `1/rate` apart. With `burst = 1` no window of one
/// second (half-open) contains more than `rate` request starts.
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
        let rate = if rate_per_sec > 0.0 { rate_per_sec } else { 1.0 };
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits until a request may start.
    pub async fn acquire(&self) {
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
            s.0 = (s.0 + elapsed * self.rate).min(self.burst);
            s.1 = now;
            s.0 -= 1.0;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_by_one_over_rate() {
        let rl = RateLimiter::new(20.0, 1);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..5 {
            rl.acquire().await;
            times.push(start.elapsed().as_millis());
        }
        assert_eq!(times, vec![0, 50, 100, 150, 200]);
    }
}
