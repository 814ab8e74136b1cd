//! File transfers, all streamed: `POST /files/bulk-upload` and `POST /files/bulk-download` (the
//! SDK's multipart formats), and the single-file `GET /files/download` and `POST /files/upload-v2`
//! that the SDK's signed URLs point at (the proxy checks the signature).

use std::{
    collections::HashMap,
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use axum::{
    Json,
    body::Body,
    extract::{FromRequest, Multipart, Query, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::{
    StreamExt,
    stream::{self, BoxStream},
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::resolve;
use crate::{
    error::{ApiError, ApiJson},
    ids::fill_random,
    server::AppState,
};

#[derive(Debug, Serialize)]
pub struct UploadedFile {
    pub path: String,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct UploadResponse {
    pub files: Vec<UploadedFile>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Field names `files[<i>].path` / `files[<i>].file`.
#[derive(Debug, PartialEq, Eq)]
enum UploadField {
    Path(usize),
    File(usize),
}

fn parse_field_name(name: &str) -> Option<UploadField> {
    let rest = name.strip_prefix("files[")?;
    let (index, kind) = rest.split_once("].")?;
    let index = index.parse().ok()?;
    match kind {
        "path" => Some(UploadField::Path(index)),
        "file" => Some(UploadField::File(index)),
        _ => None,
    }
}

/// Writes each `files[i].file` part straight to disk at the path given by `files[i].path`
/// (which clients send first; the part's filename is the fallback).
pub async fn bulk_upload(
    State(state): State<AppState>,
    mut multipart: Multipart,
) -> Result<Response, ApiError> {
    let work_dir = state.config().work_dir.clone();
    let mut paths: HashMap<usize, String> = HashMap::new();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?
    {
        match field.name().and_then(parse_field_name) {
            Some(UploadField::Path(index)) => {
                let path = field
                    .text()
                    .await
                    .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
                paths.insert(index, path);
            }
            Some(UploadField::File(index)) => {
                let Some(requested) = paths
                    .remove(&index)
                    .or_else(|| field.file_name().map(str::to_owned))
                    .filter(|p| !p.is_empty())
                else {
                    errors.push(format!("files[{index}]: no destination path"));
                    continue;
                };
                let destination = match resolve(&work_dir, &requested) {
                    Ok(d) => d,
                    Err(e) => {
                        errors.push(format!("{requested}: {}", e.message));
                        continue;
                    }
                };
                match write_stream(field, &destination).await {
                    Ok(bytes) => files.push(UploadedFile {
                        path: destination.to_string_lossy().into_owned(),
                        bytes,
                    }),
                    Err(UploadError::Body(e)) => {
                        return Err(ApiError::bad_request(format!(
                            "upload of {requested} interrupted: {e}"
                        )));
                    }
                    Err(UploadError::Io(e)) => errors.push(format!("{requested}: {e}")),
                }
            }
            None => {}
        }
    }
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, Json(UploadResponse { files, errors })).into_response())
}

enum UploadError {
    /// The request body broke off; nothing later in it can be read.
    Body(String),
    /// This file could not be written; other files may still succeed.
    Io(io::Error),
}

/// Writes one streamed body (a multipart field or a raw request body) to `destination`,
/// creating its parent directories and replacing what was there.
async fn write_stream<S, E>(mut body: S, destination: &Path) -> Result<u64, UploadError>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if let Some(parent) = destination.parent() {
        let parent = parent.to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
        })
        .await
        .map_err(|e| UploadError::Io(io::Error::other(e)))?
        .map_err(UploadError::Io)?;
    }
    let file = tokio::fs::File::create(destination)
        .await
        .map_err(UploadError::Io)?;
    let mut file = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
        file.write_all(&chunk).await.map_err(UploadError::Io)?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(UploadError::Io)?;
    file.into_inner()
        .sync_data()
        .await
        .map_err(UploadError::Io)?;
    Ok(written)
}

#[derive(Debug, Deserialize)]
pub struct DownloadRequest {
    pub paths: Vec<String>,
}

/// RFC 5987 `attr-char`s stay literal in `filename*`; everything else is percent-encoded.
const ATTR_CHAR_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// One multipart response part per requested path: the file, or a JSON error part.
pub async fn bulk_download(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DownloadRequest>,
) -> Result<Response, ApiError> {
    if request.paths.is_empty() {
        return Err(ApiError::bad_request("paths: must not be empty"));
    }
    let boundary = new_boundary();
    let work_dir = state.config().work_dir.clone();
    let closing = Bytes::from(format!("--{boundary}--\r\n"));
    let part_boundary = boundary.clone();
    let parts = stream::iter(request.paths)
        .then(move |requested| {
            let boundary = part_boundary.clone();
            let work_dir = work_dir.clone();
            async move { download_part(&boundary, &work_dir, requested).await }
        })
        .flatten()
        .chain(stream::once(async move { Ok(closing) }));
    Ok((
        [(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )],
        Body::from_stream(parts),
    )
        .into_response())
}

type PartStream = BoxStream<'static, io::Result<Bytes>>;

async fn download_part(boundary: &str, work_dir: &Path, requested: String) -> PartStream {
    match open_for_download(work_dir, &requested).await {
        Ok((file, len)) => {
            let content_type = mime_guess::from_path(&requested)
                .first_or_octet_stream()
                .to_string();
            let head = part_head(boundary, "file", &requested, &content_type, len);
            stream::once(async move { Ok(head) })
                .chain(exact_body(file, len, requested))
                .chain(stream::once(async { Ok(Bytes::from_static(b"\r\n")) }))
                .boxed()
        }
        Err(error) => {
            let body = serde_json::to_vec(&error.body(&requested, "POST")).unwrap_or_default();
            let head = part_head(
                boundary,
                "error",
                &requested,
                "application/json; charset=utf-8",
                body.len() as u64,
            );
            let mut part = head.to_vec();
            part.extend_from_slice(&body);
            part.extend_from_slice(b"\r\n");
            stream::once(async move { Ok(Bytes::from(part)) }).boxed()
        }
    }
}

async fn open_for_download(
    work_dir: &Path,
    requested: &str,
) -> Result<(tokio::fs::File, u64), ApiError> {
    let path: PathBuf = resolve(work_dir, requested)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| read_error(&e, requested))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| read_error(&e, requested))?;
    if meta.is_dir() {
        return Err(ApiError::invalid_path(format!(
            "path is a directory: {requested}"
        )));
    }
    Ok((file, meta.len()))
}

