//! `keel serve` configuration: one typed struct, every flag also settable through a `KEEL_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

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

    /// ONNX Runtime shared library (libonnxruntime.so). Without it: ORT_DYLIB_PATH, then the
    /// onnxruntime wheel in ./.venv; if none loads, models with backend "auto" run on tract.
    #[arg(long, env = "KEEL_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "KEEL_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

impl ServeConfig {
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
}
