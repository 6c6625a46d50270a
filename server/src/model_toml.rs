//! `<repo>/<model>/model.toml`: the optional per-model configuration. Every key is documented in
//! docs/configuration.md; an unknown key is an error naming the key and the file. A leaf: the
//! repository reads it and passes it down to the scheduler, instances and backends.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::checked_seconds;

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
    /// User-given warm-up samples: Triton's `model_warmup`, set by the config.pbtxt reader (model.toml
    /// gives warm-up data as `[reload] warmup_request` instead). A failure fails the load.
    #[serde(skip)]
    pub warmup_samples: Vec<WarmupSample>,
}

/// One of Triton's `model_warmup` samples: `count` runs of `batch_size` rows of the given inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupSample {
    pub name: String,
    /// Rows per run; 0 for a model without a batch dimension.
    pub batch_size: u32,
    pub count: u32,
    pub inputs: Vec<WarmupInput>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WarmupInput {
    pub name: String,
    /// The V2 datatype name ("INT32", "BYTES", ...).
    pub datatype: String,
    /// The shape of one row (without the batch dimension).
    pub dims: Vec<i64>,
    pub data: WarmupData,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WarmupData {
    Zero,
    Random,
    /// Triton's `input_data_file`: the elements' raw little-endian bytes (BYTES: each a 4-byte length and
    /// its content), a path relative to the model's `warmup/` directory.
    File(std::path::PathBuf),
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
    /// A V2 JSON inference request to warm up with instead of synthetic inputs, looked up in the version
    /// directory, then the model directory. Runs `warmup_runs` times; unlike synthetic warm-up, a failure
    /// fails the load (the data is the publisher's, so the model or the file is wrong).
    pub warmup_request: Option<std::path::PathBuf>,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings {
            allow_signature_change: false,
            warmup_runs: 2,
            warmup_request: None,
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
    /// A lone request (the version's only one in flight, nothing queued) whose expected compute is at most
    /// this runs at once on an idle instance's session, on the thread that decoded it, instead of through
    /// the queue ([`crate::direct`]); 0: every request takes the queue.
    pub direct_run_max_us: u64,
}

impl Default for DynamicBatching {
    fn default() -> Self {
        DynamicBatching {
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            default_timeout_us: 0,
            direct_run_max_us: crate::direct::DEFAULT_MAX_US,
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
    /// The V2 datatype ("FP32", "BYTES", ...) the configuration expects; a graph of another type fails the
    /// load instead of serving a type clients were not told about.
    pub datatype: Option<String>,
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
    /// compute while the next forms, which measured 0.66x instead of 0.57x of the canned-response ceiling
    /// and a p99/p50 of 2.85 instead of 4.9 under Poisson load on 2 cores (docs/performance.md).
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

    /// Parses and validates: every value out of range is an error naming its key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that the serde types allow but Keel cannot honour (zero where at least one is
    /// needed, sizes that would allocate without bound, intervals a `Duration` cannot hold), naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(file) = &self.reload.warmup_request
            && (file.as_os_str().is_empty()
                || !file
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))))
        {
            return Err(format!(
                "[reload] warmup_request = {:?}: must be a file name or a relative path inside the model's \
                 directory (no '..', not absolute)",
                file.display()
            ));
        }
        match &self.version_policy {
            VersionPolicy::Latest(0) => {
                return Err("version_policy: latest must be at least 1".into());
            }
            VersionPolicy::Specific(versions) if versions.is_empty() => {
                return Err("version_policy: specific needs at least one version".into());
            }
            VersionPolicy::Specific(versions) if versions.contains(&0) => {
                return Err("version_policy: versions are positive integers (1, 2, ...)".into());
            }
            _ => {}
        }
        if let Some(n) = self.instances {
            within("instances", n as u64, 1, MAX_INSTANCES as u64)?;
        }
        for (key, threads) in [
            (
                "[onnxruntime] intra_op_threads",
                self.onnxruntime.intra_op_threads,
            ),
            (
                "[onnxruntime] inter_op_threads",
                self.onnxruntime.inter_op_threads,
            ),
        ] {
            if let Some(n) = threads {
                within(key, n as u64, 0, MAX_THREADS as u64)?;
            }
        }
        let batching = &self.dynamic_batching;
        within(
            "[dynamic_batching] max_queue_delay_us",
            batching.max_queue_delay_us,
            0,
            MAX_QUEUE_DELAY_US,
        )?;
        within(
            "[dynamic_batching] direct_run_max_us",
            batching.direct_run_max_us,
            0,
            crate::direct::LIMIT_MAX_US,
        )?;
        within(
            "[dynamic_batching] default_timeout_us",
            batching.default_timeout_us,
            0,
            MAX_TIMEOUT_US,
        )?;
        within(
            "[dynamic_batching] max_queue_size",
            batching.max_queue_size as u64,
            1,
            MAX_QUEUE_SIZE as u64,
        )?;
        for &size in &batching.preferred_batch_sizes {
            let key = "[dynamic_batching] preferred_batch_sizes";
            match self.max_batch_size {
                Some(0) => {
                    return Err(format!(
                        "{key}: a model with max_batch_size = 0 has no batches"
                    ));
                }
                Some(max) if size as u64 > u64::from(max) => {
                    return Err(format!("{key}: {size} is more than max_batch_size = {max}"));
                }
                _ => within(key, size as u64, 1, MAX_PREFERRED_BATCH as u64)?,
            }
        }
        within(
            "[reload] warmup_runs",
            u64::from(self.reload.warmup_runs),
            0,
            u64::from(MAX_WARMUP_RUNS),
        )?;
        for (kind, tensors) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            for (name, spec) in tensors {
                if let Some(shape) = &spec.shape
                    && let Some(bad) = shape.iter().find(|&&d| d < -1)
                {
                    return Err(format!(
                        "[{kind}.{name}] shape: dimension {bad} is invalid (a size, or -1 for variable)"
                    ));
                }
            }
        }
        if let Some(SourceConfig::Mlflow(source)) = &self.source {
            for (key, value) in [("name", &source.name), ("alias", &source.alias)] {
                if value.trim().is_empty() {
                    return Err(format!("[source.mlflow] {key} is empty"));
                }
            }
            if let Some(seconds) = source.poll_interval {
                checked_seconds("[source.mlflow] poll_interval", seconds, false)?;
            }
        }
        if let Some(monitor) = &self.monitor {
            monitor.validate().map_err(|e| format!("[monitor] {e}"))?;
        }
        Ok(())
    }
}

