//! Retention: what grows without bound (executions, conversation memory, run events, the
//! answers kept for idempotent retries) is deleted once older than its setting, by a janitor
//! that deletes in small batches with a pause between them: each batch is one short
//! transaction, so locks and WAL stay bounded and traffic never waits behind a purge.
//!
//! Every replica runs its janitor; each batch deletes what is still there, so two replicas
//! purging at once only share the work.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::error::ServiceResult;

/// How the janitor works, the same for every kind of row (both services).
#[derive(Debug, Clone, clap::Args)]
pub struct JanitorSettings {
    /// How often the retention janitor looks for expired rows, in seconds.
    #[arg(long, env = "RETENTION_INTERVAL_SECS", default_value_t = 300)]
    pub retention_interval_secs: u64,
    /// Most rows one purge transaction deletes.
    #[arg(long, env = "RETENTION_BATCH_ROWS", default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub retention_batch_rows: i64,
    /// Pause between two purge transactions, in milliseconds: room for traffic between batches.
    #[arg(long, env = "RETENTION_PAUSE_MS", default_value_t = 50)]
    pub retention_pause_ms: u64,
    /// How long the answers kept for idempotent retries (request_id) live: a retry after that is
    /// a new request. A duration: `30d`, `12h`, `90m`, `45s`.
    #[arg(long, env = "IDEMPOTENCY_RETENTION", default_value = "24h", value_parser = parse_kept)]
    pub idempotency_retention: Duration,
}

/// A retention setting as clap reads it: `None` keeps rows forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keep(pub Option<Duration>);

/// [`parse_retention`], for clap.
pub fn parse_keep(value: &str) -> Result<Keep, String> {
    parse_retention(value).map(Keep)
}

/// A retention setting: `0` (or empty) keeps rows forever; otherwise a whole number and a unit,
/// `d`, `h`, `m` or `s` (`30d`).
pub fn parse_retention(value: &str) -> Result<Option<Duration>, String> {
    let value = value.trim();
    if value.is_empty() || value == "0" {
        return Ok(None);
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("{value:?}: a number and a unit (d, h, m, s), e.g. 30d, or 0 to keep forever")),
    };
    let amount: u64 = digits
        .parse()
        .ok()
        .filter(|amount| *amount > 0 && digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("{value:?}: a positive whole number before the unit, e.g. 30d"))?;
    let seconds = amount.checked_mul(seconds).filter(|s| *s <= 100 * 365 * 86_400).ok_or("at most 100 years")?;
    Ok(Some(Duration::from_secs(seconds)))
}

/// A retention that must keep rows for some time (not forever, not zero).
fn parse_kept(value: &str) -> Result<Duration, String> {
    parse_retention(value)?.ok_or_else(|| "must be a duration such as 24h".to_owned())
}

/// Deletes up to `limit` rows older than the cutoff; answers how many it deleted.
pub type Purge =
    Arc<dyn Fn(DateTime<Utc>, i64) -> Pin<Box<dyn Future<Output = ServiceResult<u64>> + Send>> + Send + Sync>;

/// One kind of row the janitor keeps for `keep`.
pub struct Expiring {
    /// The rows, as logs and the `retention_deleted_rows_total` metric name them.
    pub what: &'static str,
    pub keep: Duration,
    pub purge: Purge,
}

impl Expiring {
    pub fn new<F, Fut>(what: &'static str, keep: Duration, purge: F) -> Self
    where
        F: Fn(DateTime<Utc>, i64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ServiceResult<u64>> + Send + 'static,
    {
        Self { what, keep, purge: Arc::new(move |cutoff, limit| Box::pin(purge(cutoff, limit))) }
    }
}

/// Runs the janitor over `kinds` for as long as the process lives.
pub fn spawn_janitor(settings: &JanitorSettings, kinds: Vec<Expiring>) {
    let interval = Duration::from_secs(settings.retention_interval_secs.max(1));
    let pause = Duration::from_millis(settings.retention_pause_ms);
    let batch = settings.retention_batch_rows;
    tokio::spawn(async move {
        loop {
            for kind in &kinds {
                purge_expired(kind, batch, pause).await;
            }
            tokio::time::sleep(interval).await;
        }
    });
}

/// Deletes every row of `kind` past its retention, `batch` rows a transaction; answers how
/// many. A failure (the database down) stops this round: the next one goes on.
pub async fn purge_expired(kind: &Expiring, batch: i64, pause: Duration) -> u64 {
    let Ok(keep) = chrono::Duration::from_std(kind.keep) else {
        return 0;
    };
    let cutoff = Utc::now() - keep;
    let mut total = 0;
    loop {
        match (kind.purge)(cutoff, batch).await {
            Ok(deleted) => {
                total += deleted;
                if deleted > 0 {
                    metrics::counter!("retention_deleted_rows_total", "rows" => kind.what).increment(deleted);
                }
                if deleted < batch as u64 {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                tracing::warn!(rows = kind.what, error = %e, "retention: a purge failed; retrying next round");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(rows = kind.what, deleted = total, %cutoff, "retention: deleted expired rows");
    }
    total
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn retentions_parse() {
        assert_eq!(parse_retention("0"), Ok(None));
        assert_eq!(parse_retention(""), Ok(None));
        assert_eq!(parse_retention("30d"), Ok(Some(Duration::from_secs(30 * 86_400))));
        assert_eq!(parse_retention("12h"), Ok(Some(Duration::from_secs(12 * 3_600))));
        assert_eq!(parse_retention("90m"), Ok(Some(Duration::from_secs(90 * 60))));
        assert_eq!(parse_retention("2s"), Ok(Some(Duration::from_secs(2))));
        for bad in ["30", "d", "0d", "-1d", "+1d", "1.5d", "30 days", "99999999999d", "1w"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
        assert!(parse_kept("0").is_err());
    }

    #[tokio::test]
    async fn a_purge_goes_batch_by_batch_until_a_short_one() {
        let left = Arc::new(Mutex::new(1_250u64));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let kind = {
            let (left, calls) = (left.clone(), calls.clone());
            Expiring::new("things", Duration::from_secs(60), move |cutoff, limit| {
                let (left, calls) = (left.clone(), calls.clone());
                async move {
                    assert!(cutoff < Utc::now() - chrono::Duration::seconds(59));
                    let mut left = left.lock().unwrap();
                    let deleted = (*left).min(limit as u64);
                    *left -= deleted;
                    calls.lock().unwrap().push(deleted);
                    Ok(deleted)
                }
            })
        };
        assert_eq!(purge_expired(&kind, 500, Duration::from_millis(1)).await, 1_250);
        assert_eq!(*calls.lock().unwrap(), [500, 500, 250]);
        assert_eq!(purge_expired(&kind, 500, Duration::from_millis(1)).await, 0);
    }
}
