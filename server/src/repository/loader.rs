//! Loading one model version off the hot path: read the graph, check its signature against the serving
//! one, start its instances, warm it up. Only a version that passed all of it is ever published.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tract_onnx::prelude::Framework;

use super::scan::Fingerprint;
use super::{Hooks, MODEL_FILE, ServedVersion, warmup};
use crate::backend::BackendKind;
use crate::direct::Direct;
use crate::instance::{self, InstanceSpec};
use crate::metrics::Metrics;
use crate::model_toml::ModelToml;
use crate::scheduler::{BatchPolicy, Scheduler};
use crate::signature::Signature;
use crate::stats::Stats;

/// What a version is loaded from.
pub struct VersionFiles {
    pub dir: PathBuf,
    pub fingerprint: Fingerprint,
    /// The configuration the version is loaded with.
    pub config_fingerprint: Fingerprint,
}

pub async fn load_version(
    metrics: &Arc<Metrics>,
    hooks: &Hooks,
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
        cost: Default::default(),
    };
    let spec = Arc::new(spec);
    let pending = queue.clone();
    let sessions = instance::start(spec.clone(), config.instance_count(), queue).await?;
    if let Some(direct) = Direct::new(sessions, spec, batching.direct_run_max_us, pending) {
        scheduler.enable_direct(direct);
    }
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
    warmup::warm_up(&served, hooks.decode_request).await?;
    // Logging starts after warm-up: its zero rows are not traffic.
    let sample_rate = config.monitor.as_ref().map_or(1.0, |m| m.sample_rate);
    served.log = hooks
        .log
        .as_ref()
        .map(|l| l.for_version(name, &served.signature, sample_rate));
    Ok(served)
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
    use crate::signature::TensorSpec;
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
}
