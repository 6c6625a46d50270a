//! Retention: the log folder must not outgrow its volume (the Kubernetes manifest gives it a
//! 4 GiB emptyDir). Finished files whose newest row is older than `max_age` are deleted, then the
//! oldest finished files until everything in the model folders (partial files included, which are
//! never deleted) fits in `max_bytes`. A file still waiting for its upload survives the age limit
//! (it goes once uploaded) but not the size limit: a full disk would lose every new row instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::naming::parse_name;

/// How long and how much of the log is kept; `None` keeps everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
}

impl Retention {
    pub fn is_off(&self) -> bool {
        self.max_age.is_none() && self.max_bytes.is_none()
    }
}

/// What one sweep did and found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Files deleted because their newest row was older than `max_age`.
    pub deleted_age: u64,
    /// Files deleted to bring the folder under `max_bytes`.
    pub deleted_size: u64,
    /// Of those, files that had not been uploaded yet.
    pub deleted_before_upload: u64,
    /// Bytes in the model folders after the sweep (finished, partial and index files).
    pub bytes: u64,
    /// When the oldest file kept passes `max_age` (unix milliseconds): the next sweep is due then.
    pub next_expiry_ms: Option<u64>,
}

struct Finished {
    last_ms: u64,
    first_ms: u64,
    seq: u32,
    path: PathBuf,
    len: u64,
}

/// Applies `retention` to the model folders under `dir` as of `now_ms` (unix milliseconds).
/// `pending(path)` says whether a file still waits for its upload. Errors (a file removed meanwhile,
/// an unreadable folder) skip that file: the next sweep tries again.
pub fn sweep(
    dir: &Path,
    retention: &Retention,
    now_ms: u64,
    pending: &dyn Fn(&Path) -> bool,
) -> Swept {
    let mut swept = Swept::default();
    let mut finished = Vec::new();
    for folder in subfolders(dir) {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            swept.bytes += meta.len();
            let name = entry.file_name();
            if let Some((_, first_ms, last_ms, seq)) = name.to_str().and_then(parse_name) {
                finished.push(Finished {
                    last_ms,
                    first_ms,
                    seq,
                    path: entry.path(),
                    len: meta.len(),
                });
            }
        }
    }
    // Oldest first: by newest row, then first row, then sequence.
    finished.sort_by_key(|f| (f.last_ms, f.first_ms, f.seq));
    let mut kept = Vec::with_capacity(finished.len());
    let expiry = |file: &Finished| {
        retention.max_age.map(|age| {
            file.last_ms
                .saturating_add(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
        })
    };
    for file in finished {
        let expires = expiry(&file);
        let expired = expires.is_some_and(|at| at < now_ms);
        if expired && !pending(&file.path) && remove(&file.path) {
            swept.deleted_age += 1;
            swept.bytes = swept.bytes.saturating_sub(file.len);
        } else {
            kept.push(file);
        }
    }
    let mut left = Vec::with_capacity(kept.len());
    for file in kept {
        let over = retention.max_bytes.is_some_and(|max| swept.bytes > max);
        let was_pending = pending(&file.path);
        if over && remove(&file.path) {
            swept.deleted_size += 1;
            swept.deleted_before_upload += u64::from(was_pending);
            swept.bytes = swept.bytes.saturating_sub(file.len);
        } else if !was_pending {
            left.push(file);
        }
    }
    // A file awaiting its upload is looked at again after the upload (a minute at most).
    swept.next_expiry_ms = left.iter().filter_map(expiry).min().map(|at| at + 1);
    swept
}

fn subfolders(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn remove(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "prediction log: cannot delete a file past retention");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parquet_log::naming::{LogKind, final_name};

    fn file(folder: &Path, kind: LogKind, first: u64, last: u64, len: usize) -> PathBuf {
        let path = folder.join(final_name(kind, first, last, 0));
        fs::write(&path, vec![0u8; len]).unwrap();
        path
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("keel-retention-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("m")).unwrap();
        fs::create_dir_all(dir.join("n")).unwrap();
        dir
    }

    #[test]
    fn age_deletes_files_whose_newest_row_is_too_old_unless_awaiting_upload() {
        let dir = scratch("age");
        let old = file(&dir.join("m"), LogKind::Predictions, 0, 1_000, 10);
        let straddling = file(&dir.join("m"), LogKind::Feedback, 500, 9_500, 10);
        let waiting = file(&dir.join("n"), LogKind::Predictions, 0, 2_000, 10);
        let retention = Retention {
            max_age: Some(Duration::from_secs(5)),
            max_bytes: None,
        };
        let swept = sweep(&dir, &retention, 10_000, &|p| p == waiting.as_path());
        assert_eq!(swept.deleted_age, 1);
        assert!(!old.exists() && straddling.exists() && waiting.exists());
        assert_eq!(swept.bytes, 20);
        assert_eq!(swept.next_expiry_ms, Some(14_501));
        // Once uploaded it goes.
        assert_eq!(sweep(&dir, &retention, 10_000, &|_| false).deleted_age, 1);
        assert!(!waiting.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn size_deletes_the_oldest_finished_files_and_never_partial_ones() {
        let dir = scratch("size");
        let partial = dir.join("m").join(".tmp-predictions-1-0.parquet.partial");
        fs::write(&partial, vec![0u8; 40]).unwrap();
        let a = file(&dir.join("m"), LogKind::Predictions, 0, 100, 30);
        let b = file(&dir.join("n"), LogKind::Predictions, 50, 200, 30);
        let c = file(&dir.join("m"), LogKind::Predictions, 150, 300, 30);
        let retention = Retention {
            max_age: None,
            max_bytes: Some(99),
        };
        let swept = sweep(&dir, &retention, 0, &|p| p == b.as_path());
        assert_eq!((swept.deleted_size, swept.deleted_before_upload), (2, 1));
        assert!(!a.exists() && !b.exists() && c.exists() && partial.exists());
        assert_eq!(swept.bytes, 70);
        // Nothing more to delete: partial files stay even above the limit.
        let swept = sweep(
            &dir,
            &Retention {
                max_age: None,
                max_bytes: Some(10),
            },
            0,
            &|_| false,
        );
        assert_eq!(swept.deleted_size, 1);
        assert!(partial.exists());
        assert_eq!(swept.bytes, 40);
        fs::remove_dir_all(&dir).unwrap();
    }
}
