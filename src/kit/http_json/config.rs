//! The settings of the HTTP/JSON port, flattened into every service's settings.

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::kit::config::parse_listen_addr;

/// HTTP/JSON: the RPCs transcoded from their google.api.http annotations, on a port of its own.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpJsonConfig {
    /// Serve the RPCs as HTTP/JSON on this address too (`host:port`; port 0 picks a free one),
    /// with the gRPC port's TLS settings, authentication and limits, and the OpenAPI document at
    /// /openapi.json. Unset or empty: no HTTP/JSON port.
    #[arg(long, env = "HTTP_LISTEN_ADDR")]
    pub http_listen_addr: Option<String>,
    /// Largest HTTP/JSON request body, in bytes; a larger one answers 413.
    #[arg(long, env = "HTTP_MAX_BODY_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub http_max_body_bytes: usize,
    /// Most connections the HTTP/JSON port holds at once; beyond that a new one is closed as
    /// soon as it is accepted.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub http_max_connections: usize,
}

impl HttpJsonConfig {
    /// The port's address, None when HTTP/JSON is off; refuses an address that does not parse.
    pub fn listen_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.http_listen_addr.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            Some(addr) => parse_listen_addr(addr).context("HTTP_LISTEN_ADDR").map(Some),
            None => Ok(None),
        }
    }
}
