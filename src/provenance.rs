//! What this build of nnmend is: its version (from Cargo.toml), the git commit it was
//! built from (recorded by `build.rs`; "unknown" outside a git checkout), the optional
//! features compiled in and the tract version. `nnmend --version` prints it; the
//! models nnmend writes carry it in their `metadata_props`, and `report.json` under
//! `provenance`, so that a result can be traced to the code that made it.

use serde::Serialize;

/// nnmend's version, from Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this build was made from, or "unknown".
pub const COMMIT: &str = env!("NNMEND_COMMIT");

/// The optional features compiled in: `ort` (ONNX Runtime), `cuda` (its CUDA execution
/// provider), `faer` (clarabel's faer sparse solver).
pub fn features() -> Vec<&'static str> {
    [
        (cfg!(feature = "ort"), "ort"),
        (cfg!(feature = "cuda"), "cuda"),
        (cfg!(feature = "faer"), "faer"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

/// This build, as `--version --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provenance {
    /// nnmend's version.
    pub version: &'static str,
    /// The git commit, or "unknown".
    pub commit: &'static str,
    /// The optional features compiled in.
    pub features: Vec<&'static str>,
    /// The tract version (the embedded engine).
    pub tract: &'static str,
}

impl Provenance {
    /// This build.
    pub fn current() -> Self {
        Self {
            version: VERSION,
            commit: COMMIT,
            features: features(),
            tract: crate::engine::tract::VERSION,
        }
    }

    /// For people: `nnmend VERSION` on the first line (as `--version` prints it by
    /// convention), then `commit: …`, `features: …` and `tract: …`, one per line.
    pub fn text(&self) -> String {
        let features = if self.features.is_empty() {
            "none".to_string()
        } else {
            self.features.join(", ")
        };
        format!(
            "nnmend {}\ncommit: {}\nfeatures: {}\ntract: {}\n",
            self.version, self.commit, features, self.tract
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_is_a_full_id_or_unknown() {
        assert!(
            COMMIT == "unknown"
                || ((COMMIT.len() == 40 || COMMIT.len() == 64) && COMMIT.bytes().all(|b| b.is_ascii_hexdigit())),
            "{COMMIT}"
        );
    }

    #[test]
    fn the_text_names_every_part() {
        let p = Provenance {
            version: "1.2.3",
            commit: "abc",
            features: vec![],
            tract: "0.1",
        };
        assert_eq!(p.text(), "nnmend 1.2.3\ncommit: abc\nfeatures: none\ntract: 0.1\n");
    }
}
