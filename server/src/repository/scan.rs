//! Finding the version directories of a filesystem model and deciding which are complete.
//!
//! The publish protocol is: write the version directory elsewhere on the same filesystem, then rename it
//! into `<model>/<N>/` (one atomic step). For copies that do not follow it, a version is only taken once
//! its files look the same (size and modification time) on two consecutive polls, and, when
//! `model.onnx.sha256` exists, once `model.onnx` matches it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::MODEL_FILE;

/// Files of a version directory whose change makes it a new version.
pub const VERSION_FILES: [&str; 3] = [MODEL_FILE, "model.onnx.sha256", "baseline.json"];

/// Identifies the content of a version's files as last seen (sizes and modification times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fingerprint(u64);

impl Fingerprint {
    pub fn of_files(dir: &Path) -> Fingerprint {
        let mut h = DefaultHasher::new();
        for name in VERSION_FILES {
            if let Ok(meta) = std::fs::metadata(dir.join(name)) {
                name.hash(&mut h);
                meta.len().hash(&mut h);
                meta.modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .hash(&mut h);
            }
        }
        Fingerprint(h.finish())
    }

    pub fn of_text(text: &str) -> Fingerprint {
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        Fingerprint(h.finish())
    }
}

/// A version directory to serve, as found on disk.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub version: u64,
    pub dir: PathBuf,
    pub fingerprint: Fingerprint,
    /// Why it may not be loaded yet (still being written, checksum mismatch); `None` when complete.
    pub incomplete: Option<String>,
}

/// Remembers what each version directory looked like at the previous poll.
#[derive(Default)]
pub struct Scanner {
    seen: Mutex<HashMap<PathBuf, Seen>>,
}

#[derive(Clone, Copy)]
struct Seen {
    fingerprint: Fingerprint,
    /// Result of the checksum comparison for this fingerprint, so large files are hashed once.
    checksum_ok: Option<bool>,
}

impl Scanner {
    /// The given versions of `model_dir`. With `trust_first_look` (start-up, explicit loads), files seen
    /// for the first time count as complete: nobody is asked to wait for a second poll.
    ///
    /// Blocking (reads metadata, hashes model files against their checksum): call it off the async
    /// workers. The memory of earlier looks is locked only to read and record, never while hashing.
    pub fn candidates(
        &self,
        model_dir: &Path,
        versions: &[u64],
        trust_first_look: bool,
    ) -> Vec<Candidate> {
        versions
            .iter()
            .map(|&version| {
                let dir = model_dir.join(version.to_string());
                let fingerprint = Fingerprint::of_files(&dir);
                let previous = self.lock().get(&dir).copied();
                let stable = previous.is_some_and(|p| p.fingerprint == fingerprint);
                let checksum_ok = match previous {
                    Some(p) if stable && p.checksum_ok.is_some() => p.checksum_ok,
                    _ => checksum_matches(&dir),
                };
                self.lock().insert(
                    dir.clone(),
                    Seen {
                        fingerprint,
                        checksum_ok,
                    },
                );
                let incomplete = if checksum_ok == Some(false) {
                    Some(format!(
                        "{MODEL_FILE} does not match {MODEL_FILE}.sha256 yet (still being copied?)"
                    ))
                } else if !stable && !trust_first_look {
                    Some("files changed since the last poll; waiting until they are stable".into())
                } else {
                    None
                };
                Candidate {
                    version,
                    dir,
                    fingerprint,
                    incomplete,
                }
            })
            .collect()
    }

    /// Forgets the version directories of `model_dir` (the model was removed).
    pub fn forget(&self, model_dir: &Path) {
        self.lock().retain(|dir, _| !dir.starts_with(model_dir));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Positive integer subdirectories of `dir` that hold a model file.
pub fn version_dirs(dir: &Path) -> Vec<u64> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .parse::<u64>()
                .ok()
                .filter(|v| *v > 0)
                .map(|v| (v, e.path()))
        })
        .filter(|(_, path)| path.join(MODEL_FILE).is_file())
        .map(|(v, _)| v)
        .collect()
}

/// `None` without a checksum file; otherwise whether `model.onnx` matches its first hex word.
fn checksum_matches(dir: &Path) -> Option<bool> {
    let expected = std::fs::read_to_string(dir.join(format!("{MODEL_FILE}.sha256"))).ok()?;
    let expected = expected.split_whitespace().next()?.to_ascii_lowercase();
    Some(sha256_hex(&dir.join(MODEL_FILE)).is_ok_and(|actual| actual == expected))
}

pub fn sha256_hex(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_complete_once_stable_and_matching_its_checksum() {
        let root = std::env::temp_dir().join(format!("keel-scan-{}", std::process::id()));
        let dir = root.join("3");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MODEL_FILE), b"half").unwrap();
        let scanner = Scanner::default();
        let first = &scanner.candidates(&root, &[3], false)[0];
        assert!(first.incomplete.is_some(), "first look is never trusted");
        let second = &scanner.candidates(&root, &[3], false)[0];
        assert!(second.incomplete.is_none(), "unchanged across two looks");

        let full = b"the whole model";
        let digest = Sha256::digest(full);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            dir.join("model.onnx.sha256"),
            format!("{hex}  model.onnx\n"),
        )
        .unwrap();
        let _ = scanner.candidates(&root, &[3], false);
        let mismatch = &scanner.candidates(&root, &[3], false)[0];
        assert!(mismatch.incomplete.as_deref().unwrap().contains("sha256"));
        std::fs::write(dir.join(MODEL_FILE), full).unwrap();
        let _ = scanner.candidates(&root, &[3], false);
        let done = &scanner.candidates(&root, &[3], false)[0];
        assert!(done.incomplete.is_none(), "{:?}", done.incomplete);
        assert!(
            scanner.candidates(&root, &[3], true)[0]
                .incomplete
                .is_none()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
