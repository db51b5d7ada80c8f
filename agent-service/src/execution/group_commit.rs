//! Group commit of execution finishes: the finishes that arrive together share one transaction
//! and one durable commit.
//!
//! Every finish is queued to one worker. The worker takes the first finish waiting and, without
//! sleeping, every other one waiting behind it (up to `FINISH_BATCH_MAX`), records them all in
//! one transaction ([`ExecutionRepository::finish_together`]) and answers each caller only once
//! that transaction has committed: an acknowledged execution is on disk, as before. One call at
//! a time makes groups of one, which take the one-statement finish of before (nothing added but
//! the hand-over to the worker); under load, the finishes that arrive while a group commits form
//! the next group, so the commits (and their waits for the disk) are shared.
//!
//! Executions of one agent no longer queue on the agent's row one commit each: a group adds up
//! its executions per agent ([`Tally`](crate::domain::execution::Tally)) and updates each agent's
//! row once, with the counts summed and the running mean of latencies combined weighted by the
//! counts, which equals recording them one by one. The row is locked for one commit per group,
//! not one per execution.
//!
//! A finish that fails must not fail the others of its group: an execution no longer running
//! (the janitor finished it) is simply `None` within the group; when the group's transaction
//! fails for any reason but an unreachable database (a member's statement refused, a deadlock
//! with another replica's group), nothing of it was written and each member is recorded again
//! alone, so only the one at fault fails. An unreachable database answers every member
//! UNAVAILABLE, as a lone finish would be (callers retry). At shutdown the worker records what
//! is queued before the database closes.

use std::sync::{Arc, Mutex, PoisonError};

use engarde::kit::error::{ServiceError, ServiceResult};
use engarde::kit::trace::{self, TraceContext};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::domain::execution::{Finish, Finished};
use crate::storage::ExecutionRepository;

/// A finish waiting for its group, and where to answer it.
struct Queued {
    finish: Finish,
    answer: oneshot::Sender<ServiceResult<Option<Finished>>>,
    /// The caller's trace: a finish recorded alone is a span of it; a group is a span of its
    /// first member's.
    trace: Option<TraceContext>,
}

/// The handle of the group-commit worker; clones share it.
#[derive(Clone)]
pub struct FinishCommitter {
    /// Unbounded: every finish queued has a caller waiting for its answer, so the queue is
    /// bounded by the executions in flight (themselves bounded by the server's call limit).
    queue: mpsc::UnboundedSender<Queued>,
    stop: Arc<Notify>,
    worker: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl FinishCommitter {
    /// Starts the worker, which records groups of at most `batch_max` finishes.
    pub fn start(executions: Arc<dyn ExecutionRepository>, batch_max: usize) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        let stop = Arc::new(Notify::new());
        let worker = tokio::spawn(work(executions, queued, stop.clone(), batch_max.max(1)));
        Self { queue, stop, worker: Arc::new(Mutex::new(Some(worker))) }
    }

    /// Records `finish` with whatever else is being finished; answers once it is committed
    /// (see [`ExecutionRepository::finish`] for the answer).
    pub async fn finish(&self, finish: Finish) -> ServiceResult<Option<Finished>> {
        let (answer, answered) = oneshot::channel();
        if self.queue.send(Queued { finish, answer, trace: trace::current() }).is_err() {
            return Err(shutting_down());
        }
        answered.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Takes no more finishes, records those queued, and returns when the worker is done.
    pub async fn close(&self) {
        self.stop.notify_one();
        let worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(worker) = worker
            && let Err(e) = worker.await
        {
            tracing::error!(error = %e, "the execution group-commit worker failed");
        }
    }
}

fn shutting_down() -> ServiceError {
    ServiceError::Unavailable("agent-service is shutting down: the execution was not recorded".into())
}

async fn work(
    executions: Arc<dyn ExecutionRepository>,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    stop: Arc<Notify>,
    batch_max: usize,
) {
    let mut stopping = false;
    loop {
        let first = tokio::select! {
            biased;
            next = queued.recv() => match next {
                Some(first) => first,
                // Closed and drained.
                None => break,
            },
            () = stop.notified(), if !stopping => {
                // No more finishes are taken; the loop goes on until the queue is empty.
                stopping = true;
                queued.close();
                continue;
            }
        };
        let mut group = vec![first];
        while group.len() < batch_max
            && let Ok(next) = queued.try_recv()
        {
            group.push(next);
        }
        commit(executions.as_ref(), group).await;
    }
}

/// Records one group and answers its members.
async fn commit(executions: &dyn ExecutionRepository, group: Vec<Queued>) {
    let size = group.len();
    metrics::histogram!("agent_execution_finish_batch_size").record(size as f64);
    metrics::counter!("agent_execution_finishes_total").increment(size as u64);
    let first_trace = group[0].trace;
    let (finishes, answers): (Vec<Finish>, Vec<_>) = group.into_iter().map(|q| (q.finish, (q.answer, q.trace))).unzip();
    if size == 1 {
        metrics::counter!("agent_execution_finish_batches_total", "outcome" => "alone").increment(1);
        // Alone, it takes the one-statement finish (one round trip on PostgreSQL).
        return answer_alone(executions, finishes, answers).await;
    }
    match trace::within(first_trace, executions.finish_together(&finishes)).await {
        Ok(done) => {
            metrics::counter!("agent_execution_finish_batches_total", "outcome" => "committed").increment(1);
            for ((answer, _), finished) in answers.into_iter().zip(done) {
                // A caller that went away needs no answer: its execution is recorded all the same.
                let _ = answer.send(Ok(finished));
            }
        }
        Err(ServiceError::Unavailable(reason)) => {
            metrics::counter!("agent_execution_finish_batches_total", "outcome" => "unavailable").increment(1);
            for (answer, _) in answers {
                let _ = answer.send(Err(ServiceError::Unavailable(reason.clone())));
            }
        }
        Err(e) => {
            metrics::counter!("agent_execution_finish_batches_total", "outcome" => "one_by_one").increment(1);
            tracing::warn!(error = %e, size, "a group of execution finishes failed; recording each alone");
            answer_alone(executions, finishes, answers).await;
        }
    }
}

/// Where to answer a finish, and its caller's trace.
type Answer = (oneshot::Sender<ServiceResult<Option<Finished>>>, Option<TraceContext>);

/// Records each finish in a transaction of its own, in its caller's trace.
async fn answer_alone(executions: &dyn ExecutionRepository, finishes: Vec<Finish>, answers: Vec<Answer>) {
    for (finish, (answer, trace)) in finishes.iter().zip(answers) {
        let _ = answer.send(trace::within(trace, executions.finish(finish)).await);
    }
}
