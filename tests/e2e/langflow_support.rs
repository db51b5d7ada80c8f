//! Langflow for the end-to-end tests.
//!
//! - The real server: `scripts/test` starts the pinned Langflow once per run (`scripts/langflow`)
//!   and exports `TEST_LANGFLOW_URL`; [`RealLangflow`] inspects and drives it over plain HTTP, for
//!   assertions ("the agent's flow exists") and baselines ("what Langflow itself answers").
//! - [`FakeLangflow`]: an in-process imitation of the parts of Langflow's API agent-service uses,
//!   for the faults a real server won't produce on demand: slow answers, error statuses, malformed
//!   JSON, a dropped stream, failed flow creation, an unreachable server.
//!
//! Shapes follow `../shared/langflow/NOTES.md` and were checked against Langflow 1.13.0; where the
//! two differ, the fake follows the server (unknown flow on GET/DELETE: `{"detail":"Flow not
//! found"}`; only `POST /api/v1/run/{id}` says `Flow identifier <id> not found`).

#![allow(dead_code)] // a harness: not every test uses every helper

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// `GET /api/v1/all` of Langflow 1.13.0 cut down to what a generated flow needs:
/// `input_output.ChatInput`, `input_output.ChatOutput`, `models_and_agents."Prompt Template"`,
/// and two model providers (`openai`'s OpenAI and `ollama`'s Ollama components), complete
/// (with their `code`, which a real server needs to run a flow built from them).
pub const CATALOG_FIXTURE: &str = include_str!("fixtures/langflow_catalog.json");

/// Node ids of the flows built by [`prompt_flow`]; tweaks address the Prompt node by its id.
pub const CHAT_INPUT_NODE: &str = "ChatInput-in";
pub const PROMPT_NODE: &str = "Prompt-p1";
pub const CHAT_OUTPUT_NODE: &str = "ChatOutput-out";

/// The real Langflow of this test run.
pub fn real_langflow_url() -> String {
    match std::env::var("TEST_LANGFLOW_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_string(),
        _ => panic!(
            "TEST_LANGFLOW_URL is not set: run scripts/test, which starts Langflow, \
             or set TEST_LANGFLOW_URL (e.g. http://127.0.0.1:7860)"
        ),
    }
}

/// [`CATALOG_FIXTURE`], parsed.
pub fn catalog_fixture() -> Value {
    serde_json::from_str(CATALOG_FIXTURE).expect("tests/e2e/fixtures/langflow_catalog.json is JSON")
}

/// The answer text of a run answer: `outputs[0].outputs[0].results.message.text`.
pub fn answer_text(answer: &Value) -> Option<&str> {
    answer["outputs"][0]["outputs"][0]["results"]["message"]["text"].as_str()
}

/// The `{variables}` of a prompt template, in order of first appearance (`{{` is not one).
pub fn template_variables(template: &str) -> Vec<String> {
    let mut vars = Vec::new();
    render_template(template, |var| {
        if !vars.iter().any(|v| v == var) {
            vars.push(var.to_string());
        }
        String::new()
    });
    vars
}

