//! Recovery after a crash: a partial file finished up to its last complete row group, torn row groups
//! and index entries cut, and files that cannot be trusted kept aside. (These tests are `recovery::...`:
//! the binary's tests are too long for one file.)

use std::fs;
use std::path::{Path, PathBuf};

use keel_monitor::parquet_log::{ParquetConfig, ParquetSink, model_dir};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::folder::{files, names_of, no_partial_files, scratch};
use crate::records::numbered;
use crate::table::{names, read};

/// Every name in the model's folder, sorted.
fn listing(dir: &Path, model: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(model_dir(dir, model))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The partial (`.tmp-*.parquet.partial`) file in the model's folder.
fn partial_file(dir: &Path, model: &str) -> PathBuf {
    let name = listing(dir, model)
        .into_iter()
        .find(|n| n.ends_with(".parquet.partial"))
        .expect("a partial file");
    model_dir(dir, model).join(name)
}

/// Like `kill -9`: the sink is gone without finishing anything.
pub(crate) fn crash(sink: ParquetSink) {
    std::mem::forget(sink);
}

#[test]
fn after_a_crash_the_partial_file_is_recovered_up_to_its_last_complete_row_group() {
    let dir = scratch("recover");
    let mut config = ParquetConfig::new(&dir);
    config.row_group_rows = 10;
    let mut sink = ParquetSink::new(config.clone()).unwrap();
    // 35 rows: three row groups of 10 on disk, 5 rows only in memory.
    sink.write_records(&numbered("m", 35)).unwrap();
    crash(sink);
    assert!(files(&dir, "m", "predictions").is_empty());
    let left = listing(&dir, "m");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|n| n.ends_with(".parquet.partial.idx")));

    let sink = ParquetSink::new(config).unwrap();
    let stats = sink.stats();
    assert_eq!((stats.files_recovered, stats.rows_recovered), (1, 30));
    assert_eq!(
        listing(&dir, "m"),
        ["predictions-0000000001000-0000000001029-0.parquet"],
        "the index is gone with the partial name"
    );
    let path = &files(&dir, "m", "predictions")[0];
    let table = read(path);
    assert_eq!((table.row_groups, table.rows.len()), (3, 30));
    assert_eq!(names(&table)[5..], ["x_0", "x_1", "label"]);
    for (i, row) in table.rows.iter().enumerate() {
        assert_eq!(row[2], Field::Str(format!("req{i}")));
        assert_eq!(row[6], Field::Double(-(i as f64)));
        assert_eq!(row[7], Field::Str(format!("c{i}")));
    }
    let reader = SerializedFileReader::new(fs::File::open(path).unwrap()).unwrap();
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap();
    assert!(kv.iter().any(|kv| kv.key == "keel.recovered"));
    drop(sink);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_torn_row_group_or_index_entry_is_cut_and_the_rest_recovered() {
    let dir = scratch("torn");
    let mut config = ParquetConfig::new(&dir);
    config.row_group_rows = 10;
    let mut sink = ParquetSink::new(config.clone()).unwrap();
    sink.write_records(&numbered("m", 30)).unwrap();
    crash(sink);
    let partial = partial_file(&dir, "m");
    // The last row group half on disk (its index entry says it is complete), and garbage after
    // the last index entry.
    let len = fs::metadata(&partial).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .unwrap()
        .set_len(len - 50)
        .unwrap();
    let mut index = partial.as_os_str().to_owned();
    index.push(".idx");
    let mut bytes = fs::read(&index).unwrap();
    bytes.extend_from_slice(&[7; 100]);
    fs::write(&index, bytes).unwrap();

    let sink = ParquetSink::new(config.clone()).unwrap();
    assert_eq!(sink.stats().rows_recovered, 20);
    let written = files(&dir, "m", "predictions");
    assert_eq!(
        names_of(written.clone()),
        ["predictions-0000000001000-0000000001019-0.parquet"]
    );
    assert_eq!(read(&written[0]).rows.len(), 20);
    no_partial_files(&dir, "m");

    // Recovery is idempotent: a crash during it (after the footer, before the rename) is
    // recovered again on the next start.
    let mut sink = ParquetSink::new(config.clone()).unwrap();
    sink.write_records(&numbered("n", 20)).unwrap();
    crash(sink);
    let partial = partial_file(&dir, "n");
    let mut index = partial.as_os_str().to_owned();
    index.push(".idx");
    let saved_index = fs::read(&index).unwrap();
    let sink = ParquetSink::new(config.clone()).unwrap();
    assert_eq!(sink.stats().rows_recovered, 20);
    let done = files(&dir, "n", "predictions");
    fs::rename(&done[0], &partial).unwrap();
    fs::write(&index, &saved_index).unwrap();
    let sink = ParquetSink::new(config.clone()).unwrap();
    assert_eq!(sink.stats().rows_recovered, 20);
    let done = files(&dir, "n", "predictions");
    assert_eq!(read(&done[0]).rows.len(), 20);
    no_partial_files(&dir, "n");

    // Without its index a partial file cannot be trusted: kept, not removed.
    fs::rename(&done[0], &partial).unwrap();
    let sink = ParquetSink::new(config).unwrap();
    assert_eq!(sink.stats().files_unrecoverable, 1);
    let left = listing(&dir, "n");
    assert_eq!(left.len(), 1);
    assert!(
        left[0].ends_with(".parquet.partial.unrecoverable"),
        "{left:?}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unrecoverable_partial_files_are_kept_and_orphan_indexes_removed() {
    let dir = scratch("crash");
    let folder = model_dir(&dir, "m");
    fs::create_dir_all(&folder).unwrap();
    fs::write(folder.join(".tmp-predictions-1-0.parquet.partial"), b"PAR1").unwrap();
    fs::write(folder.join(".tmp-feedback-1-1.parquet.partial"), b"PAR1xx").unwrap();
    fs::write(
        folder.join(".tmp-feedback-1-1.parquet.partial.idx"),
        b"KEELRGI1",
    )
    .unwrap();
    fs::write(
        folder.join(".tmp-predictions-1-2.parquet.partial.idx"),
        b"KEELRGI1",
    )
    .unwrap();
    fs::write(folder.join("notes.txt"), b"kept").unwrap();
    let sink = ParquetSink::new(ParquetConfig::new(&dir)).unwrap();
    assert_eq!(sink.stats().files_unrecoverable, 2);
    assert_eq!(
        listing(&dir, "m"),
        [
            ".tmp-feedback-1-1.parquet.partial.idx.unrecoverable",
            ".tmp-feedback-1-1.parquet.partial.unrecoverable",
            ".tmp-predictions-1-0.parquet.partial.unrecoverable",
            "notes.txt"
        ]
    );
    // Kept files are not looked at again.
    let sink = ParquetSink::new(ParquetConfig::new(&dir)).unwrap();
    assert_eq!(sink.stats().files_unrecoverable, 0);
    fs::remove_dir_all(dir).unwrap();
}
