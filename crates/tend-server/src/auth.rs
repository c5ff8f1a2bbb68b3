//! Who is calling the user API, and what they may do: a bearer token resolves to a principal
//! (the bootstrap admin token of the data directory, or a named token stored as its SHA-256),
//! each route needs a role and maybe a service, and every mutating call becomes an audit event
//! with the token's name.

use std::sync::Arc;

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tend_api::{EventKind, Role, TokenCreateRequest, TokenCreated, TokenInfo};
use tend_store::{Compare, Txn, TxnOp};

use crate::api::{constant_time_eq, ApiError};
use crate::Server;

/// The name audit events give the data directory's own token.
pub const BOOTSTRAP_NAME: &str = "bootstrap";

/// A resolved caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub service: Option<String>,
}

/// Where a route may be used by a token limited to one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Under `/v1/services/{name}`: only that service's token (or an unlimited one).
    Service,
    /// Content-addressed uploads any admin needs to change its service's spec.
    Artifacts,
    /// Cluster-wide: unlimited tokens only.
    Cluster,
}

/// What a call needs: the least role, and where a limited token may make it. Pure: the method
/// and the route's pattern (`/v1/services/{name}/…`) in, the need out.
pub fn need(method: &Method, route: &str) -> (Role, Scope) {
    let scope = if route.starts_with("/v1/services/{name}") {
        Scope::Service
    } else if route.starts_with("/v1/artifacts/") {
        Scope::Artifacts
    } else {
        Scope::Cluster
    };
    let role = if method == Method::GET || method == Method::HEAD {
        // Who holds which token is the admin's business.
        if route.starts_with("/v1/tokens") {
            Role::Admin
        } else {
            Role::Viewer
        }
    } else {
        match route {
            // A dry run changes nothing.
            "/v1/services/{name}/plan" => Role::Viewer,
            "/v1/services/{name}/plans/{plan}/{action}"
            | "/v1/services/{name}/pods/{instance}/{action}"
            | "/v1/services/{name}/jobs/{job}/run"
            | "/v1/jobs/windows"
            | "/v1/jobs/windows/{id}" => Role::Operator,
            _ => Role::Admin,
        }
    };
    (role, scope)
}

/// Whether `who` may make a call that needs `(role, scope)` on `service` (the route's
/// `{name}`); the refusal says why.
pub fn allows(who: &Principal, (role, scope): (Role, Scope), service: Option<&str>) -> Result<(), String> {
    if who.role < role {
        return Err(format!("token `{}` is a {} token; this call needs {role}", who.name, who.role));
    }
    match (&who.service, scope) {
        (None, _) | (Some(_), Scope::Artifacts) => Ok(()),
        (Some(own), Scope::Service) if Some(own.as_str()) == service => Ok(()),
        (Some(own), _) => Err(format!("token `{}` is limited to service `{own}`", who.name)),
    }
}

/// A named token as stored: under the SHA-256 of its secret (the secret itself is never kept).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct TokenRecord {
    info: TokenInfo,
}

pub(crate) fn hash_key(secret: &str) -> String {
    format!("tokens/hash/{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

fn name_key(name: &str) -> String {
    format!("tokens/name/{name}")
}

/// The principal of a bearer token, if it is one.
pub async fn resolve(s: &Server, secret: &str) -> Result<Option<Principal>, ApiError> {
    if constant_time_eq(secret.as_bytes(), s.edge.api_token.as_bytes()) {
        return Ok(Some(Principal { name: BOOTSTRAP_NAME.into(), role: Role::Admin, service: None }));
    }
    // The key is a hash of a 256-bit secret: looking it up leaks nothing usable.
    let Some(kv) = s.edge.store.get(&hash_key(secret)).await? else { return Ok(None) };
    let rec: TokenRecord = serde_json::from_slice(&kv.value).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(Principal { name: rec.info.name, role: rec.info.role, service: rec.info.service }))
}

fn unauthorized(msg: &str) -> Response {
    ApiError(StatusCode::UNAUTHORIZED, "unauthorized", msg.into()).into_response()
}

/// The user API's guard: resolves the token, checks the route's need, runs the call, and
/// records an audit event for anything but a read.
pub async fn guard(
    State(s): State<Arc<Server>>,
    route: Option<MatchedPath>,
    params: RawPathParams,
    req: Request,
    next: Next,
) -> Response {
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(bearer) = bearer else { return unauthorized("a valid bearer token is required") };
    let who = match resolve(&s, &bearer).await {
        Ok(Some(p)) => p,
        Ok(None) => return unauthorized("a valid bearer token is required"),
        Err(e) => return e.into_response(),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = route.map(|r| r.as_str().to_string()).unwrap_or_default();
    let service = params.iter().find(|(k, _)| *k == "name").map(|(_, v)| v.to_string());
    let answer = match allows(&who, need(&method, &route), service.as_deref()) {
        Ok(()) => next.run(req).await,
        Err(why) => ApiError(StatusCode::FORBIDDEN, "forbidden", why).into_response(),
    };
    if method != Method::GET && method != Method::HEAD {
        let scope = need(&method, &route).1;
        let svc = if scope == Scope::Service { service.as_deref() } else { None };
        let msg =
            format!("token `{}` ({}) {method} {path} -> {}", who.name, who.role, answer.status().as_u16());
        s.control.event(svc, EventKind::Audit, msg).await;
    }
    answer
}

// ---------- the token routes ----------

/// Creates a named token: its hash and name are stored in one transaction, so a name is
/// never taken twice; the secret is returned once.
pub async fn create(s: &Server, req: TokenCreateRequest) -> Result<TokenCreated, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, "bad_request", m);
    if !tend_spec::decode::valid_name(&req.name) {
        return Err(bad(format!(
            "token name `{}` must be 1-63 lowercase letters, digits, `-` or `_`",
            req.name.escape_debug()
        )));
    }
    if req.name == BOOTSTRAP_NAME {
        return Err(bad(format!("`{BOOTSTRAP_NAME}` names the data directory's own token")));
    }
    if let Some(svc) = &req.service {
        if !tend_spec::decode::valid_name(svc) {
            return Err(bad(format!("`{}` is not a service name", svc.escape_debug())));
        }
    }
    let secret = tend_control::ids::random_hex(32).map_err(|e| anyhow::anyhow!(e))?;
    let info = TokenInfo { name: req.name, role: req.role, service: req.service, created_ms: s.now_ms() };
    let rec = serde_json::to_vec(&TokenRecord { info: info.clone() }).map_err(|e| anyhow::anyhow!(e))?;
    let hk = hash_key(&secret);
    let r = s
        .edge
        .store
        .txn(
            Txn::new()
                .when(Compare::absent(name_key(&info.name)))
                .then(TxnOp::put(name_key(&info.name), hk.clone().into_bytes()))
                .then(TxnOp::put(hk, rec)),
        )
        .await?;
    if !r.succeeded {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "conflict",
            format!("a token named `{}` exists", info.name),
        ));
    }
    Ok(TokenCreated { info, token: secret })
}

