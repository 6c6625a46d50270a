//! `keel check REPO`: validates a model repository without serving it, for model publishers' CI. Each
//! version goes through what `keel serve` would do before publishing it (model.toml, checksum, ONNX
//! signature, a session on its backend, warm-up), then its `baseline.json` is read against the
//! signature; an MLflow source is asked for its alias and the version it names is downloaded and
//! checked the same way. The report has one line per version; the exit status says whether all passed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_monitor::Baseline;
use keel_monitor::baseline::{BaselineColumn, Distribution};
use keel_monitor::outbound::OutboundTlsArgs;
use serde::Serialize;

use crate::backend::onnxruntime;
use crate::metrics::Metrics;
use crate::model_toml::{MlflowSource, ModelToml, SourceConfig};
use crate::monitoring::BASELINE_FILE;
use crate::repository::scan::{Fingerprint, Scanner, version_dirs};
use crate::repository::{Hooks, MlflowClient, VersionFiles, load_version};
use crate::signature::{Signature, TensorSpec};
use crate::tensor::DataType;
use crate::triton_config;

#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// The model repository to check (what `keel serve --model-repository` would serve).
    pub repository: PathBuf,
    /// Check only this model (repeatable); default: every model directory.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Print the report as JSON (one object) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not contact MLflow: models with an MLflow source are reported as skipped.
    #[arg(long)]
    pub offline: bool,
    /// ONNX Runtime library, as for `keel serve`.
    #[arg(long, env = "KEEL_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,
    #[command(flatten)]
    pub outbound_tls: OutboundTlsArgs,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub repository: PathBuf,
    /// `None` when ONNX Runtime loaded; otherwise why models on `auto` fall back to tract.
    pub onnxruntime_unavailable: Option<String>,
    pub models: Vec<ModelReport>,
}

#[derive(Debug, Serialize)]
pub struct ModelReport {
    pub model: String,
    /// `files` or `mlflow <uri> <name>@<alias>`.
    pub source: String,
    /// A problem with the model as a whole (model.toml or config.pbtxt, no versions, registry unreachable).
    pub error: Option<String>,
    /// What its configuration asks for that Keel does not do, each naming the field (the model passes).
    pub warnings: Vec<String>,
    /// An MLflow model checked with `--offline`.
    pub skipped: bool,
    pub versions: Vec<VersionReport>,
}

#[derive(Debug, Serialize)]
pub struct VersionReport {
    pub version: u64,
    pub backend: Option<String>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// `None` without a baseline.json; else what it monitors.
    pub baseline: Option<String>,
    pub error: Option<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.models.iter().all(|m| {
            m.error.is_none()
                && (m.skipped || !m.versions.is_empty())
                && m.versions.iter().all(|v| v.error.is_none())
        })
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("repository {}\n", self.repository.display());
        if let Some(why) = &self.onnxruntime_unavailable {
            out +=
                &format!("  note: ONNX Runtime unavailable ({why}); backend \"auto\" uses tract\n");
        }
        for m in &self.models {
            out += &format!("{} ({})\n", m.model, m.source);
            if let Some(e) = &m.error {
                out += &format!("  FAIL  {e}\n");
            }
            for w in &m.warnings {
                out += &format!("  warn  {w}\n");
            }
            if m.skipped {
                out += "  skip  MLflow not contacted (--offline)\n";
            }
            for v in &m.versions {
                match &v.error {
                    Some(e) => out += &format!("  FAIL  version {}: {e}\n", v.version),
                    None => {
                        out += &format!(
                            "  ok    version {}: {}, inputs {}, outputs {}; {}\n",
                            v.version,
                            v.backend.as_deref().unwrap_or("?"),
                            v.inputs.join(", "),
                            v.outputs.join(", "),
                            v.baseline
                                .as_deref()
                                .unwrap_or("no baseline.json (drift not measured)"),
                        )
                    }
                }
            }
        }
        let failed = self
            .models
            .iter()
            .filter(|m| {
                m.error.is_some()
                    || (!m.skipped && m.versions.is_empty())
                    || m.versions.iter().any(|v| v.error.is_some())
            })
            .count();
        out += &format!(
            "{} models, {} failed: {}\n",
            self.models.len(),
            failed,
            if failed == 0 { "PASS" } else { "FAIL" }
        );
        out
    }
}

