//! `/lsp/...`: language servers installed in the image, one per (language, project), driven
//! over JSON-RPC on their stdio. The toolbox API's answers are normalised LSP results.

pub mod client;
pub mod routes;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::environment::ProcessEnv;
use client::{RpcClient, RpcError};

#[derive(Debug, thiserror::Error)]
pub enum LspError {
    #[error("{0}")]
    NotInstalled(String),
    #[error("no {language} language server is started for {project}; call start first")]
    NotStarted { language: String, project: String },
    #[error("unsupported language {0:?} (python, typescript, javascript)")]
    UnsupportedLanguage(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot start the language server: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// A language server command and how to tell whether it is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Finds `name` in the `PATH` of `env`.
fn which(env: &ProcessEnv, name: &str) -> Option<PathBuf> {
    let path = env
        .get("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether `python3` can import `module` (servers installed as a library, or on PYTHONPATH).
async fn python_has_module(env: &ProcessEnv, module: &str) -> Option<PathBuf> {
    let python = which(env, "python3")?;
    let mut probe = Command::new(&python);
    env.apply(&mut probe);
    let found = probe
        .args(["-c", &format!("import {module}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    found.then_some(python)
}

/// The server for `language`: pylsp, then jedi-language-server (as commands or modules) for
/// Python; typescript-language-server for TypeScript and JavaScript.
pub async fn find_server(env: &ProcessEnv, language: &str) -> Result<ServerCommand, LspError> {
    let command = |program: PathBuf, args: &[&str]| ServerCommand {
        program,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    };
    match language {
        "python" => {
            if let Some(program) = which(env, "pylsp") {
                return Ok(command(program, &[]));
            }
            if let Some(program) = which(env, "jedi-language-server") {
                return Ok(command(program, &[]));
            }
            if let Some(python) = python_has_module(env, "pylsp").await {
                return Ok(command(python, &["-m", "pylsp"]));
            }
            if let Some(python) = python_has_module(env, "jedi_language_server").await {
                return Ok(command(python, &["-m", "jedi_language_server"]));
            }
            Err(LspError::NotInstalled(
                "no Python language server is installed in this sandbox: install python-lsp-server \
                 (pylsp) or jedi-language-server"
                    .to_owned(),
            ))
        }
        "typescript" | "javascript" => which(env, "typescript-language-server")
            .map(|program| command(program, &["--stdio"]))
            .ok_or_else(|| {
                LspError::NotInstalled(
                    "no TypeScript language server is installed in this sandbox: install \
                     typescript-language-server and typescript"
                        .to_owned(),
                )
            }),
        other => Err(LspError::UnsupportedLanguage(other.to_owned())),
    }
}

/// A started server for one project.
#[derive(Debug)]
pub struct LspServer {
    language: String,
    root: PathBuf,
    rpc: RpcClient,
    /// Documents opened through did-open (absolute URIs), for servers without workspace symbols.
    open_documents: Mutex<std::collections::BTreeSet<String>>,
}

/// Turns the SDK's `file://<path>` (path possibly relative to the project) into an absolute
/// file URI and path.
pub fn document_uri(root: &Path, uri: &str) -> Result<(String, PathBuf), LspError> {
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    if path.is_empty() {
        return Err(LspError::Invalid("uri: must name a file".into()));
    }
    let path = root.join(
        percent_encoding::percent_decode_str(path)
            .decode_utf8_lossy()
            .as_ref(),
    );
    let encoded: String =
        percent_encoding::utf8_percent_encode(&path.to_string_lossy(), &URI_PATH).collect();
    Ok((format!("file://{encoded}"), path))
}

/// Characters escaped in file URI paths (RFC 3986 path characters and `/` stay).
const URI_PATH: percent_encoding::AsciiSet = percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl LspServer {
    async fn start(env: &ProcessEnv, language: &str, root: PathBuf) -> Result<Self, LspError> {
        let server = find_server(env, language).await?;
        let mut command = Command::new(&server.program);
        env.apply(&mut command);
        command.args(&server.args).current_dir(&root);
        let rpc = RpcClient::spawn(command).map_err(LspError::Spawn)?;
        let (root_uri, _) = document_uri(&root, &root.to_string_lossy())?;
        rpc.request(
            "initialize",
            json!({
                "processId": std::process::id(),
                "rootUri": root_uri,
                "rootPath": root,
                "workspaceFolders": [{ "uri": root_uri, "name": root.file_name().map(|n| n.to_string_lossy()).unwrap_or_default() }],
                "capabilities": {
                    "textDocument": {
                        "completion": { "completionItem": { "snippetSupport": false } },
                        "documentSymbol": { "hierarchicalDocumentSymbolSupport": false },
                    },
                    "workspace": { "symbol": {}, "workspaceFolders": true, "configuration": true },
                },
            }),
        )
        .await?;
        rpc.notify("initialized", json!({}))?;
        tracing::info!(language, root = %root.display(), program = %server.program.display(), "language server started");
        Ok(Self {
            language: language.to_owned(),
            root,
            rpc,
            open_documents: Mutex::default(),
        })
    }

    pub async fn did_open(&self, uri: &str) -> Result<(), LspError> {
        let (uri, path) = document_uri(&self.root, uri)?;
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| LspError::Invalid(format!("uri: cannot read {}: {e}", path.display())))?;
        self.rpc.notify(
            "textDocument/didOpen",
            json!({ "textDocument": { "uri": uri, "languageId": self.language, "version": 1, "text": text } }),
        )?;
        self.documents().insert(uri);
        Ok(())
    }

    pub async fn did_close(&self, uri: &str) -> Result<(), LspError> {
        let (uri, _) = document_uri(&self.root, uri)?;
        self.rpc.notify(
            "textDocument/didClose",
            json!({ "textDocument": { "uri": uri } }),
        )?;
        Ok(())
    }

    pub async fn completions(
        &self,
        uri: &str,
        position: Value,
        context: Option<Value>,
    ) -> Result<CompletionList, LspError> {
        let (uri, _) = document_uri(&self.root, uri)?;
        let mut params = json!({ "textDocument": { "uri": uri }, "position": position });
        if let Some(context) = context {
            params["context"] = context;
        }
        let result = self.rpc.request("textDocument/completion", params).await?;
        Ok(CompletionList::from_lsp(&result))
    }

    pub async fn document_symbols(&self, uri: &str) -> Result<Vec<Symbol>, LspError> {
        let (uri, _) = document_uri(&self.root, uri)?;
        let result = self
            .rpc
            .request(
                "textDocument/documentSymbol",
                json!({ "textDocument": { "uri": uri } }),
            )
            .await?;
        Ok(symbols_from_lsp(&result, &uri))
    }

    fn documents(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.open_documents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// `workspace/symbol`; servers without it (pylsp) get the matching symbols of the open
    /// documents instead, found through `textDocument/documentSymbol`.
    pub async fn workspace_symbols(&self, query: &str) -> Result<Vec<Symbol>, LspError> {
        match self
            .rpc
            .request("workspace/symbol", json!({ "query": query }))
            .await
        {
            Ok(result) => Ok(symbols_from_lsp(&result, "")),
            Err(RpcError::Server { code, .. }) if code == METHOD_NOT_FOUND => {
                let documents: Vec<String> = self.documents().iter().cloned().collect();
                let needle = query.to_lowercase();
                let mut symbols = Vec::new();
                for uri in documents {
                    symbols.extend(
                        self.document_symbols(&uri)
                            .await?
                            .into_iter()
                            .filter(|s| s.name.to_lowercase().contains(&needle)),
                    );
                }
                Ok(symbols)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// JSON-RPC "method not found".
const METHOD_NOT_FOUND: i64 = -32601;

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompletionList {
    pub is_incomplete: bool,
    pub items: Vec<CompletionItem>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompletionItem {
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub documentation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insert_text: Option<String>,
}

fn string_field(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl CompletionList {
    /// Accepts `CompletionList`, `CompletionItem[]` or null.
    pub fn from_lsp(result: &Value) -> Self {
        let (is_incomplete, items) = match result {
            Value::Array(items) => (false, items.as_slice()),
            Value::Object(list) => (
                list.get("isIncomplete")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                list.get("items")
                    .and_then(Value::as_array)
                    .map_or(&[][..], Vec::as_slice),
            ),
            _ => (false, &[][..]),
        };
        let items = items
            .iter()
            .filter_map(|item| {
                Some(CompletionItem {
                    label: string_field(item, "label")?,
                    kind: item.get("kind").and_then(Value::as_i64),
                    detail: string_field(item, "detail"),
                    // A string or MarkupContent.
                    documentation: item.get("documentation").and_then(|d| {
                        d.as_str()
                            .map(str::to_owned)
                            .or_else(|| string_field(d, "value"))
                    }),
                    sort_text: string_field(item, "sortText"),
                    filter_text: string_field(item, "filterText"),
                    insert_text: string_field(item, "insertText").or_else(|| {
                        item.get("textEdit")
                            .and_then(|e| string_field(e, "newText"))
                    }),
                })
            })
            .collect();
        Self {
            is_incomplete,
            items,
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Symbol {
    pub kind: i64,
    pub name: String,
    pub location: Value,
}

/// Flattens `SymbolInformation[]` or hierarchical `DocumentSymbol[]` (whose location is the
/// document itself) into the SDK's symbol shape.
pub fn symbols_from_lsp(result: &Value, document_uri: &str) -> Vec<Symbol> {
    fn visit(items: &[Value], document_uri: &str, out: &mut Vec<Symbol>) {
        for item in items {
            let (Some(name), Some(kind)) = (
                item.get("name").and_then(Value::as_str),
                item.get("kind").and_then(Value::as_i64),
            ) else {
                continue;
            };
            let location = match item.get("location") {
                // WorkspaceSymbol may carry only a uri.
                Some(location) => json!({
                    "uri": location.get("uri").cloned().unwrap_or_default(),
                    "range": location.get("range").cloned().unwrap_or_else(|| json!({
                        "start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}
                    })),
                }),
                None => {
                    json!({ "uri": document_uri, "range": item.get("range").cloned().unwrap_or_default() })
                }
            };
            out.push(Symbol {
                kind,
                name: name.to_owned(),
                location,
            });
            if let Some(children) = item.get("children").and_then(Value::as_array) {
                visit(children, document_uri, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(items) = result.as_array() {
        visit(items, document_uri, &mut out);
    }
    out
}

/// All started servers, keyed by language and project directory.
#[derive(Debug)]
pub struct LspManager {
    work_dir: PathBuf,
    env: Arc<ProcessEnv>,
    servers: Mutex<HashMap<(String, PathBuf), Arc<LspServer>>>,
}

impl LspManager {
    pub fn new(work_dir: PathBuf, env: Arc<ProcessEnv>) -> Self {
        Self {
            work_dir,
            env,
            servers: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, language: &str, project: &str) -> Result<(String, PathBuf), LspError> {
        if project.is_empty() {
            return Err(LspError::Invalid("pathToProject: must not be empty".into()));
        }
        Ok((language.to_owned(), self.work_dir.join(project)))
    }

    /// Starts the server unless one already runs for the same language and project.
    pub async fn start(&self, language: &str, project: &str) -> Result<(), LspError> {
        let key = self.key(language, project)?;
        if self.map().contains_key(&key) {
            return Ok(());
        }
        if !key.1.is_dir() {
            return Err(LspError::Invalid(format!(
                "pathToProject: not a directory: {}",
                key.1.display()
            )));
        }
        let server = Arc::new(LspServer::start(&self.env, language, key.1.clone()).await?);
        let previous = self.map().insert(key, server);
        if let Some(previous) = previous {
            // Two concurrent starts: keep one.
            previous.rpc.shutdown().await;
        }
        Ok(())
    }

    pub async fn stop(&self, language: &str, project: &str) -> Result<(), LspError> {
        let key = self.key(language, project)?;
        let server = self
            .map()
            .remove(&key)
            .ok_or_else(|| LspError::NotStarted {
                language: language.to_owned(),
                project: key.1.display().to_string(),
            })?;
        server.rpc.shutdown().await;
        Ok(())
    }

    pub fn get(&self, language: &str, project: &str) -> Result<Arc<LspServer>, LspError> {
        let key = self.key(language, project)?;
        self.map()
            .get(&key)
            .cloned()
            .ok_or_else(|| LspError::NotStarted {
                language: language.to_owned(),
                project: key.1.display().to_string(),
            })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, PathBuf), Arc<LspServer>>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_resolve_against_the_project() {
        let root = Path::new("/home/daytona/proj");
        let (uri, path) = document_uri(root, "file://src/main.py").unwrap();
        assert_eq!(path, Path::new("/home/daytona/proj/src/main.py"));
        assert_eq!(uri, "file:///home/daytona/proj/src/main.py");
        let (uri, path) = document_uri(root, "file:///tmp/a b.py").unwrap();
        assert_eq!(path, Path::new("/tmp/a b.py"));
        assert_eq!(uri, "file:///tmp/a%20b.py");
        assert!(document_uri(root, "file://").is_err());
    }

    #[test]
    fn completion_results_are_normalised() {
        let list = CompletionList::from_lsp(&json!({
            "isIncomplete": true,
            "items": [
                {"label": "append", "kind": 2, "documentation": {"kind": "markdown", "value": "Add"}},
                {"label": "copy", "textEdit": {"newText": "copy()"}},
                {"kind": 3}
            ]
        }));
        assert!(list.is_incomplete);
        assert_eq!(list.items.len(), 2);
        assert_eq!(list.items[0].documentation.as_deref(), Some("Add"));
        assert_eq!(list.items[1].insert_text.as_deref(), Some("copy()"));
        let bare = CompletionList::from_lsp(&json!([{"label": "x"}]));
        assert_eq!(bare.items.len(), 1);
        assert!(CompletionList::from_lsp(&Value::Null).items.is_empty());
    }

    #[test]
    fn hierarchical_symbols_are_flattened() {
        let range =
            json!({"start": {"line": 0, "character": 0}, "end": {"line": 3, "character": 0}});
        let symbols = symbols_from_lsp(
            &json!([{"name": "Greeter", "kind": 5, "range": range, "children": [
                {"name": "hello", "kind": 6, "range": range}
            ]}]),
            "file:///p/a.py",
        );
        let names: Vec<_> = symbols.iter().map(|s| (s.name.as_str(), s.kind)).collect();
        assert_eq!(names, vec![("Greeter", 5), ("hello", 6)]);
        assert_eq!(symbols[1].location["uri"], "file:///p/a.py");
    }

    #[tokio::test]
    async fn missing_servers_are_named() {
        let env = ProcessEnv::new([("PATH".to_string(), "/nonexistent".to_string())].into());
        let error = find_server(&env, "python").await.unwrap_err();
        assert!(error.to_string().contains("pylsp"), "{error}");
        assert!(matches!(
            find_server(&env, "cobol").await,
            Err(LspError::UnsupportedLanguage(_))
        ));
    }
}
