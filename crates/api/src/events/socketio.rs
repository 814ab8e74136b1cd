//! The Socket.IO gateway at `/api/socket.io/`, which the SDKs use to wait for state changes
//! without polling.
//!
//! A client connects to the default namespace with its API key in the connect packet
//! (`40{"token":"…"}`). The key decides the organization (a differing `organizationId` query
//! parameter is refused); an accepted socket joins its organization's room, and every bus event
//! is emitted to the room of the organization it belongs to, so a client never sees another
//! organization's sandboxes.

use futures::StreamExt;
use serde::Deserialize;
use socketioxide::SocketIo;
use socketioxide::extract::{Extension, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;

use super::EventStream;
use crate::AppState;
use crate::auth::{self, AuthContext};
use crate::error::ApiError;
use crate::rate_limit::Kind;

/// Where the SDKs look for the gateway: `<api url>/socket.io/`.
pub const PATH: &str = "/api/socket.io";

/// The connect packet's auth payload.
#[derive(Deserialize)]
struct ConnectAuth {
    token: String,
}

/// Why a connection was refused; the client receives the message in its `connect_error`.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(
        "Missing credentials: send the API key in the connect packet's auth as {{\"token\": \"<API key>\"}}"
    )]
    MissingToken,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("organizationId {0} is not the organization of this API key")]
    WrongOrganization(String),
    #[error("Authentication is temporarily unavailable")]
    Unavailable,
}

fn room(organization_id: &str) -> String {
    format!("organization:{organization_id}")
}

/// The `organizationId` query parameter of the handshake request, if any.
fn requested_organization(socket: &SocketRef) -> Option<String> {
    let query = socket.req_parts().uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "organizationId")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Connect middleware: resolves the token to an organization or refuses the connection.
/// Connections count against the same rate limits as HTTP requests.
async fn authenticate(
    state: &AppState,
    socket: &SocketRef,
    auth: Option<ConnectAuth>,
) -> Result<(), ConnectError> {
    let client = auth::client_address(&socket.req_parts().extensions);
    let refused = |e: ApiError| match e {
        ApiError::Unauthorized(message) => ConnectError::Unauthorized(message),
        e @ ApiError::RateLimited { .. } => ConnectError::RateLimited(e.to_string()),
        other => {
            tracing::warn!(error = %other, "could not authenticate a Socket.IO connection");
            ConnectError::Unavailable
        }
    };
    let Some(token) = auth.map(|a| a.token).filter(|t| !t.is_empty()) else {
        state
            .rate_limits
            .check(Kind::Anonymous, &client)
            .await
            .map_err(refused)?;
        return Err(ConnectError::MissingToken);
    };
    let requested = requested_organization(socket);
    let ctx = auth::authenticate_limited(state, &token, requested.as_deref(), &client)
        .await
        .map_err(refused)?;
    if let Some(requested) = requested
        && requested != ctx.organization_id
    {
        return Err(ConnectError::WrongOrganization(requested));
    }
    socket.extensions.insert(ctx);
    Ok(())
}

/// Runs once the client has been told it is connected, so room events never precede the
/// connect packet.
async fn join_organization(socket: SocketRef, Extension(ctx): Extension<AuthContext>) {
    tracing::debug!(sid = %socket.id, org = %ctx.organization_id, "event client connected");
    socket.join(room(&ctx.organization_id));
}

/// Emits every bus event to its organization's room.
async fn forward(mut events: EventStream, io: SocketIo) {
    while let Some(event) = events.next().await {
        let name = event.kind.name();
        if let Err(e) = io
            .to(room(&event.organization_id))
            .emit(name, &event.kind.payload())
            .await
        {
            tracing::debug!(event = name, error = %e, "event not delivered to every client");
        }
    }
}

/// The gateway as a layer for the API router, forwarding the events of the sandbox service's
/// bus. Spawns the forwarding task, so it must be called inside a Tokio runtime.
pub fn layer(state: &AppState) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder().req_path(PATH).build_layer();
    // Subscribe before returning so no event published after this call is missed.
    let events = state.sandboxes.events().subscribe();
    let state = state.clone();
    let middleware = move |socket: SocketRef, TryData(auth): TryData<ConnectAuth>| {
        let state = state.clone();
        async move { authenticate(&state, &socket, auth.ok()).await }
    };
    io.ns("/", join_organization.with(middleware));
    tokio::spawn(forward(events, io));
    layer
}
