//! Conversation memory as context: the earlier turns of a session, given to the model with each
//! execution in that session, within a window (a number of messages and of characters) so that
//! a long conversation neither grows every prompt without bound nor overflows the model.

use crate::domain::execution::{MessageRole, SessionMessage};

/// How much of a session's memory an execution is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct MemoryWindow {
    /// How many of a session's latest messages (the caller's and the agent's) each execution
    /// gives the model as the conversation so far; 0 turns memory off.
    #[arg(long = "memory-max-messages", env = "MEMORY_MAX_MESSAGES", default_value_t = 20)]
    pub max_messages: u32,
    /// At most this many characters of them: older messages are left out first.
    #[arg(long = "memory-max-chars", env = "MEMORY_MAX_CHARS", default_value_t = 8000)]
    pub max_chars: usize,
}

impl Default for MemoryWindow {
    fn default() -> Self {
        Self { max_messages: 20, max_chars: 8000 }
    }
}

impl MemoryWindow {
    /// The conversation so far as the model reads it ("User: …" / "Assistant: …" lines), from
    /// `messages` oldest first: the newest that fit within the window. A newest message longer
    /// than the whole window keeps its end.
    pub fn render(&self, messages: &[SessionMessage]) -> String {
        let mut kept: Vec<String> = Vec::new();
        let mut used = 0;
        for message in messages.iter().rev().take(self.max_messages as usize) {
            let speaker = match message.role {
                MessageRole::User => "User",
                MessageRole::Agent => "Assistant",
            };
            let line = format!("{speaker}: {}", message.text);
            let chars = line.chars().count() + usize::from(!kept.is_empty());
            if used + chars > self.max_chars {
                if kept.is_empty() && self.max_chars > 0 {
                    let skip = line.chars().count() - self.max_chars;
                    kept.push(line.chars().skip(skip).collect());
                }
                break;
            }
            used += chars;
            kept.push(line);
        }
        kept.reverse();
        kept.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    fn message(sequence: i64, role: MessageRole, text: &str) -> SessionMessage {
        SessionMessage { sequence, role, text: text.into(), execution_id: Uuid::nil(), created_at: Utc::now() }
    }

    fn conversation() -> Vec<SessionMessage> {
        vec![
            message(1, MessageRole::User, "hi"),
            message(2, MessageRole::Agent, "hello"),
            message(3, MessageRole::User, "my name is Ada"),
            message(4, MessageRole::Agent, "noted"),
        ]
    }

    #[test]
    fn the_newest_turns_that_fit_are_kept_in_order() {
        let all = MemoryWindow { max_messages: 20, max_chars: 1000 };
        assert_eq!(all.render(&conversation()), "User: hi\nAssistant: hello\nUser: my name is Ada\nAssistant: noted");
        let two = MemoryWindow { max_messages: 2, max_chars: 1000 };
        assert_eq!(two.render(&conversation()), "User: my name is Ada\nAssistant: noted");
        // "Assistant: noted" (16) + "\n" + "User: my name is Ada" (20) = 37.
        let chars = MemoryWindow { max_messages: 20, max_chars: 37 };
        assert_eq!(chars.render(&conversation()), "User: my name is Ada\nAssistant: noted");
        let tight = MemoryWindow { max_messages: 20, max_chars: 36 };
        assert_eq!(tight.render(&conversation()), "Assistant: noted");
        assert_eq!(MemoryWindow { max_messages: 0, max_chars: 1000 }.render(&conversation()), "");
        assert_eq!(all.render(&[]), "");
    }

    #[test]
    fn a_message_longer_than_the_window_keeps_its_end() {
        let window = MemoryWindow { max_messages: 20, max_chars: 5 };
        assert_eq!(window.render(&[message(1, MessageRole::User, "abcdefgh")]), "defgh");
    }
}
