//! agent-service killed (SIGKILL) at random moments while clients make seeded random changes,
//! each with a request id and retried until it is answered: afterwards the store must match a
//! model of what was acknowledged — nothing lost, nothing duplicated. Likewise for a burst of
//! executions: each acknowledged one recorded, every one counted once, here and upstream.
//!
//! CHAOS_CYCLES sets the number of kills (default 20); CHAOS_SEED the seed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use engarde::proto::agent::v1::execution_service_client::ExecutionServiceClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tonic::Code;

use crate::agents_execution::{active_agent, all_executions, workflow_counts_reach};
use crate::both_backends;
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;

/// What the clients were told: the agents that exist and the tone each was last given.
#[derive(Default, Debug)]
struct Model {
    agents: BTreeMap<String, Option<String>>,
    deleted: Vec<String>,
}

/// Retries `call` (same request, same request id) until the service answers it definitively.
async fn until_answered<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted) => {
                assert!(tokio::time::Instant::now() < deadline, "never answered: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn client(addr: std::net::SocketAddr) -> AgentClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    AgentServiceClient::with_interceptor(channel, as_tenant("t-chaos"))
}

async fn worker(worker: usize, seed: u64, addr: std::net::SocketAddr, model: Arc<Mutex<Model>>, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (worker as u64) << 32);
    let mut agents = client(addr).await;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let mine: Vec<String> = {
            let m = model.lock().await;
            m.agents.keys().filter(|id| id.starts_with(&format!("{worker}:"))).cloned().collect()
        };
        let choice = rng.random_range(0..10);
        if mine.is_empty() || choice < 5 {
            let request = pb::CreateAgentRequest {
                name: format!("w{worker}-n{n}"),
                agent_type: pb::AgentType::ContentGeneration as i32,
                request_id: format!("create-{worker}-{n}"),
                ..Default::default()
            };
            let created = until_answered(|| {
                let mut c = agents.clone();
                let r = request.clone();
                async move { c.create_agent(r).await }
            })
            .await
            .expect("create answered OK");
            model.lock().await.agents.insert(format!("{worker}:{}", created.into_inner().id), None);
        } else if choice < 8 {
            let key = &mine[rng.random_range(0..mine.len())];
            let id = key.split_once(':').map(|(_, id)| id.to_owned()).unwrap_or_default();
            let tone = format!("tone-{worker}-{n}");
            let request = pb::UpdateAgentConfigRequest {
                agent_id: id,
                configuration: Some(pb::AgentConfig { tone: tone.clone(), ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["tone".into()] }),
                request_id: format!("tone-{worker}-{n}"),
                ..Default::default()
            };
            until_answered(|| {
                let mut c = agents.clone();
                let r = request.clone();
                async move { c.update_agent_config(r).await }
            })
            .await
            .expect("update answered OK");
            model.lock().await.agents.insert(key.clone(), Some(tone));
        } else {
            let key = &mine[rng.random_range(0..mine.len())];
            let id = key.split_once(':').map(|(_, id)| id.to_owned()).unwrap_or_default();
            let request = pb::DeleteAgentRequest {
                id: id.clone(),
                request_id: format!("delete-{worker}-{n}"),
                ..Default::default()
            };
            until_answered(|| {
                let mut c = agents.clone();
                let r = request.clone();
                async move { c.delete_agent(r).await }
            })
            .await
            .expect("delete answered OK");
            let mut m = model.lock().await;
            m.agents.remove(key);
            m.deleted.push(id);
        }
        if rng.random_bool(0.1) {
            agents = client(addr).await;
        }
    }
}

