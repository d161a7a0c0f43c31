//! Phases of the experiment: a line on stderr as each starts, and the seconds each took.

use std::time::Instant;

/// Times the phases; a phase entered again adds to its total.
#[derive(Debug)]
pub(super) struct Clock {
    log: bool,
    phases: Vec<(String, f64)>,
    current: Option<(String, Instant)>,
    step: usize,
}

impl Clock {
    pub(super) fn new(log: bool) -> Self {
        Self {
            log,
            phases: Vec::new(),
            current: None,
            step: 0,
        }
    }

    /// Ends the current phase and starts `name`, saying `what` on stderr.
    pub(super) fn phase(&mut self, name: &str, what: &str) {
        self.stop();
        self.step += 1;
        if self.log {
            eprintln!("nnmend run [{}] {what}", self.step);
        }
        self.current = Some((name.to_string(), Instant::now()));
    }

    /// Says `what` on stderr, within the current phase.
    pub(super) fn note(&self, what: &str) {
        if self.log {
            eprintln!("nnmend run: {what}");
        }
    }

    /// Ends the current phase.
    pub(super) fn stop(&mut self) {
        if let Some((name, started)) = self.current.take() {
            let seconds = started.elapsed().as_secs_f64();
            match self.phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, s)) => *s += seconds,
                None => self.phases.push((name, seconds)),
            }
        }
    }

    /// Seconds per phase, in the order they first ran.
    pub(super) fn finish(mut self) -> Vec<(String, f64)> {
        self.stop();
        self.phases
    }
}
