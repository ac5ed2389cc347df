//! Failures of the HTTP API: one JSON body for all of them ([`ApiError`]),
//! and the one mapping of gRPC status codes to HTTP statuses
//! ([`http_status`]), so that a failure reads the same over gRPC and HTTP:
//! the same code name, the same message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};
use utoipa::{IntoResponses, ToSchema};

use crate::limiter::AuthorizeError;
use crate::model::Invalid;

/// The body of every failure (any 4xx or 5xx answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// The gRPC status code the same failure has over gRPC, by name:
    /// `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED`,
    /// `NOT_FOUND`, `ALREADY_EXISTS`, `FAILED_PRECONDITION`, `UNAVAILABLE`, ...
    pub code: String,
    /// What is wrong, in the same words as over gRPC. For `INVALID_ARGUMENT`
    /// it starts with the field: `"stage: must be written API/STAGE ..."`.
    pub message: String,
    /// For `INVALID_ARGUMENT`: the field the message names first, e.g.
    /// `stage`, `throttle.rate_limit`, `page_size` (a query parameter), or
    /// `body` / `query` for the body or query string as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A failure as answered: an HTTP status and an [`ApiError`] body.
#[derive(Debug, Clone)]
pub struct HttpError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ApiError,
}

impl HttpError {
    /// A failure with `code`'s HTTP status ([`http_status`]).
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self::with_status(http_status(code), code, message)
    }

    /// A failure with an explicit HTTP status (413, 415: statuses no gRPC
    /// code maps to).
    pub fn with_status(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        let message = message.into();
        let field = (code == Code::InvalidArgument).then(|| field_of(&message)).flatten();
        Self { status, body: ApiError { code: code_name(code).to_string(), message, field } }
    }
}

/// The field an INVALID_ARGUMENT message names first: every such message is
/// written `FIELD: what is wrong` ([`Invalid`]'s form).
fn field_of(message: &str) -> Option<String> {
    let (field, _) = message.split_once(": ")?;
    (!field.is_empty() && !field.contains(char::is_whitespace)).then(|| field.to_string())
}

impl From<Status> for HttpError {
    fn from(s: Status) -> Self {
        Self::new(s.code(), s.message())
    }
}

impl From<Invalid> for HttpError {
    fn from(e: Invalid) -> Self {
        Self::from(Status::from(e))
    }
}

impl From<AuthorizeError> for HttpError {
    fn from(e: AuthorizeError) -> Self {
        Self::from(Status::from(e))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The HTTP status of a gRPC code: the table of docs/http.md ("Errors").
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Cancelled | Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A gRPC code's name as the gRPC specification spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The failures of a data-plane call, for the OpenAPI document.
#[derive(IntoResponses)]
#[allow(dead_code)] // Only its derive is used.
pub enum DataPlaneErrors {
    /// A bad request: the field is named (`api_key`, `stage`, `method`, `cost`).
    #[response(status = 400)]
    BadRequest(ApiError),
    /// The body is larger than `--max-message-bytes`.
    #[response(status = 413)]
    TooLarge(ApiError),
    /// The body is not `application/json`.
    #[response(status = 415)]
    NotJson(ApiError),
    /// The limit store cannot decide (and `--on-store-error` is `unavailable`).
    #[response(status = 503)]
    Unavailable(ApiError),
    /// The call did not finish within `--request-timeout-ms`.
    #[response(status = 504)]
    Timeout(ApiError),
}

/// The failures every Admin call can have, for the OpenAPI document.
#[derive(IntoResponses)]
#[allow(dead_code)] // Only its derive is used.
pub enum AdminErrors {
    /// Bad input: `field` names it.
    #[response(status = 400)]
    BadRequest(ApiError),
    /// No `Authorization: Bearer TOKEN` header.
    #[response(status = 401)]
    Unauthenticated(ApiError),
    /// The token is wrong.
    #[response(status = 403)]
    Forbidden(ApiError),
    /// The thing named in the path (or the body) does not exist.
    #[response(status = 404)]
    NotFound(ApiError),
    /// `ALREADY_EXISTS`, or `FAILED_PRECONDITION`: the change conflicts with
    /// the catalog (the message says how), or the server has no admin token.
    #[response(status = 409)]
    Conflict(ApiError),
    /// The body is larger than the 16 MiB accepted.
    #[response(status = 413)]
    TooLarge(ApiError),
    /// The body is not `application/json` (`text/csv` for the import).
    #[response(status = 415)]
    UnsupportedMediaType(ApiError),
    /// The Admin service is off (`--admin-listen off`).
    #[response(status = 501)]
    Off(ApiError),
    /// The catalog's store (Redis) cannot be reached.
    #[response(status = 503)]
    Unavailable(ApiError),
    /// The call did not finish within `--admin-request-timeout-ms`.
    #[response(status = 504)]
    Timeout(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_names() {
        for (code, status, name) in [
            (Code::InvalidArgument, 400, "INVALID_ARGUMENT"),
            (Code::Unauthenticated, 401, "UNAUTHENTICATED"),
            (Code::PermissionDenied, 403, "PERMISSION_DENIED"),
            (Code::NotFound, 404, "NOT_FOUND"),
            (Code::AlreadyExists, 409, "ALREADY_EXISTS"),
            (Code::FailedPrecondition, 409, "FAILED_PRECONDITION"),
            (Code::ResourceExhausted, 429, "RESOURCE_EXHAUSTED"),
            (Code::Unavailable, 503, "UNAVAILABLE"),
            (Code::Cancelled, 504, "CANCELLED"),
            (Code::DeadlineExceeded, 504, "DEADLINE_EXCEEDED"),
            (Code::Unimplemented, 501, "UNIMPLEMENTED"),
            (Code::Internal, 500, "INTERNAL"),
            (Code::Unknown, 500, "UNKNOWN"),
        ] {
            assert_eq!((http_status(code).as_u16(), code_name(code)), (status, name));
        }
    }

    #[test]
    fn the_field_comes_from_invalid_argument_messages_only() {
        let e = HttpError::from(Invalid::new("throttle.rate_limit", "must be finite"));
        assert_eq!(e.body.field.as_deref(), Some("throttle.rate_limit"));
        assert_eq!(e.body.message, "throttle.rate_limit: must be finite");
        let e = HttpError::new(Code::InvalidArgument, "api_stages[0].throttle[/pets/GET]: bad");
        assert_eq!(e.body.field.as_deref(), Some("api_stages[0].throttle[/pets/GET]"));
        assert_eq!(HttpError::new(Code::InvalidArgument, "no field here").body.field, None);
        assert_eq!(HttpError::new(Code::NotFound, "key: x does not exist").body.field, None);
    }
}
