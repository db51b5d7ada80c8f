//! Langflow: the HTTP client of its API, its errors, and the flows agents run on.

pub mod client;
pub mod error;
pub mod flow;
pub mod models;

pub use client::{LangflowClient, LangflowSettings, RunOutput, StreamEvent};
pub use error::LangflowError;
