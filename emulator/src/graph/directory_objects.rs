//! `POST /directoryObjects/getByIds`: directory objects by object id, as `az role assignment list` uses it to
//! print principal names. Graph documents `Directory.Read.All` as its least privileged application
//! permission, so a caller with only `Application.ReadWrite.OwnedBy` (the operator) is refused, as in Entra;
//! az carries on without the names.

use axum::{http::StatusCode, response::Response};
use serde_json::{Value, json};

use super::{Req, bad_request, body_object, forbidden, ok_json, render};

/// Graph's documented limit on `ids`.
const MAX_IDS: usize = 1000;

pub fn get_by_ids(req: Req) -> Response {
    if !["Directory.Read.All", "Directory.ReadWrite.All"]
        .iter()
        .any(|p| req.caller.has_role(p))
    {
        return forbidden(&req);
    }
    let body = match body_object(&req) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let strings = |name: &str| -> Option<Vec<String>> {
        body.get(name)?
            .as_array()?
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let Some(ids) = strings("ids").filter(|ids| !ids.is_empty() && ids.len() <= MAX_IDS) else {
        return bad_request(
            &req,
            &format!("Invalid value specified for property 'ids': give 1 to {MAX_IDS} object ids."),
        );
    };
    let types = match body.get("types") {
        None | Some(Value::Null) => vec![],
        Some(_) => match strings("types") {
            Some(t) => t,
            None => return bad_request(&req, "Invalid value specified for property 'types'."),
        },
    };
    let wanted =
        |kind: &str| types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case(kind));
    let world = req.ctx.world.lock();
    let value: Vec<Value> = ids
        .iter()
        .filter_map(|id| {
            if let Some(sp) = world
                .directory
                .service_principals
                .get(id)
                .filter(|_| wanted("servicePrincipal"))
            {
                let mut v = render::service_principal(sp);
                v["@odata.type"] = json!("#microsoft.graph.servicePrincipal");
                return Some(v);
            }
            let app = world
                .directory
                .applications
                .get(id)
                .filter(|_| wanted("application"))?;
            let mut v = render::application(app);
            v["@odata.type"] = json!("#microsoft.graph.application");
            Some(v)
        })
        .collect();
    ok_json(
        StatusCode::OK,
        &json!({"@odata.context": format!("{}/$metadata#directoryObjects", req.base), "value": value}),
    )
}
