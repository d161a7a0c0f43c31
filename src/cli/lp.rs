//! `nnmend lp DUMP.json`: solve a repair LP written by `nnmend repair --dump-lp`, on its
//! own. It is how the solver is benchmarked against other LP solvers on identical
//! instances (`tools/bench/bench_repair.py`), and how a user re-solves an instance offline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use nnmend::doc::LpDoc;
use nnmend::repair::margin::MarginSolver;
use nnmend::repair::Instance;

use super::print_doc;

/// Arguments of `nnmend lp`.
#[derive(Debug, Args)]
pub struct LpArgs {
    /// The instance, as `repair --dump-lp` writes it.
    dump: PathBuf,
    /// Threads solving classes side by side [default: one per CPU core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// The solver of a margin-mode instance.
    #[arg(long, value_enum, default_value_t = MarginSolver::Ipm)]
    solver: MarginSolver,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `nnmend lp`.
pub fn lp(args: LpArgs) -> Result<ExitCode> {
    let instance = Instance::load(&args.dump)?;
    let threads = args
        .threads
        .map_or_else(|| nnmend::features::Feed::default().threads, |t| t as usize);
    let (solved, seconds) = instance.solve(threads, args.solver)?;
    let doc = LpDoc::new(&instance, &solved, seconds, threads);
    print_doc(&doc, args.json, |d, out| d.write_text(out))?;
    Ok(ExitCode::SUCCESS)
}
