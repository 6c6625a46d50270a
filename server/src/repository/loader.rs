//! Loading one model version off the hot path: read the graph, check its signature against the serving
//! one, start its instances, warm it up. Only a version that passed all of it is ever published.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tract_onnx::prelude::Framework;

use super::model_toml::ModelToml;
use super::scan::Fingerprint;
use super::{MODEL_FILE, ServedVersion};
use crate::backend::BackendKind;
use crate::instance::{self, InstanceSpec};
use crate::metrics::Metrics;
use crate::monitoring::PredictionLog;
use crate::scheduler::{BatchPolicy, Scheduler};
use crate::signature::{Signature, TensorSpec};
use crate::stats::Stats;
use crate::tensor::{Tensor, TensorData};

/// Rows per warm-up inference when the model sets no preferred batch size: enough to size the backend's
/// buffers for real batches without making a large model's load noticeably slower.
const WARMUP_ROWS: usize = 64;

/// What a version is loaded from.
pub struct VersionFiles {
    pub dir: PathBuf,
    pub fingerprint: Fingerprint,
    /// The configuration the version is loaded with.
    pub config_fingerprint: Fingerprint,
}

pub async fn load_version(
    metrics: &Arc<Metrics>,
    log: Option<&PredictionLog>,
    name: &str,
    version: u64,
    files: VersionFiles,
    config: &ModelToml,
    serving: Option<&Signature>,
) -> Result<ServedVersion, String> {
    let file = files.dir.join(MODEL_FILE);
    let (path, parse_config) = (file.clone(), config.clone());
    // Reading and walking the graph is blocking work: on the blocking pool, not an async worker.
    let signature = tokio::task::spawn_blocking(move || {
        let proto = tract_onnx::onnx()
            .proto_model_for_path(path)
            .map_err(|e| format!("not a readable ONNX model: {e:#}"))?;
        Signature::from_onnx(&proto, &parse_config)
    })
    .await
    .map_err(|e| format!("reading the model failed: {e}"))??;
    if let Some(serving) = serving
        && !config.reload.allow_signature_change
    {
        compatible(serving, &signature).map_err(|why| {
            format!(
                "signature differs from the serving version's: {why} (set [reload] allow_signature_change = true in model.toml to accept it)"
            )
        })?;
    }
    let backend = BackendKind::resolve(config.backend)?;
    let version_metrics = Arc::new(metrics.version(name, version, backend.name()));
    let stats = Arc::new(Stats::default());
    let (scheduler, queue) = Scheduler::new(&config.dynamic_batching, version_metrics.clone());
    let batching = &config.dynamic_batching;
    let spec = InstanceSpec {
        label: format!("{name}-{version}"),
        kind: backend,
        path: file,
        signature: signature.clone(),
        config: config.clone(),
        policy: BatchPolicy {
            max_batch_size: signature.max_batch_size as usize,
            max_queue_delay: Duration::from_micros(batching.max_queue_delay_us),
            preferred_batch_sizes: batching.preferred_batch_sizes.clone(),
        },
        stats: stats.clone(),
        metrics: version_metrics.clone(),
    };
    instance::start(Arc::new(spec), config.instance_count(), queue).await?;
    let mut served = ServedVersion {
        model: name.to_string(),
        version,
        signature,
        config: config.clone(),
        backend,
        stats,
        metrics: version_metrics,
        scheduler,
        dir: files.dir,
        fingerprint: files.fingerprint,
        config_fingerprint: files.config_fingerprint,
        log: None,
    };
    warm_up(&served).await?;
    // Logging starts after warm-up: its zero rows are not traffic.
    let sample_rate = config.monitor.as_ref().map_or(1.0, |m| m.sample_rate);
    served.log = log.map(|l| l.for_version(name, &served.signature, sample_rate));
    Ok(served)
}