/// Checks the repository. `Err` only when it cannot be checked at all (no such directory, a bad
/// `--ca-bundle`); everything about its models is in the report.
pub async fn run(args: &CheckArgs) -> Result<Report, String> {
    let root = &args.repository;
    let mut names = match std::fs::read_dir(root) {
        Ok(read) => read
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect::<Vec<_>>(),
        Err(e) => return Err(format!("{}: {e}", root.display())),
    };
    names.sort();
    if !args.models.is_empty() {
        for wanted in &args.models {
            if !names.contains(wanted) {
                return Err(format!("no model directory {wanted} in {}", root.display()));
            }
        }
        names.retain(|n| args.models.contains(n));
    }
    let ort = onnxruntime::init(args.ort_library.as_deref()).err();
    let http = args
        .outbound_tls
        .client_builder()
        .map_err(|e| e.to_string())?
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let metrics = Metrics::new();
    let mut models = Vec::new();
    for name in names {
        models.push(check_model(root, &name, args.offline, &http, &metrics).await);
    }
    Ok(Report {
        repository: root.clone(),
        onnxruntime_unavailable: ort,
        models,
    })
}

async fn check_model(
    root: &Path,
    name: &str,
    offline: bool,
    http: &reqwest::Client,
    metrics: &Arc<Metrics>,
) -> ModelReport {
    let dir = root.join(name);
    let mut report = ModelReport {
        model: name.to_string(),
        source: "files".into(),
        error: None,
        warnings: Vec::new(),
        skipped: false,
        versions: Vec::new(),
    };
    let (config, text) = match read_config(&dir) {
        Ok(loaded) => {
            report.warnings = loaded.warnings;
            (loaded.config, loaded.fingerprint_text)
        }
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    match config.source.clone() {
        None => {
            let found = version_dirs(&dir);
            if found.is_empty() {
                report.error = Some(format!(
                    "no version directories (<model>/<N>/model.onnx) in {}",
                    dir.display()
                ));
            }
            let selected = config.version_policy.select(&found);
            let scanner = Scanner::default();
            for candidate in scanner.candidates(&dir, &selected, true) {
                let files = VersionFiles {
                    dir: candidate.dir,
                    fingerprint: candidate.fingerprint,
                    config_fingerprint: Fingerprint::of_text(&text),
                };
                let checked = match candidate.incomplete {
                    Some(why) => failed(candidate.version, why),
                    None => check_version(metrics, name, candidate.version, files, &config).await,
                };
                report.versions.push(checked);
            }
        }
        Some(SourceConfig::Mlflow(source)) => {
            report.source = format!(
                "mlflow {} {}@{}",
                source.tracking_uri, source.name, source.alias
            );
            if offline {
                report.skipped = true;
                return report;
            }
            match check_mlflow(&source, http, metrics, name, &config).await {
                Ok((version, warnings)) => {
                    report.versions.push(version);
                    report.warnings.extend(warnings);
                }
                Err(e) => report.error = Some(e),
            }
        }
    }
    report
}

/// The model's configuration, read as `keel serve` reads it ([`triton_config::load`]).
fn read_config(dir: &Path) -> Result<triton_config::LoadedConfig, String> {
    triton_config::load(dir)
}

/// Resolves the alias, downloads that version into a temporary directory and checks it as a
/// filesystem version (with its own registered configuration, if it has one, as `keel serve` does), and
/// returns the warnings of that configuration.
async fn check_mlflow(
    source: &MlflowSource,
    http: &reqwest::Client,
    metrics: &Arc<Metrics>,
    name: &str,
    config: &ModelToml,
) -> Result<(VersionReport, Vec<String>), String> {
    let client = MlflowClient::new(source, http)?;
    let version = client.resolve_alias(&source.name, &source.alias).await?;
    let cache = std::env::temp_dir().join(format!(
        "keel-check-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let fetched = client.fetch_version(&source.name, version, &cache).await;
    let result = match fetched {
        Err(e) => Ok((
            failed(version, format!("download from MLflow: {e}")),
            Vec::new(),
        )),
        Ok(files_dir) => {
            let (config, text, warnings) = match triton_config::load(&files_dir) {
                Ok(own) if own.file == triton_config::ConfigFile::None => {
                    (config.clone(), String::new(), Vec::new())
                }
                Ok(own) => {
                    let mut own_config = own.config;
                    own_config.source = config.source.clone();
                    (own_config, own.fingerprint_text, own.warnings)
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&cache);
                    return Ok((
                        failed(version, format!("registered configuration: {e}")),
                        Vec::new(),
                    ));
                }
            };
            let files = VersionFiles {
                fingerprint: Fingerprint::of_files(&files_dir),
                dir: files_dir,
                config_fingerprint: Fingerprint::of_text(&text),
            };
            Ok((
                check_version(metrics, name, version, files, &config).await,
                warnings,
            ))
        }
    };
    let _ = std::fs::remove_dir_all(&cache);
    result
}

fn failed(version: u64, error: String) -> VersionReport {
    VersionReport {
        version,
        backend: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
        baseline: None,
        error: Some(error),
    }
}

/// Loads the version as `keel serve` would (signature, backend session, instances, warm-up), then
/// reads its baseline against the signature. The loaded version is dropped before returning.
async fn check_version(
    metrics: &Arc<Metrics>,
    name: &str,
    version: u64,
    files: VersionFiles,
    config: &ModelToml,
) -> VersionReport {
    let baseline_path = files.dir.join(BASELINE_FILE);
    let hooks = Hooks {
        decode_request: Some(crate::server::decode_warmup_request),
        ..Hooks::default()
    };
    let served = match load_version(metrics, &hooks, name, version, files, config, None).await {
        Ok(served) => served,
        Err(e) => return failed(version, e),
    };
    let describe = |specs: &[TensorSpec]| {
        specs
            .iter()
            .map(|s| format!("{} {} {:?}", s.name, s.datatype, s.shape))
            .collect::<Vec<_>>()
    };
    let mut report = VersionReport {
        version,
        backend: Some(served.backend.name().to_string()),
        inputs: describe(&served.signature.inputs),
        outputs: describe(&served.signature.outputs),
        baseline: None,
        error: None,
    };
    if baseline_path.is_file() {
        match Baseline::load(&baseline_path)
            .map_err(|e| e.to_string())
            .and_then(|b| baseline_fits(&b, &served.signature).map(|()| b))
        {
            Ok(b) => {
                report.baseline = Some(format!(
                    "baseline.json: {} features, {} outputs, {} training rows",
                    b.features.len(),
                    b.outputs.len(),
                    b.rows
                ))
            }
            Err(e) => report.error = Some(format!("{BASELINE_FILE}: {e}")),
        }
    }
    report
}

/// Every baseline column must name a tensor of the signature (features: inputs, outputs: outputs)
/// and an element inside its rows, with a kind the tensor's datatype can produce: otherwise drift
/// would silently never be measured for it.
pub fn baseline_fits(baseline: &Baseline, signature: &Signature) -> Result<(), String> {
    let batched = signature.max_batch_size > 0;
    let check = |column: &BaselineColumn, specs: &[TensorSpec], kind: &str| {
        let spec = specs.iter().find(|s| s.name == column.tensor).ok_or_else(|| {
            format!(
                "column {:?} reads {kind} tensor {:?}, which the model does not have (it has: {})",
                column.name,
                column.tensor,
                specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?;
        if let Some(per_row) = row_width(spec, batched)
            && column.index as i64 >= per_row
        {
            return Err(format!(
                "column {:?} reads element {} of {:?}, whose rows have {per_row} elements",
                column.name, column.index, column.tensor
            ));
        }
        if matches!(column.distribution, Distribution::Numeric { .. })
            && spec.datatype == DataType::Bytes
        {
            return Err(format!(
                "column {:?} is numeric but {:?} is a BYTES tensor",
                column.name, column.tensor
            ));
        }
        Ok(())
    };
    for column in &baseline.features {
        check(column, &signature.inputs, "input")?;
    }
    for column in &baseline.outputs {
        check(column, &signature.outputs, "output")?;
    }
    if let Some(c) = &baseline.calibration {
        let spec = signature
            .outputs
            .iter()
            .find(|s| s.name == c.tensor)
            .ok_or_else(|| {
                format!(
                    "calibration reads output tensor {:?}, which the model does not have",
                    c.tensor
                )
            })?;
        if !matches!(
            spec.datatype,
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64
        ) {
            return Err(format!(
                "calibration reads {:?}, a {} tensor: it needs a floating-point probability",
                c.tensor, spec.datatype
            ));
        }
        if let Some(per_row) = row_width(spec, batched)
            && c.index as i64 >= per_row
        {
            return Err(format!(
                "calibration reads element {} of {:?}, whose rows have {per_row} elements",
                c.index, c.tensor
            ));
        }
    }
    Ok(())
}

/// Elements in one row of `spec` (its shape past the batch dimension), when every dimension is fixed.
fn row_width(spec: &TensorSpec, batched: bool) -> Option<i64> {
    let dims = match batched {
        true => spec.shape.get(1..).unwrap_or_default(),
        false => &spec.shape[..],
    };
    dims.iter().all(|&d| d >= 0).then(|| dims.iter().product())
}
