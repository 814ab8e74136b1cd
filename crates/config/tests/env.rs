use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use daytona_config::{BuildEngine, Config, ConfigError, Protocol, Quotas, RateLimit, Role};

fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // A data dir is given so results do not depend on who runs the tests.
    Config::from_lookup(move |name| match name {
        "DAYTONA_DATA_DIR" if !map.contains_key(name) => Some("/tmp/daytona-test".into()),
        _ => map.get(name).cloned(),
    })
}

fn config(vars: &[(&str, &str)]) -> Config {
    load(vars).unwrap_or_else(|e| panic!("{e}"))
}

fn error(vars: &[(&str, &str)]) -> ConfigError {
    load(vars).expect_err("expected a configuration error")
}

#[test]
fn defaults_match_the_seed_tables() {
    let c = config(&[]);
    let secs = Duration::from_secs;
    // API table
    assert_eq!(c.api.port, 3000);
    assert_eq!(c.api.encryption_key.expose(), "supersecretkey");
    assert_eq!(c.api.encryption_salt.expose(), "supersecretsalt");
    assert_eq!(c.api.default_snapshot, "daytonaio/sandbox:0.4.3");
    assert_eq!(c.api.dashboard_url, "http://localhost:3000/dashboard");
    assert_eq!(c.api.max_auto_archive_interval, 43_200);
    assert!(c.api.run_migrations && c.api.skip_user_email_verification);
    assert!(!c.api.maintenance_mode);
    assert_eq!(c.proxy.domain, "proxy.localhost:4000");
    assert_eq!(c.proxy.protocol, Protocol::Http);
    assert_eq!(c.proxy.api_key.expose(), "super_secret_key");
    assert_eq!(
        c.proxy.template_url,
        "http://{{PORT}}-{{sandboxId}}.proxy.localhost:4000"
    );
    assert_eq!(c.default_runner.api_url, "http://runner:3003");
    assert_eq!(c.default_runner.api_key.expose(), "secret_api_token");
    assert_eq!(
        (
            c.default_runner.cpu,
            c.default_runner.memory_gb,
            c.default_runner.disk_gb
        ),
        (4, 8, 50)
    );
    assert_eq!(c.default_runner.api_version, "0");
    assert_eq!(c.org_quotas, Quotas::DEFAULT_ORG);
    assert_eq!(c.org_quotas.total_disk, 100_000);
    assert_eq!(c.admin.quotas.snapshot_quota, 100);
    assert_eq!(c.admin.quotas.total_cpu, 0);
    assert!(c.admin.api_key.is_none());
    assert_eq!(c.ssh_gateway.command, "ssh -p 2222 {{TOKEN}}@localhost");
    assert_eq!(c.ssh_gateway.url, "localhost:2222");
    assert_eq!(c.scheduler.start_score_threshold, 3);
    assert_eq!(c.scheduler.runner_health_timeout, secs(3));
    assert_eq!(c.build.max_sandboxes_per_runner, 30);
    assert_eq!(c.build.sandbox_snapshotting_timeout, secs(3600));
    assert_eq!(c.build.snapshot_runner_staleness, secs(7 * 86_400));
    assert_eq!(c.rate_limits.anonymous, None);
    assert_eq!(c.rate_limits.failed_auth, None);
    assert_eq!((c.region.id.as_str(), c.region.name.as_str()), ("us", "us"));
    assert!(!c.region.enforce_quotas);
    assert_eq!(c.api.health_check_api_key.expose(), "supersecretkey");
    assert!(c.otel.enabled);
    assert_eq!(c.misc.environment, "dev");
    // Runner table
    assert_eq!(c.misc.api_url, "http://api:3000/api");
    assert_eq!(c.runner.token.expose(), "secret_api_token");
    assert_eq!(c.runner.version, "0.0.1");
    assert_eq!(c.runner.api_port, 3003);
    assert_eq!(c.runner.api_version, 2);
    assert_eq!(c.build.timeout, secs(120 * 60));
    assert_eq!((c.build.cpu_cores, c.build.memory_gb), (4, 8));
    assert_eq!(c.runner.daemon_start_timeout, secs(60));
    assert_eq!(c.runner.sandbox_start_timeout, secs(30));
    assert_eq!(c.runner.volume_cleanup_interval, secs(30));
    assert_eq!(c.runner.collector_window_size, 60);
    assert_eq!(c.runner.cpu_usage_snapshot_interval, secs(5));
    assert_eq!(c.runner.poll_timeout, secs(30));
    assert_eq!(c.runner.poll_limit, 10);
    assert_eq!(c.runner.healthcheck_interval, secs(30));
    assert_eq!(c.runner.healthcheck_timeout, secs(10));
    assert_eq!(c.runner.snapshot_error_cache_retention, secs(600));
    assert!(!c.runner.inter_sandbox_network_enabled);
    assert_eq!(c.runner.build_engine, BuildEngine::Buildkit);
    // SSH gateway table
    assert_eq!(c.ssh_gateway.api_url, "http://api:3000/api");
    assert_eq!(
        c.ssh_gateway.gateway_api_key.expose(),
        "ssh_secret_api_token"
    );
    assert_eq!(c.ssh_gateway.port, 2222);
    // Proxy table
    assert_eq!(c.proxy.port, 4000);
    assert_eq!(c.proxy.cookie_domain, "proxy.localhost:4000");
    assert!(!c.proxy.toolbox_only_mode && !c.proxy.preview_warning_enabled);
    assert_eq!(c.proxy.shutdown_timeout, secs(3600));
    // Our additions
    assert_eq!(c.server.bind_address, IpAddr::from([0, 0, 0, 0]));
    assert!(Role::ALL.iter().all(|r| c.server.roles.contains(*r)));
    assert_eq!(c.server.log, "info");
    assert_eq!(c.runner.bridge_name, "daytona0");
    assert_eq!(c.runner.sandbox_subnet.to_string(), "100.100.0.0/16");
    assert_eq!(c.runner.daemon_path, None);
    assert!(!c.runner.sandbox_userns);
    // Embedded defaults: no external services.
    assert!(c.db.is_none() && c.redis.is_none() && c.oidc.is_none() && c.s3.is_none());
    assert!(c.smtp.is_none() && c.clickhouse.is_none() && c.posthog.is_none());
    assert!(c.registries.transient.is_none() && c.runner.storage.is_none());
    assert!(c.otel.api_traces.is_none());
}

