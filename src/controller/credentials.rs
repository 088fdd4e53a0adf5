//! The operator's credentials on an application (client secrets, or certificates), one home for both
//! controllers that issue them (the ServicePrincipal's first one, the CredentialRotation's next ones): which
//! are an object's, the next serial, the expiry of a new one, what a Secret holds of one, and rendering one
//! for its Secret. A certificate is handled as a password is: its "text" is its PEM (private key and
//! certificate), and what recognises it in a Secret is its thumbprint instead of a password's hint.
//!
//! Which credential is whose lives in its displayName (`naming::password_name`), which one a Secret holds in
//! the Secret's key-id annotation; nothing here keeps state.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::core::v1::Secret,
    jiff::{SignedDuration, Timestamp},
};
use kube::ResourceExt;
use serde_json::json;

use super::{naming, secret_format, secrets};
use crate::{
    api::{
        SecretFormat, SecretTarget, ServicePrincipalSpec,
        protocol::{FORMAT_ANNOTATION, KEY_ID_ANNOTATION, TEMPLATES_ANNOTATION},
    },
    azure::{
        certificate::Material,
        cloud::Cloud,
        graph::{AppCredential, Application},
    },
};

/// Which of an application's credentials an object issues: client secrets (passwordCredentials) or
/// certificates (keyCredentials).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Password,
    Certificate,
}

impl Kind {
    /// The kind a ServicePrincipal's spec asks for.
    pub fn of(spec: &ServicePrincipalSpec) -> Kind {
        match spec.certificate {
            Some(_) => Kind::Certificate,
            None => Kind::Password,
        }
    }

    /// How events and messages name one.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Password => "password",
            Kind::Certificate => "certificate",
        }
    }

    /// The application's credentials of this kind.
    pub fn on(self, app: &Application) -> &[AppCredential] {
        match self {
            Kind::Password => &app.password_credentials,
            Kind::Certificate => &app.key_credentials,
        }
    }
}

/// A key credential's thumbprint as the portal and az print it (hex SHA-1), from Graph's customKeyIdentifier
/// (the same digest, base64).
pub fn thumbprint_hex(credential: &AppCredential) -> Option<String> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(credential.custom_key_identifier.as_deref()?)
        .ok()?;
    Some(raw.iter().map(|b| format!("{b:02X}")).collect())
}

/// How a Secret's text is recognised as the credential its key-id annotation names.
#[derive(Clone, Copy, Debug)]
pub enum Expect<'a> {
    /// Any text of the right shape (a password whose hint is unknown, or no check asked for).
    Any,
    /// A password whose text begins with Entra's hint: an edited Secret does not.
    Hint(&'a str),
    /// A certificate whose thumbprint (hex) this is: another certificate put in its place is not it.
    Thumbprint(&'a str),
}

impl Expect<'_> {
    pub fn admits(self, text: &str) -> bool {
        match self {
            Expect::Any => true,
            Expect::Hint(hint) => text.starts_with(hint),
            Expect::Thumbprint(print) => Material::from_pem(text)
                .is_ok_and(|m| m.thumbprint_hex().eq_ignore_ascii_case(print)),
        }
    }
}

/// A credential's lifetime when the spec sets none: one year, as `az ad sp create-for-rbac` gives.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Kubernetes refuses a Secret whose data exceeds 1 MiB.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// The credentials of `kind` that `owner` (in namespace `ns`) issued on `app`, oldest first.
pub fn ours<'a>(app: &'a Application, kind: Kind, ns: &str, owner: &str) -> Vec<&'a AppCredential> {
    let mut found: Vec<(u64, &AppCredential)> = kind
        .on(app)
        .iter()
        .filter_map(|p| serial(p, ns, owner).map(|s| (s, p)))
        .collect();
    found.sort_by_key(|(serial, _)| *serial);
    found.into_iter().map(|(_, p)| p).collect()
}

/// The serial in a password's displayName, if `owner` issued it.
pub fn serial(password: &AppCredential, ns: &str, owner: &str) -> Option<u64> {
    password
        .display_name
        .as_deref()
        .and_then(|d| naming::password_serial(d, ns, owner))
}

/// The serial of the next password `owner` issues: one past the highest of `ours`, so that a new password
/// always sorts after every one before it (how a rotation tells its own newer password from an older one).
pub fn next_serial(ours: &[&AppCredential], ns: &str, owner: &str) -> u64 {
    ours.iter()
        .filter_map(|p| serial(p, ns, owner))
        .max()
        .unwrap_or(0)
        + 1
}

/// When a password issued at `now` for `lifetime` expires. Checked: a lifetime past the end of time must not
/// panic the reconcile (admission bounds it, but a stored object may predate the bound), so such a lifetime
/// falls back to the default year.
pub fn expiry(now: Timestamp, lifetime: Duration) -> Timestamp {
    SignedDuration::try_from(lifetime)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or_else(|| now + SignedDuration::try_from(DEFAULT_LIFETIME).unwrap_or_default())
}