/// Every named token (never their secrets).
pub async fn list(s: &Server) -> Result<Vec<TokenInfo>, ApiError> {
    let mut out = Vec::new();
    for kv in s.edge.store.range("tokens/hash/").await?.kvs {
        if let Ok(r) = serde_json::from_slice::<TokenRecord>(&kv.value) {
            out.push(r.info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Revokes a named token: it stops working at once, on every member.
pub async fn revoke(s: &Server, name: &str) -> Result<TokenInfo, ApiError> {
    let missing = || ApiError(StatusCode::NOT_FOUND, "not_found", format!("no token `{name}`"));
    let Some(kv) = s.edge.store.get(&name_key(name)).await? else { return Err(missing()) };
    let hk = String::from_utf8_lossy(&kv.value).to_string();
    let info = match s.edge.store.get(&hk).await? {
        Some(v) => serde_json::from_slice::<TokenRecord>(&v.value).map_err(|e| anyhow::anyhow!(e))?.info,
        None => return Err(missing()),
    };
    let r = s
        .edge
        .store
        .txn(
            Txn::new()
                .when(Compare::mod_revision_eq(name_key(name), kv.mod_revision))
                .then(TxnOp::delete(name_key(name)))
                .then(TxnOp::delete(hk)),
        )
        .await?;
    if !r.succeeded {
        return Err(ApiError(StatusCode::CONFLICT, "conflict", format!("token `{name}` changed meanwhile")));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, service: Option<&str>) -> Principal {
        Principal { name: "t".into(), role, service: service.map(str::to_string) }
    }

    /// (token role, token service, method, route, route's service, allowed)
    type Case<'a> = (Role, Option<&'a str>, Method, &'a str, Option<&'a str>, bool);

    #[test]
    fn roles_and_scopes() {
        use Role::*;
        let cases: &[Case] = &[
            (Viewer, None, Method::GET, "/v1/services/{name}", Some("db"), true),
            (Viewer, None, Method::GET, "/v1/events", None, true),
            (Viewer, None, Method::POST, "/v1/services/{name}/plan", Some("db"), true),
            (Viewer, None, Method::POST, "/v1/services/{name}/plans/{plan}/{action}", Some("db"), false),
            (Viewer, None, Method::GET, "/v1/tokens", None, false),
            (Operator, None, Method::POST, "/v1/services/{name}/plans/{plan}/{action}", Some("db"), true),
            (Operator, None, Method::POST, "/v1/services/{name}/pods/{instance}/{action}", Some("db"), true),
            (Operator, None, Method::POST, "/v1/services/{name}/jobs/{job}/run", Some("db"), true),
            (Operator, None, Method::POST, "/v1/jobs/windows", None, true),
            (Operator, None, Method::PUT, "/v1/services/{name}", Some("db"), false),
            (Operator, None, Method::DELETE, "/v1/volumes/{id}", None, false),
            (Operator, None, Method::PUT, "/v1/artifacts/{sha}", None, false),
            (Operator, None, Method::POST, "/v1/tokens", None, false),
            (Admin, None, Method::PUT, "/v1/services/{name}", Some("db"), true),
            (Admin, None, Method::POST, "/v1/tokens", None, true),
            (Admin, Some("db"), Method::PUT, "/v1/services/{name}", Some("db"), true),
            (Admin, Some("db"), Method::PUT, "/v1/services/{name}", Some("other"), false),
            (Admin, Some("db"), Method::PUT, "/v1/artifacts/{sha}", None, true),
            (Admin, Some("db"), Method::POST, "/v1/tokens", None, false),
            (Viewer, Some("db"), Method::GET, "/v1/services/{name}/pods", Some("db"), true),
            (Viewer, Some("db"), Method::GET, "/v1/events", None, false),
            (Viewer, Some("db"), Method::GET, "/v1/services/{name}/pods", Some("web"), false),
        ];
        for (role, svc, method, route, target, expected) in cases {
            let got = allows(&who(*role, *svc), need(method, route), *target);
            assert_eq!(got.is_ok(), *expected, "{role} {svc:?} {method} {route} {target:?}: {got:?}");
        }
    }
}
