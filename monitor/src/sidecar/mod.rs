//! `keel monitor`: the drift monitor as its own process. Servers stream their versions, rows and
//! feedback to it over gRPC (`keel.monitor.v1.MonitorService`, see `proto/monitor.proto`); it
//! serves Prometheus metrics and drift reports over HTTP and sends alerts to the webhook.
//!
//! Running the monitor apart keeps drift evaluation and alert delivery off the serving hosts and
//! gives one view over all replicas of a server.
//!
//! Both listeners bind loopback by default. With `--api-token(-file)`, every gRPC call needs
//! `authorization: Bearer <token>` (else UNAUTHENTICATED) and so do drift reports (else 401);
//! `/metrics` and `/healthz` stay open for scrapes and probes.

pub mod config;
pub mod convert;
mod http;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::auth::AuthError;
use crate::error::MonitorError;
use crate::monitor::Monitor;
use crate::webhook::{Webhook, WebhookError};

pub use config::{MonitorArgs, SidecarConfig, WEBHOOK_SECRET_ENV, WebhookArgs, start_alerts};
pub use convert::{
    CHUNK_BYTES, Chunk, Chunked, ConvertError, MAX_SENT_MESSAGE_BYTES, feedback_message,
    feedback_messages, records_message, records_messages, retire_message, spec_message,
};
pub use http::router;
pub use service::MAX_MESSAGE_BYTES;

/// The generated `keel.monitor.v1` types, with the server (sidecar) and client (`keel serve`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("keel.monitor.v1");
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error("--api-token: {0}")]
    Auth(#[from] AuthError),
    #[error("registering sidecar metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("sidecar task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// A running sidecar. Dropping it does not stop its tasks; call [`Sidecar::shutdown`].
pub struct Sidecar {
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    monitor: Arc<Monitor>,
    registry: Registry,
    stop: watch::Sender<bool>,
    /// Errors of the serving tasks, which end only at shutdown otherwise.
    failed: mpsc::Receiver<SidecarError>,
    grpc: JoinHandle<()>,
    http: JoinHandle<()>,
    evaluator: JoinHandle<()>,
    webhook: Option<Webhook>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), SidecarError> {
    let bind_error = |source| SidecarError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

impl Sidecar {
    /// Binds both listeners, starts the webhook sender (if configured), the monitor's evaluation
    /// loop and both servers, and logs `monitor_addr=... metrics_addr=...`. Returns once both
    /// listeners accept connections.
    pub async fn start(config: SidecarConfig) -> Result<Sidecar, SidecarError> {
        // First, so a bad flag fails before listeners are bound or the webhook starts.
        config.monitor_config().validate()?;
        let tokens = config.api_token.tokens()?;
        if tokens.is_none()
            && !(config.listen.ip().is_loopback() && config.metrics_addr.ip().is_loopback())
        {
            tracing::warn!(
                listen = %config.listen,
                metrics_addr = %config.metrics_addr,
                "keel monitor listens beyond loopback without --api-token: anyone who reaches it can feed it rows and read drift reports"
            );
        }
        let (grpc_listener, grpc_addr) = bind(config.listen).await?;
        let (http_listener, metrics_addr) = bind(config.metrics_addr).await?;
        let registry = Registry::new();
        let alerts = start_alerts(
            &config.webhook,
            &config.outbound_tls,
            config.prediction_log_dir.as_deref(),
            &registry,
        )?;
        let (webhook, sink) = alerts.unzip();
        let monitor = Monitor::new(config.monitor_config(), &registry, sink)?;
        let (stop, stopped) = watch::channel(false);
        let service = service::StreamService::new(monitor.clone(), &registry, stopped.clone())?;

        let (fail, failed) = mpsc::channel(2);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let grpc_fail = fail.clone();
        let grpc_tokens = tokens.clone();
        let grpc_stopped = until_stopped(stopped.clone());
        let grpc = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service.into_server(grpc_tokens))
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                    grpc_stopped,
                )
                .await;
            if let Err(error) = served {
                let _ = grpc_fail.send(SidecarError::Grpc(error)).await;
            }
        });
        let router = router(monitor.clone(), registry.clone(), tokens);
        let http_stopped = until_stopped(stopped);
        let http = tokio::spawn(async move {
            // Small responses must leave at once, not wait on Nagle's algorithm.
            let http_listener = http_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let served = axum::serve(http_listener, router)
                .with_graceful_shutdown(http_stopped)
                .await;
            if let Err(error) = served {
                let _ = fail.send(SidecarError::Http(error)).await;
            }
        });
        let evaluator = tokio::spawn(monitor.clone().run());
        tracing::info!(
            monitor_addr = %grpc_addr,
            %metrics_addr,
            "keel monitor: receiving server streams over gRPC, serving metrics and drift reports over HTTP"
        );
        Ok(Sidecar {
            grpc_addr,
            metrics_addr,
            monitor,
            registry,
            stop,
            failed,
            grpc,
            http,
            evaluator,
            webhook,
        })
    }

    /// The bound gRPC address (the real port when configured with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address of metrics, health and drift reports.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Resolves with the first error of a serving task; pending forever while both serve.
    pub async fn failed(&mut self) -> SidecarError {
        match self.failed.recv().await {
            Some(error) => error,
            // Both senders are gone only once both tasks ended, which they do without error
            // only after shutdown began; this value does not escape `shutdown`.
            None => std::future::pending().await,
        }
    }

    /// Ends open server streams (each gets its summary), stops both servers, the evaluation loop
    /// and the webhook sender (undelivered alerts stay in the state dir). Returns a serving task's
    /// error, if one failed.
    pub async fn shutdown(mut self) -> Result<(), SidecarError> {
        let _ = self.stop.send(true);
        self.evaluator.abort();
        let grpc = self.grpc.await.map_err(SidecarError::Task);
        let http = self.http.await.map_err(SidecarError::Task);
        if let Err(error) = self.evaluator.await
            && !error.is_cancelled()
        {
            tracing::error!(%error, "the monitor's evaluation loop failed");
        }
        if let Some(webhook) = self.webhook.take() {
            webhook.shutdown().await;
        }
        grpc?;
        http?;
        match self.failed.try_recv() {
            Ok(error) => Err(error),
            Err(_) => Ok(()),
        }
    }
}

/// `keel monitor`: runs the sidecar until `shutdown` resolves or a server fails, then stops it
/// cleanly.
pub async fn run(
    config: SidecarConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    let mut sidecar = Sidecar::start(config).await?;
    let failure = tokio::select! {
        () = shutdown => None,
        error = sidecar.failed() => Some(error),
    };
    match failure {
        None => {
            tracing::info!("keel monitor: shutting down");
            sidecar.shutdown().await
        }
        Some(error) => {
            tracing::error!(%error, "keel monitor: a server failed; shutting down");
            if let Err(also) = sidecar.shutdown().await {
                tracing::error!(error = %also, "keel monitor: shutdown failed too");
            }
            Err(error)
        }
    }
}
