//! Tells WatchRun's streams when their run has new events, so that an idle watch costs the
//! database nothing. One hub per process, fed by whatever hears of committed events (on
//! PostgreSQL, one listening connection for the whole process: see `event_feed`; on SQLite, the
//! repository, after its own commits) and fanned out to the watchers of each run.
//!
//! An announcement says only "this run has new events": the watcher reads them from the
//! database, so an announcement that arrives twice, or for events already read, costs one read
//! and changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use uuid::Uuid;

use crate::storage::runs::RunAnnouncer;

/// The runs being watched in this process, each with a counter of its announcements.
#[derive(Default)]
pub struct RunEvents {
    /// A run is here while at least one watcher holds a [`RunSubscription`] to it.
    runs: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
}

impl RunEvents {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn runs(&self) -> MutexGuard<'_, HashMap<Uuid, watch::Sender<u64>>> {
        // A panic elsewhere while holding the lock leaves the map whole: keep using it.
        self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A watcher's subscription to `run`'s announcements, from now on.
    pub fn subscribe(self: &Arc<Self>, run: Uuid) -> RunSubscription {
        let receiver = self.runs().entry(run).or_insert_with(|| watch::channel(0).0).subscribe();
        RunSubscription { hub: self.clone(), run, receiver: Some(receiver) }
    }

    /// `run` has new committed events: wakes its watchers in this process.
    pub fn announce(&self, run: Uuid) {
        if let Some(sender) = self.runs().get(&run) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every watcher to read its run again: announcements may have been missed (the
    /// listening connection was down), or cannot say which runs they concern.
    pub fn announce_all(&self) {
        for sender in self.runs().values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// How many runs have watchers here.
    pub fn watched_runs(&self) -> usize {
        self.runs().len()
    }
}

/// One watcher's hold on its run's announcements. The run leaves the hub with its last watcher.
pub struct RunSubscription {
    hub: Arc<RunEvents>,
    run: Uuid,
    /// Always `Some` until dropped.
    receiver: Option<watch::Receiver<u64>>,
}

impl RunSubscription {
    /// Marks every announcement so far as seen. Call it before reading the run's events: an
    /// announcement of events committed after that read then wakes [`Self::announced`].
    pub fn seen(&mut self) {
        if let Some(receiver) = &mut self.receiver {
            receiver.borrow_and_update();
        }
    }

    /// Waits for an announcement not yet seen.
    pub async fn announced(&mut self) {
        match &mut self.receiver {
            // The sender lives in the hub as long as this receiver does: it cannot fail.
            Some(receiver) => {
                let _ = receiver.changed().await;
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for RunSubscription {
    fn drop(&mut self) {
        let mut runs = self.hub.runs();
        // Under the lock, so that no subscribe races the check.
        drop(self.receiver.take());
        if runs.get(&self.run).is_some_and(|sender| sender.receiver_count() == 0) {
            runs.remove(&self.run);
        }
    }
}

impl RunAnnouncer for RunEvents {
    fn announce(&self, run: Uuid) {
        RunEvents::announce(self, run);
    }

    fn announce_all(&self) {
        RunEvents::announce_all(self);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(subscription: &mut RunSubscription) -> bool {
        tokio::time::timeout(Duration::from_millis(50), subscription.announced()).await.is_ok()
    }

    #[tokio::test]
    async fn an_announcement_wakes_the_runs_watchers_even_when_it_comes_before_they_wait() {
        let hub = RunEvents::new();
        let (run, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mut first = hub.subscribe(run);
        let mut second = hub.subscribe(run);
        first.seen();
        second.seen();
        assert!(!woken(&mut first).await, "nothing announced yet");

        hub.announce(other);
        assert!(!woken(&mut first).await, "another run's announcement");
        // Announced between a watcher's read and its wait: not lost.
        hub.announce(run);
        assert!(woken(&mut first).await);
        assert!(woken(&mut second).await);
        first.seen();
        assert!(!woken(&mut first).await, "seen");

        hub.announce_all();
        assert!(woken(&mut first).await);
    }

    #[tokio::test]
    async fn a_run_leaves_the_hub_with_its_last_watcher() {
        let hub = RunEvents::new();
        let run = Uuid::new_v4();
        let first = hub.subscribe(run);
        let second = hub.subscribe(run);
        assert_eq!(hub.watched_runs(), 1);
        drop(first);
        assert_eq!(hub.watched_runs(), 1);
        drop(second);
        assert_eq!(hub.watched_runs(), 0);
        hub.announce(run);
        let _again = hub.subscribe(run);
        assert_eq!(hub.watched_runs(), 1);
    }
}
