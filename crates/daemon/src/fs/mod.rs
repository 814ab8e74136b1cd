//! `/files...` endpoints: listing, info, delete, mkdir, move, and bulk transfer.

pub mod info;
pub mod search;
pub mod transfer;

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use axum::{Json, extract::State, http::StatusCode};
use serde::Deserialize;

pub use info::FileInfo;

use crate::{
    error::{ApiError, ApiQuery},
    server::AppState,
};

/// Resolves a client path: absolute as is, relative against the work dir.
pub fn resolve(work_dir: &Path, path: &str) -> Result<PathBuf, ApiError> {
    if path.is_empty() {
        return Err(ApiError::invalid_path("path: must not be empty"));
    }
    if path.contains('\0') {
        return Err(ApiError::invalid_path("path: must not contain NUL"));
    }
    Ok(work_dir.join(path))
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("filesystem task failed: {e}")))?
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub path: Option<String>,
    pub depth: Option<u32>,
}

pub async fn list_files(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    let requested = query.path.filter(|p| !p.is_empty());
    let dir = match &requested {
        Some(p) => resolve(&state.config().work_dir, p)?,
        None => state.config().work_dir.clone(),
    };
    let shown = requested.unwrap_or_else(|| dir.to_string_lossy().into_owned());
    let depth = query.depth.unwrap_or(1).max(1);
    blocking(move || {
        let meta = fs::metadata(&dir).map_err(|e| ApiError::from_fs(&e, &shown))?;
        if !meta.is_dir() {
            return Err(ApiError::invalid_path(format!("not a directory: {shown}")));
        }
        let mut entries = Vec::new();
        list_into(&dir, depth, &mut entries).map_err(|e| ApiError::from_fs(&e, &shown))?;
        Ok(Json(entries))
    })
    .await
}

/// Entries of `dir` sorted by name, each directory followed by its own entries down to `depth`
/// levels. Symlinks are reported, not followed.
fn list_into(dir: &Path, depth: u32, out: &mut Vec<FileInfo>) -> io::Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            // Vanished between readdir and stat.
            continue;
        };
        out.push(FileInfo::new(&path, &meta));
        if depth > 1 && meta.is_dir() {
            // An unreadable subdirectory should not fail the whole listing.
            if let Err(e) = list_into(&path, depth - 1, out) {
                tracing::debug!("skipping {}: {e}", path.display());
            }
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    pub path: String,
}

pub async fn file_info(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Json<FileInfo>, ApiError> {
    let path = resolve(&state.config().work_dir, &query.path)?;
    blocking(move || {
        let meta = fs::metadata(&path).map_err(|e| ApiError::from_fs(&e, &query.path))?;
        Ok(Json(FileInfo::new(&path, &meta)))
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    pub path: String,
    pub recursive: Option<bool>,
}

pub async fn delete_file(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let path = resolve(&state.config().work_dir, &query.path)?;
    blocking(move || {
        let shown = &query.path;
        let meta = fs::symlink_metadata(&path).map_err(|e| ApiError::from_fs(&e, shown))?;
        let removed = if meta.is_dir() {
            if !query.recursive.unwrap_or(false) {
                return Err(ApiError::bad_request(format!(
                    "{shown} is a directory; set recursive=true to delete it"
                )));
            }
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| ApiError::from_fs(&e, shown))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

#[derive(Debug, Deserialize)]
pub struct FolderQuery {
    pub path: String,
    pub mode: Option<String>,
}

pub async fn create_folder(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<FolderQuery>,
) -> Result<StatusCode, ApiError> {
    let path = resolve(&state.config().work_dir, &query.path)?;
    let mode = match query.mode.as_deref().map(str::trim) {
        None | Some("") => 0o755,
        Some(text) => parse_mode(text)
            .ok_or_else(|| ApiError::bad_request(format!("mode: not an octal mode: {text:?}")))?,
    };
    blocking(move || {
        let existed = path.is_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&path)
            .map_err(|e| ApiError::from_fs(&e, &query.path))?;
        if !existed {
            // The umask may have cleared bits the client asked for.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(|e| ApiError::from_fs(&e, &query.path))?;
        }
        Ok(StatusCode::CREATED)
    })
    .await
}

fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

#[derive(Debug, Deserialize)]
pub struct MoveQuery {
    pub source: String,
    pub destination: String,
}

pub async fn move_file(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<MoveQuery>,
) -> Result<StatusCode, ApiError> {
    let work_dir = &state.config().work_dir;
    let source = resolve(work_dir, &query.source)?;
    let destination = resolve(work_dir, &query.destination)?;
    blocking(move || {
        fs::symlink_metadata(&source).map_err(|e| ApiError::from_fs(&e, &query.source))?;
        if fs::symlink_metadata(&destination).is_ok() {
            return Err(ApiError::conflict(format!(
                "destination already exists: {}",
                query.destination
            )));
        }
        if let Some(parent) = destination.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(ApiError::bad_request(format!(
                "destination parent directory does not exist: {}",
                parent.display()
            )));
        }
        match fs::rename(&source, &destination) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // Different filesystems (e.g. onto a volume): copy, then remove.
                copy_tree(&source, &destination)
                    .and_then(|()| remove_tree(&source))
                    .map_err(|e| ApiError::from_fs(&e, &query.source))?;
            }
            other => other.map_err(|e| ApiError::from_fs(&e, &query.source))?,
        }
        Ok(StatusCode::OK)
    })
    .await
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::set_permissions(to, meta.permissions())
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)
    } else {
        fs::copy(from, to).map(drop)
    }
}

fn remove_tree(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("0700"), Some(0o700));
        assert_eq!(parse_mode("9"), None);
        assert_eq!(parse_mode("77777"), None);
    }

    #[test]
    fn relative_paths_join_the_work_dir() {
        let wd = Path::new("/home/daytona");
        assert_eq!(
            resolve(wd, "a/b").unwrap(),
            PathBuf::from("/home/daytona/a/b")
        );
        assert_eq!(resolve(wd, "/etc").unwrap(), PathBuf::from("/etc"));
        assert!(resolve(wd, "").is_err());
    }
}
