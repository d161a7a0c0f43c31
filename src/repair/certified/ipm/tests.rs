//! The method against clarabel, its resumption, and S against its definition.

#![allow(clippy::unwrap_used)]

use super::step::invert_spd;
use super::*;
use crate::repair::certified::program::solve_restricted;
use crate::repair::certified::tests::{problem_of, random_problem};
use crate::repair::certified::{worst_margins, CertifiedSettings};

#[test]
fn the_restricted_optimum_is_clarabels() {
    for seed in 0..6 {
        let (n, points, d, k) = (10, 10, 12, 4);
        let arrays = random_problem(seed, (n, points, d, k));
        let labels: Vec<usize> = (0..n + points).map(|s| (s * 7 + seed as usize) % k).collect();
        // Balls want 0.3, points 0.1; balls' slack is dearer.
        let margin: Vec<f64> = (0..n + points).map(|s| if s < n { 0.3 } else { 0.1 }).collect();
        let price: Vec<f64> = (0..n + points).map(|s| if s < n { 4.0 } else { 1.0 }).collect();
        let p = problem_of(&arrays, &labels, &margin, &price, seed % 2 == 1);
        // Every row of the balls, and every other row of the points (some pairs
        // then have no ball).
        let labels_of = &labels;
        let rows: Vec<(usize, usize)> = (0..n + points)
            .flat_map(|s| (0..k).filter(move |&c| c != labels_of[s]).map(move |c| (s, c)))
            .filter(|&(s, c)| s < n || (s + c) % 2 == 0)
            .collect();
        let ours = Solver::new(&p, &rows).run(1.0, 200);
        let (theirs, _) = solve_restricted(&p, &rows, &vec![true; k * d], &CertifiedSettings::default());
        assert_eq!(ours.status, Status::Solved, "seed {seed}");
        // Stopped at a thousand times the tolerances and resumed, the method goes on
        // from where it stopped: the same iterates as without the stop.
        let mut resumed = Solver::new(&p, &rows);
        let loose = resumed.run(1e3, 200);
        let tight = resumed.run(1.0, 200);
        assert_eq!(
            (loose.status, tight.status),
            (Status::Solved, Status::Solved),
            "seed {seed}"
        );
        assert!(loose.iterations < tight.iterations, "seed {seed}");
        assert_eq!(
            (tight.iterations, tight.objective.to_bits()),
            (ours.iterations, ours.objective.to_bits()),
            "seed {seed}"
        );
        assert!(theirs.status.usable(), "seed {seed}");
        assert!(
            (ours.objective - theirs.objective).abs() <= 1e-6 * (1.0 + theirs.objective),
            "seed {seed}: {} against clarabel's {}",
            ours.objective,
            theirs.objective
        );
        // The objective is what the weights cost: Σ|γ| and the rows' shortfalls.
        let worst = worst_margins(&p, ours.weights.view(), ours.bias.view());
        let mut short = vec![0.0f64; n + points];
        for &(s, c) in &rows {
            short[s] = short[s].max(margin[s] - worst[[s, c]]);
        }
        let change: f64 = (&ours.weights - &p.weights)
            .iter()
            .chain((&ours.bias - &p.bias).iter())
            .map(|v| v.abs())
            .sum();
        let cost = change + short.iter().zip(&price).map(|(x, c)| x * c).sum::<f64>();
        assert!(
            (cost - ours.objective).abs() <= 1e-6 * (1.0 + cost),
            "seed {seed}: the weights cost {cost}, the program says {}",
            ours.objective
        );
        // One dual per row, in the rows' order, none negative, and some bind.
        assert_eq!(ours.y.len(), rows.len());
        assert!(ours.y.iter().all(|&y| y >= 0.0) && ours.y.iter().any(|&y| y > 1e-6));
        let (variables, constraints, nonzeros) = ours.size;
        assert!(variables > 2 * k * d && constraints > rows.len() && nonzeros > constraints);
    }
}

#[test]
fn s_is_the_margin_rows_schur_complement() {
    // Enough rows that S is built on two threads.
    let (n, points, d, k) = (60, 40, 9, 5);
    let arrays = random_problem(11, (n, points, d, k));
    let labels: Vec<usize> = (0..n + points).map(|s| (s * 3) % k).collect();
    let (margin, price) = (vec![0.2; n + points], vec![2.0; n + points]);
    let p = problem_of(&arrays, &labels, &margin, &price, true);
    let labels_of = &labels;
    let rows: Vec<(usize, usize)> = (0..n + points)
        .flat_map(|s| (0..k).filter(move |&c| c != labels_of[s]).map(move |c| (s, c)))
        .collect();
    let rr = rows.len();
    assert!(rr >= PARALLEL_ROWS);
    let solver = Solver::new(&p, &rows);
    let program = &solver.program;
    let scaling: Vec<f64> = solver.z.iter().zip(&solver.s).map(|(z, s)| z / s).collect();
    let step = Step::new(program, &scaling, Par::Seq).unwrap();
    // S = C H⁻¹ Cᵀ + W⁻¹ over the margin rows, column by column from its definition.
    let c0 = program.s_at().c;
    let mut dense = vec![0.0; rr * rr];
    for h in 0..rr {
        let mut e = vec![0.0; rr];
        e[h] = 1.0;
        let mut ct = vec![0.0; program.x_at().len];
        program.margin_t(&e, &mut ct);
        for (i, v) in program.margin(&step.h_inv(&ct)).into_iter().enumerate() {
            dense[i * rr + h] = v + if i == h { 1.0 / scaling[c0 + i] } else { 0.0 };
        }
    }
    let factor = &step.factor;
    for i in 0..rr {
        for h in 0..=i {
            let got: f64 = (0..=h).map(|t| factor[(i, t)] * factor[(h, t)]).sum();
            let want = dense[i * rr + h];
            let scale = (dense[i * rr + i] * dense[h * rr + h]).sqrt();
            assert!((got - want).abs() <= 1e-9 * scale, "({i}, {h}): {got} against {want}");
        }
    }
}

#[test]
fn a_small_spd_matrix_is_inverted() {
    let mut m = vec![4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
    let a = m.clone();
    assert!(invert_spd(&mut m, 3));
    for i in 0..3 {
        for j in 0..3 {
            let v: f64 = (0..3).map(|h| a[i * 3 + h] * m[h * 3 + j]).sum();
            assert!((v - f64::from(u8::from(i == j))).abs() < 1e-12, "({i}, {j}): {v}");
        }
    }
    let mut not = vec![1.0, 2.0, 2.0, 1.0];
    assert!(!invert_spd(&mut not, 2));
}
