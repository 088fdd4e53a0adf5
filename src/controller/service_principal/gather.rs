//! What a reconcile reads once the application is as the spec says, into one plain struct: the service
//! principal, the federated credentials, the delivered Secret and, only when a password of this object's is
//! not the one the Secret holds, whether a CredentialRotation manages them. No more reads than the decisions
//! need: the plans in `plan` take it from here.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::{
    Error,
    application::{self, Found},
    password,
    plan::Setting,
};
use crate::{
    api::{SecretTarget, ServicePrincipal, protocol::ROTATED_BY_ANNOTATION},
    azure::{
        certificate::Material,
        graph::{self, Application, FederatedIdentityCredential},
        keyvault::SecretVersion,
    },
    controller::{Context, key_vault, secrets},
};

/// Everything the plans decide from, besides the spec and the time. No Debug: the Secret holds a password.
#[derive(Clone)]
pub struct Gathered {
    pub app: Application,
    /// Whether every credential on the application is this object's (see `application::Found`).
    pub all_ours: bool,
    /// Its service principal, if Graph shows one.
    pub principal: Option<graph::ServicePrincipal>,
    pub federated: Vec<FederatedIdentityCredential>,
    /// The Secret spec.secret names; None when it is absent or none is asked for.
    pub secret: Option<Secret>,
    /// The CredentialRotation that manages this object's password, read only when `password::asks_rotation`.
    pub rotated_by: Option<String>,
    /// The versions of each of spec.keyVaultSecrets, in order; read once a policy allowed every vault, and
    /// only when no rotation delivers the password (it publishes to them itself), or when the first vault
    /// holds the password's text (no Secret).
    pub vaults: Vec<Vec<SecretVersion>>,
    /// The owner tag of this object's versions (see `key_vault::owner_mark`).
    pub vault_owner: String,
    /// The certificate spec.certificate.secretRef's TLS Secret holds now (None: the operator generates them).
    pub source: Option<Material>,
}

pub async fn gather(
    sp: &ServicePrincipal,
    ctx: &Context,
    found: Found,
    setting: &Setting<'_>,
) -> Result<Gathered, Error> {
    let app = found.app;
    let principal = ctx.graph.service_principal_by_app_id(&app.app_id).await?;
    let federated = match found.federated {
        Some(read) => read,
        None => ctx.graph.federated_credentials(&app.id).await?,
    };
    let secret = secret(sp, ctx, sp.spec.secret.as_ref()).await?;
    let source = source(sp, ctx).await?;
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let vault_owner = key_vault::owner_mark(&ctx.cluster_id, &ns, "ServicePrincipal", &name);
    // Without a Secret the first vault holds the password's text: read before the plan asks about rotation.
    let in_vault = sp.spec.secret.is_none() && !sp.spec.key_vault_secrets.is_empty();
    let early = match in_vault {
        true => vaults(sp, ctx).await?,
        false => vec![],
    };
    let asks = match in_vault {
        true => password::asks_rotation_in_vault(sp, &app, &early, &vault_owner),
        false => password::asks_rotation(sp, &app, secret.as_ref(), source.as_ref(), setting),
    };
    let rotated_by = match asks {
        true => rotated_by(sp, ctx).await?,
        false => None,
    };
    let vaults = match (in_vault, &rotated_by) {
        (true, _) => early,
        (false, None) => vaults(sp, ctx).await?,
        (false, Some(_)) => vec![],
    };
    Ok(Gathered {
        app,
        all_ours: found.all_ours,
        principal,
        federated,
        secret,
        rotated_by,
        vaults,
        vault_owner,
        source,
    })
}

/// The certificate the TLS Secret of spec.certificate.secretRef holds, if the spec names one: a Secret not
/// there yet (cert-manager has not issued it) is waited for, one that holds no usable certificate is reported
/// on this object.
pub async fn source(sp: &ServicePrincipal, ctx: &Context) -> Result<Option<Material>, Error> {
    let Some(reference) = sp
        .spec
        .certificate
        .as_ref()
        .and_then(|c| c.secret_ref.as_ref())
    else {
        return Ok(None);
    };
    let field = "spec.certificate.secretRef.name";
    let ns = sp.namespace().unwrap_or_default();
    let Some(found) = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&reference.name)
        .await?
    else {
        return Err(Error::WaitingForCertificate(format!(
            "{field}: Secret {ns}/{} does not exist yet",
            reference.name
        )));
    };
    secrets::tls_material(&found)
        .map(Some)
        .map_err(|why| Error::Invalid(format!("{field}: Secret {ns}/{}: {why}", reference.name)))
}

/// The versions of spec.keyVaultSecrets, once the namespace may write to every one of their vaults.
pub async fn vaults(
    sp: &ServicePrincipal,
    ctx: &Context,
) -> Result<Vec<Vec<SecretVersion>>, Error> {
    let targets = &sp.spec.key_vault_secrets;
    if targets.is_empty() {
        return Ok(vec![]);
    }
    let ns = sp.namespace().unwrap_or_default();
    let labels = application::namespace_labels(ctx, &ns).await?;
    key_vault::authorize(
        &ctx.policies.state(),
        &ns,
        &labels,
        "spec.keyVaultSecrets",
        targets,
    )
    .map_err(Error::DeniedByPolicy)?;
    Ok(key_vault::observe(ctx, targets).await?)
}

/// The Secret `target` names, if a target is given.
pub async fn secret(
    sp: &ServicePrincipal,
    ctx: &Context,
    target: Option<&SecretTarget>,
) -> Result<Option<Secret>, Error> {
    let Some(target) = target else {
        return Ok(None);
    };
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &sp.namespace().unwrap_or_default());
    Ok(secrets.get_opt(&target.name).await?)
}

/// The CredentialRotation that manages this object's password, read from the API server (not the cache): the
/// watch cache may not show the annotation the rotation set a moment ago.
async fn rotated_by(sp: &ServicePrincipal, ctx: &Context) -> Result<Option<String>, Error> {
    if sp.spec.secret.is_none() && sp.spec.key_vault_secrets.is_empty() {
        return Ok(None);
    }
    let api: Api<ServicePrincipal> =
        Api::namespaced(ctx.client.clone(), &sp.namespace().unwrap_or_default());
    Ok(api
        .get_metadata_opt(&sp.name_any())
        .await?
        .and_then(|m| m.annotations().get(ROTATED_BY_ANNOTATION).cloned()))
}
