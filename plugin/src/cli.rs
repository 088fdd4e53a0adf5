//! The plugin's command line: kubectl's own global flags (namespace, kubeconfig, context) and an output format,
//! then one verb. kubectl runs `kubectl-entra` for `kubectl entra ...`, passing the arguments unchanged.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// What each verb's --help adds after the flags: exit codes scripts rely on.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 the verb's own \"found something\" (see each verb); 2 an error \
(cannot reach the cluster, bad flags).";

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-entra",
    bin_name = "kubectl entra",
    version,
    about = "Ask entra-operator's objects the questions a platform engineer asks: what is not ready, what \
expires soon, is this Secret's credential good.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub verb: Verb,
}

/// kubectl's flags, with its meaning: the kubeconfig from --kubeconfig, else KUBECONFIG, else ~/.kube/config.
#[derive(Debug, Args)]
pub struct Global {
    /// The namespace to look in (default: the kubeconfig context's namespace, else "default").
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// Look in every namespace.
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else the in-cluster account).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Output format: a table for people, json or yaml for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Every ServicePrincipal, RoleDelegation, CredentialRotation and CredentialWatch with its Ready state,
    /// credential expiry and next rotation, the most urgent first (not Ready, then soonest expiry); or one
    /// object's whole story.
    #[command(after_help = "Examples:
  kubectl entra status                      # the current namespace (and every CredentialWatch)
  kubectl entra status -A                   # every namespace
  kubectl entra status -n payroll -o json   # for scripts
  kubectl entra status sp payroll -n team-a # one ServicePrincipal: conditions, events, Azure ids
  kubectl entra status crot payroll         # one CredentialRotation: targets, verification

Kinds: serviceprincipal (sp), roledelegation (rd), credentialrotation (crot), credentialwatch (cwatch).
Exit codes: 0 success; 2 an error.")]
    Status(StatusArgs),
    /// Credentials that expire within a window (or have expired), across the namespaces asked for: the
    /// ServicePrincipals' credentials, the CredentialRotations' current secrets and the credentials every
    /// CredentialWatch reports.
    #[command(after_help = "Examples:
  kubectl entra expiring -A --within 30d    # what expires in the next 30 days, anywhere
  kubectl entra expiring --within 720h -o json
  kubectl entra expiring -A --within 14d || page-the-team

The window is a Go duration (720h, 90m, 1h30m) or a number of days (30d).
Exit codes: 0 nothing expires in the window; 1 something does (it is listed); 2 an error.")]
    Expiring(ExpiringArgs),
    /// Rotate a CredentialRotation's credential now: sets spec.rotationToken to the current time; with --wait,
    /// follows the rotation until every target holds the new key or one refuses it.
    #[command(after_help = "Examples:
  kubectl entra rotate payroll -n team-a
  kubectl entra rotate payroll -n team-a --wait
  kubectl entra rotate payroll --wait --timeout 10m -o json

For a GitOps-managed object, also set spec.rotationToken in Git to the value printed (any new string rotates).
Exit codes: 0 rotation requested (and, with --wait, every target holds the new key); 1 a target refused it or \
--timeout passed; 2 an error.")]
    Rotate(RotateArgs),
    /// Inspect a resource the operator wrote.
    #[command(subcommand)]
    Inspect(Inspect),
    /// Whether the operator can do its job, as the cluster shows it: its CRDs are installed as this version
    /// defines them, and a replica holds and renews the leader-election Lease.
    #[command(after_help = "Examples:
  kubectl entra check
  kubectl entra check --operator-namespace platform --lease entra-operator -o json

Not checked yet: the operator's own Azure sign-in and whether its Azure permissions suffice.
Exit codes: 0 every check passed; 1 one failed (the table says which); 2 an error.")]
    Check(CheckArgs),
    /// The tenancy guardrail: what the cluster's DelegationPolicies allow a namespace.
    #[command(subcommand)]
    Policy(Policy),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The namespace the operator runs in (the chart's release namespace), where its Lease is.
    #[arg(long, value_name = "NS", default_value = "entra-operator-system")]
    pub operator_namespace: String,
    /// The leader-election Lease's name (the chart's leaderElection.leaseName).
    #[arg(long, value_name = "NAME", default_value = "entra-operator")]
    pub lease: String,
}

