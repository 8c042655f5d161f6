use thiserror::Error;

/// An invalid graph build: names the op and says what was given and what was expected.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{op}: {message}")]
pub struct GraphError {
    pub op: String,
    pub message: String,
}

impl GraphError {
    pub fn new(op: impl Into<String>, message: impl Into<String>) -> Self {
        GraphError { op: op.into(), message: message.into() }
    }
}

/// A failure while loading or running a plan on a backend.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ExecError {
    #[error("feed for input '{name}': {message}")]
    BadFeed { name: String, message: String },
    #[error("input '{name}' was not fed")]
    MissingFeed { name: String },
    #[error("state '{name}': {message}")]
    BadState { name: String, message: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("device error: {0}")]
    Device(String),
}

pub type Result<T, E = GraphError> = std::result::Result<T, E>;
