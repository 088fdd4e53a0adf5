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
use crate::{api::CredentialRotation, azure::graph::PasswordCredential, controller::credentials};

/// A password with its text, as the Secret delivers it or as Entra just issued it. `SecretText`'s Debug
/// prints a placeholder, so the text cannot reach a log through this struct.
#[derive(Clone, Debug)]
pub struct Issued {
    pub credential: PasswordCredential,
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
}

impl Gathered {
    /// Assembles what was read, working out what the Secret delivers.
    pub fn new(
        subject: Subject,
        cleared: ClearedClusters,
        secret: Option<Secret>,
        ns: &str,
    ) -> Self {
        let published = secret.as_ref().and_then(|s| {
            let ours = credentials::ours(&subject.app, ns, &subject.owner);
            let (password, held) = credentials::delivered(s, &ours, &subject.secret, false)?;
            Some(Issued {
                credential: password.clone(),
                text: SecretText::new(held.text?),
            })
        });
        Gathered {
            subject,
            cleared,
            secret,
            published,
        }
    }

    /// The passwords on the application that are ours, oldest first.
    pub fn ours(&self, ns: &str) -> Vec<&PasswordCredential> {
        credentials::ours(&self.subject.app, ns, &self.subject.owner)
    }
}

/// Reads the subject, the clusters' clearances and the Secret.
pub(super) async fn gather(crot: &CredentialRotation, ctx: &Context) -> Result<Gathered, Error> {
    let ns = crot.namespace().unwrap_or_default();
    let subject = subject::resolve(crot, ctx).await?;
    // Before anything is written: a rotation whose clusters are denied or held by another rotates nothing.
    let cleared = targets::authorize_clusters(crot, ctx, &subject.app.app_id).await?;
    plan::renewal_fits(crot, subject.lifetime)?;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&subject.secret.name)
        .await?;
    Ok(Gathered::new(subject, cleared, secret, &ns))
}
