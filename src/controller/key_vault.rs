//! Key Vault targets, one home for both controllers that deliver to them (a ServicePrincipal's first
//! password, a CredentialRotation's next ones): whose a secret is, which of its versions hold which password,
//! what to write and what to disable, and rendering a password as a version's value.
//!
//! Every version the operator writes carries three tags: its owner (`{cluster}/{namespace}/{kind}/{name}`),
//! the Entra key id of the password it holds, and the value's format. So the state lives in the vault, not in
//! memory: the rule each reconcile converges on is that the newest version holds the current password, and
//! that no enabled version of ours names a password that is gone (or about to go). A crash anywhere leaves
//! at worst a version to disable, found by its key-id tag.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::{policy, secret_format};
use crate::{
    api::{KeyVaultSecretTarget, KeyVaultValueFormat, SecretFormat, key_vault::TAG_PREFIX},
    azure::{
        error::AzureError,
        graph::AppCredential,
        keyvault::{NewVersion, SecretVersion},
    },
    controller::Context,
};

/// Tag naming the object a version was written for.
pub const OWNER_TAG: &str = "entra-operator-owner";
/// Tag naming the Entra key id of the password a version holds.
pub const KEY_ID_TAG: &str = "entra-operator-key-id";
/// Tag naming the format of a version's value.
pub const FORMAT_TAG: &str = "entra-operator-format";

/// The owner tag's value for object `kind` `ns/name` of cluster `cluster_id`.
pub fn owner_mark(cluster_id: &str, ns: &str, kind: &str, name: &str) -> String {
    format!("{cluster_id}/{ns}/{kind}/{name}")
}

/// What to do with one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Write a new version holding the current password.
    pub write: bool,
    /// The version that already holds it, as the spec says (when nothing is written).
    pub holding: Option<String>,
    /// Enabled versions of ours that hold a password that is gone or about to go: disabled before it goes.
    pub disable: Vec<String>,
}

/// Why a target cannot be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Conflict(pub String);

/// Decides one target from its versions (`versions`, as listed), for `owner`, whose current password is
/// `current` (None: nothing to deliver, only versions to disable) and whose passwords still valid after
/// this reconcile are `live`. `field` names the target in the spec, for the refusal.
pub fn decide(
    field: &str,
    target: &KeyVaultSecretTarget,
    versions: &[SecretVersion],
    owner: &str,
    current: Option<&str>,
    live: &[&str],
) -> Result<Decision, Conflict> {
    if let Some(foreign) = versions.iter().find(|v| v.tag(OWNER_TAG) != Some(owner)) {
        let holder = match foreign.tag(OWNER_TAG) {
            Some(other) => format!("it was written for {other}"),
            None => "it was not written by the operator".to_string(),
        };
        return Err(Conflict(format!(
            "{field}: secret {} in vault {} exists and {holder}; it is left untouched",
            target.name,
            target.vault_name()
        )));
    }
    let newest = versions.iter().filter_map(|v| v.attributes.created).max();
    // Key Vault's times are whole seconds: of versions created in the same second, any may be the newest.
    let holding = current.and_then(|key| {
        versions
            .iter()
            .filter(|v| v.attributes.created == newest)
            .find(|v| v.tag(KEY_ID_TAG) == Some(key) && v.enabled() && as_spec_says(target, v))
            .map(|v| v.version().to_string())
    });
    let disable = versions
        .iter()
        .filter(|v| v.enabled())
        .filter(|v| v.tag(KEY_ID_TAG).is_none_or(|k| !live.contains(&k)))
        .map(|v| v.version().to_string())
        .collect();
    Ok(Decision {
        write: current.is_some() && holding.is_none(),
        holding,
        disable,
    })
}

