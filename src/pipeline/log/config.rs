//! The `[log]` section: where the log lives, how large it may grow, what happens when it is
//! full or the disk runs low, and how often progress is saved.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::pipeline::QueueConfig;

/// What the log does when it reaches `max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenLogFull {
    /// Refuse new requests with the throttling answer (RESOURCE_EXHAUSTED with RetryInfo,
    /// HTTP 429 with Retry-After) until destinations catch up. Nothing is lost.
    #[default]
    Refuse,
    /// Delete the oldest segment, even if some destination has not read it (counted per
    /// destination in `otelgate_log_dropped_records_total{reason="log_full"}`).
    DropOldest,
}

fn default_true() -> bool {
    true
}
fn default_dir() -> PathBuf {
    PathBuf::from("otelgate-data")
}
const fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
const fn default_max_bytes() -> u64 {
    4 * 1024 * 1024 * 1024
}
const fn default_min_free_bytes() -> u64 {
    512 * 1024 * 1024
}
const fn default_cache_bytes() -> u64 {
    64 * 1024 * 1024
}
const fn default_cursor_interval_ms() -> u64 {
    200
}
const fn default_group_wait_us() -> u64 {
    0
}
/// Longest `group_wait_us`: a wait is added to acknowledgements, so it stays far below
/// any client's deadline.
const MAX_GROUP_WAIT_US: u64 = 100_000;

/// The `[log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// On (default): requests are acknowledged after they are on disk and survive a crash.
    /// Off: memory-only queues, faster, but a crash or kill loses every request not yet
    /// delivered.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Data directory (created if missing). Only one gateway may use it at a time.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Most bytes the log may hold on disk; see `when_full`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// `refuse` (default) or `drop_oldest`.
    #[serde(default)]
    pub when_full: WhenLogFull,
    /// Below this much free space on the log's file system, new requests are refused with
    /// the throttling answer instead of filling the disk.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Recent records kept in memory so destinations that keep up never read the disk.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// How often cursors are saved and fully read segments deleted. After a crash, at most
    /// this much already-delivered data is sent again to OTLP backends (the TimescaleDB sink
    /// skips it by its ledger).
    #[serde(default = "default_cursor_interval_ms")]
    pub cursor_interval_ms: u64,
    /// How long the writer waits, after the first append of a group, for more appends to
    /// join it before it syncs: fewer syncs per request (each costs the gateway CPU and the
    /// disk an I/O operation), at the price of this much more acknowledgement latency.
    /// 0: a group is what waits when the writer is free.
    #[serde(default = "default_group_wait_us")]
    pub group_wait_us: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            enabled: true,
            dir: default_dir(),
            segment_bytes: default_segment_bytes(),
            max_bytes: default_max_bytes(),
            when_full: WhenLogFull::default(),
            min_free_bytes: default_min_free_bytes(),
            cache_bytes: default_cache_bytes(),
            cursor_interval_ms: default_cursor_interval_ms(),
            group_wait_us: default_group_wait_us(),
        }
    }
}

impl LogConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("log.dir", "must not be empty"));
        }
        if self.segment_bytes < 4096 {
            return Err(ConfigError::invalid(
                "log.segment_bytes",
                "must be at least 4096",
            ));
        }
        if self.max_bytes < 2 * self.segment_bytes {
            return Err(ConfigError::invalid(
                "log.max_bytes",
                format!(
                    "must be at least twice log.segment_bytes ({})",
                    self.segment_bytes
                ),
            ));
        }
        if self.cursor_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "log.cursor_interval_ms",
                "must be greater than 0",
            ));
        }
        if self.group_wait_us > MAX_GROUP_WAIT_US {
            return Err(ConfigError::invalid(
                "log.group_wait_us",
                format!("must be at most {MAX_GROUP_WAIT_US} (100 ms)"),
            ));
        }
        Ok(())
    }

    /// Checks a destination's lag limits (`queue` is the key of its queue section):
    /// `max_lag_bytes` against the segment size, as lag is dropped a whole segment at a time;
    /// `throttle_lag_ms` is positive and has a log to measure lag in.
    pub(crate) fn validate_lag(
        &self,
        queue_key: &str,
        queue: &QueueConfig,
    ) -> Result<(), ConfigError> {
        if let Some(limit) = queue.max_lag_bytes {
            if self.enabled && limit < 2 * self.segment_bytes {
                return Err(ConfigError::invalid(
                    format!("{queue_key}.max_lag_bytes"),
                    format!(
                        "must be at least twice log.segment_bytes ({})",
                        self.segment_bytes
                    ),
                ));
            }
        }
        match queue.throttle_lag_ms {
            Some(0) => Err(ConfigError::invalid(
                format!("{queue_key}.throttle_lag_ms"),
                "must be greater than 0 (leave it out for no lag bound)",
            )),
            Some(_) if !self.enabled => Err(ConfigError::invalid(
                format!("{queue_key}.throttle_lag_ms"),
                "needs the durable log (log.enabled = true); memory-only queues are bounded by queue.capacity",
            )),
            _ => Ok(()),
        }
    }
}
