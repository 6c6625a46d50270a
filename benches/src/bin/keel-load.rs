//! `keel-load`: load generator for KServe V2 / Triton servers. See `keel_benches::load`.
#![forbid(unsafe_code)]

use anyhow::bail;
use clap::Parser;
use keel_benches::load::Args;
use keel_benches::load::closed;
use keel_benches::load::open::OpenLoop;
use keel_benches::load::report::Report;
use keel_benches::load::target::Target;

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        // `{:#}` keeps the cause chain on one line ("cannot connect to URL: transport error: ...").
        eprintln!("keel-load: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Err(e) = args.validate() {
        bail!(e);
    }
    let target = Target::connect(&args).await?;
    let stats = match args.rate {
        Some(rate) => {
            OpenLoop {
                rate,
                max_outstanding: args.max_outstanding,
                warmup: args.warmup(),
                duration: args.duration(),
                timeout: args.timeout(),
            }
            .run(target)
            .await
        }
        None => {
            closed::run(
                target,
                args.concurrency as usize,
                args.warmup(),
                args.duration(),
                args.timeout(),
            )
            .await
        }
    };
    let report = Report::new(&args, stats);
    report.print();
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(())
}
