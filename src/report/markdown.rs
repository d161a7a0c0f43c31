//! `report.md`: the experiment's report for people, its tables laid out like the seed
//! paper's (clean accuracy, then accuracy on each adversarial test set per ε), with the
//! repair's figures, the attacks' success rates, the figures and the timings.

use std::fmt::Write as _;

use crate::experiment::{Model, Report, TestSet};

/// The report as Markdown, titled `title`, with the `figures` (caption, file) shown
/// as images.
pub fn markdown(report: &Report, title: &str, figures: &[(String, String)]) -> String {
    let r = report;
    let mut md = String::new();
    let eps = r.eps();
    let models = r.models();
    let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.2}", 100.0 * v));
    let _ = writeln!(md, "# {title}\n");
    let _ = writeln!(
        md,
        "Training set: `{}` ({} images). Test set: `{}` ({} images).{} Cut at `{}` ({} features). \
         Attack: {}. Repair: {} mode, {} sample(s) per ε. Seed {}.\n{}",
        r.train.source,
        r.train.n,
        r.test.source,
        r.test.n,
        r.validation.as_ref().map_or(String::new(), |v| format!(
            " Validation set (the choice of C): `{}` ({} images).",
            v.source, v.n
        )),
        r.cut.tensor,
        r.cut.feature_dim,
        r.settings["attack"]["method"].as_str().unwrap_or("?").to_uppercase(),
        r.settings["repair"]["mode"].as_str().unwrap_or("?"),
        r.settings["repair"]["samples"],
        r.settings["seed"],
        r.cut.warning.as_ref().map_or(String::new(), |w| format!(
            "\n**Cut ({}).** {w}\n",
            r.cut.rule.describe()
        )),
    );
    let _ = writeln!(
        md,
        "Accuracies are percentages of the {} test images. ε is the L∞ radius in [0, 1] pixel space. \
         NADV, HADV and RHADV are the test set with every image that the attack on NN, LH or RLH flips \
         replaced by its adversarial example.\n",
        r.test.n
    );
    let _ = writeln!(md, "## Clean test accuracy (Data)\n");
    let _ = writeln!(md, "| model | accuracy (%) |\n| --- | --- |");
    for m in models.iter().filter(|m| **m != Model::RLH) {
        let _ = writeln!(
            md,
            "| {m} | {} |",
            pct(eps.first().and_then(|&e| r.accuracy(*m, TestSet::Data, e)))
        );
    }
    for &e in &eps {
        let _ = writeln!(
            md,
            "| RLH (ε = {e}) | {} |",
            pct(r.accuracy(Model::RLH, TestSet::Data, e))
        );
    }
    for set in TestSet::ALL.iter().skip(1) {
        let _ = writeln!(md, "\n## Accuracy on {set} (%)\n");
        let names: Vec<&str> = models.iter().map(|m| m.name()).collect();
        let _ = writeln!(md, "| ε | {} |", names.join(" | "));
        let _ = writeln!(md, "| --- |{}", " --- |".repeat(models.len()));
        for &e in &eps {
            let row: Vec<String> = models.iter().map(|m| pct(r.accuracy(*m, *set, e))).collect();
            let _ = writeln!(md, "| {e} | {} |", row.join(" | "));
        }
    }
    let _ = writeln!(md, "\n## Repair\n");
    let _ = writeln!(
        md,
        "| ε | samples | status | efficacy (%) | drawdown (pp) | generalisation (%) | LP variables | LP constraints | LP time (s) | ‖ΔW‖₁ | ‖ΔW‖∞ |"
    );
    let _ = writeln!(md, "| --- |{}", " --- |".repeat(10));
    for rep in &r.repairs {
        let generalisation = rep.generalisation.map_or("– (no HADV example)".into(), |g| {
            format!("{:.2} of {}", 100.0 * g, rep.held_out)
        });
        let _ = match (&rep.status, &rep.lp) {
            (Some(status), Some(lp)) => writeln!(
                md,
                "| {} | {} | {} | {:.2} | {:.2} | {generalisation} | {} | {} | {:.2} | {:.4} | {:.4} |",
                rep.eps,
                rep.samples,
                if rep.used {
                    format!("{status:?}").to_lowercase()
                } else {
                    format!("{status:?}: not used, RLH = LH").to_lowercase()
                },
                100.0 * rep.efficacy,
                100.0 * rep.drawdown,
                lp.variables,
                lp.constraints,
                rep.seconds,
                rep.l1,
                rep.linf
            ),
            _ => writeln!(
                md,
                "| {} | 0 | no repair: the attack flipped no training image, RLH = LH | – | 0.00 | {generalisation} | – | – | – | 0 | 0 |",
                rep.eps
            ),
        };
    }
    robustness(&mut md, r, &eps, &models);
    training(&mut md, r);
    rounds(&mut md, r);
    let _ = writeln!(md, "\n## Attack success rates (%)\n");
    let _ = writeln!(md, "| ε | NN | LH | RLH |\n| --- | --- | --- | --- |");
    for &e in &eps {
        let rate = |t: Model| {
            r.attacks
                .iter()
                .find(|a| a.eps == e && a.target == t)
                .map_or("–".into(), |a| format!("{:.2}", 100.0 * a.success_rate))
        };
        let _ = writeln!(
            md,
            "| {e} | {} | {} | {} |",
            rate(Model::NN),
            rate(Model::LH),
            rate(Model::RLH)
        );
    }
    heads(&mut md, r);
    if !figures.is_empty() {
        let _ = writeln!(md, "\n## Figures\n");
        for (caption, file) in figures {
            let _ = writeln!(md, "![{caption}]({file})");
        }
    }
    if !r.gates.is_empty() {
        let _ = writeln!(md, "\n## Gates\n");
        for check in &r.gates {
            let _ = writeln!(md, "- {check}");
        }
    }
    let _ = writeln!(md, "\n## Timings\n\n| phase | seconds |\n| --- | --- |");
    for (phase, s) in &r.timings {
        let _ = writeln!(md, "| {phase} | {s:.1} |");
    }
    let total: f64 = r.timings.iter().map(|(_, s)| s).sum();
    let _ = writeln!(md, "| total | {total:.1} |");
    let _ = writeln!(
        md,
        "\nnnmend {} (commit {}), tract {}, clarabel {}.",
        r.versions.get("nnmend").map_or("?", String::as_str),
        r.provenance.commit,
        r.versions.get("tract").map_or("?", String::as_str),
        r.versions.get("clarabel").map_or("?", String::as_str),
    );
    md
}