#[test]
fn naming_a_service_enables_it_with_the_seeds_defaults() {
    let c = config(&[
        ("DB_HOST", "db"),
        ("REDIS_HOST", "redis"),
        ("OIDC_ISSUER_BASE_URL", "http://dex:5556/dex"),
        ("S3_ENDPOINT", "http://minio:9000"),
        ("SMTP_HOST", "maildev"),
        ("TRANSIENT_REGISTRY_URL", "http://registry:6000"),
        ("CLICKHOUSE_HOST", "ch"),
        ("OTEL_COLLECTOR_URL", "http://jaeger:4318/v1/traces"),
    ]);
    let db = c.db.unwrap();
    assert_eq!(
        (db.port, db.username.as_str(), db.database.as_str()),
        (5432, "user", "daytona")
    );
    assert_eq!(db.password.expose(), "pass");
    assert!(!db.tls_enabled && db.tls_reject_unauthorized);
    assert_eq!(c.redis.unwrap().port, 6379);
    let oidc = c.oidc.unwrap();
    assert_eq!(oidc.proxy_domain, "http://dex:5556/dex");
    assert_eq!(oidc.public_domain, "http://localhost:5556/dex");
    assert_eq!(oidc.proxy_public_domain, "http://localhost:5556/dex");
    assert_eq!(
        (oidc.client_id.as_str(), oidc.audience.as_str()),
        ("daytona", "daytona")
    );
    assert!(oidc.management_api.is_none());
    let s3 = c.s3.unwrap();
    assert_eq!(s3.sts_endpoint, "http://minio:9000/minio/v1/assume-role");
    assert_eq!(
        (s3.storage.region.as_str(), s3.storage.bucket.as_str()),
        ("us-east-1", "daytona")
    );
    assert_eq!(s3.account_id, None);
    let runner_storage = c.runner.storage.unwrap();
    assert_eq!(runner_storage.endpoint, "http://minio:9000");
    assert_eq!(runner_storage.access_key.expose(), "minioadmin");
    let smtp = c.smtp.unwrap();
    assert_eq!(smtp.port, 1025);
    assert_eq!(smtp.email_from, "Daytona Team <no-reply@daytona.io>");
    assert_eq!(smtp.secure, None);
    let registry = c.registries.transient.unwrap();
    assert_eq!(
        (registry.admin.as_str(), registry.project_id.as_str()),
        ("admin", "daytona")
    );
    assert!(c.registries.internal.is_none());
    let ch = c.clickhouse.unwrap();
    assert_eq!(
        (ch.port, ch.database.as_str(), ch.protocol),
        (8123, "otel", Protocol::Https)
    );
    assert_eq!(
        c.otel.api_traces.unwrap().api_key.expose(),
        "otel_collector_api_key"
    );
}

