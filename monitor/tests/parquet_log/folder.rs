//! The log folder: a scratch one per test, its finished files of a kind, their names, and no partial
//! file left.

use std::fs;
use std::path::{Path, PathBuf};

use keel_monitor::parquet_log::model_dir;

pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-parquet-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Every file of `kind` under the model's folder, sorted by name.
pub(crate) fn files(dir: &Path, model: &str, kind: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(model_dir(dir, model))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.file_name().unwrap().to_str().unwrap().starts_with(kind));
    found.sort();
    found
}

pub(crate) fn no_partial_files(dir: &Path, model: &str) {
    for entry in fs::read_dir(model_dir(dir, model)).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.ends_with(".partial"), "{name}");
    }
}

pub(crate) fn names_of(paths: Vec<PathBuf>) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}
