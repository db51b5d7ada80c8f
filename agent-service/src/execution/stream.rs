//! StreamExecuteAgent: Langflow's streamed events turned into the execution's events, as they
//! arrive, while the execution is recorded as any other.

use engarde::kit::error::ServiceResult;
use futures::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::model::{Execution, ExecutionStatus, langflow_session_id};
use super::{Executor, Run};
use crate::langflow::client::output_text;
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
        match self.record(&execution, &run.flow_id, result, clock).await {
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
async fn forward(run: &Run, execution: &Execution, sender: &Sender) -> Result<String, LangflowError> {
    let session = langflow_session_id(execution.agent_id, &execution.session_id);
    let events = run.langflow.run_stream(&run.flow_id, &execution.input, &session, &run.tweaks, run.deadline).await?;
    let mut events = std::pin::pin!(events);
    let mut last_message = None;
    while let Some(event) = events.next().await {
        let event = event?;
        match classify(&event) {
            Classified::End(output) => return Ok(output.or(last_message).unwrap_or_default()),
            Classified::Failed(error) => return Err(LangflowError::Rejected(format!("the flow failed: {error}"))),
            Classified::Message(text) => {
                last_message = Some(text.clone());
                send(sender, Ok(StreamItem::Text(text))).await;
            }
            Classified::Token(text) => send(sender, Ok(StreamItem::Text(text))).await,
            Classified::Other => send(sender, Ok(StreamItem::LangflowEvent(event.event.clone()))).await,
        }
    }
    Err(LangflowError::Unavailable("the stream from Langflow ended before its end event".into()))
}

/// What a Langflow event means for the execution.
#[derive(Debug, PartialEq)]
enum Classified {
    /// A message the flow said (not the echo of the caller's own input).
    Message(String),
    /// A piece of a message, from a model that streams.
    Token(String),
    /// The run is over; its result's text, if it has one.
    End(Option<String>),
    /// The run failed on Langflow's side.
    Failed(String),
    /// Anything else.
    Other,
}

fn classify(event: &StreamEvent) -> Classified {
    let text = |v: &Value| v.as_str().filter(|t| !t.is_empty()).map(str::to_owned);
    match event.event.as_str() {
        // Langflow 1.13 echoes the caller's input as a message of sender "User".
        "add_message" if event.data["sender"].as_str() == Some("User") => Classified::Other,
        "add_message" => text(&event.data["text"]).map_or(Classified::Other, Classified::Message),
        "token" => text(&event.data["chunk"]).map_or(Classified::Other, Classified::Token),
        "end" => Classified::End(output_text(&event.data["result"])),
        "error" => Classified::Failed(
            text(&event.data["error"])
                .or_else(|| text(&event.data["text"]))
                .unwrap_or_else(|| crate::langflow::error::excerpt(&event.data.to_string())),
        ),
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
            classify(&event("add_message", json!({"sender": "Machine", "text": "hello"}))),
            Classified::Message("hello".into())
        );
        assert_eq!(classify(&event("add_message", json!({"sender": "Machine", "text": ""}))), Classified::Other);
        assert_eq!(classify(&event("token", json!({"chunk": "he"}))), Classified::Token("he".into()));
        let result = json!({"result": {"outputs": [{"outputs": [{"results": {"message": {"text": "done"}}}]}]}});
        assert_eq!(classify(&event("end", result)), Classified::End(Some("done".into())));
        assert_eq!(classify(&event("end", json!({}))), Classified::End(None));
        assert_eq!(classify(&event("error", json!({"error": "boom"}))), Classified::Failed("boom".into()));
        assert_eq!(classify(&event("vertices_sorted", json!({}))), Classified::Other);
    }
}
