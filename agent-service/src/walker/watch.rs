//! WatchRun's stream: the run's stored events from a sequence number, then the new ones as they
//! are written, until the run's final event. It reads the database (every process's workers
//! write there), so it sees a run progress wherever it runs; the run never depends on it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use engarde::kit::error::{ServiceError, ServiceResult};
use futures::Stream;
use uuid::Uuid;

use super::model::{FINAL_EVENTS, RunEvent};
use crate::storage::runs::RunRepository;

/// How often a watcher looks for new events.
const POLL: Duration = Duration::from_millis(200);
/// Events read at once.
const BATCH: i64 = 200;

struct Watch {
    runs: Arc<dyn RunRepository>,
    tenant: String,
    run_id: Uuid,
    next: i64,
    buffer: VecDeque<RunEvent>,
    done: bool,
}

/// The events of the tenant's run from sequence `from` (>= 1) on.
pub fn events(
    runs: Arc<dyn RunRepository>,
    tenant: String,
    run_id: Uuid,
    from: i64,
) -> impl Stream<Item = ServiceResult<RunEvent>> + Send {
    let watch = Watch { runs, tenant, run_id, next: from, buffer: VecDeque::new(), done: false };
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
            // The status first: a run that had ended when it was read has all its events
            // stored (its final event is written with its final status).
            let ended = match w.runs.status(&w.tenant, w.run_id).await {
                Ok(Some(status)) => status.is_final(),
                Ok(None) => {
                    w.done = true;
                    return Some((Err(ServiceError::not_found(format!("run {}", w.run_id))), w));
                }
                Err(e) => {
                    w.done = true;
                    return Some((Err(e), w));
                }
            };
            match w.runs.events(w.run_id, w.next, BATCH).await {
                Ok(events) if events.is_empty() => {
                    if ended {
                        return None;
                    }
                    tokio::time::sleep(POLL).await;
                }
                Ok(events) => w.buffer.extend(events),
                Err(e) => {
                    w.done = true;
                    return Some((Err(e), w));
                }
            }
        }
    })
}
