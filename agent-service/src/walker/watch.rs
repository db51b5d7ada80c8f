//! WatchRun's stream: the run's stored events from a sequence number, then the new ones as they
//! are written, until the run's final event. It reads the database (every process's workers
//! write there), so it sees a run progress wherever it runs; the run never depends on it.
//!
//! Between reads a watcher sleeps until its run is announced (see [`super::run_events`]): an
//! idle watch costs no database work at all. What it may cost otherwise is bounded: open watches
//! are counted per tenant and per process ([`WatchLimits`]), and a watch lasts at most its
//! lifetime, after which the client resumes from the next sequence.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use engarde::kit::error::{ServiceError, ServiceResult};
use futures::Stream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use uuid::Uuid;

use super::model::{FINAL_EVENTS, RunEvent};
use super::run_events::RunSubscription;
use crate::storage::runs::RunRepository;

/// Events read at once.
const BATCH: i64 = 200;

/// Watchers of one process reading the database at once. An event wakes every watcher of its
/// run together (thousands, for a popular run): they take turns here rather than all asking the
/// pool at once, where the last would wait past its acquire timeout and fail UNAVAILABLE.
const READS_AT_ONCE: usize = 4;

/// Why a watch ended before its run did.
#[derive(Debug)]
pub enum WatchEnd {
    Failed(ServiceError),
    /// The watch was open for its whole lifetime; the client resumes with `resume_from`.
    Expired {
        resume_from: i64,
        lifetime: Duration,
    },
}

/// What one watch is allowed, and how long.
#[derive(Debug, Clone, Copy)]
pub struct WatchRules {
    pub lifetime: Duration,
}

/// How many watches are open in this process, in all and per tenant, against their limits.
pub struct WatchLimits {
    per_tenant: usize,
    per_process: usize,
    open: Mutex<OpenWatches>,
    /// Turns at reading the database (see [`READS_AT_ONCE`]).
    reads: Arc<Semaphore>,
}

#[derive(Default)]
struct OpenWatches {
    total: usize,
    by_tenant: HashMap<String, usize>,
}

impl WatchLimits {
    pub fn new(per_tenant: usize, per_process: usize) -> Arc<Self> {
        Arc::new(Self {
            per_tenant,
            per_process,
            open: Mutex::default(),
            reads: Arc::new(Semaphore::new(READS_AT_ONCE)),
        })
    }

    fn open(&self) -> MutexGuard<'_, OpenWatches> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a new watch of `tenant`, or RESOURCE_EXHAUSTED naming the limit it would pass.
    /// The count drops when the permit does (the stream ended, or its client went away).
    pub fn admit(self: &Arc<Self>, tenant: &str) -> ServiceResult<WatchPermit> {
        let mut open = self.open();
        if open.total >= self.per_process {
            return Err(ServiceError::ResourceExhausted(format!(
                "this server has {} watches open, its limit (WATCH_MAX_PER_PROCESS); retry later",
                open.total
            )));
        }
        let mine = open.by_tenant.get(tenant).copied().unwrap_or(0);
        if mine >= self.per_tenant {
            return Err(ServiceError::ResourceExhausted(format!(
                "the tenant has {mine} watches open on this server, its limit (WATCH_MAX_PER_TENANT); \
                 close one, or retry later"
            )));
        }
        open.total += 1;
        *open.by_tenant.entry(tenant.to_owned()).or_default() += 1;
        metrics::gauge!("walker_watches_open").set(open.total as f64);
        Ok(WatchPermit { limits: self.clone(), tenant: tenant.to_owned() })
    }
}

/// One open watch, counted until dropped.
pub struct WatchPermit {
    limits: Arc<WatchLimits>,
    tenant: String,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open();
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.by_tenant.get_mut(&self.tenant) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                open.by_tenant.remove(&self.tenant);
            }
        }
        metrics::gauge!("walker_watches_open").set(open.total as f64);
    }
}

struct Watch {
    runs: Arc<dyn RunRepository>,
    announcements: RunSubscription,
    permit: WatchPermit,
    tenant: String,
    run_id: Uuid,
    next: i64,
    /// Whether the run was found to be the tenant's (its status read): until then, no events
    /// are read without that check.
    tenant_checked: bool,
    buffer: VecDeque<RunEvent>,
    done: bool,
    lifetime: Duration,
    expires: Instant,
}