/// Replaces each `{variable}` (letters, digits, `_`) with `value(variable)`; `{{`/`}}` stand for
/// literal braces, as in Langflow's prompts.
fn render_template(template: &str, mut value: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(end) = tail.find('}').filter(|_| tail.starts_with('{')) {
            let name = &tail[1..end];
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.push_str(&value(name));
                rest = &tail[end + 1..];
                continue;
            }
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

/// The body of `POST /api/v1/flows/` for Chat Input → Prompt Template → Chat Output (NOTES.md),
/// built from `catalog` ([`catalog_fixture`] or a server's `GET /api/v1/all`). `template` holds
/// `{variables}`: `{input}` is fed by Chat Input (the run's `input_value`); every other variable is
/// a field of the Prompt node ([`PROMPT_NODE`]) set from `fields` (empty when not listed) and
/// changeable for one run with a tweak: `{"Prompt-p1": {"step": "…"}}`.
pub fn prompt_flow(catalog: &Value, name: &str, template: &str, fields: &[(&str, &str)]) -> Value {
    let entry = |category: &str, component: &str| -> Value {
        let e = &catalog[category][component];
        assert!(e.is_object(), "the catalog has no {category}.{component}");
        e.clone()
    };
    let chat_input = entry("input_output", "ChatInput");
    let chat_output = entry("input_output", "ChatOutput");
    let mut prompt = entry("models_and_agents", "Prompt Template");

    let mut vars = template_variables(template);
    if !vars.iter().any(|v| v == "input") {
        vars.push("input".into());
    }
    prompt["template"]["template"]["value"] = json!(template);
    for var in &vars {
        let value = fields.iter().find(|(k, _)| k == var).map(|(_, v)| *v).unwrap_or("");
        prompt["template"][var] = json!({
            "advanced": false, "display_name": var, "dynamic": false, "field_type": "str",
            "fileTypes": [], "file_path": "", "info": "", "input_types": ["Message"], "list": false,
            "load_from_db": false, "multiline": true, "name": var, "placeholder": "",
            "required": false, "show": true, "title_case": false, "type": "str", "value": value,
        });
    }
    prompt["custom_fields"] = json!({ "template": vars });
    let output_input_types = chat_output["template"]["input_value"]["input_types"].clone();

    let node = |id: &str, kind: &str, entry: Value, x: i64| {
        json!({"id": id, "type": "genericNode", "position": {"x": x, "y": 0},
               "data": {"id": id, "type": kind, "node": entry}})
    };
    let edge = |source: &str, source_type: &str, output: &str, target: &str, field: &str, input_types: Value| {
        let s = json!({"dataType": source_type, "id": source, "name": output, "output_types": ["Message"]});
        let t = json!({"fieldName": field, "id": target, "inputTypes": input_types, "type": "other"});
        json!({"id": format!("edge-{source}-{target}"), "source": source, "target": target,
               "sourceHandle": s.to_string(), "targetHandle": t.to_string(),
               "data": {"sourceHandle": s, "targetHandle": t}})
    };
    json!({
        "name": name,
        "description": "Chat Input → Prompt Template → Chat Output (end-to-end tests)",
        "data": {
            "nodes": [
                node(CHAT_INPUT_NODE, "ChatInput", chat_input, 0),
                node(PROMPT_NODE, "Prompt Template", prompt, 400),
                node(CHAT_OUTPUT_NODE, "ChatOutput", chat_output, 800),
            ],
            "edges": [
                edge(CHAT_INPUT_NODE, "ChatInput", "message", PROMPT_NODE, "input", json!(["Message"])),
                edge(PROMPT_NODE, "Prompt Template", "prompt", CHAT_OUTPUT_NODE, "input_value", output_input_types),
            ],
        },
    })
}

/// Percent-encodes a query-string value (reqwest's `query` is an optional feature).
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The real server
// ---------------------------------------------------------------------------------------------

/// Plain HTTP calls to a Langflow server (the real one; also works against [`FakeLangflow`]).
/// Every helper panics with the server's status and body when the call does not succeed.
#[derive(Clone)]
pub struct RealLangflow {
    url: String,
    http: reqwest::Client,
}

impl RealLangflow {
    /// The server of this test run ([`real_langflow_url`]).
    pub fn from_env() -> Self {
        Self::new(real_langflow_url())
    }

    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into().trim_end_matches('/').to_string();
        let http = crate::helpers::http_client().timeout(Duration::from_secs(120)).build().expect("HTTP client");
        Self { url, http }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn call(&self, request: reqwest::RequestBuilder, what: &str) -> (StatusCode, String) {
        let response = request.send().await.unwrap_or_else(|e| panic!("Langflow at {}: {what}: {e}", self.url));
        let status = StatusCode::from_u16(response.status().as_u16()).expect("HTTP status");
        let body = response.text().await.unwrap_or_else(|e| panic!("Langflow at {}: {what}: body: {e}", self.url));
        (status, body)
    }

    async fn json(&self, request: reqwest::RequestBuilder, what: &str) -> Value {
        let (status, body) = self.call(request, what).await;
        assert!(status.is_success(), "Langflow at {}: {what}: {status}: {body}", self.url);
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Langflow at {}: {what}: not JSON ({e}): {body}", self.url))
    }

    /// `GET /api/v1/all`: the component catalog.
    pub async fn catalog(&self) -> Value {
        self.json(self.http.get(format!("{}/api/v1/all", self.url)), "GET /api/v1/all").await
    }

    /// `POST /api/v1/flows/`; answers the new flow's id.
    pub async fn create_flow(&self, body: &Value) -> String {
        let flow = self.json(self.http.post(format!("{}/api/v1/flows/", self.url)).json(body), "create a flow").await;
        flow["id"].as_str().unwrap_or_else(|| panic!("created flow without an id: {flow}")).to_string()
    }

    /// `GET /api/v1/flows/{id}`: the flow as Langflow answers it.
    pub async fn flow(&self, id: &str) -> Value {
        self.json(self.http.get(format!("{}/api/v1/flows/{id}", self.url)), "read a flow").await
    }

    /// `GET /api/v1/flows/{id}`: true on 200, false on 404.
    pub async fn flow_exists(&self, id: &str) -> bool {
        let (status, body) = self.call(self.http.get(format!("{}/api/v1/flows/{id}", self.url)), "read a flow").await;
        match status {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            _ => panic!("Langflow at {}: GET flow {id}: {status}: {body}", self.url),
        }
    }

    /// `DELETE /api/v1/flows/{id}`: true when it was deleted, false when there was no such flow.
    pub async fn delete_flow(&self, id: &str) -> bool {
        let (status, body) =
            self.call(self.http.delete(format!("{}/api/v1/flows/{id}", self.url)), "delete a flow").await;
        match status {
            s if s.is_success() => true,
            StatusCode::NOT_FOUND => false,
            _ => panic!("Langflow at {}: DELETE flow {id}: {status}: {body}", self.url),
        }
    }

    /// `GET /api/v1/flows/?header_flows=true`: the ids of every flow (of the auto-login user).
    pub async fn list_flow_ids(&self) -> Vec<String> {
        let url = format!("{}/api/v1/flows/?header_flows=true", self.url);
        let flows = self.json(self.http.get(url), "list flows").await;
        let flows = flows.as_array().unwrap_or_else(|| panic!("flow list is not an array: {flows}"));
        flows.iter().filter_map(|f| f["id"].as_str().map(String::from)).collect()
    }

    /// `GET /api/v1/monitor/messages?session_id=…`: Langflow's own copy of a session's chat, as
    /// (sender, text) in order: `("User", input)`, `("Machine", answer)`, … Session ids are not
    /// scoped to a flow: use unique ones.
    pub async fn session_messages(&self, session_id: &str) -> Vec<(String, String)> {
        let url = format!("{}/api/v1/monitor/messages?session_id={}", self.url, query_value(session_id));
        let messages = self.json(self.http.get(url), "read a session's messages").await;
        let messages = messages.as_array().unwrap_or_else(|| panic!("messages are not an array: {messages}"));
        messages
            .iter()
            .map(|m| (m["sender"].as_str().unwrap_or("").to_string(), m["text"].as_str().unwrap_or("").to_string()))
            .collect()
    }

    /// `POST /api/v1/run/{flow_id}` (chat in, chat out); answers the answer text.
    pub async fn run(&self, flow_id: &str, input: &str, session: &str) -> String {
        self.run_with_tweaks(flow_id, input, session, json!({})).await
    }

    /// [`Self::run`] with tweaks: `{"<node id>": {"<field>": value}}`.
    pub async fn run_with_tweaks(&self, flow_id: &str, input: &str, session: &str, tweaks: Value) -> String {
        let body = json!({"input_value": input, "input_type": "chat", "output_type": "chat",
                          "session_id": session, "tweaks": tweaks});
        let url = format!("{}/api/v1/run/{flow_id}", self.url);
        let answer = self.json(self.http.post(url).json(&body), "run a flow").await;
        answer_text(&answer)
            .unwrap_or_else(|| panic!("run answer without outputs[0].outputs[0].results.message.text: {answer}"))
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// The fake
// ---------------------------------------------------------------------------------------------

/// One `POST /api/v1/run/{id}` the fake received (faulted or not).
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub flow_id: String,
    pub stream: bool,
    /// The request body as sent: `input_value`, `session_id`, `tweaks`, …
    pub body: Value,
    /// The `x-api-key` header, if any.
    pub api_key: Option<String>,
}

/// An in-process Langflow imitation on 127.0.0.1 (a free port), served by the current tokio
/// runtime; dropping it stops it. It stores flows, runs them (a Prompt node's `template` rendered
/// with the input and the node's fields or tweaks; without a Prompt node, an echo) and answers
/// in Langflow's shapes, streamed or not. Faults are set while it runs and apply to the next
/// requests; counters count every run request received, faulted or not.
pub struct FakeLangflow {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<ServerHandle>,
}

struct ServerHandle {
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    catalog: Value,
    state: Mutex<FakeState>,
}

struct FakeState {
    /// Flows in creation order.
    flows: Vec<Value>,
    /// Flows ever created (deleted ones too).
    flows_created: usize,
    messages: Vec<Value>,
    delay: Duration,
    event_gap: Duration,
    fail_runs: Option<(StatusCode, usize)>,
    garbage_runs: usize,
    drop_stream_after: Option<usize>,
    fail_flow_creation: usize,
    /// Flow creations still let through before `fail_flow_creation` applies.
    fail_flow_creation_after: usize,
    api_key: Option<String>,
    /// What every run answers instead of the rendered prompt, when set.
    answer: Option<String>,
    /// Flows whose name holds this are refused (422), as Langflow refuses a body it cannot take.
    refuse_flows_named: Option<String>,
    /// Flows whose name holds this are created, but read back as not found (404).
    hide_flows_named: Option<String>,
    runs: usize,
    runs_by: HashMap<(String, String), usize>,
    run_requests: Vec<RunRequest>,
}

enum RunFault {
    Status(StatusCode),
    Garbage,
}

impl FakeLangflow {
    /// Starts it on 127.0.0.1:0 in the current tokio runtime.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            catalog: catalog_fixture(),
            state: Mutex::new(FakeState {
                flows: Vec::new(),
                flows_created: 0,
                messages: Vec::new(),
                delay: Duration::ZERO,
                event_gap: Duration::from_millis(100),
                fail_runs: None,
                garbage_runs: 0,
                drop_stream_after: None,
                fail_flow_creation: 0,
                fail_flow_creation_after: 0,
                api_key: None,
                answer: None,
                refuse_flows_named: None,
                hide_flows_named: None,
                runs: 0,
                runs_by: HashMap::new(),
                run_requests: Vec::new(),
            }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let server = Some(serve(listener, shared.clone()));
        Self { addr, shared, server }
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and closes idle connections (callers then get "connection refused");
    /// flows, counters and faults are kept for [`Self::restart`].
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown.send(());
            let abort = server.task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server.task).await.is_err() {
                abort.abort(); // a request still in flight (a long delay): the listener goes anyway
            }
        }
    }

    /// Listens again on the same port, with the same state.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener =
            tokio::net::TcpListener::bind(self.addr).await.unwrap_or_else(|e| panic!("rebind {}: {e}", self.addr));
        self.server = Some(serve(listener, self.shared.clone()));
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.shared.lock()
    }

    /// Every run (streamed or not) sleeps this long before answering (default: none).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// The pause between two streamed events (default 100 ms).
    pub fn set_event_gap(&self, gap: Duration) {
        self.state().event_gap = gap;
    }

    /// The next `n` runs answer HTTP `status` with `{"detail": "…"}`.
    pub fn fail_runs_with(&self, status: u16, n: usize) {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        self.state().fail_runs = (n > 0).then_some((status, n));
    }

    /// The next `n` runs answer 200 (`application/json`) with a body that is not JSON.
    pub fn garbage_runs(&self, n: usize) {
        self.state().garbage_runs = n;
    }

    /// The next streamed run sends `k` events (at most the `add_message` ones), then closes the
    /// connection mid-body, without `end`.
    pub fn drop_stream_after_events(&self, k: usize) {
        self.state().drop_stream_after = Some(k);
    }

    /// The next `n` `POST /api/v1/flows/` answer 500 and store nothing.
    pub fn fail_flow_creation(&self, n: usize) {
        self.fail_flow_creation_after(0, n);
    }

    /// The next `successes` `POST /api/v1/flows/` succeed, then `n` answer 500 and store nothing.
    pub fn fail_flow_creation_after(&self, successes: usize, n: usize) {
        let mut state = self.state();
        state.fail_flow_creation_after = successes;
        state.fail_flow_creation = n;
    }

    /// With `Some(key)`, every `/api/v1/*` call except `/api/v1/version` needs header
    /// `x-api-key: key`, else 403 `{"detail": "An API key must be passed as query or header"}`
    /// (none sent) or `{"detail": "Invalid or missing API key"}` (wrong one), as Langflow 1.13.
    pub fn require_api_key(&self, key: Option<&str>) {
        self.state().api_key = key.map(String::from);
    }

    /// Every later run (streamed or not) answers `text` as its chat output instead of the
    /// rendered prompt (`None`: render again). The text goes out JSON-encoded, as Langflow's.
    pub fn answer_with(&self, text: Option<&str>) {
        self.state().answer = text.map(String::from);
    }

    /// Every later `POST /api/v1/flows/` of a flow whose name holds `part` answers 422 with a
    /// `detail`, and stores nothing (`None`: accept them again).
    pub fn refuse_flows_named(&self, part: Option<&str>) {
        self.state().refuse_flows_named = part.map(String::from);
    }

    /// Every later `GET /api/v1/flows/{id}` of a flow whose name holds `part` answers 404, as
    /// for a flow deleted behind its owner's back (`None`: answer them again). The flows are
    /// created, listed and run as usual.
    pub fn hide_flows_named(&self, part: Option<&str>) {
        self.state().hide_flows_named = part.map(String::from);
    }

    /// Run requests received so far, faulted or not.
    pub fn runs(&self) -> usize {
        self.state().runs
    }

    /// Run requests received for this flow and session (the session defaults to the flow id, as
    /// in Langflow), faulted or not.
    pub fn runs_for(&self, flow_id: &str, session_id: &str) -> usize {
        self.state().runs_by.get(&(flow_id.to_string(), session_id.to_string())).copied().unwrap_or(0)
    }

    /// Every run request received, in order.
    pub fn run_requests(&self) -> Vec<RunRequest> {
        self.state().run_requests.clone()
    }

    /// Ids of the flows present, in creation order.
    /// How many flows were ever created here, deleted ones included.
    pub fn flows_created(&self) -> usize {
        self.state().flows_created
    }

    pub fn flows(&self) -> Vec<String> {
        self.state().flows.iter().filter_map(|f| f["id"].as_str().map(String::from)).collect()
    }

    /// A stored flow as Langflow would answer `GET /api/v1/flows/{id}`.
    pub fn flow(&self, id: &str) -> Option<Value> {
        self.state().flows.iter().find(|f| f["id"] == id).cloned()
    }

    /// Deletes a flow behind its owner's back; true if it was there.
    pub fn remove_flow(&self, id: &str) -> bool {
        let mut state = self.state();
        let before = state.flows.len();
        state.flows.retain(|f| f["id"] != id);
        state.flows.len() != before
    }
}

