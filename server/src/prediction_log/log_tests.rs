use super::*;
use crate::tensor::TensorData;

fn signature(width: i64) -> Signature {
    Signature {
        inputs: vec![crate::signature::TensorSpec {
            name: "x".into(),
            datatype: crate::tensor::DataType::Fp32,
            shape: vec![-1, width],
        }],
        outputs: vec![crate::signature::TensorSpec {
            name: "y".into(),
            datatype: crate::tensor::DataType::Fp32,
            shape: vec![-1, 1],
        }],
        max_batch_size: 8,
    }
}

fn tensor(name: &str, rows: usize, width: usize) -> Tensor {
    Tensor {
        name: name.into(),
        shape: vec![rows, width],
        data: TensorData::Fp32((0..rows * width).map(|i| i as f32).collect()),
    }
}

fn request(rows: usize) -> Vec<Tensor> {
    vec![tensor("x", rows, 1)]
}

fn limits(rows: usize, bytes: usize, max_elements: usize) -> LogLimits {
    LogLimits {
        rows,
        bytes,
        max_elements,
    }
}

fn count(log: &PredictionLog, reason: &str) -> u64 {
    log.dropped().with_label_values(&["m", reason]).get()
}

/// The data pointer of a capture's first input copy.
fn copy_address(captured: &Captured<'_>) -> *const f32 {
    match &captured.kept[0].data {
        TensorData::Fp32(v) => v.as_ptr(),
        other => panic!("fp32, not {}", other.datatype()),
    }
}

#[test]
fn large_copies_reuse_the_vectors_of_delivered_requests() {
    let registry = Registry::new();
    // Rows cut to 16 of their 30 elements: a copy, not the request's own vector.
    let (log, rx, _) = PredictionLog::new(limits(100_000, 1 << 30, 16), &registry).unwrap();
    let version = log.for_version("m", &signature(30), 1.0);
    // 256 rows of 16 floats: too large for a chunk's arenas, so the copy is a vector of its own.
    let inputs = [tensor("x", 256, 30)];
    let first = version.capture(None, inputs.to_vec(), 256).unwrap();
    let address = copy_address(&first);
    version.push(first, 1, &[]);
    log.flush();
    let ItemKind::Requests(mut chunk) = rx.try_recv().unwrap().take() else {
        panic!("requests")
    };
    let records = chunk.records();
    assert_eq!(records.len(), 256);
    assert_eq!(records[255].inputs[0].1.len(), 16);
    chunk.delivered();
    log.recycle(chunk);
    let second = version.capture(None, inputs.to_vec(), 256).unwrap();
    assert_eq!(
        copy_address(&second),
        address,
        "the second capture copies into the first one's vector"
    );
    let TensorData::Fp32(copied) = &second.kept[0].data else {
        unreachable!()
    };
    let TensorData::Fp32(sent) = &inputs[0].data else {
        unreachable!()
    };
    let cut: Vec<f32> = sent
        .chunks(30)
        .flat_map(|row| &row[..16])
        .copied()
        .collect();
    assert_eq!(copied, &cut, "and holds exactly the new request's rows");
    // A capture while the vector is still in flight gets one of its own.
    let third = version.capture(None, inputs.to_vec(), 256).unwrap();
    assert_ne!(copy_address(&third), address);
}

/// The records of the one chunk the log queues when flushed.
fn flushed(log: &PredictionLog, rx: &Receiver<LogItem>) -> Vec<keel_monitor::PredictionRecord> {
    log.flush();
    let ItemKind::Requests(chunk) = rx.try_recv().unwrap().take() else {
        panic!("requests")
    };
    chunk.records()
}

