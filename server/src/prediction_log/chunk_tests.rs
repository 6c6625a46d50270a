//! Chunks: arenas and own vectors read back alike, and a chunk's rows are counted however it ends.

use keel_monitor::FeatureValue;
use prometheus::IntCounter;

use super::*;
use crate::prediction_log::log::{Budget, LogLimits};
use crate::prediction_log::rows::{LogCounters, all_rows};
use crate::signature::{Signature, TensorSpec};
use crate::tensor::DataType;

fn counter() -> IntCounter {
    IntCounter::new("c", "c").unwrap()
}

fn names(inputs: &[&str], outputs: &[&str]) -> Arc<LogNames> {
    let spec = |name: &&str| TensorSpec {
        name: name.to_string(),
        datatype: DataType::Fp32,
        shape: vec![-1, -1],
    };
    let signature = Signature {
        inputs: inputs.iter().map(spec).collect(),
        outputs: outputs.iter().map(spec).collect(),
        max_batch_size: 8,
    };
    let counters = LogCounters {
        records: counter(),
        truncated: counter(),
        queue_full: counter(),
        queue_bytes: counter(),
        shutdown: counter(),
    };
    LogNames::new("m", &signature, counters)
}

fn budget() -> Arc<Budget> {
    Arc::new(Budget::new(&LogLimits {
        rows: usize::MAX,
        bytes: usize::MAX,
        max_elements: usize::MAX,
    }))
}

fn tensor(name: &str, shape: Vec<usize>, data: TensorData) -> Tensor {
    Tensor {
        name: name.into(),
        shape,
        data,
    }
}

fn capture<'a>(
    budget: &'a Budget,
    id: &str,
    inputs: &[Tensor],
    rows: usize,
    sampled: Cow<'static, [u32]>,
    max_elements: usize,
) -> Captured<'a> {
    let held = Budget::take(budget, sampled.len(), 100).unwrap();
    Captured::new(
        LogId::new(id),
        7,
        inputs.to_vec(),
        rows,
        sampled,
        max_elements,
        held,
        None,
    )
}

/// Every element of `t` in rows `sampled`, each row cut to `max_elements`, as records list them.
fn expected(t: &Tensor, rows: usize, row: u32, max_elements: usize) -> Vec<FeatureValue> {
    let per_row = t.data.len() / rows;
    let start = row as usize * per_row;
    super::super::rows::values(&t.data, start..start + per_row.min(max_elements))
}

#[test]
fn rows_split_every_tensor() {
    let budget = budget();
    let input = tensor("x", vec![2, 2], TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
    let label = tensor(
        "label",
        vec![2],
        TensorData::Bytes(vec![b"a".to_vec(), b"b".to_vec()]),
    );
    let names = names(&["x"], &["label"]);
    let mut chunk = Chunk::with_capacity(1);
    let captured = capture(&budget, "r", &[input], 2, vec![1].into(), 1024);
    chunk.add(captured, &names, 3, &[label], &budget);
    let records = chunk.records();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r.row, r.version, r.timestamp_ms), (1, 3, 7));
    assert_eq!(
        r.inputs,
        vec![(
            "x".into(),
            vec![FeatureValue::Number(3.0), FeatureValue::Number(4.0)]
        )]
    );
    assert_eq!(
        r.outputs,
        vec![("label".into(), vec![FeatureValue::Category("b".into())])]
    );
    chunk.delivered();
}

