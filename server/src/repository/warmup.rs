//! Warm-up before a version takes traffic. The publisher's own data (model.toml's `warmup_request`, a V2
//! JSON request; config.pbtxt's `model_warmup` samples) must succeed, or the load fails: the model or the
//! file is wrong. Without it Keel makes synthetic inputs valid for each datatype (zeros; "0" for BYTES);
//! their failure is only a warning, since a model may rightly refuse made-up data (a string model that
//! parses its input) and still serve real requests, as Triton serves models it never warmed up.

use std::path::{Path, PathBuf};

use super::ServedVersion;
use crate::model_toml::{WarmupData, WarmupInput, WarmupSample};
use crate::signature::TensorSpec;
use crate::tensor::{DataType, Tensor, TensorData};

/// Rows per synthetic warm-up inference when the model sets no preferred batch size: enough to size the
/// backend's buffers for real batches without making a large model's load noticeably slower.
const WARMUP_ROWS: usize = 64;

/// The largest warm-up file read (a request or a sample's input): warm-up data is a few rows.
const MAX_WARMUP_FILE: u64 = 64 << 20;

/// Turns a V2 inference request body (JSON) into its named input tensors. The front end's decoder, handed
/// down by whoever builds the repository, so loading never depends on a front end.
pub type DecodeRequest = fn(&[u8]) -> Result<Vec<Tensor>, String>;

pub async fn warm_up(served: &ServedVersion, decode: Option<DecodeRequest>) -> Result<(), String> {
    let config = &served.config;
    if let Some(file) = &config.reload.warmup_request {
        let inputs = request_inputs(served, file, decode)?;
        for _ in 0..config.reload.warmup_runs.max(1) {
            run(served, inputs.clone())
                .await
                .map_err(|e| format!("warm-up with {}: {e}", file.display()))?;
        }
        return Ok(());
    }
    if !config.warmup_samples.is_empty() {
        for sample in &config.warmup_samples {
            let inputs = sample_inputs(served, sample)
                .map_err(|e| format!("model_warmup '{}': {e}", sample.name))?;
            for _ in 0..sample.count.max(1) {
                run(served, inputs.clone())
                    .await
                    .map_err(|e| format!("model_warmup '{}': {e}", sample.name))?;
            }
        }
        return Ok(());
    }
    if let Err(e) = synthetic(served).await {
        tracing::warn!(
            model = %served.model,
            version = served.version,
            error = %e,
            "synthetic warm-up failed; the version serves anyway (give real warm-up data: \
             [reload] warmup_request in model.toml, or model_warmup in config.pbtxt)"
        );
    }
    Ok(())
}

async fn run(served: &ServedVersion, inputs: Vec<Tensor>) -> Result<(), String> {
    let inputs = served
        .signature
        .check_inputs(inputs)
        .map_err(|e| e.to_string())?;
    let rows = served.signature.rows(&inputs) as usize;
    served
        .scheduler
        .warm_up(inputs, rows)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `warmup_runs` inferences on synthetic inputs at the preferred batch size.
async fn synthetic(served: &ServedVersion) -> Result<(), String> {
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
            .map(|spec| synthetic_input(spec, rows, served.signature.max_batch_size > 0))
            .collect::<Result<Vec<_>, String>>()?;
        run(served, inputs).await?;
    }
    Ok(())
}

