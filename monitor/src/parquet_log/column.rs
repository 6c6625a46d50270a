//! One column's rows of the row group being buffered, and how it is declared and written.

use std::sync::Arc;

use parquet::basic::{LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, DoubleType, Int32Type, Int64Type};
use parquet::errors::Result;
use parquet::file::writer::SerializedColumnWriter;
use parquet::schema::types::Type;

/// Buffered values of one column. Required columns hold the row key; value columns are optional
/// and keep only non-null values plus one definition level per row (1 = value, 0 = null).
#[derive(Debug)]
pub(super) enum Buffer {
    /// Required INT64 (version, timestamp_ms).
    Int64(Vec<i64>),
    /// Required INT32 annotated unsigned: row indexes are `u32`, stored losslessly.
    Uint32(Vec<i32>),
    /// Required UTF8 string (model, request_id).
    Key(Vec<ByteArray>),
    /// Optional DOUBLE.
    Number { values: Vec<f64>, levels: Vec<i16> },
    /// Optional UTF8 string.
    Text {
        values: Vec<ByteArray>,
        levels: Vec<i16>,
    },
}

/// A named column of the file being written.
#[derive(Debug)]
pub(super) struct Column {
    pub name: String,
    pub buffer: Buffer,
}

impl Column {
    pub fn int64(name: &str) -> Self {
        Self::new(name, Buffer::Int64(Vec::new()))
    }

    pub fn uint32(name: &str) -> Self {
        Self::new(name, Buffer::Uint32(Vec::new()))
    }

    pub fn key(name: &str) -> Self {
        Self::new(name, Buffer::Key(Vec::new()))
    }

    pub fn number(name: &str) -> Self {
        let (values, levels) = (Vec::new(), Vec::new());
        Self::new(name, Buffer::Number { values, levels })
    }

    pub fn text(name: &str) -> Self {
        let (values, levels) = (Vec::new(), Vec::new());
        Self::new(name, Buffer::Text { values, levels })
    }

    fn new(name: &str, buffer: Buffer) -> Self {
        Self {
            name: name.to_owned(),
            buffer,
        }
    }

    /// The Parquet schema node of this column.
    pub fn parquet_type(&self) -> Result<Arc<Type>> {
        let (physical, repetition, logical) = match &self.buffer {
            Buffer::Int64(_) => (PhysicalType::INT64, Repetition::REQUIRED, None),
            Buffer::Uint32(_) => (
                PhysicalType::INT32,
                Repetition::REQUIRED,
                Some(LogicalType::integer(32, false)),
            ),
            Buffer::Key(_) => (
                PhysicalType::BYTE_ARRAY,
                Repetition::REQUIRED,
                Some(LogicalType::String),
            ),
            Buffer::Number { .. } => (PhysicalType::DOUBLE, Repetition::OPTIONAL, None),
            Buffer::Text { .. } => (
                PhysicalType::BYTE_ARRAY,
                Repetition::OPTIONAL,
                Some(LogicalType::String),
            ),
        };
        let node = Type::primitive_type_builder(&self.name, physical)
            .with_repetition(repetition)
            .with_logical_type(logical)
            .build()?;
        Ok(Arc::new(node))
    }

    /// Writes the buffered rows as this column's chunk of the current row group, then empties the
    /// buffer. The writer's physical type is the one [`Self::parquet_type`] declared.
    pub fn write_to(&mut self, mut writer: SerializedColumnWriter<'_>) -> Result<()> {
        match &mut self.buffer {
            Buffer::Int64(values) => {
                writer
                    .typed::<Int64Type>()
                    .write_batch(values, None, None)?;
                values.clear();
            }
            Buffer::Uint32(values) => {
                writer
                    .typed::<Int32Type>()
                    .write_batch(values, None, None)?;
                values.clear();
            }
            Buffer::Key(values) => {
                writer
                    .typed::<parquet::data_type::ByteArrayType>()
                    .write_batch(values, None, None)?;
                values.clear();
            }
            Buffer::Number { values, levels } => {
                writer
                    .typed::<DoubleType>()
                    .write_batch(values, Some(levels), None)?;
                values.clear();
                levels.clear();
            }
            Buffer::Text { values, levels } => {
                writer
                    .typed::<parquet::data_type::ByteArrayType>()
                    .write_batch(values, Some(levels), None)?;
                values.clear();
                levels.clear();
            }
        }
        writer.close()
    }

    pub fn push_i64(&mut self, value: i64) {
        if let Buffer::Int64(values) = &mut self.buffer {
            values.push(value);
        }
    }

    pub fn push_u32(&mut self, value: u32) {
        if let Buffer::Uint32(values) = &mut self.buffer {
            // Same bits; the column's unsigned annotation makes readers see the u32 again.
            values.push(i32::from_ne_bytes(value.to_ne_bytes()));
        }
    }

    pub fn push_key(&mut self, value: &str) {
        if let Buffer::Key(values) = &mut self.buffer {
            values.push(ByteArray::from(value));
        }
    }

    /// Appends a number to a number column, or a null to it; false when the column is not one.
    pub fn push_number(&mut self, value: Option<f64>) -> bool {
        let Buffer::Number { values, levels } = &mut self.buffer else {
            return false;
        };
        levels.push(i16::from(value.is_some()));
        values.extend(value);
        true
    }

    /// Appends a string to a text column, or a null to it; false when the column is not one.
    pub fn push_text(&mut self, value: Option<&str>) -> bool {
        let Buffer::Text { values, levels } = &mut self.buffer else {
            return false;
        };
        levels.push(i16::from(value.is_some()));
        values.extend(value.map(ByteArray::from));
        true
    }

    /// Appends a null to an optional column of either kind.
    pub fn push_null(&mut self) {
        match &mut self.buffer {
            Buffer::Number { levels, .. } | Buffer::Text { levels, .. } => levels.push(0),
            Buffer::Int64(_) | Buffer::Uint32(_) | Buffer::Key(_) => {}
        }
    }
}
