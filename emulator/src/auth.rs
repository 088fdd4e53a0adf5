//! Who is calling: the bearer token on a Graph, ARM or Key Vault request, checked for signature, lifetime and audience.

use axum::http::HeaderMap;

use crate::{
    jwt::{ARM_AUDIENCES, Api, GRAPH_APP_ID, GRAPH_AUDIENCE, TokenProblem},
    server::Shared,
};

#[derive(Clone, Debug)]
pub struct Caller {
    pub app_id: String,
    /// Object id of the caller's service principal.
    pub oid: String,
    /// Graph application permissions in the token.
    pub roles: Vec<String>,
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }
}

/// `base` is the emulator's URL as the caller reached it: a Graph token may be for it when the caller's cloud
/// names the emulator as its Graph (see `token::audience_for`). ARM's audiences are fixed.
pub fn authenticate(
    ctx: &Shared,
    headers: &HeaderMap,
    api: Api,
    base: &str,
) -> Result<Caller, TokenProblem> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(TokenProblem::Missing)?;
    let claims = ctx.keys.verify(token)?;
    let audience_ok = match api {
        Api::Graph => {
            claims.aud == GRAPH_AUDIENCE
                || claims.aud == GRAPH_APP_ID
                || claims.aud.eq_ignore_ascii_case(base)
        }
        Api::Arm => ARM_AUDIENCES.contains(&claims.aud.as_str()),
        // For Key Vault, `base` is the resource of the cloud the vault is in (`https://vault.azure.net`).
        Api::KeyVault => claims.aud.trim_end_matches('/').eq_ignore_ascii_case(base),
    };
    if !audience_ok {
        return Err(TokenProblem::WrongAudience);
    }
    Ok(Caller {
        app_id: claims.appid,
        oid: claims.oid,
        roles: claims.roles,
    })
}
