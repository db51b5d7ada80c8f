//! Load shapes: a closed loop (C streams, each sending its next call when the previous one
//! answered) and an open loop (calls sent on a fixed schedule whatever the answers, latency
//! measured from the time each call was meant to leave), over a small pool of HTTP/2 channels.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::stats::{Samples, Summary};

/// The deadline of every benchmark call: a service that hangs fails the run instead of hanging it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds `x-tenant-id` to every call (the services run with `AUTH_MODE=dev`).
#[derive(Clone)]
pub struct AsTenant(MetadataValue<Ascii>);

impl AsTenant {
    pub fn new(tenant: &str) -> anyhow::Result<Self> {
        Ok(Self(tenant.parse().map_err(|_| anyhow::anyhow!("tenant id {tenant:?} is not ASCII"))?))
    }
}

impl tonic::service::Interceptor for AsTenant {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("x-tenant-id", self.0.clone());
        Ok(request)
    }
}

/// `n` HTTP/2 connections to `addr` (each `connect` opens its own), calls failing after `timeout`.
pub async fn channels(addr: SocketAddr, n: usize, timeout: Duration) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout);
        let channel = endpoint.connect().await.map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}"))?;
        out.push(channel);
    }
    Ok(out)
}

/// How long to load, and with how many streams.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub concurrency: usize,
    /// Calls made before the measured window (their failures still count).
    pub warmup: Duration,
    pub duration: Duration,
}

/// What a call answered, for counting.
pub fn failure_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

/// `spec.concurrency` tasks call `call(task_index)` back to back for the warm-up plus the
/// duration; the calls started inside the measured window are summarized.
pub async fn closed_loop<F, Fut, E>(spec: LoadSpec, call: F) -> Summary
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: FailureName,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..spec.concurrency.max(1) {
        let call = call.clone();
        tasks.spawn(async move {
            let mut samples = Samples::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = call(task).await;
                let latency = sent.elapsed();
                match result {
                    Ok(()) if sent >= measure_from => samples.record(latency),
                    Ok(()) => {}
                    Err(e) => samples.error(e.failure_name()),
                }
            }
            samples
        });
    }
    let mut all = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(samples) => all.merge(samples),
            Err(e) => all.error(format!("load task panicked: {e}")),
        }
    }
    all.summarize(spec.duration)
}

/// Calls at `rate` per second for the warm-up plus the duration, on a schedule kept by a thread
/// of its own (so that slow answers never delay the next send); each call's latency runs from
/// its scheduled time, so a send that leaves late counts its lateness too.
pub async fn open_loop<F, Fut, E>(rate: f64, spec: LoadSpec, call: F) -> Summary
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: FailureName,
{
    /// More calls than this waiting for answers means the client cannot keep up: stop sending.
    const MAX_IN_FLIGHT: usize = 20_000;
    let call = Arc::new(call);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now() + Duration::from_millis(5);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let stop = Arc::new(AtomicBool::new(false));
    let pacer_stop = stop.clone();
    let pacer = std::thread::spawn(move || {
        let mut k: u32 = 0;
        loop {
            let due = start + interval * k;
            if due >= end || pacer_stop.load(Ordering::Relaxed) {
                break;
            }
            let now = Instant::now();
            if due > now + Duration::from_micros(20) {
                std::thread::sleep(due - now);
            }
            if tx.send((k as usize, due)).is_err() {
                break;
            }
            k += 1;
        }
    });

    let samples = Arc::new(Mutex::new(Samples::default()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    while let Some((k, due)) = rx.recv().await {
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            lock(&samples).error("client overloaded (too many calls in flight)");
            stop.store(true, Ordering::Relaxed);
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (call, samples, in_flight) = (call.clone(), samples.clone(), in_flight.clone());
        tokio::spawn(async move {
            let result = call(k).await;
            let latency = due.elapsed();
            {
                let mut s = lock(&samples);
                match result {
                    Ok(()) if due >= measure_from => s.record(latency),
                    Ok(()) => {}
                    Err(e) => s.error(e.failure_name()),
                }
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    // The answers still on their way: each call has a deadline, so this ends.
    let drain_until = Instant::now() + CALL_TIMEOUT + Duration::from_secs(1);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut all = std::mem::take(&mut *lock(&samples));
    let stuck = in_flight.load(Ordering::Relaxed);
    if stuck > 0 {
        all.error(format!("no answer after the deadline ({stuck} calls)"));
    }
    all.summarize(spec.duration)
}

fn lock(samples: &Mutex<Samples>) -> std::sync::MutexGuard<'_, Samples> {
    samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a failed call is counted.
pub trait FailureName {
    fn failure_name(&self) -> String;
}

impl FailureName for tonic::Status {
    fn failure_name(&self) -> String {
        failure_name(self)
    }
}

impl FailureName for String {
    fn failure_name(&self) -> String {
        self.clone()
    }
}

/// Samples a process's resident memory every 100 ms until stopped; answers the largest, in kB.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak: Option<u64> = None;
            while !flag.load(Ordering::Relaxed) {
                if let Some(kb) = super::procs::rss_kb(pid) {
                    peak = Some(peak.map_or(kb, |p| p.max(kb)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        });
        Self { stop, task }
    }

    pub async fn finish(self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.ok().flatten()
    }
}
