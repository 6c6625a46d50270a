//! Crash safety of the file being written: its row-group index, and recovery of a partial file.
//!
//! A Parquet file is readable only once its footer (the metadata of every row group) is written,
//! at the very end. So that a crash (`kill -9`, OOM kill) does not lose a file's rows, every row
//! group is followed by an entry in a small side file, `<partial>.idx`: the row group's metadata
//! encoded as a one-row-group Parquet footer (schema included), its time range, and a SHA-256 of
//! the entry. The writer appends the entry only after the row group's bytes are in the data file
//! (handed to the OS: a killed process loses nothing the OS has), so every indexed row group is
//! complete on disk.
//!
//! On start, [`recover`] turns a partial file into a finished one: it reads the index up to its
//! first incomplete or corrupt entry, keeps the row groups that lie contiguously inside the data
//! file, cuts the file after the last of them (dropping a half-written row group), appends a
//! footer for them, checks that every page of every kept row group decodes (dropping trailing row
//! groups that do not, e.g. after a power loss, since the data is not fsynced per row group), and
//! gives the file its final name. Running it again after a crash in the middle is harmless: the
//! footer it wrote is cut off again. A partial file with no recoverable row group, or no index, is
//! kept under a `.unrecoverable` name with a warning: never removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::metadata::{
    FileMetaData, KeyValue, ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter,
    RowGroupMetaData,
};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::SchemaDescPtr;
use sha2::{Digest, Sha256};

use super::naming::LogKind;

/// First bytes of an index file.
const INDEX_MAGIC: &[u8; 8] = b"KEELRGI1";
/// Parquet's magic, at both ends of a file.
const PARQUET_MAGIC: &[u8; 4] = b"PAR1";
/// Entries larger than this are taken as corruption (a footer of 64 MiB would be absurd).
const MAX_ENTRY_BYTES: usize = 64 << 20;

/// Appends row-group entries to a partial file's index.
pub(super) struct RowGroupIndex {
    file: File,
}

impl RowGroupIndex {
    /// Creates the index (it must not exist) with its magic.
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(INDEX_MAGIC)?;
        Ok(Self { file })
    }

    /// Appends the entry of `row_group`, whose rows' timestamps are `first_ms ..= last_ms`. One
    /// `write` of the whole entry: a crash leaves it whole or detectably cut.
    pub fn append(
        &mut self,
        schema: &SchemaDescPtr,
        row_group: &RowGroupMetaData,
        first_ms: u64,
        last_ms: u64,
    ) -> Result<(), IndexError> {
        let metadata = ParquetMetaData::new(
            FileMetaData::new(1, row_group.num_rows(), None, None, schema.clone(), None),
            vec![row_group.clone()],
        );
        let mut payload = Vec::with_capacity(4096);
        payload.extend_from_slice(&first_ms.to_le_bytes());
        payload.extend_from_slice(&last_ms.to_le_bytes());
        ParquetMetaDataWriter::new(&mut payload, &metadata)
            .with_preserve_page_index_locations(false)
            .finish()?;
        let mut entry = Vec::with_capacity(payload.len() + 36);
        entry.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        entry.extend_from_slice(&Sha256::digest(&payload));
        entry.extend_from_slice(&payload);
        self.file.write_all(&entry)?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum IndexError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// One complete row group, as the index describes it.
struct Entry {
    first_ms: u64,
    last_ms: u64,
    metadata: ParquetMetaData,
}

impl Entry {
    fn row_group(&self) -> &RowGroupMetaData {
        &self.metadata.row_groups()[0]
    }

    /// Byte range `start..end` of the row group in the data file.
    fn extent(&self) -> Option<(u64, u64)> {
        let mut start = u64::MAX;
        let mut end = 0u64;
        for column in self.row_group().columns() {
            let first = column
                .dictionary_page_offset()
                .unwrap_or(column.data_page_offset());
            let first = u64::try_from(first).ok()?;
            let size = u64::try_from(column.compressed_size()).ok()?;
            start = start.min(first);
            end = end.max(first.checked_add(size)?);
        }
        (start < end).then_some((start, end))
    }
}

/// The complete, intact entries at the start of the index at `path`.
fn read_index(path: &Path) -> io::Result<Vec<Entry>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let Some(mut rest) = bytes.strip_prefix(INDEX_MAGIC.as_slice()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a row-group index",
        ));
    };
    let mut entries = Vec::new();
    while rest.len() >= 36 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_ENTRY_BYTES || rest.len() < 36 + len {
            break;
        }
        let (digest, payload) = (&rest[4..36], &rest[36..36 + len]);
        if Sha256::digest(payload).as_slice() != digest || payload.len() < 16 + 8 {
            break;
        }
        let first_ms = u64::from_le_bytes(payload[0..8].try_into().unwrap_or_default());
        let last_ms = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
        let footer = &payload[16..];
        // The footer ends with its length and the magic.
        let Some(thrift) = footer.strip_suffix(PARQUET_MAGIC.as_slice()) else {
            break;
        };
        let thrift = &thrift[..thrift.len().saturating_sub(4)];
        match ParquetMetaDataReader::decode_metadata(thrift) {
            Ok(metadata) if metadata.num_row_groups() == 1 => entries.push(Entry {
                first_ms,
                last_ms,
                metadata,
            }),
            _ => break,
        }
        rest = &rest[36 + len..];
    }
    Ok(entries)
}

/// A partial file made whole.
#[derive(Debug)]
pub(super) struct Recovered {
    pub rows: u64,
    pub row_groups: usize,
    /// Row groups the index listed that were not usable (cut off, or not decodable).
    pub row_groups_dropped: usize,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// Why a partial file could not be recovered.
#[derive(Debug, thiserror::Error)]
pub(super) enum RecoverError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{0}")]
    Unusable(String),
}

