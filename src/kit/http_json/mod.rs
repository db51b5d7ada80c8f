//! HTTP/JSON beside gRPC, on a port of its own (HTTP_LISTEN_ADDR): every RPC that carries a
//! `google.api.http` annotation answers at its paths, transcoded in process.
//!
//! A request goes: route (the method and path to a binding, [`rules`]; 404 or 405 with `Allow`
//! otherwise) → request message (path variables, query parameters and JSON body, [`bind`]; 400
//! naming the field) → the gRPC call through the server's own layers ([`call`]) → the answer as
//! proto3 JSON (lowerCamelCase names, as grpc-gateway writes them), or newline-delimited JSON for
//! a server-streaming RPC → errors in the Google JSON error model ([`status`]).
//! `GET /openapi.json` answers the document of those bindings ([`openapi`]); [`listener`]
//! serves the port.

pub mod bind;
pub mod call;
pub mod config;
pub mod listener;
pub mod openapi;
pub mod rules;
pub mod status;
pub mod template;

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

use self::call::{CallContext, GrpcService, MessageReader};
use self::rules::{Binding, Route, Router};
use self::status::JsonError;
use crate::kit::tls::PeerIdentity;

/// The body of every answer of the port.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The transcoder of one server: its bindings, its descriptors and the layered gRPC service.
pub struct HttpJson {
    router: Router,
    pool: DescriptorPool,
    service: GrpcService,
    openapi: Bytes,
    max_body_bytes: usize,
    body_timeout: std::time::Duration,
}

/// The settings of the transcoder.
#[derive(Debug, Clone, Copy)]
pub struct HttpJsonLimits {
    /// A larger body answers 413 (HTTP_MAX_BODY_BYTES).
    pub max_body_bytes: usize,
    /// A body that has not all arrived within this answers 408 (RPC_TIMEOUT_SECS: a trickled
    /// upload holds a connection no longer than a call may last).
    pub body_timeout: std::time::Duration,
}

