//! The batching loop every destination drives: it receives requests from the destination's
//! queue (fed by the fan-out or by the durable log's reader), lets the destination add them
//! to its pending batches, starts a batch when it is full or past its deadline on one of a
//! fixed number of send slots, and on shutdown starts what is left and waits for every
//! outcome, unless the forced stop fires first.
//!
//! What a batch is, how it is sent and what is reported belong to the destination
//! ([`BatchingDestination`]); the loop owns only the order of events. Requests keep their
//! place in the durable log (and their share of the memory budget) until the destination
//! drops them with the batch's outcome, so the loop never acknowledges anything itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use super::{Delivery, QueueReceiver};

/// A destination's side of the batching loop. Its pending batches are numbered
/// `0..batch_count()` (per signal for the exporter; for the sink, per mapping plus one for
/// `otelgate_rejected_rows`).
pub trait BatchingDestination {
    /// What a pending batch does when its deadline passes while every send slot is busy.
    /// `true`: the loop waits for a slot (and reads nothing meanwhile). `false`: the batch
    /// keeps growing until a slot is free or it is full.
    const DUE_BATCH_WAITS_FOR_SLOT: bool;

    /// How many pending batches there are.
    fn batch_count(&self) -> usize;

    /// When pending batch `index` must leave, if it holds anything.
    fn deadline(&self, index: usize) -> Option<Instant>;

    /// Whether pending batch `index` holds anything.
    fn is_pending(&self, index: usize) -> bool;

    /// Pending batches that must leave before `delivery` is added, because it would take
    /// them over a size limit.
    fn overflowed_by(&self, _delivery: &Delivery, _overflowed: &mut Vec<usize>) {}

    /// Adds `delivery` to its pending batches and lists those now full. `received` is when
    /// the loop took it from the queue, before waiting for a slot for an overflowed batch.
    fn add(&mut self, delivery: Delivery, received: Instant, full: &mut Vec<usize>);

    /// Starts sending pending batch `index` as a task in `tasks`, which must hold `slot` until
    /// the batch's outcome is known.
    fn start(&mut self, index: usize, slot: OwnedSemaphorePermit, tasks: &mut JoinSet<()>);

    /// How often [`Self::housekeeping`] runs (first at once), if at all.
    fn housekeeping_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic work beside the batches, spawned in `tasks` so shutdown waits for it too.
    fn housekeeping(&mut self, _tasks: &mut JoinSet<()>) {}
}

/// Runs the loop until `queue` is closed and everything batched has its outcome
/// (graceful), or `stop` fires (forced: tasks still running are aborted). At most
/// `send_slots` batches are in flight at once. Afterwards, whatever the destination
/// still holds as pending, and whatever is left in `queue`, was not delivered.
pub async fn drive<D: BatchingDestination>(
    destination: &mut D,
    queue: &mut QueueReceiver,
    send_slots: usize,
    stop: &CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(send_slots));
    let mut tasks = JoinSet::new();
    let mut housekeeping = destination.housekeeping_period().map(tokio::time::interval);
    let mut ready = Vec::new();
    loop {
        let next_deadline = (0..destination.batch_count())
            .filter_map(|index| destination.deadline(index))
            .min();
        let slot_free = D::DUE_BATCH_WAITS_FOR_SLOT || slots.available_permits() > 0;
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            // Deadlines and housekeeping before the queue: under steady load a partial batch
            // still leaves on time, and a backlog cannot starve them.
            () = sleep_until(next_deadline), if next_deadline.is_some() && slot_free => {
                let now = Instant::now();
                for index in 0..destination.batch_count() {
                    if destination.deadline(index).is_none_or(|d| d > now) {
                        continue;
                    }
                    if D::DUE_BATCH_WAITS_FOR_SLOT {
                        if !launch(destination, index, &slots, &mut tasks, stop).await {
                            break;
                        }
                    } else {
                        let Ok(slot) = slots.clone().try_acquire_owned() else { break };
                        destination.start(index, slot, &mut tasks);
                    }
                }
            }
            () = tick(&mut housekeeping) => destination.housekeeping(&mut tasks),
            received = queue.recv() => {
                let Some(delivery) = received else { break };
                let received = Instant::now();
                destination.overflowed_by(&delivery, &mut ready);
                let mut launched = launch_all(destination, &mut ready, &slots, &mut tasks, stop).await;
                // Added even when the stop came first, so that it counts as undelivered.
                destination.add(delivery, received, &mut ready);
                if launched {
                    launched = launch_all(destination, &mut ready, &slots, &mut tasks, stop).await;
                }
                ready.clear();
                if !launched {
                    break;
                }
            }
        }
    }
    if !stop.is_cancelled() {
        // The queue is closed: start what is batched, then wait for every outcome.
        ready.extend((0..destination.batch_count()).filter(|&i| destination.is_pending(i)));
        if launch_all(destination, &mut ready, &slots, &mut tasks, stop).await {
            tokio::select! {
                () = async { while tasks.join_next().await.is_some() {} } => {}
                () = stop.cancelled() => {}
            }
        }
    }
    tasks.shutdown().await;
}