/// What a Secret holds of the password it names (by its key-id annotation). Its Debug shows the format and
/// the keys only: the text and the values are the password.
#[derive(Clone, PartialEq)]
pub struct Held {
    /// The secret text; None for a template, whose text cannot be read back.
    pub text: Option<String>,
    pub format: SecretFormat,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("text", &self.text.as_ref().map(|_| "<redacted>"))
            .field("format", &self.format)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Held {
    /// The data as text, to compare with a rendering.
    pub fn as_text(&self) -> BTreeMap<String, String> {
        self.data
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }
}

/// The key id a Secret says it holds.
pub fn key_id(secret: &Secret) -> Option<&String> {
    secret.annotations().get(KEY_ID_ANNOTATION)
}

/// Whether `secret` still holds the credential of `kind` it names, as `expect` recognises it: an edited
/// Secret no longer does. A template Secret stands as long as it was rendered from the templates `target`
/// still has.
pub fn held(secret: &Secret, target: &SecretTarget, kind: Kind, expect: Expect) -> Option<Held> {
    let annotation = |key: &str| secret.annotations().get(key).cloned();
    let format: SecretFormat =
        serde_json::from_value(json!(annotation(FORMAT_ANNOTATION)?)).ok()?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    match secret_format::extract_secret(format, &data, kind == Kind::Certificate) {
        Some(text) if !expect.admits(&text) => None,
        Some(text) => Some(Held {
            text: Some(text),
            format,
            data,
        }),
        None if format == SecretFormat::Template
            && target.format == SecretFormat::Template
            && annotation(TEMPLATES_ANNOTATION) == Some(secrets::templates_digest(target)) =>
        {
            Some(Held {
                text: None,
                format,
                data,
            })
        }
        None => None,
    }
}

/// What recognises `credential` of `kind` in a Secret.
pub fn expect(credential: &AppCredential, kind: Kind) -> Expect<'_> {
    match (kind, credential.hint.as_deref()) {
        (Kind::Password, Some(hint)) => Expect::Hint(hint),
        (Kind::Password, None) => Expect::Any,
        // Parsed back from the PEM in every case: a certificate's Secret is useless without its key.
        (Kind::Certificate, _) => Expect::Any,
    }
}

/// The one of `ours` (of `kind`) that `secret` names, with what the Secret holds of it (see [`held`]);
/// `check` says whether an edited text disqualifies it (a password's hint, a certificate's thumbprint).
pub fn delivered<'a>(
    secret: &Secret,
    ours: &[&'a AppCredential],
    target: &SecretTarget,
    kind: Kind,
    check: bool,
) -> Option<(&'a AppCredential, Held)> {
    let key_id = key_id(secret)?;
    let credential = *ours.iter().find(|p| &p.key_id == key_id)?;
    let print = thumbprint_hex(credential);
    let expect = match (check, kind, &print) {
        (false, _, _) => Expect::Any,
        (true, Kind::Certificate, Some(print)) => Expect::Thumbprint(print),
        (true, _, _) => expect(credential, kind),
    };
    held(secret, target, kind, expect).map(|h| (credential, h))
}

/// Everything a Secret's rendering needs besides the secret text.
pub struct Delivery<'a> {
    pub target: &'a SecretTarget,
    pub kind: Kind,
    pub client_id: &'a str,
    pub tenant_id: &'a str,
    pub display_name: &'a str,
    pub cloud: &'a Cloud,
}

impl Delivery<'_> {
    /// The Secret's data for `text` (a certificate's PEM), in the target's format; the error names the field
    /// that cannot render.
    pub fn render(&self, text: &str) -> Result<BTreeMap<String, String>, String> {
        let path = self.target.certificate_path();
        let secret = match self.kind {
            Kind::Password => secret_format::Secret::Password(text),
            Kind::Certificate => secret_format::Secret::Certificate {
                pem: text,
                path: &path,
            },
        };
        let credential = secret_format::Credential {
            client_id: self.client_id,
            secret,
            tenant_id: self.tenant_id,
            display_name: self.display_name,
            cloud: self.cloud,
        };
        secret_format::render(
            self.target.format,
            self.target.templates.as_ref(),
            &credential,
        )
        .map_err(|e| e.to_string())
    }

    /// Whether the spec can be delivered at all, checked before a credential exists so that a spec that
    /// cannot be delivered does not add one on every retry: it renders, and Kubernetes would take the
    /// result. The stand-in text is as long as Entra's secrets (40 characters) and then some; a certificate's
    /// stand-in is a PEM of the size an RSA 4096 key and certificate take.
    pub fn check(&self) -> Result<(), String> {
        let stand_in = match self.kind {
            Kind::Password => "x".repeat(64),
            Kind::Certificate => STAND_IN_PEM.replace('x', &"x".repeat(3000)),
        };
        deliverable(&self.render(&stand_in)?)
    }
}

