//! The prediction log: served rows ([`PredictionRecord`]) and their ground truth
//! ([`FeedbackRecord`]) in rotating Parquet files that `pandas.read_parquet` reads, so a retraining
//! job can take the inputs of a time range and join labels to them by `(request_id, row)`.
//!
//! Layout: `<dir>/<model>/predictions-<first_ts_ms>-<last_ts_ms>-<seq>.parquet` and
//! `<dir>/<model>/feedback-...parquet` (see [`files_covering`]). Prediction columns: `model`
//! (string), `version` (int64), `request_id` (string), `row` (uint32), `timestamp_ms` (int64), then
//! one nullable column per monitored tensor element, `<tensor>` or `<tensor>_<i>`, DOUBLE for
//! numbers and UTF8 for categories (the kind most of its first values have, then fixed for the
//! model; see `layout`); a value of the other kind, or a missing one, is null and counted. A
//! tensor gets at most [`ParquetConfig::max_tensor_columns`] columns: its further elements are not
//! written (counted in [`ParquetStats::truncated_values`]), so one wide row cannot make a file of
//! millions of columns. Feedback columns: `model`, `request_id`, `row`, `timestamp_ms`,
//! `truth_value` (double, null for labels), `truth_label` (string, null for numbers).
//!
//! Files are finished at `max_file_bytes`, after `max_file_age`, when a record brings a tensor the
//! file has no column for, when its row groups x columns reach 50,000 (a bounded footer), and on
//! [`ParquetSink::flush`] and drop. Rows are buffered up to a row group, and for at most
//! [`ParquetConfig::flush_interval`]: then they are written as a row group, handed to the OS and
//! listed in the file's row-group index, so a crash of the process loses at most the rows of the
//! last `flush_interval` (plus the caller's own queue). On start, partial files a crash left are
//! recovered up to their last complete row group, or kept under a `.unrecoverable` name: never
//! removed (see `recover`). A write error loses only the rows not yet in a complete row group
//! ([`ParquetSink::take_lost`] says whose). The sink is synchronous and meant for one drain
//! thread; one sink per log dir.
//!
//! Around the files: `retention` deletes finished files by age and total size, `upload` sends them
//! to S3-compatible storage, and `seal` lets a webhook sender have a model's open files finished so
//! its event lists every row of its window. Schema and operations: docs/prediction-log.md.

mod column;
mod file;
mod housekeeping;
mod layout;
mod naming;
mod recover;
mod retention;
mod seal;
mod stream;
mod table;
mod upload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use naming::{LogKind, files_covering, model_dir};
pub use retention::Retention;
pub use seal::seal;
pub use upload::start as start_upload;
pub use upload::{UploadError, UploadQueue, UploadTarget, Uploader};

use crate::record::{FeedbackRecord, PredictionRecord};
use housekeeping::FileMetrics;
use layout::Layout;
use stream::{Limits, Stream, StreamError};
use table::Table;

/// Where and how the log is written.
#[derive(Clone, Debug)]
pub struct ParquetConfig {
    pub dir: PathBuf,
    /// A file is finished once its row groups reach this size (default 64 MiB).
    pub max_file_bytes: u64,
    /// A file is finished this long after its first row (default 5 minutes).
    pub max_file_age: Duration,
    /// Rows buffered in memory before they are written as a row group (default 10,000).
    pub row_group_rows: usize,
    /// Longest a row waits in memory for its row group (default 1 s): what a crash can lose.
    pub flush_interval: Duration,
    /// Columns one tensor gets at most (default 1,024); its further elements are not written.
    pub max_tensor_columns: usize,
    /// Finished files deleted by age and total size (default: none).
    pub retention: Retention,
}

impl ParquetConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_file_bytes: 64 << 20,
            max_file_age: Duration::from_secs(300),
            row_group_rows: 10_000,
            flush_interval: Duration::from_secs(1),
            max_tensor_columns: 1024,
            retention: Retention::default(),
        }
    }
}

