//! Subcommands of the `wgspin` binary that run the SPIN stages, one file per command; flags shared
//! between commands (generation, training) live here so `spin` takes exactly the same ones.

pub mod generate;

use clap::Args;

use wgspin::generate::GenOptions;
use wgspin::kernels::sample::SamplingParams;

/// Sampling flags of the opponent's generation.
#[derive(Args, Debug, Clone)]
pub struct GenFlags {
    /// Token limit per generated response.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus sampling mass; 1 = off.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Keep tokens with probability ≥ min-p × the top probability; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Random seed; the same seed gives the same responses whatever the batch size.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl GenFlags {
    pub fn options(&self, batch_size: usize, stop_ids: Vec<u32>, pad_id: u32) -> GenOptions {
        GenOptions {
            batch_size,
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                seed: self.seed,
            },
            stop_ids,
            pad_id,
        }
    }
}
