//! The validator against a small in-process issuer (discovery + JWKS, ES256 keys); the SDK suite
//! exercises it against a real OIDC provider (RS256).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        // Uncompressed point: 0x04 || x || y.
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let der = self.pair.to_pkcs8v1().unwrap();
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(der.as_ref())).unwrap()
    }
}

#[derive(Clone)]
struct Issuer {
    base: Arc<StdMutex<String>>,
    published: Arc<StdMutex<Vec<Value>>>,
    jwks_hits: Arc<AtomicUsize>,
}

async fn discovery(State(issuer): State<Issuer>) -> Json<Value> {
    let base = issuer.base.lock().unwrap().clone();
    // Published under a public name that the provider rewrites to the internal one.
    Json(json!({
        "issuer": "https://login.example.com",
        "authorization_endpoint": "https://login.example.com/auth",
        "token_endpoint": "https://login.example.com/token",
        "jwks_uri": "https://login.example.com/keys",
        "internal": base,
    }))
}

async fn keys(State(issuer): State<Issuer>) -> Json<Value> {
    issuer.jwks_hits.fetch_add(1, Ordering::SeqCst);
    Json(json!({ "keys": issuer.published.lock().unwrap().clone() }))
}

async fn start_issuer(keys_published: &[&SigningKey]) -> (Issuer, Provider) {
    let issuer = Issuer {
        base: Default::default(),
        published: Arc::new(StdMutex::new(
            keys_published.iter().map(|k| k.jwk()).collect(),
        )),
        jwks_hits: Default::default(),
    };
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/keys", get(self::keys))
        .with_state(issuer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *issuer.base.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let provider = Provider::new(
        ProviderSettings {
            issuer_url: base,
            public_url: "https://login.example.com".into(),
            audiences: vec!["daytona-api".into(), "daytona".into()],
        },
        reqwest::Client::builder(),
    )
    .unwrap();
    (issuer, provider)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(aud: &str, exp_offset: i64) -> Value {
    json!({
        "iss": "https://login.example.com", "sub": "user-1", "aud": aud,
        "email": "u@example.com", "name": "U",
        "iat": now(), "exp": now().saturating_add_signed(exp_offset),
    })
}

fn token_error(r: Result<Claims, OidcError>) -> TokenError {
    match r {
        Err(OidcError::Token(e)) => e,
        other => panic!("expected a token error, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_tokens_pass_and_each_bad_one_is_named() {
    let key = SigningKey::new("k1");
    let (issuer, provider) = start_issuer(&[&key]).await;

    let ok = provider
        .verify(&key.sign(&claims("daytona", 300)))
        .await
        .unwrap();
    assert_eq!(
        (ok.sub.as_str(), ok.email.as_deref()),
        ("user-1", Some("u@example.com"))
    );
    // Either configured audience, also inside an array.
    let mut c = claims("x", 300);
    c["aud"] = json!(["other", "daytona-api"]);
    provider.verify(&key.sign(&c)).await.unwrap();

    assert_eq!(
        token_error(provider.verify(&key.sign(&claims("daytona", -120))).await),
        TokenError::Expired
    );
    // Within the leeway an expired token still passes.
    provider
        .verify(&key.sign(&claims("daytona", -5)))
        .await
        .unwrap();
    assert!(matches!(
        token_error(
            provider
                .verify(&key.sign(&claims("someone-else", 300)))
                .await
        ),
        TokenError::WrongAudience { .. }
    ));
    let mut c = claims("daytona", 300);
    c["iss"] = json!("https://evil.example.com");
    assert!(matches!(
        token_error(provider.verify(&key.sign(&c)).await),
        TokenError::WrongIssuer { .. }
    ));
    let mut c = claims("daytona", 300);
    c["nbf"] = json!(now() + 600);
    assert_eq!(
        token_error(provider.verify(&key.sign(&c)).await),
        TokenError::NotYetValid
    );
    let mut c = claims("daytona", 300);
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        token_error(provider.verify(&key.sign(&c)).await),
        TokenError::MissingClaim("sub".into())
    );

    // A changed payload keeps the header and signature: the signature no longer matches.
    let token = key.sign(&claims("daytona", 300));
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!("admin");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    assert_eq!(
        token_error(provider.verify(&forged).await),
        TokenError::BadSignature
    );

    // HS256 signed with the public key as a secret (algorithm confusion) is refused outright.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims("daytona", 300),
        &EncodingKey::from_secret(key.pair.public_key().as_ref()).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        token_error(provider.verify(&confused).await),
        TokenError::UnsupportedAlgorithm(_)
    ));
    assert_eq!(
        token_error(provider.verify("dtn_abc").await),
        TokenError::Malformed
    );
    assert_eq!(
        issuer.jwks_hits.load(Ordering::SeqCst),
        1,
        "keys are cached"
    );
}

#[tokio::test]
async fn rotated_keys_are_refetched_at_a_limited_rate() {
    let old = SigningKey::new("old");
    let new = SigningKey::new("new");
    let (issuer, provider) = start_issuer(&[&old]).await;
    provider
        .verify(&old.sign(&claims("daytona", 300)))
        .await
        .unwrap();
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 1);

    // The issuer rotates: a token with the new kid triggers one refetch and passes.
    *issuer.published.lock().unwrap() = vec![old.jwk(), new.jwk()];
    // ... but only once the refetch interval has passed since the last fetch.
    assert_eq!(
        token_error(provider.verify(&new.sign(&claims("daytona", 300))).await),
        TokenError::UnknownKey("new".into())
    );
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 1);
    provider.keys.write().await.fetched = Some(Instant::now() - JWKS_REFETCH_INTERVAL);
    provider
        .verify(&new.sign(&claims("daytona", 300)))
        .await
        .unwrap();
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 2);

    // Unknown kids in a burst cause no further fetches.
    let stranger = SigningKey::new("stranger");
    for _ in 0..5 {
        assert_eq!(
            token_error(
                provider
                    .verify(&stranger.sign(&claims("daytona", 300)))
                    .await
            ),
            TokenError::UnknownKey("stranger".into())
        );
    }
    assert_eq!(issuer.jwks_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn endpoints_under_the_public_name_are_reached_internally() {
    let key = SigningKey::new("k1");
    let (issuer, provider) = start_issuer(&[&key]).await;
    let d = provider.discovery().await.unwrap();
    let internal = issuer.base.lock().unwrap().clone();
    assert_eq!(d.jwks_uri, format!("{internal}/keys"));
    assert_eq!(d.token_endpoint, format!("{internal}/token"));
    // Browsers go to the public name.
    let client = OidcClient {
        client_id: "daytona".into(),
        client_secret: None,
        redirect_uri: "http://proxy.localhost:4000/callback".into(),
    };
    let pkce = Pkce::generate();
    let url = provider
        .authorization_url(&client, "st", "nn", &pkce)
        .await
        .unwrap();
    assert!(url.starts_with("https://login.example.com/auth?response_type=code&client_id=daytona&redirect_uri=http%3A%2F%2Fproxy.localhost%3A4000%2Fcallback"), "{url}");
    assert!(
        url.contains(&format!("code_challenge={}", pkce.challenge))
            && url.contains("code_challenge_method=S256")
    );
    assert!(url.contains("state=st") && url.contains("nonce=nn"));
}

#[test]
fn jwt_shape() {
    assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
    assert!(!looks_like_jwt("dtn_0123456789abcdef"));
    assert!(!looks_like_jwt("a..b"));
    assert!(!looks_like_jwt("a.b.c.d"));
}
