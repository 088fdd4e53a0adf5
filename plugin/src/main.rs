//! kubectl-entra: the kubectl plugin for entra-operator (`kubectl entra ...` once it is on PATH). It reads the
//! operator's objects with the operator's own types and decision code (the `entra-operator` library), so that
//! what it says is what the operator would conclude.
//!
//! Exit codes: 0 success; 1 a verb's "found something" (`expiring`: something expires in the window;
//! `inspect secret --sign-in`: the sign-in failed; `rotate --wait`: a target refused the key, or it timed
//! out; `policy explain`: denied; `check`: a check failed); 2 an error (clap's usage errors are 2 as well).

mod check;
mod cli;
mod cluster;
mod expiring;
mod inspect;
mod policy;
mod render;
mod rotate;
mod status;
mod story;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Inspect, Policy, Verb};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the verb; true when it found what a script should hear about (exit 1).
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let cluster = cluster::connect(&cli.global).await?;
    let format = cli.global.output;
    match &cli.verb {
        Verb::Status(args) => {
            match (&args.kind, &args.name) {
                (Some(kind), Some(name)) => story::show(&cluster, kind, name, format).await?,
                _ => status::list(&cluster, format).await?,
            }
            Ok(false)
        }
        Verb::Expiring(args) => expiring::run(&cluster, &args.within, format).await,
        Verb::Rotate(args) => {
            let wait = match args.wait {
                true => Some(
                    expiring::window(&args.timeout)
                        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?,
                ),
                false => None,
            };
            rotate::run(&cluster, &args.name, wait, format).await
        }
        Verb::Inspect(Inspect::Secret(args)) => inspect::run(&cluster, args, format).await,
        Verb::Check(args) => check::run(&cluster, args, format).await,
        Verb::Policy(Policy::Explain(args)) => {
            let principal = args.principal.as_deref();
            policy::run(&cluster, &args.role, &args.scope, principal, format).await
        }
    }
}
