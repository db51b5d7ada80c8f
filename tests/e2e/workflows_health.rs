//! Health follows the database both ways, SIGTERM drains before exiting, and a database that
//! demands TLS is reached over verified TLS.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use engarde::proto::workflow::v1 as pb;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;
use crate::workflows_crud::create_request;

const SERVICE: &str = "engarde.workflow.v1.WorkflowService";

/// A PostgreSQL cluster of the test's own, on its own port, that the test may stop and start
/// (the machine's shared server is never touched).
pub struct ThrowawayPostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn pg_bin(tool: &str) -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL is installed");
    let mut dirs: Vec<PathBuf> = versions.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    dirs.last().expect("a PostgreSQL version").join("bin").join(tool)
}

fn as_postgres(args: &[&str]) {
    let status = Command::new("runuser")
        .arg("-u")
        .arg("postgres")
        .arg("--")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("runuser");
    assert!(status.success(), "{args:?} failed");
}

impl ThrowawayPostgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Command::new("chown").args(["postgres", dir.path().to_str().unwrap()]).status().expect("chown");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = dir.path().join("data");
        as_postgres(&[
            pg_bin("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let pg = Self { dir, port };
        pg.resume();
        pg
    }

    /// A cluster that accepts TCP connections over TLS only, with a certificate for 127.0.0.1
    /// signed by a CA of the test's own; answers it and the CA's certificate, the root a client
    /// must trust.
    pub fn start_tls_only() -> (Self, PathBuf) {
        let pg = Self::start();
        pg.stop();
        let data = pg.dir.path().join("data");
        // A CA, and a server certificate for 127.0.0.1 that it signs.
        let script = "set -e
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=engarde test CA' -keyout ca.key -out ca.crt
            openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr
            printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext
            openssl x509 -req -days 2 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -extfile server.ext \\
              -out server.crt
            chmod 600 server.key";
        let made = Command::new("sh").args(["-c", script]).current_dir(&data).output().expect("sh");
        assert!(made.status.success(), "making certificates: {}", String::from_utf8_lossy(&made.stderr));
        let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n";
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
        conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(data.join("postgresql.conf"), conf).expect("postgresql.conf");
        Command::new("chown").args(["-R", "postgres"]).arg(&data).status().expect("chown");
        pg.resume();
        (pg, data.join("ca.crt"))
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let mut all = vec![
            pg_bin("pg_ctl").to_str().unwrap().to_owned(),
            "-D".into(),
            data.to_str().unwrap().into(),
            "-l".into(),
            log.to_str().unwrap().into(),
            "-w".into(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        as_postgres(&all.iter().map(String::as_str).collect::<Vec<_>>());
    }

    pub fn resume(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        self.ctl(&["-o", &options, "start"]);
    }

    pub fn stop(&self) {
        self.ctl(&["stop", "-m", "fast"]);
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                pg_bin("pg_ctl").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "stop",
                "-m",
                "immediate",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

async fn status_of(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> Option<i32> {
    health.check(HealthCheckRequest { service: service.into() }).await.ok().map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_down_and_back_up() {
    let pg = ThrowawayPostgres::start();
    let service =
        ServiceProcess::start("workflow-service", &[("DATABASE_URL", pg.url()), ("AUTH_MODE", "dev".into())]).await;
    let mut health = HealthClient::new(service.channel().await);
    let mut client = engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient::with_interceptor(
        service.channel().await,
        as_tenant("tenant-a"),
    );
    let kept = client.create_workflow(create_request("Before the outage")).await.unwrap().into_inner();
    assert_eq!(status_of(&mut health, SERVICE).await, Some(ServingStatus::Serving as i32));

    pg.stop();
    eventually(Duration::from_secs(15), "NOT_SERVING while the database is down", || {
        let mut h = health.clone();
        async move { status_of(&mut h, SERVICE).await == Some(ServingStatus::NotServing as i32) }
    })
    .await;
    // The process itself is alive: liveness ("") stays SERVING, so Kubernetes does not restart it.
    assert_eq!(status_of(&mut health, "").await, Some(ServingStatus::Serving as i32));
    let status =
        expect_code(client.get_workflow(pb::GetWorkflowRequest { id: kept.id.clone() }).await, Code::Unavailable);
    assert!(status.message().contains("database"), "{}", status.message());
    expect_code(client.create_workflow(create_request("During the outage")).await, Code::Unavailable);

    pg.resume();
    eventually(Duration::from_secs(15), "SERVING again once the database is back", || {
        let mut h = health.clone();
        async move { status_of(&mut h, SERVICE).await == Some(ServingStatus::Serving as i32) }
    })
    .await;
    let read = client.get_workflow(pb::GetWorkflowRequest { id: kept.id.clone() }).await.expect("reads work again");
    assert_eq!(read.into_inner().name, "Before the outage");
    client.create_workflow(create_request("After the outage")).await.expect("writes work again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_off_first_then_exits_cleanly() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut service = spawn_workflow_service(&db, &[("DRAIN_TIMEOUT_SECS", "5".into())]).await;
    let mut health = HealthClient::new(service.channel().await);
    let mut watch = health.watch(HealthCheckRequest { service: SERVICE.into() }).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    service.sigterm();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("told before exit");
    assert_eq!(next.ok().flatten().map(|m| m.status), Some(ServingStatus::NotServing as i32));
    drop((watch, health));
    // The drain (5 s) bounds the exit; the wait is generous for a loaded host, and a miss shows
    // the log, which says how far the shutdown got.
    let Some(exit) = service.wait_exit(Duration::from_secs(20)).await else {
        panic!("no exit 20 s after SIGTERM:\n{}", service.logs());
    };
    assert!(exit.success(), "{exit:?}\n{}", service.logs());
}

/// A production database that demands TLS: the service connects over it and verifies the
/// server's certificate against the root it is given (`sslmode=verify-full&sslrootcert=…`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_a_verified_certificate() {
    use sqlx::Connection as _;
    let (pg, root) = ThrowawayPostgres::start_tls_only();
    // The server refuses plain connections, and a client that verifies refuses a certificate
    // whose CA it was not given: what follows can only work over verified TLS.
    let plain = sqlx::PgConnection::connect(&format!("{}?sslmode=disable", pg.url())).await;
    assert!(plain.is_err(), "a plain connection must be refused");
    let unverified = sqlx::PgConnection::connect(&format!("{}?sslmode=verify-full", pg.url())).await;
    assert!(unverified.is_err(), "a certificate of an unknown CA must not verify");

    // Start-up stops at once, saying why, on a certificate that does not verify: waiting for
    // the database (as for one that is down) would only delay the same failure.
    let started = std::time::Instant::now();
    let refused = Command::new(binary("workflow-service"))
        .env_clear()
        .env("DATABASE_URL", format!("{}?sslmode=verify-full", pg.url()))
        .env("AUTH_MODE", "dev")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DB_STARTUP_TIMEOUT_SECS", "60")
        .output()
        .expect("workflow-service runs");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(started.elapsed() < Duration::from_secs(20), "it retried for {:?}: {said}", started.elapsed());
    assert!(said.contains("certificate") && said.contains("not retrying"), "{said}");

    let url = format!("{}?sslmode=verify-full&sslrootcert={}", pg.url(), root.display());
    let service =
        ServiceProcess::start("workflow-service", &[("DATABASE_URL", url), ("AUTH_MODE", "dev".into())]).await;
    let mut client = engarde::proto::workflow::v1::workflow_service_client::WorkflowServiceClient::with_interceptor(
        service.channel().await,
        as_tenant("tenant-a"),
    );
    let made = client.create_workflow(create_request("Over TLS")).await.unwrap().into_inner();
    let read = client.get_workflow(pb::GetWorkflowRequest { id: made.id.clone() }).await.unwrap().into_inner();
    assert_eq!(read.name, "Over TLS");
}
