//! The decisions of a reconcile, pure: from the object, what `gather` read and the time, which steps `act`
//! takes and the status it writes. Nothing here reads Azure, the API server or the clock.
//!
//! The shortcut is decided here too, in two halves around the one read it makes: `shortcut` says, from the
//! object alone, whether the drift feeds and the Secret could be enough; `unchanged` decides from that Secret.

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};

use super::{
    Error, federated, federated::FederatedPlan, gather::Gathered, password, password::PasswordPlan,
};
use crate::{
    api::{
        SecretTarget, ServicePrincipal, ServicePrincipalStatus,
        conditions::{self, Progress},
        service_principal::CredentialStatus,
    },
    azure::{
        cloud::Cloud,
        graph::{AppCredential, Application},
    },
    controller::{
        Context, clock,
        credentials::{self, Expect, Held, Kind},
        key_vault, naming, secrets,
    },
};

/// What the plans know besides the object and what was gathered: where the operator runs, and when.
pub struct Setting<'a> {
    pub tenant_id: &'a str,
    pub cloud: &'a Cloud,
    pub now: Timestamp,
}

impl<'a> Setting<'a> {
    /// The operator's setting, at the time of the call.
    pub fn of(ctx: &'a Context) -> Self {
        Setting {
            tenant_id: &ctx.tenant_id,
            cloud: &ctx.cloud,
            now: clock::now(),
        }
    }

    /// What a Key Vault value for a password `text` of `client_id` is rendered from.
    pub fn credential<'b>(
        &'b self,
        sp: &'b ServicePrincipal,
        client_id: &'b str,
        text: &'b str,
    ) -> crate::controller::secret_format::Credential<'b> {
        crate::controller::secret_format::Credential {
            client_id,
            secret: crate::controller::secret_format::Secret::Password(text),
            tenant_id: self.tenant_id,
            display_name: &sp.spec.display_name,
            cloud: self.cloud,
        }
    }

    /// How `sp`'s Secret renders a password of `client_id`.
    pub fn delivery<'b>(
        &'b self,
        sp: &'b ServicePrincipal,
        client_id: &'b str,
        target: &'b SecretTarget,
    ) -> credentials::Delivery<'b> {
        credentials::Delivery {
            target,
            kind: Kind::of(&sp.spec),
            client_id,
            tenant_id: self.tenant_id,
            display_name: &sp.spec.display_name,
            cloud: self.cloud,
        }
    }
}

/// An object that may need nothing done: its status is complete and Ready for this generation. The drift
/// feeds must still vouch for `vouched`, and the Secret (if one is asked for) must hold the delivered
/// password as the spec renders it.
pub struct Shortcut<'a> {
    pub status: &'a ServicePrincipalStatus,
    pub app_id: &'a str,
    /// The application and the service principal.
    pub vouched: [&'a str; 2],
    /// The Secret to read, and the credential status says it delivers; None when no Secret is asked for.
    pub secret: Option<(&'a SecretTarget, &'a CredentialStatus)>,
    /// The credential delivered (to the Secret, the vaults or both).
    pub credential: Option<&'a CredentialStatus>,
}

/// The first half of the shortcut, before any read: None sends the reconcile through the full path.
pub fn shortcut(sp: &ServicePrincipal) -> Option<Shortcut<'_>> {
    let status = sp.status.as_ref()?;
    let (Some(app_id), Some(object_id), Some(principal_id)) = (
        status.app_id.as_deref(),
        status.object_id.as_deref(),
        status.service_principal_id.as_deref(),
    ) else {
        return None;
    };
    if status.observed_generation != sp.metadata.generation
        || !conditions::is_true(&status.conditions, conditions::READY)
    {
        return None;
    }
    let secret = match (&sp.spec.secret, &status.credential) {
        (None, None) => None,
        // The vaults alone hold the password: they are checked below.
        (None, Some(_)) if !sp.spec.key_vault_secrets.is_empty() => None,
        (Some(target), Some(credential)) if status.secret_name.as_ref() == Some(&target.name) => {
            Some((target, credential))
        }
        _ => return None,
    };
    // Every Key Vault target recorded as holding the delivered password; the vaults are read to confirm it.
    let key_id = status.credential.as_ref().map(|c| c.key_id.as_str());
    let recorded = sp.spec.key_vault_secrets.iter().all(|t| {
        status.key_vault_secrets.iter().any(|held| {
            held.vault == t.vault && held.name == t.name && held.key_id.as_deref() == key_id
        })
    });
    if !recorded || status.key_vault_secrets.len() != sp.spec.key_vault_secrets.len() {
        return None;
    }
    Some(Shortcut {
        status,
        app_id,
        vouched: [object_id, principal_id],
        secret,
        credential: status.credential.as_ref(),
    })
}

