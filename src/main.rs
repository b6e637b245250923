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
    /// Run the proxy until SIGTERM or SIGINT (SIGHUP reloads the quotas).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and list every problem with its key path (exit 2 if any).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Call a running proxy's admin API: connections, connectors, quotas,
    /// pause/resume, window lookup and purge.
    Admin(idemgate::admin_client::AdminArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Admin(args) => idemgate::admin_client::run(&args),
        Command::Check { config } => match Config::load(&config).and_then(check_files) {
            Ok(c) => {
                println!("{}: ok", config.display());
                // Not problems: what the rules will do, which an operator
                // must read before trusting them (also logged at startup).
                for n in &c.dedup.notes {
                    println!("  {}: note: {}", n.path, n.message);
                }
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
            runtime.block_on(run(config, path))
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

async fn run(config: Config, path: PathBuf) -> ExitCode {
    let running = match idemgate::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    serve_signals(&running.shared, &path).await;
    running.shutdown().await;
    ExitCode::SUCCESS
}

/// Until SIGTERM or SIGINT. SIGHUP reads the config file again and puts its
/// quotas in force; a file with problems is refused whole (each problem
/// logged with its key path) and the quotas in force stay.
async fn serve_signals(shared: &idemgate::shared::Shared, path: &std::path::Path) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return tracing::info!("SIGTERM"),
            _ = int.recv() => return tracing::info!("SIGINT"),
            _ = hup.recv() => match Config::load(path) {
                Ok(config) => shared.reload(&config),
                Err(errors) => {
                    shared.quotas.reload_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    for p in &errors.0 {
                        tracing::error!(key = %p.path, error = %p.message, "SIGHUP: the config file has problems; nothing reloaded");
                    }
                }
            },
        }
    }
}
