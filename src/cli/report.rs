//! Training progress on stderr, shared by `train`, `spin` and `demo`: a bar on a terminal, a
//! line per logged step otherwise (logs, CI).

use wgspin::report::html::{Page, Status};
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

/// `report.html` kept current while a run goes on: rewritten at every stage and, during a stage,
/// at most every two seconds of progress; the last rewrite says the run ended (so the page stops
/// reloading). A page that cannot be written is reported once and never stops the run. Nothing is
/// written before the run's first stage (a run refused at its start leaves no page, and never
/// touches the page of the run that holds the folder) nor after its end.
pub struct LivePage {
    dir: std::path::PathBuf,
    build: Box<dyn Fn(Option<Status>) -> Page>,
    stage: String,
    last: Option<std::time::Instant>,
    ended: bool,
    warned: bool,
}

impl LivePage {
    pub fn new(dir: &std::path::Path, build: impl Fn(Option<Status>) -> Page + 'static) -> Self {
        Self {
            dir: dir.to_path_buf(),
            build: Box::new(build),
            stage: String::new(),
            last: None,
            ended: false,
            warned: false,
        }
    }

    /// The page's address, for the line that tells the user where to look.
    pub fn url(&self) -> String {
        wgspin::report::html::file_url(&self.dir.join(wgspin::report::html::PAGE_FILE))
    }

    /// A new stage began.
    pub fn stage(&mut self, stage: &str, progress: &str) {
        self.stage = stage.to_string();
        self.write(Status::Running {
            stage: stage.to_string(),
            progress: progress.to_string(),
        });
    }

    /// Progress within the stage (written at most every two seconds).
    pub fn progress(&mut self, progress: &str) {
        if self
            .last
            .is_none_or(|t| t.elapsed() < std::time::Duration::from_secs(2))
        {
            return;
        }
        self.write(Status::Running {
            stage: self.stage.clone(),
            progress: progress.to_string(),
        });
    }

    /// The run ended: with `error`'s words if it failed. Only the first call after a stage writes.
    pub fn end(&mut self, error: Option<&anyhow::Error>) {
        if self.last.is_none() || self.ended {
            return;
        }
        self.write(match error {
            None => Status::Done,
            Some(e) => Status::Failed(format!("{e:#}")),
        });
        self.ended = true;
    }

    fn write(&mut self, status: Status) {
        if self.ended {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let page = (self.build)(Some(status));
        if let Err(e) = wgspin::report::html::write(&self.dir, &page)
            && !self.warned
        {
            self.warned = true;
            eprintln!("warning: could not write the run's report page: {e}");
        }
    }
}
