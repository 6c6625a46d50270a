//! The file of one model and kind currently being filled: buffered rows, the row groups already
//! written, its time range, and when it is due to be finished.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::ParquetError;
use super::file::OpenFile;
use super::layout::Layout;
use super::naming::LogKind;
use super::table::Table;

/// When rows become a row group and a file is finished.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub row_group_rows: usize,
    pub max_file_bytes: u64,
    pub max_file_age: Duration,
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

    /// Records a row just pushed into the table; writes a row group when the buffer is full.
    /// Returns whether the file has reached its size limit and should be finished.
    pub fn row_pushed(&mut self, timestamp_ms: u64, limits: &Limits) -> Result<bool, ParquetError> {
        self.rows += 1;
        self.first_ms = self.first_ms.min(timestamp_ms);
        self.last_ms = self.last_ms.max(timestamp_ms);
        let written = self.file.as_ref().map_or(0, OpenFile::bytes_written);
        let buffered = u64::try_from(self.table.bytes()).unwrap_or(u64::MAX);
        if self.table.rows() >= limits.row_group_rows
            || written.saturating_add(buffered) >= limits.max_file_bytes
        {
            self.write_row_group()?;
        }
        Ok(self
            .file
            .as_ref()
            .is_some_and(|file| file.bytes_written() >= limits.max_file_bytes))
    }

    fn write_row_group(&mut self) -> Result<(), ParquetError> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self
                .file
                .insert(OpenFile::create(&self.folder, self.kind, &self.table)?),
        };
        file.write_row_group(&mut self.table)
    }

    /// Writes the buffered rows and finishes the file; `None` when the stream has no rows. On
    /// error the file is removed and its rows are lost.
    pub fn finish(mut self) -> Result<Option<PathBuf>, ParquetError> {
        if self.rows == 0 {
            return Ok(None);
        }
        if self.table.rows() > 0
            && let Err(error) = self.write_row_group()
        {
            self.discard();
            return Err(error);
        }
        match self.file.take() {
            Some(file) => file.finish(self.first_ms, self.last_ms).map(Some),
            None => Ok(None),
        }
    }

    /// Abandons the stream after an error, removing its temporary file.
    pub fn discard(mut self) {
        if let Some(file) = self.file.take() {
            file.discard();
        }
    }
}
