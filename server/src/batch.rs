//! Batch assembly and split: the inputs of several requests are concatenated along dimension 0 into one
//! backend call, and each output is cut back into the row ranges of the requests that made it.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Whether two requests' inputs can share a batch: every input must agree on all dimensions but the first.
pub fn compatible(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.shape.get(1..) == y.shape.get(1..))
}

/// Concatenates each input across requests (all in signature order, all [`compatible`]) into new
/// tensors: the requests keep theirs, for the prediction log.
pub fn concat(requests: &[Vec<Tensor>]) -> Vec<Tensor> {
    let Some(first) = requests.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, tensor)| {
            let mut data = tensor.data.slice(0..0);
            data.reserve(requests.iter().map(|r| r[i].data.len()).sum());
            let mut shape = tensor.shape.clone();
            shape[0] = 0;
            for request in requests {
                shape[0] += request[i].shape[0];
                data.extend_from(&request[i].data);
            }
            Tensor {
                name: tensor.name.clone(),
                shape,
                data,
            }
        })
        .collect()
}

/// Cuts every output into consecutive row ranges of `rows[i]` rows, one set of outputs per request.
pub fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Result<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut per_request: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        if output.shape.first() != Some(&total) {
            return Err(Error::Internal(format!(
                "output '{}' has shape {:?}, expected {total} rows for the batch",
                output.name, output.shape
            )));
        }
        let per_row: usize = output.shape[1..].iter().product();
        let mut start = 0;
        for (request, &n) in per_request.iter_mut().zip(rows) {
            let mut shape = output.shape.clone();
            shape[0] = n;
            let data = output.data.slice(start * per_row..(start + n) * per_row);
            request.push(Tensor {
                name: output.name.clone(),
                shape,
                data,
            });
            start += n;
        }
    }
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn tensor(rows: usize, first: f32) -> Tensor {
        let data = (0..rows * 3).map(|i| first + i as f32).collect();
        Tensor {
            name: "x".into(),
            shape: vec![rows, 3],
            data: TensorData::Fp32(data),
        }
    }

    #[test]
    fn concat_then_split_gives_each_request_its_rows_back() {
        let requests = vec![
            vec![tensor(1, 0.0)],
            vec![tensor(3, 100.0)],
            vec![tensor(2, 200.0)],
        ];
        let batch = concat(&requests);
        let expected = requests;
        assert_eq!(batch[0].shape, vec![6, 3]);
        assert_eq!(batch[0].data.len(), 18);
        let back = split(batch, &[1, 3, 2]).unwrap();
        assert_eq!(back, expected);
    }

    #[test]
    fn shapes_must_agree_beyond_the_batch_dimension() {
        let a = vec![tensor(1, 0.0)];
        let mut b = vec![tensor(2, 0.0)];
        assert!(compatible(&a, &b));
        b[0].shape = vec![3, 2];
        assert!(!compatible(&a, &b));
    }

    #[test]
    fn split_refuses_outputs_without_the_batch_rows() {
        let out = vec![Tensor {
            name: "y".into(),
            shape: vec![5],
            data: TensorData::Int64(vec![0; 5]),
        }];
        assert!(split(out, &[2, 2]).is_err());
    }
}