#[test]
fn shared_variables_feed_every_service() {
    let c = config(&[
        ("OIDC_DOMAIN", "https://idp.example/"),
        ("OIDC_PUBLIC_DOMAIN", "https://login.example/"),
        ("SSH_GATEWAY_API_KEY", "gw-key"),
        ("DEFAULT_RUNNER_API_KEY", "runner-key"),
        ("S3_ENDPOINT", "http://127.0.0.1:9000"),
        ("S3_ACCESS_KEY", "ak"),
        ("AWS_DEFAULT_BUCKET", "other"),
    ]);
    let oidc = c.oidc.unwrap();
    assert_eq!(oidc.issuer_base_url, "https://idp.example/");
    assert_eq!(oidc.public_domain, "https://login.example/");
    assert_eq!(c.ssh_gateway.gateway_api_key.expose(), "gw-key");
    assert_eq!(c.runner.token.expose(), "runner-key");
    // One API URL serves every split role unless the gateway's own API_URL says otherwise.
    let shared = config(&[("DAYTONA_API_URL", "http://10.1.1.1:3000/api")]);
    assert_eq!(shared.ssh_gateway.api_url, "http://10.1.1.1:3000/api");
    assert_eq!(shared.misc.api_url, "http://10.1.1.1:3000/api");
    let own = config(&[
        ("DAYTONA_API_URL", "http://10.1.1.1:3000/api"),
        ("API_URL", "http://gw-api:3000/api"),
    ]);
    assert_eq!(own.ssh_gateway.api_url, "http://gw-api:3000/api");
    let storage = c.runner.storage.unwrap();
    assert_eq!(storage.endpoint, "http://127.0.0.1:9000");
    assert_eq!(storage.access_key.expose(), "ak");
    assert_eq!(storage.bucket, "other");
}

#[test]
fn toolbox_and_preview_urls_derive_from_protocol_and_domain() {
    let c = config(&[]);
    assert_eq!(c.proxy.toolbox_base_url, "http://proxy.localhost:4000");
    assert_eq!(c.toolbox_proxy_url(), "http://proxy.localhost:4000/toolbox");
    assert_eq!(
        c.proxy.preview_url(8080, "abc"),
        "http://8080-abc.proxy.localhost:4000"
    );

    let c = config(&[
        ("PROXY_PROTOCOL", "HTTPS"),
        ("PROXY_DOMAIN", "proxy.example.com"),
    ]);
    assert_eq!(c.toolbox_proxy_url(), "https://proxy.example.com/toolbox");
    assert_eq!(
        c.proxy.template_url,
        "https://{{PORT}}-{{sandboxId}}.proxy.example.com"
    );
    assert_eq!(c.proxy.cookie_domain, "proxy.example.com");

    let c = config(&[("PROXY_TOOLBOX_BASE_URL", "https://tb.example.com/")]);
    assert_eq!(c.toolbox_proxy_url(), "https://tb.example.com/toolbox");

    let c = config(&[("SSH_GATEWAY_COMMAND", "ssh {{TOKEN}}@gw -p 22")]);
    assert_eq!(c.ssh_gateway.ssh_command("tok"), "ssh tok@gw -p 22");
}

