//! The HTTP client of Langflow's API (verified against Langflow 1.13).
//!
//! Every call has a deadline (the configured one, or the caller's gRPC deadline when shorter).
//! Reads and deletes are retried with backoff when Langflow is unreachable or answers 5xx; runs
//! and flow creation are not (repeating them would duplicate work), except when the connection
//! was never made, which proves the request was never seen.

use std::time::Duration;

use engarde::kit::trace::{KeyValue, Span};
use futures::{Stream, StreamExt};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::error::{LangflowError, excerpt};
use super::models::{self, ModelProvider};
use crate::domain::execution::TokenUsage;

/// How many times a call that is safe to repeat is tried.
const ATTEMPTS: u32 = 3;

/// Where Langflow is and how to talk to it.
#[derive(Debug, Clone)]
pub struct LangflowSettings {
    /// e.g. `http://langflow:7860`.
    pub base_url: String,
    /// Sent as `x-api-key` when set (a production Langflow requires one).
    pub api_key: Option<String>,
    /// Deadline of one run.
    pub run_timeout: Duration,
    /// Deadline of every other call.
    pub call_timeout: Duration,
    /// PEM CA certificate(s) trusted for an https:// base URL, besides the public roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// A Langflow server.
#[derive(Debug)]
pub struct LangflowClient {
    http: reqwest::Client,
    settings: LangflowSettings,
    catalog: OnceCell<Value>,
    providers: OnceCell<Vec<ModelProvider>>,
}

/// What one run answered.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// The chat output's text.
    pub text: String,
    /// Langflow's session id (the one sent).
    pub session_id: String,
    /// The tokens the model reported, when the flow ran one that did.
    pub usage: Option<TokenUsage>,
}

