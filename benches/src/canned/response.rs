//! The fixed answer: breast-cancer's outputs, sized to the request.

use keel_server::infer::{InferRequest, InferResponse};
use keel_server::tensor::{Tensor, TensorData};

/// Rows of the request: the first dimension of its first input (1 for a scalar or no input).
pub fn rows(request: &InferRequest) -> usize {
    request
        .inputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(1)
}

/// `label` INT64 [rows] and `probabilities` FP32 [rows, 2], alternating between the two classes;
/// only those of `wanted` when the request names its outputs, as Keel does.
pub fn canned(
    model_name: String,
    id: Option<String>,
    rows: usize,
    wanted: Option<&[String]>,
) -> InferResponse {
    let label = (0..rows as i64).map(|i| i % 2).collect();
    let probabilities = (0..rows)
        .flat_map(|i| if i % 2 == 0 { [0.9, 0.1] } else { [0.2, 0.8] })
        .collect();
    let mut outputs = vec![
        Tensor {
            name: "label".into(),
            shape: vec![rows],
            data: TensorData::Int64(label),
        },
        Tensor {
            name: "probabilities".into(),
            shape: vec![rows, 2],
            data: TensorData::Fp32(probabilities),
        },
    ];
    if let Some(wanted) = wanted {
        outputs.retain(|t| wanted.contains(&t.name));
    }
    InferResponse {
        model_name,
        model_version: 1,
        id,
        outputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_to_rows_and_filtered_to_requested_outputs() {
        let all = canned("m".into(), None, 3, None);
        let shapes: Vec<_> = all.outputs.iter().map(|t| t.shape.clone()).collect();
        assert_eq!(shapes, [vec![3], vec![3, 2]]);
        let wanted = ["probabilities".to_string()];
        let some = canned("m".into(), None, 3, Some(&wanted));
        assert_eq!(some.outputs.len(), 1);
        assert_eq!(some.outputs[0].name, "probabilities");
    }
}
