//! The one mapping of tollgate's errors to gRPC statuses.
//!
//! Store trouble is UNAVAILABLE, never UNKNOWN: Envoy treats UNKNOWN like
//! any other error, but UNAVAILABLE tells every client that retrying (or
//! failing open, if it so chooses) is right. Bad input is INVALID_ARGUMENT,
//! with the field named first.

use tonic::Status;

use crate::limiter::AuthorizeError;
use crate::model::Invalid;
use crate::store::StoreError;

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Status::unavailable(format!("limit store unavailable: {m}")),
            StoreError::Internal(m) => Status::internal(format!("limit store error: {m}")),
        }
    }
}

impl From<AuthorizeError> for Status {
    fn from(e: AuthorizeError) -> Self {
        match e {
            AuthorizeError::Invalid(i) => i.into(),
            AuthorizeError::Store(s) => s.into(),
        }
    }
}
