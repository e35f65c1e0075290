//! Training progress on stderr, shared by `train`, `spin` and `demo`: a bar on a terminal, a
//! line per logged step otherwise (logs, CI).

use wgspin::report::progress::Progress;
use wgspin::train::job::TrainEvent;

/// Prints training events: a bar for reference scoring and steps, a line per logged step.
pub struct TrainReporter {
    bar: Option<Progress>,
    logging_steps: usize,
}

impl TrainReporter {
    pub fn new(logging_steps: usize) -> Self {
        Self {
            bar: None,
            logging_steps: logging_steps.max(1),
        }
    }

    pub fn event(&mut self, e: TrainEvent) {
        match e {
            TrainEvent::Reference { done, total } => {
                let bar = self
                    .bar
                    .get_or_insert_with(|| Progress::new("reference log-probs", total));
                bar.update(done, "sequences");
                if done == total {
                    bar.finish();
                    self.bar = None;
                }
            }
            TrainEvent::ReferenceCached => eprintln!("reference log-probs: cached"),
            TrainEvent::Resumed { step } => eprintln!("resuming at step {step}"),
            TrainEvent::Step {
                metrics: m,
                total_steps,
            } => {
                if !wgspin::report::progress::draws_bars() {
                    if m.step % self.logging_steps == 0 || m.step == total_steps {
                        eprintln!(
                            "step {}/{total_steps} {} lr {:.3e} grad_norm {:.3} {:.0} tok/s",
                            m.step,
                            m.stats.summary(),
                            m.lr,
                            m.grad_norm,
                            m.tokens_per_s
                        );
                    }
                    return;
                }
                let bar = self
                    .bar
                    .get_or_insert_with(|| Progress::new("train", total_steps));
                bar.update(
                    m.step,
                    &format!("steps, {}, {:.0} tok/s", m.stats.summary(), m.tokens_per_s),
                );
                if m.step == total_steps {
                    bar.finish();
                    self.bar = None;
                }
            }
            TrainEvent::Saved { step, path } => {
                if let Some(b) = self.bar.as_mut() {
                    b.finish();
                }
                eprintln!("saved step {step} to {}", path.display());
            }
        }
    }
}
