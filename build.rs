//! Records the git commit nnmend is built from, as the compile-time variable
//! `NNMEND_COMMIT` ("unknown" outside a git checkout, as in a source package).
//!
//! It reads `.git` itself rather than running `git`, which may be missing where nnmend
//! is built. It asks cargo to rerun it only when `HEAD` or the branch it names moves
//! (the loose ref file, or the folder and `packed-refs` where that ref would appear),
//! so an ordinary rebuild does not rerun it. A linked worktree's `.git` is a file
//! naming its own git folder, whose `commondir` holds the branches.

use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let root = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let commit = commit(&root).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=NNMEND_COMMIT={commit}");
}

/// Asks cargo to rerun this script when `path` changes; only for paths that exist,
/// since cargo reruns every time for a path that is missing.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The git folder of the checkout at `root`: `.git` itself, or the folder a
/// worktree's `.git` file names.
fn git_dir(root: &Path) -> Option<PathBuf> {
    let dot_git = root.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git);
    }
    let text = fs::read_to_string(&dot_git).ok()?;
    let named = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
    watch(&dot_git);
    Some(root.join(named))
}

/// A full commit id (SHA-1 or SHA-256, hexadecimal), or nothing.
fn object_id(text: &str) -> Option<String> {
    let id = text.trim();
    ((id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_lowercase())
}

/// The commit `HEAD` points at, directly (detached) or through a branch.
fn commit(root: &Path) -> Option<String> {
    let git = git_dir(root)?;
    let head_file = git.join("HEAD");
    watch(&head_file);
    let head = fs::read_to_string(&head_file).ok()?;
    let Some(name) = head.trim().strip_prefix("ref:") else {
        return object_id(&head);
    };
    let name = name.trim();
    // Branches live in the common git folder; a worktree's own folder holds only its
    // HEAD and a few private refs.
    let common = fs::read_to_string(git.join("commondir"))
        .ok()
        .map_or_else(|| git.clone(), |c| git.join(c.trim()));
    for dir in [&git, &common] {
        let loose = dir.join(name);
        if loose.is_file() {
            watch(&loose);
            return object_id(&fs::read_to_string(&loose).ok()?);
        }
    }
    // A branch that is only packed gets a loose file when it moves: watch its folder.
    if let Some(parent) = common.join(name).parent() {
        watch(parent);
    }
    let packed_file = common.join("packed-refs");
    watch(&packed_file);
    let packed = fs::read_to_string(&packed_file).ok()?;
    packed.lines().find_map(|line| {
        let (id, refname) = line.split_once(' ')?;
        (refname.trim() == name).then(|| object_id(id)).flatten()
    })
}