/// Zeros of `spec`'s shape with `rows` rows (other dynamic dimensions 1); BYTES elements are "0", which
/// string models that parse numbers accept as readily as free-text ones.
pub fn synthetic_input(spec: &TensorSpec, rows: usize, batched: bool) -> Result<Tensor, String> {
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
    let data = match spec.datatype {
        DataType::Bytes => TensorData::Bytes(vec![b"0".to_vec(); count]),
        other => {
            let width = other.size().unwrap_or(1);
            TensorData::from_le_bytes(other, &vec![0u8; count * width], count)
                .map_err(|e| format!("warm-up input '{}': {e}", spec.name))?
        }
    };
    Ok(Tensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}

/// The version directory's file, else the model directory's.
fn find(served: &ServedVersion, file: &Path) -> PathBuf {
    let own = served.dir.join(file);
    match (own.is_file(), served.dir.parent()) {
        (false, Some(model_dir)) if model_dir.join(file).is_file() => model_dir.join(file),
        _ => own,
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > MAX_WARMUP_FILE {
        return Err(format!(
            "{}: {len} bytes; warm-up files are limited to {MAX_WARMUP_FILE}",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn request_inputs(
    served: &ServedVersion,
    file: &Path,
    decode: Option<DecodeRequest>,
) -> Result<Vec<Tensor>, String> {
    let decode =
        decode.ok_or("warmup_request needs the V2 request decoder, which is not wired in")?;
    let path = find(served, file);
    let body = read_small(&path)?;
    decode(&body).map_err(|e| format!("warmup_request {}: {e}", path.display()))
}

/// One Triton `model_warmup` sample as tensors: `batch_size` rows (none without a batch dimension).
fn sample_inputs(served: &ServedVersion, sample: &WarmupSample) -> Result<Vec<Tensor>, String> {
    let batched = served.signature.max_batch_size > 0;
    let rows = if batched {
        sample.batch_size.max(1) as usize
    } else {
        1
    };
    sample
        .inputs
        .iter()
        .map(|input| sample_input(served, input, rows, batched))
        .collect()
}

fn sample_input(
    served: &ServedVersion,
    input: &WarmupInput,
    rows: usize,
    batched: bool,
) -> Result<Tensor, String> {
    let datatype = DataType::parse(&input.datatype).map_err(|e| e.to_string())?;
    let mut shape = Vec::with_capacity(input.dims.len() + 1);
    if batched {
        shape.push(rows);
    }
    for &d in &input.dims {
        let d = usize::try_from(d)
            .map_err(|_| format!("input '{}': dims must be fixed, got {d}", input.name))?;
        shape.push(d);
    }
    let count: usize = shape.iter().product();
    let data = match &input.data {
        WarmupData::Zero => match datatype {
            // Triton's zero data for strings: empty elements.
            DataType::Bytes => TensorData::Bytes(vec![Vec::new(); count]),
            other => TensorData::from_le_bytes(
                other,
                &vec![0u8; count * other.size().unwrap_or(1)],
                count,
            )
            .map_err(|e| e.to_string())?,
        },
        WarmupData::Random => random(datatype, count).map_err(|e| e.to_string())?,
        WarmupData::File(file) => {
            let dir = served.dir.parent().unwrap_or(&served.dir).join("warmup");
            let bytes = read_small(&dir.join(file))?;
            TensorData::from_le_bytes(datatype, &bytes, count)
                .map_err(|e| format!("input '{}' from {}: {e}", input.name, file.display()))?
        }
    };
    Ok(Tensor {
        name: input.name.clone(),
        shape,
        data,
    })
}

/// Random elements: small numbers for numeric types, decimal digits for BYTES.
fn random(datatype: DataType, count: usize) -> crate::error::Result<TensorData> {
    Ok(match datatype {
        DataType::Bytes => TensorData::Bytes(
            (0..count)
                .map(|_| fastrand::u8(0..100).to_string().into_bytes())
                .collect(),
        ),
        other => {
            let width = other.size().unwrap_or(1);
            let mut bytes = vec![0u8; count * width];
            match other {
                DataType::Fp32 => {
                    for chunk in bytes.chunks_exact_mut(4) {
                        chunk.copy_from_slice(&fastrand::f32().to_le_bytes());
                    }
                }
                DataType::Fp64 => {
                    for chunk in bytes.chunks_exact_mut(8) {
                        chunk.copy_from_slice(&fastrand::f64().to_le_bytes());
                    }
                }
                // The low byte of each element: 0..=1 for BOOL, 0..100 otherwise (FP16/BF16 small values).
                DataType::Bool => bytes.iter_mut().for_each(|b| *b = fastrand::u8(0..2)),
                _ => bytes
                    .chunks_exact_mut(width)
                    .for_each(|c| c[0] = fastrand::u8(0..100)),
            }
            TensorData::from_le_bytes(other, &bytes, count)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_inputs_fill_the_batch_with_valid_values() {
        let spec = TensorSpec {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![-1, -1, 2],
        };
        let t = synthetic_input(&spec, 4, true).unwrap();
        assert_eq!(t.shape, vec![4, 1, 2]);
        assert_eq!(t.data, TensorData::Bytes(vec![b"0".to_vec(); 8]));
        let spec = TensorSpec {
            name: "x".into(),
            datatype: DataType::Int32,
            shape: vec![3],
        };
        let t = synthetic_input(&spec, 4, false).unwrap();
        assert_eq!(t.shape, vec![3]);
        assert_eq!(t.data, TensorData::Int32(vec![0; 3]));
    }

    #[test]
    fn random_data_has_the_datatype_and_count() {
        for datatype in [
            DataType::Bool,
            DataType::Int8,
            DataType::Uint64,
            DataType::Fp16,
            DataType::Fp32,
            DataType::Fp64,
            DataType::Bytes,
        ] {
            let data = random(datatype, 5).unwrap();
            assert_eq!(data.len(), 5);
            assert_eq!(data.datatype(), datatype);
        }
    }
}
