//! Logging set-up: human-readable lines by default, JSON for log collectors; always on stderr,
//! so that stdout carries only the "listening on" line scripts wait for.
//!
//! Lines are written by a thread of their own: a call formats its line and hands it over, and
//! never waits for stderr (a slow terminal, a full pipe, a log shipper behind). The thread
//! writes the lines waiting together, in as few writes as fit its buffer. The hand-over
//! holds at most `LOG_BUFFER_LINES` lines; beyond that, lines are dropped rather than calls
//! slowed, and counted in `log_lines_dropped_total`. What is handed over is written before the
//! process exits normally; a crash loses what was still waiting.

use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The log writer's thread: keep it until the process ends, so that the lines still waiting
/// are written when it is dropped.
#[must_use = "dropping it stops the log writer"]
pub struct Logs {
    _writer: Option<WorkerGuard>,
}

/// The most bytes of lines written to stderr at once.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// How often the count of dropped lines is published as a metric.
const DROPPED_EVERY: Duration = Duration::from_secs(5);

/// Installs the global subscriber once. `RUST_LOG` overrides the default filter (`info`).
/// Call it inside the Tokio runtime (the dropped-lines metric is published from a task).
pub fn init(format: LogFormat, buffer_lines: u32) -> Logs {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,hyper=warn"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(buffer_lines as usize)
        .thread_name("log-writer")
        // The writer drains every line waiting, then flushes: lines that arrive together leave
        // in one write, and a lone line leaves at once.
        .finish(std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, std::io::stderr()));
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(colour);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    // A second init (tests that build two services in one process) keeps the first subscriber
    // and its writer.
    if result.is_err() {
        return Logs { _writer: None };
    }
    publish_dropped(dropped);
    Logs { _writer: Some(guard) }
}

/// Publishes the count of dropped lines, every few seconds, while the process runs.
fn publish_dropped(dropped: ErrorCounter) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        loop {
            // Looked up each time: the metrics recorder is installed after logging starts.
            metrics::describe_counter!(
                "log_lines_dropped_total",
                "Log lines dropped because LOG_BUFFER_LINES lines were already waiting for stderr."
            );
            metrics::counter!("log_lines_dropped_total").absolute(dropped.dropped_lines() as u64);
            tokio::time::sleep(DROPPED_EVERY).await;
        }
    });
}
