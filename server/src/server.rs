//! Start-up and graceful shutdown of everything `keel serve` runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::AdminAuth;
use crate::backend::onnxruntime;
use crate::config::ServeConfig;
use crate::grpc::{self, GrpcState};
use crate::http::{self, HttpState};
use crate::infer::Infer;
use crate::metrics::Metrics;
use crate::metrics_server;
use crate::monitoring::Monitoring;
use crate::repository::{Hooks, Repository, watcher};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the model repository {path}: {source}")]
    Repository {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Monitoring(crate::monitoring::MonitoringError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(tonic::transport::Error),
    #[error("server task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// A running server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    metrics_thread: std::thread::JoinHandle<std::io::Result<()>>,
    infer: Infer,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    http: JoinHandle<Result<(), ServeError>>,
    grpc: JoinHandle<Result<(), ServeError>>,
    watcher: JoinHandle<()>,
    monitoring: Option<Arc<Monitoring>>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, local))
}

impl Server {
    /// Loads the repository, then binds and serves. Returns once the server accepts requests.
    pub async fn start(config: ServeConfig) -> Result<Self, StartError> {
        match onnxruntime::init(config.ort_library.as_deref()) {
            Ok(path) => tracing::info!(library = %path.display(), "ONNX Runtime loaded"),
            Err(why) => {
                tracing::warn!(%why, "ONNX Runtime unavailable; models with backend \"auto\" run on tract")
            }
        }
        let metrics = Metrics::new();
        let (metrics_listener, metrics_addr) =
            metrics_server::bind(config.metrics_addr).map_err(|source| StartError::Bind {
                addr: config.metrics_addr,
                source,
            })?;
        let monitoring =
            Monitoring::start(&config, metrics.registry()).map_err(StartError::Monitoring)?;
        let hooks = Hooks {
            log: monitoring.as_ref().map(|m| m.log().clone()),
            observer: monitoring
                .clone()
                .map(|m| m as Arc<dyn crate::repository::VersionObserver>),
        };
        let repository = Repository::load(config.repository_settings(), metrics.clone(), hooks)
            .await
            .map_err(|source| StartError::Repository {
                path: config.model_repository.display().to_string(),
                source,
            })?;
        let repository = Arc::new(repository);
        let infer = Infer::new(repository.clone());
        let ready = Arc::new(AtomicBool::new(true));
        let admin = AdminAuth::new(config.admin_token.clone());
        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let watcher = watcher::spawn(repository, stopped.clone());
        let (http_listener, http_addr) = bind(config.http_addr).await?;
        let (grpc_listener, grpc_addr) = bind(config.grpc_addr).await?;

        let router = http::router(HttpState {
            infer: infer.clone(),
            admin: admin.clone(),
            max_body_bytes: config.max_body_bytes,
            ready: ready.clone(),
            monitoring: monitoring.clone(),
        });
        let http_stopped = until_stopped(stopped.clone());
        let http = tokio::spawn(async move {
            // Small responses must leave at once, not wait on Nagle's algorithm.
            let http_listener = http_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(http_listener, router)
                .with_graceful_shutdown(http_stopped)
                .await
                .map_err(ServeError::Http)
        });
        let grpc_service = grpc::service(
            GrpcState {
                infer: infer.clone(),
                admin,
                ready: ready.clone(),
            },
            config.grpc_max_message_bytes,
        );
        let grpc = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(tower::util::MapResponseLayer::new(
                    grpc::canonical_size_status,
                ))
                .add_service(grpc_service)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(grpc_listener).map(|conn| {
                        let tcp = conn?;
                        tcp.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(tcp)
                    }),
                    until_stopped(stopped),
                )
                .await
                .map_err(ServeError::Grpc)
        });
        let metrics_thread = metrics_server::spawn(metrics_listener, metrics, stop.subscribe())
            .map_err(|source| StartError::Bind {
                addr: config.metrics_addr,
                source,
            })?;
        tracing::info!(%http_addr, %grpc_addr, %metrics_addr, "serving KServe V2 over HTTP and gRPC");
        Ok(Server {
            http_addr,
            grpc_addr,
            metrics_addr,
            metrics_thread,
            infer,
            ready,
            stop,
            http,
            grpc,
            watcher,
            monitoring,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn infer(&self) -> &Infer {
        &self.infer
    }

    /// Stops accepting connections, lets in-flight requests finish, then returns.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.ready.store(false, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let http = self.http.await.map_err(ServeError::Task)?;
        self.watcher.await.map_err(ServeError::Task)?;
        if let Some(monitoring) = &self.monitoring {
            monitoring.shutdown().await;
        }
        let grpc = self.grpc.await.map_err(ServeError::Task)?;
        let metrics = tokio::task::spawn_blocking(move || self.metrics_thread.join())
            .await
            .map_err(ServeError::Task)?
            .unwrap_or_else(|_| Err(std::io::Error::other("the metrics thread panicked")))
            .map_err(ServeError::Http);
        http.and(grpc).and(metrics)
    }
}