impl Drop for FakeLangflow {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown.send(());
            // The task ends once its connections are done; the listener closes at once.
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Langflow's API-key check, when the test asked for one: the refusal, if any.
    fn check_key(&self, headers: &HeaderMap) -> Option<Response> {
        let expected = self.lock().api_key.clone()?;
        match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            Some(key) if key == expected => None,
            Some(_) => Some(detail(StatusCode::FORBIDDEN, "Invalid or missing API key")),
            None => Some(detail(StatusCode::FORBIDDEN, "An API key must be passed as query or header")),
        }
    }
}

type SharedState = State<Arc<Shared>>;

fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> ServerHandle {
    let app = Router::new()
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/api/v1/version", get(version))
        .route("/api/v1/all", get(catalog))
        .route("/api/v1/flows/", get(list_flows).post(create_flow))
        .route("/api/v1/flows", get(list_flows).post(create_flow))
        .route("/api/v1/flows/{id}", get(read_flow).patch(update_flow).delete(delete_flow))
        .route("/api/v1/run/{id}", axum::routing::post(run))
        .route("/api/v1/monitor/messages", get(messages))
        .with_state(shared);
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = signal.await;
            })
            .await;
    });
    ServerHandle { shutdown, task }
}

fn detail(status: StatusCode, detail: impl Into<Value>) -> Response {
    (status, axum::Json(json!({ "detail": detail.into() }))).into_response()
}

fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"))
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string()
}

/// FastAPI's 422 for a path id that is not a UUID.
fn check_uuid(id: &str) -> Option<Response> {
    let e = uuid::Uuid::parse_str(id).err()?;
    Some(detail(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!([{"type": "uuid_parsing", "loc": ["path", "flow_id"], "msg": format!("Input should be a valid UUID, {e}")}]),
    ))
}

async fn version() -> axum::Json<Value> {
    axum::Json(json!({"version": "1.13.0-fake", "main_version": "1.13.0", "package": "Langflow"}))
}

async fn catalog(State(shared): SharedState, headers: HeaderMap) -> Response {
    if let Some(denied) = shared.check_key(&headers) {
        return denied;
    }
    axum::Json(shared.catalog.clone()).into_response()
}

async fn create_flow(State(shared): SharedState, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(denied) = shared.check_key(&headers) {
        return denied;
    }
    let mut state = shared.lock();
    if state.fail_flow_creation_after > 0 {
        state.fail_flow_creation_after -= 1;
    } else if state.fail_flow_creation > 0 {
        state.fail_flow_creation -= 1;
        return detail(StatusCode::INTERNAL_SERVER_ERROR, "fake Langflow: flow creation failure injected by the test");
    }
    let mut flow = match serde_json::from_slice::<Value>(&body) {
        Ok(flow @ Value::Object(_)) => flow,
        _ => {
            return detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!([{"type": "json_invalid", "loc": ["body"], "msg": "JSON object expected"}]),
            );
        }
    };
    // Langflow keeps names unique per user: "name", "name (1)", "name (2)", …
    let base = flow["name"].as_str().unwrap_or("Untitled flow").to_string();
    if state.refuse_flows_named.as_ref().is_some_and(|part| base.contains(part.as_str())) {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "fake Langflow: this flow is refused by the test");
    }
    let taken: HashSet<String> = state.flows.iter().filter_map(|f| f["name"].as_str().map(String::from)).collect();
    let mut name = base.clone();
    let mut n = 0;
    while taken.contains(&name) {
        n += 1;
        name = format!("{base} ({n})");
    }
    let defaults = json!({
        "description": null, "icon": null, "icon_bg_color": null, "gradient": null, "data": null,
        "is_component": false, "webhook": false, "endpoint_name": null, "tags": null, "locked": false,
        "mcp_enabled": false, "action_name": null, "action_description": null, "access_type": "PRIVATE",
        "flow_type": "workflow",
    });
    for (key, value) in defaults.as_object().expect("object") {
        if flow.get(key).is_none() {
            flow[key] = value.clone();
        }
    }
    flow["name"] = json!(name);
    flow["id"] = json!(uuid::Uuid::new_v4().to_string());
    flow["user_id"] = json!("00000000-0000-4000-8000-00000000fa4e");
    flow["folder_id"] = json!("00000000-0000-4000-8000-0000000f01de");
    flow["updated_at"] = json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S+00:00").to_string());
    state.flows.push(flow.clone());
    state.flows_created += 1;
    (StatusCode::CREATED, axum::Json(flow)).into_response()
}

async fn list_flows(
    State(shared): SharedState,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(denied) = shared.check_key(&headers) {
        return denied;
    }
    let header_only = is_true(query.get("header_flows"));
    let flows: Vec<Value> = shared
        .lock()
        .flows
        .iter()
        .map(|f| {
            if !header_only {
                return f.clone();
            }
            let mut header = serde_json::Map::new();
            for key in
                ["id", "name", "folder_id", "is_component", "endpoint_name", "description", "access_type", "tags"]
            {
                header.insert(key.into(), f[key].clone());
            }
            header.insert("data".into(), Value::Null);
            header.insert("updated_at".into(), f["updated_at"].clone());
            Value::Object(header)
        })
        .collect();
    axum::Json(flows).into_response()
}

async fn read_flow(State(shared): SharedState, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(response) = shared.check_key(&headers).or_else(|| check_uuid(&id)) {
        return response;
    }
    let state = shared.lock();
    let hidden = |flow: &Value| {
        state.hide_flows_named.as_ref().is_some_and(|part| flow["name"].as_str().unwrap_or("").contains(part.as_str()))
    };
    match state.flows.iter().find(|f| f["id"] == id.as_str()) {
        Some(flow) if !hidden(flow) => axum::Json(flow.clone()).into_response(),
        _ => detail(StatusCode::NOT_FOUND, "Flow not found"),
    }
}

