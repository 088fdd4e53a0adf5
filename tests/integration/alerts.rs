//! The chart's alerts use metrics the operator really exports, under their exported names.

use entra_operator::telemetry::metrics::Metrics;

#[test]
fn the_sample_alerts_use_metrics_the_operator_exports() {
    let path = format!(
        "{}/charts/entra-operator/files/alerts.yaml",
        crate::support::MANIFEST_DIR
    );
    let rule: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let metrics = Metrics::default();
    metrics.set_expiry("CredentialRotation", "ns", "name", Some(1.0));
    metrics.rotated("failed");
    metrics.set_vault_expiry(
        ["ServicePrincipal", "ns", "name"],
        "kv",
        "secret",
        Some(1.0),
    );
    metrics.set_watched_credentials(
        "watch",
        &[entra_operator::controller::credential_watch::plan::Series {
            app_id: "app".into(),
            key_id: "key".into(),
            kind: entra_operator::api::credential_watch::CredentialKind::Password,
            expiry_seconds: 1.0,
        }],
    );
    let exported = metrics.render();
    let rules = rule["groups"][0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 5);
    assert!(
        rules
            .iter()
            .any(|r| r["alert"] == "EntraWatchedCredentialExpiresIn14Days"),
        "the CredentialWatch alert is there"
    );
    let name = regex::Regex::new(r"entra_operator_[a-z_]+").unwrap();
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        let used: Vec<&str> = name.find_iter(expr).map(|m| m.as_str()).collect();
        assert!(!used.is_empty(), "{expr}");
        for metric in used {
            assert!(
                exported.contains(&format!("\n{metric}{{")),
                "{} uses {metric}, which /metrics does not export:\n{exported}",
                r["alert"]
            );
        }
    }
}
