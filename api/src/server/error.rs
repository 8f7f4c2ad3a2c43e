//! The one place that maps errors to HTTP status codes. Every error response is
//! `{"error": "..."}` with:
//! 400 bad body (syntax, types, unknown fields, negative or huge numbers) or unaligned size,
//! bad VM id; 404 unknown VM or route; 405 wrong method; 409 wrong state (or id taken);
//! 413 body over the limit; 415 not JSON; 422 beyond limits; 501 not supported by this VMM;
//! 503 pool exhausted; 500 host failure.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use memtide_vmm::control::{ControlError, ErrorKind};

use crate::model::{BodyError, ErrorBody};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message for `{"error": ...}`.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// No route for the path.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint {path:?} (GET /openapi.json lists them)"),
        )
    }

    /// The route exists, the method does not.
    pub fn wrong_method(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {method} is not allowed on {path:?} (GET /openapi.json lists the methods)"
            ),
        )
    }
}

/// The status of a control plane error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::BeyondLimits => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Exhausted => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        ApiError::new(status_of(e.kind()), e.to_string())
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.0)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match &r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, format!("bad request body: {}", r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_the_documented_statuses() {
        let cases = [
            (ErrorKind::BadRequest, 400),
            (ErrorKind::NotFound, 404),
            (ErrorKind::Conflict, 409),
            (ErrorKind::BeyondLimits, 422),
            (ErrorKind::Unsupported, 501),
            (ErrorKind::Exhausted, 503),
            (ErrorKind::Internal, 500),
        ];
        for (k, s) in cases {
            assert_eq!(status_of(k).as_u16(), s, "{k:?}");
        }
        let e: ApiError = ControlError::NotFound("a".into()).into();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.message.contains("\"a\""));
    }
}
