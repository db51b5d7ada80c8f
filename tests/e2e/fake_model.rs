//! A fake language model for the tests (never the product) on loopback, that the real Langflow
//! calls: OpenAI's chat completions (`/v1/chat/completions`, chunks over SSE when asked to
//! stream, usage in the last one as with `stream_options.include_usage`) and Ollama's chat
//! (`/api/chat`, newline-delimited JSON, its token counts in the last line). It records every
//! request it gets and can be told to fail: 401 for a key it does not know (OpenAI's API only;
//! Ollama has none), 429 with a retry hint, 500, or to answer slowly.
//!
//! Langflow refuses loopback model servers and cleartext credentials unless allowed:
//! `scripts/langflow` starts the test Langflow with 127.0.0.1 allowlisted, and with
//! [`TEST_MODEL_KEY`] in its environment as `ENGARDE_TEST_MODEL_KEY`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::time::Instant;

/// The only key the fake accepts; `scripts/langflow` gives it to Langflow as
/// `ENGARDE_TEST_MODEL_KEY`.
pub const TEST_MODEL_KEY: &str = "sk-engarde-test-0123456789abcdef";
/// The environment variable of the test Langflow that holds [`TEST_MODEL_KEY`].
pub const TEST_MODEL_KEY_VAR: &str = "ENGARDE_TEST_MODEL_KEY";

/// The fake's answer, word by word (one SSE chunk per word).
pub const ANSWER_WORDS: &[&str] = &["Fresh", " ideas", " for", " your", " brand", ",", " ready", " to", " post", "."];

/// How the fake answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Answers, `chunk_delay` apart when streaming.
    Answer { chunk_delay: Duration },
    /// Answers this status with an OpenAI-style error body.
    Fail(u16),
    /// Waits this long, then answers.
    Slow(Duration),
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub authorization: String,
    pub body: Value,
}

impl Received {
    /// The messages' `role: content` lines.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| (m["role"].as_str().unwrap_or("").to_owned(), m["content"].as_str().unwrap_or("").to_owned()))
            .collect()
    }

    /// Everything the model was told, as one text.
    pub fn text(&self) -> String {
        self.messages().into_iter().map(|(role, content)| format!("{role}: {content}")).collect::<Vec<_>>().join("\n")
    }
}

struct Shared {
    behaviour: Behaviour,
    received: Vec<Received>,
    /// When the last chunk of the last streamed answer was sent.
    finished_at: Option<Instant>,
}

pub struct FakeModel {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeModel {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1").await
    }

    /// On another loopback address: Langflow, when it thinks it runs in a container, rewrites
    /// "127.0.0.1" and "localhost" in an Ollama URL to the container's host (Docker's gateway),
    /// which is not where the fake is; 127.0.0.2 is loopback all the same.
    pub async fn start_on(ip: &str) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            behaviour: Behaviour::Answer { chunk_delay: Duration::from_millis(100) },
            received: Vec::new(),
            finished_at: None,
        }));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/api/chat", post(ollama_chat))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// The base URL an agent's `model.base_url` names: `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The base URL of its Ollama API: `http://127.0.0.1:<port>`.
    pub fn ollama_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        self.shared.lock().unwrap().behaviour = behaviour;
    }

    /// Every request so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    pub fn last(&self) -> Received {
        self.received().pop().expect("the model was called")
    }

    pub fn finished_at(&self) -> Option<Instant> {
        self.shared.lock().unwrap().finished_at
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The usage the fake reports for a request: one prompt token per word it was given, one
/// completion token per chunk.
pub fn usage_of(body: &Value) -> (i64, i64) {
    let words: usize = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["content"].as_str().unwrap_or("").split_whitespace().count())
        .sum();
    (words as i64, ANSWER_WORDS.len() as i64)
}

fn error(status: u16, message: &str, kind: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": kind}});
    let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    if status == 429 {
        response.headers_mut().insert("retry-after", "7".parse().unwrap());
    }
    response
}

/// Records a request; answers its authorization and how the fake is to answer it.
fn record(shared: &Mutex<Shared>, headers: &HeaderMap, body: &Value) -> (String, Behaviour) {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut s = shared.lock().unwrap();
    s.received.push(Received { authorization: authorization.clone(), body: body.clone() });
    (authorization, s.behaviour)
}

