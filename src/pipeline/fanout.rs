//! Hands an accepted request to every destination that takes its signal. A request is either
//! queued for every `block` destination or for none of them (room is reserved in all queues
//! before anything is sent), so a refused request never leaves a partial copy behind for the
//! client's retry to duplicate.

use std::sync::Arc;

use super::queue::{ReserveError, Reserved};
use super::{Delivery, Payload, QueueConfig, QueueSender, WhenFull};
use crate::telemetry;
use crate::Signal;

/// One destination as the fan-out sees it.
#[derive(Debug, Clone)]
struct Destination {
    name: Arc<str>,
    signals: [bool; 3],
    queue: QueueSender,
    config: QueueConfig,
}

/// Every destination's queue sender. Dropping the last clone closes the queues, which tells
/// the destination workers to drain and stop.
#[derive(Debug, Clone, Default)]
pub struct Fanout {
    destinations: Vec<Destination>,
}

/// Why a request was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DispatchError {
    #[error("the queue of destination `{0}` is full; retry later")]
    QueueFull(Arc<str>),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("no destination takes {0}")]
    NoDestination(Signal),
    #[error(transparent)]
    Log(#[from] super::log::AppendError),
}

/// Where accepted requests go: straight to the destinations' memory queues, or into the
/// durable log, which the destinations read through their own cursors.
#[derive(Debug, Clone)]
pub enum Dispatcher {
    Memory(Fanout),
    Durable {
        log: super::log::Appender,
        /// Which signals some destination takes.
        signals: [bool; 3],
    },
}

impl Dispatcher {
    /// Refuses a request of `signal` early while a destination taking it lags past its
    /// `queue.throttle_lag_ms` (durable log only; memory queues are bounded by capacity).
    pub fn check_lag(&self, signal: Signal) -> Result<(), super::log::Lagging> {
        match self {
            Dispatcher::Memory(_) => Ok(()),
            Dispatcher::Durable { log, .. } => log.check_lag(signal),
        }
    }

    /// Hands `payload` on; returns once every destination will get it (memory: queued
    /// everywhere; durable: on disk).
    pub async fn dispatch(&self, payload: Arc<Payload>) -> Result<(), DispatchError> {
        match self {
            Dispatcher::Memory(fanout) => fanout.dispatch(payload).await,
            Dispatcher::Durable { log, signals } => {
                if !signals[payload.signal.index()] {
                    return Err(DispatchError::NoDestination(payload.signal));
                }
                log.append(payload).await?;
                Ok(())
            }
        }
    }
}

impl Fanout {
    /// Adds a destination taking `signals`.
    pub fn add(&mut self, name: &str, signals: &[Signal], queue: QueueSender, config: QueueConfig) {
        self.destinations.push(Destination {
            name: name.into(),
            signals: Signal::mask(signals),
            queue,
            config,
        });
    }

    /// Queues `payload` for every destination taking its signal.
    pub async fn dispatch(&self, payload: Arc<Payload>) -> Result<(), DispatchError> {
        let signal = payload.signal;
        let mut reserved: Vec<Reserved<'_>> = Vec::with_capacity(self.destinations.len());
        let mut any = false;
        for dest in self
            .destinations
            .iter()
            .filter(|d| d.signals[signal.index()])
        {
            any = true;
            let result = match dest.config.when_full {
                WhenFull::Drop => dest.queue.try_reserve(),
                WhenFull::Block => dest.queue.reserve(dest.config.block_timeout()).await,
            };
            match result {
                Ok(room) => reserved.push(room),
                Err(ReserveError::Closed) => return Err(DispatchError::ShuttingDown),
                Err(ReserveError::Full) if dest.config.when_full == WhenFull::Drop => {
                    metrics::counter!(
                        telemetry::EXPORTER_DROPPED_ITEMS,
                        "exporter" => dest.name.to_string(),
                        "signal" => signal.as_str(),
                    )
                    .increment(payload.items);
                }
                Err(ReserveError::Full) => return Err(DispatchError::QueueFull(dest.name.clone())),
            }
        }
        if !any {
            return Err(DispatchError::NoDestination(signal));
        }
        for room in reserved {
            room.send(Delivery::memory(payload.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::pipeline::{queue, MemoryBudget};

    fn payload(budget: &MemoryBudget, signal: Signal) -> Arc<Payload> {
        let body = Bytes::from_static(b"0123456789");
        let permit = budget.try_admit(body.len()).unwrap();
        Arc::new(Payload::new(signal, body, 3, permit))
    }

    fn config(when_full: WhenFull) -> QueueConfig {
        QueueConfig {
            capacity: 1,
            when_full,
            block_timeout_ms: 20,
            max_lag_bytes: None,
            throttle_lag_ms: None,
        }
    }

    #[tokio::test]
    async fn shares_one_copy_and_routes_by_signal() {
        let budget = MemoryBudget::new(1000);
        let (a_tx, mut a_rx) = queue("a", 4);
        let (b_tx, mut b_rx) = queue("b", 4);
        let mut fanout = Fanout::default();
        fanout.add("a", &Signal::ALL, a_tx, config(WhenFull::Block));
        fanout.add("b", &[Signal::Logs], b_tx, config(WhenFull::Block));

        fanout
            .dispatch(payload(&budget, Signal::Traces))
            .await
            .unwrap();
        fanout
            .dispatch(payload(&budget, Signal::Logs))
            .await
            .unwrap();
        let first = a_rx.recv().await.unwrap();
        assert_eq!(first.signal, Signal::Traces);
        let a_logs = a_rx.recv().await.unwrap();
        let b_logs = b_rx.recv().await.unwrap();
        assert!(
            a_logs.same_payload(&b_logs),
            "destinations must share one payload"
        );
        drop((first, a_logs));
        assert_eq!(
            budget.used(),
            10,
            "budget held until the last destination lets go"
        );
        drop(b_logs);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn full_block_queue_refuses_everywhere_and_drop_queue_skips() {
        let budget = MemoryBudget::new(1000);
        let (block_tx, _block_rx) = queue("block", 1);
        let (drop_tx, mut drop_rx) = queue("drop", 1);
        let (other_tx, mut other_rx) = queue("other", 8);
        let mut fanout = Fanout::default();
        fanout.add("drop", &Signal::ALL, drop_tx, config(WhenFull::Drop));
        fanout.add("other", &Signal::ALL, other_tx, config(WhenFull::Block));
        fanout
            .dispatch(payload(&budget, Signal::Traces))
            .await
            .unwrap();
        // "drop" is now full: the next request skips it but still reaches "other".
        fanout
            .dispatch(payload(&budget, Signal::Traces))
            .await
            .unwrap();
        assert!(drop_rx.recv().await.is_some());
        assert!(other_rx.recv().await.is_some());
        assert!(other_rx.recv().await.is_some());
        assert!(drop_rx.drain_now().is_empty());

        fanout.add("block", &Signal::ALL, block_tx, config(WhenFull::Block));
        fanout
            .dispatch(payload(&budget, Signal::Logs))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let err = fanout
            .dispatch(payload(&budget, Signal::Logs))
            .await
            .unwrap_err();
        assert_eq!(err, DispatchError::QueueFull("block".into()));
        assert!(started.elapsed() >= Duration::from_millis(20));
        // All or nothing: "other" got the first logs request only.
        assert_eq!(other_rx.drain_now().len(), 1);
    }
}
