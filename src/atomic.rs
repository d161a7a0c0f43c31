//! Atomic file output, shared by everything nnmend writes (models, data sets,
//! features, LP dumps): the bytes go to a temporary file in the target's folder, which
//! is synced and then renamed over the target. A reader never sees half a file, and a
//! failure leaves any older file in place and no temporary file behind.
//!
//! A temporary file deletes itself when dropped, but a process killed by a signal
//! runs no destructors. So every temporary file in flight is also listed here, and the
//! binary's SIGINT/SIGTERM handler calls [`remove_in_flight`] before it exits: Ctrl-C
//! leaves neither a temporary file nor a half-written output.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Temporary files being written, by any thread.
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The list of temporary files in flight; a thread that panicked while holding it
/// left it consistent (every change is one push or one removal), so poisoning is ignored.
fn in_flight() -> MutexGuard<'static, Vec<PathBuf>> {
    IN_FLIGHT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Deletes every temporary file still being written and returns how many there were.
/// Meant for a signal handler that is about to end the process: the list stays locked
/// after the call, so no write can start or finish (rename its file into place) after
/// it; a write that had finished already left a complete file.
pub fn remove_in_flight() -> usize {
    let guard = in_flight();
    for path in guard.iter() {
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
    }
    let n = guard.len();
    // Held until the process exits.
    std::mem::forget(guard);
    n
}

/// `e` without the temporary file's path that tempfile appends to its errors (`… at
/// path ".nnmend-x1y2.tmp"`): a message names the user's output, never a temporary
/// file.
pub fn plain(e: io::Error) -> io::Error {
    if e.raw_os_error().is_some() {
        return e;
    }
    let text = e.to_string();
    match text.split_once(" at path ") {
        Some((cause, _)) => io::Error::new(e.kind(), cause.to_string()),
        None => e,
    }
}

/// Creates `path` atomically, with `write` filling the file. `io_err` turns the
/// I/O errors of creating, syncing and renaming into the caller's error type.
pub fn write_with<E>(
    path: &Path,
    io_err: impl Fn(io::Error) -> E,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Created and listed under the lock, so that a signal never finds a temporary
    // file that is not listed yet. Dropping it unpersisted deletes it, whatever fails.
    let mut tmp = {
        let mut list = in_flight();
        let tmp = tempfile::Builder::new()
            .prefix(".nnmend-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| io_err(plain(e)))?;
        list.push(tmp.path().to_path_buf());
        tmp
    };
    let tmp_path = tmp.path().to_path_buf();
    let unlist = |list: &mut Vec<PathBuf>| list.retain(|p| *p != tmp_path);
    let filled = write(tmp.as_file_mut()).and_then(|()| tmp.as_file().sync_all().map_err(&io_err));
    if let Err(e) = filled {
        let mut list = in_flight();
        drop(tmp);
        unlist(&mut list);
        return Err(e);
    }
    // Renamed and unlisted under the lock: a signal handler sees either the
    // temporary file (and deletes it) or the finished output, never a renamed file
    // still listed.
    let mut list = in_flight();
    let persisted = tmp.persist(path).map(|_| ()).map_err(|e| io_err(e.error));
    unlist(&mut list);
    persisted
}

/// A temporary folder for an output that is a whole folder (`nnmend run`'s): filled,
/// then renamed into place with [`TempFolder::persist`]. Listed in flight like the
/// temporary files, so Ctrl-C removes it; dropped unpersisted, it deletes itself.
#[derive(Debug)]
pub struct TempFolder {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TempFolder {
    /// Creates an empty temporary folder in `parent`.
    pub fn new_in(parent: &Path) -> io::Result<Self> {
        let mut list = in_flight();
        let dir = tempfile::Builder::new()
            .prefix(".nnmend-")
            .tempdir_in(parent)
            .map_err(plain)?;
        let path = dir.path().to_path_buf();
        list.push(path.clone());
        Ok(Self { dir: Some(dir), path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the folder to `to` (which must not exist).
    pub fn persist(mut self, to: &Path) -> io::Result<()> {
        let mut list = in_flight();
        let renamed = std::fs::rename(&self.path, to);
        if renamed.is_ok() {
            // Renamed away: nothing left for the TempDir to delete.
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
        list.retain(|p| *p != self.path);
        renamed
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let mut list = in_flight();
        drop(self.dir.take());
        list.retain(|p| *p != self.path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        let failed: io::Result<()> = write_with(
            &path,
            |e| e,
            |f| {
                f.write_all(b"half")?;
                Err(io::Error::other("disk on fire"))
            },
        );
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the temporary file must go"
        );

        write_with(&path, |e| e, |f| f.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_temporary_folder_is_listed_until_it_is_persisted_or_dropped() {
        let parent = tempfile::tempdir().unwrap();
        let listed = |p: &Path| in_flight().iter().any(|q| q == p);
        let dropped = TempFolder::new_in(parent.path()).unwrap();
        let path = dropped.path().to_path_buf();
        std::fs::write(path.join("half"), b"x").unwrap();
        assert!(listed(&path));
        drop(dropped);
        assert!(
            !path.exists() && !listed(&path),
            "a dropped folder goes, with its files"
        );

        let kept = TempFolder::new_in(parent.path()).unwrap();
        let path = kept.path().to_path_buf();
        std::fs::write(path.join("whole"), b"y").unwrap();
        let out = parent.path().join("out");
        kept.persist(&out).unwrap();
        assert!(!listed(&path));
        assert_eq!(std::fs::read(out.join("whole")).unwrap(), b"y");
        assert_eq!(
            std::fs::read_dir(parent.path()).unwrap().count(),
            1,
            "only the output is left"
        );
    }
}