#[test]
fn values_parse_in_every_accepted_form() {
    let c = config(&[
        ("PORT", " 8080 "),
        ("MAINTENANCE_MODE", "Yes"),
        ("RUN_MIGRATIONS", "0"),
        ("TOOLBOX_ONLY_MODE", "TRUE"),
        ("DB_TLS_ENABLED", ""),
        ("HEALTHCHECK_INTERVAL", "1m30s"),
        ("VOLUME_CLEANUP_INTERVAL", "45"),
        ("POLL_TIMEOUT", "1.5s"),
        ("BUILD_ENGINE", "legacy"),
        ("DAYTONA_BIND_ADDRESS", "127.0.0.1"),
        ("DAYTONA_ROLES", "api, proxy"),
        ("DAYTONA_SANDBOX_SUBNET", "100.64.8.0/24"),
        ("RATE_LIMIT_ANONYMOUS_TTL", "60"),
        ("RATE_LIMIT_ANONYMOUS_LIMIT", "100"),
        ("SANDBOX_OTEL_ENDPOINT_URL", "http://otel:4318"),
        ("https_proxy", "http://proxy:3128"),
        ("NODE_EXTRA_CA_CERTS", "/etc/ssl/extra.pem"),
        ("SMTP_HOST", "mail"),
        ("SMTP_SECURE", "no"),
    ]);
    assert_eq!(c.api.port, 8080);
    assert!(c.api.maintenance_mode && !c.api.run_migrations && c.proxy.toolbox_only_mode);
    assert_eq!(c.runner.healthcheck_interval, Duration::from_secs(90));
    assert_eq!(c.runner.volume_cleanup_interval, Duration::from_secs(45));
    assert_eq!(c.runner.poll_timeout, Duration::from_millis(1500));
    assert_eq!(c.runner.build_engine, BuildEngine::Legacy);
    assert!(c.server.binds_loopback_only());
    assert!(c.server.roles.contains(Role::Proxy) && !c.server.roles.contains(Role::Runner));
    assert_eq!(
        c.runner.sandbox_subnet.gateway(),
        Ipv4Addr::new(100, 64, 8, 1)
    );
    assert_eq!(
        c.rate_limits.anonymous,
        Some(RateLimit {
            ttl: Duration::from_secs(60),
            limit: 100
        })
    );
    assert_eq!(
        c.otel.sandbox_endpoint_url.as_deref(),
        Some("http://otel:4318")
    );
    assert_eq!(
        c.misc.https_proxy.as_ref().map(|s| s.expose()),
        Some("http://proxy:3128")
    );
    assert_eq!(
        c.misc.extra_ca_certs.as_deref(),
        Some(Path::new("/etc/ssl/extra.pem"))
    );
    assert_eq!(c.smtp.unwrap().secure, Some(false));
}