/// The second half of the shortcut: whether `secret` (what the shortcut's read found, None if absent) still
/// holds the delivered password as the spec renders it. A template Secret, whose text cannot be read back,
/// stands as long as its templates are the spec's.
pub fn unchanged(
    sp: &ServicePrincipal,
    shortcut: &Shortcut,
    secret: Option<&Secret>,
    setting: &Setting,
) -> Result<bool, Error> {
    let Some((target, credential)) = shortcut.secret else {
        return Ok(true);
    };
    let Some(secret) = secret else {
        return Ok(false);
    };
    if !secrets::owned_by(secret, sp) || credentials::key_id(secret) != Some(&credential.key_id) {
        return Ok(false);
    }
    let kind = Kind::of(&sp.spec);
    let expect = match (kind, &credential.thumbprint, &credential.hint) {
        (Kind::Certificate, Some(print), _) => Expect::Thumbprint(print),
        (Kind::Password, _, Some(hint)) => Expect::Hint(hint),
        _ => Expect::Any,
    };
    Ok(match credentials::held(secret, target, kind, expect) {
        Some(Held { text: None, .. }) => true,
        Some(held @ Held { text: Some(_), .. }) => {
            let text = held.text.as_deref().unwrap_or_default();
            held.format == target.format
                && setting
                    .delivery(sp, shortcut.app_id, target)
                    .render(text)
                    .map_err(Error::Invalid)?
                    == held.as_text()
        }
        None => false,
    })
}

/// The shortcut's check of the TLS Secret a certificate comes from (`source`, None when the spec names
/// none): it still holds the certificate delivered. A renewal takes the full path, which follows it.
pub fn source_unchanged(
    shortcut: &Shortcut,
    source: Option<&crate::azure::certificate::Material>,
) -> bool {
    let delivered = shortcut.credential.and_then(|c| c.thumbprint.as_deref());
    source.is_none_or(|m| delivered.is_some_and(|d| d.eq_ignore_ascii_case(&m.thumbprint_hex())))
}

/// The shortcut's check of the vaults (what `gather::vaults` read, in spec order): each still holds the
/// delivered password in its newest version, as the spec says, and nothing else of ours is enabled.
pub fn vaults_unchanged(
    sp: &ServicePrincipal,
    shortcut: &Shortcut,
    cluster_id: &str,
    vaults: &[Vec<crate::azure::keyvault::SecretVersion>],
) -> bool {
    use kube::ResourceExt;
    let Some(credential) = shortcut.credential else {
        return vaults.is_empty();
    };
    let (ns, name) = (sp.namespace().unwrap_or_default(), sp.name_any());
    let owner = key_vault::owner_mark(cluster_id, &ns, "ServicePrincipal", &name);
    let key = credential.key_id.as_str();
    sp.spec
        .key_vault_secrets
        .iter()
        .zip(vaults)
        .all(|(target, versions)| {
            key_vault::decide("", target, versions, &owner, Some(key), &[key])
                .is_ok_and(|d| !d.write && d.disable.is_empty())
        })
}

/// The application's tags: the operator's ownership marks, then the spec's, which may not imitate them.
pub fn tags(sp: &ServicePrincipal, cluster_id: &str) -> Result<Vec<String>, Error> {
    use kube::ResourceExt;
    if let Some((i, tag)) = sp
        .spec
        .tags
        .iter()
        .enumerate()
        .find(|(_, t)| t.starts_with(naming::MARK_PREFIX))
    {
        return Err(Error::Invalid(format!(
            "spec.tags[{i}]: {tag:?}: tags beginning {} are the operator's ownership marks",
            naming::MARK_PREFIX
        )));
    }
    let mut tags = naming::ownership_tags(
        cluster_id,
        &sp.namespace().unwrap_or_default(),
        &sp.name_any(),
    );
    tags.extend(sp.spec.tags.iter().cloned());
    Ok(tags)
}

/// The service principal: found, or to create.
#[derive(Debug, PartialEq)]
pub enum Principal {
    Found(String),
    Create,
}

/// What `act` does once the application is as the spec says, in this order. A failure in a later part is
/// returned only after the earlier parts are done, as one pass through them would.
#[derive(Debug)]
pub struct Plan {
    pub principal: Principal,
    pub federated: Result<FederatedPlan, Error>,
    pub password: Result<PasswordPlan, Error>,
}

