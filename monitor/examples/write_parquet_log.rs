//! Writes a small prediction log into the folder given as the only argument: 25 rows of a model
//! "fraud" (numbers, categories, a 3-wide tensor, nulls from missing and wrong-kind values, row
//! groups of 4, a time rotation after row 10 and a schema rotation when row 20 brings a new
//! tensor) and 9 feedback rows. tests/test_parquet_log.py reads it back with pandas; the values
//! follow the formulas below so the test can recompute them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use keel_monitor::parquet_log::{ParquetConfig, ParquetSink};
use keel_monitor::{FeatureValue, FeedbackRecord, PredictionRecord};

const START_MS: u64 = 1_700_000_000_000;
const CITIES: [&str; 3] = ["paris", "lima", "oslo"];

fn record(i: u32) -> PredictionRecord {
    let x = f64::from(i);
    let amount = if i % 7 == 3 {
        FeatureValue::Category("n/a".into())
    } else {
        FeatureValue::Number(x * 1.5)
    };
    let mut inputs = vec![
        ("amount".to_owned(), vec![amount]),
        (
            "features".to_owned(),
            vec![
                FeatureValue::Number(x),
                FeatureValue::Number(2.0 * x),
                FeatureValue::Number(3.0 * x),
            ],
        ),
    ];
    if i % 5 != 4 {
        inputs.push((
            "city".to_owned(),
            vec![FeatureValue::Category(CITIES[i as usize % 3].into())],
        ));
    }
    if i >= 20 {
        let device = if i.is_multiple_of(2) {
            "ios"
        } else {
            "android"
        };
        inputs.push((
            "device".to_owned(),
            vec![FeatureValue::Category(device.into())],
        ));
    }
    let p = f64::from(i % 10) / 10.0;
    PredictionRecord {
        model: "fraud".into(),
        version: if i < 12 { 1 } else { 2 },
        request_id: format!("req-{}", i / 2),
        row: i % 2,
        timestamp_ms: START_MS + u64::from(i) * 1000,
        inputs,
        outputs: vec![
            (
                "label".to_owned(),
                vec![FeatureValue::Category(label(i).into())],
            ),
            (
                "probabilities".to_owned(),
                vec![FeatureValue::Number(p), FeatureValue::Number(1.0 - p)],
            ),
        ],
    }
}

fn label(i: u32) -> &'static str {
    if i.is_multiple_of(4) { "fraud" } else { "ok" }
}

/// Feedback for every third row: its label, except the last, which carries a number.
fn feedback(i: u32) -> FeedbackRecord {
    let truth = if i == 24 {
        FeatureValue::Number(0.5)
    } else {
        FeatureValue::Category(label(i).into())
    };
    FeedbackRecord {
        model: "fraud".into(),
        request_id: format!("req-{}", i / 2),
        row: i % 2,
        truth,
        timestamp_ms: START_MS + 100_000 + u64::from(i) * 1000,
    }
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: write_parquet_log OUTPUT_DIR");
        return ExitCode::FAILURE;
    };
    match write(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("write_parquet_log: {error}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: PathBuf) -> Result<(), keel_monitor::parquet_log::ParquetError> {
    let mut config = ParquetConfig::new(dir);
    config.row_group_rows = 4;
    let max_age = config.max_file_age;
    let mut sink = ParquetSink::new(config)?;
    let records: Vec<PredictionRecord> = (0..25).map(record).collect();
    for (start, batch) in (0..).step_by(5).zip(records.chunks(5)) {
        sink.write_records(batch)?;
        if start == 5 {
            // As if max_file_age had passed: rows 0-9 make the first file.
            sink.rotate_due(Instant::now() + max_age)?;
        }
    }
    let feedback: Vec<FeedbackRecord> = (0..25).step_by(3).map(feedback).collect();
    sink.write_feedback(&feedback)?;
    sink.flush()?;
    let stats = sink.stats();
    println!(
        "files={} prediction_rows={} feedback_rows={} rows_with_nulls={} mismatched_values={}",
        stats.files_written,
        stats.prediction_rows_written,
        stats.feedback_rows_written,
        stats.rows_with_nulls,
        stats.mismatched_values
    );
    Ok(())
}
