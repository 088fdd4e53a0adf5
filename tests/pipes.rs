//! The operator's commands end quietly when their reader closes the pipe (`entra-operator crdgen | head -1`):
//! exit 0, no "failed printing to stdout" panic. No control plane needed.

use std::{
    io::Read,
    process::{Command, Stdio},
};

#[test]
fn crdgen_into_a_closed_pipe_exits_zero_without_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_entra-operator"))
        .arg("crdgen")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte and close the read end, as `head -c1` does: the CRDs are far larger than a pipe's buffer,
    // so the operator is still writing when the reader goes.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "stderr: {stderr}");
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}
