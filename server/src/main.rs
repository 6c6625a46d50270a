//! The `keel` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel_monitor::sidecar::SidecarConfig;
use keel_server::check::{self, CheckArgs};
use keel_server::monitoring::baseline_cmd::{self, BaselineArgs};
use keel_server::{ServeConfig, Server};
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Many small allocations on many threads (request bodies, tensors, futures): glibc malloc showed ~13% of
/// CPU under load and kept freed memory; mimalloc is faster here and returns memory to the OS. Called
/// through `alloc::Allocator`, which skips mimalloc's aligned path where no alignment is needed.
#[global_allocator]
static ALLOCATOR: keel_server::alloc::Allocator = keel_server::alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: an ONNX inference server that watches its own models"
)]
struct Cli {
    /// Log lines as human-readable text (colour only when stderr is a terminal and NO_COLOR is
    /// unset), or as one JSON object per line for log pipelines. Logs go to stderr.
    #[arg(long, global = true, env = "KEEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model repository over KServe V2 / Triton HTTP and gRPC.
    Serve(Box<ServeConfig>),
    /// Run the drift monitor as a sidecar that `keel serve --monitor-endpoint` streams to.
    Monitor(SidecarConfig),
    /// Compute a model version's baseline.json from its training data.
    Baseline(BaselineArgs),
    /// Validate a model repository without serving it: model.toml, each version's ONNX file on its
    /// backend with warm-up, baseline.json against the signature, MLflow sources. Exit status 1 if any
    /// model fails (for model publishers' CI).
    Check(CheckArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `keel check` prints a report on stdout; its log (stderr) says only what went wrong.
    let level = match cli.command {
        Command::Check(_) => "warn",
        _ => "info",
    };
    let filter = EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Escape codes only for a person at a terminal: log files and `kubectl logs` get plain text.
        LogFormat::Text => logs
            .with_ansi(colour(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            // An idle worker hands back the memory a burst left in its heap (see alloc.rs).
            .on_thread_park(keel_server::alloc::idle)
            .build()
    };
    match cli.command {
        Command::Serve(config) => runtime()?.block_on(serve(*config)),
        Command::Monitor(config) => runtime()?
            .block_on(async { keel_monitor::sidecar::run(config, shutdown_signal()).await })
            .context("keel monitor"),
        Command::Baseline(args) => {
            let path = baseline_cmd::run(&args).map_err(anyhow::Error::msg)?;
            println!("wrote {}", path.display());
            Ok(())
        }
        Command::Check(args) => {
            let report = runtime()?
                .block_on(check::run(&args))
                .map_err(anyhow::Error::msg)
                .context("keel check")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if !report.passed() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    // The signal handler is installed before models load, so a SIGTERM during a slow start-up
    // still drains and flushes.
    let signal = shutdown_signal();
    let server = Server::listen(config).await.context("keel serve")?;
    signal.await;
    tracing::info!("shutting down: finishing in-flight requests");
    server.shutdown().await.context("shutting down")?;
    // The versions are gone with the server; their instance threads end after the batch they compute
    // (a warm-up one when the signal came during start-up). Exiting under one crashes the exit.
    let stopped = tokio::task::spawn_blocking(|| {
        keel_server::instance::wait_stopped(std::time::Duration::from_secs(10))
    })
    .await
    .unwrap_or(false);
    if !stopped {
        tracing::warn!("a model instance was still computing after 10 s; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Colour on a terminal, unless NO_COLOR (https://no-color.org) is set to anything non-empty.
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the SIGTERM and SIGINT handlers now (not when first awaited) and waits for either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
