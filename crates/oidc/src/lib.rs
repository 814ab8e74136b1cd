//! OpenID Connect for the API and the proxy: discovery, JWKS (cached, refetched when a token
//! names an unknown key), token validation, and the pieces of the authorization-code flow with
//! PKCE that the proxy's browser login needs (authorization URL, code exchange).
//!
//! The issuer is reached at its internal address (`OIDC_ISSUER_BASE_URL`); its document may name
//! itself by the public address browsers use (`PUBLIC_OIDC_DOMAIN`), so server-side endpoints
//! (JWKS, token) are rewritten from the public to the internal prefix, while the authorization
//! endpoint is left as the issuer publishes it (browsers follow it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

mod pkce;

pub use pkce::{Pkce, random_token};

/// Clock skew tolerated for `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 30;
/// A token naming an unknown key refetches the JWKS at most this often (an attacker must not be
/// able to make every request hit the issuer).
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Asymmetric algorithms only: with an HMAC algorithm a public key would become a shared secret.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a token was refused. The messages name the failed check; they are shown to callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a JWT")]
    Malformed,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token audience is not {expected}")]
    WrongAudience { expected: String },
    #[error("token issuer is not {expected}")]
    WrongIssuer { expected: String },
    #[error("token lacks the '{0}' claim")]
    MissingClaim(String),
    #[error("token algorithm {0} is not accepted (asymmetric signatures only)")]
    UnsupportedAlgorithm(String),
    #[error("token is signed with key '{0}', which the issuer does not publish")]
    UnknownKey(String),
    #[error("token nonce does not match this login")]
    WrongNonce,
    #[error("token is invalid: {0}")]
    Invalid(String),
}

/// The issuer could not be asked (discovery, JWKS or token endpoint).
#[derive(Debug, Clone, thiserror::Error)]
#[error("OIDC issuer {url}: {message}")]
pub struct IssuerError {
    pub url: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Issuer(#[from] IssuerError),
}

/// Where the issuer is and which tokens are for us.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The issuer as this server reaches it (discovery is fetched from here).
    pub issuer_url: String,
    /// The issuer as browsers reach it; server-side endpoints under it are rewritten to
    /// `issuer_url`.
    pub public_url: String,
    /// Accepted `aud` values (`OIDC_AUDIENCE` and the client id: access tokens carry the former,
    /// ID tokens the latter).
    pub audiences: Vec<String>,
}

/// The discovery document's fields this crate uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

/// The claims of a validated token.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// Checked to be present and non-empty by [`Provider::verify`].
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: Option<bool>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub nonce: Option<String>,
    pub exp: u64,
}

/// The token endpoint's answer to a code exchange.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    pub id_token: Option<String>,
    pub access_token: String,
}

struct KeyCache {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// Keys published without a `kid`.
    anonymous: Vec<Arc<DecodingKey>>,
    fetched: Option<Instant>,
}