/// Why the log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    #[error("prediction log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("prediction log {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("prediction log folder (--prediction-log-dir): {0}")]
    Folder(#[from] crate::local_state::LocalStateError),
}

/// Counts since the sink was made, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParquetStats {
    /// Prediction rows in finished files.
    pub prediction_rows_written: u64,
    /// Feedback rows in finished files.
    pub feedback_rows_written: u64,
    /// Prediction rows accepted with at least one null value column.
    pub rows_with_nulls: u64,
    /// Values stored as null because their kind differed from their column's.
    pub mismatched_values: u64,
    /// Finished files.
    pub files_written: u64,
    /// Failed writes; each lost the rows of the file it was writing that were not yet in a
    /// complete row group.
    pub write_errors: u64,
    /// Rows lost to write errors.
    pub rows_dropped: u64,
    /// Prediction rows with at least one tensor wider than `max_tensor_columns`.
    pub truncated_rows: u64,
    /// Values not written because their tensor was wider than `max_tensor_columns`.
    pub truncated_values: u64,
    /// Partial files of a crash recovered on start, and the rows they hold.
    pub files_recovered: u64,
    pub rows_recovered: u64,
    /// Partial files of a crash that could not be recovered (kept as `*.unrecoverable`).
    pub files_unrecoverable: u64,
    /// Finished files deleted by retention: older than its age, or beyond its size.
    pub files_deleted_age: u64,
    pub files_deleted_size: u64,
    /// Bytes in the model folders at the last sweep.
    pub disk_bytes: u64,
}

/// Writes prediction and feedback records to rotating Parquet files, applies retention, hands
/// finished files to the uploader and serves seal requests.
pub struct ParquetSink {
    dir: PathBuf,
    limits: Limits,
    predictions: HashMap<String, Stream>,
    feedback: HashMap<String, Stream>,
    /// Each model's latest prediction layout, kept after its file is finished so the next file
    /// gives the same columns the same kinds.
    known: HashMap<String, Layout>,
    max_tensor_columns: usize,
    stats: ParquetStats,
    /// Rows lost to write errors since the last [`Self::take_lost`], by model.
    lost: HashMap<String, u64>,
    retention: Retention,
    /// Finished files go here when they are uploaded (see [`upload`]).
    uploads: Option<UploadQueue>,
    metrics: Option<FileMetrics>,
    /// When the folder was last swept for retention (and measured), and whether a file was
    /// finished since.
    last_sweep: Option<Instant>,
    finished_since_sweep: bool,
    /// When the oldest file kept passes the age limit (unix milliseconds).
    next_expiry_ms: Option<u64>,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink")
            .field("dir", &self.dir)
            .field("limits", &self.limits)
            .field(
                "open_files",
                &(self.predictions.len() + self.feedback.len()),
            )
            .field("stats", &self.stats)
            .finish()
    }
}

impl ParquetSink {
    /// Creates `config.dir` (0700; an existing folder of another user is refused, see
    /// [`crate::local_state::private_dir`]) and recovers the partial files a crashed writer left
    /// in its model folders: each becomes a finished file of its complete row groups, or, when
    /// none is usable, is kept as `*.unrecoverable` with a warning (see the module docs).
    pub fn new(config: ParquetConfig) -> Result<Self, ParquetError> {
        let dir = config.dir;
        // Private to Keel's user: another user must not read served rows or plant files.
        crate::local_state::private_dir(&dir)?;
        let mut stats = ParquetStats::default();
        recover_partial_files(&dir, &mut stats);
        let limits = Limits {
            row_group_rows: config.row_group_rows.max(1),
            max_file_bytes: config.max_file_bytes.max(1),
            max_file_age: config.max_file_age,
            flush_interval: config.flush_interval,
        };
        Ok(Self {
            dir,
            limits,
            predictions: HashMap::new(),
            feedback: HashMap::new(),
            known: HashMap::new(),
            max_tensor_columns: config.max_tensor_columns.max(1),
            stats,
            lost: HashMap::new(),
            retention: config.retention,
            uploads: None,
            metrics: None,
            last_sweep: None,
            finished_since_sweep: false,
            next_expiry_ms: None,
        })
    }

