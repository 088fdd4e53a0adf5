//! crds/ is generated from the Rust types; a change to one without the other fails here.

use std::path::Path;

use entra_operator::api;

use crate::support::MANIFEST_DIR;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(MANIFEST_DIR).join("crds");
    let generated: Vec<_> = api::crds()
        .iter()
        .map(|crd| (api::crd_file_name(crd), api::crd_yaml(crd).unwrap()))
        .collect();
    for (file, yaml) in &generated {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == *yaml,
            "crds/{file} is out of date with src/api: run `make crds` and commit the result"
        );
    }
    let mut stale: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !generated.iter().any(|(file, _)| file == name))
        .collect();
    stale.sort();
    assert!(
        stale.is_empty(),
        "crds/ holds files no type generates: {stale:?}"
    );
}

#[test]
fn crdgen_prints_what_is_committed() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_entra-operator"))
        .arg("crdgen")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed: String = api::crds()
        .iter()
        .map(|crd| api::crd_yaml(crd).unwrap())
        .collect();
    assert_eq!(printed, committed);
    assert_eq!(printed.matches("kind: CustomResourceDefinition").count(), 5);
}
