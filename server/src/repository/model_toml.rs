//! `<repo>/<model>/model.toml`: the optional per-model configuration. Every key is documented in the
//! README's configuration reference; an unknown key is an error naming the key and the file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelToml {
    /// Which backend runs the model.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Rows per backend call; 0 turns the batch dimension off. Inferred from the graph when absent.
    pub max_batch_size: Option<u32>,
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// Per-tensor overrides, keyed by tensor name.
    #[serde(default)]
    pub inputs: BTreeMap<String, TensorOverride>,
    #[serde(default)]
    pub outputs: BTreeMap<String, TensorOverride>,
    #[serde(default)]
    pub onnxruntime: OrtSettings,
    /// Model instances: each its own backend session on its own OS thread, pulling from one queue.
    /// Default: 2, or 1 on a single-core machine (see [`ModelToml::instance_count`]).
    pub instances: Option<usize>,
    #[serde(default)]
    pub dynamic_batching: DynamicBatching,
    /// Where versions come from when not from `<model>/<N>/` directories.
    pub source: Option<SourceConfig>,
    #[serde(default)]
    pub reload: ReloadSettings,
    /// Prediction logging and drift monitoring (sampling, feedback task, retraining rules).
    pub monitor: Option<keel_monitor::MonitorSettings>,
}

