//! The Socket.IO gateway over a real listener, spoken to at the wire level (Engine.IO v4 over
//! WebSocket) exactly as the SDKs' socket.io clients do: connect with the API key in the
//! connect packet, then receive the organization's sandbox events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use daytona_api::rate_limit::{InProcessLimiter, RateLimitPolicy};
use daytona_api::sandbox::access::{AccessService, AccessSettings};
use daytona_api::sandbox::dto::CreateSandbox;
use daytona_api::snapshot::SnapshotService;
use daytona_api::{AppState, SandboxService, SandboxSettings, Store};
use daytona_config::{RateLimit, RateLimits};
use daytona_runner::SandboxRunner;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod common;
use common::{NullRunner, Org, add_org};

/// Failed authentications allowed per client address (HTTP and Socket.IO together).
const FAILED_AUTH_LIMIT: u32 = 3;

struct Server {
    addr: SocketAddr,
    sandboxes: Arc<SandboxService>,
    _dir: tempfile::TempDir,
}

async fn start_server() -> (Server, Org, Org) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let a = add_org(&store, "alice").await;
    let b = add_org(&store, "bob").await;
    let settings = SandboxSettings {
        toolbox_proxy_url: "http://127.0.0.1:4000/toolbox".into(),
        default_snapshot: "oci-archive:/base.tar".into(),
        default_region: "us".into(),
        max_auto_archive_minutes: 7 * 24 * 60,
    };
    let runner: Arc<dyn SandboxRunner> = Arc::new(NullRunner::default());
    let snapshots = Arc::new(SnapshotService::new(store.clone(), runner.clone()));
    let sandboxes = Arc::new(SandboxService::new(
        store.clone(),
        runner,
        snapshots.clone(),
        settings,
    ));
    let app = daytona_api::router(AppState {
        secrets: Arc::new(daytona_api::secret::SecretService::new(
            store.clone(),
            "key",
            "salt",
        )),
        store,
        sandboxes: sandboxes.clone(),
        snapshots,
        rate_limits: Arc::new(RateLimitPolicy::new(
            RateLimits {
                failed_auth: Some(RateLimit {
                    ttl: Duration::from_secs(600),
                    limit: FAILED_AUTH_LIMIT,
                }),
                ..Default::default()
            },
            Box::new(InProcessLimiter::default()),
        )),
        access: Arc::new(AccessService::new(AccessSettings {
            preview_url_template: "http://{{PORT}}-{{sandboxId}}.proxy.localhost:4000".into(),
            ssh_command_template: "ssh -p 2222 {{TOKEN}}@localhost".into(),
        })),
        organizations: Arc::new(daytona_api::organization::OrganizationSettings {
            default_quotas: Default::default(),
            default_region: "us".into(),
            mailer: None,
        }),
        push_access: Arc::new(daytona_api::object_storage::PushAccess::External {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "daytona".into(),
            region: "us-east-1".into(),
            access_key: "key".into(),
            secret_key: "secret".into(),
        }),
        oidc: None,
        readiness: Arc::new(daytona_api::health::Readiness::new("health-key", None)),
        configuration: Arc::new(daytona_api::configuration::PublicConfiguration::new(
            &daytona_config::Config::from_lookup(|_| None).expect("defaults are valid"),
        )),
        runners: None,
        registry_tokens: None,
        oidc_management: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = Server {
        addr,
        sandboxes,
        _dir: dir,
    };
    (server, a, b)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One Socket.IO client connection on the default namespace.
struct Client {
    ws: Ws,
}

impl Client {
    /// Opens the Engine.IO session and sends the connect packet with `auth`; returns the
    /// client and the server's answer to the connect packet (`40…` or `44…`).
    async fn connect(addr: SocketAddr, query: &str, auth: Value) -> (Client, String) {
        let url = format!("ws://{addr}/api/socket.io/?{query}&EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut client = Client { ws };
        let open = client.recv().await;
        let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet"))
            .unwrap_or_else(|e| panic!("bad open packet {open}: {e}"));
        assert!(handshake["sid"].is_string(), "{handshake}");
        assert_eq!(handshake["upgrades"], json!([]));
        client
            .ws
            .send(Message::text(format!("40{auth}")))
            .await
            .unwrap();
        let answer = client.recv().await;
        (client, answer)
    }

    async fn connected(addr: SocketAddr, org: &Org) -> Client {
        let query = format!(
            "organizationId={}&source=sdk-python&sdkVersion=0.226.1",
            org.ctx.organization_id
        );
        let (client, answer) = Self::connect(addr, &query, json!({ "token": org.key })).await;
        assert!(answer.starts_with("40{\"sid\":"), "{answer}");
        client
    }

    /// The next Engine.IO text packet that is not a heartbeat (answering pings).
    async fn recv(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("no packet within 5 s")
                .expect("connection closed")
                .unwrap();
            match msg {
                Message::Text(t) if t.as_str() == "2" => {
                    self.ws.send(Message::text("3")).await.unwrap();
                }
                Message::Text(t) => return t.to_string(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    }

    /// The next event: its name and payload.
    async fn event(&mut self) -> (String, Value) {
        let packet = self.recv().await;
        let body = packet
            .strip_prefix("42")
            .unwrap_or_else(|| panic!("not an event packet: {packet}"));
        let v: Value = serde_json::from_str(body).unwrap();
        let [name, data] = v.as_array().unwrap().as_slice() else {
            panic!("event is not [name, data]: {v}");
        };
        (name.as_str().unwrap().to_string(), data.clone())
    }
}

fn create_body(name: &str) -> CreateSandbox {
    CreateSandbox {
        name: Some(name.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn organization_receives_its_sandbox_lifecycle_events() {
    let (server, a, b) = start_server().await;
    let mut alice = Client::connected(server.addr, &a).await;
    let mut bob = Client::connected(server.addr, &b).await;
    // The room is joined right after the connect packet; give that task a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let sandbox = server
        .sandboxes
        .create(&a.ctx, create_body("alpha"))
        .await
        .unwrap();
    let (name, data) = alice.event().await;
    assert_eq!(name, "sandbox.created");
    assert_eq!(data["id"], sandbox.id);
    assert_eq!(data["organizationId"], a.ctx.organization_id);
    assert_eq!(data["toolboxProxyUrl"], "http://127.0.0.1:4000/toolbox");
    assert_eq!(data["kvm"], false, "the full DTO, as the SDK parses it");
    let (name, data) = alice.event().await;
    assert_eq!(name, "sandbox.state.updated");
    assert_eq!(data["sandbox"]["id"], sandbox.id);
    assert_eq!(data["sandbox"]["state"], "started");
    assert_eq!(
        (&data["oldState"], &data["newState"]),
        (&json!("creating"), &json!("started"))
    );

    server.sandboxes.stop(&a.ctx, &sandbox.id).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (name, data) = alice.event().await;
        let change = match name.as_str() {
            "sandbox.desired-state.updated" => {
                format!(
                    "desired {}->{}",
                    data["oldDesiredState"], data["newDesiredState"]
                )
            }
            "sandbox.state.updated" => {
                assert_eq!(data["sandbox"]["state"], data["newState"]);
                format!("state {}->{}", data["oldState"], data["newState"])
            }
            other => panic!("unexpected event {other}"),
        };
        seen.push(change.replace('"', ""));
    }
    assert_eq!(
        seen,
        [
            "desired started->stopped",
            "state started->stopping",
            "state stopping->stopped"
        ]
    );

    // Bob's first event is his own sandbox: none of Alice's reached him before it, and the
    // forwarder delivers in publish order.
    let own = server
        .sandboxes
        .create(&b.ctx, create_body("bravo"))
        .await
        .unwrap();
    let (name, data) = bob.event().await;
    assert_eq!(name, "sandbox.created");
    assert_eq!(data["id"], own.id);
    assert_eq!(data["organizationId"], b.ctx.organization_id);
}

#[tokio::test]
async fn bad_credentials_are_refused_with_a_connect_error() {
    let (server, a, b) = start_server().await;
    let query = "source=sdk-python&sdkVersion=0.226.1";
    for (auth, expected) in [
        (json!({ "token": "dtn_not-a-key" }), "Invalid API key"),
        (json!({}), "Missing credentials"),
    ] {
        let (_, answer) = Client::connect(server.addr, query, auth).await;
        let body = answer
            .strip_prefix("44")
            .unwrap_or_else(|| panic!("expected a connect error, got {answer}"));
        let error: Value = serde_json::from_str(body).unwrap();
        assert!(
            error["message"].as_str().unwrap().contains(expected),
            "{error}"
        );
    }

    // Another organization's id with Alice's key.
    let query = format!("organizationId={}", b.ctx.organization_id);
    let (_, answer) = Client::connect(server.addr, &query, json!({ "token": a.key })).await;
    assert!(answer.starts_with("44"), "{answer}");
    assert!(
        answer.contains("is not the organization of this API key"),
        "{answer}"
    );

    // Without organizationId the key alone decides.
    let (_, answer) = Client::connect(server.addr, "source=x", json!({ "token": a.key })).await;
    assert!(answer.starts_with("40{"), "{answer}");

    // Bad keys count against the failed-authentication limit, as they do over HTTP.
    let mut answers = Vec::new();
    for _ in 1..FAILED_AUTH_LIMIT {
        let (_, answer) = Client::connect(server.addr, "x=1", json!({ "token": "dtn_x" })).await;
        answers.push(answer);
    }
    assert!(
        answers.iter().all(|a| a.contains("Invalid API key")),
        "{answers:?}"
    );
    let (_, answer) = Client::connect(server.addr, "x=1", json!({ "token": "dtn_x" })).await;
    assert!(answer.starts_with("44"), "{answer}");
    assert!(
        answer.contains("Rate limit exceeded (failed-auth"),
        "{answer}"
    );
}
