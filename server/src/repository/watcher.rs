//! The poller: looks at every model's source on its interval, so new versions, removed versions, changed
//! configuration and moved registry aliases take effect without a restart. Polling is the safety net
//! that never misses a change; one model's failure delays only that model's next look, and each look
//! runs in its own task, so one slow model (a hung registry, a large download) delays no other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::reconcile::Mode;
use super::{Repository, blocking, model_dirs};

/// Shortest pause between looks, whatever the configured intervals say.
const MIN_TICK: Duration = Duration::from_millis(50);

/// Polls until `stop` turns true. Does nothing when polling is off. Looks still running when it stops
/// are abandoned (a hung registry must not hold up shutdown): nothing half-done is ever published.
pub fn spawn(repository: Arc<Repository>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(base) = repository.settings.poll else {
            return;
        };
        let mut looks = JoinSet::new();
        loop {
            let tick = repository.tick(base);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            while let Some(done) = looks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a repository look failed");
                }
            }
            for name in repository.due().await {
                // Still looking at it, or loading it through the API: its next look waits for a tick.
                let Ok(turn) = repository.turn(&name).try_lock_owned() else {
                    continue;
                };
                let repository = repository.clone();
                looks.spawn(async move {
                    let _turn = turn;
                    // Failures are logged, counted and recorded in the index by reconcile itself.
                    let _ = repository.reconcile_turn(&name, Mode::Poll).await;
                });
            }
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

    /// Models due a look: those in the repository directory and those loaded whose directory may have
    /// disappeared (they are unloaded), less the parked ones and those waiting out their interval.
    async fn due(&self) -> Vec<String> {
        let root = self.settings.root.clone();
        let mut names = blocking(move || model_dirs(&root).unwrap_or_default())
            .await
            .unwrap_or_default();
        names.extend(self.models.load().keys().cloned());
        names.sort();
        names.dedup();
        let parked = self.table().parked.clone();
        let schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        names.retain(|name| {
            !parked.contains(name) && schedule.get(name).is_none_or(|(at, _)| *at <= now)
        });
        names
    }

    /// One look at every model that is due, one after another, each in its turn (the poller looks at
    /// each in its own task instead).
    pub async fn poll_once(&self) {
        for name in self.due().await {
            let _ = self.reconcile(&name, Mode::Poll).await;
        }
    }
}