both_backends!(
    async fn acknowledged_changes_survive_kill_9_at_random_moments(backend) {
        let cycles: usize = std::env::var("CHAOS_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
        let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
        let workflow_db = TestDb::new(backend).await;
        let agent_db = TestDb::new(backend).await;
        let workflow = spawn_workflow_service(&workflow_db, &[]).await;
        // A fixed port, so that clients find the service again after each restart.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let env = [("LISTEN_ADDR", format!("127.0.0.1:{port}"))];
        let mut agent = spawn_agent_service(&agent_db, &workflow.url(), &env).await;
        let addr = agent.addr;

        let model = Arc::new(Mutex::new(Model::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4).map(|w| tokio::spawn(worker(w, seed, addr, model.clone(), stop.clone()))).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..cycles {
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
            agent.kill().await;
            agent = spawn_agent_service(&agent_db, &workflow.url(), &env).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await.expect("worker finished");
        }

        // The store, read back, against the model.
        let mut agents = client(addr).await;
        let mut stored = BTreeMap::new();
        let mut token = String::new();
        loop {
            let page = agents
                .list_agents(pb::ListAgentsRequest { page_size: 200, page_token: token.clone(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            for a in page.agents {
                let tone = a.configuration.map(|c| c.tone).unwrap_or_default();
                assert!(stored.insert(a.id.clone(), (a.name, tone)).is_none(), "listed twice");
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let model = model.lock().await;
        let expected: BTreeMap<String, Option<String>> =
            model.agents.iter().map(|(k, v)| (k.split_once(':').unwrap().1.to_owned(), v.clone())).collect();
        for (id, tone) in &expected {
            let (_, stored_tone) = stored.get(id).unwrap_or_else(|| panic!("acknowledged agent {id} was lost"));
            if let Some(tone) = tone {
                assert_eq!(stored_tone, tone, "agent {id} lost its last acknowledged change");
            }
        }
        for id in &model.deleted {
            assert!(!stored.contains_key(id), "deleted agent {id} came back");
        }
        let names: std::collections::HashSet<_> = stored.values().map(|(n, _)| n.clone()).collect();
        assert_eq!(names.len(), stored.len(), "a retried create made a duplicate");
        assert_eq!(stored.len(), expected.len(), "only acknowledged agents exist");
        assert!(expected.len() + model.deleted.len() > cycles, "the load was real");
    }
);

/// What the executing clients were told: the executions answered SUCCEEDED, and how many
/// distinct requests (request ids) they made.
#[derive(Default, Debug)]
struct Executed {
    acknowledged: Vec<String>,
    requests: usize,
}

fn executions_client(addr: std::net::SocketAddr) -> ExecutionClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    ExecutionServiceClient::with_interceptor(channel, as_tenant(EXEC_TENANT))
}

const EXEC_TENANT: &str = "t-chaos-exec";

/// Executes the agent again and again, each request with its own request id, retried with it
/// while the service is away (a retry is answered the execution it started, or runs it once).
/// A request still unanswered after its retries is given up: it was never acknowledged.
async fn executor(
    worker: usize,
    addr: std::net::SocketAddr,
    agent_id: String,
    seen: Arc<Mutex<Executed>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let request = pb::ExecuteAgentRequest {
            agent_id: agent_id.clone(),
            input: format!("post {worker}-{n}"),
            request_id: format!("exec-{worker}-{n}"),
            ..Default::default()
        };
        seen.lock().await.requests += 1;
        for _ in 0..40 {
            match executions_client(addr).execute_agent(request.clone()).await {
                Ok(answer) => {
                    let execution = answer.into_inner().execution.expect("an execution");
                    assert_eq!(execution.status, pb::ExecutionStatus::Succeeded as i32, "{execution:?}");
                    seen.lock().await.acknowledged.push(execution.id);
                    break;
                }
                // Down, cut off mid-call, still running elsewhere, or recorded as interrupted.
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted | Code::DeadlineExceeded
                    ) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(s) => panic!("execution {}: unexpected {s:?}", request.request_id),
            }
        }
    }
}

both_backends!(
    /// Executions in a burst while agent-service is killed (SIGKILL) at random moments: every
    /// acknowledged execution is recorded SUCCEEDED, each request made one execution at most,
    /// none stays RUNNING, and the agent's and the workflow's counters count each execution
    /// exactly once.
    async fn acknowledged_executions_survive_kill_9_and_are_counted_once(backend) {
        let cycles: usize = std::env::var("CHAOS_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
        let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
        let fake = FakeLangflow::start().await;
        fake.set_delay(Duration::from_millis(20));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let env = [
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("LANGFLOW_URL", fake.url()),
            ("REPORT_INTERVAL_MS", "500".to_owned()),
            // An execution cut off by a kill is failed "interrupted" soon after the restart.
            ("EXECUTION_STALE_AFTER_SECS", "2".to_owned()),
        ];
        let workflow_db = TestDb::new(backend).await;
        let agent_db = TestDb::new(backend).await;
        let workflow = spawn_workflow_service(&workflow_db, &[]).await;
        let agent = spawn_agent_service(&agent_db, &workflow.url(), &env).await;
        let mut app = TestApp { workflow, agent, workflow_db, agent_db };
        let (source, agent) = active_agent(&app, EXEC_TENANT).await;
        let addr = app.agent.addr;

        let seen = Arc::new(Mutex::new(Executed::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> =
            (0..4).map(|w| tokio::spawn(executor(w, addr, agent.id.clone(), seen.clone(), stop.clone()))).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..cycles {
            // Each kill lands in a burst that is making progress, however slow the machine:
            // some execution of this process's life is acknowledged before it dies.
            let before = seen.lock().await.acknowledged.len();
            let progress = seen.clone();
            eventually(Duration::from_secs(60), "an execution acknowledged since the restart", || {
                let progress = progress.clone();
                async move { progress.lock().await.acknowledged.len() > before }
            })
            .await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..300))).await;
            app.agent.kill().await;
            app.agent = spawn_agent_service(&app.agent_db, &app.workflow.url(), &env).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.await.expect("executor finished");
        }

        let seen = seen.lock().await;
        let mut executions = executions_client(addr);
        // Once the interrupted ones are failed, nothing is left RUNNING.
        let recorded = {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let all = all_executions(&mut executions, &agent.id).await;
                if all.iter().all(|e| e.status != pb::ExecutionStatus::Running as i32) {
                    break all;
                }
                assert!(tokio::time::Instant::now() < deadline, "executions left RUNNING");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let succeeded: std::collections::HashSet<&str> = recorded
            .iter()
            .filter(|e| e.status == pb::ExecutionStatus::Succeeded as i32)
            .map(|e| e.id.as_str())
            .collect();
        for id in &seen.acknowledged {
            assert!(succeeded.contains(id.as_str()), "acknowledged execution {id} is not recorded SUCCEEDED");
        }
        assert!(recorded.len() <= seen.requests, "{} executions for {} requests", recorded.len(), seen.requests);
        assert!(seen.acknowledged.len() >= cycles, "the load was real: {} acknowledged", seen.acknowledged.len());

        let total = recorded.len() as i64;
        let successes = succeeded.len() as i64;
        eprintln!(
            "chaos ({cycles} kills, seed {seed}): {} requests, {} acknowledged, {total} executions recorded, {successes} succeeded",
            seen.requests,
            seen.acknowledged.len()
        );
        let mut agents = client_of(addr).await;
        let counted = agents.get_agent(pb::GetAgentRequest { id: agent.id.clone() }).await.unwrap().into_inner();
        assert_eq!((counted.total_executions, counted.successful_executions), (total, successes), "the agent's counters");
        workflow_counts_reach(&app, EXEC_TENANT, &source.id, (total, successes)).await;
    }
);

async fn client_of(addr: std::net::SocketAddr) -> AgentClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("url").connect_lazy();
    AgentServiceClient::with_interceptor(channel, as_tenant(EXEC_TENANT))
}
