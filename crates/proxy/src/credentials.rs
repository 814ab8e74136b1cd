//! Where a caller's credentials for a sandbox come from, in upstream's order: a bearer API key,
//! the `X-Daytona-Preview-Token` header, the `DAYTONA_SANDBOX_AUTH_KEY` query parameter, then the
//! `daytona-sandbox-auth-{id}` cookie set after a successful query-parameter login.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, header};

use crate::PREVIEW_TOKEN_HEADER;
use crate::signed_file::{SIGNED_PARAMS, SignedFile};

pub const AUTH_KEY_PARAM: &str = "DAYTONA_SANDBOX_AUTH_KEY";
const SKIP_ACTIVITY_HEADER: &str = "x-daytona-skip-last-activity-update";

/// A credential offered for one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An API key or a user's token (JWT) of someone who may see the sandbox.
    ApiKey(String),
    /// The sandbox's own preview token.
    PreviewToken(String),
    /// A signed file URL; valid only for the file and operation it names.
    SignedFile(SignedFile),
}

#[derive(Debug)]
pub(crate) struct Found {
    pub credential: Credential,
    /// Came from the query string: a browser that should get the cookie.
    pub from_query: bool,
    /// Headers that carried it; they never reach the sandbox.
    pub strip: Vec<HeaderName>,
}

pub(crate) fn cookie_name(sandbox_id: &str) -> String {
    format!("daytona-sandbox-auth-{sandbox_id}")
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn query_auth_key(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == AUTH_KEY_PARAM)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

pub(crate) fn find(req: &Request, sandbox_id: &str) -> Option<Found> {
    let headers = req.headers();
    let found = |credential, from_query, strip: &[HeaderName]| Found {
        credential,
        from_query,
        strip: strip.to_vec(),
    };
    if let Some(key) = bearer(headers) {
        return Some(found(
            Credential::ApiKey(key.to_string()),
            false,
            &[header::AUTHORIZATION],
        ));
    }
    if let Some(token) = headers
        .get(PREVIEW_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return Some(found(
            Credential::PreviewToken(token.trim().to_string()),
            false,
            &[PREVIEW_TOKEN_HEADER],
        ));
    }
    if let Some(token) = query_auth_key(req.uri().query()) {
        return Some(found(Credential::PreviewToken(token), true, &[]));
    }
    if let Some(token) = cookie(headers, &cookie_name(sandbox_id)) {
        return Some(found(
            Credential::PreviewToken(token.to_string()),
            false,
            &[],
        ));
    }
    let operation = req
        .uri()
        .path()
        .strip_prefix("/toolbox/")
        .and_then(|rest| rest.strip_prefix(sandbox_id))?;
    SignedFile::from_request(req.method().as_str(), operation, req.uri().query())
        .map(|signed| found(Credential::SignedFile(signed), false, &[]))
}

impl Credential {
    /// Query parameters that carry credentials of this kind and never reach the sandbox.
    pub(crate) fn query_params(&self) -> &'static [&'static str] {
        match self {
            Credential::SignedFile(_) => &SIGNED_PARAMS,
            _ => &[AUTH_KEY_PARAM],
        }
    }
}

/// The query string (with its `?`) minus the `removed` parameters, other pairs untouched.
pub(crate) fn query_without(query: Option<&str>, removed: &[&str]) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            let key = form_urlencoded::parse(key.as_bytes())
                .next()
                .map_or_else(|| key.to_string(), |(k, _)| k.into_owned());
            !removed.contains(&key.as_str())
        })
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}

pub(crate) fn skips_activity(headers: &HeaderMap) -> bool {
    headers
        .get(SKIP_ACTIVITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn credential_order_and_sources() {
        let r = request(
            "/?DAYTONA_SANDBOX_AUTH_KEY=q",
            &[
                ("authorization", "Bearer k"),
                ("x-daytona-preview-token", "h"),
            ],
        );
        let f = find(&r, "s").unwrap();
        assert_eq!(f.credential, Credential::ApiKey("k".into()));
        assert_eq!(f.strip, [header::AUTHORIZATION]);
        let r = request(
            "/?DAYTONA_SANDBOX_AUTH_KEY=q",
            &[("x-daytona-preview-token", "h")],
        );
        assert_eq!(
            find(&r, "s").unwrap().credential,
            Credential::PreviewToken("h".into())
        );
        let r = request(
            "/p?a=1&DAYTONA_SANDBOX_AUTH_KEY=q",
            &[("cookie", "daytona-sandbox-auth-s=c")],
        );
        let f = find(&r, "s").unwrap();
        assert_eq!(
            (f.credential, f.from_query),
            (Credential::PreviewToken("q".into()), true)
        );
        let r = request("/", &[("cookie", "x=1; daytona-sandbox-auth-s=c")]);
        assert_eq!(
            find(&r, "s").unwrap().credential,
            Credential::PreviewToken("c".into())
        );
        assert!(
            find(&r, "other").is_none(),
            "a cookie is bound to its sandbox"
        );
        assert!(find(&request("/", &[("authorization", "Basic x")]), "s").is_none());
    }

    #[test]
    fn auth_key_is_stripped_from_the_query() {
        assert_eq!(
            query_without(
                Some("a=1&DAYTONA_SANDBOX_AUTH_KEY=x&b=%20"),
                &[AUTH_KEY_PARAM]
            ),
            "?a=1&b=%20"
        );
        assert_eq!(
            query_without(Some("DAYTONA_SANDBOX_AUTH_KEY=x"), &[AUTH_KEY_PARAM]),
            ""
        );
        assert_eq!(query_without(None, &[AUTH_KEY_PARAM]), "");
        assert_eq!(query_without(Some("x"), &[AUTH_KEY_PARAM]), "?x");
    }
}
