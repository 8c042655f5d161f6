use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while finding, reading or batching data.
/// Every file error names the file; table errors also name the line and column.
#[derive(Debug, Error)]
pub enum DataError {
    /// The operating system refused to open or read a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The file was read but its contents are not what the format requires.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },

    /// A cell of a CSV table could not be used (line and column are 1-based).
    #[error("{}: line {line}, column {column}: {message}", path.display())]
    Csv { path: PathBuf, line: u64, column: usize, message: String },

    /// A dataset folder was not found in any of the places searched.
    #[error("{what} not found; looked in: {}{hint}", format_paths(searched))]
    NotFound { what: String, searched: Vec<PathBuf>, hint: String },

    /// A bad argument (batch size 0, a subset larger than the dataset, ...).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format { path: path.into(), message: message.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        DataError::Invalid(message.into())
    }
}

/// A value quoted in a message, cut to its first 80 characters: a corrupt file's 10 MB
/// entry must not be echoed whole to the terminal.
pub(crate) fn excerpt(text: &str) -> String {
    const SHOWN: usize = 80;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}... ({} characters in all)", &text[..cut], text.chars().count()),
        None => text.to_string(),
    }
}

fn format_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
