//! Bringing one model's served versions in line with its source: find what should serve, load what is
//! new or changed, keep what is unchanged, and publish the result in one atomic step. A failure never
//! takes a serving version away; it is recorded, counted, and retried on a change or after a backoff.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::loader::{VersionFiles, load_version};
use super::mlflow::MlflowClient;
use super::model_toml::{ModelToml, SourceConfig};
use super::scan::{Candidate, Fingerprint, version_dirs};
use super::{
    CONFIG_FILE, Failure, MODEL_FILE, ModelEntry, Repository, ServedVersion, VersionState,
};

/// Longest wait before a failed load or an unreachable registry is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Files present at start-up count as complete.
    Startup,
    /// A periodic look: new files must be stable across two looks; failures wait out their backoff.
    Poll,
    /// The load API: every selected version is loaded afresh, now.
    Explicit,
}

/// What the model's source says should be served.
struct Plan {
    config: ModelToml,
    /// Identifies the configuration text; a change reloads every version.
    config_fingerprint: Fingerprint,
    candidates: Vec<Candidate>,
}

/// A ready version of the old entry, or an attempt's result, per version.
struct Outcome {
    versions: BTreeMap<u64, VersionState>,
    failures: BTreeMap<u64, Failure>,
    /// Failed attempts of this round, for the caller.
    errors: Vec<String>,
}

impl Repository {
    /// Reconciles `name` and returns the failures of this round, if any.
    pub(super) async fn reconcile(&self, name: &str, mode: Mode) -> Result<(), String> {
        let _admin = self.admin.lock().await;
        let dir = self.settings.root.join(name);
        let current = self.models.load().get(name).cloned();
        if !dir.is_dir() {
            if let Some(old) = current {
                tracing::info!(model = name, "model directory removed; unloading");
                self.remove_entry(&old);
            }
            return Ok(());
        }
        let plan = match self.plan(name, &dir, mode).await {
            Ok(plan) => plan,
            Err(why) => return Err(self.source_failed(name, current.as_deref(), why)),
        };
        self.source_ok(name, &plan.config);
        let old = current.unwrap_or_else(|| Arc::new(ModelEntry::empty(name)));
        let outcome = self.attempt(name, &old, &plan, mode).await;
        let entry = ModelEntry {
            name: name.to_string(),
            versions: outcome.versions,
            error: None,
            failures: outcome.failures,
            poll_every: poll_interval(&plan.config),
        };
        self.publish(&old, entry);
        match outcome.errors.is_empty() {
            true => Ok(()),
            false => Err(outcome.errors.join("; ")),
        }
    }

