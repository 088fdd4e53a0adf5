//! Delta queries (`/applications/delta`, `/servicePrincipals/delta`): a first round that pages through
//! every object, ending with a deltaLink; later rounds return only what changed since, with `@removed` for
//! deleted objects (reason `changed` when soft-deleted and restorable, `deleted` when gone for good).
//! Tokens carry the position in the change log, so they survive restarts with the state.

use std::collections::BTreeMap;

use axum::{http::StatusCode, response::Response};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Access, Req, access, bad_request, forbidden, method_not_allowed, ok_json, render};
use crate::{
    http::graph_error,
    state::{Application, ChangeKind, ServicePrincipal, World},
};

const PAGE: usize = 200;

#[derive(Serialize, Deserialize)]
struct Token {
    /// Changes after this sequence number are reported (0 on the first round: report everything).
    since: u64,
    /// The last sequence number this round covers.
    upto: u64,
    /// Objects already returned in this round.
    offset: usize,
    initial: bool,
    #[serde(default)]
    select: Option<Vec<String>>,
    #[serde(default)]
    ids: Option<Vec<String>>,
}

fn encode(t: &Token) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(t).expect("serializable"))
}

fn decode(s: &str) -> Option<Token> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).ok()?).ok()
}

enum Entry<'w> {
    App(&'w Application),
    Sp(&'w ServicePrincipal),
    Removed(&'w str, &'static str),
}

pub fn handle(req: Req, entity: &'static str) -> Response {
    if req.method != axum::http::Method::GET {
        return method_not_allowed(&req);
    }
    let acc = access(req.caller, false);
    if acc == Access::Denied {
        return forbidden(&req);
    }
    let set = if entity == "application" {
        "applications"
    } else {
        "servicePrincipals"
    };
    let world = req.ctx.world.lock();
    let latest = world.directory.changes.last().map_or(0, |c| c.seq);

    let token = if let Some(t) = req
        .query
        .get("$skiptoken")
        .or_else(|| req.query.get("$deltatoken"))
    {
        let Some(mut token) = decode(t) else {
            return graph_error(
                StatusCode::GONE,
                "syncStateNotFound",
                "The sync state generation is not found. Please restart the sync process from the beginning.",
                req.ids,
            );
        };
        if req.query.contains_key("$deltatoken") {
            // A new round starts from where the last one ended.
            token = Token {
                since: token.upto,
                upto: latest,
                offset: 0,
                initial: false,
                select: token.select,
                ids: token.ids,
            };
        }
        token
    } else {
        let ids = match req.query.get("$filter") {
            Some(f) => match parse_id_filter(f) {
                Some(ids) => Some(ids),
                None => {
                    return bad_request(
                        &req,
                        &format!(
                            "Unsupported query filter for delta: '{f}'. Only 'id eq' clauses joined by 'or' are supported."
                        ),
                    );
                }
            },
            None => None,
        };
        let select = super::query::select(&req.query);
        Token {
            since: 0,
            upto: latest,
            offset: 0,
            initial: true,
            select,
            ids,
        }
    };

    let visible = |world: &World, app_id: &str| {
        acc == Access::All || super::applications::owns_app(world, &req.caller.oid, app_id)
    };
    let wanted = |id: &str| {
        token
            .ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i.eq_ignore_ascii_case(id)))
    };
    // Collected as references and rendered only for the returned page: a first round over thousands of
    // objects must not serialize all of them for every page.
    let entries: Vec<Entry> = if token.initial {
        match entity {
            "application" => world
                .directory
                .applications
                .values()
                .filter(|a| wanted(&a.id) && visible(&world, &a.app_id))
                .map(Entry::App)
                .collect(),
            _ => world
                .directory
                .service_principals
                .values()
                .filter(|s| wanted(&s.id) && visible(&world, &s.app_id))
                .map(Entry::Sp)
                .collect(),
        }
    } else {
        // The last change of each object in (since, upto] decides how it is reported.
        let mut last: BTreeMap<&str, ChangeKind> = BTreeMap::new();
        for c in world
            .directory
            .changes
            .iter()
            .filter(|c| c.entity == entity && c.seq > token.since && c.seq <= token.upto)
        {
            last.insert(c.id.as_str(), c.kind);
        }
        last.into_iter()
            .filter(|(id, _)| wanted(id))
            .filter_map(|(id, kind)| match kind {
                ChangeKind::Updated => match entity {
                    "application" => world
                        .directory
                        .applications
                        .get(id)
                        .filter(|a| visible(&world, &a.app_id))
                        .map(Entry::App),
                    _ => world
                        .directory
                        .service_principals
                        .get(id)
                        .filter(|s| visible(&world, &s.app_id))
                        .map(Entry::Sp),
                },
                ChangeKind::SoftDeleted => Some(Entry::Removed(id, "changed")),
                ChangeKind::Purged => Some(Entry::Removed(id, "deleted")),
            })
            .collect()
    };
    let total = entries.len();
    let value: Vec<Value> = entries
        .iter()
        .skip(token.offset)
        .take(PAGE)
        .map(|e| match e {
            Entry::App(a) => render::select(render::application(a), token.select.as_deref()),
            Entry::Sp(s) => render::select(render::service_principal(s), token.select.as_deref()),
            Entry::Removed(id, reason) => json!({"id": id, "@removed": {"reason": reason}}),
        })
        .collect();
    drop(world);
    let next_offset = token.offset + value.len();
    let mut body =
        json!({"@odata.context": format!("{}/$metadata#{set}", req.base), "value": value});
    if next_offset < total {
        let next = Token {
            offset: next_offset,
            ..token
        };
        body["@odata.nextLink"] = json!(format!(
            "{}/{set}/delta?$skiptoken={}",
            req.base,
            encode(&next)
        ));
    } else {
        let done = Token {
            since: token.upto,
            upto: token.upto,
            offset: 0,
            initial: false,
            ..token
        };
        body["@odata.deltaLink"] = json!(format!(
            "{}/{set}/delta?$deltatoken={}",
            req.base,
            encode(&done)
        ));
    }
    ok_json(StatusCode::OK, &body)
}

/// `id eq 'a' or id eq 'b'`: the only filter delta accepts.
fn parse_id_filter(f: &str) -> Option<Vec<String>> {
    f.split(" or ")
        .map(|clause| {
            let (field, value) = clause.trim().split_once(" eq ")?;
            if !field.trim().eq_ignore_ascii_case("id") {
                return None;
            }
            value
                .trim()
                .strip_prefix('\'')?
                .strip_suffix('\'')
                .map(str::to_string)
        })
        .collect()
}
