//! The JSON side of the proto messages, and reading requests into them.
//!
//! The messages themselves get their serde and utoipa derives in `build.rs`
//! (names as in the proto; unknown fields refused; missing fields take the
//! proto3 default). Here:
//!
//! - [`reason`], [`limit_kind`], [`admission`] and [`admission_opt`]: enum
//!   fields written by their proto names (`"THROTTLED"`, `"LEASED"`), not as
//!   numbers.
//! - [`JsonBody`], [`QueryParams`], [`PathParams`], [`CsvBody`]: extractors
//!   whose failures are [`HttpError`]s naming the field (`cost`,
//!   `throttle.rate_limit`, `page_size`), like the gRPC API's
//!   INVALID_ARGUMENT messages, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use tonic::Code;

use super::error::HttpError;
use crate::model::Invalid;

/// Writes an `i32` enum field as its name; reads the name back.
macro_rules! enum_by_name {
    ($module:ident, $enum:ty, $doc:literal) => {
        #[doc = $doc]
        pub mod $module {
            use serde::{Deserialize, Deserializer, Serialize, Serializer};

            /// The name of `v` (the zero value's for a number the proto does
            /// not define).
            pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                <$enum>::try_from(*v).unwrap_or_default().serialize(s)
            }

            /// The number of a name.
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                Ok(<$enum>::deserialize(d)? as i32)
            }
        }
    };
}

enum_by_name!(reason, crate::api::pb::Reason, "`AuthorizeResponse.reason` by name (`\"THROTTLED\"`).");
enum_by_name!(limit_kind, crate::api::pb::LimitKind, "`RateLimitInfo.kind` by name (`\"PLAN_THROTTLE\"`).");
enum_by_name!(admission, crate::api::pb::Admission, "A plan's `admission` by name (`\"LEASED\"`).");

/// `UpdateUsagePlanRequest.admission` (optional) by name, or absent.
pub mod admission_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::api::pb::Admission;

    /// The name, or `null`.
    pub fn serialize<S: Serializer>(v: &Option<i32>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|v| Admission::try_from(v).unwrap_or_default()).serialize(s)
    }

    /// The number of a name; absent or `null`: none.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
        Ok(Option::<Admission>::deserialize(d)?.map(|a| a as i32))
    }
}

/// A JSON request body read into `T`. An empty body is `{}` (every field its
/// default, as an empty gRPC message); a non-empty one must be sent as
/// `application/json`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let json_type = is_media_type(req.headers(), |m| m == "application/json" || m.ends_with("+json"));
        let body = read_body(req, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return parse_json(b"{}").map(JsonBody);
        }
        if !json_type {
            return Err(HttpError::with_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::InvalidArgument,
                "body: send it as JSON, with `content-type: application/json`",
            ));
        }
        parse_json(&body).map(JsonBody)
    }
}

/// Reads `bytes` as JSON into `T`; a failure names the field by its path.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return Invalid::new("body", format!("is not valid JSON: {inner}")).into();
        }
        invalid_at(e.path(), "body", inner).into()
    })
}

/// An [`Invalid`] for a deserialization failure at `path` (`root` when the
/// failure is about the whole object, e.g. an unknown field).
fn invalid_at(path: &serde_path_to_error::Path, root: &str, e: &impl std::fmt::Display) -> Invalid {
    let at = path.to_string();
    Invalid::new(if at == "." { root.to_string() } else { at }, e.to_string())
}

/// The whole body, within the route's body limit (413 past it).
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, HttpError> {
    Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::with_status(StatusCode::PAYLOAD_TOO_LARGE, Code::OutOfRange, format!("body: {}", e.body_text()))
        } else {
            HttpError::new(Code::InvalidArgument, format!("body: {}", e.body_text()))
        }
    })
}

/// Whether the request's content type (without parameters) passes `check`.
fn is_media_type(headers: &HeaderMap, check: impl Fn(&str) -> bool) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| check(m.trim().to_ascii_lowercase().as_str()))
}

/// A CSV request body (`text/csv`, or no content type), as bytes.
pub struct CsvBody(pub Vec<u8>);

impl<S: Send + Sync> FromRequest<S> for CsvBody {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let csv = req.headers().get(header::CONTENT_TYPE).is_none()
            || is_media_type(req.headers(), |m| m == "text/csv" || m == "text/plain");
        if !csv {
            return Err(HttpError::with_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::InvalidArgument,
                "csv: send the file as the body, with `content-type: text/csv`",
            ));
        }
        Ok(CsvBody(read_body(req, state).await?.to_vec()))
    }
}

/// The query string read into `T`; a failure names the parameter.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| invalid_at(e.path(), "query", e.inner()).into())
    }
}

/// The query string read into `T`, but for the repeated `tag=KEY=VALUE`
/// parameters (a tag filter), returned apart as a map; a malformed one is an
/// error naming `tag`.
pub struct TaggedQuery<T>(pub T, pub std::collections::HashMap<String, String>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for TaggedQuery<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let query = parts.uri.query().unwrap_or_default();
        let mut tags = std::collections::HashMap::new();
        let mut rest = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k == "tag" {
                let (tk, tv) = crate::model::parse_tag("tag", &v)?;
                tags.insert(tk, tv);
            } else {
                rest.push((k, v));
            }
        }
        let rest = form_urlencoded::Serializer::new(String::new()).extend_pairs(rest).finish();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(rest.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(|t| TaggedQuery(t, tags))
            .map_err(|e| invalid_at(e.path(), "query", e.inner()).into())
    }
}

/// Path parameters (`{id}`), percent-decoded.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| HttpError::new(Code::InvalidArgument, format!("path: {}", e.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pb;

    #[test]
    fn enums_by_name() {
        let r = pb::AuthorizeResponse {
            reason: pb::Reason::Throttled as i32,
            rate_limit: Some(pb::RateLimitInfo { kind: pb::LimitKind::PlanQuota as i32, ..Default::default() }),
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!((v["reason"].as_str(), v["rate_limit"]["kind"].as_str()), (Some("THROTTLED"), Some("PLAN_QUOTA")));
        let zero = serde_json::to_value(pb::AuthorizeResponse::default()).unwrap();
        assert_eq!(zero["reason"], "REASON_UNSPECIFIED");
        let back: pb::AuthorizeResponse = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn bad_json_names_the_field() {
        let e = parse_json::<pb::AuthorizeRequest>(br#"{"stage":"a/b","cost":"x"}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("cost"), "{e:?}");
        let e = parse_json::<pb::CreateUsagePlanRequest>(br#"{"throttle":{"rate_limit":"fast"}}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("throttle.rate_limit"), "{e:?}");
        let e = parse_json::<pb::AuthorizeRequest>(br#"{"apikey":"x"}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("apikey"), "the unknown field is named: {e:?}");
        assert!(e.body.message.contains("unknown field `apikey`"), "{e:?}");
        let e = parse_json::<pb::AuthorizeRequest>(b"{").unwrap_err();
        assert!(e.body.message.starts_with("body: is not valid JSON"), "{e:?}");
    }
}