/// Most instances of one model version (each an OS thread with its own session).
pub const MAX_INSTANCES: usize = 256;
/// Most threads an ONNX Runtime setting may ask for (0: ONNX Runtime decides).
pub const MAX_THREADS: usize = 1024;
/// Longest batching delay: a minute (Triton's is microseconds to milliseconds).
pub const MAX_QUEUE_DELAY_US: u64 = 60_000_000;
/// Longest default queue timeout: a day.
pub const MAX_TIMEOUT_US: u64 = 86_400_000_000;
/// Largest queue: its slots are allocated up front.
pub const MAX_QUEUE_SIZE: usize = 1 << 20;
/// Largest preferred batch size (warm-up allocates a batch of it).
pub const MAX_PREFERRED_BATCH: usize = 1 << 16;
pub const MAX_WARMUP_RUNS: u32 = 1000;

fn within(key: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} = {value} is outside {min}..={max}"))
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
            direct_run_max_us = 0
        "#;
        let cfg = ModelToml::parse(toml).unwrap();
        assert_eq!(cfg.backend, BackendChoice::Tract);
        assert_eq!(cfg.max_batch_size, Some(8));
        assert_eq!(cfg.instances, Some(2));
        assert_eq!(cfg.dynamic_batching.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(cfg.dynamic_batching.max_queue_size, 16);
        assert_eq!(cfg.dynamic_batching.direct_run_max_us, 0);
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
    fn out_of_range_values_are_errors_naming_the_key() {
        let mlflow = |poll: &str| {
            format!(
                "[source.mlflow]\ntracking_uri = \"http://h\"\nname = \"m\"\npoll_interval = {poll}"
            )
        };
        let cases = [
            (mlflow("1e300"), "poll_interval"),
            (mlflow("1e20"), "poll_interval"),
            (mlflow("86401"), "poll_interval"),
            (mlflow("-1"), "poll_interval"),
            (mlflow("0"), "poll_interval"),
            (mlflow("nan"), "poll_interval"),
            (mlflow("inf"), "poll_interval"),
            (
                "[source.mlflow]\ntracking_uri = \"http://h\"\nname = \"\"".into(),
                "name",
            ),
            ("version_policy = { latest = 0 }".into(), "version_policy"),
            (
                "version_policy = { specific = [] }".into(),
                "version_policy",
            ),
            (
                "version_policy = { specific = [0] }".into(),
                "version_policy",
            ),
            ("instances = 0".into(), "instances"),
            ("instances = 100000".into(), "instances"),
            (
                "[onnxruntime]\nintra_op_threads = 99999".into(),
                "intra_op_threads",
            ),
            (
                "[dynamic_batching]\nmax_queue_delay_us = 18446744073709551615".into(),
                "max_queue_delay_us",
            ),
            (
                "[dynamic_batching]\ndefault_timeout_us = 18446744073709551615".into(),
                "default_timeout_us",
            ),
            (
                "[dynamic_batching]\nmax_queue_size = 0".into(),
                "max_queue_size",
            ),
            (
                "[dynamic_batching]\nmax_queue_size = 1000000000000".into(),
                "max_queue_size",
            ),
            (
                "max_batch_size = 8\n[dynamic_batching]\npreferred_batch_sizes = [16]".into(),
                "preferred_batch_sizes",
            ),
            (
                "max_batch_size = 0\n[dynamic_batching]\npreferred_batch_sizes = [1]".into(),
                "preferred_batch_sizes",
            ),
            (
                "[dynamic_batching]\npreferred_batch_sizes = [0]".into(),
                "preferred_batch_sizes",
            ),
            (
                "[dynamic_batching]\npreferred_batch_sizes = [1000000000000]".into(),
                "preferred_batch_sizes",
            ),
            ("[reload]\nwarmup_runs = 4000000000".into(), "warmup_runs"),
            (
                "[dynamic_batching]\ndirect_run_max_us = 1000001".into(),
                "direct_run_max_us",
            ),
            ("[inputs.x]\nshape = [-1, -7]".into(), "[inputs.x] shape"),
            ("[monitor]\nsample_rate = 2.0".into(), "sample_rate"),
        ];
        for (text, key) in cases {
            let err = ModelToml::parse(&text).expect_err(&text);
            assert!(err.contains(key), "{text}: {err}");
        }
        // The bounds themselves are accepted.
        let ok = format!(
            "instances = 256\n[dynamic_batching]\nmax_queue_delay_us = 60000000\nmax_queue_size = 1\n\
             direct_run_max_us = 1000000\n\
             [reload]\nwarmup_runs = 0\n{}",
            mlflow("86400")
        );
        ModelToml::parse(&ok).unwrap();
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
