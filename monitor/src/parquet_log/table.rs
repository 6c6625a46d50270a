//! The rows of one file's current row group: key columns, then value columns.

use std::io::Write;
use std::sync::Arc;

use parquet::errors::{ParquetError, Result};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use super::column::Column;
use super::layout::{Kind, Layout};
use crate::record::{FeatureValue, FeedbackRecord, PredictionRecord};

/// What a pushed prediction row lost: values of the wrong kind, and whether any column is null.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct RowNulls {
    pub mismatched: u64,
    pub any_null: bool,
}

/// Buffered rows, with a rough size for the row-group and file-size limits.
#[derive(Debug)]
pub(super) struct Table {
    columns: Vec<Column>,
    rows: usize,
    bytes: usize,
}

/// Per-row overhead on top of the values: definition levels and bookkeeping, roughly.
const ROW_OVERHEAD: usize = 16;

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Table {
    /// model, version, request_id, row, timestamp_ms, then the layout's value columns.
    pub fn predictions(layout: &Layout) -> Self {
        let mut columns = vec![
            Column::key("model"),
            Column::int64("version"),
            Column::key("request_id"),
            Column::uint32("row"),
            Column::int64("timestamp_ms"),
        ];
        columns.extend(layout.columns().iter().map(|(name, kind)| match kind {
            Kind::Number => Column::number(name),
            Kind::Category => Column::text(name),
        }));
        Self::new(columns)
    }

    /// model, request_id, row, timestamp_ms, truth_value (numbers), truth_label (categories).
    pub fn feedback() -> Self {
        Self::new(vec![
            Column::key("model"),
            Column::key("request_id"),
            Column::uint32("row"),
            Column::int64("timestamp_ms"),
            Column::number("truth_value"),
            Column::text("truth_label"),
        ])
    }

    fn new(columns: Vec<Column>) -> Self {
        Self {
            columns,
            rows: 0,
            bytes: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn column_count(&self) -> usize {
        self.columns.len()
    }

    /// Appends one prediction row; `layout` must be the one this table was made from.
    pub fn push_prediction(&mut self, layout: &Layout, record: &PredictionRecord) -> RowNulls {
        let [model, version, request_id, row, timestamp, values @ ..] = self.columns.as_mut_slice()
        else {
            return RowNulls::default();
        };
        model.push_key(&record.model);
        version.push_i64(saturating_i64(record.version));
        request_id.push_key(&record.request_id);
        row.push_u32(record.row);
        timestamp.push_i64(saturating_i64(record.timestamp_ms));
        let mut bytes = record.model.len() + record.request_id.len() + ROW_OVERHEAD;
        let mut nulls = RowNulls::default();
        for (column, cell) in values.iter_mut().zip(layout.cells(record)) {
            let stored = match cell {
                Some(FeatureValue::Number(x)) => column.push_number(Some(*x)),
                Some(FeatureValue::Category(s)) => column.push_text(Some(s)),
                None => false,
            };
            if stored {
                bytes += match cell {
                    Some(FeatureValue::Category(s)) => s.len() + 4,
                    _ => 8,
                };
            } else {
                column.push_null();
                nulls.any_null = true;
                nulls.mismatched += u64::from(cell.is_some());
            }
        }
        self.rows += 1;
        self.bytes += bytes;
        nulls
    }

    /// Appends one feedback row: the truth goes to `truth_value` or `truth_label`, the other is null.
    pub fn push_feedback(&mut self, record: &FeedbackRecord) {
        let [model, request_id, row, timestamp, value, label] = self.columns.as_mut_slice() else {
            return;
        };
        model.push_key(&record.model);
        request_id.push_key(&record.request_id);
        row.push_u32(record.row);
        timestamp.push_i64(saturating_i64(record.timestamp_ms));
        let truth_bytes = match &record.truth {
            FeatureValue::Number(x) => {
                value.push_number(Some(*x));
                label.push_text(None);
                8
            }
            FeatureValue::Category(s) => {
                value.push_number(None);
                label.push_text(Some(s));
                s.len()
            }
        };
        self.rows += 1;
        self.bytes += record.model.len() + record.request_id.len() + truth_bytes + ROW_OVERHEAD;
    }

    /// The file schema for these columns.
    pub fn schema(&self) -> Result<Arc<Type>> {
        let fields = self
            .columns
            .iter()
            .map(Column::parquet_type)
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(
            Type::group_type_builder("schema")
                .with_fields(fields)
                .build()?,
        ))
    }

    /// Writes the buffered rows as one row group and empties the buffers.
    pub fn write_row_group<W: Write + Send>(
        &mut self,
        writer: &mut SerializedFileWriter<W>,
    ) -> Result<()> {
        let mut group = writer.next_row_group()?;
        for column in &mut self.columns {
            let chunk = group.next_column()?.ok_or_else(|| {
                ParquetError::General(format!("no column {} in the schema", column.name))
            })?;
            column.write_to(chunk)?;
        }
        group.close()?;
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }
}
