//! A model registry (an MLflow tracking server) that never answers, for the tests of a hung look.

/// A "tracking server" that accepts connections and never answers, until released; then it closes
/// them (and every later one) at once.
pub(crate) struct HungRegistry {
    addr: std::net::SocketAddr,
    release: tokio::sync::watch::Sender<bool>,
}

impl HungRegistry {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, mut released) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { return };
                        if !*released.borrow() {
                            held.push(stream);
                        }
                    }
                    changed = released.changed() => {
                        held.clear();
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        HungRegistry { addr, release }
    }

    /// model.toml of a model served from this registry.
    pub(crate) fn model_toml(&self, name: &str) -> String {
        format!(
            "[source.mlflow]\ntracking_uri = \"http://{}\"\nname = \"{name}\"\npoll_interval = 0.2\n",
            self.addr
        )
    }

    pub(crate) fn release(&self) {
        let _ = self.release.send(true);
    }
}
