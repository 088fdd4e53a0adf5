//! azure-emulator: serve the Entra token endpoint, Microsoft Graph, ARM authorization, AKS and Key Vault
//! secrets locally.

use std::{net::SocketAddr, path::PathBuf};

use azure_emulator::{config::Config, server};
use clap::Parser;

/// A local Azure for entra-operator's tests and demo: Entra token endpoint, Microsoft Graph v1.0, ARM
/// Microsoft.Authorization and AKS managedClusters, over HTTPS with its own CA.
#[derive(Parser)]
#[command(name = "azure-emulator", version)]
struct Args {
    /// Configuration file (YAML or JSON): seed and knobs. Default: the built-in configuration
    /// (emulator/default-config.yaml).
    #[arg(long, env = "AZURE_EMULATOR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Directory for the CA, the keys and the state (applications, assignments, clusters ...), which then
    /// survive a restart. Without it, a new temporary directory is used and the state starts from the seed.
    #[arg(long, env = "AZURE_EMULATOR_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "AZURE_EMULATOR_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,

    /// Extra host names or addresses for the server certificate (repeatable).
    #[arg(
        long = "hostname",
        env = "AZURE_EMULATOR_HOSTNAMES",
        value_delimiter = ','
    )]
    hostnames: Vec<String>,

    /// Port of the CONNECT proxy that reaches vault hosts (`https://{vault}.vault.azure.net`), on the
    /// address of --listen; clients set HTTPS_PROXY to it. Default: the config's `proxyListen`, else a free
    /// port.
    #[arg(long, env = "AZURE_EMULATOR_PROXY_LISTEN", value_name = "PORT")]
    proxy_listen: Option<u16>,

    /// Write the base URL and CA path as KEY=value lines to this file once serving (for scripts).
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            serde_saphyr::from_str::<Config>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Config::default_seed(),
    };
    let mut config = config;
    if let Some(port) = args.proxy_listen {
        config.proxy_listen = port;
    }
    let persist = args.state_dir.is_some();
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("azure-emulator-{}", std::process::id())),
    };
    let tenant = config.seed.tenant_id.clone();
    let running = server::start(server::Options {
        config,
        state_dir: state_dir.clone(),
        persist,
        listen: args.listen,
        hostnames: args.hostnames,
    })
    .await?;
    let base = &running.base_url;
    let lines = format!(
        "AZURE_EMULATOR_URL={base}\nAZURE_AUTHORITY_HOST={base}\nAZURE_GRAPH_ENDPOINT={base}/v1.0\nAZURE_RESOURCE_MANAGER_ENDPOINT={base}\nAZURE_TENANT_ID={tenant}\nAZURE_EMULATOR_CA_FILE={}\nAZURE_EMULATOR_PROXY_URL={}\n",
        running.ca_file.display(),
        running.proxy_url
    );
    println!(
        "azure-emulator serving on {base} (state in {})\n{lines}",
        state_dir.display()
    );
    if let Some(file) = &args.env_file {
        std::fs::write(file, &lines)?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    running.shutdown().await
}
