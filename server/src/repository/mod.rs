//! The model repository: `<root>/<model>/<version>/model.onnx` plus optional `<root>/<model>/model.toml`,
//! or versions from an MLflow registry alias. Loaded versions live in a table published through
//! `ArcSwap`, so request lookups never take a lock; [`reconcile`] is the one path that changes it, driven
//! by start-up, the poller ([`watcher`]) and the load/unload API alike.
//!
//! Locking: each model has its own turn (an async mutex) that its looks and explicit loads take, held
//! across registry I/O, downloads, loading and warm-up, so a slow or hung model delays only itself. The
//! table's one lock (`Repository::table`) is held only for the final step of a change: check that the
//! model was not unloaded meanwhile, tell the monitor, swap the table. An unload takes only that lock,
//! so it never waits for a load in progress; the load's result is discarded instead.

mod loader;
mod mlflow;
mod reconcile;
pub mod scan;
pub mod warmup;
pub mod watcher;

pub use loader::{VersionFiles, load_version};
pub use mlflow::MlflowClient;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::backend::BackendKind;
use crate::config::{ModelControlMode, RepositorySettings};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, VersionMetrics};
use crate::model_toml::ModelToml;
use crate::prediction_log::{PredictionLog, VersionLog};
use crate::scheduler::Scheduler;
use crate::signature::Signature;
use crate::stats::Stats;
use scan::{Fingerprint, Scanner};

pub const MODEL_FILE: &str = "model.onnx";
pub const CONFIG_FILE: &str = "model.toml";

/// One loaded, ready-to-serve model version.
pub struct ServedVersion {
    pub model: String,
    pub version: u64,
    pub signature: Signature,
    pub config: ModelToml,
    pub backend: BackendKind,
    pub stats: Arc<Stats>,
    pub(crate) metrics: Arc<VersionMetrics>,
    pub(crate) scheduler: Scheduler,
    /// The directory its files were loaded from (a repository version directory or a download cache).
    pub dir: PathBuf,
    /// Its files as loaded; a different fingerprint on disk means a new copy to load.
    pub fingerprint: Fingerprint,
    /// The model.toml it was loaded with; a change reloads it.
    pub config_fingerprint: Fingerprint,
    /// Where its served rows are logged, when monitoring is on.
    pub(crate) log: Option<VersionLog>,
}

/// Told when versions start and stop serving (the drift monitor switches baselines on it).
pub trait VersionObserver: Send + Sync {
    fn serving(&self, version: &ServedVersion);
    fn retired(&self, model: &str, version: u64);
}

/// What the repository hands every version it loads, and whom it tells.
#[derive(Clone, Default)]
pub struct Hooks {
    pub log: Option<PredictionLog>,
    pub observer: Option<Arc<dyn VersionObserver>>,
    /// Decodes `[reload] warmup_request` files (V2 JSON); without it such a model fails to load.
    pub decode_request: Option<warmup::DecodeRequest>,
}

impl Drop for ServedVersion {
    fn drop(&mut self) {
        tracing::info!(model = %self.model, version = self.version, "model version released");
    }
}

#[derive(Clone)]
pub enum VersionState {
    Ready(Arc<ServedVersion>),
    /// Not servable; why (load error, or incomplete files).
    Unavailable(String),
}