/// `PATCH /api/v1/flows/{id}`: the fields sent replace the flow's; answers the flow.
async fn update_flow(State(shared): SharedState, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    if let Some(response) = shared.check_key(&headers).or_else(|| check_uuid(&id)) {
        return response;
    }
    let Ok(Value::Object(changes)) = serde_json::from_slice::<Value>(&body) else {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!([{"type": "json_invalid", "loc": ["body"], "msg": "JSON object expected"}]),
        );
    };
    let mut state = shared.lock();
    let Some(flow) = state.flows.iter_mut().find(|f| f["id"] == id.as_str()) else {
        return detail(StatusCode::NOT_FOUND, "Flow not found");
    };
    for (key, value) in changes {
        flow[key.as_str()] = value;
    }
    axum::Json(flow.clone()).into_response()
}

async fn delete_flow(State(shared): SharedState, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(response) = shared.check_key(&headers).or_else(|| check_uuid(&id)) {
        return response;
    }
    let mut state = shared.lock();
    let before = state.flows.len();
    state.flows.retain(|f| f["id"] != id.as_str());
    if state.flows.len() == before {
        return detail(StatusCode::NOT_FOUND, "Flow not found");
    }
    axum::Json(json!({"message": "Flow deleted successfully"})).into_response()
}

async fn messages(
    State(shared): SharedState,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(denied) = shared.check_key(&headers) {
        return denied;
    }
    let found: Vec<Value> = shared
        .lock()
        .messages
        .iter()
        .filter(|m| query.get("session_id").is_none_or(|s| m["session_id"] == s.as_str()))
        .filter(|m| query.get("flow_id").is_none_or(|f| m["flow_id"] == f.as_str()))
        .cloned()
        .collect();
    axum::Json(found).into_response()
}