/// Whether a version is written as the spec now asks: content type, format and the spec's tags.
fn as_spec_says(target: &KeyVaultSecretTarget, version: &SecretVersion) -> bool {
    let theirs: BTreeMap<&str, &str> = version
        .tags
        .iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with(TAG_PREFIX))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let ours: BTreeMap<&str, &str> = target
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    version.content_type.as_deref() == Some(target.content_type())
        && version.tag(FORMAT_TAG) == Some(target.format.as_str())
        && theirs == ours
}

/// The password of `ours` that the vault holds for `owner` (its newest enabled version of ours naming one of
/// them), and that version: where the text of a password lives when there is no Kubernetes Secret.
pub fn held<'a>(
    versions: &[SecretVersion],
    owner: &str,
    ours: &[&'a AppCredential],
) -> Option<(&'a AppCredential, String)> {
    versions
        .iter()
        .filter(|v| v.enabled() && v.tag(OWNER_TAG) == Some(owner))
        .filter_map(|v| {
            let key = v.tag(KEY_ID_TAG)?;
            let password = ours.iter().find(|p| p.key_id == key)?;
            Some((v.attributes.created, *password, v.version().to_string()))
        })
        .max_by_key(|(created, _, _)| *created)
        .map(|(_, password, version)| (password, version))
}

/// The client secret in a value written in `format` (the way back from [`render`]).
pub fn extract(format: KeyVaultValueFormat, value: &str) -> Option<String> {
    let field = match format {
        KeyVaultValueFormat::Password => return Some(value.to_string()),
        KeyVaultValueFormat::Env => "AZURE_CLIENT_SECRET",
        KeyVaultValueFormat::AzureJson => "aadClientSecret",
        KeyVaultValueFormat::SdkAuth => "clientSecret",
        KeyVaultValueFormat::Az => "password",
    };
    let doc: serde_json::Value = serde_json::from_str(value).ok()?;
    doc.get(field)?.as_str().map(str::to_string)
}

/// The value a version holds for `text`, in the target's format. Its error names the field, never the text.
pub fn render(
    target: &KeyVaultSecretTarget,
    credential: &secret_format::Credential,
) -> Result<String, String> {
    let format = match target.format {
        KeyVaultValueFormat::Password => match credential.secret {
            secret_format::Secret::Password(text) => return Ok(text.to_string()),
            secret_format::Secret::Certificate { .. } => {
                return Err("Key Vault targets take a client secret, not a certificate".into());
            }
        },
        KeyVaultValueFormat::Env => SecretFormat::Env,
        KeyVaultValueFormat::AzureJson => SecretFormat::AzureJson,
        KeyVaultValueFormat::SdkAuth => SecretFormat::SdkAuth,
        KeyVaultValueFormat::Az => SecretFormat::Az,
    };
    let data = secret_format::render(format, None, credential).map_err(|e| e.to_string())?;
    Ok(match target.format {
        // One document per format: the Secret's single key holds it already.
        KeyVaultValueFormat::AzureJson | KeyVaultValueFormat::SdkAuth => {
            data.into_values().next().unwrap_or_default()
        }
        _ => serde_json::to_string_pretty(&data).map_err(|e| e.to_string())?,
    })
}

/// The version to write for `password`: valid from its start to its end, tagged with the owner and the key.
pub fn version<'a>(
    target: &'a KeyVaultSecretTarget,
    owner: &str,
    password: &AppCredential,
    value: &'a str,
) -> NewVersion<'a> {
    let mut tags = target.tags.clone();
    tags.insert(OWNER_TAG.into(), owner.into());
    tags.insert(KEY_ID_TAG.into(), password.key_id.clone());
    tags.insert(FORMAT_TAG.into(), target.format.as_str().into());
    NewVersion {
        value,
        content_type: target.content_type(),
        nbf: password.start_date_time.map(Timestamp::as_second),
        exp: password.end_date_time.map(Timestamp::as_second),
        tags,
    }
}

