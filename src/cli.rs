//! Command-line interface. Every flag can also be set through the environment variable shown in `--help`,
//! which is how the Helm chart configures the operator.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Kubernetes operator for Microsoft Entra ID service principals, the Azure roles they hold, and the rotation
/// of their client secrets.
#[derive(Debug, Parser)]
#[command(name = "entra-operator", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: connect to the Kubernetes API server and reconcile ServicePrincipal, RoleDelegation and
    /// CredentialRotation objects until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into a directory.
    Crdgen(CrdgenArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Kubeconfig file to use. Without it, the in-cluster service account is used, or ~/.kube/config.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log line format: json (one object per line, for log pipelines) or text (for people).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Which log lines to keep, in tracing's env-filter syntax, e.g. "info" or "info,entra_operator=debug".
    #[arg(long, env = "RUST_LOG", default_value = "info", value_name = "FILTER")]
    pub log_filter: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, clap::Args)]
pub struct CrdgenArgs {
    /// Write each CRD to <DIR>/<plural>.<group>.yaml instead of printing all of them to standard output.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_run_flag_names_its_environment_variable() {
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").unwrap();
        for arg in run
            .get_arguments()
            .filter(|a| a.get_long().is_some() && a.get_id() != "help")
        {
            assert!(
                arg.get_env().is_some(),
                "--{} has no environment variable",
                arg.get_long().unwrap()
            );
            assert!(
                arg.get_help().is_some(),
                "--{} has no help",
                arg.get_long().unwrap()
            );
        }
    }
}
