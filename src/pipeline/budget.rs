//! The memory budget: a byte-counting semaphore. Admission never waits on it; a request that
//! does not fit is refused at once so the client can back off.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry;

/// Bytes of request data the pipeline may hold.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    limit: u64,
}

/// A share of the budget, returned when dropped.
#[derive(Debug)]
pub struct BudgetPermit {
    bytes: u64,
    _permit: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS as u64);
        metrics::gauge!(telemetry::MEMORY_BUDGET_LIMIT_BYTES).set(limit as f64);
        MemoryBudget {
            semaphore: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// Takes `bytes` from the budget, or `None` when they do not fit right now.
    pub fn try_admit(&self, bytes: usize) -> Option<BudgetPermit> {
        let bytes = bytes as u64;
        if bytes > self.limit || bytes > u32::MAX as u64 {
            return None;
        }
        let permit = if bytes == 0 {
            None
        } else {
            Some(
                self.semaphore
                    .clone()
                    .try_acquire_many_owned(bytes as u32)
                    .ok()?,
            )
        };
        metrics::gauge!(telemetry::MEMORY_BUDGET_USED_BYTES).increment(bytes as f64);
        Some(BudgetPermit {
            bytes,
            _permit: permit,
        })
    }

    /// Bytes currently held.
    pub fn used(&self) -> u64 {
        self.limit - self.semaphore.available_permits() as u64
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl BudgetPermit {
    /// Takes `other`'s share into this one (both from the same budget).
    pub fn merge(&mut self, mut other: BudgetPermit) {
        self.bytes += std::mem::take(&mut other.bytes);
        match (&mut self._permit, other._permit.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::MEMORY_BUDGET_USED_BYTES).decrement(self.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_full_and_returns_on_drop() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_admit(60).expect("fits");
        assert!(budget.try_admit(50).is_none());
        assert_eq!(budget.used(), 60);
        drop(a);
        assert_eq!(budget.used(), 0);
        assert!(budget.try_admit(100).is_some());
        assert!(budget.try_admit(101).is_none());
    }

    #[test]
    fn merged_permits_return_everything_once() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.try_admit(0).expect("fits");
        a.merge(budget.try_admit(30).expect("fits"));
        a.merge(budget.try_admit(20).expect("fits"));
        assert_eq!(budget.used(), 50);
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}
