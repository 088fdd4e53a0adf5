//! Prometheus metrics: reconciliations, Azure calls, and when each delivered credential expires (the figure
//! to alert on before anything breaks).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AzureLabels {
    pub service: String,
    pub operation: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VaultLabels {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub vault: String,
    pub secret: String,
}

/// One credential of an application a CredentialWatch watches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchedLabels {
    pub watch: String,
    pub app_id: String,
    pub key_id: String,
    pub kind: String,
}

type Expiry = Gauge<f64, std::sync::atomic::AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub watched_expiry: Family<WatchedLabels, Expiry>,
    /// The series each watch exports now, so that a credential (or a watch) that goes takes its series along.
    watched_series: std::sync::Mutex<std::collections::HashMap<String, Vec<WatchedLabels>>>,
    pub reconciliations: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub azure_requests: Family<AzureLabels, Counter>,
    pub credential_expiry: Family<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub rotations: Family<ResultLabels, Counter>,
    pub vault_expiry: Family<VaultLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub credential_not_before: Family<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub credential_renewal: Family<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub credential_ready: Family<ObjectLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("entra_operator");
        let reconciliations = Family::<ReconcileLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        let azure_requests = Family::<AzureLabels, Counter>::default();
        let credential_expiry =
            Family::<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "reconciliations",
            "Reconciliations by kind and result (ok or an error reason)",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            reconcile_duration.clone(),
        );
        registry.register(
            "azure_requests",
            "Requests to Azure by service, operation and HTTP status",
            azure_requests.clone(),
        );
        registry.register(
            "credential_expiry_timestamp_seconds",
            "When the client secret an object delivered expires, as a Unix timestamp",
            credential_expiry.clone(),
        );
        let rotations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "credential_rotations",
            "Client-secret rotations by result: completed (published everywhere), or the step that failed",
            rotations.clone(),
        );
        let vault_expiry =
            Family::<VaultLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "key_vault_secret_expiry_timestamp_seconds",
            "When the client secret a Key Vault target's current version holds expires (the version's exp), as a \
             Unix timestamp",
            vault_expiry.clone(),
        );
        let credential_not_before =
            Family::<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "credential_not_before_timestamp_seconds",
            "When the current credential became valid (its startDateTime), as a Unix timestamp",
            credential_not_before.clone(),
        );
        let credential_renewal =
            Family::<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "credential_renewal_timestamp_seconds",
            "When a CredentialRotation's next rotation is due, as a Unix timestamp",
            credential_renewal.clone(),
        );
        let credential_ready = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "credential_ready",
            "1 when the object's current credential is published everywhere (Ready), 0 when not",
            credential_ready.clone(),
        );
        let watched_expiry = Family::<WatchedLabels, Expiry>::default();
        registry.register(
            "watched_credential_expiry_timestamp_seconds",
            "When a client secret (kind Password) or certificate (kind Certificate) of an application a \
             CredentialWatch watches expires, as a Unix timestamp",
            watched_expiry.clone(),
        );
        Metrics {
            credential_not_before,
            credential_renewal,
            credential_ready,
            watched_expiry,
            watched_series: Default::default(),
            vault_expiry,
            rotations,
            registry,
            reconciliations,
            reconcile_duration,
            azure_requests,
            credential_expiry,
        }
    }
}