/// A flow as Langflow lists it, without its graph.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowHeader {
    pub id: String,
    pub description: String,
    /// The name the flow can be run by instead of its id (`/api/v1/run/<endpoint name>`); empty
    /// when it has none.
    pub endpoint_name: String,
    /// When it last changed, if Langflow says.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl FlowHeader {
    /// The header of a flow as Langflow answers it (read or listed); `None` without an id.
    fn from_json(flow: &Value) -> Option<Self> {
        Some(Self {
            id: flow["id"].as_str()?.to_owned(),
            description: flow["description"].as_str().unwrap_or("").to_owned(),
            endpoint_name: flow["endpoint_name"].as_str().unwrap_or("").to_owned(),
            updated_at: flow["updated_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        })
    }
}

/// One event of a streamed run, as Langflow sends it (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// `add_message`, `token`, `end`, `error`, …
    pub event: String,
    pub data: Value,
}

impl LangflowClient {
    /// A client of the Langflow `settings` name; refuses a LANGFLOW_CA_FILE it cannot use.
    pub fn new(settings: LangflowSettings) -> anyhow::Result<Self> {
        // rustls with the ring provider, built by the kit (never reqwest's own aws-lc default).
        let tls = engarde::kit::tls::http_client_config("LANGFLOW_CA_FILE", settings.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(60))
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| anyhow::anyhow!("building the Langflow HTTP client: {e}"))?;
        let mut settings = settings;
        settings.base_url = settings.base_url.trim_end_matches('/').to_owned();
        Ok(Self { http, settings, catalog: OnceCell::new(), providers: OnceCell::new() })
    }

    pub fn base_url(&self) -> &str {
        &self.settings.base_url
    }

    fn request(&self, method: Method, path: &str, timeout: Duration) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.settings.base_url)).timeout(timeout);
        if let Some(key) = &self.settings.api_key {
            request = request.header("x-api-key", key);
        }
        request
    }

    /// Sends a request built by `build`, retrying while `retry` allows it.
    async fn send(
        &self,
        what: &str,
        idempotent: bool,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, LangflowError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = std::time::Instant::now();
            let mut request = build().build().map_err(|e| LangflowError::from_transport(what, &e))?;
            let span = http_span(what, &request);
            // Langflow ignores it, but a proxy or tracer in front of it can follow the request.
            if let Some(traceparent) = span.traceparent().and_then(|t| HeaderValue::from_str(&t).ok()) {
                request.headers_mut().insert("traceparent", traceparent);
            }
            let outcome = self.http.execute(request).await;
            record_call(what, &outcome, started.elapsed());
            end_http_span(span, &outcome);
            let retriable = match &outcome {
                Ok(response) => idempotent && response.status().is_server_error(),
                Err(e) => e.is_connect() || (idempotent && !e.is_timeout()),
            };
            if !retriable || attempt >= ATTEMPTS {
                return outcome.map_err(|e| LangflowError::from_transport(what, &e));
            }
            let backoff = Duration::from_millis(100 * 2u64.pow(attempt - 1));
            tracing::debug!(what, attempt, ?backoff, "Langflow call failed; retrying");
            tokio::time::sleep(backoff).await;
        }
    }

    /// The JSON body of a successful answer, or the error it stands for.
    async fn json(what: &str, response: reqwest::Response) -> Result<Value, LangflowError> {
        let status = response.status();
        let body = response.text().await.map_err(|e| LangflowError::from_transport(what, &e))?;
        if !status.is_success() {
            return Err(LangflowError::from_status(what, status, &body));
        }
        let mut answer = serde_json::from_str(&body)
            .map_err(|e| LangflowError::BadResponse(format!("{what}: answer is not JSON ({e}): {}", excerpt(&body))))?;
        make_storable(&mut answer);
        Ok(answer)
    }

    /// Langflow's version (`GET /api/v1/version`).
    pub async fn version(&self) -> Result<String, LangflowError> {
        let response = self
            .send("version", true, || self.request(Method::GET, "/api/v1/version", self.settings.call_timeout))
            .await?;
        let body = Self::json("version", response).await?;
        Ok(body["version"].as_str().unwrap_or("unknown").to_owned())
    }

    /// The server's component catalog (`GET /api/v1/all`), fetched once and kept.
    pub async fn catalog(&self) -> Result<&Value, LangflowError> {
        self.catalog
            .get_or_try_init(|| async {
                // The catalog is large: allow it more than an ordinary call.
                let timeout = self.settings.call_timeout * 4;
                let response =
                    self.send("component catalog", true, || self.request(Method::GET, "/api/v1/all", timeout)).await?;
                Self::json("component catalog", response).await
            })
            .await
    }

    /// The model providers the catalog offers (see [`models`]), read once and kept.
    pub async fn model_providers(&self) -> Result<&[ModelProvider], LangflowError> {
        let catalog = self.catalog().await?;
        Ok(self.providers.get_or_init(|| async { models::providers(catalog) }).await)
    }

    /// The provider named `name` (without regard to case), or an error listing those offered.
    pub async fn model_provider(&self, name: &str) -> Result<&ModelProvider, LangflowError> {
        let offered = self.model_providers().await?;
        models::find(offered, name).ok_or_else(|| {
            LangflowError::ModelNotOffered(format!(
                "this Langflow offers no model provider {name:?}; it offers {}",
                models::names(offered)
            ))
        })
    }

    /// Creates a flow with the endpoint name `endpoint_name` (letters, digits, '-' and '_';
    /// Langflow appends "-1", "-2", … when another flow of its user has it); answers its id.
    pub async fn create_flow(
        &self,
        name: &str,
        description: &str,
        endpoint_name: &str,
        data: &Value,
    ) -> Result<String, LangflowError> {
        let body = serde_json::json!({
            "name": name, "description": description, "endpoint_name": endpoint_name, "data": data,
        });
        let response = self
            .send("create flow", false, || {
                self.request(Method::POST, "/api/v1/flows/", self.settings.call_timeout).json(&body)
            })
            .await?;
        let flow = Self::json("create flow", response).await?;
        flow["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| LangflowError::BadResponse(format!("create flow: no id in {}", excerpt(&flow.to_string()))))
    }

    /// A flow's header (id, description, endpoint name, update time), or `None` when there is
    /// no such flow.
    pub async fn flow(&self, flow_id: &str) -> Result<Option<FlowHeader>, LangflowError> {
        let path = format!("/api/v1/flows/{flow_id}");
        let response =
            self.send("read flow", true, || self.request(Method::GET, &path, self.settings.call_timeout)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            // Langflow answers 400/422 for ids that are not UUIDs: no such flow either.
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Ok(None),
            _ => {
                let flow = Self::json("read flow", response).await?;
                let header = FlowHeader::from_json(&flow).ok_or_else(|| {
                    LangflowError::BadResponse(format!("read flow: no id in {}", excerpt(&flow.to_string())))
                })?;
                Ok(Some(header))
            }
        }
    }

    /// Whether a flow exists.
    pub async fn flow_exists(&self, flow_id: &str) -> Result<bool, LangflowError> {
        Ok(self.flow(flow_id).await?.is_some())
    }

    /// Every flow, without its graph (`GET /api/v1/flows/?header_flows=true`).
    pub async fn list_flows(&self) -> Result<Vec<FlowHeader>, LangflowError> {
        let timeout = self.settings.call_timeout * 4;
        let response = self
            .send("list flows", true, || self.request(Method::GET, "/api/v1/flows/?header_flows=true", timeout))
            .await?;
        let flows = Self::json("list flows", response).await?;
        let flows = flows.as_array().ok_or_else(|| {
            LangflowError::BadResponse(format!("list flows: not a list: {}", excerpt(&flows.to_string())))
        })?;
        Ok(flows.iter().filter_map(FlowHeader::from_json).collect())
    }

    /// Replaces a flow's description (`PATCH /api/v1/flows/{id}`; the rest of the flow stays).
    /// Safe to repeat, so retried. FlowNotFound when the flow is gone.
    pub async fn set_description(&self, flow_id: &str, description: &str) -> Result<(), LangflowError> {
        let path = format!("/api/v1/flows/{flow_id}");
        let body = serde_json::json!({ "description": description });
        let response = self
            .send("update flow", true, || self.request(Method::PATCH, &path, self.settings.call_timeout).json(&body))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(LangflowError::FlowNotFound(flow_id.to_owned()));
        }
        Self::json("update flow", response).await.map(drop)
    }

    /// Deletes a flow; a flow that is already gone is not an error.
    pub async fn delete_flow(&self, flow_id: &str) -> Result<(), LangflowError> {
        let path = format!("/api/v1/flows/{flow_id}");
        let response =
            self.send("delete flow", true, || self.request(Method::DELETE, &path, self.settings.call_timeout)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::json("delete flow", response).await.map(drop)
    }

    fn run_body(input: &str, session_id: &str, tweaks: &Value) -> Value {
        serde_json::json!({
            "input_value": input,
            "input_type": "chat",
            "output_type": "chat",
            "session_id": session_id,
            "tweaks": tweaks,
        })
    }

    /// Runs a flow once (`POST /api/v1/run/{id}`), within `deadline` or the run timeout.
    pub async fn run(
        &self,
        flow_id: &str,
        input: &str,
        session_id: &str,
        tweaks: &Value,
        deadline: Option<Duration>,
    ) -> Result<RunOutput, LangflowError> {
        let timeout = shorter(self.settings.run_timeout, deadline);
        let path = format!("/api/v1/run/{flow_id}");
        let body = Self::run_body(input, session_id, tweaks);
        let response = self.send("run flow", false, || self.request(Method::POST, &path, timeout).json(&body)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(LangflowError::FlowNotFound(flow_id.to_owned()));
        }
        let answer = Self::json("run flow", response).await?;
        let text = output_text(&answer).ok_or_else(|| {
            LangflowError::BadResponse(format!("run flow: no chat output in {}", excerpt(&answer.to_string())))
        })?;
        Ok(RunOutput {
            text,
            session_id: answer["session_id"].as_str().unwrap_or(session_id).to_owned(),
            usage: output_usage(&answer),
        })
    }

    /// Runs a flow with `?stream=true`, yielding Langflow's events as they arrive.
    pub async fn run_stream(
        &self,
        flow_id: &str,
        input: &str,
        session_id: &str,
        tweaks: &Value,
        deadline: Option<Duration>,
    ) -> Result<impl Stream<Item = Result<StreamEvent, LangflowError>> + Send + 'static, LangflowError> {
        let timeout = shorter(self.settings.run_timeout, deadline);
        let path = format!("/api/v1/run/{flow_id}?stream=true");
        let body = Self::run_body(input, session_id, tweaks);
        let response =
            self.send("stream flow", false, || self.request(Method::POST, &path, timeout).json(&body)).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(LangflowError::FlowNotFound(flow_id.to_owned()));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(LangflowError::from_status("stream flow", status, &body));
        }
        Ok(ndjson_events(response.bytes_stream()))
    }
}

