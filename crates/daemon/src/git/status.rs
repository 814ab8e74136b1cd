//! `git status --porcelain=v2 --branch -z` parsed into the SDK's `GitStatus`.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GitStatus {
    pub current_branch: String,
    pub file_status: Vec<FileStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ahead: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind: Option<i64>,
    pub branch_published: bool,
    pub detached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileStatus {
    pub name: String,
    pub staging: &'static str,
    pub worktree: &'static str,
    /// The original path of a rename or copy; empty otherwise.
    pub extra: String,
}

/// The SDK's status names for one porcelain status letter.
fn status_name(letter: char) -> &'static str {
    match letter {
        'M' | 'T' => "Modified",
        'A' => "Added",
        'D' => "Deleted",
        'R' => "Renamed",
        'C' => "Copied",
        'U' => "Updated but unmerged",
        '?' => "Untracked",
        _ => "Unmodified",
    }
}

fn file(xy: &str, name: &str, extra: &str) -> FileStatus {
    let mut letters = xy.chars();
    FileStatus {
        name: name.to_owned(),
        staging: status_name(letters.next().unwrap_or('.')),
        worktree: status_name(letters.next().unwrap_or('.')),
        extra: extra.to_owned(),
    }
}

/// Parses NUL-separated porcelain v2 output with branch headers.
pub fn parse(output: &str) -> GitStatus {
    let mut status = GitStatus::default();
    let mut records = output.split('\0').filter(|r| !r.is_empty());
    while let Some(record) = records.next() {
        if let Some(header) = record.strip_prefix("# ") {
            let (key, value) = header.split_once(' ').unwrap_or((header, ""));
            match key {
                "branch.head" if value == "(detached)" => {
                    status.detached = true;
                    status.current_branch = "HEAD".to_owned();
                }
                "branch.head" => status.current_branch = value.to_owned(),
                "branch.upstream" => {
                    status.upstream = Some(value.to_owned());
                    status.branch_published = true;
                }
                "branch.ab" => {
                    let mut counts = value.split_whitespace();
                    status.ahead = counts
                        .next()
                        .and_then(|a| a.trim_start_matches('+').parse().ok());
                    status.behind = counts
                        .next()
                        .and_then(|b| b.trim_start_matches('-').parse().ok());
                }
                _ => {}
            }
            continue;
        }
        let kind = record.chars().next().unwrap_or(' ');
        match kind {
            // 1 XY sub mH mI mW hH hI path
            '1' => {
                let fields: Vec<&str> = record.splitn(9, ' ').collect();
                if let (Some(xy), Some(path)) = (fields.get(1), fields.get(8)) {
                    status.file_status.push(file(xy, path, ""));
                }
            }
            // 2 XY sub mH mI mW hH hI Xscore path, then the original path as its own record
            '2' => {
                let fields: Vec<&str> = record.splitn(10, ' ').collect();
                let original = records.next().unwrap_or("");
                if let (Some(xy), Some(path)) = (fields.get(1), fields.get(9)) {
                    status.file_status.push(file(xy, path, original));
                }
            }
            // u XY sub m1 m2 m3 mW h1 h2 h3 path
            'u' => {
                let fields: Vec<&str> = record.splitn(11, ' ').collect();
                if let Some(path) = fields.get(10) {
                    status.file_status.push(file("UU", path, ""));
                }
            }
            '?' => status.file_status.push(file("??", &record[2..], "")),
            _ => {}
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_v2_is_parsed() {
        let output = "# branch.oid 1234\0# branch.head main\0# branch.upstream origin/main\0\
            # branch.ab +2 -1\0\
            1 M. N... 100644 100644 100644 aaa bbb staged file.txt\0\
            1 .M N... 100644 100644 100644 aaa aaa dir/with space.py\0\
            1 A. N... 000000 100644 100644 000 ccc new.rs\0\
            2 R. N... 100644 100644 100644 aaa aaa R100 renamed.txt\0old.txt\0\
            u UU N... 100644 100644 100644 100644 a b c conflict.txt\0\
            ? untracked.log\0";
        let status = parse(output);
        assert_eq!(status.current_branch, "main");
        assert_eq!(status.upstream.as_deref(), Some("origin/main"));
        assert!(status.branch_published);
        assert_eq!((status.ahead, status.behind), (Some(2), Some(1)));
        let files: Vec<_> = status
            .file_status
            .iter()
            .map(|f| (f.name.as_str(), f.staging, f.worktree, f.extra.as_str()))
            .collect();
        assert_eq!(
            files,
            vec![
                ("staged file.txt", "Modified", "Unmodified", ""),
                ("dir/with space.py", "Unmodified", "Modified", ""),
                ("new.rs", "Added", "Unmodified", ""),
                ("renamed.txt", "Renamed", "Unmodified", "old.txt"),
                (
                    "conflict.txt",
                    "Updated but unmerged",
                    "Updated but unmerged",
                    ""
                ),
                ("untracked.log", "Untracked", "Untracked", ""),
            ]
        );
    }

    #[test]
    fn detached_and_unborn_heads() {
        let detached = parse("# branch.oid abc\0# branch.head (detached)\0");
        assert!(detached.detached);
        assert_eq!(detached.current_branch, "HEAD");
        let unborn = parse("# branch.oid (initial)\0# branch.head main\0");
        assert_eq!(unborn.current_branch, "main");
        assert!(!unborn.branch_published);
        assert!(unborn.file_status.is_empty());
    }
}
