//! [`fit`](super::fit) with what is done around it: the choice of C ([`select`]) and the
//! standardisation of the features ([`Standardizer`]), folded back into the weights.

use std::time::Instant;

use ndarray::ArrayView2;

use super::scale::Standardizer;
use super::select::{self, CSearch, Validation};
use super::{check_input, fit_from, FitOptions, FitReport, LinearSvm, ScalingReport, SvmError, SvmParams};

/// What [`train`] does around a fit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tuning {
    /// Choose C on a validation split (`params.c` is then not used).
    pub search: Option<CSearch>,
    /// Standardise the features ([`Standardizer`]) before fitting, and fold the
    /// standardisation into the returned weights.
    pub scale: bool,
}

/// [`fit`](super::fit) with the choice of C and the standardisation of `tuning`: with a search,
/// C is chosen on a validation split ([`select`]) and the SVM is then refitted on all
/// of `x` at that C (the primal starting from the chosen candidate's weights); with
/// `scale`, the fits see standardised features and the returned weights are folded
/// back to act on `x` as given. The report's `seconds` cover the search too.
///
/// # Errors
/// Those of [`fit`](super::fit), and for the search an empty grid, a C in it that is not
/// positive and finite, a held-out share outside (0, 1), or no class with two samples.
pub fn train(
    x: ArrayView2<f32>,
    y: &[usize],
    n_classes: usize,
    params: &SvmParams,
    tuning: &Tuning,
) -> Result<(LinearSvm, FitReport), SvmError> {
    train_on(x, y, None, n_classes, params, tuning)
}

/// [`train`] with the search for C scoring its candidates on `validation`, rows given
/// apart (features as the training set's, standardised with the training set's
/// statistics when `tuning.scale`), instead of a held-out share of `x`: each
/// candidate is fitted on all of `x`, and the chosen one is the final fit, with no
/// refit. `tuning.search`'s `holdout` is not used.
///
/// # Errors
/// Those of [`train`]; validation rows of another width than `x`, or that [`fit`](super::fit)
/// would refuse as training rows; and no search in `tuning`.
pub fn train_validated(
    x: ArrayView2<f32>,
    y: &[usize],
    validation: Validation<'_>,
    n_classes: usize,
    params: &SvmParams,
    tuning: &Tuning,
) -> Result<(LinearSvm, FitReport), SvmError> {
    train_on(x, y, Some(validation), n_classes, params, tuning)
}

fn train_on(
    x: ArrayView2<f32>,
    y: &[usize],
    validation: Option<Validation<'_>>,
    n_classes: usize,
    params: &SvmParams,
    tuning: &Tuning,
) -> Result<(LinearSvm, FitReport), SvmError> {
    let started = Instant::now();
    let options = FitOptions::default();
    check_input(x, y, n_classes, params)?;
    if let Some(v) = &validation {
        if tuning.search.is_none() {
            return Err(SvmError::ValidationWithoutSearch);
        }
        select::check_validation(v, x.ncols(), n_classes)?;
    }
    // The statistics now; the standardised copy of `x` only once a search's own
    // copies are gone.
    let standardizer = tuning.scale.then(|| Standardizer::fit(x));
    let standardised = || standardizer.as_ref().map(|s| s.apply(x));
    let (svm, mut report) = match (&tuning.search, validation) {
        (Some(search), Some(v)) => {
            let scaled = standardised();
            let scaled_validation = standardizer.as_ref().map(|s| s.apply(v.x));
            let v = Validation {
                x: scaled_validation.as_ref().map_or(v.x, |z| z.view()),
                y: v.y,
            };
            let features = scaled.as_ref().map_or(x, |z| z.view());
            let (selection, svm, mut report) =
                select::search_given(features, y, v, n_classes, params, &search.grid, &options)?;
            report.selection = Some(selection);
            (svm, report)
        }
        (Some(search), None) => {
            let (selection, start) = select::search(x, y, n_classes, params, search, tuning.scale, &options)?;
            let chosen = SvmParams {
                c: selection.chosen,
                ..params.clone()
            };
            let scaled = standardised();
            let features = scaled.as_ref().map_or(x, |z| z.view());
            let (svm, mut report) = fit_from(features, y, n_classes, &chosen, &options, Some(&start))?;
            report.selection = Some(selection);
            (svm, report)
        }
        (None, _) => {
            let scaled = standardised();
            fit_from(
                scaled.as_ref().map_or(x, |z| z.view()),
                y,
                n_classes,
                params,
                &options,
                None,
            )?
        }
    };
    let svm = match &standardizer {
        Some(s) => s.fold(&svm),
        None => svm,
    };
    report.scaling = standardizer.map(|s| ScalingReport {
        constant_features: s.constant_features(),
    });
    report.seconds = started.elapsed().as_secs_f64();
    Ok((svm, report))
}
