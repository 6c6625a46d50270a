//! Start-up and graceful shutdown of everything `keel serve` runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{AdminAuth, ApiAuth};
use crate::backend::onnxruntime;
use crate::config::ServeConfig;
use crate::grpc::auth::ApiTokenLayer;
use crate::grpc::{self, GrpcState};
use crate::http::{self, HttpState};
use crate::infer::Infer;
use crate::listener::Incoming;
use crate::metrics::Metrics;
use crate::metrics_server;
use crate::monitoring::Monitoring;
use crate::readiness::Readiness;
use crate::repository::{Hooks, Repository, watcher};
use crate::tls::{Protocol as TlsProtocol, Tls, TlsError};
use keel_monitor::auth::{AuthError, BearerTokens};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the model repository {path}: {source}")]
    Repository {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Monitoring(crate::monitoring::MonitoringError),
    #[error("{0}")]
    Auth(AuthError),
    #[error("{0}")]
    Tls(TlsError),
    #[error("{0}")]
    Outbound(keel_monitor::outbound::OutboundError),
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
    ready: Readiness,
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
    /// Binds every listener and serves at once (live answers, ready does not), then loads the
    /// repository; returns when the first load is done.
    pub async fn start(config: ServeConfig) -> Result<Self, StartError> {
        match onnxruntime::init(config.ort_library.as_deref()) {
            Ok(path) => tracing::info!(library = %path.display(), "ONNX Runtime loaded"),
            Err(why) => {
                tracing::warn!(%why, "ONNX Runtime unavailable; models with backend \"auto\" run on tract")
            }
        }
        let metrics = Metrics::new();
        let admin = AdminAuth::new(
            BearerTokens::new(
                config.admin_token.as_deref(),
                config.admin_token_file.as_deref(),
                "--admin-token",
            )
            .map_err(StartError::Auth)?,
        );
        let api = ApiAuth::new(config.api_token.tokens().map_err(StartError::Auth)?);
        let tls = Tls::from_args(&config.tls, metrics.registry()).map_err(StartError::Tls)?;
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
        let settings = config.repository_settings().map_err(StartError::Outbound)?;
        let repository = Repository::new(settings, metrics.clone(), hooks).map_err(|source| {
            StartError::Repository {
                path: config.model_repository.display().to_string(),
                source,
            }
        })?;
        let repository = Arc::new(repository);
        let infer = Infer::new(repository.clone());
        let ready = Readiness::new(repository.clone(), config.strict_readiness);
        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let (http_listener, _) = bind(config.http_addr).await?;
        let (grpc_listener, _) = bind(config.grpc_addr).await?;
        let with_tls = |protocol| tls.clone().map(|tls| (tls, protocol));
        let incoming = |listener, protocol, addr| {
            Incoming::spawn(listener, with_tls(protocol), stopped.clone())
                .map_err(|source| StartError::Bind { addr, source })
        };
        let http_incoming = incoming(http_listener, TlsProtocol::Http, config.http_addr)?;
        let grpc_incoming = incoming(grpc_listener, TlsProtocol::Grpc, config.grpc_addr)?;
        let (http_addr, grpc_addr) = (http_incoming.local_addr(), grpc_incoming.local_addr());
        if let Some(tls) = &tls
            && config.tls.tls_reload_interval > 0.0
        {
            tls.spawn_reload(
                Duration::from_secs_f64(config.tls.tls_reload_interval),
                stopped.clone(),
            );
        }

        let router = http::router(HttpState {
            infer: infer.clone(),
            admin: admin.clone(),
            api: api.clone(),
            max_body_bytes: config.max_body_bytes,
            ready: ready.clone(),
            monitoring: monitoring.clone(),
        });
        let http_stopped = until_stopped(stopped.clone());
        let http = tokio::spawn(async move {
            axum::serve(http_incoming, router)
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
        let api_layer = api.enabled().then(|| ApiTokenLayer::new(api));
        let grpc_stopped = until_stopped(stopped.clone());
        let grpc = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(tower::util::MapResponseLayer::new(
                    grpc::canonical_size_status,
                ))
                .layer(tower::util::option_layer(api_layer))
                .add_service(grpc_service)
                .serve_with_incoming_shutdown(grpc_incoming.into_stream(), grpc_stopped)
                .await
                .map_err(ServeError::Grpc)
        });
        let metrics_thread = metrics_server::spawn(metrics_listener, metrics, stop.subscribe())
            .map_err(|source| StartError::Bind {
                addr: config.metrics_addr,
                source,
            })?;
        tracing::info!(http = %http_addr, grpc = %grpc_addr, metrics = %metrics_addr, tls = tls.is_some(), "listening (live, not ready); loading models");
        repository.load_all().await;
        ready.set_up(true);
        match repository.all_ready() {
            Ok(()) => tracing::info!("every model has a ready version"),
            Err(model) if config.strict_readiness => tracing::warn!(
                %model,
                "not ready: a model has no ready version (--strict-readiness false makes ready mean up)"
            ),
            Err(model) => tracing::warn!(%model, "a model has no ready version"),
        }
        let watcher = watcher::spawn(repository, stopped);
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
        self.ready.set_up(false);
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
