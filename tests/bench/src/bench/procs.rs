//! The processes the benchmark measures: the real service binaries (started as an operator
//! would, on port 0, waiting for their `… listening on ADDR` line), the PostgreSQL database
//! they use, their memory and their start-up time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The health names the services answer for (readiness probes ask for these).
pub const WORKFLOW_HEALTH: &str = "engarde.workflow.v1.WorkflowService";
pub const AGENT_HEALTH: &str = "engarde.agent.v1.AgentService";

/// A running service binary, killed when dropped.
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts `bin` with exactly `env` (plus PATH) on `127.0.0.1:0`, its log in `log_dir`, and
    /// waits for its "listening on" line and for its health to answer SERVING for `health_name`.
    pub async fn start(
        bin: &Path,
        args: &[&str],
        name: &str,
        health_name: &str,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        if !bin.exists() {
            bail!("{} is missing: build it first (scripts/bench does)", bin.display());
        }
        let log = log_dir.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(bin);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("DB_STARTUP_TIMEOUT_SECS", "20")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the child has no pid")?;
        let stdout = child.stdout.take().context("the child has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let prefix = format!("{name} listening on ");
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix(&prefix) {
                    return addr.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(addr) = found else {
            let _ = child.start_kill();
            bail!("{name} did not start (no \"{prefix}ADDR\" line); its log:\n{}", tail(&log));
        };
        // Keep reading stdout so that the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let service = Self { name: name.to_owned(), addr, pid, child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if check_serving(addr, health_name).await {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} listens on {addr} but never answered SERVING; its log:\n{}", service.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(service)
    }

    pub fn rss_kb(&self) -> Option<u64> {
        rss_kb(self.pid)
    }

    /// The end of the service's log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Fails when the process has exited (a crash under load must not pass for a result).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited ({status}); its log:\n{}", self.name, self.log_tail()),
            Err(e) => bail!("{}: cannot tell whether it runs: {e}", self.name),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One health check of `service` at `addr`: true when it answers SERVING.
pub async fn check_serving(addr: SocketAddr, service: &str) -> bool {
    let Ok(endpoint) = Endpoint::from_shared(format!("http://{addr}")) else { return false };
    let Ok(channel) =
        endpoint.connect_timeout(Duration::from_millis(100)).timeout(Duration::from_secs(1)).connect().await
    else {
        return false;
    };
    check_on(channel, service).await
}

async fn check_on(channel: tonic::transport::Channel, service: &str) -> bool {
    let mut client = HealthClient::new(channel);
    matches!(
        client.check(HealthCheckRequest { service: service.to_owned() }).await,
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// Resident memory of `pid` (VmRSS in /proc/PID/status), in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A free port on loopback (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Time from spawning `bin` to its health answering SERVING for `health_name`, polled every 5 ms
/// (the process gets a fixed free port, so polling starts at spawn, not at its "listening" line).
/// Also answers the process's RSS right after it first answered SERVING, in kB.
pub async fn time_to_serving(
    bin: &Path,
    args: &[&str],
    health_name: &str,
    env: &[(&str, String)],
    log_dir: &Path,
) -> anyhow::Result<(Duration, Option<u64>)> {
    if !bin.exists() {
        bail!("{} is missing: build it first (scripts/bench does)", bin.display());
    }
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = log_dir.join(format!("startup-{}.log", uuid::Uuid::new_v4().simple()));
    let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(bin);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_ADDR", addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let spawned = Instant::now();
    let mut child = command.spawn().with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("the child has no pid")?;
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut channel = None;
    let result = loop {
        ticks.tick().await;
        if spawned.elapsed() > Duration::from_secs(30) {
            break Err(anyhow::anyhow!(
                "{} did not answer SERVING within 30 s; its log:\n{}",
                bin.display(),
                tail(&log)
            ));
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!(
                "{} exited during start-up ({status}); its log:\n{}",
                bin.display(),
                tail(&log)
            ));
        }
        if channel.is_none() {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_millis(50))
                .timeout(Duration::from_secs(1));
            channel = endpoint.connect().await.ok();
        }
        if let Some(ch) = &channel
            && check_on(ch.clone(), health_name).await
        {
            break Ok(spawned.elapsed());
        }
    };
    let rss = rss_kb(pid);
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let _ = std::fs::remove_file(&log);
    result.map(|d| (d, rss))
}

/// A PostgreSQL database for the run: created fresh on the admin URL and dropped afterwards,
/// or one the user named (left as it is).
pub struct Database {
    pub url: String,
    created: Option<(String, String)>,
}

impl Database {
    /// The database's name (the last segment of its URL's path).
    pub fn name(&self) -> String {
        let path = self.url.split('?').next().unwrap_or_default();
        path.rsplit('/').next().unwrap_or_default().to_owned()
    }

    /// Leaves the database in place when dropped (to look at it afterwards).
    pub fn keep(mut self) {
        self.created = None;
    }

    pub fn given(url: &str) -> Self {
        Self { url: url.to_owned(), created: None }
    }

    pub fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("engarde_bench_{}", uuid::Uuid::new_v4().simple());
        psql(admin_url, &format!("CREATE DATABASE {name}"))?;
        let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
        let url = format!("{base}/{name}");
        Ok(Self { url, created: Some((admin_url.to_owned(), name)) })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.created
            && let Err(e) = psql(admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        {
            eprintln!("warning: could not drop the benchmark database {name}: {e:#}");
        }
    }
}

fn psql(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    let output = std::process::Command::new("psql")
        .args([admin_url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("running psql (install the PostgreSQL client, or pass --database-url)")?;
    if !output.status.success() {
        bail!("psql {admin_url} -c {sql:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Clock ticks per second of /proc's CPU times (USER_HZ: 100 on every Linux architecture that
/// matters here).
const TICKS_PER_SEC: f64 = 100.0;

/// User plus system CPU time a process (or thread, through /proc/PID/task/TID) has used.
fn cpu_of_stat(path: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; here (after pid and comm) 11 and 12.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / TICKS_PER_SEC))
}

/// CPU time used so far by process `pid`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    cpu_of_stat(Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU time used so far by the threads of this process named `name` (the in-process servers'
/// runtimes name their threads).
pub fn own_threads_cpu_time(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    tasks
        .filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| cpu_of_stat(&t.path().join("stat")))
        .sum()
}

/// CPU time used so far by the PostgreSQL backends serving `database` (found by their process
/// title, "postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE").
pub fn postgres_backends_cpu_time(database: &str) -> Duration {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Duration::ZERO };
    procs
        .filter_map(Result::ok)
        .filter(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                let title = String::from_utf8_lossy(&c);
                title.starts_with("postgres: ") && title.split_whitespace().any(|word| word == database)
            })
        })
        .filter_map(|p| cpu_of_stat(&p.path().join("stat")))
        .sum()
}
