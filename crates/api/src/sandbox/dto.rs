//! Sandbox request and response bodies, exactly as SDK 0.226.1 sends and expects them
//! (strict integers, required `kvm`, `env`, `toolboxProxyUrl`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::SandboxRow;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandbox {
    pub name: Option<String>,
    pub snapshot: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub public: Option<bool>,
    pub network_block_all: Option<bool>,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
    pub target: Option<String>,
    pub class: Option<String>,
    pub cpu: Option<u32>,
    pub gpu: Option<u32>,
    pub gpu_type: Option<Vec<String>>,
    pub memory: Option<u32>,
    pub disk: Option<u32>,
    pub auto_stop_interval: Option<i64>,
    pub auto_pause_interval: Option<i64>,
    pub auto_archive_interval: Option<i64>,
    pub auto_delete_interval: Option<i64>,
    pub ttl_minutes: Option<i64>,
    pub queue_timeout: Option<i64>,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    pub build_info: Option<Value>,
    pub secrets: Option<Vec<BTreeMap<String, String>>>,
    pub kvm: Option<bool>,
    pub spot: Option<bool>,
    pub outbound_proxy_url: Option<String>,
    pub otel_endpoint_override: Option<String>,
    pub linked_sandbox: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub volume_id: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
}

/// The full Sandbox DTO.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub snapshot: Option<String>,
    pub user: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub public: bool,
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
    pub kvm: bool,
    pub target: String,
    pub cpu: i64,
    pub gpu: i64,
    pub spot: bool,
    pub memory: i64,
    pub disk: i64,
    pub state: String,
    pub desired_state: String,
    pub error_reason: Option<String>,
    pub recoverable: bool,
    pub backup_state: String,
    pub backup_created_at: Option<String>,
    pub auto_stop_interval: i64,
    pub auto_pause_interval: i64,
    pub auto_archive_interval: i64,
    pub auto_delete_interval: i64,
    pub auto_destroy_at: Option<String>,
    pub volumes: Vec<VolumeMount>,
    pub created_at: String,
    pub updated_at: String,
    pub last_activity_at: String,
    pub sandbox_class: &'static str,
    pub daemon_version: Option<String>,
    pub runner_id: Option<String>,
    pub toolbox_proxy_url: String,
    /// The warm pool the sandbox waits in, while no create has claimed it (`includeWarm` lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_pool_id: Option<String>,
    /// Processes killed by the out-of-memory killer since the sandbox last started (single
    /// sandbox reads only; not part of upstream's DTO, ignored by SDKs that don't know it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    /// Why commands died with exit code 137, when the OOM killer is the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_reason: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPage {
    pub items: Vec<Value>,
    pub next_cursor: Option<String>,
}

fn string_map(json: &str) -> BTreeMap<String, String> {
    serde_json::from_str(json).unwrap_or_default()
}

impl Sandbox {
    pub fn from_row(row: SandboxRow, toolbox_proxy_url: &str) -> Self {
        Sandbox {
            env: string_map(&row.env),
            labels: string_map(&row.labels),
            id: row.id,
            organization_id: row.organization_id,
            name: row.name,
            snapshot: row.snapshot,
            user: row.os_user,
            public: row.public,
            network_block_all: row.network_block_all,
            network_allow_list: row.network_allow_list,
            domain_allow_list: row.domain_allow_list,
            kvm: false,
            target: row.target,
            cpu: row.cpu,
            gpu: row.gpu,
            spot: false,
            memory: row.memory,
            disk: row.disk,
            state: row.state,
            desired_state: row.desired_state,
            error_reason: row.error_reason,
            recoverable: false,
            backup_state: row.backup_state,
            backup_created_at: row.backup_created_at,
            auto_stop_interval: row.auto_stop_interval,
            auto_pause_interval: row.auto_pause_interval,
            auto_archive_interval: row.auto_archive_interval,
            auto_delete_interval: row.auto_delete_interval,
            auto_destroy_at: row.auto_destroy_at,
            volumes: serde_json::from_str(&row.volumes).unwrap_or_default(),
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_activity_at: row.last_activity_at,
            sandbox_class: "container",
            daemon_version: row.daemon_version,
            runner_id: row.runner_id,
            toolbox_proxy_url: toolbox_proxy_url.to_string(),
            warm_pool_id: row.warm_pool_id.filter(|_| row.pooled),
            oom_kills: None,
            oom_reason: None,
        }
    }

