//! User and group lookups from `/etc/passwd` and `/etc/group`.
//!
//! The daemon is a static binary that must run in any image, so it never goes through NSS
//! (`getpwnam` would need the image's libc modules); it reads the two files itself.

use std::{fs, io, path::PathBuf};

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The account database of the image the daemon runs in.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    pub accounts: Vec<Account>,
    pub groups: Vec<Group>,
}

impl UserDb {
    /// Reads `/etc/passwd` and `/etc/group`; a missing file counts as empty (minimal images).
    pub fn load() -> io::Result<Self> {
        Ok(Self::parse(
            &read_optional("/etc/passwd")?,
            &read_optional("/etc/group")?,
        ))
    }

    pub fn parse(passwd: &str, group: &str) -> Self {
        Self {
            accounts: passwd.lines().filter_map(parse_account).collect(),
            groups: group.lines().filter_map(parse_group).collect(),
        }
    }

    pub fn user_by_name(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.name == name)
    }

    pub fn user_by_uid(&self, uid: u32) -> Option<&Account> {
        self.accounts.iter().find(|a| a.uid == uid)
    }

    pub fn group_by_name(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The primary group plus every group that lists `account` as a member.
    pub fn group_ids_of(&self, account: &Account) -> Vec<u32> {
        let mut ids = vec![account.gid];
        for group in &self.groups {
            if group.members.contains(&account.name) && !ids.contains(&group.gid) {
                ids.push(group.gid);
            }
        }
        ids
    }
}

fn read_optional(path: &str) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

fn parse_account(line: &str) -> Option<Account> {
    if line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 {
        return None;
    }
    Some(Account {
        name: fields[0].to_owned(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: PathBuf::from(fields[5]),
        shell: fields[6].to_owned(),
    })
}

fn parse_group(line: &str) -> Option<Group> {
    if line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 4 {
        return None;
    }
    Some(Group {
        name: fields[0].to_owned(),
        gid: fields[2].parse().ok()?,
        members: fields[3]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment\n\
        daytona:x:1000:1000::/home/daytona:/bin/bash\n\
        broken line\n";
    const GROUP: &str =
        "root:x:0:\nsudo:x:27:daytona\ndocker:x:999:other,daytona\ndaytona:x:1000:\n";

    #[test]
    fn parses_accounts_and_memberships() {
        let db = UserDb::parse(PASSWD, GROUP);
        let user = db.user_by_name("daytona").expect("daytona");
        assert_eq!(user.uid, 1000);
        assert_eq!(user.home, PathBuf::from("/home/daytona"));
        assert_eq!(db.user_by_uid(0).map(|a| a.name.as_str()), Some("root"));
        assert_eq!(db.group_ids_of(user), vec![1000, 27, 999]);
        assert_eq!(db.accounts.len(), 2);
    }
}
