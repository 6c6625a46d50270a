//! Sealing: a webhook event must list the files holding its window's rows, but the newest rows sit
//! in the model's open file until it rotates (5 minutes by default). So before listing, the event's
//! sender asks the writer to finish that model's open files, through the folder they share: the
//! embedded monitor and a `keel monitor` sidecar on the same volume both work, with no channel to
//! the writer. The sender creates `<model folder>/.seal-request` and waits until it is gone; the
//! writer, every drain tick, finishes the files of each model whose folder holds one, then removes
//! it. No writer (or a writer that never logged the model) means no answer: the sender gives up
//! after its timeout and lists what is finished.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::naming::model_dir;

/// Hidden (readers skip names starting with `.`) and not a log file name.
const REQUEST: &str = ".seal-request";
/// How often the sender looks whether its request was served.
const POLL: Duration = Duration::from_millis(25);

pub(super) fn request_path(folder: &Path) -> PathBuf {
    folder.join(REQUEST)
}

/// Asks the writer of the log under `dir` to finish `model`'s open files and waits up to `timeout`
/// for it. True when the writer served the request (every row it had taken is now in a finished
/// file); false when nothing answered in time (the request is withdrawn) or there is no log folder.
/// Blocking: call it off the async workers.
pub fn seal(dir: &Path, model: &str, timeout: Duration) -> bool {
    let folder = model_dir(dir, model);
    if !dir.is_dir() {
        return false;
    }
    // The writer makes the folder with the model's first row group: rows still buffered have none.
    let made = fs::create_dir(&folder).is_ok();
    let request = request_path(&folder);
    let served = match fs::write(&request, b"") {
        Ok(()) => wait_until_gone(&request, timeout),
        Err(error) => {
            tracing::warn!(path = %request.display(), %error, "prediction log: cannot ask the writer to finish its files");
            false
        }
    };
    if made {
        // Left empty when the writer had nothing of this model; not removed otherwise.
        let _ = fs::remove_dir(&folder);
    }
    served
}

fn wait_until_gone(request: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !request.exists() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    // Withdrawn, unless the writer took it just now.
    fs::remove_file(request).is_err()
}

/// Whether `folder` holds a seal request.
pub(super) fn requested(folder: &Path) -> bool {
    request_path(folder).exists()
}

/// Marks the request of `folder` served.
pub(super) fn served(folder: &Path) {
    let _ = fs::remove_file(request_path(folder));
}