#[derive(Debug, Subcommand)]
pub enum Policy {
    /// Runs the operator's own guardrail decision for a RoleDelegation in -n NS asking for ROLE at SCOPE (for
    /// its namespace's ServicePrincipal, or --principal): names the DelegationPolicy that allows it, or says
    /// why each selecting policy denies it, field by field.
    #[command(after_help = "Examples:
  kubectl entra policy explain -n team-a --role Reader \\
      --scope /subscriptions/0000.../resourceGroups/team-a-web
  kubectl entra policy explain -n team-a --role acdd72a7-3385-48ef-bd42-f606fba81ae7 --scope ... -o json
  kubectl entra policy explain -n team-a --role Reader --scope ... --principal 9a41...

This is the decision made before Azure is asked anything: a role whose definition can assign roles is refused \
afterwards unless a policy names it.
Exit codes: 0 allowed; 1 denied; 2 an error.")]
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The role: its name (Reader) or its definition GUID or id.
    #[arg(long, value_name = "ROLE")]
    pub role: String,
    /// The ARM scope: /subscriptions/ID[/resourceGroups/NAME[/providers/...]].
    #[arg(long, value_name = "SCOPE")]
    pub scope: String,
    /// A principal object id (spec.principalId) instead of the namespace's own ServicePrincipal.
    #[arg(long, value_name = "ID")]
    pub principal: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// With NAME, the kind of one object to tell the whole story of: sp, rd, crot or cwatch (or the full
    /// kind name).
    #[arg(value_name = "KIND", requires = "name")]
    pub kind: Option<String>,
    /// The object's name.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExpiringArgs {
    /// The window from now: a Go duration (720h) or days (30d).
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub within: String,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The CredentialRotation's name.
    pub name: String,
    /// Follow the rotation until every target holds the new key, or one fails.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (a Go duration, or days as 1d).
    #[arg(long, value_name = "DURATION", default_value = "5m", requires = "wait")]
    pub timeout: String,
}

#[derive(Debug, Subcommand)]
pub enum Inspect {
    /// A Secret the operator wrote: its format, the key id of the credential it holds, its owner, and that
    /// credential's hint (or certificate thumbprint) and expiry from the owner's status. Never the secret.
    #[command(after_help = "Examples:
  kubectl entra inspect secret payroll-credentials -n team-a
  kubectl entra inspect secret payroll-credentials --sign-in          # a real sign-in against Entra
  kubectl entra inspect secret payroll-credentials --sign-in --ca-file emulator-ca.pem

--sign-in asks Entra for a Microsoft Graph and an Azure Resource Manager token with the Secret's credential, \
as the operator verifies a new one, and prints \"signed in\" or the kind of failure, never the credential.

The tenant, client id and authority host come from the Secret (AZURE_TENANT_ID, AZURE_CLIENT_ID, \
AZURE_AUTHORITY_HOST in the env format; the matching fields in the others), else from the owner's status, \
else from the flags; a flag given wins.
Exit codes: 0 success (and signed in, with --sign-in); 1 the sign-in failed; 2 an error.")]
    Secret(InspectSecretArgs),
}

#[derive(Debug, Args)]
pub struct InspectSecretArgs {
    /// The Secret's name.
    pub name: String,
    /// Sign in to Entra with the Secret's credential.
    #[arg(long)]
    pub sign_in: bool,
    /// The Entra authority host to sign in at (default: the Secret's, else https://login.microsoftonline.com).
    #[arg(long, value_name = "URL", requires = "sign_in")]
    pub authority_host: Option<String>,
    /// The tenant to sign in to (default: the Secret's, else the owner's status.tenantId).
    #[arg(long, value_name = "GUID", requires = "sign_in")]
    pub tenant: Option<String>,
    /// A PEM bundle of extra CA certificates to trust for the sign-in (a private Entra, or the emulator).
    #[arg(long, value_name = "PATH", requires = "sign_in")]
    pub ca_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_every_verb_has_examples() {
        Cli::command().debug_assert();
        let mut cli = Cli::command();
        for verb in ["status", "expiring", "rotate", "check"] {
            let help = cli
                .find_subcommand_mut(verb)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(help.contains("Examples:"), "{verb}: {help}");
        }
        let help = cli
            .find_subcommand_mut("inspect")
            .unwrap()
            .find_subcommand_mut("secret")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("Examples:") && help.contains("Exit codes"),
            "{help}"
        );
    }

    #[test]
    fn global_flags_come_before_or_after_the_verb() {
        let cli = Cli::try_parse_from(["kubectl-entra", "status", "-A", "-o", "json"]).unwrap();
        assert!(cli.global.all_namespaces);
        assert_eq!(cli.global.output, Format::Json);
        let cli = Cli::try_parse_from(["kubectl-entra", "-n", "x", "expiring"]).unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("x"));
        assert!(Cli::try_parse_from(["kubectl-entra", "status", "-A", "-n", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["kubectl-entra", "inspect", "secret", "s", "--tenant", "t"])
                .is_err()
        );
    }
}
