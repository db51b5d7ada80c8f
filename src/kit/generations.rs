//! The generations a cache's correctness rests on (workflow-service's read cache, agent-service's
//! agent cache): an epoch for everything, and one counter per bucket of keys, each moved by a
//! change. A cached answer carries the stamp read *before* its query ran and is served only while
//! the stamp is unchanged, so an answer filled from a query that raced a change never outlives
//! the change's announcement. Off (every read to the database) until changes are announced.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The generations an answer for one key depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    epoch: u64,
    bucket: u64,
}

/// An epoch and a generation per bucket of keys; keys that share a bucket only drop each other's
/// answers more often than needed.
pub struct Generations {
    /// Off until the change feed listens, and whenever it has lost its connection.
    enabled: AtomicBool,
    epoch: AtomicU64,
    buckets: Box<[AtomicU64]>,
    hasher: RandomState,
}

impl Generations {
    /// Off, with `buckets` bucket counters (at least one).
    pub fn new(buckets: usize) -> Self {
        Self {
            enabled: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            buckets: (0..buckets.max(1)).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    /// On, with no stamp from before this call still current.
    pub fn enable(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Off (changes may go unannounced from now on), with no stamp from before still current.
    pub fn disable(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// A change to what `key` names.
    pub fn changed(&self, key: impl Hash) {
        self.bucket(key).fetch_add(1, Ordering::SeqCst);
    }

    /// A change to everything.
    pub fn changed_everything(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The generations a read of `key` depends on, as they are now.
    pub fn stamp(&self, key: impl Hash) -> Stamp {
        Stamp { epoch: self.epoch.load(Ordering::SeqCst), bucket: self.bucket(key).load(Ordering::SeqCst) }
    }

    /// Whether `a` and `b` share a bucket (for tests that need keys that do not).
    pub fn same_bucket(&self, a: impl Hash, b: impl Hash) -> bool {
        std::ptr::eq(self.bucket(a), self.bucket(b))
    }

    fn bucket(&self, key: impl Hash) -> &AtomicU64 {
        &self.buckets[(self.hasher.hash_one(key) % self.buckets.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_stays_current_until_its_key_or_everything_changes_or_the_generations_turn_off() {
        let generations = Generations::new(1024);
        assert!(!generations.is_enabled());
        generations.enable();
        let stamp = generations.stamp("a");
        assert_eq!(generations.stamp("a"), stamp);
        generations.changed("a");
        assert_ne!(generations.stamp("a"), stamp, "its key changed");
        let stamp = generations.stamp("a");
        generations.changed_everything();
        assert_ne!(generations.stamp("a"), stamp, "everything changed");
        let stamp = generations.stamp("a");
        generations.disable();
        assert!(!generations.is_enabled());
        generations.enable();
        assert_ne!(generations.stamp("a"), stamp, "nothing from before turning on again");
    }
}
