//! The scheduler at scale: every SCHEDULER_INTERVAL_MS each agent-service reads every scheduled
//! agent (with its workflow snapshot) and works out which ticks are due. Timed here as the
//! service reports it (`agent_scheduler_pass_seconds`, scraped from its metrics before and after
//! a window in which nothing else calls it), with the CPU the otherwise idle process spends,
//! beside the pass's statement run with psql.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::direct;
use crate::bench::procs::{self, Service};
use crate::bench::stats::Summary;

/// The pass's statement, as agent-service's storage (schedules.rs) sends it.
const SCHEDULED_AGENTS: &str = "SELECT tenant_id, id, source_workflow_id, updated_at, version, source_workflow_config, \
     langflow_workflow_id FROM agents \
     WHERE status = 'active' AND scheduled = TRUE AND source_workflow_config IS NOT NULL";

/// Times of the statement run with psql.
const DIRECT_CALLS: usize = 20;

/// What the passes of one window cost.
pub struct Passes {
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
    let before = Scrape::of(metrics).await?;
    let cpu_before = procs::cpu_time(ag.pid).context("agent-service's CPU time")?;
    tokio::time::sleep(window).await;
    let after = Scrape::of(metrics).await?;
    let cpu = procs::cpu_time(ag.pid).context("agent-service's CPU time")?.saturating_sub(cpu_before);
    let passes = after.passes.saturating_sub(before.passes);
    anyhow::ensure!(passes > 0, "no scheduler pass in {} s", window.as_secs());
    let mean = Duration::from_secs_f64((after.seconds - before.seconds).max(0.0) / passes as f64);
    let direct = direct::run(database_url, &vec![(SCHEDULED_AGENTS.to_owned(), Vec::new())], DIRECT_CALLS, dir)?;
    Ok(Passes { passes, mean, agents: after.agents, cpu_share: cpu.as_secs_f64() / window.as_secs_f64(), direct })
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
