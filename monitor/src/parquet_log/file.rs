//! One Parquet file being written: under a temporary name until finished, then fsynced and
//! renamed into place, and its folder fsynced, so a reader never sees a partial file and a crash
//! never leaves a finished name pointing at half a file. Each row group is handed to the OS as soon
//! as it is written and listed in the file's row-group index (see `recover`), so after a crash the
//! file is recovered up to its last complete row group.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{SchemaDescPtr, SchemaDescriptor};

use super::ParquetError;
use super::naming::{LogKind, final_name, index_path, temp_name};
use super::recover::{self, IndexError, RowGroupIndex};
use super::table::Table;

pub(super) struct OpenFile {
    writer: SerializedFileWriter<BufWriter<File>>,
    index: RowGroupIndex,
    schema: SchemaDescPtr,
    folder: PathBuf,
    temp: PathBuf,
    kind: LogKind,
    row_groups: usize,
    /// Rows of the row groups listed in the index: what a crash cannot lose.
    indexed_rows: u64,
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ParquetError + '_ {
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

fn index_error(path: &Path) -> impl FnOnce(IndexError) -> ParquetError + '_ {
    move |error| match error {
        IndexError::Io(source) => io_error(path)(source),
        IndexError::Parquet(source) => parquet_error(path)(source),
    }
}

/// A new temporary file in `folder`: never one that exists (a partial file kept from a crash).
fn create_temp(folder: &Path, kind: LogKind) -> Result<(PathBuf, File), ParquetError> {
    let mut attempts = 0;
    loop {
        let temp = folder.join(temp_name(kind));
        match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => attempts += 1,
            Err(e) => return Err(io_error(&temp)(e)),
        }
    }
}

impl OpenFile {
    /// Creates `folder` if needed and a temporary file in it with `table`'s schema, and its index.
    pub fn create(folder: &Path, kind: LogKind, table: &Table) -> Result<Self, ParquetError> {
        fs::create_dir_all(folder).map_err(io_error(folder))?;
        let (temp, file) = create_temp(folder, kind)?;
        let opened = (|| {
            let schema = table.schema().map_err(parquet_error(&temp))?;
            let descriptor = Arc::new(SchemaDescriptor::new(schema.clone()));
            let index_path = index_path(&temp);
            let index = RowGroupIndex::create(&index_path).map_err(io_error(&index_path))?;
            let properties = Arc::new(
                WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build(),
            );
            let writer = SerializedFileWriter::new(BufWriter::new(file), schema, properties)
                .map_err(parquet_error(&temp))?;
            Ok((writer, index, descriptor))
        })();
        let (writer, index, schema) = match opened {
            Ok(parts) => parts,
            Err(error) => {
                // Nothing was written to it: no rows to keep.
                let _ = fs::remove_file(&temp);
                let _ = fs::remove_file(index_path(&temp));
                return Err(error);
            }
        };
        Ok(Self {
            writer,
            index,
            schema,
            folder: folder.to_owned(),
            temp,
            kind,
            row_groups: 0,
            indexed_rows: 0,
        })
    }

    /// Bytes in the file so far (finished row groups).
    pub fn bytes_written(&self) -> u64 {
        u64::try_from(self.writer.bytes_written()).unwrap_or(u64::MAX)
    }

    pub fn row_groups(&self) -> usize {
        self.row_groups
    }

    pub fn indexed_rows(&self) -> u64 {
        self.indexed_rows
    }

    /// Writes `table`'s buffered rows (timestamps `first_ms ..= last_ms`) as one row group, hands
    /// it to the OS and lists it in the index.
    pub fn write_row_group(
        &mut self,
        table: &mut Table,
        first_ms: u64,
        last_ms: u64,
    ) -> Result<(), ParquetError> {
        table
            .write_row_group(&mut self.writer)
            .map_err(parquet_error(&self.temp))?;
        self.writer.flush().map_err(io_error(&self.temp))?;
        let Some(row_group) = self.writer.flushed_row_groups().last() else {
            return Ok(());
        };
        let rows = u64::try_from(row_group.num_rows()).unwrap_or(0);
        let index = index_path(&self.temp);
        self.index
            .append(&self.schema, row_group, first_ms, last_ms)
            .map_err(index_error(&index))?;
        self.row_groups += 1;
        self.indexed_rows += rows;
        Ok(())
    }

    /// Writes the footer, makes the file durable and gives it its final name for rows with
    /// timestamps `first_ms ..= last_ms`. On error what the index lists is recovered (see
    /// [`Self::salvage`]).
    pub fn finish(self, first_ms: u64, last_ms: u64) -> Result<PathBuf, ParquetError> {
        let Self {
            writer,
            index,
            folder,
            temp,
            kind,
            ..
        } = self;
        let result = (|| {
            let buffered = writer.into_inner().map_err(parquet_error(&temp))?;
            let file = buffered
                .into_inner()
                .map_err(|e| io_error(&temp)(e.into_error()))?;
            file.sync_all().map_err(io_error(&temp))?;
            Ok(())
        })();
        drop(index);
        match result {
            Ok(()) => publish(&temp, &folder, kind, first_ms, last_ms),
            Err(error) => {
                salvage(&folder, &temp, kind);
                Err(error)
            }
        }
    }

    /// Abandons the file after a write error: its indexed row groups are recovered into a
    /// finished file (or kept for recovery on the next start); the rest is lost.
    pub fn salvage(self) {
        let Self {
            writer,
            index,
            folder,
            temp,
            kind,
            ..
        } = self;
        // Dropping the writer flushes what it buffered; recovery cuts anything incomplete.
        drop(writer);
        drop(index);
        salvage(&folder, &temp, kind);
    }
}

fn salvage(folder: &Path, temp: &Path, kind: LogKind) {
    match recover::recover(folder, temp, kind) {
        recover::Outcome::Recovered { path, recovered } => {
            tracing::warn!(path = %path.display(), rows = recovered.rows, "prediction log: after a write error, the file's complete row groups were kept")
        }
        recover::Outcome::Kept { path, reason } => {
            tracing::warn!(path = %path.display(), %reason, "prediction log: after a write error, the unfinished file is kept as is")
        }
    }
}

/// Gives the complete file `temp` its final name for rows with timestamps `first_ms ..= last_ms`,
/// makes the rename durable, and removes the file's index.
pub(super) fn publish(
    temp: &Path,
    folder: &Path,
    kind: LogKind,
    first_ms: u64,
    last_ms: u64,
) -> Result<PathBuf, ParquetError> {
    // One writer per log dir: a free name checked here stays free until the rename.
    let target = (0..=u32::MAX)
        .map(|seq| folder.join(final_name(kind, first_ms, last_ms, seq)))
        .find(|path| !path.exists())
        .unwrap_or_else(|| folder.join(final_name(kind, first_ms, last_ms, u32::MAX)));
    fs::rename(temp, &target).map_err(io_error(&target))?;
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(folder))?;
    // An index left behind by a crash here is removed on the next start (its file is gone).
    match fs::remove_file(index_path(temp)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %index_path(temp).display(), error = %e, "prediction log: cannot remove a row-group index")
        }
    }
    Ok(target)
}
