//! `--langflow-url`, an agent with a model: ExecuteAgent and StreamExecuteAgent through the real
//! Langflow and a fake OpenAI-compatible model on loopback (the test suite's, shared by path),
//! against running and streaming the agent's flow directly with as many callers. What the
//! services add is the difference: runs/s, and the time to the first streamed chunk.
//!
//! The Langflow must let the model's loopback address through and hold the fake's key as
//! `ENGARDE_TEST_MODEL_KEY`: `scripts/langflow` starts it so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use engarde::proto::agent::v1 as apb;
use engarde::proto::agent::v1::execution_service_client::ExecutionServiceClient;
use futures::StreamExt as _;
use serde_json::json;

use super::Ctx;
use super::execute::{Deployed, deployed_agent, run_flow_directly, start_agent_service};
use super::load::{self, AsTenant};
use super::procs::Service;
use super::stats::{Samples, Summary};

#[path = "../../../e2e/fake_model.rs"]
#[allow(dead_code)] // the tests use more of it than the benchmark
mod fake_model;

use fake_model::{Behaviour, FakeModel, TEST_MODEL_KEY_VAR};

/// Streams timed one at a time, each way.
const STREAMS: usize = 30;

pub struct Measured {
    /// ExecuteAgent, closed loop, in two halves interleaved with the direct runs.
    pub through_service: [Summary; 2],
    /// The same flow run directly, closed loop, likewise.
    pub direct: [Summary; 2],
    /// StreamExecuteAgent: from the call to its first chunk of text.
    pub first_chunk_service: Summary,
    /// The flow streamed directly: from the request to its first token event.
    pub first_chunk_direct: Summary,
}

pub async fn run(
    ctx: &Ctx,
    workflow_addr: SocketAddr,
    database_url: &str,
    langflow_url: &str,
    load: load::LoadSpec,
) -> anyhow::Result<Measured> {
    let fake = FakeModel::start().await;
    fake.set(Behaviour::Answer { chunk_delay: Duration::ZERO });
    let agent = start_agent_service(ctx, workflow_addr, database_url, langflow_url, "agent_model", &[]).await?;
    let result = measure(ctx, workflow_addr, &agent, langflow_url, &fake, load).await;
    agent.stop().await;
    result
}

async fn measure(
    ctx: &Ctx,
    workflow_addr: SocketAddr,
    agent: &Service,
    langflow_url: &str,
    fake: &FakeModel,
    load: load::LoadSpec,
) -> anyhow::Result<Measured> {
    let model = apb::ModelSettings {
        provider: "OpenAI".into(),
        model_name: "fake-gpt".into(),
        base_url: fake.base_url(),
        api_key_ref: TEST_MODEL_KEY_VAR.into(),
        system_message: "Be brief.".into(),
        ..Default::default()
    };
    let overrides = apb::AgentOverrides {
        configuration: Some(apb::AgentConfig { model: Some(model), ..Default::default() }),
        ..Default::default()
    };
    let Deployed { tenant, agent_channels, made, .. } =
        deployed_agent(ctx, workflow_addr, agent, "bench-model", Some(overrides)).await?;
    let request = apb::ExecuteAgentRequest { agent_id: made.id.clone(), input: "Say ok".into(), ..Default::default() };
    let mut executions = ExecutionServiceClient::with_interceptor(agent_channels[0].clone(), tenant.clone());
    let first = executions.execute_agent(request.clone()).await.context("the first ExecuteAgent")?.into_inner();
    if first.execution.as_ref().is_none_or(|e| e.token_usage.is_none()) {
        bail!("the first execution reported no model usage: is the model reached? {first:?}");
    }

    let clients: Arc<Vec<_>> = Arc::new(
        agent_channels.iter().map(|c| ExecutionServiceClient::with_interceptor(c.clone(), tenant.clone())).collect(),
    );
    let execute = {
        let (clients, request) = (clients.clone(), request.clone());
        move |task: usize| {
            let mut client = clients[task % clients.len()].clone();
            let request = request.clone();
            async move { client.execute_agent(request).await.map(drop) }
        }
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(load.concurrency)
        .timeout(load::CALL_TIMEOUT)
        .build()
        .context("HTTP client")?;
    let url = Arc::new(format!("{langflow_url}/api/v1/run/{}", made.langflow_workflow_id));
    let body = Arc::new(
        json!({"input_value": "Say ok", "input_type": "chat", "output_type": "chat", "session_id": "", "tweaks": {}}),
    );
    let run_directly = {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        move |_: usize| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            async move { run_flow_directly(&http, &url, &body).await }
        }
    };
    // Interleaved, so that both see the same machine: half the window each, twice.
    let half = load::LoadSpec { duration: load.duration / 2, ..load };
    let service_1 = load::closed_loop(half, execute.clone()).await;
    let direct_1 = load::closed_loop(half, run_directly.clone()).await;
    let service_2 = load::closed_loop(half, execute).await;
    let direct_2 = load::closed_loop(half, run_directly).await;

    // The first chunk: the model now takes 5 ms per chunk, so that its first one comes well
    // before its last; one stream at a time, alternating.
    fake.set(Behaviour::Answer { chunk_delay: Duration::from_millis(5) });
    let mut service = Samples::default();
    let mut straight = Samples::default();
    let stream_url = format!("{url}?stream=true");
    for _ in 0..STREAMS {
        match first_chunk_through_service(&clients[0], &request).await {
            Ok(d) => service.record(d),
            Err(e) => service.error(e),
        }
        match first_chunk_direct(&http, &stream_url, &body).await {
            Ok(d) => straight.record(d),
            Err(e) => straight.error(e),
        }
    }
    Ok(Measured {
        through_service: [service_1, service_2],
        direct: [direct_1, direct_2],
        first_chunk_service: service.summarize(Duration::ZERO),
        first_chunk_direct: straight.summarize(Duration::ZERO),
    })
}

/// The calls per second of runs taken together.
pub fn rps(runs: &[Summary]) -> f64 {
    let calls: u64 = runs.iter().map(|r| r.ok).sum();
    let secs: f64 = runs.iter().map(|r| r.window.as_secs_f64()).sum();
    if secs > 0.0 { calls as f64 / secs } else { 0.0 }
}

type Client =
    ExecutionServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AsTenant>>;

async fn first_chunk_through_service(client: &Client, request: &apb::ExecuteAgentRequest) -> Result<Duration, String> {
    let mut client = client.clone();
    let started = Instant::now();
    let mut stream =
        client.stream_execute_agent(request.clone()).await.map_err(|s| format!("{:?}", s.code()))?.into_inner();
    let mut first = None;
    while let Some(event) = stream.message().await.map_err(|s| format!("{:?}", s.code()))? {
        if first.is_none() && matches!(event.event, Some(apb::execution_event::Event::OutputText(_))) {
            first = Some(started.elapsed());
        }
    }
    first.ok_or_else(|| "no text".to_owned())
}

async fn first_chunk_direct(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> Result<Duration, String> {
    let started = Instant::now();
    let response = http.post(url).json(body).send().await.map_err(|e| format!("HTTP: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut bytes = response.bytes_stream();
    let mut seen = Vec::new();
    let mut first = None;
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.map_err(|e| format!("HTTP body: {e}"))?;
        seen.extend_from_slice(&chunk);
        if first.is_none() && String::from_utf8_lossy(&seen).contains("\"event\": \"token\", \"data\": {\"chunk\": \"F")
        {
            first = Some(started.elapsed());
        }
    }
    first.ok_or_else(|| "no token".to_owned())
}
