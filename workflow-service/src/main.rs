use clap::Parser;
use workflow_service::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let _logs = engarde::kit::telemetry::init(config.common.log_format, config.common.log_buffer_lines);
    match workflow_service::startup::run(config, engarde::kit::server::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "workflow-service failed");
            eprintln!("workflow-service: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
