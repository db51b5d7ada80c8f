//! The review janitor: a review nobody answers gets its default action at its deadline, so no
//! run waits forever. Runs in every process; the database decides which one applies each.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::now;
use crate::storage::runs::RunRepository;

/// How often deadlines are looked at.
const INTERVAL: Duration = Duration::from_secs(2);
/// How many reviews one pass expires at most.
const BATCH: i64 = 100;

pub fn spawn_janitor(runs: Arc<dyn RunRepository>) {
    tokio::spawn(async move {
        loop {
            match runs.expire_reviews(now(), BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "reviews past their deadline got their default action"),
                Err(e) => tracing::warn!(error = %e, "could not expire reviews"),
            }
            tokio::time::sleep(INTERVAL).await;
        }
    });
}
