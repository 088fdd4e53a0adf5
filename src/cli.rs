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
    /// Run the operator: connect to the Kubernetes API server and reconcile ServicePrincipal, RoleDelegation,
    /// CredentialRotation and CredentialWatch objects until SIGTERM or SIGINT.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into a directory.
    Crdgen(CrdgenArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Kubeconfig file to use. Without it, the in-cluster service account is used, or ~/.kube/config.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// A stable identity for this cluster, part of every application's uniqueName so that two clusters never
    /// claim each other's applications. Default: the uid of the kube-system namespace.
    #[arg(long, env = "ENTRA_OPERATOR_CLUSTER_ID", value_name = "ID")]
    pub cluster_id: Option<String>,

    /// How often a converged object is compared with Azure again, to repair changes made there (a Go
    /// duration).
    #[arg(
        long,
        env = "RESYNC_INTERVAL",
        default_value = "1h",
        value_name = "DURATION"
    )]
    pub resync_interval: crate::api::Duration,

    /// How often Azure is asked what changed, for all objects at once: a Graph delta query over
    /// applications and service principals, and one role assignment listing per subscription in use. A
    /// change found brings its object back at once; an object without one skips its Azure reads at resync.
    #[arg(
        long,
        env = "DRIFT_INTERVAL",
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub drift_interval: crate::api::Duration,

    /// How long a role assignment keeps being retried while Azure says its principal does not exist yet
    /// (replication of a new service principal; Azure warns it "can take up to 60 minutes"). After it, the
    /// RoleDelegation is reported Stalled, and retried rarely.
    #[arg(
        long,
        env = "PRINCIPAL_REPLICATION_WINDOW",
        default_value = "60m",
        value_name = "DURATION"
    )]
    pub principal_replication_window: crate::api::Duration,

    /// How many rounds of sign-ins a new credential must pass in a row before it is published (a
    /// CredentialRotation) or its ServicePrincipal turns Ready. Each round asks Entra for a Microsoft Graph
    /// and an Azure Resource Manager token with the new credential. A new credential replicates across
    /// Entra's regions: observed 4 to 18 seconds (microsoft-graph-docs #17966), with no documented bound,
    /// and one success proves little, since the next request may reach another region (hashicorp/vault
    /// #27593). 1 publishes after one round.
    #[arg(long, env = "VERIFY_SIGN_INS", default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub verify_sign_ins: u32,

    /// The least time between the first and the last of those rounds (a Go duration): the rounds are spread
    /// evenly over it.
    #[arg(
        long,
        env = "VERIFY_WINDOW",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub verify_window: crate::api::Duration,

    /// How many objects of each kind are reconciled at once in each watched namespace (with
    /// WATCH_NAMESPACES=a,b that is twice this number per kind).
    #[arg(long, env = "CONCURRENCY", default_value_t = 8, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Run only while holding a Lease, so that of several replicas exactly one reconciles (the others wait
    /// to take over). The Helm chart turns it on.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease (the chart passes the operator's own namespace).
    #[arg(
        long,
        env = "LEADER_ELECTION_NAMESPACE",
        default_value = "default",
        value_name = "NS"
    )]
    pub leader_election_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE",
        default_value = "entra-operator",
        value_name = "NAME"
    )]
    pub leader_election_lease: String,

    /// How long a leader's Lease lasts without renewal: the longest a replica waits to take over from a
    /// leader that died (a Go duration, in whole seconds).
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE_DURATION",
        default_value = "15s",
        value_name = "DURATION"
    )]
    pub leader_election_lease_duration: crate::api::Duration,

    /// This replica's name in the Lease (the chart passes the pod's name). Default: the host name.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "METRICS_ADDR",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub metrics_addr: std::net::SocketAddr,

    /// Namespaces to watch, comma-separated. Default: all namespaces.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS,..."
    )]
    pub watch_namespaces: Vec<String>,

    /// Which CredentialWatches (cluster-scoped) this operator serves, as a label selector (e.g.
    /// "team=payments"; "" for all of them). Default: all of them without WATCH_NAMESPACES, none with it, so
    /// that several installs that each serve some namespaces of one cluster do not all read and report every
    /// watch.
    #[arg(long, env = "CREDENTIAL_WATCH_SELECTOR", value_name = "SELECTOR")]
    pub credential_watch_selector: Option<String>,

    #[command(flatten)]
    pub azure: AzureArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Which Azure, and the operator's identity there.