    /// The list-item form: everything but `env`.
    pub fn into_list_item(self) -> Value {
        let mut v = serde_json::to_value(self).expect("sandbox DTO serializes");
        if let Some(obj) = v.as_object_mut() {
            obj.remove("env");
        }
        v
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row() -> SandboxRow {
        SandboxRow {
            id: "id-1".into(),
            organization_id: "org".into(),
            name: "n".into(),
            snapshot: Some("oci-archive:/x".into()),
            image_ref: "oci-archive:/x".into(),
            os_user: "daytona".into(),
            env: r#"{"A":"1"}"#.into(),
            labels: r#"{"code-toolbox-language":"python"}"#.into(),
            public: false,
            network_block_all: false,
            network_allow_list: None,
            domain_allow_list: None,
            target: "us".into(),
            cpu: 1,
            gpu: 0,
            memory: 1,
            disk: 3,
            state: "started".into(),
            desired_state: "started".into(),
            error_reason: None,
            auto_stop_interval: 15,
            auto_archive_interval: 10080,
            auto_delete_interval: -1,
            auto_pause_interval: 0,
            runner_id: Some("local".into()),
            daemon_version: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            last_activity_at: "2026-01-01T00:00:00.000Z".into(),
            auto_destroy_at: None,
            volumes: r#"[{"volumeId":"v-1","mountPath":"/data","subpath":"a/b"}]"#.into(),
            warm_pool_id: None,
            pooled: false,
            secrets: "[]".into(),
            backup_state: "None".into(),
            backup_key: None,
            backup_created_at: None,
            backup_error: None,
        }
    }

    /// The fields SDK 0.226.1 requires, with the JSON types its strict models accept.
    #[test]
    fn sandbox_dto_has_every_required_field_with_strict_types() {
        let v = serde_json::to_value(Sandbox::from_row(row(), "http://127.0.0.1:4000/toolbox"))
            .unwrap();
        for key in [
            "id",
            "organizationId",
            "name",
            "user",
            "target",
            "state",
            "toolboxProxyUrl",
        ] {
            assert!(v[key].is_string(), "{key} must be a string: {v}");
        }
        for key in ["public", "networkBlockAll", "kvm"] {
            assert!(v[key].is_boolean(), "{key} must be a boolean");
        }
        for key in ["cpu", "gpu", "memory", "disk"] {
            assert!(v[key].is_i64(), "{key} must be an integer");
        }
        assert_eq!(v["env"]["A"], "1");
        assert_eq!(v["labels"]["code-toolbox-language"], "python");
        assert_eq!(v["toolboxProxyUrl"], "http://127.0.0.1:4000/toolbox");
        assert_eq!(
            v["volumes"],
            serde_json::json!([{"volumeId": "v-1", "mountPath": "/data", "subpath": "a/b"}])
        );
    }

    #[test]
    fn list_items_omit_env() {
        let v = Sandbox::from_row(row(), "u").into_list_item();
        assert!(v.get("env").is_none());
        assert!(v["networkBlockAll"].is_boolean());
    }

    #[test]
    fn create_body_from_the_sdk_parses() {
        let body = r#"{"name":"my-sbx","snapshot":"daytonaio/sandbox:0.4.3","user":"daytona","env":{"A":"1"},
            "labels":{"k":"v","code-toolbox-language":"python"},"public":true,"networkBlockAll":false,
            "networkAllowList":"10.0.0.0/8","target":"us","autoStopInterval":0,"autoArchiveInterval":60,
            "autoDeleteInterval":0,"volumes":[{"volumeId":"vol-1","mountPath":"/data"}]}"#;
        let c: CreateSandbox = serde_json::from_str(body).unwrap();
        assert_eq!(c.name.as_deref(), Some("my-sbx"));
        assert_eq!(c.auto_delete_interval, Some(0));
        assert_eq!(c.volumes.len(), 1);
    }
}
