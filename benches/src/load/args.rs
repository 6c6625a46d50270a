//! Command-line arguments of `keel-load`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Grpc,
}

/// How HTTP requests carry tensors; gRPC always uses `raw_input_contents`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Tensors as JSON arrays.
    Json,
    /// Triton's binary tensor extension, both ways.
    Binary,
}

/// Load generator for KServe V2 / Triton servers: closed loop (`--concurrency`) or open loop
/// with Poisson arrivals (`--rate`).
#[derive(Clone, Debug, Parser, Serialize)]
#[command(name = "keel-load", version)]
pub struct Args {
    /// Server URL [default: http://127.0.0.1:8000 for http, http://127.0.0.1:8001 for grpc].
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    pub protocol: Protocol,
    /// Tensor encoding over HTTP (ignored for gRPC).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    #[arg(long, default_value = "breast-cancer")]
    pub model: String,
    /// Name of the FP32 input tensor, shape [rows, features].
    #[arg(long, default_value = "input")]
    pub input: String,
    /// Outputs to request, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "label,probabilities")]
    pub outputs: Vec<String>,
    /// Rows per request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rows: u32,
    /// Features per row.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub features: u32,
    /// Closed loop: this many workers, each sending its next request as soon as the last one returns.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Open loop: Poisson arrivals at this many requests per second (overrides --concurrency).
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Open loop: requests in flight beyond this are not sent and count as dropped.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_outstanding: u32,
    /// gRPC connections [default: one per 8 workers in closed loop, 4 in open loop].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub grpc_channels: Option<u32>,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring, not recorded.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// A request without an answer after this many seconds counts as an error.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Also write the results, with these arguments, as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Args {
    pub fn url(&self) -> &str {
        match (&self.url, self.protocol) {
            (Some(url), _) => url.trim_end_matches('/'),
            (None, Protocol::Http) => "http://127.0.0.1:8000",
            (None, Protocol::Grpc) => "http://127.0.0.1:8001",
        }
    }

    /// Checks what clap cannot: positive, finite durations and rate.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64, zero_ok: bool| {
            // The upper bound keeps `Duration::from_secs_f64` from overflowing.
            if v < 1e9 && (v > 0.0 || (zero_ok && v == 0.0)) {
                Ok(())
            } else {
                Err(format!("--{name} must be a positive number, got {v}"))
            }
        };
        positive("duration", self.duration, false)?;
        positive("warmup", self.warmup, true)?;
        positive("timeout", self.timeout, false)?;
        if let Some(rate) = self.rate {
            positive("rate", rate, false)?;
        }
        Ok(())
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }

    pub fn grpc_channels(&self) -> usize {
        let default = match self.rate {
            Some(_) => 4,
            // One HTTP/2 connection is driven by one task, so it tops out near one core.
            None => self.concurrency.div_ceil(8),
        };
        self.grpc_channels.unwrap_or(default) as usize
    }
}
