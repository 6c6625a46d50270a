//! The end-of-run summary: printed for people, and optionally written as JSON for scripts.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::args::{Args, Protocol};
use super::stats::Stats;

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub args: &'a Args,
    pub url: &'a str,
    pub ok: u64,
    pub errors: u64,
    pub dropped: u64,
    pub first_error: Option<String>,
    /// The measured window, in seconds (warm-up excluded).
    pub duration_s: f64,
    /// Successful requests per second over the measured window.
    pub throughput_rps: f64,
    pub latency_us: Latency,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl<'a> Report<'a> {
    pub fn new(args: &'a Args, stats: Stats) -> Self {
        let h = &stats.latency;
        Report {
            args,
            url: args.url(),
            ok: stats.ok,
            errors: stats.errors,
            dropped: stats.dropped,
            first_error: stats.first_error.map(|(_, message)| message),
            duration_s: args.duration,
            throughput_rps: stats.ok as f64 / args.duration,
            latency_us: Latency {
                p50: h.value_at_quantile(0.50),
                p90: h.value_at_quantile(0.90),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
                mean: h.mean(),
            },
        }
    }

    pub fn print(&self) {
        let a = self.args;
        let protocol = match a.protocol {
            Protocol::Http => format!("http/{:?}", a.format).to_lowercase(),
            Protocol::Grpc => "grpc".into(),
        };
        let mode = match a.rate {
            Some(rate) => format!("open loop, {rate} req/s"),
            None => format!("closed loop, concurrency {}", a.concurrency),
        };
        println!(
            "{protocol} {} model={} rows={}: {mode}, {}s measured after {}s warm-up",
            self.url, a.model, a.rows, a.duration, a.warmup
        );
        println!("requests ok   {}", self.ok);
        println!("errors        {}", self.errors);
        println!("dropped       {}", self.dropped);
        println!("throughput    {:.1} req/s", self.throughput_rps);
        let l = &self.latency_us;
        println!(
            "latency (µs)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.1})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if let Some(e) = &self.first_error {
            println!("first error   {e}");
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}
