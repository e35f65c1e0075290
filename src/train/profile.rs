//! What a training step costs the host, measured around the trainer for `wgspin bench train`
//! (the training twin of `generate/profile.rs`): kernel launches per step (cubecl's launch
//! observer: every launch of the process on the issuing thread, so nothing else may run kernels
//! meanwhile), host→device uploads and blocking reads per step (counted in code, see
//! [`crate::device::traffic`]), and kernels launched for the first time after the warm-up steps
//! (each one a compile or an autotune candidate: with bounded shapes there are none). Step times
//! are per step, from its start to its end; a step ends with its metrics read back, so the time
//! covers the device's work.

use std::time::Instant;

use burn::backend::DispatchDevice;
use burn::cubecl::launched::LaunchedKernels;

use super::{StepMetrics, Trainer};
use crate::device::traffic::{LaunchCount, Traffic};
use crate::error::Result;

/// The measured steps of a training benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainProfile {
    /// Seconds of each measured step, in order.
    pub step_secs: Vec<f64>,
    /// `None` off cubecl (the CPU backend launches no kernels).
    pub launches_per_step: Option<f64>,
    pub uploads_per_step: f64,
    pub reads_per_step: f64,
    /// Kernel ids first launched during the measured steps (`None` off cubecl).
    pub new_kernels_after_warmup: Option<usize>,
    /// Measured steps the f16 loss scaler skipped (no update made).
    pub skipped: usize,
}

/// Runs `warmup` steps, then `steps` measured ones, of `trainer`.
pub fn profile_train(trainer: &mut Trainer, warmup: usize, steps: usize) -> Result<TrainProfile> {
    let device = trainer.state.model.device().without_autodiff();
    let cube = matches!(device.as_dispatch(), DispatchDevice::Cube(_));
    let launches = LaunchCount::start();
    let warm_set = LaunchedKernels::new();
    for _ in 0..warmup {
        trainer.train_step()?;
    }
    let warm_set = warm_set.finish();
    let after = LaunchedKernels::new();
    let (l0, t0) = (launches.now(), Traffic::now());
    let (mut step_secs, mut skipped) = (Vec::with_capacity(steps), 0);
    for _ in 0..steps {
        let t = Instant::now();
        let m: StepMetrics = trainer.train_step()?;
        step_secs.push(t.elapsed().as_secs_f64());
        skipped += usize::from(m.loss_scale.is_some_and(|(_, skip)| skip));
    }
    let after = after.finish();
    let n = steps.max(1) as f64;
    let traffic = Traffic::now().since(t0);
    let new_kernels = after.iter().filter(|k| !warm_set.contains(*k)).count();
    Ok(TrainProfile {
        step_secs,
        launches_per_step: cube.then(|| (launches.now() - l0) as f64 / n),
        uploads_per_step: traffic.uploads as f64 / n,
        reads_per_step: traffic.reads as f64 / n,
        new_kernels_after_warmup: cube.then_some(new_kernels),
        skipped,
    })
}
