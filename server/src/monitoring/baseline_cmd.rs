//! `keel baseline`: computes a version's `baseline.json` from its training data, running the model
//! over that data to get the distribution of its outputs too.

use std::path::{Path, PathBuf};

use keel_monitor::{Baseline, Calibration, Column, FeatureValue, Kind};
use tract_onnx::prelude::Framework;

use super::BASELINE_FILE;
use crate::backend::{BackendKind, onnxruntime};
use crate::repository::MODEL_FILE;
use crate::signature::Signature;
use crate::tensor::{DataType, Tensor, TensorData};

/// Rows per backend call while computing outputs.
const CHUNK_ROWS: usize = 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct BaselineArgs {
    /// The model repository holding the version.
    #[arg(long, env = "KEEL_MODEL_REPOSITORY", default_value = "models")]
    pub model_repository: PathBuf,
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub version: u64,
    /// Training data: CSV with a header naming the features, one numeric column per element of the
    /// model's input (in order).
    #[arg(long)]
    pub data: PathBuf,
    /// Quantile bins per numeric column.
    #[arg(long, default_value_t = keel_monitor::baseline::DEFAULT_BINS)]
    pub bins: usize,
    /// Where to write it [default: <repository>/<model>/<version>/baseline.json].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// A column of the training CSV holding the true class (a number; not a model input). With it,
    /// the baseline gets a calibration map of the positive-class probability (isotonic regression
    /// on these rows), so the monitor estimates accuracy without labels.
    #[arg(long)]
    pub label_column: Option<String>,
    /// The output element holding the positive-class probability, `TENSOR` or `TENSOR[INDEX]`
    /// [default: the first floating-point output with two elements per row, element 1, or with
    /// one element].
    #[arg(long, requires = "label_column")]
    pub probability_output: Option<String>,
    /// The label of the positive class in the label column.
    #[arg(long, default_value_t = 1.0, requires = "label_column")]
    pub positive_label: f64,
    /// ONNX Runtime library, as for `keel serve`.
    #[arg(long, env = "KEEL_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,
}

