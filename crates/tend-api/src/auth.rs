//! Wire types of API access: roles, named tokens, agent join tokens and certificates.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token may do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything it may see; changes nothing.
    Viewer,
    /// Also runs plans, pods and jobs (interrupt, continue, restart, replace, run now, windows).
    Operator,
    /// Also changes specs, volumes, artifacts, tokens and agents.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role `{s}` (admin, operator or viewer)")),
        }
    }
}

/// `POST /v1/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TokenCreateRequest {
    /// Shown in audit events; unique. 1-63 lowercase letters, digits, `-` or `_`, starting and
    /// ending with a letter or digit (not `bootstrap`).
    #[schema(pattern = "^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")]
    pub name: String,
    pub role: Role,
    /// Limits the token to one service's routes.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")]
    pub service: Option<String>,
}

/// A named API token (its secret is shown once, at creation, and stored only as a hash).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub service: Option<String>,
    pub created_ms: u64,
}

/// The answer to `POST /v1/tokens`: the only time the secret is seen.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

/// `POST /v1/agent-tokens`: a single-use join token for one new agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JoinTokenRequest {
    /// How long the token may be used: 1 s to a week.
    #[schema(minimum = 1, maximum = 604800)]
    pub ttl_seconds: u64,
}

/// A join token: `tend-join.<secret>.<sha256 of the cluster CA certificate>`, so an agent can
/// check the control plane it joins before trusting it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JoinTokenCreated {
    pub token: String,
    pub expires_ms: u64,
}

/// `POST /v1/agent/join` (join token) and `POST /v1/agent/{id}/renew` (the agent's certificate):
/// a certificate signing request for `agent_id`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JoinRequest {
    /// 1-63 lowercase letters, digits, `-` or `_`, starting and ending with a letter or digit.
    #[schema(pattern = "^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")]
    pub agent_id: String,
    #[serde(default)]
    pub token: String,
    pub csr_pem: String,
}

/// A certificate bound to an agent id, and the cluster CA that signed it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JoinResponse {
    pub cert_pem: String,
    pub ca_pem: String,
    pub not_after_ms: u64,
}