/// The shape of a certificate credential's PEM, for `Delivery::check` ('x' stands for the base64 body).
const STAND_IN_PEM: &str = "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n\
                            -----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n";

/// Whether Kubernetes would take a Secret holding `data`.
pub fn deliverable(data: &BTreeMap<String, String>) -> Result<(), String> {
    let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_SECRET_BYTES {
        return Err(format!(
            "spec.secret.templates: the Secret would hold {size} bytes, over Kubernetes' limit of {MAX_SECRET_BYTES}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{ByteString, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    fn password(key: &str, name: Option<&str>) -> AppCredential {
        serde_json::from_value(json!({"keyId": key, "displayName": name, "hint": "abc"})).unwrap()
    }

    fn app(passwords: Vec<AppCredential>) -> Application {
        let mut app: Application =
            serde_json::from_value(json!({"id": "o", "appId": "a", "displayName": "d"})).unwrap();
        app.password_credentials = passwords;
        app
    }

    #[test]
    fn ours_are_the_owners_by_serial_and_the_next_serial_follows_the_highest() {
        let app = app(vec![
            password("k3", Some(&naming::password_name("ns", "a", 3))),
            password("other", Some(&naming::password_name("ns", "b", 9))),
            password("k1", Some(&naming::password_name("ns", "a", 1))),
            password("manual", Some("made by hand")),
            password("none", None),
        ]);
        let ours = ours(&app, Kind::Password, "ns", "a");
        let keys: Vec<_> = ours.iter().map(|p| p.key_id.as_str()).collect();
        assert_eq!(keys, ["k1", "k3"]);
        assert_eq!(next_serial(&ours, "ns", "a"), 4);
        assert_eq!(next_serial(&[], "ns", "a"), 1);
    }

    #[test]
    fn an_expiry_past_the_end_of_time_falls_back_to_a_year() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        assert_eq!(
            expiry(now, Duration::from_secs(3600)),
            now + SignedDuration::from_hours(1)
        );
        assert_eq!(
            expiry(now, Duration::from_secs(u64::MAX)),
            now + SignedDuration::from_hours(8760)
        );
    }

    fn secret(format: &str, data: &[(&str, &str)], key: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(
                    [
                        (KEY_ID_ANNOTATION.to_string(), key.to_string()),
                        (FORMAT_ANNOTATION.to_string(), format.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_secret_holds_the_password_it_names_until_its_text_is_edited() {
        let target: SecretTarget =
            serde_json::from_value(json!({"name": "s", "format": "env"})).unwrap();
        let p = password("k1", Some(&naming::password_name("ns", "a", 1)));
        let ours = [&p];
        let intact = secret("env", &[("AZURE_CLIENT_SECRET", "abcdef")], "k1");
        let (found, held) = delivered(&intact, &ours, &target, Kind::Password, true).expect("held");
        assert_eq!(found.key_id, "k1");
        assert_eq!(held.text.as_deref(), Some("abcdef"));
        let edited = secret("env", &[("AZURE_CLIENT_SECRET", "zzz")], "k1");
        assert!(delivered(&edited, &ours, &target, Kind::Password, true).is_none());
        assert!(
            delivered(&edited, &ours, &target, Kind::Password, false).is_some(),
            "without the hint check any text counts"
        );
        let unknown = secret("env", &[("AZURE_CLIENT_SECRET", "abcdef")], "k2");
        assert!(delivered(&unknown, &ours, &target, Kind::Password, true).is_none());
    }

    #[test]
    fn what_a_secret_holds_never_prints_its_password() {
        let target: SecretTarget =
            serde_json::from_value(json!({"name": "s", "format": "env"})).unwrap();
        let p = password("k1", Some(&naming::password_name("ns", "a", 1)));
        let secret = secret("env", &[("AZURE_CLIENT_SECRET", "abc-the-password")], "k1");
        let (_, held) = delivered(&secret, &[&p], &target, Kind::Password, true).expect("held");
        let shown = format!("{held:?}");
        assert!(!shown.contains("the-password"), "{shown}");
        assert!(shown.contains("AZURE_CLIENT_SECRET"), "{shown}");
    }

    #[test]
    fn a_secret_kubernetes_would_refuse_is_refused_before_a_password_exists() {
        let small = BTreeMap::from([("k".to_string(), "v".repeat(1000))]);
        assert!(deliverable(&small).is_ok());
        let big = BTreeMap::from([
            ("a".to_string(), "v".repeat(600 * 1024)),
            ("b".to_string(), "v".repeat(600 * 1024)),
        ]);
        let e = deliverable(&big).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.secret.templates") && e.contains("1048576"),
            "{e}"
        );
    }
}
