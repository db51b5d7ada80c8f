//! The limits that protect a server from its callers, and from load: health never waits behind
//! business calls, sockets that never speak are closed, connections beyond MAX_CONNECTIONS are
//! refused while the open ones keep working, and one connection cannot open streams without
//! bound (nor keep the memory they took).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::agents_execution::{active_agent, execute, spawn_with_langflow};
use crate::helpers::*;
use crate::langflow_support::FakeLangflow;

const SERVING: i32 = ServingStatus::Serving as i32;

/// Health/Check of `service` with a deadline of `within`.
async fn check(health: &mut HealthClient<Channel>, service: &str, within: Duration) -> Result<i32, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest { service: service.into() });
    request.set_timeout(within);
    Ok(health.check(request).await?.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_business_calls_saturate_the_concurrency_limit() {
    let fake = FakeLangflow::start().await;
    // The slow calls must outlast the test: no server-side deadline cuts them short.
    let limits = [("MAX_CONCURRENT_RPCS", "2".to_owned()), ("RPC_TIMEOUT_SECS", "600".to_owned())];
    let app = spawn_with_langflow(Backend::Sqlite, &fake.url(), &limits).await;
    let (_, agent) = active_agent(&app, "tenant-a").await;

    // Two slow executions take both permits; a third waits for one.
    fake.set_delay(Duration::from_secs(120));
    let mut slow = Vec::new();
    for i in 0..3 {
        let mut executions = app.executions("tenant-a").await;
        let request = execute(&agent.id, &format!("slow {i}"), "");
        slow.push(tokio::spawn(async move { executions.execute_agent(request).await }));
    }
    eventually(Duration::from_secs(30), "two executions waiting on Langflow", || async { fake.runs() >= 2 }).await;
    let mut agents = app.agents("tenant-a").await;
    let mut waiting = tonic::Request::new(engarde::proto::agent::v1::GetAgentRequest { id: agent.id.clone() });
    waiting.set_timeout(Duration::from_millis(500));
    // Business calls do wait: the limit is reached (the client's deadline cuts this one short).
    let status = agents.get_agent(waiting).await.expect_err("a business call waits for a permit");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");

    // Liveness, readiness and reflection do not queue behind them. The target is well under
    // 100 ms; the deadline is generous for a loaded machine (without the bypass they would
    // wait the full two minutes of the slow calls).
    let mut health = HealthClient::new(app.agent.channel().await);
    let started = Instant::now();
    assert_eq!(check(&mut health, "", Duration::from_secs(2)).await.expect("liveness answers"), SERVING);
    let agent_services =
        ["engarde.agent.v1.AgentService", "engarde.agent.v1.ExecutionService", "engarde.agent.v1.RunService"];
    for name in agent_services {
        let named = check(&mut health, name, Duration::from_secs(2)).await;
        assert_eq!(named.expect("readiness answers"), SERVING, "{name}");
    }
    eprintln!("the health checks under saturation took {:?}", started.elapsed());
    let services = crate::server_reflection::list_services(&app.agent, "v1", Duration::from_secs(2)).await;
    assert!(agent_services.iter().all(|name| services.iter().any(|s| s == name)), "{services:?}");

    for call in slow {
        call.abort();
    }
}

/// RPC_TIMEOUT_SECS bounds every execution whose caller sets no deadline, and the server answers
/// DEADLINE_EXCEEDED naming the execution it recorded, as gRPC says it must (tonic's own timeout
/// answered CANCELLED). This client sets no deadline, so the answer is the server's. (The kit's
/// layer answering a call that outlives its deadline is unit-tested in `kit::calls`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_rpc_timeout_answers_deadline_exceeded() {
    let fake = FakeLangflow::start().await;
    let app = spawn_with_langflow(Backend::Sqlite, &fake.url(), &[("RPC_TIMEOUT_SECS", "2".to_owned())]).await;
    let (_, agent) = active_agent(&app, "tenant-a").await;
    fake.set_delay(Duration::from_secs(30));

    let mut executions = app.executions("tenant-a").await;
    let started = Instant::now();
    let status = executions.execute_agent(execute(&agent.id, "slow", "")).await.expect_err("Langflow outlasts it");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("execution "), "the answer names the recorded execution: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_speak_http2_are_closed_after_the_handshake_timeout() {
    let db = TestDb::new(Backend::Sqlite).await;
    let service = spawn_workflow_service(
        &db,
        &[
            ("HTTP2_HANDSHAKE_TIMEOUT_SECS", "1".into()),
            ("HTTP2_KEEPALIVE_INTERVAL_SECS", "1".into()),
            ("HTTP2_KEEPALIVE_TIMEOUT_SECS", "1".into()),
        ],
    )
    .await;

    // Sockets that send nothing at all, and one that sends the HTTP/2 preface and then never
    // answers a ping: the server closes every one of them.
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(service.addr).await.expect("connect"));
    }
    let mut mute = TcpStream::connect(service.addr).await.expect("connect");
    mute.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
    silent.push(mute);
    let closed = futures::future::join_all(silent.into_iter().map(closed_by_peer)).await;
    assert!(
        closed.iter().all(|c| *c),
        "open after 30 s: {} of {}",
        closed.iter().filter(|c| !**c).count(),
        closed.len()
    );

    // A real client is served as before.
    let mut health = HealthClient::new(service.channel().await);
    assert_eq!(check(&mut health, "", Duration::from_secs(5)).await.unwrap(), SERVING);
}

