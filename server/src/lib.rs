//! Keel's serving library: the model repository, backends, the inference core and its front ends.
// No `unsafe` but calls into C libraries (FFI), each allowed where it is: backend/onnxruntime.rs (ONNX
// Runtime's C API), alloc.rs (mimalloc: the global allocator's calls and mi_collect).
#![deny(unsafe_code)]

pub mod admin;
pub mod alloc;
pub mod backend;
pub mod batch;
pub mod budget;
pub mod check;
pub mod clock;
pub mod config;
pub mod conn_stop;
pub mod conn_threads;
pub mod conn_timer;
pub mod direct;
pub mod doorbell;
pub mod error;
pub mod gather;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod instance;
pub mod listener;
pub mod metrics;
pub mod metrics_server;
pub mod model_toml;
pub mod monitoring;
pub mod otel;
pub mod per_thread;
pub mod prediction_log;
pub mod protocol;
pub mod readiness;
pub mod repository;
pub mod request_id;
pub mod scheduler;
pub mod server;
pub mod signature;
pub mod stats;
pub mod tensor;
pub mod tls;
pub mod triton_config;

pub use config::ServeConfig;
pub use server::Server;
