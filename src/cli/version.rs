//! `nnmend --version [--json] [--backend B]`: the version, the git commit built from,
//! the features compiled in and the tract version; with `--backend ort` or `ort-cuda`,
//! the ONNX Runtime library found and its version too.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use nnmend::doc::VersionDoc;
use nnmend::engine::{self, Backend, EngineOptions};
use nnmend::provenance::Provenance;

use super::{print_doc, usage};

/// The options of `nnmend --version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print the version, the git commit it was built from, the compiled features and
    /// the tract version.
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// With --version: print one JSON document (`version`, `commit`, `features`, `tract`).
    #[arg(long = "json", requires = "version")]
    json: bool,
    /// With --version: also load this backend and say which library and version it
    /// found (`ort`, `ort-cuda`: the ONNX Runtime library).
    #[arg(long = "backend", value_enum, value_name = "BACKEND", requires = "version")]
    backend: Option<Backend>,
}

impl VersionArgs {
    /// Whether `--version` was given.
    pub fn asked(&self) -> bool {
        self.version
    }
}

/// Runs `nnmend --version`; without it (no command either), says what is missing.
pub fn version(args: &VersionArgs) -> Result<ExitCode> {
    if !args.version {
        usage!("no command given; `nnmend --help` lists them");
    }
    let engine = match args.backend {
        Some(backend) => Some(
            engine::engine_with(backend, EngineOptions::default())
                .with_context(|| {
                    let name = backend.to_possible_value().map(|v| v.get_name().to_string());
                    format!("--backend {}", name.unwrap_or_default())
                })?
                .describe(),
        ),
        None => None,
    };
    let doc = VersionDoc {
        provenance: Provenance::current(),
        engine,
    };
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(ExitCode::SUCCESS)
}
