//! One Parquet file being written: under a temporary name until finished, then fsynced and
//! renamed into place, and its folder fsynced, so a reader never sees a partial file and a crash
//! never leaves a finished name pointing at half a file.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use super::ParquetError;
use super::naming::{LogKind, final_name, temp_name};
use super::table::Table;

pub(super) struct OpenFile {
    writer: SerializedFileWriter<BufWriter<File>>,
    folder: PathBuf,
    temp: PathBuf,
    kind: LogKind,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ParquetError + '_ {
    move |source| ParquetError::Io {
        path: path.to_owned(),
        source,
    }
}

fn parquet_error(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> ParquetError + '_ {
    move |source| ParquetError::Parquet {
        path: path.to_owned(),
        source,
    }
}

impl OpenFile {
    /// Creates `folder` if needed and a temporary file in it with `table`'s schema.
    pub fn create(folder: &Path, kind: LogKind, table: &Table) -> Result<Self, ParquetError> {
        fs::create_dir_all(folder).map_err(io_error(folder))?;
        let temp = folder.join(temp_name(kind));
        let schema = table.schema().map_err(parquet_error(&temp))?;
        let file = File::create(&temp).map_err(io_error(&temp))?;
        let properties = Arc::new(WriterProperties::builder().build());
        let writer = SerializedFileWriter::new(BufWriter::new(file), schema, properties)
            .map_err(parquet_error(&temp))?;
        Ok(Self {
            writer,
            folder: folder.to_owned(),
            temp,
            kind,
        })
    }

    /// Bytes in the file so far (finished row groups).
    pub fn bytes_written(&self) -> u64 {
        u64::try_from(self.writer.bytes_written()).unwrap_or(u64::MAX)
    }

    /// Writes `table`'s buffered rows as one row group.
    pub fn write_row_group(&mut self, table: &mut Table) -> Result<(), ParquetError> {
        table
            .write_row_group(&mut self.writer)
            .map_err(parquet_error(&self.temp))
    }

    /// Writes the footer, makes the file durable and gives it its final name for rows with
    /// timestamps `first_ms ..= last_ms`. On error the temporary file is removed.
    pub fn finish(self, first_ms: u64, last_ms: u64) -> Result<PathBuf, ParquetError> {
        let temp = self.temp.clone();
        let result = self.finish_inner(first_ms, last_ms);
        if result.is_err() {
            // Best effort: the error being returned is the one that matters.
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn finish_inner(self, first_ms: u64, last_ms: u64) -> Result<PathBuf, ParquetError> {
        let Self {
            writer,
            folder,
            temp,
            kind,
        } = self;
        let buffered = writer.into_inner().map_err(parquet_error(&temp))?;
        let file = buffered
            .into_inner()
            .map_err(|e| io_error(&temp)(e.into_error()))?;
        file.sync_all().map_err(io_error(&temp))?;
        drop(file);
        // One writer per log dir: a free name checked here stays free until the rename.
        let target = (0..=u32::MAX)
            .map(|seq| folder.join(final_name(kind, first_ms, last_ms, seq)))
            .find(|path| !path.exists())
            .unwrap_or_else(|| folder.join(final_name(kind, first_ms, last_ms, u32::MAX)));
        fs::rename(&temp, &target).map_err(io_error(&target))?;
        File::open(&folder)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&folder))?;
        Ok(target)
    }

    /// Abandons the file (after a write error): its rows are lost, its temporary file removed.
    pub fn discard(self) {
        let temp = self.temp.clone();
        drop(self.writer);
        // Best effort: the write error that led here has already been reported.
        let _ = fs::remove_file(temp);
    }
}
