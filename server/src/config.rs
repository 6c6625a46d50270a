//! `keel serve` configuration: one typed struct, every flag also settable through a `KEEL_*` variable,
//! and the plain settings it hands down to the parts it configures ([`RepositorySettings`]). A leaf:
//! it imports no other module of the server; the repository, monitoring and the listeners take what
//! they need from here.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "keel serve",
    about = "Serve the models of a repository over KServe V2 / Triton HTTP"
)]
pub struct ServeConfig {
    /// Model repository: <DIR>/<model>/<version>/model.onnx, optional <DIR>/<model>/model.toml.
    #[arg(long, env = "KEEL_MODEL_REPOSITORY", default_value = "models")]
    pub model_repository: PathBuf,

    /// Address of the KServe V2 HTTP API.
    #[arg(long, env = "KEEL_HTTP_ADDR", default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,

    /// Address of the gRPC API (inference.GRPCInferenceService).
    #[arg(long, env = "KEEL_GRPC_ADDR", default_value = "0.0.0.0:8001")]
    pub grpc_addr: SocketAddr,

    /// Address of the Prometheus metrics endpoint (GET /metrics), served apart from inference traffic.
    #[arg(long, env = "KEEL_METRICS_ADDR", default_value = "0.0.0.0:8002")]
    pub metrics_addr: SocketAddr,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "KEEL_GRPC_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub grpc_max_message_bytes: usize,

    /// Bearer token for repository control (index, load, unload). Unset: those endpoints are disabled.
    #[arg(long, env = "KEEL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File of admin tokens, one a line, re-read when it changes (a mounted Secret).
    #[arg(long, env = "KEEL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub api_token: keel_monitor::auth::ApiTokenArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub outbound_tls: keel_monitor::outbound::OutboundTlsArgs,

    /// Ready means every model Keel is set to serve has a READY version (as Triton's
    /// --strict-readiness); `false`: ready as soon as the server is up.
    #[arg(long, env = "KEEL_STRICT_READINESS", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_readiness: bool,

    /// Bearer token presented to the `keel monitor` sidecar (its --api-token).
    #[arg(long, env = "KEEL_MONITOR_TOKEN", hide_env_values = true)]
    pub monitor_token: Option<String>,

    /// File whose first line is the token presented to the sidecar; read at each (re)connection.
    #[arg(long, env = "KEEL_MONITOR_TOKEN_FILE")]
    pub monitor_token_file: Option<PathBuf>,

    /// ONNX Runtime shared library (libonnxruntime.so). Without it: ORT_DYLIB_PATH, then the
    /// onnxruntime wheel in ./.venv; if none loads, models with backend "auto" run on tract.
    #[arg(long, env = "KEEL_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,

    /// Seconds between looks at the model repository (new, removed or changed versions and model.toml)
    /// and at registry aliases; 0 turns polling off (the load/unload API still works).
    #[arg(long, env = "KEEL_REPOSITORY_POLL", default_value_t = 5.0, value_parser = parse_seconds)]
    pub repository_poll: f64,

    /// Triton's model control modes: `poll` loads every model and follows the repository (every
    /// --repository-poll seconds) and the load/unload API; `none` loads every model once and refuses
    /// the load/unload API; `explicit` loads only the --load-model models, then only what the API loads.
    #[arg(long, env = "KEEL_MODEL_CONTROL_MODE", value_enum, default_value_t = ModelControlMode::Poll)]
    pub model_control_mode: ModelControlMode,

    /// A model to load at start-up with --model-control-mode explicit (repeatable; `*` loads all).
    #[arg(long = "load-model", env = "KEEL_LOAD_MODEL", value_delimiter = ',')]
    pub load_model: Vec<String>,

    /// Where versions downloaded from a registry (MLflow) are cached.
    #[arg(long, env = "KEEL_CACHE_DIR", default_value_os_t = std::env::temp_dir().join("keel-cache"))]
    pub cache_dir: PathBuf,

    /// Where drift is measured: in this process (`embedded`), or not at all (`off`). Ignored when
    /// `--monitor-endpoint` sends the rows to a `keel monitor` sidecar instead.
    #[arg(long, env = "KEEL_MONITOR", value_enum, default_value_t = MonitorMode::Embedded)]
    pub monitor: MonitorMode,

    /// gRPC address of a `keel monitor` sidecar (e.g. http://127.0.0.1:8011) to stream logged rows to.
    #[arg(long, env = "KEEL_MONITOR_ENDPOINT")]
    pub monitor_endpoint: Option<String>,

