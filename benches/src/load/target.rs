//! The server under load, whichever protocol it speaks.

use std::sync::Arc;
use std::time::Duration;

use super::args::{Args, Protocol};
use super::grpc::GrpcTarget;
use super::http::HttpTarget;

/// Cheap to clone (one reference count): every worker and open-loop request holds one.
#[derive(Clone)]
pub enum Target {
    Http(Arc<HttpTarget>),
    Grpc(Arc<GrpcTarget>),
}

impl Target {
    pub async fn connect(args: &Args) -> anyhow::Result<Self> {
        Ok(match args.protocol {
            Protocol::Http => Target::Http(Arc::new(HttpTarget::new(args)?)),
            Protocol::Grpc => Target::Grpc(Arc::new(GrpcTarget::connect(args).await?)),
        })
    }

    /// Sends one request and waits for its whole answer; anything but success is an `Err` with a
    /// message, never a panic. `slot` spreads load over connections where the protocol needs it.
    pub async fn send(&self, slot: usize, payload: usize, timeout: Duration) -> Result<(), String> {
        let call = async {
            match self {
                Target::Http(t) => t.send(payload).await,
                Target::Grpc(t) => t.send(slot, payload).await,
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }
}

/// An error and its sources on one line: hyper's top-level messages alone ("client error
/// (Connect)") do not say what went wrong.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
