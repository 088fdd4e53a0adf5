use std::process::ExitCode;

use clap::Parser;
use entra_operator::{api, cli, controller, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Crdgen(args) => crdgen(args),
        cli::Command::Run(args) => run(*args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The subscriber may not be up (bad flags), so the final error always goes to stderr as well.
            tracing::error!(error = format!("{err:#}"), "exiting");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: cli::RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging(&args.log)?;
    controller::run(args).await
}

fn crdgen(args: cli::CrdgenArgs) -> anyhow::Result<()> {
    let crds = api::crds();
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for crd in &crds {
                std::fs::write(dir.join(api::crd_file_name(crd)), api::crd_yaml(crd)?)?;
            }
        }
        None => {
            for crd in &crds {
                print!("{}", api::crd_yaml(crd)?);
            }
        }
    }
    Ok(())
}
