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
use crate::conn_threads::{self, ConnThreads};
use crate::grpc::auth::ApiTokenLayer;
use crate::grpc::deadline::DeadlineLayer;
use crate::grpc::{self, GrpcShared, GrpcState};
use crate::http::{self, HttpState};
use crate::infer::Infer;
use crate::listener::{ConnLimits, Incoming};
use crate::metrics::Metrics;
use crate::metrics_server;
use crate::monitoring::Monitoring;
use crate::otel;
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
    #[error("invalid configuration: {0}")]
    Config(String),
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
    #[error("cannot start the connection threads: {0}")]
    Threads(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
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
    http: JoinHandle<()>,
    grpc: JoinHandle<()>,
    /// The repository's first load, then its poller.
    watcher: JoinHandle<()>,
    /// Turns true once the first load has finished (whatever its outcome).
    loaded: watch::Receiver<bool>,
    monitoring: Option<Arc<Monitoring>>,
    /// The OTLP span exporter, with `--otlp-endpoint`.
    exporter: Option<otel::Exporter>,
    shutdown_timeout: Duration,
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
    /// [`Server::listen`], then waits for the repository's first load.
    pub async fn start(config: ServeConfig) -> Result<Self, StartError> {
        let server = Server::listen(config).await?;
        server.loaded().await;
        Ok(server)
    }

    /// Waits until the repository's first load has finished (or shutdown abandoned it).
    pub async fn loaded(&self) {
        let mut loaded = self.loaded.clone();
        let _ = loaded.wait_for(|l| *l).await;
    }

    /// Binds every listener and serves at once (live answers, ready does not), and loads the
    /// repository in the background; returns as soon as the listeners are up.
    pub async fn listen(config: ServeConfig) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        // The registry cache is made (0700) at the first download; one that exists already is checked
        // now, so a folder another user planted on a shared /tmp stops start-up with a clear error.
        if config.cache_dir.exists() {
            keel_monitor::local_state::private_dir(&config.cache_dir)
                .map_err(|e| StartError::Config(format!("--cache-dir: {e}")))?;
        }
        if config.limits.max_inflight_bytes < config.max_body_bytes {
            tracing::warn!(
                max_inflight_bytes = config.limits.max_inflight_bytes,
                max_body_bytes = config.max_body_bytes,
                "--max-inflight-bytes is below --max-body-bytes: the largest bodies will be refused with 413"
            );
        }
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
            decode_request: Some(decode_warmup_request),
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

        let (http_listener, _) = bind(config.http_addr).await?;
        let (grpc_listener, _) = bind(config.grpc_addr).await?;
        let limits = &config.limits;
        let incoming = |listener, protocol, addr| {
            let conn_limits = ConnLimits {
                max_connections: limits.max_connections,
                header: seconds(limits.header_read_timeout),
                idle: seconds(limits.idle_timeout),
                protocol,
            };
            Incoming::spawn(listener, tls.clone(), conn_limits, stopped.clone())
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

        let (tracer, exporter) = match &config.otlp.otlp_endpoint {
            Some(endpoint) => {
                let (tracer, exporter) = otel::Tracer::start(
                    endpoint,
                    config.otlp.otlp_sampling_ratio,
                    &config.otlp.otlp_service_name,
                    metrics.registry(),
                );
                tracing::info!(
                    endpoint = %keel_monitor::outbound::redact_url(endpoint),
                    sampling_ratio = config.otlp.otlp_sampling_ratio,
                    "exporting inference spans over OTLP/gRPC"
                );
                (tracer, Some(exporter))
            }
            None => (otel::Tracer::default(), None),
        };
        let budget = crate::budget::Budget::new(config.limits.max_inflight_bytes, &metrics);
        let router = http::router(HttpState {
            infer: infer.clone(),
            admin: admin.clone(),
            api: api.clone(),
            max_body_bytes: config.max_body_bytes,
            budget: budget.clone(),
            max_bytes_elements: config.limits.max_bytes_elements,
            ready: ready.clone(),
            request_timeout: seconds(limits.request_timeout),
            monitoring: monitoring.clone(),
            tracer: tracer.clone(),
        });
        let body_timeout = seconds(limits.body_read_timeout);
        let threads = ConnThreads::start(
            config
                .connection_threads
                .unwrap_or_else(conn_threads::default_count),
        )
        .map_err(StartError::Threads)?;
        let http = tokio::spawn(http::serve::serve(
            http_incoming,
            router,
            body_timeout,
            threads.clone(),
            stopped.clone(),
        ));
        let grpc_service = grpc::convert::guard::service(
            GrpcState::new(GrpcShared {
                infer: infer.clone(),
                admin,
                ready: ready.clone(),
                stopping: stopped.clone(),
                budget,
                max_bytes_elements: config.limits.max_bytes_elements,
                tracer,
            }),
            config.grpc_max_message_bytes,
        );
        let api_layer = api.enabled().then(|| ApiTokenLayer::new(api));
        // The deadline layer goes on per connection (grpc::serve), so each has its own timers.
        let grpc_service = tower::ServiceBuilder::new()
            .layer(tower::util::MapResponseLayer::new(
                grpc::canonical_size_status,
            ))
            .layer(tower::util::option_layer(api_layer))
            .service(grpc_service);
        let http2 = grpc::serve::Http2 {
            max_concurrent_streams: limits.grpc_max_concurrent_streams,
            keepalive: seconds(limits.grpc_keepalive),
            deadline: Some(DeadlineLayer::new(seconds(limits.request_timeout))),
        };
        let grpc = tokio::spawn(grpc::serve::serve(
            grpc_incoming,
            grpc_service,
            http2,
            threads,
            stopped.clone(),
        ));
        let metrics_limits = ConnLimits {
            max_connections: limits.max_connections,
            header: seconds(limits.header_read_timeout),
            idle: seconds(limits.idle_timeout),
            protocol: TlsProtocol::Http,
        };
        let metrics_thread = metrics_server::spawn(
            metrics_listener,
            metrics,
            metrics_limits,
            body_timeout,
            stop.subscribe(),
        )
        .map_err(|source| StartError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
        tracing::info!(http = %http_addr, grpc = %grpc_addr, metrics = %metrics_addr, tls = tls.is_some(), "listening (live, not ready); loading models");
        let (loaded_tx, loaded) = watch::channel(false);
        // Loading runs beside the listeners, so a SIGTERM during a slow load (a hung registry) is
        // handled like any other: the loads are abandoned, nothing half-done is published.
        let watcher = {
            let ready = ready.clone();
            let strict = config.strict_readiness;
            let mut stop_rx = stopped.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = repository.load_all() => {}
                    _ = stop_rx.wait_for(|s| *s) => return,
                }
                ready.set_up(true);
                match repository.all_ready() {
                    Ok(()) => tracing::info!("every model has a ready version"),
                    Err(model) if strict => tracing::warn!(
                        %model,
                        "not ready: a model has no ready version (--strict-readiness false makes ready mean up)"
                    ),
                    Err(model) => tracing::warn!(%model, "a model has no ready version"),
                }
                let _ = loaded_tx.send(true);
                tracing::info!(%http_addr, %grpc_addr, %metrics_addr, "serving KServe V2 over HTTP and gRPC");
                if let Err(e) = watcher::spawn(repository, stopped).await {
                    tracing::error!(error = %e, "the repository poller failed");
                }
            })
        };
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
            loaded,
            monitoring,
            exporter,
            shutdown_timeout: seconds(config.limits.shutdown_timeout)
                .unwrap_or(Duration::from_secs(3600)),
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

    /// Within the shutdown deadline (`--shutdown-timeout`): readiness turns false, both listeners stop
    /// accepting, HTTP and gRPC drain together (idle connections close at once, requests in flight
    /// finish), then the prediction log and monitor flush, so rows of the last requests are kept.
    /// Whatever is still running at the deadline is cut off.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        self.ready.set_up(false);
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout_at(deadline, async {
            tokio::join!(&mut self.http, &mut self.grpc, &mut self.watcher)
        })
        .await;
        match drained {
            Ok((http, grpc, watcher)) => {
                watcher.map_err(ServeError::Task)?;
                http.map_err(ServeError::Task)?;
                grpc.map_err(ServeError::Task)?;
            }
            Err(_) => {
                tracing::warn!(
                    timeout_s = self.shutdown_timeout.as_secs_f64(),
                    "requests still running at the shutdown deadline are cut off"
                );
                self.http.abort();
                self.grpc.abort();
                self.watcher.abort();
            }
        }
        // The spans of the last requests (queued as they were answered) go before the log's flush,
        // which may take the rest of the deadline.
        if let Some(exporter) = self.exporter.take() {
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(std::time::Duration::from_secs(1));
            exporter
                .shutdown_by(tokio::time::Instant::now() + left)
                .await;
        }
        if let Some(monitoring) = &self.monitoring {
            // The log's flush gets what is left of the deadline, and at least a moment.
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(std::time::Duration::from_secs(1));
            // It finishes the Parquet files by then, counting what it could not deliver.
            monitoring
                .shutdown_by(std::time::Instant::now() + left)
                .await;
        }
        tokio::task::spawn_blocking(move || self.metrics_thread.join())
            .await
            .map_err(ServeError::Task)?
            .unwrap_or_else(|_| Err(std::io::Error::other("the metrics thread panicked")))
            .map_err(ServeError::Http)
    }
}

/// Seconds from a flag as a duration; 0 means no limit.
fn seconds(value: f64) -> Option<Duration> {
    (value > 0.0)
        .then(|| Duration::try_from_secs_f64(value).ok())
        .flatten()
}

/// A V2 JSON inference request (a `[reload] warmup_request` file) as its named input tensors, by the
/// HTTP front end's own decoder, so warm-up data means what it would mean in a request.
pub fn decode_warmup_request(body: &[u8]) -> Result<Vec<crate::tensor::Tensor>, String> {
    crate::http::codec::decode_request(body, None)
        .map(|decoded| decoded.request.inputs)
        .map_err(|e| e.to_string())
}
