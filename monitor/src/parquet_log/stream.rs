//! The file of one model and kind currently being filled: buffered rows, the row groups already
//! written, its time range, and when it is due to be finished.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::ParquetError;
use super::file::OpenFile;
use super::layout::Layout;
use super::naming::LogKind;
use super::table::Table;

/// Row groups x columns a file may hold before it is finished: the footer describes every column
/// chunk (about 100 bytes each), and a wide table flushed every second would otherwise grow a
/// footer of many megabytes. 50,000 chunks: a few MiB at most; a 35-column table reaches it only
/// after 1,400 row groups.
pub(super) const MAX_COLUMN_CHUNKS: usize = 50_000;

/// When rows become a row group and a file is finished.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub row_group_rows: usize,
    pub max_file_bytes: u64,
    pub max_file_age: Duration,
    pub flush_interval: Duration,
}

/// A write error, with the rows of the stream it lost.
pub(super) struct StreamError {
    pub error: ParquetError,
    pub rows_lost: u64,
}

pub(super) struct Stream {
    kind: LogKind,
    folder: PathBuf,
    /// The value columns (predictions only; feedback has fixed columns).
    pub layout: Layout,
    pub table: Table,
    /// Created when the first row group is written, so an empty stream leaves no file.
    file: Option<OpenFile>,
    opened: Instant,
    first_ms: u64,
    last_ms: u64,
    rows: u64,
    /// When the oldest buffered row came, and the buffered rows' time range.
    buffered_since: Option<Instant>,
    buffer_first_ms: u64,
    buffer_last_ms: u64,
}

impl Stream {
    pub fn new(kind: LogKind, folder: PathBuf, layout: Layout, table: Table, now: Instant) -> Self {
        Self {
            kind,
            folder,
            layout,
            table,
            file: None,
            opened: now,
            first_ms: u64::MAX,
            last_ms: 0,
            rows: 0,
            buffered_since: None,
            buffer_first_ms: u64::MAX,
            buffer_last_ms: 0,
        }
    }

    /// Rows accepted so far (written and buffered).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the file has been open for `max_file_age`.
    pub fn is_due(&self, now: Instant, limits: &Limits) -> bool {
        now.saturating_duration_since(self.opened) >= limits.max_file_age
    }

    /// Whether buffered rows have waited `flush_interval` for their row group.
    pub fn flush_is_due(&self, now: Instant, limits: &Limits) -> bool {
        self.buffered_since
            .is_some_and(|since| now.saturating_duration_since(since) >= limits.flush_interval)
    }

    /// Records a row just pushed into the table at `now`; writes a row group when the buffer is
    /// full or its oldest row has waited `flush_interval`. Returns whether the file is full
    /// (bytes, or column chunks) and should be finished.
    pub fn row_pushed(
        &mut self,
        timestamp_ms: u64,
        now: Instant,
        limits: &Limits,
    ) -> Result<bool, ParquetError> {
        self.rows += 1;
        self.first_ms = self.first_ms.min(timestamp_ms);
        self.last_ms = self.last_ms.max(timestamp_ms);
        self.buffer_first_ms = self.buffer_first_ms.min(timestamp_ms);
        self.buffer_last_ms = self.buffer_last_ms.max(timestamp_ms);
        self.buffered_since.get_or_insert(now);
        let written = self.file.as_ref().map_or(0, OpenFile::bytes_written);
        let buffered = u64::try_from(self.table.bytes()).unwrap_or(u64::MAX);
        if self.table.rows() >= limits.row_group_rows
            || written.saturating_add(buffered) >= limits.max_file_bytes
            || self.flush_is_due(now, limits)
        {
            self.write_row_group()?;
        }
        Ok(self.is_full(limits))
    }

    /// Writes the buffered rows as a row group if they have waited `flush_interval`; returns
    /// whether the file is now full.
    pub fn flush_if_due(&mut self, now: Instant, limits: &Limits) -> Result<bool, ParquetError> {
        if self.flush_is_due(now, limits) {
            self.write_row_group()?;
        }
        Ok(self.is_full(limits))
    }

    fn is_full(&self, limits: &Limits) -> bool {
        self.file.as_ref().is_some_and(|file| {
            file.bytes_written() >= limits.max_file_bytes
                || file.row_groups().saturating_mul(self.table.column_count()) >= MAX_COLUMN_CHUNKS
        })
    }

    fn write_row_group(&mut self) -> Result<(), ParquetError> {
        if self.table.rows() == 0 {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self
                .file
                .insert(OpenFile::create(&self.folder, self.kind, &self.table)?),
        };
        file.write_row_group(&mut self.table, self.buffer_first_ms, self.buffer_last_ms)?;
        self.buffered_since = None;
        self.buffer_first_ms = u64::MAX;
        self.buffer_last_ms = 0;
        Ok(())
    }

    /// Writes the buffered rows and finishes the file; `None` when the stream has no rows. On
    /// error the rows not in a complete row group are lost; the others are kept (see
    /// [`Self::abandon`]).
    pub fn finish(mut self) -> Result<Option<PathBuf>, StreamError> {
        if self.rows == 0 {
            return Ok(None);
        }
        if let Err(error) = self.write_row_group() {
            let rows_lost = self.abandon();
            return Err(StreamError { error, rows_lost });
        }
        let rows = self.rows;
        match self.file.take() {
            Some(file) => {
                let indexed = file.indexed_rows();
                file.finish(self.first_ms, self.last_ms)
                    .map(Some)
                    .map_err(|error| StreamError {
                        error,
                        rows_lost: rows.saturating_sub(indexed),
                    })
            }
            None => Ok(None),
        }
    }

    /// Abandons the stream after a write error: the row groups its file's index lists are kept
    /// (the file is recovered to them), the rest of its rows are lost. Returns how many.
    pub fn abandon(mut self) -> u64 {
        match self.file.take() {
            Some(file) => {
                let lost = self.rows.saturating_sub(file.indexed_rows());
                file.salvage();
                lost
            }
            None => self.rows,
        }
    }
}
