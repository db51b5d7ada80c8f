use agent_service::config::{Command, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let _logs = engarde::kit::telemetry::init(config.common.log_format, config.common.log_buffer_lines);
    let traces = match engarde::kit::otlp::init(&config.common.traces, "agent-service") {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("agent-service: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(Command::Import(args)) = config.command.clone() {
        let result = agent_service::startup::import(config, args).await;
        traces.shutdown().await;
        return match result {
            Ok(report) => report.print(),
            Err(e) => {
                eprintln!("agent-service import: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let result = agent_service::startup::run(config, engarde::kit::server::shutdown_signal()).await;
    // After the drain: the spans of the last calls are queued, and go out now.
    traces.shutdown().await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent-service failed");
            eprintln!("agent-service: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
