//! The one error type of the serving core, mapped to an HTTP status here and to a gRPC status by the gRPC
//! front end, so both protocols report the same failure the same way.

use axum::http::StatusCode;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Anything the client did wrong: malformed body, wrong datatype, shape mismatch...
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The model exists but cannot serve now (failed load, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// A valid request for a feature Keel does not implement (e.g. shared memory).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The model's queue is full: back off and retry.
    #[error("{0}")]
    Overloaded(String),
    /// The request waited longer than its timeout.
    #[error("{0}")]
    Timeout(String),
    /// No or wrong credentials for an admin endpoint.
    #[error("{0}")]
    Unauthenticated(String),
    /// The endpoint is disabled (e.g. repository control without a configured admin token).
    #[error("{0}")]
    PermissionDenied(String),
    /// A failure inside Keel or the backend: the request itself was fine.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            // As Triton answers a request whose queue timeout expired.
            Error::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::Unsupported(_) => tonic::Code::Unimplemented,
            Error::PayloadTooLarge(_) | Error::Overloaded(_) => tonic::Code::ResourceExhausted,
            Error::Timeout(_) => tonic::Code::DeadlineExceeded,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Error::Internal(_) => tonic::Code::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}
