//! Replacing placeholders by secret values in an outgoing request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, HeaderValue};
use hyper::http::uri::PathAndQuery;

use crate::{MAX_REWRITTEN_BODY, PLACEHOLDER_PREFIX, ResolvedSecret};

pub(crate) type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RewriteError {
    #[error("a secret's value cannot be placed in the {0} (it has characters not allowed there)")]
    NotRepresentable(&'static str),
    #[error("reading the request body: {0}")]
    Body(hyper::Error),
}

/// `input` with every placeholder of `secrets` replaced by its value, in one pass (a value that
/// looks like a placeholder is not replaced again); `None` when there was none.
pub(crate) fn replace(input: &[u8], secrets: &[&ResolvedSecret]) -> Option<Vec<u8>> {
    let prefix = PLACEHOLDER_PREFIX.as_bytes();
    let mut out = Vec::new();
    let (mut copied, mut at) = (0, 0);
    while let Some(found) = input[at..]
        .windows(prefix.len())
        .position(|w| w == prefix)
        .map(|p| p + at)
    {
        match secrets
            .iter()
            .find(|s| input[found..].starts_with(s.placeholder.as_bytes()))
        {
            Some(secret) => {
                out.extend_from_slice(&input[copied..found]);
                out.extend_from_slice(secret.value.as_bytes());
                copied = found + secret.placeholder.len();
                at = copied;
            }
            None => at = found + 1,
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&input[copied..]);
    Some(out)
}

/// Substitutes the placeholders of `secrets` (those allowed for the request's host) in the
/// path and query, the header values and a small body of known length without content
/// encoding; other bodies stream unchanged.
pub(crate) async fn substitute(
    req: Request<Incoming>,
    secrets: &[&ResolvedSecret],
) -> Result<Request<ProxyBody>, RewriteError> {
    if secrets.is_empty() {
        return Ok(req.map(BodyExt::boxed));
    }
    let (mut parts, body) = req.into_parts();
    if let Some(pq) = parts.uri.path_and_query()
        && let Some(new) = replace(pq.as_str().as_bytes(), secrets)
    {
        let pq = PathAndQuery::try_from(new)
            .map_err(|_| RewriteError::NotRepresentable("request URL"))?;
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(pq);
        parts.uri = hyper::Uri::from_parts(uri)
            .map_err(|_| RewriteError::NotRepresentable("request URL"))?;
    }
    for value in parts.headers.values_mut() {
        if let Some(new) = replace(value.as_bytes(), secrets) {
            *value = HeaderValue::from_bytes(&new)
                .map_err(|_| RewriteError::NotRepresentable("request headers"))?;
        }
    }
    let length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let encoded = parts.headers.contains_key(CONTENT_ENCODING);
    let body = match length {
        Some(n) if n > 0 && n <= MAX_REWRITTEN_BODY && !encoded => {
            let bytes = body.collect().await.map_err(RewriteError::Body)?.to_bytes();
            match replace(&bytes, secrets) {
                Some(new) => {
                    parts
                        .headers
                        .insert(CONTENT_LENGTH, HeaderValue::from(new.len()));
                    full(new)
                }
                None => full(bytes),
            }
        }
        _ => body.boxed(),
    };
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(placeholder: &str, value: &str) -> ResolvedSecret {
        ResolvedSecret {
            placeholder: placeholder.into(),
            value: value.into(),
            hosts: vec![],
        }
    }

    #[test]
    fn replaces_every_known_placeholder_once() {
        let a = secret("daytona-secret-aaaa", "real-a");
        let b = secret("daytona-secret-bbbb", "daytona-secret-aaaa");
        let both = [&a, &b];
        assert_eq!(
            replace(
                b"x daytona-secret-aaaa y daytona-secret-bbbb daytona-secret-cccc",
                &both
            )
            .unwrap(),
            b"x real-a y daytona-secret-aaaa daytona-secret-cccc"
        );
        assert_eq!(replace(b"daytona-secret-cccc", &both), None);
        assert_eq!(replace(b"", &both), None);
        assert_eq!(replace(b"daytona-secret-aaaa", &both).unwrap(), b"real-a");
    }
}