    /// Rows lost to write errors since the last call, by model: they were accepted by
    /// [`Self::write_records`] or [`Self::write_feedback`] but are in no file.
    pub fn take_lost(&mut self) -> Vec<(String, u64)> {
        self.lost.drain().filter(|(_, n)| *n > 0).collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> ParquetStats {
        self.stats
    }

    /// Buffers and writes prediction rows. A write error loses (and counts) the rows of the file
    /// it hit; later rows go to a new file, and the first error is returned.
    pub fn write_records(&mut self, records: &[PredictionRecord]) -> Result<(), ParquetError> {
        let now = Instant::now();
        let mut first_error = None;
        for (model, group) in by_model(records, |r| &r.model) {
            self.write_model_predictions(model, &group, now, &mut first_error);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn write_model_predictions(
        &mut self,
        model: &str,
        records: &[&PredictionRecord],
        now: Instant,
        first_error: &mut Option<ParquetError>,
    ) {
        keep_first(
            first_error,
            self.finish_if_due(LogKind::Predictions, model, now),
        );
        let cap = self.max_tensor_columns;
        for (at, record) in records.iter().enumerate() {
            match self
                .predictions
                .get(model)
                .map(|stream| stream.layout.fits(record))
            {
                Some(true) => {}
                Some(false) => {
                    // A tensor this file has no column for: the next file gets the union of both.
                    let old = self
                        .predictions
                        .get(model)
                        .map(|stream| stream.layout.clone());
                    keep_first(first_error, self.finish(LogKind::Predictions, model));
                    let layout =
                        Layout::covering(old.as_ref(), true, cap, records[at..].iter().copied());
                    self.open_predictions(model, layout, now);
                }
                None => {
                    let layout = Layout::covering(
                        self.known.get(model),
                        false,
                        cap,
                        records[at..].iter().copied(),
                    );
                    self.open_predictions(model, layout, now);
                }
            }
            let Some(stream) = self.predictions.get_mut(model) else {
                continue;
            };
            let nulls = stream.table.push_prediction(&stream.layout, record);
            let truncated = stream.layout.truncated(record);
            self.stats.rows_with_nulls += u64::from(nulls.any_null);
            self.stats.mismatched_values += nulls.mismatched;
            self.stats.truncated_rows += u64::from(truncated > 0);
            self.stats.truncated_values += truncated;
            keep_first(
                first_error,
                self.row_pushed(LogKind::Predictions, model, record.timestamp_ms, now),
            );
        }
    }

    fn open_predictions(&mut self, model: &str, layout: Layout, now: Instant) {
        let table = Table::predictions(&layout);
        self.known.insert(model.to_owned(), layout.clone());
        let folder = model_dir(&self.dir, model);
        let stream = Stream::new(LogKind::Predictions, folder, layout, table, now);
        self.predictions.insert(model.to_owned(), stream);
    }

    /// Buffers and writes feedback rows, like [`Self::write_records`].
    pub fn write_feedback(&mut self, records: &[FeedbackRecord]) -> Result<(), ParquetError> {
        let now = Instant::now();
        let mut first_error = None;
        for (model, group) in by_model(records, |r| &r.model) {
            keep_first(
                &mut first_error,
                self.finish_if_due(LogKind::Feedback, model, now),
            );
            for record in group {
                let folder = model_dir(&self.dir, model);
                let stream = self.feedback.entry(model.to_owned()).or_insert_with(|| {
                    Stream::new(
                        LogKind::Feedback,
                        folder,
                        Layout::default(),
                        Table::feedback(),
                        now,
                    )
                });
                stream.table.push_feedback(record);
                keep_first(
                    &mut first_error,
                    self.row_pushed(LogKind::Feedback, model, record.timestamp_ms, now),
                );
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Finishes every file open for `max_file_age` as of `now`, and writes the rows buffered for
    /// `flush_interval` as row groups; call it periodically (a few times per `flush_interval`) so
    /// quiet models' rows reach disk. Every file is attempted; the first error is returned.
    pub fn rotate_due(&mut self, now: Instant) -> Result<(), ParquetError> {
        let limits = self.limits;
        let due = |streams: &HashMap<String, Stream>| -> Vec<String> {
            streams
                .iter()
                .filter(|(_, s)| s.is_due(now, &limits))
                .map(|(m, _)| m.clone())
                .collect()
        };
        let due = [
            (LogKind::Predictions, due(&self.predictions)),
            (LogKind::Feedback, due(&self.feedback)),
        ];
        let mut first_error = self.finish_all(due).err();
        keep_first(&mut first_error, self.serve_seals());
        for kind in [LogKind::Predictions, LogKind::Feedback] {
            let flush: Vec<String> = self
                .streams(kind)
                .iter()
                .filter(|(_, s)| s.flush_is_due(now, &limits))
                .map(|(m, _)| m.clone())
                .collect();
            for model in flush {
                let Some(stream) = self.streams(kind).get_mut(&model) else {
                    continue;
                };
                let result = stream.flush_if_due(now, &limits);
                keep_first(&mut first_error, self.after_write(kind, &model, result));
            }
        }
        self.sweep_if_due(now);
        first_error.map_or(Ok(()), Err)
    }

    /// Finishes every open file, writing all buffered rows.
    pub fn flush(&mut self) -> Result<(), ParquetError> {
        let all = [
            (
                LogKind::Predictions,
                self.predictions.keys().cloned().collect(),
            ),
            (LogKind::Feedback, self.feedback.keys().cloned().collect()),
        ];
        self.finish_all(all)
    }

    fn finish_all(&mut self, files: [(LogKind, Vec<String>); 2]) -> Result<(), ParquetError> {
        let mut first_error = None;
        for (kind, models) in files {
            for model in models {
                if let Err(error) = self.finish(kind, &model) {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn streams(&mut self, kind: LogKind) -> &mut HashMap<String, Stream> {
        match kind {
            LogKind::Predictions => &mut self.predictions,
            LogKind::Feedback => &mut self.feedback,
        }
    }

    fn finish_if_due(
        &mut self,
        kind: LogKind,
        model: &str,
        now: Instant,
    ) -> Result<(), ParquetError> {
        let limits = self.limits;
        if self
            .streams(kind)
            .get(model)
            .is_some_and(|s| s.is_due(now, &limits))
        {
            self.finish(kind, model)?;
        }
        Ok(())
    }

    /// Accounts a pushed row, finishing the file when it is full.
    fn row_pushed(
        &mut self,
        kind: LogKind,
        model: &str,
        timestamp_ms: u64,
        now: Instant,
    ) -> Result<(), ParquetError> {
        let limits = self.limits;
        let Some(stream) = self.streams(kind).get_mut(model) else {
            return Ok(());
        };
        let result = stream.row_pushed(timestamp_ms, now, &limits);
        self.after_write(kind, model, result)
    }

    /// Finishes the file when a write filled it. On a write error the stream is abandoned: its
    /// complete row groups are kept, the rest of its rows counted lost.
    fn after_write(
        &mut self,
        kind: LogKind,
        model: &str,
        result: Result<bool, ParquetError>,
    ) -> Result<(), ParquetError> {
        match result {
            Ok(true) => self.finish(kind, model),
            Ok(false) => Ok(()),
            Err(error) => {
                if let Some(stream) = self.streams(kind).remove(model) {
                    let rows = stream.rows();
                    let lost = stream.abandon();
                    self.count_error(kind, model, rows, lost);
                }
                Err(error)
            }
        }
    }

    /// Accounts a stream of `rows` rows ended by an error that lost `lost` of them.
    fn count_error(&mut self, kind: LogKind, model: &str, rows: u64, lost: u64) {
        self.stats.write_errors += 1;
        self.stats.rows_dropped += lost;
        let kept = rows.saturating_sub(lost);
        match kind {
            LogKind::Predictions => self.stats.prediction_rows_written += kept,
            LogKind::Feedback => self.stats.feedback_rows_written += kept,
        }
        *self.lost.entry(model.to_owned()).or_default() += lost;
    }

    /// Finishes the open file of `model` and `kind`, if any.
    fn finish(&mut self, kind: LogKind, model: &str) -> Result<(), ParquetError> {
        let Some(stream) = self.streams(kind).remove(model) else {
            return Ok(());
        };
        let rows = stream.rows();
        match stream.finish() {
            Ok(file) => {
                self.stats.files_written += u64::from(file.is_some());
                if let Some(path) = file {
                    self.finished_since_sweep = true;
                    if let Some(queue) = &self.uploads {
                        queue.push(path);
                    }
                }
                match kind {
                    LogKind::Predictions => self.stats.prediction_rows_written += rows,
                    LogKind::Feedback => self.stats.feedback_rows_written += rows,
                }
                Ok(())
            }
            Err(StreamError { error, rows_lost }) => {
                self.count_error(kind, model, rows, rows_lost);
                Err(error)
            }
        }
    }
}

impl Drop for ParquetSink {
    /// Buffered rows reach disk on shutdown; errors are already counted in the stats.
    fn drop(&mut self) {
        if let Err(error) = self.flush() {
            tracing::warn!(%error, "prediction log: rows lost on close");
        }
    }
}

fn keep_first(slot: &mut Option<ParquetError>, result: Result<(), ParquetError>) {
    if let Err(error) = result {
        slot.get_or_insert(error);
    }
}

/// `records` grouped by model, models in order of first appearance, records in order.
fn by_model<T>(records: &[T], model: impl Fn(&T) -> &str) -> Vec<(&str, Vec<&T>)> {
    let mut groups: Vec<(&str, Vec<&T>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for record in records {
        let name = model(record);
        let at = *index.entry(name).or_insert_with(|| {
            groups.push((name, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(record);
    }
    groups
}

/// Recovers (see `recover`) the partial files a crash left in the model folders under `dir`, and
/// removes row-group indexes whose file is gone (a crash between a file's rename and its index's
/// removal: the index holds no rows).
fn recover_partial_files(dir: &Path, stats: &mut ParquetStats) {
    let Ok(models) = std::fs::read_dir(dir) else {
        return;
    };
    for folder in models
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.is_dir())
    {
        let Ok(files) = std::fs::read_dir(&folder) else {
            continue;
        };
        let names: Vec<String> = files
            .filter_map(Result::ok)
            .filter_map(|f| f.file_name().into_string().ok())
            .collect();
        for name in &names {
            if let Some(kind) = naming::temp_kind(name) {
                recover_one(&folder, &folder.join(name), kind, stats);
            }
        }
        for name in &names {
            if let Some(temp) = naming::indexed_temp_name(name)
                && !folder.join(temp).exists()
            {
                let _ = std::fs::remove_file(folder.join(name));
            }
        }
    }
}

fn recover_one(folder: &Path, temp: &Path, kind: LogKind, stats: &mut ParquetStats) {
    match recover::recover(folder, temp, kind) {
        recover::Outcome::Recovered { path, recovered } => {
            stats.files_recovered += 1;
            stats.rows_recovered += recovered.rows;
            if recovered.row_groups_dropped > 0 {
                tracing::warn!(path = %path.display(), rows = recovered.rows, row_groups = recovered.row_groups, row_groups_dropped = recovered.row_groups_dropped, "prediction log: recovered an unfinished file; some indexed row groups were unreadable");
            } else {
                tracing::warn!(path = %path.display(), rows = recovered.rows, row_groups = recovered.row_groups, "prediction log: recovered an unfinished file up to its last complete row group");
            }
        }
        recover::Outcome::Kept { path, reason } => {
            stats.files_unrecoverable += 1;
            tracing::warn!(path = %path.display(), %reason, "prediction log: an unfinished file could not be recovered; kept, not removed");
        }
    }
}