/// Whether the peer closes `socket` within 30 s (what it sends meanwhile is read and dropped).
async fn closed_by_peer(mut socket: TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused_while_open_ones_keep_working() {
    let db = TestDb::new(Backend::Sqlite).await;
    let metrics_port = free_port();
    let service = spawn_workflow_service(
        &db,
        &[("MAX_CONNECTIONS", "3".into()), ("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))],
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut health = HealthClient::new(service.channel().await);
        assert_eq!(check(&mut health, "", Duration::from_secs(5)).await.unwrap(), SERVING);
        open.push(health);
    }

    // A fourth is closed (reset) at once: the call fails at once, it does not hang until its
    // deadline. The client reports the reset as UNAVAILABLE, as UNKNOWN "transport error" when
    // its request was already on the way, or as CANCELLED "connection closed" when the close
    // reached it while it was sending (seen once under load).
    let refused = async {
        let channel = Channel::from_shared(service.url())
            .expect("url")
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        check(&mut HealthClient::new(channel), "", Duration::from_secs(10)).await
    }
    .await;
    let status = refused.expect_err("a connection beyond MAX_CONNECTIONS is refused");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
        "refused, not left waiting: {status:?}"
    );

    let metrics = scrape(metrics_port).await;
    assert!(metric_sum(&metrics, "grpc_server_connections_refused_total", &[]) >= 1.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "grpc_server_connections", &[]), 3.0, "{metrics}");

    // The open connections are served as before.
    for health in &mut open {
        assert_eq!(check(health, "", Duration::from_secs(5)).await.unwrap(), SERVING);
    }
    // Once one closes, a new connection takes its place.
    open.pop();
    eventually(Duration::from_secs(30), "a new connection once one closed", || async {
        match Channel::from_shared(service.url()).expect("url").connect().await {
            Ok(channel) => check(&mut HealthClient::new(channel), "", Duration::from_secs(5)).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

/// The resident memory of a process, in bytes.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_open_streams_beyond_its_limit_and_memory_returns_after_they_end() {
    const LIMIT: usize = 50;
    const ATTEMPTS: usize = 10_000;
    let db = TestDb::new(Backend::Sqlite).await;
    let service = spawn_workflow_service(&db, &[("MAX_STREAMS_PER_CONNECTION", LIMIT.to_string())]).await;
    let health = HealthClient::new(service.channel().await);
    // Warm up (the first watch allocates what every later one shares), then take the baseline.
    let mut first = health.clone().watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    first.message().await.unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_bytes(service.pid());

    // One connection asks for far more watches than it may have open: LIMIT are served, the
    // rest are refused (or held back by the client, which heeds the server's limit).
    let attempts = (0..ATTEMPTS).map(|_| {
        let mut health = health.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.ok()?.into_inner();
                watch.message().await.ok().flatten().map(|_| watch)
            })
            .await
            .ok()
            .flatten()
        }
    });
    let served: Vec<_> = futures::future::join_all(attempts).await.into_iter().flatten().collect();
    let served_at_once = served.len();
    let peak = rss_bytes(service.pid());
    drop(served);
    drop(health);

    // Once they end, the memory they took is given back (a generous bound: allocators keep some).
    let bound = baseline + 20 * 1024 * 1024;
    eventually(Duration::from_secs(30), "RSS back near its baseline", || async { rss_bytes(service.pid()) <= bound })
        .await;
    eprintln!("RSS: baseline {baseline}, peak {peak}, after {}", rss_bytes(service.pid()));
    assert_eq!(served_at_once, LIMIT, "watches served at once on one connection");
}
