//! The most memory a task (or a query) held at once: a memory pool in front of a shared one that
//! passes every reservation on and counts the bytes its own consumers hold.
//!
//! Executors give each task its own [`PeakMemoryPool`] over the executor's pool, so a task's
//! peak is reported with its status (Spark's "peak execution memory"); `ember bench` wraps
//! single-node DataFusion's pool the same way to say what it needed for a query.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::error::Result;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// A view of a shared [`MemoryPool`] that knows how much of it the reservations made through
/// it hold, and the most they held at once. Limits, fairness and errors are the shared pool's.
#[derive(Debug)]
pub struct PeakMemoryPool {
    inner: Arc<dyn MemoryPool>,
    reserved: AtomicUsize,
    peak: AtomicUsize,
}

impl PeakMemoryPool {
    /// A view of `inner` holding nothing yet.
    pub fn new(inner: Arc<dyn MemoryPool>) -> Self {
        Self {
            inner,
            reserved: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Bytes the reservations made through this view hold now.
    pub fn held(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// The most bytes the reservations made through this view held at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak from what is held now (between the queries of a benchmark).
    pub fn reset_peak(&self) {
        self.peak.store(self.held(), Ordering::Relaxed);
    }

    fn added(&self, bytes: usize) {
        let now = self.reserved.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
}

impl fmt::Display for PeakMemoryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (peak {} bytes)", self.inner, self.peak())
    }
}

impl MemoryPool for PeakMemoryPool {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.added(additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        // A reservation never shrinks by more than it holds, so neither does the sum.
        let _ = self
            .reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(shrink))
            });
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.inner.try_grow(reservation, additional)?;
        self.added(additional);
        Ok(())
    }

    /// What the shared pool holds, as every pool answers: operators ask it of the pool.
    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::{FairSpillPool, MemoryConsumer};

    #[test]
    fn counts_its_own_reservations_and_their_peak_within_the_shared_limit() {
        let shared: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(1000));
        let other = MemoryConsumer::new("other").register(&shared);
        other.grow(300);
        let view = Arc::new(PeakMemoryPool::new(Arc::clone(&shared)));
        let pool: Arc<dyn MemoryPool> = Arc::clone(&view) as _;
        let a = MemoryConsumer::new("a").register(&pool);
        let b = MemoryConsumer::new("b").register(&pool);
        a.try_grow(400).unwrap();
        b.grow(200);
        assert_eq!((view.held(), view.peak()), (600, 600));
        assert_eq!(shared.reserved(), 900);
        // The shared pool's limit still holds: 900 of 1000 are taken.
        assert!(a.try_grow(200).is_err());
        assert_eq!(view.held(), 600);
        a.shrink(350);
        drop(b);
        assert_eq!((view.held(), view.peak()), (50, 600));
        view.reset_peak();
        assert_eq!(view.peak(), 50);
        a.try_grow(100).unwrap();
        assert_eq!((view.held(), view.peak()), (150, 150));
        drop(a);
        assert_eq!(view.held(), 0);
        assert_eq!(shared.reserved(), 300);
    }
}
