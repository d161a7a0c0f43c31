//! Atomic file output, shared by everything nnmend writes (models, data sets,
//! features): the bytes go to a temporary file in the target's folder, which is
//! synced and then renamed over the target. A reader never sees half a file, and a
//! failure leaves any older file in place and no temporary file behind.

use std::fs::File;
use std::io;
use std::path::Path;

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
    // Dropping the temporary file unpersisted deletes it, whatever fails below.
    let mut tmp = tempfile::Builder::new()
        .prefix(".nnmend-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(&io_err)?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all().map_err(&io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
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
}
