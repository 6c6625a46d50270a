//! Folders of local state (undelivered webhook events, the model cache, the prediction log) kept
//! private to the user Keel runs as.
//!
//! On a shared `/tmp`, another user can create `/tmp/keel-webhook` before Keel does, and then plant an
//! event for Keel to sign and send, or a model for it to serve. [`private_dir`] therefore creates
//! missing folders with mode 0700 and accepts an existing folder only when this process's user owns
//! it (a symlink to it must be owned by that user or by root); an own folder that others may read
//! or write is tightened to 0700. Folders above it are not checked: they are the operator's choice,
//! and `/tmp`'s sticky bit already stops other users from moving a folder they do not own.

use std::io;
use std::path::{Path, PathBuf};

/// Why a state folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalStateError {
    #[error("cannot create the folder {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot inspect the folder {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a folder")]
    NotAFolder { path: PathBuf },
    #[error(
        "{path} is owned by uid {owner}, not by uid {uid} that Keel runs as: another user could plant \
         files there; remove it or choose another folder"
    )]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "{path} is a symlink owned by uid {owner}, neither uid {uid} that Keel runs as nor root; \
         remove it or choose another folder"
    )]
    ForeignLink { path: PathBuf, owner: u32, uid: u32 },
    #[error("cannot make {path} private (mode 0700): {source}")]
    Tighten { path: PathBuf, source: io::Error },
    #[error("cannot tell which user this process runs as: {0}")]
    Uid(io::Error),
}

/// Creates `path` (and missing parents) with mode 0700, or checks an existing folder: refused when
/// owned by another user (or reached through a symlink owned by another user than this one or
/// root); when owned by this user, group and other permissions are removed (logged).
#[cfg(unix)]
pub fn private_dir(path: &Path) -> Result<(), LocalStateError> {
    use std::fs::{self, DirBuilder, Permissions};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

    let inspect = |source| LocalStateError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    let uid = effective_uid()?;
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Created parents get 0700 too (less the umask); an existing folder, created by someone
            // else meanwhile, is not an error here and is checked below like any other.
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|source| LocalStateError::Create {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        Err(e) => return Err(inspect(e)),
    }
    let link = fs::symlink_metadata(path).map_err(inspect)?;
    if link.file_type().is_symlink() && link.uid() != uid && link.uid() != 0 {
        return Err(LocalStateError::ForeignLink {
            path: path.to_path_buf(),
            owner: link.uid(),
            uid,
        });
    }
    let meta = fs::metadata(path).map_err(inspect)?;
    if !meta.is_dir() {
        return Err(LocalStateError::NotAFolder {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != uid {
        return Err(LocalStateError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(path, Permissions::from_mode(0o700)).map_err(|source| {
            LocalStateError::Tighten {
                path: path.to_path_buf(),
                source,
            }
        })?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{mode:04o}"),
            "state folder was open to other users; made private (0700)"
        );
    }
    Ok(())
}

/// Elsewhere, folders are only created.
#[cfg(not(unix))]
pub fn private_dir(path: &Path) -> Result<(), LocalStateError> {
    std::fs::create_dir_all(path).map_err(|source| LocalStateError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// The user this process acts as on files (its effective uid), found once.
#[cfg(unix)]
pub fn effective_uid() -> Result<u32, LocalStateError> {
    use std::sync::OnceLock;
    static UID: OnceLock<u32> = OnceLock::new();
    if let Some(uid) = UID.get() {
        return Ok(*uid);
    }
    let uid = match uid_from_proc() {
        Some(uid) => uid,
        None => uid_from_probe().map_err(LocalStateError::Uid)?,
    };
    Ok(*UID.get_or_init(|| uid))
}

/// Linux: the effective uid is the second number of the `Uid:` line of `/proc/self/status`.
#[cfg(unix)]
fn uid_from_proc() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Elsewhere: the owner of a file this process creates.
#[cfg(unix)]
fn uid_from_probe() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let probe = std::env::temp_dir().join(format!(
        ".keel-uid-probe-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let uid = file.metadata().map(|m| m.uid());
    // Best effort: a leftover empty probe file harms nothing.
    let _ = std::fs::remove_file(&probe);
    uid
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("keel-local-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn uid_sources_agree() {
        let uid = effective_uid().unwrap();
        assert_eq!(uid_from_probe().unwrap(), uid);
        if let Some(proc) = uid_from_proc() {
            assert_eq!(proc, uid);
        }
    }

    #[test]
    fn creates_private_folders_with_parents() {
        let dir = scratch("create");
        let deep = dir.join("a/b/state");
        private_dir(&deep).unwrap();
        assert!(deep.is_dir());
        assert_eq!(mode(&deep), 0o700);
        assert_eq!(mode(&dir.join("a")), 0o700);
        assert_eq!(fs::metadata(&deep).unwrap().uid(), effective_uid().unwrap());
        // Again: nothing to do.
        private_dir(&deep).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tightens_an_open_folder_of_ours() {
        let dir = scratch("tighten");
        let open = dir.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_a_file_and_follows_our_own_symlinks() {
        let dir = scratch("kinds");
        let file = dir.join("file");
        fs::write(&file, b"x").unwrap();
        let err = private_dir(&file).unwrap_err();
        assert!(matches!(err, LocalStateError::NotAFolder { .. }), "{err}");
        let target = dir.join("target");
        fs::create_dir(&target).unwrap();
        let link = dir.join("link");
        symlink(&target, &link).unwrap();
        private_dir(&link).unwrap();
        assert_eq!(mode(&target), 0o700);
        fs::remove_dir_all(dir).unwrap();
    }

    /// Another user's folder, or a symlink to one, as only root can make them here.
    #[test]
    fn refuses_folders_and_links_of_other_users() {
        if effective_uid().unwrap() != 0 {
            eprintln!("skipped: needs root to give a folder to another user");
            return;
        }
        const NOBODY: u32 = 65534;
        let dir = scratch("foreign");
        let theirs = dir.join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o777)).unwrap();
        chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
        let err = private_dir(&theirs).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, LocalStateError::NotOwned { owner: NOBODY, .. }),
            "{message}"
        );
        assert!(message.contains(&theirs.display().to_string()), "{message}");
        assert!(message.contains("uid 65534"), "{message}");
        // Refused without being touched.
        assert_eq!(mode(&theirs), 0o777);

        // Our symlink to their folder: the folder decides.
        let to_theirs = dir.join("to-theirs");
        symlink(&theirs, &to_theirs).unwrap();
        assert!(matches!(
            private_dir(&to_theirs),
            Err(LocalStateError::NotOwned { .. })
        ));

        // Their symlink to our folder: refused, and our folder is not chmod-ed through it.
        let ours = dir.join("ours");
        fs::create_dir(&ours).unwrap();
        fs::set_permissions(&ours, fs::Permissions::from_mode(0o755)).unwrap();
        let planted = dir.join("planted");
        symlink(&ours, &planted).unwrap();
        std::os::unix::fs::lchown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();
        let err = private_dir(&planted).unwrap_err();
        assert!(
            matches!(err, LocalStateError::ForeignLink { owner: NOBODY, .. }),
            "{err}"
        );
        assert_eq!(mode(&ours), 0o755);
        fs::remove_dir_all(dir).unwrap();
    }
}