/// The client span of one Langflow request (each attempt its own), with OpenTelemetry's HTTP
/// attributes; it covers the request until the answer's headers.
fn http_span(what: &str, request: &reqwest::Request) -> Span {
    Span::client(
        || format!("{} {what}", request.method()).into(),
        || {
            let url = request.url();
            let mut attributes = vec![
                KeyValue::new("http.request.method", request.method().as_str().to_owned()),
                KeyValue::new("url.path", url.path().to_owned()),
                KeyValue::new("server.address", url.host_str().unwrap_or_default().to_owned()),
            ];
            if let Some(port) = url.port_or_known_default() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
            attributes
        },
    )
}

/// Ends a Langflow request's span with how it ended: the status of the answer (4xx and 5xx fail
/// it), or the transport's error.
fn end_http_span(mut span: Span, outcome: &Result<reqwest::Response, reqwest::Error>) {
    match outcome {
        Ok(response) => {
            let status = response.status();
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
            if status.is_client_error() || status.is_server_error() {
                span.set_error(|| status.to_string());
            }
        }
        Err(e) => {
            let kind = if e.is_timeout() { "timeout" } else { "unreachable" };
            span.set_attribute(KeyValue::new("error.type", kind));
            span.set_error(|| e.to_string());
        }
    }
}

