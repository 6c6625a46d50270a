//! The feedback join: logged predictions waiting for their ground truth, keyed by
//! (model, request id, row). Bounded in size (oldest evicted first) and in time (TTL).
//!
//! Keys are a 64-bit keyed hash of (model, request id, row) rather than the strings themselves,
//! so logging a prediction allocates nothing; with the default 100,000 entries the chance that
//! two live keys collide is about 3e-10.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

use prometheus::IntCounter;

use crate::record::FeatureValue;

/// A predicted or true value, comparable without keeping strings: numbers (and strings that
/// parse as numbers) compare numerically, other strings by a keyed hash.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value {
    Number(f64),
    Text(u64),
}

/// Eviction counters of one model, shared by its entries so an eviction is one atomic add.
pub(crate) struct Evictions {
    pub ttl: IntCounter,
    pub capacity: IntCounter,
}

struct Entry {
    version: u64,
    value: Value,
    time_ms: u64,
    seq: u64,
    evictions: Arc<Evictions>,
}

/// What a feedback item found.
pub(crate) enum Joined {
    Found { version: u64, predicted: Value },
    Missing,
}

pub(crate) struct FeedbackStore {
    hasher: RandomState,
    entries: HashMap<u64, Entry, BuildHasherDefault<KeyHasher>>,
    /// Insertion order, for eviction; entries already joined or replaced stay here until popped
    /// and are recognised by their `seq`.
    order: VecDeque<(u64, u64, u64)>,
    capacity: usize,
    ttl_ms: u64,
    next_seq: u64,
}

impl FeedbackStore {
    pub fn new(capacity: usize, ttl_ms: u64) -> FeedbackStore {
        FeedbackStore {
            hasher: RandomState::new(),
            entries: HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl_ms,
            next_seq: 0,
        }
    }

    /// The comparable form of a value; `None` for NaN.
    pub fn value(&self, v: &FeatureValue) -> Option<Value> {
        match v {
            FeatureValue::Number(x) => Self::number(*x),
            FeatureValue::Category(s) => self.text(s),
        }
    }

    /// [`FeedbackStore::value`] of a number.
    pub fn number(x: f64) -> Option<Value> {
        (!x.is_nan()).then_some(Value::Number(x))
    }

    /// [`FeedbackStore::value`] of a string.
    pub fn text(&self, s: &str) -> Option<Value> {
        match s.trim().parse::<f64>() {
            Ok(x) => Self::number(x),
            Err(_) => Some(Value::Text(self.hasher.hash_one(s))),
        }
    }

    /// The join key of (model, request id, row).
    pub fn key(&self, model: &str, request_id: &str, row: u32) -> u64 {
        self.hasher.hash_one((model, request_id, row))
    }

    /// Logs a prediction under `key` (from [`FeedbackStore::key`]); a repeated key replaces the
    /// older prediction.
    pub fn insert(
        &mut self,
        key: u64,
        version: u64,
        value: Value,
        time_ms: u64,
        evictions: &Arc<Evictions>,
    ) {
        while self.order.len() >= self.capacity {
            self.pop(|e| e.capacity.inc());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((key, seq, time_ms));
        self.entries.insert(
            key,
            Entry {
                version,
                value,
                time_ms,
                seq,
                evictions: Arc::clone(evictions),
            },
        );
    }

    /// Drops predictions older than the TTL at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        while self
            .order
            .front()
            .is_some_and(|&(_, _, t)| t.saturating_add(self.ttl_ms) < now_ms)
        {
            self.pop(|e| e.ttl.inc());
        }
    }

    /// Takes the prediction a feedback item refers to (each prediction joins once).
    pub fn take(&mut self, model: &str, request_id: &str, row: u32, time_ms: u64) -> Joined {
        let key = self.key(model, request_id, row);
        match self.entries.remove(&key) {
            Some(e) if e.time_ms.saturating_add(self.ttl_ms) >= time_ms => Joined::Found {
                version: e.version,
                predicted: e.value,
            },
            Some(e) => {
                e.evictions.ttl.inc();
                Joined::Missing
            }
            None => Joined::Missing,
        }
    }

    /// Predictions waiting for feedback.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn pop(&mut self, count: impl Fn(&Evictions)) {
        let Some((key, seq, _)) = self.order.pop_front() else {
            return;
        };
        if self.entries.get(&key).is_some_and(|e| e.seq == seq)
            && let Some(e) = self.entries.remove(&key)
        {
            count(&e.evictions);
        }
    }
}

/// Keys are already hashes: pass them through instead of hashing them again.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evictions() -> Arc<Evictions> {
        Arc::new(Evictions {
            ttl: IntCounter::new("ttl", "ttl").unwrap(),
            capacity: IntCounter::new("cap", "cap").unwrap(),
        })
    }

    #[test]
    fn joins_once_by_model_request_and_row() {
        let ev = evictions();
        let mut s = FeedbackStore::new(10, 1_000);
        s.insert(s.key("m", "r1", 0), 3, Value::Number(1.0), 100, &ev);
        s.insert(s.key("m", "r1", 1), 3, Value::Number(0.0), 100, &ev);
        assert!(matches!(s.take("other", "r1", 0, 200), Joined::Missing));
        assert!(matches!(
            s.take("m", "r1", 1, 200),
            Joined::Found {
                version: 3,
                predicted: Value::Number(0.0)
            }
        ));
        assert!(matches!(s.take("m", "r1", 1, 200), Joined::Missing));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn capacity_and_ttl_evictions_are_counted() {
        let ev = evictions();
        let mut s = FeedbackStore::new(3, 1_000);
        for i in 0..5u32 {
            s.insert(s.key("m", "r", i), 1, Value::Number(1.0), u64::from(i), &ev);
        }
        assert_eq!((s.len(), ev.capacity.get()), (3, 2));
        assert!(matches!(s.take("m", "r", 0, 10), Joined::Missing));
        s.expire(1_004);
        assert_eq!((s.len(), ev.ttl.get()), (1, 2));
        // Joined entries leave no trace in the counts when their order slot is popped.
        assert!(matches!(s.take("m", "r", 4, 1_004), Joined::Found { .. }));
        s.expire(10_000);
        assert_eq!((s.len(), ev.ttl.get(), ev.capacity.get()), (0, 2, 2));
        // Feedback after the TTL does not join, and counts as an expiry.
        s.insert(s.key("m", "late", 0), 1, Value::Number(1.0), 20_000, &ev);
        assert!(matches!(s.take("m", "late", 0, 21_001), Joined::Missing));
        assert_eq!(ev.ttl.get(), 3);
    }

    #[test]
    fn values_compare_numbers_numerically_and_strings_by_equality() {
        let s = FeedbackStore::new(1, 1);
        let v = |x: FeatureValue| s.value(&x);
        assert_eq!(
            v(FeatureValue::Number(1.0)),
            v(FeatureValue::Category("1".into()))
        );
        assert_eq!(
            v(FeatureValue::Category("cat".into())),
            v(FeatureValue::Category("cat".into()))
        );
        assert_ne!(
            v(FeatureValue::Category("cat".into())),
            v(FeatureValue::Category("dog".into()))
        );
        assert_eq!(v(FeatureValue::Number(f64::NAN)), None);
    }
}
