//! Bringing one model's served versions in line with its source: find what should serve, load what is
//! new or changed, keep what is unchanged, and publish the result in one atomic step. A failure never
//! takes a serving version away; it is recorded, counted, and retried on a change or after a backoff.
//!
//! Everything up to the publish runs in the model's turn only (see the module's doc of `repository`):
//! blocking file work on the blocking pool, registry calls and loading on this task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_monitor::backoff::Backoff;

use super::loader::{VersionFiles, load_version};
use super::mlflow::MlflowClient;
use super::scan::{Candidate, Fingerprint, Scanner, version_dirs};
use super::{
    Failure, MODEL_FILE, ModelEntry, Repository, ServedVersion, Table, VersionState, blocking,
    in_place,
};
use crate::config::checked_seconds;
use crate::model_toml::{MlflowSource, ModelToml, SourceConfig};
use crate::triton_config;

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
    /// What the configuration asks for that Keel does not do; logged when it is first loaded.
    warnings: Vec<String>,
}

/// What the model's directory says, read on the blocking pool.
enum Local {
    /// The directory is gone: the model is unloaded.
    Gone,
    /// A filesystem model: its versions as found.
    Files(Plan),
    /// A registry model: the registry is asked next.
    Mlflow {
        source: MlflowSource,
        config: ModelToml,
        text: String,
        warnings: Vec<String>,
    },
}

/// A ready version of the old entry, or an attempt's result, per version.
struct Outcome {
    versions: BTreeMap<u64, VersionState>,
    failures: BTreeMap<u64, Failure>,
    /// Failed attempts of this round, for the caller.
    errors: Vec<String>,
}

impl Repository {
    /// Reconciles `name` in its turn and returns the failures of this round, if any.
    pub(super) async fn reconcile(&self, name: &str, mode: Mode) -> Result<(), String> {
        let turn = self.turn(name);
        let _turn = turn.lock().await;
        self.reconcile_turn(name, mode).await
    }

    /// [`Repository::reconcile`], the caller holding `name`'s turn.
    pub(super) async fn reconcile_turn(&self, name: &str, mode: Mode) -> Result<(), String> {
        // Checked in the turn: an unload that came first is never undone by a look that waited for it.
        if mode != Mode::Explicit && self.table().parked.contains(name) {
            return Ok(());
        }
        let current = self.models.load().get(name).cloned();
        let plan = match self.plan(name, mode).await {
            Ok(Some(plan)) => plan,
            Ok(None) => {
                if let Some(old) = current {
                    tracing::info!(model = name, "model directory removed; unloading");
                    let mut table = self.table();
                    if self.is_current(name, Some(&old)) {
                        self.remove_entry(&mut table, &old);
                    }
                }
                self.scanner.forget(&self.settings.root.join(name));
                return Ok(());
            }
            Err(why) => return Err(self.source_failed(name, current, why)),
        };
        self.source_ok(name, &plan.config);
        // Warnings about the configuration, once per configuration: when no version was loaded (or failed)
        // with it yet, and on every explicit load.
        let seen = current.as_ref().is_some_and(|c| {
            c.ready_versions()
                .any(|v| v.config_fingerprint == plan.config_fingerprint)
                || c.failures
                    .values()
                    .any(|f| f.config == plan.config_fingerprint)
        });
        if mode == Mode::Explicit || !seen {
            for warning in &plan.warnings {
                tracing::warn!(model = name, "{warning}");
            }
        }
        let old = current
            .clone()
            .unwrap_or_else(|| Arc::new(ModelEntry::empty(name)));
        let outcome = self.attempt(name, &old, &plan, mode).await;
        let entry = ModelEntry {
            name: name.to_string(),
            versions: outcome.versions,
            error: None,
            failures: outcome.failures,
            poll_every: poll_interval(&plan.config),
        };
        if !self.publish(current.as_ref(), entry) {
            return Err(format!(
                "model '{name}' was unloaded while it was being loaded"
            ));
        }
        match outcome.errors.is_empty() {
            true => Ok(()),
            false => Err(outcome.errors.join("; ")),
        }
    }

    /// What should serve, or `None` when the model's directory is gone.
    async fn plan(&self, name: &str, mode: Mode) -> Result<Option<Plan>, String> {
        let dir = self.settings.root.join(name);
        let scanner = self.scanner.clone();
        let trust = mode != Mode::Poll;
        match blocking(move || read_local(&dir, &scanner, trust)).await?? {
            Local::Gone => Ok(None),
            Local::Files(plan) => Ok(Some(plan)),
            Local::Mlflow {
                source,
                config,
                text,
                warnings,
            } => self
                .plan_mlflow(name, source, config, text, warnings)
                .await
                .map(Some),
        }
    }

