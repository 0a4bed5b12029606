//! API errors: every 4xx and 5xx answer is JSON `{"error": "..."}`, and [`ReplicaError`] and
//! axum's rejections are mapped to status codes here and nowhere else.

use axum::extract::rejection::BytesRejection;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use thiserror::Error;

use officesync_api::ErrorBody;

use crate::replica::ReplicaError;

/// Why a request failed. Turned into a response with the status of [`ApiError::status`] and
/// the body `{"error": "<message>"}`.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The request is malformed: bad percent-encoding, bad or unknown query parameter (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such record, or no such route (404).
    #[error("{0}")]
    NotFound(String),
    /// The access policy does not let this node read or write the collection (403).
    #[error("{0}")]
    Forbidden(String),
    /// The route exists but not for this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body is larger than the configured value limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The replica refused or failed: invalid name or key (400), value too large (413),
    /// store failure or corrupt record (500), shutting down (503).
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The request body could not be read (its own status, 4xx).
    #[error("{message}")]
    Body {
        /// Status chosen by axum for the failure.
        status: StatusCode,
        /// What went wrong.
        message: String,
    },
    /// A response could not be built (500).
    #[error("{0}")]
    Internal(String),
    /// Another request of the same kind is running (a backup), try again later (409).
    #[error("{0}")]
    Busy(String),
    /// What was asked for is no longer kept (a change-feed cursor older than the log) (410).
    #[error("{0}")]
    Gone(String),
    /// The node cannot serve this now: as many change feeds are open as it allows, or a search
    /// index is being built; try again later (503).
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Busy(_) => StatusCode::CONFLICT,
            Self::Gone(_) => StatusCode::GONE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Replica(e) => match e {
                ReplicaError::Name(_)
                | ReplicaError::Refused { .. }
                | ReplicaError::BadCursor(_) => StatusCode::BAD_REQUEST,
                ReplicaError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ReplicaError::TooManyCollections { .. } => StatusCode::INSUFFICIENT_STORAGE,
                ReplicaError::Store(_)
                | ReplicaError::Corrupt { .. }
                | ReplicaError::WrongNode { .. }
                | ReplicaError::WriteSuperseded { .. }
                | ReplicaError::CausalContext { .. }
                | ReplicaError::BadIndex(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ReplicaError::CursorExpired { .. } => StatusCode::GONE,
                ReplicaError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    /// Maps a failure to read the request body; `max` is the value limit, named in the
    /// message when the body was too large.
    pub(crate) fn from_body(rejection: BytesRejection, max: usize) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::PayloadTooLarge(format!(
                "value exceeds the limit of {max} bytes (storage.max_value_bytes)"
            ));
        }
        let status = if status.is_client_error() || status.is_server_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        let message = format!("cannot read the request body: {}", rejection.body_text());
        Self::Body { status, message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "api request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "api request refused");
        }
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// Fallback for paths no route matches.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

/// Fallback for a known path with a method it does not serve.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("method {method} is not allowed on {}", uri.path()))
}
