//! Browser login to private previews through the OIDC issuer (authorization code + PKCE).
//!
//! A browser page load of a private preview without a credential is redirected to the issuer;
//! the login's state, nonce, PKCE verifier and the page to return to travel in a signed cookie
//! named after the `state` (so logins in several tabs do not disturb each other). `/callback` on
//! the proxy's own host exchanges the code, validates the ID token like the API validates
//! tokens, checks that the user is a member of the sandbox's organization and sets a signed,
//! expiring session cookie for that sandbox before redirecting back. Each later request with the
//! cookie checks the membership again (a removed member loses access at once). Cookies are
//! HMAC-SHA256 signed with `PROXY_API_KEY` and never reach the sandbox.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use daytona_oidc::{OidcClient, Pkce, Provider, TokenError};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::credentials::cookie;
use crate::{ProxyError, ProxyState};

/// Prefix of every cookie this module sets; all are removed before a request is forwarded.
const COOKIE_PREFIX: &str = "daytona-oidc-";
/// How long a started login may take.
const LOGIN_MAX_AGE_S: u64 = 600;
/// How long a browser keeps its access to a sandbox without logging in again.
const SESSION_MAX_AGE_S: u64 = 12 * 3600;

/// The proxy's relying party at the issuer.
#[derive(Clone)]
pub struct BrowserLogin {
    pub provider: Arc<Provider>,
    /// `OIDC_CLIENT_ID`, `OIDC_CLIENT_SECRET` and `{proxy base}/callback`.
    pub client: OidcClient,
    /// `PROXY_API_KEY`: signs the login and session cookies.
    pub cookie_key: Vec<u8>,
}

impl std::fmt::Debug for BrowserLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLogin")
            .field("provider", &self.provider)
            .field("client_id", &self.client.client_id)
            .field("redirect_uri", &self.client.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// A login in progress (the `daytona-oidc-login-{state}` cookie).
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    nonce: String,
    verifier: String,
    return_to: String,
    exp: u64,
}

/// Access of one user to one sandbox (the `daytona-oidc-{sandboxId}` cookie).
#[derive(Serialize, Deserialize)]
struct Session {
    sub: String,
    sandbox: String,
    exp: u64,
}

fn now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

fn login_cookie_name(state: &str) -> String {
    format!("{COOKIE_PREFIX}login-{state}")
}

fn session_cookie_name(sandbox_id: &str) -> String {
    format!("{COOKIE_PREFIX}{sandbox_id}")
}

impl BrowserLogin {
    fn mac(&self, purpose: &str, payload: &[u8]) -> hmac::Hmac<Sha256> {
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.cookie_key).expect("HMAC takes any key");
        // The purpose separates login cookies from session cookies.
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac
    }

    fn seal<T: Serialize>(&self, purpose: &str, value: &T) -> String {
        let payload = serde_json::to_vec(value).expect("cookie payloads serialize");
        let tag = self.mac(purpose, &payload).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    fn open<T: for<'de> Deserialize<'de>>(&self, purpose: &str, sealed: &str) -> Option<T> {
        let (payload, tag) = sealed.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(purpose, &payload).verify_slice(&tag).ok()?;
        serde_json::from_slice(&payload).ok()
    }

    /// The scheme previews are served with (that of the callback URL).
    fn scheme(&self) -> &str {
        self.client
            .redirect_uri
            .split_once("://")
            .map_or("http", |(s, _)| s)
    }

    /// The user a valid session cookie of `sandbox_id` names.
    pub(crate) fn session_user(&self, headers: &HeaderMap, sandbox_id: &str) -> Option<String> {
        let sealed = cookie(headers, &session_cookie_name(sandbox_id))?;
        let session: Session = self.open("session", sealed)?;
        (session.sandbox == sandbox_id && session.exp > now()).then_some(session.sub)
    }
}