    /// Also write logged rows and feedback as rotating Parquet files under this directory.
    #[arg(long, env = "KEEL_PREDICTION_LOG_DIR")]
    pub prediction_log_dir: Option<PathBuf>,

    /// Seconds after which a prediction-log file is closed and a new one started (also rotated at 64 MiB).
    #[arg(long, env = "KEEL_PREDICTION_LOG_ROTATE", default_value_t = 300.0, value_parser = parse_seconds)]
    pub prediction_log_rotate: f64,

    /// Deletes finished prediction-log files whose newest row is older than this many seconds (0 keeps
    /// them; a file awaiting its upload is kept until uploaded).
    #[arg(long, env = "KEEL_PREDICTION_LOG_MAX_AGE", default_value_t = 0.0, value_parser = parse_retention_seconds)]
    pub prediction_log_max_age: f64,

    /// Deletes the oldest finished prediction-log files while the folder holds more than this many
    /// bytes (0: no limit). Unfinished files count but are never deleted.
    #[arg(long, env = "KEEL_PREDICTION_LOG_MAX_BYTES", default_value_t = 0)]
    pub prediction_log_max_bytes: u64,

    /// Uploads each finished prediction-log file to S3-compatible storage: s3://bucket/prefix.
    /// Credentials, region and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL (AWS_ALLOW_HTTP=true for a plain-http endpoint).
    #[arg(long, env = "KEEL_PREDICTION_LOG_UPLOAD_URL")]
    pub prediction_log_upload_url: Option<String>,

    /// Rows the prediction log queues before it drops (and counts) new ones.
    #[arg(long, env = "KEEL_PREDICTION_LOG_CAPACITY", default_value_t = 65_536)]
    pub prediction_log_capacity: usize,

    /// Bytes of tensor data the prediction log queues before it drops (and counts) new rows.
    #[arg(long, env = "KEEL_PREDICTION_LOG_CAPACITY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub prediction_log_capacity_bytes: usize,

    /// Elements of one tensor a logged row keeps; wider tensors are logged truncated (and counted).
    #[arg(long, env = "KEEL_PREDICTION_LOG_MAX_ELEMENTS", default_value_t = 1024)]
    pub prediction_log_max_elements: usize,

    /// Length of the embedded monitor's rolling drift window, in seconds.
    #[arg(long, env = "KEEL_MONITOR_WINDOW", default_value_t = 600.0, value_parser = parse_seconds)]
    pub monitor_window: f64,

    /// Seconds between the embedded monitor's evaluations (gauges, rules, webhook).
    #[arg(long, env = "KEEL_MONITOR_EVALUATE_EVERY", default_value_t = 5.0, value_parser = parse_seconds)]
    pub monitor_evaluate_every: f64,

    /// Rows a drift window needs before PSI/CSI are reported (a model's [monitor] min_samples overrides).
    #[arg(long, env = "KEEL_MONITOR_MIN_SAMPLES", default_value_t = 1000)]
    pub monitor_min_samples: u64,

    #[command(flatten)]
    pub webhook: keel_monitor::sidecar::WebhookArgs,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "KEEL_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// OS threads that serve the HTTP and gRPC connections, each connection on one thread for its whole
    /// life (docs/performance.md); 0 serves them on the shared async runtime. Default: one per core.
    #[arg(long, env = "KEEL_CONNECTION_THREADS")]
    pub connection_threads: Option<usize>,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub otlp: OtlpArgs,
}

/// OpenTelemetry traces of inference requests, exported over OTLP/gRPC (docs/tracing.md).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct OtlpArgs {
    /// OTLP/gRPC endpoint of an OpenTelemetry Collector (e.g. http://127.0.0.1:4317) that inference
    /// spans are exported to. Unset: no tracing.
    #[arg(long, env = "KEEL_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Fraction of requests without a sampled `traceparent` that start a trace (0 to 1). Requests with
    /// a `traceparent` follow the caller's sampled flag.
    #[arg(long, env = "KEEL_OTLP_SAMPLING_RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    pub otlp_sampling_ratio: f64,

    /// `service.name` of the exported spans' resource.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "keel")]
    pub otlp_service_name: String,
}