/// One Langflow call in the metrics: `langflow_requests_total{call, outcome}` and its latency.
fn record_call(what: &str, outcome: &Result<reqwest::Response, reqwest::Error>, elapsed: Duration) {
    let result = match outcome {
        Ok(r) if r.status().is_success() => "ok".to_owned(),
        Ok(r) => format!("http_{}", r.status().as_u16()),
        Err(e) if e.is_timeout() => "timeout".to_owned(),
        Err(_) => "unreachable".to_owned(),
    };
    metrics::counter!("langflow_requests_total", "call" => what.to_owned(), "outcome" => result).increment(1);
    metrics::histogram!("langflow_request_duration_seconds", "call" => what.to_owned()).record(elapsed.as_secs_f64());
}

/// Splits a byte stream into newline-delimited JSON events.
fn ndjson_events<S, B, E>(bytes: S) -> impl Stream<Item = Result<StreamEvent, LangflowError>> + Send + 'static
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let state = (Box::pin(bytes), Vec::<u8>::new(), false);
    futures::stream::unfold(state, |(mut bytes, mut buffer, mut done)| async move {
        loop {
            if let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).trim().to_owned();
                if line.is_empty() {
                    continue;
                }
                return Some((parse_event(&line), (bytes, buffer, done)));
            }
            if done {
                let rest = String::from_utf8_lossy(&buffer).trim().to_owned();
                buffer.clear();
                if rest.is_empty() {
                    return None;
                }
                return Some((parse_event(&rest), (bytes, buffer, done)));
            }
            match bytes.next().await {
                Some(Ok(chunk)) => buffer.extend_from_slice(chunk.as_ref()),
                Some(Err(e)) => {
                    done = true;
                    buffer.clear();
                    return Some((
                        Err(LangflowError::Unavailable(format!("the stream from Langflow broke: {e}"))),
                        (bytes, buffer, done),
                    ));
                }
                None => done = true,
            }
        }
    })
}

fn parse_event(line: &str) -> Result<StreamEvent, LangflowError> {
    let mut value: Value = serde_json::from_str(line)
        .map_err(|e| LangflowError::BadResponse(format!("stream event is not JSON ({e}): {}", excerpt(line))))?;
    make_storable(&mut value);
    let event = value["event"].as_str().unwrap_or("").to_owned();
    if event.is_empty() {
        return Err(LangflowError::BadResponse(format!("stream event without a type: {}", excerpt(line))));
    }
    Ok(StreamEvent { event, data: value["data"].clone() })
}