/// The events of the tenant's run from sequence `from` (>= 1) on, woken by `announcements` (a
/// subscription to this run, taken before the first read) and counted by `permit`.
pub fn events(
    runs: Arc<dyn RunRepository>,
    announcements: RunSubscription,
    permit: WatchPermit,
    rules: WatchRules,
    tenant: String,
    run_id: Uuid,
    from: i64,
) -> impl Stream<Item = Result<RunEvent, WatchEnd>> + Send {
    let watch = Watch {
        runs,
        announcements,
        permit,
        tenant,
        run_id,
        next: from,
        tenant_checked: false,
        buffer: VecDeque::new(),
        done: false,
        lifetime: rules.lifetime,
        expires: Instant::now() + rules.lifetime,
    };
    futures::stream::unfold(watch, |mut w| async move {
        loop {
            if let Some(event) = w.buffer.pop_front() {
                w.next = event.sequence + 1;
                if FINAL_EVENTS.contains(&event.kind.as_str()) {
                    w.done = true;
                }
                return Some((Ok(event), w));
            }
            if w.done {
                return None;
            }
            if Instant::now() >= w.expires {
                w.done = true;
                let end = WatchEnd::Expired { resume_from: w.next, lifetime: w.lifetime };
                return Some((Err(end), w));
            }
            // Seen before reading: events committed after the read are announced anew.
            w.announcements.seen();
            // Never closed, so never an error.
            let turn = w.permit.limits.reads.clone().acquire_owned().await.ok();
            // A woken watcher of a run it has already read for its tenant asks for the new
            // events alone: one query, not two, when thousands wake together. Only when there
            // are none does it read the status, to tell a run that ended (or went) from one
            // that is merely quiet.
            if w.tenant_checked {
                match w.runs.events(w.run_id, w.next, BATCH).await {
                    Ok(events) if !events.is_empty() => {
                        drop(turn);
                        w.buffer.extend(events);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        w.done = true;
                        return Some((Err(WatchEnd::Failed(e)), w));
                    }
                }
            }
            // The status first: a run that had ended when it was read has all its events
            // stored (its final event is written with its final status).
            let ended = match w.runs.status(&w.tenant, w.run_id).await {
                Ok(Some(status)) => status.is_final(),
                Ok(None) => {
                    w.done = true;
                    let gone = ServiceError::not_found(format!("run {}", w.run_id));
                    return Some((Err(WatchEnd::Failed(gone)), w));
                }
                Err(e) => {
                    w.done = true;
                    return Some((Err(WatchEnd::Failed(e)), w));
                }
            };
            w.tenant_checked = true;
            let read = w.runs.events(w.run_id, w.next, BATCH).await;
            drop(turn);
            match read {
                Ok(events) if events.is_empty() => {
                    if ended {
                        return None;
                    }
                    tokio::select! {
                        () = w.announcements.announced() => {}
                        () = tokio::time::sleep_until(w.expires) => {}
                    }
                }
                Ok(events) => w.buffer.extend(events),
                Err(e) => {
                    w.done = true;
                    return Some((Err(WatchEnd::Failed(e)), w));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_counted_per_tenant_and_per_process_until_dropped() {
        let limits = WatchLimits::new(2, 3);
        let a1 = limits.admit("a").unwrap();
        let _a2 = limits.admit("a").unwrap();
        let refused = limits.admit("a").err().unwrap();
        assert!(
            matches!(&refused, ServiceError::ResourceExhausted(m) if m.contains("WATCH_MAX_PER_TENANT")),
            "{refused:?}"
        );
        let _b1 = limits.admit("b").unwrap();
        let refused = limits.admit("c").err().unwrap();
        assert!(
            matches!(&refused, ServiceError::ResourceExhausted(m) if m.contains("WATCH_MAX_PER_PROCESS")),
            "{refused:?}"
        );
        drop(a1);
        let _a3 = limits.admit("a").unwrap();
        assert_eq!(limits.open().by_tenant.len(), 2);
    }
}
