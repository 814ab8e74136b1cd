//! `/files/find` (content), `/files/search` (name glob), `/files/replace` and `/files/permissions`.

use std::{
    fs,
    io::{self, BufRead, BufReader, Read},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};

use super::{blocking, resolve};
use crate::{
    error::{ApiError, ApiJson, ApiQuery},
    server::AppState,
    users::UserDb,
};

/// A file whose first block contains a NUL byte is treated as binary and not searched.
const BINARY_SNIFF: usize = 8 * 1024;

#[derive(Debug, Deserialize)]
pub struct PatternQuery {
    pub path: String,
    pub pattern: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Match {
    pub file: String,
    pub line: u64,
    pub content: String,
}

pub async fn find_in_files(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PatternQuery>,
) -> Result<Json<Vec<Match>>, ApiError> {
    if query.pattern.is_empty() {
        return Err(ApiError::bad_request("pattern: must not be empty"));
    }
    let root = resolve(&state.config().work_dir, &query.path)?;
    blocking(move || {
        fs::metadata(&root).map_err(|e| ApiError::from_fs(&e, &query.path))?;
        let mut matches = Vec::new();
        walk(&root, &mut |path| {
            if let Err(e) = grep_file(path, &query.pattern, &mut matches) {
                tracing::debug!("find: skipping {}: {e}", path.display());
            }
        });
        Ok(Json(matches))
    })
    .await
}

/// Appends the lines of `path` containing `pattern`; binary files contribute nothing.
pub fn grep_file(path: &Path, pattern: &str, out: &mut Vec<Match>) -> io::Result<()> {
    let mut reader = BufReader::new(fs::File::open(path)?);
    if reader
        .fill_buf()?
        .iter()
        .take(BINARY_SNIFF)
        .any(|b| *b == 0)
    {
        return Ok(());
    }
    let file = path.to_string_lossy();
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.contains(pattern) {
            out.push(Match {
                file: file.clone().into_owned(),
                line: number,
                content: text.to_owned(),
            });
        }
    }
}

/// Calls `visit` for every regular file under `root` (or `root` itself), in name order.
/// Symlinks are not followed; unreadable directories are skipped.
fn walk(root: &Path, visit: &mut dyn FnMut(&Path)) {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return;
    };
    if meta.is_file() {
        visit(root);
        return;
    }
    if !meta.is_dir() {
        return;
    }
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        walk(&child, visit);
    }
}

#[derive(Debug, Serialize)]
pub struct SearchFilesResponse {
    pub files: Vec<String>,
}

pub async fn search_files(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PatternQuery>,
) -> Result<Json<SearchFilesResponse>, ApiError> {
    let pattern = Glob::parse(&query.pattern)?;
    let root = resolve(&state.config().work_dir, &query.path)?;
    blocking(move || {
        let meta = fs::metadata(&root).map_err(|e| ApiError::from_fs(&e, &query.path))?;
        if !meta.is_dir() {
            return Err(ApiError::invalid_path(format!(
                "not a directory: {}",
                query.path
            )));
        }
        let mut files = Vec::new();
        collect_names(&root, &pattern, &mut files);
        Ok(Json(SearchFilesResponse { files }))
    })
    .await
}

/// Every path below `dir` (files and directories) whose base name matches `pattern`.
fn collect_names(dir: &Path, pattern: &Glob, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut children: Vec<_> = entries.filter_map(Result::ok).collect();
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        if pattern.matches(&child.file_name().to_string_lossy()) {
            out.push(path.to_string_lossy().into_owned());
        }
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            collect_names(&path, pattern, out);
        }
    }
}

/// A shell glob as Go's `filepath.Match` reads it: `*`, `?`, `[...]` classes with ranges and
/// `^`/`!` negation, `\` escapes.
#[derive(Debug, Clone)]
pub struct Glob(Vec<Token>);

#[derive(Debug, Clone)]
enum Token {
    Literal(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    pub fn parse(pattern: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::bad_request(format!("pattern: {why} in {pattern:?}"));
        if pattern.is_empty() {
            return Err(bad("empty pattern"));
        }
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => Token::Star,
                '?' => Token::Any,
                '\\' => Token::Literal(chars.next().ok_or_else(|| bad("trailing backslash"))?),
                '[' => {
                    let negated = matches!(chars.peek(), Some('^' | '!'));
                    if negated {
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    loop {
                        let mut lo = chars.next().ok_or_else(|| bad("unclosed ["))?;
                        if lo == ']' && !ranges.is_empty() {
                            break;
                        }
                        if lo == '\\' {
                            lo = chars.next().ok_or_else(|| bad("unclosed ["))?;
                        }
                        let mut hi = lo;
                        if chars.peek() == Some(&'-') {
                            chars.next();
                            hi = chars.next().ok_or_else(|| bad("unclosed ["))?;
                            if hi == '\\' {
                                hi = chars.next().ok_or_else(|| bad("unclosed ["))?;
                            }
                            if hi < lo {
                                return Err(bad("reversed range"));
                            }
                        }
                        ranges.push((lo, hi));
                    }
                    Token::Class { negated, ranges }
                }
                other => Token::Literal(other),
            });
        }
        Ok(Self(tokens))
    }

    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        matches_at(&self.0, &name)
    }
}

