//! The poller: looks at every model's source on its interval, so new versions, removed versions, changed
//! configuration and moved registry aliases take effect without a restart. Polling is the safety net
//! that never misses a change; one model's failure delays only that model's next look.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::reconcile::Mode;
use super::{Repository, model_dirs};

/// Shortest pause between looks, whatever the configured intervals say.
const MIN_TICK: Duration = Duration::from_millis(50);

/// Polls until `stop` turns true. Does nothing when polling is off.
pub fn spawn(repository: Arc<Repository>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(base) = repository.settings.poll else {
            return;
        };
        loop {
            let tick = repository.tick(base);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            repository.poll_once().await;
        }
    })
}

impl Repository {
    /// The base interval, or a registry model's shorter one.
    fn tick(&self, base: Duration) -> Duration {
        self.models
            .load()
            .values()
            .filter_map(|e| e.poll_every)
            .fold(base, Duration::min)
            .max(MIN_TICK)
    }

    /// One look at every model that is due: those in the repository directory, and those loaded whose
    /// directory disappeared (they are unloaded).
    pub async fn poll_once(&self) {
        let mut names = model_dirs(&self.settings.root).unwrap_or_default();
        names.extend(self.models.load().keys().cloned());
        names.sort();
        names.dedup();
        let now = Instant::now();
        for name in names {
            if self
                .parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&name)
            {
                continue;
            }
            let due = self
                .schedule
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .is_none_or(|(at, _)| *at <= now);
            if due {
                // Failures are logged, counted and recorded in the index by reconcile itself.
                let _ = self.reconcile(&name, Mode::Poll).await;
            }
        }
    }
}