/// How each hybrid's SVM was fitted, and the validation curve of a search for C.
fn heads(md: &mut String, r: &Report) {
    if r.fits.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## SVM heads\n\n| model | C | features | solver | converged | objective | train accuracy (%) |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for (model, f) in &r.fits {
        let _ = writeln!(
            md,
            "| {model} | {}{} | {} | {} | {} | {:.6} | {:.2} |",
            f.c,
            if f.c_selection.is_some() { " (chosen)" } else { "" },
            if f.standardised { "standardised" } else { "as extracted" },
            f.solver,
            if f.converged { "yes" } else { "no" },
            f.objective,
            100.0 * f.train_accuracy,
        );
    }
    for (model, f) in &r.fits {
        let Some(sel) = &f.c_selection else { continue };
        let _ = writeln!(
            md,
            "\nC of {model}, chosen on {} {} images (fitted on {}):\n\n| C | validation accuracy (%) | converged |\n| --- | --- | --- |",
            sel.n_validation,
            if sel.holdout.is_some() { "held-out training" } else { "validation" },
            sel.n_fit
        );
        for p in &sel.curve {
            let _ = writeln!(
                md,
                "| {}{} | {:.2} | {} |",
                p.c,
                if p.c == sel.chosen { " (chosen)" } else { "" },
                100.0 * p.validation_accuracy,
                if p.converged { "yes" } else { "no" },
            );
        }
    }
}

