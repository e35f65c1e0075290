//! What one decode step costs the host, measured around the engine for `wgspin bench generate`:
//! kernel launches per step (cubecl's launch observer, which is told on the issuing thread
//! without waiting for the device, and sees every launch in the process: nothing else may run
//! kernels meanwhile), host→device uploads and blocking reads per step (counted by
//! the engine, see [`GenStats`]), and kernels launched for the first time after warm-up (each a
//! compile, or an autotune candidate; cubecl's launched-kernel collection, by kernel id). All
//! per-step figures are over the decode steps after warm-up: the first [`WARMUP_STEPS`], their
//! read-back, and the step that follows it (the snapshot is taken after a step). Warm decode
//! throughput is timed over the same steps: from that snapshot, which comes right after the
//! blocking read-back of the warm-up steps, to the end of the run, which reads everything back.

use std::time::Instant;

use burn::backend::DispatchDevice;
use burn::cubecl::launched::LaunchedKernels;

use super::{GenOptions, GenRequest, GenStats, generate_observed};
use crate::device::traffic::LaunchCount;
use crate::error::Result;
use crate::model::Transformer;

/// Decode steps left out of the per-step figures (compiles, autotuning, first allocations).
pub const WARMUP_STEPS: usize = 8;

/// A generation benchmark run.
#[derive(Debug, Clone, PartialEq)]
pub struct GenProfile {
    /// Generated tokens over the whole call (prefill included), as `scripts/bench_generate.py`.
    pub tokens_per_s: f64,
    /// Decode steps the per-step figures are averaged over (after warm-up); 0 when the run
    /// had no more than [`WARMUP_STEPS`].
    pub measured_steps: usize,
    /// `None` off cubecl (the CPU backend launches no kernels).
    pub launches_per_step: Option<f64>,
    pub uploads_per_step: f64,
    pub reads_per_step: f64,
    /// Kernel ids first launched after warm-up (`None` off cubecl).
    pub new_kernels_after_warmup: Option<usize>,
    /// Tokens per second of the decode steps after warm-up (every slot decodes one token per
    /// step; 0 when none were measured).
    pub decode_tokens_per_s: f64,
    /// Bytes of the run's KV cache.
    pub kv_cache_bytes: usize,
}

/// Runs [`super::generate`] on `requests` and measures it (see the module docs).
pub fn profile_generate(
    model: &Transformer,
    requests: &[GenRequest],
    opts: &GenOptions,
) -> Result<GenProfile> {
    let cube = matches!(model.device().as_dispatch(), DispatchDevice::Cube(_));
    let launches = LaunchCount::start();
    let count = || launches.now();
    let mut before_warm = Some(LaunchedKernels::new());
    let mut warm_set = None;
    let mut after_warm = None;
    // (stats, launches) at the end of warm-up and after the last decode step.
    let mut at_warm: Option<(GenStats, usize)> = None;
    let mut last: Option<(GenStats, usize)> = None;
    let mut warm_at = None;
    let start = Instant::now();
    let mut tokens = 0;
    generate_observed(
        model,
        requests,
        opts,
        |f| {
            tokens += f.tokens.len();
            Ok(())
        },
        |stats| {
            if stats.decode_steps == WARMUP_STEPS + 1 {
                warm_set = before_warm.take().map(LaunchedKernels::finish);
                after_warm = Some(LaunchedKernels::new());
                at_warm = Some((*stats, count()));
                warm_at = Some(Instant::now());
            }
            last = Some((*stats, count()));
        },
    )?;
    let tokens_per_s = tokens as f64 / start.elapsed().as_secs_f64();
    let end = Instant::now();
    let new_kernels = match (warm_set, after_warm.map(LaunchedKernels::finish)) {
        (Some(warm), Some(after)) => after.iter().filter(|k| !warm.contains(*k)).count(),
        _ => 0,
    };
    let (measured_steps, per_step) = match (at_warm, last) {
        (Some((w, lw)), Some((e, le))) if e.decode_steps > w.decode_steps => {
            let n = (e.decode_steps - w.decode_steps) as f64;
            (
                e.decode_steps - w.decode_steps,
                [
                    (le - lw) as f64 / n,
                    (e.uploads - w.uploads) as f64 / n,
                    (e.reads - w.reads) as f64 / n,
                ],
            )
        }
        _ => (0, [0.0; 3]),
    };
    let slots = opts.batch_size.min(requests.len());
    let decode_tokens_per_s = match warm_at {
        Some(t) if measured_steps > 0 => {
            (measured_steps * slots) as f64 / (end - t).as_secs_f64().max(1e-9)
        }
        _ => 0.0,
    };
    Ok(GenProfile {
        tokens_per_s,
        measured_steps,
        launches_per_step: cube.then_some(per_step[0]),
        uploads_per_step: per_step[1],
        reads_per_step: per_step[2],
        new_kernels_after_warmup: cube.then_some(new_kernels),
        decode_tokens_per_s,
        kv_cache_bytes: last.map_or(0, |(s, _)| s.kv_cache_bytes),
    })
}
