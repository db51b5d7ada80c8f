//! agent-service killed (SIGKILL) at random moments while clients make seeded random changes,
//! each with a request id and retried until it is answered: afterwards the store must match a
//! model of what was acknowledged — nothing lost, nothing duplicated.
//!
//! CHAOS_CYCLES sets the number of kills (default 20); CHAOS_SEED the seed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use engarde::proto::agent::v1 as pb;
use engarde::proto::agent::v1::agent_service_client::AgentServiceClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tonic::Code;

use crate::both_backends;
use crate::helpers::*;

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
