//! The egress proxy of a runner that is its own process asks the API for a sandbox's network
//! policy and secrets (`GET /runners/sandboxes/{id}/egress`, with the runner's token) on every
//! request, as the in-process proxy asks the API's state: an update applies to the next request.

use daytona_egress::{
    DirectoryError, EgressDirectory, EgressGrant, EgressPolicy, HostPattern, ResolvedSecret,
};
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError};

/// A sandbox's egress grant on the wire.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressGrantDto {
    pub block_all: bool,
    /// CIDRs (`a.b.c.d/n`); empty means no allow list.
    pub allow_list: Vec<String>,
    pub secrets: Vec<EgressSecretDto>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressSecretDto {
    pub placeholder: String,
    pub value: String,
    /// Host patterns the value may go to; empty means anywhere.
    pub hosts: Vec<String>,
}

impl From<&EgressGrant> for EgressGrantDto {
    fn from(grant: &EgressGrant) -> Self {
        EgressGrantDto {
            block_all: grant.policy.block_all,
            allow_list: grant
                .policy
                .allow_list
                .iter()
                .map(ToString::to_string)
                .collect(),
            secrets: grant
                .secrets
                .iter()
                .map(|s| EgressSecretDto {
                    placeholder: s.placeholder.clone(),
                    value: s.value.clone(),
                    hosts: s.hosts.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        }
    }
}

impl TryFrom<EgressGrantDto> for EgressGrant {
    type Error = DirectoryError;

    fn try_from(dto: EgressGrantDto) -> Result<Self, DirectoryError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            DirectoryError(format!("the API sent a bad {what}: {e}"))
        };
        let allow_list = dto
            .allow_list
            .iter()
            .map(|c| c.parse().map_err(|()| bad("allow-list entry", c)))
            .collect::<Result<_, _>>()?;
        let secrets = dto
            .secrets
            .into_iter()
            .map(|s| {
                let hosts = s
                    .hosts
                    .iter()
                    .map(|h| HostPattern::parse(h).map_err(|e| bad("secret host", &e)))
                    .collect::<Result<_, _>>()?;
                Ok(ResolvedSecret {
                    placeholder: s.placeholder,
                    value: s.value,
                    hosts,
                })
            })
            .collect::<Result<_, DirectoryError>>()?;
        Ok(EgressGrant {
            policy: EgressPolicy {
                block_all: dto.block_all,
                allow_list,
            },
            secrets,
        })
    }
}

#[async_trait::async_trait]
impl EgressDirectory for Agent {
    async fn grant(&self, sandbox_id: &str) -> Result<Option<EgressGrant>, DirectoryError> {
        let path = format!("/runners/sandboxes/{sandbox_id}/egress");
        match self.get::<EgressGrantDto>(&path, None).await {
            Ok(dto) => dto.try_into().map(Some),
            Err(AgentError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(DirectoryError(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_survive_the_wire() {
        let grant = EgressGrant {
            policy: EgressPolicy {
                block_all: false,
                allow_list: vec!["203.0.113.0/24".parse().unwrap()],
            },
            secrets: vec![ResolvedSecret {
                placeholder: "daytona-secret-1".into(),
                value: "v".into(),
                hosts: vec![HostPattern::parse("*.example.com").unwrap()],
            }],
        };
        let json = serde_json::to_string(&EgressGrantDto::from(&grant)).unwrap();
        let back: EgressGrant = serde_json::from_str::<EgressGrantDto>(&json)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(back.policy.allow_list, grant.policy.allow_list);
        assert_eq!(back.secrets[0].value, "v");
        assert!(back.secrets[0].applies_to("api.example.com"));
        assert!(!back.secrets[0].applies_to("example.org"));
        let bad = EgressGrantDto {
            allow_list: vec!["nope".into()],
            ..EgressGrantDto::from(&grant)
        };
        assert!(EgressGrant::try_from(bad).is_err());
    }
}
