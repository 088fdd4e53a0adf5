//! Gather: everything a reconcile reads before it decides, in one plain struct. The reads keep the order the
//! rotation has always had: the subject (which may refuse, and marks the ServicePrincipal), then the AKS
//! clusters (decided before anything is written), then the delivered Secret. A refusal stops the reads where
//! it is found, so that a rotation that may do nothing reads no further.

use azure_core::credentials::Secret as SecretText;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::{
    Context, Error, plan,
    subject::{self, Subject},
    targets::{self, ClearedClusters},
};
use crate::{
    api::CredentialRotation,
    azure::{graph::AppCredential, keyvault::SecretVersion},
    controller::{credentials, key_vault, naming, policy::key_vaults::may_write},
};

/// The key of the staging Secret that holds the new credential's text (a password, or a certificate's PEM).
pub const STAGED_KEY: &str = "credential";
/// The key of the staging Secret that says why its rotation began.
pub const TRIGGER_KEY: &str = "trigger";

/// A password with its text, as the Secret delivers it or as Entra just issued it. `SecretText`'s Debug
/// prints a placeholder, so the text cannot reach a log through this struct.
#[derive(Clone, Debug)]
pub struct Issued {
    pub credential: AppCredential,
    pub text: SecretText,
}

/// What a reconcile knows of the world before it decides. Not Debug: the Secret's data is in it.
pub struct Gathered {
    pub subject: Subject,
    /// The AKS clusters this reconcile may reset.
    pub cleared: ClearedClusters,
    /// The Secret the password goes to, as read (None: there is none).
    pub secret: Option<Secret>,
    /// The password of ours the Secret delivers, with its text: None when it names none of ours, or holds a
    /// rendering whose text cannot be read back.
    pub published: Option<Issued>,
    /// The versions of each of the subject's Key Vault targets, in order (read once every vault is
    /// authorized).
    pub vaults: Vec<Vec<SecretVersion>>,
    /// The Secret a new credential waits in while it is verified (see `naming::pending_secret_name`), as
    /// read; None: there is none.
    pub staging: Option<Secret>,
    /// The credential of ours it holds, with its text, unless the Secret delivers that one already: a
    /// rotation under way, to verify and publish before anything else.
    pub pending: Option<Issued>,
    /// Why that rotation began, as the staging Secret says (`plan::Trigger::as_str`).
    pub staged_trigger: Option<String>,
    /// The owner tag of the subject's versions (see `key_vault::owner_mark`).
    pub vault_owner: String,
}

impl Gathered {
    /// Assembles what was read, working out what the Secret delivers.
    pub fn new(
        subject: Subject,
        cleared: ClearedClusters,
        secret: Option<Secret>,
        ns: &str,
    ) -> Self {
        let published = secret
            .as_ref()
            .zip(subject.secret.as_ref())
            .and_then(|(s, target)| {
                let ours = credentials::ours(&subject.app, subject.kind, ns, &subject.owner);
                let (password, held) =
                    credentials::delivered(s, &ours, target, subject.kind, false)?;
                Some(Issued {
                    credential: password.clone(),
                    text: SecretText::new(held.text?),
                })
            });
        // The cluster's id comes with `gather`; a test's Gathered is of no cluster.
        let vault_owner = key_vault::owner_mark("", ns, subject.owner_kind(), &subject.owner);
        Gathered {
            subject,
            cleared,
            secret,
            vault_owner,
            published,
            vaults: vec![],
            staging: None,
            pending: None,
            staged_trigger: None,
        }
    }

