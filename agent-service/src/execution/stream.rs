//! StreamExecuteAgent: Langflow's streamed events turned into the execution's events, as they
//! arrive, while the execution is recorded as any other.

use engarde::kit::error::ServiceResult;
use futures::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::model::{Execution, ExecutionStatus, langflow_session_id};
use super::{Executor, Run};
use crate::domain::execution::TokenUsage;
use crate::langflow::client::{output_text, output_usage};
use crate::langflow::{LangflowError, StreamEvent};
use crate::storage::executions::Started;

/// Events buffered between the run and a slow reader. A reader that stops reading holds the run
/// up only until Langflow's deadline.
pub(super) const CHANNEL_CAPACITY: usize = 256;

/// One event of a streamed execution.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// The execution was stored, RUNNING.
    Started(Execution),
    /// Text the flow produced: a message or a token.
    Text(String),
    /// A Langflow event without text, by name.
    LangflowEvent(String),
    /// The execution as recorded.
    Finished(Execution),
}

type Sender = mpsc::Sender<ServiceResult<StreamItem>>;

/// Sends an item; a reader that went away is no reason to stop (the run is recorded anyway).
async fn send(sender: &Sender, item: ServiceResult<StreamItem>) {
    let _ = sender.send(item).await;
}

/// The stream of a request id's earlier execution: it as it is, then its end if it has one.
pub(super) async fn replay(execution: Execution, sender: &Sender) {
    send(sender, Ok(StreamItem::Started(execution.clone()))).await;
    if execution.status != ExecutionStatus::Running {
        send(sender, Ok(StreamItem::Finished(execution.clone()))).await;
    }
    if let Err(e) = execution.into_answer() {
        send(sender, Err(e)).await;
    }
}

impl Executor {
    pub(super) async fn run_streamed(&self, run: Run, sender: Sender) {
        let execution = match self.executions.start(&run.new).await {
            Ok(Started::New(execution)) => execution,
            Ok(Started::Existing(existing)) => return replay(existing, &sender).await,
            Err(e) => return send(&sender, Err(e)).await,
        };
        send(&sender, Ok(StreamItem::Started(execution.clone()))).await;
        let clock = Instant::now();
        let result = forward(&run, &execution, &sender).await;
        match self.record(&run, result, clock, super::RunningRow::Written).await {
            Ok(recorded) => {
                send(&sender, Ok(StreamItem::Finished(recorded.clone()))).await;
                if let Err(e) = recorded.into_answer() {
                    send(&sender, Err(e)).await;
                }
            }
            Err(e) => send(&sender, Err(e)).await,
        }
    }
}

/// Runs the flow streamed, forwarding its events; answers the output (the `end` event's
/// result, or else the last message the flow said) or why it failed.
async fn forward(
    run: &Run,
    execution: &Execution,
    sender: &Sender,
) -> Result<(String, Option<TokenUsage>), LangflowError> {
    let session = langflow_session_id(execution.agent_id, &execution.session_id);
    let events = run.langflow.run_stream(&run.flow_id, &execution.input, &session, &run.tweaks, run.deadline).await?;
    let mut events = std::pin::pin!(events);
    let mut last_message = None;
    let mut seen = Seen::default();
    while let Some(event) = events.next().await {
        let event = event?;
        match classify(&event) {
            Classified::End(output) => {
                let usage = output_usage(&event.data["result"]);
                return Ok((output.or(last_message).unwrap_or_default(), usage));
            }
            // The first error event carries the model's exception (and its status code): the
            // run is over, whatever Langflow sends after it.
            Classified::Failed => return Err(LangflowError::flow_failed(&event.data.to_string())),
            Classified::Message { id, text, partial } => {
                if seen.first_time(id, partial) {
                    send(sender, Ok(StreamItem::Text(text.clone()))).await;
                }
                if !partial {
                    last_message = Some(text);
                }
            }
            Classified::Token { id, text } => {
                seen.streamed(id);
                send(sender, Ok(StreamItem::Text(text))).await
            }
            Classified::Other => send(sender, Ok(StreamItem::LangflowEvent(event.event.clone()))).await,
        }
    }
    Err(LangflowError::Unavailable("the stream from Langflow ended before its end event".into()))
}