/// What one client can hold of the server: memory, connections, time. Each has a default that keeps a
/// 1 GiB pod serving under hostile input.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct Limits {
    /// Request bytes (bodies and decoded tensors) all requests together may hold; beyond it requests
    /// get 429 / RESOURCE_EXHAUSTED.
    #[arg(long, env = "KEEL_MAX_INFLIGHT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_inflight_bytes: usize,

    /// Elements of all BYTES tensors of one request together.
    #[arg(long, env = "KEEL_MAX_BYTES_ELEMENTS", default_value_t = 1 << 20)]
    pub max_bytes_elements: usize,

    /// Seconds a client has to send a request's headers (also bounds the TLS handshake).
    #[arg(long, env = "KEEL_HEADER_READ_TIMEOUT", default_value_t = 10.0, value_parser = parse_seconds)]
    pub header_read_timeout: f64,

    /// Seconds a client has to send a request's whole body.
    #[arg(long, env = "KEEL_BODY_READ_TIMEOUT", default_value_t = 60.0, value_parser = parse_seconds)]
    pub body_read_timeout: f64,

    /// Seconds an HTTP/1.1 keep-alive connection may stay idle between requests.
    #[arg(long, env = "KEEL_IDLE_TIMEOUT", default_value_t = 60.0, value_parser = parse_seconds)]
    pub idle_timeout: f64,

    /// Open connections per listener (HTTP, gRPC); more wait in the kernel's backlog.
    #[arg(long, env = "KEEL_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// Concurrent HTTP/2 streams per gRPC connection.
    #[arg(long, env = "KEEL_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub grpc_max_concurrent_streams: u32,

    /// Seconds between HTTP/2 keepalive pings on an idle gRPC connection; a peer that does not answer
    /// within the same time is closed.
    #[arg(long, env = "KEEL_GRPC_KEEPALIVE", default_value_t = 60.0, value_parser = parse_seconds)]
    pub grpc_keepalive: f64,

    /// Seconds one API request may take, its body's upload included (inference: reading, queueing and
    /// compute; over gRPC from the call's start). Repository control is not limited.
    #[arg(long, env = "KEEL_REQUEST_TIMEOUT", default_value_t = 60.0, value_parser = parse_seconds)]
    pub request_timeout: f64,

    /// Seconds from SIGTERM to exit: HTTP and gRPC drain together (idle connections close at once), then
    /// the prediction log and monitor flush. Below Kubernetes' default 30 s grace period.
    #[arg(long, env = "KEEL_SHUTDOWN_TIMEOUT", default_value_t = 20.0, value_parser = parse_seconds)]
    pub shutdown_timeout: f64,
}

/// TLS on the HTTP and gRPC listeners (the metrics listener stays plain).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct TlsArgs {
    /// PEM certificate chain; with --tls-key turns TLS on for HTTP and gRPC (plain text is refused).
    #[arg(long, env = "KEEL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "KEEL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates for mutual TLS: clients must present a certificate signed by one.
    #[arg(long, env = "KEEL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds between looks at the certificate, key and CA files; a change is loaded without a
    /// restart (cert-manager rotation). 0: read once.
    #[arg(long, env = "KEEL_TLS_RELOAD_INTERVAL", default_value_t = 10.0, value_parser = parse_seconds)]
    pub tls_reload_interval: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MonitorMode {
    Embedded,
    Off,
}

/// How models are loaded and followed (Triton's `--model-control-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelControlMode {
    None,
    #[default]
    Poll,
    Explicit,
}

/// Where the model repository lives and how it is watched: what [`ServeConfig::repository_settings`]
/// hands the repository.
#[derive(Clone, Debug)]
pub struct RepositorySettings {
    pub root: PathBuf,
    /// Seconds between looks at the repository and at registries; `None`: never (explicit control only).
    pub poll: Option<Duration>,
    pub control: ModelControlMode,
    /// The models loaded at start-up; `None`: every model in the repository.
    pub startup_models: Option<Vec<String>>,
    /// Where registry versions are downloaded.
    pub cache_dir: PathBuf,
    /// The client for registries (MLflow): rustls, the system's roots and --ca-bundle.
    pub registry_http: reqwest::Client,
}

/// Longest interval in seconds any setting takes (a day), as the command-line flags.
pub const MAX_SECONDS: f64 = 86_400.0;

