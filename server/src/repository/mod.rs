//! The model repository: `<root>/<model>/<version>/model.onnx` plus optional `<root>/<model>/model.toml`.
//! Loaded versions live in a table published through `ArcSwap`, so request lookups never take a lock.

pub mod model_toml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tract_onnx::prelude::Framework;

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::instance::{self, InstanceSpec};
use crate::metrics::{Metrics, VersionMetrics};
use crate::scheduler::{BatchPolicy, Scheduler};
use crate::signature::Signature;
use crate::stats::Stats;
use model_toml::ModelToml;

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
}

pub enum VersionState {
    Ready(Arc<ServedVersion>),
    /// Load failed; the reason is what the log line said.
    Unavailable(String),
}

pub struct ModelEntry {
    pub name: String,
    pub versions: BTreeMap<u64, VersionState>,
    /// A problem with the model as a whole (bad model.toml, no versions).
    pub error: Option<String>,
}

impl ModelEntry {
    pub fn ready_versions(&self) -> impl DoubleEndedIterator<Item = &Arc<ServedVersion>> {
        self.versions.values().filter_map(|s| match s {
            VersionState::Ready(v) => Some(v),
            VersionState::Unavailable(_) => None,
        })
    }
}

pub struct Repository {
    root: PathBuf,
    models: ArcSwap<BTreeMap<String, Arc<ModelEntry>>>,
    /// Serializes loads and unloads; lookups never wait on it.
    admin: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
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
    /// Loads every model under `root`. A model that fails is logged and recorded, never fatal.
    pub async fn load(root: &Path, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let names = model_dirs(root)?;
        let mut models = BTreeMap::new();
        for name in names {
            let entry = load_model(&metrics, root, &name).await;
            models.insert(name, Arc::new(entry));
        }
        Ok(Repository {
            root: root.to_path_buf(),
            models: ArcSwap::from_pointee(models),
            admin: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// Every model in the repository directory and every loaded version, with its state.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let loaded = self.models.load();
        let mut rows = Vec::new();
        for name in model_dirs(&self.root)
            .unwrap_or_default()
            .into_iter()
            .chain(loaded.keys().cloned())
        {
            if rows.iter().any(|r: &IndexEntry| r.name == name) {
                continue;
            }
            let Some(entry) = loaded.get(&name) else {
                let reason = "unloaded".to_string();
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
                let (state, reason) = match state {
                    VersionState::Ready(_) => ("READY", String::new()),
                    VersionState::Unavailable(why) => ("UNAVAILABLE", why.clone()),
                };
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

    /// (Re)loads one model from the repository directory and publishes it in one step. Requests already
    /// running on a replaced version finish on it.
    pub async fn load_model(&self, name: &str) -> Result<()> {
        check_model_name(name)?;
        if !self.root.join(name).is_dir() {
            return Err(Error::NotFound(format!(
                "no model '{name}' in the repository {}",
                self.root.display()
            )));
        }
        let _admin = self.admin.lock().await;
        let entry = Arc::new(load_model(&self.metrics, &self.root, name).await);
        let failure = (entry.ready_versions().next().is_none()).then(|| unavailable_reason(&entry));
        let serving = self
            .models
            .load()
            .get(name)
            .is_some_and(|old| old.ready_versions().next().is_some());
        // A reload that yields nothing servable leaves the serving versions in place.
        if failure.is_none() || !serving {
            self.models.rcu(|models| {
                let mut models = BTreeMap::clone(models);
                models.insert(name.to_string(), entry.clone());
                models
            });
        }
        match failure {
            None => Ok(()),
            Some(why) => Err(Error::invalid(format!(
                "failed to load model '{name}': {why}"
            ))),
        }
    }

    /// Stops serving a model. In-flight requests hold their version and finish; its instance threads end
    /// when the last of them does.
    pub async fn unload_model(&self, name: &str) -> Result<()> {
        check_model_name(name)?;
        let _admin = self.admin.lock().await;
        if !self.models.load().contains_key(name) {
            return Err(Error::NotFound(format!("model '{name}' is not loaded")));
        }
        self.models.rcu(|models| {
            let mut models = BTreeMap::clone(models);
            models.remove(name);
            models
        });
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
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
                    unavailable_reason(&entry)
                ))
            }),
            Some(v) => match entry.versions.get(&v) {
                Some(VersionState::Ready(served)) => Ok(served.clone()),
                Some(VersionState::Unavailable(why)) => Err(Error::Unavailable(format!(
                    "model '{name}' version {v} is unavailable: {why}"
                ))),
                None => Err(Error::NotFound(format!(
                    "model '{name}' has no version {v}"
                ))),
            },
        }
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

async fn load_model(metrics: &Arc<Metrics>, root: &Path, name: &str) -> ModelEntry {
    let dir = root.join(name);
    let mut entry = ModelEntry {
        name: name.to_string(),
        versions: BTreeMap::new(),
        error: None,
    };
    let config = match ModelToml::load(&dir.join(CONFIG_FILE)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(model = name, file = %dir.join(CONFIG_FILE).display(), cause = %e, "model not loaded");
            entry.error = Some(e);
            return entry;
        }
    };
    let found = version_dirs(&dir);
    if found.is_empty() {
        let why = format!(
            "no version directories (<model>/<N>/{MODEL_FILE}) in {}",
            dir.display()
        );
        tracing::error!(model = name, cause = %why, "model not loaded");
        entry.error = Some(why);
        return entry;
    }
    for version in config.version_policy.select(&found) {
        let file = dir.join(version.to_string()).join(MODEL_FILE);
        let state = match load_version(metrics, name, version, &file, &config).await {
            Ok(served) => {
                tracing::info!(model = name, version, backend = served.backend.name(), file = %file.display(), "model version ready");
                VersionState::Ready(Arc::new(served))
            }
            Err(cause) => {
                tracing::error!(model = name, version, file = %file.display(), %cause, "model version failed to load");
                VersionState::Unavailable(cause)
            }
        };
        entry.versions.insert(version, state);
    }
    entry
}

/// Positive integer subdirectories that hold a model file.
fn version_dirs(dir: &Path) -> Vec<u64> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .parse::<u64>()
                .ok()
                .filter(|v| *v > 0)
                .map(|v| (v, e.path()))
        })
        .filter(|(_, path)| path.join(MODEL_FILE).is_file())
        .map(|(v, _)| v)
        .collect()
}