/// What a run of `flow` answers: the Prompt node's template rendered, or the input echoed.
fn render_run(flow: &Value, input: &str, tweaks: &Value) -> String {
    let empty = Vec::new();
    let nodes = flow["data"]["nodes"].as_array().unwrap_or(&empty);
    let edges = flow["data"]["edges"].as_array().unwrap_or(&empty);
    let Some(prompt) = nodes.iter().find(|n| n["data"]["node"]["template"]["template"]["type"] == "prompt") else {
        return input.to_string();
    };
    let prompt_id = prompt["id"].as_str().unwrap_or_default();
    let field = |name: &str| -> Option<String> {
        let value = match &tweaks[prompt_id][name] {
            Value::Null => &prompt["data"]["node"]["template"][name]["value"],
            tweaked => tweaked,
        };
        match value {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    };
    let chat_inputs: HashSet<&str> =
        nodes.iter().filter(|n| n["data"]["type"] == "ChatInput").filter_map(|n| n["id"].as_str()).collect();
    let fed_by_input: HashSet<&str> = edges
        .iter()
        .filter(|e| e["target"] == prompt_id && e["source"].as_str().is_some_and(|s| chat_inputs.contains(s)))
        .filter_map(|e| e["data"]["targetHandle"]["fieldName"].as_str())
        .collect();
    let template = field("template").unwrap_or_default();
    render_template(&template, |var| {
        let own = field(var).filter(|v| !v.is_empty());
        if fed_by_input.contains(var) || (var == "input" && own.is_none()) {
            input.to_string()
        } else {
            own.unwrap_or_default()
        }
    })
}

fn message(sender: &str, sender_name: &str, session: &str, flow_id: &str, run_id: &str, text: &str) -> Value {
    let inner = json!({
        "timestamp": now(), "sender": sender, "sender_name": sender_name, "session_id": session,
        "context_id": "", "text": text, "files": [], "error": false, "edit": false, "properties": {},
        "category": "message", "content_blocks": [], "id": uuid::Uuid::new_v4().to_string(),
        "flow_id": flow_id, "run_id": run_id, "duration": null,
    });
    let mut outer = inner.clone();
    outer["text_key"] = json!("text");
    outer["default_value"] = json!("");
    outer["data"] = inner;
    outer
}

fn run_answer(session: &str, input: &str, reply: &Value, output_node: &str) -> Value {
    let text = &reply["text"];
    json!({
        "session_id": session,
        "outputs": [{
            "inputs": {"input_value": input},
            "outputs": [{
                "results": {"message": reply},
                "artifacts": {"message": text, "sender": "Machine", "sender_name": "AI", "files": [], "type": "object"},
                "outputs": {"message": {"message": text, "type": "text"}},
                "logs": {"message": []},
                "messages": [{"message": text, "sender": "Machine", "sender_name": "AI", "session_id": session,
                              "stream_url": null, "component_id": output_node, "files": [], "type": "text"}],
                "timedelta": null, "duration": null, "component_display_name": "Chat Output",
                "component_id": output_node, "used_frozen_result": false, "token_usage": null,
            }],
        }],
    })
}

async fn run(
    State(shared): SharedState,
    headers: HeaderMap,
    Path(flow_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(denied) = shared.check_key(&headers) {
        return denied;
    }
    let stream = is_true(query.get("stream"));
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ if body.is_empty() => json!({}),
        _ => {
            return detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!([{"type": "json_invalid", "loc": ["body"], "msg": "JSON object expected"}]),
            );
        }
    };
    let input = request["input_value"].as_str().unwrap_or_default().to_string();
    let session = request["session_id"].as_str().filter(|s| !s.is_empty()).unwrap_or(&flow_id).to_string();

    let (delay, fault, drop_after, gap) = {
        let mut state = shared.lock();
        state.runs += 1;
        *state.runs_by.entry((flow_id.clone(), session.clone())).or_default() += 1;
        state.run_requests.push(RunRequest {
            flow_id: flow_id.clone(),
            stream,
            body: request.clone(),
            api_key: headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(String::from),
        });
        let fault = if let Some((status, n)) = state.fail_runs {
            state.fail_runs = (n > 1).then_some((status, n - 1));
            Some(RunFault::Status(status))
        } else if state.garbage_runs > 0 {
            state.garbage_runs -= 1;
            Some(RunFault::Garbage)
        } else {
            None
        };
        let drop_after = if stream && fault.is_none() { state.drop_stream_after.take() } else { None };
        (state.delay, fault, drop_after, state.event_gap)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(RunFault::Status(status)) => {
            return detail(status, format!("fake Langflow: HTTP {} injected by the test", status.as_u16()));
        }
        Some(RunFault::Garbage) => {
            return ([(header::CONTENT_TYPE, "application/json")], "{\"session_id\": \"oops\", \"outputs\": [<html>")
                .into_response();
        }
        None => {}
    }

    let (user, reply, answer) = {
        let mut state = shared.lock();
        let Some(flow) = state.flows.iter().find(|f| f["id"] == flow_id.as_str()) else {
            return detail(StatusCode::NOT_FOUND, format!("Flow identifier {flow_id} not found"));
        };
        let text = match &state.answer {
            Some(answer) => answer.clone(),
            None => render_run(flow, &input, &request["tweaks"]),
        };
        let output_node = flow["data"]["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["data"]["type"] == "ChatOutput"))
            .and_then(|n| n["id"].as_str())
            .unwrap_or("ChatOutput")
            .to_string();
        let run_id = uuid::Uuid::new_v4().to_string();
        let user = message("User", "User", &session, &flow_id, &run_id, &input);
        let reply = message("Machine", "AI", &session, &flow_id, &run_id, &text);
        for m in [&user, &reply] {
            let mut stored = m["data"].clone();
            stored["files"] = json!("[]");
            state.messages.push(stored);
        }
        let answer = run_answer(&session, &input, &reply, &output_node);
        (user, reply, answer)
    };
    if !stream {
        return axum::Json(answer).into_response();
    }

    // Newline-delimited JSON events, each followed by a blank line as Langflow writes them.
    let events: Vec<Bytes> = [
        json!({"event": "add_message", "data": user}),
        json!({"event": "add_message", "data": reply}),
        json!({"event": "end", "data": {"result": answer}}),
    ]
    .iter()
    .map(|e| Bytes::from(format!("{e}\n\n")))
    .collect();
    let last = events.len() - 1; // `end` is never sent before a drop
    let body = futures::stream::unfold(0usize, move |i| {
        let events = events.clone();
        async move {
            if i > last {
                return None;
            }
            let drop_now = drop_after.is_some_and(|k| i >= k.min(last));
            // The pause also lets what was sent so far reach the client before a drop.
            if i > 0 || drop_now {
                tokio::time::sleep(gap).await;
            }
            if drop_now {
                // An error in the body makes the server abort the connection mid-response.
                return Some((Err(std::io::Error::other("fake Langflow dropped the stream")), last + 1));
            }
            Some((Ok(events[i].clone()), i + 1))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .body(Body::from_stream(body))
        .expect("stream response")
}

// ---------------------------------------------------------------------------------------------
// Tests of the harness itself
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn http() -> reqwest::Client {
        crate::helpers::http_client().timeout(Duration::from_secs(30)).build().unwrap()
    }

    fn run_body(input: &str, session: &str, tweaks: Value) -> Value {
        json!({"input_value": input, "input_type": "chat", "output_type": "chat", "session_id": session, "tweaks": tweaks})
    }

    /// A fake with one prompt flow in it; answers (fake, flow id).
    async fn fake_with_flow() -> (FakeLangflow, String) {
        let fake = FakeLangflow::start().await;
        let body = prompt_flow(&catalog_fixture(), "steps", "Step: {step}. User said: {input}", &[("step", "analyze")]);
        let id = RealLangflow::new(fake.url()).create_flow(&body).await;
        (fake, id)
    }

    async fn post_run(fake: &FakeLangflow, id: &str, stream: bool, body: &Value) -> reqwest::Response {
        let q = if stream { "?stream=true" } else { "" };
        http().post(format!("{}/api/v1/run/{id}{q}", fake.url())).json(body).send().await.unwrap()
    }

    /// Reads a streamed answer chunk by chunk: (events with their arrival time, the error that
    /// ended it if any).
    async fn read_events(mut response: reqwest::Response) -> (Vec<(Value, Instant)>, Option<reqwest::Error>) {
        let (mut events, mut buffer) = (Vec::new(), String::new());
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    buffer.push_str(std::str::from_utf8(&chunk).unwrap());
                    while let Some(end) = buffer.find('\n') {
                        let line: String = buffer.drain(..=end).collect();
                        if !line.trim().is_empty() {
                            events.push((serde_json::from_str(line.trim()).unwrap(), Instant::now()));
                        }
                    }
                }
                Ok(None) => return (events, None),
                Err(e) => return (events, Some(e)),
            }
        }
    }

    #[test]
    fn templates_render_like_langflow_prompts() {
        assert_eq!(template_variables("{step}: {input} {{literal}} {step} { x }"), ["step", "input"]);
        let rendered = render_template("{a}-{b} {{a}} {not valid} {", |v| v.to_uppercase());
        assert_eq!(rendered, "A-B {a} {not valid} {");
    }

    #[tokio::test]
    async fn fake_answers_health_version_and_a_real_shaped_catalog() {
        let fake = FakeLangflow::start().await;
        let get = |path: &str| http().get(format!("{}{path}", fake.url())).send();
        assert_eq!(get("/health").await.unwrap().json::<Value>().await.unwrap(), json!({"status": "ok"}));
        let version: Value = get("/api/v1/version").await.unwrap().json().await.unwrap();
        assert_eq!(version["version"], "1.13.0-fake");
        let catalog: Value = get("/api/v1/all").await.unwrap().json().await.unwrap();
        assert_eq!(catalog["input_output"]["ChatInput"]["outputs"][0]["name"], "message");
        let output_types = &catalog["input_output"]["ChatOutput"]["template"]["input_value"]["input_types"];
        assert!(output_types.as_array().unwrap().contains(&json!("Message")), "{output_types}");
        assert_eq!(catalog["models_and_agents"]["Prompt Template"]["template"]["template"]["type"], "prompt");
        assert_eq!(catalog, catalog_fixture());
    }

    #[tokio::test]
    async fn fake_stores_lists_reads_and_deletes_flows_like_langflow() {
        let (fake, id) = fake_with_flow().await;
        let client = RealLangflow::new(fake.url());
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert_eq!(fake.flows(), std::slice::from_ref(&id));
        assert!(client.flow_exists(&id).await);
        assert_eq!(client.list_flow_ids().await, std::slice::from_ref(&id));

        // Same name again: Langflow keeps names unique.
        let again = client.create_flow(&json!({"name": "steps", "data": {"nodes": [], "edges": []}})).await;
        assert_eq!(fake.flow(&again).unwrap()["name"], "steps (1)");
        let created = fake.flow(&id).unwrap();
        assert_eq!(created["data"]["nodes"][1]["id"], PROMPT_NODE);
        assert!(created["folder_id"].is_string() && created["user_id"].is_string());

        let header: Vec<Value> = http()
            .get(format!("{}/api/v1/flows/?header_flows=true", fake.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(header.iter().all(|f| f["data"].is_null()), "{header:?}");

        let unknown = uuid::Uuid::new_v4().to_string();
        let response = http().get(format!("{}/api/v1/flows/{unknown}", fake.url())).send().await.unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(response.json::<Value>().await.unwrap(), json!({"detail": "Flow not found"}));
        assert!(!client.flow_exists(&unknown).await);

        assert!(client.delete_flow(&again).await);
        assert!(!client.delete_flow(&again).await);
        assert!(fake.remove_flow(&id));
        assert!(!client.flow_exists(&id).await);
        assert!(fake.flows().is_empty());
        assert!(client.list_flow_ids().await.is_empty());
    }

    #[tokio::test]
    async fn fake_runs_render_the_prompt_with_fields_and_tweaks() {
        let (fake, id) = fake_with_flow().await;
        let client = RealLangflow::new(fake.url());
        assert_eq!(client.run(&id, "hello", "s1").await, "Step: analyze. User said: hello");
        let tweaks = json!({PROMPT_NODE: {"step": "generate"}, "Unknown-1": {"x": 1}});
        assert_eq!(client.run_with_tweaks(&id, "again", "s1", tweaks).await, "Step: generate. User said: again");
        assert_eq!(client.run(&id, "other", "s2").await, "Step: analyze. User said: other");

        assert_eq!(fake.runs(), 3);
        assert_eq!(fake.runs_for(&id, "s1"), 2);
        assert_eq!(fake.runs_for(&id, "s2"), 1);
        assert_eq!(fake.run_requests()[1].body["tweaks"][PROMPT_NODE]["step"], "generate");
        let s1 = client.session_messages("s1").await;
        let expected = [
            ("User", "hello"),
            ("Machine", "Step: analyze. User said: hello"),
            ("User", "again"),
            ("Machine", "Step: generate. User said: again"),
        ];
        assert_eq!(s1, expected.map(|(s, t)| (s.to_string(), t.to_string())));

        // The full answer's shape, and Langflow's defaults.
        let answer: Value = post_run(&fake, &id, false, &json!({"input_value": "x"})).await.json().await.unwrap();
        assert_eq!(answer["session_id"], id.as_str(), "the session defaults to the flow id");
        assert_eq!(answer["outputs"][0]["inputs"]["input_value"], "x");
        assert_eq!(answer_text(&answer), Some("Step: analyze. User said: x"));
        assert_eq!(answer["outputs"][0]["outputs"][0]["component_id"], CHAT_OUTPUT_NODE);
        assert_eq!(fake.runs_for(&id, &id), 1);

        // A flow without a Prompt node echoes; an unknown flow is a 404 saying so.
        let echo = client.create_flow(&json!({"name": "echo", "data": {"nodes": [], "edges": []}})).await;
        assert_eq!(client.run(&echo, "ping", "s3").await, "ping");
        let unknown = uuid::Uuid::new_v4().to_string();
        let response = post_run(&fake, &unknown, false, &run_body("x", "s", json!({}))).await;
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"detail": format!("Flow identifier {unknown} not found")})
        );
    }

    #[tokio::test]
    async fn fake_streams_events_one_by_one_then_end() {
        let (fake, id) = fake_with_flow().await;
        fake.set_event_gap(Duration::from_millis(150));
        let response = post_run(&fake, &id, true, &run_body("hi", "st", json!({}))).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers()[header::CONTENT_TYPE.as_str()].to_str().unwrap().starts_with("text/event-stream"));
        let (events, error) = read_events(response).await;
        assert!(error.is_none(), "{error:?}");
        let kinds: Vec<&str> = events.iter().map(|(e, _)| e["event"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["add_message", "add_message", "end"]);
        assert_eq!(events[0].0["data"]["sender"], "User");
        assert_eq!(events[0].0["data"]["text"], "hi");
        assert_eq!(events[1].0["data"]["sender"], "Machine");
        assert_eq!(events[1].0["data"]["text"], "Step: analyze. User said: hi");
        assert_eq!(answer_text(&events[2].0["data"]["result"]), Some("Step: analyze. User said: hi"));
        // Flushed as they are made: the first event arrived well before the end.
        let spread = events[2].1 - events[0].1;
        assert!(spread >= Duration::from_millis(150), "events arrived together ({spread:?})");
        assert_eq!(fake.runs_for(&id, "st"), 1);
    }

    #[tokio::test]
    async fn fake_delay_makes_every_run_slow() {
        let (fake, id) = fake_with_flow().await;
        fake.set_delay(Duration::from_millis(400));
        let started = Instant::now();
        let text = RealLangflow::new(fake.url()).run(&id, "slow", "d").await;
        assert_eq!(text, "Step: analyze. User said: slow");
        assert!(started.elapsed() >= Duration::from_millis(400));

        let impatient = crate::helpers::http_client().timeout(Duration::from_millis(100)).build().unwrap();
        let err = impatient
            .post(format!("{}/api/v1/run/{id}?stream=true", fake.url()))
            .json(&run_body("x", "d", json!({})))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");

        fake.set_delay(Duration::ZERO);
        RealLangflow::new(fake.url()).run(&id, "fast", "d").await;
        assert_eq!(fake.runs(), 3);
    }

    #[tokio::test]
    async fn fake_fails_the_next_runs_with_a_status() {
        let (fake, id) = fake_with_flow().await;
        fake.fail_runs_with(503, 2);
        for stream in [false, true] {
            let response = post_run(&fake, &id, stream, &run_body("x", "f", json!({}))).await;
            assert_eq!(response.status(), 503);
            assert!(response.json::<Value>().await.unwrap()["detail"].as_str().unwrap().contains("503"));
        }
        assert_eq!(RealLangflow::new(fake.url()).run(&id, "x", "f").await, "Step: analyze. User said: x");
        assert_eq!(fake.runs_for(&id, "f"), 3);
        // Faulted runs leave no messages behind.
        assert_eq!(RealLangflow::new(fake.url()).session_messages("f").await.len(), 2);
    }

    #[tokio::test]
    async fn fake_answers_garbage_for_the_next_runs() {
        let (fake, id) = fake_with_flow().await;
        fake.garbage_runs(1);
        let response = post_run(&fake, &id, false, &run_body("x", "g", json!({}))).await;
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
        assert_eq!(RealLangflow::new(fake.url()).run(&id, "x", "g").await, "Step: analyze. User said: x");
        assert_eq!(fake.runs(), 2);
    }

    #[tokio::test]
    async fn fake_drops_the_next_stream_after_k_events() {
        let (fake, id) = fake_with_flow().await;
        fake.set_event_gap(Duration::from_millis(20));
        fake.drop_stream_after_events(1);
        let (events, error) = read_events(post_run(&fake, &id, true, &run_body("x", "ds", json!({}))).await).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0["event"], "add_message");
        assert!(error.is_some(), "the connection should have been cut");

        // k = 0: the answer starts (200, headers), then the connection is cut.
        fake.drop_stream_after_events(0);
        let response = post_run(&fake, &id, true, &run_body("x", "ds", json!({}))).await;
        assert_eq!(response.status(), 200);
        let (events, error) = read_events(response).await;
        assert!(events.is_empty() && error.is_some(), "{events:?} {error:?}");

        // k past the last message: every add_message, still no end.
        fake.drop_stream_after_events(10);
        let (events, error) = read_events(post_run(&fake, &id, true, &run_body("x", "ds", json!({}))).await).await;
        assert_eq!(events.iter().map(|(e, _)| e["event"].as_str().unwrap()).collect::<Vec<_>>(), ["add_message"; 2]);
        assert!(error.is_some());

        // Only the next stream: the one after is whole.
        let (events, error) = read_events(post_run(&fake, &id, true, &run_body("x", "ds", json!({}))).await).await;
        assert!(error.is_none());
        assert_eq!(events.last().unwrap().0["event"], "end");
    }

    #[tokio::test]
    async fn fake_fails_the_next_flow_creations() {
        let fake = FakeLangflow::start().await;
        fake.fail_flow_creation(1);
        let body = prompt_flow(&catalog_fixture(), "f", "{input}", &[]);
        let response = http().post(format!("{}/api/v1/flows/", fake.url())).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 500);
        assert!(fake.flows().is_empty());
        let response = http().post(format!("{}/api/v1/flows/", fake.url())).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 201);
        let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        assert_eq!(fake.flows(), [id]);
    }

    #[tokio::test]
    async fn fake_checks_the_api_key_when_asked() {
        let (fake, id) = fake_with_flow().await;
        fake.require_api_key(Some("sk-test"));
        let url = format!("{}/api/v1/run/{id}", fake.url());
        let body = run_body("x", "k", json!({}));
        let none = http().post(&url).json(&body).send().await.unwrap();
        assert_eq!(none.status(), 403);
        assert_eq!(none.json::<Value>().await.unwrap()["detail"], "An API key must be passed as query or header");
        let wrong = http().post(&url).header("x-api-key", "nope").json(&body).send().await.unwrap();
        assert_eq!(wrong.status(), 403);
        let right = http().post(&url).header("x-api-key", "sk-test").json(&body).send().await.unwrap();
        assert_eq!(right.status(), 200);
        assert_eq!(fake.run_requests().last().unwrap().api_key.as_deref(), Some("sk-test"));
        assert_eq!(http().get(format!("{}/health", fake.url())).send().await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn fake_stops_and_restarts_on_the_same_port() {
        let (mut fake, id) = fake_with_flow().await;
        let client = RealLangflow::new(fake.url());
        client.run(&id, "before", "r").await; // leaves a keep-alive connection behind
        fake.stop().await;
        let err = http().get(format!("{}/health", fake.url())).send().await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        fake.restart().await;
        assert_eq!(client.run(&id, "after", "r").await, "Step: analyze. User said: after");
        assert_eq!(fake.runs_for(&id, "r"), 2);
    }

    #[tokio::test]
    async fn fake_stops_when_dropped() {
        let fake = FakeLangflow::start().await;
        let url = fake.url();
        drop(fake);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = http().get(format!("{url}/health")).send().await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }

    /// The real server (TEST_LANGFLOW_URL) runs a flow built from the fixture: the fixture's
    /// entries are complete enough to run, and the fake's answers match the real ones.
    #[tokio::test]
    async fn real_langflow_renders_a_flow_built_from_the_fixture() {
        let real = RealLangflow::from_env();
        let name = format!("e2e-langflow-support-{}", uuid::Uuid::new_v4().simple());
        let template = "Step: {step}. User said: {input}";
        let body = prompt_flow(&catalog_fixture(), &name, template, &[("step", "analyze")]);
        let id = real.create_flow(&body).await;
        assert!(real.flow_exists(&id).await);
        assert!(real.list_flow_ids().await.contains(&id));

        let session = format!("s-{}", uuid::Uuid::new_v4().simple());
        assert_eq!(real.run(&id, "hello", &session).await, "Step: analyze. User said: hello");
        let tweaks = json!({PROMPT_NODE: {"step": "generate"}});
        assert_eq!(
            real.run_with_tweaks(&id, "again", &session, tweaks.clone()).await,
            "Step: generate. User said: again"
        );
        let messages = real.session_messages(&session).await;
        let senders: Vec<&str> = messages.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(senders, ["User", "Machine", "User", "Machine"], "{messages:?}");
        assert_eq!(messages[3].1, "Step: generate. User said: again");

        // The fake answers the same flow the same way.
        let fake = FakeLangflow::start().await;
        let fake_client = RealLangflow::new(fake.url());
        let fake_id = fake_client.create_flow(&body).await;
        assert_eq!(
            fake_client.run_with_tweaks(&fake_id, "again", &session, tweaks).await,
            "Step: generate. User said: again"
        );

        assert!(real.delete_flow(&id).await);
        assert!(!real.flow_exists(&id).await);
        assert!(!real.delete_flow(&id).await);
    }
}
