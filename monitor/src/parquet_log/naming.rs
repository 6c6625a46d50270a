//! File names of the prediction log, so that a reader finds the files of a time range without
//! opening any: `<dir>/<model>/<kind>-<first_ts_ms>-<last_ts_ms>-<seq>.parquet`, where the
//! timestamps are the smallest and largest `timestamp_ms` in the file, zero-padded to 13 digits so
//! that names sort by time, and `seq` only tells apart files with the same range. Files being
//! written are `.tmp-*.parquet.partial` in the same folder, each with its row-group index
//! `.tmp-*.parquet.partial.idx` (see `recover`): hidden from readers (pyarrow skips names starting
//! with `.`) and never matched here. A partial file that cannot be recovered after a crash is kept
//! as `.tmp-*.parquet.partial.unrecoverable`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The two kinds of file, by name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    Predictions,
    Feedback,
}

impl LogKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Predictions => "predictions",
            Self::Feedback => "feedback",
        }
    }
}

const TEMP_PREFIX: &str = ".tmp-";
const TEMP_SUFFIX: &str = ".parquet.partial";
/// Appended to a partial file's name for its row-group index.
pub(super) const INDEX_SUFFIX: &str = ".idx";
/// Appended to the name of a partial file (and its index) that could not be recovered.
pub(super) const UNRECOVERABLE_SUFFIX: &str = ".unrecoverable";

/// A model's folder name: model names come from clients and registries, so anything but
/// `[A-Za-z0-9._-]` becomes `_`, and `.`/`..`/empty get a leading `_`. Models whose names differ
/// only there share a folder; the `model` column still tells their rows apart.
pub fn model_dir(dir: &Path, model: &str) -> PathBuf {
    let mut name: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name == "." || name == ".." {
        name.insert(0, '_');
    }
    dir.join(name)
}

/// A temporary name unique within this process (pid and a counter) for a file being written.
pub(super) fn temp_name(kind: LogKind) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{TEMP_PREFIX}{}-{}-{n}{TEMP_SUFFIX}",
        kind.prefix(),
        std::process::id()
    )
}

pub(super) fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

/// The kind of the partial file named `name`, `None` for any other name.
pub(super) fn temp_kind(name: &str) -> Option<LogKind> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    if !name.ends_with(TEMP_SUFFIX) {
        return None;
    }
    [LogKind::Predictions, LogKind::Feedback]
        .into_iter()
        .find(|kind| rest.starts_with(&format!("{}-", kind.prefix())))
}

/// The row-group index of the partial file `temp`.
pub(super) fn index_path(temp: &Path) -> PathBuf {
    let mut name = temp.as_os_str().to_owned();
    name.push(INDEX_SUFFIX);
    PathBuf::from(name)
}

/// The partial file whose index is named `name`, if it is an index name.
pub(super) fn indexed_temp_name(name: &str) -> Option<&str> {
    name.strip_suffix(INDEX_SUFFIX)
        .filter(|temp| is_temp_name(temp))
}

/// Where an unrecoverable partial file (or index) is kept.
pub(super) fn unrecoverable_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(UNRECOVERABLE_SUFFIX);
    PathBuf::from(name)
}

pub(super) fn final_name(kind: LogKind, first_ms: u64, last_ms: u64, seq: u32) -> String {
    format!(
        "{}-{first_ms:013}-{last_ms:013}-{seq}.parquet",
        kind.prefix()
    )
}

/// `(kind, first_ms, last_ms, seq)` of a log file name, `None` for any other name.
pub(super) fn parse_name(name: &str) -> Option<(LogKind, u64, u64, u32)> {
    let stem = name.strip_suffix(".parquet")?;
    let (kind, rest) = [LogKind::Predictions, LogKind::Feedback]
        .into_iter()
        .find_map(|kind| Some((kind, stem.strip_prefix(kind.prefix())?.strip_prefix('-')?)))?;
    let mut parts = rest.split('-');
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((kind, first, last, seq))
}

/// The finished prediction and feedback files of `model` under `dir` whose rows' timestamps
/// overlap `[start_ms, end_ms]`, oldest first (by first timestamp, predictions before feedback).
/// Rows still buffered or in a file not yet rotated are in none of them. A missing or unreadable
/// folder gives no files.
pub fn files_covering(dir: &Path, model: &str, start_ms: u64, end_ms: u64) -> Vec<PathBuf> {
    let folder = model_dir(dir, model);
    let Ok(entries) = fs::read_dir(&folder) else {
        return Vec::new();
    };
    let mut found: Vec<((u64, u8, u64, u32), PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let (kind, first, last, seq) = parse_name(name.to_str()?)?;
            let overlaps = first <= end_ms && last >= start_ms;
            overlaps.then(|| ((first, kind as u8, last, seq), entry.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, path)| path).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_ignored() {
        let name = final_name(LogKind::Feedback, 10, 20, 3);
        assert_eq!(name, "feedback-0000000000010-0000000000020-3.parquet");
        assert_eq!(parse_name(&name), Some((LogKind::Feedback, 10, 20, 3)));
        assert_eq!(
            parse_name("predictions-1-2-0.parquet"),
            Some((LogKind::Predictions, 1, 2, 0))
        );
        for other in [
            "predictions-1-2.parquet",
            "predictions-1-2-0-9.parquet",
            "predictions-a-2-0.parquet",
            "predictions--1-2-0.parquet",
            "labels-1-2-0.parquet",
            "predictions-1-2-0.parquet.partial",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        let temp = temp_name(LogKind::Predictions);
        assert!(is_temp_name(&temp) && parse_name(&temp).is_none());
        assert_eq!(temp_kind(&temp), Some(LogKind::Predictions));
        assert_eq!(
            temp_kind(&temp_name(LogKind::Feedback)),
            Some(LogKind::Feedback)
        );
        assert_eq!(temp_kind(".tmp-labels-1-0.parquet.partial"), None);
        let index = index_path(Path::new(&temp));
        let index = index.to_str().unwrap();
        assert!(!is_temp_name(index) && parse_name(index).is_none());
        assert_eq!(indexed_temp_name(index), Some(temp.as_str()));
        assert_eq!(indexed_temp_name("x.idx"), None);
        let kept = unrecoverable_path(Path::new(&temp));
        let kept = kept.to_str().unwrap();
        assert!(!is_temp_name(kept) && indexed_temp_name(kept).is_none() && kept.starts_with('.'));
    }

    #[test]
    fn model_folders_stay_inside_the_log_dir() {
        let dir = Path::new("/log");
        assert_eq!(
            model_dir(dir, "fraud-v2.onnx"),
            Path::new("/log/fraud-v2.onnx")
        );
        assert_eq!(model_dir(dir, "../etc"), Path::new("/log/.._etc"));
        assert_eq!(model_dir(dir, ".."), Path::new("/log/_.."));
        assert_eq!(model_dir(dir, ""), Path::new("/log/_"));
        assert_eq!(model_dir(dir, "a/b c"), Path::new("/log/a_b_c"));
    }
}