/// `seconds` as a `Duration`, or an error naming `key`: never a panic, whatever the value (NaN, negative,
/// infinite, beyond [`MAX_SECONDS`]). Zero is accepted only with `zero_ok`.
pub fn checked_seconds(key: &str, seconds: f64, zero_ok: bool) -> Result<Duration, String> {
    let valid = seconds.is_finite()
        && seconds <= MAX_SECONDS
        && (seconds > 0.0 || (zero_ok && seconds == 0.0));
    let range = if zero_ok { "from 0" } else { "above 0" };
    match valid {
        true => Duration::try_from_secs_f64(seconds).map_err(|e| format!("{key}: {e}")),
        false => Err(format!(
            "{key} = {seconds} is not a number of seconds {range} up to {MAX_SECONDS}"
        )),
    }
}

/// Retention ages: up to ten years, in seconds.
fn parse_retention_seconds(text: &str) -> Result<f64, String> {
    const TEN_YEARS: f64 = 10.0 * 365.0 * 86_400.0;
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=TEN_YEARS).contains(&s) => Ok(s),
        _ => Err(format!(
            "'{text}' is not a number of seconds between 0 and {TEN_YEARS}"
        )),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("'{text}' is not a ratio between 0 and 1")),
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "'{text}' is not a number of seconds between 0 and 86400"
        )),
    }
}

impl ServeConfig {
    /// The embedded monitor's settings.
    pub fn monitor_config(&self) -> keel_monitor::MonitorConfig {
        keel_monitor::MonitorConfig {
            window: Duration::from_secs_f64(self.monitor_window.max(0.01)),
            min_samples: self.monitor_min_samples.max(1),
            evaluate_every: Duration::from_secs_f64(self.monitor_evaluate_every.max(0.01)),
            ..Default::default()
        }
    }

    /// How the repository is found and watched. Builds the registry's HTTP client (reads --ca-bundle).
    pub fn repository_settings(
        &self,
    ) -> Result<RepositorySettings, keel_monitor::outbound::OutboundError> {
        let registry_http = self
            .outbound_tls
            .client_builder()?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .build()?;
        Ok(RepositorySettings {
            root: self.model_repository.clone(),
            poll: (self.model_control_mode == ModelControlMode::Poll && self.repository_poll > 0.0)
                .then(|| Duration::from_secs_f64(self.repository_poll)),
            control: self.model_control_mode,
            startup_models: match self.model_control_mode {
                ModelControlMode::Explicit if !self.load_model.iter().any(|m| m == "*") => {
                    Some(self.load_model.clone())
                }
                _ => None,
            },
            cache_dir: self.cache_dir.clone(),
            registry_http,
        })
    }

