//! `nnmend --version [--json] [--backend B]`: the version, the git commit built from,
//! the features compiled in and the tract version; with `--backend ort` or `ort-cuda`,
//! the ONNX Runtime library found and its version too.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use nnmend::engine::{self, Backend, EngineOptions};
use nnmend::provenance::Provenance;

use super::{print_json, usage};

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
    let provenance = Provenance::current();
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
    if args.json {
        let mut doc = serde_json::to_value(&provenance)?;
        if let (Some(engine), Some(map)) = (engine, doc.as_object_mut()) {
            map.insert("engine".into(), engine);
        }
        print_json(&doc)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    write!(out, "{}", provenance.text())?;
    if let Some(engine) = engine {
        let field = |key: &str| {
            engine
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_string()
        };
        match engine.get("library").and_then(|v| v.as_str()) {
            Some(library) => writeln!(out, "{}: {} ({library})", field("name"), field("version"))?,
            None => writeln!(out, "{}: {}", field("name"), field("version"))?,
        }
    }
    Ok(ExitCode::SUCCESS)
}