    async fn plan(&self, name: &str, dir: &Path, mode: Mode) -> Result<Plan, String> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let config = ModelToml::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        match &config.source {
            None => {
                let found = version_dirs(dir);
                if found.is_empty() {
                    return Err(format!(
                        "no version directories (<model>/<N>/{MODEL_FILE}) in {}",
                        dir.display()
                    ));
                }
                let selected = config.version_policy.select(&found);
                let trust = mode != Mode::Poll;
                Ok(Plan {
                    candidates: self.scanner.candidates(dir, &selected, trust),
                    config_fingerprint: Fingerprint::of_text(&text),
                    config,
                })
            }
            Some(SourceConfig::Mlflow(source)) => {
                let client = MlflowClient::new(source, &self.settings.registry_http)?;
                let version = client.resolve_alias(&source.name, &source.alias).await?;
                // 0700, and never a folder another user owns: on a shared /tmp they could plant a model.
                keel_monitor::local_state::private_dir(&self.settings.cache_dir)
                    .map_err(|e| format!("--cache-dir: {e}"))?;
                let cache = self.settings.cache_dir.join(name);
                let files = client.fetch_version(&source.name, version, &cache).await?;
                // A model.toml registered with the version configures it; the source stays the repository's.
                let (config, text) = match std::fs::read_to_string(files.join(CONFIG_FILE)) {
                    Ok(own) => {
                        let mut own_config = ModelToml::parse(&own).map_err(|e| {
                            format!("{CONFIG_FILE} of MLflow version {version}: {e}")
                        })?;
                        own_config.source = config.source.clone();
                        (own_config, format!("{text}\n{own}"))
                    }
                    Err(_) => (config, text),
                };
                Ok(Plan {
                    candidates: vec![Candidate {
                        version,
                        fingerprint: Fingerprint::of_files(&files),
                        dir: files,
                        incomplete: None,
                    }],
                    config_fingerprint: Fingerprint::of_text(&text),
                    config,
                })
            }
        }
    }

    /// Loads what the plan needs and decides each version's state.
    async fn attempt(&self, name: &str, old: &ModelEntry, plan: &Plan, mode: Mode) -> Outcome {
        let now = Instant::now();
        let serving = old
            .ready_versions()
            .next_back()
            .map(|v| v.signature.clone());
        let mut out = Outcome {
            versions: BTreeMap::new(),
            failures: BTreeMap::new(),
            errors: Vec::new(),
        };
        for candidate in &plan.candidates {
            let v = candidate.version;
            let ready = match old.versions.get(&v) {
                Some(VersionState::Ready(served)) => Some(served.clone()),
                _ => None,
            };
            if let Some(why) = &candidate.incomplete {
                let state = match &ready {
                    Some(served) => VersionState::Ready(served.clone()),
                    None => VersionState::Unavailable(why.clone()),
                };
                out.versions.insert(v, state);
                continue;
            }
            let unchanged = |fingerprint: Fingerprint, config: Fingerprint| {
                mode != Mode::Explicit
                    && fingerprint == candidate.fingerprint
                    && config == plan.config_fingerprint
            };
            let failure = old.failures.get(&v);
            let waiting = failure
                .filter(|f| unchanged(f.fingerprint, f.config) && now < f.retry_at)
                .cloned();
            if let Some(failure) = waiting {
                let state = match &ready {
                    Some(served) => VersionState::Ready(served.clone()),
                    None => VersionState::Unavailable(failure.reason.clone()),
                };
                out.versions.insert(v, state);
                out.failures.insert(v, failure);
                continue;
            }
            if let Some(served) = &ready
                && failure.is_none()
                && unchanged(served.fingerprint, served.config_fingerprint)
            {
                out.versions.insert(v, VersionState::Ready(served.clone()));
                continue;
            }
            let files = VersionFiles {
                dir: candidate.dir.clone(),
                fingerprint: candidate.fingerprint,
                config_fingerprint: plan.config_fingerprint,
            };
            let started = Instant::now();
            let result = load_version(
                &self.metrics,
                self.hooks.log.as_ref(),
                name,
                v,
                files,
                &plan.config,
                serving.as_ref(),
            )
            .await;
            let reload = &self.metrics.reload;
            reload
                .load_duration
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(served) => {
                    reload.loads.with_label_values(&[name, "success"]).inc();
                    tracing::info!(model = name, version = v, backend = served.backend.name(), dir = %candidate.dir.display(), seconds = started.elapsed().as_secs_f64(), "model version ready");
                    out.versions
                        .insert(v, VersionState::Ready(Arc::new(served)));
                }
                Err(reason) => {
                    reload.loads.with_label_values(&[name, "failure"]).inc();
                    tracing::error!(model = name, version = v, dir = %candidate.dir.display(), cause = %reason, "model version failed to load");
                    let attempts = failure
                        .filter(|f| unchanged(f.fingerprint, f.config))
                        .map_or(0, |f| f.attempts)
                        + 1;
                    out.errors.push(format!("version {v}: {reason}"));
                    let state = match &ready {
                        Some(served) => VersionState::Ready(served.clone()),
                        None => VersionState::Unavailable(reason.clone()),
                    };
                    out.versions.insert(v, state);
                    out.failures.insert(
                        v,
                        Failure {
                            reason,
                            fingerprint: candidate.fingerprint,
                            config: plan.config_fingerprint,
                            attempts,
                            retry_at: Instant::now() + self.backoff(attempts),
                        },
                    );
                }
            }
        }
        // A version leaving the selection keeps serving until one the selection wants is ready.
        if !out
            .versions
            .values()
            .any(|s| matches!(s, VersionState::Ready(_)))
        {
            for served in old.ready_versions() {
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    out.versions.entry(served.version)
                {
                    tracing::warn!(
                        model = name,
                        version = served.version,
                        "no selected version is ready; the previous one keeps serving"
                    );
                    slot.insert(VersionState::Ready(served.clone()));
                }
            }
        }
        out
    }

    /// The source could not be read (bad model.toml, no versions, registry unreachable): keep serving
    /// what serves, record why, look again after a backoff.
    fn source_failed(&self, name: &str, current: Option<&ModelEntry>, why: String) -> String {
        let failures = {
            let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
            let slot = schedule
                .entry(name.to_string())
                .or_insert((Instant::now(), 0));
            slot.1 += 1;
            slot.0 = Instant::now() + self.backoff(slot.1);
            slot.1
        };
        self.metrics
            .reload
            .loads
            .with_label_values(&[name, "failure"])
            .inc();
        let serving = current.is_some_and(|c| c.ready_versions().next().is_some());
        if serving {
            tracing::warn!(model = name, cause = %why, attempt = failures, "model source unreadable; the loaded versions keep serving");
        } else {
            tracing::error!(model = name, cause = %why, attempt = failures, "model not loaded");
        }
        let old = current.map_or_else(|| ModelEntry::empty(name), ModelEntry::clone);
        let mut entry = old.clone();
        entry.error = Some(why.clone());
        self.publish(&old, entry);
        why
    }

    fn source_ok(&self, name: &str, config: &ModelToml) {
        let every = poll_interval(config).or(self.settings.poll);
        let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        let next = Instant::now() + every.unwrap_or(Duration::ZERO);
        schedule.insert(name.to_string(), (next, 0));
    }

    /// Doubles from the poll interval (at least a second) up to [`MAX_BACKOFF`].
    fn backoff(&self, attempts: u32) -> Duration {
        let base = self
            .settings
            .poll
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_secs(1));
        base.saturating_mul(1 << attempts.saturating_sub(1).min(16))
            .min(MAX_BACKOFF)
    }

    /// Publishes `entry` in place of `old` in one atomic step, and accounts for the change.
    pub(super) fn publish(&self, old: &ModelEntry, entry: ModelEntry) {
        let name = entry.name.clone();
        let reload = &self.metrics.reload;
        reload.set_versions(&name, &old.states(), &entry.states());
        let before: Vec<*const ServedVersion> = old.ready_versions().map(Arc::as_ptr).collect();
        let after: Vec<*const ServedVersion> = entry.ready_versions().map(Arc::as_ptr).collect();
        if !before.is_empty() && before != after {
            reload.swaps.with_label_values(&[&name]).inc();
            tracing::info!(model = %name, from = ?old.ready_versions().map(|v| v.version).collect::<Vec<_>>(), to = ?entry.ready_versions().map(|v| v.version).collect::<Vec<_>>(), "serving versions swapped");
        }
        if let Some(observer) = &self.hooks.observer {
            // A reload of identical files and configuration is the same version to the monitor: its
            // window goes on.
            let known = |served: &ServedVersion| {
                old.ready_versions().any(|o| {
                    o.version == served.version
                        && o.fingerprint == served.fingerprint
                        && o.config_fingerprint == served.config_fingerprint
                })
            };
            for served in entry.ready_versions() {
                if !known(served) {
                    observer.serving(served);
                }
            }
            for gone in old.ready_versions() {
                if !entry.versions.contains_key(&gone.version) {
                    observer.retired(&name, gone.version);
                }
            }
        }
        let entry = Arc::new(entry);
        self.models.rcu(|models| {
            let mut models = BTreeMap::clone(models);
            models.insert(name.clone(), entry.clone());
            models
        });
    }

    pub(super) fn remove_entry(&self, old: &ModelEntry) {
        self.metrics
            .reload
            .set_versions(&old.name, &old.states(), &[]);
        self.models.rcu(|models| {
            let mut models = BTreeMap::clone(models);
            models.remove(&old.name);
            models
        });
    }
}

fn poll_interval(config: &ModelToml) -> Option<Duration> {
    match &config.source {
        Some(SourceConfig::Mlflow(m)) => m
            .poll_interval
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64),
        None => None,
    }
}
