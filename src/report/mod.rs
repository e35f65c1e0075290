//! What a run shows its user and leaves behind besides models: progress bars on stderr, the SVG
//! charts drawn from a run folder's metrics and the self-contained HTML page around them.

pub mod game;
pub mod html;
pub mod plot;
pub mod progress;
pub mod stats;
pub mod tensorboard;

/// Where training metrics go besides metrics.jsonl (`--report-to`, TRL's flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportTo {
    /// metrics.jsonl only.
    #[default]
    None,
    /// Also TensorBoard event files in `OUT/runs/`, with TRL's metric names.
    Tensorboard,
}