impl HttpJson {
    /// The transcoder of the annotated RPCs of `services` (full names), calling `service`.
    pub fn new(title: &str, services: &[&str], service: GrpcService, limits: HttpJsonLimits) -> anyhow::Result<Self> {
        // google.rpc.Status and the error details, to show errors' details as JSON.
        let errors = tonic_types::pb::FILE_DESCRIPTOR_SET;
        let openapi = {
            // The comments describe the document, made once here; the pool kept for the
            // transcoder's life (below) leaves them out: they are 70 % of the descriptors.
            let mut documented = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)?;
            documented.decode_file_descriptor_set(errors)?;
            let router = Router::from_pool(&documented, services)?;
            Bytes::from(serde_json::to_vec(&openapi::document(title, &router, &documented))?)
        };
        let mut pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET_LEAN)?;
        pool.decode_file_descriptor_set(errors)?;
        let router = Router::from_pool(&pool, services)?;
        Ok(Self {
            router,
            pool,
            service,
            openapi,
            max_body_bytes: limits.max_body_bytes,
            body_timeout: limits.body_timeout,
        })
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Answers one HTTP request. Never fails: every refusal is an answer in the error model.
    pub async fn handle<B>(
        &self,
        request: http::Request<B>,
        peer: Option<PeerIdentity>,
        tcp: tonic::transport::server::TcpConnectInfo,
    ) -> http::Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Calls that reach the service are logged by its call layer; this line also shows the
        // requests refused before (no route, wrong method, a body that does not bind).
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let response = match self.answer(request, peer, tcp).await {
            Ok(response) => response,
            Err(error) => self.error_response(&error),
        };
        tracing::debug!(%method, path, status = response.status().as_u16(), "HTTP/JSON request");
        metrics::counter!("http_json_responses_total", "status" => response.status().as_str().to_owned()).increment(1);
        response
    }

    async fn answer<B>(
        &self,
        request: http::Request<B>,
        peer: Option<PeerIdentity>,
        tcp: tonic::transport::server::TcpConnectInfo,
    ) -> Result<http::Response<ResponseBody>, JsonError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        if path == OPENAPI_PATH {
            if parts.method != Method::GET && parts.method != Method::HEAD {
                return Err(self.wrong_method(&[Method::GET]));
            }
            return Ok(json_response(StatusCode::OK, self.openapi.clone()));
        }
        let (binding, variables) = match self.router.route(&parts.method, path) {
            Route::Found(binding, variables) => (binding, variables),
            Route::WrongMethod(allowed) => return Err(self.wrong_method(&allowed)),
            Route::NotFound => {
                let status = tonic::Status::not_found(format!("no RPC answers {} {path}", parts.method));
                return Err(JsonError::from_status(&status, &self.pool));
            }
        };
        let body = self.read_body(&parts.headers, body).await?;
        let message = bind::request_message(binding, &variables, parts.uri.query(), &body)
            .map_err(|e| JsonError::from_status(&e.into_status(), &self.pool))?;
        let context = CallContext::from_headers(&parts.headers, peer, tcp)
            .map_err(|status| JsonError::from_status(&status, &self.pool))?;
        let mut reader = call::start(self.service.clone(), binding, &message, context)
            .await
            .map_err(|status| JsonError::from_status(&status, &self.pool))?;
        if binding.is_server_streaming() {
            return self.stream_response(binding, reader).await;
        }
        let answer = match reader.next().await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Err(self.status_error(&tonic::Status::internal("the call answered no message"))),
            Err(status) => return Err(self.status_error(&status)),
        };
        // The trailers: a unary answer still ends with its status.
        if let Err(status) = reader.next().await {
            return Err(self.status_error(&status));
        }
        let json = self.answer_json(binding, &answer)?;
        Ok(json_response(StatusCode::OK, Bytes::from(json)))
    }

    /// The request body, at most HTTP_MAX_BODY_BYTES. Its content type is not checked: the body
    /// is JSON whatever it says (`curl -d` sends form-urlencoded unless told), and bad JSON is 400.
    async fn read_body<B>(&self, headers: &http::HeaderMap, body: B) -> Result<Bytes, JsonError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let too_large = || {
            let status = tonic::Status::resource_exhausted(format!(
                "the request body is larger than {} bytes (HTTP_MAX_BODY_BYTES)",
                self.max_body_bytes
            ));
            JsonError::with_http_status(StatusCode::PAYLOAD_TOO_LARGE, &status, &self.pool)
        };
        let declared =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body_bytes as u64) {
            return Err(too_large());
        }
        let collected =
            tokio::time::timeout(self.body_timeout, http_body_util::Limited::new(body, self.max_body_bytes).collect())
                .await;
        let body = match collected {
            Err(_) => {
                let status =
                    tonic::Status::deadline_exceeded("the request body did not arrive within RPC_TIMEOUT_SECS");
                return Err(JsonError::with_http_status(StatusCode::REQUEST_TIMEOUT, &status, &self.pool));
            }
            Ok(collected) => collected,
        };
        let body = match body {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(e) => {
                let status = tonic::Status::invalid_argument(format!("the request body could not be read: {e}"));
                return Err(JsonError::from_status(&status, &self.pool));
            }
        };
        Ok(body)
    }

    /// A server-streaming answer: one JSON message a line. An error before the first message is
    /// an ordinary error answer; one after it (the HTTP status is sent by then) is the last line,
    /// `{"error": {...}}`.
    async fn stream_response(
        &self,
        binding: &Binding,
        mut reader: MessageReader,
    ) -> Result<http::Response<ResponseBody>, JsonError> {
        let first = match reader.next().await {
            Ok(first) => first,
            Err(status) => return Err(self.status_error(&status)),
        };
        let mut first_line = Vec::new();
        if let Some(first) = &first {
            first_line = self.answer_json(binding, first)?;
            first_line.push(b'\n');
        }
        let state = StreamState {
            reader: Some(reader),
            output: binding.rpc.output(),
            pool: self.pool.clone(),
            pending: (!first_line.is_empty()).then(|| Bytes::from(first_line)),
        };
        let lines = futures::stream::unfold(state, |mut state| async move {
            if let Some(line) = state.pending.take() {
                return Some((Ok(http_body::Frame::data(line)), state));
            }
            let reader = state.reader.as_mut()?;
            let line = match reader.next().await {
                Ok(Some(message)) => match message_json(&state.output, &message) {
                    Ok(json) => json,
                    Err(status) => {
                        state.reader = None;
                        JsonError::from_status(&status, &state.pool).to_bytes()
                    }
                },
                Ok(None) => return None,
                Err(status) => {
                    state.reader = None;
                    JsonError::from_status(&status, &state.pool).to_bytes()
                }
            };
            let mut line = line;
            line.push(b'\n');
            Some((Ok(http_body::Frame::data(Bytes::from(line))), state))
        });
        let body = UnsyncBoxBody::new(http_body_util::StreamBody::new(lines));
        let mut response = http::Response::new(body);
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        Ok(response)
    }

    /// The JSON of an answer message (or of its response_body field).
    fn answer_json(&self, binding: &Binding, encoded: &[u8]) -> Result<Vec<u8>, JsonError> {
        let output = binding.rpc.output();
        let json = match &binding.response_body {
            None => message_json(&output, encoded),
            Some(field) => message_value(&output, encoded).and_then(|value| {
                let picked = value.get(field.json_name()).cloned().unwrap_or(serde_json::Value::Null);
                serde_json::to_vec(&picked).map_err(|e| tonic::Status::internal(format!("answer as JSON: {e}")))
            }),
        };
        json.map_err(|status| self.status_error(&status))
    }

    fn status_error(&self, status: &tonic::Status) -> JsonError {
        JsonError::from_status(status, &self.pool)
    }

    fn wrong_method(&self, allowed: &[Method]) -> JsonError {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let status = tonic::Status::unimplemented(format!("method not allowed here; allowed: {}", names.join(", ")));
        let mut error = JsonError::with_http_status(StatusCode::METHOD_NOT_ALLOWED, &status, &self.pool);
        error.allow = Some(names.join(", "));
        error
    }

    fn error_response(&self, error: &JsonError) -> http::Response<ResponseBody> {
        let mut response = json_response(error.http_status, Bytes::from(error.to_bytes()));
        if let Some(allow) = error.allow.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        response
    }
}

struct StreamState {
    reader: Option<MessageReader>,
    output: MessageDescriptor,
    pool: DescriptorPool,
    pending: Option<Bytes>,
}

fn json_response(status: StatusCode, body: Bytes) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(UnsyncBoxBody::new(http_body_util::Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The proto3 JSON of an encoded message of type `descriptor`: lowerCamelCase names, enums by
/// name, 64-bit integers as strings, default values left out.
fn message_json(descriptor: &MessageDescriptor, encoded: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let message = DynamicMessage::decode(descriptor.clone(), encoded)
        .map_err(|e| tonic::Status::internal(format!("the answer does not decode: {e}")))?;
    let mut serializer = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut serializer, &SerializeOptions::new())
        .map_err(|e| tonic::Status::internal(format!("the answer as JSON: {e}")))?;
    Ok(serializer.into_inner())
}

fn message_value(descriptor: &MessageDescriptor, encoded: &[u8]) -> Result<serde_json::Value, tonic::Status> {
    let json = message_json(descriptor, encoded)?;
    serde_json::from_slice(&json).map_err(|e| tonic::Status::internal(format!("the answer as JSON: {e}")))
}
