//! Server readiness, as Triton's `--strict-readiness`: with it (the default), ready means every model Keel
//! is set to serve has a READY version, so a rollout with a broken model never goes Ready; without it,
//! ready means the server has started. Either way ready is false before the first load finishes and
//! after shutdown starts, while live stays true.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::repository::Repository;

#[derive(Clone)]
pub struct Readiness {
    up: Arc<AtomicBool>,
    strict: bool,
    repository: Arc<Repository>,
}

impl Readiness {
    pub fn new(repository: Arc<Repository>, strict: bool) -> Self {
        Readiness {
            up: Arc::new(AtomicBool::new(false)),
            strict,
            repository,
        }
    }

    /// The first load finished (true) or shutdown started (false).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.up.load(Ordering::Relaxed) && (!self.strict || self.repository.all_ready().is_ok())
    }
}