    /// Records the staging Secret as read, working out the credential it holds (one of ours, not the one
    /// the Secret delivers).
    pub fn with_staging(mut self, staging: Option<Secret>, ns: &str) -> Self {
        let ours = self.ours(ns);
        let published = self.published.as_ref().map(|p| p.credential.key_id.clone());
        self.pending = staging.as_ref().and_then(|s| {
            let key = credentials::key_id(s)?;
            let credential = *ours.iter().find(|p| &p.key_id == key)?;
            let text = s.data.as_ref()?.get(STAGED_KEY)?;
            let text = String::from_utf8(text.0.clone()).ok()?;
            let expect = credentials::expect(credential, self.subject.kind);
            (Some(&credential.key_id) != published.as_ref() && expect.admits(&text)).then(|| {
                Issued {
                    credential: credential.clone(),
                    text: SecretText::new(text),
                }
            })
        });
        self.staged_trigger = staging
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get(TRIGGER_KEY))
            .map(|t| String::from_utf8_lossy(&t.0).into_owned());
        self.staging = staging;
        self
    }

    /// The passwords on the application that are ours, oldest first.
    pub fn ours(&self, ns: &str) -> Vec<&AppCredential> {
        credentials::ours(
            &self.subject.app,
            self.subject.kind,
            ns,
            &self.subject.owner,
        )
    }
}

/// Reads the subject, the clusters' clearances and the Secret.
pub(super) async fn gather(crot: &CredentialRotation, ctx: &Context) -> Result<Gathered, Error> {
    let ns = crot.namespace().unwrap_or_default();
    let subject = subject::resolve(crot, ctx).await?;
    // Before anything is written: a rotation whose clusters are denied or held by another rotates nothing.
    let cleared = targets::authorize_clusters(crot, ctx, &subject.app.app_id).await?;
    plan::renewal_fits(crot, subject.lifetime)?;
    let vaults = vaults(ctx, &subject, &ns).await?;
    let secret = match subject.secret_name() {
        Some(name) => {
            Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get_opt(name)
                .await?
        }
        None => None,
    };
    let staging = match subject.secret_name() {
        Some(name) => {
            Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&naming::pending_secret_name(name))
                .await?
        }
        None => None,
    };
    let mut gathered = Gathered::new(subject, cleared, secret, &ns).with_staging(staging, &ns);
    gathered.vaults = vaults;
    let subject = &gathered.subject;
    gathered.vault_owner =
        key_vault::owner_mark(&ctx.cluster_id, &ns, subject.owner_kind(), &subject.owner);
    if gathered.subject.secret.is_none() {
        gathered.published = in_vault(ctx, &gathered, &ns).await?;
    }
    Ok(gathered)
}

/// Without a Secret, the password the first vault target holds (its newest enabled version of ours), with its
/// text read back from there: what the rotation publishes, as the Secret's is otherwise.
async fn in_vault(ctx: &Context, gathered: &Gathered, ns: &str) -> Result<Option<Issued>, Error> {
    let (Some(first), Some(versions)) = (gathered.subject.vaults.first(), gathered.vaults.first())
    else {
        return Ok(None);
    };
    let ours = gathered.ours(ns);
    let Some((password, version)) = key_vault::held(versions, &gathered.vault_owner, &ours) else {
        return Ok(None);
    };
    let target = &first.target;
    let value = ctx
        .key_vault
        .value(&target.vault, &target.name, &version)
        .await?;
    Ok(
        key_vault::extract(target.format, value.secret()).map(|text| Issued {
            credential: password.clone(),
            text: SecretText::new(text),
        }),
    )
}

/// The versions of the subject's Key Vault targets, once a policy allows the namespace every vault: like the
/// clusters, decided before anything is written, and before anything is read of them.
async fn vaults(
    ctx: &Context,
    subject: &Subject,
    ns: &str,
) -> Result<Vec<Vec<SecretVersion>>, Error> {
    if subject.vaults.is_empty() {
        return Ok(vec![]);
    }
    let labels = targets::namespace_labels(ctx, &mut Default::default(), ns).await?;
    let policies = ctx.policies.state();
    for v in &subject.vaults {
        let field = format!("{}.vault", v.field);
        may_write(&policies, ns, &labels, &field, &v.target.vault)
            .map_err(|refusal| Error::DeniedByPolicy(refusal.to_string()))?;
    }
    let targets: Vec<_> = subject.vaults.iter().map(|v| v.target.clone()).collect();
    Ok(key_vault::observe(ctx, &targets).await?)
}
