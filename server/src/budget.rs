//! The in-flight request bytes budget (`--max-inflight-bytes`): one counter for the whole process of the
//! request bytes being held right now (bodies as they are read, gRPC messages, decoded tensors), and
//! RAII permits that return their bytes when dropped. A request that would pass the limit is refused at
//! once (HTTP 429 with `Retry-After`, gRPC RESOURCE_EXHAUSTED), never queued, so a burst of large
//! requests costs the server at most the budget however many arrive together.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntCounter;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Cheap to clone: every clone counts against the same limit.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    /// Also `keel_inflight_request_bytes`, read at each scrape.
    used: Arc<AtomicUsize>,
    /// `keel_requests_refused_total{reason="inflight_bytes"}`.
    refused: Option<IntCounter>,
}

impl Budget {
    /// A budget of `limit` bytes, reported in `metrics`.
    pub fn new(limit: usize, metrics: &Metrics) -> Self {
        let used = Arc::new(AtomicUsize::new(0));
        metrics.inflight_request_bytes.track(&used);
        Budget {
            inner: Arc::new(Inner {
                limit,
                used,
                refused: Some(
                    metrics
                        .requests_refused
                        .with_label_values(&["inflight_bytes"]),
                ),
            }),
        }
    }

    /// A budget reported nowhere (unit tests, tools).
    pub fn unmetered(limit: usize) -> Self {
        Budget {
            inner: Arc::new(Inner {
                limit,
                used: Arc::default(),
                refused: None,
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes held by all permits now.
    pub fn in_use(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// A permit holding nothing yet; [`Permit::grow`] adds to it.
    pub fn empty(&self) -> Permit {
        Permit {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Takes `bytes` from the budget, or refuses without waiting.
    pub fn acquire(&self, bytes: usize) -> Result<Permit> {
        let mut permit = self.empty();
        permit.grow(bytes)?;
        Ok(permit)
    }

    /// Whether `bytes` more would fit now, without taking them: refuses (and counts the refusal) as
    /// [`Budget::acquire`] would. For a size a client declares before sending it: the request is refused
    /// at once if it cannot fit, and holds its bytes only as they arrive, so a client that declares much
    /// and sends slowly holds only what it sent.
    pub fn check(&self, bytes: usize) -> Result<()> {
        let inner = &*self.inner;
        let used = inner.used.load(Ordering::Acquire);
        if used
            .checked_add(bytes)
            .is_some_and(|total| total <= inner.limit)
        {
            return Ok(());
        }
        if let Some(refused) = &inner.refused {
            refused.inc();
        }
        Err(self.refusal(bytes, used))
    }

    fn take(&self, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let inner = &*self.inner;
        let taken = inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= inner.limit)
            });
        match taken {
            Ok(_) => Ok(()),
            Err(used) => {
                if let Some(refused) = &inner.refused {
                    refused.inc();
                }
                Err(self.refusal(bytes, used))
            }
        }
    }

    fn give(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.inner.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn refusal(&self, bytes: usize, used: usize) -> Error {
        let limit = self.inner.limit;
        if bytes > limit {
            // Waiting would not help: the request alone is larger than the whole budget.
            Error::PayloadTooLarge(format!(
                "the request needs {bytes} bytes in memory, more than the server's whole in-flight budget of {limit} bytes (--max-inflight-bytes)"
            ))
        } else {
            Error::Overloaded(format!(
                "the server is holding {used} of its {limit} bytes of in-flight request data (--max-inflight-bytes); this request needs {bytes} more: retry later"
            ))
        }
    }
}

/// Bytes held from a [`Budget`] until dropped.
pub struct Permit {
    budget: Budget,
    bytes: usize,
}

impl Permit {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `more` bytes as well, or refuses (keeping what it held).
    pub fn grow(&mut self, more: usize) -> Result<()> {
        self.budget.take(more)?;
        self.bytes += more;
        Ok(())
    }

    /// Holds at least `total` bytes: grows by the difference if it holds less.
    pub fn grow_to(&mut self, total: usize) -> Result<()> {
        self.grow(total.saturating_sub(self.bytes))
    }

    /// Holds exactly `total` bytes: grows (or refuses, keeping what it held) or shrinks to it.
    pub fn resize(&mut self, total: usize) -> Result<()> {
        self.grow_to(total)?;
        self.shrink_to(total);
        Ok(())
    }

    /// Returns everything above `total` to the budget.
    pub fn shrink_to(&mut self, total: usize) {
        if total < self.bytes {
            self.budget.give(self.bytes - total);
            self.bytes = total;
        }
    }

    /// Takes over what `other` holds (both from the same budget).
    pub fn absorb(&mut self, mut other: Permit) {
        debug_assert!(Arc::ptr_eq(&self.budget.inner, &other.budget.inner));
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({} bytes)", self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_return_their_bytes() {
        let budget = Budget::unmetered(100);
        let a = budget.acquire(60).unwrap();
        let mut b = budget.acquire(40).unwrap();
        assert_eq!(budget.in_use(), 100);
        assert!(matches!(budget.acquire(1), Err(Error::Overloaded(_))));
        assert!(b.grow(1).is_err());
        assert_eq!(b.bytes(), 40);
        drop(a);
        b.grow(50).unwrap();
        assert_eq!(budget.in_use(), 90);
        b.shrink_to(10);
        assert_eq!(budget.in_use(), 10);
        b.grow_to(5).unwrap();
        assert_eq!(b.bytes(), 10);
        b.resize(12).unwrap();
        b.resize(10).unwrap();
        assert_eq!((b.bytes(), budget.in_use()), (10, 10));
        let c = budget.acquire(20).unwrap();
        b.absorb(c);
        assert_eq!((b.bytes(), budget.in_use()), (30, 30));
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn check_takes_nothing() {
        let budget = Budget::unmetered(100);
        let _held = budget.acquire(60).unwrap();
        assert!(budget.check(40).is_ok());
        assert!(matches!(budget.check(41), Err(Error::Overloaded(_))));
        assert!(matches!(budget.check(101), Err(Error::PayloadTooLarge(_))));
        assert_eq!(budget.in_use(), 60);
    }

    #[test]
    fn more_than_the_whole_budget_is_too_large_not_overloaded() {
        let budget = Budget::unmetered(100);
        assert!(matches!(
            budget.acquire(101),
            Err(Error::PayloadTooLarge(_))
        ));
        assert!(budget.acquire(usize::MAX).is_err());
        assert_eq!(budget.in_use(), 0);
        assert!(budget.acquire(0).is_ok());
    }

    #[test]
    fn metrics_follow_the_counter() {
        let metrics = Metrics::new();
        let budget = Budget::new(10, &metrics);
        let p = budget.acquire(7).unwrap();
        assert!(budget.acquire(7).is_err());
        assert_eq!(metrics.inflight_request_bytes.get(), 7);
        drop(p);
        assert_eq!(metrics.inflight_request_bytes.get(), 0);
        assert_eq!(
            metrics
                .requests_refused
                .with_label_values(&["inflight_bytes"])
                .get(),
            1
        );
    }
}