fn read_error(err: &io::Error, requested: &str) -> ApiError {
    let error = ApiError::from_fs(err, requested);
    if error.status.is_server_error() {
        ApiError::new(
            error.status,
            crate::error::ErrorCode::FileReadFailed,
            format!("cannot read {requested}: {err}"),
        )
    } else {
        error
    }
}

/// Exactly `len` bytes of the file; a short read errors so the connection is aborted rather
/// than a truncated part looking complete.
fn exact_body(file: tokio::fs::File, len: u64, requested: String) -> PartStream {
    let reader = ReaderStream::with_capacity(file.take(len), 256 * 1024);
    stream::unfold((reader, 0u64, false), move |(mut reader, sent, failed)| {
        let requested = requested.clone();
        async move {
            if failed {
                return None;
            }
            match reader.next().await {
                Some(Ok(chunk)) => {
                    let sent = sent + chunk.len() as u64;
                    Some((Ok(chunk), (reader, sent, false)))
                }
                Some(Err(e)) => Some((Err(e), (reader, sent, true))),
                None if sent == len => None,
                None => {
                    let error = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{requested} shrank while being sent ({sent} of {len} bytes)"),
                    );
                    Some((Err(error), (reader, sent, true)))
                }
            }
        }
    })
    .boxed()
}

fn part_head(boundary: &str, name: &str, requested: &str, content_type: &str, len: u64) -> Bytes {
    let quoted = requested
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(['\r', '\n'], " ");
    let encoded = utf8_percent_encode(requested, ATTR_CHAR_ESCAPES);
    Bytes::from(format!(
        "--{boundary}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Disposition: form-data; name=\"{name}\"; filename=\"{quoted}\"; filename*=utf-8''{encoded}\r\n\
         Content-Length: {len}\r\n\
         \r\n"
    ))
}

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    pub path: String,
}

/// `GET /files/download?path=P`: the file's bytes.
pub async fn download(
    State(state): State<AppState>,
    Query(query): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let (file, len) = open_for_download(&state.config().work_dir, &query.path).await?;
    let content_type = mime_guess::from_path(&query.path)
        .first_or_octet_stream()
        .to_string();
    let name = Path::new(&query.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| query.path.clone());
    let disposition = format!(
        "attachment; filename*=utf-8''{}",
        utf8_percent_encode(&name, ATTR_CHAR_ESCAPES)
    );
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(exact_body(file, len, query.path)),
    )
        .into_response())
}

#[derive(Debug, Serialize)]
pub struct UploadedV2 {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `POST /files/upload-v2?path=P`: the multipart field `file`, or else the raw body, becomes the
/// file at `P` (parents created, an existing file replaced).
pub async fn upload_v2(
    State(state): State<AppState>,
    Query(query): Query<PathQuery>,
    request: Request,
) -> Result<Json<UploadedV2>, ApiError> {
    let destination = resolve(&state.config().work_dir, &query.path)?;
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let written = if is_multipart {
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?
                .ok_or_else(|| ApiError::bad_request("multipart body has no field named 'file'"))?;
            if field.name() == Some("file") {
                break write_stream(field, &destination).await;
            }
        }
    } else {
        write_stream(request.into_body().into_data_stream(), &destination).await
    };
    match written {
        Ok(_) => Ok(Json(UploadedV2 {
            name: destination
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: destination.to_string_lossy().into_owned(),
            kind: "file",
        })),
        Err(UploadError::Body(e)) => Err(ApiError::bad_request(format!(
            "upload of {} interrupted: {e}",
            query.path
        ))),
        Err(UploadError::Io(e)) => Err(ApiError::from_fs(&e, &query.path)),
    }
}

fn new_boundary() -> String {
    let mut random = [0u8; 12];
    fill_random(&mut random);
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("DAYTONA-FILE-BOUNDARY-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_parse() {
        assert_eq!(
            parse_field_name("files[3].path"),
            Some(UploadField::Path(3))
        );
        assert_eq!(
            parse_field_name("files[0].file"),
            Some(UploadField::File(0))
        );
        assert_eq!(parse_field_name("files[x].file"), None);
        assert_eq!(parse_field_name("other"), None);
    }

    #[test]
    fn part_head_echoes_the_path() {
        let head = part_head("B", "file", "dir/a \"b\".txt", "text/plain", 3);
        let text = String::from_utf8(head.to_vec()).unwrap();
        assert!(text.contains(r#"filename="dir/a \"b\".txt""#), "{text}");
        assert!(
            text.contains("filename*=utf-8''dir%2Fa%20%22b%22.txt"),
            "{text}"
        );
    }
}