    /// Resolves the alias and downloads its version (network on this task, files on the blocking pool).
    async fn plan_mlflow(
        &self,
        name: &str,
        source: MlflowSource,
        config: ModelToml,
        text: String,
        warnings: Vec<String>,
    ) -> Result<Plan, String> {
        let client = MlflowClient::new(&source, &self.settings.registry_http)?;
        let cache = self.settings.cache_dir.join(name);
        let version = match client.resolve_alias(&source.name, &source.alias).await {
            Ok(version) => version,
            Err(unreachable) => {
                // A restart while the registry is down: serve the version the alias last pointed at,
                // if its download is whole, rather than nothing. A model already serving keeps its
                // version and reports the registry's failure as before.
                let serving = self
                    .models
                    .load()
                    .get(name)
                    .is_some_and(|m| m.ready_versions().next().is_some());
                let (dir, alias) = (cache.clone(), source.alias.clone());
                let cached = blocking(move || super::mlflow::cached_alias(&dir, &alias)).await?;
                match cached {
                    Some(version) if !serving => {
                        tracing::warn!(
                            model = name,
                            version,
                            error = %unreachable,
                            "registry unreachable; serving the cached version the alias last pointed at"
                        );
                        version
                    }
                    _ => return Err(unreachable),
                }
            }
        };
        // 0700, and never a folder another user owns: on a shared /tmp they could plant a model.
        let cache_dir = self.settings.cache_dir.clone();
        blocking(move || keel_monitor::local_state::private_dir(&cache_dir))
            .await?
            .map_err(|e| format!("--cache-dir: {e}"))?;
        let files = client.fetch_version(&source.name, version, &cache).await?;
        let (dir, alias) = (cache.clone(), source.alias.clone());
        blocking(move || super::mlflow::remember_alias(&dir, &alias, version)).await?;
        blocking(move || registry_plan(version, files, config, text, warnings)).await?
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
                &self.hooks,
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
                            retry_at: Instant::now() + backoff(self.settings.poll, attempts),
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
    fn source_failed(&self, name: &str, current: Option<Arc<ModelEntry>>, why: String) -> String {
        let failures = {
            let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
            let slot = schedule
                .entry(name.to_string())
                .or_insert((Instant::now(), 0));
            slot.1 += 1;
            slot.0 = Instant::now() + backoff(self.settings.poll, slot.1);
            slot.1
        };
        self.metrics
            .reload
            .loads
            .with_label_values(&[name, "failure"])
            .inc();
        let serving = current
            .as_ref()
            .is_some_and(|c| c.ready_versions().next().is_some());
        if serving {
            tracing::warn!(model = name, cause = %why, attempt = failures, "model source unreadable; the loaded versions keep serving");
        } else {
            tracing::error!(model = name, cause = %why, attempt = failures, "model not loaded");
        }
        let mut entry = current
            .as_deref()
            .map_or_else(|| ModelEntry::empty(name), ModelEntry::clone);
        entry.error = Some(why.clone());
        self.publish(current.as_ref(), entry);
        why
    }

    fn source_ok(&self, name: &str, config: &ModelToml) {
        let every = poll_interval(config).or(self.settings.poll);
        let mut schedule = self.schedule.lock().unwrap_or_else(|e| e.into_inner());
        let next = Instant::now() + every.unwrap_or(Duration::ZERO);
        schedule.insert(name.to_string(), (next, 0));
    }

    /// Whether the table still holds `expected` for `name` (the same entry, or none): nothing but an
    /// unload changes a model's entry outside its turn. Call it with the table lock held.
    pub(super) fn is_current(&self, name: &str, expected: Option<&Arc<ModelEntry>>) -> bool {
        match (self.models.load().get(name), expected) {
            (None, None) => true,
            (Some(now), Some(expected)) => Arc::ptr_eq(now, expected),
            _ => false,
        }
    }

    /// Publishes `entry` in place of `expected` in one atomic step, and accounts for the change. Does
    /// nothing and returns `false` when the model was unloaded since `expected` was read: an unload is
    /// never undone by a look or load that started before it.
    pub(super) fn publish(&self, expected: Option<&Arc<ModelEntry>>, entry: ModelEntry) -> bool {
        // The monitor reads a new version's baseline file: blocking, if briefly.
        in_place(|| {
            let table = self.table();
            let name = entry.name.clone();
            if table.parked.contains(&name) || !self.is_current(&name, expected) {
                tracing::info!(model = %name, "the model was unloaded while it was being looked at; that look's outcome is discarded");
                return false;
            }
            let empty = ModelEntry::empty(&name);
            let old = expected.map_or(&empty, |e| &**e);
            let reload = &self.metrics.reload;
            reload.set_versions(&name, &old.states(), &entry.states());
            let before: Vec<*const ServedVersion> = old.ready_versions().map(Arc::as_ptr).collect();
            let after: Vec<*const ServedVersion> =
                entry.ready_versions().map(Arc::as_ptr).collect();
            if !before.is_empty() && before != after {
                reload.swaps.with_label_values(&[&name]).inc();
                tracing::info!(model = %name, from = ?old.ready_versions().map(|v| v.version).collect::<Vec<_>>(), to = ?entry.ready_versions().map(|v| v.version).collect::<Vec<_>>(), "serving versions swapped");
            }
            if let Some(observer) = &self.hooks.observer {
                // A reload of identical files and configuration is the same version to the monitor:
                // its window goes on.
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
                // Versions that stop serving (left the policy, directory removed) leave the monitor.
                for gone in old.ready_versions() {
                    if !entry
                        .ready_versions()
                        .any(|served| served.version == gone.version)
                    {
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
            true
        })
    }

    /// Takes `old` out of the table and its versions out of the monitor. The table lock is `_table`.
    pub(super) fn remove_entry(&self, _table: &mut Table, old: &ModelEntry) {
        self.metrics
            .reload
            .set_versions(&old.name, &old.states(), &[]);
        if let Some(observer) = &self.hooks.observer {
            for served in old.ready_versions() {
                observer.retired(&old.name, served.version);
            }
        }
        self.models.rcu(|models| {
            let mut models = BTreeMap::clone(models);
            models.remove(&old.name);
            models
        });
    }
}

/// Reads `dir`'s configuration (model.toml or config.pbtxt, [`triton_config::load`]) and, for a filesystem
/// model, finds its versions. Blocking.
fn read_local(dir: &Path, scanner: &Scanner, trust_first_look: bool) -> Result<Local, String> {
    if !dir.is_dir() {
        return Ok(Local::Gone);
    }
    let loaded = triton_config::load(dir)?;
    match &loaded.config.source {
        None => {
            let found = version_dirs(dir);
            if found.is_empty() {
                return Err(format!(
                    "no version directories (<model>/<N>/{MODEL_FILE}) in {}",
                    dir.display()
                ));
            }
            let selected = loaded.config.version_policy.select(&found);
            Ok(Local::Files(Plan {
                candidates: scanner.candidates(dir, &selected, trust_first_look),
                config_fingerprint: Fingerprint::of_text(&loaded.fingerprint_text),
                config: loaded.config,
                warnings: loaded.warnings,
            }))
        }
        Some(SourceConfig::Mlflow(source)) => Ok(Local::Mlflow {
            source: source.clone(),
            text: loaded.fingerprint_text.clone(),
            warnings: loaded.warnings.clone(),
            config: loaded.config,
        }),
    }
}

/// The plan for registry version `version`, downloaded into `files`. Blocking (reads its configuration).
fn registry_plan(
    version: u64,
    files: PathBuf,
    config: ModelToml,
    text: String,
    mut warnings: Vec<String>,
) -> Result<Plan, String> {
    // A configuration registered with the version configures it; the source stays the repository's.
    let own = triton_config::load(&files)
        .map_err(|e| format!("the configuration of MLflow version {version}: {e}"))?;
    let (config, text) = match own.file {
        triton_config::ConfigFile::None => (config, text),
        _ => {
            let mut own_config = own.config;
            own_config.source = config.source.clone();
            warnings.extend(own.warnings);
            (own_config, format!("{text}\n{}", own.fingerprint_text))
        }
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
        warnings,
    })
}

/// Wait before the next try after `attempts` failures in a row: doubling from the poll interval (at
/// least a second) up to [`MAX_BACKOFF`]. The repository's one backoff, for failed loads and
/// unreadable sources alike.
fn backoff(poll: Option<Duration>, attempts: u32) -> Duration {
    let first = poll
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_secs(1));
    Backoff::new(first, MAX_BACKOFF).delay(attempts)
}

/// A registry model's own poll interval (validated when model.toml was parsed).
fn poll_interval(config: &ModelToml) -> Option<Duration> {
    match &config.source {
        Some(SourceConfig::Mlflow(m)) => m
            .poll_interval
            .and_then(|s| checked_seconds("[source.mlflow] poll_interval", s, false).ok()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_poll_interval_up_to_five_minutes() {
        let poll = Some(Duration::from_millis(100));
        assert_eq!(
            backoff(poll, 1),
            Duration::from_secs(1),
            "at least a second"
        );
        assert_eq!(backoff(poll, 2), Duration::from_secs(2));
        assert_eq!(backoff(poll, 4), Duration::from_secs(8));
        assert_eq!(backoff(poll, 40), MAX_BACKOFF);
        assert_eq!(backoff(poll, u32::MAX), MAX_BACKOFF);
        let slow = Some(Duration::from_secs(86_400));
        assert_eq!(backoff(slow, 1), MAX_BACKOFF, "never past the cap");
        assert_eq!(backoff(None, 3), Duration::from_secs(4));
    }
}