pub fn plan(sp: &ServicePrincipal, gathered: &Gathered, setting: &Setting) -> Plan {
    Plan {
        principal: match &gathered.principal {
            Some(p) => Principal::Found(p.id.clone()),
            None => Principal::Create,
        },
        federated: federated::plan(
            sp,
            &gathered.app.app_id,
            &gathered.federated,
            gathered.all_ours,
        ),
        password: password::plan(sp, gathered, setting),
    }
}

/// The status of a converged object: what it holds in Azure, the password its Secret delivers (None when no
/// Secret is asked for), and Ready.
pub fn ready_status(
    sp: &ServicePrincipal,
    app: &Application,
    principal_id: &str,
    tenant_id: &str,
    federated: Vec<String>,
    delivered: Option<&AppCredential>,
    now: Time,
) -> ServicePrincipalStatus {
    let mut status = sp.status.clone().unwrap_or_default();
    status.app_id = Some(app.app_id.clone());
    status.object_id = Some(app.id.clone());
    status.service_principal_id = Some(principal_id.to_string());
    status.tenant_id = Some(tenant_id.to_string());
    status.federated_credentials = federated;
    status.observed_generation = sp.metadata.generation;
    match delivered {
        Some(delivered) => {
            status.secret_name = sp.spec.secret.as_ref().map(|t| t.name.clone());
            status.credential = Some(CredentialStatus {
                key_id: delivered.key_id.clone(),
                hint: delivered.hint.clone(),
                thumbprint: credentials::thumbprint_hex(delivered),
                display_name: delivered.display_name.clone(),
                start_date_time: delivered.start_date_time.map(Time),
                end_date_time: delivered.end_date_time.map(Time),
            });
        }
        None => {
            status.secret_name = None;
            status.credential = None;
        }
    }
    let message = format!("application {} is ready", app.app_id);
    conditions::summarize(
        &mut status.conditions,
        Progress::Ready(&message),
        sp.metadata.generation,
        now,
    );
    status
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use serde_json::json;

    use super::*;
    use crate::{
        azure::graph::{self, FederatedIdentityCredential},
        controller::{reconcile::Failure as _, service_principal::password::Deliver},
        fixtures::{
            NAMESPACE, application, delivered_secret, key_id, owned_by, password, public_cloud,
            secret_text, service_principal_with, t0,
        },
    };

    /// At `fixtures::t0()`, in the tenant `fixtures::delivered_secret` names.
    fn setting(cloud: &Cloud) -> Setting<'_> {
        Setting {
            tenant_id: "tenant",
            cloud,
            now: t0(),
        }
    }

    /// Password `serial` of the object `web`, valid for a year from t0.
    fn p(serial: u64) -> AppCredential {
        password("web", serial, t0(), 365)
    }

    fn fic(name: &str, subject: &str) -> FederatedIdentityCredential {
        FederatedIdentityCredential {
            id: format!("id-{name}"),
            name: name.into(),
            issuer: "https://issuer".into(),
            subject: subject.into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            description: None,
        }
    }

    /// The object `web` with `spec` set; its Secret is `web`, in the env format, unless `spec` says otherwise.
    fn web(spec: serde_json::Value) -> ServicePrincipal {
        service_principal_with("web", spec)
    }

    /// What gather finds for `web` in the steady state: its application with `passwords`, its service
    /// principal, no federated credential, `secret` (owned by `web` when given), no rotation.
    fn found(passwords: Vec<AppCredential>, secret: Option<Secret>) -> Gathered {
        Gathered {
            app: application("web", passwords),
            all_ours: true,
            principal: Some(graph::ServicePrincipal {
                id: "principal-web".into(),
                app_id: "app-web".into(),
            }),
            federated: vec![],
            secret: secret.map(|s| owned_by(s, &web(json!({})))),
            rotated_by: None,
            vaults: vec![],
            vault_owner: String::new(),
            source: None,
        }
    }

    fn fics(record: Option<&[&str]>, upsert: &[&str], delete: &[&str]) -> String {
        format!("record {record:?} upsert {upsert:?} delete {delete:?}")
    }

    /// The plan in words: the service principal, the federated credentials, the password, and what is removed.
    fn outline(plan: &Plan) -> (String, String, String, Vec<String>) {
        let principal = match &plan.principal {
            Principal::Found(id) => format!("found {id}"),
            Principal::Create => "create".into(),
        };
        let federated = match &plan.federated {
            Err(e) => format!("error {}", e.reason()),
            Ok(f) => {
                let upsert: Vec<&str> = f.upsert.iter().map(|c| c.name.as_str()).collect();
                let delete: Vec<&str> = f.delete.iter().map(String::as_str).collect();
                let record: Option<Vec<&str>> = f
                    .record
                    .as_ref()
                    .map(|r| r.iter().map(String::as_str).collect());
                fics(record.as_deref(), &upsert, &delete)
            }
        };
        let (password, removed) = match &plan.password {
            Err(e) => (format!("error {}", e.reason()), vec![]),
            Ok(PasswordPlan::Withdraw(keys)) => (
                "withdraw".into(),
                keys.iter().map(|(_, k)| k.clone()).collect(),
            ),
            Ok(PasswordPlan::Deliver { deliver, stale }) => {
                let what = match deliver {
                    Deliver::Keep(p) => format!("keep {}", p.key_id),
                    Deliver::Rerender(p, data) => format!("rerender {} {:?}", p.key_id, data.0),
                    Deliver::Issue { display_name, end } => format!(
                        "issue #{} for {}d",
                        naming::password_serial(display_name, NAMESPACE, "web").unwrap_or(0),
                        (end.as_second() - t0().as_second()) / 86400
                    ),
                };
                (what, stale.iter().map(|(_, k)| k.clone()).collect())
            }
        };
        (principal, federated, password, removed)
    }

    struct Case {
        name: &'static str,
        sp: ServicePrincipal,
        gathered: Gathered,
        principal: &'static str,
        federated: String,
        password: String,
        removed: Vec<String>,
    }

    fn case(name: &'static str, sp: ServicePrincipal, gathered: Gathered) -> Case {
        Case {
            name,
            sp,
            gathered,
            principal: "found principal-web",
            federated: fics(None, &[], &[]),
            password: String::new(),
            removed: vec![],
        }
    }

    impl Case {
        fn principal(mut self, principal: &'static str) -> Self {
            self.principal = principal;
            self
        }
        fn federated(mut self, federated: String) -> Self {
            self.federated = federated;
            self
        }
        fn password(mut self, password: &str, removed: &[u64]) -> Self {
            self.password = password.into();
            self.removed = removed.iter().map(|s| key_id("web", *s)).collect();
            self
        }
    }

    fn cases() -> Vec<Case> {
        let env = web(json!({}));
        let rotated = |mut g: Gathered| {
            g.rotated_by = Some("rot".into());
            g
        };
        let mut edited = delivered_secret("web", "web", 1);
        edited.data.as_mut().unwrap().insert(
            "AZURE_CLIENT_SECRET".into(),
            k8s_openapi::ByteString(b"edited by hand".to_vec()),
        );
        let mut foreign = delivered_secret("web", "web", 1);
        foreign.metadata.owner_references = None;
        let foreign = Gathered {
            secret: Some(foreign),
            ..found(vec![p(1)], None)
        };
        let fresh = Gathered {
            principal: None,
            ..found(vec![], None)
        };
        vec![
            case("a fresh create", env.clone(), fresh.clone())
                .principal("create")
                .password("issue #1 for 365d", &[]),
            case("a fresh create with a lifetime", web(json!({"credentialLifetime": "720h"})), fresh)
                .principal("create")
                .password("issue #1 for 30d", &[]),
            case("the steady state", env.clone(), found(vec![p(1)], Some(delivered_secret("web", "web", 1))))
                .password("keep key-web-1", &[]),
            case(
                "a crash after addPassword, before the Secret write: the Secret absent",
                env.clone(),
                found(vec![p(1)], None),
            )
            .password("issue #2 for 365d", &[1]),
            case(
                "a crash after addPassword, before the Secret write: the Secret holds another key",
                env.clone(),
                found(vec![p(2)], Some(delivered_secret("web", "other", 1))),
            )
            .password("issue #3 for 365d", &[2]),
            case(
                "a crash after addPassword of the next password: the stray one goes, the delivered one stays",
                env.clone(),
                found(vec![p(1), p(2)], Some(delivered_secret("web", "web", 1))),
            )
            .password("keep key-web-1", &[2]),
            case(
                "a crash after the Secret write, before the status write: status catches up",
                with_status(env.clone(), 1),
                found(vec![p(1), p(2)], Some(delivered_secret("web", "web", 2))),
            )
            .password("keep key-web-2", &[1]),
            case("a Secret edited", env.clone(), found(vec![p(1)], Some(edited)))
                .password("issue #2 for 365d", &[1]),
            case("a Secret lost", with_status(env.clone(), 1), found(vec![p(1)], None))
                .password("issue #2 for 365d", &[1]),
            case(
                "the Secret's format changed: re-rendered, same password",
                web(json!({"secret": {"format": "az"}})),
                found(vec![p(1)], Some(delivered_secret("web", "web", 1))),
            )
            .password(
                &format!(
                    "rerender key-web-1 {{\"appId\": \"app-web\", \"displayName\": \"web-app\", \"password\": \"{}\", \"tenant\": \"tenant\"}}",
                    secret_text("web", 1)
                ),
                &[],
            ),
            case(
                "a CredentialRotation manages the password: a lost Secret is its to repair",
                env.clone(),
                rotated(found(vec![p(1)], None)),
            )
            .password("error WaitingForRotation", &[]),
            case(
                "a CredentialRotation manages the password: its previous one stays through the overlap",
                env.clone(),
                rotated(found(vec![p(1), p(2)], Some(delivered_secret("web", "web", 2)))),
            )
            .password("keep key-web-2", &[]),
            case(
                "a CredentialRotation on a fresh object: the first password is still issued here",
                env.clone(),
                rotated(found(vec![], None)),
            )
            .password("issue #1 for 365d", &[]),
            case(
                "no Secret asked for: every password of ours goes",
                web(json!({"secret": null})),
                found(vec![p(1), p(2)], None),
            )
            .password("withdraw", &[1, 2]),
            case(
                "stale passwords removed",
                env.clone(),
                found(vec![p(1), p(2), p(3)], Some(delivered_secret("web", "web", 3))),
            )
            .password("keep key-web-3", &[1, 2]),
            case("someone else's Secret", env.clone(), foreign)
                .password("error SecretConflict", &[]),
            case(
                "a Secret that cannot be rendered: no password is added",
                web(json!({"secret": {"format": "template", "templates": {"k": "{{ nope }}"}}})),
                found(vec![], None),
            )
            .password("error InvalidSpec", &[]),
            case(
                "a Secret over Kubernetes' size limit: no password is added",
                web(json!({"secret": {"format": "template", "templates": {
                    "a": "x".repeat(600 * 1024), "b": "x".repeat(600 * 1024)}}})),
                found(vec![], None),
            )
            .password("error InvalidSpec", &[]),
        ]
        .into_iter()
        .chain(federated_cases())
        .collect()
    }

    /// `sp` with the status a converged reconcile wrote for password `serial`.
    fn with_status(mut sp: ServicePrincipal, serial: u64) -> ServicePrincipal {
        let status = ready_status(
            &sp,
            &application("web", vec![p(serial)]),
            "principal-web",
            "tenant",
            vec![],
            Some(&p(serial)),
            Time(t0()),
        );
        sp.status = Some(status);
        sp
    }

    fn federated_cases() -> Vec<Case> {
        let spec = |names: &[&str]| {
            let list: Vec<_> = names
                .iter()
                .map(|n| json!({"name": n, "issuer": "https://issuer", "subject": "s"}))
                .collect();
            json!({"federatedCredentials": list})
        };
        let steady = || found(vec![p(1)], Some(delivered_secret("web", "web", 1)));
        let with = |current: Vec<FederatedIdentityCredential>, all_ours: bool| Gathered {
            federated: current,
            all_ours,
            ..steady()
        };
        let adopter = |names: &[&str], added: &[&str]| {
            let mut sp = web(spec(names));
            sp.status = Some(ServicePrincipalStatus {
                federated_credentials: added.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            });
            sp
        };
        vec![
            case(
                "federated credentials added, changed and removed on a created application",
                web(spec(&["a", "b", "same"])),
                with(vec![fic("b", "old"), fic("c", "s"), fic("same", "s")], true),
            )
            .federated(fics(None, &["a", "b"], &["c"]))
            .password("keep key-web-1", &[]),
            case(
                "federated credentials on an adopted application: names recorded first, only ours removed",
                adopter(&["a"], &["c"]),
                with(vec![fic("c", "s"), fic("theirs", "s")], false),
            )
            .federated(fics(Some(&["c", "a"]), &["a"], &["c"]))
            .password("keep key-web-1", &[]),
            case(
                "someone else's federated credential of the same name: Conflict",
                adopter(&["theirs"], &[]),
                with(vec![fic("Theirs", "s")], false),
            )
            .federated("error Conflict".into())
            .password("keep key-web-1", &[]),
        ]
    }

    /// Without a Secret the first vault holds the password: what it holds is kept, nothing there means a new
    /// one, and under a rotation nothing is removed (nor issued over its passwords).
    #[test]
    fn without_a_secret_the_first_vault_decides() {
        use crate::azure::keyvault::{Attributes, SecretVersion};
        let cloud = public_cloud();
        let setting = setting(&cloud);
        let vault = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv";
        let sp = web(json!({"secret": null, "keyVaultSecrets": [{"vault": vault, "name": "web"}]}));
        assert!(sp.spec.secret.is_none());
        let holding = |p: &AppCredential| SecretVersion {
            id: "https://kv.vault.azure.net/secrets/web/v1".into(),
            attributes: Attributes {
                enabled: Some(true),
                created: Some(1),
                ..Attributes::default()
            },
            tags: Some(
                [
                    (key_vault::OWNER_TAG, "owner"),
                    (key_vault::KEY_ID_TAG, p.key_id.as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            content_type: Some("text/plain".into()),
        };
        let in_vault =
            |passwords: Vec<AppCredential>, versions: Vec<SecretVersion>, rotated: bool| {
                let mut g = found(passwords, None);
                g.vaults = vec![versions];
                g.vault_owner = "owner".into();
                g.rotated_by = rotated.then(|| "rot".to_string());
                g
            };
        let outline_of = |g: &Gathered| {
            let (_, _, password, removed) = outline(&plan(&sp, g, &setting));
            (password, removed)
        };
        // name, what was gathered, the password plan and the passwords it removes.
        type Case = (&'static str, Gathered, (&'static str, Vec<String>));
        let mut foreign = holding(&p(1));
        foreign.tags.as_mut().unwrap().remove(key_vault::OWNER_TAG);
        let cases: [Case; 5] = [
            (
                "an empty vault: a new password",
                in_vault(vec![], vec![], false),
                ("issue #1 for 365d", vec![]),
            ),
            (
                "the vault holds 1: kept, 2 goes",
                in_vault(vec![p(1), p(2)], vec![holding(&p(1))], false),
                ("keep key-web-1", vec![key_id("web", 2)]),
            ),
            (
                "under a rotation: kept, nothing removed",
                in_vault(vec![p(1), p(2)], vec![holding(&p(1))], true),
                ("keep key-web-1", vec![]),
            ),
            (
                "under a rotation the vault holding none of its passwords waits for it",
                in_vault(vec![p(1)], vec![], true),
                ("error WaitingForRotation", vec![]),
            ),
            (
                "a vault someone else wrote to: nothing is issued",
                in_vault(vec![], vec![foreign], false),
                ("error Conflict", vec![]),
            ),
        ];
        for (name, gathered, (password, removed)) in cases {
            let (got, got_removed) = outline_of(&gathered);
            assert_eq!((got.as_str(), got_removed), (password, removed), "{name}");
        }
    }

    #[test]
    fn the_plan_for_each_state_of_azure_and_the_secret() {
        let cloud = public_cloud();
        let setting = setting(&cloud);
        for case in cases() {
            let plan = plan(&case.sp, &case.gathered, &setting);
            let (principal, federated, password, removed) = outline(&plan);
            assert_eq!(principal, case.principal, "{}: principal", case.name);
            assert_eq!(federated, case.federated, "{}: federated", case.name);
            assert_eq!(password, case.password, "{}: password", case.name);
            assert_eq!(removed, case.removed, "{}: removed", case.name);
            // The status names the password the Secret delivers, whatever the status said before.
            if let Ok(PasswordPlan::Deliver { deliver, .. }) = &plan.password
                && let Some(kept) = deliver.kept()
            {
                let status = ready_status(
                    &case.sp,
                    &case.gathered.app,
                    "principal-web",
                    "tenant",
                    vec![],
                    Some(kept),
                    Time(t0()),
                );
                let credential = status.credential.expect("a credential");
                assert_eq!(credential.key_id, kept.key_id, "{}: status", case.name);
                assert!(conditions::is_true(&status.conditions, conditions::READY));
            }
            // Whether gather reads the rotated-by annotation: exactly when a password of ours is not kept.
            let asks = password::asks_rotation(
                &case.sp,
                &case.gathered.app,
                case.gathered.secret.as_ref(),
                None,
                &setting,
            );
            let others = match &plan.password {
                Ok(PasswordPlan::Deliver { deliver, .. }) => {
                    let ours =
                        credentials::ours(&case.gathered.app, Kind::Password, NAMESPACE, "web");
                    ours.iter()
                        .any(|p| Some(&p.key_id) != deliver.kept().map(|k| &k.key_id))
                }
                Ok(PasswordPlan::Withdraw(_)) => false,
                // Issuing under a rotation: the read is what stops it.
                Err(e) => e.reason() == "WaitingForRotation",
            };
            assert_eq!(
                asks, others,
                "{}: asks whether a rotation manages the passwords",
                case.name
            );
        }
    }

    /// What the shortcut does for `sp` when the drift feeds vouch for it and the Secret read finds `secret`.
    fn shortcut_outcome(
        sp: &ServicePrincipal,
        secret: Option<Secret>,
        setting: &Setting,
    ) -> String {
        let Some(shortcut) = shortcut(sp) else {
            return "full path, nothing read".into();
        };
        let read = if shortcut.secret.is_some() {
            "read the Secret, "
        } else {
            ""
        };
        let secret = secret.filter(|_| shortcut.secret.is_some());
        match unchanged(sp, &shortcut, secret.as_ref(), setting) {
            Ok(true) => format!("{read}unchanged"),
            Ok(false) => format!("{read}full path"),
            Err(e) => format!("{read}error {}", e.reason()),
        }
    }

    #[test]
    fn the_shortcut_trusts_only_a_secret_that_still_holds_the_delivered_password() {
        let cloud = public_cloud();
        let setting = setting(&cloud);
        let converged = with_status(web(json!({})), 1);
        let mine = |s: Secret| Some(owned_by(s, &converged));
        let mut edited = delivered_secret("web", "web", 1);
        edited.data.as_mut().unwrap().insert(
            "AZURE_CLIENT_SECRET".into(),
            k8s_openapi::ByteString(b"edited by hand".to_vec()),
        );
        let mut regenerated = converged.clone();
        regenerated.metadata.generation = Some(2);
        let mut failing = converged.clone();
        failing.status.as_mut().unwrap().conditions = vec![Condition {
            type_: conditions::READY.into(),
            status: "False".into(),
            reason: "Throttled".into(),
            message: String::new(),
            last_transition_time: Time(t0()),
            observed_generation: Some(1),
        }];
        let mut reformatted = converged.clone();
        reformatted.spec.secret.as_mut().unwrap().format = crate::api::SecretFormat::Az;
        let mut renamed = converged.clone();
        renamed.spec.secret.as_mut().unwrap().name = "elsewhere".into();
        let mut unasked = web(json!({"secret": null}));
        unasked.status = Some(ready_status(
            &unasked,
            &application("web", vec![]),
            "principal-web",
            "tenant",
            vec![],
            None,
            Time(t0()),
        ));
        let table = [
            (
                "never reconciled",
                web(json!({})),
                None,
                "full path, nothing read",
            ),
            (
                "a new generation",
                regenerated,
                mine(delivered_secret("web", "web", 1)),
                "full path, nothing read",
            ),
            (
                "not Ready",
                failing,
                mine(delivered_secret("web", "web", 1)),
                "full path, nothing read",
            ),
            (
                "the Secret renamed",
                renamed,
                mine(delivered_secret("web", "web", 1)),
                "full path, nothing read",
            ),
            ("no Secret asked for", unasked, None, "unchanged"),
            (
                "the steady state",
                converged.clone(),
                mine(delivered_secret("web", "web", 1)),
                "read the Secret, unchanged",
            ),
            (
                "the Secret lost",
                converged.clone(),
                None,
                "read the Secret, full path",
            ),
            (
                "the Secret holds another key",
                converged.clone(),
                mine(delivered_secret("web", "web", 2)),
                "read the Secret, full path",
            ),
            (
                "the Secret edited",
                converged.clone(),
                mine(edited),
                "read the Secret, full path",
            ),
            (
                "the Secret someone else's",
                converged.clone(),
                Some(delivered_secret("web", "web", 1)),
                "read the Secret, full path",
            ),
            (
                "the format changed",
                reformatted,
                mine(delivered_secret("web", "web", 1)),
                "read the Secret, full path",
            ),
        ];
        for (name, sp, secret, want) in table {
            assert_eq!(shortcut_outcome(&sp, secret, &setting), want, "{name}");
        }
    }

    #[test]
    fn a_tag_imitating_the_ownership_marks_is_refused() {
        let sp = web(json!({"tags": ["team=a", format!("{}cluster=x", naming::MARK_PREFIX)]}));
        let e = tags(&sp, "c1").unwrap_err();
        assert!(e.to_string().starts_with("spec.tags[1]:"), "{e}");
        let sp = web(json!({"tags": ["team=a"]}));
        let tags = tags(&sp, "c1").unwrap();
        assert_eq!(tags.last().map(String::as_str), Some("team=a"));
        assert_eq!(
            &tags[..tags.len() - 1],
            naming::ownership_tags("c1", NAMESPACE, "web")
        );
    }

    /// A certificate credential from a TLS Secret: `web` issued certificate 1 (`old`) and, before it switched
    /// to certificates, password 1. Its Secret holds `held` under certificate 1's key id.
    fn from_tls(held: &Material, source: &Material, rotated: bool) -> (ServicePrincipal, Gathered) {
        let sp = web(json!({"certificate": {"secretRef": {"name": "web-tls"}}}));
        let cloud = public_cloud();
        let setting = setting(&cloud);
        let target = sp.spec.secret.clone().unwrap();
        let data = setting
            .delivery(&sp, "app-web", &target)
            .render(&held.bundle())
            .unwrap();
        let mut secret = delivered_secret("web", "web", 1);
        secret.data = Some(
            data.into_iter()
                .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
                .collect(),
        );
        let mut gathered = found(vec![p(1)], Some(secret));
        gathered.app.key_credentials = vec![AppCredential {
            key_id: key_id("web", 1),
            display_name: Some(naming::password_name(NAMESPACE, "web", 1)),
            custom_key_identifier: Some(CERTIFICATES.0.thumbprint()),
            ..Default::default()
        }];
        gathered.source = Some(source.clone());
        gathered.rotated_by = rotated.then(|| "rot".to_string());
        (sp, gathered)
    }

    /// Two certificates, generated once for every test here (RSA keys take a moment).
    static CERTIFICATES: std::sync::LazyLock<(Material, Material)> =
        std::sync::LazyLock::new(|| {
            let make = |cn| {
                Material::generate(cn, t0(), t0() + SignedDuration::from_hours(24 * 365)).unwrap()
            };
            (make("old"), make("new"))
        });

    use crate::azure::certificate::Material;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn a_certificate_follows_its_tls_secret_unless_a_rotation_does() {
        let cloud = public_cloud();
        let setting = setting(&cloud);
        let (old, new) = (&CERTIFICATES.0, &CERTIFICATES.1);
        let password = key_id("web", 1);
        let cases = [
            (
                "the TLS Secret holds the delivered certificate: kept; the password from before the switch goes",
                from_tls(old, old, false),
                "keep key-web-1",
                vec![(Kind::Password, password.clone())],
            ),
            (
                "renewed: a new certificate from it, the old one and the password go",
                from_tls(old, new, false),
                "issue #2 for 365d",
                vec![
                    (Kind::Certificate, key_id("web", 1)),
                    (Kind::Password, password.clone()),
                ],
            ),
            (
                "renewed under a rotation: the rotation follows it with its overlap",
                from_tls(old, new, true),
                "keep key-web-1",
                vec![(Kind::Password, password.clone())],
            ),
            (
                "the Secret edited to hold another certificate under the same key id: issued again",
                from_tls(new, old, false),
                "issue #2 for 365d",
                vec![
                    (Kind::Certificate, key_id("web", 1)),
                    (Kind::Password, password.clone()),
                ],
            ),
        ];
        for (name, (sp, gathered), want, gone) in cases {
            let planned = plan(&sp, &gathered, &setting);
            let (_, _, got, _) = outline(&planned);
            assert_eq!(got, want, "{name}");
            let Ok(PasswordPlan::Deliver { stale, .. }) = planned.password else {
                panic!("{name}: a delivery");
            };
            assert_eq!(stale, gone, "{name}");
            let asks = password::asks_rotation(
                &sp,
                &gathered.app,
                gathered.secret.as_ref(),
                gathered.source.as_ref(),
                &setting,
            );
            // Whether a rotation manages it is read whenever the Secret's certificate would be replaced.
            let replaced = !name.starts_with("the TLS Secret holds");
            assert_eq!(asks, replaced, "{name}: reads the rotation");
        }
    }

    #[test]
    fn status_names_a_certificate_by_its_thumbprint_and_never_its_key() {
        let (sp, gathered) = from_tls(&CERTIFICATES.0, &CERTIFICATES.0, false);
        let delivered = &gathered.app.key_credentials[0];
        let status = ready_status(
            &sp,
            &gathered.app,
            "p",
            "t",
            vec![],
            Some(delivered),
            Time(t0()),
        );
        let credential = status.credential.clone().unwrap();
        assert_eq!(credential.thumbprint, Some(CERTIFICATES.0.thumbprint_hex()));
        assert_eq!(credential.hint, None);
        let shown = serde_json::to_string(&status).unwrap();
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains("BEGIN"),
            "{shown}"
        );
        let mut sp = sp;
        sp.status = Some(status);
        let shortcut = shortcut(&sp).expect("a shortcut for a Ready object");
        assert!(
            source_unchanged(&shortcut, Some(&CERTIFICATES.0)),
            "the same certificate"
        );
        assert!(
            !source_unchanged(&shortcut, Some(&CERTIFICATES.1)),
            "a renewal takes the full path"
        );
        assert!(
            source_unchanged(&shortcut, None),
            "a generated certificate has no source"
        );
    }
}
