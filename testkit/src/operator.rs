//! The one way the tests, the chaos soak and the scale benchmark run the operator binary: `entra-operator run
//! --log-format json` against a kubeconfig, with Azure settings given explicitly (none inherited, so that a run
//! never reaches for the public cloud), its JSON log either read line by line (to wait for a message) or
//! written to a file (a benchmark's thousands of objects), and the process killed if its owner panics.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;

/// The operator binary cargo built next to the running executable: an integration test runs from
/// `target/<profile>/deps/`, a bench binary from `target/<profile>/`, and `entra-operator` sits in
/// `target/<profile>/` for both (`cargo test` builds it for the integration tests; `make soak` builds it).
pub fn operator_bin() -> PathBuf {
    beside(&std::env::current_exe().expect("the running executable's path"))
}

/// `entra-operator` in the profile directory of the executable `exe`.
fn beside(exe: &Path) -> PathBuf {
    let mut dir = exe.parent().expect("an executable lives in a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps/ has a parent");
    }
    dir.join(format!("entra-operator{}", std::env::consts::EXE_SUFFIX))
}

/// How to start the operator. Without `clear_env` it inherits the caller's environment but for every
/// `AZURE_*` variable and `RUST_LOG` (the operator's default log level); with it, nothing at all.
pub struct Launch {
    binary: PathBuf,
    kubeconfig: PathBuf,
    env: Vec<(String, String)>,
    clear_env: bool,
    log_file: Option<PathBuf>,
}

impl Launch {
    pub fn new(binary: &Path, kubeconfig: &Path) -> Launch {
        Launch {
            binary: binary.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            env: vec![],
            clear_env: false,
            log_file: None,
        }
    }

    /// More environment; later entries win over earlier ones.
    pub fn env(mut self, env: &[(String, String)]) -> Launch {
        self.env.extend(env.iter().cloned());
        self
    }

    /// Inherit nothing: a benchmark's operator sees only what the benchmark sets.
    pub fn clear_env(mut self) -> Launch {
        self.clear_env = true;
        self
    }

    /// Write the log (stderr) to this file instead of reading it line by line: `wait_for` then has nothing
    /// to read.
    pub fn log_to(mut self, file: &Path) -> Launch {
        self.log_file = Some(file.to_path_buf());
        self
    }

    pub fn start(self) -> std::io::Result<Operator> {
        let mut cmd = Command::new(&self.binary);
        if self.clear_env {
            cmd.env_clear();
        } else {
            for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AZURE_")) {
                cmd.env_remove(key);
            }
            cmd.env_remove("RUST_LOG");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["run", "--log-format", "json", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .stdout(Stdio::null());
        let Some(file) = &self.log_file else {
            let mut child = cmd.stderr(Stdio::piped()).spawn()?;
            let lines = read_lines(child.stderr.take().expect("stderr is piped"));
            return Ok(Operator::new(child, lines));
        };
        let child = cmd.stderr(std::fs::File::create(file)?).spawn()?;
        // Nothing will ever arrive: the log goes to the file.
        let (_, lines) = mpsc::channel();
        Ok(Operator::new(child, lines))
    }
}

/// The operator's log lines, on a thread of their own so that reading never blocks the caller's runtime.
fn read_lines(stderr: std::process::ChildStderr) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A running `entra-operator run` whose JSON log lines arrive on a channel.
pub struct Operator {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Operator {
    fn new(child: Child, lines: mpsc::Receiver<String>) -> Operator {
        Operator {
            child,
            lines,
            seen: vec![],
        }
    }

    /// Starts the operator cargo built (see [`operator_bin`]) with only the given Azure settings: none are
    /// inherited, so that a test never reaches for the public cloud.
    pub fn start_with(kubeconfig: &Path, azure_env: &[(String, String)]) -> Self {
        Launch::new(&operator_bin(), kubeconfig)
            .env(azure_env)
            .start()
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status once it has exited, without waiting.
    pub fn exited(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for a log line whose message is `message`; returns it parsed.
    pub fn wait_for(&mut self, message: &str, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["message"] == message
                    {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no `{message}` log line within {timeout:?}; the operator said:\n{}",
            self.seen.join("\n")
        );
    }

    /// The log lines read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Takes every log line written so far, so that the next `wait_for` sees only what comes after.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Stops it as Kubernetes does (SIGTERM), checks that it exited cleanly, and returns its log.
    pub fn stop(self) -> Vec<String> {
        self.signal(Signal::SIGTERM);
        let (status, lines) = self.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "{}", lines.join("\n"));
        lines
    }

    /// Kills it (SIGKILL) and reaps it, when how it ends does not matter.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit and returns its status and the rest of its output.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread ends at EOF; collect what it still has.
                self.collect_rest();
                return (status, std::mem::take(&mut self.seen));
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                self.collect_rest();
                panic!(
                    "the operator did not exit within {timeout:?}:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn collect_rest(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
    }
}

/// A test that fails (panics) before it stops its operator must not leave the process running.
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_is_found_in_the_profile_directory_of_whoever_runs_it() {
        let suffix = std::env::consts::EXE_SUFFIX;
        let cases = [
            (
                "an integration test",
                "/repo/target/debug/deps/integration-0123abcd",
                "/repo/target/debug/entra-operator",
            ),
            (
                "a bench binary",
                "/repo/target/debug/chaos-soak",
                "/repo/target/debug/entra-operator",
            ),
            (
                "a release bench binary",
                "/elsewhere/release/operator-scale",
                "/elsewhere/release/entra-operator",
            ),
        ];
        for (who, exe, want) in cases {
            assert_eq!(
                beside(Path::new(exe)),
                PathBuf::from(format!("{want}{suffix}")),
                "{who}"
            );
        }
    }
}