/// Runs `warmup_runs` zero-filled inferences at batch size, straight through the scheduler so they
/// appear in no request metrics.
async fn warm_up(served: &ServedVersion) -> Result<(), String> {
    let rows = match served.signature.max_batch_size as usize {
        0 => 1,
        max => served
            .config
            .dynamic_batching
            .preferred_batch_sizes
            .iter()
            .copied()
            .max()
            .unwrap_or(WARMUP_ROWS)
            .min(max),
    };
    for _ in 0..served.config.reload.warmup_runs {
        let inputs = served
            .signature
            .inputs
            .iter()
            .map(|spec| zeros(spec, rows, served.signature.max_batch_size > 0))
            .collect::<Result<Vec<_>, String>>()?;
        served
            .scheduler
            .warm_up(inputs, rows)
            .await
            .map_err(|e| format!("warm-up inference failed: {e}"))?;
    }
    Ok(())
}

fn zeros(spec: &TensorSpec, rows: usize, batched: bool) -> Result<Tensor, String> {
    let shape: Vec<usize> = spec
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            _ if i == 0 && batched => rows,
            d if d < 0 => 1,
            d => d as usize,
        })
        .collect();
    let count: usize = shape.iter().product();
    // Fixed-size types are all-zero bytes; BYTES elements are a zero length prefix each (empty strings).
    let width = spec.datatype.size().unwrap_or(4);
    let data = TensorData::from_le_bytes(spec.datatype, &vec![0u8; count * width], count)
        .map_err(|e| format!("warm-up input '{}': {e}", spec.name))?;
    Ok(Tensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}

/// Clients built against `old` keep working against `new`: same tensors, datatypes and shapes.
fn compatible(old: &Signature, new: &Signature) -> Result<(), String> {
    // The batch limit is operational; only gaining or losing the batch dimension changes shapes.
    if (old.max_batch_size == 0) != (new.max_batch_size == 0) {
        return Err(format!(
            "max_batch_size {} became {}",
            old.max_batch_size, new.max_batch_size
        ));
    }
    for (kind, a, b) in [
        ("input", &old.inputs, &new.inputs),
        ("output", &old.outputs, &new.outputs),
    ] {
        for spec in a {
            match b.iter().find(|s| s.name == spec.name) {
                None => return Err(format!("{kind} '{}' is gone", spec.name)),
                Some(s) if s.datatype != spec.datatype || s.shape != spec.shape => {
                    return Err(format!(
                        "{kind} '{}' was {} {:?}, is now {} {:?}",
                        spec.name, spec.datatype, spec.shape, s.datatype, s.shape
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = b.iter().find(|s| !a.iter().any(|o| o.name == s.name)) {
            return Err(format!("new {kind} '{}'", extra.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    fn sig(shape: Vec<i64>, datatype: DataType) -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype,
                shape,
            }],
            outputs: vec![TensorSpec {
                name: "y".into(),
                datatype: DataType::Fp32,
                shape: vec![-1],
            }],
            max_batch_size: 8,
        }
    }

    #[test]
    fn signature_changes_are_named() {
        let old = sig(vec![-1, 30], DataType::Fp32);
        assert!(compatible(&old, &old.clone()).is_ok());
        let err = compatible(&old, &sig(vec![-1, 31], DataType::Fp32)).unwrap_err();
        assert!(err.contains("'x'") && err.contains("31"), "{err}");
        let err = compatible(&old, &sig(vec![-1, 30], DataType::Fp64)).unwrap_err();
        assert!(err.contains("FP64"), "{err}");
        let mut renamed = old.clone();
        renamed.outputs[0].name = "z".into();
        assert!(
            compatible(&old, &renamed)
                .unwrap_err()
                .contains("'y' is gone")
        );
    }

    #[test]
    fn warm_up_inputs_fill_the_batch() {
        let spec = TensorSpec {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![-1, -1, 2],
        };
        let t = zeros(&spec, 4, true).unwrap();
        assert_eq!(t.shape, vec![4, 1, 2]);
        assert_eq!(t.data, TensorData::Bytes(vec![Vec::new(); 8]));
    }
}