impl VersionState {
    fn label(&self) -> &'static str {
        match self {
            VersionState::Ready(_) => "READY",
            VersionState::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

/// The last failed attempt to load a version, kept so polling retries it on a change or after a
/// backoff, never on every poll and never never.
#[derive(Clone, Debug)]
pub struct Failure {
    pub reason: String,
    fingerprint: Fingerprint,
    config: Fingerprint,
    attempts: u32,
    retry_at: Instant,
}

#[derive(Clone)]
pub struct ModelEntry {
    pub name: String,
    pub versions: BTreeMap<u64, VersionState>,
    /// A problem with the model as a whole (bad model.toml, no versions, registry unreachable). Versions
    /// already serving keep serving through it.
    pub error: Option<String>,
    /// Failed loads per version, including replacements that failed while an older copy kept serving.
    pub failures: BTreeMap<u64, Failure>,
    /// How often the model's source is asked for changes (MLflow models set their own).
    poll_every: Option<Duration>,
}

impl ModelEntry {
    fn empty(name: &str) -> Self {
        ModelEntry {
            name: name.to_string(),
            versions: BTreeMap::new(),
            error: None,
            failures: BTreeMap::new(),
            poll_every: None,
        }
    }

    pub fn ready_versions(&self) -> impl DoubleEndedIterator<Item = &Arc<ServedVersion>> {
        self.versions.values().filter_map(|s| match s {
            VersionState::Ready(v) => Some(v),
            VersionState::Unavailable(_) => None,
        })
    }

    fn states(&self) -> Vec<(u64, &'static str)> {
        self.versions.iter().map(|(v, s)| (*v, s.label())).collect()
    }
}

pub struct Repository {
    settings: RepositorySettings,
    models: ArcSwap<BTreeMap<String, Arc<ModelEntry>>>,
    /// Held for every change of `models` and of the parked set, so a check of either and the swap that
    /// depends on it are one step; never held across I/O or an await. Lookups never wait on it.
    table: Mutex<Table>,
    /// Each model's turn: its looks and explicit loads take it one at a time, across registry I/O,
    /// downloads, loading and warm-up. Other models never wait on it.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Arc<Metrics>,
    scanner: Arc<Scanner>,
    /// When each model's source is next due a look, and how many looks in a row failed.
    schedule: Mutex<HashMap<String, (Instant, u32)>>,
    hooks: Hooks,
}

/// What the table lock guards besides the table itself.
#[derive(Default)]
struct Table {
    /// Models unloaded through the API: polling leaves them alone until they are loaded again.
    parked: BTreeSet<String>,
}

/// One row of the repository index (Triton's RepositoryIndex).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    pub name: String,
    /// Empty for a model that is not loaded or failed as a whole.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Repository {
    /// Loads every model under `settings.root`. A model that fails is logged and recorded, never fatal.
    pub async fn load(
        settings: RepositorySettings,
        metrics: Arc<Metrics>,
        hooks: Hooks,
    ) -> std::io::Result<Self> {
        let repository = Self::new(settings, metrics, hooks)?;
        repository.load_all().await;
        Ok(repository)
    }

    /// An empty repository over `settings.root`, which must be readable; [`Repository::load_all`] loads it.
    pub fn new(
        settings: RepositorySettings,
        metrics: Arc<Metrics>,
        hooks: Hooks,
    ) -> std::io::Result<Self> {
        let found = model_dirs(&settings.root)?;
        // A model named for start-up that is not there is a mistake in the command line, as in Triton.
        if let Some(missing) = settings
            .startup_models
            .iter()
            .flatten()
            .find(|name| !found.contains(name))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "--load-model {missing}: no such model directory in {}",
                    settings.root.display()
                ),
            ));
        }
        Ok(Repository {
            settings,
            models: ArcSwap::from_pointee(BTreeMap::new()),
            table: Default::default(),
            turns: Default::default(),
            metrics,
            scanner: Default::default(),
            schedule: Default::default(),
            hooks,
        })
    }

    /// Loads every model found under the root now (start-up), four at a time: a slow one (a large
    /// graph, a hung registry) holds one of the four. A model that fails is logged and recorded.
    pub async fn load_all(&self) {
        let root = self.settings.root.clone();
        let mut names = blocking(move || model_dirs(&root).unwrap_or_default())
            .await
            .unwrap_or_default();
        if let Some(wanted) = &self.settings.startup_models {
            names.retain(|name| wanted.contains(name));
        }
        let queue = Mutex::new(names.into_iter());
        let take = || queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        let worker = async || {
            while let Some(name) = take() {
                let _ = self.reconcile(&name, reconcile::Mode::Startup).await;
            }
        };
        // The workers share this task; the loading itself runs on the blocking pool and on instance
        // threads.
        tokio::join!(worker(), worker(), worker(), worker());
    }

    /// `Ok` when every model Keel is set to serve has a ready version; else the first model that has
    /// none. Models unloaded through the API are not expected to serve.
    pub fn all_ready(&self) -> std::result::Result<(), String> {
        match self
            .models
            .load()
            .values()
            .find(|entry| entry.ready_versions().next().is_none())
        {
            None => Ok(()),
            Some(entry) => Err(entry.name.clone()),
        }
    }

    /// Every model in the repository directory and every loaded version, with its state.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let loaded = self.models.load();
        let mut rows = Vec::new();
        for name in model_dirs(&self.settings.root)
            .unwrap_or_default()
            .into_iter()
            .chain(loaded.keys().cloned())
        {
            if rows.iter().any(|r: &IndexEntry| r.name == name) {
                continue;
            }
            let Some(entry) = loaded.get(&name) else {
                // Unloaded through the API, never looked at yet, or its first look under way.
                let parked = self.table().parked.contains(&name);
                let reason = match !parked && self.loading(&name) {
                    true => "loading",
                    false => "unloaded",
                };
                let reason = reason.to_string();
                rows.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason,
                });
                continue;
            };
            if let Some(why) = &entry.error {
                let row = IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: why.clone(),
                };
                rows.push(row);
            }
            for (version, state) in &entry.versions {
                let reason = match state {
                    VersionState::Unavailable(why) => why.clone(),
                    // A ready version whose replacement failed says so, while it keeps serving.
                    VersionState::Ready(_) => entry
                        .failures
                        .get(version)
                        .map(|f| format!("serving; reload failed: {}", f.reason))
                        .unwrap_or_default(),
                };
                let state = state.label();
                rows.push(IndexEntry {
                    name: name.clone(),
                    version: version.to_string(),
                    state,
                    reason,
                });
            }
        }
        if ready_only {
            rows.retain(|r| r.state == "READY");
        }
        rows
    }

    /// (Re)loads one model from its source, every selected version afresh, and publishes it in one step.
    /// Requests already running on a replaced version finish on it. Resumes polling of a parked model.
    /// Waits for this model's look in progress, if any; never for another model's.
    pub async fn load_model(&self, name: &str) -> Result<()> {
        self.control_allowed("load")?;
        check_model_name(name)?;
        let dir = self.settings.root.join(name);
        let exists = blocking(move || dir.is_dir())
            .await
            .map_err(Error::Internal)?;
        if !exists {
            return Err(Error::NotFound(format!(
                "no model '{name}' in the repository {}",
                self.settings.root.display()
            )));
        }
        self.table().parked.remove(name);
        self.reconcile(name, reconcile::Mode::Explicit)
            .await
            .map_err(|why| Error::invalid(format!("failed to load model '{name}': {why}")))
    }

    /// Stops serving a model, and polling leaves it unloaded until [`Repository::load_model`]. In-flight
    /// requests hold their version and finish; its instance threads end when the last of them does. A
    /// load of the model in progress is not waited for: its result is discarded.
    pub async fn unload_model(&self, name: &str) -> Result<()> {
        self.control_allowed("unload")?;
        check_model_name(name)?;
        let mut table = self.table();
        let Some(old) = self.models.load().get(name).cloned() else {
            // Its first load is still under way (a slow registry): unloading cancels its outcome.
            if self.loading(name) {
                table.parked.insert(name.to_string());
                tracing::info!(
                    model = name,
                    "model unloaded while loading; the load is discarded"
                );
                return Ok(());
            }
            return Err(Error::NotFound(format!("model '{name}' is not loaded")));
        };
        table.parked.insert(name.to_string());
        self.remove_entry(&mut table, &old);
        drop(table);
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    /// With `--model-control-mode none` the set of models is fixed at start-up, as in Triton.
    fn control_allowed(&self, action: &str) -> Result<()> {
        match self.settings.control {
            ModelControlMode::None => Err(Error::invalid(format!(
                "cannot {action} models: --model-control-mode none loads every model once at start-up \
                 (use explicit or poll to load and unload through the API)"
            ))),
            ModelControlMode::Poll | ModelControlMode::Explicit => Ok(()),
        }
    }

    /// The table lock (see the module's doc).
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `name`'s turn (see the module's doc).
    fn turn(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        turns.entry(name.to_string()).or_default().clone()
    }

    /// Whether a look at (or a load of) `name` is under way.
    fn loading(&self, name: &str) -> bool {
        self.turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|turn| turn.try_lock().is_err())
    }

    pub fn root(&self) -> &Path {
        &self.settings.root
    }

    /// A snapshot of every model's state.
    pub fn models(&self) -> Arc<BTreeMap<String, Arc<ModelEntry>>> {
        self.models.load_full()
    }

    pub fn model(&self, name: &str) -> Result<Arc<ModelEntry>> {
        self.models
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))
    }

    /// `version`, or the highest ready version when `None`.
    pub fn ready_version(&self, name: &str, version: Option<u64>) -> Result<Arc<ServedVersion>> {
        let entry = self.model(name)?;
        match version {
            None => entry.ready_versions().next_back().cloned().ok_or_else(|| {
                Error::Unavailable(format!(
                    "model '{name}' has no ready version: {}",
                    self.for_clients(&unavailable_reason(&entry))
                ))
            }),
            Some(v) => match entry.versions.get(&v) {
                Some(VersionState::Ready(served)) => Ok(served.clone()),
                Some(VersionState::Unavailable(why)) => Err(Error::Unavailable(format!(
                    "model '{name}' version {v} is unavailable: {}",
                    self.for_clients(why)
                ))),
                None => Err(Error::NotFound(format!(
                    "model '{name}' has no version {v}"
                ))),
            },
        }
    }
}