#[test]
fn every_kind_of_bad_value_names_its_variable() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "PORT",
            "abc",
            "invalid PORT=\"abc\": expected a port number (1-65535)",
        ),
        ("PROXY_PORT", "0", "a port number"),
        ("REDIS_PORT", "70000", "a port number"),
        ("RUN_MIGRATIONS", "maybe", "true/false, 1/0 or yes/no"),
        ("DEFAULT_RUNNER_CPU", "-1", "a whole number (0 or more)"),
        ("DEFAULT_ORG_QUOTA_TOTAL_CPU_QUOTA", "1.5", "a whole number"),
        ("POLL_LIMIT", "101", "a whole number from 1 to 100"),
        ("BUILD_CPU_CORES", "0", "a whole number of at least 1"),
        (
            "BUILD_TIMEOUT_MIN",
            "0",
            "a whole number of minutes (at least 1)",
        ),
        (
            "DAEMON_START_TIMEOUT_SEC",
            "ten",
            "a whole number of seconds",
        ),
        ("POLL_TIMEOUT", "soon", "a duration such as 30s"),
        ("HEALTHCHECK_INTERVAL", "5s", "a duration of at least 10s"),
        (
            "SNAPSHOT_ERROR_CACHE_RETENTION",
            "4m",
            "a duration of at least 5m",
        ),
        (
            "CPU_USAGE_SNAPSHOT_INTERVAL",
            "500ms",
            "a duration of at least 1s",
        ),
        ("DASHBOARD_URL", "localhost:3000", "a URL with a scheme"),
        ("DAYTONA_API_URL", "api:3000/api", "a URL with a scheme"),
        ("PROXY_PROTOCOL", "ftp", "http or https"),
        ("BUILD_ENGINE", "kaniko", "buildkit or legacy"),
        ("DAYTONA_BIND_ADDRESS", "localhost", "an IP address"),
        (
            "DAYTONA_ROLES",
            "api,web",
            "a comma-separated list of api, proxy",
        ),
        ("DAYTONA_DATA_DIR", "relative/dir", "an absolute path"),
        ("DAYTONA_DAEMON_PATH", "daemon", "an absolute path"),
        (
            "DAYTONA_BRIDGE_NAME",
            "a-very-long-bridge-name",
            "a network interface name",
        ),
        (
            "SSH_HOST_KEY",
            "not base64!",
            "a base64-encoded OpenSSH key",
        ),
        ("DAYTONA_SANDBOX_SUBNET", "100.100.0.0", "CIDR form"),
        (
            "DAYTONA_SANDBOX_USERNS",
            "maybe",
            "true/false, 1/0 or yes/no",
        ),
        ("DAYTONA_EGRESS_PROXY_PORT", "0", "port"),
        (
            "DAYTONA_EGRESS_EXTRA_CA_FILE",
            "relative/ca.pem",
            "absolute",
        ),
    ];
    for (var, value, expected) in cases {
        let err = error(&[(var, value)]);
        assert_eq!(err.problems.len(), 1, "{var}: {err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("invalid {var}={value:?}: expected ")),
            "{message}"
        );
        assert!(message.contains(expected), "{var}: {message}");
    }
}

#[test]
fn all_errors_are_collected() {
    let err = error(&[
        ("PORT", "abc"),
        ("OTEL_ENABLED", "sometimes"),
        ("HEALTHCHECK_INTERVAL", "1s"),
        ("DAYTONA_SANDBOX_SUBNET", "10.0.0.0/16"),
    ]);
    let vars: Vec<&str> = err.problems.iter().map(|p| p.var.as_str()).collect();
    assert_eq!(vars.len(), 4, "{err}");
    for var in [
        "PORT",
        "OTEL_ENABLED",
        "HEALTHCHECK_INTERVAL",
        "DAYTONA_SANDBOX_SUBNET",
    ] {
        assert!(err.for_var(var).is_some(), "{var} missing from {err}");
    }
    let message = err.to_string();
    assert!(
        message.starts_with("4 configuration errors:\n  invalid "),
        "{message}"
    );
    assert_eq!(message.lines().count(), 5);
}