/// Writes the baseline and returns where.
pub fn run(args: &BaselineArgs) -> Result<PathBuf, String> {
    let model_dir = args.model_repository.join(&args.model);
    let dir = model_dir.join(args.version.to_string());
    // model.toml or config.pbtxt, as `keel serve` reads them.
    let config = crate::triton_config::load(&model_dir)?.config;
    let file = dir.join(MODEL_FILE);
    let proto = tract_onnx::onnx()
        .proto_model_for_path(&file)
        .map_err(|e| format!("{}: {e:#}", file.display()))?;
    let signature = Signature::from_onnx(&proto, &config)?;
    let [input] = signature.inputs.as_slice() else {
        return Err(
            "keel baseline supports models with one input of shape [rows, features]".into(),
        );
    };
    let (mut names, mut rows) = read_csv(&args.data)?;
    let labels = match &args.label_column {
        Some(label) => Some(take_column(&mut names, &mut rows, label, &args.data)?),
        None => None,
    };
    if input.shape.len() != 2 || input.shape[1] >= 0 && input.shape[1] as usize != names.len() {
        return Err(format!(
            "input '{}' has shape {:?}; the CSV has {} columns",
            input.name,
            input.shape,
            names.len()
        ));
    }
    let _ = onnxruntime::init(args.ort_library.as_deref());
    let mut backend = BackendKind::resolve(config.backend)?.load(&file, &signature, &config)?;
    let width = names.len();
    let mut outputs: Vec<Vec<Vec<FeatureValue>>> = Vec::new();
    for chunk in rows.chunks(CHUNK_ROWS * width) {
        let n = chunk.len() / width;
        let data = match input.datatype {
            DataType::Fp32 => TensorData::Fp32(chunk.iter().map(|&x| x as f32).collect()),
            DataType::Fp64 => TensorData::Fp64(chunk.to_vec()),
            other => {
                return Err(format!(
                    "input datatype {other} is not supported by keel baseline"
                ));
            }
        };
        let tensor = Tensor {
            name: input.name.clone(),
            shape: vec![n, width],
            data,
        };
        let (result, _) = backend.infer(&[tensor]).map_err(|e| e.to_string())?;
        outputs.resize(result.len(), Vec::new());
        for (column, tensor) in outputs.iter_mut().zip(&result) {
            let per_row = tensor.data.len() / n.max(1);
            for row in 0..n {
                column.push(crate::prediction_log::values(
                    &tensor.data,
                    row * per_row..(row + 1) * per_row,
                ));
            }
        }
    }
    // The monitor sees what the model saw: FP32 inputs are rounded to f32 before they are binned.
    let seen = |x: f64| match input.datatype {
        DataType::Fp32 => f64::from(x as f32),
        _ => x,
    };
    let features: Vec<Column> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Column {
            name: name.clone(),
            tensor: input.name.clone(),
            index: i,
            kind: Some(Kind::Numeric),
            values: rows
                .iter()
                .skip(i)
                .step_by(width)
                .map(|&x| FeatureValue::Number(seen(x)))
                .collect(),
        })
        .collect();
    let mut output_columns = Vec::new();
    for (spec, per_row) in signature.outputs.iter().zip(&outputs) {
        let elements = per_row.first().map_or(0, Vec::len);
        // Integer and string outputs are labels: one bin per class.
        let kind = match spec.datatype {
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => Kind::Numeric,
            _ => Kind::Categorical,
        };
        for index in 0..elements {
            output_columns.push(Column {
                name: match elements {
                    1 => spec.name.clone(),
                    _ => format!("{}[{index}]", spec.name),
                },
                tensor: spec.name.clone(),
                index,
                kind: Some(kind),
                values: per_row.iter().map(|r| r[index].clone()).collect(),
            });
        }
    }
    let mut baseline = Baseline::compute(
        &args.model,
        args.version,
        &features,
        &output_columns,
        args.bins,
    )
    .map_err(|e| e.to_string())?;
    if let Some(labels) = &labels {
        let (tensor, index) = probability_output(args, &signature, &outputs)?;
        let column = signature
            .outputs
            .iter()
            .position(|o| o.name == tensor)
            .ok_or_else(|| format!("the model has no output {tensor:?}"))?;
        let elements = outputs[column].first().map_or(0, Vec::len);
        if index >= elements {
            return Err(format!(
                "output {tensor:?} has {elements} elements per row; no element {index}"
            ));
        }
        let pairs = labels
            .iter()
            .enumerate()
            .filter(|(_, y)| !y.is_nan())
            .map(|(row, y)| {
                let p = match outputs[column][row].get(index) {
                    Some(FeatureValue::Number(p)) => *p,
                    _ => f64::NAN,
                };
                (p, *y == args.positive_label)
            });
        let calibration = Calibration::fit(
            &tensor,
            index,
            keel_monitor::calibration::DEFAULT_THRESHOLD,
            pairs,
        )
        .map_err(|e| e.to_string())?;
        baseline.calibration = Some(calibration);
    }
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| dir.join(BASELINE_FILE));
    baseline.save(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Removes the column `name` from the CSV's names and row-major values and returns its values.
fn take_column(
    names: &mut Vec<String>,
    rows: &mut Vec<f64>,
    name: &str,
    path: &Path,
) -> Result<Vec<f64>, String> {
    let width = names.len();
    let i = names
        .iter()
        .position(|n| n == name)
        .ok_or_else(|| format!("{} has no column {name:?}", path.display()))?;
    if width == 1 {
        return Err(format!("{} has only the label column", path.display()));
    }
    let labels = rows.iter().skip(i).step_by(width).copied().collect();
    *rows = rows
        .iter()
        .enumerate()
        .filter(|(k, _)| k % width != i)
        .map(|(_, &x)| x)
        .collect();
    names.remove(i);
    Ok(labels)
}

/// Which output element is the positive-class probability: `--probability-output`, or the first
/// floating-point output with two elements per row (element 1) or one (element 0).
fn probability_output(
    args: &BaselineArgs,
    signature: &Signature,
    outputs: &[Vec<Vec<FeatureValue>>],
) -> Result<(String, usize), String> {
    if let Some(spec) = &args.probability_output {
        return match spec.strip_suffix(']').and_then(|s| s.split_once('[')) {
            Some((tensor, index)) => index
                .trim()
                .parse()
                .map(|i| (tensor.to_owned(), i))
                .map_err(|_| format!("--probability-output {spec:?}: expected TENSOR[INDEX]")),
            None => Ok((spec.clone(), 0)),
        };
    }
    signature
        .outputs
        .iter()
        .zip(outputs)
        .filter(|(o, _)| matches!(o.datatype, DataType::Fp16 | DataType::Fp32 | DataType::Fp64))
        .find_map(|(o, rows)| match rows.first().map_or(0, Vec::len) {
            2 => Some((o.name.clone(), 1)),
            1 => Some((o.name.clone(), 0)),
            _ => None,
        })
        .ok_or_else(|| {
            "no floating-point output with one or two elements per row holds a probability; \
             name it with --probability-output TENSOR[INDEX]"
                .to_string()
        })
}

/// A header of names, then numeric rows; returns the names and the values row-major.
fn read_csv(path: &Path) -> Result<(Vec<String>, Vec<f64>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .ok_or_else(|| format!("{} is empty", path.display()))?;
    let names: Vec<String> = header
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .collect();
    let mut values = Vec::new();
    for (i, line) in lines.enumerate() {
        let row: Vec<&str> = line.split(',').collect();
        if row.len() != names.len() {
            return Err(format!(
                "{} line {}: {} values, the header has {}",
                path.display(),
                i + 2,
                row.len(),
                names.len()
            ));
        }
        for cell in row {
            let cell = cell.trim();
            values.push(match cell {
                "" | "nan" | "NaN" => f64::NAN,
                _ => cell.parse().map_err(|_| {
                    format!(
                        "{} line {}: '{cell}' is not a number",
                        path.display(),
                        i + 2
                    )
                })?,
            });
        }
    }
    if values.is_empty() {
        return Err(format!("{} has no data rows", path.display()));
    }
    Ok((names, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_column_is_taken_out_of_the_rows() {
        let mut names: Vec<String> = ["a", "y", "b"].map(String::from).into();
        let mut rows = vec![1.0, 0.0, 2.0, 3.0, 1.0, 4.0];
        let labels = take_column(&mut names, &mut rows, "y", Path::new("t.csv")).unwrap();
        assert_eq!(labels, [0.0, 1.0]);
        assert_eq!(names, ["a", "b"]);
        assert_eq!(rows, [1.0, 2.0, 3.0, 4.0]);
        let err = take_column(&mut names, &mut rows, "z", Path::new("t.csv")).unwrap_err();
        assert!(err.contains("\"z\""), "{err}");
    }
}
