//! Undelivered events on disk, one `<id>.json` per event, so they survive a restart. Each write
//! goes to a hidden temporary name, is fsynced, renamed into place, and the folder fsynced: a
//! crash leaves either the old file or the new one, never half of one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One pending event as stored: the exact body that is signed and sent, so every retry (and
/// every restart) sends the same bytes under the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the event was created, unix milliseconds: the start of its max age.
    pub created_ms: u64,
}

/// What [`Store::load_all`] found: events with their paths, and unreadable files set aside.
pub type Loaded = (Vec<(PathBuf, StoredEvent)>, Vec<PathBuf>);

#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `dir`, created if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Where the event with `id` is stored; ids are made of `[A-Za-z0-9_]` (see `new_event_id`).
    pub fn path_for(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `event` to `path` durably, replacing any previous version.
    pub fn save(&self, path: &Path, event: &StoredEvent) -> io::Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("event.json");
        let temp = self.dir.join(format!(".{name}.tmp"));
        let json = serde_json::to_vec(event).map_err(io::Error::other)?;
        let written = File::create(&temp).and_then(|mut file| {
            file.write_all(&json)?;
            file.sync_all()
        });
        if let Err(error) = written.and_then(|()| fs::rename(&temp, path)) {
            // Best effort: the write error is what the caller needs.
            let _ = fs::remove_file(&temp);
            return Err(error);
        }
        self.sync_dir()
    }

    /// Deletes a delivered (or abandoned) event; a file already gone is fine.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Ok(()) => self.sync_dir(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Every stored event with its path. Unreadable files are renamed to `*.corrupt` (kept for a
    /// person to look at, no longer loaded) and returned as the second list; temporary files left
    /// by a crash are removed.
    pub fn load_all(&self) -> io::Result<Loaded> {
        let mut events = Vec::new();
        let mut corrupt = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') {
                if name.ends_with(".tmp") {
                    // Best effort: a leftover temporary file is harmless, only untidy.
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match fs::read(&path).map(|bytes| serde_json::from_slice::<StoredEvent>(&bytes)) {
                Ok(Ok(event)) => events.push((path, event)),
                Ok(Err(_)) | Err(_) => {
                    let aside = path.with_extension("json.corrupt");
                    fs::rename(&path, &aside)?;
                    corrupt.push(aside);
                }
            }
        }
        events.sort_by(|a, b| (a.1.created_ms, &a.1.id).cmp(&(b.1.created_ms, &b.1.id)));
        Ok((events, corrupt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_replaces_loads_and_removes() {
        let dir = scratch("roundtrip");
        let store = Store::open(&dir).unwrap();
        let mut event = StoredEvent {
            id: "evt_1".into(),
            body: "{\"a\":1}".into(),
            attempts: 0,
            created_ms: 7,
        };
        let path = store.path_for(&event.id);
        store.save(&path, &event).unwrap();
        event.attempts = 2;
        store.save(&path, &event).unwrap();
        fs::write(dir.join("junk.json"), b"not json").unwrap();
        fs::write(dir.join(".evt_9.json.tmp"), b"half").unwrap();
        let (events, corrupt) = store.load_all().unwrap();
        assert_eq!(events, vec![(path.clone(), event)]);
        assert_eq!(corrupt, vec![dir.join("junk.json.corrupt")]);
        assert!(!dir.join(".evt_9.json.tmp").exists());
        store.remove(&path).unwrap();
        store.remove(&path).unwrap();
        assert!(store.load_all().unwrap().0.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
