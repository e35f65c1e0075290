//! What a run shows its user and leaves behind besides models: progress bars on stderr and the
//! SVG report drawn from a run folder's metrics.

pub mod plot;
pub mod progress;
