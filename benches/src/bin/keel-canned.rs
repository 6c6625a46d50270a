//! `keel-canned`: the canned-response server, Keel's HTTP and gRPC stacks with the model taken out.
//! See `keel_benches::canned`.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;
use keel_benches::canned;
use keel_server::conn_threads::ConnThreads;
use keel_server::grpc::serve::{Http2, serve};
use keel_server::listener::{ConnLimits, Incoming};
use keel_server::tls::Protocol as TlsProtocol;
use tokio::net::TcpListener;

/// The same allocator as `keel`, so the comparison measures the model path, not malloc.
#[global_allocator]
static ALLOCATOR: keel_server::alloc::Allocator = keel_server::alloc::Allocator;

/// Serves a fixed inference response over KServe V2 HTTP and gRPC, decoding every request with
/// Keel's codecs: the upper bound a real model server on this machine can approach.
#[derive(Parser)]
#[command(name = "keel-canned", version)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9000")]
    http_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9001")]
    grpc_addr: SocketAddr,
    /// Serve connections on this many connection threads, as `keel serve --connection-threads` does
    /// (HTTP then goes through Keel's own serving loop instead of `axum::serve`); 0, the default, serves
    /// them on the shared runtime, as the yardstick did.
    #[arg(long, default_value_t = 0)]
    connection_threads: usize,
}

async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("keel-canned: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (http_listener, http_addr) = bind(args.http_addr).await?;
    let (grpc_listener, grpc_addr) = bind(args.grpc_addr).await?;

    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let threads = ConnThreads::start(args.connection_threads)?;
    let limits = ConnLimits {
        max_connections: 65_536,
        header: None,
        idle: None,
        protocol: TlsProtocol::Grpc,
    };
    let http: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match &threads {
        None => {
            // As in Keel's server.rs: small responses must leave at once, not wait on Nagle's algorithm.
            let http_listener = http_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            Box::pin(axum::serve(http_listener, canned::http::router()).into_future())
        }
        Some(threads) => {
            // Keel's HTTP/1.1 loop (server/src/http/serve.rs) on the connection threads.
            let limits = ConnLimits {
                protocol: TlsProtocol::Http,
                ..limits
            };
            let incoming = Incoming::spawn(http_listener, None, limits, stopped.clone())?;
            let serving = keel_server::http::serve::serve(
                incoming,
                canned::http::router(),
                None,
                Some(threads.clone()),
                stopped.clone(),
            );
            Box::pin(async move {
                serving.await;
                Ok(())
            })
        }
    };
    // Keel's gRPC stack: its listener and its HTTP/2 serving loop (server/src/grpc/serve.rs), with
    // Keel's defaults and no deadlines.
    let incoming = Incoming::spawn(grpc_listener, None, limits, stopped.clone())?;
    let http2 = Http2 {
        max_concurrent_streams: 256,
        keepalive: None,
        deadline: None,
    };
    let grpc = serve(incoming, canned::grpc::service(), http2, threads, stopped);

    println!("http_addr={http_addr} grpc_addr={grpc_addr}");
    // Nothing to drain: a canned answer is never worth waiting for, so a signal simply exits.
    tokio::select! {
        r = http => r.context("HTTP server")?,
        () = grpc => anyhow::bail!("the gRPC server stopped"),
        r = stop_signal() => r?,
    }
    Ok(())
}