#[test]
fn sandbox_subnet_must_stay_in_shared_address_space() {
    for bad in [
        "10.0.0.0/16",
        "192.168.0.0/24",
        "172.16.0.0/12",
        "100.0.0.0/8",
        "100.128.0.0/16",
    ] {
        let err = error(&[("DAYTONA_SANDBOX_SUBNET", bad)]);
        let message = err.to_string();
        assert!(message.contains("inside 100.64.0.0/10"), "{bad}: {message}");
    }
    let err = error(&[("DAYTONA_SANDBOX_SUBNET", "100.100.0.0/31")]);
    assert!(err.to_string().contains("/30 or larger"), "{err}");
    let err = error(&[("DAYTONA_SANDBOX_SUBNET", "100.100.0.1/16")]);
    assert!(err.to_string().contains("host bits zero"), "{err}");
    for good in ["100.64.0.0/10", "100.127.255.252/30", "100.100.0.0/16"] {
        assert_eq!(
            config(&[("DAYTONA_SANDBOX_SUBNET", good)])
                .runner
                .sandbox_subnet
                .to_string(),
            good
        );
    }
}

#[test]
fn half_a_rate_limit_is_an_error() {
    let err = error(&[("RATE_LIMIT_SANDBOX_CREATE_TTL", "60")]);
    assert_eq!(
        err.to_string(),
        "invalid RATE_LIMIT_SANDBOX_CREATE_LIMIT=\"\": expected a request count when \
         RATE_LIMIT_SANDBOX_CREATE_TTL is set"
    );
    let err = error(&[("RATE_LIMIT_FAILED_AUTH_LIMIT", "5")]);
    assert!(err.for_var("RATE_LIMIT_FAILED_AUTH_TTL").is_some(), "{err}");
    // A bad half is reported once, as itself.
    let err = error(&[
        ("RATE_LIMIT_AUTHENTICATED_TTL", "x"),
        ("RATE_LIMIT_AUTHENTICATED_LIMIT", "10"),
    ]);
    assert_eq!(err.problems.len(), 1, "{err}");
}

#[test]
fn enabled_management_api_needs_its_credentials() {
    let err = error(&[
        ("OIDC_ISSUER_BASE_URL", "https://tenant.auth0.com/"),
        ("OIDC_MANAGEMENT_API_ENABLED", "true"),
        ("OIDC_MANAGEMENT_API_CLIENT_ID", "m2m"),
    ]);
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.for_var("OIDC_MANAGEMENT_API_CLIENT_SECRET").is_some());
    assert!(err.for_var("OIDC_MANAGEMENT_API_AUDIENCE").is_some());
}

#[test]
fn placeholder_secrets_are_reported_per_variable() {
    let warnings = config(&[]).placeholder_secret_warnings();
    let named = |var: &str| warnings.iter().any(|w| w.starts_with(&format!("{var} ")));
    for var in [
        "ENCRYPTION_KEY",
        "ENCRYPTION_SALT",
        "HEALTH_CHECK_API_KEY",
        "PROXY_API_KEY",
        "DEFAULT_RUNNER_API_KEY",
        "DAYTONA_RUNNER_TOKEN",
        "SSH_GATEWAY_API_KEY",
        "API_KEY",
    ] {
        assert!(named(var), "{var} not warned: {warnings:#?}");
    }
    // Unconfigured services' placeholders are not in use, so they are not reported.
    assert!(!named("DB_PASSWORD") && !named("S3_SECRET_KEY"));
    assert_eq!(warnings.len(), 8);

    let warnings = config(&[("DB_HOST", "db"), ("S3_ENDPOINT", "http://minio:9000")])
        .placeholder_secret_warnings();
    let named = |var: &str| warnings.iter().any(|w| w.starts_with(&format!("{var} ")));
    assert!(named("DB_PASSWORD") && named("S3_ACCESS_KEY") && named("AWS_SECRET_ACCESS_KEY"));

    let strong = [
        ("ENCRYPTION_KEY", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
        ("ENCRYPTION_SALT", "a5b4c3d2e1f00f1e2d3c4b5a69788796"),
        ("HEALTH_CHECK_API_KEY", "e3b0c44298fc1c149afbf4c8996fb924"),
        ("PROXY_API_KEY", "27ae41e4649b934ca495991b7852b855"),
        ("DEFAULT_RUNNER_API_KEY", "d41d8cd98f00b204e9800998ecf8427e"),
        ("SSH_GATEWAY_API_KEY", "9e107d9d372bb6826bd81d3542a419d6"),
        ("DB_HOST", "db"),
        ("DB_PASSWORD", "Password"),
    ];
    let warnings = config(&strong).placeholder_secret_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("DB_PASSWORD "),
        "case-insensitive match"
    );
}