/// How a new version replaces the serving one.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadSettings {
    /// Accept a new version whose inputs or outputs (names, datatypes, shapes) differ from the serving
    /// version's. Off by default: clients built against the old signature would start failing.
    pub allow_signature_change: bool,
    /// Inferences at full batch size run on a new version before it takes traffic, so the first real
    /// requests do not pay for lazy initialisation.
    pub warmup_runs: u32,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings {
            allow_signature_change: false,
            warmup_runs: 2,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SourceConfig {
    /// An MLflow Model Registry alias: the version it points at is the one served.
    Mlflow(MlflowSource),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlflowSource {
    /// The MLflow tracking server, e.g. `http://mlflow:5000`. The token, if any, comes from
    /// `MLFLOW_TRACKING_TOKEN` (or `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`), never from here.
    pub tracking_uri: String,
    /// The registered model's name.
    pub name: String,
    #[serde(default = "default_alias")]
    pub alias: String,
    /// Seconds between alias lookups; default: `--repository-poll`.
    pub poll_interval: Option<f64>,
}

fn default_alias() -> String {
    "champion".to_string()
}

/// The scheduler in front of a model version's instances (Triton's `dynamic_batching`). Batching applies
/// whenever `max_batch_size > 0`: an idle instance takes every queued request that fits in one batch.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicBatching {
    /// How long an instance that has requests but not a full (or preferred) batch may wait for more.
    /// 0 (default): never wait; batches form from what queued while the instances were busy.
    pub max_queue_delay_us: u64,
    /// Row counts at which a batch is sent at once, without waiting out the delay.
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests waiting beyond this many are refused (HTTP 429, gRPC RESOURCE_EXHAUSTED).
    pub max_queue_size: usize,
    /// Queue timeout for requests that set no `timeout` parameter; 0: none.
    pub default_timeout_us: u64,
}

impl Default for DynamicBatching {
    fn default() -> Self {
        DynamicBatching {
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            default_timeout_us: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// ONNX Runtime when its library loaded, else tract.
    #[default]
    Auto,
    #[serde(rename = "onnxruntime")]
    OnnxRuntime,
    Tract,
}

/// Which versions found on disk are served (Triton's version_policy).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    /// The N highest versions.
    Latest(u32),
    All,
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve out of those found, ascending.
    pub fn select(&self, found: &[u64]) -> Vec<u64> {
        let mut found = found.to_vec();
        found.sort_unstable();
        match self {
            VersionPolicy::All => found,
            VersionPolicy::Latest(n) => found.split_off(found.len().saturating_sub(*n as usize)),
            VersionPolicy::Specific(wanted) => {
                found.into_iter().filter(|v| wanted.contains(v)).collect()
            }
        }
    }
}

/// Overrides what the ONNX graph says of one tensor.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TensorOverride {
    /// Full shape including the batch dimension; -1 marks a variable dimension. Must agree with the
    /// graph's fixed dimensions; it may fix dimensions the graph leaves open.
    pub shape: Option<Vec<i64>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrtSettings {
    /// Threads inside one operator (ONNX Runtime's intra_op_num_threads); default 1 per instance.
    pub intra_op_threads: Option<usize>,
    /// Threads across independent operators (inter_op_num_threads); default 1.
    pub inter_op_threads: Option<usize>,
    /// "disable", "basic", "extended" or "all" (default).
    pub graph_optimization_level: Option<OptimizationLevel>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    Disable,
    Basic,
    Extended,
    All,
}

impl ModelToml {
    /// Instances to run. Two by default: on the small boxes Keel targets, a second instance lets one batch
    /// compute while the next forms, which measured 0.76x instead of 0.65x of the canned-response ceiling
    /// and a p99/p50 of 2.6 instead of 4.3 under Poisson load on 2 cores (README, Performance).
    pub fn instance_count(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.instances.unwrap_or(cores.min(2)).max(1)
    }

    /// Reads `path` if it exists; absence means all defaults.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses() {
        let toml = r#"
            backend = "tract"
            max_batch_size = 8
            instances = 2
            version_policy = { specific = [1, 3] }
            [inputs.input]
            shape = [-1, 30]
            [outputs.label]
            shape = [-1]
            [onnxruntime]
            intra_op_threads = 2
            inter_op_threads = 1
            graph_optimization_level = "basic"
            [dynamic_batching]
            max_queue_delay_us = 500
            preferred_batch_sizes = [4, 8]
            max_queue_size = 16
            default_timeout_us = 100000
        "#;
        let cfg = ModelToml::parse(toml).unwrap();
        assert_eq!(cfg.backend, BackendChoice::Tract);
        assert_eq!(cfg.max_batch_size, Some(8));
        assert_eq!(cfg.instances, Some(2));
        assert_eq!(cfg.dynamic_batching.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(cfg.dynamic_batching.max_queue_size, 16);
        assert_eq!(
            ModelToml::parse("[dynamic_batching]\nmax_queue_delay_us = 7")
                .unwrap()
                .dynamic_batching
                .max_queue_size,
            1024
        );
        assert_eq!(cfg.version_policy, VersionPolicy::Specific(vec![1, 3]));
        let mlflow = ModelToml::parse(
            "[source.mlflow]\ntracking_uri = \"http://h:5000\"\nname = \"m\"\npoll_interval = 0.5\n\
             [reload]\nallow_signature_change = true",
        )
        .unwrap();
        let Some(SourceConfig::Mlflow(source)) = mlflow.source else {
            panic!("no mlflow source")
        };
        assert_eq!(source.alias, "champion");
        assert_eq!(source.poll_interval, Some(0.5));
        assert!(mlflow.reload.allow_signature_change);
        assert_eq!(mlflow.reload.warmup_runs, 2);
        assert!(ModelToml::parse("[source.s3]\nbucket = 1").is_err());
        assert_eq!(cfg.inputs["input"].shape, Some(vec![-1, 30]));
        assert_eq!(
            cfg.onnxruntime.graph_optimization_level,
            Some(OptimizationLevel::Basic)
        );
        assert_eq!(
            ModelToml::parse("version_policy = \"all\"")
                .unwrap()
                .version_policy,
            VersionPolicy::All
        );
        assert_eq!(
            ModelToml::parse("backend = \"onnxruntime\"")
                .unwrap()
                .backend,
            BackendChoice::OnnxRuntime
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = ModelToml::parse("max_batch = 4").unwrap_err();
        assert!(err.contains("max_batch"), "{err}");
        let err = ModelToml::parse("[onnxruntime]\nthreads = 4").unwrap_err();
        assert!(err.contains("threads"), "{err}");
        let err = ModelToml::parse("[dynamic_batching]\nmax_delay = 4").unwrap_err();
        assert!(err.contains("max_delay"), "{err}");
        let dir = std::env::temp_dir().join(format!("keel-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.toml");
        std::fs::write(&path, "colour = 1").unwrap();
        let err = ModelToml::load(&path).unwrap_err();
        assert!(
            err.contains("colour") && err.contains("model.toml"),
            "{err}"
        );
    }

    #[test]
    fn version_policy_selects() {
        let found = [3, 1, 2];
        assert_eq!(VersionPolicy::default().select(&found), vec![3]);
        assert_eq!(VersionPolicy::Latest(2).select(&found), vec![2, 3]);
        assert_eq!(VersionPolicy::Latest(9).select(&found), vec![1, 2, 3]);
        assert_eq!(VersionPolicy::All.select(&found), vec![1, 2, 3]);
        assert_eq!(VersionPolicy::Specific(vec![1, 7]).select(&found), vec![1]);
    }
}