/// The delay between chunks of an answer, after a slow fake's wait; `Err(status)` for a fake
/// told to fail.
async fn pace(behaviour: Behaviour) -> Result<Duration, u16> {
    match behaviour {
        Behaviour::Fail(status) => Err(status),
        Behaviour::Slow(wait) => {
            tokio::time::sleep(wait).await;
            Ok(Duration::ZERO)
        }
        Behaviour::Answer { chunk_delay } => Ok(chunk_delay),
    }
}

/// A streamed answer: `opening`, then one line per word of [`ANSWER_WORDS`] `chunk_delay`
/// apart, then `closing`; the time of its end is kept for [`FakeModel::finished_at`].
fn stream(
    shared: Arc<Mutex<Shared>>,
    content_type: &str,
    chunk_delay: Duration,
    opening: Vec<String>,
    word: impl Fn(&str) -> String + Send + 'static,
    closing: Vec<String>,
) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        for line in opening {
            let _ = sender.send(Ok(line)).await;
        }
        for w in ANSWER_WORDS {
            tokio::time::sleep(chunk_delay).await;
            if sender.send(Ok(word(w))).await.is_err() {
                return;
            }
        }
        for line in closing {
            let _ = sender.send(Ok(line)).await;
        }
        shared.lock().unwrap().finished_at = Some(Instant::now());
    });
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)))
        .unwrap()
}

/// OpenAI's `/v1/chat/completions`.
async fn chat(State(shared): State<Arc<Mutex<Shared>>>, headers: HeaderMap, body: axum::Json<Value>) -> Response {
    let body = body.0;
    let (authorization, behaviour) = record(&shared, &headers, &body);
    if authorization != format!("Bearer {TEST_MODEL_KEY}") {
        return error(
            401,
            "Incorrect API key provided: sk-****. You can find your API key in your settings.",
            "invalid_api_key",
        );
    }
    let chunk_delay = match pace(behaviour).await {
        Err(429) => {
            return error(429, "Rate limit reached for fake-model. Please try again in 7s.", "rate_limit_exceeded");
        }
        Err(status) => return error(status, "The fake model failed.", "server_error"),
        Ok(delay) => delay,
    };
    let model = body["model"].as_str().unwrap_or("fake").to_owned();
    let (prompt_tokens, completion_tokens) = usage_of(&body);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                       "total_tokens": prompt_tokens + completion_tokens});
    if body["stream"] != true {
        shared.lock().unwrap().finished_at = Some(Instant::now());
        return axum::Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER_WORDS.concat()},
                         "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = move |delta: Value, finish: Value, usage: Value| {
        let mut c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if !usage.is_null() {
            c["usage"] = usage;
        }
        format!("data: {c}\n\n")
    };
    let opening = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null, Value::Null)];
    let closing = vec![chunk(json!({}), json!("stop"), usage), "data: [DONE]\n\n".to_owned()];
    let word = move |w: &str| chunk(json!({"content": w}), Value::Null, Value::Null);
    stream(shared, "text/event-stream", chunk_delay, opening, word, closing)
}

/// Ollama's `/api/chat`: the same answer, as Ollama words it.
async fn ollama_chat(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let body = body.0;
    let (_, behaviour) = record(&shared, &headers, &body);
    let chunk_delay = match pace(behaviour).await {
        Err(status) => {
            let body = json!({"error": "the fake model failed"});
            return (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
        }
        Ok(delay) => delay,
    };
    let model = body["model"].as_str().unwrap_or("fake").to_owned();
    let (prompt_tokens, completion_tokens) = usage_of(&body);
    let line = move |content: &str, done: bool| {
        let mut l = json!({"model": model, "created_at": "2026-12-02T00:00:00Z",
                           "message": {"role": "assistant", "content": content}, "done": done});
        if done {
            l["done_reason"] = json!("stop");
            l["prompt_eval_count"] = json!(prompt_tokens);
            l["eval_count"] = json!(completion_tokens);
        }
        format!("{l}\n")
    };
    if body["stream"] == false {
        shared.lock().unwrap().finished_at = Some(Instant::now());
        let whole: Value = serde_json::from_str(line(&ANSWER_WORDS.concat(), true).trim()).unwrap();
        return axum::Json(whole).into_response();
    }
    let closing = vec![line("", true)];
    stream(shared, "application/x-ndjson", chunk_delay, Vec::new(), move |w| line(w, false), closing)
}