#[test]
fn debug_output_redacts_secrets() {
    let c = config(&[
        ("ENCRYPTION_KEY", "enc-key-value-1234"),
        ("DB_HOST", "db"),
        ("DB_PASSWORD", "db-password-5678"),
        ("ADMIN_API_KEY", "admin-key-9012"),
        ("HTTP_PROXY", "http://user:proxy-pass-3456@proxy:3128"),
        ("SSH_PRIVATE_KEY", "c2VjcmV0LXByaXZhdGUta2V5"),
    ]);
    let debug = format!("{c:?}");
    for secret in [
        "enc-key-value-1234",
        "db-password-5678",
        "admin-key-9012",
        "proxy-pass-3456",
        "c2VjcmV0LXByaXZhdGUta2V5",
        "supersecretsalt",
        "super_secret_key",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug output");
    }
    assert!(debug.contains("Secret(<redacted>)"));
    assert!(
        debug.contains("proxy.localhost:4000"),
        "non-secrets stay visible"
    );
}

#[test]
fn blank_values_fall_back_to_defaults() {
    let c = config(&[("PORT", ""), ("OTEL_ENABLED", "  "), ("PROXY_DOMAIN", "")]);
    assert_eq!(c.api.port, 3000);
    assert!(c.otel.enabled);
    assert_eq!(c.proxy.domain, "proxy.localhost:4000");
}

#[test]
fn data_dir_follows_the_environment() {
    let c = config(&[("DAYTONA_DATA_DIR", "/srv/daytona")]);
    assert_eq!(c.server.data_dir, Path::new("/srv/daytona"));
}

#[test]
fn sandbox_user_namespaces_are_an_option() {
    assert!(
        config(&[("DAYTONA_SANDBOX_USERNS", "true")])
            .runner
            .sandbox_userns
    );
    assert!(
        !config(&[("DAYTONA_SANDBOX_USERNS", "no")])
            .runner
            .sandbox_userns
    );
}

#[test]
fn the_registry_token_server_is_opt_in_with_its_key_paths_together() {
    assert!(config(&[]).registries.token_auth.is_none());
    let c = config(&[(
        "DAYTONA_REGISTRY_TOKEN_REALM",
        "http://api:3000/api/docker-registry/token",
    )]);
    let auth = c.registries.token_auth.unwrap();
    assert_eq!(auth.service, "daytona-registry");
    assert_eq!(auth.issuer, "daytona");
    assert_eq!(auth.token_ttl, Duration::from_secs(300));
    assert!(auth.key_path.is_none() && auth.cert_path.is_none());

    let realm = (
        "DAYTONA_REGISTRY_TOKEN_REALM",
        "http://api:3000/api/docker-registry/token",
    );
    let lonely = error(&[
        realm,
        ("DAYTONA_REGISTRY_TOKEN_KEY", "/etc/daytona/key.pem"),
    ])
    .to_string();
    assert!(lonely.contains("DAYTONA_REGISTRY_TOKEN_CERT"), "{lonely}");
    let relative = error(&[
        realm,
        ("DAYTONA_REGISTRY_TOKEN_KEY", "key.pem"),
        ("DAYTONA_REGISTRY_TOKEN_CERT", "/etc/daytona/cert.pem"),
    ])
    .to_string();
    assert!(
        relative.contains("DAYTONA_REGISTRY_TOKEN_KEY"),
        "{relative}"
    );
    assert!(
        error(&[("DAYTONA_REGISTRY_TOKEN_REALM", "api/token")])
            .to_string()
            .contains("DAYTONA_REGISTRY_TOKEN_REALM")
    );
}
