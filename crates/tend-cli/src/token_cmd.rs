//! `tend token`: named API tokens with a role (admin, operator, viewer) and maybe one service.

use std::process::ExitCode;

use clap::Subcommand;
use tend_api::{Role, TokenCreateRequest, TokenCreated, TokenInfo};

use crate::client::Client;
use crate::service_cmd::json_out;

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once (store it: only its hash is kept).
    Create {
        /// Shown in audit events.
        name: String,
        /// viewer reads; operator also runs plans, pods and jobs; admin also changes specs,
        /// volumes, artifacts, tokens and agents.
        #[arg(long)]
        role: Role,
        /// Limit the token to one service's routes.
        #[arg(long)]
        service: Option<String>,
    },
    /// Named tokens: name, role, service, created (never their secrets).
    List,
    /// Revoke a token: it stops working at once.
    Revoke { name: String },
}

pub async fn run(c: &Client, cmd: TokenCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCmd::Create { name, role, service } => {
            let t: TokenCreated = c.post("/v1/tokens", &TokenCreateRequest { name, role, service }).await?;
            if json {
                return json_out(&t);
            }
            eprintln!(
                "token `{}` ({}{}) created; it is shown only now:",
                t.info.name,
                t.info.role,
                scope(&t.info)
            );
            outln!("{}", t.token);
        }
        TokenCmd::List => {
            let list: Vec<TokenInfo> = c.get("/v1/tokens").await?;
            if json {
                return json_out(&list);
            }
            outln!("{:<24} {:<9} {:<20} CREATED", "NAME", "ROLE", "SERVICE");
            for t in list {
                let created = crate::service_cmd::ago(now_ms(), t.created_ms);
                outln!("{:<24} {:<9} {:<20} {created}", t.name, t.role, t.service.as_deref().unwrap_or("-"));
            }
        }
        TokenCmd::Revoke { name } => {
            let t: TokenInfo = c.delete(&format!("/v1/tokens/{name}")).await?;
            if json {
                return json_out(&t);
            }
            outln!("token `{}` revoked", t.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn scope(t: &TokenInfo) -> String {
    t.service.as_ref().map(|s| format!(", service {s}")).unwrap_or_default()
}