fn matches_at(tokens: &[Token], name: &[char]) -> bool {
    match tokens.split_first() {
        None => name.is_empty(),
        Some((Token::Star, rest)) => (0..=name.len()).any(|skip| matches_at(rest, &name[skip..])),
        Some((token, rest)) => {
            let Some((&c, tail)) = name.split_first() else {
                return false;
            };
            let hit = match token {
                Token::Literal(l) => *l == c,
                Token::Any => true,
                Token::Class { negated, ranges } => {
                    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
                }
                Token::Star => unreachable!("handled above"),
            };
            hit && matches_at(rest, tail)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplaceRequest {
    pub files: Vec<String>,
    pub pattern: String,
    pub new_value: String,
}

#[derive(Debug, Serialize)]
pub struct ReplaceResult {
    pub file: String,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub async fn replace_in_files(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ReplaceRequest>,
) -> Result<Json<Vec<ReplaceResult>>, ApiError> {
    if request.pattern.is_empty() {
        return Err(ApiError::bad_request("pattern: must not be empty"));
    }
    let work_dir = state.config().work_dir.clone();
    blocking(move || {
        let results = request
            .files
            .into_iter()
            .map(|file| {
                let outcome = resolve(&work_dir, &file)
                    .map_err(|e| e.message)
                    .and_then(|path| {
                        replace_in_file(&path, &request.pattern, &request.new_value)
                            .map_err(|e| ApiError::from_fs(&e, &file).message)
                    });
                ReplaceResult {
                    file,
                    success: outcome.is_ok(),
                    error: outcome.err(),
                }
            })
            .collect();
        Ok(Json(results))
    })
    .await
}

/// Replaces every occurrence of `pattern` in the file, keeping its inode (and so its mode and owner).
pub fn replace_in_file(path: &Path, pattern: &str, new_value: &str) -> io::Result<()> {
    let mut text = String::new();
    fs::File::open(path)?.read_to_string(&mut text)?;
    if text.contains(pattern) {
        fs::write(path, text.replace(pattern, new_value))?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct PermissionsQuery {
    pub path: String,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

pub async fn set_permissions(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PermissionsQuery>,
) -> Result<(), ApiError> {
    let path = resolve(&state.config().work_dir, &query.path)?;
    let mode = query
        .mode
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(parse_mode)
        .transpose()?;
    let users =
        UserDb::load().map_err(|e| ApiError::internal(format!("cannot read users: {e}")))?;
    let owner = non_empty(&query.owner)
        .map(|o| resolve_id(o, "owner", |n| users.user_by_name(n).map(|a| a.uid)))
        .transpose()?;
    let group = non_empty(&query.group)
        .map(|g| resolve_id(g, "group", |n| users.group_by_name(n).map(|g| g.gid)))
        .transpose()?;
    blocking(move || {
        let shown = &query.path;
        fs::metadata(&path).map_err(|e| ApiError::from_fs(&e, shown))?;
        if owner.is_some() || group.is_some() {
            std::os::unix::fs::chown(&path, owner, group)
                .map_err(|e| ApiError::from_fs(&e, shown))?;
        }
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(|e| ApiError::from_fs(&e, shown))?;
        }
        Ok(())
    })
    .await
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// An octal mode such as `755` or `0644` (permission and setuid/setgid/sticky bits only).
pub fn parse_mode(mode: &str) -> Result<u32, ApiError> {
    u32::from_str_radix(mode, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ApiError::bad_request(format!("mode: not an octal file mode: {mode:?}")))
}

/// A numeric id as is, else a name looked up in `/etc/passwd` or `/etc/group`.
fn resolve_id(
    value: &str,
    what: &str,
    by_name: impl Fn(&str) -> Option<u32>,
) -> Result<u32, ApiError> {
    value
        .parse()
        .ok()
        .or_else(|| by_name(value))
        .ok_or_else(|| ApiError::bad_request(format!("{what}: no such {what}: {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_filepath_match() {
        let cases = [
            ("*.py", "main.py", true),
            ("*.py", "main.pyc", false),
            ("test_?.rs", "test_a.rs", true),
            ("test_?.rs", "test_ab.rs", false),
            ("[a-c]*", "beta", true),
            ("[^a-c]*", "beta", false),
            ("[!a-c]*", "delta", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("*", "", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
        ];
        for (pattern, name, expected) in cases {
            let glob = Glob::parse(pattern).unwrap();
            assert_eq!(glob.matches(name), expected, "{pattern} vs {name}");
        }
        assert!(Glob::parse("[abc").is_err());
        assert!(Glob::parse("").is_err());
    }

    #[test]
    fn grep_skips_binary_and_numbers_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("a.txt");
        fs::write(&text, "one\nneedle two\r\nthree\nneedle").unwrap();
        let binary = dir.path().join("b.bin");
        fs::write(&binary, b"needle\0\x01").unwrap();
        let mut out = Vec::new();
        grep_file(&text, "needle", &mut out).unwrap();
        grep_file(&binary, "needle", &mut out).unwrap();
        let lines: Vec<_> = out.iter().map(|m| (m.line, m.content.as_str())).collect();
        assert_eq!(lines, vec![(2, "needle two"), (4, "needle")]);
    }

    #[test]
    fn replace_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.sh");
        fs::write(&file, "hello world, hello").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o751)).unwrap();
        replace_in_file(&file, "hello", "bye").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "bye world, bye");
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o751);
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("rwx").is_err());
        assert!(parse_mode("17777").is_err());
    }
}