fn set_cookie(name: &str, value: &str, max_age: u64, domain: Option<&str>) -> HeaderValue {
    let mut cookie = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    if let Some(domain) = crate::preview::cookie_domain(domain) {
        cookie.push_str(&format!("; Domain={domain}"));
    }
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Removes this module's cookies from a request about to be forwarded to a sandbox.
pub(crate) fn strip_cookies(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !pair.starts_with(COOKIE_PREFIX))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Sends a browser to the issuer to log in; it comes back to the page it asked for.
pub(crate) async fn start(
    login: &BrowserLogin,
    cookie_domain: Option<&str>,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response, ProxyError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let return_to = format!("{}://{host}{path}", login.scheme());
    let state = daytona_oidc::random_token();
    let nonce = daytona_oidc::random_token();
    let pkce = Pkce::generate();
    let location = login
        .provider
        .authorization_url(&login.client, &state, &nonce, &pkce)
        .await
        .map_err(|e| ProxyError::Unavailable(format!("Login is unavailable: {e}")))?;
    let pending = PendingLogin {
        nonce,
        verifier: pkce.verifier,
        return_to,
        exp: now() + LOGIN_MAX_AGE_S,
    };
    let sealed = login.seal("login", &pending);
    let mut resp = (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            &login_cookie_name(&state),
            &sealed,
            LOGIN_MAX_AGE_S,
            cookie_domain,
        ),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `GET /callback` on the proxy's host: the issuer's redirect after a login.
pub(crate) async fn callback(
    State(state): State<ProxyState>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match finish(&state, &uri, &headers).await {
        Ok(resp) => resp,
        Err(e) => e.into_html(),
    }
}

async fn finish(
    state: &ProxyState,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ProxyError> {
    let settings = &state.settings;
    let login = settings.login.as_ref().ok_or_else(|| {
        ProxyError::NotFound("Browser login is not configured on this proxy (OIDC_DOMAIN)".into())
    })?;
    let params: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(error) = param("error") {
        return Err(ProxyError::Unauthorized(format!(
            "The login was refused by the issuer: {error} {}",
            param("error_description").unwrap_or_default()
        )));
    }
    let (Some(code), Some(login_state)) = (param("code"), param("state")) else {
        return Err(ProxyError::BadRequest(
            "The login callback needs the 'code' and 'state' parameters".into(),
        ));
    };
    let pending: PendingLogin = cookie(headers, &login_cookie_name(login_state))
        .and_then(|sealed| login.open("login", sealed))
        .filter(|p: &PendingLogin| p.exp > now())
        .ok_or_else(|| {
            ProxyError::BadRequest(
                "This login was not started by this browser or took too long (state does not \
                 match); open the preview again"
                    .into(),
            )
        })?;
    // Only back to a preview host: the cookie is signed, but never be an open redirect anyway.
    let (sandbox_id, return_to) = preview_of(state, &pending.return_to).await?;

    let tokens = login
        .provider
        .exchange_code(&login.client, code, &pending.verifier)
        .await
        .map_err(|e| ProxyError::Unauthorized(format!("The login failed: {e}")))?;
    let id_token = tokens.id_token.ok_or_else(|| {
        ProxyError::Unauthorized("The login failed: the issuer returned no ID token".into())
    })?;
    let claims = login
        .provider
        .verify(&id_token)
        .await
        .map_err(|e| ProxyError::Unauthorized(format!("The login failed: {e}")))?;
    if claims.nonce.as_deref() != Some(pending.nonce.as_str()) {
        return Err(ProxyError::Unauthorized(format!(
            "The login failed: {}",
            TokenError::WrongNonce
        )));
    }
    state
        .directory
        .authorize_user(&sandbox_id, &claims.sub)
        .await?;
    tracing::info!(user = %claims.sub, sandbox = %sandbox_id, "browser logged in to a preview");

    let session = Session {
        sub: claims.sub,
        sandbox: sandbox_id.clone(),
        exp: now() + SESSION_MAX_AGE_S,
    };
    let domain = settings.cookie_domain.as_deref();
    let mut resp = (StatusCode::FOUND, [(header::LOCATION, return_to)]).into_response();
    let headers = resp.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(
            &session_cookie_name(&sandbox_id),
            &login.seal("session", &session),
            SESSION_MAX_AGE_S,
            domain,
        ),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(&login_cookie_name(login_state), "", 0, domain),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The sandbox a return URL's preview host names, and the URL; refuses anything that is not a
/// preview page of this proxy.
async fn preview_of(state: &ProxyState, url: &str) -> Result<(String, String), ProxyError> {
    let refuse = || ProxyError::BadRequest(format!("'{url}' is not a preview URL of this proxy"));
    let (_, rest) = url.split_once("://").ok_or_else(refuse)?;
    let (host, _) = rest.split_once('/').ok_or_else(refuse)?;
    if host.contains(['@', '\\']) {
        return Err(refuse());
    }
    let preview = state
        .settings
        .preview_hosts
        .iter()
        .find_map(|p| p.parse(host))
        .ok_or_else(refuse)?;
    let target = state
        .directory
        .preview_target(&preview.label, preview.port)
        .await?;
    Ok((target.sandbox_id, url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(key: &[u8]) -> BrowserLogin {
        BrowserLogin {
            provider: Arc::new(
                Provider::new(
                    daytona_oidc::ProviderSettings {
                        issuer_url: "http://127.0.0.1:9".into(),
                        public_url: "http://127.0.0.1:9".into(),
                        audiences: vec!["daytona".into()],
                    },
                    reqwest::Client::builder(),
                )
                .unwrap(),
            ),
            client: OidcClient {
                client_id: "daytona".into(),
                client_secret: None,
                redirect_uri: "https://proxy.example.com/callback".into(),
            },
            cookie_key: key.to_vec(),
        }
    }

    fn with_cookie(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; {name}={value}")).unwrap(),
        );
        h
    }

    #[test]
    fn sessions_are_bound_to_key_sandbox_and_time() {
        let l = login(b"proxy-key");
        let sealed = l.seal(
            "session",
            &Session {
                sub: "alice".into(),
                sandbox: "sb1".into(),
                exp: now() + 60,
            },
        );
        let h = with_cookie(&session_cookie_name("sb1"), &sealed);
        assert_eq!(l.session_user(&h, "sb1").as_deref(), Some("alice"));
        // Another key, another sandbox's cookie name, or a login cookie's purpose: refused.
        assert_eq!(login(b"other-key").session_user(&h, "sb1"), None);
        let moved = with_cookie(&session_cookie_name("sb2"), &sealed);
        assert_eq!(l.session_user(&moved, "sb2"), None);
        let wrong_purpose = l.seal(
            "login",
            &Session {
                sub: "alice".into(),
                sandbox: "sb1".into(),
                exp: now() + 60,
            },
        );
        let h = with_cookie(&session_cookie_name("sb1"), &wrong_purpose);
        assert_eq!(l.session_user(&h, "sb1"), None);
        // Edited payload with the old tag.
        let (_, tag) = sealed.split_once('.').unwrap();
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(r#"{"sub":"admin","sandbox":"sb1","exp":99999999999}"#)
        );
        let h = with_cookie(&session_cookie_name("sb1"), &forged);
        assert_eq!(l.session_user(&h, "sb1"), None);
        let expired = l.seal(
            "session",
            &Session {
                sub: "alice".into(),
                sandbox: "sb1".into(),
                exp: now() - 1,
            },
        );
        let h = with_cookie(&session_cookie_name("sb1"), &expired);
        assert_eq!(l.session_user(&h, "sb1"), None);
        assert_eq!(l.scheme(), "https");
    }

    #[test]
    fn login_cookies_never_reach_the_sandbox() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("app=1; daytona-oidc-sb1=x"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("daytona-oidc-login-s=y; theme=dark"),
        );
        strip_cookies(&mut h);
        assert_eq!(h.get(header::COOKIE).unwrap(), "app=1; theme=dark");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("daytona-oidc-sb1=x"),
        );
        strip_cookies(&mut h);
        assert!(h.get(header::COOKIE).is_none());
    }
}
