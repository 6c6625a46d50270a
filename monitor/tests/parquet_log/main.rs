//! The prediction log written to real files and read back with the parquet crate's reader
//! (pandas/pyarrow read them in tests/test_parquet_log.py).
//!
//! The tests are here, at the crate root (their names are what `cargo test` prints), but for the crash
//! recovery ones, in recovery.rs (`recovery::...`); the records written in records.rs, the log folder
//! in folder.rs, files read back in table.rs.

mod folder;
mod records;
mod recovery;
mod table;

use std::fs;
use std::time::{Duration, Instant};

use keel_monitor::parquet_log::{
    ParquetConfig, ParquetSink, ParquetStats, files_covering, model_dir,
};
use keel_monitor::{FeatureValue, FeedbackRecord, PredictionRecord};
use parquet::basic::{Repetition, Type as PhysicalType};
use parquet::record::Field;

use FeatureValue::{Category as C, Number as N};
use folder::{files, names_of, no_partial_files, scratch};
use records::{numbered, record};
use recovery::crash;
use table::{names, read};

#[test]
fn predictions_round_trip_with_nulls_categories_and_row_groups() {
    let dir = scratch("roundtrip");
    let mut config = ParquetConfig::new(&dir);
    config.row_group_rows = 3;
    let mut sink = ParquetSink::new(config).unwrap();
    let records: Vec<PredictionRecord> = (0..7u32)
        .map(|i| {
            let x = match i {
                // The wrong kind for a number column: null, counted.
                3 => vec![C("oops".into()), N(30.5)],
                // Too few elements: the missing one is null.
                4 => vec![N(4.0)],
                _ => vec![N(f64::from(i)), N(f64::from(i) + 0.5)],
            };
            let mut inputs = vec![("x", x)];
            // A tensor missing from one row: null.
            if i != 5 {
                inputs.push(("city", vec![C(format!("city{}", i % 2))]));
            }
            record(
                "fraud",
                &format!("req{}", i / 2),
                i % 2,
                1_000 + u64::from(i),
                inputs,
            )
        })
        .collect();
    sink.write_records(&records[..4]).unwrap();
    sink.write_records(&records[4..]).unwrap();
    assert!(
        files(&dir, "fraud", "predictions").is_empty(),
        "nothing finished before the flush"
    );
    sink.flush().unwrap();

    let written = files(&dir, "fraud", "predictions");
    assert_eq!(written.len(), 1);
    assert_eq!(
        written[0].file_name().unwrap(),
        "predictions-0000000001000-0000000001006-0.parquet"
    );
    no_partial_files(&dir, "fraud");
    let table = read(&written[0]);
    assert_eq!(table.row_groups, 3);
    assert_eq!(
        names(&table),
        [
            "model",
            "version",
            "request_id",
            "row",
            "timestamp_ms",
            "x_0",
            "x_1",
            "city",
            "label"
        ]
    );
    let types: Vec<(PhysicalType, Repetition)> =
        table.columns.iter().map(|(_, t, r)| (*t, *r)).collect();
    use PhysicalType::{BYTE_ARRAY, DOUBLE, INT32, INT64};
    const OPTIONAL: Repetition = Repetition::OPTIONAL;
    const REQUIRED: Repetition = Repetition::REQUIRED;
    assert_eq!(
        types,
        [
            (BYTE_ARRAY, REQUIRED),
            (INT64, REQUIRED),
            (BYTE_ARRAY, REQUIRED),
            (INT32, REQUIRED),
            (INT64, REQUIRED),
            (DOUBLE, OPTIONAL),
            (DOUBLE, OPTIONAL),
            (BYTE_ARRAY, OPTIONAL),
            (BYTE_ARRAY, OPTIONAL),
        ]
    );
    assert_eq!(table.rows.len(), 7);
    let first = &table.rows[0];
    assert_eq!(first[0], Field::Str("fraud".into()));
    assert_eq!(first[1], Field::Long(2));
    assert_eq!(first[2], Field::Str("req0".into()));
    assert_eq!(first[3], Field::UInt(0));
    assert_eq!(first[4], Field::Long(1000));
    assert_eq!(first[5], Field::Double(0.0));
    assert_eq!(first[6], Field::Double(0.5));
    assert_eq!(first[7], Field::Str("city0".into()));
    assert_eq!(first[8], Field::Str("c0".into()));
    assert_eq!(table.rows[3][5], Field::Null);
    assert_eq!(table.rows[3][6], Field::Double(30.5));
    assert_eq!(table.rows[4][5], Field::Double(4.0));
    assert_eq!(table.rows[4][6], Field::Null);
    assert_eq!(table.rows[5][7], Field::Null);
    assert_eq!(table.rows[6][3], Field::UInt(0));
    assert_eq!(table.rows[6][5], Field::Double(6.0));

    let stats = sink.stats();
    assert_eq!(
        stats,
        ParquetStats {
            prediction_rows_written: 7,
            rows_with_nulls: 3,
            mismatched_values: 1,
            files_written: 1,
            ..ParquetStats::default()
        }
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn files_rotate_by_size_and_age_and_are_found_by_time_range() {
    let dir = scratch("rotate");
    let mut config = ParquetConfig::new(&dir);
    config.row_group_rows = 10;
    config.max_file_bytes = 4096;
    let mut sink = ParquetSink::new(config).unwrap();
    let records: Vec<PredictionRecord> = (0..300u32)
        .map(|i| {
            record(
                "m",
                &format!("request-{i}"),
                i,
                u64::from(i),
                vec![("x", vec![N(f64::from(i))])],
            )
        })
        .collect();
    sink.write_records(&records).unwrap();
    sink.flush().unwrap();
    let written = files(&dir, "m", "predictions");
    assert!(written.len() >= 3, "{written:?}");
    let mut next_ts = 0;
    for path in &written {
        let table = read(path);
        let first = next_ts;
        let last = first + table.rows.len() as u64 - 1;
        assert_eq!(
            path.file_name().unwrap().to_string_lossy(),
            format!("predictions-{first:013}-{last:013}-0.parquet")
        );
        assert_eq!(table.rows[0][4], Field::Long(first as i64));
        next_ts = last + 1;
    }
    assert_eq!(next_ts, 300);
    // Every file but the last reached the limit. The limit counts row groups as written; the
    // footer (row-group metadata, page indexes) comes on top, a few KiB here.
    for path in &written[..written.len() - 1] {
        let size = fs::metadata(path).unwrap().len();
        assert!((4096..4 * 4096).contains(&size), "{path:?}: {size}");
    }
    let middle = files_covering(&dir, "m", 150, 150);
    assert_eq!(middle.len(), 1);
    assert!(
        read(&middle[0])
            .rows
            .iter()
            .any(|row| row[4] == Field::Long(150))
    );
    assert_eq!(files_covering(&dir, "m", 0, 299), written);
    assert!(files_covering(&dir, "m", 300, 1000).is_empty());
    assert!(files_covering(&dir, "other", 0, 1000).is_empty());

    // One row over a one-byte limit: a file per row.
    let mut config = ParquetConfig::new(&dir);
    config.max_file_bytes = 1;
    let mut sink = ParquetSink::new(config).unwrap();
    let tiny: Vec<PredictionRecord> = (0..3u32)
        .map(|i| {
            record(
                "tiny",
                "r",
                i,
                100 * u64::from(i),
                vec![("x", vec![N(1.0)])],
            )
        })
        .collect();
    sink.write_records(&tiny).unwrap();
    assert_eq!(
        names_of(files(&dir, "tiny", "predictions")),
        [
            "predictions-0000000000000-0000000000000-0.parquet",
            "predictions-0000000000100-0000000000100-0.parquet",
            "predictions-0000000000200-0000000000200-0.parquet"
        ]
    );
    assert_eq!(
        names_of(files_covering(&dir, "tiny", 50, 150)),
        ["predictions-0000000000100-0000000000100-0.parquet"]
    );

    // Age: a file open for max_file_age is finished by rotate_due, not before.
    let mut config = ParquetConfig::new(&dir);
    config.max_file_age = Duration::from_secs(60);
    let mut sink = ParquetSink::new(config).unwrap();
    sink.write_records(&[record("aged", "r", 0, 5, vec![("x", vec![N(1.0)])])])
        .unwrap();
    sink.rotate_due(Instant::now()).unwrap();
    assert!(files(&dir, "aged", "predictions").is_empty());
    sink.rotate_due(Instant::now() + Duration::from_secs(61))
        .unwrap();
    assert_eq!(
        names_of(files(&dir, "aged", "predictions")),
        ["predictions-0000000000005-0000000000005-0.parquet"]
    );
    // Same time range again: the sequence number tells the files apart.
    sink.write_records(&[record("aged", "r", 1, 5, vec![("x", vec![N(2.0)])])])
        .unwrap();
    sink.flush().unwrap();
    assert_eq!(
        names_of(files(&dir, "aged", "predictions")),
        [
            "predictions-0000000000005-0000000000005-0.parquet",
            "predictions-0000000000005-0000000000005-1.parquet"
        ]
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_new_tensor_rotates_the_file_and_the_next_one_has_both() {
    let dir = scratch("schema");
    let mut sink = ParquetSink::new(ParquetConfig::new(&dir)).unwrap();
    sink.write_records(&[record("m", "a", 0, 1, vec![("x", vec![N(1.0)])])])
        .unwrap();
    sink.write_records(&[record(
        "m",
        "b",
        0,
        2,
        vec![("x", vec![N(2.0)]), ("y", vec![N(3.0)])],
    )])
    .unwrap();
    sink.write_records(&[record("m", "c", 0, 3, vec![("x", vec![N(4.0)])])])
        .unwrap();
    sink.flush().unwrap();
    let written = files(&dir, "m", "predictions");
    assert_eq!(written.len(), 2);
    let old = read(&written[0]);
    assert_eq!(names(&old)[5..], ["x", "label"]);
    let new = read(&written[1]);
    assert_eq!(names(&new)[5..], ["x", "label", "y"]);
    assert_eq!(new.rows.len(), 2);
    assert_eq!(new.rows[0][7], Field::Double(3.0));
    assert_eq!(new.rows[1][7], Field::Null);
    // Two models in one batch go to their own folders.
    sink.write_records(&[
        record("a/b", "r", 0, 1, vec![("x", vec![N(1.0)])]),
        record("m", "r", 0, 9, vec![("x", vec![N(1.0)])]),
    ])
    .unwrap();
    drop(sink);
    assert_eq!(files(&dir, "a/b", "predictions").len(), 1);
    assert_eq!(files(&dir, "m", "predictions").len(), 3, "drop flushes");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn feedback_goes_to_its_own_files_and_joins_by_request_and_row() {
    let dir = scratch("feedback");
    let mut sink = ParquetSink::new(ParquetConfig::new(&dir)).unwrap();
    let feedback = |request: &str, row: u32, truth: FeatureValue, ts: u64| FeedbackRecord {
        model: "m".into(),
        request_id: request.into(),
        row,
        truth,
        timestamp_ms: ts,
    };
    sink.write_feedback(&[
        feedback("r1", 0, N(1.5), 50),
        feedback("r1", 1, C("spam".into()), 60),
    ])
    .unwrap();
    sink.flush().unwrap();
    let written = files(&dir, "m", "feedback");
    assert_eq!(written.len(), 1);
    assert_eq!(
        written[0].file_name().unwrap(),
        "feedback-0000000000050-0000000000060-0.parquet"
    );
    let table = read(&written[0]);
    assert_eq!(
        names(&table),
        [
            "model",
            "request_id",
            "row",
            "timestamp_ms",
            "truth_value",
            "truth_label"
        ]
    );
    assert_eq!(
        table.rows[0],
        [
            Field::Str("m".into()),
            Field::Str("r1".into()),
            Field::UInt(0),
            Field::Long(50),
            Field::Double(1.5),
            Field::Null
        ]
    );
    assert_eq!(table.rows[1][4], Field::Null);
    assert_eq!(table.rows[1][5], Field::Str("spam".into()));
    assert_eq!(files_covering(&dir, "m", 0, 100), written);
    assert_eq!(sink.stats().feedback_rows_written, 2);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn write_errors_are_counted_and_other_models_still_written() {
    let dir = scratch("errors");
    fs::create_dir_all(&dir).unwrap();
    // A file where the model's folder should be: creating the folder fails, even for root.
    fs::write(model_dir(&dir, "blocked"), b"").unwrap();
    let mut config = ParquetConfig::new(&dir);
    config.row_group_rows = 1;
    let mut sink = ParquetSink::new(config).unwrap();
    let result = sink.write_records(&[
        record("blocked", "r", 0, 1, vec![("x", vec![N(1.0)])]),
        record("fine", "r", 0, 1, vec![("x", vec![N(1.0)])]),
        record("blocked", "r", 1, 2, vec![("x", vec![N(1.0)])]),
    ]);
    assert!(result.unwrap_err().to_string().contains("blocked"));
    sink.flush().unwrap();
    assert_eq!(files(&dir, "fine", "predictions").len(), 1);
    let stats = sink.stats();
    assert_eq!(
        (
            stats.write_errors,
            stats.rows_dropped,
            stats.prediction_rows_written
        ),
        (2, 2, 1)
    );
    assert_eq!(sink.take_lost(), [("blocked".to_string(), 2)]);
    assert!(sink.take_lost().is_empty());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rows_wait_in_memory_at_most_the_flush_interval() {
    let dir = scratch("interval");
    let mut config = ParquetConfig::new(&dir);
    config.flush_interval = Duration::from_millis(200);
    let mut sink = ParquetSink::new(config.clone()).unwrap();
    sink.write_records(&numbered("m", 3)).unwrap();
    // Before the interval, nothing is on disk yet.
    sink.rotate_due(Instant::now()).unwrap();
    assert!(fs::read_dir(model_dir(&dir, "m")).is_err());
    sink.rotate_due(Instant::now() + Duration::from_millis(250))
        .unwrap();
    // A row arriving after the interval writes its row group with it.
    std::thread::sleep(Duration::from_millis(250));
    sink.write_records(&numbered("m", 5)[3..]).unwrap();
    let feedback = FeedbackRecord {
        model: "m".into(),
        request_id: "req0".into(),
        row: 0,
        truth: N(1.0),
        timestamp_ms: 2_000,
    };
    sink.write_feedback(std::slice::from_ref(&feedback))
        .unwrap();
    sink.rotate_due(Instant::now() + Duration::from_millis(250))
        .unwrap();
    crash(sink);
    let sink = ParquetSink::new(config).unwrap();
    assert_eq!(sink.stats().files_recovered, 2);
    assert_eq!(sink.stats().rows_recovered, 6);
    let predictions = files(&dir, "m", "predictions");
    let table = read(&predictions[0]);
    assert_eq!((table.row_groups, table.rows.len()), (2, 5));
    assert_eq!(read(&files(&dir, "m", "feedback")[0]).rows.len(), 1);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_wide_tensor_gets_at_most_the_cap_of_columns_and_is_counted() {
    let dir = scratch("wide");
    let mut config = ParquetConfig::new(&dir);
    config.max_tensor_columns = 16;
    let mut sink = ParquetSink::new(config).unwrap();
    // A model with a dynamic non-batch dimension: one row of a million elements, then a narrow one.
    let wide = record("m", "a", 0, 1, vec![("x", vec![N(0.25); 1_000_000])]);
    let narrow = record("m", "b", 0, 2, vec![("x", vec![N(1.0), N(2.0)])]);
    let wider_label = {
        let mut r = record("m", "c", 0, 3, vec![("x", vec![N(3.0); 20])]);
        r.outputs = vec![("label".into(), vec![C("w".into()); 40])];
        r
    };
    sink.write_records(&[wide, narrow]).unwrap();
    sink.write_records(&[wider_label]).unwrap();
    sink.flush().unwrap();
    let stats = sink.stats();
    assert_eq!(stats.truncated_rows, 2);
    assert_eq!(
        stats.truncated_values,
        (1_000_000 - 16) + (20 - 16) + (40 - 16)
    );
    let written = files(&dir, "m", "predictions");
    assert_eq!(written.len(), 2, "the wider label rotates the file once");
    for path in &written {
        let table = read(path);
        assert!(table.columns.len() <= 5 + 2 * 16, "{}", table.columns.len());
    }
    let first = read(&written[0]);
    assert_eq!(first.columns.len(), 5 + 16 + 1);
    assert_eq!(names(&first)[5], "x_0");
    assert_eq!(names(&first)[20], "x_15");
    assert_eq!(first.rows[0][20], Field::Double(0.25));
    assert_eq!(first.rows[1][6], Field::Double(2.0));
    assert_eq!(first.rows[1][7], Field::Null);
    let second = read(&written[1]);
    assert_eq!(second.columns.len(), 5 + 16 + 16);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_log_folder_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("private");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _sink = ParquetSink::new(ParquetConfig::new(&dir)).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    if keel_monitor::local_state::effective_uid().unwrap() == 0 {
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let error = ParquetSink::new(ParquetConfig::new(&dir)).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("--prediction-log-dir") && message.contains("uid 65534"),
            "{message}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A webhook event's sender asks the writer, through the folder, to finish the model's open file:
/// the event then lists the file holding the newest rows (which would otherwise wait minutes for
/// the rotation). Without a writer the request times out and is withdrawn.
#[test]
fn a_seal_request_finishes_the_open_files_of_that_model_only() {
    let dir = scratch("seal");
    let mut sink = ParquetSink::new(ParquetConfig::new(&dir)).unwrap();
    let rows: Vec<PredictionRecord> = (0..5)
        .map(|i| record("m", "r", i, 100 + u64::from(i), vec![("x", vec![N(1.0)])]))
        .chain([record("other", "r", 0, 100, vec![("x", vec![N(1.0)])])])
        .collect();
    sink.write_records(&rows).unwrap();
    sink.write_feedback(&[FeedbackRecord {
        model: "m".into(),
        request_id: "r".into(),
        row: 0,
        timestamp_ms: 104,
        truth: N(1.0),
    }])
    .unwrap();
    assert!(files_covering(&dir, "m", 0, 1000).is_empty());

    let asker = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            keel_monitor::parquet_log::seal(&dir, "m", Duration::from_secs(10))
        })
    };
    // The drain thread's tick.
    let started = Instant::now();
    while !asker.is_finished() && started.elapsed() < Duration::from_secs(10) {
        sink.rotate_due(Instant::now()).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(asker.join().unwrap(), "the writer served the request");
    let sealed = files_covering(&dir, "m", 0, 1000);
    assert_eq!(sealed.len(), 2, "{sealed:?}");
    assert_eq!(read(&sealed[0]).rows.len(), 5);
    assert!(
        files_covering(&dir, "other", 0, 1000).is_empty(),
        "other models keep their files open"
    );

    // Nobody serves a folder that no writer logs to: withdrawn after the timeout, nothing left.
    drop(sink);
    let started = Instant::now();
    assert!(!keel_monitor::parquet_log::seal(
        &dir,
        "m",
        Duration::from_millis(200)
    ));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(!model_dir(&dir, "m").join(".seal-request").exists());
    assert!(!keel_monitor::parquet_log::seal(
        &dir,
        "never-logged",
        Duration::from_secs(5)
    ));
    fs::remove_dir_all(&dir).unwrap();
}