/// Starts the pending batches listed in `ready`, in order, emptying the list. Returns false
/// if `stop` fired while waiting for a slot (the batches not started stay pending).
async fn launch_all<D: BatchingDestination>(
    destination: &mut D,
    ready: &mut Vec<usize>,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> bool {
    for index in ready.drain(..) {
        // A batch started earlier in the list may have taken this one along (the sink
        // writes every pending table at once).
        if !destination.is_pending(index) {
            continue;
        }
        if !launch(destination, index, slots, tasks, stop).await {
            return false;
        }
    }
    true
}

/// Waits for a free send slot and starts pending batch `index` on it. Returns false if
/// `stop` fired first (the batch stays pending).
async fn launch<D: BatchingDestination>(
    destination: &mut D,
    index: usize,
    slots: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> bool {
    let slot = tokio::select! {
        slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        () = stop.cancelled() => return false,
    };
    destination.start(index, slot, tasks);
    true
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The next tick of `interval`, or never without one.
async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::pipeline::{queue, MemoryBudget, Payload, QueueSender};
    use crate::Signal;

    /// Batches of up to two requests per signal, due `max_wait` after their first one;
    /// records each batch started as (signal index, requests).
    struct Recorder {
        pending: [Vec<Delivery>; 3],
        deadlines: [Option<Instant>; 3],
        max_wait: Duration,
        started: Arc<Mutex<Vec<(usize, usize)>>>,
    }

    impl Recorder {
        fn new(max_wait: Duration) -> Self {
            Recorder {
                pending: Default::default(),
                deadlines: [None; 3],
                max_wait,
                started: Arc::default(),
            }
        }
    }

    impl BatchingDestination for Recorder {
        const DUE_BATCH_WAITS_FOR_SLOT: bool = true;

        fn batch_count(&self) -> usize {
            3
        }

        fn deadline(&self, index: usize) -> Option<Instant> {
            self.deadlines[index]
        }

        fn is_pending(&self, index: usize) -> bool {
            !self.pending[index].is_empty()
        }

        fn add(&mut self, delivery: Delivery, received: Instant, full: &mut Vec<usize>) {
            let index = delivery.signal.index();
            self.pending[index].push(delivery);
            self.deadlines[index].get_or_insert(received + self.max_wait);
            if self.pending[index].len() == 2 {
                full.push(index);
            }
        }

        fn start(&mut self, index: usize, slot: OwnedSemaphorePermit, tasks: &mut JoinSet<()>) {
            let batch = std::mem::take(&mut self.pending[index]);
            self.deadlines[index] = None;
            self.started.lock().unwrap().push((index, batch.len()));
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop((batch, slot));
            });
        }
    }

    async fn send(queue: &QueueSender, budget: &MemoryBudget, signal: Signal) {
        let body = Bytes::from_static(b"0123456789");
        let permit = budget.try_admit(body.len()).unwrap();
        let payload = Arc::new(Payload::new(signal, body, 1, permit));
        queue.send(Delivery::memory(payload)).await.unwrap();
    }

    #[tokio::test]
    async fn full_and_due_batches_leave_and_the_rest_leaves_when_the_queue_closes() {
        let budget = MemoryBudget::new(1000);
        let (tx, mut rx) = queue("recorder", 8);
        let mut recorder = Recorder::new(Duration::from_millis(20));
        let started = recorder.started.clone();
        let stop = CancellationToken::new();
        let producer = async {
            send(&tx, &budget, Signal::Traces).await;
            send(&tx, &budget, Signal::Traces).await;
            send(&tx, &budget, Signal::Logs).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            send(&tx, &budget, Signal::Traces).await;
            drop(tx);
        };
        tokio::join!(drive(&mut recorder, &mut rx, 1, &stop), producer);
        assert_eq!(*started.lock().unwrap(), [(0, 2), (2, 1), (0, 1)]);
        assert_eq!(budget.used(), 0, "every batch had its outcome");
    }

    #[tokio::test]
    async fn a_forced_stop_leaves_pending_batches_with_the_destination() {
        let budget = MemoryBudget::new(1000);
        let (tx, mut rx) = queue("recorder", 8);
        let mut recorder = Recorder::new(Duration::from_secs(3600));
        let stop = CancellationToken::new();
        let producer = async {
            send(&tx, &budget, Signal::Metrics).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.cancel();
        };
        tokio::join!(drive(&mut recorder, &mut rx, 1, &stop), producer);
        assert!(recorder.started.lock().unwrap().is_empty());
        assert_eq!(recorder.pending[Signal::Metrics.index()].len(), 1);
        drop(tx);
    }
}
