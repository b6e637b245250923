//! The `idemgate` command: `run` the proxy, or `check` a config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use idemgate::config::Config;

#[derive(Parser)]
#[command(
    name = "idemgate",
    version,
    about = "A Kafka-protocol proxy that makes Kafka Connect replays harmless"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGTERM or SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and list every problem with its key path (exit 2 if any).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config).and_then(check_files) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                report(&config, &errors);
                ExitCode::from(2)
            }
        },
        Command::Run { config: path } => {
            let config = match Config::load(&path).and_then(check_files) {
                Ok(c) => c,
                Err(errors) => {
                    report(&path, &errors);
                    return ExitCode::from(2);
                }
            };
            idemgate::telemetry::init_tracing(&config.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("idemgate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config))
        }
    }
}

/// What `check` and `run` verify beyond the text: the TLS files load, the
/// key matches the certificate, the certificate is in its validity period.
fn check_files(config: Config) -> Result<Config, idemgate::config::ConfigErrors> {
    let mut problems: Vec<_> = [config.listen.tls.as_ref(), config.admin.tls.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(idemgate::tls::check)
        .collect();
    if let Some(upstream) = &config.upstream.tls {
        problems.extend(idemgate::tls::check_upstream(upstream));
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(idemgate::config::ConfigErrors(problems))
    }
}

fn report(path: &std::path::Path, errors: &idemgate::config::ConfigErrors) {
    eprintln!("{}: {} problem(s)", path.display(), errors.0.len());
    for p in &errors.0 {
        if p.path.is_empty() {
            eprintln!("  {}", p.message);
        } else {
            eprintln!("  {}: {}", p.path, p.message);
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let running = match idemgate::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    running.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