/// A secret of ours that was deleted (by hand, or by an earlier object of the same name) but not purged
/// blocks every write of its name (Key Vault answers 409): it is recovered, so that the next version goes on
/// top of it. Someone else's deleted secret is left alone, and the write's refusal stands.
async fn recovered(
    ctx: &Context,
    target: &KeyVaultSecretTarget,
    owner: &str,
) -> Result<bool, AzureError> {
    match ctx.key_vault.deleted(&target.vault, &target.name).await? {
        Some(deleted) if deleted.tag(OWNER_TAG) == Some(owner) => {
            ctx.key_vault.recover(&target.vault, &target.name).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// What deleting the object does to one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// Every version is ours: the secret goes (soft-deleted, then purged if asked).
    Delete,
    /// Someone else wrote versions too: only ours are disabled, theirs are left.
    Disable(Vec<String>),
}

/// The teardown of a target from its versions.
pub fn teardown(versions: &[SecretVersion], owner: &str) -> Teardown {
    if versions.iter().all(|v| v.tag(OWNER_TAG) == Some(owner)) {
        return Teardown::Delete;
    }
    Teardown::Disable(
        versions
            .iter()
            .filter(|v| v.tag(OWNER_TAG) == Some(owner) && v.enabled())
            .map(|v| v.version().to_string())
            .collect(),
    )
}

/// Deletes what `owner` wrote to `target`: the secret if it is all ours (purged too with `purge`, and only if
/// the deleted secret is ours), else our versions disabled. Safe to run again after a failure part-way: a
/// secret already deleted is still purged.
pub async fn remove(
    ctx: &Context,
    target: &KeyVaultSecretTarget,
    owner: &str,
    purge: bool,
) -> Result<(), AzureError> {
    let versions = ctx.key_vault.versions(&target.vault, &target.name).await?;
    match teardown(&versions, owner) {
        Teardown::Disable(ours) => {
            for version in ours {
                ctx.key_vault
                    .set_enabled(&target.vault, &target.name, &version, false)
                    .await?;
            }
            return Ok(());
        }
        Teardown::Delete if !versions.is_empty() => {
            ctx.key_vault.delete(&target.vault, &target.name).await?;
        }
        Teardown::Delete => {}
    }
    if purge
        && let Some(deleted) = ctx.key_vault.deleted(&target.vault, &target.name).await?
        && deleted.tag(OWNER_TAG) == Some(owner)
    {
        ctx.key_vault.purge(&target.vault, &target.name).await?;
    }
    Ok(())
}

/// Every target of `targets` (spec field `field`, e.g. "spec.keyVaultSecrets") authorized for namespace `ns`
/// before anything is read from or written to any vault: a namespace learns nothing of a vault it may not use.
pub fn authorize(
    policies: &[impl std::borrow::Borrow<crate::api::DelegationPolicy>],
    ns: &str,
    labels: &BTreeMap<String, String>,
    field: &str,
    targets: &[KeyVaultSecretTarget],
) -> Result<(), String> {
    for (i, target) in targets.iter().enumerate() {
        let field = format!("{field}[{i}].vault");
        policy::key_vaults::may_write(policies, ns, labels, &field, &target.vault)
            .map_err(|refusal| refusal.to_string())?;
    }
    Ok(())
}

/// Versions of every target, in the spec's order.
pub async fn observe(
    ctx: &Context,
    targets: &[KeyVaultSecretTarget],
) -> Result<Vec<Vec<SecretVersion>>, AzureError> {
    let mut all = Vec::with_capacity(targets.len());
    for target in targets {
        all.push(ctx.key_vault.versions(&target.vault, &target.name).await?);
    }
    Ok(all)
}

/// Carries out `decision` for `password` (the current one, with its text): the new version first, then the
/// disables, so that the target never holds nothing enabled. The version now holding the password.
pub async fn apply(
    ctx: &Context,
    target: &KeyVaultSecretTarget,
    decision: &Decision,
    owner: &str,
    current: Option<(&AppCredential, &str)>,
) -> Result<Option<String>, AzureError> {
    let mut holding = decision.holding.clone();
    if decision.write
        && let Some((password, value)) = current
    {
        let new = version(target, owner, password, value);
        let written = match ctx.key_vault.set(&target.vault, &target.name, &new).await {
            Err(AzureError::Api { status: 409, .. }) if recovered(ctx, target, owner).await? => {
                ctx.key_vault.set(&target.vault, &target.name, &new).await?
            }
            other => other?,
        };
        holding = Some(written.version().to_string());
    }
    for version in &decision.disable {
        ctx.key_vault
            .set_enabled(&target.vault, &target.name, version, false)
            .await?;
    }
    Ok(holding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        azure::keyvault::Attributes,
        fixtures::{password, public_cloud, t0},
    };

    const OWNER: &str = "cluster/team-a/ServicePrincipal/web";

    fn target(format: KeyVaultValueFormat) -> KeyVaultSecretTarget {
        KeyVaultSecretTarget {
            vault: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv"
                .into(),
            name: "web".into(),
            format,
            content_type: None,
            tags: BTreeMap::from([("team".into(), "a".into())]),
        }
    }

    /// Version `v` written for `owner`, holding `key`, created at second `created`.
    fn v(name: &str, owner: Option<&str>, key: &str, created: i64, enabled: bool) -> SecretVersion {
        let mut tags = BTreeMap::from([
            ("team".to_string(), "a".to_string()),
            (KEY_ID_TAG.to_string(), key.to_string()),
            (FORMAT_TAG.to_string(), "password".to_string()),
        ]);
        if let Some(owner) = owner {
            tags.insert(OWNER_TAG.into(), owner.into());
        }
        SecretVersion {
            id: format!("https://kv.vault.azure.net/secrets/web/{name}"),
            attributes: Attributes {
                enabled: Some(enabled),
                created: Some(created),
                ..Attributes::default()
            },
            tags: Some(tags),
            content_type: Some("text/plain".into()),
        }
    }

    #[test]
    fn decisions() {
        let ours = |name, key, created, enabled| v(name, Some(OWNER), key, created, enabled);
        struct Case {
            name: &'static str,
            versions: Vec<SecretVersion>,
            current: Option<&'static str>,
            live: Vec<&'static str>,
            want: Result<Decision, &'static str>,
        }
        let decision = |write, holding: Option<&str>, disable: &[&str]| Decision {
            write,
            holding: holding.map(str::to_string),
            disable: disable.iter().map(|s| s.to_string()).collect(),
        };
        let cases = [
            Case {
                name: "no secret yet: the first version is written",
                versions: vec![],
                current: Some("k1"),
                live: vec!["k1"],
                want: Ok(decision(true, None, &[])),
            },
            Case {
                name: "the newest version holds the current key: nothing to do",
                versions: vec![ours("v1", "k1", 10, true)],
                current: Some("k1"),
                live: vec!["k1"],
                want: Ok(decision(false, Some("v1"), &[])),
            },
            Case {
                name: "a rotation: the new key gets a version, the previous one stays enabled during the overlap",
                versions: vec![ours("v1", "k1", 10, true)],
                current: Some("k2"),
                live: vec!["k1", "k2"],
                want: Ok(decision(true, None, &[])),
            },
            Case {
                name: "the overlap is over: the version of the key about to go is disabled",
                versions: vec![ours("v1", "k1", 10, true), ours("v2", "k2", 20, true)],
                current: Some("k2"),
                live: vec!["k2"],
                want: Ok(decision(false, Some("v2"), &["v1"])),
            },
            Case {
                name: "an older version newer than none: only the newest counts as holding",
                versions: vec![ours("v1", "k2", 10, true), ours("v2", "k1", 20, true)],
                current: Some("k2"),
                live: vec!["k1", "k2"],
                want: Ok(decision(true, None, &[])),
            },
            Case {
                name: "the newest version was disabled by hand: written again",
                versions: vec![ours("v1", "k1", 10, false)],
                current: Some("k1"),
                live: vec!["k1"],
                want: Ok(decision(true, None, &[])),
            },
            Case {
                name: "already disabled versions of gone keys are left as they are",
                versions: vec![ours("v1", "k0", 5, false), ours("v2", "k1", 10, true)],
                current: Some("k1"),
                live: vec!["k1"],
                want: Ok(decision(false, Some("v2"), &[])),
            },
            Case {
                name: "a crash left a version of a key that was removed: disabled",
                versions: vec![ours("v1", "k1", 10, true), ours("v2", "kx", 20, true)],
                current: Some("k1"),
                live: vec!["k1"],
                want: Ok(decision(true, None, &["v2"])),
            },
            Case {
                name: "two versions in the same second: the one holding the key counts",
                versions: vec![ours("v1", "k1", 10, true), ours("v2", "k2", 10, true)],
                current: Some("k2"),
                live: vec!["k1", "k2"],
                want: Ok(decision(false, Some("v2"), &[])),
            },
            Case {
                name: "nothing to deliver: every enabled version of a gone key is disabled",
                versions: vec![ours("v1", "k1", 10, true)],
                current: None,
                live: vec![],
                want: Ok(decision(false, None, &["v1"])),
            },
            Case {
                name: "a secret someone else wrote is a conflict",
                versions: vec![v("v1", None, "k1", 10, true)],
                current: Some("k1"),
                live: vec!["k1"],
                want: Err(
                    "spec.keyVaultSecrets[0]: secret web in vault kv exists and it was not written by the operator; it is left untouched",
                ),
            },
            Case {
                name: "a secret another object holds is a conflict naming it",
                versions: vec![v(
                    "v1",
                    Some("cluster/team-b/ServicePrincipal/x"),
                    "k1",
                    10,
                    true,
                )],
                current: Some("k1"),
                live: vec!["k1"],
                want: Err(
                    "spec.keyVaultSecrets[0]: secret web in vault kv exists and it was written for cluster/team-b/ServicePrincipal/x; it is left untouched",
                ),
            },
        ];
        for case in cases {
            let got = decide(
                "spec.keyVaultSecrets[0]",
                &target(KeyVaultValueFormat::Password),
                &case.versions,
                OWNER,
                case.current,
                &case.live,
            );
            let want = case.want.map_err(|m| Conflict(m.to_string()));
            assert_eq!(got, want, "{}", case.name);
        }
    }

    #[test]
    fn a_delete_removes_the_secret_only_when_every_version_is_ours() {
        let ours = v("v1", Some(OWNER), "k1", 10, true);
        let old = v("v0", Some(OWNER), "k0", 5, false);
        let theirs = v("v2", None, "k9", 20, true);
        assert_eq!(teardown(&[], OWNER), Teardown::Delete);
        assert_eq!(
            teardown(&[old.clone(), ours.clone()], OWNER),
            Teardown::Delete
        );
        assert_eq!(
            teardown(&[old, ours, theirs], OWNER),
            Teardown::Disable(vec!["v1".into()])
        );
    }

    #[test]
    fn a_changed_spec_writes_the_same_key_again() {
        let held = v("v1", Some(OWNER), "k1", 10, true);
        let mut json = target(KeyVaultValueFormat::Env);
        let got = decide(
            "f",
            &json,
            std::slice::from_ref(&held),
            OWNER,
            Some("k1"),
            &["k1"],
        );
        assert!(got.unwrap().write, "a format change writes a version");
        json = target(KeyVaultValueFormat::Password);
        json.tags.insert("cost-centre".into(), "42".into());
        let got = decide(
            "f",
            &json,
            std::slice::from_ref(&held),
            OWNER,
            Some("k1"),
            &["k1"],
        );
        assert!(got.unwrap().write, "a tag change writes a version");
        json = target(KeyVaultValueFormat::Password);
        json.content_type = Some("application/x-password".into());
        let got = decide("f", &json, &[held], OWNER, Some("k1"), &["k1"]);
        assert!(got.unwrap().write, "a content type change writes a version");
    }

    #[test]
    fn a_version_carries_the_passwords_dates_and_the_marks_and_hides_its_value() {
        let p = password("web", 1, t0(), 30);
        let t = target(KeyVaultValueFormat::Password);
        let new = version(&t, OWNER, &p, "the-secret-text");
        assert_eq!(new.nbf, p.start_date_time.map(Timestamp::as_second));
        assert_eq!(new.exp, p.end_date_time.map(Timestamp::as_second));
        assert!(new.exp.unwrap() > new.nbf.unwrap());
        assert_eq!(new.tags[OWNER_TAG], OWNER);
        assert_eq!(new.tags[KEY_ID_TAG], p.key_id);
        assert_eq!(new.tags["team"], "a");
        assert_eq!(new.content_type, "text/plain");
        assert!(!format!("{new:?}").contains("the-secret-text"));
    }

    #[test]
    fn the_held_password_is_the_newest_enabled_version_of_ours() {
        let (p1, p2) = (password("web", 1, t0(), 30), password("web", 2, t0(), 30));
        let mine = |name, key: &str, created, enabled| v(name, Some(OWNER), key, created, enabled);
        let ours = [&p1, &p2];
        let held_of = |versions: Vec<SecretVersion>| {
            held(&versions, OWNER, &ours).map(|(p, v)| (p.key_id.clone(), v))
        };
        assert_eq!(held_of(vec![]), None);
        let (k1, k2) = (p1.key_id.as_str(), p2.key_id.as_str());
        assert_eq!(
            held_of(vec![mine("v1", k1, 10, true), mine("v2", k2, 20, true)]),
            Some((p2.key_id.clone(), "v2".into()))
        );
        assert_eq!(
            held_of(vec![mine("v1", k1, 10, true), mine("v2", k2, 20, false)]),
            Some((p1.key_id.clone(), "v1".into())),
            "a disabled version holds nothing"
        );
        assert_eq!(
            held_of(vec![mine("v1", "gone", 10, true)]),
            None,
            "a removed password"
        );
        assert_eq!(
            held_of(vec![v("v1", None, k1, 10, true)]),
            None,
            "someone else's version"
        );
    }

    #[test]
    fn values_in_each_format() {
        let cloud = public_cloud();
        let c = secret_format::Credential {
            client_id: "app",
            secret: secret_format::Secret::Password("s3cret"),
            tenant_id: "tenant",
            display_name: "web",
            cloud: &cloud,
        };
        assert_eq!(
            render(&target(KeyVaultValueFormat::Password), &c).unwrap(),
            "s3cret"
        );
        let env: serde_json::Value =
            serde_json::from_str(&render(&target(KeyVaultValueFormat::Env), &c).unwrap()).unwrap();
        assert_eq!(env["AZURE_CLIENT_SECRET"], "s3cret");
        assert_eq!(env["AZURE_CLIENT_ID"], "app");
        let sdk: serde_json::Value =
            serde_json::from_str(&render(&target(KeyVaultValueFormat::SdkAuth), &c).unwrap())
                .unwrap();
        assert_eq!(sdk["clientSecret"], "s3cret");
        let aj: serde_json::Value =
            serde_json::from_str(&render(&target(KeyVaultValueFormat::AzureJson), &c).unwrap())
                .unwrap();
        assert_eq!(aj["aadClientSecret"], "s3cret");
        let az: serde_json::Value =
            serde_json::from_str(&render(&target(KeyVaultValueFormat::Az), &c).unwrap()).unwrap();
        assert_eq!(az["password"], "s3cret");
        assert_eq!(
            target(KeyVaultValueFormat::Az).content_type(),
            "application/json"
        );
    }
}
