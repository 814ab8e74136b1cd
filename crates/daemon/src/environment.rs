//! The environment every process the daemon spawns starts with.
//!
//! `POST /env` changes what later commands, sessions, PTYs and interpreter contexts inherit.
//! The daemon keeps its own copy instead of calling `setenv`: that is not thread-safe in a
//! multi-threaded process, and running processes must keep the environment they started with.

use std::{collections::BTreeMap, sync::RwLock};

use serde::{Deserialize, Serialize};

use crate::{error::ApiError, process::shell::validate_env_name};

#[derive(Debug)]
pub struct ProcessEnv(RwLock<BTreeMap<String, String>>);

/// `POST /env` body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvUpdate {
    pub set: Option<BTreeMap<String, String>>,
    pub unset: Option<Vec<String>>,
    /// Removes every variable whose value starts with this prefix, unless `set` names it.
    pub unset_value_prefix: Option<String>,
}

/// What an update changed (names only: values may be secrets).
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct EnvChanges {
    pub set: Vec<String>,
    pub unset: Vec<String>,
}

impl ProcessEnv {
    /// Starts from the daemon's own environment.
    pub fn from_process() -> Self {
        Self::new(std::env::vars().collect())
    }

    pub fn new(vars: BTreeMap<String, String>) -> Self {
        Self(RwLock::new(vars))
    }

    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Gives `command` exactly this environment (plus whatever the caller adds afterwards).
    pub fn apply(&self, command: &mut tokio::process::Command) {
        command.env_clear().envs(self.snapshot());
    }

    /// Applies `update`: unset, then prefix removal, then set.
    pub fn update(&self, update: EnvUpdate) -> Result<EnvChanges, ApiError> {
        let set = update.set.unwrap_or_default();
        for name in set.keys().chain(update.unset.iter().flatten()) {
            validate_env_name(name)?;
        }
        let mut vars = self.0.write().unwrap_or_else(|e| e.into_inner());
        let mut changes = EnvChanges::default();
        for name in update.unset.into_iter().flatten() {
            if vars.remove(&name).is_some() {
                changes.unset.push(name);
            }
        }
        if let Some(prefix) = update.unset_value_prefix.filter(|p| !p.is_empty()) {
            let doomed: Vec<String> = vars
                .iter()
                .filter(|(name, value)| value.starts_with(&prefix) && !set.contains_key(*name))
                .map(|(name, _)| name.clone())
                .collect();
            for name in doomed {
                vars.remove(&name);
                changes.unset.push(name);
            }
        }
        for (name, value) in set {
            changes.set.push(name.clone());
            vars.insert(name, value);
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> ProcessEnv {
        ProcessEnv::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn update_unsets_then_sets() {
        let env = env(&[("A", "1"), ("B", "2"), ("S1", "ph:x"), ("S2", "ph:y")]);
        let changes = env
            .update(EnvUpdate {
                set: Some([("S2".into(), "real".into()), ("C".into(), "3".into())].into()),
                unset: Some(vec!["A".into(), "MISSING".into()]),
                unset_value_prefix: Some("ph:".into()),
            })
            .unwrap();
        assert_eq!(changes.unset, vec!["A", "S1"]);
        assert_eq!(changes.set, vec!["C", "S2"]);
        let vars = env.snapshot();
        assert_eq!(vars.get("A"), None);
        assert_eq!(vars.get("S1"), None);
        assert_eq!(vars.get("S2").map(String::as_str), Some("real"));
        assert_eq!(vars.get("B").map(String::as_str), Some("2"));
    }

    #[test]
    fn invalid_names_change_nothing() {
        let env = env(&[("A", "1")]);
        let err = env
            .update(EnvUpdate {
                set: Some([("BAD-NAME".into(), "x".into())].into()),
                unset: Some(vec!["A".into()]),
                unset_value_prefix: None,
            })
            .unwrap_err();
        assert!(err.message.contains("BAD-NAME"));
        assert_eq!(env.get("A").as_deref(), Some("1"));
    }
}
