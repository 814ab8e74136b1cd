//! HTTP handlers for `/lsp/...`.

use axum::{Json, extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::{CompletionList, LspError, Symbol};
use crate::{
    error::{ApiError, ApiJson, ApiQuery, ErrorCode},
    server::AppState,
};

impl From<LspError> for ApiError {
    fn from(err: LspError) -> Self {
        let message = err.to_string();
        match err {
            LspError::NotInstalled(_) | LspError::NotStarted { .. } => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::LspServerNotInitialized,
                message,
            ),
            LspError::UnsupportedLanguage(_) | LspError::Invalid(_) => {
                ApiError::bad_request(message)
            }
            LspError::Rpc(super::client::RpcError::Server { code, .. })
                if code == super::METHOD_NOT_FOUND =>
            {
                ApiError::not_implemented(message)
            }
            LspError::Spawn(_) | LspError::Rpc(_) => ApiError::internal(message),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRequest {
    pub language_id: String,
    pub path_to_project: String,
}

pub async fn start(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ServerRequest>,
) -> Result<(), ApiError> {
    state
        .lsp()
        .start(&request.language_id, &request.path_to_project)
        .await?;
    Ok(())
}

pub async fn stop(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ServerRequest>,
) -> Result<(), ApiError> {
    state
        .lsp()
        .stop(&request.language_id, &request.path_to_project)
        .await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentRequest {
    pub language_id: String,
    pub path_to_project: String,
    pub uri: String,
}

pub async fn did_open(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DocumentRequest>,
) -> Result<(), ApiError> {
    let server = state
        .lsp()
        .get(&request.language_id, &request.path_to_project)?;
    server.did_open(&request.uri).await?;
    Ok(())
}

pub async fn did_close(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DocumentRequest>,
) -> Result<(), ApiError> {
    let server = state
        .lsp()
        .get(&request.language_id, &request.path_to_project)?;
    server.did_close(&request.uri).await?;
    Ok(())
}

pub async fn document_symbols(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DocumentRequest>,
) -> Result<Json<Vec<Symbol>>, ApiError> {
    let server = state
        .lsp()
        .get(&query.language_id, &query.path_to_project)?;
    Ok(Json(server.document_symbols(&query.uri).await?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSymbolQuery {
    pub language_id: String,
    pub path_to_project: String,
    pub query: String,
}

pub async fn workspace_symbols(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<WorkspaceSymbolQuery>,
) -> Result<Json<Vec<Symbol>>, ApiError> {
    let server = state
        .lsp()
        .get(&query.language_id, &query.path_to_project)?;
    Ok(Json(server.workspace_symbols(&query.query).await?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionRequest {
    pub language_id: String,
    pub path_to_project: String,
    pub uri: String,
    pub position: Value,
    pub context: Option<Value>,
}

pub async fn completions(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Json<CompletionList>, ApiError> {
    let server = state
        .lsp()
        .get(&request.language_id, &request.path_to_project)?;
    Ok(Json(
        server
            .completions(&request.uri, request.position, request.context)
            .await?,
    ))
}