#[test]
fn a_large_input_logged_whole_keeps_the_requests_own_vector() {
    let registry = Registry::new();
    let (log, rx, _) = PredictionLog::new(limits(100_000, 1 << 30, 1024), &registry).unwrap();
    let version = log.for_version("m", &signature(30), 1.0);
    let address = |t: &[Tensor]| match &t[0].data {
        TensorData::Fp32(v) => v.as_ptr(),
        _ => unreachable!(),
    };
    // 256 rows of 30 floats, every row sampled, none cut: the request's vector itself is kept.
    let inputs = vec![tensor("x", 256, 30)];
    let sent = inputs.clone();
    let own = address(&inputs);
    let captured = version.capture(Some("r"), inputs, 256).unwrap();
    assert_eq!(copy_address(&captured), own, "kept, not copied");
    version.push(captured, 1, &[]);
    let records = flushed(&log, &rx);
    assert_eq!(records.len(), 256);
    assert_eq!(
        records[255].inputs[0].1,
        crate::prediction_log::rows::values(&sent[0].data, 255 * 30..256 * 30)
    );
    // A small tensor logged whole is kept too: the chunk copies it into its arena as it takes
    // it, so a copy at the capture would be a second one.
    let small = vec![tensor("x", 4, 30)];
    let small_sent = small.clone();
    let small_at = address(&small);
    let captured = version.capture(None, small, 4).unwrap();
    assert_eq!(copy_address(&captured), small_at, "kept, not copied");
    version.push(captured, 1, &[]);
    let records = flushed(&log, &rx);
    assert_eq!(records.len(), 4);
    assert_eq!(
        records[3].inputs[0].1,
        crate::prediction_log::rows::values(&small_sent[0].data, 3 * 30..4 * 30)
    );
    // Copied as before: rows cut to the log's cap, and a vector with more than a quarter of
    // spare capacity (the byte bound counts elements).
    let (cut_log, _rx, _) =
        PredictionLog::new(limits(100_000, 1 << 30, 8), &Registry::new()).unwrap();
    let cut = cut_log.for_version("m", &signature(30), 1.0);
    let wide = vec![tensor("x", 256, 30)];
    let wide_at = address(&wide);
    let captured = cut.capture(None, wide, 256).unwrap();
    assert_ne!(copy_address(&captured), wide_at);
    assert_eq!(captured.kept[0].data.len(), 256 * 8);
    let mut roomy = vec![tensor("x", 256, 30)];
    if let TensorData::Fp32(v) = &mut roomy[0].data {
        v.reserve_exact(256 * 30);
    }
    let roomy_at = address(&roomy);
    let captured = version.capture(None, roomy, 256).unwrap();
    assert_ne!(copy_address(&captured), roomy_at);
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let registry = Registry::new();
    let (log, rx, budget) = PredictionLog::new(limits(10, 1 << 20, 1024), &registry).unwrap();
    let version = log.for_version("m", &signature(1), 1.0);
    let captured = version.capture(None, request(8), 8).unwrap();
    version.push(captured, 1, &[]);
    // The second capture already does not fit: nothing of it is copied.
    assert!(version.capture(None, request(8), 8).is_none());
    // Queued (and counted) when the drain looks: here, at once.
    assert_eq!(version.names.records.get(), 0);
    log.flush();
    assert_eq!(version.names.records.get(), 8);
    assert_eq!(count(&log, "queue_full"), 8);
    assert_eq!(budget.held().0, 8);
    let item = rx.try_recv().unwrap();
    let ItemKind::Requests(chunk) = item.take() else {
        panic!("requests")
    };
    let records = chunk.records();
    assert_eq!(records.len(), 8);
    assert!(records[0].request_id.len() == 32, "a random id is assigned");
    drop(chunk);
    assert_eq!(
        budget.held(),
        (0, 0),
        "the drained request gave its share back"
    );
}

#[test]
fn sampling_keeps_about_the_rate() {
    let registry = Registry::new();
    let (log, _rx, _) = PredictionLog::new(limits(100_000, 1 << 30, 1024), &registry).unwrap();
    assert!(
        log.for_version("m", &signature(1), 0.0)
            .capture(Some("r"), request(100), 100)
            .is_none()
    );
    let kept = log
        .for_version("m", &signature(1), 0.25)
        .capture(Some("r"), request(10_000), 10_000)
        .map_or(0, |c| c.len());
    assert!((2_000..3_000).contains(&kept), "{kept}");
}

