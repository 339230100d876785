//! How every destination retries a failed batch: exponential backoff with jitter, for at most
//! a maximum elapsed time, which is unbounded while the durable log keeps what is not
//! delivered ([`retry_limit`] decides that, once for all destinations). Whether a failure is
//! retryable at all is decided by each destination's error type, not here.

use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;
use serde::Deserialize;

const fn default_enabled() -> bool {
    true
}

const fn default_initial_backoff_ms() -> u64 {
    100
}

const fn default_max_backoff_ms() -> u64 {
    5_000
}

const fn default_max_elapsed_ms() -> u64 {
    300_000
}

const fn default_multiplier() -> f64 {
    2.0
}

/// When and how often a failed batch is retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Off: a retryable failure is final at once (counted as `retries_exhausted`;
    /// non-retryable failures are counted as `non_retryable` either way).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// First delay; each retry multiplies it by `multiplier`, up to `max_backoff_ms`.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// A batch still failing this long after its first attempt is given up (and counted).
    /// A delay the backend asks for (RetryInfo, Retry-After) is honoured within this bound.
    #[serde(default = "default_max_elapsed_ms")]
    pub max_elapsed_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: default_enabled(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            multiplier: default_multiplier(),
            max_elapsed_ms: default_max_elapsed_ms(),
        }
    }
}

impl RetryConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            return Err("need 0 < initial_backoff_ms <= max_backoff_ms".into());
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err("multiplier must be a number >= 1".into());
        }
        Ok(())
    }

    pub fn max_elapsed(&self) -> Duration {
        Duration::from_millis(self.max_elapsed_ms)
    }
}

/// How long one batch may be retried. With the durable log on (`durable`), giving up would
/// lose what the log keeps for the destination, so a batch is retried until it is delivered
/// or the gateway stops (the log holds the backlog meanwhile); without it, for `bounded`.
pub fn retry_limit(durable: bool, bounded: Duration) -> Duration {
    if durable {
        Duration::MAX
    } else {
        bounded
    }
}

/// One batch's retries: the delays between attempts, and when to give up.
#[derive(Debug, Clone)]
pub struct Retries {
    backoff: Backoff,
    started: Instant,
    limit: Duration,
}

impl Retries {
    /// Starts the clock of a batch whose first attempt begins now; see [`retry_limit`].
    pub fn new(config: &RetryConfig, limit: Duration) -> Self {
        Retries {
            backoff: Backoff::new(config),
            started: Instant::now(),
            limit,
        }
    }

    /// The wait before the next attempt: the delay the destination `requested`, if any, or
    /// the backoff's next step. `None` when waiting it would pass the limit: give up.
    pub fn next_delay(&mut self, requested: Option<Duration>) -> Option<Duration> {
        let delay = requested.unwrap_or_else(|| self.backoff.next_delay());
        (self.started.elapsed() + delay <= self.limit).then_some(delay)
    }

    /// Time since the first attempt.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The delays of one batch's retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    next_ms: f64,
    max_ms: f64,
    multiplier: f64,
}

impl Backoff {
    pub fn new(config: &RetryConfig) -> Self {
        Backoff {
            next_ms: config.initial_backoff_ms as f64,
            max_ms: config.max_backoff_ms as f64,
            multiplier: config.multiplier,
        }
    }

    /// The next delay: the current step, jittered down by up to half ("equal jitter") so
    /// that clients failing together do not retry together.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next_ms.min(self.max_ms);
        self.next_ms = (self.next_ms * self.multiplier).min(self.max_ms);
        let jittered = rand::rng().random_range(step / 2.0..=step);
        Duration::from_secs_f64(jittered / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_forever_only_with_the_durable_log() {
        let bounded = Duration::from_millis(300);
        assert_eq!(retry_limit(true, bounded), Duration::MAX);
        assert_eq!(retry_limit(false, bounded), bounded);
        let config = RetryConfig::default();
        let mut forever = Retries::new(&config, retry_limit(true, bounded));
        assert_eq!(
            forever.next_delay(Some(Duration::from_secs(3600))),
            Some(Duration::from_secs(3600))
        );
        let mut bounded = Retries::new(&config, retry_limit(false, bounded));
        assert_eq!(bounded.next_delay(Some(Duration::from_secs(1))), None);
        assert!(bounded.next_delay(None).is_some());
    }

    #[test]
    fn grows_with_jitter_up_to_the_cap() {
        let config = RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..RetryConfig::default()
        };
        let mut backoff = Backoff::new(&config);
        let bounds = [
            (50, 100),
            (100, 200),
            (200, 400),
            (400, 800),
            (500, 1000),
            (500, 1000),
        ];
        for (low, high) in bounds {
            let d = backoff.next_delay().as_millis() as u64;
            assert!((low..=high).contains(&d), "{d} not in {low}..={high}");
        }
    }
}