/// Repairs the partial file `temp` in place (see the module docs): afterwards it is a complete
/// Parquet file of the row groups its index lists, not yet renamed. Its index is left alone.
pub(super) fn repair(temp: &Path, index: &Path) -> Result<Recovered, RecoverError> {
    let entries = match read_index(index) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RecoverError::Unusable("it has no row-group index".into()));
        }
        Err(e) => return Err(e.into()),
    };
    let mut file = OpenOptions::new().read(true).write(true).open(temp)?;
    let len = file.metadata()?.len();
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != PARQUET_MAGIC {
        return Err(RecoverError::Unusable(
            "it does not start like a Parquet file".into(),
        ));
    }
    // The row groups that lie one after the other inside the file, from its start.
    let listed = entries.len();
    let mut kept: Vec<(Entry, u64)> = Vec::new();
    let mut end = PARQUET_MAGIC.len() as u64;
    for entry in entries {
        match entry.extent() {
            Some((start, stop)) if start == end && stop <= len => {
                end = stop;
                kept.push((entry, stop));
            }
            _ => break,
        }
    }
    loop {
        let Some(&(_, end)) = kept.last() else {
            return Err(RecoverError::Unusable(format!(
                "none of its {listed} indexed row groups is complete"
            )));
        };
        write_footer(&mut file, end, &kept)?;
        match first_bad_row_group(temp, kept.len())? {
            None => break,
            Some(bad) => kept.truncate(bad),
        }
    }
    Ok(Recovered {
        rows: kept
            .iter()
            .map(|(e, _)| u64::try_from(e.row_group().num_rows()).unwrap_or(0))
            .sum(),
        row_groups: kept.len(),
        row_groups_dropped: listed - kept.len(),
        first_ms: kept.iter().map(|(e, _)| e.first_ms).min().unwrap_or(0),
        last_ms: kept.iter().map(|(e, _)| e.last_ms).max().unwrap_or(0),
    })
}

/// Cuts `file` at `end` and appends a footer for the row groups of `kept`.
fn write_footer(file: &mut File, end: u64, kept: &[(Entry, u64)]) -> Result<(), RecoverError> {
    let schema = kept[0].0.metadata.file_metadata().schema_descr_ptr();
    let row_groups: Vec<RowGroupMetaData> =
        kept.iter().map(|(e, _)| e.row_group().clone()).collect();
    let rows = row_groups.iter().map(RowGroupMetaData::num_rows).sum();
    let metadata = ParquetMetaData::new(
        FileMetaData::new(
            1,
            rows,
            Some(format!("keel {} (recovered)", env!("CARGO_PKG_VERSION"))),
            Some(vec![KeyValue::new(
                "keel.recovered".to_owned(),
                "true".to_owned(),
            )]),
            Arc::clone(&schema),
            None,
        ),
        row_groups,
    );
    let mut footer = Vec::new();
    ParquetMetaDataWriter::new(&mut footer, &metadata)
        .with_preserve_page_index_locations(false)
        .finish()?;
    file.set_len(end)?;
    file.seek(SeekFrom::Start(end))?;
    file.write_all(&footer)?;
    file.sync_all()?;
    Ok(())
}

/// The first of the file's `expected` row groups with a page that does not decode, if any. An
/// unreadable footer is an error: it was just written, so it is not the data's fault.
fn first_bad_row_group(path: &Path, expected: usize) -> Result<Option<usize>, RecoverError> {
    let reader = SerializedFileReader::new(File::open(path)?)?;
    if reader.metadata().num_row_groups() != expected {
        return Err(RecoverError::Unusable(format!(
            "the footer written lists {} row groups, not {expected}",
            reader.metadata().num_row_groups()
        )));
    }
    for i in 0..expected {
        let Ok(row_group) = reader.get_row_group(i) else {
            return Ok(Some(i));
        };
        for column in 0..row_group.num_columns() {
            let Ok(mut pages) = row_group.get_column_page_reader(column) else {
                return Ok(Some(i));
            };
            loop {
                match pages.get_next_page() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return Ok(Some(i)),
                }
            }
        }
    }
    Ok(None)
}

/// What became of one partial file found on start.
#[derive(Debug)]
pub(super) enum Outcome {
    Recovered {
        path: PathBuf,
        recovered: Recovered,
    },
    /// Kept under `path` (or where it was, when even the rename failed).
    Kept {
        path: PathBuf,
        reason: String,
    },
}

/// Recovers the partial file `temp` of `kind` in `folder` (see the module docs).
pub(super) fn recover(folder: &Path, temp: &Path, kind: LogKind) -> Outcome {
    let index = super::naming::index_path(temp);
    match repair(temp, &index) {
        Ok(recovered) => {
            match super::file::publish(temp, folder, kind, recovered.first_ms, recovered.last_ms) {
                Ok(path) => Outcome::Recovered { path, recovered },
                Err(error) => Outcome::Kept {
                    path: temp.to_owned(),
                    reason: format!("repaired but not renamed: {error}"),
                },
            }
        }
        Err(error) => {
            let reason = error.to_string();
            let kept = super::naming::unrecoverable_path(temp);
            match fs::rename(temp, &kept) {
                Ok(()) => {
                    if index.exists() {
                        let _ = fs::rename(&index, super::naming::unrecoverable_path(&index));
                    }
                    Outcome::Kept { path: kept, reason }
                }
                Err(rename) => Outcome::Kept {
                    path: temp.to_owned(),
                    reason: format!("{reason}; renaming it failed too: {rename}"),
                },
            }
        }
    }
}