/// Requests of several types and sizes in one chunk: small tensors share the arenas, large ones
/// and strings keep their vectors, and every row reads back as it was, rows and cuts included.
#[test]
fn arenas_and_own_vectors_read_back_alike() {
    let budget = budget();
    let names_a = names(&["x", "flags"], &["p", "label"]);
    let names_b = names(&["x", "flags"], &["p", "label"]);
    let mut chunk = Chunk::with_capacity(4);
    let mut want = Vec::new();
    // (rows, width of x, sampled rows, max elements): one row; a sample; cut rows; a tensor
    // larger than an arena slot (2,000 rows x 3 floats = 24 KB).
    let cases: [(usize, usize, Vec<u32>, usize); 4] = [
        (1, 30, vec![0], 1024),
        (5, 4, vec![1, 3], 1024),
        (3, 6, vec![0, 1, 2], 4),
        (2000, 3, (0..2000).step_by(7).collect(), 1024),
    ];
    for (i, (rows, width, sampled, max_elements)) in cases.into_iter().enumerate() {
        let x = tensor(
            "x",
            vec![rows, width],
            TensorData::Fp32((0..rows * width).map(|v| v as f32 + i as f32).collect()),
        );
        let flags = tensor(
            "flags",
            vec![rows, 2],
            TensorData::Int64((0..rows as i64 * 2).map(|v| -v).collect()),
        );
        let p = tensor(
            "p",
            vec![rows, 2],
            TensorData::Fp64((0..rows * 2).map(|v| v as f64 / 3.0).collect()),
        );
        let label = tensor(
            "label",
            vec![rows],
            TensorData::Bytes((0..rows).map(|r| format!("c{r}").into_bytes()).collect()),
        );
        let names = if i % 2 == 0 { &names_a } else { &names_b };
        let inputs = [x, flags];
        let outputs = [p, label];
        let id = format!("r{i}");
        let captured = capture(
            &budget,
            &id,
            &inputs,
            rows,
            sampled.clone().into(),
            max_elements,
        );
        chunk.add(captured, names, i as u64, &outputs, &budget);
        for &row in &sampled {
            let tensors = |ts: &[Tensor]| {
                ts.iter()
                    .map(|t| (t.name.clone(), expected(t, rows, row, max_elements)))
                    .collect::<Vec<_>>()
            };
            want.push((
                id.clone(),
                i as u64,
                row,
                tensors(&inputs),
                tensors(&outputs),
            ));
        }
    }
    assert!(chunk.slots.iter().any(|s| matches!(s, Slot::Own(_))));
    assert!(chunk.slots.iter().any(|s| matches!(s, Slot::Arena { .. })));
    assert_eq!(
        chunk.arenas.len(),
        3,
        "FP32, INT64 and FP64 share one arena each"
    );
    assert_eq!(chunk.rows(), want.len());
    let got: Vec<_> = chunk
        .records()
        .into_iter()
        .map(|r| (r.request_id, r.version, r.row, r.inputs, r.outputs))
        .collect();
    assert_eq!(got, want);
    // Rows per version, and the cut request's rows as truncated.
    let tallies: Vec<_> = chunk
        .tallies()
        .into_iter()
        .map(|(_, n, t)| (n, t))
        .collect();
    assert_eq!(tallies, [(1 + 3, 3), (2 + 286, 0)]);
    chunk.delivered();
}

#[test]
fn an_undelivered_chunk_counts_its_rows_as_shutdown_and_a_reused_one_starts_empty() {
    let budget = budget();
    let names = names(&["x"], &[]);
    let input = tensor("x", vec![3, 1], TensorData::Fp32(vec![1.0, 2.0, 3.0]));
    let mut chunk = Chunk::with_capacity(2);
    chunk.add(
        capture(
            &budget,
            "a",
            std::slice::from_ref(&input),
            3,
            all_rows(3),
            8,
        ),
        &names,
        1,
        &[],
        &budget,
    );
    assert_eq!(budget.held().0, 3);
    assert!(
        chunk.clear(&Buffers::default()),
        "a small chunk is kept for reuse"
    );
    assert_eq!(budget.held(), (0, 0), "clearing gives the share back");
    assert!(chunk.is_empty() && chunk.records().is_empty());
    chunk.add(
        capture(&budget, "b", &[input], 3, all_rows(3), 8),
        &names,
        1,
        &[],
        &budget,
    );
    drop(chunk);
    assert_eq!(names.shutdown.get(), 3);
    assert_eq!(budget.held(), (0, 0));
}

#[test]
fn a_chunk_of_large_requests_makes_room_in_its_arenas_for_the_few_it_will_hold() {
    let budget = budget();
    let names = names(&["x"], &["y"]);
    let rows = 256;
    let x = tensor("x", vec![rows, 30], TensorData::Fp32(vec![0.5; rows * 30]));
    let y = tensor("y", vec![rows, 2], TensorData::Fp32(vec![0.25; rows * 2]));
    // 32 KiB of the log's bound: two such requests fill a chunk.
    let held = Budget::take(&*budget, rows, rows * 32 * 4).unwrap();
    let captured = Captured::new(
        LogId::new("r"),
        7,
        vec![x],
        rows,
        all_rows(rows),
        usize::MAX,
        held,
        None,
    );
    let mut chunk = Chunk::with_capacity(ENTRIES);
    chunk.add(captured, &names, 1, &[y], &budget);
    let arenas: Vec<usize> = chunk
        .arenas
        .iter()
        .map(|a| crate::with_tensor_data!(a, v => v.capacity()))
        .collect();
    // The input has its own vector; the output's arena has room for two requests' rows, not 64's
    // (memory the request path would fault in and never use).
    assert_eq!(arenas, [2 * rows * 2]);
}