impl Metrics {
    /// The text exposition format Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    pub fn azure_call(&self, service: &str, operation: &str, status: u16) {
        self.azure_requests
            .get_or_create(&AzureLabels {
                service: service.into(),
                operation: operation.into(),
                status: status.to_string(),
            })
            .inc();
    }

    pub fn reconciled(&self, kind: &str, result: &str, seconds: f64) {
        self.reconciliations
            .get_or_create(&ReconcileLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(seconds);
    }

    pub fn rotated(&self, result: &str) {
        self.rotations
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn set_expiry(&self, kind: &str, namespace: &str, name: &str, unix_seconds: Option<f64>) {
        let labels = ObjectLabels {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        match unix_seconds {
            Some(t) => {
                self.credential_expiry.get_or_create(&labels).set(t);
            }
            None => {
                self.credential_expiry.remove(&labels);
            }
        }
    }
}

/// What the metrics say of an object's current credential, as cert-manager's certificate metrics do; None
/// (or None fields) forgets a series.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CredentialTimes {
    pub not_before: Option<f64>,
    pub expiry: Option<f64>,
    pub renewal: Option<f64>,
    pub ready: bool,
}

impl Metrics {
    /// Sets every series of object `kind` `namespace/name`'s current credential; None forgets them (a
    /// deleted object).
    pub fn set_credential(&self, object: [&str; 3], times: Option<CredentialTimes>) {
        let [kind, namespace, name] = object;
        let labels = ObjectLabels {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        let times = times.unwrap_or_default();
        self.set_expiry(kind, namespace, name, times.expiry);
        for (family, value) in [
            (&self.credential_not_before, times.not_before),
            (&self.credential_renewal, times.renewal),
        ] {
            match value {
                Some(t) => {
                    family.get_or_create(&labels).set(t);
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
        match times.expiry {
            Some(_) => {
                self.credential_ready
                    .get_or_create(&labels)
                    .set(i64::from(times.ready));
            }
            None => {
                self.credential_ready.remove(&labels);
            }
        }
    }
}

impl Metrics {
    /// The expiry of what Key Vault target `vault`/`secret` of object `kind` `namespace/name` holds; None
    /// forgets it.
    pub fn set_vault_expiry(
        &self,
        object: [&str; 3],
        vault: &str,
        secret: &str,
        unix_seconds: Option<f64>,
    ) {
        let [kind, namespace, name] = object;
        let labels = VaultLabels {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            vault: vault.into(),
            secret: secret.into(),
        };
        match unix_seconds {
            Some(t) => {
                self.vault_expiry.get_or_create(&labels).set(t);
            }
            None => {
                self.vault_expiry.remove(&labels);
            }
        }
    }
}

impl Metrics {
    /// Sets the expiry series of CredentialWatch `watch` to exactly `series`: those it exported before and
    /// no longer reads (a credential removed from its application) are removed.
    pub fn set_watched_credentials(
        &self,
        watch: &str,
        series: &[crate::controller::credential_watch::plan::Series],
    ) {
        let labels: Vec<(WatchedLabels, f64)> = series
            .iter()
            .map(|s| {
                let labels = WatchedLabels {
                    watch: watch.into(),
                    app_id: s.app_id.clone(),
                    key_id: s.key_id.clone(),
                    kind: s.kind.as_str().into(),
                };
                (labels, s.expiry_seconds)
            })
            .collect();
        let mut known = self.watched_series.lock().expect("watched series lock");
        for old in known.remove(watch).unwrap_or_default() {
            if !labels.iter().any(|(l, _)| *l == old) {
                self.watched_expiry.remove(&old);
            }
        }
        for (l, t) in &labels {
            self.watched_expiry.get_or_create(l).set(*t);
        }
        known.insert(
            watch.to_string(),
            labels.into_iter().map(|(l, _)| l).collect(),
        );
    }

    /// Removes every series of CredentialWatch `watch` (deleted).
    pub fn forget_watch(&self, watch: &str) {
        self.retain_watches(|name| name != watch);
    }

    /// Keeps the series of the watches `keep` says still exist, and removes the others'.
    pub fn retain_watches(&self, keep: impl Fn(&str) -> bool) {
        let mut known = self.watched_series.lock().expect("watched series lock");
        known.retain(|watch, series| {
            let kept = keep(watch);
            if !kept {
                for l in series.iter() {
                    self.watched_expiry.remove(l);
                }
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_its_labels() {
        let m = Metrics::default();
        m.azure_call("graph", "addPassword", 200);
        m.reconciled("ServicePrincipal", "ok", 0.2);
        m.set_expiry("ServicePrincipal", "ns", "app", Some(1_800_000_000.0));
        let text = m.render();
        assert!(text.contains(r#"entra_operator_azure_requests_total{service="graph",operation="addPassword",status="200"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"entra_operator_reconciliations_total{kind="ServicePrincipal",result="ok"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"entra_operator_credential_expiry_timestamp_seconds{kind="ServicePrincipal",namespace="ns",name="app"} 1800000000"#), "{text}");
        m.set_vault_expiry(
            ["ServicePrincipal", "ns", "app"],
            "kv1",
            "app-secret",
            Some(1_800_000_000.0),
        );
        let text = m.render();
        assert!(text.contains(r#"entra_operator_key_vault_secret_expiry_timestamp_seconds{kind="ServicePrincipal",namespace="ns",name="app",vault="kv1",secret="app-secret"} 1800000000"#), "{text}");
        m.set_credential(
            ["CredentialRotation", "ns", "rot"],
            Some(CredentialTimes {
                not_before: Some(1_700_000_000.0),
                expiry: Some(1_800_000_000.0),
                renewal: Some(1_750_000_000.0),
                ready: true,
            }),
        );
        let text = m.render();
        for line in [
            r#"entra_operator_credential_not_before_timestamp_seconds{kind="CredentialRotation",namespace="ns",name="rot"} 1700000000"#,
            r#"entra_operator_credential_renewal_timestamp_seconds{kind="CredentialRotation",namespace="ns",name="rot"} 1750000000"#,
            r#"entra_operator_credential_ready{kind="CredentialRotation",namespace="ns",name="rot"} 1"#,
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        m.set_credential(["CredentialRotation", "ns", "rot"], None);
        assert!(
            !m.render().contains(r#"name="rot""#),
            "forgotten with the object"
        );
        m.set_vault_expiry(["ServicePrincipal", "ns", "app"], "kv1", "app-secret", None);
        m.set_expiry("ServicePrincipal", "ns", "app", None);
        assert!(
            !m.render().contains(r#"name="app""#),
            "a deleted object's expiry goes"
        );
    }

    #[test]
    fn watched_credentials_that_go_take_their_series_along() {
        use crate::{
            api::credential_watch::CredentialKind, controller::credential_watch::plan::Series,
        };
        let m = Metrics::default();
        let series = |key: &str, kind| Series {
            app_id: "app-1".into(),
            key_id: key.into(),
            kind,
            expiry_seconds: 1_800_000_000.0,
        };
        m.set_watched_credentials(
            "legacy",
            &[
                series("k1", CredentialKind::Password),
                series("k2", CredentialKind::Certificate),
            ],
        );
        m.set_watched_credentials("other", &[series("k9", CredentialKind::Password)]);
        let text = m.render();
        assert!(text.contains(r#"entra_operator_watched_credential_expiry_timestamp_seconds{watch="legacy",app_id="app-1",key_id="k2",kind="Certificate"} 1800000000"#), "{text}");
        // k1 removed from the application.
        m.set_watched_credentials("legacy", &[series("k2", CredentialKind::Certificate)]);
        let text = m.render();
        assert!(
            !text.contains(r#"key_id="k1""#) && text.contains(r#"key_id="k2""#),
            "{text}"
        );
        // The watch deleted; the other stays.
        m.forget_watch("legacy");
        let text = m.render();
        assert!(
            !text.contains(r#"watch="legacy""#) && text.contains(r#"watch="other""#),
            "{text}"
        );
        m.retain_watches(|_| false);
        assert!(!m.render().contains("watch=\"other\""));
    }
}