#[derive(Debug, Default, clap::Args)]
pub struct AzureArgs {
    /// Azure cloud: public, us-government, china, or custom (then give the three endpoints below; this is how
    /// the local emulator is used).
    #[arg(long, env = "AZURE_CLOUD", value_enum, default_value_t = CloudName::Public)]
    pub azure_cloud: CloudName,

    /// Entra authority host, overriding the cloud's (e.g. https://login.microsoftonline.com).
    #[arg(long, env = "AZURE_AUTHORITY_HOST", value_name = "URL")]
    pub azure_authority_host: Option<String>,

    /// Microsoft Graph base URL with its version, overriding the cloud's (e.g. https://graph.microsoft.com/v1.0).
    #[arg(long, env = "AZURE_GRAPH_ENDPOINT", value_name = "URL")]
    pub azure_graph_endpoint: Option<String>,

    /// Azure Resource Manager base URL, overriding the cloud's (e.g. https://management.azure.com).
    #[arg(long, env = "AZURE_RESOURCE_MANAGER_ENDPOINT", value_name = "URL")]
    pub azure_resource_manager_endpoint: Option<String>,

    /// DNS suffix of the cloud's key vaults, overriding the cloud's (e.g. vault.azure.net): a vault named kv is
    /// https://kv.{suffix}, and Key Vault tokens are asked for https://{suffix}. Vaults are reached through
    /// the standard HTTPS_PROXY/NO_PROXY variables when a proxy is set (how the local emulator serves them).
    #[arg(long, env = "AZURE_KEY_VAULT_DNS_SUFFIX", value_name = "SUFFIX")]
    pub azure_key_vault_dns_suffix: Option<String>,

    /// Extra CA certificates (PEM) to trust for every Azure endpoint, besides the system's.
    #[arg(long, env = "AZURE_CA_FILE", value_name = "PATH")]
    pub azure_ca_file: Option<std::path::PathBuf>,

    /// How the operator authenticates: workload-identity (a projected ServiceAccount token; the default),
    /// client-secret, or managed-identity.
    #[arg(long, env = "AZURE_CREDENTIAL", value_enum, default_value_t = CredentialKind::WorkloadIdentity)]
    pub azure_credential: CredentialKind,

    /// Application (client) id of the operator's identity (with managed-identity: a user-assigned identity's).
    #[arg(long, env = "AZURE_CLIENT_ID", value_name = "GUID")]
    pub azure_client_id: Option<String>,

    /// Tenant (directory) id.
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "GUID")]
    pub azure_tenant_id: Option<String>,

    /// File holding the projected ServiceAccount token, re-read on each token request (workload identity).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "PATH")]
    pub azure_federated_token_file: Option<std::path::PathBuf>,

    /// Client secret (client-secret credential). Prefer the environment variable to the flag, which other
    /// processes can read from the command line.
    #[arg(
        long,
        env = "AZURE_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub azure_client_secret: Option<Redacted>,
}

/// A value that must never be printed: Debug shows a placeholder, so logging the parsed flags cannot leak it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redacted(***)")
    }
}

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Redacted(s.to_string()))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CloudName {
    #[default]
    Public,
    UsGovernment,
    China,
    Custom,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CredentialKind {
    #[default]
    WorkloadIdentity,
    ClientSecret,
    ManagedIdentity,
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
    fn the_client_secret_never_shows_in_debug_output() {
        let cli = Cli::try_parse_from([
            "entra-operator",
            "run",
            "--azure-client-secret",
            "hunter2-value",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("hunter2-value"));
        let Command::Run(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(args.azure.azure_client_secret.unwrap().0, "hunter2-value");
    }

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
