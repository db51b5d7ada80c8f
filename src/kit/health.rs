//! grpc.health.v1. Each named service (e.g. `engarde.workflow.v1.WorkflowService`) is SERVING
//! while its dependencies answer and the server is not draining: readiness probes ask for it.
//! The whole server (`""`) is SERVING until shutdown begins, whatever the dependencies say: it
//! is what liveness probes ask, and a database outage must take pods out of rotation, not
//! restart them. A background probe flips the named status both ways, so a service recovers on
//! its own when its database returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use super::db::DbPool;

/// The health of one server process.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<Vec<&'static str>>,
    draining: Arc<AtomicBool>,
    dependencies_ok: Arc<AtomicBool>,
}

impl Health {
    /// `services` are the fully-qualified names of the gRPC services the server hosts. Answers
    /// the handle and the grpc.health.v1 service to serve; everything starts NOT_SERVING.
    pub async fn new(services: Vec<&'static str>) -> (Self, HealthServer<HealthService>) {
        let reporter = HealthReporter::new();
        let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let health = Self {
            reporter,
            services: Arc::new(services),
            draining: Arc::new(AtomicBool::new(false)),
            dependencies_ok: Arc::new(AtomicBool::new(false)),
        };
        health.publish().await;
        (health, server)
    }

    /// The fully-qualified names of the gRPC services the server hosts (what reflection lists).
    pub fn services(&self) -> &[&'static str] {
        &self.services
    }

    async fn publish(&self) {
        let as_status = |serving: bool| if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        let live = !self.draining.load(Ordering::SeqCst);
        let ready = live && self.dependencies_ok.load(Ordering::SeqCst);
        self.reporter.set_service_status("", as_status(live)).await;
        for name in self.services.iter() {
            self.reporter.set_service_status(*name, as_status(ready)).await;
        }
    }

    /// Records whether the service's dependencies answer, logging each change.
    pub async fn set_dependencies_ok(&self, ok: bool, reason: &str) {
        let was = self.dependencies_ok.swap(ok, Ordering::SeqCst);
        if was != ok {
            if ok {
                tracing::info!("dependencies reachable again: SERVING");
            } else {
                tracing::warn!(reason, "a dependency is unreachable: NOT_SERVING");
            }
        }
        self.publish().await;
    }

    /// Marks the server as shutting down: NOT_SERVING from now on, whatever the probes say.
    pub async fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.publish().await;
    }

    /// Probes the database every `interval` for as long as the process lives.
    pub fn watch_database(&self, db: DbPool, interval: Duration) {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                let result = tokio::time::timeout(Duration::from_secs(2), db.ping()).await;
                let (size, idle) = db.stats();
                super::metrics::record_pool(size, idle);
                match result {
                    Ok(Ok(())) => health.set_dependencies_ok(true, "").await,
                    Ok(Err(e)) => health.set_dependencies_ok(false, &format!("database: {e}")).await,
                    Err(_) => health.set_dependencies_ok(false, "database: no answer within 2s").await,
                }
                tokio::time::sleep(interval).await;
            }
        });
    }
}
