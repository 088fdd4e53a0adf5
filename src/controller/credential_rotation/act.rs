//! Act: takes the plan's steps in order, stopping at the first that fails. The new password and its text
//! pass from the step that adds it to the steps that deliver and publish it here, in memory: never through
//! status, an Event or a log line.

use crate::controller::clock;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{ResourceExt, runtime::events::EventType};
use tracing::info;

use super::{
    Context, Error, OWNER_LABEL,
    gather::{Gathered, Issued, STAGED_KEY, TRIGGER_KEY},
    plan::{self, Step, Trigger},
    targets::{self, Publication},
};
use crate::{
    api::{
        CredentialRotation, CredentialRotationStatus, SecretTarget,
        credential_rotation::{TargetKind, TargetState},
    },
    azure::certificate::Material,
    controller::{
        credentials::{self, Kind},
        issuance::{self, Fresh},
        key_vault, naming, publish, reconcile, secret_format, secrets, service_principal,
        verification,
    },
};

/// Takes `steps` in order, recording in `status` what each did. `now` is the moment the plan was made for.
pub(super) async fn act(
    crot: &CredentialRotation,
    ctx: &Context,
    gathered: &Gathered,
    status: &mut CredentialRotationStatus,
    steps: Vec<Step>,
    now: Timestamp,
) -> Result<(), Error> {
    let mut run = Run {
        crot,
        ctx,
        gathered,
        // A credential waiting in the staging Secret comes first: it is what the steps verify and publish.
        issued: gathered
            .pending
            .clone()
            .or_else(|| gathered.published.clone()),
        failures: vec![],
        now,
    };
    for step in steps {
        run.take(step, status).await?;
    }
    Ok(())
}

/// One reconcile's steps under way.
struct Run<'a> {
    crot: &'a CredentialRotation,
    ctx: &'a Context,
    gathered: &'a Gathered,
    /// The current password and its text: the one the Secret delivers, until a rotation issues the next.
    issued: Option<Issued>,
    /// The targets that have not taken the current key, and why.
    failures: Vec<String>,
    now: Timestamp,
}

