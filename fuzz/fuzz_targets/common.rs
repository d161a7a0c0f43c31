//! What the data targets share: a scratch folder on a memory file system, made once
//! per process and emptied before each input, and a little reader that cuts one fuzz
//! input into the files and options of a data set.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's scratch folder: a new folder in `$NNMEND_FUZZ_SCRATCH` (which
/// `run.sh` makes and removes; libFuzzer exits without running destructors), else in
/// `/dev/shm` when there is one, so that writing the files of each input costs no
/// disk I/O.
pub fn base() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = if let Some(scratch) = std::env::var_os("NNMEND_FUZZ_SCRATCH") {
            tempfile::Builder::new().prefix("nnmend-fuzz").tempdir_in(scratch)
        } else if Path::new("/dev/shm").is_dir() {
            tempfile::Builder::new().prefix("nnmend-fuzz").tempdir_in("/dev/shm")
        } else {
            tempfile::tempdir()
        };
        dir.unwrap().keep()
    })
}

/// An empty folder `base()/name`, emptied if the previous input left files in it.
pub fn fresh(name: &str) -> PathBuf {
    let dir = base().join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Cuts a fuzz input into pieces: single bytes, little-endian u16s and
/// length-prefixed chunks, with whatever is missing read as zeros or empty.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A chunk whose length is the next u16.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16()).min(self.data.len());
        let (chunk, rest) = self.data.split_at(n);
        self.data = rest;
        chunk
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A limit for `LoadOptions`: none, or a small number (the readers' paths for
/// "stop early" and "read everything" differ).
pub fn limit(flags: u8, value: u8) -> Option<usize> {
    (flags & 0x80 != 0).then_some(usize::from(value))
}