/// One OIDC issuer: cached discovery and keys.
pub struct Provider {
    settings: ProviderSettings,
    http: reqwest::Client,
    discovery: RwLock<Option<Arc<Discovery>>>,
    keys: RwLock<KeyCache>,
    /// Serialises JWKS fetches so concurrent misses fetch once.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Whether a bearer credential has the shape of a JWT (three base64url parts), as opposed to an
/// opaque API key.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Provider {
    /// `http` carries the deployment's proxies and trusted CAs (`daytona_outbound`).
    pub fn new(
        settings: ProviderSettings,
        http: reqwest::ClientBuilder,
    ) -> Result<Self, IssuerError> {
        let http = http
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| IssuerError {
                url: settings.issuer_url.clone(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Self {
            settings,
            http,
            discovery: RwLock::new(None),
            keys: RwLock::new(KeyCache {
                keys: HashMap::new(),
                anonymous: Vec::new(),
                fetched: None,
            }),
            fetching: Mutex::new(()),
        })
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    /// The issuer's discovery document, fetched once (again after a failure).
    pub async fn discovery(&self) -> Result<Arc<Discovery>, IssuerError> {
        if let Some(d) = self.discovery.read().await.as_ref() {
            return Ok(d.clone());
        }
        let mut slot = self.discovery.write().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer_url.trim_end_matches('/')
        );
        let mut doc: Discovery = self.get_json(&url).await?;
        doc.jwks_uri = self.internal(&doc.jwks_uri);
        doc.token_endpoint = self.internal(&doc.token_endpoint);
        tracing::info!(issuer = %doc.issuer, jwks = %doc.jwks_uri, "OIDC issuer discovered");
        let doc = Arc::new(doc);
        *slot = Some(doc.clone());
        Ok(doc)
    }

    /// `url` with the public issuer prefix replaced by the internal one.
    fn internal(&self, url: &str) -> String {
        let public = self.settings.public_url.trim_end_matches('/');
        let internal = self.settings.issuer_url.trim_end_matches('/');
        match url.strip_prefix(public) {
            Some(rest) if public != internal && (rest.is_empty() || rest.starts_with('/')) => {
                format!("{internal}{rest}")
            }
            _ => url.to_string(),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, IssuerError> {
        let fail = |message: String| IssuerError {
            url: url.to_string(),
            message,
        };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fail(format!("unreachable: {e}")))?;
        if !resp.status().is_success() {
            return Err(fail(format!("answered {}", resp.status())));
        }
        resp.json()
            .await
            .map_err(|e| fail(format!("unreadable answer: {e}")))
    }

    /// Fetches the JWKS unless it was fetched within [`JWKS_REFETCH_INTERVAL`] (`force` false:
    /// only when never fetched).
    async fn refresh_keys(&self, force: bool) -> Result<(), IssuerError> {
        let _guard = self.fetching.lock().await;
        let fetched = self.keys.read().await.fetched;
        match fetched {
            Some(_) if !force => return Ok(()),
            Some(t) if t.elapsed() < JWKS_REFETCH_INTERVAL => return Ok(()),
            _ => {}
        }
        let discovery = self.discovery().await?;
        let set: JwkSet = self.get_json(&discovery.jwks_uri).await?;
        let mut keys = HashMap::new();
        let mut anonymous = Vec::new();
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                tracing::debug!(kid = ?jwk.common.key_id, "skipping an unusable JWK");
                continue;
            };
            let key = Arc::new(key);
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.insert(kid.clone(), key);
                }
                None => anonymous.push(key),
            }
        }
        tracing::debug!(keys = keys.len() + anonymous.len(), "OIDC keys fetched");
        *self.keys.write().await = KeyCache {
            keys,
            anonymous,
            fetched: Some(Instant::now()),
        };
        Ok(())
    }

    /// The keys a token may be signed with: the one its `kid` names, else those published
    /// without a `kid`; every key when the token names none (issuers with one key often omit it).
    async fn keys_for(&self, kid: Option<&str>) -> Vec<Arc<DecodingKey>> {
        let cache = self.keys.read().await;
        match kid {
            Some(kid) => match cache.keys.get(kid) {
                Some(key) => vec![key.clone()],
                None => cache.anonymous.clone(),
            },
            None => cache
                .keys
                .values()
                .chain(&cache.anonymous)
                .cloned()
                .collect(),
        }
    }

    /// Validates `token`: signature by a key the issuer publishes, `iss`, `aud`, `exp`, `nbf`.
    pub async fn verify(&self, token: &str) -> Result<Claims, OidcError> {
        if !looks_like_jwt(token) {
            return Err(TokenError::Malformed.into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::UnsupportedAlgorithm(format!("{:?}", header.alg)).into());
        }
        let discovery = self.discovery().await?;
        let kid = header.kid.as_deref();
        self.refresh_keys(false).await?;
        let mut keys = self.keys_for(kid).await;
        if keys.is_empty() {
            // The issuer may have rotated its keys since we fetched them.
            self.refresh_keys(true).await?;
            keys = self.keys_for(kid).await;
        }
        if keys.is_empty() {
            return Err(TokenError::UnknownKey(kid.unwrap_or("(none)").to_string()).into());
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&discovery.issuer]);
        validation.set_audience(&self.settings.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let mut last = TokenError::BadSignature;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) if data.claims.sub.is_empty() => {
                    return Err(TokenError::MissingClaim("sub".into()).into());
                }
                Ok(data) => return Ok(data.claims),
                Err(e) => last = self.classify(e, &discovery),
            }
        }
        Err(last.into())
    }

    fn classify(&self, e: jsonwebtoken::errors::Error, discovery: &Discovery) -> TokenError {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => TokenError::Malformed,
            K::InvalidSignature => TokenError::BadSignature,
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidAudience => TokenError::WrongAudience {
                expected: self.settings.audiences.join(" or "),
            },
            K::InvalidIssuer => TokenError::WrongIssuer {
                expected: discovery.issuer.clone(),
            },
            K::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
            K::InvalidAlgorithm => {
                TokenError::UnsupportedAlgorithm("that does not match the issuer's key".to_string())
            }
            _ => TokenError::Invalid(e.to_string()),
        }
    }

    /// Exchanges an authorization code (with its PKCE verifier) at the token endpoint.
    pub async fn exchange_code(
        &self,
        client: &OidcClient,
        code: &str,
        verifier: &str,
    ) -> Result<TokenResponse, IssuerError> {
        let discovery = self.discovery().await?;
        let url = &discovery.token_endpoint;
        let fail = |message: String| IssuerError {
            url: url.clone(),
            message,
        };
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", client.redirect_uri.as_str()),
            ("client_id", client.client_id.as_str()),
            ("code_verifier", verifier),
        ];
        if let Some(secret) = client.client_secret.as_deref() {
            form.push(("client_secret", secret));
        }
        let resp = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| fail(format!("unreachable: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            return Err(fail(format!("refused the code ({status}): {body}")));
        }
        resp.json()
            .await
            .map_err(|e| fail(format!("unreadable token answer: {e}")))
    }

    /// The URL a browser is sent to for logging in.
    pub async fn authorization_url(
        &self,
        client: &OidcClient,
        state: &str,
        nonce: &str,
        pkce: &Pkce,
    ) -> Result<String, IssuerError> {
        let discovery = self.discovery().await?;
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &client.redirect_uri)
            .append_pair("scope", "openid profile email")
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let endpoint = &discovery.authorization_endpoint;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        Ok(format!("{endpoint}{sep}{query}"))
    }
}

/// A relying party registered at the issuer (the proxy's browser login).
#[derive(Debug, Clone)]
pub struct OidcClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub redirect_uri: String,
}

#[cfg(test)]
mod tests;