async fn load_version(
    metrics: &Arc<Metrics>,
    name: &str,
    version: u64,
    file: &Path,
    config: &ModelToml,
) -> Result<ServedVersion, String> {
    let path = file.to_path_buf();
    let proto = tokio::task::spawn_blocking(move || tract_onnx::onnx().proto_model_for_path(path))
        .await
        .map_err(|e| format!("reading the model failed: {e}"))?
        .map_err(|e| format!("not a readable ONNX model: {e:#}"))?;
    let signature = Signature::from_onnx(&proto, config)?;
    let backend = BackendKind::resolve(config.backend)?;
    let metrics = Arc::new(metrics.version(name, version, backend.name()));
    let stats = Arc::new(Stats::default());
    let (scheduler, queue) = Scheduler::new(&config.dynamic_batching, metrics.clone());
    let batching = &config.dynamic_batching;
    let spec = InstanceSpec {
        label: format!("{name}-{version}"),
        kind: backend,
        path: file.to_path_buf(),
        signature: signature.clone(),
        config: config.clone(),
        policy: BatchPolicy {
            max_batch_size: signature.max_batch_size as usize,
            max_queue_delay: Duration::from_micros(batching.max_queue_delay_us),
            preferred_batch_sizes: batching.preferred_batch_sizes.clone(),
        },
        stats: stats.clone(),
        metrics: metrics.clone(),
    };
    instance::start(Arc::new(spec), config.instance_count(), queue).await?;
    Ok(ServedVersion {
        model: name.to_string(),
        version,
        signature,
        config: config.clone(),
        backend,
        stats,
        metrics,
        scheduler,
    })
}
