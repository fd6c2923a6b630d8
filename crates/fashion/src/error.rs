//! The library's one error type. Each variant says what the caller can do about it.

use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The photo could not be read as an image: the caller should skip or replace it.
    #[error("{path}: {kind}: {message}")]
    BadImage {
        path: PathBuf,
        kind: BadImageKind,
        message: String,
    },
    /// A file or folder could not be read or written. The reason is part of the message and not
    /// a separate `source()`, so that a printed chain of causes does not say it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A dataset, manifest or config is malformed.
    #[error("{path}: {message}")]
    BadData { path: PathBuf, message: String },
    /// The model file is missing parts this program needs, or is not a model at all.
    #[error("model {path}: {message}")]
    BadModel { path: PathBuf, message: String },
    /// The ONNX Runtime library is missing or failed.
    #[error("inference engine: {0}")]
    Engine(String),
    /// Training failed (numerical or tensor error).
    #[error("training: {0}")]
    Training(String),
    /// A caller passed an argument that cannot work.
    #[error("{0}")]
    InvalidArgument(String),
}

/// Why a photo was rejected; stable names for JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadImageKind {
    /// The file is empty.
    Empty,
    /// The bytes are not an image format we read.
    UnknownFormat,
    /// The file claims an image format but its data is damaged or cut short.
    Corrupt,
    /// The image is larger than the pixel limit.
    TooLarge,
    /// One side is more than [`crate::image::MAX_ASPECT`] times the other: no photo of a garment.
    BadShape,
    /// The path is not a regular file.
    NotAFile,
    /// The file could not be read.
    Unreadable,
}

impl BadImageKind {
    /// Stable machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::UnknownFormat => "unknown_format",
            Self::Corrupt => "corrupt",
            Self::TooLarge => "too_large",
            Self::BadShape => "bad_shape",
            Self::NotAFile => "not_a_file",
            Self::Unreadable => "unreadable",
        }
    }
}

impl std::fmt::Display for BadImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// Stable short name of the error kind, for JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadImage { kind, .. } => kind.as_str(),
            Error::Io { .. } => "io",
            Error::BadData { .. } => "bad_data",
            Error::BadModel { .. } => "bad_model",
            Error::Engine(_) => "engine",
            Error::Training(_) => "training",
            Error::InvalidArgument(_) => "invalid_argument",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn bad_data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadData {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn bad_model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadModel {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