#[test]
fn the_byte_bound_drops_and_counts_and_is_given_back() {
    let registry = Registry::new();
    // Room for one request of 8 rows x 100 floats (3,200 bytes) and its outputs, not two.
    let (log, rx, budget) = PredictionLog::new(limits(1000, 5000, 1024), &registry).unwrap();
    let version = log.for_version("m", &signature(100), 1.0);
    let inputs = [tensor("x", 8, 100)];
    let outputs = [tensor("y", 8, 1)];
    let first = version.capture(Some("a"), inputs.to_vec(), 8).unwrap();
    assert!(budget.held().1 >= 3200);
    assert!(version.capture(Some("b"), inputs.to_vec(), 8).is_none());
    assert_eq!(count(&log, "queue_bytes"), 8);
    version.push(first, 1, &outputs);
    log.flush();
    assert_eq!(version.names.records.get(), 8);
    let held = budget.held();
    assert!(held.1 >= 3200 + 32 && held.1 <= 5000, "{held:?}");
    // Outputs too large for what is left: the whole request is dropped, its share returned.
    let small = version
        .capture(Some("c"), vec![tensor("x", 1, 100)], 1)
        .unwrap();
    version.push(small, 1, &[tensor("y", 1, 1000)]);
    assert_eq!(count(&log, "queue_bytes"), 9);
    assert_eq!(budget.held(), held);
    drop(rx.try_recv().unwrap().take());
    assert_eq!(budget.held(), (0, 0));
    assert!(version.capture(Some("d"), inputs.to_vec(), 8).is_some());
}

#[test]
fn only_sampled_rows_are_copied_and_wide_rows_are_cut_and_counted() {
    let registry = Registry::new();
    let (log, rx, budget) = PredictionLog::new(limits(1000, 1 << 30, 10), &registry).unwrap();
    let version = log.for_version("m", &signature(1000), 0.5);
    // 200 rows of 1,000 floats: sampled rows only, each cut to 10 elements.
    let inputs = [tensor("x", 200, 1000)];
    let captured = version.capture(Some("r"), inputs.to_vec(), 200).unwrap();
    let sampled = captured.len();
    assert!((50..150).contains(&sampled), "{sampled}");
    let (_, bytes) = budget.held();
    // Id, row numbers, inputs, and the outputs' 4 bytes a row (fixed by the signature).
    assert_eq!(
        bytes,
        1 + sampled * 4 + sampled * 10 * 4 + sampled * 4,
        "{bytes}"
    );
    version.push(captured, 1, &[tensor("y", 200, 1)]);
    log.flush();
    assert_eq!(version.names.truncated.get(), sampled as u64);
    let ItemKind::Requests(chunk) = rx.try_recv().unwrap().take() else {
        panic!("requests")
    };
    for record in chunk.records() {
        let row = record.row as usize;
        let x = &record.inputs[0].1;
        assert_eq!(x.len(), 10);
        assert_eq!(
            x[3],
            keel_monitor::FeatureValue::Number((row * 1000 + 3) as f64)
        );
        assert_eq!(
            record.outputs[0].1,
            [keel_monitor::FeatureValue::Number(row as f64)]
        );
    }
    // Nothing sampled: nothing copied, nothing held.
    drop(chunk);
    let none = log.for_version("m", &signature(1000), 1e-9);
    assert!(none.capture(Some("r"), inputs.to_vec(), 200).is_none());
    assert_eq!(budget.held(), (0, 0));
}

#[test]
fn rows_after_shutdown_or_left_in_the_queue_are_counted() {
    let registry = Registry::new();
    let (log, rx, _) = PredictionLog::new(limits(1000, 1 << 20, 1024), &registry).unwrap();
    let version = log.for_version("m", &signature(1), 1.0);
    let captured = version.capture(Some("a"), request(3), 3).unwrap();
    version.push(captured, 1, &[]);
    log.flush();
    let captured = version.capture(Some("b"), request(4), 4).unwrap();
    version.push(captured, 1, &[]);
    // One request queued, one waiting in its chunk, neither delivered: closing counts both.
    drop(rx);
    log.close();
    assert_eq!(count(&log, "shutdown"), 7);
    assert!(version.capture(Some("c"), request(2), 2).is_none());
    assert_eq!(count(&log, "shutdown"), 9);
    assert!(!log.push_feedback(vec![FeedbackRecord {
        model: "m".into(),
        request_id: "a".into(),
        row: 0,
        truth: keel_monitor::FeatureValue::Number(1.0),
        timestamp_ms: 0,
    }]));
    assert_eq!(count(&log, "shutdown"), 10);
    assert_eq!(version.names.records.get(), 3);
}
