//! The scheduler at scale: every SCHEDULER_INTERVAL_MS each agent-service reads the scheduled
//! agents whose tick is due (or not worked out) and handles their ticks. Timed here as the
//! service reports it (`agent_scheduler_pass_seconds`, scraped from its metrics before and after
//! a window in which nothing else calls it), with the CPU the otherwise idle process spends: a
//! cold pass (every agent's next tick cleared, as after the upgrade) and then the steady ones,
//! beside the SELECT of every scheduled agent run with psql.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::direct;
use crate::bench::procs::{self, Service};
use crate::bench::stats::Summary;

/// Every scheduled agent with its snapshot: what each pass read before next ticks were kept
/// (and what a cold pass, with every next tick to work out, still reads).
const SCHEDULED_AGENTS: &str = "SELECT tenant_id, id, source_workflow_id, updated_at, version, source_workflow_config, \
     langflow_workflow_id FROM agents \
     WHERE status = 'active' AND scheduled = TRUE AND source_workflow_config IS NOT NULL";

/// Times of the statement run with psql.
const DIRECT_CALLS: usize = 20;

/// What the passes of one window cost.
pub struct Passes {
    /// The pass that worked out every agent's next tick (as after the upgrade that brought
    /// next ticks, or with every agent just activated), and how many agents it read.
    pub cold: Duration,
    pub cold_agents: u64,
    /// Passes in the window, and their mean as the service timed them.
    pub passes: u64,
    pub mean: Duration,
    /// Scheduled agents each pass looked at.
    pub agents: u64,
    /// The process's CPU over the window, as a share of one core.
    pub cpu_share: f64,
    /// The pass's statement with psql.
    pub direct: Summary,
}

/// The scheduler of agent-service `ag`, whose metrics are served on `metrics`, over `window`.
pub async fn measure(
    ag: &Service,
    metrics: SocketAddr,
    database_url: &str,
    window: Duration,
    dir: &Path,
) -> anyhow::Result<Passes> {
    let (cold, (cold_agents, cold_passes)) = cold_pass(metrics, database_url).await?;
    let before = Scrape::of(metrics).await?;
    let cpu_before = procs::cpu_time(ag.pid).context("agent-service's CPU time")?;
    tokio::time::sleep(window).await;
    let after = Scrape::of(metrics).await?;
    let cpu = procs::cpu_time(ag.pid).context("agent-service's CPU time")?.saturating_sub(cpu_before);
    let passes = after.passes.saturating_sub(before.passes);
    anyhow::ensure!(passes > 0, "no scheduler pass in {} s", window.as_secs());
    let mean = Duration::from_secs_f64((after.seconds - before.seconds).max(0.0) / passes as f64);
    let direct = direct::run(database_url, &vec![(SCHEDULED_AGENTS.to_owned(), Vec::new())], DIRECT_CALLS, dir)?;
    // The cold pass's share of the passes that ran while it was waited for; the others cost
    // what the window's passes cost.
    let others = mean * u32::try_from(cold_passes.saturating_sub(1)).unwrap_or(0);
    Ok(Passes {
        cold: cold.saturating_sub(others),
        cold_agents,
        passes,
        mean,
        agents: after.agents,
        cpu_share: cpu.as_secs_f64() / window.as_secs_f64(),
        direct,
    })
}

/// Clears every agent's next tick and waits for a pass to work them all out again: answers the
/// time the passes meanwhile took, and (the agents that pass read, the passes run).
async fn cold_pass(metrics: SocketAddr, database_url: &str) -> anyhow::Result<(Duration, (u64, u64))> {
    use sqlx::Connection as _;
    let mut conn = sqlx::postgres::PgConnection::connect(database_url).await?;
    let before = Scrape::of(metrics).await?;
    let cleared = sqlx::query("UPDATE agent.agents SET next_tick_at = NULL WHERE scheduled")
        .execute(&mut conn)
        .await
        .context("clearing the next ticks")?
        .rows_affected();
    let unworked =
        "SELECT EXISTS (SELECT 1 FROM agent.agents WHERE scheduled AND status = 'active' AND next_tick_at IS NULL)";
    let what = "a pass working out every next tick";
    super::until_none(&mut conn, unworked, Duration::from_millis(50), Duration::from_secs(120), what).await?;
    let after = Scrape::of(metrics).await?;
    let seconds = (after.seconds - before.seconds).max(0.0);
    Ok((Duration::from_secs_f64(seconds), (cleared, after.passes.saturating_sub(before.passes))))
}

/// The scheduler's figures in one scrape of `/metrics`.
struct Scrape {
    passes: u64,
    seconds: f64,
    agents: u64,
}

impl Scrape {
    async fn of(metrics: SocketAddr) -> anyhow::Result<Self> {
        let text = reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("scraping http://{metrics}/metrics"))?
            .text()
            .await?;
        Ok(Self {
            passes: sample(&text, "agent_scheduler_pass_seconds_count").unwrap_or(0.0) as u64,
            seconds: sample(&text, "agent_scheduler_pass_seconds_sum").unwrap_or(0.0),
            agents: sample(&text, "agent_scheduler_agents_read").unwrap_or(0.0) as u64,
        })
    }
}

/// The value of the unlabelled sample `name` in Prometheus' text format.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_read_by_its_exact_name() {
        let text = "# TYPE agent_scheduler_pass_seconds histogram\n\
                    agent_scheduler_pass_seconds_bucket{le=\"0.005\"} 3\n\
                    agent_scheduler_pass_seconds_sum 0.0125\n\
                    agent_scheduler_pass_seconds_count 4\n\
                    agent_scheduler_agents_read_total 9\n\
                    agent_scheduler_agents_read 1000\n";
        assert_eq!(sample(text, "agent_scheduler_pass_seconds_count"), Some(4.0));
        assert_eq!(sample(text, "agent_scheduler_pass_seconds_sum"), Some(0.0125));
        assert_eq!(sample(text, "agent_scheduler_agents_read"), Some(1000.0));
        assert_eq!(sample(text, "agent_scheduler_pass_seconds"), None);
    }
}