    /// Defaults for `repository`, listening on an ephemeral 127.0.0.1 port: for tests and embedding.
    pub fn local(repository: impl Into<PathBuf>) -> Self {
        let mut config = ServeConfig::parse_from([
            "keel-serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ]);
        config.model_repository = repository.into();
        config
    }

    /// Checks every value the types allow but Keel cannot honour, so a bad one stops start-up with an
    /// error naming its flag instead of a panic or a silent clamp later: intervals a `Duration` cannot
    /// hold (NaN, infinite, negative, beyond a day), zero where at least one is needed. Flags parsed by
    /// clap are range-checked already; this also covers a `ServeConfig` built in code.
    pub fn validate(&self) -> Result<(), String> {
        let limits = &self.limits;
        // (flag, seconds, whether 0 is allowed: 0 turns polling, reloading or that timeout off)
        let seconds = [
            ("--repository-poll", self.repository_poll, true),
            ("--tls-reload-interval", self.tls.tls_reload_interval, true),
            ("--prediction-log-rotate", self.prediction_log_rotate, false),
            ("--monitor-window", self.monitor_window, false),
            (
                "--monitor-evaluate-every",
                self.monitor_evaluate_every,
                false,
            ),
            ("--header-read-timeout", limits.header_read_timeout, true),
            ("--body-read-timeout", limits.body_read_timeout, true),
            ("--idle-timeout", limits.idle_timeout, true),
            ("--grpc-keepalive", limits.grpc_keepalive, true),
            ("--request-timeout", limits.request_timeout, true),
            ("--shutdown-timeout", limits.shutdown_timeout, true),
        ];
        for (flag, value, zero_ok) in seconds {
            checked_seconds(flag, value, zero_ok)?;
        }
        if parse_retention_seconds(&self.prediction_log_max_age.to_string()).is_err() {
            return Err(format!(
                "--prediction-log-max-age {}: expected seconds between 0 and ten years",
                self.prediction_log_max_age
            ));
        }
        let log_flags = [
            (
                "--prediction-log-max-age",
                self.prediction_log_max_age > 0.0,
            ),
            (
                "--prediction-log-max-bytes",
                self.prediction_log_max_bytes > 0,
            ),
            (
                "--prediction-log-upload-url",
                self.prediction_log_upload_url.is_some(),
            ),
        ];
        for (flag, set) in log_flags {
            if set && self.prediction_log_dir.is_none() {
                return Err(format!("{flag} needs --prediction-log-dir"));
            }
        }
        if let Some(url) = &self.prediction_log_upload_url {
            keel_monitor::parquet_log::UploadTarget::parse(url).map_err(|e| e.to_string())?;
        }
        let ratio = self.otlp.otlp_sampling_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!(
                "--otlp-sampling-ratio = {ratio} is not a ratio between 0 and 1"
            ));
        }
        if let Some(endpoint) = &self.otlp.otlp_endpoint {
            check_otlp_endpoint(endpoint)?;
        }
        if !self.load_model.is_empty() && self.model_control_mode != ModelControlMode::Explicit {
            return Err(
                "--load-model is only valid with --model-control-mode explicit (the other modes load every model)"
                    .into(),
            );
        }
        let at_least_one = [
            (
                "--grpc-max-message-bytes",
                self.grpc_max_message_bytes as u64,
            ),
            ("--max-body-bytes", self.max_body_bytes as u64),
            (
                "--prediction-log-capacity",
                self.prediction_log_capacity as u64,
            ),
            (
                "--prediction-log-capacity-bytes",
                self.prediction_log_capacity_bytes as u64,
            ),
            (
                "--prediction-log-max-elements",
                self.prediction_log_max_elements as u64,
            ),
            ("--monitor-min-samples", self.monitor_min_samples),
            ("--max-inflight-bytes", limits.max_inflight_bytes as u64),
            ("--max-connections", limits.max_connections as u64),
            (
                "--grpc-max-concurrent-streams",
                u64::from(limits.grpc_max_concurrent_streams),
            ),
        ];
        for (flag, value) in at_least_one {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// An OTLP/gRPC endpoint Keel can export to: an `http://host:port` URL. The exporter has no TLS of
/// its own (an OpenTelemetry Collector next to Keel, as an agent or sidecar, forwards over TLS).
fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|e| format!("--otlp-endpoint '{endpoint}' is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(()),
        (Some("https"), _) => Err(format!(
            "--otlp-endpoint '{endpoint}': https is not supported; export to an OpenTelemetry Collector next to Keel over http (it can forward over TLS)"
        )),
        _ => Err(format!(
            "--otlp-endpoint '{endpoint}' must be an http://host:port URL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_flags_are_checked() {
        let parse = |args: &[&str]| {
            let mut all = vec!["keel-serve"];
            all.extend_from_slice(args);
            ServeConfig::try_parse_from(all)
        };
        let config = parse(&["--otlp-endpoint", "http://127.0.0.1:4317"]).unwrap();
        assert_eq!(config.otlp.otlp_sampling_ratio, 1.0);
        assert!(config.validate().is_ok());
        for bad in ["1.5", "-0.1", "NaN", "x"] {
            let flag = format!("--otlp-sampling-ratio={bad}");
            let err = parse(&[&flag]).unwrap_err().to_string();
            assert!(err.contains("--otlp-sampling-ratio"), "{err}");
        }
        let mut config = ServeConfig::local("models");
        config.otlp.otlp_sampling_ratio = f64::NAN;
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("--otlp-sampling-ratio")
        );
        config.otlp.otlp_sampling_ratio = 0.0;
        for bad in [
            "https://collector:4317",
            "collector:4317",
            "not a url",
            "http://",
        ] {
            config.otlp.otlp_endpoint = Some(bad.into());
            let err = config.validate().unwrap_err();
            assert!(err.contains("--otlp-endpoint"), "{bad}: {err}");
        }
    }

    #[test]
    fn seconds_never_panic() {
        for bad in [
            f64::NAN,
            f64::INFINITY,
            -f64::INFINITY,
            -1.0,
            1e300,
            f64::MAX,
            86_400.5,
        ] {
            let err = checked_seconds("--x", bad, true).unwrap_err();
            assert!(err.contains("--x"), "{err}");
        }
        assert!(checked_seconds("--x", 0.0, false).is_err());
        assert_eq!(checked_seconds("--x", 0.0, true), Ok(Duration::ZERO));
        assert_eq!(
            checked_seconds("--x", 1.5, false),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            checked_seconds("--x", 86_400.0, false),
            Ok(Duration::from_secs(86_400))
        );
    }
}