impl Run<'_> {
    async fn take(
        &mut self,
        step: Step,
        status: &mut CredentialRotationStatus,
    ) -> Result<(), Error> {
        let (crot, ctx) = (self.crot, self.ctx);
        let app = &self.gathered.subject.app;
        match &step {
            Step::RemoveLeftover { key_id } => {
                let kind = self.gathered.subject.kind;
                let signer = self.signer();
                issuance::remove(&ctx.graph, app, kind, key_id, signer.as_ref()).await?;
                let note = format!("Removed {} {key_id} that no target holds", kind.noun());
                publish(ctx, crot, EventType::Normal, "CredentialRemoved", &note).await;
            }
            Step::RemovePrevious { key_id } => {
                let kind = self.gathered.subject.kind;
                let signer = self.signer();
                issuance::remove(&ctx.graph, app, kind, key_id, signer.as_ref()).await?;
                let object = format!("{}/{}", self.ns(), crot.name_any());
                info!(object = %object, key_id = %key_id, "removed the previous {}", kind.noun());
                let note = format!(
                    "Removed the previous {} {key_id} after the overlap",
                    kind.noun()
                );
                let reason = "PreviousCredentialRemoved";
                publish(ctx, crot, EventType::Normal, reason, &note).await;
                step.record(status);
            }
            Step::CheckTemplates => {
                if let Some(target) = &self.gathered.subject.secret {
                    self.delivery(target).check().map_err(Error::Invalid)?;
                }
            }
            Step::DisableVersions { index, versions } => {
                let v = &self.gathered.subject.vaults[*index];
                for version in versions {
                    ctx.key_vault
                        .set_enabled(&v.target.vault, &v.target.name, version, false)
                        .await?;
                }
                let note = format!(
                    "Disabled version(s) {} of Key Vault secret {}: their password is about to be removed",
                    versions.join(", "),
                    v.target.display()
                );
                publish(
                    ctx,
                    crot,
                    EventType::Normal,
                    "KeyVaultVersionsDisabled",
                    &note,
                )
                .await;
            }
            Step::RecordIntent { .. } => {
                step.record(status);
                reconcile::write_status(ctx, crot, status).await?;
            }
            Step::AddPassword { serial, lifetime } => {
                let subject = &self.gathered.subject;
                let name = naming::password_name(&self.ns(), &subject.owner, *serial);
                let end = credentials::expiry(clock::now(), *lifetime);
                let (kind, source) = (subject.kind, subject.source.as_ref());
                let fresh = Fresh::next(kind, source, &subject.display_name, end)
                    .map_err(Error::Invalid)?;
                let signer = self.signer();
                let new =
                    issuance::add(&ctx.graph, app, fresh, &name, end, signer.as_ref()).await?;
                let (credential, text) = (new.credential, new.secret_text);
                self.issued = Some(Issued { credential, text });
            }
            Step::Stage { trigger } => self.stage(*trigger).await?,
            Step::DropStaging => self.drop_staging().await?,
            Step::WriteSecret { trigger } => {
                self.write_secret(*trigger, status).await?;
                self.drop_staging().await?;
            }
            Step::RecordSchedule => {
                let current = self.issued()?.credential.clone();
                plan::record_schedule(crot, status, &current, self.now);
            }
            Step::Wait {
                reason,
                message,
                until,
            } => {
                return Err(Error::Waiting {
                    reason,
                    message: message.clone(),
                    until: *until,
                });
            }
            _ => self.publish(&step, status).await?,
        }
        Ok(())
    }

    /// The publishing steps, and the end of the plan.
    async fn publish(
        &mut self,
        step: &Step,
        status: &mut CredentialRotationStatus,
    ) -> Result<(), Error> {
        let issued = self.issued()?;
        let key_id = issued.credential.key_id.clone();
        let publication = Publication {
            crot: self.crot,
            ctx: self.ctx,
            client_id: &self.gathered.subject.app.app_id,
            key_id: &key_id,
            text: issued.text.secret(),
            kind: self.gathered.subject.kind,
        };
        match step {
            Step::PublishSecret => {
                let secret = self.gathered.subject.secret_name();
                let vaults = plan::vault_names(self.gathered);
                targets::secret_holds(self.crot, status, secret, &vaults, &key_id, clock::now());
            }
            Step::Verify => {
                self.adopt_verification(status, &key_id);
                publication.verify(status).await?
            }
            Step::PublishKeyVault { index, name } => {
                if let Some(why) = self.publish_vault(status, *index, name, &issued).await {
                    self.failures.push(why);
                }
            }
            Step::ResetCluster { index, cluster } => {
                let cleared = &self.gathered.cleared;
                if let Some(why) = publication.reset(cleared, status, *index, cluster).await? {
                    self.failures.push(why);
                }
            }
            Step::RestartWorkload { index, kind, name } => {
                if let Some(why) = publication.restart(status, *index, *kind, name).await {
                    self.failures.push(why);
                }
            }
            Step::RequirePublished if !self.failures.is_empty() => {
                return Err(targets::not_published(status, &key_id, &self.failures));
            }
            Step::CountCompleted => {
                self.ctx.metrics.rotated("completed");
                status.revision = Some(status.revision.unwrap_or(0).saturating_add(1));
            }
            Step::StartOverlap { .. } => step.record(status),
            _ => {}
        }
        Ok(())
    }

    /// Writes the current key to Key Vault target `index` (status names it `name`), unless its newest version
    /// holds it already; records the outcome. Why it failed, if it did (the other targets go on).
    async fn publish_vault(
        &self,
        status: &mut CredentialRotationStatus,
        index: usize,
        name: &str,
        issued: &Issued,
    ) -> Option<String> {
        let ctx = self.ctx;
        let key_id = issued.credential.key_id.as_str();
        let outcome = self.write_vault(index, issued).await;
        let (state, message, version) = match &outcome {
            Ok(version) => (TargetState::Published, None, version.clone()),
            Err(why) => (TargetState::Failed, Some(why.clone()), None),
        };
        let mut entry = targets::entry(
            TargetKind::KeyVaultSecret,
            name,
            key_id,
            state,
            message,
            clock::now(),
        );
        entry.version = version;
        targets::set_target(status, entry);
        if outcome.is_ok() {
            let subject = &self.gathered.subject;
            let target = &subject.vaults[index].target;
            let ns = self.ns();
            let object = [subject.owner_kind(), ns.as_str(), subject.owner.as_str()];
            let expiry = issued
                .credential
                .end_date_time
                .map(|t| t.as_second() as f64);
            ctx.metrics
                .set_vault_expiry(object, target.vault_name(), &target.name, expiry);
        }
        match outcome {
            Ok(Some(version)) => {
                let note = format!(
                    "Wrote password {key_id} to Key Vault secret {name} as version {version}"
                );
                publish(
                    ctx,
                    self.crot,
                    EventType::Normal,
                    "KeyVaultSecretWritten",
                    &note,
                )
                .await;
                None
            }
            Ok(None) => None,
            Err(why) => Some(format!("Key Vault secret {name}: {why}")),
        }
    }

    /// The write itself: the version now holding the key, or why not (a conflict, a refusal by Key Vault).
    async fn write_vault(&self, index: usize, issued: &Issued) -> Result<Option<String>, String> {
        let (ctx, gathered) = (self.ctx, self.gathered);
        let v = &gathered.subject.vaults[index];
        let key_id = issued.credential.key_id.as_str();
        let versions = gathered.vaults.get(index).cloned().unwrap_or_default();
        let owner = &gathered.vault_owner;
        // Keys of ours still on the application: nothing is disabled while publishing.
        let ours = gathered.ours(&self.ns());
        let mut live: Vec<&str> = ours.iter().map(|p| p.key_id.as_str()).collect();
        live.push(key_id);
        let decision =
            key_vault::decide(&v.field, &v.target, &versions, owner, Some(key_id), &live)
                .map_err(|c| c.0)?;
        let subject = &gathered.subject;
        let credential = secret_format::Credential {
            client_id: &subject.app.app_id,
            secret: secret_format::Secret::Password(issued.text.secret()),
            tenant_id: &ctx.tenant_id,
            display_name: &subject.display_name,
            cloud: &ctx.cloud,
        };
        let value = key_vault::render(&v.target, &credential)?;
        let decision = key_vault::Decision {
            disable: vec![],
            ..decision
        };
        let current = Some((&issued.credential, value.as_str()));
        let held = key_vault::apply(ctx, &v.target, &decision, owner, current)
            .await
            .map_err(|e| e.to_string())?;
        Ok(held.filter(|_| decision.write))
    }

    /// Writes the new password's text to where it is kept (the Secret, else the first Key Vault target), and
    /// makes it the current one.
    async fn write_secret(
        &mut self,
        trigger: Trigger,
        status: &mut CredentialRotationStatus,
    ) -> Result<(), Error> {
        let (crot, ctx) = (self.crot, self.ctx);
        let subject = &self.gathered.subject;
        let issued = self.issued()?;
        let key_id = issued.credential.key_id.clone();
        let home_version = match &subject.secret {
            Some(target) => {
                self.write_to_secret(target, &issued).await?;
                None
            }
            None => Some(self.write_to_home_vault(&issued).await?),
        };
        let object = format!("{}/{}", self.ns(), crot.name_any());
        info!(object = %object, key_id = %key_id, trigger = trigger.as_str(), "rotated the client secret");
        ctx.metrics.rotated("issued");
        status.current_key_id = Some(key_id.clone());
        status.last_rotation_time = Some(Time(clock::now()));
        status.observed_rotation_token = crot.spec.rotation_token.clone();
        status.targets.clear();
        if let (Some(version), Some(name)) =
            (home_version, plan::vault_names(self.gathered).first())
        {
            let (kind, state) = (TargetKind::KeyVaultSecret, TargetState::Published);
            let mut held = targets::entry(kind, name, &key_id, state, None, clock::now());
            held.version = Some(version);
            targets::set_target(status, held);
        }
        let note = format!(
            "Issued {} {key_id} ({} rotation) into {}",
            subject.kind.noun(),
            trigger.as_str(),
            subject.home()
        );
        publish(ctx, crot, EventType::Normal, "CredentialRotated", &note).await;
        Ok(())
    }

    /// Writes the new credential's text to the staging Secret, owned as the Secret is: the only place it is
    /// kept until the Secret gets it, once verified.
    async fn stage(&self, trigger: Trigger) -> Result<(), Error> {
        let issued = self.issued()?;
        let Some(secret) = self.gathered.subject.secret_name() else {
            return Ok(());
        };
        let staging = SecretTarget {
            name: naming::pending_secret_name(secret),
            format: crate::api::SecretFormat::Env,
            templates: None,
            mount_path: None,
        };
        let data = [
            (STAGED_KEY.to_string(), issued.text.secret().to_string()),
            (TRIGGER_KEY.to_string(), trigger.as_str().to_string()),
        ]
        .into();
        self.write_owned(&staging, &issued.credential.key_id, data)
            .await
    }

    /// Deletes the staging Secret, if there is one (gone already is fine).
    async fn drop_staging(&self) -> Result<(), Error> {
        let Some(secret) = self.gathered.subject.secret_name() else {
            return Ok(());
        };
        let name = naming::pending_secret_name(secret);
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(self.ctx.client.clone(), &self.ns());
        match api.delete(&name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `data` to the Secret `target`, owned by the ServicePrincipal (or, with applicationId, this
    /// rotation) and labelled so.
    async fn write_owned(
        &self,
        target: &SecretTarget,
        key_id: &str,
        data: std::collections::BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let (crot, ctx) = (self.crot, self.ctx);
        match &self.gathered.subject.sp {
            Some(sp) => {
                let label = service_principal::OWNER_LABEL;
                let owner = secrets::Owner { object: sp, label };
                secrets::write(&ctx.client, &owner, target, key_id, data).await?
            }
            None => {
                let owner = secrets::Owner {
                    object: crot,
                    label: OWNER_LABEL,
                };
                secrets::write(&ctx.client, &owner, target, key_id, data).await?
            }
        }
        Ok(())
    }

    async fn write_to_secret(&self, target: &SecretTarget, issued: &Issued) -> Result<(), Error> {
        let data = self.render(target, issued.text.secret())?;
        self.write_owned(target, &issued.credential.key_id, data)
            .await
    }

    /// Without a Secret: the new version of the first Key Vault target, written at once since the text is
    /// kept nowhere else (before the sign-in, as the Secret's would be). The version written.
    async fn write_to_home_vault(&self, issued: &Issued) -> Result<String, Error> {
        let (ctx, gathered) = (self.ctx, self.gathered);
        let subject = &gathered.subject;
        let home = subject.vaults.first().ok_or_else(|| {
            Error::Invalid("no Secret and no Key Vault target to rotate into".into())
        })?;
        let credential = secret_format::Credential {
            client_id: &subject.app.app_id,
            secret: secret_format::Secret::Password(issued.text.secret()),
            tenant_id: &ctx.tenant_id,
            display_name: &subject.display_name,
            cloud: &ctx.cloud,
        };
        let value = key_vault::render(&home.target, &credential).map_err(Error::Invalid)?;
        let write = key_vault::Decision {
            write: true,
            ..key_vault::Decision::default()
        };
        let current = Some((&issued.credential, value.as_str()));
        let held =
            key_vault::apply(ctx, &home.target, &write, &gathered.vault_owner, current).await?;
        Ok(held.unwrap_or_default())
    }

    /// The Secret's data for `text`; the error names the field that cannot render, never the text.
    fn render(
        &self,
        target: &SecretTarget,
        text: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, Error> {
        self.delivery(target).render(text).map_err(Error::Invalid)
    }

    /// How the subject's Secret renders a credential.
    fn delivery<'t>(&'t self, target: &'t SecretTarget) -> credentials::Delivery<'t> {
        let subject = &self.gathered.subject;
        credentials::Delivery {
            target,
            kind: subject.kind,
            client_id: &subject.app.app_id,
            tenant_id: &self.ctx.tenant_id,
            display_name: &subject.display_name,
            cloud: &self.ctx.cloud,
        }
    }

    /// The current certificate, whose private key signs the proofs for adding and removing the others
    /// (None for passwords, or when no Secret holds one: then Graph's PATCH does without).
    fn signer(&self) -> Option<Material> {
        let issued = self.issued.as_ref()?;
        match self.gathered.subject.kind {
            Kind::Certificate => Material::from_pem(issued.text.secret()).ok(),
            Kind::Password => None,
        }
    }

    /// A credential the ServicePrincipal issued and verified before this rotation took it over (its first
    /// one) is not verified again.
    fn adopt_verification(&self, status: &mut CredentialRotationStatus, key_id: &str) {
        let sp = self.gathered.subject.sp.as_ref();
        let theirs = sp.and_then(|sp| sp.status.as_ref()?.verification.as_ref());
        if let Some(v) = verification::adopted(status.verification.as_ref(), theirs, key_id) {
            status.verification = Some(v);
        }
    }

    /// The current password; the plan publishes only when there is one.
    fn issued(&self) -> Result<Issued, Error> {
        self.issued.clone().ok_or_else(|| {
            Error::Invalid("the plan publishes a password that does not exist".into())
        })
    }

    fn ns(&self) -> String {
        self.crot.namespace().unwrap_or_default()
    }
}
