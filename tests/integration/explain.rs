//! `kubectl explain` teaches the API: every spec field's description, as the CRDs carry it, is shown.

use std::process::Command;

use entra_operator::api;

use crate::support::{admin_client, admin_kubeconfig, install_crds, testenv_bin};

fn normalise(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn explain(resource_path: &str, cache: &std::path::Path) -> String {
    // Discovery right after a CRD is established can lag; kubectl's own cache is kept per test run.
    let mut last = String::new();
    for _ in 0..20 {
        let out = Command::new(testenv_bin("kubectl"))
            .arg("--kubeconfig")
            .arg(admin_kubeconfig())
            .arg("--cache-dir")
            .arg(cache)
            .args(["explain", resource_path])
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("kubectl explain {resource_path} failed: {last}");
}

#[tokio::test]
async fn kubectl_explain_prints_every_spec_field_description() {
    let client = admin_client().await;
    install_crds(&client).await;
    let cache = tempfile::tempdir().unwrap();

    for crd in api::crds() {
        let plural = &crd.spec.names.plural;
        let schema = serde_json::to_value(
            &crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema,
        )
        .unwrap();
        let spec = &schema["properties"]["spec"];

        let kind_text = normalise(&explain(plural, cache.path()));
        let kind_description = normalise(schema["description"].as_str().unwrap());
        assert!(
            kind_text.contains(&kind_description),
            "`kubectl explain {plural}` lacks the kind's description:\n{kind_text}"
        );

        let text = normalise(&explain(&format!("{plural}.spec"), cache.path()));
        let fields = spec["properties"].as_object().unwrap();
        assert!(!fields.is_empty());
        for (field, prop) in fields {
            let description = prop["description"]
                .as_str()
                .unwrap_or_else(|| panic!("{plural}.spec.{field} has no description"));
            assert!(
                text.contains(&normalise(description)),
                "`kubectl explain {plural}.spec` does not show the description of {field}:\n{text}"
            );
        }
    }

    // Nested fields are explained too.
    let role = normalise(&explain("roledelegations.spec.role.custom", cache.path()));
    assert!(role.contains("assignableScopes"), "{role}");
    assert!(
        role.contains("Scopes where the role may be assigned"),
        "{role}"
    );
}
