//! Request input whose errors name the offending field: JSON bodies and numeric query values.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// Like `axum::Json`, but a bad body is a 400 whose message names the field
/// (e.g. `cpu: invalid type: string "two", expected u32`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("could not read request body: {e}")))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." || path.is_empty() {
                    ApiError::BadRequest(format!("invalid JSON body: {inner}"))
                } else {
                    ApiError::BadRequest(format!("{path}: {inner}"))
                }
            })
    }
}
/// Parses an optional integer query value within `1..=max`.
pub(crate) fn bounded(name: &str, raw: Option<&str>, default: u64, max: u64) -> ApiResult<u64> {
    let Some(raw) = raw else { return Ok(default) };
    raw.parse::<u64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name}: expected an integer from 1 to {max}, got '{raw}'"
            ))
        })
}
