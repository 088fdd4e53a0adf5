use std::process::ExitCode;

use clap::Parser;
use entra_operator::{api, cli, controller, out, telemetry};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = match cli.command {
        cli::Command::Crdgen(args) => crdgen(args),
        cli::Command::Run(args) => runtime.block_on(run(*args)),
    };
    // Blocking tasks that never end on their own (the workload identity credential's token-file reader) must
    // not hold the process after a clean shutdown.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
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
            // `crdgen | head -1` closes the pipe early: stop there and succeed, as `cat` does.
            for crd in &crds {
                if out::stdout(&api::crd_yaml(crd)?)? == out::Flow::Closed {
                    break;
                }
            }
        }
    }
    Ok(())
}