impl Repository {
    /// A load error as inference clients see it: paths relative to the repository (or the registry
    /// cache), so an answer does not tell a client where the server keeps its files. The full text
    /// stays in the log and in the admin-only repository index.
    fn for_clients(&self, message: &str) -> String {
        let mut message = message.to_owned();
        for (dir, shown) in [
            (&self.settings.cache_dir, "<cache>/"),
            (&self.settings.root, ""),
        ] {
            let prefix = format!("{}/", dir.display());
            if prefix.len() > 1 {
                message = message.replace(&prefix, shown);
            }
        }
        message
    }
}

/// Why a model has no ready version: its own error, or each version's.
fn unavailable_reason(entry: &ModelEntry) -> String {
    entry.error.clone().unwrap_or_else(|| {
        let failures: Vec<String> = entry
            .versions
            .iter()
            .filter_map(|(v, s)| match s {
                VersionState::Unavailable(why) => Some(format!("version {v}: {why}")),
                VersionState::Ready(_) => None,
            })
            .collect();
        failures.join("; ")
    })
}

/// Model names are directory names: refuse anything that could leave the repository.
fn check_model_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(Error::invalid(format!(
            "'{name}' is not a valid model name"
        )));
    }
    Ok(())
}

/// Runs blocking work (file reads, hashing, directory scans) on the blocking pool, off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("blocking work failed: {e}"))
}

/// Runs `work`, which blocks briefly but borrows, without stalling the other tasks of an async worker
/// (`block_in_place` on the multi-threaded runtime; as is elsewhere).
fn in_place<T>(work: impl FnOnce() -> T) -> T {
    if crate::direct::can_hand_over() {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

fn model_dirs(root: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root)?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}
