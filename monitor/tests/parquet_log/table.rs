//! A finished file read back with the parquet crate's reader: its row groups, columns and rows.

use std::fs;
use std::path::Path;

use parquet::basic::{Repetition, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

pub(crate) struct Table {
    pub(crate) row_groups: usize,
    pub(crate) columns: Vec<(String, PhysicalType, Repetition)>,
    pub(crate) rows: Vec<Vec<Field>>,
}

pub(crate) fn read(path: &Path) -> Table {
    let reader = SerializedFileReader::new(fs::File::open(path).unwrap()).unwrap();
    let schema = reader.metadata().file_metadata().schema_descr();
    let columns = schema
        .columns()
        .iter()
        .map(|c| {
            (
                c.name().to_owned(),
                c.physical_type(),
                c.self_type().get_basic_info().repetition(),
            )
        })
        .collect();
    let rows = reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            row.unwrap()
                .get_column_iter()
                .map(|(_, f)| f.clone())
                .collect()
        })
        .collect();
    Table {
        row_groups: reader.metadata().num_row_groups(),
        columns,
        rows,
    }
}

pub(crate) fn names(table: &Table) -> Vec<&str> {
    table.columns.iter().map(|(n, _, _)| n.as_str()).collect()
}