/// The robust accuracy of every model at every ε, the headline of each repair, and
/// the transfer of NN's and LH's adversarial examples to KH.
fn robustness(md: &mut String, r: &Report, eps: &[f32], models: &[Model]) {
    let Some(first) = r.robustness.first() else {
        return;
    };
    let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.2}", 100.0 * v));
    let _ = writeln!(
        md,
        "\n## Robust accuracy (%)\n\nEach model attacked itself on the first {} test images: PGD with 40 steps \
         of 2.5·ε/40 from a random start, following the cross-entropy and the margin loss, 3 restarts each; an \
         image counts if it is classified right and no run flips it.\n",
        first.figures.n
    );
    let names: Vec<&str> = models.iter().map(|m| m.name()).collect();
    let _ = writeln!(md, "| ε | {} |", names.join(" | "));
    let _ = writeln!(md, "| --- |{}", " --- |".repeat(models.len()));
    for &e in eps {
        let row: Vec<String> = models.iter().map(|m| pct(r.robust_accuracy(*m, e))).collect();
        let _ = writeln!(md, "| {e} | {} |", row.join(" | "));
    }
    let _ = writeln!(
        md,
        "\nThe repairs' headline: RLH's clean accuracy, its robust accuracy against itself, its efficacy on every \
         repair sample, and the repair's time (the head's training, every round's LP and attack).\n"
    );
    let _ = writeln!(
        md,
        "| ε | clean (%) | robust (%) | efficacy (%) | seconds |\n| --- | --- | --- | --- | --- |"
    );
    for rep in &r.repairs {
        let seconds: f64 = rep.training.iter().map(|e| e.seconds).sum::<f64>()
            + rep.rounds.iter().map(|x| x.lp_seconds + x.attack_seconds).sum::<f64>();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {seconds:.1} |",
            rep.eps,
            pct(r.accuracy(Model::RLH, TestSet::Data, rep.eps)),
            pct(r.robust_accuracy(Model::RLH, rep.eps)),
            100.0 * rep.efficacy
        );
    }
    if !r.transfer.is_empty() {
        let _ = writeln!(
            md,
            "\nKH on NN's and LH's adversarial examples (the first test images, each flipped one replaced): an RBF \
             head's gradients can mislead an attack, and the examples of another model show whether KH's robust \
             accuracy is real.\n\n| ε | NN's examples (%) | LH's examples (%) |\n| --- | --- | --- |"
        );
        for &e in eps {
            let on = |source: Model| {
                pct(r
                    .transfer
                    .iter()
                    .find(|t| t.source == source && t.eps == e)
                    .map(|t| t.accuracy))
            };
            let _ = writeln!(md, "| {e} | {} | {} |", on(Model::NN), on(Model::LH));
        }
    }
}

/// The rounds of each attack-in-the-loop repair.
fn training(md: &mut String, r: &Report) {
    if r.repairs.iter().all(|rep| rep.training.is_empty()) {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Adversarial training of the head\n\nEach minibatch of the pool attacked (PGD) against the head it \
         then updates; robust accuracy during the epoch.\n\n| ε | epoch | pool robust (%) | hinge | time (s) |\n\
         | --- | --- | --- | --- | --- |"
    );
    for rep in &r.repairs {
        for e in &rep.training {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.4} | {:.1} |",
                rep.eps,
                e.epoch,
                100.0 * e.pool_robust_accuracy,
                e.loss,
                e.seconds
            );
        }
    }
}

fn rounds(md: &mut String, r: &Report) {
    if r.repairs.iter().all(|rep| rep.rounds.len() < 2) {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Repair rounds\n\n| ε | round | samples | status | objective | efficacy (%) | pool robust (%) | LP (s) | \
         attack (s) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for rep in &r.repairs {
        for x in &rep.rounds {
            let chosen = if x.round == rep.chosen_round { " (RLH)" } else { "" };
            let _ = writeln!(
                md,
                "| {} | {}{chosen} | {} | {} | {:.4} | {:.2} | {} | {:.1} | {:.1} |",
                rep.eps,
                x.round,
                x.samples,
                format!("{:?}", x.status).to_lowercase(),
                x.objective,
                100.0 * x.efficacy,
                x.pool_robust_accuracy
                    .map_or("–".into(), |a| format!("{:.2}", 100.0 * a)),
                x.lp_seconds,
                x.attack_seconds
            );
        }
    }
}
