use std::time::Duration;

use super::*;

fn scope(s: &str) -> Access {
    Access::parse(s).unwrap()
}

async fn server(dir: &Path) -> RegistryTokens {
    let store = Store::open(dir).await.unwrap();
    let auth = RegistryTokenAuth {
        realm: "http://127.0.0.1:3000/api/docker-registry/token".into(),
        service: "registry.test".into(),
        issuer: "daytona-test".into(),
        key_path: None,
        cert_path: None,
        token_ttl: Duration::from_secs(300),
    };
    let (key, cert) = key_paths(&auth, dir);
    RegistryTokens {
        store,
        key: SigningKey::load_or_create(&key, &cert).unwrap(),
        auth,
        transient: Some(RegistryConfig {
            url: "http://Registry.test:6000".into(),
            admin: "admin".into(),
            password: daytona_config::Secret::new("admin-pass"),
            project_id: "daytona".into(),
        }),
        administrators: vec![("admin".into(), "admin-pass".into())],
    }
}

#[test]
fn scopes_parse_with_ports_classes_and_several_actions() {
    assert_eq!(
        scope("repository:localhost:5000/a/b:pull,push"),
        Access {
            kind: "repository".into(),
            name: "localhost:5000/a/b".into(),
            actions: vec!["pull".into(), "push".into()],
        }
    );
    assert_eq!(scope("repository(plugin):a:pull").kind, "repository");
    assert_eq!(scope("registry:catalog:*").actions, vec!["*"]);
    for bad in ["repository", "repository:a", ":a:pull", "repository::pull"] {
        assert!(Access::parse(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn push_access_reaches_only_its_organizations_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = server(dir.path()).await;
    let access = tokens.push_access("org-a", "user-a").await.unwrap();
    assert_eq!(access.registry_url, "registry.test:6000");
    assert_eq!(access.project, "daytona/org-a");
    assert!(access.username.starts_with(USERNAME_PREFIX));
    assert_eq!(access.registry_id, registry_id("http://Registry.test:6000"));
    let expires = DateTime::parse_from_rfc3339(&access.expires_at).unwrap();
    let left = expires.with_timezone(&Utc) - Utc::now();
    assert!(left > ChronoDuration::minutes(59) && left <= PUSH_ACCESS_TTL);

    let principal = tokens
        .authenticate(&access.username, &access.secret)
        .await
        .unwrap();
    assert_eq!(
        principal,
        Principal::Organization {
            username: access.username.clone(),
            organization_id: "org-a".into()
        }
    );
    let granted = tokens.grant(
        &principal,
        &[
            scope("repository:daytona/org-a/app:pull,push,delete"),
            scope("repository:daytona/org-b/app:pull,push"),
            scope("repository:daytona/org-a-other/app:push"),
            scope("repository:daytona/daytona-abc:pull"),
            scope("registry:catalog:*"),
        ],
    );
    assert_eq!(
        granted,
        vec![Access {
            kind: "repository".into(),
            name: "daytona/org-a/app".into(),
            actions: vec!["pull".into(), "push".into()],
        }]
    );

    // Wrong secrets, unknown names and another credential's secret are refused.
    let other = tokens.push_access("org-b", "user-b").await.unwrap();
    for (user, pass) in [
        (access.username.as_str(), "wrong"),
        (access.username.as_str(), other.secret.as_str()),
        ("daytona-push-0000000000000000", access.secret.as_str()),
        ("admin", "wrong"),
    ] {
        let refused = tokens.authenticate(user, pass).await.unwrap_err();
        assert!(matches!(refused, ApiError::Unauthorized(_)), "{user}");
    }
}

#[tokio::test]
async fn expired_credentials_are_refused_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = server(dir.path()).await;
    let access = tokens.push_access("org-a", "user-a").await.unwrap();
    sqlx::query("UPDATE registry_credentials SET expires_at = $1 WHERE username = $2")
        .bind(crate::store::now())
        .bind(&access.username)
        .execute(tokens.store.pool())
        .await
        .unwrap();
    let refused = tokens
        .authenticate(&access.username, &access.secret)
        .await
        .unwrap_err();
    assert!(matches!(refused, ApiError::Unauthorized(_)));
    tokens.push_access("org-a", "user-a").await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM registry_credentials")
        .fetch_one(tokens.store.pool())
        .await
        .unwrap();
    assert_eq!(left, 1, "the expired credential is swept");
}

#[tokio::test]
async fn administrators_get_what_they_ask_and_tokens_carry_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = server(dir.path()).await;
    let admin = tokens.authenticate("admin", "admin-pass").await.unwrap();
    let requested = [
        scope("repository:daytona/daytona-abc:pull,push"),
        scope("repository:daytona/daytona-abc:delete"),
        scope("registry:catalog:*"),
    ];
    let granted = tokens.grant(&admin, &requested);
    assert_eq!(granted.len(), 2, "one entry per resource: {granted:?}");
    assert_eq!(granted[0].actions, vec!["pull", "push", "delete"]);

    let answer = tokens
        .issue(&admin, Some("registry.test"), &granted)
        .unwrap();
    assert_eq!(answer.token, answer.access_token);
    assert_eq!(answer.expires_in, 300);
    let key = jsonwebtoken::DecodingKey::from_ec_der(tokens.key.public_key());
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["registry.test"]);
    validation.set_issuer(&["daytona-test"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&answer.token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "admin");
    assert_eq!(claims["aud"], "registry.test", "a single audience string");
    assert_eq!(claims["access"][1]["type"], "registry");
    assert_eq!(claims["access"][0]["actions"][2], "delete");

    let wrong = tokens
        .issue(&admin, Some("elsewhere"), &granted)
        .unwrap_err();
    assert!(wrong.to_string().contains("elsewhere"), "{wrong}");
}

#[test]
fn the_registry_config_names_realm_service_issuer_and_bundle() {
    let auth = RegistryTokenAuth {
        realm: "http://api:3000/api/docker-registry/token".into(),
        service: "daytona-registry".into(),
        issuer: "daytona".into(),
        key_path: None,
        cert_path: None,
        token_ttl: Duration::from_secs(300),
    };
    let yaml = registry_auth_config(&auth, Path::new("/etc/daytona/cert.pem"));
    assert_eq!(
        yaml,
        "auth:\n  token:\n    realm: \"http://api:3000/api/docker-registry/token\"\n    \
         service: \"daytona-registry\"\n    issuer: \"daytona\"\n    \
         rootcertbundle: \"/etc/daytona/cert.pem\"\n"
    );
}