/// The chat output's text: `outputs[0].outputs[0].results.message.text` (with fallbacks for
/// the shapes other components answer with).
pub fn output_text(answer: &Value) -> Option<String> {
    let first = &answer["outputs"][0]["outputs"][0];
    [
        &first["results"]["message"]["text"],
        &first["results"]["message"]["data"]["text"],
        &first["outputs"]["message"]["message"],
        &first["messages"][0]["message"],
    ]
    .into_iter()
    .find_map(|v| v.as_str().map(str::to_owned))
}

/// The tokens the chat output's message reports (`properties.usage`, Langflow 1.13's
/// `input_tokens` / `output_tokens`), if any.
pub fn output_usage(answer: &Value) -> Option<TokenUsage> {
    let message = &answer["outputs"][0]["outputs"][0]["results"]["message"];
    [&message["properties"]["usage"], &message["data"]["properties"]["usage"]].into_iter().find_map(|usage| {
        let count = |names: [&str; 2]| names.iter().find_map(|n| usage[*n].as_i64()).filter(|n| *n >= 0);
        let prompt = count(["input_tokens", "prompt_tokens"]);
        let completion = count(["output_tokens", "completion_tokens"]);
        (prompt.is_some() || completion.is_some())
            .then(|| TokenUsage { prompt_tokens: prompt.unwrap_or(0), completion_tokens: completion.unwrap_or(0) })
    })
}

fn shorter(configured: Duration, deadline: Option<Duration>) -> Duration {
    deadline.map_or(configured, |d| d.min(configured))
}

/// Replaces U+0000 with U+FFFD (the replacement character) in every string and key of what
/// Langflow answered. A flow may well output NUL (or the JSON escape `\u0000`), but PostgreSQL
/// stores neither in text nor in jsonb: an execution that ran must be recorded all the same,
/// identically on both backends, so its output is kept with NUL replaced.
pub fn make_storable(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('\0') => *s = engarde::text::replace_nul(s).into_owned(),
        Value::Array(items) => items.iter_mut().for_each(make_storable),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (engarde::text::replace_nul(&k).into_owned(), v))
                    .collect();
            }
            map.values_mut().for_each(make_storable);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ndjson_events_are_split_across_chunks() {
        let chunks: Vec<Result<&[u8], String>> = vec![
            Ok(b"{\"event\":\"add_message\",\"data\":{\"a\":1}}\n{\"ev"),
            Ok(b"ent\":\"token\",\"data\":{}}\n\n"),
            Ok(b"{\"event\":\"end\",\"data\":{}}"),
        ];
        let events: Vec<_> = ndjson_events(futures::stream::iter(chunks)).collect().await;
        let names: Vec<String> = events.into_iter().map(|e| e.unwrap().event).collect();
        assert_eq!(names, ["add_message", "token", "end"]);
    }

    #[tokio::test]
    async fn garbage_and_broken_streams_are_errors() {
        let chunks: Vec<Result<&[u8], String>> = vec![Ok(b"not json\n"), Err("reset".into())];
        let events: Vec<_> = ndjson_events(futures::stream::iter(chunks)).collect().await;
        assert!(matches!(events[0], Err(LangflowError::BadResponse(_))));
        assert!(matches!(events[1], Err(LangflowError::Unavailable(_))));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn nul_in_what_langflow_answers_is_replaced() {
        let line = r#"{"event": "token", "data": {"chunk": "a\u0000b", "k\u0000": ["\u0000"]}}"#;
        let event = parse_event(line).unwrap();
        assert_eq!(event.data, serde_json::json!({"chunk": "a\u{FFFD}b", "k\u{FFFD}": ["\u{FFFD}"]}));
        assert_eq!(excerpt("x\0y"), "x\u{FFFD}y");
    }

    #[test]
    fn the_answer_text_is_found() {
        let answer = serde_json::json!({"outputs": [{"outputs": [{"results": {"message": {"text": "hi"}}}]}]});
        assert_eq!(output_text(&answer).as_deref(), Some("hi"));
        assert_eq!(output_text(&serde_json::json!({})), None);
    }
}