/// Which messages reached the caller already: Langflow announces a streamed message before its
/// tokens (with the first token as its text) and repeats it whole, several times, once they are
/// done; a flow without a model repeats its message too. Each message's text is sent once: as
/// its tokens when it streamed, else whole.
#[derive(Default)]
struct Seen {
    sent: std::collections::HashSet<String>,
}

impl Seen {
    /// Whether a message's text is to be sent: not when its tokens will be (partial) or were,
    /// nor twice.
    fn first_time(&mut self, id: Option<String>, partial: bool) -> bool {
        match id {
            Some(id) if partial => {
                self.sent.insert(id);
                false
            }
            Some(id) => self.sent.insert(id),
            None => !partial,
        }
    }

    fn streamed(&mut self, id: Option<String>) {
        if let Some(id) = id {
            self.sent.insert(id);
        }
    }
}

/// What a Langflow event means for the execution.
#[derive(Debug, PartialEq)]
enum Classified {
    /// A message the flow said (not the echo of the caller's own input); `partial` while a
    /// model is still streaming it.
    Message { id: Option<String>, text: String, partial: bool },
    /// A piece of a message, from a model that streams.
    Token { id: Option<String>, text: String },
    /// The run is over; its result's text, if it has one.
    End(Option<String>),
    /// The run failed on Langflow's side (the event says how).
    Failed,
    /// Anything else.
    Other,
}

fn classify(event: &StreamEvent) -> Classified {
    let text = |v: &Value| v.as_str().filter(|t| !t.is_empty()).map(str::to_owned);
    let id = event.data["id"].as_str().map(str::to_owned);
    match event.event.as_str() {
        // Langflow 1.13 echoes the caller's input as a message of sender "User".
        "add_message" if event.data["sender"].as_str() == Some("User") => Classified::Other,
        "add_message" => match text(&event.data["text"]) {
            Some(text) => {
                let partial = event.data["properties"]["state"].as_str() == Some("partial");
                Classified::Message { id, text, partial }
            }
            None => Classified::Other,
        },
        "token" => text(&event.data["chunk"]).map_or(Classified::Other, |text| Classified::Token { id, text }),
        "end" => Classified::End(output_text(&event.data["result"])),
        "error" => Classified::Failed,
        _ => Classified::Other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(name: &str, data: Value) -> StreamEvent {
        StreamEvent { event: name.into(), data }
    }

    #[test]
    fn events_are_classified() {
        assert_eq!(classify(&event("add_message", json!({"sender": "User", "text": "hi"}))), Classified::Other);
        assert_eq!(
            classify(&event("add_message", json!({"sender": "Machine", "text": "hello", "id": "m1"}))),
            Classified::Message { id: Some("m1".into()), text: "hello".into(), partial: false }
        );
        assert_eq!(
            classify(&event("add_message", json!({"text": "he", "properties": {"state": "partial"}}))),
            Classified::Message { id: None, text: "he".into(), partial: true }
        );
        assert_eq!(classify(&event("add_message", json!({"sender": "Machine", "text": ""}))), Classified::Other);
        assert_eq!(
            classify(&event("token", json!({"chunk": "he", "id": "m1"}))),
            Classified::Token { id: Some("m1".into()), text: "he".into() }
        );
        assert_eq!(classify(&event("token", json!({"chunk": ""}))), Classified::Other);
        let result = json!({"result": {"outputs": [{"outputs": [{"results": {"message": {"text": "done"}}}]}]}});
        assert_eq!(classify(&event("end", result)), Classified::End(Some("done".into())));
        assert_eq!(classify(&event("end", json!({}))), Classified::End(None));
        assert_eq!(classify(&event("error", json!({"error": "boom"}))), Classified::Failed);
        assert_eq!(classify(&event("vertices_sorted", json!({}))), Classified::Other);
    }

    #[test]
    fn each_message_reaches_the_caller_once() {
        let mut seen = Seen::default();
        // Streamed: announced partial, then tokens, then repeated whole.
        assert!(!seen.first_time(Some("m1".into()), true));
        seen.streamed(Some("m1".into()));
        assert!(!seen.first_time(Some("m1".into()), false));
        // Not streamed: sent whole, once.
        assert!(seen.first_time(Some("m2".into()), false));
        assert!(!seen.first_time(Some("m2".into()), false));
        assert!(seen.first_time(None, false));
        assert!(!seen.first_time(None, true));
    }
}
